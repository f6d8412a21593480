//! The program's memory map, as `/proc/self/maps` reports it.
//!
//! Pinning must refuse (with `EFAULT`) a range that is not entirely mapped
//! with the access it asks for, as `pin_user_pages` does. We read the map
//! once per pin request: the cost is independent of the range's size.
//!
//! Another process's map ([`of_process`]) tells where its memory is the
//! same shared object as ours at the same address ([`check_same_shared`]):
//! the only memory of another process an in-process engine can pin (see
//! `frames::pin_user`).

use uiommufd_abi::Errno;

/// One mapping of the address space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    /// Exclusive end.
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    /// Offset in the mapped object of `start`, in bytes.
    pub offset: u64,
    /// Device (`major << 32 | minor`) and inode of the mapped object (both
    /// zero for private anonymous memory).
    pub dev: u64,
    pub inode: u64,
    /// Backed by hugetlbfs (`anon_hugepage`, `/dev/hugepages/...` or a
    /// `KernelPageSize` other than the base page, as far as the map tells).
    pub hugetlb: bool,
}

impl Vma {
    /// The mapping's protection as `mmap`'s `PROT_*` bits.
    pub fn prot(&self) -> i32 {
        (if self.read { libc::PROT_READ } else { 0 })
            | (if self.write { libc::PROT_WRITE } else { 0 })
            | (if self.exec { libc::PROT_EXEC } else { 0 })
    }
}

/// Parse the text of `/proc/self/maps`.
pub fn parse(text: &str) -> Vec<Vma> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (it.next(), it.next()) else { continue };
        let Some((s, e)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        let p = perms.as_bytes();
        if p.len() < 4 {
            continue;
        }
        // offset, dev, inode, then the optional path.
        let offset = it.next().and_then(|o| u64::from_str_radix(o, 16).ok()).unwrap_or(0);
        let dev = it
            .next()
            .and_then(|d| d.split_once(':'))
            .and_then(|(ma, mi)| Some((u64::from_str_radix(ma, 16).ok()? << 32) | u64::from_str_radix(mi, 16).ok()?))
            .unwrap_or(0);
        let inode = it.next().and_then(|i| i.parse().ok()).unwrap_or(0);
        let path = it.next().unwrap_or("");
        out.push(Vma {
            start,
            end,
            read: p[0] == b'r',
            write: p[1] == b'w',
            exec: p[2] == b'x',
            shared: p[3] == b's',
            offset,
            dev,
            inode,
            hugetlb: path.starts_with("/anon_hugepage") || path.starts_with("/dev/hugepages"),
        });
    }
    out
}

/// The current maps of this process.
pub fn current() -> Result<Vec<Vma>, Errno> {
    let text = crate::procfs::read_to_string("/proc/self/maps".into()).map_err(|_| Errno::EFAULT)?;
    Ok(parse(&text))
}

/// The current maps of process `pid` (`EFAULT` if they cannot be read: the
/// process is gone, or we may not look).
pub fn of_process(pid: u32) -> Result<Vec<Vma>, Errno> {
    let text = crate::procfs::read_to_string(format!("/proc/{pid}/maps")).map_err(|_| Errno::EFAULT)?;
    Ok(parse(&text))
}

/// The mapping holding `addr`, if any.
fn at(maps: &[Vma], addr: u64) -> Option<&Vma> {
    let i = maps.partition_point(|v| v.end <= addr);
    maps.get(i).filter(|v| v.start <= addr)
}

/// Check that over all of `[start, end)`, `theirs` (another process's map)
/// and `ours` map the same shared object at the same offsets: both
/// `MAP_SHARED`, the same device, inode and offset at every address,
/// readable (and writable when `write`) on both sides. Then the pages of
/// that range are the same in both processes, and pinning ours pins
/// theirs. `EFAULT` otherwise.
pub fn check_same_shared(theirs: &[Vma], ours: &[Vma], start: u64, end: u64, write: bool) -> Result<(), Errno> {
    let mut cur = start;
    while cur < end {
        let (Some(t), Some(o)) = (at(theirs, cur), at(ours, cur)) else { return Err(Errno::EFAULT) };
        let usable = |v: &Vma| v.shared && v.read && (v.write || !write) && v.inode != 0;
        let same = t.dev == o.dev
            && t.inode == o.inode
            && t.offset.wrapping_add(cur - t.start) == o.offset.wrapping_add(cur - o.start);
        if !usable(t) || !usable(o) || !same {
            return Err(Errno::EFAULT);
        }
        cur = t.end.min(o.end);
    }
    Ok(())
}

/// Check that `[start, end)` is covered without holes by mappings that are
/// readable, and writable when `write`. Returns the covering mappings.
pub fn check(maps: &[Vma], start: u64, end: u64, write: bool) -> Result<Vec<Vma>, Errno> {
    let mut cur = start;
    let mut out = Vec::new();
    let i = maps.partition_point(|v| v.end <= cur);
    for v in &maps[i..] {
        if cur >= end {
            break;
        }
        if v.start > cur || !v.read || (write && !v.write) {
            return Err(Errno::EFAULT);
        }
        out.push(v.clone());
        cur = v.end;
    }
    if cur < end {
        return Err(Errno::EFAULT);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0002000 r--p 00000000 08:01 123 /usr/bin/x
55d0c0002000-55d0c0004000 rw-p 00002000 08:01 123 /usr/bin/x
7f0000000000-7f0000200000 rw-s 00000000 00:01 99 /anon_hugepage (deleted)
7f0000200000-7f0000201000 ---p 00000000 00:00 0
7f0000201000-7f0000203000 rw-p 00000000 00:00 0
";

    #[test]
    fn parses_and_checks() {
        let m = parse(MAPS);
        assert_eq!(m.len(), 5);
        assert!(m[2].shared && m[2].hugetlb);
        assert!(!m[3].read);
        // Two adjacent mappings with different permissions.
        assert_eq!(check(&m, 0x55d0c0001000, 0x55d0c0003000, false).unwrap().len(), 2);
        assert_eq!(check(&m, 0x55d0c0001000, 0x55d0c0003000, true), Err(Errno::EFAULT));
        assert!(check(&m, 0x55d0c0002000, 0x55d0c0004000, true).is_ok());
        // A PROT_NONE page in the middle, and a hole at the end.
        assert_eq!(check(&m, 0x7f00001ff000, 0x7f0000202000, false), Err(Errno::EFAULT));
        assert_eq!(check(&m, 0x7f0000202000, 0x7f0000204000, false), Err(Errno::EFAULT));
        assert_eq!(check(&m, 0x1000, 0x2000, false), Err(Errno::EFAULT));
        assert_eq!((m[1].offset, m[1].dev, m[1].inode), (0x2000, 0x8_0000_0001, 123));
        assert_eq!((m[4].offset, m[4].dev, m[4].inode), (0, 0, 0));
    }

    #[test]
    fn same_shared_object_at_the_same_address() {
        let ours = parse(
            "\
7f0000000000-7f0000004000 rw-s 00000000 00:01 99 /dev/zero (deleted)
7f0000004000-7f0000006000 rw-p 00000000 00:00 0
7f0000006000-7f0000008000 r--s 00002000 00:05 42 /memfd:x (deleted)
",
        );
        // The child split the first mapping with mprotect, and maps the
        // memfd at another offset.
        let theirs = parse(
            "\
7f0000000000-7f0000001000 rw-s 00000000 00:01 99 /dev/zero (deleted)
7f0000001000-7f0000004000 r--s 00001000 00:01 99 /dev/zero (deleted)
7f0000004000-7f0000006000 rw-p 00000000 00:00 0
7f0000006000-7f0000008000 r--s 00003000 00:05 42 /memfd:x (deleted)
",
        );
        let ok = |s, e, w| check_same_shared(&theirs, &ours, s, e, w);
        assert_eq!(ok(0x7f0000000000, 0x7f0000004000, false), Ok(()));
        assert_eq!(ok(0x7f0000000000, 0x7f0000001000, true), Ok(()));
        assert_eq!(ok(0x7f0000000000, 0x7f0000002000, true), Err(Errno::EFAULT), "read-only in the child");
        assert_eq!(ok(0x7f0000004000, 0x7f0000005000, false), Err(Errno::EFAULT), "private memory");
        assert_eq!(ok(0x7f0000006000, 0x7f0000007000, false), Err(Errno::EFAULT), "another offset");
        assert_eq!(ok(0x7f0000008000, 0x7f0000009000, false), Err(Errno::EFAULT), "a hole");
    }
}
