//! `uiommufd trace`: one strace-style line per call on a served
//! descriptor, decoded by `uiommufd-decode` (arguments as the program
//! passed them, what the kernel wrote back, the result, the errno's name
//! and the engine's reason).
//!
//! The environment says what to do: `UIOMMUFD_TRACE=1` turns it on,
//! `UIOMMUFD_TRACE_OPTS` carries the options (`decode::Config`: `-e`,
//! `-t`, `-T`, `-f`, `-s`, `--no-addresses`), `UIOMMUFD_TRACE_FILE=PATH`
//! appends the lines to a file instead of stderr, and
//! `UIOMMUFD_TRACE_ROOT` (set by the command line) names the traced
//! program's process (`PID`, or `child-of:PID` when the command line runs
//! it as a child): without `-f` only that process's initial thread is
//! traced, as strace does; with `-f` every process and thread is, and
//! lines of any thread other than that one start with `[pid TID]`.
//!
//! Each line is formatted into a buffer on the stack and written with one
//! `write(2)`, so that lines of concurrent threads and processes do not
//! interleave; nothing here allocates. The file is opened for each line
//! and closed again: the program never sees a descriptor of ours. User
//! memory is read with the guarded copy: a bad pointer prints as an
//! address.
//!
//! The entry points call one function here per served operation, which
//! runs the operation itself (so that the argument is decoded before it
//! and the result after it).

use std::cell::Cell;
use std::fmt::{self, Display, Write as _};
use std::sync::Arc;
use std::sync::OnceLock;

use libc::c_int;
use uiommufd_abi::Errno;
use uiommufd_decode::io::{Buf, Rw};
use uiommufd_decode::{class, Config, FileKind, Ioctl, Mem, Out};
use uiommufd_dispatch::{File, Node};

use crate::fdtable::Entry;
use crate::fork_server::Remote;

/// What the environment asked for, read once.
struct State {
    cfg: Config,
    /// The pid of the traced program's process, if this is known.
    root: Option<i32>,
    /// Local time's offset from UTC, in seconds (for `-t`).
    utc_offset: i64,
}

fn state() -> Option<&'static State> {
    static STATE: OnceLock<Option<State>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let on = std::env::var_os("UIOMMUFD_TRACE").is_some_and(|v| !v.is_empty() && v != "0");
            if !on {
                return None;
            }
            let opts = std::env::var("UIOMMUFD_TRACE_OPTS").unwrap_or_default();
            let cfg = Config::from_env(&opts).unwrap_or_default();
            Some(State { cfg, root: root_pid(), utc_offset: utc_offset() })
        })
        .as_ref()
}

/// Whether calls are traced at all.
pub fn enabled() -> bool {
    state().is_some()
}

/// The traced program's pid from `UIOMMUFD_TRACE_ROOT` (see the module
/// doc): this process's if it is the program, else -1 (a descendant).
fn root_pid() -> Option<i32> {
    let v = std::env::var("UIOMMUFD_TRACE_ROOT").ok()?;
    // SAFETY: getpid and getppid have no preconditions.
    let (pid, ppid) = unsafe { (libc::getpid(), libc::getppid()) };
    let me = match v.strip_prefix("child-of:") {
        Some(parent) => parent.parse::<i32>().ok()? == ppid,
        None => v.parse::<i32>().ok()? == pid,
    };
    // A process started after the program's has another pid: comparing
    // with this one tells them apart (a fork keeps the value).
    Some(if me { pid } else { -1 })
}

fn utc_offset() -> i64 {
    // SAFETY: time(NULL) and localtime_r on our own stack values.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff
        }
    }
}

/// Who is calling: `None` if this thread is not traced; `Some(None)` for
/// the program's initial thread (no prefix); `Some(Some(tid))` for another.
fn who(st: &State) -> Option<Option<i32>> {
    let tid = uiommufd_memory::sys::gettid();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let main = st.root.is_some_and(|r| r == pid && tid == pid);
    match (main, st.cfg.follow || st.root.is_none()) {
        (true, _) => Some(None),
        (false, true) => Some(Some(tid)),
        (false, false) => None,
    }
}

/// The longest line; longer ones end in `...`.
const LINE: usize = 8192;
/// Room kept for the end of a line (`...`, ` <time>`, the newline).
const TAIL: usize = 48;

/// A line being formatted.
struct Line {
    buf: [u8; LINE],
    len: usize,
    cut: bool,
    /// When the call started (for `-T`).
    start: libc::timespec,
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LINE - TAIL - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            self.cut = true;
        }
        Ok(())
    }
}

impl Line {
    /// A line with its prefix: `[pid TID] ` and the time, as asked.
    fn start(st: &State, tid: Option<i32>) -> Line {
        let mut l = Line { buf: [0; LINE], len: 0, cut: false, start: now(libc::CLOCK_MONOTONIC) };
        if let Some(tid) = tid {
            let _ = write!(l, "[pid {tid:>5}] ");
        }
        if st.cfg.timestamps > 0 {
            let t = now(libc::CLOCK_REALTIME);
            let us = t.tv_nsec / 1000;
            if st.cfg.timestamps >= 3 {
                let _ = write!(l, "{}.{us:06} ", t.tv_sec);
            } else {
                let s = (t.tv_sec + st.utc_offset).rem_euclid(86400);
                let _ = write!(l, "{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
                let _ = if st.cfg.timestamps == 2 { write!(l, ".{us:06} ") } else { write!(l, " ") };
            }
        }
        l
    }

    fn raw(&mut self, s: &[u8]) {
        let n = s.len().min(LINE - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    /// End the line (`-T`'s time, the newline) and write it.
    fn emit(mut self, st: &State) {
        if self.cut {
            self.raw(b"...");
        }
        if st.cfg.time_spent {
            let end = now(libc::CLOCK_MONOTONIC);
            let ns = (end.tv_sec - self.start.tv_sec) * 1_000_000_000 + (end.tv_nsec - self.start.tv_nsec);
            let mut t = [0u8; 32];
            let mut c = std::io::Cursor::new(&mut t[..]);
            let _ = std::io::Write::write_fmt(
                &mut c,
                format_args!(" <{}.{:06}>", ns / 1_000_000_000, ns % 1_000_000_000 / 1000),
            );
            let n = c.position() as usize;
            self.raw(&t[..n]);
        }
        self.raw(b"\n");
        write_line(&self.buf[..self.len]);
    }
}

fn now(clock: libc::clockid_t) -> libc::timespec {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct we own.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t
}

fn write_line(bytes: &[u8]) {
    match trace_file() {
        Some(path) => {
            let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC;
            // SAFETY: a NUL-terminated path we own; the next `open` is
            // libc's, not ours.
            let fd = unsafe { crate::real::open(path.as_ptr(), flags, 0o644) };
            if fd >= 0 {
                // SAFETY: writing bytes we own to the descriptor we opened,
                // then closing it (libc's close: it was never ours to serve).
                unsafe {
                    libc::write(fd, bytes.as_ptr().cast(), bytes.len());
                    crate::real::close(fd);
                }
            }
        }
        None => {
            // SAFETY: writing bytes we own to stderr.
            unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        }
    }
}

/// `UIOMMUFD_TRACE_FILE`, read once.
fn trace_file() -> Option<&'static std::ffi::CStr> {
    static FILE: OnceLock<Option<std::ffi::CString>> = OnceLock::new();
    FILE.get_or_init(|| {
        let v = std::env::var_os("UIOMMUFD_TRACE_FILE").filter(|v| !v.is_empty())?;
        std::ffi::CString::new(v.into_encoded_bytes()).ok()
    })
    .as_deref()
}

/// The program's memory, through the guarded copy.
struct UserMem;

impl Mem for UserMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        uiommufd_memory::copy_from_user(buf, addr).is_ok()
    }
}

/// A failure as a line shows it: the errno and the engine's reason.
trait Failure {
    fn parts(&self) -> (Errno, &'static str);
}

impl Failure for uiommufd_core::Error {
    fn parts(&self) -> (Errno, &'static str) {
        (self.errno, self.context)
    }
}

impl Failure for Errno {
    fn parts(&self) -> (Errno, &'static str) {
        (*self, "in the parent's engine")
    }
}

impl Failure for c_int {
    fn parts(&self) -> (Errno, &'static str) {
        (Errno(*self), "")
    }
}

fn result<T: Copy + Into<i64>, E: Failure>(r: &Result<T, E>) -> Result<i64, (Errno, &'static str)> {
    match r {
        Ok(v) => Ok((*v).into()),
        Err(e) => Err(e.parts()),
    }
}

/// The kind of a served file.
fn kind_of(file: &Arc<File>) -> FileKind {
    match &**file {
        File::Iommufd(_) if is_container(file) => FileKind::VfioContainer,
        File::Iommufd(_) => FileKind::Iommufd,
        File::VfioDevice(_) => FileKind::VfioDevice,
        File::VfioGroup(_) => FileKind::VfioGroup,
        File::VfioMigration(_) => FileKind::VfioMigration,
        File::SelftestAccess(_) => FileKind::TestAccess,
        File::Fault(_) => FileKind::FaultQueue,
        File::Veventq(f) => FileKind::Veventq(f.veventq_type()),
        File::FailNth(_) => FileKind::FailNth,
        File::DmaBuf(_) => FileKind::DmaBuf,
    }
}

fn is_container(file: &Arc<File>) -> bool {
    crate::entry::file_devnum(file) == Some(uiommufd_devices::platform::VFIO_CONTAINER_DEV)
}

/// A served descriptor as strace's `-y` shows it: `3</dev/iommu>`.
struct FdLabel<'a>(c_int, Option<&'a Arc<File>>);

impl Display for FdLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fd = self.0;
        let Some(file) = self.1 else { return write!(f, "{fd}") };
        match &**file {
            File::Iommufd(_) if is_container(file) => write!(f, "{fd}</dev/vfio/vfio>"),
            File::Iommufd(_) => write!(f, "{fd}</dev/iommu>"),
            File::VfioDevice(d) => match d.device() {
                Some(dev) if !d.from_group() => write!(f, "{fd}</dev/vfio/devices/vfio{}>", dev.index()),
                _ => write!(f, "{fd}<anon_inode:[vfio-device]>"),
            },
            File::VfioGroup(g) => match g.group() {
                Some(g) => write!(f, "{fd}</dev/vfio/{}>", g.number()),
                None => write!(f, "{fd}</dev/vfio/?>"),
            },
            File::VfioMigration(_) => write!(f, "{fd}<anon_inode:[vfio-migration]>"),
            File::SelftestAccess(_) => write!(f, "{fd}<anon_inode:[iommufd_test_staccess]>"),
            File::Fault(_) => write!(f, "{fd}<anon_inode:[iommufd-pgfault]>"),
            File::Veventq(_) => write!(f, "{fd}<anon_inode:[iommufd-viommu-event]>"),
            File::FailNth(_) => write!(f, "{fd}<fail-nth>"),
            File::DmaBuf(_) => write!(f, "{fd}<anon_inode:dmabuf>"),
        }
    }
}

/// The file of an entry: ours, or our inert copy of an inherited one.
fn file_of(entry: &Entry) -> Option<&Arc<File>> {
    match entry {
        Entry::Local(f) => Some(f),
        Entry::Remote(r) => r.local(),
    }
}

/// Run `call` as an ioctl of `request` on `fd` (whose file is `file`),
/// tracing it.
fn traced_ioctl<E: Failure>(
    fd: c_int,
    file: Option<&Arc<File>>,
    request: u64,
    arg: u64,
    call: impl FnOnce() -> Result<i32, E>,
) -> Result<i32, E> {
    let Some(st) = state() else { return call() };
    let kind = file.map_or(FileKind::Iommufd, kind_of);
    let name = uiommufd_decode::ioctl_name(kind, request).unwrap_or("");
    let Some(tid) = who(st).filter(|_| st.cfg.filter.selects(name, uiommufd_decode::ioctl_class(kind, request))) else {
        return call();
    };
    let mut line = Line::start(st, tid);
    let mem = UserMem;
    let mut o = Out::new(&mut line, &mem, &st.cfg.opts);
    o.fmt(format_args!("ioctl({}, ", FdLabel(fd, file)));
    let decoding = Ioctl::enter(kind, request, arg, &mut o);
    let res = call();
    let r = result(&res);
    if st.cfg.shows_result(r.is_ok()) {
        let mut o = Out::new(&mut line, &mem, &st.cfg.opts);
        decoding.exit(&mut o, r.map_err(|e| e.0));
        o.s(")");
        uiommufd_decode::ret(&mut o, r);
        line.emit(st);
    }
    res
}

/// `ioctl` on a served descriptor of this process's engine.
pub fn ioctl(
    fd: c_int,
    file: &Arc<File>,
    request: u64,
    arg: u64,
    call: impl FnOnce() -> Result<i32, uiommufd_core::Error>,
) -> Result<i32, uiommufd_core::Error> {
    traced_ioctl(fd, Some(file), request, arg, call)
}

/// `ioctl` on a descriptor inherited from the parent, whose engine runs it.
pub fn remote_ioctl(
    fd: c_int,
    remote: &Remote,
    request: u64,
    arg: u64,
    call: impl FnOnce() -> Result<i32, Errno>,
) -> Result<i32, Errno> {
    traced_ioctl(fd, remote.local(), request, arg, call)
}

/// A call of the read/write family: where its bytes are.
#[derive(Clone, Copy)]
pub struct RwArgs {
    pub buf: Buf,
    /// The byte count of a single-buffer call.
    pub count: u64,
    /// The offset of a positioned call; `-1` for a v2 call at the file
    /// position.
    pub pos: Option<i64>,
    /// The flags of a v2 call.
    pub flags: Option<i32>,
}

/// `what` (`read`, `pwritev2`, ...) on the served `entry`, tracing it.
pub fn rw(
    fd: c_int,
    entry: &Entry,
    what: &str,
    args: RwArgs,
    call: impl FnOnce() -> Result<usize, uiommufd_core::Error>,
) -> Result<usize, uiommufd_core::Error> {
    let Some(st) = state() else { return call() };
    let file = file_of(entry);
    let kind = file.map_or(FileKind::Iommufd, kind_of);
    let name = match what {
        "pread" => "pread64",
        "pwrite" => "pwrite64",
        n => n,
    };
    let Some(tid) = who(st).filter(|_| st.cfg.filter.selects(name, class::IO | class::of_kind(kind))) else {
        return call();
    };
    let mut line = Line::start(st, tid);
    let res = call();
    let r = res.as_ref().map(|n| *n as i64).map_err(|e| e.parts());
    if st.cfg.shows_result(r.is_ok()) {
        let label = FdLabel(fd, file);
        let call =
            Rw { name: what, kind, fd: &label, buf: args.buf, count: args.count, pos: args.pos, flags: args.flags };
        let mem = UserMem;
        let mut o = Out::new(&mut line, &mem, &st.cfg.opts);
        uiommufd_decode::io::rw(&mut o, &call, r.ok().map(|n| n as u64));
        uiommufd_decode::ret(&mut o, r);
        line.emit(st);
    }
    res
}

/// `mmap` of a served file, tracing it.
#[allow(clippy::too_many_arguments)]
pub fn mmap(
    fd: c_int,
    file: &Arc<File>,
    addr: u64,
    len: u64,
    prot: c_int,
    flags: c_int,
    off: i64,
    call: impl FnOnce() -> Result<u64, uiommufd_core::Error>,
) -> Result<u64, uiommufd_core::Error> {
    let Some(st) = state() else { return call() };
    let kind = kind_of(file);
    let Some(tid) = who(st).filter(|_| st.cfg.filter.selects("mmap", class::MMAP | class::of_kind(kind))) else {
        return call();
    };
    let mut line = Line::start(st, tid);
    let res = call();
    if st.cfg.shows_result(res.is_ok()) {
        let mem = UserMem;
        let mut o = Out::new(&mut line, &mem, &st.cfg.opts);
        uiommufd_decode::io::mmap(&mut o, kind, addr, len, prot, flags, &FdLabel(fd, Some(file)), off);
        uiommufd_decode::ret_ptr(&mut o, res.as_ref().map(|p| *p).map_err(|e| e.parts()));
        line.emit(st);
    }
    res
}

/// A note of the shim's own (what a descriptor passed or inherited turned
/// out to be), as strace shows what is not a call: `--- text ---`.
pub fn line(args: fmt::Arguments<'_>) {
    let Some(st) = state() else { return };
    let Some(tid) = who(st) else { return };
    let mut line = Line::start(st, tid);
    let _ = write!(line, "--- {args} ---");
    line.emit(st);
}

/// A line for a call that reads no user memory: `what` writes the call,
/// `r` is its result.
fn simple(name: &str, classes: u32, r: Result<i64, (Errno, &'static str)>, what: impl FnOnce(&mut Out<'_>)) {
    let Some(st) = state() else { return };
    let Some(tid) = who(st).filter(|_| st.cfg.filter.selects(name, classes)) else { return };
    if !st.cfg.shows_result(r.is_ok()) {
        return;
    }
    let mut line = Line::start(st, tid);
    let mut o = Out::new(&mut line, &uiommufd_decode::NoMem, &st.cfg.opts);
    what(&mut o);
    uiommufd_decode::ret(&mut o, r);
    line.emit(st);
}

/// A `ppoll` timeout as strace shows it: `{tv_sec=1, tv_nsec=0}` or
/// `NULL`, read with the guarded copy.
pub struct Timespec(pub *const libc::timespec);

impl Display for Timespec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = [0u8; 16];
        if self.0.is_null() {
            f.write_str("NULL")
        } else if UserMem.read(self.0 as u64, &mut b) {
            let (s, ns) = (
                i64::from_ne_bytes(b[..8].try_into().unwrap_or_default()),
                i64::from_ne_bytes(b[8..].try_into().unwrap_or_default()),
            );
            write!(f, "{{tv_sec={s}, tv_nsec={ns}}}")
        } else {
            write!(f, "{:p}", self.0)
        }
    }
}

/// `poll`/`ppoll`: traced when one of the descriptors is served.
pub fn poll(
    name: &str,
    fds: *const libc::pollfd,
    nfds: libc::nfds_t,
    timeout: &dyn Display,
    call: impl FnOnce() -> c_int,
) -> c_int {
    let Some(st) = state() else { return call() };
    let at = fds as u64;
    // The first served descriptor among them, if any.
    let served = (0..nfds.min(1 << 16)).find_map(|i| {
        let mut b = [0u8; 4];
        let fd = UserMem.read(at + i * 8, &mut b).then(|| i32::from_ne_bytes(b))?;
        crate::fdtable::get_entry(fd).filter(|_| crate::fdtable::is_ours(fd))
    });
    let Some(first) = served else { return call() };
    let kind = file_of(&first).map_or(FileKind::Iommufd, kind_of);
    let Some(tid) = who(st).filter(|_| st.cfg.filter.selects(name, class::IO | class::of_kind(kind))) else {
        return call();
    };
    let mut line = Line::start(st, tid);
    let rc = call();
    let errno = crate::real::errno();
    if st.cfg.shows_result(rc >= 0) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut o = Out::new(&mut line, &UserMem, &st.cfg.opts);
            let label = |o: &mut Out<'_>, fd: i32| {
                let e = crate::fdtable::get_entry(fd);
                o.fmt(format_args!("{}", FdLabel(fd, e.as_ref().and_then(file_of))));
            };
            uiommufd_decode::io::poll(&mut o, name, at, nfds, timeout, &label);
            if rc > 0 {
                uiommufd_decode::io::poll_ret(&mut o, at, nfds, rc as i64);
            } else {
                uiommufd_decode::ret(&mut o, if rc < 0 { Err((Errno(errno), "")) } else { Ok(0) });
            }
        }));
        line.emit(st);
    }
    crate::real::set_errno(errno);
    rc
}

thread_local! {
    /// Why the calling thread's last served open failed, for its line.
    static OPEN_REASON: Cell<&'static str> = const { Cell::new("") };
}

/// Say why the open being served fails (shown on its line).
pub fn open_fails_because(why: &'static str) {
    OPEN_REASON.with(|r| r.set(why));
}

/// `open` of a served node: run `call` (which returns the descriptor, or
/// -1 with errno set), tracing it.
pub fn open(node: Node, flags: c_int, call: impl FnOnce() -> c_int) -> c_int {
    if !enabled() {
        return call();
    }
    open_fails_because("");
    let fd = call();
    let errno = crate::real::errno();
    let r = if fd >= 0 { Ok(fd as i64) } else { Err((Errno(errno), OPEN_REASON.with(Cell::get))) };
    let mut tid_buf = [0u8; 48];
    let path = node_path(node, &mut tid_buf);
    let kind = match node {
        Node::Iommu => FileKind::Iommufd,
        Node::VfioContainer => FileKind::VfioContainer,
        Node::VfioDevice(_) => FileKind::VfioDevice,
        Node::VfioGroup(_) => FileKind::VfioGroup,
        Node::FailNth(_) => FileKind::FailNth,
    };
    simple("open", class::DESC | class::of_kind(kind), r, |o| uiommufd_decode::io::open(o, path, flags));
    crate::real::set_errno(errno);
    fd
}

/// The path a node is opened by, formatted into `buf`.
fn node_path(node: Node, buf: &mut [u8; 48]) -> &str {
    let mut c = std::io::Cursor::new(&mut buf[..]);
    let _ = match node {
        Node::Iommu => std::io::Write::write_fmt(&mut c, format_args!("/dev/iommu")),
        Node::VfioContainer => std::io::Write::write_fmt(&mut c, format_args!("/dev/vfio/vfio")),
        Node::VfioDevice(i) => std::io::Write::write_fmt(&mut c, format_args!("/dev/vfio/devices/vfio{i}")),
        Node::VfioGroup(g) => std::io::Write::write_fmt(&mut c, format_args!("/dev/vfio/{g}")),
        Node::FailNth(t) => std::io::Write::write_fmt(&mut c, format_args!("/proc/self/task/{t}/fail-nth")),
    };
    let n = c.position() as usize;
    std::str::from_utf8(&buf[..n]).unwrap_or("?")
}

/// The classes of a descriptor call on `file`.
fn desc_classes(file: Option<&Arc<File>>) -> u32 {
    class::DESC | file.map_or(0, |f| class::of_kind(kind_of(f)))
}

/// `close` of a served descriptor (`entry` is what it referred to).
pub fn close(fd: c_int, entry: Option<&Entry>, rc: c_int, errno: c_int) {
    let file = entry.and_then(file_of);
    let r = if rc >= 0 { Ok(rc as i64) } else { Err((Errno(errno), "")) };
    simple("close", desc_classes(file), r, |o| uiommufd_decode::io::close(o, &FdLabel(fd, file)));
}

/// A duplication of the served `oldfd` (dup, dup2, dup3, F_DUPFD) onto
/// `newfd`.
pub fn dup(oldfd: c_int, entry: &Entry, newfd: c_int) {
    simple("dup", desc_classes(file_of(entry)), Ok(newfd as i64), |o| {
        uiommufd_decode::io::dup(o, &FdLabel(oldfd, file_of(entry)))
    });
}

/// `lseek` of a served descriptor, which fails with `errno`.
pub fn lseek(fd: c_int, off: i64, whence: c_int, errno: c_int) {
    let file = crate::fdtable::get_entry(fd);
    let file = file.as_ref().and_then(file_of);
    simple("lseek", desc_classes(file), Err((Errno(errno), "")), |o| {
        uiommufd_decode::io::lseek(o, &FdLabel(fd, file), off, whence)
    });
}
