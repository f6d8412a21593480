//! Served descriptors across `execve`.
//!
//! The kernel keeps an open file across `execve` (unless close-on-exec):
//! the libvirt pattern opens `/dev/iommu` (or a VFIO device cdev) in a
//! manager and starts QEMU with `-object iommufd,fd=N`. Our files live in
//! the process image, which `execve` replaces; the descriptor itself (its
//! backing `/dev/null`) survives. So the shim keeps, at all times, a
//! description of its served descriptors in a memfd named
//! `uiommufd-handoff` at a high descriptor number that is *not*
//! close-on-exec (so it survives every way of calling `execve`: the
//! `execl` family, `posix_spawn`, `system` included). The new image's
//! shim reads it before `main` ([`adopt`], from the library's
//! constructor), closes it, and for each listed descriptor that is still
//! open (close-on-exec ones are gone):
//!
//! - a file that holds no state beyond its open (an iommufd context with
//!   no object, a VFIO device cdev not bound, a VFIO group without a
//!   container) is opened afresh on the same descriptor: the new image
//!   gets exactly what the manager handed over;
//! - any other (objects, a binding, pinned memory, a fault queue...) is a
//!   descriptor whose state could not follow: every call on it fails with
//!   `EIO`, as a descriptor whose serving process went away does (see
//!   docs/CONFORMANCE.md), never `/dev/null`'s `ENOTTY`.
//!
//! The description is rewritten when the table changes and when a file
//! first gains state (an ioctl that succeeds). A forked child gets a copy
//! of its own at fork (the child handler, with system calls only), so a
//! child that `exec`s at once (libvirt's way) hands over what it inherited.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use uiommufd_dispatch::{File, Node};

use crate::fdtable::{self, EngineGuard, Entry};
use crate::fork_server::Remote;
use crate::{real, trace};

const NAME: &[u8] = b"uiommufd-handoff";
/// What `/proc/self/fd/N` says for it.
const LINK: &str = "/memfd:uiommufd-handoff";

/// Our memfd's descriptor, once made (-1: none).
static HANDOFF: AtomicI32 = AtomicI32::new(-1);
/// Serialises rewrites and the memfd's creation.
static WRITING: Mutex<()> = Mutex::new(());

/// Files and inherited entries known to hold state (sticky).
static DIRTY_FILES: RwLock<Vec<Weak<File>>> = RwLock::new(Vec::new());
static DIRTY_REMOTES: RwLock<Vec<Weak<Remote>>> = RwLock::new(Vec::new());

/// What a descriptor becomes in the new image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spec {
    /// Opened afresh.
    Reopen(Node),
    /// Its state could not follow: `EIO`.
    Stale,
}

thread_local! {
    /// The file this thread last found in `DIRTY_FILES`: a program's calls
    /// go to one or two files over and over, and each would otherwise take
    /// the list's read lock (two locked instructions). The weak reference
    /// keeps the allocation, and so the address, from being reused by
    /// another file while it is held, and dirtiness is sticky: an equal
    /// address is the same file, still dirty.
    static KNOWN_DIRTY: RefCell<Weak<File>> = const { RefCell::new(Weak::new()) };
}

fn is_dirty_file(f: &Arc<File>) -> bool {
    let known = KNOWN_DIRTY
        .try_with(|k| k.try_borrow().is_ok_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(f))))
        .unwrap_or(false);
    if known {
        return true;
    }
    let dirty = {
        let v = DIRTY_FILES.read().unwrap_or_else(|p| p.into_inner());
        v.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(f)))
    };
    if dirty {
        let _ = KNOWN_DIRTY.try_with(|k| {
            if let Ok(mut w) = k.try_borrow_mut() {
                *w = Arc::downgrade(f);
            }
        });
    }
    dirty
}

fn is_dirty_remote(r: &Arc<Remote>) -> bool {
    let v = DIRTY_REMOTES.read().unwrap_or_else(|p| p.into_inner());
    v.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(r)))
}

/// The node an open of which gives a file equal to `file`, if `file`
/// holds nothing beyond its open.
fn pristine(file: &Arc<File>) -> Option<Node> {
    match &**file {
        File::Iommufd(ctx) if ctx.objects().is_empty() => {
            Some(if crate::entry::opened_as_container(file) { Node::VfioContainer } else { Node::Iommu })
        }
        File::VfioDevice(f) if !f.from_group() && f.devid().is_none() => {
            f.device().map(|d| Node::VfioDevice(d.index()))
        }
        File::VfioGroup(g) => g.group().filter(|g| g.container().is_none()).map(|g| Node::VfioGroup(g.number())),
        _ => None,
    }
}

fn spec(entry: &Entry) -> Spec {
    let node = match entry {
        Entry::Local(f) if !is_dirty_file(f) => pristine(f),
        // An inherited descriptor: as its state was at the fork, unless a
        // call through it has succeeded since.
        Entry::Remote(r) if !is_dirty_remote(r) => r.local().and_then(pristine),
        _ => None,
    };
    node.map_or(Spec::Stale, Spec::Reopen)
}

fn format(fd: RawFd, spec: Spec, out: &mut String) {
    use std::fmt::Write;
    let _ = match spec {
        Spec::Reopen(Node::Iommu) => writeln!(out, "{fd} iommu"),
        Spec::Reopen(Node::VfioContainer) => writeln!(out, "{fd} container"),
        Spec::Reopen(Node::VfioDevice(n)) => writeln!(out, "{fd} dev {n}"),
        Spec::Reopen(Node::VfioGroup(n)) => writeln!(out, "{fd} group {n}"),
        Spec::Reopen(Node::FailNth(_)) | Spec::Stale => writeln!(out, "{fd} stale"),
    };
}

fn parse(text: &str) -> Vec<(RawFd, Spec)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split(' ');
            let fd: RawFd = w.next()?.parse().ok()?;
            let spec = match (w.next()?, w.next()) {
                ("iommu", None) => Spec::Reopen(Node::Iommu),
                ("container", None) => Spec::Reopen(Node::VfioContainer),
                ("dev", Some(n)) => Spec::Reopen(Node::VfioDevice(n.parse().ok()?)),
                ("group", Some(n)) => Spec::Reopen(Node::VfioGroup(n.parse().ok()?)),
                ("stale", None) => Spec::Stale,
                _ => return None,
            };
            (fd >= 0).then_some((fd, spec))
        })
        .collect()
}

/// The inode of our memfd: the program may have closed the descriptor
/// (or put another file on its number) since.
static HANDOFF_INO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn inode(fd: RawFd) -> Option<u64> {
    // SAFETY: all-zero is a valid stat; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the system call writes a stat into our local.
    let rc = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) };
    (rc == 0).then_some(st.st_ino)
}

/// Our memfd, made on first need (and again if the program closed it):
/// high, and not close-on-exec. Under `WRITING`.
fn handoff_fd() -> Option<RawFd> {
    let h = HANDOFF.load(Ordering::Acquire);
    if h >= 0 && inode(h) == Some(HANDOFF_INO.load(Ordering::Relaxed)) {
        return Some(h);
    }
    let name = std::ffi::CString::new(NAME).ok()?;
    // SAFETY: a NUL-terminated name; no flags (the descriptor must survive
    // execve).
    let m = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), 0) } as RawFd;
    if m < 0 {
        return None;
    }
    let high = crate::fork_server::move_high(m, false);
    HANDOFF_INO.store(inode(high).unwrap_or(0), Ordering::Relaxed);
    HANDOFF.store(high, Ordering::Release);
    Some(high)
}

/// Rewrite the description from the table (after it changed, or after a
/// file gained state). Best effort: without a memfd the new image sees
/// plain `/dev/null` descriptors, as before.
pub(crate) fn rewrite() {
    let _engine = EngineGuard::enter();
    let _w = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let entries = fdtable::snapshot();
    if entries.is_empty() && HANDOFF.load(Ordering::Acquire) < 0 {
        return;
    }
    let mut text = String::new();
    for (fd, e) in &entries {
        format(*fd, spec(e), &mut text);
    }
    drop(entries);
    let Some(h) = handoff_fd() else { return };
    // SAFETY: writing our buffer to our memfd, then cutting it to length
    // (system calls: neither is one of ours).
    unsafe {
        libc::syscall(libc::SYS_pwrite64, h, text.as_ptr(), text.len(), 0i64);
        libc::syscall(libc::SYS_ftruncate, h, text.len() as i64);
    }
    prune();
}

fn prune() {
    DIRTY_FILES.write().unwrap_or_else(|p| p.into_inner()).retain(|w| w.strong_count() > 0);
    DIRTY_REMOTES.write().unwrap_or_else(|p| p.into_inner()).retain(|w| w.strong_count() > 0);
}

/// A call on a served file succeeded: if that gave the file state (its
/// first object, a binding, a container), the new image of an `exec`
/// must not open it afresh.
pub(crate) fn after_local_call(file: &Arc<File>) {
    if HANDOFF.load(Ordering::Relaxed) < 0 || is_dirty_file(file) || pristine(file).is_some() {
        return;
    }
    DIRTY_FILES.write().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(file));
    rewrite();
}

/// A call through an inherited descriptor succeeded: its state (in the
/// serving engine) may have changed.
pub(crate) fn after_remote_call(remote: &Arc<Remote>) {
    if HANDOFF.load(Ordering::Relaxed) < 0 || is_dirty_remote(remote) {
        return;
    }
    DIRTY_REMOTES.write().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(remote));
    rewrite();
}

/// In a forked child (its fork handler: system calls only, no
/// allocation): a memfd of its own with the parent's description, which
/// is the child's table, at the same number.
pub(crate) fn child_after_fork() {
    let h = HANDOFF.load(Ordering::Acquire);
    if h < 0 {
        return;
    }
    let mut buf = [0u8; 16384];
    // SAFETY: reading our memfd into our buffer; making a memfd and moving
    // it onto our number (system calls only).
    unsafe {
        let n = libc::syscall(libc::SYS_pread64, h, buf.as_mut_ptr(), buf.len(), 0i64);
        let m = libc::syscall(libc::SYS_memfd_create, NAME.as_ptr().cast::<libc::c_char>(), 0) as RawFd;
        if m < 0 {
            return;
        }
        if n > 0 {
            libc::syscall(libc::SYS_pwrite64, m, buf.as_ptr(), n as usize, 0i64);
        }
        libc::syscall(libc::SYS_dup3, m, h, 0);
        libc::syscall(libc::SYS_close, m);
    }
}

/// Whether `fd` is open on `/dev/null` (the backing of a served file).
fn is_dev_null(fd: RawFd) -> bool {
    // SAFETY: all-zero is a valid stat; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the system call writes a stat into our local.
    let rc = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) };
    rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3)
}

fn fd_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) >= 0 }
}

/// At load, before `main`: take over the served descriptors an `exec`
/// left us (see the module doc), and close the description.
pub(crate) fn adopt() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
    let mut found = Vec::new();
    for e in dir.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) else { continue };
        if std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with(LINK)) {
            found.push(fd);
        }
    }
    let mut listed = Vec::new();
    for fd in found {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into our buffer from the inherited memfd.
            let n = unsafe { libc::syscall(libc::SYS_pread64, fd, buf.as_mut_ptr(), buf.len(), text.len() as i64) };
            if n <= 0 {
                break;
            }
            text.extend_from_slice(&buf[..n as usize]);
        }
        // SAFETY: closing the inherited memfd (not the program's).
        unsafe { libc::syscall(libc::SYS_close, fd) };
        listed.extend(parse(&String::from_utf8_lossy(&text)));
    }
    if listed.is_empty() {
        return;
    }
    let _engine = EngineGuard::enter();
    for (fd, spec) in listed {
        if fd_open(fd) && !fdtable::is_ours(fd) {
            adopt_one(fd, spec, "exec");
        }
    }
}

/// Serve descriptor `fd` (open on `/dev/null`, not ours yet) as `spec`
/// says: a fresh open of its node, or a descriptor whose state was lost.
fn adopt_one(fd: RawFd, spec: Spec, how: &str) {
    let file = match spec {
        Spec::Reopen(node) if is_dev_null(fd) && crate::entry::model_ok().is_ok() => {
            File::try_open(node).ok().map(Arc::new)
        }
        _ => None,
    };
    let what = match file {
        Some(f) => {
            if matches!(spec, Spec::Reopen(Node::VfioContainer)) {
                crate::entry::remember_container(&f);
            }
            let what = f.describe();
            if fdtable::install(fd, f).is_err() {
                return;
            }
            what
        }
        None => {
            if fdtable::install_entry(fd, Entry::Remote(crate::fork_server::stale())).is_err() {
                return;
            }
            "state lost (EIO)"
        }
    };
    if trace::enabled() {
        trace::line(format_args!("{how}: inherited fd {fd}: {what}"));
    }
}

// Descriptors passed with SCM_RIGHTS: the sender puts in place of each
// served descriptor a memfd whose name says what it is; the receiver (under
// the shim too) puts `/dev/null` on that number and serves it as `spec`
// says, as for an exec.

const PASSED: &str = "uiommufd-passed:";

/// A memfd standing for served descriptor `entry` in a message, or `None`.
pub(crate) fn passed_stand_in(entry: &Entry) -> Option<RawFd> {
    let mut name = String::from(PASSED);
    format(0, spec(entry), &mut name);
    // "0 iommu\n" -> "iommu"
    let text = name.trim_end().replacen("0 ", "", 1);
    let c = std::ffi::CString::new(text).ok()?;
    // SAFETY: a NUL-terminated name; close-on-exec (it only travels).
    let m = unsafe { libc::syscall(libc::SYS_memfd_create, c.as_ptr(), libc::MFD_CLOEXEC) } as RawFd;
    (m >= 0).then_some(m)
}

/// A descriptor just received: if it stands for a served descriptor, serve
/// it (keeping its number and close-on-exec flag).
pub(crate) fn received(fd: RawFd, cloexec: bool) {
    let Ok(link) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else { return };
    let link = link.to_string_lossy();
    let Some(rest) = link.strip_prefix("/memfd:").and_then(|l| l.strip_prefix(PASSED)) else { return };
    let rest = rest.trim_end_matches(" (deleted)");
    let Some(&(_, spec)) = parse(&format!("0 {rest}\n")).first() else { return };
    let flags = libc::O_RDWR | libc::O_NOCTTY | if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: a NUL-terminated literal path; libc's open.
    let null = unsafe { real::open(c"/dev/null".as_ptr(), flags, 0) };
    if null < 0 {
        return;
    }
    // SAFETY: putting /dev/null on the number we were handed, then closing
    // the temporary (system calls).
    unsafe {
        libc::syscall(libc::SYS_dup3, null, fd, if cloexec { libc::O_CLOEXEC } else { 0 });
        libc::syscall(libc::SYS_close, null);
    }
    let _engine = EngineGuard::enter();
    adopt_one(fd, spec, "SCM_RIGHTS");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_round_trip() {
        let mut s = String::new();
        for (fd, spec) in [
            (3, Spec::Reopen(Node::Iommu)),
            (4, Spec::Reopen(Node::VfioContainer)),
            (10, Spec::Reopen(Node::VfioDevice(2))),
            (11, Spec::Reopen(Node::VfioGroup(7))),
            (12, Spec::Stale),
        ] {
            format(fd, spec, &mut s);
        }
        assert_eq!(
            parse(&s),
            vec![
                (3, Spec::Reopen(Node::Iommu)),
                (4, Spec::Reopen(Node::VfioContainer)),
                (10, Spec::Reopen(Node::VfioDevice(2))),
                (11, Spec::Reopen(Node::VfioGroup(7))),
                (12, Spec::Stale)
            ]
        );
        // A line cut short (a copy that did not fit) is skipped.
        assert_eq!(parse("3 iommu\n4 de"), vec![(3, Spec::Reopen(Node::Iommu))]);
        assert_eq!(parse("-1 iommu\nx y\n5 dev\n"), vec![]);
    }
}
