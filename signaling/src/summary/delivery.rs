//! The delivery loop: every replica runs one. Each pass lists the records of the pending summaries
//! (not their bodies), gives up the ones past their window, and for each due one writes a claim
//! (compare-and-swap: of two replicas only one wins) timed from that write, reads its body, posts
//! it, and records the outcome with its next attempt. A store error on one summary is logged and
//! counted and the pass goes on with the others. It wakes at the nearest due attempt, when a
//! summary is stored, and at least every [`RESYNC`].

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
use super::{
    ATTEMPT_TIMEOUT, Attempt, ERROR_RETRY, Schedule, StoreError, StoredSummary, SummaryMeta, SummaryRecord,
    SummarySettings, SummaryStore, after_attempt, claim, expire, is_due,
};
use crate::metrics::Metrics;

/// A pass runs at least this often (another replica's claim may have run out).
pub const RESYNC: Duration = Duration::from_secs(30);

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

    async fn post(&self, summary: &StoredSummary, now: Timestamp) -> Attempt {
        match self.client.request(self.request(summary, now)).await {
            Ok(resp) => classify(resp.status()),
            Err(e) => Attempt::Retry(format!("webhook unreachable: {e}")),
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
                    warn!(error = %e, "cannot list the pending session summaries");
                    self.metrics.summary_store_error();
                    ERROR_RETRY
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One pass; returns when the next pending summary is due. Fails only when the pending
    /// summaries cannot be listed: a store error on one of them is logged and counted, and it is
    /// tried again after [`ERROR_RETRY`].
    pub async fn pass(&self) -> Result<Option<Timestamp>, StoreError> {
        let Some(webhook) = &self.webhook else { return Ok(None) };
        let pending = self.store.pending().await?;
        let mut schedule = Schedule::default();
        for listed in pending {
            let meta = listed.meta.clone();
            match self.visit(webhook, listed).await {
                Ok(Some(still_pending)) => schedule.pending(&still_pending),
                Ok(None) => {}
                Err(e) => {
                    warn!(summary = %meta.id, room = %meta.room_id, error = %e, "session summary store error; the other summaries go on");
                    self.metrics.summary_store_error();
                    schedule.store_failed(&meta, (self.now)());
                }
            }
        }
        let now = (self.now)();
        self.metrics.summary_oldest_pending(
            schedule
                .oldest
                .map_or(0.0, |t| now.duration_since(t).as_secs_f64().max(0.0)),
        );
        Ok(schedule.next_due)
    }

    /// Does what is due for one listed summary; returns its record if it is still pending after.
    async fn visit(&self, webhook: &Webhook, listed: SummaryRecord) -> Result<Option<SummaryMeta>, StoreError> {
        // The clock of this summary's turn, not of the pass's start: attempts before it in the
        // same pass may have taken minutes.
        let now = (self.now)();
        if let Some(expired) = expire(&listed.meta, now) {
            if self.record(listed, expired).await?.is_some() {
                self.metrics.summary_delivery("failed");
            }
            return Ok(None);
        }
        if !is_due(&listed.meta, now) {
            return Ok(Some(listed.meta));
        }
        let claimed = claim(&listed.meta, (self.now)());
        let Some(claimed) = self.record(listed, claimed).await? else {
            // Another replica claimed or finished it first.
            return Ok(None);
        };
        let outcome = match tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt(webhook, &claimed)).await {
            Ok(outcome) => outcome,
            Err(_) => Attempt::Retry(format!("no answer from the webhook within {ATTEMPT_TIMEOUT:?}")),
        };
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
        let still_pending = (after.state == SummaryState::Pending).then(|| after.clone());
        // If this write is lost the claim runs out and the summary is posted again: at least once.
        self.record(claimed, after).await?;
        Ok(still_pending)
    }

    /// One claimed attempt: the stored body (read only now, by the replica that holds the
    /// claim), posted to the webhook.
    async fn attempt(&self, webhook: &Webhook, claimed: &SummaryRecord) -> Attempt {
        let body = match self.store.body(&claimed.meta.id).await {
            Ok(body) => body,
            Err(e @ StoreError::Corrupt(_)) => return Attempt::Refused(e.to_string()),
            Err(e) => {
                self.metrics.summary_store_error();
                return Attempt::Retry(format!("cannot read the stored summary: {e}"));
            }
        };
        let summary = StoredSummary {
            meta: claimed.meta.clone(),
            body,
            version: claimed.version.clone(),
        };
        webhook.post(&summary, (self.now)()).await
    }

    /// Writes `meta` over `record`; `None` when another replica got there first.
    async fn record(&self, record: SummaryRecord, meta: SummaryMeta) -> Result<Option<SummaryRecord>, StoreError> {
        match self.store.update(SummaryRecord { meta, ..record }).await {
            Ok(r) => Ok(Some(r)),
            Err(StoreError::Conflict) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicI64, Ordering};

    use futures::future::BoxFuture;

    use super::*;
    use crate::summary::local_store::LocalStore;
    use crate::summary::{PutOutcome, new_meta};

    /// A store that remembers every record written (with the clock at the write) and fails the
    /// writes of one summary.
    struct Watched {
        inner: LocalStore,
        now: fn() -> Timestamp,
        writes: Mutex<Vec<(SummaryMeta, Timestamp)>>,
        failing: Option<&'static str>,
    }

    impl SummaryStore for Watched {
        fn put(&self, summary: StoredSummary) -> BoxFuture<'_, Result<PutOutcome, StoreError>> {
            self.inner.put(summary)
        }
        fn pending(&self) -> BoxFuture<'_, Result<Vec<SummaryRecord>, StoreError>> {
            self.inner.pending()
        }
        fn body(&self, id: &str) -> BoxFuture<'_, Result<Bytes, StoreError>> {
            self.inner.body(id)
        }
        fn update(&self, record: SummaryRecord) -> BoxFuture<'_, Result<SummaryRecord, StoreError>> {
            self.writes.lock().unwrap().push((record.meta.clone(), (self.now)()));
            if self.failing == Some(record.meta.id.as_str()) {
                return Box::pin(async { Err(StoreError::Io(std::io::Error::other("the API server stumbled"))) });
            }
            self.inner.update(record)
        }
    }

    const START: i64 = 1_700_000_000;

    /// A webhook on loopback that answers 204 and records the idempotency keys; each request
    /// moves `clock` forward by `slow_seconds` (a slow webhook, without waiting for it).
    async fn webhook(clock: &'static AtomicI64, slow_seconds: i64) -> (String, Arc<Mutex<Vec<String>>>) {
        let keys: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = keys.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    clock.fetch_add(slow_seconds, Ordering::SeqCst);
                    let key = headers
                        .get(IDEMPOTENCY_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    seen.lock().unwrap().push(key.to_owned());
                    http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, keys)
    }

    async fn deliverer(
        url: &str,
        now: fn() -> Timestamp,
        ids: &[&str],
        failing: Option<&'static str>,
    ) -> (Deliverer, Arc<Watched>) {
        let settings = SummarySettings {
            webhook_url: Some(url.parse().unwrap()),
            retry_window: Duration::from_secs(3600),
            ..Default::default()
        };
        let store = Arc::new(Watched {
            inner: LocalStore::in_memory(),
            now,
            writes: Mutex::default(),
            failing,
        });
        for id in ids {
            let summary = StoredSummary {
                meta: new_meta((*id).into(), "room".into(), now(), &settings),
                body: Bytes::from_static(br#"{"roomId":"room"}"#),
                version: None,
            };
            store.put(summary).await.unwrap();
        }
        let mut deliverer = Deliverer::new(store.clone(), &settings, Metrics::shared()).unwrap();
        deliverer.now = now;
        (deliverer, store)
    }

    /// Item 4 of issue 22: a pass took its clock once, so with a slow webhook the claims written
    /// late in the pass had run out already and another replica posted the same summary.
    #[tokio::test]
    async fn claims_run_from_their_write_however_long_the_pass_has_taken() {
        static CLOCK: AtomicI64 = AtomicI64::new(START);
        fn now() -> Timestamp {
            Timestamp::from_second(CLOCK.load(Ordering::SeqCst)).unwrap()
        }
        // Each attempt takes 20 s: the third claim is written 40 s into the pass.
        let (url, keys) = webhook(&CLOCK, 20).await;
        let (deliverer, store) = deliverer(&url, now, &["a", "b", "c", "d"], None).await;
        assert_eq!(deliverer.pass().await.unwrap(), None);
        assert_eq!(*keys.lock().unwrap(), ["a", "b", "c", "d"]);
        let writes = store.writes.lock().unwrap().clone();
        let claims: Vec<_> = writes
            .iter()
            .filter(|(m, _)| m.state == SummaryState::Pending)
            .collect();
        assert_eq!(claims.len(), 4);
        for (claim, written_at) in claims {
            assert!(
                !is_due(claim, *written_at),
                "the claim on {} was written at {written_at} already run out ({})",
                claim.id,
                claim.next_attempt
            );
        }
    }

    #[tokio::test]
    async fn a_store_error_on_one_summary_does_not_stop_the_others() {
        static CLOCK: AtomicI64 = AtomicI64::new(START);
        fn now() -> Timestamp {
            Timestamp::from_second(CLOCK.load(Ordering::SeqCst)).unwrap()
        }
        let (url, keys) = webhook(&CLOCK, 0).await;
        let (deliverer, store) = deliverer(&url, now, &["a", "b", "c"], Some("b")).await;
        let next = deliverer
            .pass()
            .await
            .expect("the pass goes on past the failing summary");
        assert_eq!(*keys.lock().unwrap(), ["a", "c"]);
        assert_eq!(
            next,
            Some(now() + jiff::SignedDuration::try_from(ERROR_RETRY).unwrap()),
            "the failing one is tried again soon, not in a tight loop"
        );
        let states: Vec<_> = store
            .inner
            .all()
            .iter()
            .map(|s| (s.meta.id.clone(), s.meta.state))
            .collect();
        assert_eq!(
            states,
            [
                ("a".into(), SummaryState::Delivered),
                ("b".into(), SummaryState::Pending),
                ("c".into(), SummaryState::Delivered)
            ]
        );
        assert!(
            deliverer
                .metrics
                .render()
                .contains("orb_signaling_summaries_store_errors_total 1"),
            "counted"
        );
    }
}
