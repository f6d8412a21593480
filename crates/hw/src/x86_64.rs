//! x86-64 (IA-32e) 4- and 5-level paging as IOMMUs use it: Intel VT-d's
//! first stage (VT-d spec 9.7, "First-Stage Paging Entries") and AMD's
//! guest (v2) page table (AMD IOMMU spec 48882 §2.2.6, "I/O Page Tables
//! for Guest Translations"), which are the same format: one walker for
//! tables in guest memory, and the encoding Linux's generic page table
//! (`generic_pt/fmt/x86_64.h`) writes for host domains on the generic
//! radix engine ([`X86Format`]).
//!
//! Model of the walker: it never owns a table. It reads 64-bit entries
//! through a caller-supplied reader (`FnMut(gpa) -> Result<u64, Errno>`;
//! for nested translation the caller's reader translates the table address
//! through the second stage first) and returns the output address and the
//! permissions the path grants, or the fault hardware would report
//! ([`FsFault`]). The checks follow the first-stage rules both specs share:
//! - the input address must be canonical for the paging depth (bits 63:N-1
//!   equal, N = 48 or 57), or, for AMD requests without PASID (DTE.GIoV,
//!   "PASID 0"), below 2^N: there the table has no sign extension
//!   ([`FsConfig::sign_extend`]);
//! - an entry with P=0 ends the walk with a not-present fault, before any
//!   other check of that entry;
//! - reserved bits: PS in a PML5E/PML4E, PS in a PDPE without 1 GiB pages,
//!   the low address bits of a large leaf (20:13 for 2 MiB, 29:13 for
//!   1 GiB), and address bits at or above the configured address width;
//! - access rights (VT-d spec 3.6.2 / 3.6.3, with the PASID entry's
//!   SRE/WPE): a user (non-privileged) request needs U/S=1 in every entry,
//!   and for a write R/W=1 in every entry; a supervisor request is only
//!   allowed with SRE and may write a read-only page unless WPE is set.
//!   Requests without PASID are user requests.
//!
//! Accessed/dirty: hardware sets A in every entry it uses (and EA, bit 10,
//! when EAFE is set) and D in the leaf on a write, with atomic updates of
//! guest memory. The reader here is read-only, so the walker reports the
//! updates it would make ([`AdUpdates`]) instead of writing them; a caller
//! with writable guest memory may apply them.

use uiommufd_abi::Errno;

use crate::pt::Format;
use crate::Prot;

/// First-stage entry bits (spec 9.7).
pub mod fspte {
    pub const P: u64 = 1 << 0;
    /// Read/write: 0 makes everything below read-only.
    pub const RW: u64 = 1 << 1;
    /// User/supervisor: 0 makes everything below supervisor-only.
    pub const US: u64 = 1 << 2;
    pub const PWT: u64 = 1 << 3;
    pub const PCD: u64 = 1 << 4;
    pub const A: u64 = 1 << 5;
    /// Dirty (leaves only).
    pub const D: u64 = 1 << 6;
    /// Page size in a PDPE (1 GiB leaf) or PDE (2 MiB leaf); PAT in a PTE.
    pub const PS: u64 = 1 << 7;
    pub const G: u64 = 1 << 8;
    /// Extended accessed, set on any access when EAFE is enabled.
    pub const EA: u64 = 1 << 10;
    /// Address bits 51:12.
    pub const ADDR: u64 = 0x000f_ffff_ffff_f000;
    /// Execute disable.
    pub const XD: u64 = 1 << 63;
}

/// `ADDR_WIDTH_4LEVEL` / `ADDR_WIDTH_5LEVEL` (pasid.h).
pub const ADDR_WIDTH_4LEVEL: u32 = 48;
pub const ADDR_WIDTH_5LEVEL: u32 = 57;

/// How the first stage is configured (the PASID entry's first-stage
/// fields, spec 9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsConfig {
    /// 4 or 5 (FSPM).
    pub levels: u32,
    /// 1 GiB leaves allowed (CAP.FS1GP); otherwise PS in a PDPE is reserved.
    pub fs1gp: bool,
    /// Supervisor requests enabled (SRE).
    pub sre: bool,
    /// Write protect: supervisor writes obey R/W (WPE).
    pub wpe: bool,
    /// Extended accessed flag enabled (EAFE).
    pub eafe: bool,
    /// Address bits the output and table addresses may use (at most 52).
    pub addr_bits: u32,
    /// Input addresses are sign-extended (canonical). AMD's v2 table
    /// walked for a request without PASID is not: the full 48/57 bits
    /// decode the lower half.
    pub sign_extend: bool,
}

impl FsConfig {
    /// Input address bits (48 or 57).
    pub const fn va_bits(&self) -> u32 {
        12 + 9 * self.levels
    }

    /// Whether `iova` is canonical for this depth (or, without sign
    /// extension, below 2^N).
    #[inline]
    pub const fn canonical(&self, iova: u64) -> bool {
        let shift = 64 - self.va_bits();
        if self.sign_extend {
            (((iova << shift) as i64) >> shift) as u64 == iova
        } else {
            iova >> self.va_bits() == 0
        }
    }
}

/// The request being translated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsRequest {
    pub write: bool,
    /// Privileged (supervisor) request: a request-with-PASID with PR=1.
    pub supervisor: bool,
}

/// Permissions accumulated along a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsPerms {
    /// R/W=1 in every entry.
    pub writable: bool,
    /// U/S=1 in every entry.
    pub user: bool,
    /// XD=1 in some entry.
    pub nx: bool,
}

impl FsPerms {
    /// Before the first entry: nothing restricted yet.
    pub const ALL: FsPerms = FsPerms { writable: true, user: true, nx: false };

    fn and_entry(self, e: u64) -> FsPerms {
        FsPerms {
            writable: self.writable && e & fspte::RW != 0,
            user: self.user && e & fspte::US != 0,
            nx: self.nx || e & fspte::XD != 0,
        }
    }

    /// Whether `req` may access a page with these permissions under `cfg`.
    pub fn allows(self, req: FsRequest, cfg: &FsConfig) -> bool {
        if req.supervisor {
            // Supervisor data accesses may touch user pages; writes to
            // read-only pages are allowed unless WPE.
            !(req.write && cfg.wpe && !self.writable)
        } else {
            self.user && (!req.write || self.writable)
        }
    }
}

/// A first-stage fault (spec 7.1.3 fault conditions of first-stage
/// translation, reduced to what the model distinguishes). `level` is the
/// level of the offending entry: 0 PTE, 1 PDE, 2 PDPE, 3 PML4E, 4 PML5E.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsFault {
    /// The input address is not canonical.
    NonCanonical,
    /// A supervisor request while SRE is clear.
    SupervisorDisabled,
    /// P=0.
    NotPresent { level: u32 },
    /// A reserved bit is set.
    Reserved { level: u32, entry: u64 },
    /// The path's U/S or R/W bits forbid the access.
    Access,
    /// The entry could not be read (for nested translation: the table's
    /// guest address has no second-stage mapping).
    TableRead { level: u32, gpa: u64, err: Errno },
}

/// Accessed/dirty-flag updates hardware would make: `(entry gpa, bits)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdUpdates {
    len: usize,
    items: [(u64, u64); 5],
}

impl AdUpdates {
    fn push(&mut self, gpa: u64, bits: u64) {
        if self.len < self.items.len() {
            self.items[self.len] = (gpa, bits);
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[(u64, u64)] {
        &self.items[..self.len]
    }
}

/// A completed walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsWalk {
    /// Output (guest physical) address of the input byte.
    pub gpa: u64,
    /// log2 of the leaf's size (12, 21 or 30).
    pub page_shift: u32,
    pub perms: FsPerms,
    pub ad: AdUpdates,
}

/// Where a walk starts: a table of level `level` at `table`, with the
/// permissions the entries above it granted. A walk from the root is
/// `Resume::root(cfg, pgtbl_addr)`; a paging-structure cache hit gives a
/// deeper start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    pub level: u32,
    pub table: u64,
    pub perms: FsPerms,
}

impl Resume {
    pub fn root(cfg: &FsConfig, table: u64) -> Resume {
        Resume { level: cfg.levels - 1, table: table & fspte::ADDR, perms: FsPerms::ALL }
    }
}

const fn level_shift(level: u32) -> u32 {
    12 + 9 * level
}

fn addr_mask(cfg: &FsConfig) -> u64 {
    fspte::ADDR & ((1u64 << cfg.addr_bits) - 1)
}

/// The reserved bits of a present entry at `level` (leaf or not).
fn reserved_bits(cfg: &FsConfig, level: u32, entry: u64) -> u64 {
    let mut rsvd = fspte::ADDR & !addr_mask(cfg);
    match level {
        3 | 4 => rsvd |= fspte::PS,
        2 if entry & fspte::PS != 0 => {
            if !cfg.fs1gp {
                rsvd |= fspte::PS;
            }
            rsvd |= 0x3fff_e000; // bits 29:13
        }
        1 if entry & fspte::PS != 0 => rsvd |= 0x001f_e000, // bits 20:13
        _ => {}
    }
    entry & rsvd
}

/// Walk from the root at `root` (the PASID entry's FSPTPTR, a guest
/// physical address) for `iova`.
pub fn walk(
    cfg: &FsConfig,
    root: u64,
    iova: u64,
    req: FsRequest,
    read: impl FnMut(u64) -> Result<u64, Errno>,
) -> Result<FsWalk, FsFault> {
    walk_from(cfg, Resume::root(cfg, root), iova, req, read, |_, _, _| {})
}

/// Walk from `start`. `on_table(level, iova_prefix_start, resume)` is
/// called for every non-leaf entry used, with where a walk of any address
/// under that entry could resume (what a paging-structure cache stores).
pub fn walk_from(
    cfg: &FsConfig,
    start: Resume,
    iova: u64,
    req: FsRequest,
    mut read: impl FnMut(u64) -> Result<u64, Errno>,
    mut on_table: impl FnMut(u32, u64, Resume),
) -> Result<FsWalk, FsFault> {
    if !cfg.canonical(iova) {
        return Err(FsFault::NonCanonical);
    }
    if req.supervisor && !cfg.sre {
        return Err(FsFault::SupervisorDisabled);
    }
    let mut ad = AdUpdates::default();
    let mut accessed = fspte::A;
    if cfg.eafe {
        accessed |= fspte::EA;
    }
    let mut level = start.level.min(cfg.levels - 1);
    let mut table = start.table;
    let mut perms = start.perms;
    loop {
        let idx = (iova >> level_shift(level)) & 0x1ff;
        let gpa = table + idx * 8;
        let e = read(gpa).map_err(|err| FsFault::TableRead { level, gpa, err })?;
        if e & fspte::P == 0 {
            return Err(FsFault::NotPresent { level });
        }
        if reserved_bits(cfg, level, e) != 0 {
            return Err(FsFault::Reserved { level, entry: e });
        }
        perms = perms.and_entry(e);
        let leaf = level == 0 || (level <= 2 && e & fspte::PS != 0);
        let mut bits = accessed & !e;
        if leaf && req.write {
            bits |= fspte::D & !e;
        }
        if leaf {
            if !perms.allows(req, cfg) {
                return Err(FsFault::Access);
            }
            if bits != 0 {
                ad.push(gpa, bits);
            }
            let shift = level_shift(level);
            let page = e & addr_mask(cfg) & !((1u64 << shift) - 1);
            return Ok(FsWalk { gpa: page | (iova & ((1u64 << shift) - 1)), page_shift: shift, perms, ad });
        }
        if bits != 0 {
            ad.push(gpa, bits);
        }
        table = e & addr_mask(cfg);
        level -= 1;
        let prefix = iova & !((1u64 << level_shift(level + 1)) - 1);
        on_table(level + 1, prefix, Resume { level, table, perms });
    }
}

/// x86-64 paging on the generic radix engine, with the entries Linux's
/// generic page table writes for an IOMMU domain (`generic_pt/fmt/x86_64.h`,
/// used by AMD's v2 paging domains): `L` levels (4 or 5), 4 KiB, 2 MiB
/// and 1 GiB leaves.
/// - leaves: P, U/S and A always (`x86_64_pt_iommu_set_prot`), R/W and D
///   for writable mappings (a present entry is readable: there is no
///   write-only page), PS above level 0, the address in 51:12;
/// - tables: P, R/W, U/S and A (`x86_64_pt_install_table`).
///
/// D is written with the mapping, so the format offers no dirty tracking.
pub struct X86Format<const L: u32>;

impl<const L: u32> Format for X86Format<L> {
    const LEVELS: u32 = L;
    const LEAF_SHIFT: u32 = 12;
    const LEAF_LEVELS: u32 = 0b111;

    fn make_leaf(paddr: u64, prot: Prot, level: u32) -> u64 {
        let mut e = fspte::P | fspte::US | fspte::A | (paddr & fspte::ADDR);
        if prot.contains(Prot::WRITE) {
            e |= fspte::RW | fspte::D;
        }
        if level != 0 {
            e |= fspte::PS;
        }
        e
    }

    fn make_table(table_pa: u64) -> u64 {
        fspte::P | fspte::RW | fspte::US | fspte::A | (table_pa & fspte::ADDR)
    }

    fn is_present(entry: u64) -> bool {
        entry & fspte::P != 0
    }

    fn is_leaf(entry: u64, _level: u32) -> bool {
        entry & fspte::PS != 0
    }

    fn leaf_paddr(entry: u64, level: u32) -> u64 {
        entry & fspte::ADDR & !((1u64 << level_shift(level)) - 1)
    }

    fn leaf_prot(entry: u64) -> Prot {
        if entry & fspte::RW != 0 {
            Prot::READ | Prot::WRITE
        } else {
            Prot::READ
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const P: u64 = fspte::P;
    const RW: u64 = fspte::RW;
    const US: u64 = fspte::US;
    const PS: u64 = fspte::PS;

    fn cfg4() -> FsConfig {
        FsConfig { levels: 4, fs1gp: true, sre: false, wpe: false, eafe: false, addr_bits: 52, sign_extend: true }
    }

    /// Guest memory: entry address -> value.
    struct Mem(HashMap<u64, u64>);

    impl Mem {
        fn reader(&self) -> impl FnMut(u64) -> Result<u64, Errno> + '_ {
            move |gpa| Ok(self.0.get(&gpa).copied().unwrap_or(0))
        }
        fn set(&mut self, table: u64, idx: u64, v: u64) {
            self.0.insert(table + idx * 8, v);
        }
    }

    /// A 4-level path for IOVA 0x1234_5678_9000 ending in a 4 KiB page at
    /// 0xabc000: PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, PT at 0x4000.
    fn path(bits: u64) -> (Mem, u64) {
        let iova = 0x1234_5678_9000u64;
        let idx = |l: u32| (iova >> (12 + 9 * l)) & 0x1ff;
        let mut m = Mem(HashMap::new());
        m.set(0x1000, idx(3), 0x2000 | bits);
        m.set(0x2000, idx(2), 0x3000 | bits);
        m.set(0x3000, idx(1), 0x4000 | bits);
        m.set(0x4000, idx(0), 0xabc000 | bits);
        (m, iova)
    }

    #[test]
    fn four_level_walk() {
        let (m, iova) = path(P | RW | US | fspte::A | fspte::D);
        let w = walk(&cfg4(), 0x1000, iova + 0x123, FsRequest::default(), m.reader()).unwrap();
        assert_eq!(w.gpa, 0xabc123);
        assert_eq!(w.page_shift, 12);
        assert_eq!(w.perms, FsPerms { writable: true, user: true, nx: false });
        assert!(w.ad.as_slice().is_empty());
        // A fresh path: A on every level, D on the leaf for a write.
        let (m, iova) = path(P | RW | US);
        let w = walk(&cfg4(), 0x1000, iova, FsRequest { write: true, supervisor: false }, m.reader()).unwrap();
        let ad = w.ad.as_slice();
        assert_eq!(ad.len(), 4);
        assert_eq!(ad[3].1, fspte::A | fspte::D);
        assert!(ad[..3].iter().all(|&(_, b)| b == fspte::A));
        // With EAFE, EA too.
        let mut c = cfg4();
        c.eafe = true;
        let w = walk(&c, 0x1000, iova, FsRequest::default(), m.reader()).unwrap();
        assert!(w.ad.as_slice().iter().all(|&(_, b)| b == fspte::A | fspte::EA));
    }

    #[test]
    fn large_leaves_and_reserved_bits() {
        let iova = 0x40_0000_0000u64 + 0x1432_1000; // PML4 idx 0, PDPT idx 256
        let mut m = Mem(HashMap::new());
        m.set(0x1000, 0, 0x2000 | P | RW | US);
        m.set(0x2000, 256, 0x8000_0000 | P | RW | US | PS);
        let w = walk(&cfg4(), 0x1000, iova, FsRequest::default(), m.reader()).unwrap();
        assert_eq!((w.gpa, w.page_shift), (0x8000_0000 + 0x1432_1000, 30));
        // Without FS1GP the PS bit of a PDPE is reserved.
        let mut c = cfg4();
        c.fs1gp = false;
        assert!(matches!(
            walk(&c, 0x1000, iova, FsRequest::default(), m.reader()),
            Err(FsFault::Reserved { level: 2, .. })
        ));
        // A 1 GiB leaf with bit 13 set.
        m.set(0x2000, 256, 0x8000_2000 | P | RW | US | PS);
        assert!(matches!(
            walk(&cfg4(), 0x1000, iova, FsRequest::default(), m.reader()),
            Err(FsFault::Reserved { level: 2, .. })
        ));
        // PAT (bit 12) is fine.
        m.set(0x2000, 256, 0x8000_1000 | P | RW | US | PS);
        assert_eq!(
            walk(&cfg4(), 0x1000, iova, FsRequest::default(), m.reader()).unwrap().gpa,
            0x8000_0000 + 0x1432_1000
        );
        // 2 MiB leaf via a PDE.
        m.set(0x2000, 256, 0x3000 | P | RW | US);
        m.set(0x3000, (iova >> 21) & 0x1ff, 0x60_0000 | P | US | PS);
        let w = walk(&cfg4(), 0x1000, iova, FsRequest::default(), m.reader()).unwrap();
        assert_eq!((w.gpa, w.page_shift, w.perms.writable), (0x60_0000 + (iova & 0x1f_ffff), 21, false));
        // PS in a PML4E is reserved.
        m.set(0x1000, 0, 0x2000 | P | RW | US | PS);
        assert_eq!(
            walk(&cfg4(), 0x1000, iova, FsRequest::default(), m.reader()),
            Err(FsFault::Reserved { level: 3, entry: 0x2000 | P | RW | US | PS })
        );
        // Address bits above the width.
        m.set(0x1000, 0, 0x2000 | 1 << 45 | P | RW | US);
        let mut c = cfg4();
        c.addr_bits = 39;
        assert!(matches!(
            walk(&c, 0x1000, iova, FsRequest::default(), m.reader()),
            Err(FsFault::Reserved { level: 3, .. })
        ));
        // Not present wins over reserved bits.
        m.set(0x1000, 0, 0x2000 | PS);
        assert_eq!(
            walk(&cfg4(), 0x1000, iova, FsRequest::default(), m.reader()),
            Err(FsFault::NotPresent { level: 3 })
        );
    }

    #[test]
    fn access_rights() {
        let user_rw = FsRequest { write: true, supervisor: false };
        let sup_rw = FsRequest { write: true, supervisor: true };
        let sup_r = FsRequest { write: false, supervisor: true };
        // Read-only at the PDPE level makes the page read-only.
        let (mut m, iova) = path(P | RW | US);
        m.set(0x1000, (iova >> 39) & 0x1ff, 0x2000 | P | US);
        assert_eq!(walk(&cfg4(), 0x1000, iova, user_rw, m.reader()), Err(FsFault::Access));
        assert!(walk(&cfg4(), 0x1000, iova, FsRequest::default(), m.reader()).is_ok());
        // Supervisor requests need SRE.
        assert_eq!(walk(&cfg4(), 0x1000, iova, sup_r, m.reader()), Err(FsFault::SupervisorDisabled));
        let mut c = cfg4();
        c.sre = true;
        // Without WPE a supervisor may write a read-only page; with it not.
        assert!(walk(&c, 0x1000, iova, sup_rw, m.reader()).is_ok());
        c.wpe = true;
        assert_eq!(walk(&c, 0x1000, iova, sup_rw, m.reader()), Err(FsFault::Access));
        // A supervisor-only page: user requests fault, supervisor ones pass.
        let (mut m, iova) = path(P | RW | US);
        m.set(0x4000, (iova >> 12) & 0x1ff, 0xabc000 | P | RW);
        assert_eq!(walk(&c, 0x1000, iova, FsRequest::default(), m.reader()), Err(FsFault::Access));
        assert!(walk(&c, 0x1000, iova, sup_rw, m.reader()).is_ok());
        // XD is reported.
        m.set(0x4000, (iova >> 12) & 0x1ff, 0xabc000 | P | RW | US | fspte::XD);
        assert!(walk(&c, 0x1000, iova, FsRequest::default(), m.reader()).unwrap().perms.nx);
    }

    #[test]
    fn canonical_and_five_levels() {
        let c = cfg4();
        assert!(c.canonical(0x7fff_ffff_f000));
        assert!(c.canonical(0xffff_8000_0000_0000));
        assert!(!c.canonical(0x8000_0000_0000));
        let m = Mem(HashMap::new());
        assert_eq!(walk(&c, 0x1000, 1 << 47, FsRequest::default(), m.reader()), Err(FsFault::NonCanonical));
        let c5 = FsConfig { levels: 5, ..cfg4() };
        assert_eq!((c5.levels, c5.va_bits()), (5, 57));
        assert!(c5.canonical(1 << 47));
        // A 5-level walk reads the PML5 first.
        let mut m = Mem(HashMap::new());
        let iova = 1u64 << 48;
        m.set(0x1000, 1, 0x2000 | P | RW | US);
        m.set(0x2000, 0, 0x3000 | P | RW | US);
        m.set(0x3000, 0, 0x4000 | P | RW | US);
        m.set(0x4000, 0, 0x5000 | P | RW | US);
        m.set(0x5000, 0, 0x9000 | P | RW | US);
        assert_eq!(walk(&c5, 0x1000, iova + 7, FsRequest::default(), m.reader()).unwrap().gpa, 0x9007);
        // Table read errors are reported with the level and address.
        let mut c5e = c5;
        c5e.levels = 5;
        let r = walk(&c5e, 0x1000, iova, FsRequest::default(), |gpa| {
            if gpa >= 0x3000 {
                Err(Errno::EFAULT)
            } else {
                Ok(m.0.get(&gpa).copied().unwrap_or(0))
            }
        });
        assert_eq!(r, Err(FsFault::TableRead { level: 2, gpa: 0x3000, err: Errno::EFAULT }));
    }

    #[test]
    fn resume_reports_tables() {
        let (m, iova) = path(P | RW | US);
        let mut seen = Vec::new();
        let w = walk_from(&cfg4(), Resume::root(&cfg4(), 0x1000), iova, FsRequest::default(), m.reader(), |l, p, r| {
            seen.push((l, p, r.table, r.level))
        })
        .unwrap();
        assert_eq!(w.gpa, 0xabc000);
        assert_eq!(
            seen,
            vec![
                (3, iova & !((1 << 39) - 1), 0x2000, 2),
                (2, iova & !((1 << 30) - 1), 0x3000, 1),
                (1, iova & !((1 << 21) - 1), 0x4000, 0),
            ]
        );
        // Resuming at the PT gives the same answer with one read.
        let mut reads = 0;
        let start = Resume { level: 0, table: 0x4000, perms: FsPerms::ALL };
        let w2 = walk_from(
            &cfg4(),
            start,
            iova,
            FsRequest::default(),
            |g| {
                reads += 1;
                Ok(m.0.get(&g).copied().unwrap_or(0))
            },
            |_, _, _| {},
        )
        .unwrap();
        assert_eq!((w2.gpa, reads), (0xabc000, 1));
    }

    #[test]
    fn without_sign_extension_the_lower_half_is_all() {
        // AMD's v2 table for requests without PASID: bit 47 is an address
        // bit like any other, and nothing above 2^48 is translated.
        let c = FsConfig { sign_extend: false, ..cfg4() };
        assert!(c.canonical(1 << 47) && c.canonical((1 << 48) - 1));
        assert!(!c.canonical(1 << 48) && !c.canonical(0xffff_8000_0000_0000));
        let mut m = Mem(HashMap::new());
        let iova = (1u64 << 47) | 0x5000;
        m.set(0x1000, 256, 0x2000 | P | RW | US);
        m.set(0x2000, 0, 0x3000 | P | RW | US);
        m.set(0x3000, 0, 0x4000 | P | RW | US);
        m.set(0x4000, 5, 0x7000 | P | RW | US);
        assert_eq!(walk(&c, 0x1000, iova + 1, FsRequest::default(), m.reader()).unwrap().gpa, 0x7001);
        assert_eq!(walk(&cfg4(), 0x1000, iova, FsRequest::default(), m.reader()), Err(FsFault::NonCanonical));
        assert_eq!(walk(&c, 0x1000, 1 << 48, FsRequest::default(), m.reader()), Err(FsFault::NonCanonical));
    }

    #[test]
    fn host_format_entries_are_the_kernels() {
        // x86_64_pt_iommu_set_prot / install_leaf / install_table, by hand.
        type F4 = X86Format<4>;
        let rw = Prot::READ | Prot::WRITE;
        // P | RW | US | A | D, address.
        assert_eq!(F4::make_leaf(0x1234_5000, rw, 0), 0x1234_5067);
        // Read-only: P | US | A.
        assert_eq!(F4::make_leaf(0x1234_5000, Prot::READ, 0), 0x1234_5025);
        // 2 MiB: PS too.
        assert_eq!(F4::make_leaf(0x4020_0000, rw, 1), 0x4020_00e7);
        // Tables: P | RW | US | A.
        assert_eq!(F4::make_table(0x4000_3000), 0x4000_3027);
        assert_eq!(F4::leaf_paddr(0x4020_00e7 | 1 << 12, 1), 0x4020_0000);
        assert_eq!(F4::leaf_prot(0x25), Prot::READ);
        assert_eq!(crate::pt::PageTable::<F4>::pgsize_bitmap(), 0x4020_1000);
        // A host table walks like a guest one.
        let pt = crate::pt::PageTable::<F4>::new().unwrap();
        pt.map(0x20_0000, 0x80_0000, 1 << 21, 1, rw).unwrap();
        let (e, level) = pt.walk(0x20_1234).unwrap();
        assert_eq!((e, level), (0x80_00e7, 1));
    }
}
