//! The alert rules load and every alert's unit test passes, with the real promtool.

mod support;
use std::process::Command;
use support::{root, run, tool};

fn promtool() -> std::path::PathBuf {
    tool("promtool", "scripts/install-deps.sh (Debian package prometheus)")
}

#[test]
fn alert_rules_are_valid() {
    run(Command::new(promtool())
        .arg("check")
        .arg("rules")
        .arg(root().join("charts/orb-operator/files/alerts/orb-alerts.yaml")));
}

#[test]
fn every_alert_has_a_passing_unit_test_and_a_runbook() {
    run(Command::new(promtool())
        .arg("test")
        .arg("rules")
        .arg(root().join("tests/prometheus/alerts_test.yaml")));
    let rules = std::fs::read_to_string(root().join("charts/orb-operator/files/alerts/orb-alerts.yaml")).unwrap();
    let tests = std::fs::read_to_string(root().join("tests/prometheus/alerts_test.yaml")).unwrap();
    let operations = std::fs::read_to_string(root().join("docs/operations.md"))
        .unwrap()
        .to_lowercase();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 9, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "no unit test for {alert}"
        );
        assert!(
            operations.contains(&format!("### {}", alert.to_lowercase())),
            "docs/operations.md has no runbook for {alert}"
        );
    }
}
