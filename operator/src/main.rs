//! The `orb-operator` binary: flags → validated config → HTTP endpoints → leader election →
//! controller and admitter, until SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Parser;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector;
use orb_api::AiOrb;
use orb_operator::admission::{self, Admitter};
use orb_operator::config::{Cli, Command, RunArgs};
use orb_operator::controller::{self, Context};
use orb_operator::http::{self, HttpState};
use orb_operator::leader;
use orb_operator::metrics::Metrics;
use tokio::sync::watch;
use tracing::{error, info, warn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", orb_api::crd_yaml());
            return Ok(());
        }
        Some(Command::Queue) => return print_queue(&cli.run).await,
        None => {}
    }
    let config = match cli.run.validate(std::env::var(orb_api::auth::SIGNING_KEY_ENV).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("orb-operator: invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    orb_telemetry::init_logging(config.json_logs, "info");

    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let http_state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let http_addr = config.http_addr;
    tokio::spawn(async move {
        if let Err(e) = http::serve(http_addr, http_state).await {
            error!(error = %e, %http_addr, "HTTP server failed");
            std::process::exit(1);
        }
    });

    let client = Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster or KUBECONFIG)")?;
    // An API server that is briefly away is waited for (not ready meanwhile), not crash-looped on.
    let mut delay = std::time::Duration::from_secs(1);
    while let Err(e) = client.apiserver_version().await {
        warn!(error = %e, "cannot reach the Kubernetes API server; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
    ready.store(true, Ordering::Relaxed);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        orb_telemetry::shutdown_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Standby replicas wait here; leadership lost later ends the process (the Deployment restarts
    // it as a standby), so two replicas never run the admitter at once.
    let leadership = if config.leader_election {
        let l = leader::acquire(
            client.clone(),
            &config.operator_namespace,
            &config.identity,
            stopped(stop_rx.clone()),
        )
        .await?;
        match l {
            Some(l) => Some(l),
            None => return Ok(()),
        }
    } else {
        warn!("leader election is disabled: run a single replica only");
        None
    };
    metrics.leader.set(1);

    let wake = Arc::new(admission::Wake::default());
    let ctx = Arc::new(Context::new(client.clone(), &config, metrics.clone(), wake.clone()));
    let (cache, cache_writer) = reflector::store();
    let admitter = Admitter {
        ledger: Api::namespaced(client.clone(), &config.operator_namespace),
        client: client.clone(),
        cap: config.limits.max_concurrent_orbs,
        shown_positions: config.queue_positions,
        limits: config.limits.clone(),
        cache,
        metrics: metrics.clone(),
        recorder: ctx.recorder.clone(),
        wake,
        now: ctx.now,
    };
    info!(cap = config.limits.max_concurrent_orbs, namespace = ?config.watch_namespace, "orb-operator leading");
    let lost = async {
        match &leadership {
            Some(l) => l.lost().await,
            None => std::future::pending().await,
        }
    };
    let pool_wake = ctx.admission.clone();
    let pool = async {
        match config.pool.clone() {
            Some(settings) => {
                info!(size = settings.size, namespace = %settings.namespace, "keeping a warm orb pool");
                let keeper =
                    orb_operator::pool::PoolKeeper::new(client.clone(), &config, settings, metrics.clone(), pool_wake);
                keeper.run(stopped(stop_rx.clone())).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = pool => {}
        _ = controller::run(ctx, config.watch_namespace.as_deref(), cache_writer, stopped(stop_rx.clone())) => {}
        _ = admitter.run(stopped(stop_rx.clone())) => {}
        _ = lost => {
            error!("lost the leader lease; exiting so that a standby takes over");
            std::process::exit(1);
        }
    }
    if let Some(l) = leadership {
        l.release().await;
    }
    Ok(())
}

fn orbs_api(client: Client, watch_namespace: Option<&str>) -> Api<AiOrb> {
    match watch_namespace.filter(|ns| !ns.is_empty()) {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// `orb-operator queue`: the whole queue, planned as an admission pass plans it, from the ledger
/// and a list of the unfinished AiOrbs.
async fn print_queue(run: &RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster or KUBECONFIG)")?;
    let ledger = Api::namespaced(client.clone(), &run.operator_namespace);
    let orbs = orbs_api(client.clone(), run.watch_namespace.as_deref());
    let now = k8s_openapi::jiff::Timestamp::now();
    let read = async {
        let ledger_cm = admission::read_ledger(&ledger).await?;
        let listed = admission::list_unfinished(&orbs).await?;
        admission::snapshot(
            &client,
            ledger_cm,
            listed,
            run.max_concurrent_orbs,
            run.prewarm_lead,
            now,
        )
        .await
    };
    let snapshot = read.await.context("cannot read the admission ledger and the AiOrbs")?;
    print!("{}", admission::render_queue(&snapshot, run.max_concurrent_orbs, now));
    Ok(())
}
