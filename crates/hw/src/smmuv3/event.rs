//! SMMUv3 faults and event records (IHI 0070 §7.3 "Event records"): what
//! the model reports when a transaction cannot be translated, as the event
//! the SMMU would write to its event queue.
//!
//! Model: an [`SmmuFault`] is the event ID plus the fields that depend on
//! where the walk failed (stage, class, IPA, fetch address); the request's
//! own fields (StreamID, SubstreamID, input address, read/write,
//! privilege) are added when the record is built ([`SmmuFault::record`]).
//! Configuration errors (`C_BAD_*`) and stream/CD fetch aborts are always
//! recorded; translation-related faults (`F_TRANSLATION`, `F_ADDR_SIZE`,
//! `F_ACCESS`, `F_PERMISSION`) only when the CD's `R` bit asks for it
//! (`record` false otherwise); an aborting STE (Config 0b000) terminates
//! silently.

use crate::Fault;

/// Event IDs (§7.3).
pub mod id {
    pub const F_UUT: u8 = 0x01;
    pub const C_BAD_STREAMID: u8 = 0x02;
    pub const F_STE_FETCH: u8 = 0x03;
    pub const C_BAD_STE: u8 = 0x04;
    pub const F_BAD_ATS_TREQ: u8 = 0x05;
    pub const F_STREAM_DISABLED: u8 = 0x06;
    pub const F_TRANSL_FORBIDDEN: u8 = 0x07;
    pub const C_BAD_SUBSTREAMID: u8 = 0x08;
    pub const F_CD_FETCH: u8 = 0x09;
    pub const C_BAD_CD: u8 = 0x0a;
    pub const F_WALK_EABT: u8 = 0x0b;
    pub const F_TRANSLATION: u8 = 0x10;
    pub const F_ADDR_SIZE: u8 = 0x11;
    pub const F_ACCESS: u8 = 0x12;
    pub const F_PERMISSION: u8 = 0x13;
    pub const F_TLB_CONFLICT: u8 = 0x20;
    pub const F_CFG_CONFLICT: u8 = 0x21;

    /// The specification's name of an event ID.
    pub const fn name(id: u8) -> &'static str {
        match id {
            F_UUT => "F_UUT",
            C_BAD_STREAMID => "C_BAD_STREAMID",
            F_STE_FETCH => "F_STE_FETCH",
            C_BAD_STE => "C_BAD_STE",
            F_BAD_ATS_TREQ => "F_BAD_ATS_TREQ",
            F_STREAM_DISABLED => "F_STREAM_DISABLED",
            F_TRANSL_FORBIDDEN => "F_TRANSL_FORBIDDEN",
            C_BAD_SUBSTREAMID => "C_BAD_SUBSTREAMID",
            F_CD_FETCH => "F_CD_FETCH",
            C_BAD_CD => "C_BAD_CD",
            F_WALK_EABT => "F_WALK_EABT",
            F_TRANSLATION => "F_TRANSLATION",
            F_ADDR_SIZE => "F_ADDR_SIZE",
            F_ACCESS => "F_ACCESS",
            F_PERMISSION => "F_PERMISSION",
            F_TLB_CONFLICT => "F_TLB_CONFLICT",
            F_CFG_CONFLICT => "F_CFG_CONFLICT",
            _ => "unknown",
        }
    }
}

/// Event record fields (the driver's `EVTQ_*`).
pub mod rec {
    pub const ID_MASK: u64 = 0xff;
    pub const SSV: u64 = 1 << 11;
    pub const SSID_SHIFT: u32 = 12;
    pub const SSID_MASK: u64 = 0xf_ffff << 12;
    pub const SID_SHIFT: u32 = 32;
    pub const SID_MASK: u64 = 0xffff_ffff << 32;
    pub const STALL: u64 = 1 << 31;
    pub const PNU: u64 = 1 << 33;
    pub const IND: u64 = 1 << 34;
    pub const RNW: u64 = 1 << 35;
    pub const S2: u64 = 1 << 39;
    pub const CLASS_SHIFT: u32 = 40;
    pub const TT_READ: u64 = 1 << 44;
    /// Word 3 of a stage 2 fault: IPA bits 51:12.
    pub const IPA_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// Word 3 of `F_WALK_EABT` / `F_CD_FETCH`: fetch address bits 51:3.
    pub const FETCH_MASK: u64 = 0x000f_ffff_ffff_fff8;
}

/// What the access that faulted was doing (the record's `CLASS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    /// Fetching a CD.
    Cd = 0b00,
    /// Fetching a translation table descriptor.
    Ttd = 0b01,
    /// Translating the transaction's input address.
    In = 0b10,
}

/// A fault of one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuFault {
    /// The event ID ([`id`]); 0 for a silent abort (STE.Config abort).
    pub id: u8,
    pub class: FaultClass,
    /// The fault happened at stage 2 (for the stage 1 walk's fetches when
    /// `class` is `Cd` or `Ttd`).
    pub s2: bool,
    /// The IPA that faulted at stage 2.
    pub ipa: u64,
    /// The physical address of a failed fetch (`F_CD_FETCH`,
    /// `F_WALK_EABT`).
    pub fetch_pa: u64,
    /// The stage 1 output address was out of range (a translation fault
    /// of an address no table covers).
    pub out_of_range: bool,
    /// An event is written (CD.R for translation-related faults).
    pub record: bool,
}

impl SmmuFault {
    /// A fault with just an ID (configuration errors), always recorded.
    pub const fn config(id: u8) -> Self {
        SmmuFault { id, class: FaultClass::In, s2: false, ipa: 0, fetch_pa: 0, out_of_range: false, record: true }
    }

    /// STE.Config abort: terminated without an event.
    pub const ABORT: SmmuFault =
        SmmuFault { id: 0, class: FaultClass::In, s2: false, ipa: 0, fetch_pa: 0, out_of_range: false, record: false };

    /// A stage 1 fault of the input address.
    pub const fn stage1(id: u8, record: bool) -> Self {
        SmmuFault { id, class: FaultClass::In, s2: false, ipa: 0, fetch_pa: 0, out_of_range: false, record }
    }

    /// A stage 2 fault at `ipa` while doing `class`.
    pub const fn stage2(id: u8, class: FaultClass, ipa: u64) -> Self {
        SmmuFault { id, class, s2: true, ipa, fetch_pa: 0, out_of_range: false, record: true }
    }

    /// A failed fetch of a descriptor or CD at physical `pa`.
    pub const fn fetch(id: u8, class: FaultClass, pa: u64) -> Self {
        SmmuFault { id, class, s2: false, ipa: 0, fetch_pa: pa, out_of_range: false, record: true }
    }

    pub const fn name(&self) -> &'static str {
        if self.id == 0 {
            "abort"
        } else {
            id::name(self.id)
        }
    }

    /// The coarse [`Fault`] of the `Domain` interface.
    pub fn to_fault(&self) -> Fault {
        match self.id {
            id::F_PERMISSION => Fault::Permission,
            id::F_TRANSLATION if self.out_of_range => Fault::OutOfRange,
            _ => Fault::NotPresent,
        }
    }

    /// The 256-bit record (§7.3) for a request of stream `sid` (with
    /// substream `ssid`, if any) at `input_addr`: word 0 ID, SSV,
    /// SubstreamID, StreamID; word 1 PnU, InD, RnW, S2, CLASS (and TT_READ
    /// for a table-walk fetch); word 2 the input address; word 3 the IPA
    /// of a stage 2 fault or the fetch address.
    pub fn record(&self, sid: u32, ssid: Option<u32>, input_addr: u64, write: bool, privileged: bool) -> [u64; 4] {
        let mut w = [0u64; 4];
        w[0] = u64::from(self.id) | u64::from(sid) << rec::SID_SHIFT;
        if let Some(s) = ssid {
            w[0] |= rec::SSV | (u64::from(s) << rec::SSID_SHIFT) & rec::SSID_MASK;
        }
        match self.id {
            id::F_TRANSLATION | id::F_ADDR_SIZE | id::F_ACCESS | id::F_PERMISSION | id::F_WALK_EABT => {
                if privileged {
                    w[1] |= rec::PNU;
                }
                if !write {
                    w[1] |= rec::RNW;
                }
                if self.s2 {
                    w[1] |= rec::S2;
                }
                w[1] |= (self.class as u64) << rec::CLASS_SHIFT;
                if self.class == FaultClass::Ttd {
                    w[1] |= rec::TT_READ;
                }
                w[2] = input_addr;
                if self.id == id::F_WALK_EABT {
                    w[3] = self.fetch_pa & rec::FETCH_MASK;
                } else if self.s2 {
                    w[3] = self.ipa & rec::IPA_MASK;
                }
            }
            id::F_CD_FETCH => w[3] = self.fetch_pa & rec::FETCH_MASK,
            id::F_STREAM_DISABLED | id::F_TRANSL_FORBIDDEN => w[2] = input_addr,
            _ => {}
        }
        w
    }
}

impl core::fmt::Display for SmmuFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.name())?;
        if self.s2 {
            write!(f, " at stage 2 (IPA {:#x}, {:?})", self.ipa, self.class)?;
        }
        if self.fetch_pa != 0 {
            write!(f, " fetching {:#x}", self.fetch_pa)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_by_hand() {
        // A stage 2 translation fault on a stage 1 table fetch, write,
        // unprivileged, StreamID 0x10, SubstreamID 3, IOVA 0x1234_5000, IPA
        // 0x8_0000_1008.
        let f = SmmuFault::stage2(id::F_TRANSLATION, FaultClass::Ttd, 0x8_0000_1008);
        let r = f.record(0x10, Some(3), 0x1234_5000, true, false);
        assert_eq!(r[0], 0x10 | 1 << 11 | 3 << 12 | 0x10 << 32);
        assert_eq!(r[0], 0x0000_0010_0000_3810);
        assert_eq!(r[1], 1 << 39 | 1 << 40 | 1 << 44);
        assert_eq!(r[2], 0x1234_5000);
        assert_eq!(r[3], 0x8_0000_1000);
        // A stage 1 permission fault of a privileged read: CLASS IN.
        let r = SmmuFault::stage1(id::F_PERMISSION, true).record(7, None, 0xabc, false, true);
        assert_eq!(r, [0x13 | 7 << 32, 1 << 33 | 1 << 35 | 2 << 40, 0xabc, 0]);
        // Configuration errors only carry the IDs.
        let r = SmmuFault::config(id::C_BAD_CD).record(1, Some(0), 0xdead_b000, false, false);
        assert_eq!(r, [0x0a | 1 << 11 | 1 << 32, 0, 0, 0]);
        // Fetch aborts carry the fetch address.
        let r = SmmuFault::fetch(id::F_CD_FETCH, FaultClass::Cd, 0x1_0000_0040).record(2, None, 0, false, false);
        assert_eq!(r[3], 0x1_0000_0040);
        let r = SmmuFault::fetch(id::F_WALK_EABT, FaultClass::Ttd, 0x1_0000_0ff8).record(2, None, 0x5000, true, false);
        assert_eq!((r[1], r[2], r[3]), (1 << 40 | 1 << 44, 0x5000, 0x1_0000_0ff8));
    }

    #[test]
    fn coarse_faults_and_names() {
        assert_eq!(SmmuFault::stage1(id::F_PERMISSION, true).to_fault(), Fault::Permission);
        assert_eq!(SmmuFault::stage1(id::F_TRANSLATION, true).to_fault(), Fault::NotPresent);
        let mut oor = SmmuFault::stage1(id::F_TRANSLATION, true);
        oor.out_of_range = true;
        assert_eq!(oor.to_fault(), Fault::OutOfRange);
        assert_eq!(SmmuFault::ABORT.to_fault(), Fault::NotPresent);
        assert_eq!(SmmuFault::ABORT.name(), "abort");
        assert_eq!(SmmuFault::config(id::C_BAD_STE).name(), "C_BAD_STE");
        assert_eq!(id::name(0x7f), "unknown");
        let s = SmmuFault::stage2(id::F_PERMISSION, FaultClass::Cd, 0x4000).to_string();
        assert_eq!(s, "F_PERMISSION at stage 2 (IPA 0x4000, Cd)");
    }
}
