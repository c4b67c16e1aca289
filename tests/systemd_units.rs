//! Every unit in deploy/systemd passes `systemd-analyze verify` (ExecStart
//! pointed at an executable that exists here: the check is of the unit, not
//! of an installation). Where the tool is missing the test fails with how to
//! get it; scripts/test installs it.

use std::process::Command;

#[test]
fn every_shipped_unit_verifies() {
    let tool = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        tool.is_ok(),
        "systemd-analyze is missing: apt-get install -y systemd (scripts/test does)"
    );
    let exe = std::env::current_exe().unwrap();
    let dir = std::env::temp_dir().join(format!("notify-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd")).unwrap()
    {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "service") {
            continue;
        }
        let name = path.file_name().unwrap().to_owned();
        let unit: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| match l.strip_prefix("ExecStart=") {
                Some(_) => format!("ExecStart={}\n", exe.display()),
                None => format!("{l}\n"),
            })
            .collect();
        assert!(unit.contains("EnvironmentFile=/etc/notify/"), "{name:?}");
        let copy = dir.join(&name);
        std::fs::write(&copy, unit).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Only complaints about this unit count; the host's units may be noisy.
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(name.to_str().unwrap()))
            .collect();
        assert!(
            out.status.success() && ours.is_empty(),
            "{name:?}: {stderr}"
        );
        checked.push(name.to_string_lossy().into_owned());
    }
    std::fs::remove_dir_all(&dir).ok();
    checked.sort();
    assert_eq!(
        checked,
        [
            "bet-tracker.service",
            "bridge.service",
            "notify-ingest.service",
            "notify-svc.service"
        ]
    );
}
