//! Reading `/proc` files (maps, stat, status) without a descriptor in the
//! program's table.
//!
//! The engine reads `/proc/PID/maps` and `/proc/PID/stat` during calls (a
//! pin's check of the range, a forked child's liveness), from the program's
//! threads and from the fork server's. A descriptor opened for that takes
//! the lowest free number for an instant: another thread of the program
//! that opens a file then gets the next number, and one listing
//! `/proc/self/fd` sees a descriptor it did not open. Neither happens with
//! the kernel. So the reads run on a helper thread with a descriptor table
//! of its own (`close_range(0, ~0, CLOSE_RANGE_UNSHARE)`: a new table,
//! none of the program's descriptors copied into it), started on first
//! use; the caller waits for the text.
//!
//! Fork: the helper thread is not in the child. The child handler
//! ([`after_fork_child`], from [`crate::forkgate::open_child`]) forgets it
//! (its queue may have been copied locked); the child starts its own on
//! first use. A `vfork` child (our memory, its own copy of the table, no
//! handler run) reads directly: no other thread shares its table.
//! Without `CLOSE_RANGE_UNSHARE` (Linux before 5.9) or a thread, the read
//! is direct, as before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// One read the helper runs for a caller.
struct Request {
    path: String,
    answer: Mutex<Option<std::io::Result<String>>>,
    done: Condvar,
}

/// The helper of one process.
struct Helper {
    pid: u32,
    /// The helper thread's id, once it runs (0 before).
    tid: std::sync::atomic::AtomicI32,
    queue: Mutex<VecDeque<Arc<Request>>>,
    more: Condvar,
}

impl Helper {
    fn new(pid: u32) -> Helper {
        Helper { pid, tid: 0.into(), queue: Mutex::new(VecDeque::new()), more: Condvar::new() }
    }
}

/// This process's helper (null: none yet). Leaked when replaced: a forked
/// child's copy may hold a lock of a thread it does not have.
static HELPER: AtomicPtr<Helper> = AtomicPtr::new(std::ptr::null_mut());

fn raw_getpid() -> u32 {
    // SAFETY: getpid has no preconditions (the system call: glibc caches
    // it, and a vfork child must see its own).
    unsafe { libc::syscall(libc::SYS_getpid) as u32 }
}

/// The process that may start a helper: the first to ask, then each forked
/// child (see [`after_fork_child`]). A `vfork` child, which shares our
/// memory but runs no fork handler, is never it: it reads directly.
static OWNER: AtomicU32 = AtomicU32::new(0);

/// In a forked child (single-threaded, from the fork handler): the parent's
/// helper is not here.
pub fn after_fork_child() {
    OWNER.store(raw_getpid(), Ordering::Release);
    HELPER.store(std::ptr::null_mut(), Ordering::Release);
}

/// This process's helper, started if there is none; `None` in a `vfork`
/// child or when no thread can be started.
fn helper() -> Option<&'static Helper> {
    let pid = raw_getpid();
    // The first to ask becomes the owner (`Ok`: the CAS took 0 to `pid`);
    // otherwise the owner must be us.
    match OWNER.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {}
        Err(owner) if owner == pid => {}
        Err(_) => return None,
    }
    let cur = HELPER.load(Ordering::Acquire);
    if !cur.is_null() {
        // SAFETY: helpers are leaked, never freed.
        let h = unsafe { &*cur };
        return (h.pid == pid).then_some(h);
    }
    let fresh: &'static Helper = Box::leak(Box::new(Helper::new(pid)));
    if let Err(other) = HELPER.compare_exchange(
        std::ptr::null_mut(),
        fresh as *const Helper as *mut Helper,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: as above; `fresh` stays leaked (a few bytes, once).
        let h = unsafe { &*other };
        return (h.pid == pid).then_some(h);
    }
    if !spawn(fresh) {
        // Every later read is direct: mark the helper as another process's.
        let dead: &'static Helper = Box::leak(Box::new(Helper::new(0)));
        HELPER.store(dead as *const Helper as *mut Helper, Ordering::Release);
        return None;
    }
    Some(fresh)
}

/// Start the helper thread with every signal blocked (the program's
/// signals are for its own threads) but glibc's internal ones (32, 33:
/// thread cancellation and `setxid`, which must reach every thread).
fn spawn(h: &'static Helper) -> bool {
    // SAFETY: sigset_t is plain data; sigfillset/sigdelset initialise it.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: initialising our own set; the system call changes only this
    // thread's mask (not the interposed sigprocmask), restored below.
    unsafe {
        libc::sigfillset(&mut all);
        libc::sigdelset(&mut all, 32);
        libc::sigdelset(&mut all, 33);
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_BLOCK, &all, &mut old, 8);
    }
    let started = std::thread::Builder::new().name("uiommufd-procfs".into()).spawn(move || serve(h)).is_ok();
    // SAFETY: restoring the mask saved above.
    unsafe {
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &old, std::ptr::null_mut::<libc::sigset_t>(), 8)
    };
    started
}

fn serve(h: &'static Helper) {
    // SAFETY: close_range on this thread's table only; with UNSHARE the
    // thread first gets a table of its own holding none of the program's
    // descriptors (first = 0: nothing below it is copied).
    // Failing (an old kernel), the reads below are direct, as before.
    let _ = unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, libc::CLOSE_RANGE_UNSHARE) };
    h.tid.store(crate::sys::gettid(), Ordering::Release);
    loop {
        let req = {
            let mut q = h.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(r) = q.pop_front() {
                    break r;
                }
                q = h.more.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let text = read_direct(&req.path);
        *req.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
        req.done.notify_one();
    }
}

/// Read `path` with the system calls themselves (not the shim's
/// interposed `open`, which has nothing to serve here).
fn read_direct(path: &str) -> std::io::Result<String> {
    let c = std::ffi::CString::new(path).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: a NUL-terminated path; openat touches no other memory.
    let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = fd as i32;
    let mut out = Vec::with_capacity(4096);
    let res = loop {
        out.reserve(4096);
        let spare = out.spare_capacity_mut();
        // SAFETY: reading into the vector's spare capacity, of that length.
        let n = unsafe { libc::syscall(libc::SYS_read, fd, spare.as_mut_ptr(), spare.len()) };
        match n {
            0 => break Ok(()),
            // SAFETY: the kernel initialised the `n` bytes it read.
            n if n > 0 => unsafe { out.set_len(out.len() + n as usize) },
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => break Err(std::io::Error::last_os_error()),
        }
    };
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    res?;
    String::from_utf8(out).map_err(|_| std::io::ErrorKind::InvalidData.into())
}

/// The contents of `path` (a small text file under `/proc`), read without
/// a descriptor of the program's table (see the module doc).
pub fn read_to_string(path: String) -> std::io::Result<String> {
    let Some(h) = helper() else { return read_direct(&path) };
    let req = Arc::new(Request { path, answer: Mutex::new(None), done: Condvar::new() });
    h.queue.lock().unwrap_or_else(|p| p.into_inner()).push_back(Arc::clone(&req));
    h.more.notify_one();
    let mut answer = req.answer.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(text) = answer.take() {
            return text;
        }
        answer = req.done.wait(answer).unwrap_or_else(|p| p.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fds_of_thread(tid: i32) -> usize {
        std::fs::read_dir(format!("/proc/self/task/{tid}/fd")).unwrap().count()
    }

    #[test]
    fn reads_what_a_direct_read_does_from_a_table_of_its_own() {
        let direct = std::fs::read_to_string("/proc/self/stat").unwrap();
        let helped = read_to_string("/proc/self/stat".into()).unwrap();
        // The same process (the pid is the first field).
        assert_eq!(direct.split(' ').next(), helped.split(' ').next());
        assert!(read_to_string("/proc/self/maps".into()).unwrap().contains("[stack]"));
        assert_eq!(read_to_string("/nonexistent/x".into()).unwrap_err().kind(), std::io::ErrorKind::NotFound);
        // The helper's table is its own, and empty between reads; ours
        // holds at least the standard descriptors.
        let tid = helper().unwrap().tid.load(Ordering::Acquire);
        assert!(tid > 0);
        assert!(fds_of_thread(crate::sys::gettid()) >= 3);
        assert_eq!(fds_of_thread(tid), 0, "the helper thread shares our descriptor table");
    }

    /// The very first read of a process (the one that makes it the owner)
    /// goes through the helper too. It used to be read directly: the
    /// owner CAS's success (`Ok(0)`) was taken for another owner, so a
    /// program's first /proc read by the shim (e.g. a madvise hook's look
    /// at /proc/self/maps) put a descriptor at its lowest free number.
    #[test]
    fn the_first_read_of_a_process_goes_through_the_helper() {
        // A forked child starts as a fresh process would: no owner, no
        // helper (glibc's fork leaves malloc usable in the child).
        // SAFETY: the child only resets our statics, reads, and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            OWNER.store(0, Ordering::Release);
            HELPER.store(std::ptr::null_mut(), Ordering::Release);
            let me = raw_getpid();
            let ok = read_to_string("/proc/self/stat".into()).is_ok_and(|t| t.starts_with(&format!("{me} ")));
            let cur = HELPER.load(Ordering::Acquire);
            // SAFETY: helpers are leaked, never freed.
            let served = !cur.is_null() && unsafe { (*cur).pid == me && (*cur).tid.load(Ordering::Acquire) > 0 };
            // SAFETY: leaving the forked child without running the
            // harness's exit path.
            unsafe { libc::_exit(if ok && served { 0 } else { 1 }) };
        }
        let mut st = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "the first read did not use the helper (status {st:#x})"
        );
    }
}
