//! Event log entries (spec 48882, "Event Logging"), the faults a
//! translation can end with, and the line Linux prints for them.
//!
//! `IO_PAGE_FAULT` (event code 2, spec "IO_PAGE_FAULT Event"), as two little-endian words:
//!
//! | bits | field |
//! | --- | --- |
//! | 15:0 | DeviceID |
//! | 19:16 | PASID\[19:16\] |
//! | 47:32 | DomainID, or PASID\[15:0\] when GN=1 |
//! | 48 | GN: the address is a guest virtual address, with PASID |
//! | 49 | NX: an execute request |
//! | 50 | US: a user-mode request |
//! | 51 | I: an interrupt request |
//! | 52 | PR: the page was present (a permission fault) |
//! | 53 | RW: a write |
//! | 54 | PE: permission indicator |
//! | 55 | RZ: a reserved bit was set, or an illegal level encoding |
//! | 56 | TN: a translation request (ATS) rather than a transaction |
//! | 63:60 | EventCode |
//! | 127:64 | Address |
//!
//! Linux reads `flags` as bits 59:48 (`EVENT_FLAGS_SHIFT`/`_MASK` on the
//! second 32-bit word) and prints `Event logged [IO_PAGE_FAULT
//! device=... domain=0x.... address=0x... flags=0x....]`
//! (`amd_iommu_report_page_fault()`).

/// Event codes (`EVENT_TYPE_*`).
pub mod code {
    pub const ILLEGAL_DEV_TABLE_ENTRY: u8 = 0x1;
    pub const IO_PAGE_FAULT: u8 = 0x2;
    pub const DEV_TAB_HARDWARE_ERROR: u8 = 0x3;
    pub const PAGE_TAB_HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_COMMAND_ERROR: u8 = 0x5;
}

/// `flags` bits (bits 59:48 of the first word, shifted down).
pub mod flag {
    pub const GN: u16 = 1 << 0;
    pub const NX: u16 = 1 << 1;
    pub const US: u16 = 1 << 2;
    pub const I: u16 = 1 << 3;
    pub const PR: u16 = 1 << 4;
    pub const RW: u16 = 1 << 5;
    pub const PE: u16 = 1 << 6;
    pub const RZ: u16 = 1 << 7;
    pub const TN: u16 = 1 << 8;
}

/// Why a translation stopped, with what an `IO_PAGE_FAULT` records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoPageFault {
    /// The faulting address: the request's IOVA for a fault in the guest
    /// (v2) table or a host table walked for a request without guest
    /// translation; the guest physical address for a fault in the host
    /// table under a nested walk.
    pub addr: u64,
    /// GN: the fault is in a guest table, the PASID field is valid.
    pub guest: bool,
    pub pasid: u32,
    /// DomainID of the DTE (when not GN).
    pub domid: u16,
    /// PR: a present entry denied the access.
    pub present: bool,
    pub write: bool,
    /// RZ: a reserved bit, or a level encoding the IOMMU does not accept.
    pub reserved: bool,
    pub user: bool,
}

impl IoPageFault {
    /// The `flags` field.
    pub const fn flags(&self) -> u16 {
        let mut f = 0;
        if self.guest {
            f |= flag::GN;
        }
        if self.user {
            f |= flag::US;
        }
        if self.present {
            f |= flag::PR | flag::PE;
        }
        if self.write {
            f |= flag::RW;
        }
        if self.reserved {
            f |= flag::RZ;
        }
        f
    }

    /// The 128-bit event log entry for device `devid`.
    pub const fn record(&self, devid: u16) -> [u64; 2] {
        let dp = if self.guest { self.pasid as u64 & 0xffff } else { self.domid as u64 };
        let pasid_hi = if self.guest { (self.pasid as u64 >> 16) & 0xf } else { 0 };
        let w0 = devid as u64
            | (pasid_hi << 16)
            | (dp << 32)
            | ((self.flags() as u64) << 48)
            | ((code::IO_PAGE_FAULT as u64) << 60);
        [w0, self.addr]
    }
}

/// The event code of a log entry.
pub const fn event_code(e: &[u64; 2]) -> u8 {
    (e[0] >> 60) as u8
}

/// The line `amd_iommu_report_page_fault()` / `iommu_print_event()` print
/// for `e` (PCI segment 0).
pub fn describe(e: &[u64; 2]) -> String {
    let devid = e[0] as u16;
    let (bus, dev, func) = (devid >> 8, (devid >> 3) & 0x1f, devid & 7);
    let domain = ((e[0] & 0xf_0000) | ((e[0] >> 32) & 0xffff)) as u32;
    let flags = ((e[0] >> 48) & 0xfff) as u16;
    match event_code(e) {
        code::IO_PAGE_FAULT => format!(
            "Event logged [IO_PAGE_FAULT device=0000:{bus:02x}:{dev:02x}.{func:x} domain=0x{domain:04x} address=0x{:x} flags=0x{flags:04x}]",
            e[1]
        ),
        c => format!("Event logged [event code {c:#x} device=0000:{bus:02x}:{dev:02x}.{func:x} address=0x{:x}]", e[1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_page_fault_by_hand() {
        // Device 00:04.0 (DeviceID 0x20), domain 2, a write to a
        // not-present page at 0x1234_5000: code 2, RW (bit 53).
        let f = IoPageFault {
            addr: 0x1234_5000,
            guest: false,
            pasid: 0,
            domid: 2,
            present: false,
            write: true,
            reserved: false,
            user: false,
        };
        assert_eq!(f.record(0x20), [0x2020_0002_0000_0020, 0x1234_5000]);
        assert_eq!(
            describe(&f.record(0x20)),
            "Event logged [IO_PAGE_FAULT device=0000:00:04.0 domain=0x0002 address=0x12345000 flags=0x0020]"
        );
        // A guest fault with PASID 0x12345, present (permission), read:
        // GN | PR | PE; PASID[15:0] in 47:32, PASID[19:16] in 19:16.
        let g = IoPageFault { guest: true, pasid: 0x1_2345, present: true, write: false, ..f };
        assert_eq!(g.record(0x20), [0x2051_2345_0001_0020, 0x1234_5000]);
        assert_eq!(g.flags(), flag::GN | flag::PR | flag::PE);
        assert!(describe(&g.record(0x20)).contains("domain=0x12345 "));
    }
}
