//! The program's memory map, as `/proc/self/maps` reports it.
//!
//! Pinning must refuse (with `EFAULT`) a range that is not entirely mapped
//! with the access it asks for, as `pin_user_pages` does. We read the map
//! once per pin request: the cost is independent of the range's size.

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
        let path = it.nth(3).unwrap_or("");
        out.push(Vma {
            start,
            end,
            read: p[0] == b'r',
            write: p[1] == b'w',
            exec: p[2] == b'x',
            shared: p[3] == b's',
            hugetlb: path.starts_with("/anon_hugepage") || path.starts_with("/dev/hugepages"),
        });
    }
    out
}

/// The current maps of this process.
pub fn current() -> Result<Vec<Vma>, Errno> {
    let text = std::fs::read_to_string("/proc/self/maps").map_err(|_| Errno::EFAULT)?;
    Ok(parse(&text))
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
    }
}
