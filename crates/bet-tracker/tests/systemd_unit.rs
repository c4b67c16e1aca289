//! The shipped unit file passes `systemd-analyze verify` (with ExecStart
//! pointed at the binary this build made). Where the tool is missing the
//! test fails with how to get it, as every test of a missing service does.

use std::process::Command;

#[test]
fn the_unit_file_verifies() {
    let unit = include_str!("../../../deploy/systemd/bet-tracker.service");
    let tool = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        tool.is_ok(),
        "systemd-analyze is missing: apt-get install -y systemd (scripts/test does)"
    );
    let dir = std::env::temp_dir().join(format!("bet-tracker-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bet-tracker.service");
    let unit = unit.replace(
        "ExecStart=/usr/local/bin/bet-tracker",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_bet-tracker")),
    );
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::remove_dir_all(&dir).ok();
    // Only complaints about this unit count; the host's own units may be noisy.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("bet-tracker.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{stderr}");
}
