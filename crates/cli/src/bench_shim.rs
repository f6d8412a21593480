//! The map path as an unmodified program sees it: `IOMMU_IOAS_MAP` and
//! `IOMMU_IOAS_UNMAP` as `ioctl(2)` calls on an opened `/dev/iommu`,
//! served by the preload shim, beside the kernel's own system-call round
//! trip measured in the same process.
//!
//! The bench runs itself under `uiommufd run` (the hidden `bench-shim-child`
//! command): the child opens `/dev/iommu`, attaches a mock domain with
//! `IOMMU_TEST_OP_MOCK_DOMAIN` and times the pairs through libc's `ioctl`
//! (which the shim interposes). The reference is two real `ioctl` system
//! calls (raw `syscall(SYS_ioctl)` on `/dev/null`, which the kernel answers
//! `ENOTTY` without doing anything): what a map + unmap pair costs a
//! program before the kernel has done any work, so the difference is what
//! the shim and the engine add over a bare kernel entry and exit.

use std::hint::black_box;
use std::process::{Command, ExitCode};

use uiommufd_abi::iommufd as abi;
use uiommufd_abi::test_cmd as t;
use zerocopy::IntoBytes;

use crate::bench::{measure, Row, Target};

/// Lines the child prints, `name ns`.
const KEYS: [&str; 5] = ["syscall_pair", "passthrough_pair", "map_unmap_0", "map_unmap_1", "map_unmap_2"];

pub(crate) fn bench_shim(quick: bool) -> Vec<Row> {
    let iters: u64 = if quick { 10_000 } else { 200_000 };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("bench: through the shim: cannot locate this binary ({e}); section skipped");
            return Vec::new();
        }
    };
    let out = Command::new(&exe)
        .args(["run", "--"])
        .arg(&exe)
        .args(["bench-shim-child", &iters.to_string()])
        .env_remove("UIOMMUFD_TRACE")
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!(
                "bench: through the shim: the child failed ({}): {}; section skipped",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return Vec::new();
        }
        Err(e) => {
            eprintln!("bench: through the shim: cannot run {}: {e}; section skipped", exe.display());
            return Vec::new();
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
    };
    let (Some(sys), Some(pass)) = (get(KEYS[0]), get(KEYS[1])) else {
        eprintln!("bench: through the shim: unexpected output {text:?}; section skipped");
        return Vec::new();
    };
    let mut rows = vec![Row::new("ioctl on a descriptor the shim does not serve, x2 (pass-through)", pass)
        .vs("kernel ioctl round trip x2", sys)];
    for (domains, key) in KEYS[2..].iter().enumerate() {
        let Some(ns) = get(key) else { continue };
        let mut row = Row::new(format!("IOAS map+unmap 4 KiB, {domains} mock domain(s), ioctl through the shim"), ns)
            .vs("kernel ioctl round trip x2", sys);
        if domains == 1 {
            row = row.target(Target::MaxOverRef(100.0));
        }
        rows.push(row);
    }
    rows
}

/// Issue an ioctl through libc (the shim interposes it); `Err(errno)`.
fn ioctl(fd: i32, cmd: u32, arg: *mut u8) -> Result<(), i32> {
    // SAFETY: `arg` points to a live struct of the size `cmd` encodes (or
    // is null for commands without an argument).
    let r = unsafe { libc::ioctl(fd, cmd as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

fn open(path: &std::ffi::CStr) -> Result<i32, String> {
    // SAFETY: a NUL-terminated path; the flags take no mode.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open {path:?}: {}", std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// The child, run under the shim: prints `name ns` lines.
pub fn child(iters: u64) -> Result<ExitCode, String> {
    let null = open(c"/dev/null")?;
    // Not an ioctl /dev/null knows: the kernel returns ENOTTY at once.
    const BOGUS: libc::c_ulong = 0x5a5a;
    let syscall_pair = measure(iters, || {
        for _ in 0..2 {
            // SAFETY: a raw ioctl with no argument on our own descriptor.
            black_box(unsafe { libc::syscall(libc::SYS_ioctl, null, BOGUS, 0) });
        }
    });
    let passthrough_pair = measure(iters, || {
        for _ in 0..2 {
            // SAFETY: as above, through libc (and so the shim's hook).
            black_box(unsafe { libc::ioctl(null, BOGUS as _, 0) });
        }
    });
    println!("{} {syscall_pair:.2}", KEYS[0]);
    println!("{} {passthrough_pair:.2}", KEYS[1]);

    // A page of our own, populated.
    let buf = vec![0x5au8; 3 * 4096];
    let va = (buf.as_ptr() as u64).next_multiple_of(4096);
    const RW: u32 = abi::IOMMU_IOAS_MAP_READABLE | abi::IOMMU_IOAS_MAP_WRITEABLE | abi::IOMMU_IOAS_MAP_FIXED_IOVA;
    for (domains, key) in KEYS[2..].iter().enumerate() {
        let fd = open(c"/dev/iommu").map_err(|e| format!("{e} (not running under the shim?)"))?;
        let mut alloc = abi::IommuIoasAlloc { size: size_of::<abi::IommuIoasAlloc>() as u32, ..Default::default() };
        ioctl(fd, abi::IOMMU_IOAS_ALLOC, alloc.as_mut_bytes().as_mut_ptr())
            .map_err(|e| format!("IOAS_ALLOC: errno {e}"))?;
        let ioas = alloc.out_ioas_id;
        if domains > 0 {
            // A mock device attached to the IOAS (its automatic domain),
            // then further paging HWPTs on the same IOAS, as the in-process
            // rows build them.
            let mut cmd = t::IommuTestCmd::new(t::IOMMU_TEST_OP_MOCK_DOMAIN);
            cmd.id = ioas;
            ioctl(fd, t::IOMMU_TEST_CMD, cmd.as_mut_bytes().as_mut_ptr())
                .map_err(|e| format!("MOCK_DOMAIN: errno {e}"))?;
            let dev: t::TestMockDomain = cmd.payload_as();
            for _ in 1..domains {
                let mut hwpt = abi::IommuHwptAlloc {
                    size: size_of::<abi::IommuHwptAlloc>() as u32,
                    dev_id: dev.out_idev_id,
                    pt_id: ioas,
                    ..Default::default()
                };
                ioctl(fd, abi::IOMMU_HWPT_ALLOC, hwpt.as_mut_bytes().as_mut_ptr())
                    .map_err(|e| format!("HWPT_ALLOC: errno {e}"))?;
            }
        }
        let mut map = abi::IommuIoasMap {
            size: size_of::<abi::IommuIoasMap>() as u32,
            flags: RW,
            ioas_id: ioas,
            user_va: va,
            length: 4096,
            iova: t::MOCK_APERTURE_START,
            ..Default::default()
        };
        let mut unmap = abi::IommuIoasUnmap {
            size: size_of::<abi::IommuIoasUnmap>() as u32,
            ioas_id: ioas,
            iova: t::MOCK_APERTURE_START,
            length: 4096,
        };
        let mut failed = None;
        let ns = measure(iters, || {
            if let Err(e) = ioctl(fd, abi::IOMMU_IOAS_MAP, map.as_mut_bytes().as_mut_ptr()) {
                failed.get_or_insert(format!("IOAS_MAP: errno {e}"));
            }
            unmap.length = 4096;
            if let Err(e) = ioctl(fd, abi::IOMMU_IOAS_UNMAP, unmap.as_mut_bytes().as_mut_ptr()) {
                failed.get_or_insert(format!("IOAS_UNMAP: errno {e}"));
            }
        });
        if let Some(f) = failed {
            return Err(f);
        }
        println!("{key} {ns:.2}");
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(fd) };
    }
    drop(buf);
    Ok(ExitCode::SUCCESS)
}
