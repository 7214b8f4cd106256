//! Helpers shared by the cross-crate tests: the repository root and the real tools they start.
// Every test binary includes this module and uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A tool the project's scripts install: on PATH, or under target/tools/bin.
pub fn tool(name: &str, installer: &str) -> PathBuf {
    let local = root().join("target/tools/bin").join(name);
    if local.exists() {
        return local;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists());
    on_path.unwrap_or_else(|| panic!("{name} is not installed: run {installer}"))
}

/// Whether this run is CI's (`CI` set, and not to `false`): there a test's missing prerequisite is
/// a failure, not a reason to skip.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// Says why a test is skipped, or fails it under CI, where `what` must run.
pub fn skip_unless_ci(what: &str, why: &str) {
    if in_ci() {
        panic!("{what} must run in CI: {why}");
    }
    eprintln!("skipped: {why}");
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A child process killed when the test ends, however it ends.
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A workspace binary, built (or found up to date) by cargo first, so a test never runs a stale one.
pub fn workspace_bin(name: &str) -> PathBuf {
    build_bin(name, false)
}

/// [`workspace_bin`] built with the release profile, for measurements.
pub fn workspace_release_bin(name: &str) -> PathBuf {
    build_bin(name, true)
}

/// Builds each binary once per test process; after the suite's own build it is a no-op.
fn build_bin(name: &str, release: bool) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, bool)>> = std::sync::Mutex::new(Vec::new());
    let path = target_dir().join(if release { "release" } else { "debug" }).join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.iter().any(|(n, r)| n == name && *r == release) {
        return path;
    }
    let mut cargo = cargo_as_from_a_shell();
    cargo
        .current_dir(root())
        .args(["build", "--quiet", "--locked", "--bin", name]);
    if release {
        cargo.arg("--release");
    }
    let status = cargo.status().unwrap();
    assert!(status.success(), "cannot build {name}");
    built.push((name.to_owned(), release));
    path
}

/// Variables cargo sets for a running test (not configuration a user sets): whole names, then
/// prefixes.
const SET_FOR_TESTS: [&str; 8] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];
const SET_FOR_TESTS_PREFIXES: [&str; 2] = ["CARGO_PKG_", "CARGO_BIN_EXE_"];

/// `cargo` with the environment a developer's shell would give it. Build scripts rerun when a
/// variable they watch changes (ring watches `CARGO_MANIFEST_DIR` and `CARGO_PKG_*`, which cargo
/// sets for this test): a build from a test with them would rebuild half the tree, and the
/// suite's next build would rebuild it back, minutes on a small machine while other tests wait.
pub fn cargo_as_from_a_shell() -> Command {
    let mut cargo = Command::new(env!("CARGO"));
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if SET_FOR_TESTS.contains(&key) || SET_FOR_TESTS_PREFIXES.iter().any(|p| key.starts_with(p)) {
            cargo.env_remove(key);
        }
    }
    cargo
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` (relative to the workspace) when set, else
/// the workspace's `target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// The project's Helm chart, relative to the repository root.
pub const CHART: &str = "charts/orb-operator";

/// The real Helm binary, in the repository root.
pub fn helm() -> Command {
    let mut c = Command::new(tool("helm", "scripts/install-helm.sh"));
    c.current_dir(root());
    c
}

/// `helm template` of the chart (release `orb`, namespace `orbs`) with a values file and extra
/// arguments, as JSON objects.
pub fn render(values: Option<&str>, extra: &[&str]) -> Vec<Value> {
    let mut cmd = helm();
    cmd.args(["template", "orb", CHART, "--namespace", "orbs"]);
    if let Some(v) = values {
        cmd.args(["-f", v]);
    }
    cmd.args(extra);
    let out = run(&mut cmd);
    serde_norway::Deserializer::from_slice(&out.stdout)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The TURN relay's container paths (the secret's mount, the ConfigMap's, the emptyDir) and where
/// [`relay_start`] moves them: under one directory, so the chart's start script runs outside a pod.
pub const RELAY_PATHS: [(&str, &str); 3] = [
    ("/var/run/orb-turn-secret", "secret"),
    ("/etc/coturn", "config"),
    ("/var/tmp", "scratch"),
];

/// The chart's relay: its start script (`sh -c` text) with [`RELAY_PATHS`] moved under `dir`,
/// the rendered `turnserver.conf` written where the script reads it and `secret` where it reads
/// that. Run it as `sh -c <script> coturn <turnserver arguments>`.
pub fn relay_start(objects: &[Value], dir: &Path, secret: &str) -> String {
    let named = |kind: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == "orb-turn")
            .unwrap_or_else(|| panic!("no {kind} orb-turn"))
    };
    let container = &named("Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"][0], "/bin/sh");
    assert_eq!(container["command"][1], "-c");
    let mut script = container["command"][2].as_str().unwrap().to_owned();
    for (path, moved) in RELAY_PATHS {
        let mounted = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == path);
        assert!(mounted, "the relay's container mounts nothing at {path}");
        let moved = dir.join(moved);
        std::fs::create_dir_all(&moved).unwrap();
        script = script.replace(path, moved.to_str().unwrap());
    }
    let conf = named("ConfigMap")["data"]["turnserver.conf"].as_str().unwrap();
    std::fs::write(dir.join("config/turnserver.conf"), conf).unwrap();
    std::fs::write(dir.join("secret/secret"), secret).unwrap();
    script
}
