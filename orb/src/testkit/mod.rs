//! Test and benchmark support: a minimal signaling relay, a scripted human peer (a tone or real
//! speech), a fake of the OpenAI service, and a handle on an orb process. Shipped in the library so the end-to-end tests and the benchmark binary
//! share one implementation.

pub mod fake_openai;
pub mod human;
pub mod relay;
pub mod speech;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A free TCP port on loopback (bound, then released for the child to take).
pub fn free_local_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// An orb process started for a test or benchmark.
pub struct OrbProcess {
    pub child: Child,
    pub http_addr: SocketAddr,
    pub termination_log: PathBuf,
}

impl OrbProcess {
    /// Starts `binary` in test mode against `signaling_url`, media bound to loopback.
    pub fn spawn(binary: &Path, signaling_url: &str, room: &str, extra: &[&str]) -> std::io::Result<Self> {
        Self::spawn_with_env(binary, signaling_url, room, extra, &[])
    }

    /// [`OrbProcess::spawn`] with extra environment variables (a token, say).
    pub fn spawn_with_env(
        binary: &Path,
        signaling_url: &str,
        room: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        Self::spawn_brain(binary, signaling_url, room, &["--test-mode"], extra, env)
    }

    /// Starts `binary` with the openai-realtime brain against the service at `base_url` (a
    /// [`fake_openai::FakeOpenAi`]'s), media bound to loopback.
    pub fn spawn_openai(binary: &Path, signaling_url: &str, room: &str, base_url: &str) -> std::io::Result<Self> {
        let base = format!("--openai-base-url={base_url}");
        Self::spawn_brain(
            binary,
            signaling_url,
            room,
            &["--brain=openai-realtime", &base],
            &[],
            &[(crate::config::OPENAI_API_KEY_ENV, "test-key")],
        )
    }

    fn spawn_brain(
        binary: &Path,
        signaling_url: &str,
        room: &str,
        brain: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let http_addr = free_local_addr()?;
        let termination_log =
            std::env::temp_dir().join(format!("orb-termination-{}-{}", room, crate::random_u64() % 1_000_000));
        let mut cmd = Command::new(binary);
        cmd.args([
            &format!("--room={room}"),
            "--session=session-1",
            "--coach=coach-1",
            "--client=client-1",
            &format!("--signaling-url={signaling_url}"),
            &format!("--http-addr={http_addr}"),
            &format!("--termination-log={}", termination_log.display()),
            "--udp-addrs=127.0.0.1:0",
        ])
        .args(brain)
        .args(extra)
        .env_remove("ORB_SIGNALING_TOKEN")
        // The test humans offer loopback candidates: no range is denied unless a test says so.
        .env("ORB_DENIED_CANDIDATE_CIDRS", "")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
        let child = cmd.spawn()?;
        Ok(Self {
            child,
            http_addr,
            termination_log,
        })
    }

    /// Starts `binary` warm, in test mode: in no room until assigned with `credential`.
    pub fn spawn_warm(binary: &Path, credential: &str) -> std::io::Result<Self> {
        Self::spawn_warm_brain(binary, credential, &["--test-mode"], &[])
    }

    /// [`OrbProcess::spawn_warm`] with the openai-realtime brain against the service at
    /// `base_url` (a [`fake_openai::FakeOpenAi`]'s).
    pub fn spawn_warm_openai(binary: &Path, credential: &str, base_url: &str) -> std::io::Result<Self> {
        let base = format!("--openai-base-url={base_url}");
        Self::spawn_warm_brain(
            binary,
            credential,
            &["--brain=openai-realtime", &base],
            &[(crate::config::OPENAI_API_KEY_ENV, "test-key")],
        )
    }

    fn spawn_warm_brain(
        binary: &Path,
        credential: &str,
        brain: &[&str],
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let http_addr = free_local_addr()?;
        let termination_log =
            std::env::temp_dir().join(format!("orb-termination-warm-{}", crate::random_u64() % 1_000_000));
        let child = Command::new(binary)
            .args([
                "--warm",
                &format!("--http-addr={http_addr}"),
                &format!("--termination-log={}", termination_log.display()),
                "--udp-addrs=127.0.0.1:0",
            ])
            .args(brain)
            .env_remove("ORB_SIGNALING_TOKEN")
            .envs(env.iter().copied())
            .env(orb_api::assignment::ASSIGN_TOKEN_ENV, credential)
            // The test humans offer loopback candidates.
            .env("ORB_DENIED_CANDIDATE_CIDRS", "")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self {
            child,
            http_addr,
            termination_log,
        })
    }

    /// `POST /assign` with `credential` and `body`: the status and body of the answer.
    pub async fn assign(&self, credential: &str, body: &str) -> std::io::Result<(u16, String)> {
        orb_telemetry::probe::post_json(
            self.http_addr,
            orb_api::assignment::ASSIGN_PATH,
            credential,
            body,
            Duration::from_secs(30),
        )
        .await
    }

    /// Sends SIGTERM, as the kubelet does.
    pub fn terminate(&self) -> std::io::Result<()> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| std::io::Error::other("the orb already exited"))?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other("kill failed"))
        }
    }

    /// GETs a path of the orb's HTTP server; `None` while it is not answering.
    pub async fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_addr, path).await
    }

    /// Waits for /metrics to contain `needle`.
    pub async fn wait_metric(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Some((200, body)) = self.http_get("/metrics").await
                && body.contains(needle)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// `GET path` on the orb's HTTP server (probes and metrics).
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    orb_telemetry::probe::get(addr, path, std::time::Duration::from_secs(30))
        .await
        .ok()
}

/// The realtime brain's settings against a local fake service at `base_url`: a test key, no
/// proxy, a session that is never renewed during a test.
pub fn openai_config(base_url: &str) -> crate::config::OpenAiConfig {
    crate::config::OpenAiConfig {
        base_url: base_url.to_owned(),
        model: "test-model".into(),
        voice: "alloy".into(),
        instructions: "be brief".into(),
        api_key: "test-key".into(),
        summary_model: "test-summary-model".into(),
        session_renew_after: Duration::from_secs(3000),
        proxy: Default::default(),
    }
}
