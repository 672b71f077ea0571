//! The load harness (`bench/run.py`) and the profile-guided build's link
//! order (`scripts/pgo-order.py`) are Python; their pieces that a wrong
//! figure or a quietly worse layout would come from are checked here, so
//! `make test` covers them.

use std::path::Path;
use std::process::Command;

/// Runs `bench/tests/<script>`, which prints `ok` when its checks pass.
fn passes(script: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = Command::new("python3")
        .arg(&script)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CPU time per process: exact to the nanosecond, exited threads counted,
/// a process that has gone read as nothing (`bench/tests/procs_cpu.py`).
#[test]
fn cpu_time_of_a_process_is_read_from_its_cpu_clock() {
    passes("procs_cpu.py");
}

/// Context switches per process, voluntary and involuntary apart: sleeps
/// and preemptions of real processes (`bench/tests/procs_switches.py`).
#[test]
fn context_switches_are_counted_by_kind() {
    passes("procs_switches.py");
}

/// The profile-guided link order (`scripts/pgo-order.py`): what every
/// process ran first, then each set of processes' own functions together
/// (`bench/tests/pgo_order.py`).
#[test]
fn the_link_order_keeps_each_process_functions_together() {
    passes("pgo_order.py");
}
