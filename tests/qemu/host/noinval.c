/*
 * The negative control of the nested scenario: an LD_PRELOAD placed in
 * front of uiommufd's shim that answers every IOMMU_HWPT_INVALIDATE with
 * success without passing it on, as a VMM that forgot to propagate the
 * guest's IOTLB invalidations would. The IOMMU then keeps serving the
 * translation the guest removed, and the guest's DMA to an IOVA it
 * unmapped must land in the old page instead of faulting.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/ioctl.h>

#define IOMMU_HWPT_INVALIDATE 0x3b8d /* _IO(';', 0x8d) */

int ioctl(int fd, unsigned long request, ...)
{
	static int (*next)(int, unsigned long, ...);
	va_list ap;
	va_start(ap, request);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	if ((uint32_t)request == IOMMU_HWPT_INVALIDATE)
		return 0; /* entry_num stays: "all handled" */
	if (!next)
		next = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
	return next(fd, request, arg);
}
