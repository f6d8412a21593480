//! The VMSAv8-64 stage 1 translation table walk (Arm ARM D8.2 "Translation
//! process", D8.3 descriptors, D8.4.1 access flag, D8.4.2 dirty state, D8.5
//! permissions) over tables the model does not own: a guest's, read
//! through a caller-supplied descriptor fetch.
//!
//! Model: the walker reads one 64-bit descriptor at a time through
//! `fetch(address)` (for nested translation the caller translates each
//! descriptor's IPA through stage 2 and reads host memory, turning
//! failures into the right stage 2 or external-abort fault) and returns
//! the output address of the input byte and what the leaf grants, or the
//! fault hardware would record, in the architecture's priority order:
//! translation, address size, access flag, permission.
//! - granules of 4KB, 16KB and 64KB, with the start level from the input
//!   size (`64 - TxSZ`); blocks only where the granule allows them with
//!   48-bit output addresses (4KB: levels 1 and 2; 16KB and 64KB: level
//!   2);
//! - table descriptors' APTable/XNTable/PXNTable apply below them unless
//!   hierarchical attributes are disabled (HADx);
//! - an unprivileged request needs EL0 access (AP\[1\] = 1, no APTable\[0\]);
//!   a write needs AP\[2\] = 0 (and no APTable\[1\]), or with HD a DBM
//!   leaf (writable-clean: hardware makes it writable-dirty);
//! - AF = 0 is an access flag fault, or with HA a hardware update.
//!
//! Hardware updates (AF set, AP\[2\] cleared) are reported in
//! [`S1Walk::updates`], not written: the model reads guest memory only.

use super::event::{id, SmmuFault};
use super::lpae::desc;
use super::ste::{CdConfig, TtConfig};

/// A stage 1 request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct S1Request {
    pub write: bool,
    /// Privileged (EL1) rather than unprivileged (EL0).
    pub privileged: bool,
}

/// A hardware update of a descriptor at `addr`: bits to set and clear.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwUpdate {
    pub addr: u64,
    pub set: u64,
    pub clear: u64,
}

/// A completed stage 1 walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S1Walk {
    /// Output address (an IPA when nested) of the input byte.
    pub out: u64,
    /// log2 of the leaf's size.
    pub shift: u32,
    /// Lookup level of the leaf (0..=3).
    pub level: u32,
    /// The leaf's descriptor as read.
    pub desc: u64,
    /// EL0 may access.
    pub el0: bool,
    /// Writes are allowed (possibly after the dirty-state update).
    pub writable: bool,
    /// The leaf is writable-dirty (or AP\[2\] = 0 without DBM): writes need
    /// no update.
    pub dirty: bool,
    /// Execute-never for the request's exception level.
    pub xn: bool,
    /// nG clear: the entry is global (matches every ASID).
    pub global: bool,
    /// MAIR attribute of the leaf.
    pub attr: u64,
    /// Hardware updates the walk makes (at most one per level).
    pub updates: [Option<HwUpdate>; 2],
}

/// The levels a walk for `ia_bits` of input with a `2^g` granule
/// starts at: `4 - ceil((ia - g) / (g - 3))`.
pub const fn start_level(ia_bits: u32, g: u32) -> u32 {
    let stride = g - 3;
    let levels = (ia_bits - g).div_ceil(stride);
    4 - levels
}

/// log2 of the bytes an entry at lookup level `l` spans.
pub const fn level_shift(l: u32, g: u32) -> u32 {
    g + (3 - l) * (g - 3)
}

const fn block_allowed(l: u32, g: u32) -> bool {
    match g {
        12 => l == 1 || l == 2,
        _ => l == 2,
    }
}

/// Walk `tt` (of the CD `cd`) for `va`.
pub fn walk_s1(
    tt: &TtConfig,
    cd: &CdConfig,
    va: u64,
    req: S1Request,
    mut fetch: impl FnMut(u64) -> Result<u64, SmmuFault>,
) -> Result<S1Walk, SmmuFault> {
    let g = tt.granule_shift;
    let ia = tt.ia_bits();
    let record = cd.record;
    let fault = |eid: u8| SmmuFault::stage1(eid, record);
    let oa_mask = if cd.oas >= 64 { u64::MAX } else { (1u64 << cd.oas) - 1 };
    let addr_field = desc::ADDR & !((1u64 << g) - 1);
    let mut level = start_level(ia, g);
    // The initial table is aligned to its size.
    let first_bits = ia - level_shift(level, g);
    let mut table = tt.ttb & !((8u64 << first_bits) - 1).max(63);
    let (mut ap_rdonly, mut ap_no_el0, mut xn_table, mut pxn_table) = (false, false, false, false);
    loop {
        let shift = level_shift(level, g);
        let bits = if level == start_level(ia, g) { ia - shift } else { g - 3 };
        let idx = (va >> shift) & ((1u64 << bits) - 1);
        let addr = table + idx * 8;
        let d = fetch(addr)?;
        if d & desc::VALID == 0 {
            return Err(fault(id::F_TRANSLATION));
        }
        let is_table = d & desc::TYPE != 0;
        if level == 3 && !is_table {
            // 0b01 at level 3 is reserved: a translation fault.
            return Err(fault(id::F_TRANSLATION));
        }
        if level < 3 && !is_table && !block_allowed(level, g) {
            return Err(fault(id::F_TRANSLATION));
        }
        if d & desc::ADDR_HI != 0 {
            return Err(fault(id::F_ADDR_SIZE));
        }
        if level < 3 && is_table {
            let next = d & addr_field;
            if next & !oa_mask != 0 {
                return Err(fault(id::F_ADDR_SIZE));
            }
            if !tt.had {
                ap_rdonly |= d & desc::AP_TABLE_RDONLY != 0;
                ap_no_el0 |= d & desc::AP_TABLE_NO_EL0 != 0;
                xn_table |= d & desc::XN_TABLE != 0;
                pxn_table |= d & desc::PXN_TABLE != 0;
            }
            table = next;
            level += 1;
            continue;
        }
        // A leaf.
        let page = d & addr_field & !((1u64 << shift) - 1);
        if page & !oa_mask != 0 {
            return Err(fault(id::F_ADDR_SIZE));
        }
        let mut updates = [None, None];
        if d & desc::AF == 0 {
            if !cd.ha {
                return Err(fault(id::F_ACCESS));
            }
            updates[0] = Some(HwUpdate { addr, set: desc::AF, clear: 0 });
        }
        let el0 = d & desc::AP_UNPRIV != 0 && !ap_no_el0;
        if !req.privileged && !el0 {
            return Err(fault(id::F_PERMISSION));
        }
        let rdonly = d & desc::AP_RDONLY != 0;
        let dbm_clean = rdonly && d & desc::DBM != 0 && cd.hd;
        let writable = !ap_rdonly && (!rdonly || dbm_clean);
        if req.write && !writable {
            return Err(fault(id::F_PERMISSION));
        }
        if req.write && dbm_clean {
            updates[1] = Some(HwUpdate { addr, set: 0, clear: desc::AP_RDONLY });
        }
        let xn = if req.privileged { d & desc::PXN != 0 || pxn_table } else { d & desc::UXN != 0 || xn_table };
        let attr_idx = (d & desc::ATTRINDX_MASK) >> desc::ATTRINDX_SHIFT;
        return Ok(S1Walk {
            out: page | (va & ((1u64 << shift) - 1)),
            shift,
            level,
            desc: d,
            el0,
            writable,
            dirty: !rdonly || req.write,
            xn,
            global: d & desc::NG == 0,
            attr: (cd.mair >> (8 * attr_idx)) & 0xff,
            updates,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const V: u64 = desc::VALID;
    const TBL: u64 = desc::TYPE_TABLE;
    const PAGE_ATTRS: u64 = desc::TYPE_TABLE | desc::AF | desc::AP_UNPRIV | desc::SH_IS | 1 << 2;

    fn cd(oas: u32) -> CdConfig {
        CdConfig {
            tt: [None, None],
            oas,
            asid: 1,
            tbi: [false, false],
            ha: false,
            hd: false,
            record: true,
            abort: true,
            stall: false,
            mair: 0xf404_ff44,
        }
    }

    fn tt(ttb: u64, tsz: u32, g: u32) -> TtConfig {
        TtConfig { ttb, tsz, granule_shift: g, had: false }
    }

    struct Mem(HashMap<u64, u64>);

    impl Mem {
        fn fetch(&self) -> impl FnMut(u64) -> Result<u64, SmmuFault> + '_ {
            |a| Ok(self.0.get(&a).copied().unwrap_or(0))
        }
    }

    #[test]
    fn geometry() {
        assert_eq!(start_level(48, 12), 0);
        assert_eq!(start_level(39, 12), 1);
        assert_eq!(start_level(25, 12), 2);
        assert_eq!(start_level(48, 16), 1);
        assert_eq!(start_level(42, 16), 2);
        assert_eq!(start_level(48, 14), 0);
        assert_eq!(start_level(47, 14), 1);
        assert_eq!(level_shift(3, 12), 12);
        assert_eq!(level_shift(1, 12), 30);
        assert_eq!(level_shift(2, 16), 29);
        assert_eq!(level_shift(2, 14), 25);
    }

    /// A 4-level 4KB walk for VA 0x12_3456_7000: L0 table at 0x1000 idx 0,
    /// L1 at 0x2000 idx 0x48, L2 at 0x3000 idx 0x1a2, L3 at 0x4000 idx 0x167.
    fn four_level(leaf: u64) -> (Mem, u64) {
        let va = 0x12_3456_7000u64;
        let idx = |l: u32| (va >> level_shift(l, 12)) & 511;
        assert_eq!((idx(0), idx(1), idx(2), idx(3)), (0, 0x48, 0x1a2, 0x167));
        let mut m = HashMap::new();
        m.insert(0x1000 + idx(0) * 8, 0x2000 | TBL);
        m.insert(0x2000 + idx(1) * 8, 0x3000 | TBL);
        m.insert(0x3000 + idx(2) * 8, 0x4000 | TBL);
        m.insert(0x4000 + idx(3) * 8, leaf);
        (Mem(m), va)
    }

    #[test]
    fn pages_and_attributes() {
        let (m, va) = four_level(0xabc_d000 | PAGE_ATTRS | desc::NG);
        let c = cd(48);
        let w = walk_s1(&tt(0x1000, 16, 12), &c, va + 0x123, S1Request::default(), m.fetch()).unwrap();
        assert_eq!((w.out, w.shift, w.level), (0xabc_d123, 12, 3));
        assert!(w.el0 && w.writable && w.dirty && !w.xn && !w.global);
        assert_eq!(w.attr, 0xff);
        assert_eq!(w.updates, [None, None]);
        // A global, read-only, execute-never leaf with AttrIndx 0 (NC).
        let leaf = 0xabc_d000 | V | TBL | desc::AF | desc::AP_UNPRIV | desc::AP_RDONLY | desc::UXN;
        let (m, va) = four_level(leaf);
        let w = walk_s1(&tt(0x1000, 16, 12), &c, va, S1Request::default(), m.fetch()).unwrap();
        assert!(w.global && w.xn && !w.writable && !w.dirty);
        assert_eq!(w.attr, 0x44);
        let e = walk_s1(&tt(0x1000, 16, 12), &c, va, S1Request { write: true, privileged: false }, m.fetch());
        assert_eq!(e, Err(SmmuFault::stage1(id::F_PERMISSION, true)));
    }

    #[test]
    fn faults_in_priority_order() {
        let c = cd(48);
        let t = tt(0x1000, 16, 12);
        let req = S1Request::default();
        // Not valid; reserved 0b01 at level 3; a block at level 0.
        let (m, va) = four_level(0);
        assert_eq!(walk_s1(&t, &c, va, req, m.fetch()).unwrap_err().id, id::F_TRANSLATION);
        let (m, va) = four_level(0xabc_d000 | 0b01 | desc::AF | desc::AP_UNPRIV);
        assert_eq!(walk_s1(&t, &c, va, req, m.fetch()).unwrap_err().id, id::F_TRANSLATION);
        let mut m0 = HashMap::new();
        m0.insert(0x1000, 0x4000_0000 | 0b01 | desc::AF);
        assert_eq!(walk_s1(&t, &c, 0x1000, req, Mem(m0).fetch()).unwrap_err().id, id::F_TRANSLATION);
        // Output beyond a 40-bit IPS; bits 51:48 set.
        let (m, va) = four_level(0x100_0000_0000 | PAGE_ATTRS);
        assert_eq!(walk_s1(&t, &cd(40), va, req, m.fetch()).unwrap_err().id, id::F_ADDR_SIZE);
        let (m, va) = four_level(1 << 48 | 0x5000 | PAGE_ATTRS);
        assert_eq!(walk_s1(&t, &c, va, req, m.fetch()).unwrap_err().id, id::F_ADDR_SIZE);
        // Access flag clear: a fault, or with HA an update.
        let (m, va) = four_level(0x5000 | PAGE_ATTRS & !desc::AF);
        assert_eq!(walk_s1(&t, &c, va, req, m.fetch()).unwrap_err().id, id::F_ACCESS);
        let ha = CdConfig { ha: true, ..c };
        let w = walk_s1(&t, &ha, va, req, m.fetch()).unwrap();
        assert_eq!(w.updates[0], Some(HwUpdate { addr: 0x4000 + 0x167 * 8, set: desc::AF, clear: 0 }));
        // Access flag before permission: AF clear and no EL0 access.
        let (m, va) = four_level(0x5000 | (PAGE_ATTRS & !desc::AF & !desc::AP_UNPRIV));
        assert_eq!(walk_s1(&t, &c, va, req, m.fetch()).unwrap_err().id, id::F_ACCESS);
        // EL1-only page: privileged requests only.
        let (m, va) = four_level(0x5000 | (PAGE_ATTRS & !desc::AP_UNPRIV));
        assert_eq!(walk_s1(&t, &c, va, req, m.fetch()).unwrap_err().id, id::F_PERMISSION);
        assert!(walk_s1(&t, &c, va, S1Request { write: true, privileged: true }, m.fetch()).is_ok());
        // R = 0: faults are not recorded.
        let quiet = CdConfig { record: false, ..c };
        assert!(!walk_s1(&t, &quiet, va, req, m.fetch()).unwrap_err().record);
        // A failing fetch is passed through.
        let e = SmmuFault::fetch(id::F_WALK_EABT, crate::smmuv3::event::FaultClass::Ttd, 0x2000);
        assert_eq!(walk_s1(&t, &c, va, req, |_| Err(e)), Err(e));
    }

    #[test]
    fn dirty_state_with_dbm() {
        let c = cd(48);
        let t = tt(0x1000, 16, 12);
        let clean = 0x5000 | PAGE_ATTRS | desc::AP_RDONLY | desc::DBM;
        let (m, va) = four_level(clean);
        let w = S1Request { write: true, privileged: false };
        // Without HD, DBM means nothing: read-only.
        assert_eq!(walk_s1(&t, &c, va, w, m.fetch()).unwrap_err().id, id::F_PERMISSION);
        let hd = CdConfig { hd: true, ha: true, ..c };
        let r = walk_s1(&t, &hd, va, S1Request::default(), m.fetch()).unwrap();
        assert!(r.writable && !r.dirty && r.updates == [None, None]);
        let r = walk_s1(&t, &hd, va, w, m.fetch()).unwrap();
        assert!(r.dirty);
        assert_eq!(r.updates[1], Some(HwUpdate { addr: 0x4000 + 0x167 * 8, set: 0, clear: desc::AP_RDONLY }));
    }

    #[test]
    fn table_attributes() {
        let c = cd(48);
        let va = 0x20_0000u64;
        let mk = |l1: u64, had: bool| {
            let mut m = HashMap::new();
            m.insert(0x1000, 0x2000 | TBL);
            m.insert(0x2000, 0x3000 | TBL | l1);
            m.insert(0x3000 + 8, 0x40_0000 | 0b01 | desc::AF | desc::AP_UNPRIV);
            (Mem(m), TtConfig { had, ..tt(0x1000, 16, 12) })
        };
        let w = S1Request { write: true, privileged: false };
        let (m, t) = mk(desc::AP_TABLE_RDONLY, false);
        assert_eq!(walk_s1(&t, &c, va, w, m.fetch()).unwrap_err().id, id::F_PERMISSION);
        let r = walk_s1(&t, &c, va + 0x1234, S1Request::default(), m.fetch()).unwrap();
        assert_eq!((r.out, r.shift, r.level), (0x40_1234, 21, 2));
        let (m, t) = mk(desc::AP_TABLE_NO_EL0 | desc::XN_TABLE, false);
        assert_eq!(walk_s1(&t, &c, va, S1Request::default(), m.fetch()).unwrap_err().id, id::F_PERMISSION);
        let r = walk_s1(&t, &c, va, S1Request { write: false, privileged: true }, m.fetch()).unwrap();
        assert!(!r.xn);
        // HAD: table attributes ignored.
        let (m, t) = mk(desc::AP_TABLE_RDONLY | desc::AP_TABLE_NO_EL0, true);
        assert!(walk_s1(&t, &c, va, w, m.fetch()).is_ok());
    }

    #[test]
    fn other_granules_and_sizes() {
        let c = cd(48);
        // 64KB granule, 48-bit: levels 1..3; a 512MB block at level 2.
        let va = 0x1_2345_6789u64;
        let l1 = (va >> 42) & 0x3f;
        let l2 = (va >> 29) & 0x1fff;
        let mut m = HashMap::new();
        m.insert(0x10000 + l1 * 8, 0x20000 | TBL);
        m.insert(0x20000 + l2 * 8, 0x2000_0000 | 0b01 | desc::AF | desc::AP_UNPRIV);
        let w = walk_s1(&tt(0x10000, 16, 16), &c, va, S1Request::default(), Mem(m).fetch()).unwrap();
        assert_eq!((w.out, w.shift, w.level), (0x2000_0000 | (va & 0x1fff_ffff), 29, 2));
        // 16KB granule, 36-bit input (T0SZ 28): starts at level 1 with a
        // 2-entry... (36 - 14 = 22 bits: levels 2 and 3, 11 bits each).
        assert_eq!(start_level(36, 14), 2);
        let va = 0x8_1234_4567u64 & ((1 << 36) - 1);
        let mut m = HashMap::new();
        let i2 = (va >> 25) & 0x7ff;
        let i3 = (va >> 14) & 0x7ff;
        m.insert(0x8000 + i2 * 8, 0xc000 | TBL);
        m.insert(0xc000 + i3 * 8, 0x4_0000 | PAGE_ATTRS);
        let w = walk_s1(&tt(0x8000, 28, 14), &c, va, S1Request::default(), Mem(m).fetch()).unwrap();
        assert_eq!((w.out, w.shift), (0x4_0000 | (va & 0x3fff), 14));
        // 3-level 4KB walk (T0SZ 25): a 1GB block at level 1.
        let mut m = HashMap::new();
        m.insert(0x1000 + 3 * 8, 0xc000_0000 | 0b01 | desc::AF | desc::AP_UNPRIV);
        let w = walk_s1(&tt(0x1000, 25, 12), &c, 3 << 30 | 0x1234, S1Request::default(), Mem(m).fetch()).unwrap();
        assert_eq!((w.out, w.shift, w.level), (0xc000_1234, 30, 1));
    }

    // ---- property test against a reference map, for every granule ----

    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The reference's own geometry (D8.2): lookup level `l` of a `2^g`
    /// granule covers `g + (g - 3) * (3 - l)` bits; a walk of `ia` bits
    /// starts at `4 - ceil((ia - g) / (g - 3))`; blocks exist at levels 1
    /// and 2 of the 4KB granule and level 2 of the others (48-bit output).
    fn ref_shift(l: u32, g: u32) -> u32 {
        g + (g - 3) * (3 - l)
    }
    fn ref_start(ia: u32, g: u32) -> u32 {
        4 - (ia - g).div_ceil(g - 3)
    }
    fn ref_leaf_levels(g: u32) -> &'static [u32] {
        if g == 12 {
            &[1, 2, 3]
        } else {
            &[2, 3]
        }
    }

    /// A guest's stage 1 built from leaves, in a word map; tables are
    /// allocated at granule-aligned addresses from 1GB up.
    struct Builder {
        g: u32,
        ia: u32,
        root: u64,
        next: u64,
        mem: HashMap<u64, u64>,
    }

    impl Builder {
        fn new(g: u32, ia: u32) -> Self {
            let root = 1 << 30;
            Builder { g, ia, root, next: root + (1 << g) * 8, mem: HashMap::new() }
        }

        /// Map the leaf of lookup `level` holding `va` to `out`.
        fn map(&mut self, va: u64, level: u32, out: u64) {
            let mut table = self.root;
            let mut l = ref_start(self.ia, self.g);
            while l < level {
                let shift = ref_shift(l, self.g);
                let bits = if l == ref_start(self.ia, self.g) { self.ia - shift } else { self.g - 3 };
                let a = table + ((va >> shift) & ((1 << bits) - 1)) * 8;
                let e = *self.mem.entry(a).or_insert_with(|| {
                    let t = self.next;
                    self.next += 1 << self.g;
                    t | TBL
                });
                table = e & desc::ADDR & !((1u64 << self.g) - 1);
                l += 1;
            }
            let shift = ref_shift(level, self.g);
            let bits = if level == ref_start(self.ia, self.g) { self.ia - shift } else { self.g - 3 };
            let a = table + ((va >> shift) & ((1 << bits) - 1)) * 8;
            let ty = if level == 3 { 0b11 } else { 0b01 };
            self.mem.insert(a, out | ty | desc::AF | desc::AP_UNPRIV | desc::NG);
        }
    }

    /// Leaves: (page index, level choice, output page); probes: page
    /// indexes and offsets. Everything in a window of 4 of the largest
    /// blocks, so leaves share tables and collide.
    fn case() -> impl Strategy<Value = (u32, u32, Vec<(u64, u8, u64)>, Vec<(u64, u64)>)> {
        let g = prop_oneof![Just(12u32), Just(14u32), Just(16u32)];
        let tsz = prop_oneof![Just(16u32), Just(20u32), Just(25u32)];
        (
            g,
            tsz,
            proptest::collection::vec((any::<u64>(), any::<u8>(), 0u64..4096), 1..40),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 1..60),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        #[test]
        fn walk_matches_a_reference_map((g, tsz, leaves, probes) in case()) {
            let ia = 64 - tsz;
            let first = ref_start(ia, g);
            // Leaf levels this granule allows: pages, and blocks (4KB:
            // levels 1 and 2; 16KB/64KB: level 2), none above the start.
            let levels: Vec<u32> = ref_leaf_levels(g).iter().copied().filter(|&l| l >= first).collect();
            let biggest = ref_shift(*levels.first().unwrap(), g);
            let window = (4u64 << biggest).min(1 << ia);
            let mut reference: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            let mut b = Builder::new(g, ia);
            for &(at, pick, out_page) in &leaves {
                let level = levels[pick as usize % levels.len()];
                let size = 1u64 << ref_shift(level, g);
                let va = (at % window) & !(size - 1);
                // Only leaves that overlap nothing yet, and whose tables
                // would not cross an existing leaf.
                let clash = reference.range(..va + size).next_back().is_some_and(|(&v, &(s, _))| v + s > va);
                let above = reference.iter().any(|(&v, &(s, _))| s > size && v <= va && va < v + s);
                let below = reference.range(va..va + size).next().is_some();
                if clash || above || below {
                    continue;
                }
                let out = (out_page << ref_shift(level, g)) & ((1 << 48) - 1);
                b.map(va, level, out);
                reference.insert(va, (size, out));
            }
            let c = cd(48);
            let t = tt(b.root, tsz, g);
            let m = Mem(b.mem);
            for &(at, off) in &probes {
                // Half the probes inside mapped leaves.
                let va = match reference.iter().nth((at as usize) % (reference.len() + 1)) {
                    Some((&v, &(s, _))) if at & 1 == 0 => v + off % s,
                    _ => off % window,
                };
                let got = walk_s1(&t, &c, va, S1Request::default(), m.fetch());
                let want = reference
                    .range(..=va)
                    .next_back()
                    .filter(|(&v, &(s, _))| va < v + s)
                    .map(|(&v, &(s, out))| (out + (va - v), s.trailing_zeros()));
                match (got, want) {
                    (Ok(w), Some((out, shift))) => prop_assert_eq!((w.out, w.shift), (out, shift), "va {:#x}", va),
                    (Err(e), None) => prop_assert_eq!(e.id, id::F_TRANSLATION, "va {:#x}", va),
                    (got, want) => prop_assert!(false, "va {:#x}: walk {:?}, reference {:?}", va, got, want),
                }
            }
        }
    }
}
