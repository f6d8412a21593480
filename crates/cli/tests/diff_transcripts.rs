//! The differential checker's regression seeds: `tests/diff/iommufd_diff.c`
//! (a seeded random sequence of iommufd and selftest-mock ioctls that prints
//! what each call answered) run under `uiommufd run` must print exactly
//! what it printed inside the real kernels, which
//! `tests/diff/expected/linux-RELEASE.txt` records (the oracle's output for
//! the same seeds; `tests/diff/README.md` says how to regenerate them). One
//! transcript per emulated release: 7.3 by default, 6.12 with `--kernel`.
//!
//! Without a C compiler the test says so on stderr and returns.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The seeds and steps the expected transcripts were made with.
const SEEDS: &str = "1-40";
const STEPS: &str = "150";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

fn c_compiler() -> Option<OsString> {
    let candidates = std::env::var_os("CC").into_iter().chain(["cc", "gcc", "clang"].map(OsString::from));
    candidates.into_iter().find(|cc| {
        Command::new(cc)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The checker, built against our headers (dynamically: the shim is a
/// preload library).
fn checker(tag: &str) -> Option<PathBuf> {
    let cc = c_compiler()?;
    let root = repo_root();
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("iommufd_diff-{}-{tag}", std::process::id()));
    let out = Command::new(cc)
        .args(["-std=gnu11", "-O2", "-Wall", "-I"])
        .arg(root.join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(root.join("tests/diff/iommufd_diff.c"))
        .output()
        .expect("running the C compiler");
    assert!(out.status.success(), "compiling the checker failed:\n{}", String::from_utf8_lossy(&out.stderr));
    Some(exe)
}

fn check(release: &str) {
    let Some(exe) = checker(release) else {
        eprintln!("skipping: no C compiler found ($CC, cc, gcc, clang) to build tests/diff/iommufd_diff.c");
        return;
    };
    let shim = Path::new(env!("CARGO_BIN_EXE_uiommufd")).with_file_name("deps").join("libuiommufd_preload.so");
    let out = Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .args(["run", "--kernel", release, "--preload"])
        .arg(&shim)
        .arg("--")
        .arg(&exe)
        .args([SEEDS, STEPS])
        .env_remove("LD_PRELOAD")
        .env_remove("UIOMMUFD_TRACE")
        .env_remove("UIOMMUFD_KERNEL")
        .output()
        .expect("running the checker");
    let _ = std::fs::remove_file(&exe);
    assert!(out.status.success(), "the checker failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let ours = String::from_utf8(out.stdout).expect("text");
    let path = repo_root().join(format!("tests/diff/expected/linux-{release}.txt"));
    let kernel = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if ours != kernel {
        let first = ours.lines().zip(kernel.lines()).position(|(a, b)| a != b);
        let (at, a, b) = match first {
            Some(i) => (i + 1, ours.lines().nth(i).unwrap_or(""), kernel.lines().nth(i).unwrap_or("")),
            None => (ours.lines().count().min(kernel.lines().count()) + 1, "(end)", "(end)"),
        };
        panic!(
            "Linux {release}: transcript differs from {} at line {at}:\n  ours:   {a}\n  kernel: {b}",
            path.display()
        );
    }
}

#[test]
fn transcripts_match_linux_7_3() {
    check("7.3");
}

#[test]
fn transcripts_match_linux_6_12() {
    check("6.12");
}
