//! The main iommufd flows through `uiommufd-api`, against the kernel
//! selftest's mock IOMMU, printed as a transcript: one line per call with
//! what came back (IDs, IOVAs, counts, errno names). Nothing in it depends
//! on addresses or timing, so the transcripts of two backends can be
//! compared byte for byte.
//!
//! Shared by the `selftest_flows` example (run on the real kernel in the
//! oracle, under `uiommufd run`, and in-process) and the tests that compare
//! those runs.

use std::fmt::{Display, Write as _};

use uiommufd_api::abi::test_cmd as t;
use uiommufd_api::abi::{self, IommuHwptPageResponse, IommuHwptPgfault};
use uiommufd_api::{
    Backend, DeviceId, Error, HwptAlloc, HwptFlags, HwptId, IommuOption, Iommufd, IovaRange, MapFlags, VfioDevice,
};

/// The transcript so far.
pub struct Transcript {
    pub text: String,
}

impl Transcript {
    fn line(&mut self, what: &str, outcome: impl Display) {
        let _ = writeln!(self.text, "{what} = {outcome}");
    }

    /// Record a call whose value the flow needs: the value, or the errno and
    /// the end of the flow.
    fn need<T: Display>(&mut self, what: &str, r: Result<T, Error>) -> Result<T, String> {
        match r {
            Ok(v) => {
                self.line(what, &v);
                Ok(v)
            }
            Err(e) => {
                self.line(what, format!("{:?}", e.errno()));
                Err(format!("{what}: {e}"))
            }
        }
    }

    /// Record a call whose outcome is all there is to know.
    fn show<T: Display>(&mut self, what: &str, r: Result<T, Error>) {
        match r {
            Ok(v) => self.line(what, v),
            Err(e) => self.line(what, format!("{:?}", e.errno())),
        }
    }

    /// Record a call that returns nothing.
    fn unit(&mut self, what: &str, r: Result<(), Error>) {
        self.show(what, r.map(|()| "ok"));
    }
}

/// Page-aligned anonymous memory of our own, filled with a pattern.
struct Mem {
    ptr: *mut u8,
    len: usize,
}

impl Mem {
    /// `len` bytes at a 2 MiB-aligned address: where the IOAS places a
    /// mapping follows the alignment of the user address (up to a huge
    /// page), so a fixed alignment keeps the transcript the same from run
    /// to run.
    fn new(len: usize) -> Mem {
        const ALIGN: usize = 2 << 20;
        let span = len + ALIGN;
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap of {span} bytes");
        let base = base.cast::<u8>();
        let skip = base.align_offset(ALIGN);
        // SAFETY: the parts of the mapping before and after the aligned
        // range, which nothing refers to.
        unsafe {
            if skip > 0 {
                libc::munmap(base.cast(), skip);
            }
            if ALIGN - skip > 0 {
                libc::munmap(base.add(skip + len).cast(), ALIGN - skip);
            }
        }
        // SAFETY: `skip + len <= span`.
        let ptr = unsafe { base.add(skip) };
        for i in 0..len {
            // SAFETY: `i < len`, inside the range kept above.
            unsafe { ptr.add(i).write_volatile((i / 4096) as u8 ^ 0x5a) };
        }
        Mem { ptr, len }
    }

    fn va(&self) -> u64 {
        self.ptr as u64
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn ranges(r: &[IovaRange]) -> String {
    let v: Vec<String> = r.iter().map(ToString::to_string).collect();
    format!("[{}]", v.join(", "))
}

const PAGE: u64 = 4096;

/// Run every flow on `backend`; the transcript, or where it stopped.
pub fn run(backend: &Backend) -> (Transcript, Result<(), String>) {
    let mut t = Transcript { text: String::new() };
    let r = all(&mut t, backend);
    (t, r)
}

fn all(t: &mut Transcript, backend: &Backend) -> Result<(), String> {
    let fd = t.need("open /dev/iommu", Iommufd::open(backend).map(|_| "ok"));
    fd?;
    let fd = Iommufd::open(backend).map_err(|e| e.to_string())?;
    ioas_flows(t, &fd)?;
    hwpt_flows(t, &fd)?;
    dirty_flows(t, &fd)?;
    access_flows(t, &fd)?;
    viommu_flows(t, &fd)?;
    fault_flows(t, &fd)?;
    Ok(())
}

fn ioas_flows(t: &mut Transcript, fd: &Iommufd) -> Result<(), String> {
    let _ = writeln!(t.text, "# IOAS");
    let ioas = t.need("IOMMU_IOAS_ALLOC", fd.ioas_alloc())?;
    t.show("IOMMU_OPTION get RLIMIT_MODE", fd.option_get(IommuOption::RlimitMode, None));
    t.show("IOMMU_OPTION get HUGE_PAGES of the IOAS", fd.option_get(IommuOption::HugePages, Some(ioas.into())));
    t.unit("IOMMU_OPTION set HUGE_PAGES 0", fd.option_set(IommuOption::HugePages, Some(ioas.into()), 0));
    t.show("IOMMU_OPTION get HUGE_PAGES", fd.option_get(IommuOption::HugePages, Some(ioas.into())));
    t.unit("IOMMU_OPTION set HUGE_PAGES 2", fd.option_set(IommuOption::HugePages, Some(ioas.into()), 2));
    t.unit("IOMMU_OPTION set HUGE_PAGES 1", fd.option_set(IommuOption::HugePages, Some(ioas.into()), 1));
    t.unit("IOMMU_OPTION get HUGE_PAGES of no object", fd.option_get(IommuOption::HugePages, None).map(drop));

    let show_ranges = |t: &mut Transcript, what: &str| {
        let r = fd.ioas_iova_ranges(ioas);
        t.show(what, r.map(|r| format!("{} alignment {:#x}", ranges(&r.ranges), r.alignment)));
    };
    show_ranges(t, "IOMMU_IOAS_IOVA_RANGES empty IOAS");
    let allowed =
        [IovaRange { start: 0x100_0000, last: 0x3fff_ffff }, IovaRange { start: 0x4000_0000, last: 0x7fff_ffff }];
    t.unit("IOMMU_IOAS_ALLOW_IOVAS two ranges", fd.ioas_allow_iovas(ioas, &allowed));
    show_ranges(t, "IOMMU_IOAS_IOVA_RANGES allowed");
    t.unit("IOMMU_IOAS_ALLOW_IOVAS none", fd.ioas_allow_iovas(ioas, &[]));
    let bad = [IovaRange { start: 0x2000, last: 0x1000 }];
    t.unit("IOMMU_IOAS_ALLOW_IOVAS start > last", fd.ioas_allow_iovas(ioas, &bad));
    t.unit("add_reserved 1 GiB + 16 MiB", fd.selftest().add_reserved(ioas, 0x4000_0000, 0x100_0000));

    let mock = mock_device(t, fd, "mock_domain on the IOAS", ioas, 0)?;
    show_ranges(t, "IOMMU_IOAS_IOVA_RANGES attached");

    let mem = Mem::new(16 * PAGE as usize);
    // SAFETY (every map of this flow): `mem` outlives its mappings (it is
    // dropped at the end of the function, after the unmaps) and no device
    // is programmed to write it.
    let auto = t
        .need("IOMMU_IOAS_MAP 64 KiB", unsafe { fd.ioas_map(ioas, mem.va(), 16 * PAGE, None, MapFlags::RW) }.map(Hex))?
        .0;
    t.unit("check_map", fd.selftest().check_map(mock.hwpt, auto, 16 * PAGE, mem.va()));
    t.unit("check_refs 1", fd.selftest().check_refs(mem.va(), 16 * PAGE, 1));
    let fixed = 0x200_0000;
    let r = unsafe { fd.ioas_map(ioas, mem.va(), 4 * PAGE, Some(fixed), MapFlags::READABLE) };
    t.show("IOMMU_IOAS_MAP fixed 0x2000000", r.map(Hex));
    let r = unsafe { fd.ioas_map(ioas, mem.va(), 4 * PAGE, Some(fixed + PAGE), MapFlags::READABLE) };
    t.show("IOMMU_IOAS_MAP fixed overlapping", r.map(Hex));
    let r = unsafe { fd.ioas_map(ioas, mem.va(), 4 * PAGE, Some(0x1000), MapFlags::READABLE) };
    t.show("IOMMU_IOAS_MAP fixed below the aperture", r.map(Hex));
    let r = unsafe { fd.ioas_map(ioas, mem.va(), 4 * PAGE, Some(0x4000_0000), MapFlags::READABLE) };
    t.show("IOMMU_IOAS_MAP fixed in a reserved range", r.map(Hex));
    let r = unsafe { fd.ioas_map(ioas, mem.va(), 0, None, MapFlags::READABLE) };
    t.show("IOMMU_IOAS_MAP length 0", r.map(Hex));
    let r = unsafe { fd.ioas_map(ioas, mem.va() + 1, PAGE, Some(0x300_0000), MapFlags::READABLE) };
    t.show("IOMMU_IOAS_MAP misaligned user_va at an aligned IOVA", r.map(Hex));
    t.show(
        "IOMMU_IOAS_MAP bad IOAS",
        unsafe { fd.ioas_map(uiommufd_api::IoasId(999), mem.va(), PAGE, None, MapFlags::RW) }.map(Hex),
    );
    let gone = Mem::new(PAGE as usize);
    let gone_va = gone.va();
    drop(gone);
    // SAFETY: nothing is mapped at `gone_va` any more: the kernel cannot
    // pin it (EFAULT) and no device will reach it.
    let r = unsafe { fd.ioas_map(ioas, gone_va, PAGE, None, MapFlags::RW) };
    t.show("IOMMU_IOAS_MAP of unmapped user memory", r.map(Hex));

    let ioas2 = t.need("IOMMU_IOAS_ALLOC second", fd.ioas_alloc())?;
    t.show("IOMMU_IOAS_COPY the 64 KiB", fd.ioas_copy(ioas2, None, ioas, auto, 16 * PAGE, MapFlags::RW).map(Hex));
    t.show(
        "IOMMU_IOAS_COPY fixed",
        fd.ioas_copy(ioas2, Some(0x8000_0000), ioas, auto, 4 * PAGE, MapFlags::READABLE).map(Hex),
    );
    t.show(
        "IOMMU_IOAS_COPY of an unmapped source",
        fd.ioas_copy(ioas2, None, ioas, 0x6000_0000, PAGE, MapFlags::READABLE).map(Hex),
    );
    t.unit("check_refs still 1", fd.selftest().check_refs(mem.va(), 16 * PAGE, 1));
    t.show("IOMMU_IOAS_UNMAP half of a mapping", fd.ioas_unmap(ioas, auto, 8 * PAGE).map(Hex));
    t.show("IOMMU_IOAS_UNMAP overflowing range", fd.ioas_unmap(ioas, u64::MAX - PAGE + 1, 2 * PAGE).map(Hex));
    t.show("IOMMU_IOAS_UNMAP the mapping", fd.ioas_unmap(ioas, auto, 16 * PAGE).map(Hex));
    t.show("IOMMU_IOAS_UNMAP again", fd.ioas_unmap(ioas, auto, 16 * PAGE).map(Hex));
    t.show("IOMMU_IOAS_UNMAP all", fd.ioas_unmap_all(ioas).map(Hex));
    t.show("IOMMU_IOAS_UNMAP all, empty", fd.ioas_unmap_all(ioas).map(Hex));
    t.show("IOMMU_IOAS_UNMAP all of the copy", fd.ioas_unmap_all(ioas2).map(Hex));
    t.unit("check_refs 0", fd.selftest().check_refs(mem.va(), 16 * PAGE, 0));

    t.show("IOMMU_VFIO_IOAS get, none set", fd.vfio_ioas_get());
    t.unit("IOMMU_VFIO_IOAS set", fd.vfio_ioas_set(ioas2));
    t.show("IOMMU_VFIO_IOAS get", fd.vfio_ioas_get());
    t.unit("IOMMU_VFIO_IOAS clear", fd.vfio_ioas_clear());

    t.unit("IOMMU_DESTROY the IOAS in use", fd.destroy(ioas));
    t.unit("IOMMU_DESTROY the mock device", fd.destroy(mock.id));
    t.unit("IOMMU_DESTROY the mock device again", fd.destroy(mock.id));
    t.unit("IOMMU_DESTROY the IOAS", fd.destroy(ioas));
    t.unit("IOMMU_DESTROY the second IOAS", fd.destroy(ioas2));
    t.unit("IOMMU_DESTROY id 0", fd.destroy(uiommufd_api::ObjectId(0)));
    Ok(())
}

/// A value shown in hex.
struct Hex(u64);

impl Display for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A mock device as a transcript line.
struct MockLine(uiommufd_api::MockDevice);

impl Display for MockLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mock device {} as device {}, HWPT {}", self.0.id, self.0.dev, self.0.hwpt)
    }
}

fn mock_device(
    t: &mut Transcript,
    fd: &Iommufd,
    what: &str,
    ioas: uiommufd_api::IoasId,
    flags: u32,
) -> Result<uiommufd_api::MockDevice, String> {
    Ok(t.need(what, fd.selftest().mock_domain_flags(ioas, flags).map(MockLine))?.0)
}

fn hwpt_flows(t: &mut Transcript, fd: &Iommufd) -> Result<(), String> {
    let _ = writeln!(t.text, "# HWPT: paging, nested, invalidation");
    let ioas = t.need("IOMMU_IOAS_ALLOC", fd.ioas_alloc())?;
    let mock = mock_device(t, fd, "mock_domain", ioas, 0)?;
    let info = fd.get_hw_info(mock.dev);
    t.show(
        "IOMMU_GET_HW_INFO",
        info.as_ref()
            .map(|i| {
                let d: Option<t::IommuTestHwInfo> = i.data();
                format!(
                    "type {:#x}, {} bytes, test_reg {:#x}, max_pasid_log2 {}, capabilities {:#x}",
                    i.data_type,
                    i.raw.len(),
                    d.map_or(0, |d| d.test_reg),
                    i.max_pasid_log2,
                    i.capabilities
                )
            })
            .map_err(Clone::clone),
    );
    t.show(
        "IOMMU_GET_HW_INFO of type INTEL_VTD",
        fd.get_hw_info_of_type(mock.dev, abi::IOMMU_HW_INFO_TYPE_INTEL_VTD).map(|i| i.data_type),
    );
    t.show("IOMMU_GET_HW_INFO of an IOAS", fd.get_hw_info(DeviceId(ioas.0)).map(|i| i.data_type));

    let paging = t.need("IOMMU_HWPT_ALLOC paging", fd.hwpt_alloc(&HwptAlloc::new(mock.dev, ioas)))?;
    let parent = t.need(
        "IOMMU_HWPT_ALLOC nest parent",
        fd.hwpt_alloc(&HwptAlloc::new(mock.dev, ioas).flags(HwptFlags::NEST_PARENT)),
    )?;
    t.show("IOMMU_HWPT_ALLOC unknown flag", fd.hwpt_alloc(&HwptAlloc::new(mock.dev, ioas).flags(HwptFlags(1 << 30))));
    let data = t::IommuHwptSelftest { iotlb: t::IOMMU_TEST_IOTLB_DEFAULT, ..Default::default() };
    t.show("IOMMU_HWPT_ALLOC nested on a paging HWPT", fd.hwpt_alloc(&HwptAlloc::new(mock.dev, paging).data(&data)));
    let nested = t.need("IOMMU_HWPT_ALLOC nested", fd.hwpt_alloc(&HwptAlloc::new(mock.dev, parent).data(&data)))?;
    t.show(
        "IOMMU_HWPT_ALLOC nested, unknown data type",
        fd.hwpt_alloc(&HwptAlloc::new(mock.dev, parent).raw_data(0xbad, &[0u8; 8])),
    );
    for slot in 0..t::MOCK_NESTED_DOMAIN_IOTLB_NUM {
        t.unit(
            &format!("check_iotlb slot {slot} default"),
            fd.selftest().check_iotlb(nested, slot, t::IOMMU_TEST_IOTLB_DEFAULT),
        );
    }
    let inv = |flags, iotlb_id| t::IommuHwptInvalidateSelftest { flags, iotlb_id };
    let show_inv = |t: &mut Transcript, what: &str, r: Result<u32, uiommufd_api::InvalidateError>| match r {
        Ok(n) => t.line(what, format!("{n} handled")),
        Err(e) => t.line(what, format!("{:?} after {} handled", e.error.errno(), e.handled)),
    };
    show_inv(t, "IOMMU_HWPT_INVALIDATE slot 1", fd.hwpt_invalidate(nested, &[inv(0, 1)]));
    t.unit("check_iotlb slot 1 cleared", fd.selftest().check_iotlb(nested, 1, 0));
    t.unit("check_iotlb slot 2 kept", fd.selftest().check_iotlb(nested, 2, t::IOMMU_TEST_IOTLB_DEFAULT));
    show_inv(t, "IOMMU_HWPT_INVALIDATE slots 2, 9, 3", fd.hwpt_invalidate(nested, &[inv(0, 2), inv(0, 9), inv(0, 3)]));
    t.unit("check_iotlb slot 3 kept", fd.selftest().check_iotlb(nested, 3, t::IOMMU_TEST_IOTLB_DEFAULT));
    show_inv(t, "IOMMU_HWPT_INVALIDATE unknown flag", fd.hwpt_invalidate(nested, &[inv(1 << 7, 0)]));
    show_inv(t, "IOMMU_HWPT_INVALIDATE all", fd.hwpt_invalidate(nested, &[inv(t::IOMMU_TEST_INVALIDATE_FLAG_ALL, 0)]));
    t.unit("check_iotlb slot 3 cleared", fd.selftest().check_iotlb(nested, 3, 0));
    show_inv(
        t,
        "IOMMU_HWPT_INVALIDATE unknown data type",
        fd.hwpt_invalidate_raw(nested, t::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST_INVALID, 8, &[0; 8], 1),
    );
    show_inv(t, "IOMMU_HWPT_INVALIDATE no entry", fd.hwpt_invalidate::<t::IommuHwptInvalidateSelftest>(nested, &[]));
    show_inv(t, "IOMMU_HWPT_INVALIDATE a paging HWPT", fd.hwpt_invalidate(parent, &[inv(0, 0)]));

    t.show("replace the mock device to the nested HWPT", fd.selftest().mock_domain_replace(mock.id, nested));
    t.unit("IOMMU_DESTROY the nested HWPT in use", fd.destroy(nested));
    t.unit("IOMMU_DESTROY the parent in use", fd.destroy(parent));
    t.show("replace the mock device to the IOAS", fd.selftest().mock_domain_replace(mock.id, ioas));
    t.unit("IOMMU_DESTROY the nested HWPT", fd.destroy(nested));
    t.unit("IOMMU_DESTROY the parent", fd.destroy(parent));
    t.unit("IOMMU_DESTROY the paging HWPT", fd.destroy(paging));
    t.unit("IOMMU_DESTROY the mock device", fd.destroy(mock.id));
    t.unit("IOMMU_DESTROY the IOAS", fd.destroy(ioas));
    Ok(())
}

fn bitmap_line(b: &[u64]) -> String {
    let v: Vec<String> = b.iter().map(|w| format!("{w:#018x}")).collect();
    v.join(" ")
}

fn dirty_flows(t: &mut Transcript, fd: &Iommufd) -> Result<(), String> {
    let _ = writeln!(t.text, "# Dirty tracking");
    let ioas = t.need("IOMMU_IOAS_ALLOC", fd.ioas_alloc())?;
    let mock = mock_device(t, fd, "mock_domain", ioas, 0)?;
    let no_dirty = mock_device(t, fd, "mock_domain NO_DIRTY", ioas, t::MOCK_FLAGS_DEVICE_NO_DIRTY)?;
    t.show(
        "IOMMU_HWPT_ALLOC DIRTY_TRACKING for a device without",
        fd.hwpt_alloc(&HwptAlloc::new(no_dirty.dev, ioas).flags(HwptFlags::DIRTY_TRACKING)),
    );
    t.unit("IOMMU_DESTROY the NO_DIRTY device", fd.destroy(no_dirty.id));
    // Page by page: which IOMMU page sizes a mapping gets depends on where
    // its pages sit in physical memory, and a page is dirty as a whole.
    t.unit("IOMMU_OPTION set HUGE_PAGES 0", fd.option_set(IommuOption::HugePages, Some(ioas.into()), 0));
    let hwpt = t.need(
        "IOMMU_HWPT_ALLOC DIRTY_TRACKING",
        fd.hwpt_alloc(&HwptAlloc::new(mock.dev, ioas).flags(HwptFlags::DIRTY_TRACKING)),
    )?;
    t.show("replace the mock device to it", fd.selftest().mock_domain_replace(mock.id, hwpt));
    let len = 128 * PAGE;
    let mem = Mem::new(len as usize);
    let iova = 0x100_0000;
    // SAFETY: `mem` outlives the mapping (unmapped below) and no device is
    // programmed to write it.
    t.show("IOMMU_IOAS_MAP 512 KiB", unsafe { fd.ioas_map(ioas, mem.va(), len, Some(iova), MapFlags::RW) }.map(Hex));
    let mut bitmap = [0u64; 2];
    t.unit(
        "IOMMU_HWPT_GET_DIRTY_BITMAP tracking off",
        fd.hwpt_get_dirty_bitmap(hwpt, iova, len, PAGE, &mut bitmap, false),
    );
    t.unit("IOMMU_HWPT_SET_DIRTY_TRACKING on", fd.hwpt_set_dirty_tracking(hwpt, true));
    let marks = [0x8000_0000_0000_0101u64, 0x5];
    t.show("mark pages 0, 8, 63, 64, 66 dirty", fd.selftest().mark_dirty(hwpt, iova, len, PAGE, &marks));
    bitmap = [0; 2];
    t.unit("IOMMU_HWPT_GET_DIRTY_BITMAP no clear", fd.hwpt_get_dirty_bitmap(hwpt, iova, len, PAGE, &mut bitmap, true));
    let _ = writeln!(t.text, "  bitmap {}", bitmap_line(&bitmap));
    bitmap = [0; 2];
    t.unit("IOMMU_HWPT_GET_DIRTY_BITMAP", fd.hwpt_get_dirty_bitmap(hwpt, iova, len, PAGE, &mut bitmap, false));
    let _ = writeln!(t.text, "  bitmap {}", bitmap_line(&bitmap));
    bitmap = [0; 2];
    t.unit(
        "IOMMU_HWPT_GET_DIRTY_BITMAP after clearing",
        fd.hwpt_get_dirty_bitmap(hwpt, iova, len, PAGE, &mut bitmap, false),
    );
    let _ = writeln!(t.text, "  bitmap {}", bitmap_line(&bitmap));
    t.unit("IOMMU_HWPT_GET_DIRTY_BITMAP page size 0", fd.hwpt_get_dirty_bitmap(hwpt, iova, len, 0, &mut bitmap, false));
    t.unit(
        "IOMMU_HWPT_GET_DIRTY_BITMAP unaligned IOVA",
        fd.hwpt_get_dirty_bitmap(hwpt, iova + 1, PAGE, PAGE, &mut bitmap, false),
    );
    t.show("mark pages 1, 2 dirty", fd.selftest().mark_dirty(hwpt, iova, len, PAGE, &[0x6, 0]));
    t.unit("IOMMU_HWPT_SET_DIRTY_TRACKING off", fd.hwpt_set_dirty_tracking(hwpt, false));
    bitmap = [0; 2];
    t.unit(
        "IOMMU_HWPT_GET_DIRTY_BITMAP tracking off, pages marked before",
        fd.hwpt_get_dirty_bitmap(hwpt, iova, len, PAGE, &mut bitmap, false),
    );
    let _ = writeln!(t.text, "  bitmap {}", bitmap_line(&bitmap));
    t.unit("IOMMU_HWPT_SET_DIRTY_TRACKING of an IOAS", fd.hwpt_set_dirty_tracking(HwptId(ioas.0), true));
    t.show("IOMMU_IOAS_UNMAP", fd.ioas_unmap(ioas, iova, len).map(Hex));
    t.unit("IOMMU_DESTROY the mock device", fd.destroy(mock.id));
    t.unit("IOMMU_DESTROY the HWPT", fd.destroy(hwpt));
    t.unit("IOMMU_DESTROY the IOAS", fd.destroy(ioas));
    Ok(())
}

/// An in-kernel access (what an emulated device without an IOMMU uses):
/// reads and writes of an IOAS by IOVA (`ACCESS_RW`), pins
/// (`ACCESS_PAGES`), and the unmap that has to wait for the pins.
fn access_flows(t: &mut Transcript, fd: &Iommufd) -> Result<(), String> {
    let _ = writeln!(t.text, "# Access: ACCESS_RW, ACCESS_PAGES");
    let ioas = t.need("IOMMU_IOAS_ALLOC", fd.ioas_alloc())?;
    let len = 4 * PAGE;
    let mem = Mem::new(len as usize);
    let iova = 0x10_0000;
    // SAFETY: `mem` outlives the mapping (unmapped below); the access writes
    // it only during `access_write`, while nothing else refers to it.
    t.show("IOMMU_IOAS_MAP 16 KiB", unsafe { fd.ioas_map(ioas, mem.va(), len, Some(iova), MapFlags::RW) }.map(Hex));
    let ro = iova + 0x10_0000;
    // SAFETY: as above; read-only for devices.
    t.show(
        "IOMMU_IOAS_MAP read-only",
        unsafe { fd.ioas_map(ioas, mem.va(), PAGE, Some(ro), MapFlags::READABLE) }.map(Hex),
    );
    let st = fd.selftest();
    let access = st.create_access(ioas, t::MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES);
    let access = t.need("create_access", access.map(|a| Shown(a, "ok")))?.0;
    // What the memory holds at `off`, `n` bytes.
    let held = |off: u64, n: usize| -> Vec<u8> {
        // SAFETY: inside `mem`; no access is writing it now.
        (0..n).map(|i| unsafe { mem.ptr.add(off as usize + i).read_volatile() }).collect()
    };
    let mut buf = [0u8; 64];
    let r = st.access_read(&access, iova + 0x1fe0, &mut buf, 0);
    t.show("access_read 64 bytes across a page", r.map(|()| same(&buf, &held(0x1fe0, 64))));
    buf = [0; 64];
    let r = st.access_read(&access, iova + 0x2fe0, &mut buf, t::MOCK_ACCESS_RW_SLOW_PATH);
    t.show("access_read slow path", r.map(|()| same(&buf, &held(0x2fe0, 64))));
    let data: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7) ^ 0xa5).collect();
    let r = st.access_write(&access, iova + 0x3010, &data, 0);
    t.show("access_write 32 bytes", r.map(|()| same(&data, &held(0x3010, 32))));
    t.unit("access_write to the read-only mapping", st.access_write(&access, ro, &data, 0));
    t.unit("access_read beyond the mapping", st.access_read(&access, iova + len - 16, &mut buf, 0));
    t.unit("access_read unknown flag", st.access_read(&access, iova, &mut buf, 1 << 8));
    let pages = st.access_pages(&access, iova + PAGE, 2 * PAGE, mem.va() + PAGE, t::MOCK_FLAGS_ACCESS_WRITE);
    let pages = t.need("access_pages 2 pages, writable", pages)?;
    t.show("access_pages of other memory", st.access_pages(&access, iova, PAGE, mem.va() + PAGE, 0));
    t.show(
        "access_pages read-only mapping for writing",
        st.access_pages(&access, ro, PAGE, 0, t::MOCK_FLAGS_ACCESS_WRITE),
    );
    t.unit("check_refs of the pinned pages", st.check_refs(mem.va() + PAGE, 2 * PAGE, 1));
    t.unit("destroy_access_pages", st.destroy_access_pages(&access, pages));
    t.unit("destroy_access_pages again", st.destroy_access_pages(&access, pages));
    let pages = t.need("access_pages again", st.access_pages(&access, iova, PAGE, mem.va(), 0))?;
    // The IOAS asks the access to drop its pins before the unmap (the
    // selftest access destroys them).
    t.show("IOMMU_IOAS_UNMAP under a pin", fd.ioas_unmap(ioas, iova, len).map(Hex));
    t.unit("destroy_access_pages of the unmapped pin", st.destroy_access_pages(&access, pages));
    t.unit("access_read of the unmapped range", st.access_read(&access, iova, &mut buf, 0));
    let ioas2 = t.need("IOMMU_IOAS_ALLOC second", fd.ioas_alloc())?;
    // SAFETY: as above.
    t.show(
        "IOMMU_IOAS_MAP into the second",
        unsafe { fd.ioas_map(ioas2, mem.va(), len, Some(iova), MapFlags::RW) }.map(Hex),
    );
    t.unit("access_replace_ioas", st.access_replace_ioas(&access, ioas2));
    buf = [0; 64];
    let r = st.access_read(&access, iova + 0x20, &mut buf, 0);
    t.show("access_read through the second", r.map(|()| same(&buf, &held(0x20, 64))));
    t.unit("IOMMU_DESTROY the second IOAS while accessed", fd.destroy(ioas2));
    drop(access);
    t.show("IOMMU_IOAS_UNMAP all", fd.ioas_unmap_all(ioas).map(Hex));
    t.show("IOMMU_IOAS_UNMAP all of the second", fd.ioas_unmap_all(ioas2).map(Hex));
    t.unit("IOMMU_DESTROY the second IOAS", fd.destroy(ioas2));
    t.unit("IOMMU_DESTROY the IOAS", fd.destroy(ioas));
    Ok(())
}

/// A value printed as a fixed text (for values whose own form differs
/// between backends, such as a descriptor number).
struct Shown<T>(T, &'static str);

impl<T> Display for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.1)
    }
}

/// Whether a copy holds what the memory holds.
fn same(got: &[u8], want: &[u8]) -> &'static str {
    if got == want {
        "ok, the memory's bytes"
    } else {
        "ok, OTHER bytes"
    }
}

fn viommu_flows(t: &mut Transcript, fd: &Iommufd) -> Result<(), String> {
    let _ = writeln!(t.text, "# vIOMMU, vDEVICE, vEVENTQ");
    let ioas = t.need("IOMMU_IOAS_ALLOC", fd.ioas_alloc())?;
    let mock = mock_device(t, fd, "mock_domain", ioas, 0)?;
    let paging = t.need("IOMMU_HWPT_ALLOC paging", fd.hwpt_alloc(&HwptAlloc::new(mock.dev, ioas)))?;
    let parent = t.need(
        "IOMMU_HWPT_ALLOC nest parent",
        fd.hwpt_alloc(&HwptAlloc::new(mock.dev, ioas).flags(HwptFlags::NEST_PARENT)),
    )?;
    t.show("IOMMU_VIOMMU_ALLOC on a paging HWPT", fd.viommu_alloc(mock.dev, paging, t::IOMMU_VIOMMU_TYPE_SELFTEST));
    t.show("IOMMU_VIOMMU_ALLOC type DEFAULT", fd.viommu_alloc(mock.dev, parent, abi::IOMMU_VIOMMU_TYPE_DEFAULT));
    let mut sdata = t::IommuViommuSelftest { in_data: 0xbadbeef, ..Default::default() };
    let viommu = t.need(
        "IOMMU_VIOMMU_ALLOC selftest",
        fd.viommu_alloc_with(mock.dev, parent, t::IOMMU_VIOMMU_TYPE_SELFTEST, &mut sdata),
    )?;
    let _ = writeln!(t.text, "  out_data {:#x}", sdata.out_data);
    let vdev = t.need("IOMMU_VDEVICE_ALLOC virt_id 0x99", fd.vdevice_alloc(viommu, mock.dev, 0x99))?;
    t.show("IOMMU_VDEVICE_ALLOC again", fd.vdevice_alloc(viommu, mock.dev, 0x98));
    let q = fd.veventq_alloc(viommu, t::IOMMU_VEVENTQ_TYPE_SELFTEST, 2);
    let q = t
        .need("IOMMU_VEVENTQ_ALLOC depth 2", q.as_ref().map(|q| q.id()).map_err(Clone::clone))
        .and(q.map_err(|e| e.to_string()))?;
    t.show(
        "IOMMU_VEVENTQ_ALLOC same type again",
        fd.veventq_alloc(viommu, t::IOMMU_VEVENTQ_TYPE_SELFTEST, 2).map(|q| q.id()),
    );
    t.show("IOMMU_VEVENTQ_ALLOC depth 0", fd.veventq_alloc(viommu, t::IOMMU_VEVENTQ_TYPE_SELFTEST, 0).map(|q| q.id()));
    let data = t::IommuHwptSelftest { iotlb: t::IOMMU_TEST_IOTLB_DEFAULT, ..Default::default() };
    let nested =
        t.need("IOMMU_HWPT_ALLOC nested on the vIOMMU", fd.hwpt_alloc(&HwptAlloc::new(mock.dev, viommu).data(&data)))?;
    t.unit("trigger_vevent, not attached to the vIOMMU", fd.selftest().trigger_vevent(mock.dev));
    t.show("replace the mock device to the nested HWPT", fd.selftest().mock_domain_replace(mock.id, nested));
    let read_events = |t: &mut Transcript, what: &str| match q.read::<t::IommuViommuEventSelftest>(4) {
        Ok(evs) => {
            t.line(what, format!("{} events", evs.len()));
            for e in evs {
                let _ = writeln!(
                    t.text,
                    "  flags {:#x} sequence {} virt_id {:#x}",
                    e.header.flags, e.header.sequence, e.record.virt_id
                );
            }
        }
        Err(e) => t.line(what, format!("{:?}", e.errno())),
    };
    t.show("read the empty vEVENTQ", q.read_raw(&mut [0u8; 64]));
    t.unit("trigger_vevent", fd.selftest().trigger_vevent(mock.dev));
    t.show("read the vEVENTQ into 4 bytes", q.read_raw(&mut [0u8; 4]));
    t.show("read the vEVENTQ into 8 bytes", q.read_raw(&mut [0u8; 8]));
    read_events(t, "read the vEVENTQ");
    for i in 0..3 {
        t.unit(&format!("trigger_vevent {i} of 3, depth 2"), fd.selftest().trigger_vevent(mock.dev));
    }
    read_events(t, "read the overflowed vEVENTQ");
    t.unit("trigger_vevent after the overflow", fd.selftest().trigger_vevent(mock.dev));
    read_events(t, "read the vEVENTQ");

    let inv = |flags, vdev_id, cache_id| t::IommuViommuInvalidateSelftest { flags, vdev_id, cache_id };
    let show_inv = |t: &mut Transcript, what: &str, r: Result<u32, uiommufd_api::InvalidateError>| match r {
        Ok(n) => t.line(what, format!("{n} handled")),
        Err(e) => t.line(what, format!("{:?} after {} handled", e.error.errno(), e.handled)),
    };
    t.unit(
        "check_dev_cache slot 0 default",
        fd.selftest().check_dev_cache(mock.dev, 0, t::IOMMU_TEST_DEV_CACHE_DEFAULT),
    );
    show_inv(t, "IOMMU_HWPT_INVALIDATE vIOMMU cache 0", fd.hwpt_invalidate(viommu, &[inv(0, 0x99, 0)]));
    t.unit("check_dev_cache slot 0 cleared", fd.selftest().check_dev_cache(mock.dev, 0, 0));
    show_inv(t, "IOMMU_HWPT_INVALIDATE vIOMMU unknown vdev", fd.hwpt_invalidate(viommu, &[inv(0, 0x42, 1)]));
    show_inv(
        t,
        "IOMMU_HWPT_INVALIDATE vIOMMU cache 9",
        fd.hwpt_invalidate(viommu, &[inv(0, 0x99, 1), inv(0, 0x99, 9)]),
    );
    t.unit("check_dev_cache slot 1 cleared", fd.selftest().check_dev_cache(mock.dev, 1, 0));

    t.unit("IOMMU_DESTROY the vIOMMU in use", fd.destroy(viommu));
    t.unit("IOMMU_DESTROY the vEVENTQ while open", fd.destroy(q.id()));
    let qid = q.id();
    drop(q);
    t.unit("IOMMU_DESTROY the vEVENTQ", fd.destroy(qid));
    t.unit("IOMMU_DESTROY the nested HWPT in use", fd.destroy(nested));
    t.show("replace the mock device to the IOAS", fd.selftest().mock_domain_replace(mock.id, ioas));
    t.unit("IOMMU_DESTROY the nested HWPT", fd.destroy(nested));
    t.unit("IOMMU_DESTROY the vDEVICE", fd.destroy(vdev));
    t.unit("IOMMU_DESTROY the vIOMMU", fd.destroy(viommu));
    t.unit("IOMMU_DESTROY the parent", fd.destroy(parent));
    t.unit("IOMMU_DESTROY the paging HWPT", fd.destroy(paging));
    t.unit("IOMMU_DESTROY the mock device", fd.destroy(mock.id));
    t.unit("IOMMU_DESTROY the IOAS", fd.destroy(ioas));
    Ok(())
}

fn fault_flows(t: &mut Transcript, fd: &Iommufd) -> Result<(), String> {
    let _ = writeln!(t.text, "# Fault queue");
    let ioas = t.need("IOMMU_IOAS_ALLOC", fd.ioas_alloc())?;
    let mock = mock_device(t, fd, "mock_domain", ioas, 0)?;
    let parent = t.need(
        "IOMMU_HWPT_ALLOC nest parent",
        fd.hwpt_alloc(&HwptAlloc::new(mock.dev, ioas).flags(HwptFlags::NEST_PARENT)),
    )?;
    let q = fd.fault_queue_alloc();
    let q = t
        .need("IOMMU_FAULT_QUEUE_ALLOC", q.as_ref().map(|q| q.id()).map_err(Clone::clone))
        .and(q.map_err(|e| e.to_string()))?;
    let data = t::IommuHwptSelftest { iotlb: t::IOMMU_TEST_IOTLB_DEFAULT, ..Default::default() };
    t.show(
        "IOMMU_HWPT_ALLOC nested with fault queue 999",
        fd.hwpt_alloc(&HwptAlloc::new(mock.dev, parent).data(&data).fault(uiommufd_api::FaultId(999))),
    );
    let iopf = t.need(
        "IOMMU_HWPT_ALLOC nested with the fault queue",
        fd.hwpt_alloc(&HwptAlloc::new(mock.dev, parent).data(&data).fault(q.id())),
    )?;
    t.show("replace the mock device to it", fd.selftest().mock_domain_replace(mock.id, iopf));
    let perm = abi::IOMMU_PGFAULT_PERM_READ | abi::IOMMU_PGFAULT_PERM_WRITE;
    t.unit("trigger_iopf", fd.selftest().trigger_iopf(mock.dev, 1, 2, perm, 0xdeadbeaf));
    let mut faults = [IommuHwptPgfault::default(); 4];
    match q.read(&mut faults) {
        Ok(n) => {
            t.line("read the fault queue", format!("{n} faults"));
            for f in &faults[..n] {
                let _ = writeln!(
                    t.text,
                    "  flags {:#x} dev_id {} pasid {} grpid {} perm {:#x} addr {:#x} length {} cookie {}",
                    f.flags, f.dev_id, f.pasid, f.grpid, f.perm, f.addr, f.length, f.cookie
                );
            }
            let resp: Vec<IommuHwptPageResponse> = faults[..n]
                .iter()
                .map(|f| IommuHwptPageResponse { cookie: f.cookie, code: abi::IOMMUFD_PAGE_RESP_SUCCESS })
                .collect();
            t.show("respond", q.respond(&resp));
            t.show("respond again", q.respond(&resp));
        }
        Err(e) => t.line("read the fault queue", format!("{:?}", e.errno())),
    }
    t.show("read the empty fault queue", q.read(&mut faults));
    t.unit("IOMMU_DESTROY the fault queue in use", fd.destroy(q.id()));
    t.show("replace the mock device to the IOAS", fd.selftest().mock_domain_replace(mock.id, ioas));
    t.unit("IOMMU_DESTROY the HWPT", fd.destroy(iopf));
    t.unit("IOMMU_DESTROY the fault queue while open", fd.destroy(q.id()));
    let qid = q.id();
    drop(q);
    t.unit("IOMMU_DESTROY the fault queue", fd.destroy(qid));
    t.unit("IOMMU_DESTROY the parent", fd.destroy(parent));
    t.unit("IOMMU_DESTROY the mock device", fd.destroy(mock.id));
    t.unit("IOMMU_DESTROY the IOAS", fd.destroy(ioas));
    Ok(())
}

/// A VFIO device cdev bound, attached, detached: run only where one exists
/// (under `uiommufd run --device ...`, or with an emulated platform).
pub fn vfio(backend: &Backend, path: &str) -> (Transcript, Result<(), String>) {
    let mut t = Transcript { text: String::new() };
    let r = vfio_flow(&mut t, backend, path);
    (t, r)
}

fn vfio_flow(t: &mut Transcript, backend: &Backend, path: &str) -> Result<(), String> {
    let _ = writeln!(t.text, "# VFIO device cdev");
    let fd = Iommufd::open(backend).map_err(|e| e.to_string())?;
    t.show("open a missing cdev", VfioDevice::open(backend, "/dev/vfio/devices/vfio4000").map(|_| "ok"));
    let dev = VfioDevice::open(backend, path);
    let dev = t
        .need("open the cdev", dev.as_ref().map(|_| "ok").map_err(Clone::clone))
        .and(dev.map_err(|e| e.to_string()))?;
    let ioas = t.need("IOMMU_IOAS_ALLOC", fd.ioas_alloc())?;
    t.show("VFIO_DEVICE_ATTACH_IOMMUFD_PT before binding", dev.attach(ioas));
    t.show("VFIO_DEVICE_GET_INFO before binding", dev.info().map(|i| i.num_regions));
    let id = t.need("VFIO_DEVICE_BIND_IOMMUFD", dev.bind(&fd))?;
    t.show("VFIO_DEVICE_BIND_IOMMUFD again", dev.bind(&fd));
    t.show(
        "VFIO_DEVICE_GET_INFO",
        dev.info().map(|i| format!("flags {:#x}, {} regions, {} irqs", i.flags, i.num_regions, i.num_irqs)),
    );
    t.show(
        "VFIO_DEVICE_GET_REGION_INFO BAR0",
        dev.region_info(abi::vfio::VFIO_PCI_BAR0_REGION_INDEX)
            .map(|r| format!("flags {:#x}, size {:#x}, offset {:#x}", r.flags, r.size, r.offset)),
    );
    let hwpt = t.need("VFIO_DEVICE_ATTACH_IOMMUFD_PT the IOAS", dev.attach(ioas))?;
    t.show("IOMMU_GET_HW_INFO", fd.get_hw_info(id).map(|i| format!("type {:#x}, {} bytes", i.data_type, i.raw.len())));
    t.show("IOMMU_IOAS_IOVA_RANGES", fd.ioas_iova_ranges(ioas).map(|r| ranges(&r.ranges)));
    t.unit("IOMMU_DESTROY the HWPT in use", fd.destroy(hwpt));
    t.unit("VFIO_DEVICE_DETACH_IOMMUFD_PT", dev.detach());
    t.unit("IOMMU_DESTROY the HWPT, now gone", fd.destroy(hwpt));
    t.unit("IOMMU_DESTROY the device", fd.destroy(id));
    drop(dev);
    t.unit("IOMMU_DESTROY the IOAS", fd.destroy(ioas));
    Ok(())
}
