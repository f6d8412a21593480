//! `uiommufd run --inspect` (`UIOMMUFD_INSPECT=1`): a control socket that
//! `uiommufd inspect PID` asks what the engine of this process holds.
//!
//! Opened only when asked, at the process's first open of a served node
//! (before it there is nothing to show), and again in a forked child that
//! opens one: `inspect-PID.sock` in `uiommufd_dispatch::inspect::socket_dir()`
//! (`$XDG_RUNTIME_DIR/uiommufd` or `/tmp/uiommufd-UID`), a directory we
//! create owner-only and refuse if anyone else could write to it; the
//! socket itself is owner-only too. Its descriptors live high and
//! close-on-exec, out of the program's way.
//!
//! One thread serves it: it blocks every signal (the program's handlers
//! never run on it), accepts one connection at a time, reads one request
//! line and writes the answer:
//!
//! - `state`: the snapshot (`uiommufd_dispatch::inspect::Snapshot`);
//! - `pt CONTEXT HWPT IOVA LENGTH`: that HWPT's page-table leaves.
//!
//! While it collects it is inside the engine like any call (the fork gate
//! waits for it); objects are looked at without being borrowed. The
//! socket is removed when the process exits normally (and by `uiommufd
//! run` after the program).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use uiommufd_dispatch::inspect;

/// The pid the socket was opened for (0: none).
static STARTED: AtomicI32 = AtomicI32::new(0);

fn wanted() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("UIOMMUFD_INSPECT").is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Open the control socket if `UIOMMUFD_INSPECT` asks for it and this
/// process has none yet. Never fails the caller.
pub fn start_once() {
    if !wanted() {
        return;
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    if STARTED.swap(pid, Ordering::AcqRel) == pid {
        return;
    }
    let _ = std::panic::catch_unwind(|| {
        if let Err(e) = start(pid as u32) {
            crate::trace::line(format_args!("uiommufd inspect: no control socket: {e}"));
        }
    });
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

fn start(pid: u32) -> Result<(), String> {
    let dir = own_dir()?;
    let path = inspect::socket_path(&dir, pid);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    // SAFETY: the descriptor is the listener's, moved (not shared) to a
    // high number and owned again by the new listener.
    let listener = unsafe { UnixListener::from_raw_fd(crate::fork_server::out_of_the_way(listener.into_raw_fd())) };
    remember_for_exit(path);
    std::thread::Builder::new()
        .name("uiommufd-inspect".into())
        .spawn(move || serve(listener))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Remove the socket when the process exits normally.
fn remember_for_exit(path: std::path::PathBuf) {
    static PATH: OnceLock<std::sync::Mutex<Option<(u32, std::ffi::CString)>>> = OnceLock::new();
    extern "C" fn unlink_at_exit() {
        if let Some(Ok(g)) = PATH.get().map(|m| m.lock()) {
            if let Some((pid, p)) = g.as_ref() {
                if *pid == std::process::id() {
                    // SAFETY: a NUL-terminated path we own.
                    unsafe { libc::unlink(p.as_ptr()) };
                }
            }
        }
    }
    let Ok(c) = std::ffi::CString::new(path.into_os_string().into_encoded_bytes()) else { return };
    let slot = PATH.get_or_init(Default::default);
    let first = slot.lock().map(|mut g| g.replace((std::process::id(), c)).is_none()).unwrap_or(false);
    if first {
        // SAFETY: registering a function without preconditions.
        unsafe { libc::atexit(unlink_at_exit) };
    }
}

fn serve(listener: UnixListener) {
    // No signal of the program's is handled on this thread.
    // SAFETY: a full set, built in our own variable, as the new mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                // SAFETY: as for the listener: moved, not shared.
                let conn = unsafe { UnixStream::from_raw_fd(crate::fork_server::out_of_the_way(conn.into_raw_fd())) };
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| answer(conn)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn answer(conn: UnixStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let mut reader = BufReader::new(&conn).take(512);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let reply = {
        let _engine = crate::fdtable::EngineGuard::enter();
        request(line.trim())
    };
    let _ = (&conn).write_all(reply.as_bytes());
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
