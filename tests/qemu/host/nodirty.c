/*
 * The negative control of the migration scenario: an LD_PRELOAD placed in
 * front of uiommufd's shim that lets every IOMMU_HWPT_GET_DIRTY_BITMAP
 * reach uiommufd and then clears the bitmap it returned, as a VMM that
 * skipped the IOMMU's dirty bitmap would see it. The guest must then find
 * pages whose last DMA write did not arrive.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

#define IOMMU_HWPT_GET_DIRTY_BITMAP 0x3b8c /* _IO(';', 0x8c) */

struct iommu_hwpt_get_dirty_bitmap {
	uint32_t size, hwpt_id, flags, reserved;
	uint64_t iova, length, page_size, data;
};

int ioctl(int fd, unsigned long request, ...)
{
	static int (*next)(int, unsigned long, ...);
	va_list ap;
	va_start(ap, request);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	if (!next)
		next = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
	int r = next(fd, request, arg);
	if (r == 0 && (uint32_t)request == IOMMU_HWPT_GET_DIRTY_BITMAP) {
		struct iommu_hwpt_get_dirty_bitmap *b = arg;
		if (b->page_size) {
			uint64_t words = (b->length / b->page_size + 63) / 64;
			memset((void *)(uintptr_t)b->data, 0, words * 8);
		}
	}
	return r;
}
