//! The main iommufd flows through `uiommufd-api` against the kernel
//! selftest's mock IOMMU, as a transcript on standard output (see
//! `flows.rs`). The same program, unchanged, on:
//!
//! ```sh
//! # the real Linux kernel (built with CONFIG_IOMMUFD_TEST), statically linked:
//! RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p uiommufd-api \
//!     --example selftest_flows --target x86_64-unknown-linux-gnu
//! ../shared/oracle/run.sh target/x86_64-unknown-linux-gnu/release/examples/selftest_flows kernel
//! # the shim (the kernel backend's system calls, served by uiommufd):
//! uiommufd run -- target/release/examples/selftest_flows kernel
//! # the engine in-process:
//! target/release/examples/selftest_flows emulated
//! ```
//!
//! `--vfio PATH` adds a VFIO device cdev flow (bind, attach, detach) on
//! the cdev at `PATH`: under `uiommufd run --device dma-engine`, or with
//! `emulated`, device 0 of an emulated machine (`--iommu SPEC`, default
//! `mock`).
//!
//! The transcript of Linux 7.3.4 is kept in `tests/expected/` and compared
//! with the other two by the tests.

use std::process::ExitCode;

use uiommufd_api::{Backend, Emulated};

mod flows;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut vfio = None;
    let mut iommu = "mock".to_string();
    let mut which = "kernel";
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "kernel" | "emulated" => which = if a == "kernel" { "kernel" } else { "emulated" },
            "--vfio" => vfio = it.next().cloned(),
            "--iommu" => iommu = it.next().cloned().unwrap_or_default(),
            _ => {
                eprintln!("usage: selftest_flows [kernel|emulated] [--vfio PATH] [--iommu SPEC]");
                return ExitCode::from(2);
            }
        }
    }
    let backend = match (which, &vfio) {
        ("kernel", _) => Backend::Kernel,
        (_, None) => Backend::emulated(),
        (_, Some(_)) => match Emulated::with_platform(&iommu, "dma-engine") {
            Ok(e) => Backend::Emulated(e),
            Err(e) => {
                eprintln!("selftest_flows: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let (t, r) = match &vfio {
        None => flows::run(&backend),
        Some(path) => flows::vfio(&backend, path),
    };
    print!("{}", t.text);
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("selftest_flows: stopped: {e}");
            ExitCode::FAILURE
        }
    }
}
