/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A program that crashes, as programs do: crates/cli/tests/shim.rs runs it
 * with and without the shim and requires the same exit status (the same
 * signal, or the same code) and the same output.
 *
 *   crash CRASH HANDLER
 *
 * First it opens /dev/iommu and allocates an IOAS (under the shim this
 * installs the shim's fault handler; without it the open fails, which is
 * fine), then installs HANDLER for the crash's signal, then crashes:
 *
 * CRASH: segv (NULL dereference), bus (access past the end of a mapped
 * memfd), abort (abort()), raise (raise(SIGSEGV), a sent signal), thread
 * (NULL dereference in a second thread while the first copies through the
 * shim), race (eight threads make their first call through the shim at
 * once, before main does, racing to install its handler; then the
 * program must read back its own disposition, SIG_DFL, and die of a NULL
 * dereference).
 *
 * HANDLER: none; dfl_raise (signal(sig, SIG_DFL); raise(sig)); resethand
 * (SA_RESETHAND, returns, so the fault repeats under the default);
 * sysv (sysv_signal: one-shot); chain (a second handler installed with
 * sigaction that saves the first and calls it, which resets and
 * re-raises); siginfo (SA_SIGINFO: checks si_code and si_addr, exits
 * 42); longjmp (siglongjmp out of the handler, exits 0); ignore (SIG_IGN:
 * a fault kills anyway, a sent signal is ignored); sigset (sigset(3) with
 * a handler that resets and re-raises).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/iommufd.h>

static int crash_sig;
static struct sigaction first_saved;
static sigjmp_buf jump;
static volatile int handled;

static void say(const char *s)
{
	/* write(2): async-signal-safe, unbuffered. */
	ssize_t r = write(1, s, strlen(s));
	(void)r;
}

static void dfl_raise(int sig)
{
	say("handler: reset and re-raise\n");
	signal(sig, SIG_DFL);
	raise(sig);
}

static void returns(int sig)
{
	(void)sig;
	handled++;
	say("handler: return\n");
}

static void chained_second(int sig, siginfo_t *si, void *uc)
{
	say("second handler: chain to the first\n");
	if (first_saved.sa_flags & SA_SIGINFO)
		first_saved.sa_sigaction(sig, si, uc);
	else if (first_saved.sa_handler != SIG_DFL && first_saved.sa_handler != SIG_IGN)
		first_saved.sa_handler(sig);
}

static void with_info(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (sig == SIGSEGV && si->si_code == SEGV_MAPERR && si->si_addr == NULL)
		say("siginfo: SEGV_MAPERR at NULL\n");
	else if (sig == SIGBUS && si->si_code == BUS_ADRERR)
		say("siginfo: BUS_ADRERR\n");
	else if (si->si_code <= 0)
		say("siginfo: sent\n");
	else
		say("siginfo: unexpected\n");
	_exit(42);
}

static void jump_back(int sig)
{
	(void)sig;
	siglongjmp(jump, 1);
}

static void install(int sig, const char *how)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	if (!strcmp(how, "none")) {
		return;
	} else if (!strcmp(how, "dfl_raise")) {
		signal(sig, dfl_raise);
	} else if (!strcmp(how, "resethand")) {
		sa.sa_handler = returns;
		sa.sa_flags = SA_RESETHAND;
		sigaction(sig, &sa, NULL);
	} else if (!strcmp(how, "sysv")) {
		sysv_signal(sig, returns);
	} else if (!strcmp(how, "chain")) {
		signal(sig, dfl_raise);
		sa.sa_sigaction = chained_second;
		sa.sa_flags = SA_SIGINFO;
		sigaction(sig, &sa, &first_saved);
		if (first_saved.sa_handler != dfl_raise)
			say("chain: the saved handler is not the first\n");
	} else if (!strcmp(how, "siginfo")) {
		sa.sa_sigaction = with_info;
		sa.sa_flags = SA_SIGINFO;
		sigaction(sig, &sa, NULL);
	} else if (!strcmp(how, "longjmp")) {
		signal(sig, jump_back);
	} else if (!strcmp(how, "ignore")) {
		signal(sig, SIG_IGN);
	} else if (!strcmp(how, "sigset")) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
		sigset(sig, dfl_raise);
#pragma GCC diagnostic pop
	} else {
		fprintf(stderr, "unknown handler %s\n", how);
		exit(2);
	}
	/* What the program reads back is what it installed. */
	struct sigaction now;
	sigaction(sig, NULL, &now);
	if (strcmp(how, "chain") && strcmp(how, "siginfo") && now.sa_handler == SIG_DFL)
		say("handler not recorded\n");
}

/* Volatile, so the compiler cannot see the NULL and drop the store. */
static int *volatile null_ptr;

static void *null_deref(void *arg)
{
	(void)arg;
	*null_ptr = 1;
	return NULL;
}

static void *copy_loop(void *arg)
{
	int fd = *(int *)arg;

	/* Copies through the shim (guarded) while the other thread dies. */
	for (;;) {
		struct iommu_ioas_alloc cmd = { .size = sizeof(cmd) };
		if (fd >= 0)
			ioctl(fd, IOMMU_IOAS_ALLOC, &cmd);
		else
			usleep(100);
	}
	return NULL;
}

static pthread_barrier_t start;

static void *first_call(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&start);
	int fd = open("/dev/iommu", O_RDWR);
	if (fd >= 0) {
		struct iommu_ioas_alloc cmd = { .size = sizeof(cmd) };
		ioctl(fd, IOMMU_IOAS_ALLOC, &cmd);
		close(fd);
	}
	return NULL;
}

static void race(void)
{
	pthread_t t[8];

	pthread_barrier_init(&start, NULL, 8);
	for (int i = 0; i < 8; i++)
		pthread_create(&t[i], NULL, first_call, NULL);
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	struct sigaction now;
	sigaction(SIGSEGV, NULL, &now);
	say(now.sa_handler == SIG_DFL ? "SIGSEGV: SIG_DFL\n" : "SIGSEGV: not SIG_DFL\n");
	sigaction(SIGBUS, NULL, &now);
	say(now.sa_handler == SIG_DFL ? "SIGBUS: SIG_DFL\n" : "SIGBUS: not SIG_DFL\n");
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: crash segv|bus|abort|raise|thread HANDLER\n");
		return 2;
	}
	const char *crash = argv[1];
	if (!strcmp(crash, "race")) {
		race();
		crash = "segv";
	}
	int fd = open("/dev/iommu", O_RDWR);
	if (fd >= 0) {
		struct iommu_ioas_alloc cmd = { .size = sizeof(cmd) };
		ioctl(fd, IOMMU_IOAS_ALLOC, &cmd);
		/* A guarded copy that faults: EFAULT, not a crash. */
		if (ioctl(fd, IOMMU_IOAS_ALLOC, (void *)8) != -1 || errno != EFAULT) {
			fprintf(stderr, "a bad pointer should be EFAULT\n");
			return 3;
		}
	}
	crash_sig = !strcmp(crash, "bus") ? SIGBUS : !strcmp(crash, "abort") ? SIGABRT : SIGSEGV;
	install(crash_sig, argv[2]);
	say("crashing\n");

	if (sigsetjmp(jump, 1)) {
		say("recovered with siglongjmp\n");
		return 0;
	}
	if (!strcmp(crash, "segv")) {
		null_deref(NULL);
	} else if (!strcmp(crash, "bus")) {
		int m = memfd_create("crash", 0);
		if (m < 0 || ftruncate(m, 4096))
			return 4;
		char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, m, 0);
		if (p == MAP_FAILED)
			return 5;
		p[0] = 1;
		((volatile char *)p)[4096] = 1; /* past the end of the file */
	} else if (!strcmp(crash, "abort")) {
		abort();
	} else if (!strcmp(crash, "raise")) {
		raise(SIGSEGV);
	} else if (!strcmp(crash, "thread")) {
		pthread_t a, b;
		pthread_create(&a, NULL, copy_loop, &fd);
		usleep(1000);
		pthread_create(&b, NULL, null_deref, NULL);
		pthread_join(b, NULL);
	} else {
		fprintf(stderr, "unknown crash %s\n", crash);
		return 2;
	}
	say(handled ? "survived after the handler\n" : "survived\n");
	return 0;
}
