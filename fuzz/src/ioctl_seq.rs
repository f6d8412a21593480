//! iommufd ioctl sequences through the dispatcher, with the engine's
//! invariants checked after every call.
//!
//! Each input opens one `/dev/iommu` context and runs up to
//! [`MAX_STEPS`] operations chosen by the input: IOAS alloc, map (fixed
//! and allocated IOVAs, slices of one arena of user memory), unmap, copy,
//! allow-iovas and reserved ranges, selftest mock devices (attach to an
//! IOAS or HWPT, replace, destroy), HWPT alloc, selftest accesses (create,
//! pin, read/write, unpin, close), `IOMMU_OPTION` huge pages, destroy of any
//! object, and raw commands of random bytes.
//!
//! After every step, for every IOAS of the context:
//! - each domain maps exactly the IOAS's areas: every page of an area
//!   translates to the frame of its `Pages` at the right offset, and no
//!   IOVA of the fuzzed window outside the areas is mapped;
//! - each page an attached area covers is pinned once in its `Pages`
//!   (however many domains and IOASes share it), and the frame table's
//!   pin total is the sum over all `Pages` (exactly, while no access holds
//!   pins of its own; at least, otherwise);
//! - the mock domains saw no malformed map/unmap.
//!
//! When the context closes nothing stays pinned or charged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use uiommufd_abi as abi;
use uiommufd_abi::test_cmd::{self as tc, MOCK_APERTURE_START, MOCK_PAGE_SIZE};
use uiommufd_core::invariants::{check_mappings, MappingsCheck};
use uiommufd_core::object::ObjectKind;
use uiommufd_core::Iommufd;
use uiommufd_dispatch::{File, LocalFds, Node};
use uiommufd_memory::frames;

use crate::mem::{le32, Arena, Cmd, PS};
use crate::Input;

/// Operations per input at most.
pub const MAX_STEPS: usize = 64;
/// User memory the maps draw from, in pages.
const ARENA_PAGES: u64 = 64;
/// The IOVA window the structured operations use: `SLOTS` slots of
/// `SLOT` bytes from the mock aperture's start.
const SLOTS: u64 = 16;
const SLOT: u64 = 64 * 1024;
/// Highest object ID the checker looks at.
const MAX_ID: u32 = 512;

const RW: u32 = abi::IOMMU_IOAS_MAP_WRITEABLE | abi::IOMMU_IOAS_MAP_READABLE;

/// Pages of attached areas the checker found mapped to their frame, and
/// `Pages` whose pin count it checked exactly, since the process started
/// (the corpus test's proof that the checks ran on real states).
pub static PAGES_CHECKED: AtomicU64 = AtomicU64::new(0);
pub static PIN_COUNTS_CHECKED: AtomicU64 = AtomicU64::new(0);

struct State<'a> {
    ctx: Arc<Iommufd>,
    file: File,
    fds: LocalFds,
    arena: &'a Arena,
    /// Where commands are built: the arena's last page.
    cmd_at: u64,
    /// IDs handed out (any kind), for operations that name an object.
    ids: Vec<u32>,
    ioas: Vec<u32>,
    /// Mock devices: (stdev id, idev id).
    devices: Vec<(u32, u32)>,
    hwpts: Vec<u32>,
    /// Access descriptors open (each an `iommufd_access` that may pin).
    access_fds: Vec<i32>,
    /// `access_pages_id`s per access descriptor.
    access_pages: Vec<(i32, u32)>,
}

fn slot_iova(slot: u64) -> u64 {
    MOCK_APERTURE_START + slot * SLOT
}

impl<'a> State<'a> {
    /// A fresh `/dev/iommu` context over `arena`.
    fn open(arena: &'a Arena) -> State<'a> {
        let file = File::open(Node::Iommu);
        let File::Iommufd(ctx) = &file else { unreachable!("/dev/iommu opens a context") };
        State {
            ctx: Arc::clone(ctx),
            file,
            fds: LocalFds::default(),
            arena,
            cmd_at: arena.base + (ARENA_PAGES - 1) * PS,
            ids: Vec::new(),
            ioas: Vec::new(),
            devices: Vec::new(),
            hwpts: Vec::new(),
            access_fds: Vec::new(),
            access_pages: Vec::new(),
        }
    }

    fn pick(input: &mut Input<'_>, v: &[u32]) -> u32 {
        if v.is_empty() || input.below(8) == 0 {
            // Sometimes an ID that is not what the operation wants.
            input.below(24) as u32
        } else {
            input.pick(v)
        }
    }

    /// Run `cmd` as ioctl `request` from the command page; the bytes
    /// after the call on success.
    fn call(&mut self, request: u32, cmd: &Cmd) -> Option<Vec<u8>> {
        self.arena.put(self.cmd_at, &cmd.0);
        match self.file.ioctl(&self.fds, u64::from(request), self.cmd_at) {
            Ok(_) => Some(self.arena.get(self.cmd_at, cmd.0.len())),
            Err(e) => {
                assert!(e.errno.0 > 0 && e.errno.0 < 134, "ioctl {request:#x}: errno {:?}", e.errno);
                None
            }
        }
    }

    fn test_cmd(&mut self, op: u32, id: u32, payload: &[(usize, u64, bool)]) -> Option<Vec<u8>> {
        let mut c = Cmd::sized(size_of::<tc::IommuTestCmd>());
        c.u32(4, op).u32(8, id);
        for &(off, v, wide) in payload {
            if wide {
                c.u64(16 + off, v);
            } else {
                c.u32(16 + off, v as u32);
            }
        }
        self.call(tc::IOMMU_TEST_CMD, &c)
    }

    fn iova(&self, input: &mut Input<'_>) -> u64 {
        match input.below(8) {
            0 => input.u64(),
            1 => slot_iova(input.below(SLOTS)) + input.below(32) * MOCK_PAGE_SIZE,
            _ => slot_iova(input.below(SLOTS)),
        }
    }

    fn length(&self, input: &mut Input<'_>) -> u64 {
        match input.below(8) {
            0 => input.u64(),
            1 => input.below(4) * MOCK_PAGE_SIZE,
            2 => SLOT,
            _ => (1 + input.below(16)) * PS,
        }
    }

    fn user_va(&self, input: &mut Input<'_>) -> u64 {
        match input.below(16) {
            0 => self.arena.no_access(),
            1 => input.u64(),
            2 => self.arena.base + input.below(ARENA_PAGES * PS),
            _ => self.arena.base + input.below(ARENA_PAGES - 17) * PS,
        }
    }

    fn step(&mut self, input: &mut Input<'_>) {
        match input.below(16) {
            0 => {
                if let Some(out) = self.call(abi::IOMMU_IOAS_ALLOC, &Cmd::sized(12)) {
                    let id = le32(&out, 8);
                    self.ioas.push(id);
                    self.ids.push(id);
                }
            }
            1 | 2 => {
                let ioas = Self::pick(input, &self.ioas);
                let flags = match input.below(8) {
                    0 => input.u32(),
                    1 => RW,
                    _ => RW | abi::IOMMU_IOAS_MAP_FIXED_IOVA,
                };
                let (va, len, iova) = (self.user_va(input), self.length(input), self.iova(input));
                let mut c = Cmd::sized(40);
                c.u32(4, flags).u32(8, ioas).u64(16, va).u64(24, len).u64(32, iova);
                self.call(abi::IOMMU_IOAS_MAP, &c);
            }
            3 => {
                let ioas = Self::pick(input, &self.ioas);
                let (iova, len) =
                    if input.below(8) == 0 { (0, u64::MAX) } else { (self.iova(input), self.length(input)) };
                let mut c = Cmd::sized(24);
                c.u32(4, ioas).u64(8, iova).u64(16, len);
                self.call(abi::IOMMU_IOAS_UNMAP, &c);
            }
            4 => {
                let (dst, src) = (Self::pick(input, &self.ioas), Self::pick(input, &self.ioas));
                let flags = if input.below(4) == 0 { RW } else { RW | abi::IOMMU_IOAS_MAP_FIXED_IOVA };
                let (len, dst_iova, src_iova) = (self.length(input), self.iova(input), self.iova(input));
                let mut c = Cmd::sized(40);
                c.u32(4, flags).u32(8, dst).u32(12, src).u64(16, len).u64(24, dst_iova).u64(32, src_iova);
                self.call(abi::IOMMU_IOAS_COPY, &c);
            }
            5 | 6 => {
                // A mock device attached to an IOAS (or a HWPT).
                let pt =
                    if input.below(4) == 0 { Self::pick(input, &self.hwpts) } else { Self::pick(input, &self.ioas) };
                let (op, flags) = if input.below(3) == 0 {
                    (tc::IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, u64::from(input.below(8) as u32))
                } else {
                    (tc::IOMMU_TEST_OP_MOCK_DOMAIN, 0)
                };
                if let Some(out) = self.test_cmd(op, pt, &[(12, flags, false)]) {
                    let (stdev, hwpt, idev) = (le32(&out, 16), le32(&out, 20), le32(&out, 24));
                    self.devices.push((stdev, idev));
                    self.hwpts.push(hwpt);
                    self.ids.extend([stdev, hwpt, idev]);
                }
            }
            7 => {
                let stdev = input.pick(&self.devices.iter().map(|d| d.0).chain([0]).collect::<Vec<_>>());
                let pt = if input.bool() { Self::pick(input, &self.hwpts) } else { Self::pick(input, &self.ioas) };
                self.test_cmd(tc::IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, stdev, &[(0, u64::from(pt), false)]);
            }
            8 => {
                let idev = input.pick(&self.devices.iter().map(|d| d.1).chain([0]).collect::<Vec<_>>());
                let pt = Self::pick(input, &self.ioas);
                let flags = if input.below(4) == 0 { input.u32() & 0xf } else { 0 };
                let mut c = Cmd::sized(48);
                c.u32(4, flags).u32(8, idev).u32(12, pt);
                if let Some(out) = self.call(abi::IOMMU_HWPT_ALLOC, &c) {
                    let id = le32(&out, 16);
                    self.hwpts.push(id);
                    self.ids.push(id);
                }
            }
            9 => {
                let id = Self::pick(input, &self.ids);
                let mut c = Cmd::sized(8);
                c.u32(4, id);
                self.call(abi::IOMMU_DESTROY, &c);
            }
            10 => {
                let ioas = Self::pick(input, &self.ioas);
                let flags = u64::from(input.below(2) as u32);
                if let Some(out) = self.test_cmd(tc::IOMMU_TEST_OP_CREATE_ACCESS, ioas, &[(4, flags, false)]) {
                    self.access_fds.push(le32(&out, 16) as i32);
                }
            }
            11 => {
                let Some(&fd) = self.access_fds.get(input.below(4) as usize) else { return };
                match input.below(3) {
                    0 => {
                        let (iova, len) = (self.iova(input), self.length(input));
                        let flags = u64::from(input.below(2) as u32);
                        let uptr = self.user_va(input);
                        let p = [(0, flags, false), (8, iova, true), (16, len, true), (24, uptr, true)];
                        if let Some(out) = self.test_cmd(tc::IOMMU_TEST_OP_ACCESS_PAGES, fd as u32, &p) {
                            self.access_pages.push((fd, le32(&out, 20)));
                        }
                    }
                    1 => {
                        let (iova, len) = (self.iova(input), input.below(3 * PS));
                        let flags = u64::from(input.below(8) as u32);
                        let p = [(0, iova, true), (8, len, true), (16, self.arena.base, true), (24, flags, false)];
                        self.test_cmd(tc::IOMMU_TEST_OP_ACCESS_RW, fd as u32, &p);
                    }
                    _ => {
                        let i = input.below(self.access_pages.len() as u64 + 1) as usize;
                        if let Some(&(afd, id)) = self.access_pages.get(i) {
                            let p = [(0, u64::from(id), false)];
                            if self.test_cmd(tc::IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, afd as u32, &p).is_some() {
                                self.access_pages.swap_remove(i);
                            }
                        }
                    }
                }
            }
            12 => {
                let i = input.below(4) as usize;
                if i < self.access_fds.len() {
                    let fd = self.access_fds.swap_remove(i);
                    let _ = self.fds.close(fd);
                    self.access_pages.retain(|&(f, _)| f != fd);
                }
            }
            13 => {
                let ioas = Self::pick(input, &self.ioas);
                if input.bool() {
                    let (start, len) = (self.iova(input), self.length(input));
                    self.test_cmd(tc::IOMMU_TEST_OP_ADD_RESERVED, ioas, &[(0, start, true), (8, len, true)]);
                } else {
                    // One allowed range from the window, or none.
                    let n = input.below(2) as u32;
                    let (a, b) = (self.iova(input), self.iova(input));
                    let ranges = self.cmd_at + 256;
                    self.arena.put(ranges, &[a.min(b).to_le_bytes(), a.max(b).to_le_bytes()].concat());
                    let mut c = Cmd::sized(24);
                    c.u32(4, n).u32(8, ioas).u64(16, ranges);
                    self.call(abi::IOMMU_IOAS_ALLOW_IOVAS, &c);
                }
            }
            14 => {
                // IOMMU_OPTION_HUGE_PAGES (1) on an IOAS, set or get.
                let ioas = Self::pick(input, &self.ioas);
                let mut c = Cmd::sized(24);
                c.u32(4, 1).u32(8, input.below(2) as u32).u32(12, ioas).u64(16, input.below(3));
                self.call(abi::IOMMU_OPTION, &c);
            }
            _ => self.raw(input),
        }
    }

    /// Any iommufd command number with a struct of random bytes (IDs and
    /// pointers mixed in), as the dispatcher's own fuzz test does.
    fn raw(&mut self, input: &mut Input<'_>) {
        let nr = 0x80 + input.below(0x20) as u32;
        let request = (u32::from(b';') << 8) | nr;
        let len = input.pick(&[8usize, 16, 24, 32, 40, 48, 56, 64, 72, 96]);
        let mut c = Cmd::sized(len);
        let mut off = 4;
        while off + 4 <= len {
            let v = match input.below(8) {
                0 => input.u32(),
                1 => Self::pick(input, &self.ids),
                2 if off % 8 == 0 && off + 8 <= len => {
                    let p = self.user_va(input);
                    c.u64(off, p);
                    off += 8;
                    continue;
                }
                _ => input.below(4) as u32,
            };
            c.u32(off, v);
            off += 4;
        }
        let is_test = request == tc::IOMMU_TEST_CMD;
        if is_test {
            c.u32(0, size_of::<tc::IommuTestCmd>() as u32);
            c.0.resize(size_of::<tc::IommuTestCmd>(), 0);
            // The temporary memory limit is process-wide: not from here.
            if le32(&c.0, 4) == tc::IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT {
                c.u32(4, tc::IOMMU_TEST_OP_MD_CHECK_REFS);
            }
        }
        if let Some(out) = self.call(request, &c) {
            let ids = (4..out.len().min(28)).step_by(4).map(|o| le32(&out, o));
            self.ids.extend(ids.filter(|v| (1..MAX_ID).contains(v)));
            if is_test && le32(&out, 4) == tc::IOMMU_TEST_OP_CREATE_ACCESS {
                self.access_fds.push(le32(&out, 16) as i32);
            }
        }
    }

    /// The invariants of the module comment.
    fn check(&self) {
        let ioas: Vec<u32> =
            (1..MAX_ID).filter(|&id| self.ctx.objects().kind_of(id) == Some(ObjectKind::Ioas)).collect();
        let how = MappingsCheck {
            window: slot_iova(0)..slot_iova(SLOTS),
            step: MOCK_PAGE_SIZE,
            // Long areas: their first 256 pages.
            max_area_bytes: 256 * PS,
            accesses_may_pin: !self.access_fds.is_empty(),
        };
        match check_mappings(&self.ctx, &ioas, &how) {
            Ok(seen) => {
                PAGES_CHECKED.fetch_add(seen.pages, Ordering::Relaxed);
                PIN_COUNTS_CHECKED.fetch_add(seen.exact_pin_counts, Ordering::Relaxed);
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let _g = crate::global();
    let arena = Arena::new(ARENA_PAGES);
    {
        let mut st = State::open(&arena);
        let mut input = Input::new(data);
        for _ in 0..MAX_STEPS {
            if input.is_empty() {
                break;
            }
            st.step(&mut input);
            st.check();
        }
    }
    assert_eq!(frames::total_pins(), 0, "closing the context left pins behind");
    assert_eq!(uiommufd_core::account::locked_pages(), (0, 0), "closing the context left charges behind");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checker fails on a domain that lost a page its IOAS maps, and
    /// on a page pinned once too often: it can see what it is for.
    #[test]
    fn the_checker_sees_a_broken_domain_and_a_stray_pin() {
        let _g = crate::global();
        let arena = Arena::new(ARENA_PAGES);
        let mut st = State::open(&arena);
        let ctx = Arc::clone(&st.ctx);
        let out = st.call(abi::IOMMU_IOAS_ALLOC, &Cmd::sized(12)).expect("IOAS");
        let ioas = le32(&out, 8);
        let mut c = Cmd::sized(40);
        c.u32(4, RW | abi::IOMMU_IOAS_MAP_FIXED_IOVA).u32(8, ioas).u64(16, arena.base).u64(24, 4 * PS);
        c.u64(32, slot_iova(1));
        st.call(abi::IOMMU_IOAS_MAP, &c).expect("map");
        st.test_cmd(tc::IOMMU_TEST_OP_MOCK_DOMAIN, ioas, &[]).expect("mock domain");
        st.check();
        // The two failures below are expected: keep their panics quiet.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));

        let domain = Arc::clone(&ctx.ioas(ioas).unwrap().iopt().domains()[0].domain);
        let pa = domain.iova_to_phys(slot_iova(1)).unwrap();
        assert_eq!(domain.unmap_pages(slot_iova(1), MOCK_PAGE_SIZE, 1), MOCK_PAGE_SIZE);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| st.check()));
        assert!(caught.is_err(), "a missing page went unnoticed");
        domain
            .map_pages(slot_iova(1), pa, MOCK_PAGE_SIZE, 1, uiommufd_hw::Prot::READ | uiommufd_hw::Prot::WRITE)
            .unwrap();
        st.check();

        let stray = frames::pin_user(arena.base, 1, false).expect("a pin");
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| st.check()));
        std::panic::set_hook(hook);
        assert!(caught.is_err(), "a stray pin went unnoticed");
        for r in stray.iter() {
            frames::unpin(r.pfn, r.npages);
        }
        st.check();
        drop((st, domain, ctx));
        assert_eq!(frames::total_pins(), 0);
    }
}
