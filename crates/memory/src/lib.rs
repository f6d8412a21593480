//! Memory: how the engine touches the program's memory.
//!
//! The engine runs inside the client process, but it must behave like the
//! kernel towards user pointers: a bad pointer is `EFAULT`, never a `SIGSEGV`
//! in the engine. Everything here that dereferences a user address goes
//! through [`user`]: guarded copies (or `process_vm_readv`/`process_vm_writev`
//! on our own pid), whose faults come back as errors.
//!
//! User addresses name memory of the calling thread's *current process*:
//! this one, or another one while [`user::with_process`] says so (a forked
//! child whose request the shim's fork server runs). Copies then reach the
//! other process's memory, and pinning ([`frames::pin_user`]) accepts only
//! what it shares with us at the same address.
//!
//! Invariants:
//! - no function in this crate creates a Rust reference into user memory;
//! - user ranges are `(addr, length)` with `length` in bytes; a range whose
//!   end overflows `u64` is refused with `EOVERFLOW` before any access.

pub mod atc;
pub mod coherency;
pub mod dma_fence;
pub mod failpoint;
pub mod filemap;
pub mod forkgate;
pub mod frames;
pub mod guard;
pub mod inline_vec;
pub mod lockwait;
pub mod objindex;
pub mod procfs;
pub mod rng;
pub mod rwlock;
pub mod shared;
pub mod slabmap;
pub mod sys;
pub mod unique;
pub mod user;
pub mod vma;
pub mod vmstat;

pub use user::{copy_from_user, copy_to_user, page_size, probe_user_page, with_process, Process};
