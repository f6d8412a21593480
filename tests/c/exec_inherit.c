/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Served descriptors across execve (run with --device dma-engine).
 *
 *   exec_inherit                 the manager: opens, then starts itself as
 *                                "child" in four ways (fork + execv, fork +
 *                                execl, posix_spawn, and through /bin/sh's
 *                                exec), checking that each child passes
 *   exec_inherit child A B C D E the new image: checks what it inherited
 *   exec_inherit receiver S      a separate image that receives an
 *                                iommufd, a VFIO device and a stateful
 *                                iommufd with SCM_RIGHTS on socket S
 *
 * As libvirt hands /dev/iommu and VFIO device descriptors to QEMU: a
 * descriptor whose file holds nothing beyond its open (A: /dev/iommu, D:
 * the VFIO device cdev, not bound) works in the new image as that open
 * would; B was close-on-exec and is gone; C (an iommufd with an IOAS and
 * memory pinned into a mock domain) and E (a device bound to C) hold state
 * that cannot follow the exec: every call fails with EIO (never
 * /dev/null's ENOTTY). Descriptors passed with SCM_RIGHTS to another
 * process under the shim arrive the same way.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <linux/vfio.h>
#include <uiommufd/iommufd_test.h>

#ifndef VFIO_DEVICE_BIND_IOMMUFD
struct vfio_device_bind_iommufd {
	__u32 argsz;
	__u32 flags;
	__s32 iommufd;
	__u32 out_devid;
};
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
#endif

extern char **environ;

static int bind_dev(int dev, int iommufd)
{
	struct vfio_device_bind_iommufd b = { .argsz = 16, .iommufd = iommufd };

	return ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &b);
}

static int child(int a, int b, int c, int d, int e)
{
	/* A: a fresh, working iommufd, still /dev/iommu's char device. */
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(a, &ioas));
	CHECK_EQ(ioas, 1);
	struct stat st;
	CHECK_OK(fstat(a, &st));
	CHECK_TRUE(S_ISCHR(st.st_mode));
	/* B: close-on-exec. */
	CHECK_ERR(fcntl(b, F_GETFD), EBADF);
	/* C and E: state lost at exec. */
	CHECK_ERR(ioas_lookup(c, 1), EIO);
	CHECK_ERR(ioas_alloc(c, &ioas), EIO);
	struct vfio_device_info info = { .argsz = sizeof(info) };
	CHECK_ERR(ioctl(e, VFIO_DEVICE_GET_INFO, &info), EIO);
	/* D: the device, unbound: bind it to A and read its config space. */
	CHECK_ERR(ioctl(d, VFIO_DEVICE_GET_INFO, &info), EINVAL);
	CHECK_OK(bind_dev(d, a));
	CHECK_OK(ioctl(d, VFIO_DEVICE_GET_INFO, &info));
	struct vfio_region_info r = { .argsz = sizeof(r), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	CHECK_OK(ioctl(d, VFIO_DEVICE_GET_REGION_INFO, &r));
	unsigned short vendor = 0;
	CHECK_EQ(pread(d, &vendor, 2, (off_t)r.offset), 2);
	CHECK_EQ(vendor, 0x1234);
	return pass();
}

/* The three descriptors of a message: A (object-less), D (unbound
 * device), C (stateful). */
static int receiver(int sock)
{
	char byte;
	struct iovec iov = { &byte, 1 };
	union {
		char buf[CMSG_SPACE(3 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	CHECK_EQ(recvmsg(sock, &m, MSG_CMSG_CLOEXEC), 1);
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	CHECK_TRUE(c && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(3 * sizeof(int)));
	int fds[3];
	memcpy(fds, CMSG_DATA(c), sizeof(fds));
	int a = fds[0], d = fds[1], cc = fds[2];
	CHECK_EQ(fcntl(a, F_GETFD), FD_CLOEXEC);
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(a, &ioas));
	CHECK_EQ(ioas, 1);
	CHECK_ERR(ioas_lookup(cc, 1), EIO);
	struct vfio_device_info info = { .argsz = sizeof(info) };
	CHECK_OK(bind_dev(d, a));
	CHECK_OK(ioctl(d, VFIO_DEVICE_GET_INFO, &info));
	return pass();
}

static void wait_ok(pid_t pid, const char *how)
{
	int status = 0;

	CHECK_EQ(waitpid(pid, &status, 0), pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fprintf(stderr, "FAIL %s: child status %#x\n", how, status);
	CHECK_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "receiver"))
		return receiver(atoi(argv[2]));
	if (argc == 7 && !strcmp(argv[1], "child"))
		return child(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));

	int a = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	int b = (int)CHECK_OK(open("/dev/iommu", O_RDWR | O_CLOEXEC));
	int c = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(c, &ioas));
	struct iommu_test_cmd md = { .size = sizeof(md), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	CHECK_OK(ioctl(c, IOMMU_TEST_CMD, &md));
	long ps = sysconf(_SC_PAGESIZE);
	char *buf = mmap(NULL, 4 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(buf != MAP_FAILED);
	struct iommu_ioas_map map = { .size = sizeof(map),
				      .flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
				      .ioas_id = ioas, .user_va = (uintptr_t)buf, .length = 4 * ps };
	CHECK_OK(ioctl(c, IOMMU_IOAS_MAP, &map));
	int d = (int)CHECK_OK(open("/dev/vfio/devices/vfio0", O_RDWR));
	int e = (int)CHECK_OK(open("/dev/vfio/devices/vfio0", O_RDWR));
	CHECK_OK(bind_dev(e, c));
	/* E holds the device: D cannot bind while E is bound. Unbinding is
	 * closing; the child binds D, so E goes before the exec in the
	 * spawn cases below... keep it: the child gets D bound only after E
	 * is gone there, which the lost state guarantees (E's binding is not
	 * in the child). */

	char s[5][16];
	int fds[5] = { a, b, c, d, e };
	for (int i = 0; i < 5; i++)
		snprintf(s[i], sizeof(s[i]), "%d", fds[i]);
	char *args[] = { argv[0], "child", s[0], s[1], s[2], s[3], s[4], NULL };

	fflush(stdout);
	pid_t pid = (pid_t)CHECK_OK(fork());
	if (pid == 0) {
		execv(argv[0], args);
		_exit(127);
	}
	wait_ok(pid, "fork + execv");

	pid = (pid_t)CHECK_OK(fork());
	if (pid == 0) {
		execl(argv[0], argv[0], "child", s[0], s[1], s[2], s[3], s[4], (char *)NULL);
		_exit(127);
	}
	wait_ok(pid, "fork + execl");

	CHECK_EQ(posix_spawn(&pid, argv[0], NULL, NULL, args, environ), 0);
	wait_ok(pid, "posix_spawn");

	char cmd[512];
	snprintf(cmd, sizeof(cmd), "exec '%s' child %s %s %s %s %s", argv[0], s[0], s[1], s[2], s[3], s[4]);
	char *sh[] = { "/bin/sh", "-c", cmd, NULL };
	CHECK_EQ(posix_spawn(&pid, "/bin/sh", NULL, NULL, sh, environ), 0);
	wait_ok(pid, "sh -c exec");

	/* SCM_RIGHTS to a separate process (it inherits none of these). */
	int sv[2];
	CHECK_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
	int keep = (int)CHECK_OK(fcntl(sv[1], F_DUPFD, 100)); /* not close-on-exec */
	char ks[16];
	snprintf(ks, sizeof(ks), "%d", keep);
	char *rargs[] = { argv[0], "receiver", ks, NULL };
	int a2 = (int)CHECK_OK(open("/dev/iommu", O_RDWR | O_CLOEXEC));
	int d2 = (int)CHECK_OK(open("/dev/vfio/devices/vfio0", O_RDWR | O_CLOEXEC));
	CHECK_OK(close(d));
	CHECK_EQ(posix_spawn(&pid, argv[0], NULL, NULL, rargs, environ), 0);
	CHECK_OK(close(keep));
	CHECK_OK(close(sv[1]));
	int pass3[3] = { a2, d2, c };
	union {
		char buf[CMSG_SPACE(sizeof(pass3))];
		struct cmsghdr align;
	} u;
	memset(&u, 0, sizeof(u));
	char byte = 'x';
	struct iovec iov = { &byte, 1 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(pass3));
	memcpy(CMSG_DATA(cm), pass3, sizeof(pass3));
	CHECK_EQ(sendmsg(sv[0], &m, 0), 1);
	wait_ok(pid, "SCM_RIGHTS");
	CHECK_OK(close(sv[0]));

	/* Ours are untouched by all that. */
	CHECK_OK(ioas_lookup(c, ioas));
	CHECK_ERR(ioas_lookup(a, 1), ENOENT);
	return pass();
}
