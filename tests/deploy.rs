//! deploy/: the container image and the compose cluster say only what the
//! binaries understand, and the Dockerfile builds where a Docker engine runs.
//! The README's configuration tables list exactly what the binaries read.
//!
//! The image build is the one check allowed to skip: without an engine (this
//! kind of CI machine has only the client) it prints SKIPPED and why.

use std::{collections::BTreeSet, path::Path, process::Command};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The environment variables a binary reads, from its `--help`
/// (`[env: NAME=…]`), subcommands' included for `notify`.
fn env_names(binary: &str, subcommands: &[&str]) -> BTreeSet<String> {
    let exe = Path::new(env!("CARGO_BIN_EXE_notify")).with_file_name(binary);
    let mut names = BTreeSet::new();
    for sub in std::iter::once(None).chain(subcommands.iter().map(Some)) {
        let out = Command::new(&exe)
            .args(sub)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/test builds it)", exe.display()));
        let help = String::from_utf8_lossy(&out.stdout);
        for part in help.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// `NAME` of every `NAME=` (env files, commented or not) or `NAME:` (YAML
/// maps) line in `text`.
fn names_set_in(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start().trim_start_matches('#');
            let end = line.find(['=', ':'])?;
            let name = &line[..end];
            (name.len() > 2
                && name.chars().next()?.is_ascii_uppercase()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .then(|| name.to_owned())
        })
        .collect()
}

/// Read by the logging set-up (`notify_ops::logging`) or by another image,
/// not by our flags.
const NOT_OURS: &[&str] = &[
    "RUST_LOG",
    "NOTIFY_TRACE_FILTER",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    // The AWS SDK's own (region, credentials).
    "AWS_REGION",
];

/// Every `NAME` in the first cell of the README's configuration tables
/// (rows like ``| `A`, `B` | meaning | default |``), between `## Configuration`
/// and the next `## ` section.
fn readme_table_settings() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let section = readme
        .split_once("\n## Configuration\n")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .expect("README has a Configuration section");
    let mut names = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let first_cell = row[1..].split(" |").next().unwrap_or_default();
        for name in first_cell.split('`').skip(1).step_by(2) {
            if name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

#[test]
fn the_readme_configuration_tables_list_exactly_what_the_binaries_read() {
    let read: BTreeSet<String> = [
        env_names("notify-svc", &[]),
        env_names("bridge", &[]),
        env_names("bet-tracker", &[]),
        env_names("notify-ingest", &[]),
        env_names("notify", &["up", "publish", "token", "subscribe"]),
    ]
    .into_iter()
    .flatten()
    .collect();
    let listed = readme_table_settings();
    let unlisted: Vec<&String> = read.difference(&listed).collect();
    let unread: Vec<&String> = listed
        .difference(&read)
        .filter(|n| !NOT_OURS.contains(&n.as_str()))
        .collect();
    assert!(
        unlisted.is_empty(),
        "read by a binary, missing from the README's tables: {unlisted:?}"
    );
    assert!(
        unread.is_empty(),
        "in the README's tables, read by no binary: {unread:?}"
    );
}

#[test]
fn every_setting_in_deploy_is_one_the_binaries_read() {
    let svc = env_names("notify-svc", &[]);
    let bridge = env_names("bridge", &[]);
    let tracker = env_names("bet-tracker", &[]);
    let ingest = env_names("notify-ingest", &[]);
    let notify = env_names("notify", &["up", "publish"]);
    for (file, known) in [
        ("deploy/systemd/notify-svc.env.example", &svc),
        ("deploy/systemd/bridge.env.example", &bridge),
        ("deploy/systemd/bet-tracker.env.example", &tracker),
        ("deploy/systemd/notify-ingest.env.example", &ingest),
    ] {
        let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
        let unknown: Vec<String> = names_set_in(&text)
            .into_iter()
            .filter(|n| !known.contains(n) && !NOT_OURS.contains(&n.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} sets what nothing reads: {unknown:?}"
        );
    }
    let all: BTreeSet<String> = [&svc, &bridge, &tracker, &notify]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let compose =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/docker-compose.yml")).unwrap();
    let unknown: Vec<String> = names_set_in(&compose)
        .into_iter()
        .filter(|n| !all.contains(n) && !NOT_OURS.contains(&n.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "docker-compose.yml sets what nothing reads: {unknown:?}"
    );
}

#[test]
fn the_image_carries_every_service_binary() {
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    for binary in [
        "notify",
        "notify-svc",
        "bridge",
        "bet-tracker",
        "notify-ingest",
    ] {
        assert!(
            dockerfile.contains(&format!("target/release/{binary} ")),
            "the Dockerfile does not copy {binary}"
        );
    }
    assert!(
        dockerfile.contains("--locked"),
        "the image builds from Cargo.lock"
    );
}

#[test]
fn the_dockerfile_builds_where_a_docker_engine_runs() {
    let engine = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !engine {
        println!(
            "SKIPPED: no Docker engine answers here (`docker info` fails; this kind of \
             machine has only the client), so the Dockerfile is not built"
        );
        return;
    }
    let out = Command::new("docker")
        .args(["build", "-t", "notify:test", "."])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = Command::new("docker")
        .args(["run", "--rm", "notify:test", "notify-svc", "--version"])
        .output()
        .unwrap();
    assert!(
        version.status.success(),
        "{}",
        String::from_utf8_lossy(&version.stderr)
    );
    let config = Command::new("docker")
        .args(["compose", "-f", "deploy/docker-compose.yml", "config", "-q"])
        .current_dir(ROOT)
        .output()
        .unwrap();
    assert!(
        config.status.success(),
        "{}",
        String::from_utf8_lossy(&config.stderr)
    );
}
