//! The areas of an io_pagetable: a slab of [`Area`]s indexed by first IOVA
//! in an arena map ([`SlabMap`]), so that mapping and unmapping reuse the
//! same slots and nodes instead of allocating (the kernel's interval tree
//! over `iopt_area`s, which embed their tree nodes).

use uiommufd_memory::slabmap::SlabMap;

use super::Area;

/// IOVA -> area, in IOVA order.
#[derive(Default)]
pub(super) struct Areas {
    index: SlabMap<u32>,
    slots: Vec<Option<Area>>,
    free: Vec<u32>,
}

impl Areas {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn slot(&self, i: u32) -> &Area {
        self.slots[i as usize].as_ref().expect("indexed slot holds an area")
    }

    pub fn get(&self, iova: u64) -> Option<&Area> {
        self.index.get(iova).map(|&i| self.slot(i))
    }

    pub fn get_mut(&mut self, iova: u64) -> Option<&mut Area> {
        let i = *self.index.get(iova)?;
        self.slots[i as usize].as_mut()
    }

    /// Add the area starting at `iova` (no area may start there). Inlined
    /// into the small map, so the area is built in its slot.
    #[inline(always)]
    pub fn insert(&mut self, iova: u64, area: Area) {
        let i = match self.free.pop() {
            Some(i) => {
                // A free slot is `None` (`remove` took its area): nothing
                // to drop, and no call to the drop of an area for it.
                let old = std::mem::replace(&mut self.slots[i as usize], Some(area));
                debug_assert!(old.is_none(), "a free slot holds an area");
                std::mem::forget(old);
                i
            }
            None => {
                self.slots.push(Some(area));
                (self.slots.len() - 1) as u32
            }
        };
        let old = self.index.insert(iova, i);
        debug_assert!(old.is_none(), "two areas at one IOVA");
        if let Some(j) = old {
            // A caller bug (checked above in debug builds): the replaced
            // area's slot goes back to the free list rather than leaking
            // with its `Pages`.
            self.slots[j as usize] = None;
            self.free.push(j);
        }
    }

    #[inline(always)]
    pub fn remove(&mut self, iova: u64) -> Option<Area> {
        let i = self.index.remove(iova)?;
        self.free.push(i);
        self.slots[i as usize].take()
    }

    /// Remove the area starting at `iova` if `take` says it is to go;
    /// what `keep` takes out of it then (in its slot: the rest of the area
    /// is not moved anywhere).
    #[inline(always)]
    pub fn remove_if<R>(
        &mut self,
        iova: u64,
        take: impl FnOnce(&Area) -> bool,
        keep: impl FnOnce(&mut Area) -> R,
    ) -> Option<R> {
        let slots = &self.slots;
        let i = self.index.remove_if(iova, |&i| slots[i as usize].as_ref().is_some_and(take))?;
        self.free.push(i);
        let slot = &mut self.slots[i as usize];
        let kept = keep(slot.as_mut().expect("indexed slot holds an area"));
        *slot = None;
        Some(kept)
    }

    /// The area starting at or before `iova` (it may end before `iova`).
    #[inline]
    pub fn at_or_before(&self, iova: u64) -> Option<(u64, &Area)> {
        self.index.prev(iova).map(|(k, &i)| (k, self.slot(i)))
    }

    /// The first area starting in `[start, last]`.
    pub fn first_in(&self, start: u64, last: u64) -> Option<u64> {
        self.index.next(start).map(|(k, _)| k).filter(|&k| k <= last)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Area)> + '_ {
        self.index.iter().map(|(k, &i)| (k, self.slot(i)))
    }

    /// Bytes held for areas and their index (for memory accounting).
    pub fn capacity_bytes(&self) -> usize {
        self.index_bytes() + self.slot_bytes()
    }

    /// Bytes of the IOVA index's nodes.
    pub fn index_bytes(&self) -> usize {
        self.index.capacity_bytes()
    }

    /// Bytes of the area slots (with the free list).
    pub fn slot_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Option<Area>>() + self.free.capacity() * 4
    }
}
