//! Fork: one served file shared by a parent and its children, as the
//! kernel shares a `struct file`.
//!
//! In the kernel a forked child shares its parent's open files: an IOAS
//! the child maps into through an inherited iommufd is the parent's, the
//! pages come from the child's memory (`iopt_pages->source_mm`) and stay
//! pinned after the child exits. Our engine lives in each process, so the
//! child's copy of it would be private. Instead:
//!
//! - at `fork`, in the [`crate::fdtable`] atfork handlers (every engine
//!   call drained, the descriptor table locked), a process that serves
//!   descriptors snapshots them ([`prepare`]: descriptor → file, each file
//!   once, numbered by its *index*) and makes a socket pair (`AF_UNIX`,
//!   `SOCK_SEQPACKET`, close-on-exec);
//! - in the parent, the snapshot and one end become a *session* of the fork
//!   server: one thread per process, started with the first session,
//!   serving every child with `poll`. The snapshot keeps the files alive
//!   while the child holds them, as the kernel's file references do;
//! - in the child, every inherited descriptor becomes a [`Remote`] entry:
//!   `ioctl`, `read` and `write` (and the `p` forms) on it are one message
//!   to the parent — {index, request, argument, pid, tid} — answered by
//!   {value, errno}. The server runs the call on the snapshot's file with
//!   the child as the *current process* of user memory
//!   ([`uiommufd_memory::user::with_process`]): arguments are read and
//!   replies written in the child, and the pages it maps are its own (see
//!   `uiommufd_core::pages`). The errno is the engine's, unchanged;
//! - while it runs a call, the server may ask the child about descriptors
//!   (the engine's [`FdHost`]): to give a new file (a fault queue, an
//!   access, a device from a group) a descriptor in the child, to withdraw
//!   one, to say what a descriptor number the call names is, or for a
//!   duplicate of one of the child's own descriptors (an eventfd, the file
//!   of `IOMMU_IOAS_MAP_FILE`). The child answers from the thread that made
//!   the call;
//! - descriptors the child opens after the fork are its own engine's, as
//!   before. A child that forks again gives its child a clone of each of
//!   its sessions: it asks the serving process for one, passing it the new
//!   socket.
//!
//! Lifetimes: the child's last descriptor of a file closing releases the
//! server's reference to it; the child's exit (its end of the socket
//! closing) releases them all. Both reach the server asynchronously: before
//! the parent drops a file that something else still holds, [`settle`]
//! waits for the server to handle what is already in the sockets, so that
//! the parent's close after `waitpid` is the last one, as in the kernel. The child's own copy of the engine state
//! behind the inherited descriptors is never torn down (its teardown would
//! reset devices whose BAR memory the parent shares): it stays, inert, for
//! `mmap` of a device's BARs and for `fstat`.
//!
//! Locks: the server holds an [`EngineGuard`] only while it handles one
//! message, like any engine call, and leaves the fork gate
//! ([`uiommufd_memory::forkgate::park`]) while it waits for a child's
//! answer, so a `fork` in the parent waits for that message's engine work
//! and never for a child (a stopped one included); a child's call waits
//! for its serving process parked too. A child's call holds the child's
//! `EngineGuard` and its session's lock for the whole exchange; the
//! server's questions are answered by that same thread, so they need
//! neither the parent's nor the child's other threads. Fork-time state
//! (the server's descriptors, the pending snapshot) sits under a spin lock
//! taken by the prepare handler and released by the parent and child
//! handlers: a child closes every descriptor of its parent's server, so
//! that a child's end of the socket reports the server gone when it is.
//!
//! Limits (see docs/CONFORMANCE.md): memory of another process can be
//! pinned only where it is the same shared object as ours at the same
//! address (private memory is `EFAULT`, see `frames::pin_user`); when the
//! serving process exits, its children's inherited descriptors fail with
//! `EIO`; the children's calls are served one at a time, concurrently with
//! the parent's own; `fail-nth` files stay the child's own; `mmap` of a
//! device descriptor a child got after the fork is not served; the sockets
//! are ordinary descriptors of the processes, so a program that closes
//! descriptors it did not open (`closefrom`, `close_range`, `dup2` onto
//! them) cuts the connection (`EIO`).
//! `UIOMMUFD_FORK_SHARE=0` turns all this off: a child then gets a private
//! copy of the engine state, as before.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use uiommufd_abi::Errno;
use uiommufd_core::Error;
use uiommufd_dispatch::{FdHost, File};
use uiommufd_memory::user::{self, Process};

use crate::fdtable::{self, EngineGuard, Entry};
use crate::real;

// The wire format: one fixed header per message, native byte order (both
// ends are the same program), then an optional payload; at most one
// descriptor travels with a message (SCM_RIGHTS).

/// Child → server: run an ioctl. `a` index, `b` request, `c` argument,
/// `e` the child's descriptor number (for traces).
const OP_IOCTL: u32 = 1;
/// Child → server: `read`/`write`. `a` index, `b` buffer, `c` count, `d`
/// position (`NO_POS` for none), `e` descriptor number.
const OP_READ: u32 = 2;
const OP_WRITE: u32 = 3;
/// Child → server, no answer: the child closed its last descriptor of
/// index `a`.
const OP_RELEASE: u32 = 4;
/// Child → server, no answer: a session for the child's own child, whose
/// socket comes with the message; the payload lists the indices it holds.
const OP_CLONE: u32 = 5;
/// Server → child: the call's result, `e` (`a` the errno when non-zero).
const OP_DONE: u32 = 16;
/// Server → child: give index `a` a descriptor (close-on-exec when `b`),
/// of kind `d`; the file's readiness descriptor comes along if it has one.
/// Answered by `OP_FDINFO` with `a` the descriptor or `-errno`.
const OP_INSTALL: u32 = 17;
/// Server → child, no answer: withdraw descriptor `a`.
const OP_UNINSTALL: u32 = 18;
/// Server → child: what is descriptor `a`? `OP_FDINFO` with `a` = 0 (not
/// open), 1 (open, not a file of this session) or 2 (index `b`).
const OP_GETFD: u32 = 19;
/// Server → child: a duplicate of descriptor `a`. `OP_FDINFO` with the
/// descriptor attached, or `a` = `-errno`.
const OP_DUPFD: u32 = 20;
/// Child → server: the answer to one of the questions above.
const OP_FDINFO: u32 = 32;

const NO_POS: u64 = u64::MAX;
const HEADER: usize = 48;
/// The largest message (a clone's index list).
const MAX_MSG: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, Default)]
struct Msg {
    op: u32,
    a: i32,
    b: u64,
    c: u64,
    d: u64,
    e: i64,
    pid: u32,
    tid: u32,
}

impl Msg {
    fn new(op: u32) -> Msg {
        Msg { op, ..Msg::default() }
    }

    fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[0..4].copy_from_slice(&self.op.to_ne_bytes());
        b[4..8].copy_from_slice(&self.a.to_ne_bytes());
        b[8..16].copy_from_slice(&self.b.to_ne_bytes());
        b[16..24].copy_from_slice(&self.c.to_ne_bytes());
        b[24..32].copy_from_slice(&self.d.to_ne_bytes());
        b[32..40].copy_from_slice(&self.e.to_ne_bytes());
        b[40..44].copy_from_slice(&self.pid.to_ne_bytes());
        b[44..48].copy_from_slice(&self.tid.to_ne_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Msg> {
        let b: &[u8; HEADER] = b.get(..HEADER)?.try_into().ok()?;
        let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(Msg {
            op: u32_at(0),
            a: u32_at(4) as i32,
            b: u64_at(8),
            c: u64_at(16),
            d: u64_at(24),
            e: u64_at(32) as i64,
            pid: u32_at(40),
            tid: u32_at(44),
        })
    }
}

fn last_errno() -> Errno {
    Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
}

/// Close a descriptor of ours without going through the interposed
/// `close` (usable in the fork handlers).
fn close_raw(fd: RawFd) {
    uiommufd_memory::sys::internal::unmark(fd);
    // SAFETY: closing a descriptor this module owns.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// Room for one descriptor's control message, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

fn send_msg(sock: RawFd, m: &Msg, payload: &[u8], pass: Option<RawFd>) -> Result<(), Errno> {
    let head = m.encode();
    let mut iov = [
        libc::iovec { iov_base: head.as_ptr() as *mut libc::c_void, iov_len: head.len() },
        libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() },
    ];
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: all-zero is a valid msghdr (no name, no control).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = iov.as_mut_ptr();
    hdr.msg_iovlen = if payload.is_empty() { 1 } else { 2 };
    if let Some(fd) = pass {
        // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; the buffer holds
        // CMSG_SPACE(4) bytes (well under 64), and CMSG_FIRSTHDR of a
        // msghdr whose control points at it is inside it.
        unsafe {
            hdr.msg_control = cbuf.0.as_mut_ptr().cast();
            hdr.msg_controllen = libc::CMSG_SPACE(4) as _;
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        }
    }
    loop {
        // SAFETY: `hdr` describes live buffers of ours; MSG_NOSIGNAL: a
        // peer that is gone is an error, not a SIGPIPE.
        let n = unsafe { real::sendmsg(sock, &hdr, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = last_errno();
        if e.0 != libc::EINTR {
            return Err(e);
        }
    }
}

/// One message into `buf`: its header, the payload's length and the
/// descriptor that came with it. `None`: the peer closed its end.
fn recv_msg(sock: RawFd, buf: &mut [u8]) -> Result<Option<(Msg, usize, Option<OwnedFd>)>, Errno> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cbuf = CmsgBuf([0; 64]);
    // SAFETY: all-zero is a valid msghdr.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.0.as_mut_ptr().cast();
    hdr.msg_controllen = cbuf.0.len() as _;
    let n = loop {
        // SAFETY: `hdr` describes live buffers of ours.
        let n = unsafe { real::recvmsg(sock, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = last_errno();
        if e.0 != libc::EINTR {
            return Err(e);
        }
    };
    let mut fd = None;
    // SAFETY: walking the control messages the kernel filled in, within
    // `msg_controllen`; each SCM_RIGHTS entry holds descriptors now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    let got = std::ptr::read_unaligned(data.add(i));
                    if fd.is_none() {
                        fd = Some(OwnedFd::from_raw_fd(got));
                    } else {
                        close_raw(got);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    if n == 0 {
        return Ok(None);
    }
    let m = Msg::decode(&buf[..n]).ok_or(Errno::EIO)?;
    Ok(Some((m, n - HEADER, fd)))
}

/// Move a descriptor of ours out of the program's way, to a high number
/// (close-on-exec): a program that closed its standard descriptors expects
/// its next opens to get them back, and must not write to our sockets.
fn out_of_the_way(fd: RawFd) -> RawFd {
    move_high(fd, true)
}

/// [`out_of_the_way`], close-on-exec or not.
pub(crate) fn move_high(fd: RawFd, cloexec: bool) -> RawFd {
    let cmd = if cloexec { libc::F_DUPFD_CLOEXEC } else { libc::F_DUPFD };
    for base in [768, 64, 3] {
        // SAFETY: F_DUPFD(_CLOEXEC) makes a new descriptor of the same file
        // (the system call itself: this runs in the fork handlers, where
        // resolving libc's symbol could wait for the loader's lock).
        let moved = unsafe { libc::syscall(libc::SYS_fcntl, fd, cmd, base) } as RawFd;
        if moved >= 0 {
            close_raw(fd);
            uiommufd_memory::sys::internal::mark(moved);
            return moved;
        }
    }
    uiommufd_memory::sys::internal::mark(fd);
    fd
}

/// An entry for a descriptor whose state could not follow an `exec` (see
/// [`crate::handoff`]): every call fails with `EIO`, as when a serving
/// process is gone.
pub(crate) fn stale() -> Arc<Remote> {
    Arc::new(Remote { session: Arc::new(Session::new(None)), index: 0, kind: "stale", local: None })
}

fn socketpair() -> Result<(OwnedFd, OwnedFd), Errno> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(last_errno());
    }
    let (a, b) = (out_of_the_way(fds[0]), out_of_the_way(fds[1]));
    // SAFETY: two fresh descriptors we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(a), OwnedFd::from_raw_fd(b)) })
}

/// The kinds of file, as `File::describe` names them, numbered for the
/// wire (0: unknown).
const KINDS: [&str; 8] =
    ["file", "iommufd", "vfio-device", "vfio-group", "test-access", "fault-queue", "viommu-event-queue", "fail-nth"];

fn kind_code(describe: &str) -> u64 {
    KINDS.iter().position(|k| *k == describe).unwrap_or(0) as u64
}

// The child's side.

/// A child's connection to the process whose engine serves its inherited
/// descriptors.
pub struct Session {
    /// Our end of the socket (-1: none, every call fails with `EIO`).
    sock: RawFd,
    /// One call at a time: the server's questions go to the calling thread.
    lock: Mutex<()>,
}

impl Session {
    fn new(sock: Option<OwnedFd>) -> Session {
        Session { sock: sock.map_or(-1, IntoRawFd::into_raw_fd), lock: Mutex::new(()) }
    }

    /// Send `m` and wait for its result, answering the server's questions
    /// meanwhile. `EIO` if the serving process is gone.
    fn call(self: &Arc<Self>, m: Msg) -> Result<i64, Errno> {
        // The serving process may be stopped: out of the fork gate while
        // we wait for it (this thread holds no engine lock of ours).
        let _parked = uiommufd_memory::forkgate::park();
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // Entries replaced or withdrawn during the call, dropped after it.
        let mut stale: Vec<Entry> = Vec::new();
        if self.sock < 0 {
            return Err(Errno::EIO);
        }
        send_msg(self.sock, &m, &[], None).map_err(|_| Errno::EIO)?;
        let mut buf = [0u8; 256];
        loop {
            let Ok(Some((q, _, fd))) = recv_msg(self.sock, &mut buf) else { return Err(Errno::EIO) };
            let mut answer = Msg::new(OP_FDINFO);
            let mut pass = None;
            match q.op {
                OP_DONE => {
                    return if q.a != 0 { Err(Errno(q.a)) } else { Ok(q.e) };
                }
                OP_INSTALL => answer.a = self.install(&q, fd, &mut stale),
                OP_UNINSTALL => {
                    if matches!(fdtable::get_entry(q.a), Some(Entry::Remote(r)) if Arc::ptr_eq(&r.session, self)) {
                        stale.extend(fdtable::remove(q.a));
                        close_raw(q.a);
                    }
                    continue;
                }
                OP_GETFD => {
                    (answer.a, answer.b) = match fdtable::get_entry(q.a) {
                        Some(Entry::Remote(r)) if Arc::ptr_eq(&r.session, self) => (2, u64::from(r.index)),
                        Some(_) => (1, 0),
                        None => (i32::from(fd_is_open(q.a)), 0),
                    };
                }
                OP_DUPFD => {
                    if fd_is_open(q.a) {
                        pass = Some(q.a);
                    } else {
                        answer.a = -libc::EBADF;
                    }
                }
                _ => continue,
            }
            send_msg(self.sock, &answer, &[], pass).map_err(|_| Errno::EIO)?;
        }
    }

    /// `OP_INSTALL`: a descriptor in this process for the server's new file.
    fn install(self: &Arc<Self>, q: &Msg, ready: Option<OwnedFd>, stale: &mut Vec<Entry>) -> i32 {
        let cloexec = q.b != 0;
        let fd = match ready {
            // A file with readiness (a fault queue): backed by the server's
            // eventfd, so poll here sees what the server signals.
            Some(ready) => {
                let fd = ready.into_raw_fd();
                if !cloexec {
                    // SAFETY: clearing FD_CLOEXEC on a descriptor we own.
                    unsafe { real::fcntl(fd, libc::F_SETFD, 0) };
                }
                fd
            }
            None => {
                let flags = libc::O_RDWR | libc::O_NOCTTY | if cloexec { libc::O_CLOEXEC } else { 0 };
                // SAFETY: a NUL-terminated literal path; libc's open.
                unsafe { real::open(c"/dev/null".as_ptr(), flags, 0) }
            }
        };
        if fd < 0 {
            return -real::errno();
        }
        let kind = KINDS.get(q.d as usize).copied().unwrap_or(KINDS[0]);
        let remote = Arc::new(Remote { session: Arc::clone(self), index: q.a as u32, kind, local: None });
        match fdtable::install_entry(fd, Entry::Remote(remote)) {
            Ok(old) => {
                stale.extend(old);
                fd
            }
            Err(refused) => {
                stale.push(refused);
                close_raw(fd);
                -libc::EMFILE
            }
        }
    }

    /// Tell the server we hold index `index` no more (no answer).
    fn release(&self, index: u32) {
        if self.sock >= 0 {
            let mut m = Msg::new(OP_RELEASE);
            m.a = index as i32;
            let _ = send_msg(self.sock, &m, &[], None);
        }
    }

    /// Ask the server for a clone of this session for a child of ours.
    fn send_clone(&self, indices: &[u32], sock: RawFd) -> Result<(), Errno> {
        if self.sock < 0 {
            return Err(Errno::EIO);
        }
        // Between calls: a call's exchange holds the lock.
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let payload: Vec<u8> = indices.iter().take((MAX_MSG - HEADER) / 4).flat_map(|i| i.to_ne_bytes()).collect();
        send_msg(self.sock, &Msg::new(OP_CLONE), &payload, Some(sock))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.sock >= 0 {
            close_raw(self.sock);
        }
    }
}

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD reads the descriptor's flags.
    fd >= 0 && unsafe { real::fcntl(fd, libc::F_GETFD, 0) } >= 0
}

/// A descriptor whose file is in another process's engine (the parent's,
/// or the one serving it): calls on it go there.
pub struct Remote {
    session: Arc<Session>,
    /// The file's index in the session.
    index: u32,
    kind: &'static str,
    /// This process's copy of the file as it was at the fork (never torn
    /// down): what `mmap` and `fstat` use.
    local: Option<Arc<File>>,
}

impl Remote {
    /// A name for traces.
    pub fn describe(&self) -> &'static str {
        self.kind
    }

    /// This process's inert copy of the file, for `mmap` and `fstat`.
    pub fn local(&self) -> Option<&Arc<File>> {
        self.local.as_ref()
    }

    fn request(&self, op: u32, fd: i32, b: u64, c: u64, d: u64) -> Msg {
        Msg {
            op,
            a: self.index as i32,
            b,
            c,
            d,
            e: i64::from(fd),
            pid: std::process::id(),
            tid: uiommufd_memory::sys::gettid() as u32,
        }
    }

    /// `ioctl(fd, request, arg)` in the serving engine.
    pub fn ioctl(&self, fd: i32, request: u64, arg: u64) -> Result<i32, Errno> {
        self.session.call(self.request(OP_IOCTL, fd, request, arg, 0)).map(|v| v as i32)
    }

    /// `read`/`pread` into `buf` in the serving engine.
    pub fn read(&self, fd: i32, buf: u64, count: usize, pos: Option<i64>) -> Result<usize, Errno> {
        let pos = pos.map_or(NO_POS, |p| p as u64);
        self.session.call(self.request(OP_READ, fd, buf, count as u64, pos)).map(|v| v as usize)
    }

    /// `write`/`pwrite` from `buf` in the serving engine.
    pub fn write(&self, fd: i32, buf: u64, count: usize, pos: Option<i64>) -> Result<usize, Errno> {
        let pos = pos.map_or(NO_POS, |p| p as u64);
        self.session.call(self.request(OP_WRITE, fd, buf, count as u64, pos)).map(|v| v as usize)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // The copy of the parent's state is never torn down here.
        if let Some(local) = self.local.take() {
            std::mem::forget(local);
        }
        self.session.release(self.index);
    }
}

// Fork time.

/// What a fork hands its child: built by the prepare handler, without
/// allocating, into room [`reserve`] made beforehand.
#[derive(Default)]
struct PendingFork {
    /// Our own session for the child: (our end, the child's end); none
    /// when we serve nothing of our own.
    own: Option<(OwnedFd, OwnedFd)>,
    /// Our files, by index.
    files: Vec<Arc<File>>,
    /// Our descriptors → index.
    fds: Vec<(i32, u32)>,
    /// Descriptors we hold from another process's engine, and their
    /// entries.
    remotes: Vec<(i32, Arc<Remote>)>,
    /// One per serving session among `remotes`: the session, the end its
    /// serving process gets (sent after the fork, by the parent) and the
    /// child's end (`None`: no socket could be made).
    clones: Vec<CloneFork>,
}

struct CloneFork {
    session: Arc<Session>,
    theirs: Option<OwnedFd>,
    child_end: Option<OwnedFd>,
}

/// Fork-time state, under a spin lock (see the module doc).
struct ForkState {
    /// The fork server's descriptors (wake-up pipe, session sockets).
    server_fds: Vec<RawFd>,
    /// The server's wake-up pipe (read, write), once there is a server.
    wake: Option<(RawFd, RawFd)>,
    /// Room for the next fork's snapshot.
    spare: PendingFork,
    /// Between the prepare handler and the parent or child handler.
    pending: Option<PendingFork>,
    /// In a child, until its inherited entries are made remote.
    child: Option<PendingFork>,
}

struct Locked {
    busy: AtomicBool,
    state: UnsafeCell<ForkState>,
}

// SAFETY: the state is only reached under `busy` (see `lock`), and what it
// holds (descriptors, `Arc`s of files the engine shares between threads)
// may move between threads.
unsafe impl Sync for Locked {}

impl Locked {
    fn lock(&self) {
        while self.busy.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
    }

    fn unlock(&self) {
        self.busy.store(false, Ordering::Release);
    }

    /// # Safety
    /// The caller holds the lock, and keeps the reference no longer.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self) -> &mut ForkState {
        // SAFETY: per the contract, the lock gives us exclusive access.
        unsafe { &mut *self.state.get() }
    }

    fn with<R>(&self, f: impl FnOnce(&mut ForkState) -> R) -> R {
        self.lock();
        // SAFETY: we hold the lock until `f` returns.
        let r = f(unsafe { self.get() });
        self.unlock();
        r
    }
}

static STATE: Locked = Locked {
    busy: AtomicBool::new(false),
    state: UnsafeCell::new(ForkState {
        server_fds: Vec::new(),
        wake: None,
        spare: PendingFork { own: None, files: Vec::new(), fds: Vec::new(), remotes: Vec::new(), clones: Vec::new() },
        pending: None,
        child: None,
    }),
};

/// `UIOMMUFD_FORK_SHARE` is not `0`.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// The write end of this process's server's wake-up pipe (-1: no server):
/// what [`settle`] checks without a lock.
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// [`settle`] tickets: asked, and the highest handled.
static SETTLE_ASKED: AtomicU64 = AtomicU64::new(0);
static SETTLE_DONE: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the server thread (which must not wait for itself).
    static IN_SERVER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Wait until the fork server has handled what its children did before
/// this call: a child that exited (its session ends, its references to our
/// files go), a child's close (its release). The shim calls this before it
/// drops a file something else still holds, so that, as in the kernel, a
/// close after the children's is the last one. No server: returns at once.
/// Never called with an engine call in progress (the server may need to
/// enter the engine, and a fork may be waiting for this thread's calls).
pub(crate) fn settle() {
    let wake = WAKE.load(Ordering::Acquire);
    if wake < 0 || IN_SERVER.with(|c| c.get()) {
        return;
    }
    let ticket = SETTLE_ASKED.fetch_add(1, Ordering::AcqRel) + 1;
    // Tickets are odd on the pipe; session pointers are aligned, so even.
    let bytes = ((ticket << 1) | 1).to_ne_bytes();
    // SAFETY: writing 8 bytes of ours to our pipe (atomic: < PIPE_BUF).
    if unsafe { real::write(wake, bytes.as_ptr().cast(), bytes.len()) } != bytes.len() as isize {
        return;
    }
    // Bounded: a server that cannot answer (it is stuck in a child's call)
    // only delays the teardown.
    let start = std::time::Instant::now();
    let mut spins = 0u32;
    while SETTLE_DONE.load(Ordering::Acquire) < ticket && start.elapsed() < std::time::Duration::from_secs(2) {
        if spins < 100 {
            spins += 1;
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
}

/// Read the configuration (before the atfork handlers are registered).
pub(crate) fn init() {
    let off = std::env::var_os("UIOMMUFD_FORK_SHARE").is_some_and(|v| v == "0");
    ENABLED.store(!off, Ordering::Relaxed);
}

/// Make room for a fork's snapshot of `n` served descriptors (called as
/// descriptors are installed, never at fork time).
pub(crate) fn reserve(n: usize) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    STATE.with(|st| {
        let n = n + 1;
        let sp = &mut st.spare;
        sp.files.reserve(n.saturating_sub(sp.files.len()));
        sp.fds.reserve(n.saturating_sub(sp.fds.len()));
        sp.remotes.reserve(n.saturating_sub(sp.remotes.len()));
        sp.clones.reserve(n.saturating_sub(sp.clones.len()));
        let fds = st.server_fds.len() + 4;
        st.server_fds.reserve(fds.saturating_sub(st.server_fds.len()));
    });
}

/// Push `x` if there is room (the fork handlers never grow a vector).
/// Without room `x` is dropped: a clone of a reference the descriptor
/// table holds, so nothing is freed.
fn push_in_room<T>(v: &mut Vec<T>, x: T) -> bool {
    if v.len() < v.capacity() {
        v.push(x);
        true
    } else {
        drop(x);
        false
    }
}

/// The prepare handler's part, with every engine call drained and the
/// descriptor table write-locked: snapshot the served descriptors into
/// the reserved room. Allocates nothing and sends nothing (the sockets are
/// made here, with system calls; the serving processes of inherited
/// descriptors hear of the child from the parent handler).
pub(crate) fn prepare() {
    STATE.lock();
    if !ENABLED.load(Ordering::Relaxed) || fdtable::occupied() == 0 {
        return;
    }
    // SAFETY: we hold the lock (until the parent or child handler).
    let st = unsafe { STATE.get() };
    let mut p = std::mem::take(&mut st.spare);
    fdtable::for_each_locked(|fd, entry| match entry {
        // A task's fail-nth file is about the calling thread: the
        // child's stays its own.
        Entry::Local(f) if matches!(*f, File::FailNth(_)) => drop(f),
        Entry::Local(f) => {
            let i = match p.files.iter().position(|g| Arc::ptr_eq(g, &f)) {
                Some(i) => {
                    // Not kept: the count goes back down, never to zero
                    // (the table holds the file).
                    drop(f);
                    Some(i)
                }
                None => push_in_room(&mut p.files, f).then(|| p.files.len() - 1),
            };
            // Without room the child keeps a private copy of this one.
            if let Some(i) = i {
                push_in_room(&mut p.fds, (fd, i as u32));
            }
        }
        Entry::Remote(r) => {
            if !p.clones.iter().any(|c| Arc::ptr_eq(&c.session, &r.session)) {
                let clone = CloneFork { session: Arc::clone(&r.session), theirs: None, child_end: None };
                push_in_room(&mut p.clones, clone);
            }
            push_in_room(&mut p.remotes, (fd, r));
        }
    });
    if !p.fds.is_empty() {
        p.own = socketpair().ok();
    }
    for c in &mut p.clones {
        if let Ok((theirs, child_end)) = socketpair() {
            (c.theirs, c.child_end) = (Some(theirs), Some(child_end));
        }
    }
    st.pending = Some(p);
}

/// The parent handler's part that needs the fork-time lock (still held,
/// as are the engine and table locks, so no other fork can copy what is
/// half done): close the child's ends, register the new session's socket
/// as the server's and make sure there is a server. Returns what
/// [`parent`] finishes.
pub(crate) fn parent_locked() -> Option<ParentWork> {
    let _unlock = Unlock;
    // SAFETY: the prepare handler took the lock; `_unlock` releases it.
    let st = unsafe { STATE.get() };
    let mut pending = st.pending.take()?;
    // The child ends are the child's alone (while a copy stayed here, the
    // server would not see the child's end close).
    for c in &mut pending.clones {
        c.child_end = None;
    }
    let session = pending.own.take().map(|(parent_end, child_end)| {
        drop(child_end);
        if st.wake.is_none() {
            st.wake = start_server();
            st.server_fds.extend(st.wake.iter().flat_map(|&(r, w)| [r, w]));
            WAKE.store(st.wake.map_or(-1, |(_, w)| w), Ordering::Release);
        }
        st.server_fds.push(parent_end.as_raw_fd());
        ServerSession::new(parent_end, std::mem::take(&mut pending.files))
    });
    Some(ParentWork { session, pending })
}

/// Releases the fork-time lock the prepare handler took, also when a
/// handler unwinds.
struct Unlock;

impl Drop for Unlock {
    fn drop(&mut self) {
        STATE.unlock();
    }
}

/// A new child's session and the rest of the snapshot, between the parent
/// handler's two parts.
pub(crate) struct ParentWork {
    session: Option<ServerSession>,
    pending: PendingFork,
}

/// The parent handler's part after every lock is released: ask the
/// serving processes of inherited descriptors for the child's clones of
/// their sessions, hand the child's session of our own to the server, and
/// make room for the next fork.
pub(crate) fn parent(work: Option<ParentWork>) {
    let Some(ParentWork { session, pending }) = work else { return };
    for c in &pending.clones {
        let Some(theirs) = &c.theirs else { continue };
        let mut indices: Vec<u32> =
            pending.remotes.iter().filter(|(_, r)| Arc::ptr_eq(&r.session, &c.session)).map(|(_, r)| r.index).collect();
        indices.sort_unstable();
        indices.dedup();
        // Failing, the child's calls on these descriptors fail with EIO.
        let _ = c.session.send_clone(&indices, theirs.as_raw_fd());
    }
    {
        // Our sockets among it close from our own code (see
        // entry::fds::close_internal).
        let _engine = EngineGuard::enter();
        drop(pending);
    }
    reserve(fdtable::occupied());
    let Some(session) = session else { return };
    let wake = WAKE.load(Ordering::Acquire);
    if wake < 0 {
        return end_session(session);
    }
    let raw = Box::into_raw(Box::new(session)) as usize;
    let bytes = raw.to_ne_bytes();
    let n = loop {
        // SAFETY: writing 8 bytes of ours to our pipe (atomic: < PIPE_BUF).
        let n = unsafe { real::write(wake, bytes.as_ptr().cast(), bytes.len()) };
        if n >= 0 || real::errno() != libc::EINTR {
            break n;
        }
    };
    if n != bytes.len() as isize {
        // SAFETY: the pointer was not handed over: it is still ours.
        end_session(*unsafe { Box::from_raw(raw as *mut ServerSession) });
    }
}

/// The child handler's part, with the descriptor table write-locked:
/// drop the parent's server and keep the snapshot for
/// [`apply_child_if_pending`]. Allocates and frees nothing: descriptors
/// are closed with the system call; what needs memory (the sessions, the
/// remote entries) is made on the child's first look at the table.
pub(crate) fn child_locked() {
    let _unlock = Unlock;
    // SAFETY: the prepare handler took the lock; `_unlock` releases it.
    let st = unsafe { STATE.get() };
    for &fd in &st.server_fds {
        close_raw(fd);
    }
    st.server_fds.clear();
    st.wake = None;
    WAKE.store(-1, Ordering::Release);
    let Some(mut pending) = st.pending.take() else { return };
    if let Some((parent_end, _)) = &pending.own {
        close_raw(parent_end.as_raw_fd());
    }
    for c in &mut pending.clones {
        if let Some(theirs) = c.theirs.take() {
            close_raw(theirs.into_raw_fd());
        }
    }
    st.child = Some(pending);
    CHILD.store(CHILD_PENDING, Ordering::Release);
}

/// A forked child's snapshot waits to be applied.
const CHILD_PENDING: u8 = 1;
/// A thread of the child is applying it.
const CHILD_APPLYING: u8 = 2;
static CHILD: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// In a forked child, before its first look at the descriptor table: turn
/// the inherited descriptors into remote entries. One load when there is
/// nothing to do.
#[inline]
pub(crate) fn apply_child_if_pending() {
    if CHILD.load(Ordering::Acquire) != 0 {
        apply_child();
    }
}

#[cold]
fn apply_child() {
    if CHILD.compare_exchange(CHILD_PENDING, CHILD_APPLYING, Ordering::AcqRel, Ordering::Acquire).is_err() {
        // Another thread applies it: wait for it.
        while CHILD.load(Ordering::Acquire) != 0 {
            std::thread::yield_now();
        }
        return;
    }
    let pending = STATE.with(|st| st.child.take());
    if let Some(p) = pending {
        let _ = catch_unwind(AssertUnwindSafe(|| make_remote(p)));
    }
    CHILD.store(0, Ordering::Release);
    reserve(fdtable::occupied());
    crate::handoff::rewrite();
}

fn make_remote(p: PendingFork) {
    let PendingFork { own, files, fds, remotes, clones, .. } = p;
    if let Some((parent_end, child_end)) = own {
        // Closed by the child handler already.
        let _ = parent_end.into_raw_fd();
        let session = Arc::new(Session::new(Some(child_end)));
        let made: Vec<Arc<Remote>> = files
            .into_iter()
            .enumerate()
            .map(|(i, f)| {
                Arc::new(Remote { session: Arc::clone(&session), index: i as u32, kind: f.describe(), local: Some(f) })
            })
            .collect();
        for (fd, i) in fds {
            let old = fdtable::replace(fd, Entry::Remote(Arc::clone(&made[i as usize])));
            // The inherited copy of our state is kept, never torn down.
            std::mem::forget(old);
        }
    }
    for clone in clones {
        let session = Arc::new(Session::new(clone.child_end));
        let mut made: Vec<(usize, Arc<Remote>)> = Vec::new();
        for (fd, old) in remotes.iter().filter(|(_, r)| Arc::ptr_eq(&r.session, &clone.session)) {
            let key = Arc::as_ptr(old) as usize;
            let new = match made.iter().find(|(k, _)| *k == key) {
                Some((_, r)) => Arc::clone(r),
                None => {
                    let r = Arc::new(Remote {
                        session: Arc::clone(&session),
                        index: old.index,
                        kind: old.kind,
                        local: old.local.clone(),
                    });
                    made.push((key, Arc::clone(&r)));
                    r
                }
            };
            // Dropping the parent's entries would release their indices
            // upstream.
            std::mem::forget(fdtable::replace(*fd, Entry::Remote(new)));
        }
        if clone.session.sock >= 0 {
            close_raw(clone.session.sock);
        }
        std::mem::forget(clone.session);
    }
    // The parent's remote entries: their sessions are the parent's.
    for (_, r) in remotes {
        std::mem::forget(r);
    }
}

// The server's side.

/// One child's session, in the serving process.
struct ServerSession {
    sock: OwnedFd,
    files: HashMap<u32, Arc<File>>,
    /// The next index a new file gets (never reused).
    next: u32,
    /// The child, once known: (pid, its identity or `None` if it is gone).
    process: Option<(u32, Option<Process>)>,
}

impl ServerSession {
    fn new(sock: OwnedFd, files: Vec<Arc<File>>) -> ServerSession {
        let next = files.len() as u32;
        let files = files.into_iter().enumerate().map(|(i, f)| (i as u32, f)).collect();
        ServerSession { sock, files, next, process: None }
    }

    /// The process a request came from.
    fn process(&mut self, pid: u32) -> Option<Process> {
        match self.process {
            Some((p, known)) if p == pid => known,
            _ => {
                let known = Process::of(pid).ok();
                self.process = Some((pid, known));
                known
            }
        }
    }

    /// Handle one message; false when the session is over.
    fn serve_one(&mut self, buf: &mut [u8], added: &mut Vec<ServerSession>) -> bool {
        // Received under the fork-time lock (poll said a message is there:
        // this does not block), so that a clone's socket is registered as
        // the server's before any fork can copy it into a child.
        let received = STATE.with(|st| {
            let mut r = recv_msg(self.sock.as_raw_fd(), buf);
            if let Ok(Some((Msg { op: OP_CLONE, .. }, _, sock @ Some(_)))) = &mut r {
                let fd = sock.take().map(IntoRawFd::into_raw_fd).map(out_of_the_way);
                // SAFETY: the socket we just received, moved.
                *sock = fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
                st.server_fds.extend(fd);
            }
            r
        });
        let Ok(Some((m, payload, fd))) = received else { return false };
        match m.op {
            OP_IOCTL | OP_READ | OP_WRITE => {
                let _engine = EngineGuard::enter();
                let mut releases = Vec::new();
                let reply = self.run(&m, &mut releases);
                let sent = send_msg(self.sock.as_raw_fd(), &reply, &[], None).is_ok();
                for i in releases {
                    self.files.remove(&i);
                }
                sent
            }
            OP_RELEASE => {
                let _engine = EngineGuard::enter();
                self.files.remove(&(m.a as u32));
                true
            }
            OP_CLONE => {
                if let Some(sock) = fd {
                    let files = buf[HEADER..HEADER + payload]
                        .chunks_exact(4)
                        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
                        .filter_map(|i| Some((i, Arc::clone(self.files.get(&i)?))))
                        .collect();
                    added.push(ServerSession { sock, files, next: self.next, process: None });
                }
                true
            }
            _ => true,
        }
    }

    /// Run a call of the child's; the reply to send.
    fn run(&mut self, m: &Msg, releases: &mut Vec<u32>) -> Msg {
        let mut reply = Msg::new(OP_DONE);
        let Some(file) = self.files.get(&(m.a as u32)).cloned() else {
            reply.a = libc::EBADF;
            return reply;
        };
        let Some(process) = self.process(m.pid) else {
            // Gone before we could look: nothing of it can be reached.
            reply.a = libc::EFAULT;
            return reply;
        };
        let host = RemoteHost {
            sock: self.sock.as_raw_fd(),
            state: Mutex::new(HostState { files: &mut self.files, next: &mut self.next, releases }),
        };
        let pos = (m.d != NO_POS).then_some(m.d as i64);
        let res = catch_unwind(AssertUnwindSafe(|| {
            user::with_process(Some(process), || match m.op {
                OP_IOCTL => ioctl(&file, &host, m.b, m.c).map(i64::from),
                OP_READ => file.read(m.b, m.c as usize, pos).map(|n| n as i64),
                _ => file.write(m.b, m.c as usize, pos).map(|n| n as i64),
            })
        }))
        .unwrap_or(Err(Error::new(Errno::EIO, "the engine panicked")));
        match res {
            Ok(v) => reply.e = v,
            Err(e) => {
                reply.e = -1;
                reply.a = e.errno.0;
            }
        }
        reply
    }
}

/// `ioctl` for a child. `IOMMU_IOAS_MAP_FILE` names a descriptor of the
/// child's: the command runs on a copy in our memory naming a duplicate of
/// it, and the reply goes back to the child with its own number.
fn ioctl(file: &File, host: &RemoteHost<'_>, request: u64, arg: u64) -> Result<i32, Error> {
    if matches!(file, File::Iommufd(_)) && request as u32 == uiommufd_abi::iommufd::IOMMU_IOAS_MAP_FILE {
        return map_file(file, host, request, arg);
    }
    file.ioctl(host, request, arg)
}

fn map_file(file: &File, host: &RemoteHost<'_>, request: u64, arg: u64) -> Result<i32, Error> {
    /// `struct iommu_ioas_map_file`: its size and where `fd` is.
    const SIZE: usize = 40;
    const FD: std::ops::Range<usize> = 12..16;
    let mut size_bytes = [0u8; 4];
    user::copy_from_user(&mut size_bytes, arg).map_err(|e| Error::new(e, "reading the command size"))?;
    let size = u32::from_ne_bytes(size_bytes) as usize;
    if size < FD.end {
        // Refused before the descriptor is looked at.
        return file.ioctl(host, request, arg);
    }
    // Past the struct we know, as copy_struct_from_user: zeroes or E2BIG.
    let mut at = SIZE;
    while at < size {
        let mut chunk = [0u8; 256];
        let n = (size - at).min(chunk.len());
        // A sum past the address space is a pointer access_ok refuses.
        let addr = arg.checked_add(at as u64).ok_or(Error::new(Errno::EFAULT, "the command wraps"))?;
        user::copy_from_user(&mut chunk[..n], addr).map_err(|e| Error::new(e, "reading the command"))?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Err(Error::new(Errno::E2BIG, "non-zero bytes past the known command"));
        }
        at += n;
    }
    let n = size.min(SIZE);
    let mut local = [0u8; SIZE];
    user::copy_from_user(&mut local[..n], arg).map_err(|e| Error::new(e, "reading the command"))?;
    local[..4].copy_from_slice(&(n as u32).to_ne_bytes());
    let theirs: [u8; 4] = local[FD].try_into().expect("4 bytes");
    let dup = host.dup_fd(i32::from_ne_bytes(theirs)).ok();
    // A descriptor the child does not have: one we do not have either.
    let ours = dup.as_ref().map_or(-1, AsRawFd::as_raw_fd);
    local[FD].copy_from_slice(&ours.to_ne_bytes());
    let res = user::with_process(None, || file.ioctl(host, request, local.as_mut_ptr() as u64));
    drop(dup);
    if res.is_ok() {
        local[FD].copy_from_slice(&theirs);
        local[..4].copy_from_slice(&size_bytes);
        user::copy_to_user(arg, &local[..n]).map_err(|e| Error::new(e, "writing the reply"))?;
    }
    res
}

struct HostState<'a> {
    files: &'a mut HashMap<u32, Arc<File>>,
    next: &'a mut u32,
    /// Releases that arrived during the call, applied after it (dropping a
    /// file may tear down engine state the call holds locks on).
    releases: &'a mut Vec<u32>,
}

/// The child's descriptor table, as the engine sees it during one of the
/// child's calls.
struct RemoteHost<'a> {
    sock: RawFd,
    state: Mutex<HostState<'a>>,
}

impl<'a> RemoteHost<'a> {
    /// Ask the child; its answer (with a descriptor, if one came).
    fn ask(&self, st: &mut HostState<'a>, q: &Msg, pass: Option<RawFd>) -> Option<(Msg, Option<OwnedFd>)> {
        // Waiting for the child, which may be stopped: out of the fork
        // gate (the handlers asking hold no engine lock), so our own forks
        // never wait for a child.
        let _parked = uiommufd_memory::forkgate::park();
        send_msg(self.sock, q, &[], pass).ok()?;
        let mut buf = [0u8; 256];
        loop {
            let (r, _, fd) = recv_msg(self.sock, &mut buf).ok()??;
            match r.op {
                OP_FDINFO => return Some((r, fd)),
                OP_RELEASE => st.releases.push(r.a as u32),
                _ => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HostState<'a>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fd_info(&self, fd: i32) -> Option<(i32, u32)> {
        let mut st = self.lock();
        let mut q = Msg::new(OP_GETFD);
        q.a = fd;
        self.ask(&mut st, &q, None).map(|(r, _)| (r.a, r.b as u32))
    }
}

impl FdHost for RemoteHost<'_> {
    fn install(&self, file: Arc<File>, cloexec: bool) -> Result<i32, Errno> {
        let mut st = self.lock();
        let index = *st.next;
        *st.next += 1;
        let mut q = Msg::new(OP_INSTALL);
        q.a = index as i32;
        q.b = u64::from(cloexec);
        q.d = kind_code(file.describe());
        let ready = file.readiness_fd();
        st.files.insert(index, file);
        match self.ask(&mut st, &q, ready) {
            Some((r, _)) if r.a >= 0 => Ok(r.a),
            other => {
                let file = st.files.remove(&index);
                drop(st);
                drop(file);
                Err(other.map_or(Errno::EIO, |(r, _)| Errno(-r.a)))
            }
        }
    }

    fn uninstall(&self, fd: i32) {
        let mut q = Msg::new(OP_UNINSTALL);
        q.a = fd;
        let _ = send_msg(self.sock, &q, &[], None);
    }

    fn get(&self, fd: i32) -> Option<Arc<File>> {
        let (kind, index) = self.fd_info(fd)?;
        (kind == 2).then(|| self.lock().files.get(&index).cloned()).flatten()
    }

    fn dup_fd(&self, fd: i32) -> Result<OwnedFd, Errno> {
        let mut st = self.lock();
        let mut q = Msg::new(OP_DUPFD);
        q.a = fd;
        match self.ask(&mut st, &q, None) {
            Some((_, Some(dup))) => Ok(dup),
            Some((r, None)) if r.a < 0 => Err(Errno(-r.a)),
            _ => Err(Errno::EBADF),
        }
    }

    fn fd_is_open(&self, fd: i32) -> bool {
        self.fd_info(fd).is_some_and(|(kind, _)| kind != 0)
    }
}

/// Make the wake-up pipe and start the server thread: `(read, write)`.
fn start_server() -> Option<(RawFd, RawFd)> {
    let mut p = [-1; 2];
    // SAFETY: `p` has room for the two descriptors.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    let (r, w) = (out_of_the_way(p[0]), out_of_the_way(p[1]));
    let spawned = std::thread::Builder::new().name("uiommufd-fork".into()).spawn(move || serve(r));
    if spawned.is_err() {
        close_raw(r);
        close_raw(w);
        return None;
    }
    Some((r, w))
}

/// The fork server: every child's session, one message at a time.
fn serve(wake: RawFd) {
    IN_SERVER.with(|c| c.set(true));
    let mut sessions: Vec<ServerSession> = Vec::new();
    let mut buf = vec![0u8; MAX_MSG];
    loop {
        if !poll_round(&mut sessions, Some(wake), -1, &mut buf) {
            continue;
        }
        let mut ptrs = [0u8; 8 * 64];
        // SAFETY: reading into our buffer from our pipe.
        let got = unsafe { real::read(wake, ptrs.as_mut_ptr().cast(), ptrs.len()) };
        let mut settle = 0;
        for chunk in ptrs[..got.max(0) as usize].chunks_exact(8) {
            let raw = usize::from_ne_bytes(chunk.try_into().expect("8 bytes"));
            if raw & 1 != 0 {
                settle = settle.max(raw as u64 >> 1);
            } else {
                // SAFETY: `parent` wrote this pointer from Box::into_raw
                // and handed it over to us.
                sessions.push(*unsafe { Box::from_raw(raw as *mut ServerSession) });
            }
        }
        if settle != 0 {
            // Everything the children did before the ticket was written is
            // in their sockets by now: handle all of it.
            for _ in 0..64 {
                if !poll_round(&mut sessions, None, 0, &mut buf) {
                    break;
                }
            }
            SETTLE_DONE.fetch_max(settle, Ordering::AcqRel);
        }
    }
}

/// One `poll` over the sessions (and `wake`), handling what is ready: one
/// message of a live session, everything left of one whose child closed
/// its end (then the session ends). True if `wake` is readable or, without
/// `wake`, if anything was handled.
fn poll_round(sessions: &mut Vec<ServerSession>, wake: Option<RawFd>, timeout: i32, buf: &mut [u8]) -> bool {
    let mut pfds: Vec<libc::pollfd> = wake
        .into_iter()
        .chain(sessions.iter().map(|s| s.sock.as_raw_fd()))
        .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
        .collect();
    // SAFETY: `pfds` is a live array of pollfd of that length.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
    if n <= 0 {
        if n < 0 && real::errno() != libc::EINTR {
            std::thread::yield_now();
        }
        return false;
    }
    let skip = usize::from(wake.is_some());
    let mut added = Vec::new();
    let mut ended = Vec::new();
    let mut handled = false;
    for (i, p) in pfds[skip..].iter().enumerate() {
        if p.revents == 0 {
            continue;
        }
        handled = true;
        let closed = p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
        // A panic here ends the session (the child sees EIO), not the
        // server.
        let keep = catch_unwind(AssertUnwindSafe(|| {
            let s = &mut sessions[i];
            if closed {
                // Its messages are all queued: handle them up to the end.
                while s.serve_one(buf, &mut added) {}
                false
            } else {
                s.serve_one(buf, &mut added)
            }
        }));
        if !keep.unwrap_or(false) {
            ended.push(i);
        }
    }
    for i in ended.into_iter().rev() {
        end_session(sessions.remove(i));
    }
    sessions.extend(added);
    match wake {
        Some(_) => pfds[0].revents & libc::POLLIN != 0,
        None => handled,
    }
}

/// A session is over: release its files (engine teardown, if they were
/// the last references) and its socket.
fn end_session(session: ServerSession) {
    let ServerSession { sock, files, .. } = session;
    // Closed under the fork-time lock: no child copies a number that is
    // no longer ours, or misses one that is.
    STATE.with(|st| {
        let fd = sock.into_raw_fd();
        st.server_fds.retain(|&f| f != fd);
        close_raw(fd);
    });
    let _engine = EngineGuard::enter();
    drop(files);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_travel_with_payload_and_descriptor() {
        // Our own code, as far as the interposed `close` is concerned (it
        // keeps the program's hands off the shim's sockets).
        let _ours = uiommufd_memory::forkgate::enter();
        let (a, b) = socketpair().unwrap();
        assert!(a.as_raw_fd() > 2 && b.as_raw_fd() > 2, "out of the program's way");
        let m = Msg { op: OP_CLONE, a: -3, b: 1, c: 2, d: 3, e: -4, pid: 5, tid: 6 };
        let mut p = [-1; 2];
        // SAFETY: `p` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors we own.
        let (pr, pw) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        send_msg(a.as_raw_fd(), &m, &[7, 0, 0, 0, 9, 0, 0, 0], Some(pw.as_raw_fd())).unwrap();
        drop(pw);
        let mut buf = [0u8; 256];
        let (got, payload, fd) = recv_msg(b.as_raw_fd(), &mut buf).unwrap().unwrap();
        assert_eq!((got.op, got.a, got.b, got.c, got.d, got.e, got.pid, got.tid), (OP_CLONE, -3, 1, 2, 3, -4, 5, 6));
        assert_eq!(&buf[HEADER..HEADER + payload], &[7, 0, 0, 0, 9, 0, 0, 0]);
        // The descriptor is the pipe's write end.
        let fd = fd.unwrap();
        // SAFETY: writing a byte we own to a descriptor we own.
        assert_eq!(unsafe { libc::write(fd.as_raw_fd(), b"x".as_ptr().cast(), 1) }, 1);
        let mut x = [0u8; 1];
        // SAFETY: reading into our byte from our pipe.
        assert_eq!(unsafe { libc::read(pr.as_raw_fd(), x.as_mut_ptr().cast(), 1) }, 1);
        assert_eq!(&x, b"x");
        // The peer's end closing is the end of the session.
        drop(a);
        assert!(recv_msg(b.as_raw_fd(), &mut buf).unwrap().is_none());
        assert_eq!(kind_code("fault-queue") as usize, KINDS.iter().position(|k| *k == "fault-queue").unwrap());
        assert_eq!(kind_code("something else"), 0);
    }
}
