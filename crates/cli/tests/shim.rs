//! The preload shim, end to end: small C programs (`tests/c/*.c` at the
//! repository root, and the example `examples/c/dma_copy.c`) are compiled
//! at test time and run through
//! `uiommufd run -- PROGRAM`, exactly as a user would run an unmodified
//! iommufd client.
//!
//! The C programs check their own expectations (kernel errnos included) with
//! `tests/c/check.h`: a failed check prints `FAIL file:line: ...` on stderr
//! and exits 1; a program that gets to its end prints `PASS <n> checks`.
//!
//! Without a C compiler (`$CC`, `cc`, `gcc` or `clang`) the tests that need
//! one say so on stderr and return.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// No program here needs more than a fraction of a second; a run that takes
/// this long is a hang (a deadlock in the shim, say), reported as a failure.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Environment that would change what the shim or the CLI does; the tests
/// set what they need explicitly.
const SHIM_ENV: [&str; 8] = [
    "LD_PRELOAD",
    "UIOMMUFD_INSPECT",
    "UIOMMUFD_TRACE",
    "UIOMMUFD_TRACE_FILE",
    "UIOMMUFD_TRACE_OPTS",
    "UIOMMUFD_TRACE_ROOT",
    "UIOMMUFD_IOMMU",
    "UIOMMUFD_PRELOAD",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// A directory of our own for this test process, under cargo's temp dir.
/// Directories left by earlier runs whose process is gone are removed.
fn work_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shim-tests");
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let stale = e
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                    .is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists());
                if stale {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the test work directory");
        dir
    })
}

/// A fresh, empty scratch directory named `name`.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = work_dir().join("scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// The C compiler to use: `$CC`, else the first of cc, gcc, clang that runs.
fn c_compiler() -> Option<&'static OsStr> {
    static CC: OnceLock<Option<OsString>> = OnceLock::new();
    CC.get_or_init(|| {
        let candidates = std::env::var_os("CC").into_iter().chain(["cc", "gcc", "clang"].map(OsString::from));
        candidates.into_iter().find(|cc| {
            Command::new(cc)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    })
    .as_deref()
}

/// Compile `<dir>/<name>.c` (`dir` relative to the repository root: the
/// tests' `tests/c`, or `examples/c`) once per test process, with only our
/// `include/` and `dir` on the include path, and return the executable, or
/// `None` if there is no C compiler. A compile error fails the calling test.
fn compile_from(dir: &'static str, name: &'static str) -> Option<PathBuf> {
    type Built = Mutex<HashMap<&'static str, Arc<OnceLock<PathBuf>>>>;
    static BUILT: OnceLock<Built> = OnceLock::new();
    let cc = c_compiler()?;
    let cell = Arc::clone(BUILT.get_or_init(Default::default).lock().unwrap().entry(name).or_default());
    let exe = cell.get_or_init(|| {
        let root = repo_root();
        let src = root.join(dir).join(format!("{name}.c"));
        let exe = work_dir().join("bin").join(name);
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        let out = Command::new(cc)
            .args(["-std=gnu11", "-Wall", "-Wextra", "-O1", "-g", "-pthread", "-I"])
            .arg(root.join("include"))
            .arg("-I")
            .arg(root.join(dir))
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .output()
            .expect("running the C compiler");
        let diagnostics = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "compiling {} failed:\n{diagnostics}", src.display());
        if !diagnostics.trim().is_empty() {
            eprintln!("warnings compiling {}:\n{diagnostics}", src.display());
        }
        exe
    });
    Some(exe.clone())
}

/// The compiled C program `name`, or skip the test (with a note on stderr)
/// when there is no C compiler.
macro_rules! c_program {
    ($name:literal) => {
        c_program!("tests/c", $name)
    };
    ($dir:literal, $name:literal) => {
        match compile_from($dir, $name) {
            Some(exe) => exe,
            None => {
                eprintln!("skipping: no C compiler found ($CC, cc, gcc, clang) to build {}/{}.c", $dir, $name);
                return;
            }
        }
    };
}

/// The shim this `cargo test` built: the cli crate depends on the preload
/// crate, so cargo leaves the cdylib among the binary's dependencies.
///
/// Passed explicitly with `--preload`: left to itself, `uiommufd run`
/// prefers a `libuiommufd_preload.so` next to the binary, which only a
/// build of the preload crate itself refreshes and may be stale.
fn built_shim() -> PathBuf {
    let shim = Path::new(env!("CARGO_BIN_EXE_uiommufd")).with_file_name("deps").join("libuiommufd_preload.so");
    assert!(shim.is_file(), "{} was not built", shim.display());
    shim
}

/// `uiommufd run --preload <built shim> [options] -- program args...`, with
/// a clean environment.
fn uiommufd_run<S: AsRef<OsStr>>(options: &[&str], program: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uiommufd"));
    cmd.arg("run").arg("--preload").arg(built_shim()).args(options).arg("--").args(program);
    for var in SHIM_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// `program args...` run directly, without the shim.
fn without_shim<S: AsRef<OsStr>>(program: &[S]) -> Command {
    let mut cmd = Command::new(program[0].as_ref());
    cmd.args(&program[1..]);
    for var in SHIM_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// What a finished run left behind.
struct Ran {
    what: String,
    /// The pid of the process we started; `uiommufd run` execs the program,
    /// so it is the program's pid as well.
    pid: u32,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// The same, byte for byte (the strings are lossy UTF-8).
    stdout_bytes: Vec<u8>,
    stderr_bytes: Vec<u8>,
}

impl Ran {
    /// Everything about the run, for assertion messages.
    fn report(&self) -> String {
        format!("{}\n  status: {:?}\n  stdout:\n{}\n  stderr:\n{}", self.what, self.status, self.stdout, self.stderr)
    }

    /// The run exited 0 after a C program printed `PASS <n> checks`; the
    /// `PASS` lines (one per process that printed one).
    fn assert_c_passed(&self) -> Vec<&str> {
        let passes: Vec<&str> = self.stdout.lines().filter(|l| l.starts_with("PASS ")).collect();
        assert!(
            self.status.success() && !passes.is_empty() && !self.stderr.contains("FAIL"),
            "C program failed: {}",
            self.report()
        );
        passes
    }
}

/// Run `cmd` to completion (stdin from /dev/null), failing the test if it
/// takes longer than [`RUN_LIMIT`].
fn run(cmd: Command) -> Ran {
    run_within(cmd, RUN_LIMIT)
}

/// [`run`] with a time limit of its own.
fn run_within(mut cmd: Command, limit: Duration) -> Ran {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pid = child.id();
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?} (killed)");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (stdout_bytes, stderr_bytes) = (stdout.join().unwrap(), stderr.join().unwrap());
    Ran {
        what,
        pid,
        status,
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stderr: String::from_utf8_lossy(&stderr_bytes).into_owned(),
        stdout_bytes,
        stderr_bytes,
    }
}

/// Assert two outputs are byte-identical, naming the first differing line.
fn assert_same_bytes(what: &str, without: &[u8], with: &[u8]) {
    if without == with {
        return;
    }
    let (without, with) = (String::from_utf8_lossy(without), String::from_utf8_lossy(with));
    let (a, b): (Vec<&str>, Vec<&str>) = (without.lines().collect(), with.lines().collect());
    let i = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    panic!(
        "{what} differs under the shim at line {}:\n  without: {:?}\n  with:    {:?}\n--- without the shim:\n{without}\n--- with the shim:\n{with}",
        i + 1,
        a.get(i),
        b.get(i)
    );
}

// 1. Transparency.

/// A program that never opens /dev/iommu prints the same results and errnos
/// (open family, close, dup*, fcntl, ioctl, close_range, closefrom on
/// files, directories, pipes, /dev/null, and on real files named `iommu`
/// and `vfio/vfio`) and exits with the same status, with and without the
/// shim.
#[test]
fn program_not_using_iommufd_behaves_identically_under_the_shim() {
    let exe = c_program!("transparency");
    let plain = run(without_shim(&[exe.as_os_str(), scratch_dir("transparency-plain").as_os_str()]));
    let shim = run(uiommufd_run(&[], &[exe.as_os_str(), scratch_dir("transparency-shim").as_os_str()]));

    // The program ran to its end and saw the kernel's answers (it exits 7).
    assert_eq!(plain.status.code(), Some(7), "{}", plain.report());
    for expected in [
        "FIONREAD pipe: 5",
        "ioctl(pipe, TCGETS)                      -1 ENOTTY",
        "ioctl(/dev/null, IOMMU_IOAS_ALLOC)       -1 ENOTTY",
        "read: not an iommu",
        "done",
    ] {
        assert!(plain.stdout.contains(expected), "missing {expected:?}: {}", plain.report());
    }

    assert_eq!(shim.status.code(), plain.status.code(), "{}", shim.report());
    assert_same_bytes("stdout", &plain.stdout_bytes, &shim.stdout_bytes);
    assert_same_bytes("stderr", &plain.stderr_bytes, &shim.stderr_bytes);
    assert!(shim.stderr.is_empty(), "{}", shim.report());
}

/// Without core dumps (the status then says only which signal, and a
/// crash leaves nothing behind).
fn no_core(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the
    // parent; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A program that crashes dies under the shim exactly as without it: the
/// same signal (or exit code) and the same output, for SIGSEGV (a NULL
/// dereference, also in a second thread while the first copies through
/// the shim), SIGBUS, abort() and raise(SIGSEGV), with no handler of its
/// own and with handlers that reset to SIG_DFL and re-raise, return under
/// SA_RESETHAND or sysv_signal, chain to a saved sigaction, read siginfo,
/// siglongjmp out, or ignore the signal. Each run is bounded: a shim that
/// swallows the default action spins for ever. Also: threads racing to
/// make the first call (which installs the shim's handler) leave the
/// program's disposition as it was.
#[test]
fn crashes_end_as_without_the_shim() {
    let exe = c_program!("crash");
    let crashes = ["segv", "bus", "abort", "raise", "thread", "race"];
    let handlers = ["none", "dfl_raise", "resethand", "sysv", "chain", "siginfo", "longjmp", "ignore", "sigset"];
    let limit = Duration::from_secs(20);
    let mut failures = Vec::new();
    for crash in crashes {
        for handler in handlers {
            let args = [exe.as_os_str(), OsStr::new(crash), OsStr::new(handler)];
            let mut plain = without_shim(&args);
            no_core(&mut plain);
            let plain = run_within(plain, limit);
            let mut shim = uiommufd_run(&[], &args);
            no_core(&mut shim);
            let shim = run_within(shim, limit);
            let (p, s) = (
                (plain.status.signal(), plain.status.code(), &plain.stdout),
                (shim.status.signal(), shim.status.code(), &shim.stdout),
            );
            if p != s || !shim.stderr.is_empty() && plain.stderr.is_empty() {
                failures.push(format!(
                    "{crash} {handler}: without the shim {p:?}, with it {s:?}\n  stderr with the shim: {}",
                    shim.stderr
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} cases differ:\n{}", failures.len(), failures.join("\n"));

    // The handler's install, raced by threads making their first call at
    // once, never records the shim's own handler as the program's.
    for _ in 0..20 {
        let mut shim = uiommufd_run(&[], &[exe.as_os_str(), OsStr::new("race"), OsStr::new("none")]);
        no_core(&mut shim);
        let shim = run_within(shim, limit);
        assert_eq!(shim.status.signal(), Some(libc::SIGSEGV), "{}", shim.report());
        assert!(shim.stdout.starts_with("SIGSEGV: SIG_DFL\nSIGBUS: SIG_DFL\n"), "{}", shim.report());
    }
}

/// Ordinary system tools give the same output and status under the shim.
#[test]
fn system_tools_behave_identically_under_the_shim() {
    let cases: &[&[&str]] = &[
        &["sh", "-c", "echo hi | cat"],
        &["ls", "-a", "/"],
        &["sh", "-c", "printf 'b\\na\\nc\\n' | sort -r | tr a-z A-Z; exec 7</dev/null; cat <&7; echo rc=$?"],
        &["cat", "/nonexistent/uiommufd-test"],
        &["sh", "-c", "ls -d /dev/null /nonexistent/x; echo ls=$?; exit 5"],
    ];
    for argv in cases {
        let plain = run(without_shim(argv));
        let shim = run(uiommufd_run(&[], argv));
        assert!(!plain.stdout.is_empty() || !plain.stderr.is_empty(), "{}", plain.report());
        assert_eq!(shim.status.code(), plain.status.code(), "{argv:?}:\n{}\nvs\n{}", plain.report(), shim.report());
        assert_same_bytes(&format!("stdout of {argv:?}"), &plain.stdout_bytes, &shim.stdout_bytes);
        assert_same_bytes(&format!("stderr of {argv:?}"), &plain.stderr_bytes, &shim.stderr_bytes);
    }
    assert_eq!(run(uiommufd_run(&[], &["sh", "-c", "echo hi | cat"])).stdout, "hi\n");
}

// 2. /dev/iommu under the shim.

/// open/fstat, IOAS alloc and destroy, ENOTTY/EFAULT/EINVAL/EOPNOTSUPP, the
/// contexts shared by dup/dup2/dup3/F_DUPFD/F_DUPFD_CLOEXEC and separated by
/// a second open, EBADF after the last close, numbers reused by the kernel
/// after close/close_range/closefrom, ENOTDIR/EEXIST open flags, every open
/// entry point, relative names and /dev/vfio/vfio. See tests/c/iommu_basics.c.
#[test]
fn dev_iommu_basics() {
    let exe = c_program!("iommu_basics");
    run(uiommufd_run(&[], &[&exe])).assert_c_passed();

    // The same program without the shim cannot get past its first open on
    // a machine without /dev/iommu: what passed above was the shim's doing.
    if !Path::new("/dev/iommu").exists() {
        let plain = run(without_shim(&[&exe]));
        assert_eq!(plain.status.code(), Some(1), "{}", plain.report());
        assert!(plain.stderr.contains("errno=ENOENT"), "{}", plain.report());
    }
}

// 3. close-on-exec.

/// Served descriptors marked close-on-exec (O_CLOEXEC, F_DUPFD_CLOEXEC,
/// dup3(O_CLOEXEC), FIOCLEX, F_SETFD, close_range(CLOEXEC)) are gone after
/// exec; the others survive as open descriptors. The exec'd image has a
/// working shim, and the parent's descriptors are unaffected.
#[test]
fn close_on_exec_of_served_descriptors() {
    let exe = c_program!("cloexec");
    let ran = run(uiommufd_run(&[], &[&exe]));
    let passes = ran.assert_c_passed();
    assert_eq!(passes.len(), 2, "the exec'd checker and the parent both pass: {}", ran.report());
}

// 4. Threads.

/// 8 threads each allocate/destroy 1000 IOAS on their own context while
/// duplicating and closing its descriptors, and another thread churns
/// pipes: every ID and every FIONREAD is exactly right, nothing crashes.
#[test]
fn threads_share_the_descriptor_table() {
    let exe = c_program!("threads");
    run(uiommufd_run(&[], &[&exe])).assert_c_passed();
}

/// `close` racing `ioctl` on the same file (tests/c/close_race.c): the
/// shim's `ioctl` uses the file by reference, and a close of a duplicate
/// or of the last descriptor waits for calls in flight; every call
/// succeeds or fails with `EBADF`, the file lives on in another
/// descriptor, and a new open starts a new context.
#[test]
fn close_races_ioctl_on_the_same_file() {
    let exe = c_program!("close_race");
    let ran = run(uiommufd_run(&[], &[&exe]));
    ran.assert_c_passed();
    assert!(ran.stdout.contains("calls before the closes: at least one each"), "{}", ran.report());
}

// 5. fork.

/// A forked child drives its inherited descriptor and exits 0; parent and
/// child share the context, as they share the file in the kernel (the
/// parent's engine runs the child's calls, see tests/c/fork.c). 1000 forks
/// while two other threads issue ioctls on the same context each leave the
/// child's shim and engine usable (no lock inherited in the held state).
#[test]
fn fork_child_uses_inherited_descriptor() {
    let exe = c_program!("fork");
    run(uiommufd_run(&[], &[&exe])).assert_c_passed();
}

/// The kernel's fork semantics for memory (tests/c/fork_shared.c): a child
/// maps its shared buffer into the parent's IOAS through the inherited
/// descriptor; the area is the parent's (IOVA ranges unchanged, unmapped
/// with its length); a domain attached after the child exited cannot pin
/// it (`EFAULT`), one attached while it lives can, and those pins outlive
/// it. Errnos of the child's calls come back exactly; files the child
/// creates get descriptors in the child; `IOMMU_IOAS_MAP_FILE` names the
/// child's own descriptor; a grandchild shares the file too, which outlives
/// the parent's descriptor. Divergences, checked as such: the child's
/// private memory cannot be pinned (`EFAULT`), and inherited descriptors
/// fail with `EIO` once the serving process has exited.
#[test]
fn fork_child_maps_into_the_parents_ioas() {
    let exe = c_program!("fork_shared");
    run(uiommufd_run(&[], &[&exe])).assert_c_passed();
}

// 6. Tracing and the IOMMU model.

/// `uiommufd trace OPTIONS -- program`, with the shim just built.
fn uiommufd_trace<S: AsRef<OsStr>>(options: &[&OsStr], program: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uiommufd"));
    cmd.arg("trace").arg("--preload").arg(built_shim()).args(options).arg("--").args(program);
    for var in SHIM_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// `uiommufd trace` of the scripted client tests/c/trace.c, line by line:
/// every call decoded as strace would (arguments by name with flags and
/// enums, outputs after `=>`, arrays, driver data, errno names with the
/// engine's reason); ioctls on a pipe are not traced; with `-o` nothing
/// goes to stderr; `--no-addresses` makes two runs' traces identical.
#[test]
fn trace_decodes_a_scripted_client_line_by_line() {
    let exe = c_program!("trace");
    let dir = scratch_dir("trace");
    let traced = |name: &str, options: &[&str]| {
        let log = dir.join(name);
        let mut args: Vec<&OsStr> = vec![OsStr::new("--no-addresses"), OsStr::new("-o"), log.as_os_str()];
        args.extend(options.iter().map(OsStr::new));
        let ran = run(uiommufd_trace(&args, &[&exe]));
        ran.assert_c_passed();
        assert!(ran.stderr.is_empty(), "{}", ran.report());
        let fd: i32 = ran
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("fd "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no fd line: {}", ran.report()));
        (fd, std::fs::read_to_string(&log).expect("the trace file"))
    };
    let (fd, text) = traced("all.log", &[]);
    let q = fd + 1;
    let io = format!("{fd}</dev/iommu>");
    let expected = [
        format!("open(\"/dev/iommu\", O_RDWR) = {fd}"),
        format!("ioctl({io}, IOMMU_IOAS_ALLOC, {{size=12, flags=0}} => {{out_ioas_id=1}}) = 0"),
        format!("ioctl({io}, IOMMU_IOAS_ALLOC, {{size=12, flags=0}} => {{out_ioas_id=2}}) = 0"),
        format!("ioctl({io}, IOMMU_DESTROY, {{size=8, id=1}}) = 0"),
        format!("ioctl({io}, IOMMU_DESTROY, {{size=8, id=1}}) = -1 ENOENT (No such file or directory) [no object with this ID]"),
        format!("ioctl({io}, _IOC(_IOC_NONE, 0x3b, 0x7f, 0), 0) = -1 ENOTTY (Inappropriate ioctl for device) [unknown ioctl]"),
        format!("ioctl({io}, IOMMU_IOAS_ALLOC, NULL) = -1 EFAULT (Bad address) [reading the command size]"),
        format!("ioctl({io}, IOMMU_TEST_CMD, {{size=72, op=MOCK_DOMAIN, id=2}} => {{out_stdev_id=1, out_hwpt_id=4, out_idev_id=3}}) = 0"),
        format!("ioctl({io}, IOMMU_IOAS_MAP, {{size=40, flags=FIXED_IOVA|WRITEABLE|READABLE, ioas_id=2, user_va=<ptr>, length=0x2000, iova=0x1000000}}) = 0"),
        format!("ioctl({io}, IOMMU_IOAS_MAP, {{size=40, flags=READABLE, ioas_id=2, user_va=<ptr>, length=0x2000, iova=0}} => {{iova=0x1002000}}) = 0"),
        format!("ioctl({io}, IOMMU_IOAS_IOVA_RANGES, {{size=32, ioas_id=2, num_iovas=0, allowed_iovas=<ptr>}} => {{num_iovas=1, out_iova_alignment=0x800}}) = -1 EMSGSIZE (Message too long) [the range array is too small]"),
        format!("ioctl({io}, IOMMU_IOAS_IOVA_RANGES, {{size=32, ioas_id=2, num_iovas=2, allowed_iovas=<ptr>}} => {{num_iovas=1, allowed_iovas=[{{start=0x1000000, last=0x7fffffff}}], out_iova_alignment=0x800}}) = 0"),
        format!("ioctl({io}, IOMMU_OPTION, {{size=24, option_id=RLIMIT_MODE, op=GET, object_id=0, val64=0}}) = 0"),
        format!("ioctl({io}, IOMMU_GET_HW_INFO, {{size=40, flags=0, dev_id=3, data_len=8, data_uptr=<ptr>}} => {{data={{flags=0, test_reg=0xdeadbeef}}, out_data_type=SELFTEST, out_max_pasid_log2=0, out_capabilities=DIRTY_TRACKING|PCI_ATS_NOT_SUPPORTED}}) = 0"),
        format!("ioctl({io}, IOMMU_HWPT_ALLOC, {{size=48, flags=NEST_PARENT, dev_id=3, pt_id=2, data_type=NONE, data_len=0, data_uptr=NULL}} => {{out_hwpt_id=5}}) = 0"),
        format!("ioctl({io}, IOMMU_FAULT_QUEUE_ALLOC, {{size=16, flags=0}} => {{out_fault_id=6, out_fault_fd={q}}}) = 0"),
        format!("ioctl({io}, IOMMU_HWPT_ALLOC, {{size=48, flags=FAULT_ID_VALID, dev_id=3, pt_id=5, data_type=SELFTEST, data_len=8, data_uptr={{iotlb=0xbadbeef, pagetable_type=DEFAULT}}, fault_id=6}} => {{out_hwpt_id=7}}) = 0"),
        format!("ioctl({io}, IOMMU_HWPT_INVALIDATE, {{size=32, hwpt_id=7, data_uptr=[{{flags=0, iotlb_id=1}}, {{flags=ALL, iotlb_id=0}}], data_type=SELFTEST, entry_len=8, entry_num=2}}) = 0"),
        format!("write({q}<anon_inode:[iommufd-pgfault]>, [{{cookie=7, code=SUCCESS}}], 8) = -1 EINVAL (Invalid argument) [bad response code or unknown cookie]"),
        format!("poll([{{fd={q}<anon_inode:[iommufd-pgfault]>, events=POLLIN}}], 1, 0) = 0"),
        format!("close({q}<anon_inode:[iommufd-pgfault]>) = 0"),
        format!("close({io}) = 0"),
    ];
    let lines: Vec<&str> = text.lines().collect();
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(lines.get(i).copied(), Some(want.as_str()), "line {} of the trace:\n{text}", i + 1);
    }
    assert_eq!(lines.len(), expected.len(), "{text}");
    // A second run gives the same trace.
    assert_eq!(traced("again.log", &[]).1, text);

    // -e trace=NAMES, classes, -Z: the lines of those calls only.
    let only = |options: &[&str], want: &[usize]| {
        let (_, t) = traced("filtered.log", options);
        let want: Vec<&str> = want.iter().map(|&i| expected[i].as_str()).collect();
        assert_eq!(t.lines().collect::<Vec<_>>(), want, "{options:?}");
    };
    only(&["-e", "trace=IOMMU_IOAS_MAP,iommu_destroy"], &[3, 4, 8, 9]);
    only(&["-e", "trace=hwpt,fault"], &[14, 15, 16, 17, 18, 19, 20]);
    only(&["-e", "trace=!ioas"], &[0, 3, 4, 5, 7, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]);
    only(&["-Z"], &[4, 5, 6, 10, 18]);
    only(&["-e", "trace=desc", "-e", "status=successful"], &[0, 20, 21]);

    // -tt: the time of day with microseconds first; -T: the time spent last.
    let (_, timed) = traced("timed.log", &["-tt", "-T"]);
    for line in timed.lines() {
        let b = line.as_bytes();
        let stamp = b.len() > 16 && b[2] == b':' && b[5] == b':' && b[8] == b'.' && b[15] == b' ';
        let spent = line.rsplit_once(" <").is_some_and(|(_, t)| t.ends_with('>') && t.contains('.'));
        assert!(stamp && spent, "{line:?}");
    }
    assert_eq!(timed.lines().count(), expected.len());

    // The environment alone (no options: everything, every thread).
    let mut cmd = uiommufd_run(&[], &[&exe]);
    cmd.env("UIOMMUFD_TRACE", "1");
    let by_env = run(cmd);
    by_env.assert_c_passed();
    assert_eq!(by_env.stderr.lines().filter(|l| l.contains("ioctl(")).count(), 17, "{}", by_env.report());
    // And nothing at all without tracing.
    let quiet = run(uiommufd_run(&[], &[&exe]));
    quiet.assert_c_passed();
    assert!(quiet.stderr.is_empty(), "{}", quiet.report());
    // Unknown names are refused before anything runs.
    let bad = run(uiommufd_trace(&[OsStr::new("-e"), OsStr::new("trace=IOMMU_NOPE")], &[&exe]));
    assert_eq!(bad.status.code(), Some(2), "{}", bad.report());
}

/// strace's `-f`: without it only the program's first thread is traced;
/// with it the children and threads too, each of their lines prefixed
/// with `[pid TID]`; `run --trace` follows them as well.
#[test]
fn trace_follows_forks_and_threads_with_f() {
    let exe = c_program!("fork");
    let main_only = run(uiommufd_trace(&[], &[&exe]));
    main_only.assert_c_passed();
    assert!(main_only.stderr.lines().all(|l| !l.starts_with("[pid")), "{}", main_only.report());
    assert!(main_only.stderr.contains("ioctl("), "{}", main_only.report());
    let follow = run(uiommufd_trace(&[OsStr::new("-f")], &[&exe]));
    follow.assert_c_passed();
    let prefixed: Vec<&str> = follow.stderr.lines().filter(|l| l.starts_with("[pid ")).collect();
    assert!(!prefixed.is_empty(), "{}", follow.report());
    // Lines of other processes and threads name their thread, and the
    // initial thread's have no prefix.
    let pids: std::collections::BTreeSet<&str> =
        prefixed.iter().filter_map(|l| l.strip_prefix("[pid ")?.split(']').next()).collect();
    assert!(pids.len() >= 2, "{pids:?}");
    assert!(!pids.iter().any(|p| p.trim() == follow.pid.to_string()), "{pids:?}");
    assert!(follow.stderr.lines().count() > main_only.stderr.lines().count() + prefixed.len() / 2);
    let legacy = run(uiommufd_run(&["--trace"], &[&exe]));
    legacy.assert_c_passed();
    assert!(legacy.stderr.lines().any(|l| l.starts_with("[pid ")), "{}", legacy.report());
}

/// tests/c/inspect_target.c under `uiommufd run OPTIONS`, once it has
/// built its state: the running program, its stdout after the ready line,
/// and the IDs it printed (pid, IOAS, mock HWPT, device, nesting parent,
/// nested HWPT, fault queue).
fn inspect_target(
    options: &[&str],
) -> Option<(std::process::Child, std::io::BufReader<std::process::ChildStdout>, Vec<u32>)> {
    use std::io::BufRead;
    let Some(exe) = compile_from("tests/c", "inspect_target") else {
        eprintln!("skipping: no C compiler found to build tests/c/inspect_target.c");
        return None;
    };
    let mut child = uiommufd_run(options, &[&exe])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the program");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    out.read_line(&mut ready).unwrap();
    let ids: Vec<u32> = ready.split_whitespace().skip(1).filter_map(|w| w.parse().ok()).collect();
    assert_eq!(ids.len(), 7, "{ready:?}");
    Some((child, out, ids))
}

/// Let the program finish (it exits when its stdin closes) and check it
/// passed.
fn finish_target(mut child: std::process::Child, mut out: std::io::BufReader<std::process::ChildStdout>) {
    drop(child.stdin.take());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success() && rest.contains("PASS"), "{status:?} {rest}");
}

/// `uiommufd inspect PID ARGS`: its stdout, or its stderr as the error.
fn inspect(pid: u32, args: &[&str]) -> Result<String, String> {
    let o =
        Command::new(env!("CARGO_BIN_EXE_uiommufd")).arg("inspect").arg(pid.to_string()).args(args).output().unwrap();
    if o.status.success() {
        Ok(String::from_utf8(o.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// `uiommufd inspect` without a PID.
fn inspect_all() -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_uiommufd")).arg("inspect").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The sockets in the descriptor table of process `pid` (what the program
/// would find walking /proc/self/fd).
fn sockets_of(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.display().to_string())
        .filter(|l| l.starts_with("socket:"))
        .collect()
}

/// `uiommufd inspect PID` of a program started with `run --inspect`
/// (tests/c/inspect_target.c, which keeps its state until its stdin
/// closes): its objects with their users and references, the IOAS areas
/// and what backs them, the device's attachment, the fault waiting to be
/// read, the pinned pages, a HWPT's leaves; the same as JSON, dot and SVG;
/// the socket is owner-only, none of its descriptors is in the program's
/// table, and it is gone after the program.
#[test]
fn inspect_shows_a_running_programs_state() {
    use std::os::unix::fs::PermissionsExt;
    let Some((child, out, ids)) = inspect_target(&["--inspect"]) else { return };
    let [pid, ioas, _mock_hwpt, idev, parent, nested, fault] = ids[..] else { unreachable!() };
    // SAFETY: sysconf has no preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let span = format!("0x1000000,{:#x}", 4 * ps);
    let text = inspect(pid, &["--iova", &span, "--hwpt", &parent.to_string()]).unwrap();
    for want in [
        format!("process {pid}: 6 pages pinned for DMA"),
        format!("  IOAS {ioas} (users 1): alignment=0x800 ranges=0x1000000-0x7fffffff domains=1 hwpts={parent}"),
        format!("    area [0x1000000, {:#x}] rwc 4 pages, 4 pinned (charged: ", 0x100_0000 + 4 * ps - 1),
        format!("    area [0x4000000, {:#x}] rc 2 pages, 2 pinned (charged: ", 0x400_0000 + 2 * ps - 1),
        format!("  device {idev} (users 1): name=mock0 enforced_coherent=0 vdevice=-\n    RID -> HWPT {nested}\n"),
        format!("  HWPT (paging) {parent} (users 1): ioas={ioas} auto=0 nest_parent=1"),
        format!(
            "  HWPT (nested) {nested} (users 1): parent={parent} viommu=- fault={fault}\n    used by device {idev} RID"
        ),
        format!(
            "  fault queue {fault} (users 2): to_read=1 awaiting_response=0\n    pending: 1 to read, 0 awaiting a \
             response\n    to read: device {idev} PASID 1 group 1 addr 0x1000 perm r (last of its group)\n"
        ),
        "iommufd context 2 (Linux 7.3, RLIMIT_MODE user, VFIO compat IOAS none): 0 objects".into(),
        format!(
            "page table of HWPT {parent} (context 1), IOVA [0x1000000, {:#x}]:\n  IOVA 0x1000000 +0x800 -> PA 0x",
            0x100_0000 + 4 * ps - 1
        ),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
    // Charged to the user's counter unless we may lock memory at will.
    let charged = if text.contains("not charged (CAP_IPC_LOCK) 6") { "none" } else { "user" };
    assert!(text.contains(&format!("{pid}: 6 pages pinned for DMA; charged to RLIMIT_MEMLOCK: user ")), "{text}");
    assert_eq!(text.matches(&format!(" pinned (charged: {charged}) <- user:0x")).count(), 2, "{text}");
    // The mock's 2 KiB leaves, each mapped to the next 2 KiB of a frame.
    assert_eq!(text.matches(" +0x800 -> PA ").count() as u64, 4 * ps / 0x800, "{text}");
    // Without --hwpt: every paging HWPT (the parent only: the mock
    // domain's automatic HWPT went when the device moved to the nested one).
    let all = inspect(pid, &["--iova", "0x4000000"]).unwrap();
    assert_eq!(all.matches("page table of HWPT ").count(), 1, "{all}");
    assert!(all.contains(&format!("page table of HWPT {parent} (context 1)")), "{all}");
    assert!(!all.contains("nothing mapped"), "{all}");
    let gap = inspect(pid, &["--iova", "0x2000000,0x1000", "--hwpt", &format!("1:{parent}")]).unwrap();
    assert!(gap.contains("  (nothing mapped)\n"), "{gap}");
    let guest = inspect(pid, &["--iova", "0x1000", "--hwpt", &nested.to_string()]).unwrap();
    assert!(guest.contains(&format!("  HWPT {nested} is nested: its stage 1 is the guest's tables")), "{guest}");
    let json = inspect(pid, &["--json", "--iova", "0x1000000", "--hwpt", &parent.to_string()]).unwrap();
    for want in [
        format!("{{\"context\": 1, \"id\": {ioas}, \"kind\": \"ioas\", \"users\": 1, \"fields\": {{\"alignment\": \"0x800\", \"ranges\": [\"0x1000000-0x7fffffff\"], \"domains\": 1, \"hwpts\": [{parent}]}}}}"),
        format!("{{\"context\": 1, \"ioas\": {ioas}, \"iova\": 16777216, \"last\": {}, \"prot\": \"rwc\", \"pages\": 4", 0x100_0000 + 4 * ps - 1),
        format!("{{\"context\": 1, \"device\": {idev}, \"pasid\": null, \"hwpt\": {nested}}}"),
        format!("{{\"context\": 1, \"queue\": {fault}, \"device\": {idev}, \"cookie\": null, \"flags\": 3, \"pasid\": 1, \"grpid\": 1, \"perm\": 1, \"addr\": 4096}}"),
        format!("\"page_tables\": [{{\"context\": 1, \"hwpt\": {parent}, \"iova\": 16777216, \"length\": 4096, \"leaves\": [{{\"iova\": 16777216, \"size\": 2048,"),
    ] {
        assert!(json.contains(&want), "missing {want:?} in:\n{json}");
    }
    assert!(json.starts_with(&format!("{{\"pid\": {pid}, \"pinned\": {{\"pages\": 6,")), "{json}");
    let dot = inspect(pid, &["--dot"]).unwrap();
    assert!(dot.contains(&format!("c1_{nested} -> c1_{parent} [label=\"parent\"];")), "{dot}");
    assert!(dot.contains(&format!("c1_{idev} -> c1_{nested} [label=\"RID\", style=bold];")), "{dot}");
    let svg = inspect(pid, &["--svg"]).unwrap();
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{svg}");
    assert_eq!(svg.matches("class=\"area\"").count(), 2, "{svg}");
    assert!(svg.contains(&format!("IOAS {ioas} IOVA space")), "{svg}");
    assert!(inspect(pid, &["--iova", "0x1000", "--hwpt", "999"]).unwrap_err().contains("no HWPT 999"));

    // Without a PID: the programs that can be inspected, this one among them.
    let listed = inspect_all();
    assert!(listed.lines().any(|l| l.starts_with(&format!("{pid} ")) && l.ends_with("inspect_target")), "{listed}");
    // Owner-only.
    let dir = uiommufd_dispatch::inspect::socket_dir();
    let sock = uiommufd_dispatch::inspect::socket_path(&dir, pid);
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
    // Neither the listening socket nor a connection being served is a
    // descriptor of the program's: a client that connected and says
    // nothing yet holds its connection open on the shim's side.
    assert_eq!(sockets_of(pid), Vec::<String>::new());
    let idle = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(sockets_of(pid), Vec::<String>::new());
    drop(idle);

    finish_target(child, out);
    assert!(!sock.exists(), "{} left behind", sock.display());
    // A process without a socket is an error that says why.
    assert!(inspect(std::process::id(), &[]).unwrap_err().contains("--inspect"));
}

/// After `fork`: the child has no socket until its own first open of a
/// served node, then one of its own showing only its own iommufd (the
/// descriptors it inherited are the parent's engine's); the parent's keeps
/// answering, also while its program forks again and again; each child's
/// socket is gone when it exits.
#[test]
fn inspect_after_fork() {
    use std::io::{BufRead, Write};
    let Some((mut child, mut out, ids)) = inspect_target(&["--inspect"]) else { return };
    let [pid, ioas, ..] = ids[..] else { unreachable!() };
    let dir = uiommufd_dispatch::inspect::socket_dir();
    let mut stdin = child.stdin.take().unwrap();
    let mut kids = Vec::new();
    for round in 0..4 {
        // The parent is asked while it forks.
        let asking = std::thread::spawn(move || (0..5).map(|_| inspect(pid, &[])).collect::<Vec<_>>());
        stdin.write_all(b"fork\n").unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let w: Vec<u32> = line.split_whitespace().skip(1).filter_map(|w| w.parse().ok()).collect();
        assert!(line.starts_with("child ") && w.len() == 2, "{line:?}");
        let (kid, kid_ioas) = (w[0], w[1]);
        for answer in asking.join().unwrap() {
            let text = answer.unwrap();
            assert!(text.contains(&format!("  IOAS {ioas} (users 1)")), "round {round}: {text}");
        }
        let text = inspect(kid, &["--iova", "0"]).unwrap();
        assert!(text.starts_with(&format!("process {kid}: ")), "{text}");
        assert!(text.contains(&format!("  IOAS {kid_ioas} (users 0)")), "{text}");
        assert_eq!(text.matches("iommufd context ").count(), 1, "only the child's own iommufd: {text}");
        assert_eq!(text.matches("    area ").count(), 1, "{text}");
        kids.push(uiommufd_dispatch::inspect::socket_path(&dir, kid));
    }
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success() && rest.contains("PASS"), "{status:?} {rest}");
    for k in kids {
        assert!(!k.exists(), "{} left behind", k.display());
    }
}

/// A program killed with its control socket open leaves the socket (its
/// exit handlers never run); the next listing removes it.
#[test]
fn a_killed_programs_socket_is_removed_by_the_listing() {
    let Some((mut child, _out, ids)) = inspect_target(&["--inspect"]) else { return };
    let pid = ids[0];
    assert_eq!(child.id(), pid, "uiommufd run execs the program");
    let sock = uiommufd_dispatch::inspect::socket_path(&uiommufd_dispatch::inspect::socket_dir(), pid);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(sock.exists());
    assert!(!inspect_all().lines().any(|l| l.starts_with(&format!("{pid} "))));
    assert!(!sock.exists(), "{} left behind", sock.display());
}

/// Without `--inspect` the shim opens no control socket.
#[test]
fn no_control_socket_without_inspect() {
    let Some((child, out, ids)) = inspect_target(&[]) else { return };
    let pid = ids[0];
    let sock = uiommufd_dispatch::inspect::socket_path(&uiommufd_dispatch::inspect::socket_dir(), pid);
    assert!(!sock.exists(), "{}", sock.display());
    assert_eq!(std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count(), 1, "a thread of ours");
    assert!(!inspect_all().lines().any(|l| l.starts_with(&format!("{pid} "))));
    let why = inspect(pid, &[]).unwrap_err();
    assert!(why.contains("has no control socket") && why.contains("uiommufd run --inspect"), "{why}");
    finish_target(child, out);
}

/// An `UIOMMUFD_IOMMU` that names no model makes opening a served node fail
/// with ENODEV (and the trace says why); other files are unaffected;
/// `mock` and the empty string select the mock IOMMU.
///
/// `uiommufd run` sets the variable from `--iommu` (default `mock`), so the
/// program sets it itself through env(1), as a user program could.
#[test]
fn unknown_iommu_model_makes_open_fail_enodev() {
    let exe = c_program!("open_expect");
    let under_model = |model: &str, path: &OsStr, expect: &str| {
        let var = format!("UIOMMUFD_IOMMU={model}");
        run(uiommufd_run(&[], &[OsStr::new("env"), OsStr::new(&var), exe.as_os_str(), path, OsStr::new(expect)]))
    };
    under_model("bogus", OsStr::new("/dev/iommu"), "ENODEV").assert_c_passed();
    under_model("bogus", OsStr::new("/dev/vfio/vfio"), "ENODEV").assert_c_passed();
    let file = scratch_dir("model").join("iommu");
    std::fs::write(&file, b"a regular file").unwrap();
    under_model("bogus", file.as_os_str(), "plain").assert_c_passed();
    under_model("mock", OsStr::new("/dev/iommu"), "iommufd").assert_c_passed();
    under_model("", OsStr::new("/dev/iommu"), "iommufd").assert_c_passed();

    let traced = run(uiommufd_run(
        &["--trace"],
        &[
            OsStr::new("env"),
            OsStr::new("UIOMMUFD_IOMMU=bogus"),
            exe.as_os_str(),
            OsStr::new("/dev/iommu"),
            OsStr::new("ENODEV"),
        ],
    ));
    traced.assert_c_passed();
    let why = "open(\"/dev/iommu\", O_RDWR) = -1 ENODEV (No such device) [unknown IOMMU model `bogus`";
    assert!(traced.stderr.contains(why), "{}", traced.report());
}

// 7. The program's exit status, and failures of `uiommufd run` itself.

/// Without `--preload`, `uiommufd run` finds a shim by itself and preloads
/// it.
#[test]
fn run_finds_the_shim_by_itself() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uiommufd"));
    cmd.args(["run", "--", "sh", "-c", "echo \"$LD_PRELOAD\""]);
    for var in SHIM_ENV {
        cmd.env_remove(var);
    }
    let ran = run(cmd);
    assert!(ran.status.success(), "{}", ran.report());
    let preload = ran.stdout.trim_end();
    assert!(preload.ends_with("/libuiommufd_preload.so"), "{}", ran.report());
    assert!(Path::new(preload).is_file(), "{}", ran.report());
}

/// The program's exit status, or the signal that killed it, is what
/// `uiommufd run` reports.
#[test]
fn exit_status_is_passed_through() {
    for code in [0, 1, 3, 42, 255] {
        let ran = run(uiommufd_run(&[], &["sh", "-c", &format!("exit {code}")]));
        assert_eq!(ran.status.code(), Some(code), "{}", ran.report());
    }
    let killed = run(uiommufd_run(&[], &["sh", "-c", "kill -TERM $$"]));
    assert_eq!(killed.status.signal(), Some(15), "{}", killed.report());
}

/// A program that cannot be run, a missing program argument and a missing
/// shim each give a clear message and a non-zero status (and run nothing).
#[test]
fn run_failures_are_reported() {
    let missing = "/nonexistent/uiommufd-no-such-program";
    let ran = run(uiommufd_run(&[], &[missing, "arg"]));
    assert!(!ran.status.success() && ran.status.code().is_some(), "{}", ran.report());
    assert!(ran.stderr.contains(&format!("cannot run {missing}")), "{}", ran.report());
    assert!(ran.stderr.contains("No such file or directory"), "{}", ran.report());
    assert!(ran.stdout.is_empty(), "{}", ran.report());

    let not_on_path = run(uiommufd_run(&[], &["uiommufd-no-such-program-on-path"]));
    assert!(!not_on_path.status.success(), "{}", not_on_path.report());
    assert!(not_on_path.stderr.contains("cannot run uiommufd-no-such-program-on-path"), "{}", not_on_path.report());

    let not_executable = scratch_dir("run-failures").join("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\necho ran\n").unwrap();
    let ran = run(uiommufd_run(&[], &[&not_executable]));
    assert!(!ran.status.success(), "{}", ran.report());
    assert!(ran.stderr.contains("Permission denied"), "{}", ran.report());
    assert!(ran.stdout.is_empty(), "{}", ran.report());

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uiommufd"));
    cmd.arg("run");
    let no_program = run(cmd);
    assert!(!no_program.status.success(), "{}", no_program.report());
    assert!(no_program.stderr.contains("PROGRAM"), "{}", no_program.report());

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uiommufd"));
    cmd.args(["run", "--", "sh", "-c", "echo ran"]).env("UIOMMUFD_PRELOAD", "/nonexistent/libuiommufd_preload.so");
    let no_shim = run(cmd);
    assert!(!no_shim.status.success(), "{}", no_shim.report());
    assert!(no_shim.stderr.contains("/nonexistent/libuiommufd_preload.so"), "{}", no_shim.report());
    assert!(no_shim.stdout.is_empty(), "{}", no_shim.report());
}

// 8. Pinned memory and signals.

/// RLIMIT_MEMLOCK changed with setrlimit and prlimit by a program without
/// CAP_IPC_LOCK holds from the next map on (tests/c/memlock.c, which passes
/// on the 7.3 oracle): the engine caches the limit, and the shim's hooks of
/// both calls must drop the cache.
#[test]
fn memlock_limit_changes_hold_from_the_next_map() {
    let exe = c_program!("memlock");
    run(uiommufd_run(&[], &[&exe])).assert_c_passed();
}

/// Pages pinned by an IOMMU domain outlive munmap, MADV_DONTNEED and
/// mremap of the program's mapping, keeping their contents for the device;
/// the program's own SIGSEGV handler still gets the program's faults while
/// the engine's bad-pointer faults become EFAULT.
#[test]
fn pinned_pages_outlive_the_programs_mapping() {
    let exe = c_program!("pinned_memory");
    run(uiommufd_run(&[], &[&exe])).assert_c_passed();
}

// 9. Emulated VFIO devices.

/// A traced run names every command it made (none shown as a number,
/// strace's `_IOC(...)` or hex), and made some.
fn every_call_decoded(ran: &Ran) {
    let calls: Vec<&str> = ran.stderr.lines().filter(|l| l.contains("ioctl(")).collect();
    assert!(calls.len() > 5, "{}", ran.report());
    for l in calls {
        assert!(!l.contains("_IOC(") && !l.contains(">, 0x"), "not decoded: {l}");
    }
}

/// The C example (examples/c/dma_copy.c, kernel uAPI headers only) finds
/// its device's cdev through sysfs as QEMU does, binds it to an iommufd,
/// maps its own buffer, drives the DMA engine through the mmap'd BAR0 and
/// an MSI-X eventfd, and checks the copies in its own memory: under the
/// mock IOMMU, under VT-d, and as the second of two devices.
#[test]
fn dma_copy_example_runs_unmodified() {
    let exe = c_program!("examples/c", "dma_copy");
    let ok = "OK: the device's DMA landed in this program's memory";
    for (options, args) in [
        (&["--device", "dma-engine"][..], &[][..]),
        (&["--iommu", "vtd", "--device", "dma-engine"][..], &[][..]),
        (
            &["--iommu", "vtd:sc=0,pasid=8", "--device", "dma-engine:pasid=0", "--device", "dma-engine"][..],
            &["0000:00:05.0"][..],
        ),
    ] {
        let mut argv = vec![exe.as_os_str()];
        argv.extend(args.iter().map(OsStr::new));
        let ran = run(uiommufd_run(options, &argv));
        assert!(ran.status.success() && ran.stdout.contains(ok), "{options:?}: {}", ran.report());
        assert!(ran.stdout.contains("1 interrupt(s)"), "{}", ran.report());
        assert!(ran.stderr.is_empty(), "{}", ran.report());
    }
    // Under --trace the run says which devices exist, and every call on
    // the device's descriptor is named.
    let ran = run(uiommufd_run(&["--trace", "--device", "dma-engine"], &[&exe]));
    assert!(ran.status.success(), "{}", ran.report());
    for want in [
        "uiommufd: /dev/vfio/devices/vfio0 (511:0): dma-engine at 0000:00:04.0, IOMMU group 0, behind the mock IOMMU",
        "</dev/vfio/devices/vfio0>, VFIO_DEVICE_BIND_IOMMUFD, {argsz=16, flags=0, iommufd=",
        "} => {out_devid=1}) = 0",
        "VFIO_DEVICE_SET_IRQS, {argsz=24, flags=DATA_EVENTFD|ACTION_TRIGGER, index=MSIX, start=0, count=1, data=[",
        "mmap(NULL, 0x1000, PROT_READ|PROT_WRITE, MAP_SHARED, ",
        "</dev/vfio/devices/vfio0>, BAR0+0) = 0x",
    ] {
        assert!(ran.stderr.contains(want), "missing {want:?}: {}", ran.report());
    }
    every_call_decoded(&ran);
    // Without the device there is nothing to find.
    let none = run(uiommufd_run(&[], &[&exe]));
    assert_eq!(none.status.code(), Some(2), "{}", none.report());
    assert!(none.stderr.contains("vfio-dev"), "{}", none.report());
}

/// stat, lstat, __xstat, fstatat, statx and fstat of the cdevs, the sysfs
/// `dev` files, the class links and the IOMMU group links all tell the same
/// story; /dev/iommu and /dev/vfio/vfio are the kernel's misc numbers.
#[test]
fn vfio_nodes_and_sysfs_agree() {
    let exe = c_program!("vfio_sysfs");
    let ran = run(uiommufd_run(
        &["--device", "dma-engine", "--device", "dma-engine:pasid=0,bdf=0000:01:00.0"],
        &[
            exe.as_os_str(),
            OsStr::new("0000:00:04.0"),
            OsStr::new("0"),
            OsStr::new("0"),
            OsStr::new("0000:01:00.0"),
            OsStr::new("1"),
            OsStr::new("1"),
        ],
    ));
    ran.assert_c_passed();
    // The stand-in sysfs is gone after the run.
    let stand_in = std::env::temp_dir().join(format!("uiommufd-sysfs-{}", ran.pid));
    assert!(!stand_in.exists(), "{} was left behind", stand_in.display());
}

/// The kernel's errnos on a device cdev: before bind, bad binds, attach and
/// detach forms, region offsets, mmap, SET_IRQS validation, and the device
/// object's life.
#[test]
fn vfio_device_errnos() {
    let exe = c_program!("vfio_negative");
    run(uiommufd_run(&["--device", "dma-engine"], &[&exe])).assert_c_passed();
}

/// Every libc read and write entry point on served descriptors (issue
/// 10): the fortified `__read_chk`/`__pread_chk`/`__pread64_chk`, the
/// vector calls and their 64 and v2 forms, lseek, on a VFIO device (config
/// space, BAR0 positioned and at the file position), a fault queue and a
/// vEVENTQ, bytes checked, with the kernel's errnos.
#[test]
fn io_family_on_served_descriptors() {
    let exe = c_program!("io_family");
    run(uiommufd_run(&["--device", "dma-engine"], &[&exe])).assert_c_passed();
}

/// A fault queue's read and write at the edges, as Linux 7.3.4 answers
/// them (tests/c/fault_read.c passes on the oracle): a group whose
/// copy-out faults goes back to the queue, counts above 1 MiB work,
/// cookies are the lowest free, a response batch stops at an unreadable
/// record.
#[test]
fn fault_queue_read_edges() {
    let exe = c_program!("fault_read");
    run(uiommufd_run(&[], &[&exe])).assert_c_passed();
}

/// IOMMU_GET_HW_INFO with data_len near 4 GiB under a 1 GiB address-space
/// limit: the tail is cleared in place (EFAULT at the first unwritable
/// page, the bytes before it zero), never allocated (which aborted the
/// program). The same checks pass on Linux 7.3.4.
#[test]
fn hw_info_clears_a_huge_tail_in_place() {
    let exe = c_program!("hw_info_tail");
    run(uiommufd_run(&[], &[&exe])).assert_c_passed();
}

/// The fork protocol covers every lock (tests/c/fork_locks.c): a child
/// never inherits the frame registry held by another thread's munmap or
/// madvise hook; a stopped child, in the middle of a call its parent's
/// fork server runs, never blocks the parent's fork; the shim's prepare
/// and child handlers allocate nothing (counted by the program's own
/// malloc).
#[test]
fn fork_covers_every_lock_and_never_waits_for_a_child() {
    let exe = c_program!("fork_locks");
    run(uiommufd_run(&[], &[&exe])).assert_c_passed();
}

/// Served descriptors across execve, the libvirt pattern
/// (tests/c/exec_inherit.c): an object-less /dev/iommu and an unbound
/// VFIO device cdev work in the new image, however it was started (fork +
/// execv, fork + execl, posix_spawn, /bin/sh's exec); a close-on-exec one
/// is gone; one whose state cannot follow fails with EIO, not ENOTTY. The
/// same three kinds passed with SCM_RIGHTS to another process arrive the
/// same way.
#[test]
fn served_descriptors_survive_exec() {
    let exe = c_program!("exec_inherit");
    run(uiommufd_run(&["--device", "dma-engine"], &[&exe])).assert_c_passed();
}

/// Descriptor hygiene, as on the kernel (tests/c/fd_hygiene.c passes on
/// Linux 7.3.4): numbers of a sequence of opens, queue allocations, dups
/// and closes (a queue costs exactly one descriptor); closefrom,
/// close_range and a /proc/self/fd walk from 3 up leave the shim's own
/// descriptors working; dup2 over a served descriptor; eight threads
/// opening and closing /dev/iommu leak nothing; a vfork child's dup2 and
/// close stay its own; signals during served calls give no EINTR.
#[test]
fn descriptors_as_on_the_kernel() {
    let exe = c_program!("fd_hygiene");
    run(uiommufd_run(&[], &[&exe])).assert_c_passed();
}

/// The shim's own /proc reads never take a number the program could get,
/// not even for an instant (tests/c/fd_transient.c): a thread opening
/// /dev/null and listing /proc/self/fd over and over never finds a /proc
/// file of the shim's below 768 (the other, known transients of
/// docs/TESTING.md are counted, not failed), while
/// forked children map shared memory through the inherited iommufd (the
/// parent's engine reads their /proc/PID/maps and stat) and another thread
/// discards pages with pages pinned (a look at /proc/self/maps). Before
/// those reads moved to a thread with a descriptor table of its own
/// (uiommufd_memory::procfs), hundreds of such moments showed per run.
#[test]
fn no_transient_shim_descriptor_at_a_low_number() {
    let exe = c_program!("fd_transient");
    let ran = run(uiommufd_run(&[], &[&exe]));
    ran.assert_c_passed();
    assert!(ran.stdout.contains(", 0 shim /proc descriptors"), "{}", ran.report());
}

/// The classic VFIO type1 user (Documentation/driver-api/vfio.rst): the
/// group from sysfs, /dev/vfio/vfio and /dev/vfio/$GROUP, SET_CONTAINER,
/// SET_IOMMU, MAP_DMA, GET_DEVICE_FD, BAR0 mapped and the DMA engine
/// copying inside the mapped buffer, with the kernel's errnos on the way:
/// under the mock IOMMU, under VT-d, and for the second of two devices.
#[test]
fn vfio_group_type1_user() {
    let exe = c_program!("vfio_group");
    for (options, args) in [
        (&["--device", "dma-engine"][..], &[][..]),
        (&["--iommu", "vtd", "--device", "dma-engine"][..], &[][..]),
        (&["--device", "dma-engine", "--device", "dma-engine:bdf=0000:02:00.0"][..], &["0000:02:00.0"][..]),
    ] {
        let mut argv = vec![exe.as_os_str()];
        argv.extend(args.iter().map(OsStr::new));
        let ran = run(uiommufd_run(options, &argv));
        ran.assert_c_passed();
    }
}

/// `uiommufd run` checks the machine before running anything and says
/// what is wrong.
#[test]
fn run_validates_the_platform() {
    for (options, want) in [
        (&["--device", "nic"][..], "unknown device kind `nic`"),
        (&["--device", "dma-engine:pasid=21"][..], "at most 20 bits"),
        (&["--device", "dma-engine;dma-engine"][..], "one device per --device"),
        (&["--device", "dma-engine", "--device", "dma-engine:bdf=0000:00:04.0"][..], "same BDF"),
        (&["--iommu", "intel"][..], "unknown IOMMU model `intel`"),
        (&["--iommu", "amd:hd=2"][..], "expected 0 or 1"),
        (&["--iommu", "vtd:sc=2"][..], "expected 0 or 1"),
    ] {
        let ran = run(uiommufd_run(options, &["sh", "-c", "echo ran"]));
        assert!(!ran.status.success(), "{options:?}: {}", ran.report());
        assert!(ran.stderr.contains(want), "{options:?}: missing {want:?}: {}", ran.report());
        assert!(ran.stdout.is_empty(), "{}", ran.report());
    }
    // Without devices nothing changes: no sysfs redirection, exec as before.
    let ran = run(uiommufd_run(
        &["--iommu", "vtd"],
        &["sh", "-c", "echo \"$UIOMMUFD_IOMMU:$UIOMMUFD_DEVICES:$UIOMMUFD_SYSFS\""],
    ));
    assert_eq!(ran.stdout, "vtd::\n", "{}", ran.report());
}

/// The C example of the VMM nested flow on an Arm SMMUv3
/// (examples/c/smmu_nested.c, kernel uAPI only): vIOMMU, vDEVICE, vEVENTQ,
/// a nested HWPT from the guest's STE, DMA through the guest's CD and
/// stage 1 tables, a stale TLB until the guest's TLBI, the fault on the
/// vEVENTQ with the virtual StreamID; with a Tegra241 CMDQV, the guest's
/// own VCMDQ driven through the mmap'ed VINTF page.
#[test]
fn smmu_nested_example_runs_unmodified() {
    let exe = c_program!("examples/c", "smmu_nested");
    let ran = run(uiommufd_run(&["--iommu", "smmuv3", "--device", "dma-engine"], &[exe.as_os_str()]));
    assert!(ran.status.success(), "{}", ran.report());
    for want in ["StreamID 0x42, write", "OK: nested translation, invalidation and events as on an SMMUv3"] {
        assert!(ran.stdout.contains(want), "missing {want:?}: {}", ran.report());
    }
    assert!(ran.stderr.is_empty(), "{}", ran.report());
    every_call_decoded(&run(uiommufd_run(&["--trace", "--iommu", "smmuv3", "--device", "dma-engine"], &[&exe])));
    // With a Tegra241 CMDQV the guest's TLBIs go into its own VCMDQ, PROD
    // moved through the VINTF page mapped from the iommufd (no system
    // call): the model consumes them, CONS follows and the stale entry is
    // gone; an illegal command stops the queue with CERROR_ILL.
    let ran = run(uiommufd_run(&["--iommu", "smmuv3:cmdqv=1", "--device", "dma-engine"], &[exe.as_os_str()]));
    assert!(ran.status.success(), "{}", ran.report());
    for want in [
        "VINTF page: 0x10000 bytes at mmap offset",
        "after CMD_TLBI_NH_VA in the VCMDQ (PROD moved through the VINTF page, CONS now 0x2): the new page",
        "CMD_CFGI_STE in the VCMDQ: CONS 0x1000004 (ERR 1), GERROR 0x1",
        "vEVENTQ (TEGRA241_CMDQV): LVCMDQ error map 0x1",
        "acknowledged through GERRORN: CONS 0x6",
        "a forked child's TLBI through the inherited VINTF page: CONS 0x8",
        "OK: nested translation, invalidation and events as on an SMMUv3 with a Tegra241 CMDQV",
    ] {
        assert!(ran.stdout.contains(want), "missing {want:?}: {}", ran.report());
    }
    assert!(ran.stderr.is_empty(), "{}", ran.report());
    every_call_decoded(&run(uiommufd_run(
        &["--trace", "--iommu", "smmuv3:cmdqv=1", "--device", "dma-engine"],
        &[&exe],
    )));
    // Without S2FWB and CANWBS the driver refuses the vIOMMU.
    let ran = run(uiommufd_run(&["--iommu", "smmuv3:fwb=0", "--device", "dma-engine"], &[exe.as_os_str()]));
    assert!(
        !ran.status.success() && ran.stderr.contains("IOMMU_VIOMMU_ALLOC: Operation not supported"),
        "{}",
        ran.report()
    );
}

/// The C example of the VMM nested flow on an AMD IOMMU
/// (examples/c/amd_nested.c, kernel uAPI only). As Linux 7.3 answers:
/// GET_HW_INFO with EFR/EFR2, a vIOMMU on a NEST_PARENT HWPT, and nested
/// allocation EOPNOTSUPP. With the follow-up's wiring (`nested=1`): a
/// nested HWPT from the guest's DTE, DMA through the guest's GCR3 and
/// x86-64 tables, a stale IOTLB until the parent's flush, the guest's
/// writes in the parent's dirty bitmap, a fault.
#[test]
fn amd_nested_example_runs_unmodified() {
    let exe = c_program!("examples/c", "amd_nested");
    let ran = run(uiommufd_run(&["--iommu", "amd", "--device", "dma-engine"], &[exe.as_os_str()]));
    assert!(ran.status.success(), "{}", ran.report());
    for want in ["EFR 0x25bf732fa2295afe EFR2 0x1d", "EOPNOTSUPP", "OK: the AMD IOMMU as Linux 7.3 presents it"] {
        assert!(ran.stdout.contains(want), "missing {want:?}: {}", ran.report());
    }
    let ran = run(uiommufd_run(&["--iommu", "amd:nested=1", "--device", "dma-engine"], &[exe.as_os_str()]));
    assert!(ran.status.success(), "{}", ran.report());
    for want in ["still wrote the old page", "(guest page 11 written", "OK: nested translation through the guest's"] {
        assert!(ran.stdout.contains(want), "missing {want:?}: {}", ran.report());
    }
    assert!(ran.stderr.is_empty(), "{}", ran.report());
    every_call_decoded(&run(uiommufd_run(&["--trace", "--iommu", "amd:nested=1", "--device", "dma-engine"], &[&exe])));
    // Without GCR3TRPModeSup the IOMMU cannot be a nest parent.
    let ran = run(uiommufd_run(&["--iommu", "amd:gcr3trp=0", "--device", "dma-engine"], &[exe.as_os_str()]));
    assert!(!ran.status.success() && ran.stderr.contains("cannot be a nest parent"), "{}", ran.report());
}

/// tests/c/amd_oracle_probe.c under the AMD model of QEMU 7.2's amd-iommu
/// prints what Linux 7.3.4 printed for it (the oracle kernel, without
/// CONFIG_AMD_IOMMU_IOMMUFD, with an edu device bound to vfio-pci; see the
/// probe's header): hw_info, the HWPT flags the driver takes, the IOVA
/// ranges (the MSI window and the HyperTransport range reserved, 48 bits),
/// no vIOMMU.
#[test]
fn amd_model_answers_as_the_oracle_kernel() {
    const ORACLE: &str = "bind: 0, device 1
hw_info: 0, type 0, data_len 0, capabilities 0x8, max_pasid_log2 0
ioas: 0, 2
hwpt_alloc flags 0: 0 ok
hwpt_alloc flags 0x1: 95
hwpt_alloc flags 0x2: 95
hwpt_alloc flags 0x8: 95
hwpt_alloc flags 0x3: 95
hwpt_alloc flags 0x9: 95
hwpt_alloc flags 0xa: 95
attach to the IOAS: 0
iova_ranges: 0, 3 ranges, alignment 0x1000
  0..0xfedfffff
  0xfef00000..0xfcffffffff
  0x10000000000..0xffffffffffff
viommu_alloc type 0 on the attached HWPT: 95
viommu_alloc type 1 on the attached HWPT: 95
viommu_alloc type 77 on the attached HWPT: 95
";
    let exe = c_program!("amd_oracle_probe");
    let machine = "amd:efr=29d3,efr2=0,vasize=48,la57=0,iommufd=0";
    let ran = run(uiommufd_run(&["--iommu", machine, "--device", "dma-engine"], &[exe.as_os_str()]));
    assert!(ran.status.success(), "{}", ran.report());
    assert_eq!(ran.stdout, ORACLE, "{}", ran.report());
}

/// What a client sees from a VT-d unit through a device cdev: GET_HW_INFO
/// with the unit's registers, NEST_PARENT / DIRTY_TRACKING only where the
/// registers allow, nested HWPTs from IOMMU_HWPT_DATA_VTD_S1, the driver's
/// invalidation checks, the IOVA ranges of a 39-bit client unit.
#[test]
fn vtd_unit_as_the_intel_driver_reports_it() {
    let exe = c_program!("vtd_iommufd");
    let regs = uiommufd_hw::vtd::regs::VtdRegs::default();
    let (cap, ecap) = (format!("{:x}", regs.cap.0), format!("{:x}", regs.ecap.0));
    run(uiommufd_run(
        &["--iommu", "vtd", "--device", "dma-engine"],
        &[exe.as_os_str(), "server".as_ref(), cap.as_ref(), ecap.as_ref()],
    ))
    .assert_c_passed();
    run(uiommufd_run(
        &["--iommu", "vtd:cap=d2008c22260286,ecap=f42", "--device", "dma-engine:pasid=0"],
        &[exe.as_os_str(), "client".as_ref(), "d2008c22260286".as_ref(), "f42".as_ref()],
    ))
    .assert_c_passed();
}
