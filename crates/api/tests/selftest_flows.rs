//! The main flows of `examples/selftest_flows` on the emulated backend,
//! in-process, against the transcript the real Linux 7.3.4 kernel gave for
//! the same program (its kernel backend, statically linked, in
//! `../shared/oracle/run.sh`; regenerate with `scripts/api-oracle.sh`).
//! The same comparison for the kernel backend under `uiommufd run` is in
//! `crates/cli/tests/api_flows.rs`.

#[path = "../examples/selftest_flows/flows.rs"]
#[allow(dead_code)] // the VFIO flow is compared in crates/cli/tests/api_flows.rs
mod flows;

use uiommufd_api::Backend;

const EXPECTED: &str = include_str!("expected/selftest_flows-7.3.txt");

/// Line-by-line comparison with the first difference named, so a failure
/// says which call answered differently.
pub fn assert_same_transcript(ours: &str, expected: &str, who: &str) {
    for (i, (a, b)) in ours.lines().zip(expected.lines()).enumerate() {
        assert_eq!(a, b, "{who}: line {} differs from Linux 7.3.4's", i + 1);
    }
    assert_eq!(ours.lines().count(), expected.lines().count(), "{who}: transcript length differs from Linux 7.3.4's");
}

#[test]
fn emulated_backend_answers_as_linux_7_3() {
    if std::env::var_os("UIOMMUFD_KERNEL").is_some_and(|k| k != "7.3") {
        eprintln!("UIOMMUFD_KERNEL selects another release; the transcript is 7.3's");
        return;
    }
    let (t, r) = flows::run(&Backend::emulated());
    r.expect("the flows ran to their end");
    assert_same_transcript(&t.text, EXPECTED, "emulated");
}
