//! Linux errno values (`include/uapi/asm-generic/errno-base.h`, `errno.h`).
//!
//! [`Errno`] is the currency of every failure in uiommufd: the engine returns
//! exactly the errno the kernel would, and the shim hands it to the caller.

use core::fmt;

/// A positive Linux errno value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident = $val:expr, $desc:expr;)*) => {
        impl Errno {
            $(#[doc = $desc] pub const $name: Errno = Errno($val);)*

            /// The symbolic name (`"EINVAL"`), if this is a known errno.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// A short human description, as strerror(3) would give.
            pub const fn description(self) -> &'static str {
                match self.0 {
                    $($val => $desc,)*
                    _ => "unknown error",
                }
            }
        }
    };
}

errnos! {
    EPERM = 1, "Operation not permitted";
    ENOENT = 2, "No such file or directory";
    ESRCH = 3, "No such process";
    EINTR = 4, "Interrupted system call";
    EIO = 5, "Input/output error";
    ENXIO = 6, "No such device or address";
    E2BIG = 7, "Argument list too long";
    EBADF = 9, "Bad file descriptor";
    EAGAIN = 11, "Resource temporarily unavailable";
    ENOMEM = 12, "Cannot allocate memory";
    EACCES = 13, "Permission denied";
    EFAULT = 14, "Bad address";
    EBUSY = 16, "Device or resource busy";
    EEXIST = 17, "File exists";
    ENODEV = 19, "No such device";
    EINVAL = 22, "Invalid argument";
    EMFILE = 24, "Too many open files";
    ENOTTY = 25, "Inappropriate ioctl for device";
    EFBIG = 27, "File too large";
    ENOSPC = 28, "No space left on device";
    ESPIPE = 29, "Illegal seek";
    ERANGE = 34, "Numerical result out of range";
    EDEADLK = 35, "Resource deadlock avoided";
    ENOMSG = 42, "No message of desired type";
    ENOSYS = 38, "Function not implemented";
    EBADE = 52, "Invalid exchange";
    ENODATA = 61, "No data available";
    EOVERFLOW = 75, "Value too large for defined data type";
    EBADFD = 77, "File descriptor in bad state";
    EMSGSIZE = 90, "Message too long";
    EOPNOTSUPP = 95, "Operation not supported";
    EADDRINUSE = 98, "Address already in use";
    ETIMEDOUT = 110, "Connection timed out";
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.description()),
            None => write!(f, "errno {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Errno;

    #[test]
    fn names_and_values() {
        assert_eq!(Errno::ENOTTY.0, 25);
        assert_eq!(Errno::EOPNOTSUPP.0, 95);
        assert_eq!(format!("{:?}", Errno::E2BIG), "E2BIG");
        assert_eq!(format!("{}", Errno::EFAULT), "EFAULT (Bad address)");
        assert_eq!(format!("{:?}", Errno(4095)), "Errno(4095)");
    }
}
