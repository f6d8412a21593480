//! The DMA path: a device's request, translated by the domain it is
//! attached to, reaching emulated physical frames.
//!
//! [`DevicePort`] is the [`DmaPort`] of one bound device. Each request
//! (address, length, read or write, and the PCIe attributes in
//! [`DmaAttrs`]) goes to the HWPT attached at its PASID (no PASID: the
//! requester ID's attachment); nothing attached means blocked, and a device
//! that was unbound reaches nothing at all. The domain translates page by
//! page through the model's own walk and IOTLB (`Domain::translate`); the
//! model also sets dirty bits when tracking is on, as hardware does. Bytes
//! move with [`frames`] copies, so a page the program has since unmapped is
//! still the pinned page and never whatever the program mapped there later.
//!
//! Each request runs in a [`dma_fence`] section: frames are released only
//! after requests that may have translated to them have finished, as an
//! IOTLB invalidation waits for requests that used the old entries.
//!
//! Each port keeps a translation cache (`crate::atc`, as a device's ATC):
//! a request through the requester ID's paging domain whose pages it holds
//! copies straight to and from host memory, with no walk and no frame
//! registry lookup; every unmap, dirty harvest, attachment change and frame
//! relocation makes the cached entries stale.
//!
//! A failed translation stops the request at the failing address. When the
//! HWPT has a fault queue (an IOPF-capable domain) the fault becomes a page
//! request there; otherwise only the device sees the error.
//!
//! Coherency: a write carrying No Snoop into a domain that does not force
//! snooping is *non-coherent*: on real hardware the CPU caches may still
//! hold old data until cache maintenance. Such writes are counted, and in
//! strict mode ([`uiommufd_memory::coherency`]) the program pages they hit
//! are watched until [`flush_caches`] so a premature read is reported.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use uiommufd_abi as abi;
use uiommufd_hw::dma::{DmaAttrs, DmaError, DmaFaultReason, DmaPort};
use uiommufd_hw::{Access, Domain, Fault as XlateFault};
use uiommufd_memory::dma_fence::{self, Published};
use uiommufd_memory::guard::{self, Lean};
use uiommufd_memory::{coherency, frames, user};

use crate::atc::{self, Atc, View};
use crate::device::{Device, NO_PASID};
use crate::fault::PageRequest;

/// Counters of one port, for tools and tests.
#[derive(Debug, Default)]
pub struct DmaStats {
    pub faults: AtomicU64,
    /// Bytes written with No Snoop into a domain that does not force
    /// snooping.
    pub noncoherent_bytes: AtomicU64,
}

/// The DMA port of a bound device (see the module documentation).
pub struct DevicePort {
    dev: Weak<Device>,
    /// The device's requester-ID domain, read without locks inside a
    /// [`dma_fence`] section (the device republishes it on every change).
    rid: Arc<Published<Arc<dyn Domain>>>,
    next_grpid: AtomicU32,
    stats: DmaStats,
    atc: Atc,
}

/// Where a piece of a request lands: an emulated physical address the
/// model translated to, or host memory from the port's cache.
#[derive(Clone, Copy)]
enum Loc {
    Phys(u64),
    Host(u64),
}

/// The key of the RID's domain in the port's cache: where the device
/// published it (`d` is what `Published::read` lent: its address is the
/// published box's, so the key costs no load of the domain itself).
/// Stable while the domain is published: a replaced one is dropped only
/// after a grace period, and the replacement bumps the generation, so an
/// address used again never meets entries of the old.
fn dom_key(d: &Arc<dyn Domain>) -> usize {
    d as *const Arc<dyn Domain> as usize
}

/// Consecutive translations of one direction of a request that continue
/// each other physically, collected to be cached as one entry: `(iova,
/// paddr, bytes)` from as far back into the first leaf as is known to be
/// in it to the end of the last leaf seen; `at` is where the request
/// entered it.
#[derive(Clone, Copy)]
struct FillRun {
    iova: u64,
    paddr: u64,
    len: u64,
    at: u64,
}

/// Filling the port's cache from a request's translations (the slow path).
struct Filler<'a> {
    atc: &'a Atc,
    dom: usize,
    gen: u64,
    perm: u64,
    /// The domain's page sizes.
    bitmap: u64,
    run: Option<FillRun>,
}

impl Filler<'_> {
    /// How far back from `at` the leaf of translation `t` reaches, as far
    /// as one more translation confirms: the leaf ends at `at + t.len`; the
    /// smallest page size no smaller than `t.len` that divides that end is
    /// a candidate start, which holds if the translation there reaches the
    /// same end from the matching physical address (then it is one leaf).
    fn leaf_back(&self, route: &Route<'_>, at: u64, t: &uiommufd_hw::Translation) -> u64 {
        let Some(end) = at.checked_add(t.len) else { return 0 };
        let mut sizes = self.bitmap;
        while sizes != 0 {
            let s = sizes & sizes.wrapping_neg();
            sizes &= sizes - 1;
            if s < t.len || end & (s - 1) != 0 {
                continue;
            }
            let back = s - t.len;
            if back == 0 || back > at || back > t.paddr {
                return 0;
            }
            let access = if self.perm == atc::WRITE { Access::Write } else { Access::Read };
            return match route.translate(end - s, access) {
                Ok(u) if u.len == s && u.paddr == t.paddr - back => back,
                _ => 0,
            };
        }
        0
    }

    /// `t` translated `at` for this filler's access.
    fn add(&mut self, route: &Route<'_>, at: u64, t: &uiommufd_hw::Translation) {
        if let Some(r) = &mut self.run {
            // Within or right after the run, and physically continuing it
            // (the other end of a copy may have cut the last step short).
            let off = at.wrapping_sub(r.iova);
            if off <= r.len && r.paddr.wrapping_add(off) == t.paddr {
                r.len = r.len.max(off + t.len);
                return;
            }
        }
        self.commit();
        let back = self.leaf_back(route, at, t);
        self.run = Some(FillRun { iova: at - back, paddr: t.paddr - back, len: t.len + back, at });
    }

    /// Cache the collected run, cut to what is contiguous in host memory.
    fn commit(&mut self) {
        let Some(r) = self.run.take() else { return };
        // From the leaf's start when one frame run holds it all the way to
        // where the request entered, else from there.
        let lead = r.at - r.iova;
        let from = |back: u64| frames::atc_host(r.paddr + back).filter(|&(_, avail)| avail > lead - back);
        let (back, host, avail) = match from(0) {
            Some((host, avail)) => (0, host, avail),
            None => match frames::atc_host(r.paddr + lead) {
                Some((host, avail)) => (lead, host, avail),
                None => return,
            },
        };
        self.atc.fill(self.dom, self.gen, r.iova + back, (r.len - back).min(avail), host, self.perm);
    }
}

/// A translation failure noted inside a section, reported after it, with
/// the domain that faulted (held past the section for the driver's event
/// handling).
struct Failed {
    iova: u64,
    write: bool,
    fault: XlateFault,
    domain: Arc<dyn Domain>,
}

/// The domain a request goes through: the RID's, borrowed for the section,
/// or a PASID's, held by reference count (with the PASID to translate by
/// when it is the RID's nested domain with a guest PASID table).
enum Route<'s> {
    Rid(&'s Arc<dyn Domain>),
    Pasid(Arc<dyn Domain>, Option<u32>),
}

impl Route<'_> {
    fn domain(&self) -> &dyn Domain {
        match self {
            Route::Rid(d) => d.as_ref(),
            Route::Pasid(d, _) => d.as_ref(),
        }
    }

    fn domain_arc(&self) -> Arc<dyn Domain> {
        match self {
            Route::Rid(d) => Arc::clone(d),
            Route::Pasid(d, _) => Arc::clone(d),
        }
    }

    fn translate(&self, iova: u64, access: Access) -> Result<uiommufd_hw::Translation, XlateFault> {
        match self {
            Route::Rid(d) => d.translate(iova, access),
            Route::Pasid(d, None) => d.translate(iova, access),
            Route::Pasid(d, Some(p)) => d.translate_pasid(*p, iova, access),
        }
    }
}

/// Add `n` to a counter of this port. A port serves one device, whose
/// requests come from one thread at a time (the DMA engine's ring lock), so
/// a plain load and store keeps the count without a locked instruction per
/// request; concurrent users of one port may lose counts, never memory
/// safety.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl DevicePort {
    pub fn new(dev: &Arc<Device>) -> Arc<DevicePort> {
        Arc::new(DevicePort {
            dev: Arc::downgrade(dev),
            rid: Arc::clone(dev.dma_rid()),
            next_grpid: AtomicU32::new(1),
            stats: DmaStats::default(),
            atc: Atc::default(),
        })
    }

    /// Turn the port's translation cache on (the default) or off (every
    /// request then walks the domain and looks its frames up, as a device
    /// without an ATC: for measuring the cache, and for ruling it out).
    pub fn set_translation_cache(&self, on: bool) {
        self.atc.set_enabled(on);
    }

    pub fn stats(&self) -> &DmaStats {
        &self.stats
    }

    /// The domain serving a PASID-tagged request (taken before the
    /// request's section: the lookup locks the device's attachments): the
    /// PASID's own attachment, else, where the IOMMU takes PASID tables from
    /// the guest, the requester ID's nested domain, translating by PASID.
    fn pasid_domain(&self, pasid: u32) -> Option<(Arc<dyn Domain>, Option<u32>)> {
        // A caller's hold must not keep a grace period waiting while we
        // wait for the lock its thread may hold.
        dma_fence::quiesce();
        let dev = self.dev.upgrade()?;
        if let Some(d) = dev.dma_domain(pasid) {
            return Some((d, None));
        }
        if dev.dev().user_pasid_table() {
            let d = dev.dma_domain(NO_PASID)?;
            if d.is_nested() {
                return Some((d, Some(pasid)));
            }
        }
        None
    }

    /// Where a request with `attrs` goes, within `section`.
    fn route<'s>(
        &'s self,
        pasid: &Option<(Arc<dyn Domain>, Option<u32>)>,
        attrs: &DmaAttrs,
        section: &'s dma_fence::Section,
    ) -> Option<Route<'s>> {
        match attrs.pasid {
            None => self.rid.read(section).map(Route::Rid),
            Some(_) => pasid.clone().map(|(d, p)| Route::Pasid(d, p)),
        }
    }

    /// A translation failure: counted, and reported to the fault queue of
    /// the HWPT when it has one. Called outside any section (reporting
    /// takes the device's attachment lock).
    fn fault(&self, failed: Failed, attrs: &DmaAttrs) -> DmaError {
        // As in `pasid_domain`: reporting takes the attachment lock.
        dma_fence::quiesce();
        let Failed { iova, write, fault, domain } = failed;
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        let reason = match fault {
            XlateFault::NotPresent => DmaFaultReason::NotPresent,
            XlateFault::Permission => DmaFaultReason::Permission,
            XlateFault::OutOfRange => DmaFaultReason::OutOfRange,
        };
        let mut flags = abi::IOMMU_PGFAULT_FLAGS_LAST_PAGE;
        if attrs.pasid.is_some() {
            flags |= abi::IOMMU_PGFAULT_FLAGS_PASID_VALID;
        }
        let mut perm = if write { abi::IOMMU_PGFAULT_PERM_WRITE } else { abi::IOMMU_PGFAULT_PERM_READ };
        if attrs.privileged {
            perm |= abi::IOMMU_PGFAULT_PERM_PRIV;
        }
        let req = PageRequest {
            flags,
            pasid: attrs.pasid.unwrap_or(0),
            grpid: self.next_grpid.fetch_add(1, Ordering::Relaxed) & 0x1ff,
            perm,
            addr: iova & !(uiommufd_memory::page_size() as u64 - 1),
        };
        let reported = self.dev.upgrade().is_some_and(|dev| {
            match dev.dev().dma_fault(domain.as_ref(), attrs.pasid, iova, write, attrs.privileged) {
                Some(reported) => reported,
                None => dev.report_fault(req, false),
            }
        });
        DmaError { iova, write, reason, reported }
    }

    fn blocked(iova: u64, write: bool) -> DmaError {
        DmaError { iova, write, reason: DmaFaultReason::Blocked, reported: false }
    }

    fn memory(&self, iova: u64, write: bool) -> DmaError {
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        DmaError { iova, write, reason: DmaFaultReason::Memory, reported: false }
    }

    /// The cache key of `route`'s domain when the port's cache may serve
    /// (or learn) a request with `attrs`: the requester ID's domain, and no
    /// No Snoop write under strict coherency (which must see the physical
    /// pages it watches; otherwise a non-coherent write is only counted).
    fn cacheable(&self, route: &Route<'_>, attrs: &DmaAttrs, write: bool) -> Option<usize> {
        match route {
            Route::Rid(d) if !(write && attrs.no_snoop && coherency::strict()) && self.atc.enabled() => {
                Some(dom_key(d))
            }
            _ => None,
        }
    }

    /// A filler for the cache, when `route` may be cached (a paging
    /// domain: see `crate::atc`).
    fn filler(&self, route: &Route<'_>, dom: Option<usize>, gen: u64, perm: u64) -> Option<Filler<'_>> {
        let dom = dom?;
        let d = route.domain();
        if d.is_nested() {
            return None;
        }
        Some(Filler { atc: &self.atc, dom, gen, perm, bitmap: d.pgsize_bitmap(), run: None })
    }

    /// The common request, served whole from the port's cache: no PASID,
    /// the thread's DMA-fence entry a plain store
    /// ([`dma_fence::enter_light`]) and the cache holding entries of the
    /// current generation (which stands for the requester ID's domain:
    /// [`Atc::current`]).
    /// `find` looks up the host address of each piece ([`View::host`]: one
    /// entry holding all its bytes); once the view is confirmed
    /// ([`View::confirm`]), `copy` moves the bytes there (false: a fault).
    /// `None` sends the request down the general path, which redoes it
    /// from the start. Both run inside the request's section. A No Snoop
    /// write (`written`: the bytes a write request writes; `None` for a
    /// read) is served unless strict coherency watches pages (which needs
    /// the physical pages: the general path), and counted when the domain
    /// does not force snooping. The copy's call keeps the caller's
    /// registers (`uiommufd_memory::guard::Lean`).
    ///
    /// Ordering: the section's entry is a full barrier (`dma_fence`), and
    /// the generation is read after it, so an unmap whose generation bump
    /// this request missed waits for its section before releasing
    /// anything (its grace period follows the bump); one whose bump it saw
    /// left no entry it could use (the cache's generation is older).
    #[inline(always)]
    fn fast<H>(
        &self,
        attrs: &DmaAttrs,
        find: impl FnOnce(&View<'_>) -> Option<H>,
        written: Option<u64>,
        copy: impl FnOnce(Lean, H) -> bool,
    ) -> Option<bool> {
        let no_snoop_write = attrs.no_snoop && written.is_some();
        if attrs.pasid.is_some() || (no_snoop_write && coherency::strict()) {
            return None;
        }
        let lean = guard::lean()?;
        let section = dma_fence::enter_light()?;
        // The port's domain is not read: the generation stands for it
        // (`Atc::current`).
        let view = self.atc.current(uiommufd_memory::atc::generation())?;
        let hosts = find(&view)?;
        if !view.confirm() {
            return None;
        }
        // Counted before the copy, so that nothing but the section's end
        // is left after it.
        if no_snoop_write {
            self.count_noncoherent(&section, written.unwrap_or(0));
        }
        let copied = copy(lean, hosts);
        drop(section);
        Some(copied)
    }

    /// A No Snoop write the port's cache served: counted unless the domain
    /// forces snooping.
    #[inline(never)]
    fn count_noncoherent(&self, section: &dma_fence::Leaf, written: u64) {
        if self.rid.read(section).is_some_and(|d| !d.forces_snoop()) {
            bump(&self.stats.noncoherent_bytes, written);
        }
    }

    /// Walk `[iova, iova + len)` (`len` > 0), handing each physically
    /// contiguous piece `(where, offset, n)` to `each`: from the port's
    /// cache while it holds the pages, then translation by translation (the
    /// general path of a read or write that [`Self::fast`] did not serve).
    #[inline(never)]
    fn walk(
        &self,
        iova: u64,
        len: u64,
        write: bool,
        attrs: &DmaAttrs,
        mut each: impl FnMut(Loc, u64, u64) -> Result<(), uiommufd_abi::Errno>,
    ) -> Result<(), DmaError> {
        let pasid = attrs.pasid.and_then(|p| self.pasid_domain(p));
        let failed = {
            // Frames translated here stay allocated until the section ends.
            let section = dma_fence::enter();
            let route = self.route(&pasid, attrs, &section).ok_or(Self::blocked(iova, write))?;
            let access = if write { Access::Write } else { Access::Read };
            let perm = if write { atc::WRITE } else { atc::READ };
            let dom = self.cacheable(&route, attrs, write);
            // Read in the section: a change after this makes what we fill
            // stale, and one before it is seen.
            let gen = uiommufd_memory::atc::generation();
            let mut done = 0u64;
            let noncoherent = write && attrs.no_snoop && !route.domain().forces_snoop();
            if let Some(dom) = dom {
                while done < len {
                    let at = iova.wrapping_add(done);
                    let Some((host, avail)) = self.atc.lookup(dom, gen, at, write) else { break };
                    let n = (len - done).min(avail);
                    each(Loc::Host(host), done, n).map_err(|_| self.memory(at, write))?;
                    if noncoherent {
                        bump(&self.stats.noncoherent_bytes, n);
                    }
                    done += n;
                }
                if done == len {
                    return Ok(());
                }
            }
            let mut filler = self.filler(&route, dom, gen, perm);
            // Translations that continue each other physically are handed
            // on as one piece: (paddr, offset in the request, bytes).
            let mut pending: Option<(u64, u64, u64)> = None;
            let mut flush = |p: Option<(u64, u64, u64)>| -> Result<(), DmaError> {
                let Some((pa, off, n)) = p else { return Ok(()) };
                each(Loc::Phys(pa), off, n).map_err(|_| self.memory(iova.wrapping_add(off), write))?;
                if noncoherent {
                    self.noncoherent(pa, n);
                }
                Ok(())
            };
            let mut failed = None;
            while done < len {
                let at = iova.wrapping_add(done);
                let t = if at < iova {
                    // The request wrapped past the top of the address space.
                    Err(XlateFault::OutOfRange)
                } else {
                    route.translate(at, access)
                };
                let t = match t {
                    Ok(t) => t,
                    Err(fault) => {
                        failed = Some(Failed { iova: at, write, fault, domain: route.domain_arc() });
                        break;
                    }
                };
                if let Some(f) = &mut filler {
                    f.add(&route, at, &t);
                }
                let n = (len - done).min(t.len.max(1));
                pending = match pending {
                    Some((pa, off, m)) if pa + m == t.paddr => Some((pa, off, m + n)),
                    p => {
                        flush(p)?;
                        Some((t.paddr, done, n))
                    }
                };
                done += n;
            }
            // The bytes before a fault still move.
            flush(pending)?;
            if let Some(f) = &mut filler {
                f.commit();
            }
            failed
        };
        match failed {
            Some(f) => Err(self.fault(f, attrs)),
            None => Ok(()),
        }
    }

    /// [`DmaPort::dma_read`] past its cached request.
    #[inline(never)]
    fn read_slow(&self, iova: u64, buf: &mut [u8], attrs: &DmaAttrs) -> Result<(), DmaError> {
        let len = buf.len() as u64;
        if len == 0 {
            return Ok(());
        }
        self.walk(iova, len, false, attrs, |at, off, n| {
            let dst = &mut buf[off as usize..(off + n) as usize];
            match at {
                Loc::Phys(pa) => frames::read_phys(pa, dst),
                Loc::Host(host) => user::copy_from_own(dst, host),
            }
        })?;
        Ok(())
    }

    /// [`DmaPort::dma_write`] past its cached request.
    #[inline(never)]
    fn write_slow(&self, iova: u64, data: &[u8], attrs: &DmaAttrs) -> Result<(), DmaError> {
        let len = data.len() as u64;
        if len == 0 {
            return Ok(());
        }
        self.walk(iova, len, true, attrs, |at, off, n| {
            let src = &data[off as usize..(off + n) as usize];
            match at {
                Loc::Phys(pa) => frames::write_phys(pa, src),
                Loc::Host(host) => user::copy_to_own(host, src),
            }
        })?;
        Ok(())
    }

    fn noncoherent(&self, paddr: u64, n: u64) {
        bump(&self.stats.noncoherent_bytes, n);
        if !coherency::strict() {
            return;
        }
        let ps = uiommufd_memory::page_size() as u64;
        let mut pa = paddr & !(ps - 1);
        while pa < paddr + n {
            if let Some(page) = frames::program_page(pa) {
                coherency::watch(page, page_prot(page));
            }
            pa += ps;
        }
    }
}

/// The protection of the program page at `page` (for strict mode, which
/// restores it after a watch).
fn page_prot(page: u64) -> i32 {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let Ok(maps) = uiommufd_memory::vma::current() else { return rw };
    maps.iter().find(|v| v.start <= page && page < v.end).map_or(rw, |v| v.prot())
}

impl DmaPort for DevicePort {
    fn dma_read(&self, iova: u64, buf: &mut [u8], attrs: DmaAttrs) -> Result<(), DmaError> {
        let len = buf.len() as u64;
        let to = buf.as_mut_ptr() as u64;
        match self.fast(&attrs, |v| v.host(iova, len, false), None, |g, host| g.copy(to, host, len as usize)) {
            Some(true) => Ok(()),
            Some(false) => Err(self.memory(iova, false)),
            None => self.read_slow(iova, buf, &attrs),
        }
    }

    fn dma_write(&self, iova: u64, data: &[u8], attrs: DmaAttrs) -> Result<(), DmaError> {
        let len = data.len() as u64;
        let from = data.as_ptr() as u64;
        match self.fast(&attrs, |v| v.host(iova, len, true), Some(len), |g, host| g.copy(host, from, len as usize)) {
            Some(true) => Ok(()),
            Some(false) => Err(self.memory(iova, true)),
            None => self.write_slow(iova, data, &attrs),
        }
    }

    /// Both writes in one section when the cache holds both whole (a DMA
    /// engine's result and status), else two requests.
    fn dma_write_then(&self, first: (u64, &[u8]), second: (u64, &[u8]), attrs: DmaAttrs) -> Result<(), DmaError> {
        let (l1, l2) = (first.1.len() as u64, second.1.len() as u64);
        let mut failed = first.0;
        let fast = self.fast(
            &attrs,
            |v| Some((v.host(first.0, l1, true)?, v.host(second.0, l2, true)?)),
            Some(l1 + l2),
            |g, (h1, h2)| {
                g.copy(h1, first.1.as_ptr() as u64, l1 as usize) && {
                    failed = second.0;
                    g.copy(h2, second.1.as_ptr() as u64, l2 as usize)
                }
            },
        );
        match fast {
            Some(true) => Ok(()),
            Some(false) => Err(self.memory(failed, true)),
            None => {
                self.dma_write(first.0, first.1, attrs)?;
                self.dma_write(second.0, second.1, attrs)
            }
        }
    }

    /// Frame to frame, no bounce buffer: translations that continue each
    /// other physically on both sides are coalesced into one copy.
    fn dma_copy(&self, dst: u64, src: u64, len: u64, attrs: DmaAttrs) -> Result<(), DmaError> {
        let fast = self.fast(
            &attrs,
            |v| Some((v.host(src, len, false)?, v.host(dst, len, true)?)),
            Some(len),
            |g, (sh, dh)| g.copy(dh, sh, len as usize),
        );
        match fast {
            Some(true) => Ok(()),
            Some(false) => Err(self.memory(dst, true)),
            None => self.copy_slow(dst, src, len, &attrs),
        }
    }
}

impl DevicePort {
    /// [`DmaPort::dma_copy`] past its cached request: both ends from the
    /// port's cache while it holds them, then translation by translation.
    #[inline(never)]
    fn copy_slow(&self, dst: u64, src: u64, len: u64, attrs: &DmaAttrs) -> Result<(), DmaError> {
        if len == 0 {
            return Ok(());
        }
        // One device, one PASID: both ends go through the same domain.
        let pasid = attrs.pasid.and_then(|p| self.pasid_domain(p));
        let failed = {
            let section = dma_fence::enter();
            let route = self.route(&pasid, attrs, &section).ok_or(Self::blocked(src, false))?;
            let dom = self.cacheable(&route, attrs, attrs.no_snoop);
            let gen = uiommufd_memory::atc::generation();
            let mut done = 0u64;
            let noncoherent = attrs.no_snoop && !route.domain().forces_snoop();
            if let Some(dom) = dom {
                // Both ends from the port's cache, host to host.
                while done < len {
                    let (s, d) = (src.wrapping_add(done), dst.wrapping_add(done));
                    let Some((sh, savail)) = self.atc.lookup(dom, gen, s, false) else { break };
                    let Some((dh, davail)) = self.atc.lookup(dom, gen, d, true) else { break };
                    let n = (len - done).min(savail).min(davail);
                    user::copy_own_to_own(dh, sh, n as usize).map_err(|_| self.memory(d, true))?;
                    if noncoherent {
                        bump(&self.stats.noncoherent_bytes, n);
                    }
                    done += n;
                }
            }
            // The rest (all of it on a miss): translation by translation.
            let failed = 'slow: {
                if done == len {
                    break 'slow None;
                }
                let mut fill_src = self.filler(&route, dom, gen, atc::READ);
                let mut fill_dst = self.filler(&route, dom, gen, atc::WRITE);
                // The physically contiguous piece not yet copied:
                // (dst pa, src pa, bytes, offset in the request).
                let mut pending: Option<(u64, u64, u64, u64)> = None;
                let flush = |p: Option<(u64, u64, u64, u64)>| -> Result<(), DmaError> {
                    let Some((dpa, spa, n, at)) = p else { return Ok(()) };
                    frames::copy_phys(dpa, spa, n as usize).map_err(|_| self.memory(dst.wrapping_add(at), true))?;
                    if noncoherent {
                        self.noncoherent(dpa, n);
                    }
                    Ok(())
                };
                let mut failed = None;
                while done < len {
                    let (s, d) = (src.wrapping_add(done), dst.wrapping_add(done));
                    let ts = if s < src { Err(XlateFault::OutOfRange) } else { route.translate(s, Access::Read) };
                    let ts = match ts {
                        Ok(t) => t,
                        Err(fault) => {
                            failed = Some(Failed { iova: s, write: false, fault, domain: route.domain_arc() });
                            break;
                        }
                    };
                    let td = if d < dst { Err(XlateFault::OutOfRange) } else { route.translate(d, Access::Write) };
                    let td = match td {
                        Ok(t) => t,
                        Err(fault) => {
                            failed = Some(Failed { iova: d, write: true, fault, domain: route.domain_arc() });
                            break;
                        }
                    };
                    if let (Some(fs), Some(fd)) = (&mut fill_src, &mut fill_dst) {
                        fs.add(&route, s, &ts);
                        fd.add(&route, d, &td);
                    }
                    let n = (len - done).min(ts.len.max(1)).min(td.len.max(1));
                    pending = match pending {
                        Some((dpa, spa, m, at)) if dpa + m == td.paddr && spa + m == ts.paddr => {
                            Some((dpa, spa, m + n, at))
                        }
                        p => {
                            flush(p)?;
                            Some((td.paddr, ts.paddr, n, done))
                        }
                    };
                    done += n;
                }
                // What was translated before a fault still lands.
                flush(pending)?;
                for f in [&mut fill_src, &mut fill_dst].into_iter().flatten() {
                    f.commit();
                }
                failed
            };
            failed
        };
        if let Some(f) = failed {
            return Err(self.fault(f, attrs));
        }
        Ok(())
    }
}

/// The cache maintenance operation of the coherency contract (a guest's
/// `wbinvd`, as a VMM performs it on the guest's behalf): after it the
/// program may read whatever non-coherent DMA wrote. A no-op unless strict
/// mode watches pages.
pub fn flush_caches() {
    coherency::flush_caches();
}
