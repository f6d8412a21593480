//! `UIOMMUFD_STATUS_FILE=PATH`: what the engine holds, written to `PATH`
//! after every ioctl on a served file and every close of a VFIO device, so
//! that a test (or a user chasing a leak) can look at a running program
//! from outside: after QEMU unplugs a device, its objects must be gone and
//! its pages unpinned.
//!
//! The file is `key value` lines, replaced atomically (written beside it,
//! then renamed):
//!
//! ```text
//! contexts 1
//! objects 3
//! device 1
//! hwpt_paging 1
//! ioas 1
//! vfio_devices_open 1
//! pinned_pages 65536
//! ```
//!
//! `contexts` counts open iommufd contexts (`/dev/iommu`, `/dev/vfio/vfio`)
//! of this process; `objects` the objects in them, followed by one line per
//! kind present; `vfio_devices_open` the emulated devices open through some
//! file; `pinned_pages` the pages pinned for DMA. Nothing is done without
//! the variable.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use uiommufd_core::object::ObjectKind;
use uiommufd_core::Iommufd;

use crate::VfioDevice;

/// The contexts opened, each with the process that opened it: a forked
/// child inherits its parent's list, whose contexts stay in its memory as
/// inert copies (the parent's engine serves the inherited descriptors).
static CONTEXTS: Mutex<Vec<(u32, Weak<Iommufd>)>> = Mutex::new(Vec::new());

fn target() -> Option<&'static PathBuf> {
    static TARGET: OnceLock<Option<PathBuf>> = OnceLock::new();
    TARGET
        .get_or_init(|| std::env::var_os("UIOMMUFD_STATUS_FILE").filter(|v| !v.is_empty()).map(PathBuf::from))
        .as_ref()
}

/// Remember a new context.
pub(crate) fn register(ctx: &Arc<Iommufd>) {
    let mut list = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|(_, w)| w.strong_count() > 0);
    list.push((std::process::id(), Arc::downgrade(ctx)));
}

/// A snapshot of what the engine holds, as the status file shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub contexts: usize,
    /// Every object's kind, sorted by name.
    pub objects: Vec<&'static str>,
    pub vfio_devices_open: usize,
    pub pinned_pages: u64,
}

fn kind_name(k: ObjectKind) -> &'static str {
    match k {
        ObjectKind::Device => "device",
        ObjectKind::HwptPaging => "hwpt_paging",
        ObjectKind::HwptNested => "hwpt_nested",
        ObjectKind::Ioas => "ioas",
        ObjectKind::Fault => "fault",
        ObjectKind::Access => "access",
        ObjectKind::Selftest => "selftest",
        ObjectKind::Viommu => "viommu",
        ObjectKind::Vdevice => "vdevice",
        ObjectKind::Veventq => "veventq",
        ObjectKind::HwQueue => "hw_queue",
    }
}

/// The contexts this process opened that are open, in the order they
/// were opened (also for [`crate::inspect`]); not a parent's copies.
pub(crate) fn contexts() -> Vec<Arc<Iommufd>> {
    let me = std::process::id();
    let list = CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
    list.iter().filter(|(pid, _)| *pid == me).filter_map(|(_, w)| w.upgrade()).collect()
}

impl Status {
    /// The engine now (contexts are those registered with `register`).
    pub fn now() -> Status {
        let contexts = contexts();
        let mut objects: Vec<&'static str> = contexts.iter().flat_map(|c| c.objects().kinds()).map(kind_name).collect();
        objects.sort_unstable();
        Status {
            contexts: contexts.len(),
            objects,
            vfio_devices_open: VfioDevice::registry().iter().filter(|d| d.is_bound()).count(),
            pinned_pages: uiommufd_memory::frames::pinned_pages(),
        }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = format!("contexts {}\nobjects {}\n", self.contexts, self.objects.len());
        let mut i = 0;
        while i < self.objects.len() {
            let n = self.objects[i..].iter().take_while(|&&k| k == self.objects[i]).count();
            s += &format!("{} {n}\n", self.objects[i]);
            i += n;
        }
        s += &format!("vfio_devices_open {}\npinned_pages {}\n", self.vfio_devices_open, self.pinned_pages);
        s
    }
}

/// Rewrite the status file, if one is wanted. Errors are ignored: the
/// program under test must not notice.
pub(crate) fn publish() {
    let Some(path) = target() else { return };
    let mut tmp = path.clone().into_os_string();
    tmp.push(format!(".{}.tmp", std::process::id()));
    if std::fs::write(&tmp, Status::now().render()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FdHost, File, LocalFds, Node};

    #[test]
    fn render_counts_kinds() {
        let s = Status { contexts: 2, objects: vec!["device", "ioas", "ioas"], vfio_devices_open: 1, pinned_pages: 9 };
        assert_eq!(s.render(), "contexts 2\nobjects 3\ndevice 1\nioas 2\nvfio_devices_open 1\npinned_pages 9\n");
        assert_eq!(Status::default().render(), "contexts 0\nobjects 0\nvfio_devices_open 0\npinned_pages 0\n");
    }

    #[test]
    fn a_context_and_its_objects_show_until_closed() {
        let fds = LocalFds::default();
        let fd = fds.install(Arc::new(File::open(Node::Iommu)), true).unwrap();
        let before = Status::now();
        let mut alloc = uiommufd_abi::IommuIoasAlloc { size: 12, ..Default::default() };
        let arg = zerocopy::IntoBytes::as_mut_bytes(&mut alloc).as_mut_ptr() as u64;
        fds.get(fd).unwrap().ioctl(&fds, uiommufd_abi::IOMMU_IOAS_ALLOC as u64, arg).unwrap();
        // Other tests run alongside: the counts only bound ours.
        let after = Status::now();
        assert!(after.contexts >= 1);
        let ioas = |s: &Status| s.objects.iter().filter(|&&k| k == "ioas").count();
        assert!(ioas(&after) >= 1 && ioas(&after) + 8 > ioas(&before));
        let ctx = match &*fds.get(fd).unwrap() {
            File::Iommufd(c) => Arc::downgrade(c),
            _ => unreachable!(),
        };
        fds.close(fd).unwrap();
        assert!(ctx.upgrade().is_none(), "closed: no longer counted");
    }
}
