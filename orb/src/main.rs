//! `orb`: joins a room as the AI participant. Exit codes: 0 session ended (signal, lifetime,
//! idle timeout), 1 runtime error, 2 bad configuration.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use orb::brain::Brain;
use orb::config::{BrainConfig, Cli, Config, LogFormat, Secrets};
use orb::health::Health;
use orb::lifecycle::{Ending, exit_code, write_termination_message};
use orb::media::webrtc_stack::WebrtcStack;
use orb::metrics::Metrics;
use orb::session::{self, SessionOptions, StartedBrain};
use tracing::{error, info};

/// The WebRTC stack logs every state change at info and some benign conditions as warnings.
/// The local brain's summary steps: after every question and answer, or a quarter minute.
const LOCAL_SUMMARY_EVERY_LINES: usize = 2;
const LOCAL_SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(15);
const DEFAULT_LOG: &str = "info,rtc=warn,rtc_ice=warn,rtc_dtls=error,webrtc=warn";

fn main() {
    let cli = Cli::parse();
    orb_telemetry::init_logging(cli.log_format == LogFormat::Json, DEFAULT_LOG);
    let termination_log = cli.termination_log.clone();
    let config = match Config::from_cli(cli, Secrets::from_env()) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            let _ = write_termination_message(&termination_log, &format!("Error invalid configuration: {e}"));
            std::process::exit(exit_code::USAGE);
        }
    };
    // One provider for every TLS client in the process (signaling and the speech service).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Two worker threads: media, brain and session are light, and pods are sized small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let code = match runtime.block_on(run(config.clone())) {
        Ok(ending) => ending.exit_code(),
        Err(e) => {
            error!("{e:#}");
            let message = Ending::Error(format!("{e:#}")).termination_message(std::time::Duration::ZERO);
            let _ = write_termination_message(&config.termination_log, &message);
            exit_code::ERROR
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

async fn run(config: Config) -> anyhow::Result<Ending> {
    let metrics = Metrics::new();
    let health = Health::new();
    health.beat();
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    let mut app = orb::http::router(health.clone(), metrics.clone());
    let assignment = match config.warm {
        Some(_) => {
            let (desk, assignment) = orb::warm::desk(config.clone(), health.clone());
            app = app.merge(desk);
            Some(assignment)
        }
        None => None,
    };
    info!(addr = %listener.local_addr()?, room = %config.room, warm = assignment.is_some(), "orb starting");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "HTTP server stopped");
        }
    });
    let brain: Box<dyn Brain> = match &config.brain {
        BrainConfig::Test { echo_delay } => Box::new(orb::brain::test::TestBrain::new(*echo_delay)),
        BrainConfig::OpenAi(openai) => Box::new(orb::brain::openai::OpenAiBrain::new(openai.clone())),
        BrainConfig::Local(local) => Box::new(orb::brain::local::LocalBrain::new(local.clone())),
    };
    let mut options = SessionOptions::default();
    if matches!(config.brain, BrainConfig::Local(_)) {
        // A model on the pod's own CPU or GPU writes the summary as the call goes (it is idle
        // while people talk), so the goodbye's few seconds only add the last lines.
        options.summary.every_lines = LOCAL_SUMMARY_EVERY_LINES;
        options.summary.every = LOCAL_SUMMARY_EVERY;
    }
    let media = Arc::new(WebrtcStack::new(config.rtc.clone(), metrics.clone()));
    let mut brain = StartedBrain::start(brain);
    let shutdown = orb_telemetry::shutdown_signal();
    tokio::pin!(shutdown);
    let config = match assignment {
        None => config,
        Some(assignment) => match wait_warm(&mut brain, &health, assignment, &mut shutdown).await? {
            Ok(config) => config,
            Err(signal) => {
                info!("stopped while warm, never assigned");
                return Ok(Ending::Signal(signal.name()));
            }
        },
    };
    let ending = session::run_started(config, media, brain, metrics, health, options, async {
        shutdown.await.name()
    })
    .await;
    info!(reason = %ending.reason(), code = ending.exit_code(), "orb finished");
    Ok(ending)
}

/// A warm orb: readies its brain, reports ready, and waits for its room. `Err` with the signal
/// that stopped it before an assignment came.
async fn wait_warm(
    brain: &mut StartedBrain,
    health: &Health,
    mut assignment: tokio::sync::oneshot::Receiver<Config>,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = orb_telemetry::Signal>>,
) -> anyhow::Result<Result<Config, orb_telemetry::Signal>> {
    let mut beat = tokio::time::interval(std::time::Duration::from_secs(1));
    let ready = brain.until_ready();
    tokio::pin!(ready);
    let mut brain_ready = false;
    loop {
        // Biased: an assignment that arrived with the brain's readiness wins, so the warm
        // readiness is never set after the desk cleared it for the join.
        tokio::select! {
            biased;
            signal = shutdown.as_mut() => return Ok(Err(signal)),
            config = &mut assignment => {
                let config = config.context("the assignment desk closed")?;
                info!(room = %config.room, "joining the assigned room");
                return Ok(Ok(config));
            }
            result = &mut ready, if !brain_ready => {
                result.map_err(|e| anyhow::anyhow!(e))?;
                brain_ready = true;
                health.set_ready(true);
                info!("warm: brain ready, waiting for a room");
            }
            _ = beat.tick() => health.beat(),
        }
    }
}
