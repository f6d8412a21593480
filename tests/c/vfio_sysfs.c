/* SPDX-License-Identifier: Apache-2.0 */
/*
 * vfio_sysfs BDF N GROUP [BDF N GROUP]...: the emulated devices look the
 * same through every door a VMM checks before it trusts a cdev.
 *
 * For each device: /sys/bus/pci/devices/BDF/vfio-dev/vfioN/dev holds
 * "511:N"; /dev/vfio/devices/vfioN is a character device with that number
 * through stat, lstat, __xstat, fstatat, statx, and fstat/fstatat/statx of
 * an open descriptor; iommu_group links to /sys/kernel/iommu_groups/GROUP
 * (readlink, realpath), whose devices/ links back; /sys/class/vfio-dev
 * has the same dev file; the ID files read through open and fopen; access
 * says read/write. /dev/iommu and /dev/vfio/vfio are 10:122 and 10:196.
 * The node past the last device does not exist.
 */
#define _GNU_SOURCE
#include "check.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

/* glibc < 2.33's stat entry point, still exported for old binaries. */
extern int __xstat(int ver, const char *path, struct stat *buf);

static void read_file(const char *path, char *buf, size_t len)
{
	int fd = (int)CHECK_OK(open(path, O_RDONLY));
	ssize_t n = CHECK_OK(read(fd, buf, len - 1));

	buf[n] = 0;
	CHECK_OK(close(fd));
}

static void check_chr(const struct stat *st, dev_t want)
{
	CHECK_TRUE(S_ISCHR(st->st_mode));
	CHECK_EQ(st->st_mode & 07777, 0600);
	CHECK_EQ(major(st->st_rdev), major(want));
	CHECK_EQ(minor(st->st_rdev), minor(want));
	CHECK_EQ(st->st_uid, getuid());
}

static void check_statx(const struct statx *sx, dev_t want)
{
	CHECK_TRUE(S_ISCHR(sx->stx_mode));
	CHECK_EQ(sx->stx_rdev_major, major(want));
	CHECK_EQ(sx->stx_rdev_minor, minor(want));
}

/* Every stat door on the node `path`, which must be device `want`. */
static void check_node(const char *path, dev_t want)
{
	struct stat st;
	struct statx sx;
	int fd;

	CHECK_OK(stat(path, &st));
	check_chr(&st, want);
	CHECK_OK(lstat(path, &st));
	check_chr(&st, want);
	CHECK_OK(__xstat(1, path, &st));
	check_chr(&st, want);
	CHECK_OK(fstatat(AT_FDCWD, path, &st, 0));
	check_chr(&st, want);
	CHECK_OK(statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, &sx));
	check_statx(&sx, want);
	CHECK_OK(access(path, R_OK | W_OK));
	CHECK_ERR(access(path, X_OK), EACCES);

	fd = (int)CHECK_OK(open(path, O_RDWR));
	CHECK_OK(fstat(fd, &st));
	check_chr(&st, want);
	CHECK_OK(fstatat(fd, "", &st, AT_EMPTY_PATH));
	check_chr(&st, want);
	CHECK_OK(statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx));
	check_statx(&sx, want);
	/* A duplicate is the same file. */
	int dup_fd = (int)CHECK_OK(dup(fd));
	CHECK_OK(fstat(dup_fd, &st));
	check_chr(&st, want);
	CHECK_OK(close(dup_fd));
	CHECK_OK(close(fd));
}

static void check_device(const char *bdf, int n, int group)
{
	char path[PATH_MAX], buf[PATH_MAX], want[PATH_MAX];
	unsigned int maj, min;
	struct dirent *de;
	struct stat st;
	int found = 0;
	DIR *dir;
	FILE *f;

	/* vfio-dev lists exactly vfioN, as QEMU expects. */
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vfio-dev", bdf);
	dir = opendir(path);
	CHECK_TRUE(dir != NULL);
	snprintf(want, sizeof(want), "vfio%d", n);
	while ((de = readdir(dir)))
		if (!strncmp(de->d_name, "vfio", 4)) {
			CHECK_EQ(strcmp(de->d_name, want), 0);
			found++;
		}
	CHECK_EQ(found, 1);
	CHECK_OK(closedir(dir));

	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vfio-dev/vfio%d/dev", bdf, n);
	read_file(path, buf, sizeof(buf));
	CHECK_EQ(sscanf(buf, "%u:%u", &maj, &min), 2);
	CHECK_EQ(min, n);
	snprintf(path, sizeof(path), "/dev/vfio/devices/vfio%d", n);
	check_node(path, makedev(maj, min));

	/* The class link reaches the same file. */
	snprintf(path, sizeof(path), "/sys/class/vfio-dev/vfio%d/dev", n);
	read_file(path, want, sizeof(want));
	CHECK_EQ(strcmp(buf, want), 0);

	/* iommu_group: a link whose last component is the group. */
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", bdf);
	CHECK_OK(lstat(path, &st));
	CHECK_TRUE(S_ISLNK(st.st_mode));
	ssize_t len = CHECK_OK(readlink(path, buf, sizeof(buf) - 1));
	buf[len] = 0;
	snprintf(want, sizeof(want), "/kernel/iommu_groups/%d", group);
	CHECK_TRUE(len >= (ssize_t)strlen(want) && !strcmp(buf + len - strlen(want), want));
	CHECK_TRUE(realpath(path, buf) != NULL);
	snprintf(want, sizeof(want), "/sys/kernel/iommu_groups/%d", group);
	CHECK_EQ(strcmp(buf, want), 0);
	CHECK_OK(stat(path, &st));
	CHECK_TRUE(S_ISDIR(st.st_mode));
	snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%d/devices/%s", group, bdf);
	CHECK_OK(lstat(path, &st));
	CHECK_TRUE(S_ISLNK(st.st_mode));
	snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%d/devices/%s/vendor", group, bdf);
	CHECK_OK(access(path, R_OK));

	/* The IDs, through open and through stdio. */
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vendor", bdf);
	read_file(path, buf, sizeof(buf));
	CHECK_EQ(strcmp(buf, "0x1234\n"), 0);
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/device", bdf);
	f = fopen(path, "r");
	CHECK_TRUE(f != NULL);
	CHECK_TRUE(fgets(buf, sizeof(buf), f) != NULL);
	CHECK_EQ(strcmp(buf, "0x5544\n"), 0);
	CHECK_OK(fclose(f));
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/class", bdf);
	read_file(path, buf, sizeof(buf));
	CHECK_EQ(strcmp(buf, "0x088000\n"), 0);
	/* The driver is vfio-pci. */
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/driver", bdf);
	len = CHECK_OK(readlink(path, buf, sizeof(buf) - 1));
	buf[len] = 0;
	CHECK_TRUE(strstr(buf, "/vfio-pci") != NULL);
	/* Relative paths from a directory descriptor inside the tree work. */
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s", bdf);
	int dfd = (int)CHECK_OK(open(path, O_RDONLY | O_DIRECTORY));
	CHECK_OK(fstatat(dfd, "subsystem_vendor", &st, 0));
	CHECK_TRUE(S_ISREG(st.st_mode));
	CHECK_OK(close(dfd));
}

int main(int argc, char **argv)
{
	char path[64];
	struct stat st;
	int i, ndev = 0;

	if (argc < 4 || (argc - 1) % 3) {
		fprintf(stderr, "usage: %s BDF N GROUP...\n", argv[0]);
		return 2;
	}
	for (i = 1; i < argc; i += 3, ndev++)
		check_device(argv[i], atoi(argv[i + 1]), atoi(argv[i + 2]));

	check_node("/dev/iommu", makedev(10, 122));
	check_node("/dev/vfio/vfio", makedev(10, 196));

	snprintf(path, sizeof(path), "/dev/vfio/devices/vfio%d", ndev);
	CHECK_ERR(stat(path, &st), ENOENT);
	CHECK_ERR(open(path, O_RDWR), ENOENT);
	CHECK_ERR(stat("/sys/bus/pci/devices/0000:7f:1f.7/vfio-dev", &st), ENOENT);
	return pass();
}
