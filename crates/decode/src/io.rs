//! The calls on served descriptors other than ioctl: open, close, dup,
//! lseek, mmap and the read/write family, with what a read or write
//! carries decoded per file (fault records and page responses, vEVENTQ
//! headers and events, fail-nth text, device bytes at a region offset).
//!
//! Each writes the call up to its closing parenthesis; the result follows
//! with [`crate::ret`].

use core::fmt::Display;
use core::mem::size_of;

use uiommufd_abi::iommufd::*;
use uiommufd_abi::test_cmd::IOMMU_VEVENTQ_TYPE_SELFTEST;
use zerocopy::IntoBytes;

use crate::fields;
use crate::out::{all_fields, le, Fmt::*, Names, Out, F};
use crate::FileKind;

const ACCMODE: Names =
    &[(libc::O_RDONLY as u64, "O_RDONLY"), (libc::O_WRONLY as u64, "O_WRONLY"), (libc::O_RDWR as u64, "O_RDWR")];

const OPEN_FLAGS: Names = &[
    (libc::O_CREAT as u64, "O_CREAT"),
    (libc::O_EXCL as u64, "O_EXCL"),
    (libc::O_NOCTTY as u64, "O_NOCTTY"),
    (libc::O_TRUNC as u64, "O_TRUNC"),
    (libc::O_APPEND as u64, "O_APPEND"),
    (libc::O_NONBLOCK as u64, "O_NONBLOCK"),
    (libc::O_DSYNC as u64, "O_DSYNC"),
    (libc::O_SYNC as u64, "O_SYNC"),
    (libc::O_DIRECTORY as u64, "O_DIRECTORY"),
    (libc::O_NOFOLLOW as u64, "O_NOFOLLOW"),
    (libc::O_CLOEXEC as u64, "O_CLOEXEC"),
    (libc::O_PATH as u64, "O_PATH"),
    (libc::O_LARGEFILE as u64, "O_LARGEFILE"),
];

/// `O_RDWR|O_CLOEXEC`.
pub fn open_flags(o: &mut Out<'_>, flags: i32) {
    let flags = flags as u32 as u64;
    let acc = flags & libc::O_ACCMODE as u64;
    o.enm(acc, ACCMODE);
    let rest = flags & !(libc::O_ACCMODE as u64);
    if rest != 0 {
        o.s("|");
        o.flags(rest, OPEN_FLAGS);
    }
}

/// `open("/dev/iommu", O_RDWR|O_CLOEXEC)`.
pub fn open(o: &mut Out<'_>, path: &str, flags: i32) {
    o.s("open(\"");
    o.s(path);
    o.s("\", ");
    open_flags(o, flags);
    o.s(")");
}

/// `close(3</dev/iommu>)`.
pub fn close(o: &mut Out<'_>, fd: &dyn Display) {
    o.s("close(");
    o.fmt(format_args!("{fd}"));
    o.s(")");
}

/// `dup(3</dev/iommu>)` (dup, dup2, dup3 and F_DUPFD all end here).
pub fn dup(o: &mut Out<'_>, fd: &dyn Display) {
    o.s("dup(");
    o.fmt(format_args!("{fd}"));
    o.s(")");
}

const WHENCE: Names = &[(0, "SEEK_SET"), (1, "SEEK_CUR"), (2, "SEEK_END"), (3, "SEEK_DATA"), (4, "SEEK_HOLE")];

/// `lseek(3</dev/iommu>, 0, SEEK_SET)`.
pub fn lseek(o: &mut Out<'_>, fd: &dyn Display, off: i64, whence: i32) {
    o.s("lseek(");
    o.fmt(format_args!("{fd}"));
    o.fmt(format_args!(", {off}, "));
    o.enm(whence as u32 as u64, WHENCE);
    o.s(")");
}

const PROT: Names = &[
    (libc::PROT_READ as u64, "PROT_READ"),
    (libc::PROT_WRITE as u64, "PROT_WRITE"),
    (libc::PROT_EXEC as u64, "PROT_EXEC"),
];
const MAP_TYPE: Names = &[
    (libc::MAP_SHARED as u64, "MAP_SHARED"),
    (libc::MAP_PRIVATE as u64, "MAP_PRIVATE"),
    (libc::MAP_SHARED_VALIDATE as u64, "MAP_SHARED_VALIDATE"),
];
const MAP_FLAGS: Names = &[
    (libc::MAP_FIXED as u64, "MAP_FIXED"),
    (libc::MAP_ANONYMOUS as u64, "MAP_ANONYMOUS"),
    (libc::MAP_NORESERVE as u64, "MAP_NORESERVE"),
    (libc::MAP_POPULATE as u64, "MAP_POPULATE"),
    (libc::MAP_LOCKED as u64, "MAP_LOCKED"),
    (libc::MAP_FIXED_NOREPLACE as u64, "MAP_FIXED_NOREPLACE"),
];

/// A file offset of a file of `kind`: a region and the offset in it for a
/// VFIO device, else the number.
fn offset(o: &mut Out<'_>, kind: FileKind, off: i64) {
    if kind == FileKind::VfioDevice && off >= 0 {
        crate::vfio::region_offset(o, off as u64);
    } else {
        o.fmt(format_args!("{off}"));
    }
}

/// `mmap(NULL, 0x1000, PROT_READ|PROT_WRITE, MAP_SHARED, 7<vfio-device>, BAR0+0)`.
#[allow(clippy::too_many_arguments)]
pub fn mmap(o: &mut Out<'_>, kind: FileKind, addr: u64, len: u64, prot: i32, flags: i32, fd: &dyn Display, off: i64) {
    o.s("mmap(");
    o.ptr(addr);
    o.s(", ");
    o.hex(len);
    o.s(", ");
    if prot == 0 {
        o.s("PROT_NONE");
    } else {
        o.flags(prot as u32 as u64, PROT);
    }
    o.s(", ");
    let flags = flags as u32 as u64;
    o.enm(flags & 0xf, MAP_TYPE);
    if flags & !0xf != 0 {
        o.s("|");
        o.flags(flags & !0xf, MAP_FLAGS);
    }
    o.fmt(format_args!(", {fd}, "));
    offset(o, kind, off);
    o.s(")");
}

/// Where a read or write puts or takes its bytes.
#[derive(Clone, Copy, Debug)]
pub enum Buf {
    /// One buffer (read, write, pread64, pwrite64).
    Single(u64),
    /// An iovec array of `iovcnt` segments (the vector calls).
    Vector { iov: u64, iovcnt: i32 },
}

/// One call of the read/write family.
#[derive(Clone, Copy)]
pub struct Rw<'s> {
    /// `read`, `write`, `pread`, `pwrite`, `readv`, `writev`, `preadv`,
    /// `pwritev`, `preadv2`, `pwritev2`.
    pub name: &'s str,
    pub kind: FileKind,
    /// The descriptor as shown ([`crate::Fd`]).
    pub fd: &'s dyn Display,
    pub buf: Buf,
    /// The byte count of a single-buffer call.
    pub count: u64,
    /// The file offset of a positioned call (-1 for preadv2's current
    /// position).
    pub pos: Option<i64>,
    /// The flags of the v2 calls.
    pub flags: Option<i32>,
}

impl Rw<'_> {
    fn is_read(&self) -> bool {
        self.name.starts_with("read") || self.name.starts_with("pread")
    }
}

/// The call, after it: what was read (`done` bytes) or what was given to
/// write.
pub fn rw(o: &mut Out<'_>, call: &Rw<'_>, done: Option<u64>) {
    let name = match call.name {
        "pread" => "pread64",
        "pwrite" => "pwrite64",
        n => n,
    };
    let read = call.is_read();
    o.s(name);
    o.fmt(format_args!("({}, ", call.fd));
    match call.buf {
        Buf::Single(buf) => {
            match (read, done) {
                (true, Some(n)) => data(o, call.kind, true, buf, n),
                (true, None) => o.ptr(buf),
                (false, _) => data(o, call.kind, false, buf, call.count),
            }
            o.fmt(format_args!(", {}", call.count));
        }
        Buf::Vector { iov, iovcnt } => {
            let left = core::cell::Cell::new(if read { done.unwrap_or(0) } else { u64::MAX });
            let n = u64::from(iovcnt.max(0) as u32);
            let kind = call.kind;
            o.array::<[u64; 2]>(iov, n, 16, |o, seg| {
                let (base, len) = (seg[0], seg[1]);
                o.obj(|o| {
                    o.key("iov_base");
                    if read && done.is_none() {
                        o.ptr(base);
                    } else {
                        let n = len.min(left.get());
                        left.set(left.get() - n);
                        data(o, kind, read, base, n);
                    }
                    o.key("iov_len");
                    o.dec(len);
                });
            });
            o.fmt(format_args!(", {iovcnt}"));
        }
    }
    if let Some(pos) = call.pos {
        o.s(", ");
        offset(o, call.kind, pos);
    }
    if let Some(flags) = call.flags {
        o.fmt(format_args!(", {flags:#x}"));
    }
    o.s(")");
}

const PGFAULT_FLAGS: Names =
    &[(IOMMU_PGFAULT_FLAGS_PASID_VALID as u64, "PASID_VALID"), (IOMMU_PGFAULT_FLAGS_LAST_PAGE as u64, "LAST_PAGE")];
const RESPONSE_CODES: Names =
    &[(IOMMUFD_PAGE_RESP_SUCCESS as u64, "SUCCESS"), (IOMMUFD_PAGE_RESP_INVALID as u64, "INVALID")];
const VEVENT_FLAGS: Names = &[(IOMMU_VEVENTQ_FLAG_LOST_EVENTS as u64, "LOST_EVENTS")];

const PGFAULT: &[F] = fields!(IommuHwptPgfault {
    flags: u32 = Flags(PGFAULT_FLAGS),
    dev_id: u32 = Dec,
    pasid: u32 = Dec,
    grpid: u32 = Dec,
    perm: u32 = Flags(crate::selftest::PERMS),
    __reserved: u32 = Rsv,
    addr: u64 = Hex,
    length: u32 = Hex,
    cookie: u32 = Dec,
});

const PAGE_RESPONSE: &[F] = fields!(IommuHwptPageResponse { cookie: u32 = Dec, code: u32 = Enum(RESPONSE_CODES) });

/// `len` bytes at `addr` as the file of `kind` gives or takes them.
fn data(o: &mut Out<'_>, kind: FileKind, read: bool, addr: u64, len: u64) {
    match (kind, read) {
        (FileKind::FaultQueue, true) => records::<IommuHwptPgfault>(o, addr, len, PGFAULT),
        (FileKind::FaultQueue, false) => records::<IommuHwptPageResponse>(o, addr, len, PAGE_RESPONSE),
        (FileKind::Veventq(ty), true) => vevents(o, ty, addr, len),
        (FileKind::VfioDevice | FileKind::VfioMigration, _) => o.binary(addr, len as usize),
        _ => o.bytes(addr, len as usize),
    }
}

/// Whole records of `T`; anything else as bytes.
fn records<T: zerocopy::FromBytes + IntoBytes + zerocopy::Immutable>(o: &mut Out<'_>, addr: u64, len: u64, f: &[F]) {
    let size = size_of::<T>() as u64;
    if len == 0 || !len.is_multiple_of(size) {
        o.bytes(addr, len as usize);
        return;
    }
    o.array::<T>(addr, len / size, size as usize, |o, r| all_fields(o, r.as_bytes(), f));
}

/// The record a vEVENTQ of type `ty` gives after each header: its size and
/// how it prints.
/// How one record prints.
type Record = fn(&mut Out<'_>, &[u8]);

fn vevent_record(ty: u32) -> Option<(usize, Record)> {
    match ty {
        IOMMU_VEVENTQ_TYPE_ARM_SMMUV3 => Some((size_of::<IommuVeventArmSmmuv3>(), smmu_event)),
        IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV => Some((size_of::<IommuVeventTegra241Cmdqv>(), |o, b| {
            o.obj(|o| {
                o.key("lvcmdq_err_map");
                o.fmt(format_args!("[{:#x}, {:#x}]", le(b, 0, 8), le(b, 8, 8)));
            })
        })),
        IOMMU_VEVENTQ_TYPE_SELFTEST => Some((4, |o, b| {
            o.obj(|o| {
                o.key("virt_id");
                o.hex(le(b, 0, 4));
            })
        })),
        _ => None,
    }
}

/// An SMMUv3 event record (IHI 0070 §7.3): the raw words, the event and
/// the StreamID.
fn smmu_event(o: &mut Out<'_>, b: &[u8]) {
    use uiommufd_hw::smmuv3::event::{id, rec};
    let w0 = le(b, 0, 8);
    o.obj(|o| {
        o.key("evt");
        o.fmt(format_args!("[{:#x}, {:#x}, {:#x}, {:#x}]", w0, le(b, 8, 8), le(b, 16, 8), le(b, 24, 8)));
        o.fmt(format_args!(
            " /* {} sid={:#x} */",
            id::name((w0 & rec::ID_MASK) as u8),
            (w0 & rec::SID_MASK) >> rec::SID_SHIFT
        ));
    });
}

/// What a vEVENTQ read gives: a header per event (`sequence`, or the
/// lost-events flag alone), each but the lost-events one followed by its
/// record.
fn vevents(o: &mut Out<'_>, ty: u32, addr: u64, len: u64) {
    let Some((size, record)) = vevent_record(ty) else {
        o.bytes(addr, len as usize);
        return;
    };
    o.s("[");
    let mut off = 0u64;
    let mut shown = 0;
    while off + 8 <= len {
        if shown == o.opts.strsize {
            o.s(", ...");
            break;
        }
        let mut h = [0u8; 8];
        let mut r = [0u8; 32];
        if !o.mem.read(addr + off, &mut h) {
            break;
        }
        if shown > 0 {
            o.s(", ");
        }
        o.reset_sep();
        let (flags, seq) = (le(&h, 0, 4), le(&h, 4, 4));
        off += 8;
        let lost = flags & IOMMU_VEVENTQ_FLAG_LOST_EVENTS as u64 != 0;
        let have = !lost && off + size as u64 <= len && o.mem.read(addr + off, &mut r[..size]);
        o.obj(|o| {
            if flags != 0 {
                o.key("flags");
                o.flags(flags, VEVENT_FLAGS);
            }
            o.key("sequence");
            o.dec(seq);
            if have {
                o.key("data");
                record(o, &r[..size]);
            }
        });
        if have {
            off += size as u64;
        }
        shown += 1;
    }
    o.s("]");
}

const POLL_EVENTS: Names = &[
    (libc::POLLIN as u64, "POLLIN"),
    (libc::POLLPRI as u64, "POLLPRI"),
    (libc::POLLOUT as u64, "POLLOUT"),
    (libc::POLLERR as u64, "POLLERR"),
    (libc::POLLHUP as u64, "POLLHUP"),
    (libc::POLLNVAL as u64, "POLLNVAL"),
    (libc::POLLRDNORM as u64, "POLLRDNORM"),
    (libc::POLLRDBAND as u64, "POLLRDBAND"),
    (libc::POLLWRNORM as u64, "POLLWRNORM"),
    (libc::POLLWRBAND as u64, "POLLWRBAND"),
    (libc::POLLRDHUP as u64, "POLLRDHUP"),
];

/// `poll([{fd=5<...>, events=POLLIN}], 1, 1000)` (or `ppoll` with its
/// timeout as `timeout` says): `fds` is the `struct pollfd` array, `fd`
/// prints a descriptor.
pub fn poll(o: &mut Out<'_>, name: &str, fds: u64, nfds: u64, timeout: &dyn Display, fd: &dyn Fn(&mut Out<'_>, i32)) {
    o.s(name);
    o.s("(");
    o.array::<[u8; 8]>(fds, nfds, 8, |o, p| {
        o.obj(|o| {
            o.key("fd");
            fd(o, le(p, 0, 4) as u32 as i32);
            o.key("events");
            o.flags(le(p, 4, 2), POLL_EVENTS);
        })
    });
    o.fmt(format_args!(", {nfds}, {timeout})"));
}

/// After a poll that returned `ready` > 0: ` = N ([{fd=5, revents=POLLIN}])`.
pub fn poll_ret(o: &mut Out<'_>, fds: u64, nfds: u64, ready: i64) {
    o.fmt(format_args!(" = {ready} (["));
    let mut shown = 0;
    for i in 0..nfds.min(1 << 16) {
        let mut p = [0u8; 8];
        if !o.mem.read(fds + i * 8, &mut p) {
            break;
        }
        let revents = le(&p, 6, 2);
        if revents == 0 {
            continue;
        }
        if shown > 0 {
            o.s(", ");
        }
        if shown == o.opts.strsize {
            o.s("...");
            break;
        }
        o.reset_sep();
        o.obj(|o| {
            o.key("fd");
            o.fmt(format_args!("{}", le(&p, 0, 4) as u32 as i32));
            o.key("revents");
            o.flags(revents, POLL_EVENTS);
        });
        shown += 1;
    }
    o.s("])");
}
