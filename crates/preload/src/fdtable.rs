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
//! Known limit: a signal handler that calls into the shim while its own
//! thread holds the lock would spin; the windows are a few instructions.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use uiommufd_dispatch::File;

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

/// Whether `fd` is served by us. One atomic load; may race with a close in
/// another thread, as any descriptor use can.
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
    if s.load(Ordering::Acquire) == 0 {
        return None;
    }
    read_lock();
    let raw = s.load(Ordering::Acquire);
    // SAFETY: a non-zero slot holds a value from Entry::into_raw whose
    // reference the slot owns; writers only release it after clearing the
    // slot under the write lock, which excludes us here.
    let out = (raw != 0).then(|| unsafe { Entry::clone_raw(raw) });
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
    if old == 0 {
        let n = OCCUPIED.fetch_add(1, Ordering::Relaxed) + 1;
        // Room for the fork handlers' snapshot, made now: they allocate
        // nothing.
        fork_server::reserve(n);
        crate::handoff::rewrite();
        Ok(None)
    } else {
        crate::handoff::rewrite();
        // SAFETY: `old` was stored by a previous install and its reference
        // is now ours.
        Ok(Some(unsafe { Entry::from_raw(old) }))
    }
}

/// Forget `fd`, returning what it referred to if it was ours.
pub fn remove(fd: i32) -> Option<Entry> {
    let s = slot(fd)?;
    if s.load(Ordering::Acquire) == 0 {
        return None;
    }
    write_lock();
    let old = s.swap(0, Ordering::AcqRel);
    write_unlock();
    if old == 0 {
        return None;
    }
    OCCUPIED.fetch_sub(1, Ordering::Relaxed);
    crate::handoff::rewrite();
    // SAFETY: `old` came from Entry::into_raw in `install_entry`; clearing
    // the slot under the write lock transferred its reference to us.
    Some(unsafe { Entry::from_raw(old) })
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
            if raw != 0 {
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
            if raw != 0 && out.len() < out.capacity() {
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
    if old == 0 {
        OCCUPIED.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    // SAFETY: `old` came from Entry::into_raw and the slot's reference is
    // now ours.
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
}
