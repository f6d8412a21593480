//! The files uiommufd serves, as a preload shim or an in-process host sees
//! them: what a device node opens to, and what each file does with ioctl.
//!
//! A [`File`] is shared by every descriptor that refers to it (dup, dup2,
//! fcntl(F_DUPFD)); it is released, and its context torn down, when the last
//! descriptor closes, exactly as the kernel's `struct file` is.

use std::sync::Arc;

use uiommufd_core::ctx::OpenedAs;
use uiommufd_core::{Error, Iommufd};

/// A device node uiommufd emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// `/dev/iommu`.
    Iommu,
    /// `/dev/vfio/vfio`, the type1 container node iommufd can stand in for.
    VfioContainer,
}

impl Node {
    /// The node an absolute, normalized path names, if we serve it.
    pub fn from_path(path: &[u8]) -> Option<Node> {
        match path {
            b"/dev/iommu" => Some(Node::Iommu),
            b"/dev/vfio/vfio" => Some(Node::VfioContainer),
            _ => None,
        }
    }
}

/// An open file served by uiommufd.
pub enum File {
    /// `/dev/iommu` or `/dev/vfio/vfio`: an iommufd context.
    Iommufd(Arc<Iommufd>),
}

impl File {
    /// `open(2)` of `node`.
    pub fn open(node: Node) -> File {
        let how = match node {
            Node::Iommu => OpenedAs::Iommu,
            Node::VfioContainer => OpenedAs::VfioContainer,
        };
        File::Iommufd(Arc::new(Iommufd::open(how)))
    }

    /// `ioctl(2)` with request `request` and argument `arg` (a user address
    /// or a plain integer, depending on the request).
    pub fn ioctl(&self, request: u64, arg: u64) -> Result<i32, Error> {
        match self {
            File::Iommufd(ctx) => crate::iommufd_ioctl(ctx, request, arg),
        }
    }

    /// A name for traces.
    pub fn describe(&self) -> &'static str {
        match self {
            File::Iommufd(_) => "iommufd",
        }
    }
}
