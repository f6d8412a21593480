//! The one error type of the API, whichever backend answered.

use std::borrow::Cow;
use std::fmt;

use uiommufd_abi::Errno;

/// A failed call: the errno the kernel gives (or would give), the call that
/// failed, and — when the uiommufd engine answered — which check refused it.
///
/// The same program gets the same [`errno`](Error::errno) from both
/// backends: compare errnos, not messages. The [`reason`](Error::reason) is
/// for people: the running kernel gives none, the engine names the check
/// (for example `"IOVA range is not mapped"`).
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    errno: Errno,
    op: &'static str,
    reason: Option<Cow<'static, str>>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failure of `op` (the ioctl's C name, or `"open"`, `"read"`...) with
    /// `errno` and an optional reason.
    pub fn new(errno: Errno, op: &'static str, reason: Option<Cow<'static, str>>) -> Error {
        Error { errno, op, reason }
    }

    /// A failure of `op` with the calling thread's `errno`, as a system call
    /// of the running kernel left it.
    pub(crate) fn last_os_error(op: &'static str) -> Error {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
        Error { errno: Errno(errno), op, reason: None }
    }

    /// A failure the engine reported for `op`, with its reason.
    #[cfg(feature = "emulated")]
    pub(crate) fn engine(op: &'static str, e: uiommufd_core::Error) -> Error {
        Error { errno: e.errno, op, reason: Some(Cow::Borrowed(e.context)) }
    }

    /// The Linux errno.
    pub fn errno(&self) -> Errno {
        self.errno
    }

    /// The call that failed: the ioctl's C name (`"IOMMU_IOAS_MAP"`,
    /// `"VFIO_DEVICE_BIND_IOMMUFD"`) or the file operation (`"open"`,
    /// `"read"`, `"write"`).
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// Which check refused the call, when the engine answered; `None` from
    /// the running kernel.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?} ({})", self.op, self.errno, self.errno.description())?;
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<Error> for Errno {
    fn from(e: Error) -> Errno {
        e.errno
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::new(std::io::Error::from_raw_os_error(e.errno.0).kind(), e)
    }
}

/// A failed [`Iommufd::hwpt_invalidate`](crate::Iommufd::hwpt_invalidate):
/// the error, and how many entries were handled before it (the kernel's
/// `entry_num` on return). Converts into [`Error`] for `?`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidateError {
    /// What failed.
    pub error: Error,
    /// Entries handled before the failure.
    pub handled: u32,
}

impl fmt::Display for InvalidateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (after {} entries)", self.error, self.handled)
    }
}

impl std::error::Error for InvalidateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<InvalidateError> for Error {
    fn from(e: InvalidateError) -> Error {
        e.error
    }
}
