//! The per-process memory counters `/proc/PID/status` shows and iommufd
//! moves: `VmPin` (`mm->pinned_vm`, every page iommufd pins) and `VmLck`
//! (`mm->locked_vm`, pages charged to the process in
//! `IOMMU_OPTION_RLIMIT_MODE` 1).
//!
//! The engine's pins are emulated, so the kernel's counters never see them.
//! This table keeps the engine's share per process; the preload shim adds
//! it to the kernel's lines when the program reads a `status` file. A
//! program that moves its charges with `IOMMU_IOAS_CHANGE_PROCESS` (a
//! forked child taking over its parent's file mappings) then sees them
//! leave one process and arrive in the other, as on the kernel.
//!
//! The table is shared memory (`MAP_SHARED | MAP_ANONYMOUS`) made when the
//! first context opens, so the processes a program forks afterwards read
//! and update the same counters. It holds [`SLOTS`] processes; a slot is
//! claimed by the first charge of a process and never given back (a
//! process beyond the last slot is not counted).

use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::OnceLock;

/// Processes the table can hold.
pub const SLOTS: usize = 256;

#[repr(C)]
struct Slot {
    pid: AtomicI32,
    pinned: AtomicI64,
    locked: AtomicI64,
}

/// Address of the shared table (0: none could be made).
static TABLE: OnceLock<usize> = OnceLock::new();

fn table() -> Option<&'static [Slot]> {
    let addr = *TABLE.get_or_init(|| {
        let len = SLOTS * std::mem::size_of::<Slot>();
        // SAFETY: a fresh shared anonymous mapping the kernel places.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            0
        } else {
            p as usize
        }
    });
    // SAFETY: `addr` is a live, zero-initialised, never-unmapped mapping of
    // SLOTS slots; a slot is only atomics, for which all-zero is valid.
    (addr != 0).then(|| unsafe { std::slice::from_raw_parts(addr as *const Slot, SLOTS) })
}

/// Make the table now (before the program forks), if it does not exist.
pub fn init() {
    let _ = table();
}

fn slot(pid: u32, claim: bool) -> Option<&'static Slot> {
    let t = table()?;
    let pid = pid as i32;
    if let Some(s) = t.iter().find(|s| s.pid.load(Ordering::Acquire) == pid) {
        return Some(s);
    }
    if !claim {
        return None;
    }
    t.iter().find(|s| {
        s.pid.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire).is_ok()
            || s.pid.load(Ordering::Acquire) == pid
    })
}

/// Add `pinned` pages to process `pid`'s `VmPin` and `locked` to its
/// `VmLck` (negative to take them away).
pub fn add(pid: u32, pinned: i64, locked: i64) {
    if pinned == 0 && locked == 0 {
        return;
    }
    if let Some(s) = slot(pid, true) {
        s.pinned.fetch_add(pinned, Ordering::AcqRel);
        s.locked.fetch_add(locked, Ordering::AcqRel);
    }
}

/// The engine's share of process `pid`'s counters, in pages:
/// `(pinned, locked)`.
pub fn get(pid: u32) -> (i64, i64) {
    slot(pid, false).map_or((0, 0), |s| (s.pinned.load(Ordering::Acquire), s.locked.load(Ordering::Acquire)))
}

/// `text`, the kernel's `/proc/PID/status` of process `pid`, with the
/// engine's pinned and locked pages added to its `VmPin:` and `VmLck:`
/// lines (in kB, as the kernel prints them).
pub fn adjust_status(pid: u32, text: &str) -> String {
    let (pinned, locked) = get(pid);
    let kb = crate::page_size() as i64 / 1024;
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        let extra = if line.starts_with("VmPin:") {
            pinned
        } else if line.starts_with("VmLck:") {
            locked
        } else {
            0
        };
        let value = line.split_ascii_whitespace().nth(1).and_then(|v| v.parse::<i64>().ok());
        match value {
            Some(v) if extra != 0 => {
                let tag = &line[..line.find(':').map_or(0, |i| i + 1)];
                out.push_str(&format!("{tag}\t{:>8} kB\n", (v + extra * kb).max(0)));
            }
            _ => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_between_processes() {
        // Pids no process here has.
        let (a, b) = (0x7ff0_0001, 0x7ff0_0002);
        add(a, 3, 1);
        assert_eq!(get(a), (3, 1));
        add(a, -3, -1);
        add(b, 3, 1);
        assert_eq!((get(a), get(b)), ((0, 0), (3, 1)));
        let text = "Name:\tx\nVmPin:\t       0 kB\nVmLck:\t       8 kB\nThreads:\t1\n";
        let kb = crate::page_size() as i64 / 1024;
        let got = adjust_status(b, text);
        assert!(got.contains(&format!("VmPin:\t{:>8} kB\n", 3 * kb)), "{got}");
        assert!(got.contains(&format!("VmLck:\t{:>8} kB\n", 8 + kb)), "{got}");
        assert!(got.starts_with("Name:\tx\n") && got.ends_with("Threads:\t1\n"));
        add(b, -3, -1);
    }
}
