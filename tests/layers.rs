//! The crate graph is a stack of layers, each depending only downward, and no binary crate is
//! built on another: read from `cargo metadata`, checked against the allowed graph below. A new
//! crate, or a new edge between ours, must be added here on purpose.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;
use support::root;

/// Each workspace crate and the workspace crates it may depend on (normal and build
/// dependencies). Libraries: `orb-api` (the AiOrb API, naming, tokens, durations), `orb-telemetry`
/// (logs, signals, metrics exposition), `orb-protocol` (the signaling wire messages), `orb-policy`
/// (the pure rules). Binaries on top: `orb-operator`, `orb-signaling`, `orb`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("orb-api", &[]),
    ("orb-telemetry", &[]),
    ("orb-protocol", &[]),
    ("orb-policy", &["orb-api"]),
    ("orb-operator", &["orb-api", "orb-policy", "orb-telemetry"]),
    (
        "orb-signaling",
        &["orb-api", "orb-policy", "orb-protocol", "orb-telemetry"],
    ),
    // The local brain's parts: models and audio, nothing of the call.
    ("orb-speech", &[]),
    ("orb", &["orb-api", "orb-protocol", "orb-speech", "orb-telemetry"]),
    // The cross-crate tests may use everything (dev-dependencies only).
    ("orb-system-tests", &[]),
];

/// Crates with a `[[bin]]`: nothing may depend on them but tests.
const BINARIES: &[&str] = &["orb-operator", "orb-signaling", "orb"];

#[test]
fn crates_depend_only_downward_and_no_binary_on_another() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root())
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours: BTreeSet<String> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let allowed: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(k, v)| (*k, v.iter().copied().collect())).collect();
    assert_eq!(
        ours.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        allowed.keys().copied().collect(),
        "every workspace crate has its place in ALLOWED"
    );

    let mut problems = vec![];
    for package in meta["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let has_bin = package["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"));
        assert_eq!(has_bin, BINARIES.contains(&name), "{name}: BINARIES is out of date");
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            if !ours.contains(dep_name) {
                continue;
            }
            let dev = dep["kind"] == "dev";
            if dev {
                // Tests may run other binaries' code (an end-to-end test of the orb against the
                // real signaling server), but never a higher layer's library from a lower one.
                if !BINARIES.contains(&name) && name != "orb-system-tests" {
                    problems.push(format!("{name} (a library) dev-depends on {dep_name}"));
                }
                continue;
            }
            if !allowed[name].contains(dep_name) {
                problems.push(format!("{name} depends on {dep_name}"));
            }
            if BINARIES.contains(&dep_name) {
                problems.push(format!("{name} is built on the binary crate {dep_name}"));
            }
        }
    }
    assert!(problems.is_empty(), "layering broken:\n{}", problems.join("\n"));
}

/// A binary a test builds is the one the suite built: a test's build finds everything the
/// suite's own build (from a shell) left, with nothing to redo. (A test's environment once made
/// cargo rebuild half the tree on every switch between the two, minutes on a small machine.) This
/// must be the first build in its process, so a broken one cannot hide behind an earlier one.
#[test]
fn a_binary_built_by_a_test_is_fresh_after_the_suite_s_build() {
    let out = support::cargo_as_from_a_shell()
        .current_dir(root())
        .args(["build", "--locked", "--verbose", "--bin", "orb-operator"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let redone: Vec<&str> = log.lines().filter(|l| l.trim_start().starts_with("Dirty")).collect();
    assert!(
        redone.is_empty(),
        "a test's build redid the suite's build:\n{}",
        redone.join("\n")
    );
}
