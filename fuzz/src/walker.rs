//! Every page-table format of the models against a reference map.
//!
//! The input picks a format (mock, VT-d second stage with 3/4/5 levels,
//! x86 first stage with 4/5 levels as AMD v2 and VT-d first stage use it,
//! AMD v1, SMMUv3 LPAE stage 1 and 2 with 4 KiB, 16 KiB and 64 KiB
//! granules), then a sequence of map and unmap calls with any page size
//! the format has (up to 1 GiB), aligned or not, over a window of IOVA
//! space, and translations in between. The reference is a map of leaves
//! (IOVA → size, physical address, writable) that follows the engine's
//! documented contract (`uiommufd_hw::pt::PageTable::map` / `unmap`):
//!
//! - map: `EINVAL` for a size without a leaf or a misaligned address,
//!   `EEXIST` when a leaf already maps part of the range, with the bytes
//!   mapped before the error (whole pages, all free in the reference);
//! - unmap: leaves wholly inside go, empty stretches count, a leaf lying
//!   partly inside stops it; the return is the bytes up to there.
//!
//! After every call, the touched range's edges and middle, every leaf's
//! first and last byte (up to a bound) and random IOVAs translate exactly
//! as the reference says: the physical address, the bytes left in the
//! leaf, reads allowed, writes allowed iff mapped writable. At the end
//! everything is unmapped and the table is empty.

use std::collections::BTreeMap;

use uiommufd_hw::amd::v1::V1Format;
use uiommufd_hw::mock::MockFormat;
use uiommufd_hw::pt::{Format, PageTable};
use uiommufd_hw::smmuv3::lpae::LpaeFormat;
use uiommufd_hw::vtd::sl::SlFormat;
use uiommufd_hw::x86_64::X86Format;
use uiommufd_hw::{Access, Fault, Prot};

use crate::Input;

/// Calls per input at most.
const MAX_STEPS: usize = 48;
/// Largest page size exercised (1 GiB: a reference leaf is one entry, so
/// this only bounds the IOVA window).
const MAX_PGSIZE: u64 = 1 << 30;

/// One reference leaf.
#[derive(Clone, Copy, Debug)]
struct Leaf {
    size: u64,
    paddr: u64,
    write: bool,
}

struct Model {
    leaves: BTreeMap<u64, Leaf>,
}

impl Model {
    /// The leaf holding `iova`.
    fn find(&self, iova: u64) -> Option<(u64, Leaf)> {
        let (&start, &leaf) = self.leaves.range(..=iova).next_back()?;
        (iova - start < leaf.size).then_some((start, leaf))
    }

    /// Leaves overlapping `[start, end)`, in order.
    fn overlapping(&self, start: u64, end: u64) -> Vec<(u64, Leaf)> {
        let mut v: Vec<_> = self.find(start).filter(|&(s, _)| s < start).into_iter().collect();
        v.extend(self.leaves.range(start..end).map(|(&s, &l)| (s, l)));
        v
    }
}

fn check_translate<F: Format, const N: usize>(pt: &PageTable<F, N>, model: &Model, iova: u64) {
    let read = pt.translate(iova, Access::Read);
    let write = pt.translate(iova, Access::Write);
    match model.find(iova) {
        None => {
            let want = if iova > PageTable::<F, N>::max_iova() { Fault::OutOfRange } else { Fault::NotPresent };
            assert_eq!(read, Err(want), "read of unmapped IOVA {iova:#x}");
            assert_eq!(write, Err(want), "write of unmapped IOVA {iova:#x}");
        }
        Some((start, leaf)) => {
            let off = iova - start;
            let t = read.unwrap_or_else(|f| panic!("read of IOVA {iova:#x} (leaf {start:#x} {leaf:?}): {f:?}"));
            assert_eq!(
                (t.paddr, t.len),
                (leaf.paddr + off, leaf.size - off),
                "IOVA {iova:#x} leaf {start:#x} {leaf:?}"
            );
            match write {
                Ok(w) => {
                    assert!(leaf.write, "write allowed through a read-only leaf at {iova:#x}");
                    assert_eq!(w.paddr, t.paddr);
                }
                Err(f) => {
                    assert!(!leaf.write, "write refused through a writable leaf at {iova:#x}: {f:?}");
                    assert_eq!(f, Fault::Permission);
                }
            }
        }
    }
}

fn fuzz_format<F: Format, const N: usize>(input: &mut Input<'_>) {
    type Pt<F, const N: usize> = PageTable<F, N>;
    let pt = Pt::<F, N>::new().expect("a table");
    let sizes: Vec<u64> =
        (0..64).map(|b| 1u64 << b).filter(|s| Pt::<F, N>::pgsize_bitmap() & s != 0 && *s <= MAX_PGSIZE).collect();
    assert!(!sizes.is_empty());
    let granule = sizes[0];
    // The window: 8 of the largest pages, at a base the input picks (low,
    // or just below the table's end).
    let span = sizes[sizes.len() - 1] * 8;
    let max = Pt::<F, N>::max_iova();
    // (A map reaches at most 2 * span past the base, so it never wraps.)
    let base = if input.below(4) == 0 && max > 2 * span { (max - 2 * span + 1) & !(span - 1) } else { 0 };
    let mut model = Model { leaves: BTreeMap::new() };
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        let pgsize = if input.below(16) == 0 { 1 << input.below(40) } else { input.pick(&sizes) };
        let pgcount = 1 + input.below(if pgsize >= 1 << 21 { 2 } else { 8 });
        let aligned = input.below(8) != 0;
        let unit = if aligned { pgsize } else { granule };
        let iova = base + (input.below(span / unit) * unit).min(span - pgsize.min(span));
        let len = pgsize.saturating_mul(pgcount);
        if input.below(3) != 0 {
            let paddr = (u64::from(input.u16()) * pgsize.max(granule)) & ((1 << 44) - 1) & !(pgsize - 1);
            let write = input.bool();
            let prot = if write { Prot::READ | Prot::WRITE } else { Prot::READ };
            let legal = Pt::<F, N>::pgsize_bitmap() & pgsize != 0 && iova % pgsize == 0 && paddr % pgsize == 0;
            let fits = iova.checked_add(len - 1).is_some_and(|e| e <= max);
            let r = pt.map(iova, paddr, pgsize, pgcount, prot);
            let done = match r {
                Ok(()) => {
                    assert!(legal && fits, "map {iova:#x}+{pgsize:#x}x{pgcount} accepted");
                    len
                }
                Err((e, done)) => {
                    assert!(done % pgsize == 0 && done < len, "map failed after {done:#x} bytes");
                    if !legal {
                        assert_eq!((e, done), (uiommufd_abi::Errno::EINVAL, 0), "map {iova:#x} pgsize {pgsize:#x}");
                    } else if fits {
                        assert_eq!(e, uiommufd_abi::Errno::EEXIST, "map {iova:#x} pgsize {pgsize:#x}");
                        let at = iova + done;
                        assert!(
                            !model.overlapping(at, at.saturating_add(pgsize)).is_empty(),
                            "EEXIST at {at:#x} over nothing"
                        );
                    }
                    done
                }
            };
            if done != 0 {
                assert!(
                    model.overlapping(iova, iova.saturating_add(done)).is_empty(),
                    "map {iova:#x} over an existing leaf"
                );
            }
            for i in 0..done / pgsize {
                model.leaves.insert(iova + i * pgsize, Leaf { size: pgsize, paddr: paddr + i * pgsize, write });
            }
        } else {
            let got = pt.unmap(iova, pgsize, pgcount);
            let valid = pgsize.is_power_of_two() && pgsize >= granule && iova % granule == 0;
            // (The mirror of `PageTable::unmap`'s contract.)
            let mut want = 0u128;
            if valid && pgsize.checked_mul(pgcount).is_some() {
                // Past the table's end counts as empty too (u128: a range
                // may end at 2^64).
                let end = u128::from(iova) + u128::from(pgsize) * u128::from(pgcount);
                // A range that wraps 2^64 is refused whole.
                let wraps = end > 1 << 64;
                want = if wraps { 0 } else { end - u128::from(iova) };
                let overlapping =
                    if wraps { Vec::new() } else { model.overlapping(iova, end.min(u128::from(u64::MAX)) as u64) };
                for (start, leaf) in overlapping {
                    if start < iova || u128::from(start) + u128::from(leaf.size) > end {
                        want = u128::from(start.max(iova) - iova);
                        break;
                    }
                    model.leaves.remove(&start);
                }
            }
            if want <= u128::from(u64::MAX) {
                assert_eq!(u128::from(got), want, "unmap {iova:#x} pgsize {pgsize:#x} x{pgcount}");
            }
        }
        // Probes: the call's range, leaf edges, and random IOVAs.
        let probes = [iova, iova.saturating_add(pgsize / 2), iova.saturating_add(len - 1), base + input.below(span)];
        for p in probes {
            check_translate(&pt, &model, p);
        }
        for (&s, l) in model.leaves.iter().take(64) {
            check_translate(&pt, &model, s);
            check_translate(&pt, &model, s + (l.size - 1));
        }
    }
    let leaves: Vec<_> = model.leaves.iter().map(|(&s, l)| (s, l.size)).collect();
    for (s, size) in leaves {
        assert_eq!(pt.unmap(s, size, 1), size, "final unmap of {s:#x}");
    }
    assert!(pt.is_empty(), "the table is not empty after every leaf was unmapped");
}

/// The target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let i = &mut input;
    match i.below(14) {
        0 => fuzz_format::<MockFormat, 512>(i),
        1 => fuzz_format::<SlFormat<3>, 512>(i),
        2 => fuzz_format::<SlFormat<4>, 512>(i),
        3 => fuzz_format::<SlFormat<5>, 512>(i),
        4 => fuzz_format::<X86Format<4>, 512>(i),
        5 => fuzz_format::<X86Format<5>, 512>(i),
        6 => fuzz_format::<V1Format, 512>(i),
        7 => fuzz_format::<LpaeFormat<false, 3, 12>, 512>(i),
        8 => fuzz_format::<LpaeFormat<false, 4, 12>, 512>(i),
        9 => fuzz_format::<LpaeFormat<false, 4, 14>, 2048>(i),
        10 => fuzz_format::<LpaeFormat<false, 3, 16>, 8192>(i),
        11 => fuzz_format::<LpaeFormat<true, 4, 12>, 512>(i),
        12 => fuzz_format::<LpaeFormat<true, 4, 14>, 2048>(i),
        _ => fuzz_format::<LpaeFormat<true, 3, 16>, 8192>(i),
    }
}
