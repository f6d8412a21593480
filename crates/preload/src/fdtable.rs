//! Descriptor number → served file.
//!
//! Layout: `CHUNKS` pointers, each to a lazily allocated chunk of
//! `CHUNK` slots; a slot holds `Arc::into_raw(Arc<File>)` or 0. Descriptor
//! numbers past the table are never ours (opening one fails with `EMFILE`).
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
//!   thread that does not exist in it.
//!
//! Known limit: a signal handler that calls into the shim while its own
//! thread holds the lock would spin; the windows are a few instructions.

use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

use uiommufd_dispatch::File;

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

/// Calls into the engine in flight (low bits), and `WRITER` while a fork is
/// being prepared. See [`EngineGuard`].
static ENGINE: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// How many [`EngineGuard`]s this thread holds (engine calls may nest).
    static ENGINE_DEPTH: Cell<u32> = const { Cell::new(0) };
}

fn backoff(spins: &mut u32) {
    if *spins < 64 {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Held across every call into the engine (open, ioctl, the teardown of a
/// file). `fork` waits until no thread holds one, so that the child
/// inherits no engine lock in the locked state.
pub struct EngineGuard(());

impl EngineGuard {
    pub fn enter() -> EngineGuard {
        ensure_atfork();
        let depth = ENGINE_DEPTH.with(|d| d.replace(d.get() + 1));
        if depth == 0 {
            let mut spins = 0;
            loop {
                let v = ENGINE.load(Ordering::Relaxed);
                if v & WRITER == 0
                    && ENGINE.compare_exchange_weak(v, v + 1, Ordering::Acquire, Ordering::Relaxed).is_ok()
                {
                    break;
                }
                backoff(&mut spins);
            }
        }
        EngineGuard(())
    }
}

impl Drop for EngineGuard {
    fn drop(&mut self) {
        if ENGINE_DEPTH.with(|d| d.replace(d.get() - 1)) == 1 {
            ENGINE.fetch_sub(1, Ordering::Release);
        }
    }
}

/// The engine calls the forking thread itself is in (0 or 1): a fork from
/// inside one must not wait for itself.
fn own_engine_calls() -> u32 {
    ENGINE_DEPTH.with(|d| (d.get() > 0) as u32)
}

extern "C" fn atfork_prepare() {
    // Stop new engine calls, then wait for the ones in flight.
    let mut spins = 0;
    loop {
        let v = ENGINE.load(Ordering::Relaxed);
        if v & WRITER == 0 && ENGINE.compare_exchange_weak(v, v | WRITER, Ordering::Acquire, Ordering::Relaxed).is_ok()
        {
            break;
        }
        backoff(&mut spins);
    }
    let own = own_engine_calls();
    while ENGINE.load(Ordering::Acquire) != WRITER | own {
        backoff(&mut spins);
    }
    write_lock();
}

extern "C" fn atfork_release() {
    write_unlock();
    ENGINE.store(own_engine_calls(), Ordering::Release);
}

static ATFORK: Once = Once::new();

fn ensure_atfork() {
    ATFORK.call_once(|| {
        // SAFETY: registering plain extern "C" handlers that only touch the
        // static lock word.
        unsafe { libc::pthread_atfork(Some(atfork_prepare), Some(atfork_release), Some(atfork_release)) };
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

/// The file behind `fd`, if it is ours.
pub fn get(fd: i32) -> Option<Arc<File>> {
    let s = slot(fd)?;
    if s.load(Ordering::Acquire) == 0 {
        return None;
    }
    read_lock();
    let raw = s.load(Ordering::Acquire) as *const File;
    let out = if raw.is_null() {
        None
    } else {
        // SAFETY: a non-zero slot holds a pointer from Arc::into_raw whose
        // reference the slot owns; writers only release it after clearing
        // the slot under the write lock, which excludes us here.
        unsafe {
            Arc::increment_strong_count(raw);
            Some(Arc::from_raw(raw))
        }
    };
    read_unlock();
    out
}

/// Make `fd` refer to `file`. Returns the file `fd` referred to before, if
/// any (the caller drops it outside any lock). Fails if `fd` is beyond the
/// table.
pub fn install(fd: i32, file: Arc<File>) -> Result<Option<Arc<File>>, Arc<File>> {
    ensure_atfork();
    let Some(s) = slot_or_create(fd) else { return Err(file) };
    let raw = Arc::into_raw(file) as usize;
    write_lock();
    let old = s.swap(raw, Ordering::AcqRel);
    write_unlock();
    if old == 0 {
        OCCUPIED.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    } else {
        // SAFETY: `old` was stored by a previous install and its reference
        // is now ours.
        Ok(Some(unsafe { Arc::from_raw(old as *const File) }))
    }
}

/// Forget `fd`, returning its file if it was ours.
pub fn remove(fd: i32) -> Option<Arc<File>> {
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
    // SAFETY: `old` came from Arc::into_raw in `install`; clearing the slot
    // under the write lock transferred its reference to us.
    Some(unsafe { Arc::from_raw(old as *const File) })
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
        assert!(Arc::ptr_eq(&remove(5000).unwrap(), &f));
        assert!(remove(5000).is_none());
        assert!(remove(5001).is_some());
        assert!(get(5001).is_none());
        assert!(install(MAX_FD as i32, f).is_err(), "past the table");
        assert!(!is_ours(-1));
    }
}
