//! The `orb-signaling` binary: configuration, logging, the orb runtime, the server and signals.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use orb_signaling::config::{Args, Config, LogFormat, RuntimeKind, SIGNING_KEY_ENV};
use orb_signaling::metrics::Metrics;
use orb_signaling::orb_runtime::kubernetes::{KubernetesRuntime, KubernetesSettings};
use orb_signaling::orb_runtime::local::LocalRuntime;
use orb_signaling::orb_runtime::{NoOrbRuntime, OrbEvents, OrbRuntime};
use orb_signaling::server::Server;
use orb_signaling::summary::checkpoint::CheckpointStore;
use orb_signaling::summary::kube_store::{KubeCheckpoints, KubeStore};
use orb_signaling::summary::{Summaries, SummaryStore};
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    orb_telemetry::init_logging(args.log_format == LogFormat::Json, "info");
    let config = match Config::from_args(args, std::env::var(SIGNING_KEY_ENV).ok()) {
        Ok(config) => config,
        Err(e) => {
            // The usage exit code, as for a bad flag: a restart cannot fix it.
            eprintln!("orb-signaling: invalid configuration: {e}");
            std::process::exit(2);
        }
    };

    let metrics = Metrics::shared();
    let (events, events_rx) = OrbEvents::new(metrics.clone());
    let mut local_runtime = None;
    let mut kube_stores: Option<(Arc<dyn SummaryStore>, Arc<dyn CheckpointStore>)> = None;
    let runtime: Arc<dyn OrbRuntime> = match config.orb_runtime {
        RuntimeKind::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("cannot build a Kubernetes client (in-cluster or KUBECONFIG); use --orb-runtime=local or none outside a cluster")?;
            let namespace = config
                .orb_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned());
            info!(%namespace, "creating orbs as AiOrb resources");
            kube_stores = Some((
                Arc::new(KubeStore::new(client.clone(), &namespace)),
                Arc::new(KubeCheckpoints::new(client.clone(), &namespace)),
            ));
            let settings = KubernetesSettings {
                namespace,
                test_mode: config.orb_test_mode,
                presence_debounce: config.presence_debounce,
            };
            Arc::new(KubernetesRuntime::start(client, settings, events, metrics.clone()))
        }
        RuntimeKind::Local => {
            let local = Arc::new(LocalRuntime::start(config.local.clone(), events));
            local_runtime = Some(local.clone());
            local
        }
        RuntimeKind::None => Arc::new(NoOrbRuntime::new(events)),
    };

    let (summary_store, checkpoints) = match kube_stores {
        Some((store, checkpoints)) => (store, Some(checkpoints)),
        None => (
            Summaries::local_store(&config.summary).context("cannot open the summary directory")?,
            Some(Summaries::local_checkpoints(&config.summary).context("cannot open the checkpoint directory")?),
        ),
    };
    let server = Server::start_with_store(&config, runtime, events_rx, metrics, summary_store, checkpoints)
        .await
        .with_context(|| format!("cannot start the server on {}", config.listen))?;
    if let Some(local) = &local_runtime {
        local.serve_at(server.local_addr());
    }
    let token = server.shutdown_token();
    tokio::spawn(async move {
        let signal = orb_telemetry::shutdown_signal().await;
        info!(signal = signal.name(), "shutdown signal received");
        token.cancel();
    });
    server.wait().await;
    Ok(())
}
