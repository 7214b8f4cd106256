//! The monitoring contract end to end: the real binaries run, promtool accepts their `/metrics`,
//! a real Prometheus server scrapes them with the chart's alert rules loaded, and every dashboard
//! panel query returns data.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Process, free_port, root, tool, workspace_bin};

fn http_get(port: u16, path_and_query: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    ))
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits for a condition that depends on other processes. The limit only guards against a hang;
/// no assertion here depends on how fast anything is.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn dead_kubeconfig(dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: none\n  context:\n    cluster: none\n    user: none\ncurrent-context: none\nusers:\n- name: none\n  user: {{}}\n",
        free_port()
    );
    std::fs::write(&path, config).unwrap();
    path
}

struct Target {
    job: &'static str,
    port: u16,
    _process: Process,
}

fn start(job: &'static str, cmd: &mut Command, port: u16) -> Target {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{job}: {e}"));
    let mut process = Process(child);
    wait_for(&format!("{job} /metrics"), || {
        assert!(process.0.try_wait().unwrap().is_none(), "{job} exited early");
        http_get(port, "/metrics").filter(|(c, _)| *c == 200)
    });
    Target {
        job,
        port,
        _process: process,
    }
}

fn start_targets(dir: &Path) -> Vec<Target> {
    let key = "0123456789abcdef0123456789abcdef";
    let operator_port = free_port();
    let operator = start(
        "orb-operator",
        Command::new(workspace_bin("orb-operator"))
            .env_clear()
            .env("KUBECONFIG", dead_kubeconfig(dir))
            .env("ORB_IMAGE", "orb:test")
            .env("ORB_SIGNING_KEY", key)
            .env("OPERATOR_HTTP_ADDR", format!("127.0.0.1:{operator_port}")),
        operator_port,
    );
    let signaling_port = free_port();
    let signaling = start(
        "orb-signaling",
        Command::new(workspace_bin("orb-signaling"))
            .env_clear()
            .args(["--orb-runtime=none", "--auth=none"])
            .arg(format!("--listen=127.0.0.1:{signaling_port}")),
        signaling_port,
    );
    // An orb joined to that signaling server: its media metrics exist from the start, and its
    // join puts an AI participant and relayed messages into signaling's.
    let orb_port = free_port();
    let orb = start(
        "orb",
        Command::new(workspace_bin("orb"))
            .env_clear()
            .args([
                "--room=monitoring",
                "--brain=test",
                "--idle-timeout=1h",
                "--udp-addrs=127.0.0.1:0",
            ])
            .arg(format!("--signaling-url=ws://127.0.0.1:{signaling_port}"))
            .arg(format!("--http-addr=127.0.0.1:{orb_port}"))
            .arg(format!(
                "--termination-log={}",
                dir.join("orb-termination-log").display()
            )),
        orb_port,
    );
    vec![operator, signaling, orb]
}

#[test]
fn promtool_accepts_every_binarys_metrics() {
    let dir = tempdir("promtool");
    let targets = start_targets(&dir);
    for t in &targets {
        let (_, text) = http_get(t.port, "/metrics").unwrap();
        let mut check = Command::new(tool("promtool", "scripts/install-deps.sh"))
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        let problems = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && problems.trim().is_empty(),
            "{}: promtool check metrics:\n{problems}",
            t.job
        );
    }
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn query(prometheus: u16, expr: &str) -> Value {
    let (code, body) =
        http_get(prometheus, &format!("/api/v1/query?query={}", encode(expr))).expect("prometheus answers");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{expr}: {e}: {body}"));
    assert_eq!(
        (code, v["status"].as_str()),
        (200, Some("success")),
        "{expr} does not evaluate: {body}"
    );
    v
}

#[test]
fn prometheus_scrapes_the_binaries_and_every_panel_and_alert_query_works() {
    let dir = tempdir("prometheus");
    let targets = start_targets(&dir);
    let scrape: String = targets
        .iter()
        .map(|t| {
            format!(
                "  - job_name: {}\n    scrape_interval: 1s\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
                t.job, t.port
            )
        })
        .collect();
    let rules = root().join("charts/orb-operator/files/alerts/orb-alerts.yaml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{evaluation_interval: 1s}}\nrule_files: ['{}']\nscrape_configs:\n{scrape}",
            rules.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = Process(
        Command::new(tool("prometheus", "scripts/install-deps.sh"))
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    for t in &targets {
        wait_for(&format!("prometheus to scrape {}", t.job), || {
            let v = http_get(
                port,
                &format!("/api/v1/query?query={}", encode(&format!("up{{job=\"{}\"}}", t.job))),
            )?;
            let v: Value = serde_json::from_str(&v.1).ok()?;
            (v["data"]["result"][0]["value"][1] == "1").then_some(())
        });
    }
    // The alert rules loaded and evaluate without error.
    wait_for("the alert rules to be evaluated", || {
        let (_, body) = http_get(port, "/api/v1/rules")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let rules: Vec<&Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        (rules.len() >= 9 && rules.iter().all(|r| r["health"] == "ok")).then_some(())
    });
    for file in std::fs::read_dir(root().join("charts/orb-operator/files/dashboards")).unwrap() {
        let path = file.unwrap().path();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "1m");
                // A rate needs two scrapes; wait for data rather than for a fixed time.
                wait_for(&format!("data for {expr} ({})", path.display()), || {
                    let v = query(port, &expr);
                    (!v["data"]["result"].as_array().unwrap().is_empty()).then_some(())
                });
            }
        }
    }
}
