//! `uiommufd`: the command-line front end.
//!
//! - `run [--kernel 7.3|6.12] [--iommu MODEL] [--device SPEC]... [--trace] [--fault-injection]
//!   -- PROGRAM [ARGS]`: run an unmodified program with `/dev/iommu`,
//!   `/dev/vfio/vfio` and the emulated devices' `/dev/vfio/devices/vfioN`
//!   served by uiommufd (the preload shim);
//! - `trace [-o FILE] [RUN OPTIONS] -- PROGRAM`: `run`, logging each call;
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
    /// `run` with every call on a served descriptor logged: the command, its
    /// result or errno, and the reason of a failure.
    Trace {
        /// Append the log to FILE instead of stderr.
        #[arg(long, short, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        run: run::RunArgs,
    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(args) => run::run(args),
        Cmd::Trace { output, run } => run::run(run.traced(output)),
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
