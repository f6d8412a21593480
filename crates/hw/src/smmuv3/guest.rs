//! What a Linux guest's arm-smmu-v3 driver writes into its memory for a
//! vSMMU, for VMMs' tests and examples that stand in for the guest: the
//! first word of a context descriptor and the attributes of a 4KB stage 1
//! page (IHI 0070 §5.4; Arm ARM D8.3), and the table indexes of a 4-level,
//! 4KB-granule, 48-bit stage 1.

use super::lpae::desc;
use super::ste::cdf;

/// CD word 0 as Linux's `arm_smmu_make_s1_cd()` writes it for a 48-bit,
/// 4KB-granule table with coherent walks: T0SZ 16, TG0 4KB, IRGN0/ORGN0
/// write-back, SH0 inner shareable, EPD1, V, IPS 48-bit, AA64, R (record
/// faults), A (abort), ASET, and `asid`. Word 1 is TTB0, word 3 the MAIR
/// ([`lpae::mair::VALUE`](super::lpae::mair::VALUE)).
pub const fn cd_word0(asid: u16) -> u64 {
    16 | cdf::RGN_WBWA << cdf::IRGN0_SHIFT
        | cdf::RGN_WBWA << cdf::ORGN0_SHIFT
        | cdf::SH_IS << cdf::SH0_SHIFT
        | cdf::EPD1
        | cdf::V
        | 5 << cdf::IPS_SHIFT
        | cdf::AA64
        | cdf::R
        | cdf::A
        | cdf::ASET
        | (asid as u64) << cdf::ASID_SHIFT
}

/// A 4KB page as Linux maps a writable, cacheable page: page type,
/// AttrIndx 1 (Normal write-back in its MAIR), AP\[1\] (EL0 access), inner
/// shareable, AF, nG. OR in the page's address.
pub const PAGE: u64 = desc::TYPE_TABLE | 1 << 2 | desc::AP_UNPRIV | desc::SH_IS | desc::AF | desc::NG;

/// A table descriptor: OR in the next table's address.
pub const TABLE: u64 = desc::TYPE_TABLE;

/// The index of `iova` in the lookup-level-`level` table of a 4KB-granule,
/// 48-bit stage 1 (levels 0 to 3).
pub const fn index(iova: u64, level: u32) -> u64 {
    (iova >> (12 + 9 * (3 - level))) & 0x1ff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_hand() {
        // T0SZ 16 | IRGN0 0x100 | ORGN0 0x400 | SH0 0x3000 | EPD1 bit 30 |
        // V bit 31 | IPS 5 << 32 | AA64 41 | R 45 | A 46 | ASET 47 | ASID.
        assert_eq!(cd_word0(3), 0x0003_e205_c000_3510);
        assert_eq!(PAGE, 0xf47);
        assert_eq!((index(0x12_3456_7000, 0), index(0x12_3456_7000, 3)), (0, 0x167));
    }
}
