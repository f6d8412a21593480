//! PCI Express configuration space of one function, as registers with
//! write semantics.
//!
//! What is stored: the 4 KiB of PCIe extended configuration space (PCIe
//! Base Spec r5.0, §7.5: the first 256 bytes are PCI-compatible, the rest
//! holds extended capabilities from 0x100), and, per byte, a *write mask*
//! (bits software may change; all others are read-only) and a
//! *write-1-to-clear mask* (status bits software clears by writing 1). A
//! third image keeps the power-on values, which [`ConfigSpace::reset`]
//! restores (a Function Level Reset, §6.6.2, returns every register that is
//! not sticky to its default; this model has no sticky bits).
//!
//! Registers are defined with [`ConfigSpace::init_u8`] and friends, which
//! set value, write mask and W1C mask at once and record the value as its
//! power-on default. The builders ([`ConfigSpace::new`] for the type-0
//! header, `add_bar`, `add_pcie_capability`, `add_msix_capability`,
//! `add_pasid_capability`, and the generic `add_capability` /
//! `add_ext_capability`) lay out and link the capability lists, so a device
//! only states what it has.
//!
//! Invariants:
//! - a byte's W1C bits are never in its write mask;
//! - accesses are byte-exact: a write of any length changes each byte as
//!   `new = (old & !wmask) | (data & wmask)`, then clears `data & w1c`; so
//!   BAR sizing (write all-ones, read back the size mask) falls out of the
//!   BAR's write mask, at any access width;
//! - offsets are checked: an access must lie entirely in `0..4096`
//!   (`EINVAL` otherwise; `offset + len` is computed with `checked_add`).
//!
//! Side effects belong to the device, not here: [`ConfigSpace::write`]
//! reports what the write asked for (an FLR) in [`WriteEffects`], and the
//! device re-reads the decoded state it cares about (Bus Master Enable, No
//! Snoop, PASID Control, MSI-X Control) after every write.

use uiommufd_abi::Errno;

/// Size of PCIe configuration space (§7.2.2, Enhanced Configuration Access).
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Size of the PCI-compatible part, where standard capabilities live.
pub const PCI_CONFIG_SIZE: usize = 256;
/// Offset of the first extended capability (§7.6).
pub const EXT_CAP_START: u16 = 0x100;

/// Type-0 header register offsets (§7.5.1.1 common, §7.5.1.2 type 0).
pub mod header {
    /// §7.5.1.1.1 Vendor ID (RO).
    pub const VENDOR_ID: u16 = 0x00;
    /// §7.5.1.1.2 Device ID (RO).
    pub const DEVICE_ID: u16 = 0x02;
    /// §7.5.1.1.3 Command.
    pub const COMMAND: u16 = 0x04;
    /// §7.5.1.1.4 Status.
    pub const STATUS: u16 = 0x06;
    /// §7.5.1.1.5 Revision ID (RO).
    pub const REVISION_ID: u16 = 0x08;
    /// §7.5.1.1.6 Class Code (RO, 3 bytes: prog-if, sub-class, base class).
    pub const CLASS_CODE: u16 = 0x09;
    /// §7.5.1.1.7 Cache Line Size (RW, no effect on PCIe).
    pub const CACHE_LINE_SIZE: u16 = 0x0c;
    /// §7.5.1.1.8 Latency Timer (RO 0 on PCIe).
    pub const LATENCY_TIMER: u16 = 0x0d;
    /// §7.5.1.1.9 Header Type (RO; bit 7 multi-function).
    pub const HEADER_TYPE: u16 = 0x0e;
    /// §7.5.1.1.10 BIST (RO 0: not BIST capable).
    pub const BIST: u16 = 0x0f;
    /// §7.5.1.2.1 Base Address Registers 0..5.
    pub const BAR0: u16 = 0x10;
    /// §7.5.1.2.3 Subsystem Vendor ID (RO).
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    /// §7.5.1.2.3 Subsystem ID (RO).
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    /// §7.5.1.2.4 Expansion ROM Base Address (RO 0: no ROM).
    pub const ROM_ADDRESS: u16 = 0x30;
    /// §7.5.1.1.11 Capabilities Pointer (RO).
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    /// §7.5.1.1.12 Interrupt Line (RW scratch for software).
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// §7.5.1.1.13 Interrupt Pin (RO; 0 = no INTx).
    pub const INTERRUPT_PIN: u16 = 0x3d;
}

/// Command register bits (§7.5.1.1.3).
pub mod command {
    pub const IO_SPACE: u16 = 1 << 0;
    pub const MEMORY_SPACE: u16 = 1 << 1;
    /// Bus Master Enable: clear, the function issues no memory requests
    /// (no DMA, no MSI/MSI-X).
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const PARITY_ERROR_RESPONSE: u16 = 1 << 6;
    pub const SERR: u16 = 1 << 8;
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bits (§7.5.1.1.4).
pub mod status {
    pub const INTERRUPT: u16 = 1 << 3;
    /// Capabilities List: the function has a capability list at 0x34.
    pub const CAP_LIST: u16 = 1 << 4;
    pub const MASTER_DATA_PARITY_ERROR: u16 = 1 << 8;
    pub const SIGNALED_TARGET_ABORT: u16 = 1 << 11;
    pub const RECEIVED_TARGET_ABORT: u16 = 1 << 12;
    pub const RECEIVED_MASTER_ABORT: u16 = 1 << 13;
    pub const SIGNALED_SYSTEM_ERROR: u16 = 1 << 14;
    pub const DETECTED_PARITY_ERROR: u16 = 1 << 15;
    /// The RW1C error bits.
    pub const W1C: u16 = MASTER_DATA_PARITY_ERROR
        | SIGNALED_TARGET_ABORT
        | RECEIVED_TARGET_ABORT
        | RECEIVED_MASTER_ABORT
        | SIGNALED_SYSTEM_ERROR
        | DETECTED_PARITY_ERROR;
}

/// Capability IDs (PCI Code and ID Assignment Spec; PCIe r5.0 §7.5.2,
/// §7.6.3).
pub mod cap_id {
    pub const POWER_MANAGEMENT: u8 = 0x01;
    pub const MSI: u8 = 0x05;
    pub const PCI_EXPRESS: u8 = 0x10;
    pub const MSIX: u8 = 0x11;
    /// Extended capability: PASID (§7.8.8).
    pub const EXT_PASID: u16 = 0x001b;
}

/// PCI Express Capability structure (§7.5.3), offsets from the capability.
pub mod pcie {
    /// §7.5.3.2 PCI Express Capabilities Register (RO).
    pub const CAPS: u16 = 0x02;
    /// §7.5.3.3 Device Capabilities Register (RO).
    pub const DEVCAP: u16 = 0x04;
    /// §7.5.3.4 Device Control Register.
    pub const DEVCTL: u16 = 0x08;
    /// §7.5.3.5 Device Status Register.
    pub const DEVSTA: u16 = 0x0a;
    /// §7.5.3.15 Device Capabilities 2 (RO).
    pub const DEVCAP2: u16 = 0x24;
    /// §7.5.3.16 Device Control 2.
    pub const DEVCTL2: u16 = 0x28;
    /// Length of a version-2 structure up to and including Slot Status 2.
    pub const LEN: u8 = 0x3c;

    /// Capability version 2 (§7.5.3.2 bits 3:0).
    pub const CAPS_VERSION_2: u16 = 0x2;
    /// Device/Port Type (§7.5.3.2 bits 7:4): PCI Express Endpoint.
    pub const TYPE_ENDPOINT: u16 = 0x0 << 4;
    /// Device/Port Type: Root Complex Integrated Endpoint (no link).
    pub const TYPE_RC_INTEGRATED_ENDPOINT: u16 = 0x9 << 4;

    /// §7.5.3.3: Extended Tag Field Supported.
    pub const DEVCAP_EXT_TAG: u32 = 1 << 5;
    /// §7.5.3.3: Role-Based Error Reporting (required since 1.1).
    pub const DEVCAP_RBER: u32 = 1 << 15;
    /// §7.5.3.3: Function Level Reset Capability.
    pub const DEVCAP_FLR: u32 = 1 << 28;

    /// §7.5.3.4 bits 3:0: error reporting enables (RW).
    pub const DEVCTL_ERR_REPORTING: u16 = 0x000f;
    /// §7.5.3.4 bit 4: Enable Relaxed Ordering (RW, default 1).
    pub const DEVCTL_RELAXED_ORDERING: u16 = 1 << 4;
    /// §7.5.3.4 bits 7:5: Max_Payload_Size (RW, default 000b = 128 B).
    pub const DEVCTL_MAX_PAYLOAD: u16 = 0x7 << 5;
    /// §7.5.3.4 bit 8: Extended Tag Field Enable (RW).
    pub const DEVCTL_EXT_TAG: u16 = 1 << 8;
    /// §7.5.3.4 bit 11: Enable No Snoop (RW, default 1): the function may
    /// set the No Snoop attribute (§2.2.6.5) on its requests.
    pub const DEVCTL_NO_SNOOP: u16 = 1 << 11;
    /// §7.5.3.4 bits 14:12: Max_Read_Request_Size (RW, default 010b = 512 B).
    pub const DEVCTL_MAX_READ_REQ: u16 = 0x7 << 12;
    pub const DEVCTL_MAX_READ_REQ_512: u16 = 0x2 << 12;
    /// §7.5.3.4 bit 15: Initiate Function Level Reset (RW, always reads 0).
    pub const DEVCTL_FLR: u16 = 1 << 15;

    /// §7.5.3.5 bits 3:0: error detected bits (RW1C).
    pub const DEVSTA_ERR_DETECTED: u16 = 0x000f;
    /// §7.5.3.5 bit 5: Transactions Pending (RO).
    pub const DEVSTA_TRANSACTIONS_PENDING: u16 = 1 << 5;
}

/// MSI-X Capability (§7.7.2), offsets from the capability.
pub mod msix {
    /// §7.7.2.2 Message Control.
    pub const CONTROL: u16 = 0x02;
    /// §7.7.2.3 Table Offset/Table BIR (RO).
    pub const TABLE: u16 = 0x04;
    /// §7.7.2.4 PBA Offset/PBA BIR (RO).
    pub const PBA: u16 = 0x08;
    pub const LEN: u8 = 12;

    /// Message Control bits 10:0: Table Size, encoded as N-1 (RO).
    pub const CONTROL_TABLE_SIZE: u16 = 0x07ff;
    /// Message Control bit 14: Function Mask (RW).
    pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
    /// Message Control bit 15: MSI-X Enable (RW).
    pub const CONTROL_ENABLE: u16 = 1 << 15;

    /// Size of one MSI-X table entry (§7.7.2.5-§7.7.2.8: Message Address,
    /// Message Upper Address, Message Data, Vector Control).
    pub const ENTRY_SIZE: u64 = 16;
    /// Offset of Vector Control in an entry (§7.7.2.8).
    pub const ENTRY_VECTOR_CONTROL: u64 = 12;
    /// Vector Control bit 0: Mask Bit (set at reset).
    pub const VECTOR_MASKED: u32 = 1;
}

/// PASID Extended Capability (§7.8.8), offsets from the capability.
pub mod pasid {
    /// §7.8.8.2 PASID Capability Register (RO, 16 bits).
    pub const CAP: u16 = 0x04;
    /// §7.8.8.3 PASID Control Register (16 bits).
    pub const CTRL: u16 = 0x06;
    pub const LEN: u16 = 8;

    /// Capability bit 1: Execute Permission Supported.
    pub const CAP_EXECUTE: u16 = 1 << 1;
    /// Capability bit 2: Privileged Mode Supported.
    pub const CAP_PRIVILEGED: u16 = 1 << 2;
    /// Capability bits 12:8: Max PASID Width (PASIDs 0..2^width-1).
    pub const CAP_WIDTH_SHIFT: u16 = 8;
    pub const CAP_WIDTH_MASK: u16 = 0x1f << 8;

    /// Control bit 0: PASID Enable.
    pub const CTRL_ENABLE: u16 = 1 << 0;
    /// Control bit 1: Execute Permission Enable.
    pub const CTRL_EXECUTE: u16 = 1 << 1;
    /// Control bit 2: Privileged Mode Enable.
    pub const CTRL_PRIVILEGED: u16 = 1 << 2;
}

/// Who the function is: the RO identity registers of its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciId {
    pub vendor_id: u16,
    pub device_id: u16,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    pub revision_id: u8,
    /// Base class << 16 | sub-class << 8 | programming interface.
    pub class_code: u32,
}

/// The kind of a memory BAR (§7.5.1.2.1). I/O BARs are not modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// A 32-bit memory BAR (Type 00b).
    Memory32,
    /// A 64-bit memory BAR (Type 10b), taking this and the next BAR slot.
    Memory64,
}

/// A memory BAR the function decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Size in bytes: a power of two, at least 16 (4 KiB recommended).
    pub size: u64,
    pub kind: BarKind,
    pub prefetchable: bool,
}

/// What a PCI Express Capability declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcieCap {
    /// Device/Port Type, e.g. [`pcie::TYPE_RC_INTEGRATED_ENDPOINT`].
    pub port_type: u16,
    /// Function Level Reset supported (Device Control bit 15 then works).
    pub flr: bool,
}

/// What an MSI-X Capability declares; table and PBA live in a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCap {
    /// Number of vectors, 1..=2048.
    pub vectors: u16,
    pub table_bar: u8,
    /// 8-byte aligned offset of the table in its BAR.
    pub table_offset: u32,
    pub pba_bar: u8,
    /// 8-byte aligned offset of the Pending Bit Array in its BAR.
    pub pba_offset: u32,
}

/// What a PASID Extended Capability declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasidCap {
    /// Max PASID Width, 0..=20.
    pub width: u8,
    pub execute: bool,
    pub privileged: bool,
}

/// PASID Control as software set it, limited to what the function supports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PasidControl {
    pub enabled: bool,
    pub execute: bool,
    pub privileged: bool,
}

/// What a config write asked the function to do beyond storing bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteEffects {
    /// Initiate Function Level Reset was written as 1 (§7.5.3.4 bit 15,
    /// only when the function declares FLR). The device must reset itself.
    pub flr: bool,
}

/// The configuration space of one PCI Express function.
#[derive(Clone)]
pub struct ConfigSpace {
    regs: Box<[u8; CONFIG_SPACE_SIZE]>,
    wmask: Box<[u8; CONFIG_SPACE_SIZE]>,
    w1c: Box<[u8; CONFIG_SPACE_SIZE]>,
    power_on: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [Option<Bar>; 6],
    /// Offset of the last standard capability (0: none yet).
    last_cap: u16,
    /// Where the next standard capability may go.
    next_cap: u16,
    /// Offset of the last extended capability (0: none yet).
    last_ext: u16,
    next_ext: u16,
    pcie: Option<u16>,
    msix: Option<u16>,
    pasid: Option<u16>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor_id", &format_args!("{:#06x}", self.u16(header::VENDOR_ID)))
            .field("device_id", &format_args!("{:#06x}", self.u16(header::DEVICE_ID)))
            .field("command", &format_args!("{:#06x}", self.u16(header::COMMAND)))
            .field("pcie", &self.pcie)
            .field("msix", &self.msix)
            .field("pasid", &self.pasid)
            .finish_non_exhaustive()
    }
}

fn zeroed() -> Box<[u8; CONFIG_SPACE_SIZE]> {
    Box::new([0u8; CONFIG_SPACE_SIZE])
}

impl ConfigSpace {
    /// A type-0 header for a single-function PCIe device with identity
    /// `id`, no BARs, no capabilities yet, and no INTx pin.
    ///
    /// Writable header bits: Command's Memory Space, Bus Master, Parity
    /// Error Response, SERR# Enable and Interrupt Disable (I/O Space is RO
    /// 0: no I/O BARs), Status's RW1C error bits, Cache Line Size and
    /// Interrupt Line. Everything else in the header is RO.
    pub fn new(id: &PciId) -> Self {
        let mut c = ConfigSpace {
            regs: zeroed(),
            wmask: zeroed(),
            w1c: zeroed(),
            power_on: zeroed(),
            bars: [None; 6],
            last_cap: 0,
            next_cap: 0x40,
            last_ext: 0,
            next_ext: EXT_CAP_START,
            pcie: None,
            msix: None,
            pasid: None,
        };
        c.init_u16(header::VENDOR_ID, id.vendor_id, 0, 0);
        c.init_u16(header::DEVICE_ID, id.device_id, 0, 0);
        let cmd_rw = command::MEMORY_SPACE
            | command::BUS_MASTER
            | command::PARITY_ERROR_RESPONSE
            | command::SERR
            | command::INTX_DISABLE;
        c.init_u16(header::COMMAND, 0, cmd_rw, 0);
        c.init_u16(header::STATUS, 0, 0, status::W1C);
        c.init_u8(header::REVISION_ID, id.revision_id, 0, 0);
        c.init_u8(header::CLASS_CODE, id.class_code as u8, 0, 0);
        c.init_u16(header::CLASS_CODE + 1, (id.class_code >> 8) as u16, 0, 0);
        c.init_u8(header::CACHE_LINE_SIZE, 0, 0xff, 0);
        c.init_u8(header::HEADER_TYPE, 0x00, 0, 0);
        c.init_u16(header::SUBSYSTEM_VENDOR_ID, id.subsystem_vendor_id, 0, 0);
        c.init_u16(header::SUBSYSTEM_ID, id.subsystem_id, 0, 0);
        c.init_u8(header::INTERRUPT_LINE, 0, 0xff, 0);
        c.init_u8(header::INTERRUPT_PIN, 0, 0, 0);
        c
    }

    // ---- defining registers -------------------------------------------

    /// Define the byte at `offset`: power-on `value`, write mask `wmask`,
    /// write-1-to-clear mask `w1c` (bits in both masks are treated as W1C).
    pub fn init_u8(&mut self, offset: u16, value: u8, wmask: u8, w1c: u8) {
        let o = usize::from(offset);
        self.regs[o] = value;
        self.power_on[o] = value;
        self.wmask[o] = wmask & !w1c;
        self.w1c[o] = w1c;
    }

    /// [`Self::init_u8`] for a little-endian 16-bit register.
    pub fn init_u16(&mut self, offset: u16, value: u16, wmask: u16, w1c: u16) {
        self.init_bytes(offset, &value.to_le_bytes(), &wmask.to_le_bytes(), &w1c.to_le_bytes());
    }

    /// [`Self::init_u8`] for a little-endian 32-bit register.
    pub fn init_u32(&mut self, offset: u16, value: u32, wmask: u32, w1c: u32) {
        self.init_bytes(offset, &value.to_le_bytes(), &wmask.to_le_bytes(), &w1c.to_le_bytes());
    }

    fn init_bytes(&mut self, offset: u16, value: &[u8], wmask: &[u8], w1c: &[u8]) {
        for i in 0..value.len() {
            self.init_u8(offset + i as u16, value[i], wmask[i], w1c[i]);
        }
    }

    /// Declare BAR `index` (0..=5). A 64-bit BAR takes `index + 1` too.
    /// `EINVAL` for a bad index, size or an occupied slot.
    ///
    /// §7.5.1.2.1: bit 0 is 0 (memory), bits 2:1 the type, bit 3
    /// prefetchable, all RO; address bits below the size are RO 0, so
    /// writing all-ones and reading back yields `!(size - 1) | flags`.
    pub fn add_bar(&mut self, index: usize, bar: Bar) -> Result<(), Errno> {
        let slots = if bar.kind == BarKind::Memory64 { 2 } else { 1 };
        if index + slots > 6 || !bar.size.is_power_of_two() || bar.size < 16 {
            return Err(Errno::EINVAL);
        }
        if bar.kind == BarKind::Memory32 && bar.size > 1 << 31 {
            return Err(Errno::EINVAL);
        }
        if self.bars[index..index + slots].iter().any(Option::is_some) || self.bar_is_upper_half(index) {
            return Err(Errno::EINVAL);
        }
        let flags: u32 = match bar.kind {
            BarKind::Memory32 => 0,
            BarKind::Memory64 => 0b10 << 1,
        } | if bar.prefetchable { 1 << 3 } else { 0 };
        let addr_mask = !(bar.size - 1) & !0xf;
        let off = header::BAR0 + 4 * index as u16;
        self.init_u32(off, flags, addr_mask as u32, 0);
        if bar.kind == BarKind::Memory64 {
            self.init_u32(off + 4, 0, (addr_mask >> 32) as u32, 0);
        }
        self.bars[index] = Some(bar);
        Ok(())
    }

    fn bar_is_upper_half(&self, index: usize) -> bool {
        index > 0 && matches!(self.bars[index - 1], Some(Bar { kind: BarKind::Memory64, .. }))
    }

    /// The BAR declared at `index`, if any (the upper half of a 64-bit BAR
    /// has none).
    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().flatten()
    }

    /// The address software programmed into BAR `index`.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bar(index)?;
        let off = header::BAR0 + 4 * index as u16;
        let lo = u64::from(self.u32(off) & !0xf);
        let hi = match bar.kind {
            BarKind::Memory64 => u64::from(self.u32(off + 4)),
            BarKind::Memory32 => 0,
        };
        Some(hi << 32 | lo)
    }

    /// Append a standard capability `id` of `len` bytes (header included)
    /// to the list at 0x34 and return its offset. The two header bytes are
    /// RO; the caller defines the rest with `init_*`. `ENOSPC` when the
    /// 256-byte space is full.
    pub fn add_capability(&mut self, id: u8, len: u8) -> Result<u16, Errno> {
        if len < 2 {
            return Err(Errno::EINVAL);
        }
        let off = self.next_cap;
        let end = off + u16::from(len);
        if end > PCI_CONFIG_SIZE as u16 {
            return Err(Errno::ENOSPC);
        }
        self.init_u8(off, id, 0, 0);
        self.init_u8(off + 1, 0, 0, 0);
        if self.last_cap == 0 {
            self.init_u8(header::CAPABILITIES_POINTER, off as u8, 0, 0);
            let st = self.u16(header::STATUS) | status::CAP_LIST;
            self.init_u16(header::STATUS, st, 0, status::W1C);
        } else {
            self.init_u8(self.last_cap + 1, off as u8, 0, 0);
        }
        self.last_cap = off;
        self.next_cap = (end + 3) & !3;
        Ok(off)
    }

    /// Append an extended capability (§7.6.3 header: ID bits 15:0, version
    /// bits 19:16, next offset bits 31:20) of `len` bytes at or above 0x100
    /// and return its offset.
    pub fn add_ext_capability(&mut self, id: u16, version: u8, len: u16) -> Result<u16, Errno> {
        if len < 4 || version > 0xf {
            return Err(Errno::EINVAL);
        }
        let off = self.next_ext;
        let end = off.checked_add(len).ok_or(Errno::ENOSPC)?;
        if usize::from(end) > CONFIG_SPACE_SIZE {
            return Err(Errno::ENOSPC);
        }
        self.init_u32(off, u32::from(id) | u32::from(version) << 16, 0, 0);
        if self.last_ext != 0 {
            let prev = self.u32(self.last_ext) & 0x000f_ffff;
            self.init_u32(self.last_ext, prev | u32::from(off) << 20, 0, 0);
        }
        self.last_ext = off;
        self.next_ext = (end + 3) & !3;
        Ok(off)
    }

    /// Add the PCI Express Capability (§7.5.3), version 2, with the
    /// registers a Function without a link has (an RCiEP, or an Endpoint
    /// whose link registers read 0):
    /// - PCI Express Capabilities (§7.5.3.2): version 2, `port_type`;
    /// - Device Capabilities (§7.5.3.3): 128-byte max payload, Extended Tag,
    ///   Role-Based Error Reporting, FLR if `cap.flr`;
    /// - Device Control (§7.5.3.4): error enables, Relaxed Ordering (default
    ///   1), Max_Payload_Size, Extended Tag, **Enable No Snoop (bit 11,
    ///   default 1)**, Max_Read_Request_Size (default 512 B) writable;
    ///   Initiate FLR (bit 15) writable if FLR is supported, reads 0;
    /// - Device Status (§7.5.3.5): error-detected bits RW1C;
    /// - Device Capabilities 2 / Control 2 (§7.5.3.15-16): nothing optional,
    ///   RO 0.
    pub fn add_pcie_capability(&mut self, cap: PcieCap) -> Result<u16, Errno> {
        if self.pcie.is_some() {
            return Err(Errno::EEXIST);
        }
        let off = self.add_capability(cap_id::PCI_EXPRESS, pcie::LEN)?;
        self.init_u16(off + pcie::CAPS, pcie::CAPS_VERSION_2 | (cap.port_type & 0xf0), 0, 0);
        let mut devcap = pcie::DEVCAP_EXT_TAG | pcie::DEVCAP_RBER;
        if cap.flr {
            devcap |= pcie::DEVCAP_FLR;
        }
        self.init_u32(off + pcie::DEVCAP, devcap, 0, 0);
        let mut devctl_rw = pcie::DEVCTL_ERR_REPORTING
            | pcie::DEVCTL_RELAXED_ORDERING
            | pcie::DEVCTL_MAX_PAYLOAD
            | pcie::DEVCTL_EXT_TAG
            | pcie::DEVCTL_NO_SNOOP
            | pcie::DEVCTL_MAX_READ_REQ;
        if cap.flr {
            devctl_rw |= pcie::DEVCTL_FLR;
        }
        let devctl = pcie::DEVCTL_RELAXED_ORDERING | pcie::DEVCTL_NO_SNOOP | pcie::DEVCTL_MAX_READ_REQ_512;
        self.init_u16(off + pcie::DEVCTL, devctl, devctl_rw, 0);
        self.init_u16(off + pcie::DEVSTA, 0, 0, pcie::DEVSTA_ERR_DETECTED);
        self.pcie = Some(off);
        Ok(off)
    }

    /// Add the MSI-X Capability (§7.7.2): Table Size (RO, N-1), Function
    /// Mask and MSI-X Enable (RW, default 0), Table and PBA Offset/BIR (RO).
    /// The table itself lives in the BAR; the device emulates it.
    pub fn add_msix_capability(&mut self, cap: MsixCap) -> Result<u16, Errno> {
        if self.msix.is_some() {
            return Err(Errno::EEXIST);
        }
        if cap.vectors == 0 || cap.vectors > 2048 || cap.table_bar > 5 || cap.pba_bar > 5 {
            return Err(Errno::EINVAL);
        }
        if !cap.table_offset.is_multiple_of(8) || !cap.pba_offset.is_multiple_of(8) {
            return Err(Errno::EINVAL);
        }
        let off = self.add_capability(cap_id::MSIX, msix::LEN)?;
        let rw = msix::CONTROL_FUNCTION_MASK | msix::CONTROL_ENABLE;
        self.init_u16(off + msix::CONTROL, cap.vectors - 1, rw, 0);
        self.init_u32(off + msix::TABLE, cap.table_offset | u32::from(cap.table_bar), 0, 0);
        self.init_u32(off + msix::PBA, cap.pba_offset | u32::from(cap.pba_bar), 0, 0);
        self.msix = Some(off);
        Ok(off)
    }

    /// Add the PASID Extended Capability (§7.8.8), version 1: the PASID
    /// Capability register (§7.8.8.2: Execute and Privileged Mode Supported
    /// bits 1-2, Max PASID Width bits 12:8, RO) and the PASID Control
    /// register (§7.8.8.3: PASID Enable bit 0, Execute Permission Enable
    /// bit 1, Privileged Mode Enable bit 2; each RW only if supported,
    /// default 0).
    pub fn add_pasid_capability(&mut self, cap: PasidCap) -> Result<u16, Errno> {
        if self.pasid.is_some() {
            return Err(Errno::EEXIST);
        }
        if cap.width > 20 {
            return Err(Errno::EINVAL);
        }
        let off = self.add_ext_capability(cap_id::EXT_PASID, 1, pasid::LEN)?;
        let mut caps = u16::from(cap.width) << pasid::CAP_WIDTH_SHIFT;
        let mut ctrl_rw = pasid::CTRL_ENABLE;
        if cap.execute {
            caps |= pasid::CAP_EXECUTE;
            ctrl_rw |= pasid::CTRL_EXECUTE;
        }
        if cap.privileged {
            caps |= pasid::CAP_PRIVILEGED;
            ctrl_rw |= pasid::CTRL_PRIVILEGED;
        }
        self.init_u16(off + pasid::CAP, caps, 0, 0);
        self.init_u16(off + pasid::CTRL, 0, ctrl_rw, 0);
        self.pasid = Some(off);
        Ok(off)
    }

    // ---- access --------------------------------------------------------

    fn range(offset: u64, len: usize) -> Result<std::ops::Range<usize>, Errno> {
        let end = offset.checked_add(len as u64).ok_or(Errno::EINVAL)?;
        if end > CONFIG_SPACE_SIZE as u64 {
            return Err(Errno::EINVAL);
        }
        Ok(offset as usize..end as usize)
    }

    /// Read `buf.len()` bytes at `offset` (any length and alignment inside
    /// the 4 KiB; `EINVAL` past it).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let r = Self::range(offset, buf.len())?;
        buf.copy_from_slice(&self.regs[r]);
        Ok(())
    }

    /// Write `data` at `offset` with each byte's write and W1C masks (any
    /// length and alignment inside the 4 KiB; `EINVAL` past it, and then
    /// nothing is written).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<WriteEffects, Errno> {
        let r = Self::range(offset, data.len())?;
        for (i, &d) in r.clone().zip(data) {
            let old = self.regs[i];
            self.regs[i] = ((old & !self.wmask[i]) | (d & self.wmask[i])) & !(d & self.w1c[i]);
        }
        let mut fx = WriteEffects::default();
        if let Some(cap) = self.pcie {
            let devctl = cap + pcie::DEVCTL;
            if self.u16(devctl) & pcie::DEVCTL_FLR != 0 {
                // Initiate FLR always reads 0 (§7.5.3.4).
                let v = self.u16(devctl) & !pcie::DEVCTL_FLR;
                self.set_u16(devctl, v);
                fx.flr = true;
            }
        }
        Ok(fx)
    }

    /// Take the writable and W1C bits of every register from `image` (a
    /// whole config space another instance of this function had, for live
    /// migration); read-only bits keep this function's own values. `EINVAL`
    /// for an image that is not 4 KiB.
    pub fn restore(&mut self, image: &[u8]) -> Result<(), Errno> {
        if image.len() != CONFIG_SPACE_SIZE {
            return Err(Errno::EINVAL);
        }
        for (i, &b) in image.iter().enumerate() {
            let state = self.wmask[i] | self.w1c[i];
            self.regs[i] = (self.regs[i] & !state) | (b & state);
        }
        Ok(())
    }

    /// Return every register to its power-on value (FLR, §6.6.2).
    pub fn reset(&mut self) {
        self.regs.copy_from_slice(&self.power_on[..]);
    }

    /// The byte at `offset` (0 past the end).
    pub fn u8(&self, offset: u16) -> u8 {
        self.regs.get(usize::from(offset)).copied().unwrap_or(0)
    }

    /// The little-endian 16-bit value at `offset` (0 past the end).
    pub fn u16(&self, offset: u16) -> u16 {
        u16::from_le_bytes([self.u8(offset), self.u8(offset.wrapping_add(1))])
    }

    /// The little-endian 32-bit value at `offset` (0 past the end).
    pub fn u32(&self, offset: u16) -> u32 {
        u32::from(self.u16(offset)) | u32::from(self.u16(offset.wrapping_add(2))) << 16
    }

    /// Device-side update of a 16-bit register, bypassing the write masks
    /// (hardware changing its own RO bits). Ignored past the end.
    pub fn set_u16(&mut self, offset: u16, value: u16) {
        let o = usize::from(offset);
        if o + 2 <= CONFIG_SPACE_SIZE {
            self.regs[o..o + 2].copy_from_slice(&value.to_le_bytes());
        }
    }

    // ---- decoded state ------------------------------------------------

    /// Command register (§7.5.1.1.3).
    pub fn command(&self) -> u16 {
        self.u16(header::COMMAND)
    }

    /// Bus Master Enable (Command bit 2).
    pub fn bus_master(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }

    /// Memory Space Enable (Command bit 1).
    pub fn memory_space(&self) -> bool {
        self.command() & command::MEMORY_SPACE != 0
    }

    /// Offset of the PCI Express Capability.
    pub fn pcie_offset(&self) -> Option<u16> {
        self.pcie
    }

    /// Offset of the MSI-X Capability.
    pub fn msix_offset(&self) -> Option<u16> {
        self.msix
    }

    /// Offset of the PASID Extended Capability.
    pub fn pasid_offset(&self) -> Option<u16> {
        self.pasid
    }

    /// Device Control's Enable No Snoop (false without a PCIe capability:
    /// conventional PCI has no No Snoop attribute).
    pub fn no_snoop(&self) -> bool {
        self.pcie.is_some_and(|c| self.u16(c + pcie::DEVCTL) & pcie::DEVCTL_NO_SNOOP != 0)
    }

    /// Max PASID Width, if the function has a PASID capability.
    pub fn pasid_width(&self) -> Option<u8> {
        let c = self.pasid?;
        Some(((self.u16(c + pasid::CAP) & pasid::CAP_WIDTH_MASK) >> pasid::CAP_WIDTH_SHIFT) as u8)
    }

    /// PASID Control (all false without a PASID capability).
    pub fn pasid_control(&self) -> PasidControl {
        let Some(c) = self.pasid else { return PasidControl::default() };
        let v = self.u16(c + pasid::CTRL);
        PasidControl {
            enabled: v & pasid::CTRL_ENABLE != 0,
            execute: v & pasid::CTRL_EXECUTE != 0,
            privileged: v & pasid::CTRL_PRIVILEGED != 0,
        }
    }

    /// MSI-X Message Control (`None` without an MSI-X capability).
    pub fn msix_control(&self) -> Option<u16> {
        self.msix.map(|c| self.u16(c + msix::CONTROL))
    }

    /// Device-side MSI-X Enable change (what the kernel does to the
    /// function when VFIO enables or disables MSI-X).
    pub fn set_msix_enable(&mut self, enable: bool) {
        if let Some(c) = self.msix {
            let v = self.u16(c + msix::CONTROL) & !msix::CONTROL_ENABLE;
            self.set_u16(c + msix::CONTROL, v | if enable { msix::CONTROL_ENABLE } else { 0 });
        }
    }

    /// Walk the standard capability list; the offset of capability `id`.
    /// Bounded by the list's possible length, so a corrupted list cannot
    /// loop.
    pub fn find_capability(&self, id: u8) -> Option<u16> {
        if self.u16(header::STATUS) & status::CAP_LIST == 0 {
            return None;
        }
        let mut off = u16::from(self.u8(header::CAPABILITIES_POINTER) & !3);
        for _ in 0..48 {
            if off < 0x40 {
                return None;
            }
            if self.u8(off) == id {
                return Some(off);
            }
            off = u16::from(self.u8(off + 1) & !3);
        }
        None
    }

    /// Walk the extended capability list from 0x100; the offset of
    /// extended capability `id`.
    pub fn find_ext_capability(&self, id: u16) -> Option<u16> {
        let mut off = EXT_CAP_START;
        for _ in 0..(CONFIG_SPACE_SIZE / 4) {
            let h = self.u32(off);
            if h == 0 {
                return None;
            }
            if h & 0xffff == u32::from(id) {
                return Some(off);
            }
            off = (h >> 20) as u16 & !3;
            if off < EXT_CAP_START {
                return None;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> PciId {
        PciId {
            vendor_id: 0x1234,
            device_id: 0xabcd,
            subsystem_vendor_id: 0x1234,
            subsystem_id: 0x0001,
            revision_id: 3,
            class_code: 0x08_80_00,
        }
    }

    fn rd32(c: &ConfigSpace, off: u16) -> u32 {
        let mut b = [0u8; 4];
        c.read(u64::from(off), &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    fn wr32(c: &mut ConfigSpace, off: u16, v: u32) -> WriteEffects {
        c.write(u64::from(off), &v.to_le_bytes()).unwrap()
    }

    fn full() -> ConfigSpace {
        let mut c = ConfigSpace::new(&id());
        c.add_bar(0, Bar { size: 4096, kind: BarKind::Memory64, prefetchable: false }).unwrap();
        c.add_bar(2, Bar { size: 1 << 20, kind: BarKind::Memory32, prefetchable: true }).unwrap();
        c.add_pcie_capability(PcieCap { port_type: pcie::TYPE_RC_INTEGRATED_ENDPOINT, flr: true }).unwrap();
        c.add_msix_capability(MsixCap { vectors: 4, table_bar: 0, table_offset: 0x800, pba_bar: 0, pba_offset: 0xc00 })
            .unwrap();
        c.add_pasid_capability(PasidCap { width: 16, execute: false, privileged: true }).unwrap();
        c
    }

    #[test]
    fn header_identity_is_read_only() {
        let mut c = full();
        assert_eq!(rd32(&c, 0), 0xabcd_1234);
        assert_eq!(rd32(&c, 8), 0x0880_0003);
        // Writing all-ones over the identity changes nothing.
        wr32(&mut c, 0, u32::MAX);
        wr32(&mut c, 8, u32::MAX);
        wr32(&mut c, 0x2c, u32::MAX);
        assert_eq!(rd32(&c, 0), 0xabcd_1234);
        assert_eq!(rd32(&c, 8), 0x0880_0003);
        assert_eq!(rd32(&c, 0x2c), 0x0001_1234);
        assert_eq!(c.u8(header::HEADER_TYPE), 0);
        // Command: only the modelled bits are writable; Status keeps its
        // capability-list bit; Status writes of 1 clear only W1C bits.
        wr32(&mut c, 4, u32::MAX);
        assert_eq!(c.command(), 0x0546);
        assert!(c.bus_master() && c.memory_space());
        assert_eq!(c.u16(header::STATUS), status::CAP_LIST);
        // Interrupt Pin RO 0, Interrupt Line scratch.
        c.write(0x3c, &[0x55, 0x01]).unwrap();
        assert_eq!(c.u16(0x3c), 0x0055);
        // Out of range.
        assert_eq!(c.read(4094, &mut [0u8; 4]), Err(Errno::EINVAL));
        assert_eq!(c.write(u64::MAX, &[0u8; 2]), Err(Errno::EINVAL));
        assert!(c.read(4092, &mut [0u8; 4]).is_ok());
    }

    #[test]
    fn bar_sizing() {
        let mut c = full();
        // 64-bit BAR0 of 4 KiB: low dword reads the size mask plus type.
        assert_eq!(rd32(&c, 0x10), 0x4);
        wr32(&mut c, 0x10, u32::MAX);
        wr32(&mut c, 0x14, u32::MAX);
        assert_eq!(rd32(&c, 0x10), 0xffff_f004);
        assert_eq!(rd32(&c, 0x14), 0xffff_ffff);
        // Byte-wide sizing gives the same answer.
        c.write(0x10, &[0xff]).unwrap();
        assert_eq!(rd32(&c, 0x10), 0xffff_f004);
        wr32(&mut c, 0x10, 0xfeed_0000);
        wr32(&mut c, 0x14, 0x1);
        assert_eq!(c.bar_address(0), Some(0x1_feed_0000));
        // 32-bit prefetchable 1 MiB BAR2.
        wr32(&mut c, 0x18, u32::MAX);
        assert_eq!(rd32(&c, 0x18), 0xfff0_0008);
        // Unimplemented BARs and the ROM BAR read 0 after all-ones.
        for off in [0x1c, 0x20, 0x24, 0x30] {
            wr32(&mut c, off, u32::MAX);
            assert_eq!(rd32(&c, off), 0, "offset {off:#x}");
        }
        assert_eq!(c.bar(1), None);
        // Overlapping and malformed BARs are refused.
        assert_eq!(c.add_bar(1, Bar { size: 4096, kind: BarKind::Memory32, prefetchable: false }), Err(Errno::EINVAL));
        assert_eq!(c.add_bar(3, Bar { size: 100, kind: BarKind::Memory32, prefetchable: false }), Err(Errno::EINVAL));
        assert_eq!(c.add_bar(5, Bar { size: 4096, kind: BarKind::Memory64, prefetchable: false }), Err(Errno::EINVAL));
    }

    #[test]
    fn capability_lists() {
        let c = full();
        assert_eq!(c.u8(header::CAPABILITIES_POINTER), 0x40);
        let p = c.find_capability(cap_id::PCI_EXPRESS).unwrap();
        assert_eq!(p, 0x40);
        let m = c.find_capability(cap_id::MSIX).unwrap();
        assert_eq!(c.u8(p + 1) as u16, m);
        assert_eq!(c.u8(m + 1), 0, "end of list");
        assert_eq!(c.find_capability(cap_id::MSI), None);
        assert_eq!(c.u16(m + msix::CONTROL), 3);
        assert_eq!(c.u32(m + msix::TABLE), 0x800);
        let x = c.find_ext_capability(cap_id::EXT_PASID).unwrap();
        assert_eq!(x, 0x100);
        assert_eq!(c.u32(x), 0x0001_001b);
        assert_eq!(c.u16(x + pasid::CAP), (16 << 8) | pasid::CAP_PRIVILEGED);
        assert_eq!(c.pasid_width(), Some(16));
    }

    #[test]
    fn pcie_device_control_and_flr() {
        let mut c = full();
        let p = c.pcie_offset().unwrap();
        let devctl = u64::from(p + pcie::DEVCTL);
        assert!(c.no_snoop(), "Enable No Snoop is set after reset");
        assert_eq!(c.u16(p + pcie::DEVCTL), 0x2810);
        assert_eq!(c.u32(p + pcie::DEVCAP) & pcie::DEVCAP_FLR, pcie::DEVCAP_FLR);
        let fx = c.write(devctl, &(0x2810u16 & !pcie::DEVCTL_NO_SNOOP).to_le_bytes()).unwrap();
        assert!(!fx.flr);
        assert!(!c.no_snoop());
        // Phantom Functions and Aux Power (bits 9, 10) are RO 0.
        c.write(devctl, &0x0600u16.to_le_bytes()).unwrap();
        assert_eq!(c.u16(p + pcie::DEVCTL), 0);
        // Initiate FLR is reported and reads back 0.
        let fx = c.write(devctl, &(pcie::DEVCTL_FLR | pcie::DEVCTL_NO_SNOOP).to_le_bytes()).unwrap();
        assert!(fx.flr);
        assert_eq!(c.u16(p + pcie::DEVCTL), pcie::DEVCTL_NO_SNOOP);
        // Device Status error bits are RW1C.
        c.set_u16(p + pcie::DEVSTA, 0x5);
        c.write(u64::from(p + pcie::DEVSTA), &0x1u16.to_le_bytes()).unwrap();
        assert_eq!(c.u16(p + pcie::DEVSTA), 0x4);
        c.reset();
        assert!(c.no_snoop());
        assert_eq!(c.u16(p + pcie::DEVSTA), 0);
    }

    #[test]
    fn pasid_control_only_supported_bits() {
        let mut c = full();
        let x = c.pasid_offset().unwrap();
        c.write(u64::from(x + pasid::CTRL), &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(c.pasid_control(), PasidControl { enabled: true, execute: false, privileged: true });
        assert_eq!(c.u16(x + pasid::CTRL), 0b101);
        // The capability register is RO.
        c.write(u64::from(x), &[0xff; 6]).unwrap();
        assert_eq!(c.u32(x), 0x0001_001b);
        assert_eq!(c.pasid_width(), Some(16));
        c.reset();
        assert_eq!(c.pasid_control(), PasidControl::default());
    }

    #[test]
    fn msix_control_bits() {
        let mut c = full();
        let m = c.msix_offset().unwrap();
        c.write(u64::from(m + msix::CONTROL), &0xffffu16.to_le_bytes()).unwrap();
        assert_eq!(c.msix_control(), Some(0xc003));
        c.set_msix_enable(false);
        assert_eq!(c.msix_control(), Some(0x4003));
    }

    #[test]
    fn without_capabilities() {
        let mut c = ConfigSpace::new(&id());
        assert_eq!(c.u16(header::STATUS) & status::CAP_LIST, 0);
        assert_eq!(c.find_capability(cap_id::PCI_EXPRESS), None);
        assert_eq!(c.find_ext_capability(cap_id::EXT_PASID), None);
        assert!(!c.no_snoop());
        assert_eq!(c.pasid_control(), PasidControl::default());
        assert_eq!(c.pasid_width(), None);
        assert_eq!(c.write(0x100, &[0xff; 8]), Ok(WriteEffects::default()));
        assert_eq!(c.u32(0x100), 0);
    }
}
