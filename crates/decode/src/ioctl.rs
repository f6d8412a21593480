//! One ioctl, decoded in two steps as strace does: its argument as the
//! program passed it ([`Ioctl::enter`], before the engine runs), then what
//! the kernel wrote back ([`Ioctl::exit`]: ` => {field=value, ...}`).
//!
//! The argument struct is copied once at entry (at most [`SNAP`] bytes, as
//! many as the kernel reads: the smaller of the user's `size`/`argsz` and
//! the struct we know) and again at exit; a field written by the kernel is
//! one marked [`Fmt::Out`] (shown after a successful call, or after a
//! failed one that changed it) or any other field whose bytes changed.

use uiommufd_abi::Errno;

use crate::out::{le, value, Fmt, Out, F};
use crate::{class, FileKind};

/// The most bytes of an argument struct kept (the largest we decode is
/// `struct iommu_test_cmd`, 72 bytes).
pub const SNAP: usize = 128;

/// Before or after the call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    Enter,
    Exit,
}

/// What an ioctl's argument is.
pub(crate) enum Arg {
    /// Nothing (the argument is ignored).
    None,
    /// The argument itself is a number.
    Int(Fmt),
    /// A pointer to a C `int` (a descriptor): `[5]`.
    IntPtr,
    /// A pointer to a NUL-terminated string.
    Str,
    /// A pointer to a struct that starts with its `u32` size (`size` or
    /// `argsz`), `len` bytes long as we know it; `extra` prints what the
    /// fields cannot say (arrays, trailing data), after them.
    Struct { len: usize, fields: &'static [F], extra: Option<fn(&mut Call<'_, '_>)> },
}

/// A command we know: its request number, its C name, the classes `-e
/// trace=` selects it by, and its argument.
pub(crate) struct Cmd {
    pub request: u32,
    pub name: &'static str,
    pub class: u32,
    pub arg: Arg,
}

/// The decoding context of one call, handed to [`Fmt::Custom`] fields and
/// `extra` printers.
pub struct Call<'x, 'a> {
    pub o: &'x mut Out<'a>,
    pub arg: u64,
    /// The struct as it was at entry.
    pub entry: &'x [u8],
    /// The struct after the call (empty before it, or if unreadable).
    pub exit: &'x [u8],
    pub phase: Phase,
    /// The call succeeded (meaningful after it).
    pub ok: bool,
    /// Bytes of the struct the program passed (its `size`, at most ours).
    pub len: usize,
    /// ` => {` was written (after the call).
    opened: bool,
}

impl Call<'_, '_> {
    /// Start a field: before the call `name=`, after it the same but
    /// opening ` => {` first.
    pub fn key(&mut self, name: &str) {
        if self.phase == Phase::Exit && !self.opened {
            self.o.s(" => ");
            self.o.s("{");
            self.opened = true;
            // A fresh object: no separator before its first field.
            self.o.reset_sep();
        }
        self.o.key(name);
    }

    /// The `len`-byte field at `off` as it was at entry.
    pub fn e(&self, off: usize, len: usize) -> u64 {
        le(self.entry, off, len)
    }

    /// The `len`-byte field at `off` after the call.
    pub fn x(&self, off: usize, len: usize) -> u64 {
        le(self.exit, off, len)
    }

    /// Whether the bytes of `f` changed during the call.
    pub fn changed(&self, f: &F) -> bool {
        self.phase == Phase::Exit && !self.exit.is_empty() && f.get(self.entry) != f.get(self.exit)
    }

    /// After the call, when output fields are worth showing: the call
    /// succeeded and its struct is readable.
    pub fn out_ok(&self) -> bool {
        self.phase == Phase::Exit && self.ok && !self.exit.is_empty()
    }

    /// The fields of a struct at base offset `base` of the argument,
    /// before or after the call.
    pub fn fields(&mut self, fields: &[F], base: usize) {
        for f in fields {
            let f = F { off: f.off + base, ..*f };
            if f.end() > self.len {
                continue;
            }
            match (self.phase, &f.fmt) {
                (_, Fmt::Custom(g)) => g(self, &f),
                (Phase::Enter, Fmt::Out(_)) => {}
                (Phase::Enter, Fmt::Rsv) => {
                    let v = f.get(self.entry);
                    if v != 0 {
                        self.key(f.name);
                        value(self.o, &f.fmt, &f, self.entry);
                    }
                }
                (Phase::Enter, fmt) => {
                    self.key(f.name);
                    value(self.o, fmt, &f, self.entry);
                }
                (Phase::Exit, fmt) => {
                    let out = matches!(fmt, Fmt::Out(_)) && self.out_ok();
                    if out || self.changed(&f) {
                        self.key(f.name);
                        value(self.o, fmt, &f, self.exit);
                    }
                }
            }
        }
    }
}

/// An ioctl between [`Ioctl::enter`] and [`Ioctl::exit`].
pub struct Ioctl {
    cmd: Option<&'static Cmd>,
    arg: u64,
    snap: [u8; SNAP],
    /// Bytes of `snap` that hold the program's struct.
    len: usize,
    readable: bool,
}

/// The command `request` names on a file of `kind`.
pub(crate) fn lookup(kind: FileKind, request: u32) -> Option<&'static Cmd> {
    let tables: &[&'static [Cmd]] = match kind {
        FileKind::Iommufd | FileKind::VfioContainer => {
            &[crate::iommufd::CMDS, crate::selftest::CMDS, crate::vfio::CONTAINER]
        }
        FileKind::VfioDevice => &[crate::vfio::DEVICE_CMDS],
        FileKind::VfioGroup => &[crate::vfio::GROUP],
        FileKind::VfioMigration => &[crate::vfio::MIGRATION_CMDS],
        _ => &[],
    };
    tables.iter().flat_map(|t| t.iter()).find(|c| c.request == request)
}

/// Every command of every file kind (for `-e trace=` names and tests).
pub(crate) fn all_commands() -> impl Iterator<Item = &'static Cmd> {
    [crate::iommufd::CMDS, crate::selftest::CMDS, crate::vfio::CONTAINER, crate::vfio::DEVICE_CMDS, crate::vfio::GROUP]
        .into_iter()
        .chain([crate::vfio::MIGRATION_CMDS])
        .flat_map(|t| t.iter())
}

/// The C name of `request` on a file of `kind`.
pub fn ioctl_name(kind: FileKind, request: u64) -> Option<&'static str> {
    lookup(kind, request as u32).map(|c| c.name)
}

/// The classes (`class::*`) `request` on a file of `kind` belongs to.
pub fn ioctl_class(kind: FileKind, request: u64) -> u32 {
    lookup(kind, request as u32).map_or(class::of_kind(kind), |c| c.class)
}

impl Ioctl {
    /// Write the command's name and its argument as the program passed it:
    /// `IOMMU_IOAS_MAP, {size=40, flags=..., ...}`.
    pub fn enter(kind: FileKind, request: u64, arg: u64, o: &mut Out<'_>) -> Ioctl {
        // The kernel's `cmd` is an unsigned int.
        let request = request as u32;
        let cmd = lookup(kind, request);
        let mut this = Ioctl { cmd, arg, snap: [0; SNAP], len: 0, readable: false };
        let Some(cmd) = cmd else {
            unknown_request(o, request);
            o.s(", ");
            o.hex(arg);
            return this;
        };
        o.s(cmd.name);
        match &cmd.arg {
            Arg::None => {}
            Arg::Int(fmt) => {
                o.s(", ");
                let f = F { name: "", off: 0, len: 8, fmt: *fmt };
                value(o, fmt, &f, &arg.to_le_bytes());
            }
            Arg::IntPtr => {
                o.s(", ");
                let mut b = [0u8; 4];
                if o.mem.read(arg, &mut b) {
                    o.fmt(format_args!("[{}]", i32::from_le_bytes(b)));
                } else {
                    o.ptr(arg);
                }
            }
            Arg::Str => {
                o.s(", ");
                o.cstr(arg);
            }
            Arg::Struct { len, .. } => {
                o.s(", ");
                let mut size = [0u8; 4];
                if !o.mem.read(arg, &mut size) {
                    o.ptr(arg);
                    return this;
                }
                let n = (u32::from_le_bytes(size) as usize).clamp(4, (*len).min(SNAP));
                this.len = n;
                this.readable = o.mem.read(arg, &mut this.snap[..n]);
                if !this.readable {
                    // The prefix was readable, the rest not: the kernel's
                    // EFAULT. Show what it could not read as an address.
                    o.ptr(arg);
                    return this;
                }
                o.s("{");
                o.reset_sep();
                this.print(o, Phase::Enter, &[], true);
                o.s("}");
            }
        }
        this
    }

    /// Write what the call wrote back (` => {...}`), if anything.
    pub fn exit(&self, o: &mut Out<'_>, ret: Result<i64, Errno>) {
        let Some(cmd) = self.cmd else { return };
        if !matches!(cmd.arg, Arg::Struct { .. }) || !self.readable {
            return;
        }
        let mut after = [0u8; SNAP];
        let exit: &[u8] = if o.mem.read(self.arg, &mut after[..self.len]) { &after[..self.len] } else { &[] };
        self.print(o, Phase::Exit, exit, ret.is_ok());
    }

    fn print(&self, o: &mut Out<'_>, phase: Phase, exit: &[u8], ok: bool) {
        let Some(Cmd { arg: Arg::Struct { fields, extra, .. }, .. }) = self.cmd else { return };
        let mut c =
            Call { o, arg: self.arg, entry: &self.snap[..self.len], exit, phase, ok, len: self.len, opened: false };
        c.fields(fields, 0);
        if let Some(extra) = extra {
            extra(&mut c);
        }
        if c.opened {
            c.o.s("}");
        }
    }
}

/// strace's spelling of a request it does not know.
fn unknown_request(o: &mut Out<'_>, request: u32) {
    use uiommufd_abi::ioctl::{ioc_nr, ioc_type, IOC_DIRSHIFT, IOC_SIZESHIFT};
    let dir = request >> IOC_DIRSHIFT;
    let size = (request >> IOC_SIZESHIFT) & 0x3fff;
    let dir = match dir {
        0 => "_IOC_NONE",
        1 => "_IOC_WRITE",
        2 => "_IOC_READ",
        _ => "_IOC_READ|_IOC_WRITE",
    };
    o.fmt(format_args!("_IOC({dir}, {:#x}, {:#x}, ", ioc_type(request), ioc_nr(request)));
    o.hex(size as u64);
    o.s(")");
}
