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
//! and update the same counters. It holds [`SLOTS`] processes, found by a
//! hash of the pid. A slot is claimed by the first charge of a process and
//! kept while the process lives, also when its counters return to zero, so
//! that a process mapping and unmapping over and over finds its slot at
//! once (each process remembers where its own is); when the table fills,
//! the slots of dead processes and those back at zero are given back, so a
//! process beyond the last slot is only left uncounted when [`SLOTS`] live
//! processes all hold charges. Each slot records the start time of the
//! process it counts (field 22 of `/proc/PID/stat`), so a process that
//! died holding charges does not leave them to the next process given its
//! pid: a slot whose start time is not the current holder's of that pid is
//! stale and starts again from zero.
//!
//! Each slot has a lock word holding the pid of the process that holds it
//! (the table's claims have one too), so that freeing a slot cannot race
//! with another process's update of it; a lock whose holder is gone (killed
//! inside the few instructions it is held) is broken by the next taker.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Processes the table can hold.
pub const SLOTS: usize = 256;

#[repr(C)]
struct Slot {
    /// The process counted here (0: free).
    pid: AtomicI32,
    /// Pid of the process holding the slot's lock (0: none).
    lock: AtomicI32,
    /// Start time of the process counted (clock ticks since boot).
    start: AtomicU64,
    pinned: AtomicI64,
    locked: AtomicI64,
}

/// The shared table: its claims' lock, then the slots.
#[repr(C)]
struct Table {
    claim: AtomicI32,
    slots: [Slot; SLOTS],
}

/// Address of the shared table (0: none could be made).
static TABLE: OnceLock<usize> = OnceLock::new();
/// The same, once made (0: not yet): one load on every charge.
static TABLE_ADDR: AtomicUsize = AtomicUsize::new(0);

#[inline]
fn table() -> Option<&'static Table> {
    match TABLE_ADDR.load(Ordering::Acquire) {
        // SAFETY: as in `make_table`, which stored it.
        addr if addr != 0 => Some(unsafe { &*(addr as *const Table) }),
        _ => make_table(),
    }
}

#[cold]
#[inline(never)]
fn make_table() -> Option<&'static Table> {
    let addr = *TABLE.get_or_init(|| {
        let len = std::mem::size_of::<Table>();
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
    TABLE_ADDR.store(addr, Ordering::Release);
    // SAFETY: `addr` is a live, zero-initialised, never-unmapped mapping of
    // one `Table`, which is only atomics, for which all-zero is valid.
    (addr != 0).then(|| unsafe { &*(addr as *const Table) })
}

/// Make the table now (before the program forks), if it does not exist.
pub fn init() {
    let _ = table();
}

/// This process's start time, learnt on first use (0: not yet), and the
/// index of the slot that last counted it (a hint, checked before use:
/// [`SLOTS`] or more for none). [`after_fork_child`] forgets both in a
/// forked child (the pid itself is [`crate::sys::pid`]'s, which forgets it
/// there too).
static MY_START: AtomicU64 = AtomicU64::new(0);
static MY_SLOT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// In a forked child: it is another process, whose slot is not its
/// parent's. Called from [`crate::sys::pid`]'s fork handler (and the
/// shim's).
pub fn after_fork_child() {
    MY_START.store(0, Ordering::Release);
    MY_SLOT.store(usize::MAX, Ordering::Release);
}

#[inline]
fn my_pid() -> u32 {
    crate::sys::pid()
}

/// The start time of process `pid` (0 if it cannot be read: gone).
fn start_of(pid: u32) -> u64 {
    if pid == my_pid() {
        let cached = MY_START.load(Ordering::Acquire);
        if cached != 0 {
            return cached;
        }
        let start = crate::user::stat_of(pid).map_or(0, |(s, _)| s);
        MY_START.store(start, Ordering::Release);
        return start;
    }
    crate::user::stat_of(pid).map_or(0, |(s, _)| s)
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() != libc::ESRCH }
}

/// Take a lock word: it holds our pid while held. A holder that no longer
/// exists (killed while holding it) loses it.
#[inline]
fn lock(word: &AtomicI32) -> LockGuard<'_> {
    let me = my_pid() as i32;
    if word.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
        return LockGuard(word);
    }
    lock_contended(word, me)
}

#[cold]
#[inline(never)]
fn lock_contended(word: &AtomicI32, me: i32) -> LockGuard<'_> {
    let mut tries = 0u32;
    loop {
        match word.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return LockGuard(word),
            Err(holder) => {
                tries += 1;
                if tries.is_multiple_of(4096) && holder != 0 && holder != me && !alive(holder) {
                    let _ = word.compare_exchange(holder, 0, Ordering::AcqRel, Ordering::Relaxed);
                }
                if tries.is_multiple_of(64) {
                    std::thread::yield_now();
                }
                spin_loop();
            }
        }
    }
}

struct LockGuard<'a>(&'a AtomicI32);

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

/// Slots in probe order for `pid`: from its hash on, every slot once.
fn probe(t: &Table, pid: u32) -> impl Iterator<Item = &Slot> {
    let first = slot_hash(pid);
    (0..SLOTS).map(move |i| &t.slots[(first + i) % SLOTS])
}

/// Where `pid`'s probe starts.
fn slot_hash(pid: u32) -> usize {
    (pid as usize).wrapping_mul(0x9e37_79b9) % SLOTS
}

/// The slot counting `pid`, if any: for this process, the one it last
/// used when that one still counts its pid (one load), else a probe.
#[inline]
fn find(t: &Table, pid: u32) -> Option<&Slot> {
    let mine = pid == my_pid();
    if mine {
        if let Some(s) = t.slots.get(MY_SLOT.load(Ordering::Relaxed)) {
            if s.pid.load(Ordering::Acquire) == pid as i32 {
                return Some(s);
            }
        }
    }
    let first = slot_hash(pid);
    let i = (0..SLOTS).map(|i| (first + i) % SLOTS).find(|&i| t.slots[i].pid.load(Ordering::Acquire) == pid as i32)?;
    if mine {
        MY_SLOT.store(i, Ordering::Relaxed);
    }
    Some(&t.slots[i])
}

/// Whether the slot (locked, counting `pid`) counts the process now
/// holding that pid: only checked for our own pid, where the start time
/// is cached; another process's is trusted (see [`get`] for reads).
fn current(s: &Slot, pid: u32) -> bool {
    pid != my_pid() || s.start.load(Ordering::Relaxed) == start_of(pid)
}

/// Free the slots that count nothing now and those whose process is gone
/// (the table is full); called with the claim lock held. A live process
/// whose slot is given back claims one again at its next charge.
fn reclaim(t: &Table) {
    for s in &t.slots {
        let pid = s.pid.load(Ordering::Acquire);
        if pid == 0 {
            continue;
        }
        let _g = lock(&s.lock);
        let zero = s.pinned.load(Ordering::Acquire) == 0 && s.locked.load(Ordering::Acquire) == 0;
        if s.pid.load(Ordering::Acquire) == pid && (zero || !alive(pid)) {
            free(s);
        }
    }
}

fn free(s: &Slot) {
    s.pinned.store(0, Ordering::Relaxed);
    s.locked.store(0, Ordering::Relaxed);
    s.start.store(0, Ordering::Relaxed);
    s.pid.store(0, Ordering::Release);
}

/// Add `pinned` pages to process `pid`'s `VmPin` and `locked` to its
/// `VmLck` (negative to take them away).
///
/// Inlined: the usual call (every map and unmap of charged pages), this
/// process's own counters in the slot it remembers, is a check of that
/// slot and two atomic additions under its lock.
#[inline]
pub fn add(pid: u32, pinned: i64, locked: i64) {
    if pid == my_pid() {
        if let Some(s) = table().and_then(|t| t.slots.get(MY_SLOT.load(Ordering::Relaxed))) {
            let _g = lock(&s.lock);
            let start = MY_START.load(Ordering::Relaxed);
            if s.pid.load(Ordering::Acquire) == pid as i32 && start != 0 && s.start.load(Ordering::Relaxed) == start {
                add_counts(s, pinned, locked);
                return;
            }
        }
    }
    add_slow(pid, pinned, locked);
}

/// Add to a slot's counters (its lock held).
#[inline]
fn add_counts(s: &Slot, pinned: i64, locked: i64) {
    if pinned != 0 {
        s.pinned.fetch_add(pinned, Ordering::AcqRel);
    }
    if locked != 0 {
        s.locked.fetch_add(locked, Ordering::AcqRel);
    }
}

/// [`add`] without a remembered slot: find one, or claim one.
#[cold]
#[inline(never)]
fn add_slow(pid: u32, pinned: i64, locked: i64) {
    if pinned == 0 && locked == 0 || pid == 0 || pid > i32::MAX as u32 {
        return;
    }
    let Some(t) = table() else { return };
    loop {
        if let Some(s) = find(t, pid) {
            let _g = lock(&s.lock);
            if s.pid.load(Ordering::Acquire) != pid as i32 {
                continue; // freed meanwhile: look again
            }
            if !current(s, pid) {
                // A dead process's charges under our pid: not ours.
                free(s);
                continue;
            }
            // Back at zero, the slot stays: the process's next charge is
            // [`add`]'s fast path, not a claim.
            add_counts(s, pinned, locked);
            return;
        }
        if pinned <= 0 && locked <= 0 {
            // A credit to a process that is not counted (beyond the last
            // slot, or its slot reclaimed): nothing to take away.
            return;
        }
        let _claim = lock(&t.claim);
        if find(t, pid).is_some() {
            continue; // claimed by another thread meanwhile
        }
        let start = start_of(pid);
        // A free slot, else one given back by a process that counts
        // nothing or is dead; with neither, the process is beyond the last
        // slot and not counted.
        for round in 0..2 {
            if round == 1 {
                reclaim(t);
            }
            if let Some(s) = probe(t, pid).find(|s| s.pid.load(Ordering::Acquire) == 0) {
                let _g = lock(&s.lock);
                s.start.store(start, Ordering::Relaxed);
                s.pinned.store(pinned, Ordering::Relaxed);
                s.locked.store(locked, Ordering::Relaxed);
                s.pid.store(pid as i32, Ordering::Release);
                break;
            }
        }
        return;
    }
}

/// The engine's share of process `pid`'s counters, in pages:
/// `(pinned, locked)`; none for a slot left by a dead process whose pid
/// another one has now.
pub fn get(pid: u32) -> (i64, i64) {
    let Some(s) = table().and_then(|t| find(t, pid)) else { return (0, 0) };
    let _g = lock(&s.lock);
    if s.pid.load(Ordering::Acquire) != pid as i32 || s.start.load(Ordering::Relaxed) != start_of(pid) {
        return (0, 0);
    }
    (s.pinned.load(Ordering::Acquire), s.locked.load(Ordering::Acquire))
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

    fn occupied(t: &Table) -> usize {
        t.slots.iter().filter(|s| s.pid.load(Ordering::Acquire) != 0).count()
    }

    fn counters_move_between_processes() {
        // Pids no process here has (above any pid_max: dead to kill(2)).
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
        assert_eq!(get(b), (0, 0));
        assert_eq!(adjust_status(b, text), text, "a slot back at zero adds nothing");
    }

    /// One test: the table is shared by every test thread of the process,
    /// and the last part frees dead processes' slots.
    #[test]
    fn counters_slots_and_stale_pids() {
        counters_move_between_processes();
        slots_are_reclaimed_and_never_inherited();
        a_forked_child_has_its_own_slot();
    }

    fn slots_are_reclaimed_and_never_inherited() {
        let t = table().unwrap();
        // Far more processes than slots, one after another, each charging
        // and then uncharging: every one is counted (the full table gives
        // back the slots at zero).
        for pid in 0x7fe0_0000..0x7fe0_0000 + 4 * SLOTS as u32 {
            add(pid, 2, 0);
            assert_eq!(get(pid), (2, 0), "pid {pid:#x}");
            add(pid, -2, 0);
            assert_eq!(get(pid), (0, 0));
        }
        // A dead process's charges under our pid (another start time) are
        // not ours: reading shows none, the next charge starts from zero.
        let me = std::process::id();
        add(me, 5, 0);
        let s = find(t, me).unwrap();
        s.start.fetch_add(1, Ordering::Relaxed);
        assert_eq!(get(me), (0, 0));
        add(me, 1, 0);
        assert_eq!(get(me), (1, 0));
        // Back at zero, a live process keeps its slot (its next charge
        // finds it at once)...
        add(me, -1, 0);
        assert_eq!(get(me), (0, 0));
        let kept = find(t, me).expect("kept while we live") as *const Slot;
        add(me, 1, 0);
        assert_eq!((find(t, me).unwrap() as *const Slot, get(me)), (kept, (1, 0)));
        add(me, -1, 0);
        // ...until the table fills: then it is given back with the dead
        // processes' slots, and a new process is counted.
        let dead = 0x7fd0_0000u32;
        let mut pid = dead;
        while occupied(t) < SLOTS {
            add(pid, 1, 0);
            pid += 1;
        }
        assert!(find(t, me).is_some());
        add(pid, 7, 0);
        assert_eq!(get(pid), (7, 0));
        assert!(find(t, me).is_none(), "our slot at zero is given back to a full table");
        add(me, 7, 0);
        assert_eq!(get(me), (7, 0));
        add(me, -7, 0);
        add(pid, -7, 0);
        for p in dead..pid {
            add(p, -1, 0);
        }
        assert!(t.slots.iter().all(|s| {
            s.pinned.load(Ordering::Acquire) == 0 && s.locked.load(Ordering::Acquire) == 0
                || s.pid.load(Ordering::Acquire) >= 0x7ff0_0000
        }));
    }

    /// A forked child charges its own slot, not the one its parent
    /// remembers: the fork handler forgets the parent's pid and slot.
    fn a_forked_child_has_its_own_slot() {
        let me = crate::sys::pid();
        add(me, 1, 0);
        assert_eq!(get(me), (1, 0));
        // SAFETY: the child only touches the shared table, reads its own
        // /proc entry and leaves with _exit.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            let pid = crate::sys::pid();
            add(pid, 3, 0);
            let ok = pid != me && get(pid) == (3, 0) && get(me) == (1, 0);
            add(pid, -3, 0);
            // SAFETY: leaving the child without running the parent's exit
            // handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
        assert_eq!(get(me), (1, 0));
        add(me, -1, 0);
    }
}
