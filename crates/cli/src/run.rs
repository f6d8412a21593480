//! `uiommufd run`: run a program with the preload shim.
//!
//! The shim learns the emulated machine from the environment:
//! `UIOMMUFD_KERNEL` (the Linux release: `--kernel`), `UIOMMUFD_IOMMU` (the
//! IOMMU model) and `UIOMMUFD_DEVICES` (the devices, `;`-separated), all
//! validated here first so that a typo is an error
//! message, not a program that finds no device. Devices also get sysfs
//! entries: a temporary directory with the files and links a VMM reads
//! (`/sys/bus/pci/devices/<BDF>/vfio-dev/vfioN/dev`, `iommu_group`, the
//! IDs, ...), which the shim serves in place of `/sys` paths naming them
//! (`UIOMMUFD_SYSFS`). Stand-in directories (sysfs, and debugfs for
//! `--fault-injection`) must outlive the program, so with either the
//! command waits for the program and removes them; otherwise it execs.

use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Args;
use uiommufd_core::KernelRelease;
use uiommufd_devices::platform::{parse_iommu, Platform, PlatformDevice};

/// The shared object `cargo build` produces for the shim crate.
const SHIM: &str = "libuiommufd_preload.so";

#[derive(Args)]
pub struct RunArgs {
    /// The Linux release whose iommufd to emulate: `7.3` (mainline, the
    /// default) or `6.12` (the LTS): its commands, flags, data types, mock
    /// ABI and errnos (also: UIOMMUFD_KERNEL).
    #[arg(long, value_name = "RELEASE", value_parser = check_kernel)]
    kernel: Option<String>,
    /// IOMMU model behind the emulated devices: `mock` (the kernel selftest's
    /// mock IOMMU), `vtd[:key=value,...]` (Intel VT-d; keys cap=HEX,ecap=HEX,
    /// sc=0|1, nesting=0|1, ssads=0|1, sm=0|1, pasid=BITS), `smmuv3[:...]`
    /// (Arm SMMUv3) or `amd[:key=value,...]` (AMD-Vi; keys efr=HEX,efr2=HEX as
    /// Linux prints them at boot, hd=0|1, gt=0|1, hats=0..3, la57=0|1,
    /// pgtable=v1|v2, iommufd=0|1, nested=0|1, ...; see `uiommufd info --help`).
    #[arg(long, default_value = "mock", value_name = "MODEL", value_parser = check_iommu)]
    iommu: String,
    /// Emulate a device, served as /dev/vfio/devices/vfioN in the order given
    /// (repeatable): `dma-engine[:pasid=BITS,priv=0|1,bdf=DDDD:BB:DD.F]`.
    #[arg(long = "device", value_name = "SPEC")]
    devices: Vec<String>,
    /// Log every call on a served descriptor to stderr (also: UIOMMUFD_TRACE=1).
    #[arg(long)]
    trace: bool,
    /// With --trace: append the log to this file instead of stderr (also:
    /// UIOMMUFD_TRACE_FILE).
    #[arg(long, value_name = "FILE", requires = "trace")]
    trace_file: Option<PathBuf>,
    /// Emulate the kernel's fault injection: serve /proc/self/task/TID/fail-nth
    /// (the N-th fallible step of the engine on that thread fails) and a
    /// stand-in /sys/kernel/debug with the fault-injection attribute files.
    #[arg(long)]
    fault_injection: bool,
    /// Let `uiommufd inspect PID` look at the program's iommufd state: the
    /// shim opens an owner-only control socket (also: UIOMMUFD_INSPECT=1).
    #[arg(long)]
    inspect: bool,
    /// What `uiommufd trace` asked for (`run --trace` traces everything,
    /// following forks and threads).
    #[arg(skip)]
    trace_config: Option<uiommufd_decode::Config>,
    /// Path of libuiommufd_preload.so (default: next to this binary; also: UIOMMUFD_PRELOAD).
    #[arg(long, value_name = "PATH")]
    preload: Option<PathBuf>,
    /// The program to run, and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM")]
    program: Vec<String>,
}

impl RunArgs {
    /// These arguments with tracing on as `cfg` says (for `uiommufd
    /// trace`).
    pub fn traced(mut self, output: Option<PathBuf>, cfg: uiommufd_decode::Config) -> RunArgs {
        self.trace = true;
        self.trace_file = output.or(self.trace_file);
        self.trace_config = Some(cfg);
        self
    }
}

/// `--iommu` must name a model the shim has (checked with the shim's own
/// parser).
fn check_iommu(spec: &str) -> Result<String, String> {
    parse_iommu(spec).map(|_| spec.to_string())
}

/// `--kernel` must name a release we emulate.
fn check_kernel(name: &str) -> Result<String, String> {
    match KernelRelease::by_name(name) {
        Some(r) => Ok(r.name.to_string()),
        None => {
            let names: Vec<&str> = uiommufd_core::release::RELEASES.iter().map(|r| r.name).collect();
            Err(format!("not a release uiommufd emulates (one of {})", names.join(", ")))
        }
    }
}

fn find_shim(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = explicit.or_else(|| std::env::var_os("UIOMMUFD_PRELOAD").map(PathBuf::from)) {
        return if p.is_file() { Ok(p) } else { Err(format!("preload shim {} does not exist", p.display())) };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate the uiommufd binary: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join(SHIM),
        // `cargo run` / `cargo test` leave it among the dependencies.
        dir.join("deps").join(SHIM),
        dir.join("../lib").join(SHIM),
        dir.join("../lib/uiommufd").join(SHIM),
    ];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.canonicalize().unwrap_or_else(|_| c.clone()));
        }
    }
    Err(format!(
        "cannot find {SHIM} (looked in {}); build the whole workspace with `cargo build --release`, \
         or point --preload / UIOMMUFD_PRELOAD at it",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    ))
}

pub fn run(args: RunArgs) -> Result<ExitCode, String> {
    let shim = find_shim(args.preload)?;
    if let Some(bad) = args.devices.iter().find(|d| d.contains(';') || d.trim().is_empty()) {
        return Err(format!("--device {bad:?}: give one device per --device"));
    }
    let devices = args.devices.join(";");
    // The whole machine, as the shim will build it.
    let platform = Platform::new(&args.iommu, &devices)
        .map_err(|e| format!("--iommu {} --device {}: {e}", args.iommu, args.devices.join(" --device ")))?;
    let mut preload = shim.into_os_string();
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(existing);
    }
    // The release: --kernel, else a valid UIOMMUFD_KERNEL, else the default.
    let release = match &args.kernel {
        Some(name) => KernelRelease::by_name(name).ok_or("--kernel names no release")?,
        None => KernelRelease::from_env()?,
    };
    let (prog, rest) = args.program.split_first().ok_or("no program given")?;
    let mut cmd = Command::new(prog);
    cmd.args(rest).env("LD_PRELOAD", preload).env("UIOMMUFD_IOMMU", &args.iommu);
    cmd.env(uiommufd_core::release::ENV, release.name);
    if devices.is_empty() {
        cmd.env_remove("UIOMMUFD_DEVICES").env_remove("UIOMMUFD_SYSFS");
    } else {
        cmd.env("UIOMMUFD_DEVICES", &devices);
    }
    let trace_config =
        args.trace_config.clone().unwrap_or(uiommufd_decode::Config { follow: true, ..Default::default() });
    if args.trace {
        cmd.env("UIOMMUFD_TRACE", "1").env("UIOMMUFD_TRACE_OPTS", trace_config.to_env());
        if let Some(f) = &args.trace_file {
            // Absolute, so a program that changes directory logs to the same file.
            let abs = std::path::absolute(f).map_err(|e| format!("trace file {}: {e}", f.display()))?;
            cmd.env("UIOMMUFD_TRACE_FILE", abs);
        }
    }
    // Stand-in directories the program's /sys paths reach; they must
    // outlive the program, so then we wait for it instead of exec'ing.
    let mut stand_ins = Vec::new();
    if args.fault_injection {
        let debugfs = StandIn::debugfs()?;
        cmd.env("UIOMMUFD_FAULT_INJECTION", "1").env("UIOMMUFD_DEBUGFS", &debugfs.0);
        stand_ins.push(debugfs);
    }
    if !platform.devices.is_empty() {
        let sysfs = StandIn::sysfs(&platform)?;
        cmd.env("UIOMMUFD_SYSFS", &sysfs.0);
        stand_ins.push(sysfs);
    }
    // The program's process, for the shim to tell its first thread from
    // the others (`-f`): this one when we exec, our child otherwise.
    let me = std::process::id();
    if args.inspect {
        cmd.env("UIOMMUFD_INSPECT", "1");
    }
    if stand_ins.is_empty() {
        if args.trace {
            cmd.env("UIOMMUFD_TRACE_ROOT", me.to_string());
        }
        // exec only returns on failure.
        let err = cmd.exec();
        return Err(format!("cannot run {prog}: {err}"));
    }
    if args.trace {
        cmd.env("UIOMMUFD_TRACE_ROOT", format!("child-of:{me}"));
        describe_platform(&platform);
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {prog}: {e}"))?;
    let status = child.wait().map_err(|e| format!("waiting for {prog}: {e}"))?;
    drop(stand_ins);
    if args.inspect {
        // The shim removes it when the program exits normally; a crash
        // leaves it (`uiommufd inspect` removes those it finds).
        let dir = uiommufd_dispatch::inspect::socket_dir();
        let _ = std::fs::remove_file(uiommufd_dispatch::inspect::socket_path(&dir, child.id()));
    }
    Ok(exit_code_of(status))
}

/// One line per emulated device (with `--trace`): which devices exist and
/// behind which IOMMU.
fn describe_platform(p: &Platform) {
    for d in &p.devices {
        let (major, minor) = d.devnum();
        eprintln!(
            "uiommufd: /dev/vfio/devices/vfio{} ({major}:{minor}): {} at {}, IOMMU group {}, behind the {} IOMMU",
            d.index,
            d.kind,
            d.bdf,
            d.group,
            p.iommu.name()
        );
    }
}

/// The shell's convention for a program's status: its exit code, or 128 +
/// the signal that killed it.
fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c as u8),
        (None, Some(sig)) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        _ => ExitCode::FAILURE,
    }
}

/// A temporary directory standing in for part of `/sys`, removed on drop.
struct StandIn(PathBuf);

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl StandIn {
    /// An empty directory `uiommufd-<what>-<pid>` in the temp dir.
    fn create(what: &str) -> Result<StandIn, String> {
        let base = std::env::temp_dir().join(format!("uiommufd-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base)
            .map_err(|e| format!("cannot create the stand-in {what} {}: {e}", base.display()))?;
        Ok(StandIn(base))
    }

    /// `/sys/kernel/debug`: the fault-injection capabilities' attribute
    /// files with the kernel's defaults
    /// (Documentation/fault-injection/fault-injection.rst). Programs write
    /// them freely; only `/proc/.../fail-nth` drives injection.
    fn debugfs() -> Result<StandIn, String> {
        let d = StandIn::create("debugfs")?;
        let base = d.0.clone();
        let err = |e: std::io::Error| format!("cannot create the stand-in debugfs {}: {e}", base.display());
        let common = [
            ("probability", "0"),
            ("interval", "1"),
            ("times", "1"),
            ("space", "0"),
            ("verbose", "2"),
            ("verbose_ratelimit_interval_ms", "0"),
            ("verbose_ratelimit_burst", "0"),
            ("task-filter", "N"),
        ];
        for (cap, extra) in [
            ("failslab", &[("ignore-gfp-wait", "Y"), ("cache-filter", "N")][..]),
            ("fail_page_alloc", &[("ignore-gfp-wait", "Y"), ("ignore-gfp-highmem", "Y"), ("min-order", "1")][..]),
            ("fail_iommufd", &[][..]),
        ] {
            let dir = base.join(cap);
            std::fs::create_dir_all(&dir).map_err(err)?;
            for (name, value) in common.iter().chain(extra) {
                std::fs::write(dir.join(name), format!("{value}\n")).map_err(err)?;
            }
        }
        Ok(d)
    }

    /// The sysfs entries of the platform's devices, under `sys/` of the
    /// directory, laid out as the kernel's with vfio-pci bound:
    ///
    /// ```text
    /// sys/bus/pci/devices/<BDF>/{vendor,device,subsystem_vendor,subsystem_device,class,revision,uevent}
    /// sys/bus/pci/devices/<BDF>/vfio-dev/vfio<N>/{dev,uevent,device -> ../../../<BDF>}
    /// sys/bus/pci/devices/<BDF>/iommu_group -> ../../../../kernel/iommu_groups/<G>
    /// sys/bus/pci/devices/<BDF>/driver -> ../../drivers/vfio-pci
    /// sys/bus/pci/drivers/vfio-pci/<BDF> -> ../../devices/<BDF>
    /// sys/kernel/iommu_groups/<G>/{type,devices/<BDF> -> ../../../../bus/pci/devices/<BDF>}
    /// sys/class/vfio-dev/vfio<N> -> ../../bus/pci/devices/<BDF>/vfio-dev/vfio<N>
    /// ```
    ///
    /// The ID files hold the values the device's config space has at
    /// power-on, formatted as sysfs prints them (`0x1234`).
    fn sysfs(p: &Platform) -> Result<StandIn, String> {
        let d = StandIn::create("sysfs")?;
        let sys = d.0.join("sys");
        let err = |e: std::io::Error| format!("cannot create the stand-in sysfs {}: {e}", sys.display());
        let driver = sys.join("bus/pci/drivers/vfio-pci");
        for dir in [&driver, &sys.join("kernel/iommu_groups"), &sys.join("class/vfio-dev")] {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        for dev in &p.devices {
            Self::sysfs_device(&sys, dev).map_err(err)?;
        }
        Ok(d)
    }

    fn sysfs_device(sys: &Path, dev: &PlatformDevice) -> std::io::Result<()> {
        let (bdf, n, g) = (&dev.bdf, dev.index, dev.group);
        let (major, minor) = dev.devnum();
        let cfg = |off: u64, len: usize| {
            let mut b = [0u8; 4];
            let _ = dev.pci.config_read(off, &mut b[..len]);
            u32::from_le_bytes(b)
        };
        let pci = sys.join("bus/pci/devices").join(bdf);
        let vfio = pci.join(format!("vfio-dev/vfio{n}"));
        std::fs::create_dir_all(&vfio)?;
        let (vendor, device) = (cfg(0x00, 2), cfg(0x02, 2));
        let (subsys_vendor, subsys) = (cfg(0x2c, 2), cfg(0x2e, 2));
        let (revision, class) = (cfg(0x08, 1), cfg(0x09, 3));
        for (name, value) in [
            ("vendor", format!("{vendor:#06x}")),
            ("device", format!("{device:#06x}")),
            ("subsystem_vendor", format!("{subsys_vendor:#06x}")),
            ("subsystem_device", format!("{subsys:#06x}")),
            ("class", format!("{class:#08x}")),
            ("revision", format!("{revision:#04x}")),
            ("numa_node", "-1".to_string()),
            (
                "uevent",
                format!(
                    "DRIVER=vfio-pci\nPCI_CLASS={class:X}\nPCI_ID={vendor:04X}:{device:04X}\n\
                     PCI_SUBSYS_ID={subsys_vendor:04X}:{subsys:04X}\nPCI_SLOT_NAME={bdf}"
                ),
            ),
        ] {
            std::fs::write(pci.join(name), format!("{value}\n"))?;
        }
        std::fs::write(vfio.join("dev"), format!("{major}:{minor}\n"))?;
        std::fs::write(vfio.join("uevent"), format!("MAJOR={major}\nMINOR={minor}\nDEVNAME=vfio/devices/vfio{n}\n"))?;
        symlink(format!("../../../{bdf}"), vfio.join("device"))?;
        symlink(format!("../../../../kernel/iommu_groups/{g}"), pci.join("iommu_group"))?;
        symlink("../../drivers/vfio-pci", pci.join("driver"))?;
        symlink(format!("../../devices/{bdf}"), sys.join("bus/pci/drivers/vfio-pci").join(bdf))?;
        let group = sys.join("kernel/iommu_groups").join(g.to_string());
        std::fs::create_dir_all(group.join("devices"))?;
        std::fs::write(group.join("type"), "DMA\n")?;
        symlink(format!("../../../../bus/pci/devices/{bdf}"), group.join("devices").join(bdf))?;
        symlink(
            format!("../../bus/pci/devices/{bdf}/vfio-dev/vfio{n}"),
            sys.join("class/vfio-dev").join(format!("vfio{n}")),
        )?;
        Ok(())
    }
}
