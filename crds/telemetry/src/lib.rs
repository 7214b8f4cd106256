//! What every binary of the system does the same way at its edges: structured logs, the shutdown
//! signal, encoding its metrics registry and serving it ([`exposition`]). A crate of its own so
//! that users of the API types alone do not pull in a logging stack and a runtime.

pub mod exposition;
pub mod probe;

use tracing_subscriber::EnvFilter;

/// Structured logs to stderr, as text or JSON lines; `RUST_LOG` filters, else `default_filter`.
/// Text is coloured only on a terminal: a log file or a collector gets `key=value` as written.
pub fn init_logging(json: bool, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Which signal asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: the kubelet (or a supervisor) stops the process.
    Terminate,
    /// Ctrl-C.
    Interrupt,
}

impl Signal {
    /// The signal's conventional name, as logs and termination messages write it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() -> Signal {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Signal::Interrupt,
        _ = term => Signal::Terminate,
    }
}

/// The registry as OpenMetrics text (see [`crate::exposition`] for serving it).
pub fn encode_metrics(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}
