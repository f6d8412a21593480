//! Fault-injection sweep, the Rust counterpart of the kernel's
//! `iommufd_fail_nth`: a scenario of engine operations runs once per
//! injection point, the N-th fallible step failing in run N, until a run
//! passes every point without firing.
//!
//! Stronger than "nothing crashed": after every injected failure the failed
//! operation is retried without injection and must succeed as if it had
//! never been tried (a half-made area, a stray mapping or a leaked object ID
//! would make the retry fail or the checks below trip), every domain must
//! map exactly its IOAS's areas to the pinned frames, and tearing the
//! context down must leave no pin, no charge and no object behind.
//!
//! Runs in its own process (an integration test): it checks global counts.

use std::sync::Arc;

use uiommufd_abi::test_cmd::{MOCK_APERTURE_START, MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES};
use uiommufd_core::account;
use uiommufd_core::hwpt::{self, HwptAllocArgs};
use uiommufd_core::object::ObjectId;
use uiommufd_core::pages::page_size;
use uiommufd_core::selftest::{self, SelftestAccess};
use uiommufd_core::Iommufd;
use uiommufd_hw::mock::MOCK_IO_PAGE_SIZE;
use uiommufd_hw::UserData;
use uiommufd_memory::{failpoint, frames};

const RW: u32 = 1 | 2 | 4; // FIXED_IOVA | WRITEABLE | READABLE
const BUF_PAGES: u64 = 64;

/// What the steps built so far.
#[derive(Default)]
struct St {
    ioas: Vec<ObjectId>,
    stdevs: Vec<ObjectId>,
    idevs: Vec<ObjectId>,
    hwpts: Vec<ObjectId>,
    access: Option<Arc<SelftestAccess>>,
    pins: Vec<u32>,
}

type Step = fn(&Arc<Iommufd>, &mut St, u64) -> uiommufd_core::Result<()>;

fn iova(page: u64) -> u64 {
    MOCK_APERTURE_START + page * page_size()
}

fn attach_mock(ctx: &Arc<Iommufd>, st: &mut St, pt: ObjectId) -> uiommufd_core::Result<()> {
    let d = selftest::mock_domain(ctx, pt, 0)?;
    st.stdevs.push(d.stdev_id);
    st.idevs.push(d.idev_id);
    d.publish();
    Ok(())
}

const STEPS: &[(&str, Step)] = &[
    ("ioas alloc", |ctx, st, _| {
        st.ioas.push(ctx.ioas_alloc()?);
        Ok(())
    }),
    ("mock domain", |ctx, st, _| attach_mock(ctx, st, st.ioas[0])),
    ("map", |ctx, st, buf| ctx.ioas_map(st.ioas[0], RW, buf, 32 * page_size(), iova(0)).map(drop)),
    ("second mock domain", |ctx, st, _| attach_mock(ctx, st, st.ioas[0])),
    ("map with two domains", |ctx, st, buf| {
        ctx.ioas_map(st.ioas[0], RW, buf + 32 * page_size(), 16 * page_size(), iova(64)).map(drop)
    }),
    ("second ioas", |ctx, st, _| {
        st.ioas.push(ctx.ioas_alloc()?);
        Ok(())
    }),
    ("mock domain on the second", |ctx, st, _| attach_mock(ctx, st, st.ioas[1])),
    ("copy", |ctx, st, _| ctx.ioas_copy(st.ioas[1], st.ioas[0], RW, 32 * page_size(), iova(16), iova(0)).map(drop)),
    ("access", |ctx, st, _| {
        st.access = Some(selftest::create_access(ctx, st.ioas[0], MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES)?);
        Ok(())
    }),
    ("access pin", |_, st, _| {
        let id = st.access.as_ref().unwrap().access_pages(iova(4), 8 * page_size(), 0, 0)?;
        st.pins.push(id);
        Ok(())
    }),
    ("access rw", |_, st, _| {
        let mut b = vec![0u8; 3 * page_size() as usize];
        st.access.as_ref().unwrap().access().rw(iova(1) + 7, &mut b, true, true)
    }),
    ("paging hwpt", |ctx, st, _| {
        let mut holder = None;
        let mut reader = |_: &mut [u8]| Ok(());
        let data = UserData { data_type: 0, len: 0, reader: &mut reader };
        let args = HwptAllocArgs { flags: 0, dev_id: st.idevs[0], pt_id: st.ioas[1], fault_id: 0, data };
        let p = hwpt::hwpt_alloc(ctx, &mut holder, args)?;
        st.hwpts.push(p.id());
        p.publish();
        Ok(())
    }),
    ("replace onto the hwpt", |ctx, st, _| selftest::mock_domain_replace(ctx, st.stdevs[0], st.hwpts[0]).map(drop)),
    ("unmap part", |ctx, st, _| ctx.ioas_unmap(st.ioas[0], iova(64), 16 * page_size()).map(drop)),
    ("remap", |ctx, st, buf| ctx.ioas_map(st.ioas[0], RW, buf, 16 * page_size(), iova(64)).map(drop)),
];

/// Every domain of every IOAS maps exactly the IOAS's areas, each page to
/// the frame its area's pages pinned.
fn check_domains(ctx: &Iommufd, st: &St) {
    let ps = page_size();
    for &id in &st.ioas {
        let ioas = ctx.ioas(id).unwrap();
        let areas = ioas.iopt().areas();
        for d in ioas.iopt().domains() {
            let mut va = iova(0);
            while va < iova(128) {
                let area = areas.iter().find(|a| a.iova <= va && va <= a.last);
                match (area, d.domain.iova_to_phys(va)) {
                    (None, None) => {}
                    (None, Some(pa)) => panic!("IOVA {va:#x} mapped to {pa:#x} outside every area"),
                    (Some(_), None) => panic!("IOVA {va:#x} of an area is not mapped"),
                    (Some(a), Some(pa)) => {
                        let byte = a.start_byte + (va - a.iova);
                        let runs = a.pages.as_ref().expect("no half-built area").pfns(byte / ps, byte / ps);
                        assert_eq!(pa, runs[0].pfn * ps + byte % ps, "IOVA {va:#x} maps the wrong frame");
                    }
                }
                va += MOCK_IO_PAGE_SIZE;
            }
        }
    }
}

fn teardown(ctx: Arc<Iommufd>, mut st: St) {
    if let Some(a) = st.access.take() {
        a.release();
    }
    ctx.objects().destroy_all();
    assert!(ctx.objects().is_empty(), "objects outlive destroy_all");
    drop(ctx);
    assert_eq!(frames::total_pins(), 0, "pins leaked");
    assert_eq!(account::locked_pages(), (0, 0), "charges leaked");
}

#[test]
fn every_injected_failure_leaves_no_trace() {
    let ps = page_size();
    let len = (BUF_PAGES * ps) as usize;
    let mut mem = vec![0u8; len + ps as usize];
    let buf = (mem.as_mut_ptr() as u64).next_multiple_of(ps);

    // The reference run: nothing fires, everything succeeds.
    let ctx = Iommufd::new();
    let mut st = St::default();
    for (name, step) in STEPS {
        step(&ctx, &mut st, buf).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    check_domains(&ctx, &st);
    teardown(ctx, st);

    let mut fired = 0;
    for n in 1.. {
        assert!(n < 2000, "the sweep does not end");
        let ctx = Iommufd::new();
        let mut st = St::default();
        failpoint::set_nth(n);
        let mut failed_at = None;
        for (i, (name, step)) in STEPS.iter().enumerate() {
            if failed_at.is_some() {
                step(&ctx, &mut st, buf).unwrap_or_else(|e| panic!("n={n}: {name} after the failure: {e}"));
                continue;
            }
            if let Err(e) = step(&ctx, &mut st, buf) {
                assert_eq!(failpoint::nth(), 0, "n={n}: {name} failed without an injected failure: {e}");
                failed_at = Some(i);
                check_domains(&ctx, &st);
                // Retried without injection it must succeed: the failure
                // left nothing half-made behind.
                step(&ctx, &mut st, buf).unwrap_or_else(|e| panic!("n={n}: {name} retried: {e}"));
            }
        }
        let armed = failpoint::nth();
        failpoint::set_nth(0);
        check_domains(&ctx, &st);
        teardown(ctx, st);
        if failed_at.is_some() {
            fired += 1;
        } else if armed == 0 {
            // The point fired inside a step that absorbed the failure
            // (a fallback path); the run still had to be clean.
            fired += 1;
        } else {
            break;
        }
    }
    eprintln!("{fired} injection points swept");
    assert!(fired >= STEPS.len(), "the scenario passes fewer injection points than it has steps");
    drop(mem);
}
