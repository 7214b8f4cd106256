//! Delivery of session summaries to an optional webhook: a JSON POST, retried with exponential
//! backoff on connection errors, 408, 429 and 5xx. A bounded queue decouples the orb's socket from
//! a slow receiver; when it is full the summary is dropped and counted (it still reached the coach).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::metrics::Metrics;

const QUEUE: usize = 256;
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct SummarySink {
    tx: Option<mpsc::Sender<Value>>,
    metrics: Arc<Metrics>,
}

impl SummarySink {
    /// A sink posting to `url`, or one that drops everything when there is no URL.
    pub fn new(url: Option<http::Uri>, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let Some(url) = url else {
            return Ok(Self { tx: None, metrics });
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        // Only an https URL needs CA certificates; minimal images may have none.
        let builder = if url.scheme_str() == Some("https") {
            builder.with_provider_and_native_roots(provider).map_err(|e| {
                std::io::Error::other(format!(
                    "the summary webhook is https but CA certificates cannot be loaded: {e}"
                ))
            })?
        } else {
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(std::io::Error::other)?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder.with_tls_config(tls)
        };
        let https = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        let (tx, mut rx) = mpsc::channel::<Value>(QUEUE);
        let worker_metrics = metrics.clone();
        tokio::spawn(async move {
            while let Some(summary) = rx.recv().await {
                let body = Bytes::from(summary.to_string());
                let delivered = post_with_retries(&url, body, |req| client.request(req)).await;
                worker_metrics.webhook_delivery(if delivered { "delivered" } else { "failed" });
            }
        });
        Ok(Self { tx: Some(tx), metrics })
    }

    pub fn submit(&self, summary: Value) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(summary).is_err() {
            warn!("summary webhook queue full; summary dropped");
            self.metrics.webhook_delivery("dropped");
        }
    }
}

/// Whether a response status is worth another attempt.
fn retryable(status: http::StatusCode) -> bool {
    status.is_server_error()
        || status == http::StatusCode::TOO_MANY_REQUESTS
        || status == http::StatusCode::REQUEST_TIMEOUT
}

async fn post_with_retries<F, Fut, B, E>(url: &http::Uri, body: Bytes, send: F) -> bool
where
    F: Fn(http::Request<Full<Bytes>>) -> Fut,
    Fut: Future<Output = Result<http::Response<B>, E>>,
    E: std::fmt::Display,
{
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let request = http::Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
            .expect("a valid URI and static headers make a valid request");
        let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, send(request)).await;
        let retry = match outcome {
            Ok(Ok(resp)) if resp.status().is_success() => {
                info!(attempt, "session summary delivered to the webhook");
                return true;
            }
            Ok(Ok(resp)) => {
                warn!(attempt, status = %resp.status(), "summary webhook refused the summary");
                retryable(resp.status())
            }
            Ok(Err(e)) => {
                warn!(attempt, error = %e, "summary webhook unreachable");
                true
            }
            Err(_) => {
                warn!(attempt, "summary webhook timed out");
                true
            }
        };
        if !retry || attempt == ATTEMPTS {
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn respond(status: u16) -> Result<http::Response<()>, String> {
        Ok(http::Response::builder().status(status).body(()).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn retries_server_errors_then_succeeds() {
        let calls = AtomicU32::new(0);
        let url: http::Uri = "http://hooks.example/summary".parse().unwrap();
        let ok = post_with_retries(&url, Bytes::from_static(b"{}"), |req| {
            assert_eq!(req.method(), http::Method::POST);
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Err("connection refused".to_owned()),
                    1 => respond(503),
                    _ => respond(204),
                }
            }
        })
        .await;
        assert!(ok);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_are_not_retried_and_attempts_are_bounded() {
        let calls = AtomicU32::new(0);
        let url: http::Uri = "http://hooks.example/summary".parse().unwrap();
        let send = |_req| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { respond(400) }
        };
        assert!(!post_with_retries(&url, Bytes::new(), send).await);
        assert_eq!(calls.swap(0, Ordering::SeqCst), 1);
        let send = |_req| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { respond(500) }
        };
        assert!(!post_with_retries(&url, Bytes::new(), send).await);
        assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);
    }
}
