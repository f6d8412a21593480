//! Recognising the paths we serve.
//!
//! `open` receives whatever the program wrote: `/dev/iommu`, `//dev/./iommu`,
//! or `iommu` relative to a working directory of `/dev`. We normalise
//! lexically (the emulated nodes are not symlinks), resolving a relative
//! path against the working directory only when its last component could
//! name one of our nodes, so unrelated opens stay cheap.

use std::ffi::CStr;

use uiommufd_dispatch::Node;

const MAX_PATH: usize = 4096;

/// Where a relative path starts.
#[derive(Clone, Copy)]
pub enum Base {
    /// The working directory (`open`, `openat(AT_FDCWD, ...)`).
    Cwd,
    /// The directory open as this descriptor (`openat(dirfd, ...)`).
    Dir(i32),
}

/// Which served node `path` (relative to `base`) names, if any.
pub fn node_for(path: &CStr, base: Base) -> Option<Node> {
    let bytes = path.to_bytes();
    let last = bytes.rsplit(|&b| b == b'/').next().unwrap_or(bytes);
    let fail_nth = last == b"fail-nth";
    if last != b"iommu" && last != b"vfio" && !(fail_nth && fault_injection()) {
        return None;
    }
    let full = absolute(bytes, base)?;
    if fail_nth {
        return Node::fail_nth_from_path(&full, std::process::id() as i32, uiommufd_memory::sys::gettid());
    }
    Node::from_path(&full)
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
    }
}
