//! The parts of a node the tier has none of: the test plays the kubelet (pod status) and a warm
//! orb's `/assign` endpoint.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Marks a pod running and ready at `ip`, as its kubelet would.
pub async fn run_pod(pods: &Api<Pod>, name: &str, ip: IpAddr) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip.to_string(),
        "startTime": now,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("play the kubelet for pod {name}: {e}"));
}

/// A loopback address of this test process's own (the warm orbs' port is fixed, so parallel tests
/// need addresses apart).
pub fn loopback_ip(index: u8) -> IpAddr {
    let pid = std::process::id();
    IpAddr::V4(Ipv4Addr::new(
        127,
        100 + (pid % 100) as u8,
        (pid / 100 % 250) as u8,
        index + 1,
    ))
}

/// What the fake warm orb does with an assignment before it answers.
pub type OnAssign = Arc<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

/// A warm orb's `/assign` endpoint at `ip`: answers every assignment `200 joined` after running
/// `on_assign` with the body. Counts the assignments it got.
pub struct FakeWarmOrb {
    pub assignments: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeWarmOrb {
    pub async fn serve(ip: IpAddr, on_assign: OnAssign) -> FakeWarmOrb {
        let addr = SocketAddr::new(ip, orb_operator::pod::ORB_HTTP_PORT as u16);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the fake warm orb");
        let assignments = Arc::new(AtomicUsize::new(0));
        let count = assignments.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let on_assign = on_assign.clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let Some(body) = read_request(&mut socket).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    on_assign(body).await;
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\nconnection: close\r\n\r\njoined";
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        FakeWarmOrb { assignments, task }
    }

    pub fn count(&self) -> usize {
        self.assignments.load(Ordering::SeqCst)
    }
}

impl Drop for FakeWarmOrb {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The body of one HTTP/1.1 request with a content length.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string());
            }
        }
    }
}
