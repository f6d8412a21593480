//! AMD IOMMU commands (spec 48882, "Commands"), as Linux 7.3 builds
//! them (`build_inv_iommu_pages()`, `build_inv_dte()`,
//! `build_completion_wait()`, `build_inv_all()` in `iommu.c`), and their
//! decoding.
//!
//! A command is 128 bits, here two little-endian words: the opcode is in
//! bits 63:60 of the first (`CMD_SET_TYPE`). `INVALIDATE_IOMMU_PAGES`
//! (spec "INVALIDATE_IOMMU_PAGES") carries the PASID in bits 19:0 and the DomainID in 47:32 of
//! the first word; the second holds S (0), PDE (1), GN (2) and the address
//! (63:12). With S=1 the address also encodes the size of the naturally
//! aligned range to invalidate (spec Table "Example Page Size Encodings":
//! the lowest clear bit at or above 12 is bit `n - 1` of a 2^n range), and
//! `0x7ffff_ffff_ffff_f000` with S=1 means every page.

/// Opcodes (`CMD_*`).
pub mod op {
    pub const COMPLETION_WAIT: u8 = 0x01;
    pub const INVALIDATE_DEVTAB_ENTRY: u8 = 0x02;
    pub const INVALIDATE_IOMMU_PAGES: u8 = 0x03;
    pub const INVALIDATE_IOTLB_PAGES: u8 = 0x04;
    pub const INVALIDATE_INTERRUPT_TABLE: u8 = 0x05;
    pub const PREFETCH_IOMMU_PAGES: u8 = 0x06;
    pub const COMPLETE_PPR_REQUEST: u8 = 0x07;
    pub const INVALIDATE_IOMMU_ALL: u8 = 0x08;
}

/// `CMD_INV_IOMMU_PAGES_SIZE_MASK`: S.
pub const PAGES_SIZE: u64 = 1 << 0;
/// `CMD_INV_IOMMU_PAGES_PDE_MASK`: also page directory entries.
pub const PAGES_PDE: u64 = 1 << 1;
/// `CMD_INV_IOMMU_PAGES_GN_MASK`: guest (GVA, with PASID) translations.
pub const PAGES_GN: u64 = 1 << 2;
/// `CMD_INV_IOMMU_ALL_PAGES_ADDRESS`.
pub const ALL_PAGES_ADDRESS: u64 = 0x7fff_ffff_ffff_f000;
/// `CMD_COMPL_WAIT_STORE_MASK`.
pub const COMPL_WAIT_STORE: u64 = 1 << 0;

/// A command: two 64-bit words.
pub type Command = [u64; 2];

/// The opcode of `c`.
pub const fn opcode(c: &Command) -> u8 {
    (c[0] >> 60) as u8
}

const fn with_type(c: Command, op: u8) -> Command {
    [c[0] | ((op as u64) << 60), c[1]]
}

/// `build_inv_address()`: the address field (with S) for the inclusive
/// range `address..=last`: the smallest naturally aligned power-of-two
/// range holding both ends, or everything above 2^52.
pub const fn build_inv_address(address: u64, last: u64) -> u64 {
    let address = address & !0xfff;
    let x = address ^ last;
    let sz_lg2 = 64 - x.leading_zeros();
    if sz_lg2 <= 12 {
        return address;
    }
    if sz_lg2 > 52 {
        return ALL_PAGES_ADDRESS | PAGES_SIZE;
    }
    let ones = if sz_lg2 > 13 { ((1u64 << (sz_lg2 - 13)) - 1) << 12 } else { 0 };
    address | ones | PAGES_SIZE
}

/// `build_inv_iommu_pages()`: invalidate `address..=last` of `domid`; the
/// PASID is only encoded with GN in `flags`.
pub const fn inv_iommu_pages(address: u64, last: u64, domid: u16, pasid: u32, flags: u64) -> Command {
    let inv = build_inv_address(address, last);
    let mut w0 = (domid as u64) << 32;
    if flags & PAGES_GN != 0 {
        w0 |= pasid as u64 & 0xf_ffff;
    }
    with_type([w0, inv | flags], op::INVALIDATE_IOMMU_PAGES)
}

/// `build_inv_dte()`: invalidate the device table entry of `devid`.
pub const fn inv_dte(devid: u16) -> Command {
    with_type([devid as u64, 0], op::INVALIDATE_DEVTAB_ENTRY)
}

/// `build_completion_wait()`: store `data` at `sem_paddr` when done.
pub const fn completion_wait(sem_paddr: u64, data: u64) -> Command {
    with_type([(sem_paddr & 0x000f_ffff_ffff_fff8) | COMPL_WAIT_STORE, data], op::COMPLETION_WAIT)
}

/// `build_inv_all()`.
pub const fn inv_all() -> Command {
    with_type([0, 0], op::INVALIDATE_IOMMU_ALL)
}

/// A decoded `INVALIDATE_IOMMU_PAGES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvPages {
    pub domid: u16,
    pub pasid: u32,
    pub gn: bool,
    pub pde: bool,
    /// First byte of the range.
    pub start: u64,
    /// log2 of the range's size (64: everything).
    pub size_lg2: u32,
}

impl InvPages {
    /// The range as the IOMMU reads it (spec "INVALIDATE_IOMMU_PAGES"): S=0 one 4 KiB page; S=1
    /// a 2^n range whose size is encoded in the address.
    pub const fn decode(c: &Command) -> InvPages {
        let addr = c[1] & !0xfff;
        let s = c[1] & PAGES_SIZE != 0;
        let size_lg2 = if s { 12 + (addr >> 12).trailing_ones() + 1 } else { 12 };
        let size_lg2 = if size_lg2 > 64 { 64 } else { size_lg2 };
        let start = if size_lg2 >= 64 { 0 } else { addr & !((1u64 << size_lg2) - 1) };
        InvPages {
            domid: (c[0] >> 32) as u16,
            pasid: (c[0] & 0xf_ffff) as u32,
            gn: c[1] & PAGES_GN != 0,
            pde: c[1] & PAGES_PDE != 0,
            start,
            size_lg2,
        }
    }

    /// Whether the range covers `iova`.
    pub const fn covers(&self, iova: u64) -> bool {
        self.size_lg2 >= 64 || (iova >> self.size_lg2) == (self.start >> self.size_lg2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_by_hand() {
        // One page of domain 5: opcode 3 in 63:60, DomainID in 47:32.
        assert_eq!(inv_iommu_pages(0x1234_5000, 0x1234_5fff, 5, 0, 0), [0x3000_0005_0000_0000, 0x1234_5000]);
        // 8 KiB at 0x2000: S, no ones.
        assert_eq!(inv_iommu_pages(0x2000, 0x3fff, 1, 0, 0)[1], 0x2001);
        // 2 MiB at 0x20_0000: S and bits 19:12 set.
        assert_eq!(inv_iommu_pages(0x20_0000, 0x3f_ffff, 1, 0, PAGES_PDE)[1], 0x2f_f003);
        // A range straddling 2 MiB: the smallest aligned power of two
        // holding both ends is 4 MiB at 0.
        assert_eq!(build_inv_address(0x1f_f000, 0x20_0fff), 0x1f_f001);
        // Everything (`amd_iommu_domain_flush_all`: 0..=U64_MAX).
        assert_eq!(inv_iommu_pages(0, u64::MAX, 7, 0, PAGES_PDE), [0x3000_0007_0000_0000, 0x7fff_ffff_ffff_f003]);
        // GN: the PASID goes in 19:0.
        assert_eq!(inv_iommu_pages(0, 0xfff, 9, 0x12345, PAGES_GN), [0x3000_0009_0001_2345, 0x4]);
        // Without GN the PASID is not encoded.
        assert_eq!(inv_iommu_pages(0, 0xfff, 9, 0x12345, 0)[0], 0x3000_0009_0000_0000);
        assert_eq!(inv_dte(0x0020), [0x2000_0000_0000_0020, 0]);
        assert_eq!(completion_wait(0x1234_5678, 1), [0x1000_0000_1234_5679, 1]);
        assert_eq!(inv_all(), [0x8000_0000_0000_0000, 0]);
        assert_eq!(opcode(&inv_all()), op::INVALIDATE_IOMMU_ALL);
    }

    #[test]
    fn ranges_decode_to_what_was_encoded() {
        for (start, last) in [
            (0x5000u64, 0x5fffu64),
            (0x2000, 0x3fff),
            (0x20_0000, 0x3f_ffff),
            (0x1f_f000, 0x20_0fff),
            (1 << 40, (1 << 41) - 1),
            (0, u64::MAX),
            (0, (1 << 52) - 1),
        ] {
            let d = InvPages::decode(&inv_iommu_pages(start, last, 3, 0, 0));
            assert!(d.covers(start) && d.covers(last), "{start:#x}..={last:#x}: {d:?}");
            assert_eq!(d.domid, 3);
        }
        let d = InvPages::decode(&inv_iommu_pages(0x20_0000, 0x3f_ffff, 3, 0, 0));
        assert_eq!((d.start, d.size_lg2), (0x20_0000, 21));
        assert!(!d.covers(0x40_0000) && !d.covers(0x1f_ffff));
        let d = InvPages::decode(&inv_iommu_pages(0, u64::MAX, 3, 0, 0));
        assert_eq!((d.start, d.size_lg2), (0, 64));
        let d = InvPages::decode(&inv_iommu_pages(0x1f_f000, 0x20_0fff, 3, 0, 0));
        assert_eq!((d.start, d.size_lg2), (0, 22));
        let d = InvPages::decode(&inv_iommu_pages(0x7000, 0x7fff, 3, 0x55, PAGES_GN | PAGES_PDE));
        assert_eq!(d, InvPages { domid: 3, pasid: 0x55, gn: true, pde: true, start: 0x7000, size_lg2: 12 });
    }
}
