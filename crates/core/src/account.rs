//! Charging pinned pages against `RLIMIT_MEMLOCK` (`pages.c`:
//! `incr_user_locked_vm`, `update_mm_locked_vm`).
//!
//! The kernel keeps two counters: the user's `locked_vm` (shared by every
//! process of the user; iommufd's default) and the process's `locked_vm`
//! (VFIO's way, `IOMMU_OPTION_RLIMIT_MODE` = 1). Both are checked against the
//! process's `RLIMIT_MEMLOCK`; a process with `CAP_IPC_LOCK` is not charged
//! at all. uiommufd runs inside one process, so the user counter only sees
//! this process's pins: the two modes differ in which counter they move, not
//! in what they allow (a documented divergence).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{enomem, Result};

/// Which counter a [`crate::pages::Pages`] charges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountMode {
    /// Not charged (`CAP_IPC_LOCK`).
    None,
    /// The user's locked pages.
    User,
    /// The process's locked pages.
    Process,
}

static USER_LOCKED: AtomicU64 = AtomicU64::new(0);
static PROCESS_LOCKED: AtomicU64 = AtomicU64::new(0);

/// Pages currently charged in each mode: `(user, process)`.
pub fn locked_pages() -> (u64, u64) {
    (USER_LOCKED.load(Ordering::Relaxed), PROCESS_LOCKED.load(Ordering::Relaxed))
}

/// `RLIMIT_MEMLOCK` in pages (`fresh`: read now, not the cached value).
fn limit_pages(fresh: bool) -> u64 {
    let limit = if fresh { uiommufd_memory::sys::memlock_limit_fresh() } else { uiommufd_memory::sys::memlock_limit() };
    match limit {
        None => u64::MAX,
        Some(bytes) => bytes / uiommufd_memory::page_size() as u64,
    }
}

/// One `iopt_pages`' charging handle.
#[derive(Debug)]
pub struct Account {
    mode: AccountMode,
}

impl Account {
    pub fn new(mode: AccountMode) -> Account {
        Account { mode }
    }

    /// The mode a new `Pages` gets in a context whose option says
    /// `process_mode`: none for a process with `CAP_IPC_LOCK`.
    pub fn mode_for(process_mode: bool) -> AccountMode {
        if uiommufd_memory::sys::capable_ipc_lock() {
            AccountMode::None
        } else if process_mode {
            AccountMode::Process
        } else {
            AccountMode::User
        }
    }

    fn counter(&self) -> Option<&'static AtomicU64> {
        match self.mode {
            AccountMode::None => None,
            AccountMode::User => Some(&USER_LOCKED),
            AccountMode::Process => Some(&PROCESS_LOCKED),
        }
    }

    /// The failure point every charge passes first, charged or not.
    #[inline(always)]
    pub fn failpoint() -> Result<()> {
        if uiommufd_memory::failpoint::should_fail() {
            return Err(enomem("injected failure: accounting"));
        }
        Ok(())
    }

    /// Charge `npages`; `ENOMEM` if the limit would be exceeded.
    #[inline(always)]
    pub fn charge(&self, npages: u64) -> Result<()> {
        Self::failpoint()?;
        match self.counter() {
            // Not charged (`CAP_IPC_LOCK`): nothing to do, inlined.
            None => Ok(()),
            Some(c) => Self::charge_counter(c, npages),
        }
    }

    #[inline]
    fn charge_counter(c: &AtomicU64, npages: u64) -> Result<()> {
        let mut limit = limit_pages(false);
        let mut fresh = false;
        let mut cur = c.load(Ordering::Relaxed);
        loop {
            let new = cur.checked_add(npages).ok_or(enomem("locked page count overflows"))?;
            if new > limit {
                // The cached limit may be older than a raise: refuse only
                // on the limit as it is now.
                if fresh {
                    return Err(enomem("RLIMIT_MEMLOCK exceeded"));
                }
                (limit, fresh) = (limit_pages(true), true);
                continue;
            }
            match c.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }

    /// Give back `npages` charged earlier.
    pub fn credit(&self, npages: u64) {
        if let Some(c) = self.counter() {
            let _ = c.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| Some(v.saturating_sub(npages)));
        }
    }
}
