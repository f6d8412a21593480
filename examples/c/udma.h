/* SPDX-License-Identifier: Apache-2.0 */
/*
 * udma.h: the uiommufd DMA engine's datasheet (docs/devices/dma-engine.md)
 * as C definitions, and the VFIO device-cdev ioctls that C library headers
 * older than Linux 6.6 lack (the kernel's definitions). Shared by the
 * examples in this directory; a driver of your own can copy it.
 */
#ifndef UDMA_H
#define UDMA_H

#include <stdint.h>
#include <linux/vfio.h>

#ifndef VFIO_DEVICE_BIND_IOMMUFD
struct vfio_device_bind_iommufd {
	__u32 argsz;
	__u32 flags;
	__s32 iommufd;
	__u32 out_devid;
};
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)

struct vfio_device_attach_iommufd_pt {
	__u32 argsz;
	__u32 flags;
	__u32 pt_id;
};
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)

struct vfio_device_detach_iommufd_pt {
	__u32 argsz;
	__u32 flags;
};
#define VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 20)
#endif

#define UDMA_VENDOR_ID 0x1234
#define UDMA_DEVICE_ID 0x5544

/* BAR0 registers. */
#define UDMA_ID 0x000 /* RO u32: "UDMA" */
#define UDMA_VERSION 0x004 /* RO u32 */
#define UDMA_CTRL 0x010 /* RW u32 */
#define UDMA_STATUS 0x018 /* RO u32 */
#define UDMA_RING_BASE 0x020 /* RW u64: IOVA of descriptor 0 */
#define UDMA_RING_SIZE 0x028 /* RW u32: descriptors, power of two */
#define UDMA_HEAD 0x030 /* RO u32 */
#define UDMA_TAIL 0x038 /* RW u32: doorbell */
#define UDMA_COMPLETED 0x040 /* RO u64 */
#define UDMA_ERRORS 0x048 /* RO u64 */
#define UDMA_ERR_CODE 0x058 /* RO u32 */

#define UDMA_ID_VALUE 0x414d4455u /* "UDMA" in memory order */

#define UDMA_CTRL_ENABLE (1u << 0)
#define UDMA_CTRL_RESET (1u << 1)

#define UDMA_STATUS_ENABLED (1u << 0)
#define UDMA_STATUS_HALTED (1u << 2)

/* Descriptors: 64 bytes, little-endian. */
struct udma_desc {
	uint8_t opcode;
	uint8_t flags;
	uint16_t reserved0;
	uint32_t pasid;
	uint64_t src;
	uint64_t dst;
	uint64_t len;
	uint64_t pattern;
	uint64_t reserved1;
	uint64_t result; /* written by the device */
	uint32_t status; /* written by the device, last */
	uint32_t reserved2;
};
_Static_assert(sizeof(struct udma_desc) == 64, "descriptor layout");

#define UDMA_OP_NOP 0
#define UDMA_OP_COPY 1
#define UDMA_OP_FILL 2
#define UDMA_OP_COMPARE 3

#define UDMA_DESC_IRQ (1u << 0) /* MSI-X vector 0 on completion */

/* Completion status codes. */
#define UDMA_ST_NONE 0x00
#define UDMA_ST_SUCCESS 0x01
#define UDMA_ST_MISMATCH 0x02
#define UDMA_ST_BAD_OPCODE 0x10
#define UDMA_ST_BAD_FLAGS 0x11
#define UDMA_ST_BAD_PASID 0x12
#define UDMA_ST_BAD_LENGTH 0x13
#define UDMA_ST_READ_FAULT 0x14
#define UDMA_ST_WRITE_FAULT 0x15

#endif /* UDMA_H */
