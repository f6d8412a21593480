//! Recognising the paths we serve, and the paths we redirect.
//!
//! `open` receives whatever the program wrote: `/dev/iommu`, `//dev/./iommu`,
//! or `iommu` relative to a working directory of `/dev`. We normalise
//! lexically (the emulated nodes are not symlinks), resolving a relative
//! path against the working directory only when its last component could
//! name one of our nodes, so unrelated opens stay cheap.
//!
//! Served nodes: `/dev/iommu`, `/dev/vfio/vfio`, `/dev/vfio/devices/vfioN`
//! for the devices of the platform, `/dev/vfio/<G>` for their IOMMU groups,
//! and (with fault injection) the `fail-nth` files.
//!
//! Redirected paths (served by real files in a directory `uiommufd run`
//! prepares): `/sys/kernel/debug` with fault injection
//! ([`debugfs_dir`]), and the sysfs entries of the emulated devices
//! ([`sysfs_redirect`]): `/sys/bus/pci/devices/<BDF>`,
//! `/sys/kernel/iommu_groups/<group>` and `/sys/class/vfio-dev/vfio<N>`,
//! with everything below them. Every other path costs one prefix compare.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStringExt;
use std::sync::OnceLock;

use uiommufd_dispatch::{Node, VfioDevice, VfioGroup};

const MAX_PATH: usize = 4096;

/// Where a relative path starts.
#[derive(Clone, Copy)]
pub enum Base {
    /// The working directory (`open`, `openat(AT_FDCWD, ...)`).
    Cwd,
    /// The directory open as this descriptor (`openat(dirfd, ...)`).
    Dir(i32),
}

/// Whether `last` (a path's last component) could name a served node.
/// A group node's name is a bare number, which many paths end in
/// (`/proc/self/fd/3`): it is a candidate only when the platform has
/// devices at all. Nothing here builds the platform (its devices own
/// descriptors): only a path that resolves to `/dev/vfio/<G>` does.
fn could_be_served(last: &[u8]) -> bool {
    match last {
        b"iommu" | b"vfio" => true,
        _ if !last.is_empty() && last.iter().all(u8::is_ascii_digit) => platform_has_devices(),
        _ => last.strip_prefix(b"vfio").is_some_and(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit)),
    }
}

/// Whether `UIOMMUFD_DEVICES` names devices (what the platform is built
/// from), read once.
fn platform_has_devices() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| std::env::var_os("UIOMMUFD_DEVICES").is_some_and(|d| !d.is_empty()))
}

/// Which served node `path` (relative to `base`) names, if any.
pub fn node_for(path: &CStr, base: Base) -> Option<Node> {
    let bytes = path.to_bytes();
    let last = bytes.rsplit(|&b| b == b'/').next().unwrap_or(bytes);
    let fail_nth = last == b"fail-nth";
    if !(could_be_served(last) || fail_nth && fault_injection()) {
        return None;
    }
    let full = absolute(bytes, base)?;
    if fail_nth {
        return Node::fail_nth_from_path(&full, std::process::id() as i32, uiommufd_memory::sys::gettid());
    }
    match Node::from_path(&full)? {
        // Only the devices the platform has exist, and their groups.
        Node::VfioDevice(i) => VfioDevice::global(i).map(|_| Node::VfioDevice(i)),
        Node::VfioGroup(g) => VfioGroup::global(g).map(|_| Node::VfioGroup(g)),
        node => Some(node),
    }
}

/// Whether fault injection is emulated (`UIOMMUFD_FAULT_INJECTION=1`, set by
/// `uiommufd run --fault-injection`): the `fail-nth` files are served and
/// `/sys/kernel/debug` is redirected (see [`debugfs_dir`]).
pub fn fault_injection() -> bool {
    std::env::var_os("UIOMMUFD_FAULT_INJECTION").is_some_and(|v| v == "1")
}

/// The directory standing in for `/sys/kernel/debug` when `path` names it
/// and fault injection is emulated: `UIOMMUFD_DEBUGFS`, which `uiommufd
/// run` populates with the fault-injection attribute files programs
/// configure (`failslab/`, `fail_page_alloc/`, `fail_iommufd/`).
pub fn debugfs_dir(path: &CStr) -> Option<std::ffi::CString> {
    if !fault_injection() {
        return None;
    }
    let full = absolute(path.to_bytes(), Base::Cwd)?;
    if full != b"/sys/kernel/debug" {
        return None;
    }
    let dir = std::env::var_os("UIOMMUFD_DEBUGFS")?;
    std::ffi::CString::new(dir.into_encoded_bytes()).ok()
}

/// The emulated sysfs: its root directory (`UIOMMUFD_SYSFS`, holding a
/// `sys/` tree) and the entry names it has under each redirected
/// directory.
struct Sysfs {
    root: Vec<u8>,
    /// `(directory under /sys, entries)`, e.g. `("/sys/bus/pci/devices/",
    /// ["0000:00:04.0"])`.
    dirs: Vec<(&'static [u8], Vec<Vec<u8>>)>,
}

/// The directories whose entries the emulated sysfs replaces.
const SYSFS_DIRS: [&[u8]; 3] = [b"/sys/bus/pci/devices/", b"/sys/kernel/iommu_groups/", b"/sys/class/vfio-dev/"];

fn sysfs() -> Option<&'static Sysfs> {
    static S: OnceLock<Option<Sysfs>> = OnceLock::new();
    S.get_or_init(|| {
        let root = std::env::var_os("UIOMMUFD_SYSFS")?.into_encoded_bytes();
        let root = root.strip_suffix(b"/").map(<[u8]>::to_vec).unwrap_or(root);
        let dirs = SYSFS_DIRS
            .iter()
            .map(|d| {
                let mut at = root.clone();
                at.extend_from_slice(d);
                let at = std::path::PathBuf::from(std::ffi::OsString::from_vec(at));
                let names = std::fs::read_dir(at)
                    .map(|rd| rd.flatten().map(|e| e.file_name().into_encoded_bytes()).collect())
                    .unwrap_or_default();
                (*d, names)
            })
            .collect();
        Some(Sysfs { root, dirs })
    })
    .as_ref()
}

/// `path` with `//` collapsed and `.` components dropped (no `..`
/// handling: see [`sysfs_redirect`]).
fn squeeze(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for comp in path.split(|&b| b == b'/') {
        if comp.is_empty() || comp == b"." {
            continue;
        }
        out.push(b'/');
        out.extend_from_slice(comp);
    }
    if path.ends_with(b"/") {
        out.push(b'/');
    }
    out
}

/// Where an absolute `path` under an emulated device's sysfs entry really
/// is: the same path under the emulated tree's root. `None` (one prefix
/// compare, no allocation) for everything else, including the real sysfs
/// entries of other devices.
///
/// The path keeps its symlinks and `..` for the kernel to resolve inside
/// the tree, which has the same links as sysfs; only a path with `..` is
/// normalised lexically first, so it cannot climb out of the tree.
pub fn sysfs_redirect(path: &CStr) -> Option<CString> {
    let raw = path.to_bytes();
    if !raw.starts_with(b"/sys/") {
        return None;
    }
    let s = sysfs()?;
    let dotdot = raw.split(|&b| b == b'/').any(|c| c == b"..");
    let norm = if dotdot { normalize(raw) } else { squeeze(raw) };
    let ours = s.dirs.iter().any(|(dir, names)| {
        norm.strip_prefix(*dir).is_some_and(|rest| {
            let first = rest.split(|&b| b == b'/').next().unwrap_or(rest);
            names.iter().any(|n| n.as_slice() == first)
        })
    });
    if !ours {
        return None;
    }
    let mut out = s.root.clone();
    out.extend_from_slice(if dotdot { &norm } else { raw });
    CString::new(out).ok()
}

/// The emulated sysfs root, for turning redirected results (`realpath`)
/// back into `/sys` paths.
pub fn sysfs_root() -> Option<&'static [u8]> {
    sysfs().map(|s| s.root.as_slice())
}

/// `path` made absolute against the working directory and normalised, as
/// a C string (the name `realpath` gives a served node).
pub fn absolute_name(path: &CStr) -> Option<CString> {
    CString::new(absolute(path.to_bytes(), Base::Cwd)?).ok()
}

/// `bytes` made absolute against `base` and normalised.
fn absolute(bytes: &[u8], base: Base) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(64);
    if bytes.first() != Some(&b'/') {
        let dir = match base {
            Base::Cwd => std::env::current_dir().ok()?,
            Base::Dir(fd) => std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?,
        };
        buf.extend_from_slice(dir.as_os_str().as_encoded_bytes());
        buf.push(b'/');
    }
    buf.extend_from_slice(bytes);
    if buf.len() > MAX_PATH {
        return None;
    }
    Some(normalize(&buf))
}

/// Lexical normalisation: collapse `//`, drop `.`, apply `..`.
fn normalize(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for p in parts {
        out.push(b'/');
        out.extend_from_slice(p);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Option<Node> {
        node_for(&std::ffi::CString::new(p).unwrap(), Base::Cwd)
    }

    #[test]
    fn recognises_our_nodes_only() {
        assert_eq!(n("/dev/iommu"), Some(Node::Iommu));
        assert_eq!(n("//dev/./iommu"), Some(Node::Iommu));
        assert_eq!(n("/dev/vfio/../iommu"), Some(Node::Iommu));
        assert_eq!(n("/dev/vfio/vfio"), Some(Node::VfioContainer));
        assert_eq!(n("/dev/iommu/"), None);
        assert_eq!(n("/dev/iommux"), None);
        assert_eq!(n("/tmp/iommu"), None);
        assert_eq!(n("iommu"), None, "cwd of the test is not /dev");
        // No platform devices in the test process.
        assert_eq!(n("/dev/vfio/devices/vfio0"), None);
        assert_eq!(n("/dev/vfio/0"), None);
    }

    #[test]
    fn candidates_for_service() {
        assert!(could_be_served(b"vfio0"));
        assert!(could_be_served(b"vfio17"));
        assert!(!could_be_served(b"vfiox"));
        assert!(!could_be_served(b"vfio-dev"));
        assert!(!could_be_served(b"null"));
        // A number is a candidate (a group node) only with devices.
        if std::env::var_os("UIOMMUFD_DEVICES").is_none() {
            assert!(!could_be_served(b"0"));
            assert!(!could_be_served(b"26"));
        }
    }

    #[test]
    fn squeezing_keeps_links_and_dotdot_out() {
        assert_eq!(squeeze(b"/sys//bus/./pci/devices/X/"), b"/sys/bus/pci/devices/X/");
        assert_eq!(normalize(b"/sys/bus/pci/devices/X/../../../../../etc"), b"/etc");
        // Without UIOMMUFD_SYSFS nothing is redirected.
        if std::env::var_os("UIOMMUFD_SYSFS").is_none() {
            assert!(sysfs_redirect(c"/sys/bus/pci/devices/0000:00:04.0/vendor").is_none());
        }
        assert!(sysfs_redirect(c"/proc/self/maps").is_none());
    }
}
