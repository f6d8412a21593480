/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fork with memory: a child maps through the iommufd it inherited, as in
 * the kernel's fork_gone/fork_present selftests.
 *
 * In the kernel parent and child share the file, the child's mapping lands
 * in the parent's IOAS, and its pages come from the child's memory: pinned
 * when a domain or access needs them, still pinned after the child exits,
 * and impossible to pin once it is gone (EFAULT). Under the shim the
 * parent's engine runs the child's calls (crates/preload/src/fork_server.rs)
 * and errnos come back unchanged.
 *
 * Two divergences are checked as such: the engine can only pin memory of
 * another process that it shares with it at the same address (a MAP_SHARED
 * buffer mapped before the fork), the child's private memory is EFAULT;
 * and a child's inherited descriptors fail with EIO once the process whose
 * engine serves them has exited.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <uiommufd/iommufd_test.h>

#define IOVA MOCK_APERTURE_START
#define PAGES 4

static int fd;
static __u32 ioas_id;
static long ps;
static char *shared_buf;

static void check_child_exited_0(pid_t pid)
{
	int status = 0;

	CHECK_EQ(waitpid(pid, &status, 0), pid);
	if (WIFSIGNALED(status))
		fprintf(stderr, "child %d killed by signal %d\n", pid, WTERMSIG(status));
	CHECK_TRUE(WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
}

static pid_t start_child(void)
{
	fflush(stdout);
	fflush(stderr);
	pid_t pid = (pid_t)CHECK_OK(fork());
	if (pid == 0)
		alarm(10);
	return pid;
}

static int map_fixed_id(int on, __u32 ioas, void *buf, __u64 len, __u64 iova)
{
	struct iommu_ioas_map cmd = {
		.size = sizeof(cmd),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)buf,
		.length = len,
		.iova = iova,
	};

	return ioctl(on, IOMMU_IOAS_MAP, &cmd);
}

static int map_fixed(void *buf, __u64 len, __u64 iova)
{
	return map_fixed_id(fd, ioas_id, buf, len, iova);
}

/* IOMMU_IOAS_UNMAP; the unmapped length in *out. */
static int unmap(__u64 iova, __u64 len, __u64 *out)
{
	struct iommu_ioas_unmap cmd = { .size = sizeof(cmd), .ioas_id = ioas_id, .iova = iova, .length = len };
	int rc = ioctl(fd, IOMMU_IOAS_UNMAP, &cmd);

	if (rc == 0 && out)
		*out = cmd.length;
	return rc;
}

/* IOMMU_TEST_OP_MOCK_DOMAIN: a mock device attached to the IOAS. */
static int mock_domain(__u32 *stdev, __u32 *hwpt)
{
	struct iommu_test_cmd cmd = { .size = sizeof(cmd), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas_id };
	int rc = ioctl(fd, IOMMU_TEST_CMD, &cmd);

	if (rc == 0) {
		*stdev = cmd.mock_domain.out_stdev_id;
		*hwpt = cmd.mock_domain.out_hwpt_id;
	}
	return rc;
}

static int create_access(int on, __u32 ioas)
{
	struct iommu_test_cmd cmd = { .size = sizeof(cmd), .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas };

	if (ioctl(on, IOMMU_TEST_CMD, &cmd))
		return -1;
	return (int)cmd.create_access.out_access_fd;
}

/* A device read through access `access` (slow path: the pinned frames). */
static int device_read(int on, int access, __u64 iova, void *buf, __u64 len)
{
	struct iommu_test_cmd cmd = {
		.size = sizeof(cmd),
		.op = IOMMU_TEST_OP_ACCESS_RW,
		.id = (__u32)access,
		.access_rw = { .iova = iova, .length = len, .uptr = (uintptr_t)buf, .flags = MOCK_ACCESS_RW_SLOW_PATH },
	};

	return ioctl(on, IOMMU_TEST_CMD, &cmd);
}

static int check_refs(void *p, __u64 len, __u32 refs)
{
	struct iommu_test_cmd cmd = {
		.size = sizeof(cmd),
		.op = IOMMU_TEST_OP_MD_CHECK_REFS,
		.check_refs = { .length = len, .uptr = (uintptr_t)p, .refs = refs },
	};

	return ioctl(fd, IOMMU_TEST_CMD, &cmd);
}

/* IOMMU_IOAS_IOVA_RANGES into ranges[8]; the count. */
static int iova_ranges(struct iommu_iova_range *ranges)
{
	struct iommu_ioas_iova_ranges cmd = {
		.size = sizeof(cmd),
		.ioas_id = ioas_id,
		.num_iovas = 8,
		.allowed_iovas = (uintptr_t)ranges,
	};

	memset(ranges, 0, 8 * sizeof(*ranges));
	CHECK_OK(ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &cmd));
	return (int)cmd.num_iovas;
}

/* The shim's own descriptors (the sockets to the child, the server's) stay
 * out of the program's way: with stdin closed, the next open of parent and
 * child still gets descriptor 0. */
static void test_descriptor_numbers_stay_the_programs(void)
{
	int saved = (int)CHECK_OK(dup(0));

	CHECK_OK(close(0));
	pid_t pid = start_child();
	if (pid == 0) {
		CHECK_EQ(open("/dev/null", O_RDONLY), 0);
		CHECK_OK(ioas_lookup(fd, ioas_id));
		_exit(0);
	}
	CHECK_EQ(open("/dev/null", O_RDONLY), 0);
	check_child_exited_0(pid);
	CHECK_OK(dup2(saved, 0));
	CHECK_OK(close(saved));
}

/* The child maps and exits: the area is the parent's; nothing was pinned,
 * so a domain attached now cannot pin it (EFAULT); unmapping it works. */
static void test_child_gone(void)
{
	struct iommu_iova_range before[8], after[8];
	int n = iova_ranges(before);

	pid_t pid = start_child();
	if (pid == 0) {
		CHECK_OK(map_fixed(shared_buf, PAGES * ps, IOVA));
		/* The parent's engine answers, errnos unchanged. */
		CHECK_ERR(map_fixed_id(fd, 12345, shared_buf, ps, IOVA), ENOENT);
		CHECK_ERR(map_fixed(shared_buf, PAGES * ps, IOVA), EEXIST);
		CHECK_ERR(ioas_lookup(fd, 12345), ENOENT);
		CHECK_ERR(ioctl(fd, IOMMU_IOAS_ALLOC, (void *)8), EFAULT);
		CHECK_ERR(ioctl(fd, _IO(IOMMUFD_TYPE, 0x7f), NULL), ENOTTY);
		char c;
		CHECK_ERR(read(fd, &c, 1), EINVAL);
		_exit(0);
	}
	check_child_exited_0(pid);

	CHECK_EQ(iova_ranges(after), n);
	CHECK_TRUE(memcmp(before, after, sizeof(before)) == 0);
	CHECK_ERR(map_fixed(shared_buf, ps, IOVA), EEXIST);
	__u32 stdev, hwpt;
	CHECK_ERR(mock_domain(&stdev, &hwpt), EFAULT);
	__u64 len = 0;
	CHECK_OK(unmap(IOVA, PAGES * ps, &len));
	CHECK_EQ(len, PAGES * ps);
	CHECK_ERR(unmap(IOVA, PAGES * ps, NULL), ENOENT);
	/* Nothing is left behind: a domain attaches now. */
	CHECK_OK(mock_domain(&stdev, &hwpt));
	CHECK_OK(obj_destroy(fd, stdev));
}

/* With the child alive, the pages pin (they are the parent's own shared
 * pages), and stay pinned after it exits. */
static void test_child_present(void)
{
	int ready[2], done[2];

	CHECK_OK(pipe2(ready, O_CLOEXEC));
	CHECK_OK(pipe2(done, O_CLOEXEC));
	for (int i = 0; i < PAGES; i++)
		memset(shared_buf + i * ps, 'a' + i, ps);
	pid_t pid = start_child();
	if (pid == 0) {
		char x = 0;

		CHECK_OK(close(done[1]));
		CHECK_OK(map_fixed(shared_buf, PAGES * ps, IOVA));
		CHECK_EQ(write(ready[1], "m", 1), 1);
		CHECK_EQ(read(done[0], &x, 1), 0);
		_exit(0);
	}
	CHECK_OK(close(ready[1]));
	CHECK_OK(close(done[0]));
	char x = 0;
	CHECK_EQ(read(ready[0], &x, 1), 1);

	__u32 stdev, hwpt;
	CHECK_OK(mock_domain(&stdev, &hwpt));
	CHECK_OK(check_refs(shared_buf, PAGES * ps, 1));
	int access = (int)CHECK_OK(create_access(fd, ioas_id));
	char got[PAGES] = { 0 };
	for (int i = 0; i < PAGES; i++)
		CHECK_OK(device_read(fd, access, IOVA + i * ps + 7, &got[i], 1));
	CHECK_TRUE(memcmp(got, "abcd", PAGES) == 0);

	CHECK_OK(close(done[1]));
	check_child_exited_0(pid);
	CHECK_OK(close(ready[0]));
	/* Pinned while the child lived: still pinned, and still shared. */
	CHECK_OK(check_refs(shared_buf, PAGES * ps, 1));
	shared_buf[2 * ps + 7] = 'Z';
	CHECK_OK(device_read(fd, access, IOVA + 2 * ps + 7, &got[0], 1));
	CHECK_EQ(got[0], 'Z');
	CHECK_OK(close(access));
	__u64 len = 0;
	CHECK_OK(unmap(IOVA, PAGES * ps, &len));
	CHECK_EQ(len, PAGES * ps);
	CHECK_OK(check_refs(shared_buf, PAGES * ps, 0));
	CHECK_OK(obj_destroy(fd, stdev));
}

/* A file the child creates through the shared context gets a descriptor in
 * the child, which it can name in later calls and close. */
static void test_child_creates_files(void)
{
	__u32 stdev, hwpt;

	CHECK_OK(mock_domain(&stdev, &hwpt));
	memset(shared_buf, 'q', ps);
	pid_t pid = start_child();
	if (pid == 0) {
		CHECK_OK(map_fixed(shared_buf, PAGES * ps, IOVA));
		int access = (int)CHECK_OK(create_access(fd, ioas_id));
		char c = 0;
		CHECK_OK(device_read(fd, access, IOVA + 3, &c, 1));
		CHECK_EQ(c, 'q');
		CHECK_ERR(device_read(fd, fd, IOVA, &c, 1), EBADFD);
		int again = (int)CHECK_OK(dup(access));
		CHECK_OK(close(access));
		CHECK_OK(device_read(fd, again, IOVA + 5, &c, 1));
		CHECK_OK(close(again));
		CHECK_ERR(device_read(fd, again, IOVA, &c, 1), EBADFD);
		/* Private memory of the child cannot be pinned by the parent's
		 * engine (a divergence: the kernel pins it). */
		char *priv = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK_TRUE(priv != MAP_FAILED);
		CHECK_ERR(map_fixed(priv, ps, IOVA + 16 * ps), EFAULT);
		_exit(0);
	}
	check_child_exited_0(pid);
	CHECK_OK(check_refs(shared_buf, PAGES * ps, 1));
	__u64 len = 0;
	CHECK_OK(unmap(0, UINT64_MAX, &len));
	CHECK_EQ(len, PAGES * ps);
	CHECK_OK(obj_destroy(fd, stdev));
}

/* IOMMU_IOAS_MAP_FILE from the child names the child's own descriptor; the
 * file's pages pin after the child is gone (the mapping holds the file). */
static void test_child_maps_a_file(void)
{
	pid_t pid = start_child();
	if (pid == 0) {
		int mfd = (int)CHECK_OK(memfd_create("fork-shared", 0));
		CHECK_OK(ftruncate(mfd, PAGES * ps));
		CHECK_EQ(pwrite(mfd, "file", 4, ps), 4);
		struct iommu_ioas_map_file cmd = {
			.size = sizeof(cmd),
			.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
			.ioas_id = ioas_id,
			.fd = mfd,
			.length = PAGES * ps,
			.iova = IOVA,
		};
		CHECK_OK(ioctl(fd, IOMMU_IOAS_MAP_FILE, &cmd));
		CHECK_EQ(cmd.fd, mfd);
		CHECK_EQ(cmd.iova, IOVA);
		cmd.fd = 1000;
		cmd.iova = IOVA + 16 * ps;
		CHECK_ERR(ioctl(fd, IOMMU_IOAS_MAP_FILE, &cmd), EBADF);
		CHECK_OK(close(mfd));
		_exit(0);
	}
	check_child_exited_0(pid);
	__u32 stdev, hwpt;
	CHECK_OK(mock_domain(&stdev, &hwpt));
	int access = (int)CHECK_OK(create_access(fd, ioas_id));
	char got[4] = { 0 };
	CHECK_OK(device_read(fd, access, IOVA + ps, got, 4));
	CHECK_TRUE(memcmp(got, "file", 4) == 0);
	CHECK_OK(close(access));
	__u64 len = 0;
	CHECK_OK(unmap(0, UINT64_MAX, &len));
	CHECK_EQ(len, PAGES * ps);
	CHECK_OK(obj_destroy(fd, stdev));
}

/* The parent closing its descriptor does not close the child's: the file
 * lives while either holds it. A grandchild shares it too. */
static void test_file_lifetime_and_grandchildren(void)
{
	int other = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 id = 0;
	int go[2];

	CHECK_OK(ioas_alloc(other, &id));
	CHECK_OK(pipe2(go, O_CLOEXEC));
	pid_t pid = start_child();
	if (pid == 0) {
		char x = 0;

		CHECK_OK(close(go[1]));
		CHECK_EQ(read(go[0], &x, 1), 0);
		/* The parent has closed its descriptor by now. */
		CHECK_OK(ioas_lookup(other, id));
		pid_t g = start_child();
		if (g == 0) {
			__u32 mine = 0;
			CHECK_OK(ioas_alloc(other, &mine));
			CHECK_EQ(mine, id + 1);
			CHECK_OK(obj_destroy(other, id));
			_exit(0);
		}
		check_child_exited_0(g);
		CHECK_ERR(ioas_lookup(other, id), ENOENT);
		CHECK_OK(ioas_lookup(other, id + 1));
		CHECK_OK(close(other));
		_exit(0);
	}
	CHECK_OK(close(go[0]));
	CHECK_OK(close(other));
	CHECK_OK(close(go[1]));
	check_child_exited_0(pid);
}

/* When the process that serves a descriptor exits, its children's
 * inherited descriptors fail with EIO, without hanging (a divergence: the
 * kernel keeps the file while any process holds it). Descriptors served
 * by another process keep working. */
static void test_server_gone(void)
{
	int result[2];

	CHECK_OK(pipe2(result, O_CLOEXEC));
	pid_t c1 = start_child();
	if (c1 == 0) {
		int own = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
		int ready[2], gone[2];
		char x = 0;

		CHECK_ALLOC(own, 1);
		CHECK_OK(pipe2(ready, O_CLOEXEC));
		CHECK_OK(pipe2(gone, O_CLOEXEC));
		pid_t c2 = start_child();
		if (c2 == 0) {
			CHECK_OK(close(gone[1]));
			CHECK_OK(ioas_lookup(own, 1));
			CHECK_OK(ioas_lookup(fd, ioas_id));
			CHECK_EQ(write(ready[1], "r", 1), 1);
			/* Until the first child, which serves `own`, exits. */
			CHECK_EQ(read(gone[0], &x, 1), 0);
			CHECK_ERR(ioas_lookup(own, 1), EIO);
			CHECK_OK(ioas_lookup(fd, ioas_id));
			CHECK_OK(close(own));
			CHECK_EQ(write(result[1], "k", 1), 1);
			_exit(0);
		}
		CHECK_EQ(read(ready[0], &x, 1), 1);
		_exit(0);
	}
	CHECK_OK(close(result[1]));
	check_child_exited_0(c1);
	char k = 0;
	CHECK_EQ(read(result[0], &k, 1), 1);
	CHECK_EQ(k, 'k');
	CHECK_OK(close(result[0]));
}

int main(void)
{
	ps = sysconf(_SC_PAGESIZE);
	shared_buf = mmap(NULL, PAGES * ps, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(shared_buf != MAP_FAILED);
	fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	CHECK_OK(ioas_alloc(fd, &ioas_id));

	test_descriptor_numbers_stay_the_programs();
	test_child_gone();
	test_child_present();
	test_child_creates_files();
	test_child_maps_a_file();
	test_file_lifetime_and_grandchildren();
	test_server_gone();

	CHECK_OK(close(fd));
	return pass();
}
