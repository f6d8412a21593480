//! `/dev/vfio/<group>`: the legacy VFIO group node (`drivers/vfio/group.c`)
//! over the emulated devices of one IOMMU group, with iommufd as the
//! container (the kernel's `CONFIG_IOMMUFD_VFIO_CONTAINER` shape, where
//! `/dev/vfio/vfio` is an iommufd; `/dev/iommu` is accepted the same way).
//!
//! What it stores:
//! - [`VfioGroup`]: one IOMMU group as VFIO registers it (`struct
//!   vfio_group`): its number, its devices (`device_list`, weak: the
//!   registrations own the devices), and under `state` (`group_lock`) the
//!   open of the node (`opened_file`: it opens once at a time), the
//!   container set with `VFIO_GROUP_SET_CONTAINER` (`group->iommufd`, a
//!   context reference), and how many devices of the group are bound
//!   through their cdev (`cdev_device_open_cnt`);
//! - [`VfioGroupFile`]: the open node.
//!
//! The type1 flow: `SET_CONTAINER` makes sure the container's context has
//! a compat IOAS (`iommufd_vfio_compat_ioas_create`), which is what
//! `VFIO_SET_IOMMU`, `VFIO_IOMMU_MAP_DMA` and the rest of the container
//! ioctls operate on; `GET_DEVICE_FD` opens a device of the group
//! (`vfio_df_group_open`): its first open binds it to the container's
//! context and attaches it to the compat IOAS, so its DMA goes through the
//! program's `MAP_DMA` mappings. The device descriptor is a
//! [`VfioDeviceFile`] like a cdev's after bind and attach, except that
//! BIND/ATTACH/DETACH are refused; its last close unbinds the device.
//!
//! With an iommufd container the kernel differs from the legacy type1
//! container in two ways this module follows: `GET_DEVICE_FD` does not
//! need `VFIO_SET_IOMMU` first (`vfio_group_use_container`'s check is the
//! legacy container's), and `UNSET_CONTAINER` (and closing the node) are
//! allowed while device descriptors are open: those keep their binding and
//! their context until they close (`vfio_group_ioctl_unset_container`
//! checks `container_users` only for a legacy container).
//!
//! Lock order: `VfioGroup::state` (`group_lock`) → `VfioGroup::devices`
//! (`device_lock`) → `VfioDevice::set` (`dev_set->lock`) → the engine.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use uiommufd_abi::vfio as v;
use uiommufd_abi::Errno;
use uiommufd_core::error::{einval, enodev, ErrnoExt, Error, Result};
use uiommufd_core::Iommufd;
use uiommufd_memory::user;
use zerocopy::IntoBytes;

use crate::file::{FdHost, File};
use crate::vfio_device::{VfioDevice, VfioDeviceFile};

/// The group state under `group_lock`.
#[derive(Default)]
pub(crate) struct GroupState {
    /// `opened_file != NULL`: the node is open.
    opened: bool,
    /// `group->iommufd`: the container, once set.
    iommufd: Option<Arc<Iommufd>>,
    /// `cdev_device_open_cnt`: devices of the group bound through their
    /// cdev (each blocks the group node).
    cdev_device_open_cnt: u32,
}

/// One IOMMU group registered with VFIO: what `/dev/vfio/<number>` opens.
pub struct VfioGroup {
    number: u32,
    devices: Mutex<Vec<Weak<VfioDevice>>>,
    state: Mutex<GroupState>,
}

impl std::fmt::Debug for VfioGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioGroup").field("number", &self.number).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VfioGroup {
    /// An empty group numbered `number` (devices join it as they are
    /// registered: [`VfioDevice::new_in_group`]).
    pub fn new(number: u32) -> Arc<VfioGroup> {
        Arc::new(VfioGroup { number, devices: Mutex::default(), state: Mutex::default() })
    }

    /// Group `number` of the process's platform (see
    /// [`VfioDevice::global`]), if a device of it is in that group.
    pub fn global(number: u32) -> Option<Arc<VfioGroup>> {
        VfioDevice::registry().iter().find(|d| d.group().number() == number).map(|d| Arc::clone(d.group()))
    }

    /// The group's number: `<group>` of `/dev/vfio/<group>` and of
    /// `/sys/kernel/iommu_groups/<group>`.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// `vfio_device_group_register`.
    pub(crate) fn register(&self, dev: &Arc<VfioDevice>) {
        let mut devices = lock(&self.devices);
        devices.retain(|d| d.strong_count() > 0);
        devices.push(Arc::downgrade(dev));
    }

    /// The registered devices still alive, in registration order.
    pub fn devices(&self) -> Vec<Arc<VfioDevice>> {
        lock(&self.devices).iter().filter_map(Weak::upgrade).collect()
    }

    /// Whether the node is open.
    pub fn is_open(&self) -> bool {
        lock(&self.state).opened
    }

    /// The container's context, if one is set.
    pub fn container(&self) -> Option<Arc<Iommufd>> {
        lock(&self.state).iommufd.clone()
    }

    /// `group_lock`.
    pub(crate) fn lock_state(&self) -> MutexGuard<'_, GroupState> {
        lock(&self.state)
    }

    /// `vfio_group_fops_open`: the group needs a registered device
    /// (`ENODEV`), no device bound through its cdev and no other open
    /// (`EBUSY`).
    pub fn open(self: &Arc<Self>) -> std::result::Result<VfioGroupFile, Errno> {
        let mut st = lock(&self.state);
        if self.devices().is_empty() {
            return Err(Errno::ENODEV);
        }
        if st.cdev_device_open_cnt != 0 || st.opened {
            return Err(Errno::EBUSY);
        }
        st.opened = true;
        Ok(VfioGroupFile { group: Ok(Arc::clone(self)) })
    }

    /// `iommu_group_dma_owner_claimed`: a device of the group is bound to
    /// an iommufd (through either path). The caller holds `group_lock`.
    fn dma_owner_claimed(&self) -> bool {
        self.devices().iter().any(|d| d.is_bound())
    }
}

/// `vfio_device_block_group`: a device's cdev bind counts against its
/// group node (`EBUSY` while the node is open) until the cdev file closes.
/// Dropping the guard unblocks (a failed bind); [`GroupBlock::keep`] keeps
/// the block for [`GroupBlock::release`] at close.
pub(crate) struct GroupBlock<'a>(Option<&'a VfioGroup>);

impl<'a> GroupBlock<'a> {
    pub(crate) fn new(group: &'a VfioGroup) -> Result<GroupBlock<'a>> {
        let mut st = lock(&group.state);
        if st.opened {
            return Err(Error::new(Errno::EBUSY, "the device's group node is open"));
        }
        st.cdev_device_open_cnt += 1;
        Ok(GroupBlock(Some(group)))
    }

    /// The bind succeeded: the block lasts until the file closes.
    pub(crate) fn keep(mut self) {
        self.0 = None;
    }

    /// `vfio_device_unblock_group`.
    pub(crate) fn release(group: &VfioGroup) {
        let mut st = lock(&group.state);
        st.cdev_device_open_cnt = st.cdev_device_open_cnt.saturating_sub(1);
    }
}

impl Drop for GroupBlock<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            GroupBlock::release(g);
        }
    }
}

/// An open of `/dev/vfio/<group>` (the kernel's group file, whose
/// `private_data` is the group).
pub struct VfioGroupFile {
    /// `Err`: the open failed (see [`File::open`]); every call answers it.
    group: std::result::Result<Arc<VfioGroup>, Errno>,
}

impl VfioGroupFile {
    /// A file standing for an open that failed with `errno`.
    pub(crate) fn failed(errno: Errno) -> VfioGroupFile {
        VfioGroupFile { group: Err(errno) }
    }

    /// The group this file opens.
    pub fn group(&self) -> Option<&Arc<VfioGroup>> {
        self.group.as_ref().ok()
    }

    /// `vfio_group_fops_unl_ioctl`.
    pub fn ioctl(&self, host: &dyn FdHost, request: u64, arg: u64) -> Result<i32> {
        let group = self.group.as_ref().map_err(|&e| Error::new(e, "the group node did not open"))?;
        match request as u32 {
            v::VFIO_GROUP_GET_DEVICE_FD => get_device_fd(group, host, arg),
            v::VFIO_GROUP_GET_STATUS => get_status(group, arg),
            v::VFIO_GROUP_SET_CONTAINER => set_container(group, host, arg),
            v::VFIO_GROUP_UNSET_CONTAINER => unset_container(group),
            _ => Err(Error::new(Errno::ENOTTY, "unknown VFIO group command")),
        }
    }
}

impl Drop for VfioGroupFile {
    /// `vfio_group_fops_release`: the container reference goes, the node
    /// can open again. Device files opened through it stay usable.
    fn drop(&mut self) {
        let Ok(group) = &self.group else { return };
        let ctx = {
            let mut st = lock(&group.state);
            st.opened = false;
            st.iommufd.take()
        };
        // The context may be torn down here: outside the group lock.
        drop(ctx);
    }
}

/// `vfio_group_ioctl_get_status`: `CONTAINER_SET | VIABLE` with a
/// container; otherwise `VIABLE` unless a device of the group is bound to
/// an iommufd (with an iommufd container, ownership is claimed only when a
/// device opens, so a viable group may still fail `GET_DEVICE_FD`).
fn get_status(group: &VfioGroup, arg: u64) -> Result<i32> {
    const MINSZ: usize = core::mem::size_of::<v::VfioGroupStatus>();
    let mut status = v::VfioGroupStatus::default();
    user::copy_from_user(status.as_mut_bytes(), arg).ctx("reading the argument")?;
    if (status.argsz as usize) < MINSZ {
        return Err(einval("argsz is below the struct"));
    }
    status.flags = 0;
    {
        let st = lock(&group.state);
        if group.devices().is_empty() {
            return Err(enodev("the group has no device"));
        }
        if st.iommufd.is_some() {
            status.flags |= v::VFIO_GROUP_FLAGS_CONTAINER_SET | v::VFIO_GROUP_FLAGS_VIABLE;
        } else if !group.dma_owner_claimed() {
            status.flags |= v::VFIO_GROUP_FLAGS_VIABLE;
        }
    }
    user::copy_to_user(arg, status.as_bytes()).ctx("writing the reply")?;
    Ok(0)
}

/// `vfio_group_ioctl_set_container` with an iommufd: the argument points
/// to the container's descriptor (`EFAULT`), which must be open (`EBADF`);
/// the group must have no container yet (`EINVAL`) and devices
/// (`ENODEV`); the descriptor must be an iommufd, `/dev/vfio/vfio` or
/// `/dev/iommu` (`EBADFD`). The context then gets its compat IOAS if it
/// has none (`iommufd_vfio_compat_ioas_create`).
fn set_container(group: &VfioGroup, host: &dyn FdHost, arg: u64) -> Result<i32> {
    let mut fd = [0u8; 4];
    user::copy_from_user(&mut fd, arg).ctx("reading the container descriptor")?;
    let fd = i32::from_ne_bytes(fd);
    let file = host.get(fd);
    if file.is_none() && !host.fd_is_open(fd) {
        return Err(Error::new(Errno::EBADF, "no such descriptor"));
    }
    let mut st = lock(&group.state);
    if st.iommufd.is_some() {
        return Err(einval("the group already has a container"));
    }
    if group.devices().is_empty() {
        return Err(enodev("the group has no device"));
    }
    let ctx = match file.as_deref() {
        Some(File::Iommufd(ctx)) => Arc::clone(ctx),
        _ => return Err(Error::new(Errno::EBADFD, "the descriptor is neither a VFIO container nor an iommufd")),
    };
    ctx.vfio_compat_ioas_create()?;
    st.iommufd = Some(ctx);
    Ok(0)
}

/// `vfio_group_ioctl_unset_container`: `EINVAL` without a container. With
/// an iommufd container the reference just goes: device files from the
/// group keep their binding (there is no `EBUSY` as for a legacy
/// container with devices in use).
fn unset_container(group: &VfioGroup) -> Result<i32> {
    let ctx = lock(&group.state).iommufd.take();
    match ctx {
        Some(ctx) => {
            drop(ctx);
            Ok(0)
        }
        None => Err(einval("the group has no container")),
    }
}

/// `vfio_group_ioctl_get_device_fd`: the device named by the string at
/// `arg`, opened through the group and installed close-on-exec; returns
/// the new descriptor.
fn get_device_fd(group: &VfioGroup, host: &dyn FdHost, arg: u64) -> Result<i32> {
    let page = uiommufd_memory::page_size();
    let name = strndup_user(arg, page)?;
    let dev = device_from_name(group, &name)?;
    let file = {
        // vfio_df_group_open, under group_lock: the group needs a container.
        let st = lock(&group.state);
        let ctx = st.iommufd.as_ref().ok_or(einval("the group has no container"))?;
        VfioDeviceFile::open_in_group(&dev, ctx)?
    };
    // A failed install drops the file, which closes the device again.
    host.install(Arc::new(File::VfioDevice(file)), true).map_err(|e| Error::new(e, "installing the descriptor"))
}

/// `strndup_user(arg, max)`: a NUL-terminated string of at most `max`
/// bytes with its NUL (`EINVAL` if longer), `EFAULT` if unreadable before
/// its end. Read page by page, so a string ending just before an
/// unmapped page is fine.
fn strndup_user(arg: u64, max: usize) -> Result<Vec<u8>> {
    let page = uiommufd_memory::page_size() as u64;
    let mut out = Vec::new();
    while out.len() < max {
        let at = arg.wrapping_add(out.len() as u64);
        let to_boundary = (page - at % page) as usize;
        let n = to_boundary.min(max - out.len());
        let mut chunk = vec![0u8; n];
        user::copy_from_user(&mut chunk, at).ctx("reading the device name")?;
        if let Some(nul) = chunk.iter().position(|&b| b == 0) {
            out.extend_from_slice(&chunk[..nul]);
            return Ok(out);
        }
        out.extend_from_slice(&chunk);
    }
    Err(einval("the device name is longer than a page"))
}

/// `vfio_device_get_from_name`: the first registered device of the group
/// whose `match` accepts `name`; a `match` error ends the search with it;
/// none: `ENODEV`.
fn device_from_name(group: &VfioGroup, name: &[u8]) -> Result<Arc<VfioDevice>> {
    for dev in group.devices() {
        if pci_match(dev.bdf().as_bytes(), name)? {
            return Ok(dev);
        }
    }
    Err(enodev("no device of the group has this name"))
}

/// `vfio_pci_core_match`: `name` is the PCI address, optionally followed
/// by space-separated options, of which only one `vf_token=<UUID>` is
/// known. Something other than a space right after the address is no
/// match; an unknown or repeated option, or a malformed UUID, is `EINVAL`.
/// A token is then refused too: none of our functions is an SR-IOV PF or
/// VF (`vfio_pci_validate_vf_token`).
fn pci_match(bdf: &[u8], name: &[u8]) -> Result<bool> {
    let Some(mut rest) = name.strip_prefix(bdf) else { return Ok(false) };
    let mut vf_token = false;
    if !rest.is_empty() {
        if rest[0] != b' ' {
            return Ok(false);
        }
        while let Some(&c) = rest.first() {
            if c == b' ' {
                rest = &rest[1..];
                continue;
            }
            match rest.strip_prefix(b"vf_token=") {
                Some(uuid) if !vf_token => {
                    if uuid.len() < UUID_STRING_LEN || !uuid_is_valid(&uuid[..UUID_STRING_LEN]) {
                        return Err(einval("malformed vf_token"));
                    }
                    vf_token = true;
                    rest = &uuid[UUID_STRING_LEN..];
                }
                _ => return Err(einval("unknown or repeated option after the device name")),
            }
        }
    }
    if vf_token {
        return Err(einval("a VF token was given for a function that is neither a PF nor a VF"));
    }
    Ok(true)
}

/// `UUID_STRING_LEN`: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
const UUID_STRING_LEN: usize = 36;

/// `uuid_is_valid`: hex digits with dashes at 8, 13, 18 and 23.
fn uuid_is_valid(s: &[u8]) -> bool {
    s.len() == UUID_STRING_LEN
        && s.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The C name of VFIO group request `cmd`, for traces.
pub fn ioctl_name(cmd: u32) -> Option<&'static str> {
    Some(match cmd {
        v::VFIO_GROUP_GET_STATUS => "VFIO_GROUP_GET_STATUS",
        v::VFIO_GROUP_SET_CONTAINER => "VFIO_GROUP_SET_CONTAINER",
        v::VFIO_GROUP_UNSET_CONTAINER => "VFIO_GROUP_UNSET_CONTAINER",
        v::VFIO_GROUP_GET_DEVICE_FD => "VFIO_GROUP_GET_DEVICE_FD",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_as_vfio_pci_matches_them() {
        let bdf = b"0000:00:04.0";
        let m = |s: &str| pci_match(bdf, s.as_bytes()).map_err(|e| e.errno);
        assert_eq!(m("0000:00:04.0"), Ok(true));
        assert_eq!(m("0000:00:04.0   "), Ok(true), "trailing spaces");
        assert_eq!(m("0000:00:04.1"), Ok(false));
        assert_eq!(m("0000:00:04.00"), Ok(false), "no space after the address");
        assert_eq!(m("0000:00:04"), Ok(false));
        assert_eq!(m(""), Ok(false));
        assert_eq!(m("0000:00:04.0 x"), Err(Errno::EINVAL));
        let token = "0000:00:04.0 vf_token=bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3";
        assert_eq!(m(token), Err(Errno::EINVAL), "not an SR-IOV function");
        assert_eq!(m("0000:00:04.0 vf_token=bd8d9d2b"), Err(Errno::EINVAL));
        assert_eq!(m("0000:00:04.0 vf_token=bd8d9d2b-5a5f-4f5a-a211-f591514ba1fZ"), Err(Errno::EINVAL));
        assert!(uuid_is_valid(b"bd8d9d2b-5a5f-4f5a-a211-f591514ba1f3"));
        assert!(!uuid_is_valid(b"bd8d9d2b05a5f-4f5a-a211-f591514ba1f3"));
    }

    #[test]
    fn device_names_are_read_up_to_a_page() {
        let page = uiommufd_memory::page_size();
        let s = b"0000:00:04.0\0";
        assert_eq!(strndup_user(s.as_ptr() as u64, page).unwrap(), b"0000:00:04.0");
        assert_eq!(strndup_user(0, page).unwrap_err().errno, Errno::EFAULT);
        let long = vec![b'a'; page + 1];
        assert_eq!(strndup_user(long.as_ptr() as u64, page).unwrap_err().errno, Errno::EINVAL);
        let mut exact = vec![b'a'; page];
        exact[page - 1] = 0;
        assert_eq!(strndup_user(exact.as_ptr() as u64, page).unwrap().len(), page - 1);
    }
}
