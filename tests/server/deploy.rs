//! deploy/natterd.service as systemd reads it: `systemd-analyze verify`
//! accepts it (with ExecStart pointing at this build's natterd), and its
//! sandbox stays tight (`systemd-analyze security` exposure at most 2.0 of
//! 10; it is 1.4 now). Running it under a real systemd needs a machine
//! whose PID 1 is systemd, which the test machines are not.

use std::process::Command;

fn unit_for_this_build(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/natterd.service"
    ))
    .expect("deploy/natterd.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/natterd "));
    let unit = unit.replace("/usr/local/bin/natterd", env!("CARGO_BIN_EXE_natterd"));
    let path = dir.join("natterd.service");
    std::fs::write(&path, unit).expect("write the unit");
    path
}

fn systemd_analyze(args: &[&str], unit: &std::path::Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze must be installed (apt-get install systemd) for this test")
}

#[test]
fn the_systemd_unit_verifies_and_keeps_its_sandbox() {
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit_for_this_build(dir.path());
    let verify = systemd_analyze(&["verify", "--man=no"], &unit);
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // --threshold is in tenths: fail above an exposure of 2.0.
    let security = systemd_analyze(&["security", "--offline=yes", "--threshold=20"], &unit);
    assert!(
        security.status.success(),
        "the unit's sandbox got weaker:\n{}",
        String::from_utf8_lossy(&security.stdout)
    );
}
