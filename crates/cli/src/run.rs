//! `uiommufd run`: exec a program with the preload shim.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Args, ValueEnum};

/// The shared object `cargo build` produces for the shim crate.
const SHIM: &str = "libuiommufd_preload.so";

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Model {
    /// The kernel selftest's mock IOMMU (what tools/testing/selftests/iommu uses).
    Mock,
}

impl Model {
    fn env_name(self) -> &'static str {
        match self {
            Model::Mock => "mock",
        }
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// IOMMU model behind the emulated devices.
    #[arg(long, value_enum, default_value = "mock")]
    iommu: Model,
    /// Log every call on a served descriptor to stderr (also: UIOMMUFD_TRACE=1).
    #[arg(long)]
    trace: bool,
    /// Emulate the kernel's fault injection: serve /proc/self/task/TID/fail-nth
    /// (the N-th fallible step of the engine on that thread fails) and a
    /// stand-in /sys/kernel/debug with the fault-injection attribute files.
    #[arg(long)]
    fault_injection: bool,
    /// Path of libuiommufd_preload.so (default: next to this binary; also: UIOMMUFD_PRELOAD).
    #[arg(long, value_name = "PATH")]
    preload: Option<PathBuf>,
    /// The program to run, and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM")]
    program: Vec<String>,
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
    let mut preload = shim.into_os_string();
    if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        preload.push(":");
        preload.push(existing);
    }
    let (prog, rest) = args.program.split_first().ok_or("no program given")?;
    let mut cmd = Command::new(prog);
    cmd.args(rest).env("LD_PRELOAD", preload).env("UIOMMUFD_IOMMU", args.iommu.env_name());
    if args.trace {
        cmd.env("UIOMMUFD_TRACE", "1");
    }
    if args.fault_injection {
        // The stand-in debugfs must outlive the program, so wait for it
        // instead of exec'ing.
        let debugfs = Debugfs::create()?;
        cmd.env("UIOMMUFD_FAULT_INJECTION", "1").env("UIOMMUFD_DEBUGFS", &debugfs.0);
        let status = cmd.status().map_err(|e| format!("cannot run {prog}: {e}"))?;
        drop(debugfs);
        return Ok(exit_code_of(status));
    }
    // exec only returns on failure.
    let err = cmd.exec();
    Err(format!("cannot run {prog}: {err}"))
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

/// A temporary directory standing in for `/sys/kernel/debug`, holding the
/// fault-injection capabilities' attribute files with the kernel's
/// defaults (Documentation/fault-injection/fault-injection.rst). Programs
/// write them freely; only `/proc/.../fail-nth` drives injection.
struct Debugfs(PathBuf);

impl Debugfs {
    fn create() -> Result<Debugfs, String> {
        let base = std::env::temp_dir().join(format!("uiommufd-debugfs-{}", std::process::id()));
        let err = |e: std::io::Error| format!("cannot create the stand-in debugfs {}: {e}", base.display());
        std::fs::create_dir_all(&base).map_err(err)?;
        let d = Debugfs(base.clone());
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
}

impl Drop for Debugfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
