/* SPDX-License-Identifier: Apache-2.0 */
/*
 * soak: everything a program does with iommufd, at once, for a fixed
 * time, with the process's resources sampled and required flat.
 *
 *   uiommufd run --device dma-engine -- soak SECONDS [THREADS [FORK_EVERY]]
 *
 * Workers (THREADS, default 4), each on its own IOAS slice, loop over:
 * map a buffer (fixed IOVA), copy the mapping to a second IOAS, attach a
 * selftest mock device to the IOAS and destroy it again (a domain filled
 * and emptied), read and write through a selftest access, unmap both;
 * every few rounds a worker forks a child that maps (memory it shares with
 * the parent), copies and unmaps on the inherited iommufd and exits. A DMA thread drives the DMA engine (a
 * VFIO device cdev bound to the iommufd, attached to its own IOAS, BAR0
 * mmap'd): FILL descriptors into a mapped buffer, checked byte for byte.
 *
 * Once a second every thread stops at a barrier, with nothing of its own
 * mapped; the main thread then samples RSS (VmRSS), open descriptors
 * (/proc/self/fd) and pinned pages (VmPin: under uiommufd the engine's
 * pins show there, as the kernel's do; the program gives up CAP_IPC_LOCK
 * so that its pins are charged and counted), and, to see what grows,
 * malloc's bytes in use and free (mallinfo2) and the resident anonymous
 * memory against the rest (smaps). Requirements: pins and descriptors
 * exactly as at the first sample every time; RSS after the first quarter
 * of the run grows by less than 8 MiB over the rest, and its growth
 * levels off (the second half adds less than half of the first's, plus
 * 256 kB).
 * Prints one line per sample and "soak: ok" at the end; exit 1 on a
 * failure, 2 when the setup fails.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/capability.h>
#include <linux/iommufd.h>
#include <linux/pci_regs.h>
#include <linux/vfio.h>

#include "uiommufd/iommufd_test.h"

/* The DMA engine's datasheet and the VFIO cdev ioctls (examples/c). */
#include "udma.h"

#define PS 4096UL
#define MAX_THREADS 16
#define BUF_PAGES 32
/* Each worker's IOVA slice in the mock aperture; the DMA thread's after. */
#define SLICE (1UL << 22)
#define IOVA(w) (MOCK_APERTURE_START + (uint64_t)(w) * SLICE)

#define RING 16

static int iommufd;
static int nthreads = 4;
/* A worker forks a child every this many rounds (0: never). */
static unsigned long fork_every = 64;
static volatile int stop;
static pthread_barrier_t pause_in, pause_out;
static volatile int failures;
static unsigned long ops[MAX_THREADS + 1];

#define fail(...)                                                              \
	do {                                                                   \
		fprintf(stderr, "soak: FAIL " __VA_ARGS__);                    \
		fprintf(stderr, "\n");                                         \
		__atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);            \
	} while (0)
#define die(...)                                                               \
	do {                                                                   \
		fprintf(stderr, "soak: " __VA_ARGS__);                         \
		fprintf(stderr, "\n");                                         \
		exit(2);                                                       \
	} while (0)

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int ioas_alloc(__u32 *id)
{
	struct iommu_ioas_alloc c = { .size = sizeof(c) };
	int rc = ioctl(iommufd, IOMMU_IOAS_ALLOC, &c);

	*id = c.out_ioas_id;
	return rc;
}

static int map(__u32 ioas, void *va, uint64_t len, uint64_t iova)
{
	struct iommu_ioas_map c = {
		.size = sizeof(c),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)va,
		.length = len,
		.iova = iova,
	};
	return ioctl(iommufd, IOMMU_IOAS_MAP, &c);
}

static int unmap(__u32 ioas, uint64_t iova, uint64_t len)
{
	struct iommu_ioas_unmap c = { .size = sizeof(c), .ioas_id = ioas, .iova = iova, .length = len };

	return ioctl(iommufd, IOMMU_IOAS_UNMAP, &c);
}

static int copy(__u32 dst, __u32 src, uint64_t iova, uint64_t len)
{
	struct iommu_ioas_copy c = {
		.size = sizeof(c),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.dst_ioas_id = dst,
		.src_ioas_id = src,
		.length = len,
		.dst_iova = iova,
		.src_iova = iova,
	};
	return ioctl(iommufd, IOMMU_IOAS_COPY, &c);
}

static int destroy(__u32 id)
{
	struct iommu_destroy c = { .size = sizeof(c), .id = id };

	return ioctl(iommufd, IOMMU_DESTROY, &c);
}

static __u32 ioas_a, ioas_b;

/* One map/copy/attach/access/detach/unmap round on slice w. */
static void round_trip(int w, uint8_t *buf, unsigned int seed)
{
	uint64_t iova = IOVA(w), len = (1 + seed % BUF_PAGES) * PS;
	struct iommu_test_cmd md = { .size = sizeof(md), .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas_a };
	struct iommu_test_cmd acc = { .size = sizeof(acc), .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas_a };
	uint8_t bounce[64];

	memset(buf, seed & 0xff, len);
	if (map(ioas_a, buf, len, iova)) {
		fail("map of slice %d: %s", w, strerror(errno));
		return;
	}
	if (copy(ioas_b, ioas_a, iova, len))
		fail("copy of slice %d: %s", w, strerror(errno));
	if (seed % 2 == 0) {
		if (ioctl(iommufd, IOMMU_TEST_CMD, &md))
			fail("mock domain: %s", strerror(errno));
		else if (destroy(md.mock_domain.out_stdev_id))
			fail("destroy mock device: %s", strerror(errno));
	}
	if (!ioctl(iommufd, IOMMU_TEST_CMD, &acc)) {
		struct iommu_test_cmd rw = {
			.size = sizeof(rw),
			.op = IOMMU_TEST_OP_ACCESS_RW,
			.id = acc.create_access.out_access_fd,
			.access_rw = { .iova = iova + len - sizeof(bounce), .length = sizeof(bounce),
				       .uptr = (uintptr_t)bounce, .flags = seed % 4 == 1 ? MOCK_ACCESS_RW_SLOW_PATH : 0 },
		};
		if (ioctl(iommufd, IOMMU_TEST_CMD, &rw))
			fail("access rw: %s", strerror(errno));
		else if (bounce[0] != (seed & 0xff) || bounce[63] != (seed & 0xff))
			fail("access read %#x, wrote %#x", bounce[0], seed & 0xff);
		close(acc.create_access.out_access_fd);
	} else {
		fail("create access: %s", strerror(errno));
	}
	if (unmap(ioas_b, iova, len))
		fail("unmap b of slice %d: %s", w, strerror(errno));
	if (unmap(ioas_a, iova, len))
		fail("unmap a of slice %d: %s", w, strerror(errno));
}

static void pause_point(void)
{
	pthread_barrier_wait(&pause_in);
	pthread_barrier_wait(&pause_out);
}

static volatile int pausing;

static void *worker(void *arg)
{
	int w = (int)(intptr_t)arg;
	uint8_t *buf = mmap(NULL, BUF_PAGES * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	/* What a child maps: memory it shares with us (its private memory
	 * cannot be pinned by our engine, docs/CONFORMANCE.md). */
	uint8_t *shared = mmap(NULL, PS, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	unsigned int seed = w * 7919 + 1;

	if (buf == MAP_FAILED || shared == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	while (!stop) {
		if (pausing) {
			pause_point();
			continue;
		}
		seed = seed * 1103515245 + 12345;
		round_trip(w, buf, seed >> 8);
		ops[w]++;
		if (fork_every && ops[w] % fork_every == 0) {
			/* A child on the inherited iommufd. */
			pid_t pid = fork();
			int st;

			if (pid == 0) {
				failures = 0;
				uint64_t iova = IOVA(w) + SLICE / 2;

				memset(shared, 0x5a, PS);
				if (map(ioas_a, shared, PS, iova))
					fail("child map: %s", strerror(errno));
				else if (copy(ioas_b, ioas_a, iova, PS))
					fail("child copy: %s", strerror(errno));
				else if (unmap(ioas_b, iova, PS) || unmap(ioas_a, iova, PS))
					fail("child unmap: %s", strerror(errno));
				_exit(failures != 0);
			}
			if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
				fail("forked child of worker %d: status %#x", w, st);
		}
	}
	munmap(buf, BUF_PAGES * PS);
	munmap(shared, PS);
	return NULL;
}

/* ---- DMA ---- */

static volatile uint8_t *bar;
static struct udma_desc *ring;
static uint8_t *dma_buf;
static __u32 dma_ioas;
static uint32_t tail;

static void *dma_worker(void *arg)
{
	uint64_t base = IOVA(MAX_THREADS), data = base + PS;
	uint64_t pattern = 0x0101010101010101ULL;
	int broken = 0;
	(void)arg;

	/* Never leaves early: the pauses need every thread. */
	while (!stop) {
		if (pausing) {
			pause_point();
			continue;
		}
		if (broken) {
			usleep(1000);
			continue;
		}
		struct udma_desc *d = &ring[tail];
		uint8_t b = (uint8_t)(ops[MAX_THREADS] + 1);
		size_t len = PS * (1 + ops[MAX_THREADS] % 4);

		memset(d, 0, sizeof(*d));
		d->opcode = UDMA_OP_FILL;
		d->dst = data;
		d->len = len;
		d->pattern = pattern * b;
		tail = (tail + 1) % RING;
		__atomic_thread_fence(__ATOMIC_RELEASE);
		*(volatile uint32_t *)(bar + UDMA_TAIL) = tail;
		double deadline = now() + 5;
		while (__atomic_load_n(&d->status, __ATOMIC_ACQUIRE) == 0) {
			if (now() > deadline) {
				fail("DMA: no completion (status %#x)", *(volatile uint32_t *)(bar + UDMA_STATUS));
				broken = 1;
				break;
			}
			sched_yield();
		}
		if (broken)
			continue;
		if (d->status != UDMA_ST_SUCCESS)
			fail("DMA: status %#x", d->status);
		else if (dma_buf[0] != b || dma_buf[len - 1] != b)
			fail("DMA: buffer holds %#x/%#x, not %#x", dma_buf[0], dma_buf[len - 1], b);
		ops[MAX_THREADS]++;
	}
	return NULL;
}

static void dma_setup(void)
{
	struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
	struct vfio_device_attach_iommufd_pt at = { .argsz = sizeof(at) };
	struct vfio_region_info ri = { .argsz = sizeof(ri), .index = VFIO_PCI_BAR0_REGION_INDEX };
	uint64_t base = IOVA(MAX_THREADS);
	uint16_t cmd;
	int dev = open("/dev/vfio/devices/vfio0", O_RDWR | O_CLOEXEC);

	if (dev < 0)
		die("open vfio0: %s (run with --device dma-engine)", strerror(errno));
	if (ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind))
		die("bind: %s", strerror(errno));
	if (ioas_alloc(&dma_ioas))
		die("dma ioas: %s", strerror(errno));
	at.pt_id = dma_ioas;
	if (ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at))
		die("attach: %s", strerror(errno));
	ring = mmap(NULL, PS + 4 * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ring == MAP_FAILED)
		die("mmap: %s", strerror(errno));
	memset(ring, 0, 5 * PS);
	dma_buf = (uint8_t *)ring + PS;
	if (map(dma_ioas, ring, 5 * PS, base))
		die("map ring: %s", strerror(errno));
	if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri))
		die("region info: %s", strerror(errno));
	bar = mmap(NULL, ri.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, ri.offset);
	if (bar == MAP_FAILED)
		die("mmap BAR0: %s", strerror(errno));
	if (pread(dev, &cmd, 2, (off_t)(VFIO_PCI_CONFIG_REGION_INDEX * 1ULL << 40) + PCI_COMMAND) != 2)
		die("config read: %s", strerror(errno));
	cmd |= PCI_COMMAND_MASTER | PCI_COMMAND_MEMORY;
	if (pwrite(dev, &cmd, 2, (off_t)(VFIO_PCI_CONFIG_REGION_INDEX * 1ULL << 40) + PCI_COMMAND) != 2)
		die("config write: %s", strerror(errno));
	*(volatile uint64_t *)(bar + UDMA_RING_BASE) = base;
	*(volatile uint32_t *)(bar + UDMA_RING_SIZE) = RING;
	*(volatile uint32_t *)(bar + UDMA_CTRL) = UDMA_CTRL_ENABLE;
}

/* ---- Sampling ---- */

static long status_kb(const char *key)
{
	char line[256];
	long v = -1;
	FILE *f = fopen("/proc/self/status", "re");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)))
			v = strtol(line + strlen(key), NULL, 10);
	fclose(f);
	return v;
}

/*
 * Where the resident memory is: the process's malloc heap (glibc's, which
 * the shim's Rust code shares: bytes in use and free bytes held), and
 * the resident pages of its anonymous private mappings ([heap], malloc's
 * thread arenas, thread stacks) against everything else (the program and
 * its libraries, shared memory).
 */
struct mem {
	long used_kb, free_kb, anon_kb, other_kb;
};

static struct mem mem_sample(void)
{
	struct mallinfo2 mi = mallinfo2();
	struct mem m = { (long)(mi.uordblks >> 10), (long)(mi.fordblks >> 10), 0, 0 };
	char line[512];
	int anon = 0;
	FILE *f = fopen("/proc/self/smaps", "re");

	while (f && fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		char perms[8], path[256] = "";
		long kb;

		if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %255s", &lo, &hi, perms, path) >= 3) {
			anon = perms[3] == 'p' && (!path[0] || !strcmp(path, "[heap]") || !strcmp(path, "[stack]"));
		} else if (sscanf(line, "Rss: %ld kB", &kb) == 1) {
			if (anon)
				m.anon_kb += kb;
			else
				m.other_kb += kb;
		}
	}
	if (f)
		fclose(f);
	return m;
}

/* The open descriptors, for a failure message. */
static void fd_list(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	char path[300], target[256];

	while (d && (e = readdir(d))) {
		ssize_t n;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		n = readlink(path, target, sizeof(target) - 1);
		target[n > 0 ? n : 0] = 0;
		fprintf(stderr, "soak:   fd %s -> %s\n", e->d_name, target);
	}
	if (d)
		closedir(d);
}

static int fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	/* The program's range only: the shim keeps its own descriptors at
	 * 768 and above, out of the program's way (fork_server.rs, move_high),
	 * and opens and closes some as children come and go. */
	while ((e = readdir(d)))
		n += e->d_name[0] != '.' && atoi(e->d_name) < 768;
	closedir(d);
	return n - 1; /* the directory's own descriptor */
}

/*
 * Give up CAP_IPC_LOCK, so that pinned pages are charged and show in
 * VmPin (uncharged pins do not, on the kernel either).
 */
static void drop_ipc_lock(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];
	int i = CAP_IPC_LOCK / 32;
	unsigned int bit = 1u << (CAP_IPC_LOCK % 32);

	if (syscall(SYS_capget, &h, d))
		return;
	d[i].effective &= ~bit;
	d[i].permitted &= ~bit;
	d[i].inheritable &= ~bit;
	syscall(SYS_capset, &h, d);
}

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 10;
	pthread_t th[MAX_THREADS + 1];
	long rss0 = 0, rss_max_late = 0, rss_warm = 0, pin0 = 0, rss_half = 0, rss_max_last = 0;
	int fds0 = 0, samples = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 2)
		nthreads = atoi(argv[2]);
	if (argc > 3)
		fork_every = strtoul(argv[3], NULL, 0);
	if (nthreads < 1 || nthreads > MAX_THREADS)
		die("1 to %d threads", MAX_THREADS);
	drop_ipc_lock();
	iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (iommufd < 0)
		die("open /dev/iommu: %s", strerror(errno));
	if (ioas_alloc(&ioas_a) || ioas_alloc(&ioas_b))
		die("ioas: %s", strerror(errno));
	dma_setup();
	pthread_barrier_init(&pause_in, NULL, nthreads + 2);
	pthread_barrier_init(&pause_out, NULL, nthreads + 2);
	for (int i = 0; i < nthreads; i++)
		pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
	pthread_create(&th[nthreads], NULL, dma_worker, NULL);

	double start = now(), end = start + seconds;
	while (now() < end && !failures) {
		usleep(1000 * 1000);
		pausing = 1;
		pthread_barrier_wait(&pause_in);
		/* Every thread is parked with nothing of its own mapped. */
		long rss = status_kb("VmRSS:"), pin = status_kb("VmPin:");
		int fds = fd_count();
		unsigned long total = 0;

		for (int i = 0; i <= MAX_THREADS; i++)
			total += ops[i];
		struct mem m = mem_sample();
		double t = now() - start;

		printf("soak: t=%.0fs rounds=%lu dma=%lu rss=%ldkB fds=%d pinned=%ldkB malloc_used=%ldkB "
		       "malloc_free=%ldkB anon=%ldkB other=%ldkB\n",
		       t, total, ops[MAX_THREADS], rss, fds, pin, m.used_kb, m.free_kb, m.anon_kb, m.other_kb);
		if (samples == 0) {
			rss0 = rss;
			fds0 = fds;
			pin0 = pin;
		} else {
			/* With every thread parked, the program's descriptors
			 * are exactly those of the first sample (the shim's are
			 * never below 768, not even for a moment). */
			if (fds != fds0) {
				fail("descriptors: %d, first sample %d", fds, fds0);
				fd_list();
			}
			if (pin != pin0)
				fail("pinned: %ld kB, first sample %ld kB", pin, pin0);
		}
		if (t <= seconds / 4)
			rss_warm = rss;
		else if (rss > rss_max_late)
			rss_max_late = rss;
		if (t <= seconds / 2)
			rss_half = rss;
		else if (rss > rss_max_last)
			rss_max_last = rss;
		samples++;
		pausing = 0;
		pthread_barrier_wait(&pause_out);
	}
	stop = 1;
	pausing = 0;
	/* Threads parked at a barrier need the others to get there too. */
	for (int i = 0; i <= nthreads; i++)
		pthread_join(th[i], NULL);
	if (!rss_warm)
		rss_warm = rss0;
	if (rss_max_late && rss_max_late - rss_warm > 8 * 1024)
		fail("RSS grew from %ld kB to %ld kB", rss_warm, rss_max_late);
	/*
	 * And it levels off: the second half of the run adds less than half of
	 * what the first half added, give or take 256 kB (page-sized steps of
	 * the allocator's high-water marks). The first half is warm-up (the
	 * fork server's and DMA engine's threads and their malloc arenas,
	 * tables growing to their working size); a leak grows both halves alike.
	 */
	if (rss_max_last && rss_max_last - rss_half > (rss_half - rss0) / 2 + 256)
		fail("RSS still growing: %ld kB in the first half, %ld kB more in the second", rss_half - rss0,
		     rss_max_last - rss_half);
	if (samples < 2)
		fail("only %d samples", samples);
	for (int i = 0; i < nthreads; i++)
		if (!ops[i])
			fail("worker %d did nothing", i);
	if (!ops[MAX_THREADS])
		fail("no DMA completed");
	/* At the end, with every thread gone, the count must come back. */
	for (int i = 0; i < 100 && fd_count() != fds0; i++)
		usleep(10 * 1000);
	if (fd_count() != fds0) {
		fail("descriptors: %d at the end, %d at the first sample", fd_count(), fds0);
		fd_list();
	}
	if (failures)
		return 1;
	printf("soak: ok (%d samples; RSS %ld kB first, %ld kB after a quarter, %ld kB at half time, "
	       "at most %ld kB in the second half)\n",
	       samples, rss0, rss_warm, rss_half, rss_max_last);
	return 0;
}
