//! What must hold of the engine's mappings whenever no call is in flight,
//! as one check for the stress tests and the fuzz targets.
//!
//! [`check_mappings`] compares three views that the engine keeps apart:
//! the areas of each IOAS, what each domain attached to it maps, and the
//! pin counts of the `Pages` and of the frame registry. It costs a walk of
//! every area page, so it is for tests, never for the data path.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;

use uiommufd_hw::mock::MockDomain;
use uiommufd_memory::frames;

use crate::object::ObjectId;
use crate::pages::{page_size, Pages};
use crate::Iommufd;

/// How [`check_mappings`] looks.
#[derive(Clone, Debug)]
pub struct MappingsCheck {
    /// IOVAs where every domain must map nothing outside the areas.
    pub window: Range<u64>,
    /// Distance between checked IOVAs (a domain's smallest page).
    pub step: u64,
    /// At most this many bytes of each area are compared page by page.
    pub max_area_bytes: u64,
    /// Accesses may hold pins of their own: pin counts must then be at
    /// least, not exactly, what the domain-filled areas account for.
    pub accesses_may_pin: bool,
}

/// What [`check_mappings`] compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingsChecked {
    /// Area pages whose translation was compared, per domain.
    pub pages: u64,
    /// `Pages` whose pin count was compared exactly.
    pub exact_pin_counts: u64,
}

/// Check, for each IOAS of `ioas_ids` that still exists: every domain
/// attached to it maps each checked page of each area to the frame the
/// area pins, and nothing in `how.window` outside the areas; no mock
/// domain saw a malformed map or unmap; each `Pages` pins exactly the pages
/// of its areas that are filled into domains, and the frame registry's pin
/// total is their sum (both "at least" with `accesses_may_pin`). The first
/// broken invariant is the error.
pub fn check_mappings(ctx: &Iommufd, ioas_ids: &[ObjectId], how: &MappingsCheck) -> Result<MappingsChecked, String> {
    let ps = page_size();
    let mut out = MappingsChecked::default();
    let mut expected: HashMap<*const Pages, (Arc<Pages>, BTreeSet<u64>)> = HashMap::new();
    for &id in ioas_ids {
        let Ok(ioas) = ctx.ioas(id) else { continue };
        let domains = ioas.iopt().domains();
        let areas = ioas.iopt().areas();
        for a in &areas {
            let pages = a.pages.as_ref().ok_or(format!("IOAS {id}: area {:#x} is half-built", a.iova))?;
            if !domains.is_empty() {
                let first = a.start_byte / ps;
                let last = (a.start_byte + (a.last - a.iova)) / ps;
                let e = expected.entry(Arc::as_ptr(pages)).or_insert_with(|| (Arc::clone(pages), BTreeSet::new()));
                e.1.extend(first..=last);
            }
        }
        for d in &domains {
            if let Some(mock) = d.domain.as_any().downcast_ref::<MockDomain>() {
                if mock.warnings() != 0 {
                    return Err(format!("IOAS {id}: a malformed map or unmap reached a mock domain"));
                }
            }
            // Area side: each checked page maps the frame its area pins.
            for a in &areas {
                let pages = a.pages.as_ref().expect("checked above");
                let mut iova = a.iova;
                loop {
                    let byte = a.start_byte + (iova - a.iova);
                    let runs = pages.pfns(byte / ps, byte / ps);
                    if runs.len() != 1 {
                        return Err(format!("IOAS {id}: page {} of an attached area is not pinned", byte / ps));
                    }
                    let want = runs[0].pfn * ps + byte % ps;
                    match d.domain.iova_to_phys(iova) {
                        Some(pa) if pa == want => {}
                        got => return Err(format!("IOAS {id}: IOVA {iova:#x} maps {got:x?}, not the frame {want:#x}")),
                    }
                    out.pages += 1;
                    match iova.checked_add(how.step) {
                        Some(n) if n <= a.last && n - a.iova < how.max_area_bytes => iova = n,
                        _ => break,
                    }
                }
            }
            // Domain side: nothing in the window outside the areas.
            let mut iova = how.window.start;
            while iova < how.window.end {
                if !areas.iter().any(|a| a.iova <= iova && iova <= a.last) {
                    if let Some(pa) = d.domain.iova_to_phys(iova) {
                        return Err(format!("IOAS {id}: IOVA {iova:#x} maps {pa:#x} outside every area"));
                    }
                }
                iova += how.step;
            }
        }
    }
    let mut sum = 0;
    for (pages, idx) in expected.values() {
        let (have, want) = (pages.npinned(), idx.len() as u64);
        if have < want || (have != want && !how.accesses_may_pin) {
            return Err(format!("a Pages pins {have} pages, its domain-filled areas {want}"));
        }
        out.exact_pin_counts += u64::from(!how.accesses_may_pin);
        sum += want;
    }
    let total = frames::total_pins();
    if total < sum || (total != sum && !how.accesses_may_pin) {
        return Err(format!("the frame registry counts {total} pins, the Pages {sum}"));
    }
    Ok(out)
}
