//! `uiommufd-api`'s kernel backend under `uiommufd run`: the flows of
//! `crates/api/examples/selftest_flows` (the main iommufd flows against the
//! selftest's mock), run by this test executable re-executed under the
//! shim, must give the transcript the real Linux 7.3.4 kernel gave for the
//! same program (kept in `crates/api/tests/expected/`); the VFIO cdev flow
//! must give under the shim what the emulated backend gives in-process.

#[path = "../../api/examples/selftest_flows/flows.rs"]
#[allow(dead_code)]
mod flows;

use std::path::{Path, PathBuf};
use std::process::Command;

use uiommufd_api::{Backend, Emulated};

/// Set in the re-executed child: which flow to run on the kernel backend,
/// and where to write its transcript.
const CHILD_FLOW: &str = "UIOMMUFD_API_FLOWS_CHILD";
const CHILD_OUT: &str = "UIOMMUFD_API_FLOWS_OUT";

const EXPECTED: &str = include_str!("../../api/tests/expected/selftest_flows-7.3.txt");

/// Environment that would change what the shim or the CLI does.
const SHIM_ENV: [&str; 6] =
    ["LD_PRELOAD", "UIOMMUFD_TRACE", "UIOMMUFD_TRACE_FILE", "UIOMMUFD_IOMMU", "UIOMMUFD_PRELOAD", "UIOMMUFD_KERNEL"];

/// The child's side: does nothing unless re-executed by the tests below.
#[test]
fn child_runs_a_flow_on_the_kernel_backend() {
    let Some(flow) = std::env::var_os(CHILD_FLOW) else { return };
    let out = std::env::var_os(CHILD_OUT).expect("an output path");
    let (t, r) = match flow.to_str() {
        Some("main") => flows::run(&Backend::Kernel),
        Some(path) => flows::vfio(&Backend::Kernel, path),
        None => panic!("bad flow"),
    };
    let mut text = t.text;
    if let Err(e) = r {
        text.push_str(&format!("stopped: {e}\n"));
    }
    std::fs::write(out, text).expect("writing the transcript");
}

/// Run `flow` in this executable under `uiommufd run OPTIONS`; its
/// transcript.
fn under_shim(options: &[&str], flow: &str, name: &str) -> String {
    let shim = Path::new(env!("CARGO_BIN_EXE_uiommufd")).with_file_name("deps").join("libuiommufd_preload.so");
    assert!(shim.is_file(), "{} was not built", shim.display());
    let out: PathBuf =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("api-flows-{name}-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uiommufd"));
    cmd.arg("run").arg("--preload").arg(&shim).args(options).arg("--");
    cmd.arg(std::env::current_exe().expect("this test executable"));
    cmd.args(["--exact", "child_runs_a_flow_on_the_kernel_backend", "--nocapture", "--test-threads=1"]);
    for var in SHIM_ENV {
        cmd.env_remove(var);
    }
    cmd.env(CHILD_FLOW, flow).env(CHILD_OUT, &out);
    let status = cmd.status().expect("running uiommufd run");
    assert!(status.success(), "the child under the shim failed: {status}");
    let text = std::fs::read_to_string(&out).expect("the child's transcript");
    let _ = std::fs::remove_file(&out);
    text
}

fn assert_same(ours: &str, expected: &str, who: &str) {
    for (i, (a, b)) in ours.lines().zip(expected.lines()).enumerate() {
        assert_eq!(a, b, "{who}: line {} differs", i + 1);
    }
    assert_eq!(ours.lines().count(), expected.lines().count(), "{who}: transcript length differs");
}

#[test]
fn kernel_backend_under_the_shim_answers_as_linux_7_3() {
    let text = under_shim(&[], "main", "main");
    assert_same(&text, EXPECTED, "kernel backend under uiommufd run vs Linux 7.3.4");
}

#[test]
fn vfio_cdev_flow_under_the_shim_matches_the_emulated_backend() {
    for iommu in ["mock", "vtd", "smmuv3"] {
        let shim = under_shim(&["--iommu", iommu, "--device", "dma-engine"], "/dev/vfio/devices/vfio0", iommu);
        let backend = Backend::Emulated(Emulated::with_platform(iommu, "dma-engine").expect("the platform"));
        let (t, r) = flows::vfio(&backend, "/dev/vfio/devices/vfio0");
        r.expect("the emulated flow ran to its end");
        assert!(t.text.contains("VFIO_DEVICE_ATTACH_IOMMUFD_PT the IOAS = "), "{}", t.text);
        assert_same(&shim, &t.text, &format!("VFIO flow on {iommu}: under uiommufd run vs in-process"));
    }
}
