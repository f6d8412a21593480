//! Register files as the specs describe them: a [`Field`] per mnemonic,
//! and `register!` declaring a 32- or 64-bit register type with a `const fn`
//! getter and a `with_*` setter per field plus the table of its fields for
//! decoders. Setters mask to the field's width and touch nothing else, so a
//! register round-trips bit for bit. Used by the VT-d (CAP/ECAP), AMD
//! (EFR/EFR2) and SMMUv3 (IDR0..5, IIDR, AIDR) models, whose decoders
//! share [`decode`].

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

/// Declares a register type (a `u32` or `u64` newtype) with one
/// getter/setter pair per field and the table of its fields for the
/// decoder; `@ OFFSET` adds the register's offset in its register page.
macro_rules! register {
    (
        $(#[$meta:meta])*
        $ty:ident: $int:ty, $reg_name:literal $(@ $offset:literal)? {
            $($(#[$fmeta:meta])* $get:ident / $set:ident = $mn:literal [$lo:literal; $w:literal] $desc:literal;)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $ty(pub $int);

        impl $ty {
            /// The register's name in the spec.
            pub const NAME: &'static str = $reg_name;
            $(
                /// Offset in the register page.
                pub const OFFSET: u32 = $offset;
            )?

            /// Every field this model knows, lowest bit first.
            pub const FIELDS: &'static [$crate::regfield::Field] = &[
                $($crate::regfield::Field { name: $mn, lo: $lo, width: $w, desc: $desc },)*
            ];

            $(
                $(#[$fmeta])*
                #[doc = concat!("`", $mn, "`: ", $desc, " (bits ", stringify!($lo), ", width ", stringify!($w), ").")]
                // The description is the decoder's text ("[5]", "<minor>"), not markdown.
                #[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
                #[inline]
                pub const fn $get(self) -> $int {
                    // Masked to the field's width, so the narrowing is exact.
                    $crate::regfield::Field { name: $mn, lo: $lo, width: $w, desc: $desc }.get(self.0 as u64) as $int
                }

                #[doc = concat!("This register with `", $mn, "` set to `v` (masked to the field's width).")]
                #[inline]
                pub const fn $set(self, v: $int) -> Self {
                    Self($crate::regfield::Field { name: $mn, lo: $lo, width: $w, desc: $desc }.set(self.0 as u64, v as u64) as $int)
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

pub(crate) use register;

/// Renders one register for a decoder: `header` and the raw value, then a
/// line per field (mnemonic, bits, value, meaning and what `note` adds),
/// then the set bits no field covers. `bits` is the register's width.
pub fn decode(
    out: &mut Vec<String>,
    header: &str,
    reg: u64,
    bits: u32,
    fields: &[Field],
    note: impl Fn(&Field, u64) -> Option<String>,
) {
    let digits = (bits / 4) as usize + 2;
    out.push(format!("{header} {reg:#0digits$x}"));
    let name_w = fields.iter().map(|f| f.name.len() + 1).max().unwrap_or(0).max(8);
    let mut known = 0u64;
    for f in fields {
        known |= f.set(0, u64::MAX);
        let v = f.get(reg);
        let value = if f.width == 1 { format!("{v}") } else { format!("{v:#x}") };
        let mut line = format!("  {:<name_w$}{:<8} = {:<6} {}", f.name, f.bits(), value, f.desc);
        if let Some(n) = note(f, v) {
            line.push_str(&format!(" ({n})"));
        }
        out.push(line);
    }
    let unknown = reg & !known;
    if unknown != 0 {
        let set: Vec<String> = (0..64).filter(|b| unknown & (1 << b) != 0).map(|b| b.to_string()).collect();
        let which = if set.len() == 1 { "bit" } else { "bits" };
        out.push(format!("  reserved bits set: {unknown:#0digits$x} ({which} {})", set.join(", ")));
    }
}
