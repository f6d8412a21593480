/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A program for `uiommufd inspect` to look at (crates/cli/tests/shim.rs):
 * an IOAS with two areas (one pinned through a mock device's domain), a
 * nesting parent and a nested HWPT with a fault queue that holds one
 * fault group not read yet, and a second iommufd with nothing in it. It
 * prints "ready PID IOAS MOCK_HWPT IDEV PARENT NESTED FAULT" and keeps all
 * of that until its standard input closes. Each line "fork" on its
 * standard input forks a child that opens an iommufd of its own, maps one
 * page in an IOAS, prints "child PID IOAS" and waits for the parent's end.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <string.h>
#include <sys/wait.h>
#include <stdint.h>
#include <sys/mman.h>
#include <uiommufd/iommufd_test.h>

static int fd;

static int test_cmd(struct iommu_test_cmd *cmd)
{
	cmd->size = sizeof(*cmd);
	return ioctl(fd, IOMMU_TEST_CMD, cmd);
}

int main(void)
{
	fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	int other = (int)CHECK_OK(open("/dev/iommu", O_RDWR));
	__u32 ioas = 0;
	CHECK_OK(ioas_alloc(fd, &ioas));
	struct iommu_test_cmd md = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	CHECK_OK(test_cmd(&md));
	__u32 idev = md.mock_domain.out_idev_id;

	long ps = sysconf(_SC_PAGESIZE);
	char *buf = mmap(NULL, 8 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK_TRUE(buf != MAP_FAILED);
	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
		.ioas_id = ioas, .user_va = (uintptr_t)buf, .length = 4 * ps, .iova = 1 << 24,
	};
	CHECK_OK(ioctl(fd, IOMMU_IOAS_MAP, &map));
	map.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE;
	map.user_va = (uintptr_t)(buf + 4 * ps);
	map.length = 2 * ps;
	map.iova = 1 << 26;
	CHECK_OK(ioctl(fd, IOMMU_IOAS_MAP, &map));

	struct iommu_hwpt_alloc parent = { .size = sizeof(parent), .flags = IOMMU_HWPT_ALLOC_NEST_PARENT,
					   .dev_id = idev, .pt_id = ioas };
	CHECK_OK(ioctl(fd, IOMMU_HWPT_ALLOC, &parent));
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	CHECK_OK(ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa));
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
	struct iommu_hwpt_alloc nested = {
		.size = sizeof(nested), .flags = IOMMU_HWPT_FAULT_ID_VALID, .dev_id = idev,
		.pt_id = parent.out_hwpt_id, .data_type = IOMMU_HWPT_DATA_SELFTEST, .data_len = sizeof(data),
		.data_uptr = (uintptr_t)&data, .fault_id = fa.out_fault_id,
	};
	CHECK_OK(ioctl(fd, IOMMU_HWPT_ALLOC, &nested));
	struct iommu_test_cmd rep = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = md.mock_domain.out_stdev_id,
				      .mock_domain_replace = { .pt_id = nested.out_hwpt_id } };
	CHECK_OK(test_cmd(&rep));
	struct iommu_test_cmd iopf = {
		.op = IOMMU_TEST_OP_TRIGGER_IOPF,
		.trigger_iopf = { .dev_id = idev, .pasid = 1, .grpid = 1, .perm = IOMMU_PGFAULT_PERM_READ, .addr = 0x1000 },
	};
	CHECK_OK(test_cmd(&iopf));

	printf("ready %d %u %u %u %u %u %u\n", getpid(), ioas, md.mock_domain.out_hwpt_id, idev, parent.out_hwpt_id,
	       nested.out_hwpt_id, fa.out_fault_id);
	fflush(stdout);
	int hold[2];
	CHECK_OK(pipe(hold));
	int children = 0;
	char line[64];
	while (fgets(line, sizeof(line), stdin)) {
		if (strcmp(line, "fork\n"))
			continue;
		pid_t pid = fork();
		CHECK_TRUE(pid >= 0);
		if (pid == 0) {
			close(hold[1]);
			int own = open("/dev/iommu", O_RDWR);
			__u32 own_ioas = 0;
			if (own < 0 || ioas_alloc(own, &own_ioas))
				_exit(2);
			struct iommu_ioas_map one = {
				.size = sizeof(one), .flags = IOMMU_IOAS_MAP_READABLE, .ioas_id = own_ioas,
				.user_va = (uintptr_t)buf, .length = ps,
			};
			if (ioctl(own, IOMMU_IOAS_MAP, &one))
				_exit(3);
			printf("child %d %u\n", getpid(), own_ioas);
			fflush(stdout);
			char c;
			while (read(hold[0], &c, 1) > 0)
				;
			exit(0);
		}
		children++;
	}
	CHECK_OK(close(hold[1]));
	for (int i = 0; i < children; i++) {
		int status = 0;
		CHECK_TRUE(wait(&status) > 0);
		CHECK_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	CHECK_OK(close((int)fa.out_fault_fd));
	CHECK_OK(close(other));
	CHECK_OK(close(fd));
	return pass();
}
