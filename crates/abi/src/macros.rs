//! Internal helper for declaring ABI structs.

/// Declare one or more `#[repr(C)]` ABI structs in the crate's house style.
///
/// Each field is written as `@offset name: Type`. The macro emits the struct
/// with all-public fields, the usual zerocopy derives, and an
/// [`assert_layout!`](crate::assert_layout) that checks the given total size
/// and every listed offset at compile time, so the expected C layout is
/// stated next to the Rust one and cannot drift.
macro_rules! abi_struct {
    ($(
        $(#[$meta:meta])*
        $name:ident, $size:literal {
            $($(#[$fmeta:meta])* @$off:literal $field:ident : $ty:ty),* $(,)?
        }
    )*) => {$(
        $(#[$meta])*
        #[repr(C)]
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq,
            ::zerocopy::FromBytes, ::zerocopy::IntoBytes,
            ::zerocopy::Immutable, ::zerocopy::KnownLayout,
        )]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }
        $crate::assert_layout!($name, $size $(, $field @ $off)*);
    )*};
}
