//! The Debian package, its systemd units and the container image's root
//! filesystem, tested for real by `tests/packaging/run.sh`: build the
//! `.deb`, install it into a fresh debootstrap root, run the installed
//! binaries, upgrade, remove and purge; `systemd-analyze verify`; run the
//! image's entrypoint. Needs root and the release binaries (`make test`
//! builds them); as any other user it fails and says so, rather than pass
//! without having checked anything.

use std::process::Command;

use meshgate_tests::workspace;

#[test]
fn debian_package_units_and_container_image() {
    let script = workspace().join("tests/packaging/run.sh");
    // Every wait inside the script is bounded, so no time limit here;
    // `output` reads both pipes as they fill, whatever the script prints.
    let out = Command::new(&script)
        .env("MESHGATE_SKIP_BUILD", "1")
        .output()
        .expect("tests/packaging/run.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/packaging/run.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("packaging test passed"), "{stdout}");
}
