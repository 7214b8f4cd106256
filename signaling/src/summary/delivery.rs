//! The delivery loop: every replica runs one. Each pass lists the pending summaries, gives up the
//! ones past their window, and for each due one writes a claim (compare-and-swap: of two
//! replicas only one wins), posts it, and records the outcome with its next attempt. It wakes at
//! the nearest due attempt, when a summary is stored, and at least every [`RESYNC`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jiff::Timestamp;
use orb_api::aiorb::SummaryState;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::signature::{self, IDEMPOTENCY_HEADER};
use super::{Attempt, StoreError, StoredSummary, SummarySettings, SummaryStore, after_attempt, claim, expire, is_due};
use crate::metrics::Metrics;

/// A pass runs at least this often (another replica's claim may have run out).
pub const RESYNC: Duration = Duration::from_secs(30);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The webhook: where and how summaries are posted.
pub struct Webhook {
    url: http::Uri,
    secret: Option<Vec<u8>>,
    client: HttpsClient,
}

impl Webhook {
    pub fn new(url: http::Uri, secret: Option<Vec<u8>>) -> std::io::Result<Self> {
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
        Ok(Self {
            url,
            secret,
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// The request for one attempt: the stored body byte for byte, its id as the idempotency
    /// key, and the signature over the send time and the body.
    pub fn request(&self, summary: &StoredSummary, now: Timestamp) -> http::Request<Full<Bytes>> {
        let mut req = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_HEADER, &summary.meta.id)
            .header("x-orb-summary-attempt", summary.meta.attempts);
        if let Some(secret) = &self.secret {
            req = req.header(
                signature::HEADER,
                signature::sign(secret, now.as_second(), &summary.body),
            );
        }
        req.body(Full::new(summary.body.clone()))
            .expect("a valid URI, a validated id and static headers make a valid request")
    }

    async fn attempt(&self, summary: &StoredSummary, now: Timestamp) -> Attempt {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.client.request(self.request(summary, now))).await {
            Ok(Ok(resp)) => classify(resp.status()),
            Ok(Err(e)) => Attempt::Retry(format!("webhook unreachable: {e}")),
            Err(_) => Attempt::Retry(format!("webhook did not answer within {ATTEMPT_TIMEOUT:?}")),
        }
    }
}

/// What a webhook's answer means for the summary.
pub fn classify(status: http::StatusCode) -> Attempt {
    if status.is_success() {
        Attempt::Delivered
    } else if status.is_server_error()
        || status == http::StatusCode::TOO_MANY_REQUESTS
        || status == http::StatusCode::REQUEST_TIMEOUT
    {
        Attempt::Retry(format!("webhook answered {status}"))
    } else {
        Attempt::Refused(format!("webhook refused the summary: {status}"))
    }
}

pub struct Deliverer {
    pub store: Arc<dyn SummaryStore>,
    pub webhook: Option<Webhook>,
    pub metrics: Arc<Metrics>,
    pub wake: Arc<Notify>,
    pub now: fn() -> Timestamp,
}

impl Deliverer {
    pub fn new(
        store: Arc<dyn SummaryStore>,
        settings: &SummarySettings,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let webhook = match &settings.webhook_url {
            Some(url) => Some(Webhook::new(url.clone(), settings.webhook_secret.clone())?),
            None => None,
        };
        Ok(Self {
            store,
            webhook,
            metrics,
            wake: Arc::new(Notify::new()),
            now: Timestamp::now,
        })
    }

    /// Runs passes until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.webhook.is_none() {
            return;
        }
        loop {
            let delay = match self.pass().await {
                Ok(next) => next
                    .map(|at| {
                        let now = (self.now)();
                        Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
                    })
                    .unwrap_or(RESYNC)
                    .min(RESYNC),
                Err(e) => {
                    warn!(error = %e, "summary delivery pass failed");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One pass; returns when the next pending summary is due.
    pub async fn pass(&self) -> Result<Option<Timestamp>, StoreError> {
        let Some(webhook) = &self.webhook else { return Ok(None) };
        let pending = self.store.pending().await?;
        let now = (self.now)();
        let mut next_due: Option<Timestamp> = None;
        // Stored times of the summaries still pending after this pass.
        let mut oldest: Option<Timestamp> = None;
        let mut still_pending = |stored_at: Timestamp| oldest = Some(oldest.map_or(stored_at, |o| o.min(stored_at)));
        for summary in pending {
            if let Some(expired) = expire(&summary.meta, now) {
                if self.record(summary, expired).await?.is_some() {
                    self.metrics.summary_delivery("failed");
                }
                continue;
            }
            if !is_due(&summary.meta, now) {
                still_pending(summary.meta.stored_at);
                next_due = Some(next_due.map_or(summary.meta.next_attempt, |n| n.min(summary.meta.next_attempt)));
                continue;
            }
            let claimed = claim(&summary.meta, now);
            let Some(claimed) = self.record(summary, claimed).await? else {
                continue;
            };
            let outcome = webhook.attempt(&claimed, (self.now)()).await;
            let after = after_attempt(&claimed.meta, &outcome, (self.now)());
            let result = match (&outcome, after.state) {
                (Attempt::Delivered, _) => "delivered",
                (_, SummaryState::Failed) => "failed",
                _ => "retry",
            };
            match &outcome {
                Attempt::Delivered => {
                    info!(summary = %claimed.meta.id, room = %claimed.meta.room_id, attempts = claimed.meta.attempts, "session summary delivered")
                }
                Attempt::Retry(e) | Attempt::Refused(e) => {
                    warn!(summary = %claimed.meta.id, room = %claimed.meta.room_id, attempts = claimed.meta.attempts, error = %e, state = after.state.as_str(), "session summary not delivered")
                }
            }
            self.metrics.summary_delivery(result);
            if after.state == SummaryState::Pending {
                still_pending(after.stored_at);
                next_due = Some(next_due.map_or(after.next_attempt, |n| n.min(after.next_attempt)));
            }
            // If this write is lost the claim runs out and the summary is posted again: at least once.
            self.record(claimed, after).await?;
        }
        let now = (self.now)();
        self.metrics
            .summary_oldest_pending(oldest.map_or(0.0, |t| now.duration_since(t).as_secs_f64().max(0.0)));
        Ok(next_due)
    }

    /// Writes `meta` over `summary`; `None` when another replica got there first.
    async fn record(
        &self,
        summary: StoredSummary,
        meta: super::SummaryMeta,
    ) -> Result<Option<StoredSummary>, StoreError> {
        match self.store.update(StoredSummary { meta, ..summary }).await {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::Conflict) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
