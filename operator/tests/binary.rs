//! The `orb-operator` binary as a process: start-up validation and its HTTP endpoints.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_orb-operator");
const KEY: &str = "0123456789abcdef0123456789abcdef";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A kubeconfig naming an API server that is not there (a port nobody listens on).
fn dead_kubeconfig(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: none\n  context:\n    cluster: none\n    user: none\ncurrent-context: none\nusers:\n- name: none\n  user: {{}}\n",
        free_port()
    );
    std::fs::write(&path, config).unwrap();
    path
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()))
}

struct Running(Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serves_health_and_metrics_and_is_not_ready_without_an_api_server() {
    let dir = std::env::temp_dir().join(format!("orb-operator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let child = Command::new(BIN)
        .env_clear()
        .env("KUBECONFIG", dead_kubeconfig(&dir))
        .env("ORB_IMAGE", "orb:test")
        .env("ORB_SIGNING_KEY", KEY)
        .env("OPERATOR_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Running(child);
    // Wait for the listener: a readiness wait, not a timing assertion.
    let started = Instant::now();
    let health = loop {
        if let Some(r) = get(port, "/healthz") {
            break r;
        }
        assert!(
            guard.0.try_wait().unwrap().is_none(),
            "the operator exited instead of serving"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the operator never served /healthz"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health.0, 200);
    assert_eq!(
        get(port, "/readyz").unwrap().0,
        503,
        "not ready while the API server is unreachable"
    );
    let (code, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("orb_operator_reconcile_total"), "{metrics}");
    assert!(
        metrics.contains("# TYPE orb_operator_reconcile_total counter"),
        "plain text format without an Accept header"
    );
}

#[test]
fn invalid_configuration_exits_2_naming_the_setting() {
    let out = Command::new(BIN)
        .env_clear()
        .env("ORB_IMAGE", "orb:test")
        .env("ORB_SIGNING_KEY", KEY)
        .env("ORB_TOLERATIONS", "not json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--orb-tolerations"), "{stderr}");

    let out = Command::new(BIN)
        .env_clear()
        .env("ORB_IMAGE", "orb:test")
        .env("IDLE_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
}

#[test]
fn crd_subcommand_prints_the_committed_crd() {
    let out = Command::new(BIN).arg("crd").env_clear().output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        include_str!("../../crds/generated/aiorbs.hybridcoach.io.yaml")
    );
}
