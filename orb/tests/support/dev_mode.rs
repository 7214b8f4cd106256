//! Signaling in dev mode (the local runtime, test-mode orbs, no auth) in this process, for the
//! warm-pool tests and the warm-start benchmark.

use std::path::Path;
use std::sync::Arc;

use orb_signaling::orb_runtime::local::LocalRuntime;
use orb_signaling::{config::Config, metrics::Metrics, orb_runtime, server::Server};

/// Starts signaling with `warm_orbs` warm orbs of `binary`, orb logs in `log_dir` (emptied
/// first), and any `extra` flags.
pub async fn start(warm_orbs: usize, log_dir: &Path, binary: &Path, extra: &[&str]) -> (Server, Arc<LocalRuntime>) {
    start_with_key(warm_orbs, log_dir, binary, extra, None).await
}

/// [`start`] checking room tokens signed with `signing_key` when one is given.
pub async fn start_with_key(
    warm_orbs: usize,
    log_dir: &Path,
    binary: &Path,
    extra: &[&str],
    signing_key: Option<&str>,
) -> (Server, Arc<LocalRuntime>) {
    let _ = std::fs::remove_dir_all(log_dir);
    let auth = if signing_key.is_some() {
        "--auth=jwt"
    } else {
        "--auth=none"
    };
    let mut argv = vec![
        "orb-signaling".to_owned(),
        "--listen=127.0.0.1:0".into(),
        auth.into(),
        "--orb-runtime=local".into(),
        "--orb-test-mode".into(),
        format!("--warm-orbs={warm_orbs}"),
        format!("--orb-binary={}", binary.display()),
        format!("--orb-log-dir={}", log_dir.display()),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let config = Config::parse_from(argv, signing_key.map(str::to_owned)).expect("valid dev-mode flags");
    let metrics = Arc::new(Metrics::new());
    let (events, events_rx) = orb_runtime::OrbEvents::new(metrics.clone());
    let runtime = Arc::new(LocalRuntime::start(config.local.clone(), events));
    let server = Server::start(&config, runtime.clone(), events_rx, metrics)
        .await
        .expect("signaling starts");
    runtime.serve_at(server.local_addr());
    (server, runtime)
}

/// Stops signaling, then every orb process.
pub async fn stop(server: Server, runtime: Arc<LocalRuntime>) {
    server.shutdown().await;
    orb_runtime::OrbRuntime::shutdown(runtime.as_ref()).await;
}
