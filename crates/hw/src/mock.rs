//! The iommufd selftest's mock IOMMU domain (`drivers/iommu/iommufd/
//! selftest.c`, `mock_domain_*`), as Linux 6.12 and Linux 7.3 build it
//! ([`MockPageTable`], chosen per release by [`MockProfile`]).
//!
//! Linux 7.3's mock is the generic page table in the AMDv1 format with a
//! 2 KiB granule: a map call's pages of any power-of-two size are single
//! (contiguous) entries, so dirty tracking reports and cleans them whole.
//! This model keeps 7.3's pages in the same table, each 2 KiB piece (or
//! 1 MiB leaf) tagged with the size of the page it belongs to
//! ([`bits::CONTIG`]). What follows describes 6.12's xarray mock, which
//! the same table also models.
//!
//! The kernel mock keeps one xarray value per `MOCK_IO_PAGE_SIZE` (half a
//! CPU page) of IOVA: the physical address plus metadata bits recording how
//! each piece was mapped. The selftests and the mock's own sanity checks
//! observe those bits, so this model keeps them too, in a real three-level
//! page table ([`MockFormat`] on the generic [`pt`](crate::pt) engine):
//!
//! - a 2 KiB leaf per piece mapped with `MOCK_IO_PAGE_SIZE`;
//! - a single 1 MiB leaf for a piece mapped with `MOCK_HUGE_PAGE_SIZE`
//!   (the kernel stores 512 entries; [`MockDomain::entry_at`] reports, for
//!   every 2 KiB piece of it, what the kernel's entry for that piece holds);
//! - a single 1 MiB *span* leaf ([`bits::SPAN`]) for 512 consecutive 2 KiB
//!   pieces of one `map_pages` call that fill an aligned 1 MiB block. This
//!   is the model's compression, invisible to every observer: each piece
//!   reads as the 2 KiB entry the kernel would hold (not huge, START only
//!   on the first piece, LAST only on the last), translations end at the
//!   piece, and a span is split back into 512 leaves before part of it is
//!   unmapped or marked dirty. It makes mapping large ranges cost one entry
//!   per MiB instead of 512.
//!
//! Per-entry flags, as the kernel mock sets them:
//! - START on the first piece a `map_pages` call wrote, LAST on the last one.
//!   In the kernel both are the *same bit* (`MOCK_PFN_START_IOVA ==
//!   MOCK_PFN_LAST_IOVA`); we store two bits for clarity but every check
//!   treats "either" as the kernel's single bit;
//! - HUGE on every piece written by a call whose `pgsize` was not
//!   `MOCK_IO_PAGE_SIZE`;
//! - DIRTY, set by `IOMMU_TEST_OP_DIRTY` ([`MockDomain::mark_dirty`]) and
//!   harvested by [`MockDomain::read_and_clear_dirty`].
//!
//! Where the kernel mock would `WARN_ON`, this model counts in
//! [`MockDomain::warnings`] (a test of the engine asserts it stays 0).
//!
//! The rest of the mock driver lives here too: [`MockNested`] (stage 1 with
//! mock IOTLB words), [`MockDevice`] (the mock's devices and their
//! per-device ops) and [`MockViommu`] (the mock vIOMMU with its HW queues).
//!
//! Host page size: the kernel sizes the mock from `PAGE_SIZE`; this model
//! assumes 4 KiB CPU pages ([`HOST_PAGE_SIZE`]), which is what the selftest
//! ABI constants in `uiommufd-abi` assume too. A host with larger pages needs
//! a different [`MockFormat::LEAF_SHIFT`].

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use uiommufd_abi::test_cmd;
use uiommufd_abi::Errno;
use zerocopy::{FromZeros, IntoBytes};

use crate::device::{Cap, HwQueueInit, IommuDevice, PagingRequest, ViommuCore, ViommuDriver, ViommuInit};

use crate::pt::{Format, Lookup, PageTable};
use crate::{Access, Aperture, DirtyOps, Domain, Fault, Prot, Translation, UserData, UserDataArray};

/// The CPU page size the mock is sized for.
pub const HOST_PAGE_SIZE: u64 = 4096;
/// The mock IOMMU's base page: half a CPU page.
pub const MOCK_IO_PAGE_SIZE: u64 = HOST_PAGE_SIZE / 2;
/// The mock's huge page, offered with `MOCK_FLAGS_DEVICE_HUGE_IOVA`.
pub const MOCK_HUGE_PAGE_SIZE: u64 = 512 * MOCK_IO_PAGE_SIZE;
pub const MOCK_APERTURE_START: u64 = test_cmd::MOCK_APERTURE_START;
pub const MOCK_APERTURE_LAST: u64 = test_cmd::MOCK_APERTURE_LAST;

const _: () = assert!(MOCK_IO_PAGE_SIZE == test_cmd::MOCK_PAGE_SIZE);
const _: () = assert!(MOCK_HUGE_PAGE_SIZE == test_cmd::MOCK_HUGE_PAGE_SIZE);
const _: () = assert!(MOCK_IO_PAGE_SIZE == 1 << MockFormat::LEAF_SHIFT);
const _: () = assert!(MOCK_HUGE_PAGE_SIZE == MockPt::level_size(1));
const _: () = assert!(MOCK_APERTURE_LAST <= MockPt::max_iova());

/// Entry bits of [`MockFormat`] (our own layout; the kernel's xarray value
/// is `paddr / MOCK_IO_PAGE_SIZE` with the flags above `MOCK_PFN_MASK`).
pub mod bits {
    /// Valid entry (leaf or table).
    pub const PRESENT: u64 = 1 << 0;
    pub const READ: u64 = 1 << 1;
    pub const WRITE: u64 = 1 << 2;
    /// Leaf of `MOCK_HUGE_PAGE_SIZE` (level 1): the kernel's
    /// `MOCK_PFN_HUGE_IOVA`, doubling as the page-size bit.
    pub const HUGE: u64 = 1 << 3;
    /// First piece of a `map_pages` call (`MOCK_PFN_START_IOVA`).
    pub const START: u64 = 1 << 4;
    /// Last piece of a `map_pages` call (`MOCK_PFN_LAST_IOVA`).
    pub const LAST: u64 = 1 << 5;
    /// `MOCK_PFN_DIRTY_IOVA`.
    pub const DIRTY: u64 = 1 << 6;
    /// Level-1 leaf standing for 512 consecutive 2 KiB pieces (no kernel
    /// counterpart: see the module doc). Its address is the first piece's,
    /// 2 KiB aligned; START / LAST refer to its first / last piece. Never
    /// DIRTY: marking a piece splits the span first.
    pub const SPAN: u64 = 1 << 7;
    /// Physical address bits (leaf: 2 KiB-aligned page; table: node).
    pub const ADDR: u64 = 0x000f_ffff_ffff_f800;
    /// Generic page table only (`MockPageTable::GenericPt`): the leaf is
    /// one of the `2^k` entries of a contiguous page of `MOCK_IO_PAGE_SIZE
    /// << k` bytes (`k` in these bits; 0 on a level-1 leaf: the 1 MiB leaf
    /// alone). Dirty tracking sees the contiguous page as one.
    pub const CONTIG_SHIFT: u32 = 52;
    pub const CONTIG: u64 = 0x3f << CONTIG_SHIFT;
}

/// The page table behind the mock's paging domains, which is what changed
/// most between releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MockPageTable {
    /// Linux 6.12: an xarray with one entry per `MOCK_IO_PAGE_SIZE` (plus
    /// 1 MiB entries with `MOCK_FLAGS_DEVICE_HUGE_IOVA`); each 2 KiB piece
    /// is dirty on its own; paging domains take no driver data.
    Xarray,
    /// Linux 7.3: the generic page table in the AMDv1 format with a 2 KiB
    /// granule (generic_pt/fmt/iommu_mock.c): every power-of-two page size
    /// from 2 KiB (`MOCK_IOMMUPT_DEFAULT`, the mock aperture) or 4 KiB and
    /// 1 MiB only (`MOCK_IOMMUPT_HUGE`, the table's whole 2^38 bytes),
    /// chosen by `iommu_pgsize` at map time; a page is dirty as a whole;
    /// paging domains take `struct iommu_hwpt_selftest`.
    GenericPt,
}

/// `MOCK_IOMMUPT_*`: the generic page table's two shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MockIommuPt {
    Default,
    Huge,
}

/// The mock's page-table format: three levels of 9 bits over 2 KiB pages
/// (2^38 bytes of IOVA), leaves at level 0 (2 KiB) and level 1 (1 MiB).
pub struct MockFormat;

impl Format for MockFormat {
    const LEVELS: u32 = 3;
    const LEAF_SHIFT: u32 = 11;
    const LEAF_LEVELS: u32 = 0b11;
    const DIRTY: u64 = bits::DIRTY;

    #[inline]
    fn make_leaf(paddr: u64, prot: Prot, level: u32) -> u64 {
        let mut e = bits::PRESENT | (paddr & bits::ADDR);
        if prot.contains(Prot::READ) {
            e |= bits::READ;
        }
        if prot.contains(Prot::WRITE) {
            e |= bits::WRITE;
        }
        if level > 0 {
            e |= bits::HUGE;
        }
        e
    }

    #[inline]
    fn make_table(table_pa: u64) -> u64 {
        bits::PRESENT | (table_pa & bits::ADDR)
    }

    #[inline]
    fn is_present(entry: u64) -> bool {
        entry & bits::PRESENT != 0
    }

    #[inline]
    fn is_leaf(entry: u64, _level: u32) -> bool {
        entry & (bits::HUGE | bits::SPAN) != 0
    }

    /// A span's pieces follow its first one, which need not be 1 MiB
    /// aligned physically.
    #[inline]
    fn leaf_paddr(entry: u64, level: u32) -> u64 {
        if entry & bits::SPAN != 0 {
            return entry & bits::ADDR;
        }
        entry & bits::ADDR & !(MockPt::level_size(level) - 1)
    }

    #[inline]
    fn leaf_prot(entry: u64) -> Prot {
        let mut prot = Prot::default();
        if entry & bits::READ != 0 {
            prot = prot | Prot::READ;
        }
        if entry & bits::WRITE != 0 {
            prot = prot | Prot::WRITE;
        }
        prot
    }
}

/// The mock's page table.
pub type MockPt = PageTable<MockFormat>;

/// What the kernel mock's entry for one `MOCK_IO_PAGE_SIZE` piece holds
/// (as read by `IOMMU_TEST_OP_MD_CHECK_MAP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MockEntry {
    /// Physical address of the piece.
    pub paddr: u64,
    pub prot: Prot,
    /// First piece of its `map_pages` call.
    pub start: bool,
    /// Last piece of its `map_pages` call.
    pub last: bool,
    /// Mapped with a page size other than `MOCK_IO_PAGE_SIZE`.
    pub huge: bool,
    /// Dirty. For a huge mapping this is the state of the whole huge page:
    /// the kernel would show it only on the piece `IOMMU_TEST_OP_DIRTY`
    /// named, but harvesting treats the huge page as one either way.
    pub dirty: bool,
}

/// A mock IOMMU paging domain.
#[derive(Debug)]
pub struct MockDomain {
    pt: MockPt,
    pgsize_bitmap: u64,
    aperture: Aperture,
    /// The generic page table's contiguous pages ([`MockPageTable`]).
    generic: bool,
    /// Allocated with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING` (the kernel's
    /// `domain->dirty_ops` being set).
    dirty_ops: AtomicBool,
    /// `MOCK_DIRTY_TRACK`.
    tracking: AtomicBool,
    warnings: AtomicU64,
}

impl MockDomain {
    /// A domain as `mock_domain_alloc_paging()` makes it: no dirty ops.
    /// `huge_iova`: the device was created with
    /// `MOCK_FLAGS_DEVICE_HUGE_IOVA`, adding `MOCK_HUGE_PAGE_SIZE` to the
    /// page sizes.
    pub fn new(huge_iova: bool) -> Result<Self, Errno> {
        Self::build(huge_iova, false)
    }

    /// A domain allocated with `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`: it has
    /// dirty ops, so [`set_dirty_tracking`](Self::set_dirty_tracking) may
    /// enable tracking.
    pub fn with_dirty_ops(huge_iova: bool) -> Result<Self, Errno> {
        Self::build(huge_iova, true)
    }

    fn build(huge_iova: bool, dirty_ops: bool) -> Result<Self, Errno> {
        let mut pgsize_bitmap = MOCK_IO_PAGE_SIZE;
        if huge_iova {
            pgsize_bitmap |= MOCK_HUGE_PAGE_SIZE;
        }
        Ok(MockDomain {
            pt: MockPt::new()?,
            pgsize_bitmap,
            aperture: Aperture { start: MOCK_APERTURE_START, last: MOCK_APERTURE_LAST },
            generic: false,
            dirty_ops: AtomicBool::new(dirty_ops),
            tracking: AtomicBool::new(false),
            warnings: AtomicU64::new(0),
        })
    }

    /// A domain of 7.3's mock (`mock_domain_alloc_pgtable`): the generic
    /// page table of shape `shape`. AMDv1 has a leaf of every power-of-two
    /// size within each level (up to 2^37 in this 2^38-byte table);
    /// `MOCK_IOMMUPT_HUGE` offers 1 MiB and the CPU page only, and keeps
    /// the table's own aperture instead of the mock one.
    pub fn generic(shape: MockIommuPt, dirty_ops: bool) -> Result<Self, Errno> {
        let (pgsize_bitmap, aperture) = match shape {
            MockIommuPt::Default => {
                (Self::all_sizes(), Aperture { start: MOCK_APERTURE_START, last: MOCK_APERTURE_LAST })
            }
            MockIommuPt::Huge => {
                (MOCK_HUGE_PAGE_SIZE | HOST_PAGE_SIZE, Aperture { start: 0, last: MockPt::max_iova() })
            }
        };
        Ok(MockDomain {
            pt: MockPt::new()?,
            pgsize_bitmap,
            aperture,
            generic: true,
            dirty_ops: AtomicBool::new(dirty_ops),
            tracking: AtomicBool::new(false),
            warnings: AtomicU64::new(0),
        })
    }

    /// Every power of two from `MOCK_IO_PAGE_SIZE` to half the table.
    fn all_sizes() -> u64 {
        let top = MockPt::max_iova().div_ceil(2);
        !(MOCK_IO_PAGE_SIZE - 1) & (top | (top - 1))
    }

    /// Whether this is 7.3's generic page table (pages dirty as a whole).
    pub fn is_generic(&self) -> bool {
        self.generic
    }

    /// Whether huge pages are in the page-size bitmap.
    pub fn huge_iova(&self) -> bool {
        self.pgsize_bitmap & MOCK_HUGE_PAGE_SIZE != 0
    }

    /// Give the domain dirty ops, as `mock_domain_alloc_user()` does after
    /// `mock_domain_alloc_paging()` for `IOMMU_HWPT_ALLOC_DIRTY_TRACKING`.
    pub fn enable_dirty_ops(&self) {
        self.dirty_ops.store(true, Ordering::Relaxed);
    }

    /// Whether the domain has dirty ops (was allocated for dirty tracking).
    pub fn has_dirty_ops(&self) -> bool {
        self.dirty_ops.load(Ordering::Relaxed)
    }

    /// The underlying page table, for inspection.
    pub fn page_table(&self) -> &MockPt {
        &self.pt
    }

    /// Whether nothing is mapped (the kernel mock warns when a domain is
    /// freed with entries left).
    pub fn is_empty(&self) -> bool {
        self.pt.is_empty()
    }

    /// How many times the kernel mock would have hit a `WARN_ON`.
    pub fn warnings(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }

    fn warn(&self) {
        self.warnings.fetch_add(1, Ordering::Relaxed);
    }

    /// The kernel entry for the `MOCK_IO_PAGE_SIZE` piece holding `iova`.
    pub fn entry_at(&self, iova: u64) -> Option<MockEntry> {
        let iova = iova & !(MOCK_IO_PAGE_SIZE - 1);
        let (entry, level) = self.pt.walk(iova)?;
        let size = MockPt::level_size(level);
        let offset = iova & (size - 1);
        Some(MockEntry {
            paddr: MockFormat::leaf_paddr(entry, level) + offset,
            prot: MockFormat::leaf_prot(entry),
            start: entry & bits::START != 0 && offset == 0,
            last: entry & bits::LAST != 0 && offset == size - MOCK_IO_PAGE_SIZE,
            huge: entry & bits::HUGE != 0,
            dirty: entry & bits::DIRTY != 0,
        })
    }

    /// `mock_domain_set_dirty_tracking()`: `EINVAL` to enable it on a
    /// domain without dirty ops; disabling always succeeds.
    pub fn set_dirty_tracking(&self, enable: bool) -> Result<(), Errno> {
        if enable && !self.has_dirty_ops() {
            return Err(Errno::EINVAL);
        }
        self.tracking.store(enable, Ordering::Relaxed);
        Ok(())
    }

    /// Whether dirty tracking is on (`MOCK_DIRTY_TRACK`).
    pub fn dirty_tracking(&self) -> bool {
        self.tracking.load(Ordering::Relaxed)
    }

    /// One bit of `IOMMU_TEST_OP_DIRTY`: mark the entry covering `iova`
    /// dirty. Returns whether something maps `iova` (the op counts those in
    /// `out_nr_dirty`). The op itself fails with `EINVAL` while tracking is
    /// off; that check is the caller's ([`dirty_tracking`](Self::dirty_tracking)).
    ///
    /// Note: the 6.12 op looks the entry up at `iova / page_size` with the
    /// caller's bitmap `page_size`, which only names the right entry when
    /// `page_size == MOCK_IO_PAGE_SIZE` (all the selftests use); this takes
    /// the IOVA itself.
    pub fn mark_dirty(&self, iova: u64) -> bool {
        self.split_span(iova);
        self.pt.mark_dirty(iova)
    }

    /// Pieces of one 1 MiB block.
    const PIECES: u64 = MOCK_HUGE_PAGE_SIZE / MOCK_IO_PAGE_SIZE;

    /// If a span maps `iova`, replace it by its 512 pieces' own leaves
    /// (readers see the span or the pieces, never a gap). A failure to get
    /// a table node leaves the span whole (the 3 * 2^18-node page-table
    /// window is full); callers then act on the span as a whole.
    fn split_span(&self, iova: u64) {
        let Lookup::Leaf { entry, level: 1 } = self.pt.lookup(iova) else { return };
        if entry & bits::SPAN == 0 {
            return;
        }
        let _ = self.pt.split_leaf(iova, 1, |i, span| {
            let i = i as u64;
            let mut e = (span & !(bits::SPAN | bits::START | bits::LAST)) + i * MOCK_IO_PAGE_SIZE;
            if i == 0 {
                e |= span & bits::START;
            }
            if i == Self::PIECES - 1 {
                e |= span & bits::LAST;
            }
            e
        });
    }

    /// `map_pages` of `pgcount` 2 KiB pieces: whole aligned 1 MiB blocks
    /// become spans, the pieces around them ordinary leaves; START and LAST
    /// mark the call's first and last piece either way. The outcome,
    /// including the bytes mapped when a piece is already in use, is the
    /// one of mapping piece by piece: a block that cannot take a span is
    /// mapped piece by piece from there on.
    fn map_pieces(&self, iova: u64, paddr: u64, pgcount: u64, prot: Prot, contig: u64) -> Result<(), (Errno, u64)> {
        const IO: u64 = MOCK_IO_PAGE_SIZE;
        let head = ((iova.next_multiple_of(MOCK_HUGE_PAGE_SIZE) - iova) / IO).min(pgcount);
        let blocks = (pgcount - head) / Self::PIECES;
        if blocks == 0 || paddr.checked_add(pgcount * IO - 1).is_none() {
            return self.map_run(iova, paddr, 0, pgcount, prot, contig | bits::START, contig | bits::LAST, contig);
        }
        let tail = pgcount - head - blocks * Self::PIECES;
        if head != 0 {
            self.map_run(iova, paddr, 0, head, prot, contig | bits::START, contig, contig)?;
        }
        let off = head * IO;
        // Address and permissions of the first piece; the others follow.
        let span = MockFormat::make_leaf(paddr + off, prot, 0) | bits::SPAN | contig;
        let r = self.pt.map_entries(iova + off, 1, blocks, |k| {
            let mut e = span + k * MOCK_HUGE_PAGE_SIZE;
            if k == 0 && head == 0 {
                e |= bits::START;
            }
            if k == blocks - 1 && tail == 0 {
                e |= bits::LAST;
            }
            e
        });
        if let Err((errno, mapped)) = r {
            let done = off + mapped;
            if errno != Errno::EEXIST {
                return Err((errno, done));
            }
            // Something is mapped in this block: piece by piece, so the
            // call stops exactly at the first piece in use.
            let first = if done == 0 { bits::START } else { 0 };
            return self
                .map_run(
                    iova + done,
                    paddr + done,
                    0,
                    pgcount - done / IO,
                    prot,
                    first | contig,
                    bits::LAST | contig,
                    contig,
                )
                .map_err(|(e, m)| (e, done + m));
        }
        if tail != 0 {
            let at = off + blocks * MOCK_HUGE_PAGE_SIZE;
            self.map_run(iova + at, paddr + at, 0, tail, prot, contig, bits::LAST | contig, contig)
                .map_err(|(e, m)| (e, at + m))?;
        }
        Ok(())
    }

    /// `count` leaves at `level` from `iova` mapping consecutive memory from
    /// `paddr`, every one with `bits`, the first with `first`, the last
    /// with `last` instead.
    #[allow(clippy::too_many_arguments)]
    fn map_run(
        &self,
        iova: u64,
        paddr: u64,
        level: u32,
        count: u64,
        prot: Prot,
        first: u64,
        last: u64,
        bits: u64,
    ) -> Result<(), (Errno, u64)> {
        let size = MockPt::level_size(level);
        if (iova | paddr) & (size - 1) != 0 {
            return Err((Errno::EINVAL, 0));
        }
        if count == 0 {
            return Ok(());
        }
        if paddr.checked_add(size * count - 1).is_none() {
            return Err((Errno::ERANGE, 0));
        }
        let leaf = MockFormat::make_leaf(paddr, prot, level);
        self.pt.map_entries(iova, level, count, |n| {
            let extra = if n == 0 { first } else { 0 } | if n == count - 1 { last } else { 0 };
            (leaf + n * size) | bits | extra
        })
    }

    /// The usual unmap (a guest page, a descriptor ring): `total` bytes
    /// from `iova` inside one 1 MiB block whose first piece is a 2 KiB
    /// leaf. No span can cover the block then (its level-0 table is in
    /// use), so the pieces are cleared in place, one walk and no
    /// recursion; the same entries go as through [`PageTable::unmap`]
    /// (holes count as unmapped: from the first one on, it finishes the
    /// job). `None`: not that case.
    fn unmap_in_block(&self, iova: u64, total: u64) -> Option<u64> {
        const IO: u64 = MOCK_IO_PAGE_SIZE;
        let last = iova.checked_add(total - 1)?;
        if iova & !(MOCK_HUGE_PAGE_SIZE - 1) != last & !(MOCK_HUGE_PAGE_SIZE - 1) {
            return None;
        }
        if !matches!(self.pt.lookup(iova), Lookup::Leaf { level: 0, .. }) {
            return None;
        }
        let count = total / IO;
        let cleared = self.pt.clear_leaf_run(iova, 0, count);
        if cleared == count {
            return Some(total);
        }
        let done = cleared * IO;
        Some(done + self.pt.unmap(iova + done, IO, count - cleared))
    }

    /// [`crate::map_split`], out of the shortcut's way.
    #[cold]
    #[inline(never)]
    fn map_split(&self, iova: u64, paddr: u64, size: u64, prot: Prot, max_pgsize: u64) -> Result<(), Errno> {
        crate::map_split(self, iova, paddr, size, prot, max_pgsize)
    }

    /// [`crate::unmap_split`], out of the shortcut's way.
    #[cold]
    #[inline(never)]
    fn unmap_split(&self, iova: u64, size: u64, max_pgsize: u64) -> u64 {
        crate::unmap_split(self, iova, size, max_pgsize)
    }

    /// The usual map through [`crate::map`] (a guest page, a ring): `size`
    /// bytes, less than 1 MiB, inside one 1 MiB block of the aperture,
    /// whose 2 KiB slots are all empty. Each chunk [`crate::pgsize`] picks
    /// gets the pieces its `map_pages` call would write (START on its first
    /// piece, LAST on its last, the generic table's CONTIG size of its
    /// page), stored in place after one walk and one check that the slots
    /// are free, so every entry reads as through [`crate::map_split`].
    /// `false`: not that case, nothing mapped (the walk may have linked the
    /// tables above the block, as the general path's own walk does).
    ///
    /// With fault injection armed (`failpoint::nth() != 0`) the general
    /// path runs, so its injection points are passed as before.
    #[inline]
    fn map_in_block(&self, iova: u64, paddr: u64, size: u64, prot: Prot, max_pgsize: u64) -> bool {
        const IO: u64 = MOCK_IO_PAGE_SIZE;
        let bitmap = crate::restrict(self.pgsize_bitmap, max_pgsize);
        let min = bitmap & bitmap.wrapping_neg();
        // `map_split`'s checks: anything it would refuse, it refuses.
        if min == 0 || (iova | paddr | size) & (min - 1) != 0 || size == 0 || size >= MOCK_HUGE_PAGE_SIZE {
            return false;
        }
        if paddr.checked_add(size - 1).is_none() {
            return false;
        }
        // A range that wraps ends in another block than it starts (`size`
        // is below the block size): the block test refuses it.
        let last = iova.wrapping_add(size - 1);
        if (iova ^ last) >= MOCK_HUGE_PAGE_SIZE
            || !self.in_aperture(iova, last)
            || uiommufd_memory::failpoint::nth() != 0
        {
            return false;
        }
        let Ok(slots) = self.pt.leaf_slots(iova, 0, (size / IO) as usize) else { return false };
        if slots.iter().any(|s| s.load(Ordering::Relaxed) != 0) {
            return false;
        }
        if bitmap & (MOCK_HUGE_PAGE_SIZE - 1) == IO {
            // 2 KiB is the only size below 1 MiB (6.12's mock): one
            // `map_pages` call of pieces.
            Self::write_pieces(slots, paddr, prot, 0);
        } else if size & bitmap != 0 && size.is_power_of_two() && (iova | paddr) & (size - 1) == 0 {
            // One page of `size` (a 7.3 page of 4 KiB: two pieces).
            Self::write_pieces(slots, paddr, prot, self.contig_bits(size));
        } else {
            return Self::map_chunks_in_block(self, slots, iova, paddr, prot, bitmap);
        }
        true
    }

    /// The CONTIG bits of 7.3's pages of `pgsize` (below 1 MiB): 2^k
    /// pieces; none on 6.12's.
    #[inline]
    fn contig_bits(&self, pgsize: u64) -> u64 {
        if self.generic {
            u64::from((pgsize / MOCK_IO_PAGE_SIZE).trailing_zeros()) << bits::CONTIG_SHIFT
        } else {
            0
        }
    }

    /// The pieces one `map_pages` call writes into `slots` (empty, all of
    /// the call's): consecutive memory from `paddr`, each with `contig`,
    /// START on the first and LAST on the last.
    #[inline]
    fn write_pieces(slots: &[AtomicU64], paddr: u64, prot: Prot, contig: u64) {
        let leaf = MockFormat::make_leaf(paddr, prot, 0);
        let last = slots.len() - 1;
        for (n, slot) in slots.iter().enumerate() {
            let mut e = (leaf + n as u64 * MOCK_IO_PAGE_SIZE) | contig;
            if n == 0 {
                e |= bits::START;
            }
            if n == last {
                e |= bits::LAST;
            }
            slot.store(e, Ordering::Release);
        }
    }

    /// [`map_in_block`](Self::map_in_block) of a range that
    /// [`crate::pgsize`] splits into several pages: each chunk is one
    /// `map_pages` call's pieces.
    #[cold]
    #[inline(never)]
    fn map_chunks_in_block(&self, slots: &[AtomicU64], iova: u64, paddr: u64, prot: Prot, bitmap: u64) -> bool {
        let size = slots.len() as u64 * MOCK_IO_PAGE_SIZE;
        let mut done = 0u64;
        let mut at = 0usize;
        while done < size {
            // Never `None` after `map_in_block`'s checks (the smallest size
            // fits and divides everything); if it were, undo and let the
            // general path answer.
            let Some((pgsize, count)) = crate::pgsize(bitmap, iova + done, paddr + done, size - done) else {
                for s in &slots[..at] {
                    s.store(0, Ordering::Release);
                }
                return false;
            };
            let bytes = pgsize * count;
            let pieces = (bytes / MOCK_IO_PAGE_SIZE) as usize;
            Self::write_pieces(&slots[at..at + pieces], paddr + done, prot, self.contig_bits(pgsize));
            at += pieces;
            done += bytes;
        }
        true
    }

    /// The usual unmap through [`crate::unmap`]: `size` bytes inside one
    /// 1 MiB block whose first piece is a 2 KiB leaf (so the block is a
    /// table of pieces, and no span or 1 MiB leaf is involved). What
    /// [`crate::unmap_split`] does there, after one walk: 6.12's edge
    /// checks (only 2 KiB pages without huge pages: one `unmap_pages`
    /// call), every slot cleared, every byte counted (holes count as
    /// unmapped). `None`: not that case, nothing done.
    #[inline]
    fn unmap_in_block_range(&self, iova: u64, size: u64, max_pgsize: u64) -> Option<u64> {
        const IO: u64 = MOCK_IO_PAGE_SIZE;
        let bitmap = crate::restrict(self.pgsize_bitmap, max_pgsize);
        let min = bitmap & bitmap.wrapping_neg();
        if min == 0 || (iova | size) & (min - 1) != 0 || size == 0 {
            return None;
        }
        let last = iova.checked_add(size - 1)?;
        if (iova ^ last) >= MOCK_HUGE_PAGE_SIZE {
            return None;
        }
        let slots = self.pt.existing_leaf_slots(iova, 0, (size / IO) as usize)?;
        let first = slots[0].load(Ordering::Acquire);
        if !MockFormat::is_present(first) {
            return None;
        }
        if !self.huge_iova() && !self.generic {
            const EDGE: u64 = bits::START | bits::LAST;
            let tail = slots[slots.len() - 1].load(Ordering::Acquire);
            if first & EDGE == 0 {
                self.warn();
            }
            if MockFormat::is_present(tail) && tail & EDGE == 0 {
                self.warn();
            }
        }
        for s in slots {
            s.store(0, Ordering::Release);
        }
        Some(size)
    }

    /// The contiguous page (start, size) the generic page table's leaf
    /// `entry` at `level` for `iova` belongs to.
    fn contig_page(iova: u64, entry: u64, level: u32) -> (u64, u64) {
        let k = (entry & bits::CONTIG) >> bits::CONTIG_SHIFT;
        let size = if k == 0 { MockPt::level_size(level) } else { MOCK_IO_PAGE_SIZE << k };
        (iova & !(size - 1), size)
    }

    /// Whether the piece holding `iova` carries the kernel's START/LAST bit
    /// (`None`: nothing maps it).
    fn piece_has_edge(&self, iova: u64) -> Option<bool> {
        self.entry_at(iova).map(|e| e.start || e.last)
    }

    /// `mock_domain_read_and_clear_dirty()`.
    ///
    /// Walks `[iova, iova + length)` in pieces (always at least one, as the
    /// kernel's do-while does): an unmapped piece advances 2 KiB; a mapped
    /// 2 KiB piece is reported as `(cur, MOCK_IO_PAGE_SIZE)` if dirty; a
    /// piece of a huge mapping reports `(cur, MOCK_HUGE_PAGE_SIZE)` if any
    /// part of the huge page is dirty and advances a whole huge page from
    /// `cur`. As in the kernel, `cur` rather than the huge page's head is
    /// reported, which only matters when `iova` is not huge-aligned. Dirty
    /// bits are cleared unless `no_clear`.
    ///
    /// `record` is the dirty bitmap: `None` is the kernel's NULL bitmap (the
    /// core clearing stale bits before enabling tracking), which is allowed
    /// while tracking is off; with a bitmap, 6.12's mock wants tracking on
    /// (`EINVAL`), 7.3's (generic_pt's `read_and_clear_dirty`) does not look.
    pub fn read_and_clear_dirty(
        &self,
        iova: u64,
        length: u64,
        no_clear: bool,
        mut record: Option<&mut dyn FnMut(u64, u64)>,
    ) -> Result<(), Errno> {
        if self.generic {
            self.read_and_clear_dirty_contig(iova, length, no_clear, record);
            return Ok(());
        }
        if record.is_some() && !self.dirty_tracking() {
            return Err(Errno::EINVAL);
        }
        let end = iova.saturating_add(length);
        let mut cur = iova;
        loop {
            let step = match self.pt.lookup(cur) {
                // A span is never dirty: its pieces are skipped like empty
                // ones, up to the end of the block.
                Lookup::Leaf { entry, level } if entry & bits::SPAN != 0 => {
                    let block_last = cur | (MockPt::level_size(level) - 1);
                    let pieces = (block_last - cur) / MOCK_IO_PAGE_SIZE + 1;
                    pieces * MOCK_IO_PAGE_SIZE
                }
                Lookup::Leaf { entry, level } => {
                    let size = MockPt::level_size(level);
                    let mut dirty = entry & bits::DIRTY != 0;
                    if dirty && !no_clear {
                        dirty =
                            self.pt.clear_leaf_bits(cur, bits::DIRTY).is_some_and(|(old, _)| old & bits::DIRTY != 0);
                    }
                    if dirty {
                        if let Some(record) = record.as_mut() {
                            record(cur, size);
                        }
                    }
                    size
                }
                // The kernel steps over empty space 2 KiB at a time; jump to
                // where those steps would leave the empty block.
                Lookup::Hole { level } => {
                    let block_last = cur | (MockPt::level_size(level) - 1);
                    let pieces = (block_last - cur) / MOCK_IO_PAGE_SIZE + 1;
                    pieces * MOCK_IO_PAGE_SIZE
                }
                // Nothing is mapped beyond the table's reach.
                Lookup::OutOfRange => break,
            };
            match cur.checked_add(step) {
                Some(next) if next < end => cur = next,
                _ => break,
            }
        }
        Ok(())
    }

    /// The generic page table's `read_and_clear_dirty`: a contiguous page
    /// is dirty when any of its entries is, is reported whole (within the
    /// range asked for) and cleaned whole.
    fn read_and_clear_dirty_contig(
        &self,
        iova: u64,
        length: u64,
        no_clear: bool,
        mut record: Option<&mut dyn FnMut(u64, u64)>,
    ) {
        let Some(last) = length.checked_sub(1).and_then(|l| iova.checked_add(l)) else { return };
        let mut cur = iova;
        loop {
            let next = match self.pt.lookup(cur) {
                // A span's pieces are never dirty (marking splits it).
                Lookup::Leaf { entry, level } if entry & bits::SPAN != 0 => {
                    (cur | (MockPt::level_size(level) - 1)).checked_add(1)
                }
                Lookup::Leaf { entry, level } => {
                    let (start, size) = Self::contig_page(cur, entry, level);
                    let unit = MockPt::level_size(level);
                    let entries = (start..start + size).step_by(unit as usize);
                    let dirty = entries
                        .clone()
                        .any(|e| matches!(self.pt.lookup(e), Lookup::Leaf { entry, .. } if entry & bits::DIRTY != 0));
                    if dirty {
                        if !no_clear {
                            for e in entries {
                                self.pt.clear_leaf_bits(e, bits::DIRTY);
                            }
                        }
                        if let Some(record) = record.as_mut() {
                            let from = start.max(iova);
                            let to = (start + size - 1).min(last);
                            record(from, to - from + 1);
                        }
                    }
                    (start + size - 1).checked_add(1)
                }
                Lookup::Hole { level } => (cur | (MockPt::level_size(level) - 1)).checked_add(1),
                Lookup::OutOfRange => None,
            };
            match next {
                Some(n) if n <= last => cur = n,
                _ => break,
            }
        }
    }

    /// One bit of `IOMMU_TEST_OP_DIRTY`: mark the entry at `iova` dirty;
    /// returns whether the op counts the bit in `out_nr_dirty`. 6.12's
    /// xarray mock counts the entries it found; 7.3's generic page table
    /// counts every bit (`set_dirty` of an unmapped IOVA does nothing).
    pub fn test_dirty(&self, iova: u64) -> bool {
        let mapped = self.mark_dirty(iova);
        mapped || self.generic
    }

    fn in_aperture(&self, iova: u64, last: u64) -> bool {
        iova >= self.aperture.start && last <= self.aperture.last
    }
}

impl Domain for MockDomain {
    fn leaves(&self, iova: u64, len: u64, f: &mut dyn FnMut(crate::Leaf)) -> bool {
        self.pt.leaves(iova, len, f);
        true
    }

    fn dirty_ops(&self) -> Option<&dyn DirtyOps> {
        self.has_dirty_ops().then_some(self as &dyn DirtyOps)
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.pgsize_bitmap
    }

    fn aperture(&self) -> Aperture {
        self.aperture
    }

    fn map_range(&self, iova: u64, paddr: u64, size: u64, prot: Prot, max_pgsize: u64) -> Result<(), Errno> {
        if self.map_in_block(iova, paddr, size, prot, max_pgsize) {
            return Ok(());
        }
        self.map_split(iova, paddr, size, prot, max_pgsize)
    }

    fn unmap_range(&self, iova: u64, size: u64, max_pgsize: u64) -> u64 {
        match self.unmap_in_block_range(iova, size, max_pgsize) {
            Some(n) => n,
            None => self.unmap_split(iova, size, max_pgsize),
        }
    }

    /// `mock_domain_map_pages()`. Differences from the kernel, which trusts
    /// the core: a size not in the bitmap, a misaligned address or a range
    /// outside the aperture is `EINVAL`, and mapping over an existing entry
    /// is `EEXIST` (the kernel overwrites it with a `WARN_ON`; both count as
    /// warnings here).
    fn map_pages(&self, iova: u64, paddr: u64, pgsize: u64, pgcount: u64, prot: Prot) -> Result<(), (Errno, u64)> {
        // The kernel mock's own injection point (xarray stores cannot be
        // failed reliably there).
        if uiommufd_memory::failpoint::should_fail() {
            return Err((Errno::ENOENT, 0));
        }
        if (iova | pgsize) & (MOCK_IO_PAGE_SIZE - 1) != 0 {
            self.warn();
            return Err((Errno::EINVAL, 0));
        }
        if !pgsize.is_power_of_two() || pgsize & self.pgsize_bitmap == 0 {
            return Err((Errno::EINVAL, 0));
        }
        if pgcount == 0 {
            return Ok(());
        }
        let last = pgsize.checked_mul(pgcount).and_then(|total| iova.checked_add(total - 1));
        if !last.is_some_and(|last| self.in_aperture(iova, last)) {
            return Err((Errno::EINVAL, 0));
        }
        let result = if self.generic {
            // Each page of `pgsize` is 2^k entries of the level below it.
            let k = (pgsize / MOCK_IO_PAGE_SIZE).trailing_zeros() as u64;
            let contig = k << bits::CONTIG_SHIFT;
            if pgsize < MOCK_HUGE_PAGE_SIZE {
                self.map_pieces(iova, paddr, pgcount * (pgsize / MOCK_IO_PAGE_SIZE), prot, contig)
            } else {
                let n = pgcount * (pgsize / MOCK_HUGE_PAGE_SIZE);
                let contig = if pgsize == MOCK_HUGE_PAGE_SIZE { 0 } else { contig };
                self.map_run(iova, paddr, 1, n, prot, contig | bits::START, contig | bits::LAST, contig)
            }
        } else if pgsize == MOCK_IO_PAGE_SIZE {
            self.map_pieces(iova, paddr, pgcount, prot, 0)
        } else {
            self.pt.map_marked(iova, paddr, pgsize, pgcount, prot, bits::START, bits::LAST)
        };
        if let Err((errno, mapped)) = result {
            if errno == Errno::EEXIST {
                self.warn();
            }
            // Close what was mapped so the caller's unwinding unmap sees a
            // well-formed range.
            if mapped != 0 {
                self.pt.set_leaf_bits(iova + mapped - 1, bits::LAST);
            }
        }
        result
    }

    /// `mock_domain_unmap_pages()`. Unless huge pages are enabled, the first
    /// and last pieces unmapped must be the first and last pieces of some
    /// map call (iommufd only unmaps supersets of what it mapped); a present
    /// piece that is not counts a warning. Unmapped pieces count as unmapped,
    /// as in the kernel; a huge page only partly in the range stops the
    /// unmap there (the kernel never sees that: iommufd refuses to split
    /// areas of domains that may use huge pages).
    fn unmap_pages(&self, iova: u64, pgsize: u64, pgcount: u64) -> u64 {
        if (iova | pgsize) & (MOCK_IO_PAGE_SIZE - 1) != 0 {
            self.warn();
            return 0;
        }
        let Some(total) = pgsize.checked_mul(pgcount).filter(|&t| t != 0) else { return 0 };
        let last_piece = iova.checked_add(total - MOCK_IO_PAGE_SIZE);
        // The edge bits are the 6.12 xarray mock's sanity check.
        if !self.huge_iova() && !self.generic {
            if let Some(last_piece) = last_piece {
                if self.piece_has_edge(iova) == Some(false) {
                    self.warn();
                }
                if self.piece_has_edge(last_piece) == Some(false) {
                    self.warn();
                }
            }
        }
        if let Some(n) = self.unmap_in_block(iova, total) {
            return n;
        }
        // Spans the range only partly covers go back to pieces first.
        if iova & (MOCK_HUGE_PAGE_SIZE - 1) != 0 {
            self.split_span(iova);
        }
        if let Some(last_piece) = last_piece {
            if (last_piece + MOCK_IO_PAGE_SIZE) & (MOCK_HUGE_PAGE_SIZE - 1) != 0 {
                self.split_span(last_piece);
            }
        }
        self.pt.unmap(iova, pgsize, pgcount)
    }

    /// `mock_domain_iova_to_phys()`: no permission check.
    fn iova_to_phys(&self, iova: u64) -> Option<u64> {
        self.entry_at(iova).map(|e| e.paddr + (iova & (MOCK_IO_PAGE_SIZE - 1)))
    }

    fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        if !self.in_aperture(iova, iova) {
            return Err(Fault::OutOfRange);
        }
        let (mut t, entry) = self.pt.translate_entry(iova, access)?;
        if entry & bits::SPAN != 0 {
            // The leaf is the 2 KiB piece.
            t.len = MOCK_IO_PAGE_SIZE - (iova & (MOCK_IO_PAGE_SIZE - 1));
        }
        if access == Access::Write && self.dirty_tracking() && entry & bits::DIRTY == 0 {
            // A device write while tracking: the entry becomes dirty, as
            // IOMMU_TEST_OP_DIRTY would make it (hardware sets D on write).
            self.mark_dirty(iova);
            t.len = t.len.min(MOCK_IO_PAGE_SIZE - (iova & (MOCK_IO_PAGE_SIZE - 1)));
        }
        Ok(t)
    }
}

impl DirtyOps for MockDomain {
    fn set_dirty_tracking(&self, enable: bool) -> Result<(), Errno> {
        MockDomain::set_dirty_tracking(self, enable)
    }

    fn read_and_clear_dirty(
        &self,
        iova: u64,
        length: u64,
        no_clear: bool,
        record: Option<&mut dyn FnMut(u64, u64)>,
    ) -> Result<(), Errno> {
        MockDomain::read_and_clear_dirty(self, iova, length, no_clear, record)
    }
}

/// The mock's nested domain (`struct mock_iommu_domain_nested`): a
/// stage-1 table of the guest's, which the mock does not walk (it translates
/// through its parent), plus four mock IOTLB entries that
/// `IOMMU_HWPT_INVALIDATE` clears and `IOMMU_TEST_OP_MD_CHECK_IOTLB` reads.
pub struct MockNested {
    parent: Arc<dyn Domain>,
    iotlb: [AtomicU32; test_cmd::MOCK_NESTED_DOMAIN_IOTLB_NUM as usize],
    /// The vIOMMU that allocated it (`mock_nested->mock_viommu`), if any.
    viommu: Option<Weak<MockViommu>>,
}

impl MockNested {
    /// `mock_domain_alloc_nested`: `parent` must be a mock paging domain
    /// (`EINVAL`), `flags` may only hold `IOMMU_HWPT_ALLOC_PASID`
    /// (`EOPNOTSUPP`), the data must be `IOMMU_HWPT_DATA_SELFTEST` with at
    /// least `iotlb` (`EINVAL`).
    pub fn new(
        parent: &Arc<dyn Domain>,
        flags: u32,
        data: &mut UserData<'_>,
        profile: &MockProfile,
    ) -> Result<MockNested, Errno> {
        if flags & !uiommufd_abi::IOMMU_HWPT_ALLOC_PASID != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if data.data_type != test_cmd::IOMMU_HWPT_DATA_SELFTEST {
            return Err(Errno::EOPNOTSUPP);
        }
        if parent.as_any().downcast_ref::<MockDomain>().is_none() {
            return Err(Errno::EINVAL);
        }
        let cfg: test_cmd::IommuHwptSelftest =
            data.read_sized(test_cmd::IOMMU_HWPT_DATA_SELFTEST, 4, profile.hwpt_selftest_size)?;
        Ok(MockNested {
            parent: Arc::clone(parent),
            iotlb: std::array::from_fn(|_| AtomicU32::new(cfg.iotlb)),
            viommu: None,
        })
    }

    /// The vIOMMU this domain belongs to, if it was allocated through one.
    pub fn viommu(&self) -> Option<Arc<MockViommu>> {
        self.viommu.as_ref().and_then(Weak::upgrade)
    }

    /// Mock IOTLB entry `id` (`None` past `MOCK_NESTED_DOMAIN_IOTLB_ID_MAX`).
    pub fn iotlb(&self, id: u32) -> Option<u32> {
        self.iotlb.get(id as usize).map(|v| v.load(Ordering::Relaxed))
    }

    pub fn parent(&self) -> &Arc<dyn Domain> {
        &self.parent
    }
}

impl Domain for MockNested {
    fn is_nested(&self) -> bool {
        true
    }

    fn pgsize_bitmap(&self) -> u64 {
        self.parent.pgsize_bitmap()
    }

    fn aperture(&self) -> Aperture {
        self.parent.aperture()
    }

    /// A nested domain's stage-1 belongs to the guest: nothing maps it here.
    fn map_pages(&self, _iova: u64, _paddr: u64, _pgsize: u64, _pgcount: u64, _prot: Prot) -> Result<(), (Errno, u64)> {
        Err((Errno::EOPNOTSUPP, 0))
    }

    fn unmap_pages(&self, _iova: u64, _pgsize: u64, _pgcount: u64) -> u64 {
        0
    }

    /// The mock's stage 1 is the identity: DMA translates through the parent.
    fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        self.parent.translate(iova, access)
    }

    /// `mock_domain_cache_invalidate_user`.
    fn cache_invalidate_user(&self, array: &mut UserDataArray<'_>) -> Result<(), Errno> {
        let num = array.entry_num;
        array.entry_num = 0;
        if array.data_type != test_cmd::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST {
            return Err(Errno::EINVAL);
        }
        for i in 0..num {
            // Up to and including `iotlb_id`.
            let inv: test_cmd::IommuHwptInvalidateSelftest =
                array.read(test_cmd::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST, i, 8)?;
            if inv.flags & !test_cmd::IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            if inv.iotlb_id > test_cmd::MOCK_NESTED_DOMAIN_IOTLB_ID_MAX {
                return Err(Errno::EINVAL);
            }
            if inv.flags & test_cmd::IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                for e in &self.iotlb {
                    e.store(0, Ordering::Relaxed);
                }
            } else {
                self.iotlb[inv.iotlb_id as usize].store(0, Ordering::Relaxed);
            }
            array.entry_num += 1;
        }
        Ok(())
    }
}

/// What sets one kernel release's selftest mock driver apart from
/// another's. The values per release live in `uiommufd_core::release`;
/// [`MockProfile::MAINLINE`] is Linux 7.3's.
#[derive(Debug, PartialEq, Eq)]
pub struct MockProfile {
    /// Bytes of `struct iommu_hwpt_selftest` the driver knows: longer data
    /// is `EINVAL` (`iommu_copy_struct_from_user`). 6.12 has `iotlb` only
    /// (4); 7.3 adds `pagetable_type` (8).
    pub hwpt_selftest_size: usize,
    /// The paging domains' page table.
    pub page_table: MockPageTable,
}

impl MockProfile {
    /// Linux 7.3's mock.
    pub const MAINLINE: MockProfile = MockProfile { hwpt_selftest_size: 8, page_table: MockPageTable::GenericPt };
}

/// A device of the selftest's mock IOMMU (`struct mock_dev`), with the mock
/// driver's per-device operations (`mock_ops`).
///
/// Besides what the paging tests need, it carries the state the vIOMMU
/// tests look at:
/// - four cache words (`mdev->cache`) that vIOMMU invalidations clear and
///   `IOMMU_TEST_OP_DEV_CHECK_CACHE` reads;
/// - the vIOMMU and virtual ID of the nested domain its requester ID is
///   attached to (`mdev->viommu`, `mdev->vdev_id`), which is where
///   `IOMMU_TEST_OP_TRIGGER_VEVENT` reports;
/// - the one-shot failure armed by attaching `IOMMU_TEST_PASID_RESERVED`
///   (`pasid_1024_fake_error`), which lets the tests watch a failed PASID
///   replace keep the old domain.
///
/// Every mock device sits behind the one mock IOMMU instance.
#[derive(Debug)]
pub struct MockDevice {
    id: u32,
    flags: u32,
    profile: &'static MockProfile,
    cache: [AtomicU32; test_cmd::MOCK_DEV_CACHE_NUM as usize],
    viommu: Mutex<Option<(Weak<MockViommu>, u64)>>,
    pasid_fake_error: AtomicBool,
}

static NEXT_MOCK_DEV: AtomicU32 = AtomicU32::new(0);

impl MockDevice {
    /// `mock_dev_create` of the mainline mock: unknown flags are `EINVAL`.
    pub fn new(flags: u32) -> Result<MockDevice, Errno> {
        Self::with_profile(flags, &MockProfile::MAINLINE)
    }

    /// `mock_dev_create` of the mock `profile` describes.
    pub fn with_profile(flags: u32, profile: &'static MockProfile) -> Result<MockDevice, Errno> {
        let known = test_cmd::MOCK_FLAGS_DEVICE_NO_DIRTY
            | test_cmd::MOCK_FLAGS_DEVICE_HUGE_IOVA
            | test_cmd::MOCK_FLAGS_DEVICE_PASID;
        if flags & !known != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(MockDevice {
            id: NEXT_MOCK_DEV.fetch_add(1, Ordering::Relaxed),
            flags,
            profile,
            cache: std::array::from_fn(|_| AtomicU32::new(test_cmd::IOMMU_TEST_DEV_CACHE_DEFAULT)),
            viommu: Mutex::new(None),
            pasid_fake_error: AtomicBool::new(false),
        })
    }

    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// The mock device behind a device handle, if it is one.
    pub fn of(dev: &Arc<dyn IommuDevice>) -> Option<&MockDevice> {
        let dev: &dyn IommuDevice = dev.as_ref();
        dev.any_domain().downcast_ref::<MockDevice>()
    }

    /// Cache word `id` (`None` past `MOCK_DEV_CACHE_ID_MAX`).
    pub fn cache(&self, id: u32) -> Option<u32> {
        self.cache.get(id as usize).map(|c| c.load(Ordering::Relaxed))
    }

    fn binding(&self) -> MutexGuard<'_, Option<(Weak<MockViommu>, u64)>> {
        self.viommu.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `IOMMU_TEST_OP_TRIGGER_VEVENT`: report one selftest event carrying
    /// this device's virtual ID to the vIOMMU its requester ID is attached
    /// through. `ENOENT` without such an attachment (or with virtual ID 0),
    /// `EOPNOTSUPP` when the vIOMMU has no selftest event queue.
    pub fn trigger_vevent(&self) -> Result<(), Errno> {
        let (viommu, virt_id) = self.binding().clone().ok_or(Errno::ENOENT)?;
        if virt_id == 0 {
            return Err(Errno::ENOENT);
        }
        let core = viommu.upgrade().and_then(|v| v.core.upgrade()).ok_or(Errno::ENOENT)?;
        // The record holds the low 32 bits of the virtual ID, as the C
        // struct's `__u32 virt_id` does.
        let event = test_cmd::IommuViommuEventSelftest { virt_id: virt_id as u32 };
        core.report_event(test_cmd::IOMMU_VEVENTQ_TYPE_SELFTEST, event.as_bytes())
    }
}

impl IommuDevice for MockDevice {
    fn name(&self) -> String {
        format!("mock{}", self.id)
    }

    /// The selftest mock keeps nested PASID tables in user space (its
    /// IOPF and PASID tests rely on it).
    fn user_pasid_table(&self) -> bool {
        true
    }

    fn capable(&self, cap: Cap) -> bool {
        match cap {
            Cap::CacheCoherency => true,
            Cap::DirtyTracking => self.flags & test_cmd::MOCK_FLAGS_DEVICE_NO_DIRTY == 0,
            Cap::EnforceCacheCoherency => false,
        }
    }

    fn alloc_paging(&self, req: &PagingRequest) -> Result<Arc<dyn Domain>, Errno> {
        if req.dirty_tracking && !self.capable(Cap::DirtyTracking) {
            return Err(Errno::EOPNOTSUPP);
        }
        if self.profile.page_table == MockPageTable::GenericPt {
            return Ok(Arc::new(MockDomain::generic(MockIommuPt::Default, req.dirty_tracking)?));
        }
        let d = MockDomain::new(self.flags & test_cmd::MOCK_FLAGS_DEVICE_HUGE_IOVA != 0)?;
        if req.dirty_tracking {
            d.enable_dirty_ops();
        }
        Ok(Arc::new(d))
    }

    /// 7.3's `mock_domain_alloc_paging_flags` with user data: only
    /// `IOMMU_HWPT_DATA_SELFTEST` (`EOPNOTSUPP`), at least up to `iotlb`
    /// (`EINVAL`), naming a `MOCK_IOMMUPT_*` shape (`EOPNOTSUPP`). 6.12's
    /// `mock_domain_alloc_user` takes no data for a paging domain.
    fn alloc_paging_data(&self, req: &PagingRequest, data: &mut UserData<'_>) -> Result<Arc<dyn Domain>, Errno> {
        if req.dirty_tracking && !self.capable(Cap::DirtyTracking) {
            return Err(Errno::EOPNOTSUPP);
        }
        if self.profile.page_table != MockPageTable::GenericPt || data.data_type != test_cmd::IOMMU_HWPT_DATA_SELFTEST {
            return Err(Errno::EOPNOTSUPP);
        }
        let cfg: test_cmd::IommuHwptSelftest =
            data.read_sized(test_cmd::IOMMU_HWPT_DATA_SELFTEST, 4, self.profile.hwpt_selftest_size)?;
        let shape = match cfg.pagetable_type {
            test_cmd::MOCK_IOMMUPT_DEFAULT => MockIommuPt::Default,
            test_cmd::MOCK_IOMMUPT_HUGE => MockIommuPt::Huge,
            _ => return Err(Errno::EOPNOTSUPP),
        };
        Ok(Arc::new(MockDomain::generic(shape, req.dirty_tracking)?))
    }

    /// `mock_domain_nop_attach`: a domain with dirty tracking needs a device
    /// that can track; domains of other drivers never attach; a nested
    /// domain of a vIOMMU needs a vDEVICE of this device on that vIOMMU
    /// (`ENOENT`), and the attachment records which vIOMMU and virtual ID
    /// the device now reports events through.
    fn check_attach(&self, domain: &dyn Domain) -> Result<(), Errno> {
        let mut binding = None;
        if let Some(nested) = domain.as_any().downcast_ref::<MockNested>() {
            if let Some(viommu) = nested.viommu() {
                let core = viommu.core.upgrade().ok_or(Errno::ENOENT)?;
                let virt_id = core.vdev_id(self).ok_or(Errno::ENOENT)?;
                binding = Some((Arc::downgrade(&viommu), virt_id));
            }
        } else {
            let mock = domain.as_any().downcast_ref::<MockDomain>().ok_or(Errno::EINVAL)?;
            if mock.has_dirty_ops() && self.flags & test_cmd::MOCK_FLAGS_DEVICE_NO_DIRTY != 0 {
                return Err(Errno::EINVAL);
            }
        }
        *self.binding() = binding;
        Ok(())
    }

    /// `mock_domain_set_dev_pasid_nop`: the first attach of
    /// `IOMMU_TEST_PASID_RESERVED` arms a failure that the next one (a
    /// replace) reports as `ENOMEM`; detaching disarms it.
    fn check_attach_pasid(&self, pasid: u32, domain: &dyn Domain) -> Result<(), Errno> {
        if !self.owns_domain(domain) {
            return Err(Errno::EINVAL);
        }
        if pasid == test_cmd::IOMMU_TEST_PASID_RESERVED {
            if self.pasid_fake_error.swap(false, Ordering::AcqRel) {
                return Err(Errno::ENOMEM);
            }
            self.pasid_fake_error.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Attaching the blocking domain: the requester ID leaves its vIOMMU;
    /// the reserved PASID disarms its failure.
    fn detached(&self, pasid: u32) {
        if pasid == 0 {
            *self.binding() = None;
        } else if pasid == test_cmd::IOMMU_TEST_PASID_RESERVED {
            self.pasid_fake_error.store(false, Ordering::Release);
        }
    }

    fn max_pasid_log2(&self) -> u32 {
        if self.flags & test_cmd::MOCK_FLAGS_DEVICE_PASID != 0 {
            test_cmd::MOCK_PASID_WIDTH
        } else {
            0
        }
    }

    fn alloc_nested(
        &self,
        parent: &Arc<dyn Domain>,
        flags: u32,
        data: &mut UserData<'_>,
    ) -> Result<Arc<dyn Domain>, Errno> {
        Ok(Arc::new(MockNested::new(parent, flags, data, self.profile)?))
    }

    /// `mock_domain_hw_info`: the selftest type, asked for by default or by
    /// name.
    fn hw_info(&self, in_type: u32) -> Result<(u32, Vec<u8>), Errno> {
        if in_type != uiommufd_abi::IOMMU_HW_INFO_TYPE_DEFAULT && in_type != test_cmd::IOMMU_HW_INFO_TYPE_SELFTEST {
            return Err(Errno::EOPNOTSUPP);
        }
        let info = test_cmd::IommuTestHwInfo { flags: 0, test_reg: test_cmd::IOMMU_HW_INFO_SELFTEST_REGVAL };
        Ok((test_cmd::IOMMU_HW_INFO_TYPE_SELFTEST, info.as_bytes().to_vec()))
    }

    fn owns_domain(&self, domain: &dyn Domain) -> bool {
        domain.as_any().is::<MockDomain>() || domain.as_any().is::<MockNested>()
    }

    /// `mock_get_viommu_size`.
    fn viommu_supported(&self, viommu_type: u32) -> bool {
        viommu_type == test_cmd::IOMMU_VIOMMU_TYPE_SELFTEST
    }

    /// `mock_viommu_init`.
    fn viommu_init(
        &self,
        viommu_type: u32,
        parent: &Arc<dyn Domain>,
        data: Option<&mut UserData<'_>>,
        core: Weak<dyn ViommuCore>,
    ) -> Result<ViommuInit, Errno> {
        if !self.viommu_supported(viommu_type) {
            return Err(Errno::EOPNOTSUPP);
        }
        MockViommu::init(parent, data, core)
    }
}

/// The mock vIOMMU (`struct mock_viommu`): nested domains that remember it,
/// invalidation of the per-device caches of its vDEVICEs, and up to
/// `IOMMU_TEST_HW_QUEUE_MAX` HW queues that must be created in index order
/// (each one depends on the one before it).
///
/// With driver data it also allocates two pages, puts `in_data` in the
/// first word and lets user space `mmap` them through the iommufd file at
/// `out_mmap_offset` (a memfd registered with the engine).
pub struct MockViommu {
    me: Weak<MockViommu>,
    core: Weak<dyn ViommuCore>,
    s2_parent: Arc<dyn Domain>,
    hw_queues: Arc<Mutex<[bool; test_cmd::IOMMU_TEST_HW_QUEUE_MAX as usize]>>,
    page_word: u32,
    mmap: Option<(u64, u64)>,
}

impl std::fmt::Debug for MockViommu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockViommu").field("page_word", &self.page_word).field("mmap", &self.mmap).finish()
    }
}

impl MockViommu {
    /// `mock_viommu_init`: with driver data (`struct iommu_viommu_selftest`,
    /// at least up to `out_data`, else `EINVAL`), loop `in_data` back in
    /// `out_data` and in the first word of the driver page, and report
    /// where that page would be mapped.
    fn init(
        parent: &Arc<dyn Domain>,
        data: Option<&mut UserData<'_>>,
        core: Weak<dyn ViommuCore>,
    ) -> Result<ViommuInit, Errno> {
        if !parent.as_any().is::<MockDomain>() {
            return Err(Errno::EINVAL);
        }
        let mut user_out = None;
        let mut page_word = 0;
        let mut mmap = None;
        if let Some(data) = data {
            let min_len = core::mem::offset_of!(test_cmd::IommuViommuSelftest, out_data) + 4;
            if data.data_type != test_cmd::IOMMU_VIOMMU_TYPE_SELFTEST || (data.len as usize) < min_len {
                return Err(Errno::EINVAL);
            }
            let mut cfg = test_cmd::IommuViommuSelftest::new_zeroed();
            (data.reader)(cfg.as_mut_bytes())?;
            // Two zeroed pages, the first word `in_data` (the loopback user
            // space reads through its mapping).
            let length = 2 * HOST_PAGE_SIZE;
            let page = uiommufd_memory::sys::memfd(c"uiommufd-mock-viommu", length)?;
            uiommufd_memory::sys::pwrite_all(std::os::fd::AsRawFd::as_raw_fd(&page), &cfg.in_data.to_ne_bytes(), 0)?;
            let offset = core.upgrade().ok_or(Errno::ENOMEM)?.alloc_mmap_backed(length, page, None)?;
            page_word = cfg.in_data;
            cfg.out_data = cfg.in_data;
            cfg.out_mmap_offset = offset;
            cfg.out_mmap_length = length;
            mmap = Some((offset, length));
            user_out = Some(cfg.as_bytes().to_vec());
        }
        let driver = Arc::new_cyclic(|me| MockViommu {
            me: me.clone(),
            core,
            s2_parent: Arc::clone(parent),
            hw_queues: Arc::new(Mutex::new([false; test_cmd::IOMMU_TEST_HW_QUEUE_MAX as usize])),
            page_word,
            mmap,
        });
        Ok(ViommuInit { driver, user_out })
    }

    /// The first word of the driver page (the `in_data` loopback).
    pub fn page_word(&self) -> u32 {
        self.page_word
    }

    /// `(offset, length)` of the driver page in the file's mmap space.
    pub fn mmap_region(&self) -> Option<(u64, u64)> {
        self.mmap
    }

    fn slots(&self) -> MutexGuard<'_, [bool; test_cmd::IOMMU_TEST_HW_QUEUE_MAX as usize]> {
        self.hw_queues.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ViommuDriver for MockViommu {
    /// `mock_viommu_alloc_domain_nested`.
    fn alloc_domain_nested(&self, flags: u32, data: &mut UserData<'_>) -> Result<Arc<dyn Domain>, Errno> {
        if flags & !uiommufd_abi::IOMMU_HWPT_ALLOC_PASID != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let mut nested = MockNested::new(&self.s2_parent, 0, data, &MockProfile::MAINLINE)?;
        nested.viommu = Some(self.me.clone());
        Ok(Arc::new(nested))
    }

    fn can_invalidate(&self) -> bool {
        true
    }

    /// `mock_viommu_cache_invalidate`: an empty array of the right type only
    /// validates the type; otherwise the whole array is read first (a bad
    /// type or entry is `EINVAL`/`EFAULT` with nothing done), then the
    /// requests run in order and the first bad one stops the batch.
    fn cache_invalidate(&self, array: &mut UserDataArray<'_>) -> Result<(), Errno> {
        let num = array.entry_num;
        array.entry_num = 0;
        let ty = test_cmd::IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST;
        if num == 0 && array.data_type == ty {
            return Ok(());
        }
        // `iommu_copy_struct_from_full_user_array`.
        if array.data_type != ty || num == 0 {
            return Err(Errno::EINVAL);
        }
        let mut cmds = Vec::with_capacity(num.min(1 << 16) as usize);
        for i in 0..num {
            let mut c = test_cmd::IommuViommuInvalidateSelftest::new_zeroed();
            (array.reader)(i, c.as_mut_bytes())?;
            cmds.push(c);
        }
        let core = self.core.upgrade();
        for c in cmds {
            if c.flags & !test_cmd::IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                return Err(Errno::EOPNOTSUPP);
            }
            if c.cache_id > test_cmd::MOCK_DEV_CACHE_ID_MAX {
                return Err(Errno::EINVAL);
            }
            let dev = core.as_ref().and_then(|core| core.find_dev(c.vdev_id as u64)).ok_or(Errno::EINVAL)?;
            let mdev = MockDevice::of(&dev).ok_or(Errno::EINVAL)?;
            if c.flags & test_cmd::IOMMU_TEST_INVALIDATE_FLAG_ALL != 0 {
                for w in &mdev.cache {
                    w.store(0, Ordering::Relaxed);
                }
            } else {
                mdev.cache[c.cache_id as usize].store(0, Ordering::Relaxed);
            }
            array.entry_num += 1;
        }
        Ok(())
    }

    /// `mock_viommu_get_hw_queue_size`.
    fn hw_queue_supported(&self, queue_type: u32) -> bool {
        queue_type == test_cmd::IOMMU_HW_QUEUE_TYPE_SELFTEST
    }

    /// `mock_hw_queue_init_phys`: indices below `IOMMU_TEST_HW_QUEUE_MAX`
    /// (`EINVAL`), each once (`EEXIST`), in order (`EIO` while the previous
    /// index is free); the physical address the core resolved must be what
    /// the nesting parent maps the queue's IOVA to (`EFAULT`).
    fn hw_queue_init(
        &self,
        queue_type: u32,
        index: u32,
        base_iova: u64,
        base_pa: u64,
        _length: u64,
    ) -> Result<HwQueueInit, Errno> {
        if !self.hw_queue_supported(queue_type) {
            return Err(Errno::EOPNOTSUPP);
        }
        if index >= test_cmd::IOMMU_TEST_HW_QUEUE_MAX {
            return Err(Errno::EINVAL);
        }
        let mut slots = self.slots();
        if slots[index as usize] {
            return Err(Errno::EEXIST);
        }
        if index > 0 && !slots[index as usize - 1] {
            return Err(Errno::EIO);
        }
        if self.s2_parent.iova_to_phys(base_iova) != Some(base_pa) {
            return Err(Errno::EFAULT);
        }
        slots[index as usize] = true;
        let handle = MockHwQueue { slots: Arc::clone(&self.hw_queues), index: index as usize };
        Ok(HwQueueInit { handle: Box::new(handle), depends_on: index.checked_sub(1) })
    }
}

/// A mock HW queue (`struct mock_hw_queue`): frees its index when dropped.
struct MockHwQueue {
    slots: Arc<Mutex<[bool; test_cmd::IOMMU_TEST_HW_QUEUE_MAX as usize]>>,
    index: usize,
}

impl Drop for MockHwQueue {
    fn drop(&mut self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())[self.index] = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IO: u64 = MOCK_IO_PAGE_SIZE;
    const HUGE: u64 = MOCK_HUGE_PAGE_SIZE;
    const BASE: u64 = MOCK_APERTURE_START;
    const RW: Prot = Prot(Prot::READ.0 | Prot::WRITE.0);

    #[test]
    fn geometry() {
        let d = MockDomain::new(false).unwrap();
        assert_eq!(d.pgsize_bitmap(), 2048);
        assert_eq!(d.aperture(), Aperture { start: 1 << 24, last: (1 << 31) - 1 });
        let h = MockDomain::new(true).unwrap();
        assert_eq!(h.pgsize_bitmap(), 2048 | (1 << 20));
        assert!(h.huge_iova() && !d.huge_iova());
    }

    /// 7.3's generic page table: every power of two from 2 KiB (the
    /// default shape, mock aperture) or 4 KiB and 1 MiB (the huge shape,
    /// the whole 2^38-byte table).
    #[test]
    fn generic_geometry() {
        let d = MockDomain::generic(MockIommuPt::Default, false).unwrap();
        assert_eq!(d.pgsize_bitmap(), (1u64 << 38) - 2048, "2 KiB .. 2^37");
        assert_eq!(d.aperture(), Aperture { start: 1 << 24, last: (1 << 31) - 1 });
        let h = MockDomain::generic(MockIommuPt::Huge, false).unwrap();
        assert_eq!(h.pgsize_bitmap(), 4096 | (1 << 20));
        assert_eq!(h.aperture(), Aperture { start: 0, last: (1 << 38) - 1 });
        assert!(d.is_generic() && !MockDomain::new(false).unwrap().is_generic());
    }

    /// Harvesting while tracking is off: 6.12's mock refuses (`EINVAL`),
    /// 7.3's generic page table harvests what is marked (Linux 7.3.4 answers
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP` with tracking off with 0 and the bits
    /// marked while it was on; crates/api's selftest_flows transcript).
    #[test]
    fn harvest_with_tracking_off() {
        let old = MockDomain::with_dirty_ops(false).unwrap();
        old.map_pages(BASE, 0x10_0000, IO, 2, RW).unwrap();
        let r = old.read_and_clear_dirty(BASE, 2 * IO, false, Some(&mut |_, _| {}));
        assert_eq!(r, Err(Errno::EINVAL));
        let new = MockDomain::generic(MockIommuPt::Default, true).unwrap();
        new.map_pages(BASE, 0x10_0000, 4096, 2, RW).unwrap();
        new.set_dirty_tracking(true).unwrap();
        assert!(new.test_dirty(BASE));
        new.set_dirty_tracking(false).unwrap();
        let mut seen = Vec::new();
        new.read_and_clear_dirty(BASE, 2 * 4096, false, Some(&mut |i, l| seen.push((i, l)))).unwrap();
        assert_eq!(seen, vec![(BASE, 4096)]);
    }

    /// A page of the generic page table is dirty as a whole, however few of
    /// its 2 KiB entries were written (what 7.3's dirty-tracking selftests
    /// expect: "the entire mapping reported dirty"), while 6.12's xarray
    /// reports each 2 KiB piece on its own.
    #[test]
    fn generic_pages_are_dirty_as_a_whole() {
        let read = |d: &MockDomain, iova, len| {
            let mut out = Vec::new();
            d.read_and_clear_dirty(iova, len, false, Some(&mut |i, l| out.push((i, l)))).unwrap();
            out
        };
        let d = MockDomain::generic(MockIommuPt::Default, true).unwrap();
        d.set_dirty_tracking(true).unwrap();
        // Two 4 KiB pages, then a 2 MiB page made of two 1 MiB leaves.
        d.map_pages(BASE, 0x10_0000, 4096, 2, RW).unwrap();
        d.map_pages(BASE + (4 << 20), 0x4000_0000, 2 << 20, 1, RW).unwrap();
        assert!(d.test_dirty(BASE + IO), "the second half of the first page");
        assert!(d.test_dirty(BASE + (5 << 20) + 7 * IO));
        assert!(d.test_dirty(BASE + (100 << 20)), "7.3 counts unmapped bits too");
        assert_eq!(read(&d, BASE, 8 << 20), vec![(BASE, 4096), (BASE + (4 << 20), 2 << 20)]);
        assert_eq!(read(&d, BASE, 8 << 20), vec![], "cleaned whole");
        // Within the range asked for.
        d.test_dirty(BASE);
        assert_eq!(read(&d, BASE + IO, IO), vec![(BASE + IO, IO)]);
        assert_eq!(d.iova_to_phys(BASE + (5 << 20) + 3), Some(0x4010_0003));
        assert_eq!(hw_unmap(&d, BASE, 2 * 4096) + hw_unmap(&d, BASE + (4 << 20), 2 << 20), 2 * 4096 + (2 << 20));
        assert!(d.is_empty());
        assert_eq!(d.warnings(), 0);

        // The huge shape: 1 MiB pages.
        let h = MockDomain::generic(MockIommuPt::Huge, true).unwrap();
        h.set_dirty_tracking(true).unwrap();
        h.map_pages(0, 0x20_0000, HUGE, 2, RW).unwrap();
        h.test_dirty(HUGE + 5 * IO);
        assert_eq!(read(&h, 0, 2 * HUGE), vec![(HUGE, HUGE)]);

        // 6.12's xarray: 2 KiB at a time, and only mapped bits count.
        let x = MockDomain::with_dirty_ops(false).unwrap();
        x.set_dirty_tracking(true).unwrap();
        x.map_pages(BASE, 0x10_0000, IO, 2, RW).unwrap();
        assert!(x.test_dirty(BASE + IO));
        assert!(!x.test_dirty(BASE + (100 << 20)));
        assert_eq!(read(&x, BASE, 4096), vec![(BASE + IO, IO)]);
    }

    fn hw_unmap(d: &MockDomain, iova: u64, len: u64) -> u64 {
        crate::unmap(d, iova, len, 0)
    }

    #[test]
    fn map_flags_and_unmap() {
        let d = MockDomain::new(false).unwrap();
        d.map_pages(BASE, 0x10_0000, IO, 4, RW).unwrap();
        let e: Vec<_> = (0..4).map(|i| d.entry_at(BASE + i * IO).unwrap()).collect();
        assert_eq!(e[0], MockEntry { paddr: 0x10_0000, prot: RW, start: true, last: false, huge: false, dirty: false });
        assert!(!e[1].start && !e[1].last && !e[2].start && !e[2].last);
        assert!(!e[3].start && e[3].last);
        assert_eq!(e[3].paddr, 0x10_0000 + 3 * IO);
        // A single-piece map is both first and last.
        d.map_pages(BASE + 8 * IO, 0x20_0000, IO, 1, Prot::READ).unwrap();
        let one = d.entry_at(BASE + 8 * IO + 5).unwrap();
        assert!(one.start && one.last && one.prot == Prot::READ);
        assert_eq!(d.iova_to_phys(BASE + 8 * IO + 5), Some(0x20_0005));
        assert_eq!(d.entry_at(BASE + 4 * IO), None);
        // Unmapping exactly what was mapped: no warnings.
        assert_eq!(d.unmap_pages(BASE, IO, 4), 4 * IO);
        assert_eq!(d.unmap_pages(BASE + 8 * IO, IO, 1), IO);
        assert_eq!(d.warnings(), 0);
        assert!(d.is_empty());
        // Holes count as unmapped, as in the kernel.
        assert_eq!(d.unmap_pages(BASE, IO, 16), 16 * IO);
    }

    /// The in-block unmap gives what the general one gives: holes count,
    /// pieces outside stay, a span (no 2 KiB leaf at the start) is split
    /// first, a range reaching the next block goes the general way.
    #[test]
    fn unmap_within_one_block() {
        for d in [MockDomain::generic(MockIommuPt::Default, false).unwrap(), MockDomain::new(false).unwrap()] {
            let pgsize = if d.is_generic() { 2 * IO } else { IO };
            let n = 2 * IO / pgsize;
            // Pieces 0-1 and 4-5 mapped, 2-3 a hole, 6-7 mapped and kept.
            d.map_pages(BASE, 0x10_0000, pgsize, n, RW).unwrap();
            d.map_pages(BASE + 4 * IO, 0x20_0000, pgsize, n, RW).unwrap();
            d.map_pages(BASE + 6 * IO, 0x30_0000, pgsize, n, RW).unwrap();
            assert_eq!(d.unmap_pages(BASE, IO, 6), 6 * IO);
            assert!((0..6).all(|i| d.entry_at(BASE + i * IO).is_none()));
            assert_eq!(d.entry_at(BASE + 6 * IO).unwrap().paddr, 0x30_0000);
            assert_eq!(d.unmap_pages(BASE + 6 * IO, pgsize, n), 2 * IO);
            // A span: the first 4 KiB go, the rest of the block stays.
            d.map_pages(BASE + HUGE, 0x40_0000, IO, HUGE / IO, RW).unwrap();
            assert_eq!(d.unmap_pages(BASE + HUGE, pgsize, n), 2 * IO);
            assert!(d.entry_at(BASE + HUGE + IO).is_none());
            assert_eq!(d.entry_at(BASE + HUGE + 2 * IO).unwrap().paddr, 0x40_0000 + 2 * IO);
            assert_eq!(d.unmap_pages(BASE + HUGE + 2 * IO, IO, HUGE / IO - 2), HUGE - 2 * IO);
            // Across a block boundary.
            d.map_pages(BASE + 2 * HUGE - 2 * IO, 0x50_0000, pgsize, 2 * n, RW).unwrap();
            assert_eq!(d.unmap_pages(BASE + 2 * HUGE - 2 * IO, pgsize, 2 * n), 4 * IO);
            assert!(d.is_empty());
            // 6.12's edge check: the span's map was cut (its piece 1 is
            // not LAST, piece 2 not START).
            assert_eq!(d.warnings(), if d.is_generic() { 0 } else { 2 });
        }
    }

    /// The mock without its shortcuts: [`Domain::map_range`] and
    /// [`Domain::unmap_range`] are the general split into `map_pages` and
    /// `unmap_pages` calls (the trait's defaults).
    struct Split(MockDomain);

    impl Domain for Split {
        fn pgsize_bitmap(&self) -> u64 {
            self.0.pgsize_bitmap()
        }
        fn aperture(&self) -> Aperture {
            self.0.aperture()
        }
        fn map_pages(&self, iova: u64, paddr: u64, pgsize: u64, pgcount: u64, prot: Prot) -> Result<(), (Errno, u64)> {
            self.0.map_pages(iova, paddr, pgsize, pgcount, prot)
        }
        fn unmap_pages(&self, iova: u64, pgsize: u64, pgcount: u64) -> u64 {
            self.0.unmap_pages(iova, pgsize, pgcount)
        }
        fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
            self.0.translate(iova, access)
        }
    }

    #[derive(Clone, Debug)]
    enum RangeOp {
        Map { off: u64, size: u64, paddr: u64, max_pgsize: u64, write: bool },
        Unmap { off: u64, size: u64, max_pgsize: u64 },
        Dirty { off: u64 },
    }

    /// Offsets and sizes in 1 KiB steps, mostly aligned to 2 or 4 KiB,
    /// sometimes to 1 MiB, in an 8 MiB window that starts 2 MiB below the
    /// mock aperture.
    fn range_op() -> impl proptest::strategy::Strategy<Value = RangeOp> {
        use proptest::prelude::*;
        let align = prop_oneof![1 => Just(1024u64), 6 => Just(IO), 6 => Just(2 * IO), 2 => Just(HUGE)];
        let off = (align.clone(), 0u64..8 << 10).prop_map(|(a, k)| (k << 10) / a * a);
        let size = prop_oneof![
            6 => (1u64..=8).prop_map(|n| n * IO),
            3 => (1u64..=700).prop_map(|n| n * IO),
            1 => (1u64..=3).prop_map(|n| n * HUGE),
            1 => Just(1024u64),
        ];
        let max = prop_oneof![4 => Just(0u64), 1 => Just(IO), 1 => Just(2 * IO)];
        prop_oneof![
            5 => (off.clone(), size.clone(), align, 0u64..1 << 20, max.clone(), any::<bool>()).prop_map(
                |(off, size, a, p, max_pgsize, write)| RangeOp::Map {
                    off,
                    size,
                    paddr: 0x1_0000_0000 + (p << 10) / a * a,
                    max_pgsize,
                    write,
                }
            ),
            4 => (off.clone(), size, max).prop_map(|(off, size, max_pgsize)| RangeOp::Unmap { off, size, max_pgsize }),
            1 => off.prop_map(|off| RangeOp::Dirty { off }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]
        /// The map and unmap shortcuts of one 1 MiB block
        /// (`map_in_block`, `unmap_in_block_range`) against the general
        /// split on random ranges: the same results, warnings and raw
        /// entries, for 6.12's mock with and without huge pages and 7.3's
        /// in both shapes.
        #[test]
        fn block_shortcuts_match_the_split(kind in 0u32..4, ops in proptest::collection::vec(range_op(), 1..48)) {
            let make = || match kind {
                0 => MockDomain::with_dirty_ops(false),
                1 => MockDomain::with_dirty_ops(true),
                2 => MockDomain::generic(MockIommuPt::Default, true),
                _ => MockDomain::generic(MockIommuPt::Huge, true),
            }
            .unwrap();
            let (fast, split) = (make(), Split(make()));
            fast.set_dirty_tracking(true).unwrap();
            split.0.set_dirty_tracking(true).unwrap();
            let window = BASE - 2 * HUGE;
            let dump = |d: &MockDomain| {
                let mut v = Vec::new();
                d.page_table().for_each_leaf(window, 8 * HUGE, |i, l, e| v.push((i, l, e)));
                v
            };
            for op in &ops {
                match *op {
                    RangeOp::Map { off, size, paddr, max_pgsize, write } => {
                        let prot = if write { RW } else { Prot::READ };
                        let a = crate::map(&fast, window + off, paddr, size, prot, max_pgsize);
                        let b = crate::map(&split, window + off, paddr, size, prot, max_pgsize);
                        proptest::prop_assert_eq!(a, b, "{:?}", op);
                    }
                    RangeOp::Unmap { off, size, max_pgsize } => {
                        let a = crate::unmap(&fast, window + off, size, max_pgsize);
                        let b = crate::unmap(&split, window + off, size, max_pgsize);
                        proptest::prop_assert_eq!(a, b, "{:?}", op);
                    }
                    RangeOp::Dirty { off } => {
                        proptest::prop_assert_eq!(fast.mark_dirty(window + off), split.0.mark_dirty(window + off));
                    }
                }
                proptest::prop_assert_eq!(fast.warnings(), split.0.warnings(), "{:?}", op);
                proptest::prop_assert_eq!(dump(&fast), dump(&split.0), "{:?}", op);
            }
        }
    }

    /// The common cases take the shortcuts (what the property test above
    /// compares is not the general path twice).
    #[test]
    fn small_ranges_take_the_block_shortcuts() {
        for d in [MockDomain::generic(MockIommuPt::Default, false).unwrap(), MockDomain::new(false).unwrap()] {
            assert!(d.map_in_block(BASE + 8 * IO, 0x1_0000_0000, 2 * IO, RW, 0));
            assert!(!d.map_in_block(BASE + 8 * IO, 0x1_0000_0000, 2 * IO, RW, 0), "slots in use");
            assert!(!d.map_in_block(BASE + HUGE - IO, 0x1_0000_0000, 2 * IO, RW, 0), "two blocks");
            assert!(!d.map_in_block(BASE - IO, 0x1_0000_0000, IO, RW, 0), "outside the aperture");
            let e = d.entry_at(BASE + 8 * IO).unwrap();
            assert!(e.start && !e.last && e.paddr == 0x1_0000_0000);
            assert!(d.entry_at(BASE + 9 * IO).unwrap().last);
            assert_eq!(d.unmap_in_block_range(BASE + 8 * IO, 2 * IO, 0), Some(2 * IO));
            assert_eq!(d.unmap_in_block_range(BASE + 8 * IO, 2 * IO, 0), None, "a hole first");
            assert!(d.is_empty());
            assert_eq!(d.warnings(), 0);
        }
    }

    #[test]
    fn unmap_sanity_checks() {
        let d = MockDomain::new(false).unwrap();
        d.map_pages(BASE, 0, IO, 8, RW).unwrap();
        // Starts in the middle of a map: the first piece lacks START.
        assert_eq!(d.unmap_pages(BASE + IO, IO, 2), 2 * IO);
        assert_eq!(d.warnings(), 2); // and the last lacks LAST
                                     // Starts on a LAST piece: fine for the kernel (same bit as START).
        d.map_pages(BASE + 16 * IO, 0, IO, 2, RW).unwrap();
        assert_eq!(d.unmap_pages(BASE + 17 * IO, IO, 1), IO);
        assert_eq!(d.warnings(), 2);
        // With huge pages in the bitmap the checks are off.
        let h = MockDomain::new(true).unwrap();
        h.map_pages(BASE, 0, IO, 8, RW).unwrap();
        h.unmap_pages(BASE + IO, IO, 2);
        assert_eq!(h.warnings(), 0);
    }

    #[test]
    fn huge_pages() {
        let d = MockDomain::new(true).unwrap();
        d.map_pages(BASE, 0x4000_0000, HUGE, 2, RW).unwrap();
        assert_eq!(d.page_table().walk(BASE).unwrap().1, 1);
        let first = d.entry_at(BASE).unwrap();
        assert_eq!(
            first,
            MockEntry { paddr: 0x4000_0000, prot: RW, start: true, last: false, huge: true, dirty: false }
        );
        let mid = d.entry_at(BASE + HUGE - IO).unwrap();
        assert!(!mid.start && !mid.last && mid.huge);
        assert_eq!(mid.paddr, 0x4000_0000 + HUGE - IO);
        assert!(!d.entry_at(BASE + HUGE).unwrap().start);
        let last = d.entry_at(BASE + 2 * HUGE - IO).unwrap();
        assert!(last.last && !last.start && last.huge);
        // Huge pages are not in the bitmap of a plain domain.
        let plain = MockDomain::new(false).unwrap();
        assert_eq!(plain.map_pages(BASE, 0, HUGE, 1, RW), Err((Errno::EINVAL, 0)));
        // Unmapping part of a huge page stops at it.
        assert_eq!(d.unmap_pages(BASE + IO, IO, 1), 0);
        assert_eq!(d.unmap_pages(BASE, HUGE, 2), 2 * HUGE);
        assert!(d.is_empty());
    }

    #[test]
    fn map_errors() {
        let d = MockDomain::new(false).unwrap();
        assert_eq!(d.map_pages(BASE + 1024, 0, IO, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(d.warnings(), 1);
        assert_eq!(d.map_pages(BASE, 1024, IO, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(d.map_pages(BASE, 0, 4096, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(crate::map(&d, BASE + 1024, 0, IO, RW, 0), Err(Errno::EINVAL));
        // Over-mapping.
        d.map_pages(BASE + 4 * IO, 0, IO, 1, RW).unwrap();
        assert_eq!(d.map_pages(BASE, 0, IO, 8, RW), Err((Errno::EEXIST, 4 * IO)));
        assert_eq!(d.warnings(), 2);
        // The partial map got a LAST, so unwinding it is clean.
        assert!(d.entry_at(BASE + 3 * IO).unwrap().last);
        assert_eq!(d.unmap_pages(BASE, IO, 4), 4 * IO);
        assert_eq!(d.warnings(), 2);
        // Through the core helper: unwinds itself.
        assert_eq!(crate::map(&d, BASE, 0, 8 * IO, RW, 0), Err(Errno::EEXIST));
        assert!(d.entry_at(BASE).is_none());
        assert!(d.entry_at(BASE + 4 * IO).is_some());
        assert_eq!(d.warnings(), 3);
    }

    #[test]
    fn aperture() {
        let d = MockDomain::new(false).unwrap();
        assert_eq!(d.map_pages(BASE - IO, 0, IO, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(d.map_pages(BASE - IO, 0, IO, 2, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(d.map_pages(MOCK_APERTURE_LAST + 1 - IO, 0, IO, 2, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(d.map_pages(!(IO - 1), 0, IO, 2, RW), Err((Errno::EINVAL, 0)));
        d.map_pages(MOCK_APERTURE_LAST + 1 - IO, 0x8000, IO, 1, RW).unwrap();
        let t = d.translate(MOCK_APERTURE_LAST, Access::Write).unwrap();
        assert_eq!(t, Translation { paddr: 0x8000 + IO - 1, len: 1, prot: RW });
        assert_eq!(d.translate(MOCK_APERTURE_LAST + 1, Access::Read), Err(Fault::OutOfRange));
        assert_eq!(d.translate(0, Access::Read), Err(Fault::OutOfRange));
        assert_eq!(d.translate(BASE, Access::Read), Err(Fault::NotPresent));
    }

    #[test]
    fn permissions_and_iova_to_phys() {
        let d = MockDomain::new(false).unwrap();
        d.map_pages(BASE, 0x1000, IO, 1, Prot::WRITE).unwrap();
        assert_eq!(d.translate(BASE, Access::Read), Err(Fault::Permission));
        assert!(d.translate(BASE, Access::Write).is_ok());
        assert_eq!(d.iova_to_phys(BASE + 3), Some(0x1003));
    }

    #[test]
    fn dirty_tracking() {
        let plain = MockDomain::new(false).unwrap();
        assert!(!plain.has_dirty_ops());
        assert_eq!(plain.set_dirty_tracking(true), Err(Errno::EINVAL));
        assert_eq!(plain.set_dirty_tracking(false), Ok(()));
        plain.enable_dirty_ops();
        assert_eq!(plain.set_dirty_tracking(true), Ok(()));
        let arc: std::sync::Arc<dyn Domain> = std::sync::Arc::new(plain);
        assert!(arc.as_any().downcast_ref::<MockDomain>().is_some_and(|m| m.dirty_tracking()));

        let d = MockDomain::with_dirty_ops(false).unwrap();
        d.map_pages(BASE, 0, IO, 16, RW).unwrap();
        let mut out = Vec::new();
        // A bitmap needs tracking on; the NULL bitmap does not.
        assert_eq!(
            d.read_and_clear_dirty(BASE, 16 * IO, false, Some(&mut |i, l| out.push((i, l)))),
            Err(Errno::EINVAL)
        );
        assert_eq!(d.read_and_clear_dirty(BASE, 16 * IO, false, None), Ok(()));
        d.set_dirty_tracking(true).unwrap();
        assert!(d.dirty_tracking());
        assert!(d.mark_dirty(BASE + 2 * IO));
        assert!(d.mark_dirty(BASE + 5 * IO + 7));
        assert!(!d.mark_dirty(BASE + 100 * IO));
        assert!(d.entry_at(BASE + 2 * IO).unwrap().dirty);
        // no_clear reports and keeps.
        d.read_and_clear_dirty(BASE, 16 * IO, true, Some(&mut |i, l| out.push((i, l)))).unwrap();
        assert_eq!(out, vec![(BASE + 2 * IO, IO), (BASE + 5 * IO, IO)]);
        out.clear();
        d.read_and_clear_dirty(BASE, 16 * IO, false, Some(&mut |i, l| out.push((i, l)))).unwrap();
        assert_eq!(out, vec![(BASE + 2 * IO, IO), (BASE + 5 * IO, IO)]);
        out.clear();
        d.read_and_clear_dirty(BASE, 16 * IO, false, Some(&mut |i, l| out.push((i, l)))).unwrap();
        assert!(out.is_empty());
        // The NULL bitmap clears too.
        d.mark_dirty(BASE);
        d.read_and_clear_dirty(BASE, IO, false, None).unwrap();
        assert!(!d.entry_at(BASE).unwrap().dirty);
        // Zero length still looks at one piece (the kernel's do-while).
        d.mark_dirty(BASE);
        d.read_and_clear_dirty(BASE, 0, false, Some(&mut |i, l| out.push((i, l)))).unwrap();
        assert_eq!(out, vec![(BASE, IO)]);
        d.unmap_pages(BASE, IO, 16);
        assert_eq!(d.warnings(), 0);
    }

    #[test]
    fn dirty_huge() {
        let d = MockDomain::with_dirty_ops(true).unwrap();
        d.set_dirty_tracking(true).unwrap();
        crate::map(&d, BASE, 0x4000_0000, 4 * HUGE, RW, 0).unwrap();
        // One piece of every other huge page, as the selftest does.
        assert!(d.mark_dirty(BASE + 7 * IO));
        assert!(d.mark_dirty(BASE + 2 * HUGE));
        let mut out = Vec::new();
        d.read_and_clear_dirty(BASE, 4 * HUGE, false, Some(&mut |i, l| out.push((i, l)))).unwrap();
        assert_eq!(out, vec![(BASE, HUGE), (BASE + 2 * HUGE, HUGE)]);
        // An unaligned start reports from there, a whole huge page long.
        d.mark_dirty(BASE + HUGE);
        out.clear();
        d.read_and_clear_dirty(BASE + HUGE + IO, 10 * IO, false, Some(&mut |i, l| out.push((i, l)))).unwrap();
        assert_eq!(out, vec![(BASE + HUGE + IO, HUGE)]);
        // Empty space is skipped whole.
        out.clear();
        d.mark_dirty(BASE + 3 * HUGE + 5);
        d.read_and_clear_dirty(0, MOCK_APERTURE_LAST + 1, false, Some(&mut |i, l| out.push((i, l)))).unwrap();
        assert_eq!(out, vec![(BASE + 3 * HUGE, HUGE)]);
        assert_eq!(crate::unmap(&d, BASE, 4 * HUGE, 0), 4 * HUGE);
        assert!(d.is_empty());
    }

    #[test]
    fn core_map_uses_huge_leaves_when_offered() {
        // The kernel-visible layout: a span (the model's compression of
        // 512 pieces) counts as its 512 level-0 pieces.
        let leaf_levels = |d: &MockDomain| {
            let mut levels = Vec::new();
            d.page_table().for_each_leaf(BASE, 2 * HUGE, |_, level, entry| {
                if entry & bits::SPAN != 0 {
                    levels.extend([0; MockDomain::PIECES as usize]);
                } else {
                    levels.push(level);
                }
            });
            levels
        };
        let h = MockDomain::new(true).unwrap();
        crate::map(&h, BASE, 0x4010_0000, 2 * HUGE, RW, 0).unwrap();
        assert_eq!(leaf_levels(&h), vec![1, 1]);
        assert!((0..1024).all(|i| h.entry_at(BASE + i * IO).unwrap().huge));
        assert_eq!(h.iova_to_phys(BASE + HUGE + 0x123), Some(0x4020_0123));
        assert_eq!(crate::unmap(&h, BASE, 2 * HUGE, 0), 2 * HUGE);

        let p = MockDomain::new(false).unwrap();
        crate::map(&p, BASE, 0x4010_0000, 2 * HUGE, RW, 0).unwrap();
        assert_eq!(leaf_levels(&p), vec![0; 1024]);
        assert!((0..1024).all(|i| !p.entry_at(BASE + i * IO).unwrap().huge));
        assert_eq!(crate::unmap(&p, BASE, 2 * HUGE, 0), 2 * HUGE);
        assert_eq!(p.warnings(), 0);

        // Capped with max_pgsize, a huge domain uses small leaves too.
        crate::map(&h, BASE, 0x4010_0000, 2 * HUGE, RW, IO).unwrap();
        assert_eq!(leaf_levels(&h), vec![0; 1024]);
        // And an unaligned physical address rules huge leaves out.
        assert_eq!(crate::unmap(&h, BASE, 2 * HUGE, 0), 2 * HUGE);
        crate::map(&h, BASE, 0x4010_0800, 2 * HUGE, RW, 0).unwrap();
        assert_eq!(leaf_levels(&h), vec![0; 1024]);
    }

    #[test]
    fn mixed_sizes_unmap_through_core() {
        // Map with 2 KiB leaves around huge ones and unmap it all in one go.
        let h = MockDomain::new(true).unwrap();
        crate::map(&h, BASE + HUGE - 4 * IO, 0x4000_0000 + HUGE - 4 * IO, HUGE + 8 * IO, RW, 0).unwrap();
        let mut levels = Vec::new();
        h.page_table().for_each_leaf(BASE, 4 * HUGE, |_, level, _| levels.push(level));
        assert_eq!(levels, [vec![0; 4], vec![1], vec![0; 4]].concat());
        assert_eq!(crate::unmap(&h, BASE + HUGE - 4 * IO, HUGE + 8 * IO, 0), HUGE + 8 * IO);
        assert!(h.is_empty());
    }

    /// Spans are invisible: every piece reads as the kernel's 2 KiB entry,
    /// partial unmaps and dirty marks split them, and a piece in use stops
    /// a map exactly where piece-by-piece mapping would.
    #[test]
    fn spans_look_like_pieces() {
        for huge_iova in [false, true] {
            let d = MockDomain::with_dirty_ops(huge_iova).unwrap();
            // 100 pieces before a block boundary, 3 whole blocks, 7 after;
            // the physical address is not 1 MiB aligned.
            let iova = BASE + 2 * HUGE - 100 * IO;
            let pa = 0x4000_0800u64;
            let n = 100 + 3 * MockDomain::PIECES + 7;
            d.map_pages(iova, pa, IO, n, RW).unwrap();
            let mut spans = 0;
            d.page_table().for_each_leaf(iova, n * IO, |_, _, e| spans += (e & bits::SPAN != 0) as u32);
            assert_eq!(spans, 3);
            let want = |i: u64| MockEntry {
                paddr: pa + i * IO,
                prot: RW,
                start: i == 0,
                last: i == n - 1,
                huge: false,
                dirty: false,
            };
            for i in 0..n {
                assert_eq!(d.entry_at(iova + i * IO + 5).unwrap(), want(i), "piece {i}");
            }
            let t = d.translate(iova + 100 * IO + 0x10, Access::Read).unwrap();
            assert_eq!(t, Translation { paddr: pa + 100 * IO + 0x10, len: IO - 0x10, prot: RW });
            // Dirty: one piece of a span is reported alone.
            d.set_dirty_tracking(true).unwrap();
            assert!(d.mark_dirty(iova + 300 * IO));
            let mut out = Vec::new();
            d.read_and_clear_dirty(iova, n * IO, false, Some(&mut |i, l| out.push((i, l)))).unwrap();
            assert_eq!(out, vec![(iova + 300 * IO, IO)]);
            // Unmapping the middle of a span (not what iommufd does, but
            // the kernel mock allows it) leaves the rest as it was.
            let mid = iova + (100 + 512 + 17) * IO;
            assert_eq!(d.unmap_pages(mid, IO, 30), 30 * IO);
            assert!(d.entry_at(mid).is_none() && d.entry_at(mid + 29 * IO).is_none());
            assert_eq!(d.entry_at(mid - IO).unwrap(), want(100 + 512 + 16));
            assert_eq!(d.entry_at(mid + 30 * IO).unwrap(), want(100 + 512 + 47));
            let expected_warnings = if huge_iova { 0 } else { 2 };
            assert_eq!(d.warnings(), expected_warnings);
            assert_eq!(d.unmap_pages(iova, IO, n), n * IO);
            assert!(d.is_empty());
            assert_eq!(d.warnings(), expected_warnings);

            // A piece in use inside the second block stops the map there,
            // with LAST on the piece before it.
            let busy = iova + (100 + 512 + 40) * IO;
            d.map_pages(busy, 0, IO, 1, RW).unwrap();
            assert_eq!(d.map_pages(iova, pa, IO, n, RW), Err((Errno::EEXIST, (100 + 512 + 40) * IO)));
            assert!(d.entry_at(busy - IO).unwrap().last);
            assert!(d.entry_at(iova).unwrap().start);
            assert_eq!(d.unmap_pages(iova, IO, 100 + 512 + 40), (100 + 512 + 40) * IO);
            assert_eq!(d.unmap_pages(busy, IO, 1), IO);
            assert!(d.is_empty());
            assert_eq!(d.warnings(), expected_warnings + 1, "the EEXIST");
        }
    }

    /// Rough cost of mapping and unmapping 4 KiB (two mock pieces) through
    /// the Domain trait. `--release -- --ignored --nocapture timing`.
    #[test]
    #[ignore]
    fn timing_mock_map_unmap_4k() {
        let d = MockDomain::new(false).unwrap();
        const N: u64 = 1_000_000;
        let start = std::time::Instant::now();
        for i in 0..N {
            let iova = BASE + (i % 1024) * 4096;
            d.map_pages(iova, iova, IO, 2, RW).unwrap();
            assert_eq!(d.unmap_pages(iova, IO, 2), 4096);
        }
        let ns = start.elapsed().as_nanos() as f64 / N as f64;
        println!("mock: map_pages+unmap_pages of 4 KiB (2 x 2 KiB) {ns:.1} ns/op");
        assert_eq!(d.warnings(), 0);
    }
}
