//! The DMA engine's programming interface: BAR0 registers, descriptor
//! format and status codes. `docs/devices/dma-engine.md` is the prose
//! version of this file; keep them together.
//!
//! BAR0 is 4 KiB, little-endian: the registers. Each register sits alone
//! in its own 8-byte word (two constant RO registers share word 0, and the
//! two error registers share word 0x58), so a driver's store to one
//! register and the device's update of another never touch the same word.
//! BAR2 (64 bytes, not mappable) holds the MSI-X table and PBA: PCIe r5.0
//! §6.8.2 keeps MSI-X structures out of any naturally aligned 4 KiB range
//! that holds other registers, and a VMM traps them.

/// BAR0 size.
pub const BAR0_SIZE: u64 = 0x1000;
/// The BAR of the MSI-X table and PBA, and its size.
pub const MSIX_BAR: u32 = 2;
pub const BAR2_SIZE: u64 = 64;
/// The device's memory (one memfd): BAR0 at 0, BAR2 at [`MSIX_MEM`].
pub const MEM_SIZE: u64 = 0x2000;
/// Where BAR2 sits in the device's memory (its own page, never mapped).
pub const MSIX_MEM: u64 = 0x1000;

/// `ID` (RO, u32): [`ID_VALUE`], "UDMA" in memory order.
pub const REG_ID: u64 = 0x00;
/// `VERSION` (RO, u32): major << 16 | minor.
pub const REG_VERSION: u64 = 0x04;
/// `CAP` (RO, u64): see `CAP_*`.
pub const REG_CAP: u64 = 0x08;
/// `CTRL` (RW, u32): see `CTRL_*`.
pub const REG_CTRL: u64 = 0x10;
/// `STATUS` (RO, u32): see `STATUS_*`.
pub const REG_STATUS: u64 = 0x18;
/// `RING_BASE` (RW, u64): IOVA of descriptor 0, 64-byte aligned. Latched
/// when the ring is enabled.
pub const REG_RING_BASE: u64 = 0x20;
/// `RING_SIZE` (RW, u32): number of descriptors, a power of two in
/// `2..=MAX_RING_SIZE`. Latched when the ring is enabled.
pub const REG_RING_SIZE: u64 = 0x28;
/// `HEAD` (RO, u32): index of the next descriptor the device will consume.
pub const REG_HEAD: u64 = 0x30;
/// `TAIL` (RW, u32): the doorbell; index one past the last descriptor the
/// driver has made valid.
pub const REG_TAIL: u64 = 0x38;
/// `COMPLETED` (RO, u64): descriptors completed since the ring reset,
/// whatever their status.
pub const REG_COMPLETED: u64 = 0x40;
/// `ERRORS` (RO, u64): descriptors completed with an error status.
pub const REG_ERRORS: u64 = 0x48;
/// `ERR_IOVA` (RO, u64): the faulting IOVA of the last fault (descriptor
/// read/write fault, fetch fault, completion fault); 0 for other errors.
pub const REG_ERR_IOVA: u64 = 0x50;
/// `ERR_CODE` (RO, u32): the last error: a descriptor error status or a
/// halt code.
pub const REG_ERR_CODE: u64 = 0x58;
/// `ERR_INDEX` (RO, u32): ring index of the descriptor of the last error.
pub const REG_ERR_INDEX: u64 = 0x5c;
/// The MSI-X table in BAR2 (one 16-byte entry), referenced by the MSI-X
/// capability.
pub const MSIX_TABLE: u64 = 0x00;
/// The MSI-X Pending Bit Array in BAR2 (one qword).
pub const MSIX_PBA: u64 = 0x20;

/// "UDMA" as a little-endian u32.
pub const ID_VALUE: u32 = u32::from_le_bytes(*b"UDMA");
/// Version 1.0.
pub const VERSION_VALUE: u32 = 0x0001_0000;

/// `CAP` bits 4:0: log2 of the largest ring.
pub const CAP_MAX_RING_LOG2_SHIFT: u32 = 0;
/// `CAP` bits 12:8: log2 of the largest transfer length.
pub const CAP_MAX_XFER_LOG2_SHIFT: u32 = 8;
/// `CAP` bits 23:16: supported opcodes, bit n for opcode n.
pub const CAP_OPCODES_SHIFT: u32 = 16;

/// log2 of the largest ring: 32768 descriptors (2 MiB of ring).
pub const MAX_RING_LOG2: u32 = 15;
pub const MAX_RING_SIZE: u32 = 1 << MAX_RING_LOG2;
/// log2 of the largest transfer: 1 GiB per descriptor.
pub const MAX_XFER_LOG2: u32 = 30;
pub const MAX_XFER: u64 = 1 << MAX_XFER_LOG2;

/// The `CAP` register's value.
pub const CAP_VALUE: u64 = (MAX_RING_LOG2 as u64) << CAP_MAX_RING_LOG2_SHIFT
    | (MAX_XFER_LOG2 as u64) << CAP_MAX_XFER_LOG2_SHIFT
    | (0b1111u64) << CAP_OPCODES_SHIFT;

/// `CTRL` bit 0: run the ring. The device latches `RING_BASE`/`RING_SIZE`
/// when it sees 0→1; clearing it stops the ring after the descriptor in
/// flight and leaves a halt. Wait for `STATUS.ENABLED` to follow before
/// changing it again.
pub const CTRL_ENABLE: u32 = 1 << 0;
/// `CTRL` bit 1: ring reset, self-clearing: disable, HEAD = TAIL = 0,
/// counters and error registers cleared. `RING_BASE`/`RING_SIZE` are kept.
pub const CTRL_RESET: u32 = 1 << 1;
/// `CTRL` bit 2: halt after a descriptor that completes with an error.
pub const CTRL_HALT_ON_ERROR: u32 = 1 << 2;
/// `CTRL` bit 3: raise MSI-X vector 0 when the ring halts.
pub const CTRL_HALT_IRQ: u32 = 1 << 3;
/// The writable bits of `CTRL`.
pub const CTRL_MASK: u32 = CTRL_ENABLE | CTRL_RESET | CTRL_HALT_ON_ERROR | CTRL_HALT_IRQ;

/// `STATUS` bit 0: the ring is enabled (the device has seen `CTRL.ENABLE`).
pub const STATUS_ENABLED: u32 = 1 << 0;
/// `STATUS` bit 1: descriptors are pending (HEAD != TAIL) and the ring runs.
pub const STATUS_BUSY: u32 = 1 << 1;
/// `STATUS` bit 2: the ring is halted; bits 15:8 say why.
pub const STATUS_HALTED: u32 = 1 << 2;
/// `STATUS` bit 3: some descriptor completed with an error since the last
/// ring reset (sticky).
pub const STATUS_ERROR: u32 = 1 << 3;
/// `STATUS` bits 15:8: the halt code while halted.
pub const STATUS_HALT_CODE_SHIFT: u32 = 8;

/// Halt codes (`STATUS` bits 15:8, and `ERR_CODE`).
pub mod halt {
    /// Fetching the descriptor at `ERR_IOVA` failed.
    pub const DESC_FETCH_FAULT: u8 = 0x20;
    /// Writing the completion at `ERR_IOVA` failed.
    pub const COMPLETION_FAULT: u8 = 0x21;
    /// Descriptors were pending while Bus Master Enable was clear: the
    /// function may not issue DMA, so it issued none.
    pub const BUS_MASTER: u8 = 0x22;
    /// `CTRL.ENABLE` with a bad `RING_BASE` (misaligned, or the ring wraps
    /// the address space) or `RING_SIZE` (not a power of two in range).
    pub const BAD_RING: u8 = 0x23;
    /// `TAIL` >= `RING_SIZE`.
    pub const BAD_TAIL: u8 = 0x24;
    /// A descriptor failed while `CTRL.HALT_ON_ERROR` was set; `ERR_CODE`
    /// holds its status.
    pub const DESC_ERROR: u8 = 0x25;
    /// The device model itself failed (a bug in uiommufd, caught): the
    /// descriptor at `HEAD` may or may not have run. Reset the ring.
    pub const INTERNAL: u8 = 0x26;
}

/// Descriptor opcodes.
pub mod opcode {
    /// Completes with SUCCESS; touches no data.
    pub const NOP: u8 = 0;
    /// `len` bytes from `src` to `dst` (one `DmaPort::dma_copy`).
    pub const COPY: u8 = 1;
    /// `len` bytes at `dst` with the 8-byte little-endian `pattern`
    /// repeated (byte i of the buffer is byte i % 8 of the pattern).
    pub const FILL: u8 = 2;
    /// Compare `len` bytes at `src` and `dst`: SUCCESS if equal, MISMATCH
    /// with `result` = offset of the first differing byte.
    pub const COMPARE: u8 = 3;
}

/// Descriptor flags.
pub mod flags {
    /// Raise MSI-X vector 0 when this descriptor completes (any status).
    pub const IRQ: u8 = 1 << 0;
    /// Issue the data requests with the descriptor's PASID.
    pub const PASID: u8 = 1 << 1;
    /// Issue the data requests in privileged mode (needs `PASID`).
    pub const PRIV: u8 = 1 << 2;
    pub const KNOWN: u8 = IRQ | PASID | PRIV;
}

/// Completion status codes (descriptor `status`).
pub mod status {
    /// Not completed: the driver writes 0 when it fills the descriptor;
    /// the device never writes it.
    pub const NONE: u32 = 0x00;
    pub const SUCCESS: u32 = 0x01;
    /// COMPARE found a difference at offset `result`. Not an error.
    pub const MISMATCH: u32 = 0x02;
    /// Unknown opcode.
    pub const BAD_OPCODE: u32 = 0x10;
    /// Reserved flag bits set.
    pub const BAD_FLAGS: u32 = 0x11;
    /// PASID flag without PASID Enable, PASID outside Max PASID Width,
    /// PRIV without PASID or without Privileged Mode Enable.
    pub const BAD_PASID: u32 = 0x12;
    /// `len` > `MAX_XFER`, or an address range that wraps 2^64.
    pub const BAD_LENGTH: u32 = 0x13;
    /// A data read failed at IOVA `result`.
    pub const READ_FAULT: u32 = 0x14;
    /// A data write failed at IOVA `result`.
    pub const WRITE_FAULT: u32 = 0x15;

    /// Whether `code` counts as an error (`ERRORS`, `STATUS.ERROR`).
    pub const fn is_error(code: u32) -> bool {
        code >= 0x10
    }
}

/// Descriptor size in bytes and its field offsets.
pub const DESC_SIZE: u64 = 64;
pub const DESC_OPCODE: usize = 0x00;
pub const DESC_FLAGS: usize = 0x01;
pub const DESC_PASID: usize = 0x04;
pub const DESC_SRC: usize = 0x08;
pub const DESC_DST: usize = 0x10;
pub const DESC_LEN: usize = 0x18;
pub const DESC_PATTERN: usize = 0x20;
/// `result` (u64), written by the device before `status`.
pub const DESC_RESULT: u64 = 0x30;
/// `status` (u32), written by the device last.
pub const DESC_STATUS: u64 = 0x38;

/// Highest PASID value bits the descriptor carries (20-bit PASIDs).
pub const PASID_MASK: u32 = (1 << 20) - 1;

/// One descriptor, as the driver writes it into the ring and the device
/// completes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub opcode: u8,
    pub flags: u8,
    pub pasid: u32,
    pub src: u64,
    pub dst: u64,
    pub len: u64,
    pub pattern: u64,
    /// Device-written: COMPARE's mismatch offset, or the faulting IOVA.
    pub result: u64,
    /// Device-written completion status ([`status`]).
    pub status: u32,
}

fn le64(b: &[u8; 64], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

fn le32(b: &[u8; 64], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

impl Descriptor {
    pub const fn nop() -> Self {
        Descriptor { opcode: opcode::NOP, flags: 0, pasid: 0, src: 0, dst: 0, len: 0, pattern: 0, result: 0, status: 0 }
    }

    pub const fn copy(dst: u64, src: u64, len: u64) -> Self {
        Descriptor { opcode: opcode::COPY, src, dst, len, ..Self::nop() }
    }

    pub const fn fill(dst: u64, len: u64, pattern: u64) -> Self {
        Descriptor { opcode: opcode::FILL, dst, len, pattern, ..Self::nop() }
    }

    pub const fn compare(a: u64, b: u64, len: u64) -> Self {
        Descriptor { opcode: opcode::COMPARE, src: a, dst: b, len, ..Self::nop() }
    }

    /// With [`flags::IRQ`].
    pub const fn with_irq(mut self) -> Self {
        self.flags |= flags::IRQ;
        self
    }

    /// With [`flags::PASID`] and `pasid`.
    pub const fn with_pasid(mut self, pasid: u32) -> Self {
        self.flags |= flags::PASID;
        self.pasid = pasid;
        self
    }

    /// With [`flags::PRIV`].
    pub const fn privileged(mut self) -> Self {
        self.flags |= flags::PRIV;
        self
    }

    /// The 64 bytes of the descriptor in the ring.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[DESC_OPCODE] = self.opcode;
        b[DESC_FLAGS] = self.flags;
        b[DESC_PASID..DESC_PASID + 4].copy_from_slice(&self.pasid.to_le_bytes());
        b[DESC_SRC..DESC_SRC + 8].copy_from_slice(&self.src.to_le_bytes());
        b[DESC_DST..DESC_DST + 8].copy_from_slice(&self.dst.to_le_bytes());
        b[DESC_LEN..DESC_LEN + 8].copy_from_slice(&self.len.to_le_bytes());
        b[DESC_PATTERN..DESC_PATTERN + 8].copy_from_slice(&self.pattern.to_le_bytes());
        let r = DESC_RESULT as usize;
        b[r..r + 8].copy_from_slice(&self.result.to_le_bytes());
        let s = DESC_STATUS as usize;
        b[s..s + 4].copy_from_slice(&self.status.to_le_bytes());
        b
    }

    /// Parse the 64 bytes of a ring slot (reserved fields are ignored).
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        Descriptor {
            opcode: b[DESC_OPCODE],
            flags: b[DESC_FLAGS],
            pasid: le32(b, DESC_PASID),
            src: le64(b, DESC_SRC),
            dst: le64(b, DESC_DST),
            len: le64(b, DESC_LEN),
            pattern: le64(b, DESC_PATTERN),
            result: le64(b, DESC_RESULT as usize),
            status: le32(b, DESC_STATUS as usize),
        }
    }
}

/// Writable bits of the BAR0 word at byte offset `word` (8-aligned), for
/// writes through `region_write`. Stores through an mmap are not masked:
/// the device keeps its own copy of every RO register and rewrites it on
/// each change.
pub(crate) const fn writable_mask(word: u64) -> u64 {
    match word {
        REG_CTRL => CTRL_MASK as u64,
        REG_RING_BASE => u64::MAX,
        REG_RING_SIZE => 0xffff_ffff,
        REG_TAIL => 0xffff_ffff,
        _ => 0,
    }
}

/// The bits of the writable BAR0 word at `word` that hold its register
/// (the rest of the word is no register: each writable register sits alone
/// in its word). A `region_write` that covers all of them can store the
/// word whole; a narrower one must keep a concurrent store to the rest.
pub(crate) const fn register_bits(word: u64) -> u64 {
    match word {
        REG_RING_BASE => u64::MAX,
        _ => 0xffff_ffff,
    }
}

/// Writable bits of the BAR2 word at byte offset `word`: MSI-X table entry
/// 0's Message Address, Upper Address, Data and Vector Control's Mask Bit
/// (§7.7.2.5-§7.7.2.8); the PBA is read-only.
pub(crate) const fn msix_writable_mask(word: u64) -> u64 {
    match word {
        MSIX_TABLE => u64::MAX,
        w if w == MSIX_TABLE + 8 => 0x0000_0001_ffff_ffff,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_round_trip() {
        let d = Descriptor { result: 7, status: status::MISMATCH, ..Descriptor::fill(0x1000, 64, 0xdead_beef) }
            .with_irq()
            .with_pasid(5)
            .privileged();
        let b = d.to_bytes();
        assert_eq!(b[0], opcode::FILL);
        assert_eq!(b[1], flags::IRQ | flags::PASID | flags::PRIV);
        assert_eq!(Descriptor::from_bytes(&b), d);
        assert_eq!(ID_VALUE.to_le_bytes(), *b"UDMA");
    }
}
