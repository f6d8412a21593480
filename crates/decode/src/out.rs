//! The writer the decoders share: strace's notation for structs
//! (`{name=value, ...}`), flags (`A|B|0x10`), enums, pointers, byte
//! strings and abbreviated arrays (`[a, b, ...]`), and a tiny description
//! language for struct fields ([`F`], [`Fmt`]) so that most commands are a
//! table, not code.
//!
//! Nothing here allocates: text goes to a `fmt::Write` the caller owns
//! (the shim's is a fixed buffer on the stack), and user memory is read in
//! small pieces through [`Mem`].

use core::fmt::Write;

use zerocopy::FromBytes;

/// The traced program's memory. The shim reads it with the guarded copy
/// (a bad address is `false`, never a fault); tests use a map.
pub trait Mem {
    /// Copy `buf.len()` bytes from address `addr`; `false` if any of them
    /// cannot be read.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

/// A [`Mem`] where nothing is readable (for calls that read no memory).
pub struct NoMem;

impl Mem for NoMem {
    fn read(&self, _addr: u64, _buf: &mut [u8]) -> bool {
        false
    }
}

/// How much to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// strace's `-s`: the most bytes of a string and the most elements of
    /// an array shown; the rest is `...`.
    pub strsize: usize,
    /// Print user-space addresses (pointers in structs, mmap results) as
    /// `<ptr>`, so that two runs' traces can be compared with diff. NULL
    /// stays `NULL`: it is a different call.
    pub redact: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { strsize: 32, redact: false }
    }
}

/// Names of flag bits or enum values: `(value, name)`.
pub type Names = &'static [(u64, &'static str)];

/// The writer with the state of the struct being printed.
pub struct Out<'a> {
    w: &'a mut dyn Write,
    pub(crate) mem: &'a dyn Mem,
    pub(crate) opts: &'a Options,
    /// A separator is due before the next field or element.
    sep: bool,
}

impl<'a> Out<'a> {
    pub fn new(w: &'a mut dyn Write, mem: &'a dyn Mem, opts: &'a Options) -> Out<'a> {
        Out { w, mem, opts, sep: false }
    }

    /// Raw text.
    pub fn s(&mut self, s: &str) {
        let _ = self.w.write_str(s);
    }

    pub fn fmt(&mut self, args: core::fmt::Arguments<'_>) {
        let _ = self.w.write_fmt(args);
    }

    /// `{...}`: the fields `f` writes, comma separated.
    pub fn obj(&mut self, f: impl FnOnce(&mut Out<'a>)) {
        self.s("{");
        self.sep = false;
        f(self);
        self.s("}");
        self.sep = true;
    }

    /// Forget the separator state (a new object starts).
    pub fn reset_sep(&mut self) {
        self.sep = false;
    }

    /// The separator if one is due, then `name=`.
    pub fn key(&mut self, name: &str) {
        self.comma();
        // `type_` is C's `type`.
        self.s(name.strip_suffix('_').unwrap_or(name));
        self.s("=");
    }

    /// A separator if one is due (between fields or array elements).
    pub fn comma(&mut self) {
        if self.sep {
            self.s(", ");
        }
        self.sep = true;
    }

    pub fn dec(&mut self, v: u64) {
        self.fmt(format_args!("{v}"));
    }

    pub fn signed(&mut self, v: i64) {
        self.fmt(format_args!("{v}"));
    }

    /// Hexadecimal, `0` for zero (strace's way for addresses and lengths).
    pub fn hex(&mut self, v: u64) {
        if v == 0 {
            self.s("0");
        } else {
            self.fmt(format_args!("{v:#x}"));
        }
    }

    /// A user-space address: `NULL`, the address, or `<ptr>` when redacted.
    pub fn ptr(&mut self, v: u64) {
        if v == 0 {
            self.s("NULL");
        } else if self.opts.redact {
            self.s("<ptr>");
        } else {
            self.fmt(format_args!("{v:#x}"));
        }
    }

    /// Flag bits by name, `|`-joined, unknown bits in hex; `0` for none.
    pub fn flags(&mut self, v: u64, names: Names) {
        let mut rest = v;
        let mut first = true;
        for &(bit, name) in names {
            if bit != 0 && rest & bit == bit {
                if !first {
                    self.s("|");
                }
                self.s(name);
                rest &= !bit;
                first = false;
            }
        }
        if rest != 0 || first {
            if !first {
                self.s("|");
            }
            self.hex(rest);
        }
    }

    /// An enum value by name, or the number.
    pub fn enm(&mut self, v: u64, names: Names) {
        match names.iter().find(|(n, _)| *n == v) {
            Some((_, name)) => self.s(name),
            None if v > 0xffff => self.hex(v),
            None => self.dec(v),
        }
    }

    /// The bytes at `addr` as a C string literal with `\x` escapes, at most
    /// `strsize` of `len` (then `...`); the address if unreadable.
    pub fn bytes(&mut self, addr: u64, len: usize) {
        self.string(addr, len, false);
    }

    /// Binary data (device registers): every byte as `\x..`, and for 1, 2,
    /// 4 or 8 bytes their little-endian value as a comment.
    pub fn binary(&mut self, addr: u64, len: usize) {
        self.string(addr, len, true);
        let mut b = [0u8; 8];
        if matches!(len, 1 | 2 | 4 | 8) && self.mem.read(addr, &mut b[..len]) {
            self.fmt(format_args!(" /* {:#x} */", u64::from_le_bytes(b)));
        }
    }

    fn string(&mut self, addr: u64, len: usize, hex: bool) {
        let shown = len.min(self.opts.strsize);
        let mut buf = [0u8; 64];
        let mut done = 0;
        // Read first, so that an unreadable buffer prints as its address.
        let first = shown.min(buf.len());
        if shown > 0 && !self.mem.read(addr, &mut buf[..first]) {
            self.ptr(addr);
            return;
        }
        self.s("\"");
        while done < shown {
            let n = (shown - done).min(buf.len());
            if done > 0 && !self.mem.read(addr + done as u64, &mut buf[..n]) {
                break;
            }
            for &b in &buf[..n] {
                if hex {
                    self.fmt(format_args!("\\x{b:02x}"));
                } else {
                    self.byte(b);
                }
            }
            done += n;
        }
        self.s("\"");
        if len > shown {
            self.s("...");
        }
    }

    fn byte(&mut self, b: u8) {
        match b {
            b'"' => self.s("\\\""),
            b'\\' => self.s("\\\\"),
            b'\n' => self.s("\\n"),
            b'\t' => self.s("\\t"),
            0x20..=0x7e => {
                let c = [b];
                self.s(core::str::from_utf8(&c).unwrap_or("?"));
            }
            _ => self.fmt(format_args!("\\x{b:02x}")),
        }
    }

    /// A NUL-terminated string at `addr` (at most `strsize` bytes shown).
    pub fn cstr(&mut self, addr: u64) {
        let mut b = [0u8; 1];
        if addr == 0 || !self.mem.read(addr, &mut b) {
            self.ptr(addr);
            return;
        }
        self.s("\"");
        let mut i = 0u64;
        loop {
            if !self.mem.read(addr + i, &mut b) || b[0] == 0 {
                self.s("\"");
                return;
            }
            if i as usize == self.opts.strsize {
                self.s("\"...");
                return;
            }
            self.byte(b[0]);
            i += 1;
        }
    }

    /// `[e0, e1, ...]`: `n` elements of `stride` bytes at `addr`, each read
    /// as a `T` (the first `size_of::<T>()` bytes of its slot) and printed
    /// by `each`; at most `strsize` of them. An unreadable first element
    /// prints the address; a later one ends the list with `...`.
    pub fn array<T: FromBytes>(&mut self, addr: u64, n: u64, stride: usize, each: impl Fn(&mut Out<'a>, &T)) {
        let mut buf = [0u8; 64];
        let size = core::mem::size_of::<T>().min(stride).min(buf.len());
        let shown = n.min(self.opts.strsize as u64);
        if n > 0 && !self.mem.read(addr, &mut buf[..size]) {
            self.ptr(addr);
            return;
        }
        self.s("[");
        self.sep = false;
        for i in 0..shown {
            let Some(at) = (i as usize).checked_mul(stride).and_then(|o| addr.checked_add(o as u64)) else { break };
            if !self.mem.read(at, &mut buf[..size]) {
                self.comma();
                self.s("...");
                self.s("]");
                self.sep = true;
                return;
            }
            let v = T::read_from_prefix(&buf[..]).map(|(v, _)| v).unwrap_or_else(|_| T::new_zeroed());
            self.comma();
            each(self, &v);
        }
        if n > shown {
            self.comma();
            self.s("...");
        }
        self.s("]");
        self.sep = true;
    }
}

/// How one struct field prints.
#[derive(Clone, Copy)]
pub enum Fmt {
    Dec,
    /// A signed decimal (descriptor numbers).
    Signed,
    Hex,
    /// A user-space address.
    Ptr,
    Flags(Names),
    Enum(Names),
    /// Shown only when not zero (a value the kernel will refuse).
    Rsv,
    /// Written by the kernel: shown after the call, `=> {...}`.
    Out(&'static Fmt),
    /// A printer of its own for the value.
    With(fn(&mut Out<'_>, u64)),
    /// A printer of its own for the field's bytes (arrays in a struct).
    Bytes(fn(&mut Out<'_>, &[u8])),
    /// Code of its own, called before and after the call.
    Custom(fn(&mut crate::ioctl::Call<'_, '_>, &F)),
}

/// One field of a struct: its name, where it is, how wide (a number is 1,
/// 2, 4 or 8 bytes, little-endian; [`Fmt::Bytes`] takes any width) and how
/// it prints.
#[derive(Clone, Copy)]
pub struct F {
    pub name: &'static str,
    pub off: usize,
    pub len: usize,
    pub fmt: Fmt,
}

impl F {
    /// The field's value in `bytes` (zero past their end).
    pub fn get(&self, bytes: &[u8]) -> u64 {
        le(bytes, self.off, self.len)
    }

    pub fn end(&self) -> usize {
        self.off + self.len
    }
}

/// The `len`-byte little-endian value at `off` in `bytes` (bytes past the
/// end count as zero).
pub fn le(bytes: &[u8], off: usize, len: usize) -> u64 {
    let mut v = [0u8; 8];
    for (i, b) in v.iter_mut().enumerate().take(len.min(8)) {
        *b = bytes.get(off + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(v)
}

/// Print field `f` of the struct `bytes` the way `fmt` says (`Custom`
/// prints the number: it is for [`Call::fields`](crate::ioctl::Call::fields)).
pub fn value(o: &mut Out<'_>, fmt: &Fmt, f: &F, bytes: &[u8]) {
    let v = f.get(bytes);
    match fmt {
        Fmt::Dec | Fmt::Rsv => o.dec(v),
        Fmt::Signed => o.signed(sign_extend(v, f.len)),
        Fmt::Hex => o.hex(v),
        Fmt::Ptr => o.ptr(v),
        Fmt::Flags(n) => o.flags(v, n),
        Fmt::Enum(n) => o.enm(v, n),
        Fmt::Out(inner) => value(o, inner, f, bytes),
        Fmt::With(p) => p(o, v),
        Fmt::Bytes(p) => p(o, bytes.get(f.off..f.end()).unwrap_or(&[])),
        Fmt::Custom(_) => o.hex(v),
    }
}

fn sign_extend(v: u64, len: usize) -> i64 {
    match len {
        1 => v as u8 as i8 as i64,
        2 => v as u16 as i16 as i64,
        4 => v as u32 as i32 as i64,
        _ => v as i64,
    }
}

/// A field table for struct `$t`: `fields!(T { name: type = fmt, ... })`.
/// Each field's offset comes from `offset_of!`, its width from the type
/// written beside it; a unit test checks that each table tiles its struct.
#[macro_export]
#[doc(hidden)]
macro_rules! fields {
    ($t:ty { $($f:ident : $ty:ty = $fmt:expr),* $(,)? }) => {
        &[$($crate::out::F {
            name: stringify!($f),
            off: ::core::mem::offset_of!($t, $f),
            len: ::core::mem::size_of::<$ty>(),
            fmt: $fmt,
        }),*]
    };
}

/// Every field of `fields` that lies within `bytes`, as `{name=value, ...}`
/// (a struct read from user memory, all of it shown).
pub fn all_fields(o: &mut Out<'_>, bytes: &[u8], fields: &[F]) {
    o.obj(|o| {
        for f in fields {
            if f.end() > bytes.len() || (matches!(f.fmt, Fmt::Rsv) && f.get(bytes) == 0) {
                continue;
            }
            o.key(f.name);
            value(o, &f.fmt, f, bytes);
        }
    });
}

/// The struct of `size` bytes at `addr`, of which the program says `len`
/// are there: its fields (those within both), `...` after them if `len`
/// is larger; the address if unreadable.
pub fn user_struct(o: &mut Out<'_>, addr: u64, len: usize, size: usize, fields: &[F]) {
    let mut buf = [0u8; 64];
    let n = len.min(size).min(buf.len());
    if addr == 0 || !o.mem.read(addr, &mut buf[..n]) {
        o.ptr(addr);
        return;
    }
    all_fields(o, &buf[..n], fields);
    if len > size {
        o.s("...");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory of one region at `base`.
    pub(crate) struct Region<'b> {
        pub base: u64,
        pub bytes: &'b [u8],
    }

    impl Mem for Region<'_> {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            let Some(off) = addr.checked_sub(self.base) else { return false };
            let off = off as usize;
            match self.bytes.get(off..off + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
    }

    fn with(mem: &dyn Mem, opts: Options, f: impl FnOnce(&mut Out<'_>)) -> String {
        let mut s = String::new();
        let mut o = Out::new(&mut s, mem, &opts);
        f(&mut o);
        s
    }

    #[test]
    fn flags_enums_and_numbers() {
        const N: Names = &[(1, "A"), (2, "B"), (4, "C")];
        let o = Options::default();
        assert_eq!(with(&NoMem, o, |o| o.flags(7, N)), "A|B|C");
        assert_eq!(with(&NoMem, o, |o| o.flags(0x12, N)), "B|0x10");
        assert_eq!(with(&NoMem, o, |o| o.flags(0, N)), "0");
        assert_eq!(with(&NoMem, o, |o| o.enm(2, N)), "B");
        assert_eq!(with(&NoMem, o, |o| o.enm(9, N)), "9");
        assert_eq!(with(&NoMem, o, |o| o.enm(0xdead_beef, N)), "0xdeadbeef");
        assert_eq!(with(&NoMem, o, |o| o.ptr(0)), "NULL");
        assert_eq!(with(&NoMem, o, |o| o.ptr(0x7f00)), "0x7f00");
        assert_eq!(with(&NoMem, Options { redact: true, ..o }, |o| o.ptr(0x7f00)), "<ptr>");
        assert_eq!(
            with(&NoMem, o, |o| o.obj(|o| {
                o.key("a");
                o.dec(1);
                o.key("b");
                o.obj(|o| {
                    o.key("c");
                    o.hex(16)
                });
                o.key("d");
                o.hex(0);
            })),
            "{a=1, b={c=0x10}, d=0}"
        );
    }

    #[test]
    fn strings_and_arrays_abbreviate() {
        let data: Vec<u8> = (0u8..100).collect();
        let mem = Region { base: 0x1000, bytes: &data };
        let o = Options { strsize: 4, redact: false };
        assert_eq!(with(&mem, o, |o| o.bytes(0x1000 + 0x41, 3)), "\"ABC\"");
        assert_eq!(with(&mem, o, |o| o.bytes(0x1000, 6)), "\"\\x00\\x01\\x02\\x03\"...");
        assert_eq!(with(&mem, o, |o| o.bytes(0x9000, 6)), "0x9000");
        assert_eq!(with(&mem, o, |o| o.cstr(0x1000 + 0x30)), "\"0123\"...");
        let arr = |n| with(&mem, o, |o| o.array::<u16>(0x1000, n, 2, |o, v| o.hex(*v as u64)));
        assert_eq!(arr(2), "[0x100, 0x302]");
        assert_eq!(arr(9), "[0x100, 0x302, 0x504, 0x706, ...]");
        assert_eq!(arr(0), "[]");
        // Running off the end of readable memory ends the list.
        let short = with(&mem, Options { strsize: 100, ..o }, |o| o.array::<u64>(0x1000, 20, 8, |o, v| o.hex(*v)));
        assert!(short.ends_with(", ...]"), "{short}");
    }
}
