//! The soak (tests/soak/soak.c) under the shim: worker threads and forked
//! children mapping, copying, attaching, accessing and unmapping while a
//! DMA engine runs FILL descriptors, with RSS, descriptor count and pinned
//! pages sampled once a second: descriptors and pins exactly as at the
//! first sample, RSS levelling off (see the program).
//!
//! The normal test run soaks for `UIOMMUFD_SOAK_SECONDS` (default 20);
//! the long run is the same test with a larger value, e.g.
//! `UIOMMUFD_SOAK_SECONDS=3600 UIOMMUFD_SOAK_THREADS=4 cargo test --release
//! -p uiommufd --test soak -- --nocapture` (docs/TESTING.md).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn soak_keeps_resources_flat() {
    let root = repo_root();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-{}", std::process::id()));
    let built = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Wextra", "-O2", "-g", "-pthread", "-I"])
        .arg(root.join("include"))
        .arg("-I")
        .arg(root.join("examples/c"))
        .arg("-o")
        .arg(&exe)
        .arg(root.join("tests/soak/soak.c"))
        .status();
    match built {
        Ok(s) => assert!(s.success(), "compiling tests/soak/soak.c failed"),
        Err(e) => {
            eprintln!("skipping: no C compiler ({cc}: {e})");
            return;
        }
    }
    let seconds = env_u64("UIOMMUFD_SOAK_SECONDS", 20);
    let threads = env_u64("UIOMMUFD_SOAK_THREADS", 4);
    let shim = Path::new(env!("CARGO_BIN_EXE_uiommufd")).with_file_name("deps").join("libuiommufd_preload.so");
    assert!(shim.is_file(), "{} was not built", shim.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_uiommufd"))
        .arg("run")
        .arg("--preload")
        .arg(&shim)
        .args(["--device", "dma-engine", "--"])
        .arg(&exe)
        .args([seconds.to_string(), threads.to_string()])
        .env_remove("LD_PRELOAD")
        .env_remove("UIOMMUFD_TRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the soak");
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds + 120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the soak hung:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = err.join().unwrap();
    let _ = std::fs::remove_file(&exe);
    eprintln!("{out}{err}");
    assert!(status.success() && out.contains("soak: ok"), "soak failed ({status:?}):\n{out}\n{err}");
}
