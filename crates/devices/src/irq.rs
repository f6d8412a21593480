//! Interrupt delivery the VFIO way: per IRQ index (INTx, MSI, MSI-X, ERR,
//! REQ), a fixed number of vectors, each with an optional trigger.
//!
//! VFIO never lets user space see a message address: `VFIO_DEVICE_SET_IRQS`
//! attaches an eventfd to a vector, and the kernel signals it when the
//! function raises that vector. Here a vector's trigger is an
//! [`IrqTrigger`] (the VFIO layer's implementation writes the eventfd);
//! [`IrqLines`] holds them for one device.
//!
//! Locking: one leaf mutex over the triggers. [`IrqLines::fire`] clones the
//! trigger under it and calls [`IrqTrigger::fire`] after releasing it, so a
//! trigger may take its own locks; it must not call back into the device.

use std::sync::{Arc, Mutex, MutexGuard};

use uiommufd_abi::vfio::VFIO_PCI_NUM_IRQS;
use uiommufd_abi::Errno;

/// What an interrupt vector does when the function raises it.
pub trait IrqTrigger: Send + Sync {
    /// Signal the interrupt (an eventfd write in the VFIO layer). Called
    /// from the device's worker thread or from a caller's thread running
    /// the device synchronously; must not block for long and must not call
    /// back into the device.
    fn fire(&self);
}

type Slots = Vec<Option<Arc<dyn IrqTrigger>>>;

/// The vectors of one device, per VFIO IRQ index.
pub struct IrqLines {
    counts: [u32; VFIO_PCI_NUM_IRQS as usize],
    slots: Mutex<[Slots; VFIO_PCI_NUM_IRQS as usize]>,
}

impl std::fmt::Debug for IrqLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrqLines").field("counts", &self.counts).finish_non_exhaustive()
    }
}

impl IrqLines {
    /// Lines with `counts[index]` vectors per VFIO index (0 = the index
    /// does not exist on this device).
    pub fn new(counts: [u32; VFIO_PCI_NUM_IRQS as usize]) -> Self {
        let slots = counts.map(|n| vec![None; n as usize]);
        IrqLines { counts, slots: Mutex::new(slots) }
    }

    fn lock(&self) -> MutexGuard<'_, [Slots; VFIO_PCI_NUM_IRQS as usize]> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of vectors of `index` (0 for unknown indexes).
    pub fn count(&self, index: u32) -> u32 {
        self.counts.get(index as usize).copied().unwrap_or(0)
    }

    /// Set vectors `start..start + triggers.len()` of `index`; `None`
    /// clears a vector (VFIO's eventfd -1). Other vectors keep theirs.
    /// `EINVAL` if the index has no vectors or the range does not fit
    /// (checked before anything changes).
    pub fn set(&self, index: u32, start: u32, triggers: Vec<Option<Arc<dyn IrqTrigger>>>) -> Result<(), Errno> {
        let count = self.count(index);
        let end = u64::from(start) + triggers.len() as u64;
        if count == 0 || end > u64::from(count) {
            return Err(Errno::EINVAL);
        }
        let mut slots = self.lock();
        let v = &mut slots[index as usize];
        for (i, t) in triggers.into_iter().enumerate() {
            v[start as usize + i] = t;
        }
        Ok(())
    }

    /// Clear every vector of `index` (VFIO's `DATA_NONE` with count 0).
    pub fn clear(&self, index: u32) -> Result<(), Errno> {
        if self.count(index) == 0 {
            return Err(Errno::EINVAL);
        }
        self.lock()[index as usize].iter_mut().for_each(|t| *t = None);
        Ok(())
    }

    /// Whether any vector of `index` has a trigger.
    pub fn any_set(&self, index: u32) -> bool {
        self.lock().get(index as usize).is_some_and(|v| v.iter().any(Option::is_some))
    }

    /// Fire vector `vector` of `index` if it has a trigger; returns whether
    /// one fired.
    pub fn fire(&self, index: u32, vector: u32) -> bool {
        let t = self.lock().get(index as usize).and_then(|v| v.get(vector as usize).cloned().flatten());
        match t {
            Some(t) => {
                t.fire();
                true
            }
            None => false,
        }
    }
}
