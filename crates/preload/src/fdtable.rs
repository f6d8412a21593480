//! Descriptor number → served file.
//!
//! Layout: `CHUNKS` pointers, each to a lazily allocated chunk of
//! `CHUNK` slots; a slot holds `Arc::into_raw(Arc<File>)` (a file of this
//! process's engine), `Arc::into_raw(Arc<Remote>) | 1` (a file of the
//! parent's engine, inherited through `fork`: see [`crate::fork_server`])
//! or 0. Descriptor numbers past the table are never ours (opening one
//! fails with `EMFILE`).
//!
//! Concurrency:
//! - the fast path ("is this descriptor ours?") is one atomic load, no lock;
//! - turning a slot into an owned `Arc` and changing a slot happen under a
//!   tiny reader/writer spin lock whose critical sections hold no other lock,
//!   make no call and never allocate, so they cannot deadlock;
//! - `fork` cannot catch the lock half-held: a `pthread_atfork` prepare
//!   handler takes it for writing and both sides release it afterwards;
//! - a served file's teardown (the engine's close) runs after the lock is
//!   dropped;
//! - `fork` cannot catch an engine lock half-held either (an iommufd
//!   context's object table, say): every call into the engine holds an
//!   [`EngineGuard`], and the prepare handler first stops new ones and waits
//!   for those in flight, so the child never inherits a lock owned by a
//!   thread that does not exist in it. Calls forwarded to a parent's
//!   engine hold one too, so a fork never interrupts one halfway;
//! - with both held, the handlers let [`crate::fork_server`] snapshot the
//!   served descriptors for the child (into room reserved when descriptors
//!   are installed: the handlers allocate nothing); in the child the
//!   entries turn remote before the first look at the table (nothing to
//!   do, and no cost, when there are none).
//!
//! Borrowing (the `ioctl` path): a call inside the fork gate through a
//! plain slot ([`uiommufd_memory::forkgate::plain_slot`]) takes no lock and
//! no reference: it publishes the slot's value in its thread's hazard word
//! (a plain store), loads the slot again, and if it still holds the same
//! value uses the file by reference until it clears the word. Whoever
//! clears a slot of a local file ([`remove`], a replacing [`install`])
//! then calls `membarrier` ([`uiommufd_memory::forkgate::barrier_others`])
//! and waits until no other hazard word holds the value before it may drop
//! its reference (the file's teardown). Either a borrower's barrier point
//! falls after its hazard store, and the wait sees the store, or it falls
//! before its second load, which then sees the cleared slot and the
//! borrower takes the locked path instead: the gate's own argument. So
//! the engine's teardown still runs when the last descriptor closes,
//! after any call in flight on the file (the kernel's file reference
//! gives the same), and an `ioctl` costs no locked instruction here (four
//! with the lock and the reference: the lock's two and the count's two).
//! A close nested in a borrowed call of its own thread on the same file
//! (a signal handler) leaves the drop to that call's end.
//!
//! Known limits: a signal handler that calls into the shim while its own
//! thread holds the lock would spin; the windows are a few instructions.
//! A close waits for another thread's call on the same file even while
//! that thread is stopped (a debugger's breakpoint inside the call): the
//! kernel's close would return and leave the release to the call.

use std::sync::atomic::{compiler_fence, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use uiommufd_dispatch::File;

use uiommufd_memory::forkgate::SLOTS;

use crate::fork_server::{self, Remote};

const CHUNK: usize = 1024;
const CHUNKS: usize = 1024;
/// One past the largest descriptor number we can serve.
pub const MAX_FD: usize = CHUNK * CHUNKS;

type Chunk = [AtomicUsize; CHUNK];

static TABLE: [AtomicPtr<Chunk>; CHUNKS] = [const { AtomicPtr::new(std::ptr::null_mut()) }; CHUNKS];
/// Number of occupied slots: lets `closefrom`-style sweeps return at once in
/// programs that never opened anything of ours.
static OCCUPIED: AtomicUsize = AtomicUsize::new(0);

/// Reader count in the low bits, `WRITER` when a writer holds the lock.
static LOCK: AtomicU32 = AtomicU32::new(0);
const WRITER: u32 = 1 << 31;

fn read_lock() {
    loop {
        let v = LOCK.load(Ordering::Relaxed);
        if v & WRITER == 0 && LOCK.compare_exchange_weak(v, v + 1, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return;
        }
        std::hint::spin_loop();
    }
}

fn read_unlock() {
    LOCK.fetch_sub(1, Ordering::Release);
}

fn write_lock() {
    loop {
        if LOCK.compare_exchange_weak(0, WRITER, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            return;
        }
        std::hint::spin_loop();
    }
}

fn write_unlock() {
    LOCK.store(0, Ordering::Release);
}

/// Held across every call into the engine (open, ioctl, the teardown of a
/// file): the fork gate ([`uiommufd_memory::forkgate`]), so that the child
/// of a `fork` inherits no engine lock in the locked state.
pub struct EngineGuard(#[allow(dead_code)] uiommufd_memory::forkgate::Gate);

impl EngineGuard {
    pub fn enter() -> EngineGuard {
        ensure_atfork();
        EngineGuard(uiommufd_memory::forkgate::enter())
    }
}

extern "C" fn atfork_prepare() {
    // Stop new engine calls (and the other users of the gate), then wait
    // for the ones in flight, for a bounded time.
    uiommufd_memory::forkgate::close();
    write_lock();
    // A panic must not unwind into libc's fork (the snapshot is then
    // missing and the child keeps private copies).
    let _ = std::panic::catch_unwind(fork_server::prepare);
    uiommufd_memory::guard::fork_prepare();
}

fn atfork_release() {
    uiommufd_memory::guard::fork_done();
    write_unlock();
}

extern "C" fn atfork_parent() {
    let session = std::panic::catch_unwind(fork_server::parent_locked).unwrap_or(None);
    atfork_release();
    uiommufd_memory::forkgate::open_parent();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fork_server::parent(session)));
}

extern "C" fn atfork_child() {
    PID.store(raw_getpid(), Ordering::Relaxed);
    // The parent's other threads are not here; none was inside a call
    // (the gate drained them), so their words read 0 already.
    for h in &HAZARD {
        h.word.store(0, Ordering::Relaxed);
    }
    crate::handoff::child_after_fork();
    let _ = std::panic::catch_unwind(fork_server::child_locked);
    atfork_release();
    uiommufd_memory::forkgate::open_child();
}

static ATFORK: Once = Once::new();

/// This process's pid, as of load or the last `fork` (0: not known yet).
static PID: AtomicU32 = AtomicU32::new(0);

fn raw_getpid() -> u32 {
    // SAFETY: getpid has no preconditions (the system call: glibc's caches).
    unsafe { libc::syscall(libc::SYS_getpid) as u32 }
}

/// Whether this is a child made with `vfork` (or `clone` sharing our
/// memory) that has not yet called `exec`: it shares our table with its
/// parent but not its descriptors, so it must not change the table (see
/// the callers). `fork` children run the atfork handlers, which note their
/// pid.
pub fn in_vfork_child() -> bool {
    let known = PID.load(Ordering::Relaxed);
    known != 0 && known != raw_getpid()
}

pub(crate) fn ensure_atfork() {
    ATFORK.call_once(|| {
        PID.store(raw_getpid(), Ordering::Relaxed);
        fork_server::init();
        // SAFETY: registering plain extern "C" handlers; they touch our own
        // statics and, when descriptors are served, make the descriptors
        // the fork server needs.
        unsafe { libc::pthread_atfork(Some(atfork_prepare), Some(atfork_parent), Some(atfork_child)) };
    });
}

fn split(fd: i32) -> Option<(usize, usize)> {
    if fd < 0 || fd as usize >= MAX_FD {
        return None;
    }
    let fd = fd as usize;
    Some((fd / CHUNK, fd % CHUNK))
}

fn slot(fd: i32) -> Option<&'static AtomicUsize> {
    // A forked child's inherited descriptors become remote before anything
    // looks at them (see fork_server::child_locked).
    fork_server::apply_child_if_pending();
    raw_slot(fd)
}

/// [`slot`] as it is, for the fork code itself.
fn raw_slot(fd: i32) -> Option<&'static AtomicUsize> {
    let (c, i) = split(fd)?;
    let chunk = TABLE[c].load(Ordering::Acquire);
    if chunk.is_null() {
        return None;
    }
    // SAFETY: chunks are leaked on creation and never freed, so a non-null
    // pointer stays valid for the life of the process.
    Some(unsafe { &(*chunk)[i] })
}

fn slot_or_create(fd: i32) -> Option<&'static AtomicUsize> {
    fork_server::apply_child_if_pending();
    let (c, i) = split(fd)?;
    let mut chunk = TABLE[c].load(Ordering::Acquire);
    if chunk.is_null() {
        let fresh: Box<Chunk> = Box::new([const { AtomicUsize::new(0) }; CHUNK]);
        let fresh = Box::into_raw(fresh);
        match TABLE[c].compare_exchange(std::ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => chunk = fresh,
            Err(existing) => {
                // SAFETY: `fresh` came from Box::into_raw above and lost the
                // race, so nobody else has seen it.
                drop(unsafe { Box::from_raw(fresh) });
                chunk = existing;
            }
        }
    }
    // SAFETY: as in `slot`: chunks live forever once published.
    Some(unsafe { &(*chunk)[i] })
}

/// Whether `fd` is served by us (or being closed: see [`CLOSING`]). One
/// atomic load; may race with a close in another thread, as any
/// descriptor use can.
#[inline]
pub fn is_ours(fd: i32) -> bool {
    slot(fd).is_some_and(|s| s.load(Ordering::Acquire) != 0)
}

/// What a served descriptor refers to.
#[derive(Clone)]
pub enum Entry {
    /// A file of this process's engine.
    Local(Arc<File>),
    /// A file of the parent's engine, inherited through `fork`.
    Remote(Arc<Remote>),
}

const REMOTE_TAG: usize = 1;

/// The tag of a slot whose descriptor `close` is closing: taken out of the
/// table, the number not yet closed in the kernel (or just closed, and
/// perhaps reused by another thread's open). The other bits name the
/// closing thread ([`closer_mark`]). Never a value of [`Entry::into_raw`]
/// (8-byte aligned, with the remote tag at most).
const CLOSING: usize = 2;

/// Whether a slot value refers to a file (not empty, not closing).
#[inline]
fn live(raw: usize) -> bool {
    raw != 0 && raw & 3 != CLOSING
}

/// Whether a slot value is a closing mark.
#[inline]
fn closing(raw: usize) -> bool {
    raw & 3 == CLOSING
}

thread_local! {
    /// This thread's id (0 until asked).
    static TID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The closing mark of this thread.
fn closer_mark() -> usize {
    let tid = TID
        .try_with(|t| {
            if t.get() == 0 {
                // SAFETY: gettid has no preconditions.
                t.set(unsafe { libc::syscall(libc::SYS_gettid) } as u32);
            }
            t.get()
        })
        .unwrap_or(0);
    ((tid as usize) << 2) | CLOSING
}

impl Entry {
    fn into_raw(self) -> usize {
        match self {
            Entry::Local(f) => Arc::into_raw(f) as usize,
            Entry::Remote(r) => Arc::into_raw(r) as usize | REMOTE_TAG,
        }
    }

    /// # Safety
    /// `raw` came from [`Entry::into_raw`] and its reference is handed to
    /// the result.
    unsafe fn from_raw(raw: usize) -> Entry {
        if raw & REMOTE_TAG != 0 {
            // SAFETY: per the contract, an `Arc<Remote>` pointer, tagged.
            Entry::Remote(unsafe { Arc::from_raw((raw & !REMOTE_TAG) as *const Remote) })
        } else {
            // SAFETY: per the contract, an `Arc<File>` pointer.
            Entry::Local(unsafe { Arc::from_raw(raw as *const File) })
        }
    }

    /// # Safety
    /// `raw` is a slot value whose reference stays owned by the slot while
    /// this runs (a lock keeps writers out); the result owns a new one.
    unsafe fn clone_raw(raw: usize) -> Entry {
        if raw & REMOTE_TAG != 0 {
            let p = (raw & !REMOTE_TAG) as *const Remote;
            // SAFETY: per the contract: a live `Arc<Remote>` the slot owns.
            unsafe {
                Arc::increment_strong_count(p);
                Entry::Remote(Arc::from_raw(p))
            }
        } else {
            let p = raw as *const File;
            // SAFETY: as above, for an `Arc<File>`.
            unsafe {
                Arc::increment_strong_count(p);
                Entry::Local(Arc::from_raw(p))
            }
        }
    }
}

/// What `fd` refers to, if it is ours.
pub fn get_entry(fd: i32) -> Option<Entry> {
    let s = slot(fd)?;
    if !live(s.load(Ordering::Acquire)) {
        return None;
    }
    read_lock();
    let raw = s.load(Ordering::Acquire);
    // SAFETY: a live slot holds a value from Entry::into_raw whose
    // reference the slot owns; writers only release it after clearing the
    // slot under the write lock, which excludes us here.
    let out = live(raw).then(|| unsafe { Entry::clone_raw(raw) });
    read_unlock();
    out
}

/// The file of this process's engine behind `fd`, if it is one (a
/// descriptor inherited from a parent's engine is not).
pub fn get(fd: i32) -> Option<Arc<File>> {
    match get_entry(fd)? {
        Entry::Local(f) => Some(f),
        Entry::Remote(_) => None,
    }
}

/// One gate slot's words, on their own cache line (a borrowed call
/// writes the first and reads the second as it ends).
#[repr(align(64))]
struct Hazard {
    /// The local file value (`Arc::into_raw`) the slot's thread is using
    /// by reference, or 0 (see the module doc).
    word: AtomicUsize,
    /// A local file value whose last reference a close nested in that
    /// thread's borrowed call left for the call to drop, or 0.
    deferred: AtomicUsize,
}

static HAZARD: [Hazard; SLOTS] = [const { Hazard { word: AtomicUsize::new(0), deferred: AtomicUsize::new(0) } }; SLOTS];

/// What an `ioctl` on `fd` uses: a local file by reference (no lock, no
/// reference count), or an owned entry.
pub enum Use {
    Borrowed(Borrowed),
    Owned(Entry),
    /// Being closed by this very thread (a signal handler's call inside
    /// its close): the call fails with `EBADF`.
    Closing,
}

/// A local file used by reference, its hazard word set until dropped.
pub struct Borrowed {
    file: std::mem::ManuallyDrop<Arc<File>>,
    slot: usize,
}

impl Borrowed {
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
}

impl Drop for Borrowed {
    #[inline]
    fn drop(&mut self) {
        let h = &HAZARD[self.slot];
        h.word.store(0, Ordering::Release);
        if h.deferred.load(Ordering::Relaxed) != 0 {
            drop_deferred(self.slot);
        }
    }
}

#[cold]
fn drop_deferred(slot: usize) {
    let raw = HAZARD[slot].deferred.swap(0, Ordering::Relaxed);
    if raw != 0 {
        // SAFETY: a value from Entry::into_raw whose slot reference `retire`
        // handed to this thread's borrowed call, which has now ended.
        drop(unsafe { Entry::from_raw(raw) });
    }
}

/// What `fd` refers to for a call inside the fork gate (see the module
/// doc): by reference when this thread holds the gate through a plain slot
/// and the descriptor is a local file, else as [`get_entry`].
#[inline]
pub fn use_entry(fd: i32) -> Option<Use> {
    let s = slot(fd)?;
    loop {
        let raw = s.load(Ordering::Acquire);
        if raw == 0 {
            return None;
        }
        if closing(raw) {
            // This thread's own close (a signal handler's call in it): the
            // kernel's close is done or not begun; say it is done.
            if raw == closer_mark() {
                return Some(Use::Closing);
            }
            // Another thread's close finishes in a moment: then the number
            // is closed (`EBADF`) or another file's (which may be ours
            // again, or the kernel's).
            std::thread::yield_now();
            continue;
        }
        if raw & REMOTE_TAG == 0 {
            if let Some(i) = uiommufd_memory::forkgate::plain_slot() {
                let h = &HAZARD[i].word;
                // Not nested in a borrowed call of this thread (a signal
                // handler's): one word per thread.
                if h.load(Ordering::Relaxed) == 0 {
                    h.store(raw, Ordering::Relaxed);
                    // Keeps the store before the load below (the
                    // clearer's `membarrier` does the rest).
                    compiler_fence(Ordering::SeqCst);
                    if s.load(Ordering::Acquire) == raw {
                        // SAFETY: a local file value the slot still held
                        // after our hazard store: its clearer waits for
                        // the hazard word before dropping the slot's
                        // reference, so the file lives until `Borrowed`
                        // clears it; ManuallyDrop keeps us from releasing
                        // a reference we never took.
                        let file = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(raw as *const File) });
                        return Some(Use::Borrowed(Borrowed { file, slot: i }));
                    }
                    h.store(0, Ordering::Release);
                    // Changed meanwhile (closing, or another file): again.
                    continue;
                }
            }
        }
        return match get_entry(fd) {
            Some(e) => Some(Use::Owned(e)),
            // Closing meanwhile: as above.
            None if closing(s.load(Ordering::Acquire)) => continue,
            None => None,
        };
    }
}

/// A slot just gave up `raw` (its reference is the caller's now): wait
/// until no call borrows it. `false`: this thread's own borrowed call (a
/// nested close) does; the reference went to that call, which drops it.
fn retire(raw: usize) -> bool {
    if raw & REMOTE_TAG != 0 {
        return true;
    }
    uiommufd_memory::forkgate::barrier_others();
    let own = uiommufd_memory::forkgate::own_slot();
    for (i, h) in HAZARD.iter().enumerate() {
        if h.word.load(Ordering::Acquire) != raw {
            continue;
        }
        if own == Some(i) {
            // This thread's hazard word is written only by this thread;
            // the call it protects drops what we leave here.
            let prev = h.deferred.swap(raw, Ordering::Relaxed);
            if prev != 0 {
                // Not expected (the call drops what it was left when it
                // ends, and a second nested close finds the slot empty),
                // but then ours to drop.
                // SAFETY: a value from Entry::into_raw whose reference was
                // handed to this word.
                drop(unsafe { Entry::from_raw(prev) });
            }
            return false;
        }
        let mut spins = 0u32;
        while h.word.load(Ordering::Acquire) == raw {
            if spins < 128 {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
    true
}

/// Make `fd` refer to `file`. Returns what `fd` referred to before, if
/// anything (the caller drops it outside any lock). Fails if `fd` is
/// beyond the table.
pub fn install(fd: i32, file: Arc<File>) -> Result<Option<Entry>, Arc<File>> {
    install_entry(fd, Entry::Local(file)).map_err(|e| match e {
        Entry::Local(f) => f,
        Entry::Remote(_) => unreachable!("installed a local file"),
    })
}

/// [`install`] for any entry.
pub fn install_entry(fd: i32, entry: Entry) -> Result<Option<Entry>, Entry> {
    ensure_atfork();
    let Some(s) = slot_or_create(fd) else { return Err(entry) };
    let raw = entry.into_raw();
    write_lock();
    let old = s.swap(raw, Ordering::AcqRel);
    write_unlock();
    if !live(old) {
        let n = OCCUPIED.fetch_add(1, Ordering::Relaxed) + 1;
        // Room for the fork handlers' snapshot, made now: they allocate
        // nothing.
        fork_server::reserve(n);
        crate::handoff::rewrite();
        Ok(None)
    } else {
        crate::handoff::rewrite();
        if !retire(old) {
            return Ok(None);
        }
        // SAFETY: `old` was stored by a previous install and its reference
        // is now ours (no call borrows it any more).
        Ok(Some(unsafe { Entry::from_raw(old) }))
    }
}

/// Forget `fd`, returning what it referred to if it was ours.
pub fn remove(fd: i32) -> Option<Entry> {
    take(fd).and_then(Taken::finish)
}

/// What a descriptor referred to, taken out of the table but perhaps still
/// borrowed by calls in flight: [`Taken::finish`] waits for them (dropping
/// it does the same). `close` closes the number in between, so a call
/// racing it never finds the number open but not ours.
pub struct Taken {
    /// The slot's reference, not released before the wait.
    entry: std::mem::ManuallyDrop<Entry>,
    raw: usize,
    /// The slot, with this thread's closing mark until the descriptor is
    /// closed.
    slot: &'static AtomicUsize,
    mark: usize,
}

impl Taken {
    /// What the descriptor referred to.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The number is closed (or was never given up): the slot is free.
    pub fn reopen(&self) {
        // Unless an open that reused the number installed a file there.
        let _ = self.slot.compare_exchange(self.mark, 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Once the number is closed: free the slot, and wait until no call
    /// borrows the file; then it is the caller's (`None`: a call of this
    /// very thread borrows it, and drops it at its end).
    pub fn finish(self) -> Option<Entry> {
        self.reopen();
        let mut this = std::mem::ManuallyDrop::new(self);
        if !retire(this.raw) {
            return None;
        }
        // SAFETY: taken once, from a value `Drop` will never see.
        Some(unsafe { std::mem::ManuallyDrop::take(&mut this.entry) })
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.reopen();
        if retire(self.raw) {
            // SAFETY: dropped once, here.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.entry) };
        }
    }
}

/// Take `fd` out of the table (see [`Taken`]): the slot reads this
/// thread's closing mark until the `Taken` is finished or dropped, which
/// the caller does once the number is closed. An `ioctl` of another thread
/// on the number waits for that meanwhile (then the number is closed, or
/// another file's), so it sees what the kernel would: the file before the
/// close, `EBADF` or the new file after it.
pub fn take(fd: i32) -> Option<Taken> {
    let s = slot(fd)?;
    if !live(s.load(Ordering::Acquire)) {
        return None;
    }
    let mark = closer_mark();
    write_lock();
    let old = s.load(Ordering::Acquire);
    if live(old) {
        s.store(mark, Ordering::Release);
    }
    write_unlock();
    if !live(old) {
        return None;
    }
    OCCUPIED.fetch_sub(1, Ordering::Relaxed);
    crate::handoff::rewrite();
    // SAFETY: `old` came from Entry::into_raw in `install_entry`; clearing
    // the slot under the write lock transferred its reference to us (held,
    // not released, until no call borrows it).
    Some(Taken { entry: std::mem::ManuallyDrop::new(unsafe { Entry::from_raw(old) }), raw: old, slot: s, mark })
}

/// Call `f` with every served descriptor and what it refers to, for the
/// fork prepare handler, which holds the write lock (so no slot changes
/// meanwhile). Allocates nothing.
pub(crate) fn for_each_locked(mut f: impl FnMut(i32, Entry)) {
    if OCCUPIED.load(Ordering::Relaxed) == 0 {
        return;
    }
    for (c, chunk) in TABLE.iter().enumerate() {
        let chunk = chunk.load(Ordering::Acquire);
        if chunk.is_null() {
            continue;
        }
        // SAFETY: chunks live forever once published.
        for (i, s) in unsafe { &*chunk }.iter().enumerate() {
            let raw = s.load(Ordering::Acquire);
            if live(raw) {
                // SAFETY: the slot owns the reference and cannot change: the
                // caller holds the write lock.
                f((c * CHUNK + i) as i32, unsafe { Entry::clone_raw(raw) });
            }
        }
    }
}

/// Every served descriptor with what it refers to (for the exec handoff).
pub(crate) fn snapshot() -> Vec<(i32, Entry)> {
    let mut out = Vec::with_capacity(occupied() + 1);
    if occupied() == 0 {
        return out;
    }
    read_lock();
    for (c, chunk) in TABLE.iter().enumerate() {
        let chunk = chunk.load(Ordering::Acquire);
        if chunk.is_null() {
            continue;
        }
        // SAFETY: chunks live forever once published.
        for (i, s) in unsafe { &*chunk }.iter().enumerate() {
            let raw = s.load(Ordering::Acquire);
            if live(raw) && out.len() < out.capacity() {
                // SAFETY: the slot owns the reference; writers wait for the
                // read lock before they release it.
                out.push(((c * CHUNK + i) as i32, unsafe { Entry::clone_raw(raw) }));
            }
        }
    }
    read_unlock();
    out
}

/// How many descriptors are served now.
pub(crate) fn occupied() -> usize {
    OCCUPIED.load(Ordering::Relaxed)
}

/// Make the served descriptor `fd` refer to `entry`, under the write lock
/// (a forked child turning inherited entries into remote ones). Returns
/// the old entry.
pub(crate) fn replace(fd: i32, entry: Entry) -> Option<Entry> {
    let s = raw_slot(fd)?;
    write_lock();
    let old = s.swap(entry.into_raw(), Ordering::AcqRel);
    write_unlock();
    if !live(old) {
        OCCUPIED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    if !retire(old) {
        return None;
    }
    // SAFETY: `old` came from Entry::into_raw and the slot's reference is
    // now ours (no call borrows it any more).
    Some(unsafe { Entry::from_raw(old) })
}

/// Every descriptor of ours in `[first, last]`, for close_range/closefrom.
pub fn ours_in(first: u32, last: u32) -> Vec<i32> {
    if OCCUPIED.load(Ordering::Relaxed) == 0 {
        return Vec::new();
    }
    let last = (last as usize).min(MAX_FD - 1);
    let mut out = Vec::new();
    let mut fd = first as usize;
    while fd <= last {
        let c = fd / CHUNK;
        if TABLE[c].load(Ordering::Acquire).is_null() {
            fd = (c + 1) * CHUNK;
            continue;
        }
        if is_ours(fd as i32) {
            out.push(fd as i32);
        }
        fd += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use uiommufd_dispatch::Node;

    #[test]
    fn install_get_remove() {
        let f = Arc::new(File::open(Node::Iommu));
        assert!(!is_ours(5000));
        assert!(matches!(install(5000, Arc::clone(&f)), Ok(None)));
        assert!(is_ours(5000));
        let g = get(5000).unwrap();
        assert!(Arc::ptr_eq(&f, &g));
        // A dup shares the file.
        assert!(install(5001, Arc::clone(&f)).is_ok());
        assert_eq!(ours_in(4999, 6000), vec![5000, 5001]);
        assert!(matches!(remove(5000), Some(Entry::Local(r)) if Arc::ptr_eq(&r, &f)));
        assert!(remove(5000).is_none());
        assert!(remove(5001).is_some());
        assert!(get(5001).is_none());
        assert!(install(MAX_FD as i32, f).is_err(), "past the table");
        assert!(!is_ours(-1));
    }

    /// A borrowed file outlives the close that removes its last descriptor
    /// in another thread: the close waits for the borrowing call, and the
    /// file is dropped when it returns (not before, not never).
    #[test]
    fn a_close_waits_for_a_borrowing_call() {
        use std::sync::atomic::AtomicBool;
        let f = Arc::new(File::open(Node::Iommu));
        let weak = Arc::downgrade(&f);
        assert!(install(7100, f).is_ok());
        let gate = EngineGuard::enter();
        let Some(Use::Borrowed(b)) = use_entry(7100) else {
            // Not the plain mode (no membarrier here): nothing to test.
            return;
        };
        let closed = Arc::new(AtomicBool::new(false));
        let c2 = Arc::clone(&closed);
        let closer = std::thread::spawn(move || {
            let _g = EngineGuard::enter();
            let e = remove(7100);
            c2.store(true, Ordering::SeqCst);
            drop(e);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!closed.load(Ordering::SeqCst), "the close waited for the call");
        assert!(weak.upgrade().is_some(), "alive while the call runs");
        drop(b);
        closer.join().unwrap();
        assert!(closed.load(Ordering::SeqCst));
        assert!(weak.upgrade().is_none(), "the last reference went with the close");
        drop(gate);
    }

    /// A close nested in a borrowed call of the same thread (as from a
    /// signal handler) leaves the file to the call, which drops it at its
    /// end.
    #[test]
    fn a_nested_close_leaves_the_file_to_the_call() {
        let f = Arc::new(File::open(Node::Iommu));
        let weak = Arc::downgrade(&f);
        assert!(install(7200, f).is_ok());
        let _gate = EngineGuard::enter();
        let Some(Use::Borrowed(b)) = use_entry(7200) else { return };
        assert!(remove(7200).is_none(), "the reference went to the call");
        assert!(!is_ours(7200));
        assert!(weak.upgrade().is_some(), "alive while the call runs");
        drop(b);
        assert!(weak.upgrade().is_none(), "dropped at the call's end");
    }
}
