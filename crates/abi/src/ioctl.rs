//! Linux ioctl number encoding (`include/uapi/asm-generic/ioctl.h`).
//!
//! A request is `dir << 30 | size << 16 | type << 8 | nr`. iommufd and VFIO
//! use `_IO` (no direction, no size) for every command.

/// Width in bits of the command-number field of an ioctl request.
pub const IOC_NRBITS: u32 = 8;
/// Width in bits of the type (magic) field of an ioctl request.
pub const IOC_TYPEBITS: u32 = 8;
/// Width in bits of the argument-size field of an ioctl request.
pub const IOC_SIZEBITS: u32 = 14;
/// Bit position of the command-number field.
pub const IOC_NRSHIFT: u32 = 0;
/// Bit position of the type field.
pub const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
/// Bit position of the argument-size field.
pub const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
/// Bit position of the two-bit direction field.
pub const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;

/// Direction `_IOC_NONE`: the request carries no declared data transfer.
pub const IOC_NONE: u32 = 0;
/// Direction `_IOC_WRITE`: user space writes the argument to the kernel.
pub const IOC_WRITE: u32 = 1;
/// Direction `_IOC_READ`: the kernel writes the argument back to user space.
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`.
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: u32) -> u32 {
    (dir << IOC_DIRSHIFT) | (ty << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT) | (size << IOC_SIZESHIFT)
}

/// `_IO(type, nr)`.
pub const fn io(ty: u32, nr: u32) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}

/// `_IOC_NR(request)`.
pub const fn ioc_nr(request: u32) -> u32 {
    (request >> IOC_NRSHIFT) & ((1 << IOC_NRBITS) - 1)
}

/// `_IOC_TYPE(request)`.
pub const fn ioc_type(request: u32) -> u32 {
    (request >> IOC_TYPESHIFT) & ((1 << IOC_TYPEBITS) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_c_macros() {
        // _IO(';', 0x80) == 0x3b80, the well-known IOMMU_DESTROY number.
        assert_eq!(io(b';' as u32, 0x80), 0x3b80);
        assert_eq!(ioc_nr(0x3b80), 0x80);
        assert_eq!(ioc_type(0x3b80), 0x3b);
        // _IOR('T', 0x13, int) style request (TIOCGWINSZ-like) keeps size.
        assert_eq!(ioc(IOC_READ, b'T' as u32, 0x13, 8), 0x8008_5413);
    }
}
