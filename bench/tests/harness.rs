//! The load harness (`bench/run.py`) is Python; its pieces that a wrong
//! figure would silently come from are checked here against real
//! processes, so `make test` covers them.

use std::path::Path;
use std::process::Command;

/// CPU time per process: exact to the nanosecond, exited threads counted,
/// a process that has gone read as nothing (`bench/tests/procs_cpu.py`).
#[test]
fn cpu_time_of_a_process_is_read_from_its_cpu_clock() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/procs_cpu.py");
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
