//! The engine's error: a Linux errno plus what was being checked.
//!
//! The errno is what a user of `/dev/iommu` sees; the context is for people
//! (logs, the CLI, Rust callers) and costs nothing to build.

use core::fmt;

use uiommufd_abi::Errno;

/// An engine failure: the kernel's errno and a short static reason.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub errno: Errno,
    pub context: &'static str,
}

pub type Result<T, E = Error> = core::result::Result<T, E>;

impl Error {
    pub const fn new(errno: Errno, context: &'static str) -> Self {
        Error { errno, context }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.errno, self.context)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.errno)
    }
}

impl std::error::Error for Error {}

impl From<Error> for Errno {
    fn from(e: Error) -> Errno {
        e.errno
    }
}

/// Shorthand constructors: `einval("why")` etc.
macro_rules! ctors {
    ($($f:ident => $e:ident),* $(,)?) => {
        $(
            #[doc = concat!("An `", stringify!($e), "` error with a reason.")]
            pub const fn $f(context: &'static str) -> Error {
                Error::new(Errno::$e, context)
            }
        )*
    };
}

ctors! {
    einval => EINVAL,
    enoent => ENOENT,
    ebusy => EBUSY,
    efault => EFAULT,
    eopnotsupp => EOPNOTSUPP,
    enomem => ENOMEM,
    eoverflow => EOVERFLOW,
    eperm => EPERM,
    enospc => ENOSPC,
    e2big => E2BIG,
    emsgsize => EMSGSIZE,
    eexist => EEXIST,
    enodev => ENODEV,
    eio => EIO,
}

/// Attach a context to a bare errno coming from a lower layer.
pub trait ErrnoExt<T> {
    fn ctx(self, context: &'static str) -> Result<T>;
}

impl<T> ErrnoExt<T> for core::result::Result<T, Errno> {
    fn ctx(self, context: &'static str) -> Result<T> {
        self.map_err(|errno| Error { errno, context })
    }
}
