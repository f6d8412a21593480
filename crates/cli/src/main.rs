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
//!   same-run references, as JSON, or beside a saved run (progress on a
//!   terminal's stderr);
//! - `inspect [PID] [--iova START[,LEN]] [--json|--dot|--svg]`: the
//!   iommufd state of a program started with `run --inspect`;
//! - `completions SHELL`, `man [COMMAND] [--dir DIR]`: shell completions
//!   and manual pages generated from these definitions.

// The doc comments of the clap definitions are --help texts (`<ptr>` is
// meant literally), not rustdoc.
#![allow(rustdoc::invalid_html_tags)]

mod amd_info;
mod bench;
mod bench_amd;
mod bench_guest;
mod bench_report;
mod bench_scale;
mod bench_shim;
mod bench_smmu;
mod demo;
mod info;
mod inspect;
mod progress;
mod run;
mod smmu_info;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "uiommufd",
    version,
    about = "Linux iommufd (/dev/iommu) in user space, over emulated IOMMUs",
    after_help = "\
Examples:
  uiommufd run --iommu vtd --device dma-engine -- ./my-vmm
  uiommufd trace -f -o vmm.trace -- ./my-vmm
  uiommufd info --iommu vtd:cap=d2008c22260286,ecap=f42 --registers
  uiommufd bench --quick

`uiommufd help COMMAND` or `uiommufd COMMAND --help` for a command's options."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run PROGRAM with /dev/iommu, /dev/vfio/vfio and emulated VFIO devices served by uiommufd.
    #[command(after_help = "\
Examples:
  uiommufd run -- ./my-iommufd-client            the selftest's mock IOMMU, no devices
  uiommufd run --iommu vtd --device dma-engine -- ./dma_copy
  uiommufd run --iommu smmuv3 --device dma-engine -- ./smmu_nested
  uiommufd run --kernel 6.12 --fault-injection -- ./iommufd_fail_nth")]
    Run(run::RunArgs),
    /// `run` with every call on a served descriptor logged as strace would:
    /// the command with its arguments decoded, what the kernel wrote back,
    /// the result or errno and the engine's reason.
    #[command(after_help = TRACE_EXAMPLES)]
    Trace(TraceArgs),
    /// Open /dev/iommu in-process and walk the main path, printing each step.
    #[command(after_help = "Example:\n  uiommufd demo")]
    Demo,
    /// Describe the emulated machine: the IOMMU's registers and what the
    /// Linux driver derives from them, the devices, and each device's
    /// coherency outcome.
    #[command(after_help = "\
Examples:
  uiommufd info                                  a current Intel VT-d unit and one DMA engine
  uiommufd info --iommu vtd:cap=d2008c22260286,ecap=f42 --registers
                                                 the unit whose boot line says so, every register field
  uiommufd info --iommu smmuv3:canwbs=1 --json   an SMMUv3 behind a CANWBS root complex, as JSON")]
    Info(info::InfoArgs),
    /// Measure the hot paths against references taken in the same run.
    #[command(after_help = "\
Examples:
  uiommufd bench --quick                         a few seconds
  uiommufd bench --json > before.json            save a run
  uiommufd bench --compare before.json           each case beside the saved run")]
    Bench {
        /// Fewer iterations and a 1 GiB (not 16 GiB) large map.
        #[arg(long)]
        quick: bool,
        /// Also run the scale cases: 1 M separate mappings, 1 TiB of IOVA,
        /// two threads, two devices (minutes; with --quick, smaller).
        #[arg(long)]
        scale: bool,
        /// Print the run as JSON on stdout (tables on stderr), to save it
        /// for a later --compare.
        #[arg(long)]
        json: bool,
        /// A run saved with --json: print each case's time beside it and
        /// the ratio saved/now.
        #[arg(long, value_name = "FILE")]
        compare: Option<std::path::PathBuf>,
    },
    /// Internal: the part of `bench` that runs under the shim.
    #[command(hide = true)]
    BenchShimChild { iters: u64 },
    /// Show the iommufd state of a program running under `uiommufd run
    /// --inspect`: objects and their references, IOAS areas and what backs
    /// them, HWPTs and the devices and PASIDs on them, pending faults and
    /// events, pinned pages; page tables on request; as text, JSON,
    /// Graphviz dot or an SVG picture.
    #[command(after_help = "\
Examples:
  uiommufd run --inspect -- ./my-vmm &           start it so that it can be inspected
  uiommufd inspect                               the programs that can be inspected
  uiommufd inspect 1234                          what process 1234 holds now
  uiommufd inspect 1234 --iova 0x1000000,0x10000
                                                 and the leaves of every paging HWPT over 64 KiB
  uiommufd inspect 1234 --json                   as JSON
  uiommufd inspect 1234 --svg -o state.svg       as a picture of the objects and the IOVA space
  uiommufd inspect 1234 --dot | dot -Tpng -o graph.png")]
    Inspect(inspect::InspectArgs),
    /// Print a shell completion script for uiommufd.
    #[command(after_help = "\
Examples:
  uiommufd completions bash > /etc/bash_completion.d/uiommufd
  uiommufd completions zsh > ~/.zfunc/_uiommufd
  uiommufd completions fish > ~/.config/fish/completions/uiommufd.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one per command to a directory.
    #[command(after_help = "\
Examples:
  uiommufd man | man -l -                         read it
  uiommufd man trace | man -l -                   the page of `uiommufd trace`
  uiommufd man --dir /usr/local/share/man/man1    uiommufd.1 and uiommufd-COMMAND.1")]
    Man {
        /// The command whose page to print (default: uiommufd's own).
        command: Option<String>,
        /// Write every page (uiommufd.1, uiommufd-run.1, ...) into DIR.
        #[arg(long, value_name = "DIR", conflicts_with = "command")]
        dir: Option<std::path::PathBuf>,
    },
}

/// `uiommufd completions SHELL`.
fn completions(shell: clap_complete::Shell) -> Result<ExitCode, String> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "uiommufd", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// `uiommufd man [COMMAND] [--dir DIR]`.
fn man(command: Option<String>, dir: Option<std::path::PathBuf>) -> Result<ExitCode, String> {
    let top = <Cli as clap::CommandFactory>::command();
    let render = |cmd: clap::Command| -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out).map_err(|e| format!("rendering the manual page: {e}"))?;
        Ok(out)
    };
    // A command's page is named `uiommufd-COMMAND`, as git's are.
    // (clap takes a static name: one short string per page, for the
    // command's lifetime.)
    let page = |sub: &clap::Command| {
        let name: &'static str = Box::leak(format!("uiommufd-{}", sub.get_name()).into_boxed_str());
        sub.clone().name(name)
    };
    match (command, dir) {
        (_, Some(dir)) => {
            let write = |name: String, bytes: Vec<u8>| {
                let path = dir.join(format!("{name}.1"));
                std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
            };
            write("uiommufd".into(), render(top.clone())?)?;
            for sub in top.get_subcommands().filter(|s| s.get_name() != "help") {
                write(format!("uiommufd-{}", sub.get_name()), render(page(sub))?)?;
            }
        }
        (Some(name), None) => {
            let sub = top.find_subcommand(&name).ok_or_else(|| format!("no command {name:?}"))?;
            std::io::Write::write_all(&mut std::io::stdout(), &render(page(sub))?).map_err(|e| e.to_string())?;
        }
        (None, None) => std::io::Write::write_all(&mut std::io::stdout(), &render(top)?).map_err(|e| e.to_string())?,
    }
    Ok(ExitCode::SUCCESS)
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
        Cmd::Bench { quick, scale, json, compare } => bench::bench(bench::BenchArgs { quick, scale, json, compare }),
        Cmd::BenchShimChild { iters } => bench_shim::child(iters),
        Cmd::Inspect(args) => inspect::inspect(args),
        Cmd::Completions { shell } => completions(shell),
        Cmd::Man { command, dir } => man(command, dir),
    };
    match res {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("uiommufd: {msg}");
            ExitCode::from(2)
        }
    }
}
