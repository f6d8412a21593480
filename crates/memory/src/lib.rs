//! Memory: how the engine touches the program's memory.
//!
//! The engine runs inside the client process, but it must behave like the
//! kernel towards user pointers: a bad pointer is `EFAULT`, never a `SIGSEGV`
//! in the engine. Everything here that dereferences a user address goes
//! through [`user`], which uses `process_vm_readv`/`process_vm_writev` on our
//! own pid: the kernel validates the range and reports a fault as an error.
//!
//! Invariants:
//! - no function in this crate creates a Rust reference into user memory;
//! - user ranges are `(addr, length)` with `length` in bytes; a range whose
//!   end overflows `u64` is refused with `EOVERFLOW` before any access.

pub mod coherency;
pub mod dma_fence;
pub mod failpoint;
pub mod filemap;
pub mod frames;
pub mod guard;
pub mod sys;
pub mod user;
pub mod vma;

pub use user::{copy_from_user, copy_to_user, page_size, probe_user_page};
