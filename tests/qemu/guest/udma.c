/*
 * udma: the guest side of the QEMU scenarios (tests/qemu/run.sh). A static
 * program for a busybox guest that drives uiommufd's DMA engine
 * (docs/devices/dma-engine.md) as QEMU passes it through with vfio-pci.
 *
 *   udma sysfs          driverless: BAR0 through sysfs resource0, buffers
 *                       at their guest-physical addresses (pagemap); COPY,
 *                       FILL, and a FILL aimed at unmapped guest memory
 *   udma vfio [--irq]   the guest's own vfio-pci behind QEMU's intel-iommu:
 *                       buffers mapped at IOVAs of this program's choice
 *                       (type1 MAP_DMA), COPY and FILL land, a FILL to an
 *                       IOVA it unmapped faults; --irq waits for MSI-X
 *                       completion interrupts on an eventfd and checks the
 *                       kernel's interrupt counter moved
 *   udma fresh          driverless: the engine's registers are at their
 *                       power-on values (after a reset or a hot-plug)
 *   udma mig PAGES      driverless DMA loop for live migration: FILL every
 *                       page with a (round, page) pattern, round after
 *                       round, until a line arrives on stdin; then check
 *                       every page holds the last completed round, and run
 *                       more rounds (DMA continues after the switch)
 *
 * Each check prints "ok: ..." or "FAIL: ..."; the exit status is 0 only if
 * all passed. The last line is "udma: PASS" or "udma: FAIL".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/vfio.h>

/* BAR0 registers (docs/devices/dma-engine.md). */
#define REG_ID 0x000
#define REG_CTRL 0x010
#define REG_STATUS 0x018
#define REG_RING_BASE 0x020
#define REG_RING_SIZE 0x028
#define REG_HEAD 0x030
#define REG_TAIL 0x038
#define REG_COMPLETED 0x040
#define REG_ERRORS 0x048
#define REG_ERR_IOVA 0x050
#define REG_ERR_CODE 0x058
#define ID_VALUE 0x414d4455u
#define CTRL_ENABLE 1u
#define CTRL_RESET 2u
#define STATUS_ENABLED 1u
#define OP_COPY 1
#define OP_FILL 2
#define FLAG_IRQ 1
#define ST_SUCCESS 1
#define ST_WRITE_FAULT 0x15
#define VENDOR 0x1234
#define DEVICE 0x5544
#define PAGE 4096u

struct desc {
	uint8_t opcode, flags;
	uint16_t rsvd0;
	uint32_t pasid;
	uint64_t src, dst, len, pattern, rsvd1, result;
	uint32_t status, rsvd2;
};

static int failures;

static void ok(int cond, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("%s: ", cond ? "ok" : "FAIL");
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
	va_end(ap);
	if (!cond)
		failures++;
}

static void die(const char *what)
{
	printf("FAIL: %s: %s\nudma: FAIL\n", what, strerror(errno));
	exit(1);
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* ---- the engine, however its BAR and memory are reached ---- */

struct engine {
	volatile uint8_t *bar;
	struct desc *ring; /* CPU view */
	uint64_t ring_dma; /* device view */
	uint32_t size, tail;
};

static uint32_t rd32(struct engine *e, unsigned off) { return *(volatile uint32_t *)(e->bar + off); }
static uint64_t rd64(struct engine *e, unsigned off) { return *(volatile uint64_t *)(e->bar + off); }
static void wr32(struct engine *e, unsigned off, uint32_t v) { *(volatile uint32_t *)(e->bar + off) = v; }
static void wr64(struct engine *e, unsigned off, uint64_t v) { *(volatile uint64_t *)(e->bar + off) = v; }

static int wait_reg(struct engine *e, unsigned off, uint32_t mask, uint32_t want)
{
	double end = now() + 10;
	while ((rd32(e, off) & mask) != want)
		if (now() > end)
			return -1;
	return 0;
}

static int engine_start(struct engine *e)
{
	if (rd32(e, REG_ID) != ID_VALUE) {
		printf("FAIL: BAR0 ID reads %#x\n", rd32(e, REG_ID));
		return -1;
	}
	wr32(e, REG_CTRL, CTRL_RESET);
	if (wait_reg(e, REG_CTRL, CTRL_RESET, 0))
		return -1;
	wr64(e, REG_RING_BASE, e->ring_dma);
	wr32(e, REG_RING_SIZE, e->size);
	wr32(e, REG_CTRL, CTRL_ENABLE);
	e->tail = 0;
	return wait_reg(e, REG_STATUS, STATUS_ENABLED, STATUS_ENABLED);
}

/* Queue one descriptor; returns its slot. The caller waits with wait_desc. */
static struct desc *submit(struct engine *e, uint8_t op, uint8_t flags, uint64_t src, uint64_t dst, uint64_t len,
			   uint64_t pattern)
{
	struct desc *d = &e->ring[e->tail];
	memset(d, 0, sizeof(*d));
	d->opcode = op;
	d->flags = flags;
	d->src = src;
	d->dst = dst;
	d->len = len;
	d->pattern = pattern;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	e->tail = (e->tail + 1) % e->size;
	wr32(e, REG_TAIL, e->tail);
	return d;
}

static uint32_t wait_desc(struct desc *d)
{
	double end = now() + 20;
	uint32_t s;
	while ((s = __atomic_load_n(&d->status, __ATOMIC_ACQUIRE)) == 0)
		if (now() > end)
			return 0;
	return s;
}

static uint32_t run1(struct engine *e, uint8_t op, uint64_t src, uint64_t dst, uint64_t len, uint64_t pattern)
{
	return wait_desc(submit(e, op, 0, src, dst, len, pattern));
}

static int check_pattern(const void *p, size_t len, uint64_t pattern)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < len; i++)
		if (b[i] != (uint8_t)(pattern >> (8 * (i % 8))))
			return 0;
	return 1;
}

/* ---- driverless: sysfs and guest-physical addresses ---- */

static char bdf[256];

/* A sysfs attribute holding a hex number (0 if unreadable). */
static unsigned read_hex(const char *dir, const char *attr)
{
	char p[512];
	unsigned v = 0;
	FILE *f;
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/%s", dir, attr);
	if (!(f = fopen(p, "r")))
		return 0;
	if (fscanf(f, "%x", &v) != 1)
		v = 0;
	fclose(f);
	return v;
}

static int find_device(void)
{
	DIR *d = opendir("/sys/bus/pci/devices");
	struct dirent *de;
	if (!d)
		die("opendir /sys/bus/pci/devices");
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (read_hex(de->d_name, "vendor") == VENDOR && read_hex(de->d_name, "device") == DEVICE) {
			snprintf(bdf, sizeof(bdf), "%s", de->d_name);
			closedir(d);
			return 0;
		}
	}
	closedir(d);
	return -1;
}

static void *page_alloc(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | MAP_LOCKED, -1,
		       0);
	if (p == MAP_FAILED)
		die("mmap");
	memset(p, 0, len);
	return p;
}

static uint64_t gpa_of(void *va)
{
	static int fd = -1;
	uint64_t e;
	if (fd < 0 && (fd = open("/proc/self/pagemap", O_RDONLY)) < 0)
		die("open pagemap");
	if (pread(fd, &e, 8, ((uintptr_t)va / PAGE) * 8) != 8)
		die("read pagemap");
	if (!(e >> 63) || !(e & ((1ull << 55) - 1))) {
		printf("FAIL: no PFN for %p (pagemap %#" PRIx64 ")\n", va, e);
		exit(1);
	}
	return (e & ((1ull << 55) - 1)) * PAGE + ((uintptr_t)va % PAGE);
}

/* Find the engine, set `command_bits` in its Command register through the
 * sysfs config file, and map BAR0 through resource0. */
static volatile uint8_t *sysfs_bar0(uint16_t command_bits)
{
	char p[512];
	uint16_t cmd;
	int fd;
	if (find_device())
		die("no DMA engine (1234:5544) in the guest");
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/config", bdf);
	if ((fd = open(p, O_RDWR)) < 0)
		die("open config");
	if (pread(fd, &cmd, 2, 4) != 2)
		die("read Command");
	cmd |= command_bits;
	if (pwrite(fd, &cmd, 2, 4) != 2)
		die("write Command");
	close(fd);
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/resource0", bdf);
	if ((fd = open(p, O_RDWR | O_SYNC)) < 0)
		die("open resource0");
	volatile uint8_t *bar = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (bar == MAP_FAILED)
		die("mmap resource0");
	return bar;
}

static void sysfs_open(struct engine *e)
{
	e->bar = sysfs_bar0(0x6); /* Memory Space, Bus Master */
	printf("device %s\n", bdf);
	/* One page of ring: contiguous in guest-physical memory by itself. */
	e->size = PAGE / sizeof(struct desc);
	e->ring = page_alloc(PAGE);
	e->ring_dma = gpa_of(e->ring);
	if (engine_start(e))
		die("engine start");
}

static int cmd_sysfs(void)
{
	struct engine e;
	sysfs_open(&e);
	uint8_t *src = page_alloc(PAGE), *dst = page_alloc(PAGE);
	for (unsigned i = 0; i < PAGE; i++)
		src[i] = (uint8_t)(i * 7 + 3);
	uint32_t s = run1(&e, OP_COPY, gpa_of(src), gpa_of(dst), PAGE, 0);
	ok(s == ST_SUCCESS && !memcmp(src, dst, PAGE), "COPY %#" PRIx64 " -> %#" PRIx64 " landed (status %#x)",
	   gpa_of(src), gpa_of(dst), s);
	s = run1(&e, OP_FILL, 0, gpa_of(dst), PAGE, 0x1122334455667788ull);
	ok(s == ST_SUCCESS && check_pattern(dst, PAGE, 0x1122334455667788ull), "FILL landed (status %#x)", s);
	/* 1 GiB is above the guest's RAM and below its PCI hole: QEMU mapped
	 * nothing there. */
	uint64_t hole = 1ull << 30;
	struct desc *d = submit(&e, OP_FILL, 0, 0, hole, PAGE, 1);
	s = wait_desc(d);
	ok(s == ST_WRITE_FAULT && d->result == hole && rd64(&e, REG_ERR_IOVA) == hole,
	   "FILL to unmapped %#" PRIx64 " faults: status %#x result %#" PRIx64 " ERR_IOVA %#" PRIx64, hole, s,
	   d->result, rd64(&e, REG_ERR_IOVA));
	s = run1(&e, OP_FILL, 0, gpa_of(dst), PAGE, 0xa5);
	ok(s == ST_SUCCESS && dst[0] == 0xa5, "the ring goes on after the fault (status %#x)", s);
	printf("completed %" PRIu64 ", errors %" PRIu64 "\n", rd64(&e, REG_COMPLETED), rd64(&e, REG_ERRORS));
	return failures;
}

static int cmd_fresh(void)
{
	struct engine e;
	e.bar = sysfs_bar0(0x2); /* Memory Space only: nothing may run */
	ok(rd32(&e, REG_ID) == ID_VALUE, "device %s answers (ID %#x)", bdf, rd32(&e, REG_ID));
	ok(rd32(&e, REG_CTRL) == 0 && rd32(&e, REG_STATUS) == 0 && rd64(&e, REG_RING_BASE) == 0 &&
		   rd32(&e, REG_RING_SIZE) == 0 && rd64(&e, REG_COMPLETED) == 0 && rd32(&e, REG_TAIL) == 0,
	   "registers at power-on values: CTRL %#x STATUS %#x RING_BASE %#" PRIx64 " RING_SIZE %u COMPLETED %" PRIu64
	   " TAIL %u",
	   rd32(&e, REG_CTRL), rd32(&e, REG_STATUS), rd64(&e, REG_RING_BASE), rd32(&e, REG_RING_SIZE),
	   rd64(&e, REG_COMPLETED), rd32(&e, REG_TAIL));
	return failures;
}

/* ---- the guest's own vfio-pci behind its IOMMU ---- */

static int irq_count(const char *name)
{
	/* Sum of the CPU columns of the /proc/interrupts line naming `name`. */
	FILE *f = fopen("/proc/interrupts", "r");
	char line[1024];
	int total = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strstr(line, name))
			continue;
		char *p = strchr(line, ':');
		total = 0;
		while (p && *++p) {
			char *end;
			long v = strtol(p, &end, 10);
			if (end == p)
				break;
			total += v;
			p = end - 1;
		}
		break;
	}
	fclose(f);
	return total;
}

static int cmd_vfio(int want_irq)
{
	char p[512], link[256];
	struct engine e;
	if (find_device())
		die("no DMA engine (1234:5544) in the guest");
	snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/iommu_group", bdf);
	ssize_t n = readlink(p, link, sizeof(link) - 1);
	if (n < 0)
		die("iommu_group link (is the guest IOMMU on?)");
	link[n] = 0;
	const char *group = strrchr(link, '/') + 1;
	printf("device %s, guest IOMMU group %s\n", bdf, group);

	int container = open("/dev/vfio/vfio", O_RDWR);
	if (container < 0)
		die("open /dev/vfio/vfio");
	snprintf(p, sizeof(p), "/dev/vfio/%s", group);
	int gfd = open(p, O_RDWR);
	if (gfd < 0)
		die("open group");
	struct vfio_group_status gs = { .argsz = sizeof(gs) };
	if (ioctl(gfd, VFIO_GROUP_GET_STATUS, &gs) || !(gs.flags & VFIO_GROUP_FLAGS_VIABLE))
		die("group not viable");
	if (ioctl(gfd, VFIO_GROUP_SET_CONTAINER, &container))
		die("SET_CONTAINER");
	if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
		die("SET_IOMMU");
	int dev = ioctl(gfd, VFIO_GROUP_GET_DEVICE_FD, bdf);
	if (dev < 0)
		die("GET_DEVICE_FD");
	struct vfio_region_info bar = { .argsz = sizeof(bar), .index = VFIO_PCI_BAR0_REGION_INDEX };
	struct vfio_region_info cfg = { .argsz = sizeof(cfg), .index = VFIO_PCI_CONFIG_REGION_INDEX };
	if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &bar) || ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &cfg))
		die("GET_REGION_INFO");
	uint16_t cmd;
	if (pread(dev, &cmd, 2, cfg.offset + 4) != 2)
		die("read Command");
	cmd |= 0x6;
	if (pwrite(dev, &cmd, 2, cfg.offset + 4) != 2)
		die("write Command");
	e.bar = mmap(NULL, bar.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, bar.offset);
	if (e.bar == MAP_FAILED)
		die("mmap BAR0");

	/* IOVAs of our choice, far from where the guest's memory is. */
	const uint64_t ring_iova = 0x7ff0000000ull, src_iova = 0x12340000ull, dst_iova = 0x56780000ull;
	const size_t len = 16 * PAGE;
	e.size = 64;
	e.ring = page_alloc(PAGE);
	e.ring_dma = ring_iova;
	uint8_t *src = page_alloc(len), *dst = page_alloc(len);
	struct vfio_iommu_type1_dma_map m = { .argsz = sizeof(m), .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE };
	m.vaddr = (uintptr_t)e.ring, m.iova = ring_iova, m.size = PAGE;
	if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m))
		die("MAP_DMA ring");
	m.vaddr = (uintptr_t)src, m.iova = src_iova, m.size = len;
	if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m))
		die("MAP_DMA src");
	m.vaddr = (uintptr_t)dst, m.iova = dst_iova, m.size = len;
	if (ioctl(container, VFIO_IOMMU_MAP_DMA, &m))
		die("MAP_DMA dst");
	printf("mapped ring at IOVA %#" PRIx64 ", src %#" PRIx64 ", dst %#" PRIx64 " (%zu KiB each)\n", ring_iova,
	       src_iova, dst_iova, len / 1024);

	int efd = -1, irq_before = 0;
	char irq_name[300];
	snprintf(irq_name, sizeof(irq_name), "vfio-msix[0](%s)", bdf);
	if (want_irq) {
		efd = eventfd(0, 0);
		char buf[sizeof(struct vfio_irq_set) + sizeof(int)];
		struct vfio_irq_set *set = (struct vfio_irq_set *)buf;
		set->argsz = sizeof(buf);
		set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
		set->index = VFIO_PCI_MSIX_IRQ_INDEX;
		set->start = 0;
		set->count = 1;
		memcpy(set->data, &efd, sizeof(int));
		if (ioctl(dev, VFIO_DEVICE_SET_IRQS, set))
			die("SET_IRQS MSI-X");
		irq_before = irq_count(irq_name);
		ok(irq_before >= 0, "%s is in /proc/interrupts (count %d)", irq_name, irq_before);
	}
	if (engine_start(&e))
		die("engine start");

	for (unsigned i = 0; i < len; i++)
		src[i] = (uint8_t)(i * 13 + 1);
	struct desc *d = submit(&e, OP_COPY, want_irq ? FLAG_IRQ : 0, src_iova, dst_iova, len, 0);
	uint32_t s = wait_desc(d);
	ok(s == ST_SUCCESS && !memcmp(src, dst, len), "COPY IOVA %#" PRIx64 " -> %#" PRIx64 " (%zu KiB) landed (status %#x)",
	   src_iova, dst_iova, len / 1024, s);
	s = run1(&e, OP_FILL, 0, dst_iova + PAGE, PAGE, 0xfeedfacecafef00dull);
	ok(s == ST_SUCCESS && check_pattern(dst + PAGE, PAGE, 0xfeedfacecafef00dull), "FILL at IOVA %#" PRIx64 " landed",
	   dst_iova + PAGE);

	if (want_irq) {
		/* One interrupt per completion with IRQ set. Interrupts raised
		 * while an earlier one is still pending may merge (an eventfd
		 * counts, an MSI does not queue), so wait for each before the
		 * next: the COPY above, then 4 FILLs. */
		int irqs = 5, got = 0;
		for (int i = 0; i < irqs; i++) {
			if (i > 0)
				wait_desc(submit(&e, OP_FILL, FLAG_IRQ, 0, dst_iova, PAGE, i));
			struct pollfd pf = { .fd = efd, .events = POLLIN };
			uint64_t c;
			if (poll(&pf, 1, 10000) == 1 && read(efd, &c, 8) == 8)
				got += (int)c;
		}
		ok(got == irqs, "%d MSI-X completion interrupts reached the eventfd (counted %d)", irqs, got);
		int after = irq_count(irq_name);
		ok(after - irq_before == irqs, "the guest kernel counted them: %s %d -> %d", irq_name, irq_before, after);
	}

	struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof(u), .iova = dst_iova, .size = len };
	if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u))
		die("UNMAP_DMA dst");
	d = submit(&e, OP_FILL, 0, 0, dst_iova + 2 * PAGE, PAGE, 7);
	s = wait_desc(d);
	ok(s == ST_WRITE_FAULT && d->result == dst_iova + 2 * PAGE,
	   "FILL to unmapped IOVA %#" PRIx64 " faults: status %#x at %#" PRIx64, dst_iova + 2 * PAGE, s, d->result);
	ok(check_pattern(dst + 2 * PAGE, PAGE, 0) || dst[2 * PAGE] == (uint8_t)((2 * PAGE) * 13 + 1),
	   "and the old buffer was not written");
	s = run1(&e, OP_COPY, src_iova, src_iova + PAGE, PAGE, 0);
	ok(s == ST_SUCCESS, "mapped IOVAs still work (status %#x)", s);
	return failures;
}

/* ---- migration loop ---- */

static int cmd_mig(unsigned pages)
{
	struct engine e;
	sysfs_open(&e);
	uint8_t **buf = calloc(pages, sizeof(*buf));
	uint64_t *gpa = calloc(pages, sizeof(*gpa));
	for (unsigned i = 0; i < pages; i++) {
		buf[i] = page_alloc(PAGE);
		gpa[i] = gpa_of(buf[i]);
	}
	int flags = fcntl(0, F_GETFL);
	fcntl(0, F_SETFL, flags | O_NONBLOCK);
	unsigned inflight = e.size / 2;
	uint64_t round = 0;
	double t0 = now();
	printf("mig: %u pages, ring of %u, DMA running\n", pages, e.size);
	fflush(stdout);
	/* Round r fills page i with pattern (r << 32 | i). Up to `inflight`
	 * descriptors are outstanding; a page's FILL is only queued once its
	 * previous one completed, so the last completed round per page is
	 * what memory must show. */
	uint64_t *done_round = calloc(pages, sizeof(*done_round));
	struct desc **slot = calloc(pages, sizeof(*slot));
	unsigned next = 0, outstanding = 0;
	uint64_t *want = calloc(pages, sizeof(*want));
	char line[64];
	int stop = 0;
	while (!stop || outstanding) {
		/* reap */
		for (unsigned i = 0; i < pages; i++) {
			if (!slot[i])
				continue;
			uint32_t s = __atomic_load_n(&slot[i]->status, __ATOMIC_ACQUIRE);
			if (!s)
				continue;
			if (s != ST_SUCCESS) {
				ok(0, "FILL of page %u failed with %#x", i, s);
				return failures;
			}
			done_round[i] = want[i];
			slot[i] = NULL;
			outstanding--;
		}
		/* The console is in canonical mode: the whole line at once. Looked
		 * at before every descriptor, so that once the line is there (the
		 * host sends it to the migrated guest before it resumes) at most
		 * one more FILL is queued: the pages show what arrived. */
		while (!stop && outstanding < inflight && !slot[next]) {
			if (read(0, line, sizeof(line)) > 0) {
				stop = 1;
				break;
			}
			want[next] = round << 32 | next;
			slot[next] = submit(&e, OP_FILL, 0, 0, gpa[next], PAGE, want[next] | 1ull << 63);
			outstanding++;
			if (++next == pages) {
				next = 0;
				round++;
			}
		}
	}
	printf("mig: stopped after %" PRIu64 " rounds in %.1f s\n", round, now() - t0);
	unsigned bad = 0, first = pages;
	for (unsigned i = 0; i < pages; i++)
		if (!check_pattern(buf[i], PAGE, done_round[i] | 1ull << 63)) {
			if (!bad)
				first = i;
			bad++;
		}
	ok(bad == 0, "every page holds its last completed DMA write (%u of %u stale%s)", bad, pages,
	   bad ? ", first stale page follows" : "");
	if (bad)
		printf("page %u at %#" PRIx64 ": wants round %" PRIu64 ", reads %#" PRIx64 "\n", first, gpa[first],
		       done_round[first] >> 32, *(uint64_t *)buf[first]);
	/* DMA continues after the switch. */
	for (unsigned i = 0; i < pages; i++) {
		uint32_t s = run1(&e, OP_FILL, 0, gpa[i], PAGE, 0x5a5a000000000000ull | i);
		if (s != ST_SUCCESS || !check_pattern(buf[i], PAGE, 0x5a5a000000000000ull | i)) {
			ok(0, "DMA after migration, page %u: status %#x", i, s);
			return failures;
		}
	}
	ok(1, "DMA continues after the switch (%u more FILLs)", pages);
	return failures;
}

int main(int argc, char **argv)
{
	int r;
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 2 && !strcmp(argv[1], "sysfs"))
		r = cmd_sysfs();
	else if (argc >= 2 && !strcmp(argv[1], "vfio"))
		r = cmd_vfio(argc >= 3 && !strcmp(argv[2], "--irq"));
	else if (argc >= 2 && !strcmp(argv[1], "fresh"))
		r = cmd_fresh();
	else if (argc >= 3 && !strcmp(argv[1], "mig"))
		r = cmd_mig(atoi(argv[2]));
	else {
		fprintf(stderr, "usage: udma sysfs | fresh | vfio [--irq] | mig PAGES\n");
		return 2;
	}
	printf("udma: %s\n", r ? "FAIL" : "PASS");
	return r ? 1 : 0;
}
