//! 64-bit register files as the specs describe them: a [`Field`] per
//! mnemonic, and [`register64!`] declaring a register type with a `const fn`
//! getter and a `with_*` setter per field plus the table of its fields for
//! decoders. Setters mask to the field's width and touch nothing else, so a
//! register round-trips bit for bit. Used by the VT-d (CAP/ECAP) and AMD
//! (EFR/EFR2) models.

/// One register field: name, lowest bit, width in bits and what it means.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// The spec's mnemonic.
    pub name: &'static str,
    pub lo: u32,
    pub width: u32,
    pub desc: &'static str,
}

impl Field {
    pub(crate) const fn mask(&self) -> u64 {
        if self.width >= 64 {
            u64::MAX
        } else {
            (1u64 << self.width) - 1
        }
    }

    /// The field's value in `reg`.
    pub const fn get(&self, reg: u64) -> u64 {
        (reg >> self.lo) & self.mask()
    }

    /// `reg` with the field set to `v` (masked to the field's width).
    pub const fn set(&self, reg: u64, v: u64) -> u64 {
        (reg & !(self.mask() << self.lo)) | ((v & self.mask()) << self.lo)
    }

    /// `"[hi:lo]"` or `"[bit]"`.
    pub fn bits(&self) -> String {
        if self.width == 1 {
            format!("[{}]", self.lo)
        } else {
            format!("[{}:{}]", self.lo + self.width - 1, self.lo)
        }
    }
}

/// Declares a 64-bit register type with one getter/setter pair per field
/// and a table of its fields for the decoder.
macro_rules! register64 {
    (
        $(#[$meta:meta])*
        $ty:ident, $reg_name:literal {
            $($(#[$fmeta:meta])* $get:ident / $set:ident = $mn:literal [$lo:literal; $w:literal] $desc:literal;)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $ty(pub u64);

        impl $ty {
            /// The register's name in the spec.
            pub const NAME: &'static str = $reg_name;

            /// Every field this model knows, lowest bit first.
            pub const FIELDS: &'static [$crate::regfield::Field] = &[
                $($crate::regfield::Field { name: $mn, lo: $lo, width: $w, desc: $desc },)*
            ];

            $(
                $(#[$fmeta])*
                #[doc = concat!("`", $mn, "`: ", $desc, " (bits ", stringify!($lo), ", width ", stringify!($w), ").")]
                #[inline]
                pub const fn $get(self) -> u64 {
                    $crate::regfield::Field { name: $mn, lo: $lo, width: $w, desc: $desc }.get(self.0)
                }

                #[doc = concat!("This register with `", $mn, "` set to `v` (masked to the field's width).")]
                #[inline]
                pub const fn $set(self, v: u64) -> Self {
                    Self($crate::regfield::Field { name: $mn, lo: $lo, width: $w, desc: $desc }.set(self.0, v))
                }
            )*
        }

        impl ::core::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                write!(f, "{}({:#x})", stringify!($ty), self.0)
            }
        }
    };
}

pub(crate) use register64;
