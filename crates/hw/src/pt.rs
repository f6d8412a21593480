//! A generic radix page-table engine.
//!
//! In the spirit of Linux's `drivers/iommu/generic_pt`, one walker serves
//! every page-table format: a [`Format`] says how many levels there are,
//! which levels may hold leaves and how an entry is encoded, and
//! [`PageTable`] does the rest (map, unmap, walk, translate, dirty
//! harvesting).
//!
//! # Levels and sizes
//!
//! Level 0 holds the smallest leaves, of `1 << LEAF_SHIFT` bytes; each level
//! above indexes `Format::INDEX_BITS` more IOVA bits (9 for 4 KiB tables, as
//! x86 and Arm's 4 KiB granule; 11 and 13 for Arm's 16 KiB and 64 KiB
//! granules), so a level-`n` entry spans `1 << (LEAF_SHIFT + INDEX_BITS *
//! n)` bytes. The top level is `LEVELS - 1` and the table addresses IOVAs
//! `0..=max_iova()`.
//!
//! # Nodes
//!
//! A table node is one "page" of `N = 1 << INDEX_BITS` 64-bit entries (4, 16
//! or 64 KiB, the table's const parameter `N`, 512 by default), exactly as
//! hardware would see it: a table entry holds the *physical address* of the
//! next-level node (handed out by [`PtMemory`]). Next to the entries each
//! node keeps a software pointer per slot to the child node, so the walker
//! never has to resolve a physical address. A child is attached to its slot
//! at most once (lock-free compare-and-swap) and is only freed when the
//! whole table is dropped; the entry word, not the pointer, says whether the
//! child is currently linked. Because nodes are never freed while the table
//! is alive, readers can walk without any lock or epoch scheme.
//!
//! # Concurrency
//!
//! Every operation takes `&self`. Concurrent operations on disjoint IOVA
//! ranges are safe and independent (they may share intermediate nodes,
//! which are created with compare-and-swap). Overlapping concurrent map and
//! unmap calls are a caller bug; they stay memory safe but their outcome is
//! whatever interleaving the atomics produced.
//!
//! That contract is what makes leaves cheap: map checks that a run of
//! slots of one node is empty and fills it with plain release stores, and
//! unmap clears leaves with plain stores (at level 0, the whole run of
//! slots at once); only table nodes, which disjoint ranges share, are
//! installed with compare-and-swap. Readers load entries with acquire, so
//! they see a leaf whole or not at all. A plain store also means hardware
//! setting A/D bits in a leaf while it is being unmapped cannot keep the
//! leaf alive.

use core::marker::PhantomData;
use core::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use once_cell::race::OnceBox;
use uiommufd_abi::Errno;

use crate::{Access, Fault, Prot, Translation};

/// IOVA bits each level of a 4 KiB-node table indexes (the default).
pub const INDEX_BITS: u32 = 9;
/// Entries in one 4 KiB table node.
pub const ENTRIES: usize = 1 << INDEX_BITS;

/// Describes one page-table format to the [`PageTable`] engine.
///
/// Implementors are normally unit types; everything is associated so the
/// engine is monomorphised per format and the encoders inline.
///
/// Requirements on the encoding:
/// - the all-zero entry is not present (the engine clears entries to 0);
/// - `make_leaf` keeps enough of `paddr` that `leaf_paddr` gives it back
///   for any `paddr` aligned to the level's page size;
/// - `make_table` entries are present and not leaves at any level;
/// - [`DIRTY`](Format::DIRTY) and [`ACCESSED`](Format::ACCESSED) are bits
///   that hardware may set in a leaf and software clears.
pub trait Format {
    /// Number of levels (1..=6).
    const LEVELS: u32;
    /// IOVA bits indexed per level: 9, 11 or 13; the table's node size `N`
    /// must be `1 << INDEX_BITS`.
    const INDEX_BITS: u32 = INDEX_BITS;
    /// log2 of the smallest leaf (level 0) page size.
    const LEAF_SHIFT: u32;
    /// Bit `n` set: level `n` may hold leaves. Must include level 0.
    const LEAF_LEVELS: u32;
    /// Leaf bits hardware sets on a write (0: no dirty tracking).
    const DIRTY: u64 = 0;
    /// Leaf bits hardware sets on any access (0: none).
    const ACCESSED: u64 = 0;

    /// A leaf mapping a page of this level at `paddr` (aligned to the
    /// level's page size) with `prot`.
    fn make_leaf(paddr: u64, prot: Prot, level: u32) -> u64;
    /// A table entry pointing at the node whose physical address is
    /// `table_pa` (4 KiB aligned).
    fn make_table(table_pa: u64) -> u64;
    /// Whether the entry is valid (leaf or table).
    fn is_present(entry: u64) -> bool;
    /// Whether a present entry at `level` is a leaf rather than a table.
    /// Only consulted for levels that may hold leaves, and never for level
    /// 0, where every present entry is a leaf.
    fn is_leaf(entry: u64, level: u32) -> bool;
    /// The physical address of the first byte the leaf maps.
    fn leaf_paddr(entry: u64, level: u32) -> u64;
    /// The permissions a leaf grants.
    fn leaf_prot(entry: u64) -> Prot;

    /// log2 of the most entries of one level a *contiguous* leaf may span
    /// (0: the format has none). A contiguous leaf of `2^c` entries maps
    /// `level_size(level) << c` bytes and is written as `2^c` identical
    /// entries, aligned to `2^c` slots (AMD v1's "next level 7" page-size
    /// encoding). Must be below [`INDEX_BITS`](Format::INDEX_BITS).
    const MAX_CONTIG_LG2: u32 = 0;

    /// The entry of a contiguous leaf spanning `2^contig_lg2` entries at
    /// `level`, mapping from `paddr` (aligned to the whole leaf). Only
    /// called with `0 < contig_lg2 <= MAX_CONTIG_LG2`.
    fn make_leaf_contig(paddr: u64, prot: Prot, level: u32, contig_lg2: u32) -> u64 {
        let _ = contig_lg2;
        Self::make_leaf(paddr, prot, level)
    }

    /// How many entries (log2) the leaf `entry` at `level` spans; its
    /// [`leaf_paddr`](Format::leaf_paddr) is then the start of the whole
    /// contiguous leaf.
    fn leaf_contig_lg2(entry: u64, level: u32) -> u32 {
        let _ = (entry, level);
        0
    }

    /// A table entry held at `level` pointing at the node (of level
    /// `level - 1`) whose physical address is `table_pa`; by default
    /// [`make_table`](Format::make_table). Formats that record the next
    /// level in table entries override it.
    fn make_table_at(table_pa: u64, level: u32) -> u64 {
        let _ = level;
        Self::make_table(table_pa)
    }

    /// Whether hardware marked the leaf dirty.
    fn is_dirty(entry: u64) -> bool {
        entry & Self::DIRTY != 0
    }
    /// The leaf with its dirty state cleared.
    fn clear_dirty(entry: u64) -> u64 {
        entry & !Self::DIRTY
    }
}

/// First physical address of the window reserved for page-table pages.
///
/// Emulated physical memory (`uiommufd-memory`'s frame table) never hands
/// out frames in `[PT_WINDOW_START, PT_WINDOW_END)`; every page-table node
/// of every model gets its "physical" address from here, so an address in
/// this window found in an entry is always a table, never user memory.
///
/// The window sits at 1 GiB..4 GiB, below the first user frame (4 GiB), so
/// node addresses fit every real IOMMU's address width (VT-d entries can
/// only encode host addresses below 2^39 or 2^46 on many parts).
pub const PT_WINDOW_START: u64 = 0x4000_0000;
/// End (exclusive) of the page-table window: 3 GiB, 3 * 2^18 nodes.
pub const PT_WINDOW_END: u64 = 0x1_0000_0000;
/// Size and alignment of one 4 KiB page-table node (larger nodes are
/// aligned to their size).
pub const PT_PAGE_SIZE: u64 = (ENTRIES * 8) as u64;

static PT_NEXT: AtomicU64 = AtomicU64::new(PT_WINDOW_START);
static PT_FREE: Mutex<Vec<u64>> = Mutex::new(Vec::new());
/// Length of `PT_FREE`, readable without the lock so allocation only locks
/// when something was freed.
static PT_FREE_LEN: AtomicUsize = AtomicUsize::new(0);
/// Freed nodes larger than 4 KiB: `(address, size)`.
static PT_FREE_BIG: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

/// The process-wide allocator of page-table physical addresses.
///
/// Addresses are fake: no memory is behind them, they only make entries
/// bit-exact and give every node a unique identity. Fresh addresses come
/// from a bump pointer through [`PT_WINDOW_START`]..[`PT_WINDOW_END`];
/// addresses of freed nodes are recycled first so a long-running process
/// cannot exhaust the window while fewer than 3 * 2^18 nodes are alive.
pub struct PtMemory;

impl PtMemory {
    /// A new 4 KiB-aligned page-table address, or `ENOMEM` when the window
    /// is full (3 * 2^18 nodes alive).
    pub fn alloc() -> Result<u64, Errno> {
        if PT_FREE_LEN.load(Ordering::Relaxed) != 0 {
            let mut free = PT_FREE.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pa) = free.pop() {
                PT_FREE_LEN.store(free.len(), Ordering::Relaxed);
                return Ok(pa);
            }
        }
        PT_NEXT
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                next.checked_add(PT_PAGE_SIZE).filter(|&end| end <= PT_WINDOW_END)
            })
            .map_err(|_| Errno::ENOMEM)
    }

    /// A new page-table address for a node of `size` bytes (a power of two
    /// from 4 KiB), aligned to its size; `ENOMEM` when the window is full.
    pub fn alloc_sized(size: u64) -> Result<u64, Errno> {
        if size <= PT_PAGE_SIZE {
            return Self::alloc();
        }
        {
            let mut big = PT_FREE_BIG.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = big.iter().position(|&(_, s)| s == size) {
                return Ok(big.swap_remove(i).0);
            }
        }
        let aligned = |next: u64| next.checked_next_multiple_of(size);
        PT_NEXT
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                aligned(next)?.checked_add(size).filter(|&end| end <= PT_WINDOW_END)
            })
            .ok()
            .and_then(aligned)
            .ok_or(Errno::ENOMEM)
    }

    /// Return an address from [`alloc_sized`](Self::alloc_sized).
    pub fn free_sized(pa: u64, size: u64) {
        if size <= PT_PAGE_SIZE {
            return Self::free(pa);
        }
        if Self::contains(pa) && pa & (size - 1) == 0 {
            PT_FREE_BIG.lock().unwrap_or_else(|e| e.into_inner()).push((pa, size));
        }
    }

    /// Return an address from [`alloc`](Self::alloc). Addresses outside
    /// the window are ignored.
    pub fn free(pa: u64) {
        if !Self::contains(pa) || pa & (PT_PAGE_SIZE - 1) != 0 {
            return;
        }
        let mut free = PT_FREE.lock().unwrap_or_else(|e| e.into_inner());
        free.push(pa);
        PT_FREE_LEN.store(free.len(), Ordering::Relaxed);
    }

    /// Whether `pa` lies in the page-table window.
    pub fn contains(pa: u64) -> bool {
        (PT_WINDOW_START..PT_WINDOW_END).contains(&pa)
    }
}

#[cfg(test)]
thread_local! {
    /// Nodes allocated minus nodes dropped on this thread (leak checks).
    static LIVE_NODES: core::cell::Cell<i64> = const { core::cell::Cell::new(0) };
}

/// One table node of `N` entries: the hardware-visible entries and the
/// software links.
struct Node<const N: usize> {
    entries: [AtomicU64; N],
    children: [OnceBox<Node<N>>; N],
    pa: u64,
}

impl<const N: usize> Node<N> {
    const BYTES: u64 = (N * 8) as u64;

    fn new() -> Result<Box<Node<N>>, Errno> {
        let pa = PtMemory::alloc_sized(Self::BYTES)?;
        #[cfg(test)]
        LIVE_NODES.with(|n| n.set(n.get() + 1));
        Ok(Box::new(Node { entries: [const { AtomicU64::new(0) }; N], children: [const { OnceBox::new() }; N], pa }))
    }
}

impl<const N: usize> Drop for Node<N> {
    fn drop(&mut self) {
        #[cfg(test)]
        LIVE_NODES.with(|n| n.set(n.get() - 1));
        PtMemory::free_sized(self.pa, Self::BYTES);
    }
}

/// Mask of the low `bits` bits (`bits` may be 64).
const fn low_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Entries the per-entry loops below (writing a run of leaves, clearing
/// one) handle per step.
///
/// A loop of one entry per step is a few instructions, and on some cores
/// (the AMD Zen 3 these benchmarks run on) such a loop runs at about half
/// speed when its body happens to straddle a 64-byte boundary of the code:
/// where it lands moves with any change elsewhere in the binary, which made
/// the 256-page map and unmap rows of `uiommufd bench` jump by up to 2x
/// between builds of the same code (docs/BENCHMARKS.md, "Seventh round").
/// Eight entries per step make that cost an eighth, whatever the placement.
const BLOCK: usize = 8;

/// Store 0 into every slot, [`BLOCK`] at a time (plain release stores).
#[inline(always)]
fn zero_slots(slots: &[AtomicU64]) {
    let mut blocks = slots.chunks_exact(BLOCK);
    for block in &mut blocks {
        for slot in block {
            slot.store(0, Ordering::Release);
        }
    }
    for slot in blocks.remainder() {
        slot.store(0, Ordering::Release);
    }
}

/// Store `value(k)` into slot `k` of `slots`, [`BLOCK`] at a time (plain
/// release stores, in order).
#[inline(always)]
fn fill_slots(slots: &[AtomicU64], mut value: impl FnMut(usize) -> u64) {
    let mut blocks = slots.chunks_exact(BLOCK);
    let mut k = 0usize;
    for block in &mut blocks {
        for (j, slot) in block.iter().enumerate() {
            slot.store(value(k + j), Ordering::Release);
        }
        k += BLOCK;
    }
    for (j, slot) in blocks.remainder().iter().enumerate() {
        slot.store(value(k + j), Ordering::Release);
    }
}

/// What a walk found at an IOVA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A present leaf at `level`.
    Leaf { entry: u64, level: u32 },
    /// Nothing mapped: the slot at `level` is empty, so the whole
    /// `level_size(level)`-aligned block around the IOVA is unmapped.
    Hole { level: u32 },
    /// The IOVA is beyond what the table can address.
    OutOfRange,
}

/// A radix page table of format `F`.
///
/// Dropping it frees every node (the ones attached but currently unlinked
/// too) and returns their physical addresses to [`PtMemory`].
pub struct PageTable<F: Format, const N: usize = ENTRIES> {
    root: Box<Node<N>>,
    /// Serialises [`split_leaf`](Self::split_leaf)s, the only writers of
    /// unlinked nodes.
    split: Mutex<()>,
    _format: PhantomData<fn() -> F>,
}

impl<F: Format, const N: usize> core::fmt::Debug for PageTable<F, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageTable").field("root_pa", &format_args!("{:#x}", self.root.pa)).finish_non_exhaustive()
    }
}

impl<F: Format, const N: usize> PageTable<F, N> {
    /// Compile-time checks of the format's geometry.
    const GEOMETRY_OK: () = {
        assert!(matches!(F::INDEX_BITS, 9 | 11 | 13), "9, 11 or 13 index bits per level");
        assert!(N == 1 << F::INDEX_BITS, "nodes of 1 << INDEX_BITS entries");
        assert!(F::LEVELS >= 1 && F::LEVELS <= 6, "1 to 6 levels");
        assert!(F::LEAF_LEVELS & 1 == 1, "level 0 must hold leaves");
        assert!(F::LEAF_LEVELS >> F::LEVELS == 0, "leaf level above the top");
        // The top level may be partial (AMD v1's sixth level indexes bits
        // 63:57 only): IOVAs are 64 bits, the levels below must fit.
        assert!(F::LEAF_SHIFT >= 1 && F::LEAF_SHIFT + F::INDEX_BITS * (F::LEVELS - 1) < 64, "IOVA wider than 64 bits");
        assert!(F::MAX_CONTIG_LG2 < F::INDEX_BITS, "a contiguous leaf spans less than a node");
    };

    /// An empty table (just the top-level node).
    pub fn new() -> Result<Self, Errno> {
        #[allow(clippy::let_unit_value)]
        let () = Self::GEOMETRY_OK;
        if F::is_present(0) {
            return Err(Errno::EINVAL);
        }
        Ok(PageTable { root: Node::new()?, split: Mutex::new(()), _format: PhantomData })
    }

    /// Physical address of the top-level node (what a context entry or
    /// stream table entry would hold).
    pub fn root_pa(&self) -> u64 {
        self.root.pa
    }

    /// log2 of the bytes one entry at `level` spans.
    #[inline]
    pub const fn level_shift(level: u32) -> u32 {
        F::LEAF_SHIFT + F::INDEX_BITS * level
    }

    /// Bytes one entry at `level` spans (`level < LEVELS`).
    #[inline]
    pub const fn level_size(level: u32) -> u64 {
        1u64 << Self::level_shift(level)
    }

    /// Whether `level` may hold leaves.
    #[inline]
    pub const fn leaf_level(level: u32) -> bool {
        level < F::LEVELS && F::LEAF_LEVELS & (1 << level) != 0
    }

    /// Bitmap of every leaf size of the format, contiguous ones included
    /// (an `iommu_domain`'s `pgsize_bitmap` is this or a subset).
    pub const fn pgsize_bitmap() -> u64 {
        let mut bitmap = 0;
        let mut level = 0;
        while level < F::LEVELS {
            if Self::leaf_level(level) {
                let mut c = 0;
                while c <= F::MAX_CONTIG_LG2 && Self::level_shift(level) + c < 64 {
                    bitmap |= Self::level_size(level) << c;
                    c += 1;
                }
            }
            level += 1;
        }
        bitmap
    }

    /// The highest IOVA the table can address.
    pub const fn max_iova() -> u64 {
        low_mask(F::LEAF_SHIFT + F::INDEX_BITS * F::LEVELS)
    }

    /// The level whose leaves are `pgsize` bytes, if the format has one.
    pub const fn level_for_pgsize(pgsize: u64) -> Option<u32> {
        if !pgsize.is_power_of_two() || pgsize.trailing_zeros() < F::LEAF_SHIFT {
            return None;
        }
        let above = pgsize.trailing_zeros() - F::LEAF_SHIFT;
        let level = above / F::INDEX_BITS;
        if level * F::INDEX_BITS != above {
            return None;
        }
        if Self::leaf_level(level) {
            Some(level)
        } else {
            None
        }
    }

    /// The level and contiguous span (log2 of entries) of leaves of
    /// `pgsize` bytes, if the format has them.
    pub const fn leaf_for_pgsize(pgsize: u64) -> Option<(u32, u32)> {
        if !pgsize.is_power_of_two() || pgsize.trailing_zeros() < F::LEAF_SHIFT {
            return None;
        }
        let above = pgsize.trailing_zeros() - F::LEAF_SHIFT;
        let level = above / F::INDEX_BITS;
        let contig = above % F::INDEX_BITS;
        if contig <= F::MAX_CONTIG_LG2 && Self::leaf_level(level) {
            Some((level, contig))
        } else {
            None
        }
    }

    /// log2 of the bytes the leaf `entry` at `level` maps.
    #[inline]
    fn leaf_shift(entry: u64, level: u32) -> u32 {
        if F::MAX_CONTIG_LG2 == 0 {
            Self::level_shift(level)
        } else {
            Self::level_shift(level) + F::leaf_contig_lg2(entry, level)
        }
    }

    #[inline]
    fn index(iova: u64, level: u32) -> usize {
        ((iova >> Self::level_shift(level)) as usize) & (N - 1)
    }

    #[inline]
    fn is_leaf_at(entry: u64, level: u32) -> bool {
        level == 0 || (Self::leaf_level(level) && F::is_leaf(entry, level))
    }

    /// Map `pgcount` pages of `pgsize` bytes at `iova` to `paddr`.
    ///
    /// Fails with `EINVAL` for a size the format has no leaf for or an
    /// address not aligned to it, `ERANGE` for a range past
    /// [`max_iova`](Self::max_iova) or a physical range that wraps, and
    /// `EEXIST` if a leaf already maps part of the range. On failure the
    /// error comes with the bytes this call did map (from `iova` on), which
    /// the caller must unmap.
    pub fn map(&self, iova: u64, paddr: u64, pgsize: u64, pgcount: u64, prot: Prot) -> Result<(), (Errno, u64)> {
        self.map_with(iova, paddr, pgsize, pgcount, prot, |leaf, _| leaf)
    }

    /// [`map`](Self::map), OR-ing `first_bits` into the first leaf written
    /// and `last_bits` into the last one (software-available entry bits some
    /// formats use to remember how a range was mapped).
    #[allow(clippy::too_many_arguments)]
    pub fn map_marked(
        &self,
        iova: u64,
        paddr: u64,
        pgsize: u64,
        pgcount: u64,
        prot: Prot,
        first_bits: u64,
        last_bits: u64,
    ) -> Result<(), (Errno, u64)> {
        let last_n = pgcount.wrapping_sub(1);
        self.map_with(iova, paddr, pgsize, pgcount, prot, |mut leaf, n| {
            if n == 0 {
                leaf |= first_bits;
            }
            if n == last_n {
                leaf |= last_bits;
            }
            leaf
        })
    }

    /// The checks of [`map`](Self::map), then the leaves, each passed
    /// through `mark(leaf, n)` (`n`: index of the page in the call).
    #[inline]
    fn map_with(
        &self,
        iova: u64,
        paddr: u64,
        pgsize: u64,
        pgcount: u64,
        prot: Prot,
        mark: impl Fn(u64, u64) -> u64,
    ) -> Result<(), (Errno, u64)> {
        let (level, contig) = Self::leaf_for_pgsize(pgsize).ok_or((Errno::EINVAL, 0))?;
        if (iova | paddr) & (pgsize - 1) != 0 {
            return Err((Errno::EINVAL, 0));
        }
        if pgcount == 0 {
            return Ok(());
        }
        let total = pgsize.checked_mul(pgcount).ok_or((Errno::ERANGE, 0))?;
        let last = iova.checked_add(total - 1).ok_or((Errno::ERANGE, 0))?;
        if last > Self::max_iova() || paddr.checked_add(total - 1).is_none() {
            return Err((Errno::ERANGE, 0));
        }
        if contig != 0 {
            return self.map_contig(iova, paddr, pgsize, pgcount, prot, level, contig, mark);
        }
        // Entries are normally the physical address under fixed attribute
        // bits, so each leaf is the previous plus `pgsize`: check that at
        // both ends of the range (a format with relocated address bits, or
        // attributes that depend on the address, fails it) and step instead
        // of encoding every leaf.
        let first = F::make_leaf(paddr, prot, level);
        let span = total - pgsize;
        let linear = F::make_leaf(paddr + span, prot, level) == first.wrapping_add(span)
            && (pgcount < 2 || F::make_leaf(paddr + pgsize, prot, level) == first.wrapping_add(pgsize));
        if linear {
            self.install_run(iova, level, pgcount, |n| mark(first.wrapping_add(n * pgsize), n))
        } else {
            self.install_run(iova, level, pgcount, |n| mark(F::make_leaf(paddr + n * pgsize, prot, level), n))
        }
    }

    /// The contiguous-leaf case of [`map_with`](Self::map_with): every page
    /// is `2^contig` identical entries at `level`. A page whose entries
    /// could only be partly written (a slot in use) is cleared again, so
    /// the bytes reported mapped are whole pages.
    #[allow(clippy::too_many_arguments)]
    #[cold]
    fn map_contig(
        &self,
        iova: u64,
        paddr: u64,
        pgsize: u64,
        pgcount: u64,
        prot: Prot,
        level: u32,
        contig: u32,
        mark: impl Fn(u64, u64) -> u64,
    ) -> Result<(), (Errno, u64)> {
        let entries = pgcount << contig;
        let leaf = |n: u64| {
            let page = n >> contig;
            mark(F::make_leaf_contig(paddr + page * pgsize, prot, level, contig), page)
        };
        match self.install_run(iova, level, entries, leaf) {
            Ok(()) => Ok(()),
            Err((e, done)) => {
                let whole = done & !(pgsize - 1);
                if whole != done {
                    self.clear_slots(iova + whole, level, (done - whole) >> Self::level_shift(level));
                }
                Err((e, whole))
            }
        }
    }

    /// Zero `count` entries at `level` from `iova` (within one node), where
    /// the walk exists: undoes part of a contiguous leaf.
    fn clear_slots(&self, iova: u64, level: u32, count: u64) {
        if let Some(node) = self.node_for_existing(iova, level) {
            let first = Self::index(iova, level);
            zero_slots(&node.entries[first..first + count as usize]);
        }
    }

    /// The physical address of the node at `level` on the walk of `iova`,
    /// creating the nodes above it: where a table whose top grows on
    /// demand starts while it has `level + 1` levels (the table below the
    /// entry 0 chain of the full-depth tree, as AMD v1's dynamic top
    /// links the old top under entry 0 of the new one).
    pub fn node_pa(&self, iova: u64, level: u32) -> Result<u64, Errno> {
        if level >= F::LEVELS {
            return Err(Errno::EINVAL);
        }
        Ok(self.node_for(iova, level)?.pa)
    }

    /// Install `count` leaf entries at `level` from `iova` (aligned to the
    /// level's size, range checked by the caller): entry `n` is `leaf(n)`,
    /// which must be a present entry the format reads as a leaf at `level`.
    /// The formats' own [`map`](Self::map) goes through here; a model may
    /// also write leaves it encodes itself (the mock's compressed runs).
    ///
    /// Stops with `EEXIST` at the first slot already in use (other than an
    /// empty table, which a leaf may replace), with the bytes mapped so far.
    ///
    /// Leaves are written with plain release stores, a run of consecutive
    /// slots of one node per walk: the [`Domain`](crate::Domain) contract
    /// makes overlapping map and unmap calls a caller bug, so nobody else
    /// writes these slots meanwhile (hardware only sets A/D bits in present
    /// leaves, and these slots are empty). Only table nodes, which disjoint
    /// ranges may share, are installed with compare-and-swap.
    ///
    /// `EINVAL` for a level without leaves or a misaligned `iova`, `ERANGE`
    /// for a range past [`max_iova`](Self::max_iova).
    pub fn map_entries(
        &self,
        iova: u64,
        level: u32,
        count: u64,
        leaf: impl FnMut(u64) -> u64,
    ) -> Result<(), (Errno, u64)> {
        if !Self::leaf_level(level) || iova & (Self::level_size(level) - 1) != 0 {
            return Err((Errno::EINVAL, 0));
        }
        if count == 0 {
            return Ok(());
        }
        let last = Self::level_size(level)
            .checked_mul(count)
            .and_then(|total| iova.checked_add(total - 1))
            .filter(|&last| last <= Self::max_iova());
        if last.is_none() {
            return Err((Errno::ERANGE, 0));
        }
        self.install_run(iova, level, count, leaf)
    }

    /// [`map_entries`](Self::map_entries) once the arguments are checked.
    #[inline]
    fn install_run(
        &self,
        iova: u64,
        level: u32,
        count: u64,
        mut leaf: impl FnMut(u64) -> u64,
    ) -> Result<(), (Errno, u64)> {
        let size = Self::level_size(level);
        let mut n = 0u64;
        while n < count {
            let cur = iova + n * size;
            let node = self.node_for(cur, level).map_err(|e| (e, n * size))?;
            let first = Self::index(cur, level);
            let run = ((N - first) as u64).min(count - n) as usize;
            let slots = &node.entries[first..first + run];
            let mut i = 0usize;
            while i < run {
                // The common case: a stretch of empty slots, found first,
                // then filled in one tight loop of stores.
                let empty = Self::empty_prefix(&slots[i..]);
                fill_slots(&slots[i..i + empty], |k| leaf(n + (i + k) as u64));
                i += empty;
                if i < run {
                    // In use: only an empty table may give way.
                    let e = leaf(n + i as u64);
                    Self::install_leaf(node, first + i, level, e).map_err(|err| (err, (n + i as u64) * size))?;
                    i += 1;
                }
            }
            n += run as u64;
        }
        Ok(())
    }

    /// How many slots at the start of `slots` are 0 (empty). Eight at a
    /// time, OR-ed together, so the common all-empty case costs one branch
    /// per eight loads.
    #[inline]
    fn empty_prefix(slots: &[AtomicU64]) -> usize {
        let mut chunks = slots.chunks_exact(8);
        let mut done = 0usize;
        for chunk in &mut chunks {
            let any = chunk.iter().fold(0u64, |acc, s| acc | s.load(Ordering::Relaxed));
            if any != 0 {
                break;
            }
            done += 8;
        }
        done + slots[done..].iter().position(|s| s.load(Ordering::Relaxed) != 0).unwrap_or(slots.len() - done)
    }

    /// Replace the leaf at `level` that maps `iova` by a table of
    /// `N` leaves one level down, entry `i` being `leaf(i, old)` for
    /// the old leaf `old` (what a model does to unmap or mark part of a
    /// large leaf it created for its own convenience). The new node is
    /// filled before it is linked, so readers see either the old leaf or the
    /// complete table. Returns `Ok(false)` if no leaf at `level` maps
    /// `iova`; `ENOMEM` if no node can be allocated.
    pub fn split_leaf(&self, iova: u64, level: u32, mut leaf: impl FnMut(usize, u64) -> u64) -> Result<bool, Errno> {
        if level == 0 || level >= F::LEVELS {
            return Ok(false);
        }
        let _serial = self.split.lock().unwrap_or_else(|e| e.into_inner());
        let Ok((slot, entry, found)) = self.find(iova) else { return Ok(false) };
        if found != level || (F::MAX_CONTIG_LG2 != 0 && F::leaf_contig_lg2(entry, level) != 0) {
            return Ok(false);
        }
        let node = self.node_for_existing(iova, level).ok_or(Errno::EEXIST)?;
        let idx = Self::index(iova, level);
        let child = node.children[idx].get_or_try_init(Node::new)?;
        for (i, e) in child.entries.iter().enumerate() {
            e.store(leaf(i, entry), Ordering::Relaxed);
        }
        match slot.compare_exchange(entry, F::make_table_at(child.pa, level), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(true),
            Err(_) => {
                // The leaf went meanwhile (an unmap racing with the split):
                // an unlinked node must stay empty, as mapping relinks it
                // as it is. (A map of the same range racing too could link
                // it before this; that is overlapping use of one range.)
                for e in child.entries.iter() {
                    e.store(0, Ordering::Relaxed);
                }
                Ok(false)
            }
        }
    }

    /// Clear up to `count` consecutive leaves of `level` from `iova`
    /// (aligned to the level's size), stopping at the first slot that is
    /// not such a leaf: an empty slot, a table, or nothing allocated there.
    /// Returns the number cleared. This is the unmap of formats whose
    /// driver stops at the first hole (io-pgtable-arm); the stores are
    /// plain, as [`unmap`](Self::unmap)'s.
    pub fn clear_leaf_run(&self, iova: u64, level: u32, count: u64) -> u64 {
        if !Self::leaf_level(level) || iova & (Self::level_size(level) - 1) != 0 {
            return 0;
        }
        let size = Self::level_size(level);
        let mut n = 0u64;
        while n < count {
            let Some(cur) = size.checked_mul(n).and_then(|off| iova.checked_add(off)) else { break };
            if cur > Self::max_iova() {
                break;
            }
            let Some(node) = self.node_for_existing(cur, level) else { break };
            let first = Self::index(cur, level);
            let run = ((N - first) as u64).min(count - n) as usize;
            let slots = &node.entries[first..first + run];
            let is_leaf = |slot: &AtomicU64| {
                let e = slot.load(Ordering::Acquire);
                F::is_present(e) & Self::is_leaf_at(e, level)
            };
            // Whole blocks of leaves (the common case): one test, then the
            // stores (see `BLOCK`); from the block with the first other
            // entry on, one at a time.
            let mut done = 0usize;
            for block in slots.chunks_exact(BLOCK) {
                if !block.iter().fold(true, |all, slot| all & is_leaf(slot)) {
                    break;
                }
                zero_slots(block);
                done += BLOCK;
            }
            for slot in &slots[done..] {
                if !is_leaf(slot) {
                    break;
                }
                slot.store(0, Ordering::Release);
                done += 1;
            }
            n += done as u64;
            if done < run {
                break;
            }
        }
        n
    }

    /// The `count` slots of `level` from `iova`, which must all lie in one
    /// node, creating the nodes above them: for a model that writes a run
    /// of leaves in place after one walk (the mock's small map). The
    /// caller owns these slots as [`map_entries`](Self::map_entries) does
    /// (plain stores of leaves into empty slots). `EINVAL` for a level
    /// without leaves, an IOVA past [`max_iova`](Self::max_iova) or a run
    /// leaving the node; `EEXIST` if a leaf above maps `iova`; `ENOMEM`.
    #[inline]
    pub(crate) fn leaf_slots(&self, iova: u64, level: u32, count: usize) -> Result<&[AtomicU64], Errno> {
        let first = Self::index(iova, level);
        if !Self::leaf_level(level) || iova > Self::max_iova() || count > N - first {
            return Err(Errno::EINVAL);
        }
        Ok(&self.node_for(iova, level)?.entries[first..first + count])
    }

    /// [`leaf_slots`](Self::leaf_slots) where the walk exists already (no
    /// allocation): `None` if it does not, or a leaf above maps `iova`.
    #[inline]
    pub(crate) fn existing_leaf_slots(&self, iova: u64, level: u32, count: usize) -> Option<&[AtomicU64]> {
        let first = Self::index(iova, level);
        if !Self::leaf_level(level) || iova > Self::max_iova() || count > N - first {
            return None;
        }
        Some(&self.node_for_existing(iova, level)?.entries[first..first + count])
    }

    /// The node holding the level-`target` entry for `iova`, if the walk
    /// down to it exists (no allocation).
    #[inline]
    fn node_for_existing(&self, iova: u64, target: u32) -> Option<&Node<N>> {
        let mut node: &Node<N> = &self.root;
        let mut level = F::LEVELS - 1;
        while level > target {
            let idx = Self::index(iova, level);
            let entry = node.entries[idx].load(Ordering::Acquire);
            if !F::is_present(entry) || Self::is_leaf_at(entry, level) {
                return None;
            }
            node = node.children[idx].get()?;
            level -= 1;
        }
        Some(node)
    }

    /// The node holding the level-`target` entry for `iova`, creating and
    /// linking intermediate nodes on the way.
    #[inline]
    fn node_for(&self, iova: u64, target: u32) -> Result<&Node<N>, Errno> {
        let mut node: &Node<N> = &self.root;
        let mut level = F::LEVELS - 1;
        while level > target {
            let idx = Self::index(iova, level);
            let entry = node.entries[idx].load(Ordering::Acquire);
            // The usual step: a linked table.
            node = match node.children[idx].get() {
                Some(child) if F::is_present(entry) && !Self::is_leaf_at(entry, level) => child,
                _ => Self::link_child(node, idx, level, entry)?,
            };
            level -= 1;
        }
        Ok(node)
    }

    /// [`node_for`](Self::node_for)'s step at `level` where slot `idx`
    /// held `entry` and is not (yet) a linked table with its child: link
    /// one (attached to the slot once for the table's life), or `EEXIST`
    /// if a leaf is there.
    #[cold]
    #[inline(never)]
    fn link_child(node: &Node<N>, idx: usize, level: u32, mut entry: u64) -> Result<&Node<N>, Errno> {
        let slot = &node.entries[idx];
        loop {
            if F::is_present(entry) {
                if Self::is_leaf_at(entry, level) {
                    // A larger page already maps this IOVA.
                    return Err(Errno::EEXIST);
                }
                break;
            }
            // Attach a child to the slot (once for the table's life),
            // then link it in the hardware-visible entry.
            let child = node.children[idx].get_or_try_init(Node::new)?;
            match slot.compare_exchange(entry, F::make_table_at(child.pa, level), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => entry = now,
            }
        }
        // The child was attached before any table entry for this slot
        // could be published, so it is there.
        node.children[idx].get().ok_or(Errno::EEXIST)
    }

    fn install_leaf(node: &Node<N>, idx: usize, level: u32, leaf: u64) -> Result<(), Errno> {
        let slot = &node.entries[idx];
        match slot.compare_exchange(0, leaf, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(cur) => {
                // A linked table with nothing mapped under it (left by an
                // earlier unmap) may be replaced by a leaf. Its node stays
                // attached to the slot and is relinked if a smaller page is
                // mapped here again.
                if level > 0 && F::is_present(cur) && !Self::is_leaf_at(cur, level) {
                    if let Some(child) = node.children[idx].get() {
                        if Self::subtree_empty(child, level - 1)
                            && slot.compare_exchange(cur, leaf, Ordering::AcqRel, Ordering::Acquire).is_ok()
                        {
                            return Ok(());
                        }
                    }
                }
                Err(Errno::EEXIST)
            }
        }
    }

    fn subtree_empty(node: &Node<N>, level: u32) -> bool {
        node.entries.iter().zip(node.children.iter()).all(|(slot, child)| {
            let entry = slot.load(Ordering::Acquire);
            if !F::is_present(entry) {
                return true;
            }
            if Self::is_leaf_at(entry, level) {
                return false;
            }
            match child.get() {
                Some(c) => Self::subtree_empty(c, level - 1),
                None => true,
            }
        })
    }

    /// Whether nothing at all is mapped.
    pub fn is_empty(&self) -> bool {
        Self::subtree_empty(&self.root, F::LEVELS - 1)
    }

    /// Visit every present leaf overlapping `start..=last` in IOVA order,
    /// calling `f(leaf_iova, level, slots, entry)` once per leaf with the
    /// entries it occupies (one, or all of a contiguous leaf's); the leaf
    /// may extend beyond the range on either side. `start..=last` must lie
    /// within the node's span.
    fn visit<B>(
        node: &Node<N>,
        level: u32,
        start: u64,
        last: u64,
        f: &mut impl FnMut(u64, u32, &[AtomicU64], u64) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        let shift = Self::level_shift(level);
        let size_mask = low_mask(shift);
        let first = Self::index(start, level);
        let end = Self::index(last, level);
        let base = (start & !size_mask).wrapping_sub((first as u64) << shift);
        let mut idx = first;
        while idx <= end {
            let slot_iova = base.wrapping_add((idx as u64) << shift);
            let entry = node.entries[idx].load(Ordering::Acquire);
            let mut next = idx + 1;
            if F::is_present(entry) {
                if Self::is_leaf_at(entry, level) {
                    let c = if F::MAX_CONTIG_LG2 == 0 { 0 } else { F::leaf_contig_lg2(entry, level) };
                    let block = idx & !((1usize << c) - 1);
                    next = block + (1usize << c);
                    let block_iova = base.wrapping_add((block as u64) << shift);
                    f(block_iova, level, &node.entries[block..next.min(N)], entry)?;
                } else if let Some(child) = node.children[idx].get() {
                    let s = start.max(slot_iova);
                    let l = last.min(slot_iova | size_mask);
                    Self::visit(child, level - 1, s, l, f)?;
                }
            }
            idx = next;
        }
        ControlFlow::Continue(())
    }

    /// Clip `iova`, `len` to the addressable range: `Some((iova, last))`.
    fn clip(iova: u64, len: u64) -> Option<(u64, u64)> {
        if len == 0 || iova > Self::max_iova() {
            return None;
        }
        let last = iova.saturating_add(len - 1).min(Self::max_iova());
        Some((iova, last))
    }

    /// Unmap the leaves in `pgcount` pages of `pgsize` bytes at `iova`.
    ///
    /// Every leaf lying wholly inside the range is cleared, whatever its
    /// size; empty stretches count as unmapped. A leaf that lies only partly
    /// inside is never split: the unmap stops at it and returns the bytes
    /// from `iova` up to it. `pgsize` must be a power of two no smaller than
    /// the smallest leaf and `iova` aligned to the smallest leaf, else
    /// nothing is done and 0 returned. Table nodes are not freed (readers
    /// may be walking them); an empty table is replaced when a leaf is
    /// mapped over it.
    pub fn unmap(&self, iova: u64, pgsize: u64, pgcount: u64) -> u64 {
        let granule_mask = low_mask(F::LEAF_SHIFT);
        if !pgsize.is_power_of_two() || pgsize & granule_mask != 0 || iova & granule_mask != 0 {
            return 0;
        }
        let Some(total) = pgsize.checked_mul(pgcount) else { return 0 };
        if total == 0 || iova.checked_add(total - 1).is_none() {
            return 0;
        }
        let Some((start, last)) = Self::clip(iova, total) else {
            // Nothing can be mapped beyond the table's reach.
            return total;
        };
        match Self::clear_range(&self.root, F::LEVELS - 1, start, last) {
            ControlFlow::Continue(()) => total,
            ControlFlow::Break(stop) => stop - iova,
        }
    }

    /// Clear every leaf inside `start..=last` (within the node's span, both
    /// ends aligned to the smallest leaf), stopping at a leaf that sticks
    /// out of the range with the first IOVA of the range it covers.
    ///
    /// Plain stores: no other writer may touch the range (the `Domain`
    /// contract), and hardware setting A/D bits in a leaf meanwhile must not
    /// keep it alive. At level 0 every slot in the range is cleared blindly:
    /// its leaves all lie inside and its empty slots stay empty.
    fn clear_range(node: &Node<N>, level: u32, start: u64, last: u64) -> ControlFlow<u64> {
        let first = Self::index(start, level);
        let end = Self::index(last, level);
        if level == 0 {
            if F::MAX_CONTIG_LG2 != 0 {
                // Only a contiguous leaf at either end can stick out (the
                // ones between lie inside: they are aligned runs).
                let span = |idx: usize| {
                    let e = node.entries[idx].load(Ordering::Acquire);
                    if F::is_present(e) {
                        (1usize << F::leaf_contig_lg2(e, 0)) - 1
                    } else {
                        0
                    }
                };
                if first & !span(first) != first {
                    return ControlFlow::Break(start);
                }
                let tail = span(end);
                if end | tail != end {
                    let block = end & !tail;
                    zero_slots(&node.entries[first..block]);
                    let shift = Self::level_shift(0);
                    return ControlFlow::Break((start & !low_mask(shift)) + (((block - first) as u64) << shift));
                }
            }
            zero_slots(&node.entries[first..=end]);
            return ControlFlow::Continue(());
        }
        let shift = Self::level_shift(level);
        let size_mask = low_mask(shift);
        let base = (start & !size_mask).wrapping_sub((first as u64) << shift);
        let mut idx = first;
        while idx <= end {
            let slot_iova = base.wrapping_add((idx as u64) << shift);
            let entry = node.entries[idx].load(Ordering::Acquire);
            let mut next = idx + 1;
            if F::is_present(entry) {
                if Self::is_leaf_at(entry, level) {
                    let c = if F::MAX_CONTIG_LG2 == 0 { 0 } else { F::leaf_contig_lg2(entry, level) };
                    let block = idx & !((1usize << c) - 1);
                    next = (block + (1usize << c)).min(N);
                    let block_iova = base.wrapping_add((block as u64) << shift);
                    let block_last = block_iova.wrapping_add(low_mask(shift + c));
                    if block_iova < start || block_last > last {
                        return ControlFlow::Break(block_iova.max(start));
                    }
                    zero_slots(&node.entries[block..next]);
                } else if let Some(child) = node.children[idx].get() {
                    let s = start.max(slot_iova);
                    let l = last.min(slot_iova | size_mask);
                    Self::clear_range(child, level - 1, s, l)?;
                }
            }
            idx = next;
        }
        ControlFlow::Continue(())
    }

    /// The slot holding the leaf for `iova`, or why there is none.
    #[inline]
    fn find(&self, iova: u64) -> Result<(&AtomicU64, u64, u32), Lookup> {
        if iova > Self::max_iova() {
            return Err(Lookup::OutOfRange);
        }
        let mut node: &Node<N> = &self.root;
        let mut level = F::LEVELS - 1;
        loop {
            let idx = Self::index(iova, level);
            let slot = &node.entries[idx];
            let entry = slot.load(Ordering::Acquire);
            if !F::is_present(entry) {
                return Err(Lookup::Hole { level });
            }
            if Self::is_leaf_at(entry, level) {
                return Ok((slot, entry, level));
            }
            match node.children[idx].get() {
                Some(child) => node = child,
                None => return Err(Lookup::Hole { level }),
            }
            level -= 1;
        }
    }

    /// What maps `iova`: a leaf, or the level of the empty slot.
    pub fn lookup(&self, iova: u64) -> Lookup {
        match self.find(iova) {
            Ok((_, entry, level)) => Lookup::Leaf { entry, level },
            Err(l) => l,
        }
    }

    /// The leaf entry mapping `iova` and its level.
    pub fn walk(&self, iova: u64) -> Option<(u64, u32)> {
        self.find(iova).ok().map(|(_, entry, level)| (entry, level))
    }

    fn translation(iova: u64, entry: u64, level: u32, access: Access) -> Result<Translation, Fault> {
        let prot = F::leaf_prot(entry);
        let needed = match access {
            Access::Read => Prot::READ,
            Access::Write => Prot::WRITE,
        };
        if !prot.contains(needed) {
            return Err(Fault::Permission);
        }
        let mask = low_mask(Self::leaf_shift(entry, level));
        let offset = iova & mask;
        Ok(Translation { paddr: F::leaf_paddr(entry, level).wrapping_add(offset), len: mask - offset + 1, prot })
    }

    /// Translate one access at `iova`: reads need `READ`, writes `WRITE`.
    /// `len` is the number of bytes from `iova` to the end of the leaf.
    #[inline]
    pub fn translate(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        match self.find(iova) {
            Ok((_, entry, level)) => Self::translation(iova, entry, level, access),
            Err(Lookup::OutOfRange) => Err(Fault::OutOfRange),
            Err(_) => Err(Fault::NotPresent),
        }
    }

    /// [`translate`](Self::translate), also giving the leaf entry that
    /// maps `iova` (for models that keep software bits in their leaves).
    #[inline]
    pub fn translate_entry(&self, iova: u64, access: Access) -> Result<(Translation, u64), Fault> {
        match self.find(iova) {
            Ok((_, entry, level)) => Self::translation(iova, entry, level, access).map(|t| (t, entry)),
            Err(Lookup::OutOfRange) => Err(Fault::OutOfRange),
            Err(_) => Err(Fault::NotPresent),
        }
    }

    /// [`translate`](Self::translate) as hardware with access/dirty
    /// tracking does it: a successful access sets the format's
    /// [`ACCESSED`](Format::ACCESSED) bits, and a write also its
    /// [`DIRTY`](Format::DIRTY) bits, in the leaf.
    pub fn translate_and_mark(&self, iova: u64, access: Access) -> Result<Translation, Fault> {
        let (slot, entry, level) = self.find(iova).map_err(|l| match l {
            Lookup::OutOfRange => Fault::OutOfRange,
            _ => Fault::NotPresent,
        })?;
        let t = Self::translation(iova, entry, level, access)?;
        let bits = match access {
            Access::Read => F::ACCESSED,
            Access::Write => F::ACCESSED | F::DIRTY,
        };
        if entry & bits != bits {
            // Only set the bits while the leaf read is still in place.
            let _ = slot.compare_exchange(entry, entry | bits, Ordering::AcqRel, Ordering::Relaxed);
        }
        Ok(t)
    }

    /// Atomically OR `bits` into the leaf mapping `iova`; returns the leaf
    /// as it was and its level, or `None` if nothing maps `iova`.
    ///
    /// The bits go only into a leaf still in place: a concurrent unmap that
    /// clears the slot between the walk and the update wins, and nothing is
    /// left behind in the empty slot.
    pub fn set_leaf_bits(&self, iova: u64, bits: u64) -> Option<(u64, u32)> {
        let (slot, mut entry, level) = self.find(iova).ok()?;
        loop {
            match slot.compare_exchange_weak(entry, entry | bits, Ordering::AcqRel, Ordering::Acquire) {
                Ok(old) => return Some((old, level)),
                Err(cur) if F::is_present(cur) && Self::is_leaf_at(cur, level) => entry = cur,
                Err(_) => return None,
            }
        }
    }

    /// Atomically clear `bits` in the leaf mapping `iova`; returns the leaf
    /// as it was and its level, or `None` if nothing maps `iova`.
    pub fn clear_leaf_bits(&self, iova: u64, bits: u64) -> Option<(u64, u32)> {
        let (slot, mut entry, level) = self.find(iova).ok()?;
        loop {
            match slot.compare_exchange_weak(entry, entry & !bits, Ordering::AcqRel, Ordering::Acquire) {
                Ok(old) => return Some((old, level)),
                Err(cur) if F::is_present(cur) && Self::is_leaf_at(cur, level) => entry = cur,
                Err(_) => return None,
            }
        }
    }

    /// Mark the leaf mapping `iova` dirty, as a DMA write would. Returns
    /// false if nothing maps `iova` or the format has no dirty bit.
    pub fn mark_dirty(&self, iova: u64) -> bool {
        F::DIRTY != 0 && self.set_leaf_bits(iova, F::DIRTY).is_some()
    }

    /// Call `f(leaf_iova, level, entry)` for each leaf overlapping
    /// `len` bytes at `iova`, in IOVA order.
    pub fn for_each_leaf(&self, iova: u64, len: u64, mut f: impl FnMut(u64, u32, u64)) {
        let Some((start, last)) = Self::clip(iova, len) else { return };
        let _ = Self::visit::<()>(&self.root, F::LEVELS - 1, start, last, &mut |leaf_iova, level, _, entry| {
            f(leaf_iova, level, entry);
            ControlFlow::Continue(())
        });
    }

    /// [`for_each_leaf`](Self::for_each_leaf) with each leaf decoded
    /// (output address, permissions, size).
    pub fn leaves(&self, iova: u64, len: u64, f: &mut dyn FnMut(crate::Leaf)) {
        self.for_each_leaf(iova, len, |leaf_iova, level, entry| {
            f(crate::Leaf {
                iova: leaf_iova,
                size: Self::level_size(level),
                paddr: F::leaf_paddr(entry, level),
                prot: F::leaf_prot(entry),
                entry,
                level,
            })
        });
    }

    /// Dirty harvesting: call `f(leaf_iova, leaf_size, dirty)` for each
    /// leaf overlapping `len` bytes at `iova`, in IOVA order, and when
    /// `clear` is set clear the dirty bits of the dirty ones. Test and clear
    /// is one atomic `fetch_and`, so a write racing with the harvest is
    /// either reported now or left set for the next one. Leaves are
    /// reported whole even where they stick out of the range.
    pub fn read_and_clear_dirty(&self, iova: u64, len: u64, clear: bool, mut f: impl FnMut(u64, u64, bool)) {
        let Some((start, last)) = Self::clip(iova, len) else { return };
        let _ = Self::visit::<()>(&self.root, F::LEVELS - 1, start, last, &mut |leaf_iova, level, slots, entry| {
            // A contiguous leaf is dirty when any of its entries is: the
            // hardware sets D in the entry it used.
            let mut dirty = false;
            for slot in slots {
                let e = if slots.len() == 1 { entry } else { slot.load(Ordering::Acquire) };
                if F::is_dirty(e) {
                    dirty |= if clear { F::is_dirty(slot.fetch_and(!F::DIRTY, Ordering::AcqRel)) } else { true };
                }
            }
            f(leaf_iova, 1u64 << Self::leaf_shift(entry, level), dirty);
            ControlFlow::Continue(())
        });
    }
}

/// A reference model of a page table for property tests: leaves by IOVA,
/// with the engine's rules (no overlap on map, unmap never splits a leaf)
/// and nothing else.
#[cfg(test)]
pub(crate) mod reference {
    use std::collections::BTreeMap;

    use uiommufd_abi::Errno;

    use crate::Prot;

    pub(crate) struct RefMap {
        /// Leaves by IOVA: (size, paddr, prot).
        leaves: BTreeMap<u64, (u64, u64, Prot)>,
        /// The largest leaf that can be mapped (how far back to look).
        max_leaf: u64,
    }

    impl RefMap {
        pub(crate) fn new(max_leaf: u64) -> RefMap {
            RefMap { leaves: BTreeMap::new(), max_leaf }
        }

        fn overlapping(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
            self.leaves
                .range(start.saturating_sub(self.max_leaf - 1)..end)
                .filter(|(&i, &(s, _, _))| i + s > start)
                .map(|(&i, &(s, _, _))| (i, s))
                .collect()
        }

        /// `count` leaves of `size` from `iova`; `EEXIST` with the bytes
        /// mapped at the first one that would overlap.
        pub(crate) fn map(
            &mut self,
            iova: u64,
            paddr: u64,
            size: u64,
            count: u64,
            prot: Prot,
        ) -> Result<(), (Errno, u64)> {
            for n in 0..count {
                let i = iova + n * size;
                if !self.overlapping(i, i + size).is_empty() {
                    return Err((Errno::EEXIST, n * size));
                }
                self.leaves.insert(i, (size, paddr + n * size, prot));
            }
            Ok(())
        }

        /// Remove the leaves inside the range, stopping at one that sticks
        /// out; the bytes from `iova` unmapped.
        pub(crate) fn unmap(&mut self, iova: u64, size: u64, count: u64) -> u64 {
            let end = iova + size * count;
            for (i, s) in self.overlapping(iova, end) {
                if i < iova || i + s > end {
                    return i.max(iova) - iova;
                }
                self.leaves.remove(&i);
            }
            end - iova
        }

        /// `(paddr, bytes to the leaf's end, prot)` of `iova`.
        pub(crate) fn translate(&self, iova: u64) -> Option<(u64, u64, Prot)> {
            let (&i, &(s, p, prot)) = self.leaves.range(..=iova).next_back()?;
            (iova < i + s).then(|| (p + (iova - i), s - (iova - i), prot))
        }

        /// The leaf holding `iova`: `(leaf iova, size, paddr, prot)`.
        pub(crate) fn leaf(&self, iova: u64) -> Option<(u64, u64, u64, Prot)> {
            let (&i, &(s, p, prot)) = self.leaves.range(..=iova).next_back()?;
            (iova < i + s).then_some((i, s, p, prot))
        }

        /// `(iova, size)` of every leaf, in order.
        pub(crate) fn leaves(&self) -> Vec<(u64, u64)> {
            self.leaves.iter().map(|(&i, &(s, _, _))| (i, s)).collect()
        }

        pub(crate) fn is_empty(&self) -> bool {
            self.leaves.is_empty()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reference::RefMap;
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    /// An x86-like 4-level format: 4 KiB, 2 MiB and 1 GiB leaves, 48-bit
    /// IOVA. Bit 0 present, 1 read, 2 write, 7 page-size, 6 dirty,
    /// 5 accessed.
    struct X86ish;
    const P: u64 = 1;
    const R: u64 = 2;
    const W: u64 = 4;
    const A: u64 = 1 << 5;
    const D: u64 = 1 << 6;
    const PS: u64 = 1 << 7;
    const ADDR: u64 = 0x000f_ffff_ffff_f000;

    impl Format for X86ish {
        const LEVELS: u32 = 4;
        const LEAF_SHIFT: u32 = 12;
        const LEAF_LEVELS: u32 = 0b111;
        const DIRTY: u64 = D;
        const ACCESSED: u64 = A;

        fn make_leaf(paddr: u64, prot: Prot, level: u32) -> u64 {
            let mut e = P | (paddr & ADDR);
            if prot.contains(Prot::READ) {
                e |= R;
            }
            if prot.contains(Prot::WRITE) {
                e |= W;
            }
            if level > 0 {
                e |= PS;
            }
            e
        }
        fn make_table(table_pa: u64) -> u64 {
            P | R | W | (table_pa & ADDR)
        }
        fn is_present(entry: u64) -> bool {
            entry & P != 0
        }
        fn is_leaf(entry: u64, _level: u32) -> bool {
            entry & PS != 0
        }
        fn leaf_paddr(entry: u64, level: u32) -> u64 {
            entry & ADDR & !low_mask(12 + 9 * level)
        }
        fn leaf_prot(entry: u64) -> Prot {
            let mut p = Prot::default();
            if entry & R != 0 {
                p = p | Prot::READ;
            }
            if entry & W != 0 {
                p = p | Prot::WRITE;
            }
            p
        }
    }

    type Pt = PageTable<X86ish>;
    const K4: u64 = 1 << 12;
    const M2: u64 = 1 << 21;
    const G1: u64 = 1 << 30;
    const RW: Prot = Prot(Prot::READ.0 | Prot::WRITE.0);

    #[test]
    fn geometry() {
        assert_eq!(Pt::pgsize_bitmap(), K4 | M2 | G1);
        assert_eq!(Pt::max_iova(), (1 << 48) - 1);
        assert_eq!(Pt::level_for_pgsize(K4), Some(0));
        assert_eq!(Pt::level_for_pgsize(M2), Some(1));
        assert_eq!(Pt::level_for_pgsize(G1), Some(2));
        assert_eq!(Pt::level_for_pgsize(1 << 39), None);
        assert_eq!(Pt::level_for_pgsize(8192), None);
        assert_eq!(Pt::level_for_pgsize(0), None);
        assert_eq!(Pt::level_for_pgsize(3 << 12), None);
    }

    #[test]
    fn map_translate_unmap() {
        let pt = Pt::new().unwrap();
        assert!(pt.is_empty());
        pt.map(0x1000, 0x20_0000, K4, 2, RW).unwrap();
        let t = pt.translate(0x1234, Access::Write).unwrap();
        assert_eq!(t, Translation { paddr: 0x20_0234, len: 0xdcc, prot: RW });
        assert_eq!(pt.translate(0x2000, Access::Read).unwrap().paddr, 0x20_1000);
        assert_eq!(pt.translate(0x3000, Access::Read), Err(Fault::NotPresent));
        assert_eq!(pt.translate(1 << 48, Access::Read), Err(Fault::OutOfRange));
        let (e, level) = pt.walk(0x1000).unwrap();
        assert_eq!(level, 0);
        assert_eq!(X86ish::leaf_paddr(e, 0), 0x20_0000);
        assert_eq!(pt.unmap(0x1000, K4, 2), 2 * K4);
        assert_eq!(pt.translate(0x1000, Access::Read), Err(Fault::NotPresent));
        assert!(pt.is_empty());
    }

    #[test]
    fn permissions() {
        let pt = Pt::new().unwrap();
        pt.map(0, 0x1000, K4, 1, Prot::READ).unwrap();
        pt.map(K4, 0x2000, K4, 1, Prot::WRITE).unwrap();
        assert!(pt.translate(0, Access::Read).is_ok());
        assert_eq!(pt.translate(0, Access::Write), Err(Fault::Permission));
        assert_eq!(pt.translate(K4, Access::Read), Err(Fault::Permission));
        assert!(pt.translate(K4, Access::Write).is_ok());
    }

    #[test]
    fn map_errors() {
        let pt = Pt::new().unwrap();
        assert_eq!(pt.map(0x800, 0, K4, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(pt.map(0, 0x800, K4, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(pt.map(0, 0, 8192, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(pt.map(0, 0, 1 << 39, 1, RW), Err((Errno::EINVAL, 0)));
        assert_eq!(pt.map(M2, 0, M2, 1, RW), Ok(()));
        assert_eq!(pt.map(0, 0, M2, 1, RW), Ok(()));
        assert_eq!(pt.map((1 << 48) - K4, 0, K4, 2, RW), Err((Errno::ERANGE, 0)));
        assert_eq!(pt.map(0, 0, K4, u64::MAX, RW), Err((Errno::ERANGE, 0)));
        assert_eq!(pt.map(0, !0xfff, K4, 2, RW), Err((Errno::ERANGE, 0)));
        // Over-mapping: at the same level, inside a larger leaf, and a
        // larger leaf over a table with something in it.
        assert_eq!(pt.map(M2 + K4, 0, K4, 1, RW), Err((Errno::EEXIST, 0)));
        pt.map(4 * M2, 0, K4, 1, RW).unwrap();
        assert_eq!(pt.map(4 * M2, 0, M2, 1, RW), Err((Errno::EEXIST, 0)));
        // Part way: two pages mapped before hitting the existing one.
        assert_eq!(pt.map(4 * M2 - 2 * K4, 0, K4, 4, RW), Err((Errno::EEXIST, 2 * K4)));
        assert!(pt.translate(4 * M2 - K4, Access::Read).is_ok());
        assert!(pt.translate(4 * M2 + K4, Access::Read).is_err());
        // pgcount 0 is a no-op.
        assert_eq!(pt.map(8 * M2, 0, K4, 0, RW), Ok(()));
    }

    #[test]
    fn large_leaf_replaces_empty_table() {
        let pt = Pt::new().unwrap();
        pt.map(M2, 0, K4, 512, RW).unwrap();
        assert_eq!(pt.unmap(M2, K4, 512), M2);
        pt.map(M2, 4 * M2, M2, 1, RW).unwrap();
        assert_eq!(pt.walk(M2 + 5 * K4).unwrap().1, 1);
        assert_eq!(pt.translate(M2 + 5 * K4, Access::Read).unwrap().paddr, 4 * M2 + 5 * K4);
        assert_eq!(pt.unmap(M2, M2, 1), M2);
        // And back to small pages: the old node is relinked.
        pt.map(M2 + K4, 0x5000, K4, 1, RW).unwrap();
        assert_eq!(pt.translate(M2 + K4, Access::Read).unwrap().paddr, 0x5000);
        assert_eq!(pt.translate(M2, Access::Read), Err(Fault::NotPresent));
        // A 1 GiB leaf over a whole subtree of empty tables.
        pt.unmap(0, G1, 1);
        pt.map(0, 0, G1, 1, RW).unwrap();
        assert_eq!(pt.translate(G1 - 1, Access::Read).unwrap(), Translation { paddr: G1 - 1, len: 1, prot: RW });
    }

    #[test]
    fn unmap_never_splits() {
        let pt = Pt::new().unwrap();
        pt.map(M2, 0, M2, 1, RW).unwrap();
        pt.map(0, 0, K4, 4, RW).unwrap();
        // Starts inside the large leaf: nothing done.
        assert_eq!(pt.unmap(M2 + K4, K4, 1), 0);
        // Reaches into it: stops at its start.
        assert_eq!(pt.unmap(0, K4, 1023), M2);
        assert!(pt.translate(0, Access::Read).is_err());
        assert!(pt.translate(M2, Access::Read).is_ok());
        // Holes count as unmapped.
        assert_eq!(pt.unmap(G1, K4, 10), 10 * K4);
        // Covering it whole with small pgsize: cleared whole.
        assert_eq!(pt.unmap(M2, K4, 512), M2);
        assert!(pt.is_empty());
        // Bad arguments.
        assert_eq!(pt.unmap(0x800, K4, 1), 0);
        assert_eq!(pt.unmap(0, 3 * K4, 1), 0);
        assert_eq!(pt.unmap(0, K4, u64::MAX), 0);
        assert_eq!(pt.unmap(!0xfff, K4, 2), 0);
        assert_eq!(pt.unmap(0, K4, 0), 0);
        // Beyond the reach of the table: nothing to unmap there.
        assert_eq!(pt.unmap(1 << 50, K4, 1), K4);
    }

    #[test]
    fn clear_leaf_run_stops_at_the_first_hole() {
        let pt = Pt::new().unwrap();
        pt.map(0, 0, K4, 5, RW).unwrap();
        pt.map(6 * K4, 0, K4, 1, RW).unwrap();
        assert_eq!(pt.clear_leaf_run(K4, 0, 10), 4);
        assert!(pt.translate(0, Access::Read).is_ok());
        assert!(pt.translate(K4, Access::Read).is_err());
        assert!(pt.translate(6 * K4, Access::Read).is_ok());
        // Across a node boundary, and at a level with nothing allocated.
        pt.map(M2 - 2 * K4, 0, K4, 4, RW).unwrap();
        assert_eq!(pt.clear_leaf_run(M2 - 2 * K4, 0, 4), 4);
        assert_eq!(pt.clear_leaf_run(G1, 0, 4), 0);
        // A 2 MiB leaf is not a 4 KiB one; misaligned or unsupported: none.
        pt.map(4 * M2, 0, M2, 1, RW).unwrap();
        assert_eq!(pt.clear_leaf_run(4 * M2, 0, 1), 0);
        assert_eq!(pt.clear_leaf_run(4 * M2, 1, 2), 1);
        assert_eq!(pt.clear_leaf_run(0x800, 0, 1), 0);
        assert_eq!(pt.clear_leaf_run(0, 3, 1), 0);
        assert_eq!(pt.clear_leaf_run(!0xfff, 0, 4), 0);
    }

    /// The per-entry loops work in blocks of `BLOCK` slots: a run that
    /// starts, stops or has its first hole anywhere in or across blocks
    /// clears, maps and reports exactly the entries the one-at-a-time
    /// definition does.
    #[test]
    fn runs_within_and_across_blocks() {
        let pt = Pt::new().unwrap();
        let paddr = 1 << 32;
        for start in [0u64, 1, 7, 8, 9, 13] {
            for len in [1u64, 7, 8, 9, 16, 17, 30] {
                for hole in [None, Some(0u64), Some(3), Some(7), Some(8), Some(12), Some(len.saturating_sub(1))] {
                    let hole = hole.filter(|&h| h < len);
                    let base = start * K4;
                    pt.map(base, paddr, K4, len, RW).unwrap();
                    for i in 0..len {
                        let t = pt.translate(base + i * K4, Access::Read).unwrap();
                        assert_eq!(t.paddr, paddr + i * K4, "map: start {start} len {len} page {i}");
                    }
                    if let Some(h) = hole {
                        assert_eq!(pt.unmap(base + h * K4, K4, 1), K4);
                    }
                    // Past the run, an entry that must stay.
                    pt.map(base + (len + 1) * K4, 0, K4, 1, RW).unwrap();
                    let want = hole.unwrap_or(len);
                    assert_eq!(pt.clear_leaf_run(base, 0, len + 2), want, "start {start} len {len} hole {hole:?}");
                    for i in 0..len {
                        let mapped = pt.translate(base + i * K4, Access::Read).is_ok();
                        assert_eq!(mapped, i > want, "start {start} len {len} hole {hole:?} page {i}");
                    }
                    // The rest, and the entry past it, in one unmap.
                    assert_eq!(pt.unmap(base, K4, len + 2), (len + 2) * K4);
                    assert!(pt.is_empty(), "start {start} len {len} hole {hole:?}");
                }
            }
        }
    }

    #[test]
    fn dirty_and_accessed() {
        let pt = Pt::new().unwrap();
        pt.map(0, 0, K4, 4, RW).unwrap();
        pt.map(M2, 0, M2, 1, RW).unwrap();
        assert!(pt.mark_dirty(K4));
        assert!(!pt.mark_dirty(G1));
        pt.translate_and_mark(M2 + 7, Access::Write).unwrap();
        pt.translate_and_mark(2 * K4, Access::Read).unwrap();
        assert_eq!(pt.walk(2 * K4).unwrap().0 & (A | D), A);
        let mut seen = Vec::new();
        pt.read_and_clear_dirty(0, 2 * M2, false, |i, s, d| seen.push((i, s, d)));
        assert_eq!(
            seen,
            vec![(0, K4, false), (K4, K4, true), (2 * K4, K4, false), (3 * K4, K4, false), (M2, M2, true)]
        );
        seen.clear();
        pt.read_and_clear_dirty(K4, M2 + 1, true, |i, s, d| seen.push((i, s, d)));
        assert_eq!(seen, vec![(K4, K4, true), (2 * K4, K4, false), (3 * K4, K4, false), (M2, M2, true)]);
        seen.clear();
        pt.read_and_clear_dirty(0, u64::MAX, true, |i, s, d| seen.push((i, s, d)));
        assert!(seen.iter().all(|&(_, _, d)| !d));
        assert_eq!(seen.len(), 5);
        let mut leaves = Vec::new();
        pt.for_each_leaf(M2 + K4, 1, |i, l, _| leaves.push((i, l)));
        assert_eq!(leaves, vec![(M2, 1)]);
        assert_eq!(pt.clear_leaf_bits(M2, A).map(|(e, _)| e & A), Some(A));
        assert_eq!(pt.walk(M2).unwrap().0 & A, 0);
    }

    #[test]
    fn drop_frees_nodes() {
        let before = LIVE_NODES.with(|n| n.get());
        {
            let pt = Pt::new().unwrap();
            pt.map(0, 0, K4, 1, RW).unwrap();
            pt.map(G1 * 3 + M2 * 5, 0, K4, 600, RW).unwrap();
            pt.map(1 << 47, 0, M2, 3, RW).unwrap();
            assert!(LIVE_NODES.with(|n| n.get()) > before + 5);
            assert!(PtMemory::contains(pt.root_pa()));
            assert_eq!(pt.root_pa() & (PT_PAGE_SIZE - 1), 0);
        }
        assert_eq!(LIVE_NODES.with(|n| n.get()), before);
    }

    #[test]
    fn table_entries_hold_node_addresses() {
        let pt = Pt::new().unwrap();
        pt.map(0, 0, K4, 1, RW).unwrap();
        let top = pt.root.entries[0].load(Ordering::Relaxed);
        let child = pt.root.children[0].get().unwrap();
        assert_eq!(top, X86ish::make_table(child.pa));
        assert!(PtMemory::contains(child.pa));
        assert_ne!(child.pa, pt.root_pa());
    }

    /// The x86-like format with 16 KiB or 64 KiB nodes (Arm's larger
    /// granules): 11 or 13 index bits per level.
    struct Wide<const G: u32>;

    impl<const G: u32> Format for Wide<G> {
        const LEVELS: u32 = 3;
        const INDEX_BITS: u32 = G - 3;
        const LEAF_SHIFT: u32 = G;
        const LEAF_LEVELS: u32 = 0b11;
        fn make_leaf(paddr: u64, prot: Prot, level: u32) -> u64 {
            X86ish::make_leaf(paddr, prot, level)
        }
        fn make_table(table_pa: u64) -> u64 {
            X86ish::make_table(table_pa)
        }
        fn is_present(entry: u64) -> bool {
            X86ish::is_present(entry)
        }
        fn is_leaf(entry: u64, level: u32) -> bool {
            X86ish::is_leaf(entry, level)
        }
        fn leaf_paddr(entry: u64, level: u32) -> u64 {
            entry & ADDR & !low_mask(G + (G - 3) * level)
        }
        fn leaf_prot(entry: u64) -> Prot {
            X86ish::leaf_prot(entry)
        }
    }

    #[test]
    fn larger_nodes() {
        fn check<const G: u32, const N: usize>() {
            type T<const G: u32, const N: usize> = PageTable<Wide<G>, N>;
            let (page, block) = (1u64 << G, 1u64 << (2 * G - 3));
            assert_eq!(T::<G, N>::pgsize_bitmap(), page | block);
            assert_eq!(T::<G, N>::level_size(2), 1 << (3 * G - 6));
            let pt = T::<G, N>::new().unwrap();
            assert_eq!(pt.root_pa() & (N as u64 * 8 - 1), 0, "a node is aligned to its size");
            pt.map(block - page, 7 * block, page, 3, RW).unwrap();
            pt.map(4 * block, 8 * block, block, 1, RW).unwrap();
            let t = pt.translate(block + page + 5, Access::Write).unwrap();
            assert_eq!((t.paddr, t.len), (7 * block + 2 * page + 5, page - 5));
            assert_eq!(pt.walk(4 * block + 3).unwrap().1, 1);
            assert_eq!(pt.translate(4 * block + block - 1, Access::Read).unwrap().paddr, 9 * block - 1);
            // The table entry of the second level is the child's address.
            let top = pt.root.entries[0].load(Ordering::Relaxed);
            assert_eq!(top & ADDR, pt.root.children[0].get().unwrap().pa);
            assert_eq!(pt.unmap(block - page, page, 3), 3 * page);
            assert_eq!(pt.unmap(4 * block, block, 1), block);
            assert!(pt.is_empty());
        }
        check::<14, 2048>();
        check::<16, 8192>();
    }

    #[test]
    fn pt_memory_recycles() {
        let a = PtMemory::alloc().unwrap();
        assert!(PtMemory::contains(a) && a & (PT_PAGE_SIZE - 1) == 0);
        PtMemory::free(a);
        PtMemory::free(0x1000); // not ours: ignored
                                // Something from the free list or the bump pointer, in the window.
        let b = PtMemory::alloc().unwrap();
        assert!(PtMemory::contains(b));
        PtMemory::free(b);
        // 64 KiB nodes: aligned to 64 KiB, recycled by size.
        let c = PtMemory::alloc_sized(64 << 10).unwrap();
        assert!(PtMemory::contains(c) && c & 0xffff == 0);
        PtMemory::free_sized(c, 64 << 10);
        let d = PtMemory::alloc_sized(64 << 10).unwrap();
        assert_eq!(d & 0xffff, 0);
        PtMemory::free_sized(d, 64 << 10);
    }

    #[test]
    fn concurrent_disjoint_maps() {
        let pt = Arc::new(Pt::new().unwrap());
        const PAGES: u64 = 8192;
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let pt = Arc::clone(&pt);
                std::thread::spawn(move || {
                    // Interleaved pages, so all threads race to create the
                    // same intermediate nodes; plus one private 2 MiB leaf.
                    for i in (t..PAGES).step_by(4) {
                        pt.map(i * K4, (i + 1) * K4, K4, 1, RW).unwrap();
                    }
                    pt.map(G1 + t * M2, t * M2, M2, 1, RW).unwrap();
                    for i in (t..PAGES).step_by(8) {
                        assert_eq!(pt.unmap(i * K4, K4, 1), K4);
                        pt.map(i * K4, (i + 1) * K4, K4, 1, Prot::READ).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for i in 0..PAGES {
            let t = pt.translate(i * K4, Access::Read).unwrap();
            assert_eq!(t.paddr, (i + 1) * K4);
            // Pages i % 8 < 4 were remapped read-only.
            assert_eq!(t.prot.contains(Prot::WRITE), (i % 8) >= 4, "page {i}");
        }
        for t in 0..4 {
            assert_eq!(pt.translate(G1 + t * M2 + 5, Access::Write).unwrap().paddr, t * M2 + 5);
        }
    }

    #[test]
    fn concurrent_readers_and_writers() {
        let pt = Arc::new(Pt::new().unwrap());
        pt.map(0, 0x10_0000, K4, 64, RW).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (pt, stop) = (Arc::clone(&pt), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..64 {
                        assert_eq!(pt.translate(i * K4, Access::Read).unwrap().paddr, 0x10_0000 + i * K4);
                    }
                    // The churned range: either mapped right or not at all.
                    if let Ok(t) = pt.translate(G1 + 3 * K4, Access::Read) {
                        assert!(t.paddr == 3 * K4 || t.paddr == 3 * K4 + G1, "{t:?}");
                    }
                }
            })
        };
        for round in 0..2000u64 {
            let pgsize_is_big = round % 3 == 0;
            if pgsize_is_big {
                pt.map(G1, G1, M2, 1, RW).unwrap();
                assert_eq!(pt.unmap(G1, M2, 1), M2);
            } else {
                pt.map(G1, 0, K4, 16, RW).unwrap();
                assert_eq!(pt.unmap(G1, K4, 512), M2);
            }
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
    }

    // ---- property test against a reference model ----

    #[derive(Clone, Debug)]
    enum Op {
        Map { iova: u64, paddr: u64, level: u32, count: u64, write: bool },
        Unmap { iova: u64, level: u32, count: u64 },
    }

    /// IOVAs in a 16 MiB window (8 large pages) so operations collide.
    fn op() -> impl Strategy<Value = Op> {
        let level = prop_oneof![3 => Just(0u32), 1 => Just(1u32)];
        prop_oneof![
            (level.clone(), 0u64..4096, 0u64..1024, 1u64..40, any::<bool>()).prop_map(
                |(level, slot, pslot, count, write)| {
                    let size = Pt::level_size(level);
                    let count = if level == 1 { count % 3 + 1 } else { count };
                    let slot = slot % ((16 << 20) / size);
                    Op::Map { iova: slot * size, paddr: (pslot + 1) * size, level, count, write }
                }
            ),
            (level, 0u64..4096, 1u64..600).prop_map(|(level, slot, count)| {
                let size = Pt::level_size(level);
                let count = if level == 1 { count % 3 + 1 } else { count };
                Op::Unmap { iova: (slot % ((16 << 20) / size)) * size, level, count }
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 1..60)) {
            let pt = Pt::new().unwrap();
            let mut model = RefMap::new(M2);
            let mut touched = std::collections::BTreeSet::new();
            for op in &ops {
                match *op {
                    Op::Map { iova, paddr, level, count, write } => {
                        let size = Pt::level_size(level);
                        let prot = if write { RW } else { Prot::READ };
                        let got = pt.map(iova, paddr, size, count, prot);
                        let want = model.map(iova, paddr, size, count, prot);
                        prop_assert_eq!(got, want, "{:?}", op);
                        for p in 0..(size * count / K4) {
                            touched.insert(iova + p * K4);
                        }
                    }
                    Op::Unmap { iova, level, count } => {
                        let size = Pt::level_size(level);
                        let got = pt.unmap(iova, size, count);
                        let want = model.unmap(iova, size, count);
                        prop_assert_eq!(got, want, "{:?}", op);
                        for p in 0..(size * count / K4) {
                            touched.insert(iova + p * K4);
                        }
                    }
                }
            }
            for &page in &touched {
                for iova in [page, page + 0x7ff] {
                    let got = pt.translate(iova, Access::Read).ok().map(|t| (t.paddr, t.len, t.prot));
                    prop_assert_eq!(got, model.translate(iova), "iova {:#x}", iova);
                }
            }
            prop_assert_eq!(pt.is_empty(), model.is_empty());
            // Unmapping everything leaves an empty table.
            prop_assert_eq!(pt.unmap(0, M2, 16), 32 << 20);
            prop_assert!(pt.is_empty());
        }
    }

    /// Rough cost of a 4 KiB map + unmap pair. Run with
    /// `cargo test -p uiommufd-hw --release -- --ignored --nocapture timing`.
    #[test]
    #[ignore]
    fn timing_map_unmap_4k() {
        let pt = Pt::new().unwrap();
        const N: u64 = 1_000_000;
        // Warm up the nodes for a 4 MiB window.
        pt.map(0, 0, K4, 1024, RW).unwrap();
        pt.unmap(0, K4, 1024);
        let start = std::time::Instant::now();
        for i in 0..N {
            let iova = (i % 1024) * K4;
            pt.map(iova, iova, K4, 1, RW).unwrap();
            assert_eq!(pt.unmap(iova, K4, 1), K4);
        }
        let ns = start.elapsed().as_nanos() as f64 / N as f64;
        println!("pt (4-level, 4 KiB): map+unmap {ns:.1} ns/op");
        pt.map(0, 0, K4, 1024, RW).unwrap();
        let start = std::time::Instant::now();
        for i in 0..N {
            let iova = (i % 1024) * K4;
            std::hint::black_box(pt.translate(iova, Access::Read).ok());
        }
        let ns = start.elapsed().as_nanos() as f64 / N as f64;
        println!("pt (4-level, 4 KiB): translate {ns:.1} ns/op");
    }
}
