//! `uiommufd run --inspect` (`UIOMMUFD_INSPECT=1`): a control socket that
//! `uiommufd inspect PID` asks what the engine of this process holds.
//!
//! Opened only when asked, at the process's first open of a served node
//! (before it there is nothing to show): `inspect-PID.sock` in
//! `uiommufd_dispatch::inspect::socket_dir()` (`$XDG_RUNTIME_DIR/uiommufd`
//! or `/tmp/uiommufd-UID`), a directory we create owner-only and refuse if
//! anyone else could use it; the socket is owner-only too, and a peer of
//! another user (root aside) is hung up on.
//!
//! Two threads, both with every signal blocked (the program's handlers
//! never run on them):
//!
//! - the socket thread has a descriptor table of its own
//!   (`close_range(CLOSE_RANGE_UNSHARE)`, which copies none of the
//!   program's descriptors): the listening socket and each connection
//!   live there, so the program never sees a descriptor of ours, not even
//!   for an instant (its next `open` gets the number it would get on the
//!   kernel), cannot close ours with `close_range`/`closefrom`, and a
//!   forked child inherits none. It uses system calls only, never libc's
//!   wrappers, which the shim serves: a number of its table may be a
//!   served descriptor's number in the program's. It accepts one
//!   connection at a time and reads one request line:
//!   - `state`: the snapshot (`uiommufd_dispatch::inspect::Snapshot`);
//!   - `pt CONTEXT HWPT IOVA LENGTH`: that HWPT's page-table leaves;
//! - the worker, in the program's descriptor table, answers them inside
//!   the fork gate like any engine call (a `fork` waits for it; the
//!   objects it looks at are shared, not borrowed, and one it happens to
//!   release last is torn down there, where the program's descriptors
//!   are), and hands the text back; the socket thread writes it outside
//!   the gate, so a slow reader never holds up a `fork`.
//!
//! After `fork` the child has neither thread nor any descriptor of the
//! socket; it opens its own control socket at its own first open of a
//! served node (the descriptors it inherited are served by the parent's
//! engine, and show in the parent's state). After `exec` the new image
//! opens a new one under the same PID. The socket is removed when the
//! process exits normally (and by `uiommufd run` after the program).

use std::ffi::CString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use uiommufd_dispatch::inspect;

/// The pid the socket was opened for (0: none).
static STARTED: AtomicI32 = AtomicI32::new(0);

fn wanted() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("UIOMMUFD_INSPECT").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Open the control socket if `UIOMMUFD_INSPECT` asks for it and this
/// process has none yet. Never fails the caller (a failure is reported on
/// stderr: it was asked for).
pub fn start_once() {
    if !wanted() {
        return;
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if STARTED.swap(pid, Ordering::AcqRel) == pid {
        return;
    }
    let r = std::panic::catch_unwind(|| start(pid as u32)).unwrap_or_else(|_| Err("panicked".into()));
    if let Err(e) = r {
        uiommufd_memory::sys::write_stderr(format!("uiommufd: no control socket for inspect: {e}\n").as_bytes());
    }
}

/// The directory, made owner-only; refused if it is not ours alone.
fn own_dir() -> Result<std::path::PathBuf, String> {
    let dir = inspect::socket_dir();
    let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(format!("{} is not a directory only its owner (uid {uid}) can use", dir.display()));
    }
    Ok(dir)
}

/// A request for the worker and where its answer goes.
type Job = (String, mpsc::Sender<String>);

fn start(pid: u32) -> Result<(), String> {
    let dir = own_dir()?;
    let path = inspect::socket_path(&dir, pid);
    let cpath = CString::new(path.clone().into_os_string().into_encoded_bytes()).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&path);
    let (jobs, queue) = mpsc::channel::<Job>();
    let (ready, listening) = mpsc::channel::<Result<(), String>>();
    let sock_path = cpath.clone();
    // Both threads start with every signal blocked: none of the program's
    // may be delivered to them before they could block it themselves.
    with_signals_blocked(|| -> Result<(), String> {
        std::thread::Builder::new()
            .name("uiommufd-inspect".into())
            .spawn(move || worker(queue))
            .map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("uiommufd-inspect-socket".into())
            .spawn(move || listen(&sock_path, &ready, &jobs))
            .map_err(|e| e.to_string())?;
        Ok(())
    })?;
    listening
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| "the socket thread did not start".to_string())?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    remember_for_exit(pid, cpath);
    Ok(())
}

fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t values of our own, filled and passed to
    // pthread_sigmask, which reads the first and writes the second.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// Remove the socket when the process exits normally (a forked child,
/// which inherits the registration, removes only its own).
fn remember_for_exit(pid: u32, path: CString) {
    static PATH: Mutex<Option<(u32, CString)>> = Mutex::new(None);
    extern "C" fn unlink_at_exit() {
        // try_lock: a child forked while another thread held it must not
        // hang in exit.
        if let Ok(g) = PATH.try_lock() {
            if let Some((pid, p)) = g.as_ref() {
                if *pid == std::process::id() {
                    // SAFETY: a NUL-terminated path we own.
                    unsafe { libc::unlink(p.as_ptr()) };
                }
            }
        }
    }
    let Ok(mut g) = PATH.try_lock() else { return };
    if g.replace((pid, path)).is_none() {
        // SAFETY: registering a function without preconditions.
        unsafe { libc::atexit(unlink_at_exit) };
    }
}

/// The worker: each request answered inside the fork gate.
fn worker(queue: mpsc::Receiver<Job>) {
    while let Ok((line, reply)) = queue.recv() {
        let answer = std::panic::catch_unwind(|| {
            let _engine = crate::fdtable::EngineGuard::enter();
            request(&line)
        })
        .unwrap_or_else(|_| "error the request panicked\n".into());
        let _ = reply.send(answer);
    }
}

/// The answer to one request line.
fn request(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["state"] => inspect::Snapshot::now().to_text(),
        ["pt", ctx, hwpt, iova, len] => {
            let n = |s: &str| inspect::parse_num(s).ok_or(format!("not a number: {s}"));
            let r = (|| inspect::page_table(n(ctx)? as u32, n(hwpt)? as u32, n(iova)?, n(len)?, 4096))();
            r.unwrap_or_else(|e| format!("error {e}\n"))
        }
        _ => format!("error unknown request {line:?} (state, pt CONTEXT HWPT IOVA LENGTH)\n"),
    }
}

/// The raw system calls of the socket thread (see the module doc: no
/// libc wrapper the shim serves).
mod sys {
    use std::os::fd::RawFd;

    fn ret(r: libc::c_long) -> Result<libc::c_long, std::io::Error> {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }

    /// A descriptor table of this thread's own, with nothing in it.
    pub fn own_empty_table() -> Result<(), std::io::Error> {
        // SAFETY: close_range touches no memory; with CLOSE_RANGE_UNSHARE
        // it closes in this thread's new private table only.
        ret(unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, libc::CLOSE_RANGE_UNSHARE) }).map(drop)
    }

    pub fn close(fd: RawFd) {
        // SAFETY: closing a descriptor of this thread's own table.
        unsafe { libc::syscall(libc::SYS_close, fd) };
    }

    /// A listening stream socket bound at `path`, owner-only.
    pub fn listen_at(path: &std::ffi::CStr) -> Result<RawFd, std::io::Error> {
        // SAFETY: an all-zero sockaddr_un is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.to_bytes();
        if bytes.len() >= addr.sun_path.len() {
            return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        // SAFETY: socket touches no memory.
        let fd =
            ret(unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?
                as RawFd;
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let setup = || -> Result<(), std::io::Error> {
            // SAFETY: bind reads `len` bytes of `addr`.
            ret(unsafe { libc::syscall(libc::SYS_bind, fd, &addr as *const libc::sockaddr_un, len) })?;
            // SAFETY: fchmodat reads the NUL-terminated path.
            ret(unsafe { libc::syscall(libc::SYS_fchmodat, libc::AT_FDCWD, path.as_ptr(), 0o600) })?;
            // SAFETY: listen touches no memory.
            ret(unsafe { libc::syscall(libc::SYS_listen, fd, 4) }).map(drop)
        };
        setup().inspect_err(|_| close(fd)).map(|()| fd)
    }

    /// The next connection, from a process of our user (or root).
    pub fn accept(listener: RawFd) -> Result<RawFd, std::io::Error> {
        // SAFETY: accept4 with no address buffers.
        let fd = ret(unsafe {
            libc::syscall(
                libc::SYS_accept4,
                listener,
                std::ptr::null_mut::<u8>(),
                std::ptr::null_mut::<u8>(),
                libc::SOCK_CLOEXEC,
            )
        })? as RawFd;
        let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: 0 };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `cred`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_getsockopt,
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                &mut cred as *mut libc::ucred,
                &mut len,
            )
        };
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        if r != 0 || (cred.uid != me && cred.uid != 0) {
            close(fd);
            return Err(std::io::Error::from_raw_os_error(libc::EACCES));
        }
        for (opt, secs) in [(libc::SO_RCVTIMEO, 5), (libc::SO_SNDTIMEO, 30)] {
            let tv = libc::timeval { tv_sec: secs, tv_usec: 0 };
            // SAFETY: setsockopt reads one timeval.
            unsafe {
                libc::syscall(
                    libc::SYS_setsockopt,
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    &tv as *const libc::timeval,
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
        }
        Ok(fd)
    }

    /// One line (at most `max` bytes), without its newline.
    pub fn read_line(fd: RawFd, max: usize) -> Option<String> {
        let mut buf = vec![0u8; max];
        let mut got = 0;
        while got < max && !buf[..got].contains(&b'\n') {
            // SAFETY: read writes at most `max - got` bytes at `buf[got..]`.
            let n = unsafe { libc::syscall(libc::SYS_read, fd, buf[got..].as_mut_ptr(), max - got) };
            if n <= 0 {
                break;
            }
            got += n as usize;
        }
        let line = buf[..got].split(|b| *b == b'\n').next()?;
        String::from_utf8(line.to_vec()).ok()
    }

    pub fn write_all(fd: RawFd, mut data: &[u8]) {
        while !data.is_empty() {
            // SAFETY: write reads at most `data.len()` bytes of `data`.
            let n = unsafe {
                libc::syscall(libc::SYS_sendto, fd, data.as_ptr(), data.len(), libc::MSG_NOSIGNAL, 0usize, 0usize)
            };
            if n <= 0 {
                return;
            }
            data = &data[n as usize..];
        }
    }
}

/// The socket thread (see the module doc).
fn listen(path: &std::ffi::CStr, ready: &mpsc::Sender<Result<(), String>>, jobs: &mpsc::Sender<Job>) {
    let listener = sys::own_empty_table()
        .map_err(|e| format!("no descriptor table of its own (close_range, Linux 5.9): {e}"))
        .and_then(|()| sys::listen_at(path).map_err(|e| e.to_string()));
    let listener = match listener {
        Ok(fd) => {
            let _ = ready.send(Ok(()));
            fd
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    loop {
        let conn = match sys::accept(listener) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) || e.raw_os_error() == Some(libc::EACCES) => continue,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Some(line) = sys::read_line(conn, 512) {
            let (reply, answer) = mpsc::channel();
            let text = match jobs.send((line, reply)) {
                Ok(()) => answer.recv().unwrap_or_else(|_| "error no answer\n".into()),
                Err(_) => "error the worker is gone\n".into(),
            };
            sys::write_all(conn, text.as_bytes());
        }
        sys::close(conn);
    }
}
