//! `uiommufd`: the command-line front end.
//!
//! - `run [--kernel 7.3|6.12] [--iommu MODEL] [--device SPEC]... [--trace] [--fault-injection]
//!   -- PROGRAM [ARGS]`: run an unmodified program with `/dev/iommu`,
//!   `/dev/vfio/vfio` and the emulated devices' `/dev/vfio/devices/vfioN`
//!   served by uiommufd (the preload shim);
//! - `trace [-f] [-t|-tt|-ttt] [-T] [-e EXPR]... [-s SIZE] [--no-addresses]
//!   [-o FILE] [RUN OPTIONS] -- PROGRAM`: `run`, logging each call as strace
//!   would (see `uiommufd-decode`);
//! - `demo`: walk the main iommufd path in-process and say what happened;
//! - `info`: the emulated IOMMU and devices, decoded;
//! - `bench [--quick] [--json] [--compare FILE]`: the hot paths against
//!   same-run references, as JSON, or beside a saved run.

mod amd_info;
mod bench;
mod bench_amd;
mod bench_report;
mod bench_smmu;
mod demo;
mod info;
mod run;
mod smmu_info;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "uiommufd", version, about = "Linux iommufd (/dev/iommu) in user space, over emulated IOMMUs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run PROGRAM with /dev/iommu, /dev/vfio/vfio and emulated VFIO devices served by uiommufd.
    Run(run::RunArgs),
    /// `run` with every call on a served descriptor logged as strace would:
    /// the command with its arguments decoded, what the kernel wrote back,
    /// the result or errno and the engine's reason.
    #[command(after_help = TRACE_EXAMPLES)]
    Trace(TraceArgs),
    /// Open /dev/iommu in-process and walk the main path, printing each step.
    Demo,
    /// Describe the emulated machine: the IOMMU's registers and what the
    /// Linux driver derives from them, the devices, and each device's
    /// coherency outcome.
    Info(info::InfoArgs),
    /// Measure the hot paths against references taken in the same run.
    Bench {
        /// Fewer iterations and a 1 GiB (not 16 GiB) large map.
        #[arg(long)]
        quick: bool,
        /// Print the run as JSON on stdout (tables on stderr), to save it
        /// for a later --compare.
        #[arg(long)]
        json: bool,
        /// A run saved with --json: print each case's time beside it and
        /// the ratio saved/now.
        #[arg(long, value_name = "FILE")]
        compare: Option<std::path::PathBuf>,
    },
}

const TRACE_EXAMPLES: &str = "\
Examples:
  uiommufd trace -- ./my-vmm                     every call, to stderr
  uiommufd trace -f -tt -T -o vmm.trace -- ./my-vmm
                                                 all processes and threads, timed, to a file
  uiommufd trace -e trace=ioas,hwpt -- ./my-vmm  IOAS and HWPT commands only
  uiommufd trace -e trace=IOMMU_IOAS_MAP,IOMMU_IOAS_UNMAP -Z -- ./my-vmm
                                                 maps and unmaps that failed
  uiommufd trace --no-addresses -o a.trace -- ./t; uiommufd trace --no-addresses -o b.trace -- ./t; diff a.trace b.trace

Classes for -e trace=: all, iommufd, ioas, hwpt, viommu, fault, test, device, vfio,
vfio-container, vfio-group, vfio-device, migration, io, mmap, desc; names: any
IOMMU_*/VFIO_* command, open, close, dup, lseek, mmap, read, write, pread64, pwrite64,
readv, writev, preadv, pwritev, preadv2, pwritev2; `!` first negates.";

/// `uiommufd trace`'s options, strace's letters.
#[derive(clap::Args)]
struct TraceArgs {
    /// Write the trace to FILE (created or truncated; every traced process
    /// appends to it) instead of stderr.
    #[arg(long, short, value_name = "FILE")]
    output: Option<std::path::PathBuf>,
    /// A qualifying expression: `trace=SET` (command or call names and
    /// classes, comma-separated; `!` negates) or `status=successful|failed`.
    #[arg(short = 'e', value_name = "EXPR")]
    expr: Vec<String>,
    /// Prefix each line with the wall-clock time; -tt with microseconds;
    /// -ttt as seconds since the epoch.
    #[arg(short = 't', action = clap::ArgAction::Count)]
    timestamps: u8,
    /// Show the time spent in each call, `<seconds>` at the end.
    #[arg(short = 'T')]
    time_spent: bool,
    /// Follow forks and threads: trace every process and thread of the
    /// program, each line of another than its first thread prefixed with
    /// `[pid TID]`. Without it only the program's first thread is traced.
    #[arg(short = 'f')]
    follow: bool,
    /// The most bytes of a string and elements of an array shown.
    #[arg(short = 's', value_name = "SIZE", default_value_t = 32)]
    strsize: usize,
    /// Print user-space addresses as <ptr> (NULL stays NULL), so that the
    /// traces of two runs can be compared with diff.
    #[arg(long)]
    no_addresses: bool,
    /// Only calls that succeeded (-e status=successful).
    #[arg(short = 'z', conflicts_with = "failed_only")]
    successful_only: bool,
    /// Only calls that failed (-e status=failed).
    #[arg(short = 'Z')]
    failed_only: bool,
    #[command(flatten)]
    run: run::RunArgs,
}

impl TraceArgs {
    /// What the shim is to do, and the file to write (truncated now).
    fn config(&self) -> Result<(uiommufd_decode::Config, Option<std::path::PathBuf>), String> {
        let mut cfg = uiommufd_decode::Config::default();
        for e in &self.expr {
            cfg.apply_expr(e).map_err(|why| format!("-e {e}: {why}"))?;
        }
        if self.successful_only {
            cfg.apply_expr("status=successful")?;
        }
        if self.failed_only {
            cfg.apply_expr("status=failed")?;
        }
        cfg.timestamps = self.timestamps.min(3);
        cfg.time_spent = self.time_spent;
        cfg.follow = self.follow;
        cfg.opts.strsize = self.strsize;
        cfg.opts.redact = self.no_addresses;
        if let Some(out) = &self.output {
            std::fs::write(out, b"").map_err(|e| format!("-o {}: {e}", out.display()))?;
        }
        Ok((cfg, self.output.clone()))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(args) => run::run(args),
        Cmd::Trace(t) => t.config().and_then(|(cfg, out)| run::run(t.run.traced(out, cfg))),
        Cmd::Demo => demo::demo(),
        Cmd::Info(args) => info::info(args),
        Cmd::Bench { quick, json, compare } => bench::bench(bench::BenchArgs { quick, json, compare }),
    };
    match res {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("uiommufd: {msg}");
            ExitCode::from(2)
        }
    }
}
