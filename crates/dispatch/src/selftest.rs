//! `IOMMU_TEST_CMD`: the kernel selftest's mock-driver operations
//! (`drivers/iommu/iommufd/selftest.c`), the hooks the kernel's own tests use
//! to look inside iommufd.

use uiommufd_abi::test_cmd::{self as t, IommuTestCmd};
use uiommufd_core::error::{einval, eio, eopnotsupp, ErrnoExt, Result};
use uiommufd_memory::{page_size, user};

use crate::ucmd::Ucmd;

pub fn execute(u: &mut Ucmd) -> Result<i32> {
    let cmd: IommuTestCmd = u.read()?;
    match cmd.op {
        t::IOMMU_TEST_OP_MD_CHECK_REFS => {
            let c: t::TestCheckRefs = cmd.payload_as();
            md_check_refs(c.uptr, c.length, c.refs)?;
            Ok(0)
        }
        _ => Err(eopnotsupp("unknown or unsupported selftest op")),
    }
}

/// `IOMMU_TEST_OP_MD_CHECK_REFS`: every page of `[uptr, uptr + length)` must
/// be present and pinned exactly `refs` times.
fn md_check_refs(uptr: u64, length: u64, refs: u32) -> Result<()> {
    let ps = page_size() as u64;
    if length % ps != 0 || uptr % ps != 0 || uptr.checked_add(length).is_none() {
        return Err(einval("range must be page aligned and must not wrap"));
    }
    let mut va = uptr;
    while va < uptr + length {
        user::probe_user_page(va).ctx("page is not mapped")?;
        // Nothing in the engine pins user pages yet, so every present page
        // has a pin count of zero.
        let pins = 0u32;
        if pins != refs {
            return Err(eio("pin count differs"));
        }
        va += ps;
    }
    Ok(())
}
