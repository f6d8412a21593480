//! Values by 32-bit ID, looked up without a lock, a reference count or a
//! locked instruction: the object table's read side
//! (`uiommufd_core::object`).
//!
//! A lookup ([`Index::get`]) keeps the value it found alive with a
//! *hazard*: it stores the value's address into one of its thread's
//! hazard cells, then loads the ID's cell again; the same address there
//! means the value is in use until the returned [`Ref`] clears the hazard
//! (a plain store). Removing a value ([`Index::take`]) marks its cell
//! (*deciding*), makes every thread's earlier stores visible, and scans
//! the hazard cells: a hazard on the value means it is in use (`EBUSY` for
//! the caller: the mark is cleared again); none means no lookup holds it or
//! can take it any more, and the value is handed back at once.
//!
//! Why a lookup cannot miss a removal (the order of a thread R's hazard
//! store and its second load of the cell against a take T):
//! - Where `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` works (the fork
//!   gate registers it), R stores its hazard with a plain store and a
//!   compiler fence before the load; T marks the cell with a sequentially
//!   consistent compare-and-swap, then calls `membarrier`, which returns
//!   once every other thread ran a full barrier at some point of its
//!   instruction stream during the call. If R's point follows its hazard
//!   store, T's scan sees the hazard (and T fails); else R's load follows
//!   the point and sees the mark (and R lets go of the value unread).
//! - Elsewhere R's store is a sequentially consistent swap and T's scan
//!   loads are sequentially consistent: one of the two sees the other.
//!
//! A lookup that finds the cell marked, or changed under it, gets
//! [`Lookup::Deciding`]: the caller waits for the remover (the object
//! table: on its lock) and looks again. A value is read only after its
//! hazard is confirmed, so a value handed back by `take` may be dropped at
//! once: no grace period.
//!
//! Hazard cells come in records of [`PER_RECORD`], one record per thread
//! at first (more while a thread holds more [`Ref`]s at once); records are
//! never freed, and a thread's records are reused by later threads. A
//! [`Ref`] may be dropped on any thread (the hazard cell is atomic).
//!
//! After `fork` the child's copies of other threads' hazards stay, as the
//! short-term counts they replace would (the values they hold stay busy).

use std::cell::{Cell as StdCell, RefCell};
use std::ptr::NonNull;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Hazard cells per record.
pub const PER_RECORD: usize = 8;

/// One thread's hazard cells (null: free), on their own cache lines.
#[repr(align(64))]
struct Record {
    cells: [AtomicPtr<()>; PER_RECORD],
    owned: AtomicBool,
    /// The next record of the global list.
    next: OnceLock<&'static Record>,
}

impl Record {
    const fn new() -> Record {
        Record {
            cells: [const { AtomicPtr::new(std::ptr::null_mut()) }; PER_RECORD],
            owned: AtomicBool::new(false),
            next: OnceLock::new(),
        }
    }

    fn all() -> impl Iterator<Item = &'static Record> {
        std::iter::successors(Some(&FIRST), |r| r.next.get().copied())
    }
}

static FIRST: Record = Record::new();
/// Records ever taken (a scan may stop after this many: they are taken
/// in list order).
static TAKEN: AtomicUsize = AtomicUsize::new(0);

/// Set once `membarrier` failed: lookups store their hazards fenced.
static FENCED_ONLY: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's records (the first one; more hang off `extra`).
    static MINE: Mine = const {
        Mine { first: StdCell::new(None), extra: RefCell::new(Vec::new()), light: StdCell::new(None) }
    };
}

struct Mine {
    first: StdCell<Option<&'static Record>>,
    /// Records this thread took when its first one was full (given back
    /// with the first one).
    extra: RefCell<Vec<&'static Record>>,
    /// Whether hazards are stored light (plain store), once decided.
    light: StdCell<Option<bool>>,
}

impl Drop for Mine {
    fn drop(&mut self) {
        let extra = std::mem::take(self.extra.get_mut());
        for r in self.first.get().into_iter().chain(extra) {
            r.owned.store(false, Ordering::Release);
        }
    }
}

/// Take a free record with a free cell (a record given back by a thread
/// that exited may hold hazards of `Ref`s that outlived it: those cells
/// stay taken until the Refs drop), and that cell.
#[cold]
fn take_record() -> (&'static Record, &'static AtomicPtr<()>) {
    let mut i = 0;
    let mut r = &FIRST;
    loop {
        if !r.owned.load(Ordering::Relaxed)
            && r.owned.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            TAKEN.fetch_max(i + 1, Ordering::SeqCst);
            match null_cell(r) {
                Some(c) => return (r, c),
                // Full of outliving hazards: keep it (owned) until our
                // thread exits, so that the search does not come back.
                None => MINE.with(|m| m.extra.borrow_mut().push(r)),
            }
        }
        i += 1;
        r = r.next.get_or_init(|| Box::leak(Box::new(Record::new())));
    }
}

/// A free cell of `r`.
fn null_cell(r: &'static Record) -> Option<&'static AtomicPtr<()>> {
    r.cells.iter().find(|c| c.load(Ordering::Relaxed).is_null())
}

/// Whether this thread may store hazards light.
#[inline(always)]
fn light(mine: &Mine) -> bool {
    match mine.light.get() {
        Some(l) => l && !FENCED_ONLY.load(Ordering::Relaxed),
        None => decide_light(mine),
    }
}

#[cold]
fn decide_light(mine: &Mine) -> bool {
    match crate::forkgate::expedited_membarrier() {
        Some(l) => {
            mine.light.set(Some(l));
            l && !FENCED_ONLY.load(Ordering::Relaxed)
        }
        // Another thread is deciding: fenced this time.
        None => false,
    }
}

/// A free hazard cell of this thread.
#[inline(always)]
fn free_cell(mine: &Mine) -> &'static AtomicPtr<()> {
    if let Some(r) = mine.first.get() {
        for c in &r.cells {
            if c.load(Ordering::Relaxed).is_null() {
                return c;
            }
        }
    }
    free_cell_slow(mine)
}

#[cold]
#[inline(never)]
fn free_cell_slow(mine: &Mine) -> &'static AtomicPtr<()> {
    if let Some(c) = mine.first.get().and_then(null_cell) {
        return c;
    }
    if let Some(c) = mine.extra.borrow().iter().find_map(|&r| null_cell(r)) {
        return c;
    }
    let (r, c) = take_record();
    if mine.first.get().is_none() {
        mine.first.set(Some(r));
    } else {
        mine.extra.borrow_mut().push(r);
    }
    c
}

/// A hazard cell for a lookup on a thread whose thread-locals are being
/// destroyed: a record of its own, never given back (rare: a lookup in a
/// thread-local destructor).
#[cold]
fn exiting_thread_hazard(p: *mut ()) -> &'static AtomicPtr<()> {
    let r = exiting_record();
    let c = null_cell(r).expect("a fresh record has free cells");
    c.swap(p, Ordering::SeqCst);
    c
}

/// A record nobody ever owned (without touching this thread's locals).
#[cold]
fn exiting_record() -> &'static Record {
    let mut i = 0;
    let mut r = &FIRST;
    loop {
        if r.cells.iter().all(|c| c.load(Ordering::Relaxed).is_null())
            && !r.owned.load(Ordering::Relaxed)
            && r.owned.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            TAKEN.fetch_max(i + 1, Ordering::SeqCst);
            if null_cell(r).is_some() {
                return r;
            }
        }
        i += 1;
        r = r.next.get_or_init(|| Box::leak(Box::new(Record::new())));
    }
}

/// Clears a hazard when dropped.
struct Held(&'static AtomicPtr<()>);

impl Drop for Held {
    #[inline(always)]
    fn drop(&mut self) {
        self.0.store(std::ptr::null_mut(), Ordering::Release);
    }
}

/// Chunk `c` holds the IDs `[B * (2^c - 1), B * (2^(c+1) - 1))`,
/// `B = 2^CHUNK_SHIFT`: `B << c` cells.
const CHUNK_SHIFT: u32 = 6;
/// Enough chunks for every `u32` ID.
const CHUNKS: usize = 33 - CHUNK_SHIFT as usize;
/// Set in a cell while a take decides.
const DECIDING: usize = 1;

/// A published value, in its own box; aligned so that [`DECIDING`] is
/// free in its address.
#[repr(align(8))]
struct Node<V>(V);

type Cell<V> = AtomicPtr<Node<V>>;

/// Values by `u32` ID, looked up without a lock (module doc). Writers may
/// race each other: every change is one atomic operation on a cell.
pub struct Index<V: Send + Sync + 'static> {
    chunks: [AtomicPtr<Cell<V>>; CHUNKS],
}

impl<V: Send + Sync + 'static> Default for Index<V> {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`Index::get`] found.
pub enum Lookup<U: ?Sized + Sync> {
    /// Published and picked: held until the Ref drops.
    Found(Ref<U>),
    /// No value under this ID.
    Missing,
    /// The caller's pick refused the value.
    Refused,
    /// A take is deciding about this ID, or finished meanwhile: look again
    /// once it is done.
    Deciding,
}

/// [`Index::take`] found the value in use (a [`Ref`] to it lives).
#[derive(Debug)]
pub struct InUse;

impl<V: Send + Sync + 'static> Index<V> {
    pub const fn new() -> Self {
        Index { chunks: [const { AtomicPtr::new(std::ptr::null_mut()) }; CHUNKS] }
    }

    /// Chunk and offset of `id`.
    #[inline(always)]
    fn locate(id: u32) -> (usize, usize) {
        let x = u64::from(id) + (1 << CHUNK_SHIFT);
        let bit = 63 - x.leading_zeros();
        ((bit - CHUNK_SHIFT) as usize, (x - (1 << bit)) as usize)
    }

    fn chunk_len(c: usize) -> usize {
        1 << (c + CHUNK_SHIFT as usize)
    }

    /// The cell of `id`, if its chunk exists.
    #[inline(always)]
    fn cell(&self, id: u32) -> Option<&Cell<V>> {
        let (c, off) = Self::locate(id);
        // Acquire: the chunk's null cells, written before it was published.
        let chunk = self.chunks[c].load(Ordering::Acquire);
        if chunk.is_null() {
            return None;
        }
        // SAFETY: a published chunk has `chunk_len(c)` cells, `off` is
        // below that (`locate`), and chunks are freed only in `Drop`.
        Some(unsafe { &*chunk.add(off) })
    }

    /// The cell of `id`, allocating its chunk if need be.
    fn cell_or_grow(&self, id: u32) -> &Cell<V> {
        if let Some(cell) = self.cell(id) {
            return cell;
        }
        let (c, _) = Self::locate(id);
        let cells: Box<[Cell<V>]> = (0..Self::chunk_len(c)).map(|_| AtomicPtr::new(std::ptr::null_mut())).collect();
        let new = Box::into_raw(cells) as *mut Cell<V>;
        // Release: the null cells before the chunk's address.
        if self.chunks[c].compare_exchange(std::ptr::null_mut(), new, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // Another writer published this chunk first.
            // SAFETY: ours from `Box::into_raw` above, never published.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(new, Self::chunk_len(c))) });
        }
        self.cell(id).expect("index chunk just published")
    }

    /// Publish `value` under `id`. Panics if `id` holds a value already.
    pub fn publish(&self, id: u32, value: V) {
        let node = Box::into_raw(Box::new(Node(value)));
        // Release: the value before its address.
        let won =
            self.cell_or_grow(id).compare_exchange(std::ptr::null_mut(), node, Ordering::AcqRel, Ordering::Acquire);
        if won.is_err() {
            // SAFETY: ours from `Box::into_raw` above, never published.
            drop(unsafe { Box::from_raw(node) });
            panic!("objindex: ID {id} published twice");
        }
    }

    /// Look `id` up: `pick` chooses what of the value the [`Ref`] shows
    /// (`None`: [`Lookup::Refused`], nothing held).
    #[inline(always)]
    pub fn get<U: ?Sized + Sync>(&self, id: u32, pick: impl FnOnce(&V) -> Option<&U>) -> Lookup<U> {
        let Some(cell) = self.cell(id) else { return Lookup::Missing };
        let p = cell.load(Ordering::Acquire);
        if p.is_null() {
            return Lookup::Missing;
        }
        if p as usize & DECIDING != 0 {
            return Lookup::Deciding;
        }
        let hazard = MINE.try_with(|mine| {
            let hazard = free_cell(mine);
            if light(mine) {
                // Release (a plain store on x86): this thread's reads of
                // the value its Ref held before in this cell come before a
                // take that sees the new hazard (and frees that value).
                hazard.store(p.cast(), Ordering::Release);
                // The store stays before the load below in the instruction
                // stream; `membarrier` in `take` does the rest.
                compiler_fence(Ordering::SeqCst);
            } else {
                hazard.swap(p.cast(), Ordering::SeqCst);
            }
            hazard
        });
        let hazard = match hazard {
            Ok(h) => h,
            Err(_) => exiting_thread_hazard(p.cast()),
        };
        // Clears the hazard unless the lookup returns a Ref (also if `pick`
        // panics).
        let held = Held(hazard);
        if cell.load(Ordering::SeqCst) != p {
            return Lookup::Deciding;
        }
        // SAFETY: `p` is still published after our hazard on it: a take
        // that did not see the hazard marked the cell before we loaded it
        // again (module doc), so no take hands `p` back while the hazard
        // stays.
        let value = unsafe { &(*p).0 };
        match pick(value) {
            Some(u) => {
                std::mem::forget(held);
                Lookup::Found(Ref { hazard, ptr: NonNull::from(u) })
            }
            None => Lookup::Refused,
        }
    }

    /// Unpublish the value under `id` and hand it back, unless a [`Ref`]
    /// to it lives (waiting a few hundred spins for one that is being
    /// given up: a lookup that saw this take deciding), or `confirm` says
    /// no once none does (asked while lookups still see the take deciding:
    /// what a Ref given up meanwhile did to the value is visible to it).
    /// `Ok(None)`: no value under `id`. Lookups meanwhile get
    /// [`Lookup::Deciding`].
    pub fn take(&self, id: u32, confirm: impl FnOnce(&V) -> bool) -> Result<Option<V>, InUse> {
        let Some(cell) = self.cell(id) else { return Ok(None) };
        let p = cell.load(Ordering::Acquire);
        if p.is_null() || p as usize & DECIDING != 0 {
            return Ok(None);
        }
        let marked = (p as usize | DECIDING) as *mut Node<V>;
        if cell.compare_exchange(p, marked, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return Ok(None);
        }
        barrier();
        let mut spins = 0;
        while hazard_on(p.cast()) {
            spins += 1;
            if spins > 256 {
                cell.store(p, Ordering::SeqCst);
                return Err(InUse);
            }
            std::hint::spin_loop();
        }
        // SAFETY: still ours to read: no take but this one hands `p` back
        // (the mark), and we did not.
        if !confirm(&unsafe { &*p }.0) {
            cell.store(p, Ordering::SeqCst);
            return Err(InUse);
        }
        cell.store(std::ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: from `Box::into_raw` in `publish`; no hazard on it and
        // none can be confirmed any more (the cell was marked before the
        // barrier and the scan), so no Ref points into it.
        Ok(Some(unsafe { Box::from_raw(p) }.0))
    }
}

/// Make every other thread's hazard stores so far visible to a scan, or
/// its later loads see what we stored before (module doc).
fn barrier() {
    loop {
        match crate::forkgate::expedited_membarrier() {
            Some(true) => {
                if !FENCED_ONLY.load(Ordering::SeqCst) && !crate::forkgate::expedited_barrier() {
                    // Cannot happen (a forked child registers again). Store
                    // hazards fenced from now on; light ones stored before
                    // this drain from store buffers long before a take
                    // deciding about them scans (at worst a use-after-free
                    // window of the store buffer's drain time: reported).
                    FENCED_ONLY.store(true, Ordering::SeqCst);
                    crate::sys::write_stderr(b"uiommufd: objindex: membarrier failed; object lookups go fenced\n");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                return;
            }
            // Fenced lookups: the sequentially consistent operations suffice.
            Some(false) => return,
            // Another thread decides whether `membarrier` works; a lookup
            // may see its answer before we do: wait for it.
            None => std::thread::yield_now(),
        }
    }
}

/// Whether any thread holds a hazard on `p`.
fn hazard_on(p: *mut ()) -> bool {
    let n = TAKEN.load(Ordering::SeqCst);
    Record::all().take(n).any(|r| r.cells.iter().any(|c| c.load(Ordering::SeqCst) == p))
}

impl<V: Send + Sync + 'static> Drop for Index<V> {
    fn drop(&mut self) {
        for (c, chunk) in self.chunks.iter_mut().enumerate() {
            let p = *chunk.get_mut();
            if p.is_null() {
                continue;
            }
            // SAFETY: allocated in `cell_or_grow` as a boxed slice of
            // `chunk_len(c)` cells; no lookup runs (`&mut self`).
            let cells = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, Self::chunk_len(c))) };
            for cell in cells.iter() {
                let node = (cell.load(Ordering::Acquire) as usize & !DECIDING) as *mut Node<V>;
                if node.is_null() {
                    continue;
                }
                // A Ref may outlive the index (its hazard was stored before
                // the `&mut self` that drops us, so this load sees it):
                // leave its value allocated.
                if hazard_on(node.cast()) {
                    continue;
                }
                // SAFETY: from `publish`; no lookup runs (`&mut self`) and
                // no Ref points into it (no hazard).
                drop(unsafe { Box::from_raw(node) });
            }
        }
    }
}

/// A value found by [`Index::get`] (what the lookup picked of it), kept
/// published while this lives: a hazard, cleared when dropped.
#[must_use]
pub struct Ref<U: ?Sized + Sync> {
    hazard: &'static AtomicPtr<()>,
    ptr: NonNull<U>,
}

// SAFETY: a Ref is a shared reference to `U: Sync` in a value of an index
// of `Send + Sync` values; its drop is one atomic store, which any thread
// may do.
unsafe impl<U: ?Sized + Sync> Send for Ref<U> {}
// SAFETY: as for `Send`: `&Ref` gives out only `&U`.
unsafe impl<U: ?Sized + Sync> Sync for Ref<U> {}

impl<U: ?Sized + Sync> std::ops::Deref for Ref<U> {
    type Target = U;
    #[inline(always)]
    fn deref(&self) -> &U {
        // SAFETY: borrowed from a published value that no take hands back
        // while our hazard stays (see `Index::get`).
        unsafe { self.ptr.as_ref() }
    }
}

impl<U: ?Sized + Sync> Drop for Ref<U> {
    #[inline(always)]
    fn drop(&mut self) {
        // Release: our reads of the value before a take that sees the cell
        // free frees it.
        self.hazard.store(std::ptr::null_mut(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    #[test]
    fn ids_across_chunks() {
        let ix: Index<u64> = Index::new();
        let ids = [0u32, 1, 63, 64, 191, 192, 1000, 1 << 16];
        for &id in &ids {
            ix.publish(id, u64::from(id) * 3);
        }
        for &id in &ids {
            let Lookup::Found(r) = ix.get(id, |v| Some(v)) else { panic!("{id} missing") };
            assert_eq!(*r, u64::from(id) * 3);
        }
        assert!(matches!(ix.get(2, |v| Some(v)), Lookup::Missing));
        assert!(matches!(ix.get(5000, |v| Some(v)), Lookup::Missing));
        assert!(matches!(ix.get(u32::MAX, |v| Some(v)), Lookup::Missing));
        assert!(matches!(ix.get(1, |_| None::<&u64>), Lookup::Refused));
        for c in 0..CHUNKS {
            let first = ((1u64 << c) - 1) << CHUNK_SHIFT;
            if first <= u64::from(u32::MAX) {
                assert_eq!(Index::<u64>::locate(first as u32), (c, 0));
                if c > 0 {
                    assert_eq!(Index::<u64>::locate((first - 1) as u32), (c - 1, Index::<u64>::chunk_len(c - 1) - 1));
                }
            }
        }
        assert_eq!(Index::<u64>::locate(u32::MAX), (CHUNKS - 1, 63));
    }

    #[test]
    fn a_held_value_is_not_taken() {
        let ix: Index<Arc<u64>> = Index::new();
        let v = Arc::new(7);
        ix.publish(5, Arc::clone(&v));
        let Lookup::Found(r) = ix.get(5, |v| Some(&**v)) else { panic!() };
        assert!(ix.take(5, |_| true).is_err(), "taken under a Ref");
        assert_eq!(*r, 7);
        // Many Refs at once (more than a record holds), on this thread.
        let many: Vec<_> = (0..3 * PER_RECORD)
            .map(|_| match ix.get(5, |v| Some(&**v)) {
                Lookup::Found(r) => r,
                _ => panic!(),
            })
            .collect();
        drop(r);
        assert!(ix.take(5, |_| true).is_err(), "taken under the later Refs");
        drop(many);
        let back = ix.take(5, |_| true).unwrap().expect("taken");
        assert!(Arc::ptr_eq(&back, &v));
        assert!(matches!(ix.get(5, |v| Some(&**v)), Lookup::Missing));
        assert!(ix.take(5, |_| true).unwrap().is_none());
        // A take that `confirm` refuses leaves the value published.
        ix.publish(6, Arc::new(8));
        assert!(ix.take(6, |_| false).is_err());
        assert!(matches!(ix.get(6, |v| Some(&**v)), Lookup::Found(_)));
        assert_eq!(*ix.take(6, |_| true).unwrap().unwrap(), 8);
    }

    #[test]
    fn a_ref_dropped_on_another_thread_frees_its_value() {
        let ix: Index<u64> = Index::new();
        ix.publish(1, 9);
        let Lookup::Found(r) = ix.get(1, |v| Some(v)) else { panic!() };
        std::thread::spawn(move || drop(r)).join().unwrap();
        assert_eq!(ix.take(1, |_| true).unwrap(), Some(9));
    }

    /// A thread exits while its Refs live (its records go back full);
    /// later threads taking records keep those hazards.
    #[test]
    fn refs_outliving_their_thread_keep_their_hazards() {
        let ix: Arc<Index<u64>> = Arc::new(Index::new());
        ix.publish(3, 30);
        ix.publish(4, 40);
        let get = |ix: &Index<u64>, id| match ix.get(id, |v| Some(v)) {
            Lookup::Found(r) => r,
            _ => panic!("{id} not found"),
        };
        // A thread leaves one hazard in its record.
        let outliving: Vec<Ref<u64>> = [1]
            .into_iter()
            .flat_map(|n| {
                let ix = Arc::clone(&ix);
                std::thread::spawn(move || (0..n).map(|_| get(&ix, 3)).collect::<Vec<_>>()).join().unwrap()
            })
            .collect();
        for _ in 0..4 {
            let ix2 = Arc::clone(&ix);
            std::thread::spawn(move || {
                let held: Vec<_> = (0..PER_RECORD + 1).map(|_| get(&ix2, 4)).collect();
                drop(held);
            })
            .join()
            .unwrap();
            assert!(ix.take(3, |_| true).is_err(), "a hazard of an exited thread was overwritten");
        }
        assert!(ix.take(3, |_| true).is_err());
        drop(outliving);
        // A thread leaves a full record: a later thread passes it by.
        let full: Vec<Ref<u64>> = {
            let ix = Arc::clone(&ix);
            std::thread::spawn(move || (0..PER_RECORD).map(|_| get(&ix, 3)).collect()).join().unwrap()
        };
        let ix2 = Arc::clone(&ix);
        std::thread::spawn(move || drop(get(&ix2, 4))).join().unwrap();
        assert!(ix.take(3, |_| true).is_err());
        drop(full);
        assert_eq!(ix.take(3, |_| true).unwrap(), Some(30));
        assert_eq!(ix.take(4, |_| true).unwrap(), Some(40));
    }

    #[test]
    fn a_ref_outliving_the_index_keeps_its_value() {
        let dropped = Arc::new(AtomicU64::new(0));
        struct D(u64, Arc<AtomicU64>);
        impl Drop for D {
            fn drop(&mut self) {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
        }
        let ix: Index<D> = Index::new();
        ix.publish(1, D(9, Arc::clone(&dropped)));
        ix.publish(2, D(10, Arc::clone(&dropped)));
        let Lookup::Found(r) = ix.get(1, |v| Some(&v.0)) else { panic!() };
        drop(ix);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert_eq!(*r, 9);
        drop(r);
    }

    /// [`lookups_race_take_and_free`] with hazards stored fenced (no
    /// `membarrier`), in a child process.
    #[test]
    fn lookups_race_take_and_free_fenced() {
        crate::forkgate::run_fenced_child("objindex::tests::lookups_race_take_and_free_in_child");
    }

    #[test]
    #[ignore = "run by lookups_race_take_and_free_fenced"]
    fn lookups_race_take_and_free_in_child() {
        assert_eq!(crate::forkgate::expedited_membarrier(), Some(false));
        lookups_race_take_and_free();
    }

    /// Lookups on two threads race takes and re-publishes of the same IDs:
    /// a value found is the current one of its ID while the Ref lives (its
    /// generation is current and it is not dropped), and a value is
    /// dropped only after its last Ref.
    #[test]
    fn lookups_race_take_and_free() {
        struct Item {
            gen: u64,
            freed: AtomicBool,
        }
        impl Drop for Item {
            fn drop(&mut self) {
                assert!(!self.freed.swap(true, Ordering::SeqCst), "dropped twice");
            }
        }
        const IDS: u32 = 4;
        let ix: Arc<Index<Item>> = Arc::new(Index::new());
        let gens: Arc<[AtomicU64]> = (0..IDS).map(|_| AtomicU64::new(0)).collect();
        for id in 0..IDS {
            ix.publish(id, Item { gen: 0, freed: AtomicBool::new(false) });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let found = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (ix, gens, stop, found) =
                    (Arc::clone(&ix), Arc::clone(&gens), Arc::clone(&stop), Arc::clone(&found));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for id in 0..IDS {
                            if let Lookup::Found(r) = ix.get(id, |v| Some(v)) {
                                let gen = r.gen;
                                assert_eq!(gen, gens[id as usize].load(Ordering::SeqCst));
                                assert!(!r.freed.load(Ordering::SeqCst));
                                // Held a while: no take may replace it.
                                for _ in 0..64 {
                                    std::hint::spin_loop();
                                }
                                assert_eq!(gen, gens[id as usize].load(Ordering::SeqCst), "replaced under a Ref");
                                assert!(!r.freed.load(Ordering::SeqCst));
                                found.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        let (mut taken, mut busy) = (0u64, 0u64);
        let mut round = 0u64;
        // Until both sides did plenty (the readers may start late).
        while taken < 20_000 || found.load(Ordering::Relaxed) < 20_000 {
            round += 1;
            assert!(round < 50_000_000, "no progress: {taken} takes, {busy} busy");
            let id = (round % u64::from(IDS)) as u32;
            match ix.take(id, |_| true) {
                Ok(Some(item)) => {
                    assert!(!item.freed.load(Ordering::SeqCst));
                    drop(item);
                    gens[id as usize].store(round, Ordering::SeqCst);
                    ix.publish(id, Item { gen: round, freed: AtomicBool::new(false) });
                    taken += 1;
                }
                Ok(None) => panic!("ID {id} vanished"),
                Err(InUse) => busy += 1,
            }
            if round.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
        readers.into_iter().for_each(|r| r.join().unwrap());
    }
}
