/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every libc way of reading and writing a served descriptor: read, write,
 * pread(64), pwrite(64), the fortified __read_chk/__pread_chk/
 * __pread64_chk, readv, writev, preadv(64), pwritev(64), preadv2,
 * pwritev2 (and glibc's preadv64v2/pwritev64v2), lseek.
 *
 * On a VFIO device (run with --device dma-engine): config space and BAR0
 * through the positioned calls, BAR0 through the file position; bytes
 * compared with the device's known registers and with a plain pread.
 * On a fault queue (the mock device's IOPF): records through the read
 * family, responses through the write family. On a vEVENTQ: records
 * through readv.
 *
 * The iommufd part (argument "novfio") passes unchanged on Linux 7.3.4
 * (the oracle, /work/shared/oracle).
 *
 * Errnos are the kernel's (fs/read_write.c, lib/iov_iter.c): ESPIPE for
 * positioned calls on the queues (anonymous files without FMODE_PREAD)
 * and for lseek on every served file (none has llseek), EINVAL for more
 * than UIO_MAXIOV segments or a negative length, EFAULT for an unreadable
 * iovec array, EOPNOTSUPP for RWF_* flags other than RWF_HIPRI (no
 * read_iter), EBADF for the wrong direction.
 */
#define _GNU_SOURCE
#include "iommufd_util.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/uio.h>
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

#ifndef RWF_HIPRI
#define RWF_HIPRI 0x1
#endif
#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x8
#endif

/* The fortified entry points, called directly so each is exercised
 * whatever the compiler's fortification level. */
extern ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen);
extern ssize_t __pread_chk(int fd, void *buf, size_t n, off_t off, size_t buflen);
extern ssize_t __pread64_chk(int fd, void *buf, size_t n, off64_t off, size_t buflen);

/* The DMA engine (crates/devices/src/dma_engine/regs.rs). */
#define DMA_VENDOR 0x1234
#define DMA_DEVICE 0x5544
#define REG_ID 0x00
#define ID_VALUE 0x414d4455 /* "UDMA" in memory order */
#define REG_CTRL 0x10
#define REG_RING_BASE 0x20

static struct vfio_region_info region(int dev, __u32 index)
{
	struct vfio_region_info r = { .argsz = sizeof(r), .index = index };

	CHECK_OK(ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &r));
	return r;
}

static void vfio_device(int iommufd)
{
	int dev = (int)CHECK_OK(open("/dev/vfio/devices/vfio0", O_RDWR));
	struct vfio_device_bind_iommufd b = { .argsz = 16, .iommufd = iommufd };

	CHECK_OK(ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &b));
	off_t cfg = (off_t)region(dev, VFIO_PCI_CONFIG_REGION_INDEX).offset;
	off_t bar = (off_t)region(dev, VFIO_PCI_BAR0_REGION_INDEX).offset;
	CHECK_EQ(bar, 0); /* so the file position starts in BAR0 */

	/* Config space: vendor and device ID through every positioned read. */
	unsigned char ref[64], got[64];
	CHECK_EQ(pread(dev, ref, sizeof(ref), cfg), sizeof(ref));
	CHECK_EQ(ref[0] | ref[1] << 8, DMA_VENDOR);
	CHECK_EQ(ref[2] | ref[3] << 8, DMA_DEVICE);

#define SAME_AS_REF(call)                                        \
	do {                                                     \
		memset(got, 0xa5, sizeof(got));                  \
		CHECK_EQ(call, sizeof(got));                     \
		CHECK_EQ(memcmp(got, ref, sizeof(got)), 0);      \
	} while (0)

	SAME_AS_REF(pread64(dev, got, sizeof(got), cfg));
	SAME_AS_REF(__pread_chk(dev, got, sizeof(got), cfg, sizeof(got)));
	SAME_AS_REF(__pread64_chk(dev, got, sizeof(got), cfg, sizeof(got)));
	/* Three segments, an empty one between. */
	struct iovec v[3] = {
		{ got, 16 }, { got + 16, 0 }, { got + 16, 48 },
	};
	SAME_AS_REF(preadv(dev, v, 3, cfg));
	SAME_AS_REF(preadv64(dev, v, 3, cfg));
	SAME_AS_REF(preadv2(dev, v, 3, cfg, 0));
	SAME_AS_REF(preadv2(dev, v, 3, cfg, RWF_HIPRI));
	SAME_AS_REF(preadv64v2(dev, v, 3, cfg, 0));
	/* Flags a file without read_iter cannot take; negative offsets;
	 * segment counts and lengths the kernel refuses. */
	CHECK_ERR(preadv2(dev, v, 3, cfg, RWF_NOWAIT), EOPNOTSUPP);
	CHECK_ERR(preadv(dev, v, 3, -2), EINVAL);
	CHECK_ERR(preadv2(dev, v, 3, -2, 0), EINVAL);
	CHECK_ERR(pread(dev, got, 4, -1), EINVAL);
	static struct iovec many[1025];
	CHECK_ERR(preadv(dev, many, 1025, cfg), EINVAL);
	volatile int minus_one = -1; /* a count the system call sees as huge */
	CHECK_ERR(preadv(dev, v, minus_one, cfg), EINVAL);
	struct iovec *volatile unmapped = (struct iovec *)8;
	CHECK_ERR(preadv(dev, unmapped, 2, cfg), EFAULT);
	struct iovec neg[2] = { { got, 4 }, { got, (size_t)-1 } };
	CHECK_ERR(preadv(dev, neg, 2, cfg), EINVAL);
	/* No segments, or only empty ones: 0, the device is not asked. */
	CHECK_EQ(preadv(dev, v, 0, cfg), 0);
	struct iovec empty[2] = { { got, 0 }, { NULL, 0 } };
	CHECK_EQ(preadv(dev, empty, 2, cfg), 0);
	/* The offset where the call would end must not overflow. */
	CHECK_ERR(preadv(dev, v, 3, INT64_MAX - 8), EINVAL);

	/* A segment that fails after one that read ends the vector with the
	 * count so far: config space refuses an access across its end
	 * (vfio_config_do_rw: EFAULT). */
	struct vfio_region_info ci = region(dev, VFIO_PCI_CONFIG_REGION_INDEX);
	struct iovec tail[2] = { { got, 8 }, { got + 8, 8 } };
	CHECK_ERR(pread(dev, got, 8, cfg + (off_t)ci.size - 4), EFAULT);
	CHECK_EQ(preadv(dev, tail, 2, cfg + (off_t)ci.size - 12), 8);
	CHECK_ERR(preadv(dev, tail + 1, 1, cfg + (off_t)ci.size - 4), EFAULT);

	/* Memory Space on (PCI_COMMAND_MEMORY), written a byte per segment
	 * and read back. */
	unsigned char cmd[2] = { (unsigned char)(ref[4] | 0x2), ref[5] };
	struct iovec cv[2] = { { &cmd[0], 1 }, { &cmd[1], 1 } };
	CHECK_EQ(pwritev(dev, cv, 2, cfg + 4), 2);
	unsigned char cmd_back[2] = { 0, 0 };
	CHECK_EQ(pread(dev, cmd_back, 2, cfg + 4), 2);
	CHECK_TRUE(cmd_back[0] & 0x2);

	/* BAR0 registers, positioned: a 64-bit register written in two
	 * segments reads back whole. */
	uint32_t lo = 0x12345000, hi = 0x9;
	struct iovec w[2] = { { &lo, 4 }, { &hi, 4 } };
	CHECK_EQ(pwritev(dev, w, 2, bar + REG_RING_BASE), 8);
	uint64_t base = 0;
	CHECK_EQ(pread(dev, &base, 8, bar + REG_RING_BASE), 8);
	CHECK_EQ(base, 0x912345000ull);
	lo = 0x22222000;
	CHECK_EQ(pwritev64(dev, w, 2, bar + REG_RING_BASE), 8);
	CHECK_EQ(pread(dev, &base, 8, bar + REG_RING_BASE), 8);
	CHECK_EQ(base, 0x922222000ull);
	lo = 0x33333000;
	CHECK_EQ(pwritev2(dev, w, 2, bar + REG_RING_BASE, 0), 8);
	CHECK_EQ(pread(dev, &base, 8, bar + REG_RING_BASE), 8);
	CHECK_EQ(base, 0x933333000ull);
	lo = 0x44444000;
	CHECK_EQ(pwritev64v2(dev, w, 2, bar + REG_RING_BASE, 0), 8);
	CHECK_EQ(__pread64_chk(dev, &base, 8, bar + REG_RING_BASE, 8), 8);
	CHECK_EQ(base, 0x944444000ull);
	CHECK_ERR(pwritev2(dev, w, 2, bar + REG_RING_BASE, RWF_NOWAIT), EOPNOTSUPP);

	/* The file position (BAR0 at 0): the read family advances it, the
	 * positioned calls do not. No served file can seek. */
	CHECK_ERR(lseek(dev, 0, SEEK_SET), ESPIPE);
	CHECK_ERR(lseek64(dev, 0, SEEK_CUR), ESPIPE);
	CHECK_ERR(lseek(dev, 0, 7), EINVAL);
	uint32_t id = 0, version = 0;
	uint64_t cap = 0, cap_ref = 0;
	CHECK_EQ(pread(dev, &cap_ref, 8, bar + 8), 8);
	struct iovec r[3] = { { &id, 4 }, { &version, 4 }, { &cap, 8 } };
	CHECK_EQ(readv(dev, r, 3), 16);
	CHECK_EQ(id, ID_VALUE);
	CHECK_EQ(cap, cap_ref);
	/* Now at CTRL (0x10): write it through writev (0: disabled). */
	uint32_t ctrl = 0, pad = 0;
	struct iovec cw[2] = { { &ctrl, 4 }, { &pad, 4 } };
	CHECK_EQ(writev(dev, cw, 2), 8);
	/* Now at 0x18; preadv2 at -1 reads there, then read at 0x20. */
	uint64_t status = 1;
	struct iovec s1 = { &status, 8 };
	CHECK_EQ(preadv2(dev, &s1, 1, -1, 0), 8);
	uint64_t ring = 0;
	CHECK_EQ(read(dev, &ring, 8), 8);
	CHECK_EQ(ring, 0x944444000ull);
	/* Back at RING_BASE through a new descriptor (position 0): the
	 * fortified read and pwritev64v2/preadv64v2 at the file position. */
	int dev2 = (int)CHECK_OK(open("/dev/vfio/devices/vfio0", O_RDWR));
	id = 0;
	CHECK_ERR(__read_chk(dev2, &id, 4, 4), EINVAL); /* not bound */
	CHECK_OK(close(dev2));
	uint64_t zero = 0;
	CHECK_EQ(pwrite64(dev, &zero, 8, bar + REG_RING_BASE), 8);
	CHECK_EQ(pread64(dev, &base, 8, bar + REG_RING_BASE), 8);
	CHECK_EQ(base, 0);

	/* The wrong direction: a read-only descriptor cannot write. */
	int ro = (int)CHECK_OK(open("/dev/vfio/devices/vfio0", O_RDONLY));
	CHECK_ERR(pwritev(ro, w, 2, bar + REG_RING_BASE), EBADF);
	CHECK_ERR(pwrite(ro, &zero, 8, bar + REG_RING_BASE), EBADF);
	CHECK_ERR(writev(ro, w, 2), EBADF);
	CHECK_OK(close(ro));
	CHECK_OK(close(dev));
}

static int test_cmd(int fd, struct iommu_test_cmd *cmd)
{
	cmd->size = sizeof(*cmd);
	return ioctl(fd, IOMMU_TEST_CMD, cmd);
}

static int hwpt_alloc(int fd, __u32 dev, __u32 pt, __u32 flags, __u32 fault, __u32 type, void *data,
		      __u32 len, __u32 *out)
{
	struct iommu_hwpt_alloc cmd = {
		.size = sizeof(cmd), .flags = flags, .dev_id = dev, .pt_id = pt,
		.data_type = type, .data_len = len, .data_uptr = (uintptr_t)data, .fault_id = fault,
	};
	int rc = ioctl(fd, IOMMU_HWPT_ALLOC, &cmd);

	if (!rc)
		*out = cmd.out_hwpt_id;
	return rc;
}

static void trigger_iopf(int fd, __u32 idev, __u32 grpid, __u64 addr)
{
	struct iommu_test_cmd t = {
		.op = IOMMU_TEST_OP_TRIGGER_IOPF,
		.trigger_iopf = { .dev_id = idev, .pasid = 1, .grpid = grpid,
				  .perm = IOMMU_PGFAULT_PERM_READ, .addr = addr },
	};
	CHECK_OK(test_cmd(fd, &t));
}

static void fault_queue(int fd)
{
	__u32 ioas = 0, stdev, hwpt, idev, parent, iopf_hwpt;
	CHECK_OK(ioas_alloc(fd, &ioas));
	struct iommu_test_cmd md = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	CHECK_OK(test_cmd(fd, &md));
	stdev = md.mock_domain.out_stdev_id;
	hwpt = md.mock_domain.out_hwpt_id;
	idev = md.mock_domain.out_idev_id;
	(void)hwpt;
	CHECK_OK(hwpt_alloc(fd, idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT, 0, IOMMU_HWPT_DATA_NONE, NULL, 0,
			    &parent));
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	CHECK_OK(ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa));
	int q = (int)fa.out_fault_fd;
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
	CHECK_OK(hwpt_alloc(fd, idev, parent, IOMMU_HWPT_FAULT_ID_VALID, fa.out_fault_id,
			    IOMMU_HWPT_DATA_SELFTEST, &data, sizeof(data), &iopf_hwpt));
	struct iommu_test_cmd rep = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = stdev,
				      .mock_domain_replace = { .pt_id = iopf_hwpt } };
	CHECK_OK(test_cmd(fd, &rep));

	struct iommu_hwpt_pgfault f[4];
	const size_t fsz = sizeof(f[0]);

	/* No position: every positioned call is ESPIPE, lseek too. */
	CHECK_ERR(pread(q, f, fsz, 0), ESPIPE);
	CHECK_ERR(pread64(q, f, fsz, 0), ESPIPE);
	CHECK_ERR(__pread64_chk(q, f, fsz, 0, sizeof(f)), ESPIPE);
	struct iovec one = { f, fsz };
	CHECK_ERR(preadv(q, &one, 1, 0), ESPIPE);
	CHECK_ERR(preadv2(q, &one, 1, 0, 0), ESPIPE);
	CHECK_ERR(pwritev(q, &one, 1, 0), ESPIPE);
	CHECK_ERR(lseek(q, 0, SEEK_SET), ESPIPE);

	/* Two faults, read through two segments of one record each. */
	trigger_iopf(fd, idev, 1, 0x1000);
	trigger_iopf(fd, idev, 2, 0x2000);
	memset(f, 0, sizeof(f));
	struct iovec two[2] = { { &f[0], fsz }, { &f[1], fsz } };
	CHECK_EQ(readv(q, two, 2), 2 * fsz);
	CHECK_EQ(f[0].addr, 0x1000);
	CHECK_EQ(f[1].addr, 0x2000);
	CHECK_EQ(f[0].grpid, 1);
	CHECK_EQ(f[1].grpid, 2);
	CHECK_EQ(f[0].dev_id, idev);
	/* Both answered through writev. */
	struct iommu_hwpt_page_response resp[2] = {
		{ .cookie = f[0].cookie, .code = IOMMUFD_PAGE_RESP_SUCCESS },
		{ .cookie = f[1].cookie, .code = IOMMUFD_PAGE_RESP_SUCCESS },
	};
	struct iovec rv[2] = { { &resp[0], sizeof(resp[0]) }, { &resp[1], sizeof(resp[1]) } };
	CHECK_EQ(writev(q, rv, 2), 2 * sizeof(resp[0]));
	/* Answered already: the cookies are gone. */
	CHECK_ERR(writev(q, rv, 2), EINVAL);

	/* A segment that is not a whole number of records fails the call
	 * (ESPIPE, the queue's answer) and takes nothing off the queue. */
	trigger_iopf(fd, idev, 3, 0x3000);
	struct iovec bad[2] = { { &f[0], fsz + 1 }, { &f[1], fsz } };
	CHECK_ERR(readv(q, bad, 2), ESPIPE);
	/* The fortified read, and preadv2/preadv64v2 at the file position. */
	memset(f, 0, sizeof(f));
	CHECK_EQ(__read_chk(q, f, fsz, sizeof(f)), fsz);
	CHECK_EQ(f[0].addr, 0x3000);
	resp[0].cookie = f[0].cookie;
	CHECK_EQ(pwritev2(q, rv, 1, -1, 0), sizeof(resp[0]));
	trigger_iopf(fd, idev, 4, 0x4000);
	trigger_iopf(fd, idev, 5, 0x5000);
	memset(f, 0, sizeof(f));
	CHECK_EQ(preadv2(q, &one, 1, -1, 0), fsz);
	CHECK_EQ(f[0].addr, 0x4000);
	resp[0].cookie = f[0].cookie;
	memset(f, 0, sizeof(f));
	CHECK_EQ(preadv64v2(q, &one, 1, -1, RWF_HIPRI), fsz);
	CHECK_EQ(f[0].addr, 0x5000);
	resp[1].cookie = f[0].cookie;
	CHECK_EQ(pwritev64v2(q, rv, 2, -1, 0), 2 * sizeof(resp[0]));
	/* A second segment that fails after the first read something: the
	 * count so far. */
	trigger_iopf(fd, idev, 6, 0x6000);
	struct iovec partial[2] = { { &f[0], fsz }, { &f[1], fsz + 1 } };
	CHECK_EQ(readv(q, partial, 2), fsz);
	CHECK_EQ(f[0].addr, 0x6000);
	resp[0].cookie = f[0].cookie;
	CHECK_EQ(write(q, &resp[0], sizeof(resp[0])), sizeof(resp[0]));
	/* Nothing pending: a read gives 0. */
	CHECK_EQ(readv(q, two, 2), 0);

	CHECK_OK(close(q));
}

static void veventq(int fd)
{
	__u32 ioas = 0, stdev, hwpt, idev, parent, viommu, vdev, veventq;
	CHECK_OK(ioas_alloc(fd, &ioas));
	struct iommu_test_cmd md = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	CHECK_OK(test_cmd(fd, &md));
	stdev = md.mock_domain.out_stdev_id;
	hwpt = md.mock_domain.out_hwpt_id;
	idev = md.mock_domain.out_idev_id;
	(void)hwpt;
	CHECK_OK(hwpt_alloc(fd, idev, ioas, IOMMU_HWPT_ALLOC_NEST_PARENT, 0, IOMMU_HWPT_DATA_NONE, NULL, 0,
			    &parent));
	struct iommu_viommu_alloc va = { .size = sizeof(va), .type = IOMMU_VIOMMU_TYPE_SELFTEST,
					 .dev_id = idev, .hwpt_id = parent };
	CHECK_OK(ioctl(fd, IOMMU_VIOMMU_ALLOC, &va));
	viommu = va.out_viommu_id;
	struct iommu_vdevice_alloc vd = { .size = sizeof(vd), .viommu_id = viommu, .dev_id = idev,
					  .virt_id = 0x99 };
	CHECK_OK(ioctl(fd, IOMMU_VDEVICE_ALLOC, &vd));
	vdev = vd.out_vdevice_id;
	(void)vdev;
	/* Events come from a device attached to a nested HWPT of the vIOMMU. */
	__u32 nested;
	struct iommu_hwpt_selftest data = { .iotlb = IOMMU_TEST_IOTLB_DEFAULT };
	CHECK_OK(hwpt_alloc(fd, idev, viommu, 0, 0, IOMMU_HWPT_DATA_SELFTEST, &data, sizeof(data), &nested));
	struct iommu_test_cmd rep = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, .id = stdev,
				      .mock_domain_replace = { .pt_id = nested } };
	CHECK_OK(test_cmd(fd, &rep));
	struct iommu_veventq_alloc qa = { .size = sizeof(qa), .viommu_id = viommu,
					  .type = IOMMU_VEVENTQ_TYPE_SELFTEST, .veventq_depth = 8 };
	CHECK_OK(ioctl(fd, IOMMU_VEVENTQ_ALLOC, &qa));
	veventq = qa.out_veventq_id;
	(void)veventq;
	int q = (int)qa.out_veventq_fd;

	CHECK_ERR(pread(q, &qa, 8, 0), ESPIPE);
	CHECK_ERR(lseek(q, 0, SEEK_SET), ESPIPE);
	/* Not writable: no write method. */
	CHECK_ERR(write(q, &qa, 8), EINVAL);

	struct iommu_test_cmd tv = { .op = IOMMU_TEST_OP_TRIGGER_VEVENT, .trigger_vevent = { .dev_id = idev } };
	CHECK_OK(test_cmd(fd, &tv));
	CHECK_OK(test_cmd(fd, &tv));
	/* A record is a header and the selftest event (the virtual ID). */
	struct {
		struct iommufd_vevent_header h;
		struct iommu_viommu_event_selftest e;
	} ev[2];
	memset(ev, 0, sizeof(ev));
	struct iovec v[2] = { { &ev[0], sizeof(ev[0]) }, { &ev[1], sizeof(ev[1]) } };
	CHECK_EQ(readv(q, v, 2), sizeof(ev));
	CHECK_EQ(ev[0].e.virt_id, 0x99);
	CHECK_EQ(ev[1].e.virt_id, 0x99);
	CHECK_EQ(ev[1].h.sequence, ev[0].h.sequence + 1);
	CHECK_OK(test_cmd(fd, &tv));
	memset(ev, 0, sizeof(ev));
	CHECK_EQ(__read_chk(q, &ev[0], sizeof(ev[0]), sizeof(ev)), sizeof(ev[0]));
	CHECK_EQ(ev[0].e.virt_id, 0x99);
	CHECK_OK(close(q));
}

int main(int argc, char **argv)
{
	/* "novfio": only the iommufd files (for the kernel oracle, which has
	 * the selftest mock but no VFIO device to serve). */
	int vfio = !(argc > 1 && !strcmp(argv[1], "novfio"));
	int fd = (int)CHECK_OK(open("/dev/iommu", O_RDWR));

	/* /dev/iommu itself has no read or write method; it cannot seek. */
	char b[8];
	struct iovec v = { b, sizeof(b) };
	CHECK_ERR(read(fd, b, sizeof(b)), EINVAL);
	CHECK_ERR(readv(fd, &v, 1), EINVAL);
	CHECK_ERR(writev(fd, &v, 1), EINVAL);
	CHECK_ERR(preadv(fd, &v, 1, 0), EINVAL);
	CHECK_ERR(lseek(fd, 0, SEEK_SET), ESPIPE);

	if (vfio)
		vfio_device(fd);
	fault_queue(fd);
	veventq(fd);
	CHECK_OK(close(fd));
	return pass();
}
