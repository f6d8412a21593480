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
    if last != b"iommu" && last != b"vfio" {
        return None;
    }
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
    Node::from_path(&normalize(&buf))
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
