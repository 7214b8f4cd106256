//! The HTTP side: routes, shared state, start-up and the drain on shutdown.
//!
//! Shutdown (SIGTERM): `/readyz` turns 503 and new WebSocket upgrades are refused with 503, every
//! connection writes what is queued and closes with 1001, and the server waits up to
//! `--drain-timeout` for them before it stops listening and flushes the orb runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, RawQuery, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use orb_api::auth::unix_now;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admission::{Admission, Refusal};
use crate::auth::{self, Authenticator};
use crate::cluster::Cluster;
use crate::config::{Config, Limits};
use crate::conn;
use crate::cors::AllowedOrigins;
use crate::ice::{ANONYMOUS_USER, IceSettings};
use crate::metrics::Metrics;
use crate::orb_runtime::{OrbCheck, OrbEvent, OrbRuntime};
use crate::protocol::IceServerList;
use crate::room::{Identity, Registry};
use crate::summary::{Summaries, SummaryStore};

/// Read chunk and write buffer size per socket: signaling frames are small, larger ones still
/// work in several reads, and tungstenite zeroes the whole read chunk on every read.
const SOCKET_BUFFER_BYTES: usize = 4 * 1024;
/// How long the orb runtime may take to flush presence once connections are gone.
const RUNTIME_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the accept loop pauses after a failed accept (out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// `Retry-After` of a connection refused by a cap, in seconds.
const CAP_RETRY_AFTER_SECONDS: u32 = 10;

pub struct AppState {
    pub limits: Limits,
    pub auth: Authenticator,
    /// The connection caps, checked before the upgrade.
    pub admission: Arc<Admission>,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    pub summaries: Summaries,
    /// Cancelled when shutdown begins; every connection watches it.
    pub shutdown: CancellationToken,
    /// How long a closed connection waits for the client's close reply (the drain timeout).
    pub close_handshake_timeout: Duration,
    /// The ICE servers participants get (`/ice-servers` and the `ice-servers` message).
    pub ice: IceSettings,
    /// Origins whose pages may read `/ice-servers`.
    pub cors: AllowedOrigins,
    draining: AtomicBool,
    connections: TaskTracker,
    next_conn: AtomicU64,
}

impl AppState {
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The ICE servers of `user_id`, whose room token expires at `token_expiry`, minted now;
    /// counted in `turn_credentials_issued_total` by whoever hands them out.
    pub fn ice_servers_for(&self, user_id: &str, token_expiry: Option<u64>) -> IceServerList {
        self.ice.list_for(user_id, token_expiry, unix_now())
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ws-simple/{room_id}", get(ws_upgrade))
        .route("/auth/check", get(auth_check))
        .route("/ice-servers", get(ice_servers).options(ice_servers_preflight))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The answer to a request refused before it is served (boxed: a `Response` is large, and most
/// requests are not refused).
type Refused = Box<Response>;

/// A refusal before the upgrade: a JSON body `{"error", "reason"}` a client can show.
fn refusal(status: StatusCode, error: &str, reason: &str) -> Response {
    let body = serde_json::json!({ "error": error, "reason": reason });
    (status, axum::Json(body)).into_response()
}

/// 401 (no token, or one that proves nothing) or 403 (a valid token for another room), naming
/// the broken rule.
fn auth_refusal(e: &orb_api::auth::AuthError) -> Response {
    let status = auth::refusal_status(e);
    let error = if status == StatusCode::FORBIDDEN {
        "forbidden"
    } else {
        "unauthorized"
    };
    let mut response = refusal(status, error, &e.to_string());
    if status == StatusCode::UNAUTHORIZED {
        let challenge = match e {
            orb_api::auth::AuthError::Missing => r#"Bearer realm="orb-signaling""#,
            _ => r#"Bearer realm="orb-signaling", error="invalid_token""#,
        };
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response
}

/// 503 for the server's caps (connections, rooms), 429 for the client's own; both with
/// `Retry-After`.
fn cap_refusal(refusal_reason: Refusal) -> Response {
    let status = match refusal_reason {
        Refusal::ClientConnections | Refusal::TokenConnections => StatusCode::TOO_MANY_REQUESTS,
        Refusal::Connections | Refusal::Rooms => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = refusal(status, refusal_reason.label(), refusal_reason.text());
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(CAP_RETRY_AFTER_SECONDS));
    response
}

/// The request's token ([`auth::request_token`]); with auth off none is read.
fn request_token(
    authenticator: &Authenticator,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Option<String>, auth::TransportError> {
    match authenticator {
        Authenticator::None => Ok(None),
        Authenticator::Jwt { .. } => auth::request_token(query, headers),
    }
}

/// The upgrade of `/ws-simple/{room}`. Everything that can refuse a connection is decided here,
/// before the upgrade, as a plain HTTP answer: the room id (400), the token transport (400), the
/// token (401/403), the caps (429/503), an orb token's AiOrb (403/503). Only then does the request become a WebSocket, holding its
/// slots until the connection ends.
async fn ws_upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "server is shutting down").into_response();
    }
    if let Err(e) = orb_api::naming::validate_room_id(&room_id) {
        return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let token_identity = match authenticate_request(&state, &room_id, query.as_deref(), &headers) {
        Ok(identity) => identity,
        Err(refused) => return *refused,
    };
    let client = state.admission.client_address(peer, &headers);
    let user = token_identity.as_ref().map(|id| id.user_id.as_str());
    let admitted = match state.admission.admit(client, &room_id, user) {
        Ok(admitted) => admitted,
        Err(refused) => {
            state.metrics.connection_refused(refused);
            debug!(room = %room_id, %client, reason = refused.label(), "connection refused by a cap");
            return cap_refusal(refused);
        }
    };
    // After the caps: the check may ask the API server, and a loop of upgrades must not turn into
    // a loop of API calls. The slots taken above bound how many checks one client has in flight
    // (the runtime coalesces and caches the answers); a refusal drops them.
    if let Some(refused) = check_orb_token(&state, &room_id, token_identity.as_ref()).await {
        return refused;
    }
    // The orb's socket carries its summary (the whole transcript).
    let max = state.limits.socket_max_bytes(token_identity.as_ref());
    let tracker = state.connections.clone();
    // tungstenite's 128 KiB default buffers would dominate memory with many small-message sockets.
    // The answered subprotocol is `orb-signaling` when offered, never a token entry.
    ws.protocols([auth::SUBPROTOCOL])
        .read_buffer_size(SOCKET_BUFFER_BYTES)
        .write_buffer_size(SOCKET_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|e| debug!(error = %e, "WebSocket upgrade failed"))
        // A failed upgrade drops this closure, and with it the admitted slots.
        .on_upgrade(move |socket| tracker.track_future(conn::serve(socket, state, room_id, token_identity, admitted)))
}

/// Who the request's token says it is in `room_id` (`Ok(None)` with auth off: then nothing about
/// tokens is looked at), or the refusal of the socket's handshake: 400 for a transport that
/// cannot be read, 401/403 for the token; counted in `auth_failures_total` and logged with the
/// rule, never the token.
fn authenticate_request(
    state: &AppState,
    room_id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Option<Identity>, Refused> {
    let token = request_token(&state.auth, query, headers).map_err(|e| {
        state.metrics.auth_failure(auth::BAD_REQUEST_LABEL);
        warn!(room = %room_id, reason = %e, "room token transport refused");
        Box::new(refusal(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()))
    })?;
    state.auth.authenticate(room_id, token.as_deref()).map_err(|e| {
        state.metrics.auth_failure(auth::failure_label(&e));
        warn!(room = %room_id, reason = %e, "room token refused");
        Box::new(auth_refusal(&e))
    })
}

/// An orb's token names its AiOrb: only the room's live orb gets in (403 for an earlier orb's
/// token, 503 while the runtime cannot tell). Tokens without the claim (none are minted so any
/// more) are left to the other rules.
async fn check_orb_token(state: &AppState, room_id: &str, identity: Option<&Identity>) -> Option<Response> {
    let uid = identity.filter(|id| id.is_ai())?.orb_uid.as_deref()?;
    let refused = |status, error, reason: &str| {
        state.metrics.auth_failure(auth::STALE_ORB_LABEL);
        warn!(room = %room_id, orb = %uid, "{reason}");
        Some(refusal(status, error, reason))
    };
    match state.registry.runtime().check_orb(room_id, uid).await {
        OrbCheck::Live | OrbCheck::Unknown => None,
        OrbCheck::Stale => refused(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the orb token is not of the room's live orb",
        ),
        OrbCheck::Unavailable => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the room's orb cannot be checked now",
        ),
    }
}

/// `GET /auth/check?room=…` with the token as for the socket (in a browser: `Authorization:
/// Bearer`): 204 when the token opens the room, else the refusal the socket's handshake got
/// (400/401/403 with the JSON body). A browser cannot see the HTTP status of a refused WebSocket
/// handshake; the web client asks here after a socket that never opened, to tell a refused token
/// (stop, say why) from a server that is busy or gone (retry).
async fn auth_check(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let room = match room_param(query.as_deref()) {
        Ok(room) => room,
        Err(refused) => return *refused,
    };
    let token = match request_token(&state.auth, query.as_deref(), &headers) {
        Ok(token) => token,
        Err(e) => return refusal(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    match state.auth.authenticate(&room, token.as_deref()) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => auth_refusal(&e),
    }
}

/// The `room` query parameter of the HTTP endpoints that check a room token, or their 400.
fn room_param(query: Option<&str>) -> Result<String, Refused> {
    let room = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(name, _)| name == "room")
            .map(|(_, value)| value.into_owned())
    });
    let Some(room) = room else {
        return Err(Box::new(refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the room parameter is required",
        )));
    };
    orb_api::naming::validate_room_id(&room)
        .map_err(|e| Box::new(refusal(StatusCode::BAD_REQUEST, "bad_request", &e.to_string())))?;
    Ok(room)
}

/// `GET /ice-servers?room=…` with the room token as for the socket: `{"iceServers": [...],
/// "ttl": s}` for the token's user (with `--auth none`, [`ANONYMOUS_USER`]), TURN credentials
/// minted for it; refused exactly as the socket's handshake would be (400/401/403, a stale orb's
/// 403/503), counted alike. Never cached (the credentials are personal and expire), readable
/// across origins only from `--cors-allowed-origins`.
///
/// Its cost is a refused handshake's (one token check, one HMAC) and it holds nothing, so the
/// connection caps, which count open sockets, do not apply; an orb token's AiOrb check is the
/// socket's, shared and cached by the runtime.
async fn ice_servers(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let mut response = match ice_servers_answer(&state, query.as_deref(), &headers).await {
        Ok(list) => {
            state.metrics.ice_servers_issued(&list);
            axum::Json(list).into_response()
        }
        Err(refused) => *refused,
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    state.cors.decorate(&headers, response.headers_mut());
    response
}

async fn ice_servers_answer(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<IceServerList, Refused> {
    let room = room_param(query)?;
    let identity = authenticate_request(state, &room, query, headers)?;
    if let Some(refused) = check_orb_token(state, &room, identity.as_ref()).await {
        return Err(Box::new(refused));
    }
    Ok(match &identity {
        Some(id) => state.ice_servers_for(&id.user_id, id.expires_at),
        None => state.ice_servers_for(ANONYMOUS_USER, None),
    })
}

/// The CORS preflight of `/ice-servers` (a GET with `Authorization`): 204, with the CORS headers
/// only for an allowed origin.
async fn ice_servers_preflight(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    state.cors.decorate_preflight(&headers, response.headers_mut());
    response
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if state.registry.cluster().is_some_and(|c| !c.is_available()) {
        (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable: joins are refused").into_response()
    } else {
        "ok".into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = orb_telemetry::exposition::negotiate(accept, state.metrics.render());
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Serves HTTP/1.1 (and its WebSocket upgrades) on `listener` until `stop` is cancelled, then
/// lets the requests in progress finish. axum's own `serve` sets no header read timeout: a client
/// sending its header byte by byte (slowloris), or an idle keep-alive connection, would hold its
/// buffers for ever without counting against any cap. hyper's timeout covers both: it runs from
/// the moment the server waits for a request's header until the header is complete.
async fn serve_http(listener: TcpListener, app: Router, header_read_timeout: Duration, stop: CancellationToken) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: retrying at once would spin.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // Signaling frames are small and latency-bound: Nagle's algorithm (with delayed ACKs on
        // the peer) would hold them back for tens of milliseconds.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            tower_service::Service::call(&mut app.clone(), request)
        });
        let connection = http
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `config.listen` and serves until [`Server::shutdown_token`] is cancelled; summaries
    /// are kept as `config.summary` says (a directory, else memory).
    pub async fn start(
        config: &Config,
        runtime: Arc<dyn OrbRuntime>,
        orb_events: mpsc::UnboundedReceiver<OrbEvent>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let store = Summaries::local_store(&config.summary).map_err(std::io::Error::other)?;
        let checkpoints = Summaries::local_checkpoints(&config.summary).map_err(std::io::Error::other)?;
        Self::start_with_store(config, runtime, orb_events, metrics, store, Some(checkpoints)).await
    }

    /// [`Server::start`] with the stores given: the Kubernetes runtime's ConfigMaps, or the local
    /// stores.
    pub async fn start_with_store(
        config: &Config,
        runtime: Arc<dyn OrbRuntime>,
        mut orb_events: mpsc::UnboundedReceiver<OrbEvent>,
        metrics: Arc<Metrics>,
        store: Arc<dyn SummaryStore>,
        checkpoints: Option<Arc<dyn crate::summary::checkpoint::CheckpointStore>>,
    ) -> std::io::Result<Self> {
        let mut summaries = Summaries::new(store, config.summary.clone(), metrics.clone())?;
        if let Some(checkpoints) = checkpoints {
            summaries = summaries.with_checkpoints(checkpoints);
        }
        if matches!(config.auth, Authenticator::None) {
            warn!("!!! --auth=none: anyone can join any room as anyone. Use this for local development only !!!");
        }
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let cluster = config
            .redis
            .as_ref()
            .map(|settings| Cluster::new(settings, metrics.clone()).map(Arc::new))
            .transpose()
            .map_err(std::io::Error::other)?;
        if let Some(cluster) = &cluster {
            metrics.redis_up.set(0);
            info!(
                replica = cluster.replica(),
                "sharing rooms with other replicas through Redis"
            );
        }
        let state = Arc::new(AppState {
            limits: config.limits.clone(),
            auth: config.auth.clone(),
            admission: Admission::new(config.limits.admission.clone()),
            registry: Registry::with_cluster(
                config.limits.max_participants_per_room,
                runtime.clone(),
                metrics.clone(),
                cluster.clone(),
            ),
            summaries,
            metrics,
            shutdown: CancellationToken::new(),
            close_handshake_timeout: config.drain_timeout,
            ice: config.ice.clone(),
            cors: config.cors.clone(),
            draining: AtomicBool::new(false),
            connections: TaskTracker::new(),
            next_conn: AtomicU64::new(0),
        });
        state.summaries.start(state.shutdown.clone());
        match state.summaries.finish_leftover_checkpoints().await {
            Ok(0) => {}
            Ok(n) => info!(
                summaries = n,
                "stored the checkpoints left by the last run as partial summaries"
            ),
            Err(e) => warn!(error = %e, "could not finish the checkpoints left by the last run"),
        }
        if let Some(cluster) = &cluster {
            cluster.start(state.clone(), state.shutdown.clone());
        }
        let forward = state.clone();
        tokio::spawn(async move {
            while let Some(event) = orb_events.recv().await {
                let state = forward.clone();
                match event {
                    OrbEvent::Status { room_id, status } => {
                        forward.registry.runtime_status(&room_id, status);
                    }
                    OrbEvent::Gone {
                        room_id: room,
                        orb_uid,
                        why,
                    } => {
                        tokio::spawn(async move {
                            match state.summaries.orb_gone(&room, orb_uid.as_deref(), &why).await {
                                Ok(Some(id)) => {
                                    info!(%room, summary = %id, %why, "stored the last checkpoint as a partial summary")
                                }
                                Ok(None) => {}
                                Err(e) => warn!(%room, error = %e, "could not store the last checkpoint"),
                            }
                        });
                    }
                    OrbEvent::Listed { orb_uids } => {
                        tokio::spawn(async move {
                            match state.summaries.finish_checkpoints_of_unlisted_orbs(orb_uids).await {
                                Ok(0) => {}
                                Ok(n) => info!(
                                    summaries = n,
                                    "stored the checkpoints of AiOrbs gone unseen as partial summaries"
                                ),
                                Err(e) => warn!(error = %e, "could not finish the checkpoints of AiOrbs gone unseen"),
                            }
                        });
                    }
                }
            }
        });
        let stop_http = CancellationToken::new();
        let app = router(state.clone()).merge(crate::web::router(config));
        let serve = serve_http(listener, app, config.header_read_timeout, stop_http.clone());
        let drain_timeout = config.drain_timeout;
        let task_state = state.clone();
        let task = tokio::spawn(async move {
            let http = tokio::spawn(serve);
            task_state.shutdown.cancelled().await;
            task_state.draining.store(true, Ordering::Relaxed);
            info!("draining: closing connections");
            task_state.connections.close();
            if tokio::time::timeout(drain_timeout, task_state.connections.wait())
                .await
                .is_err()
            {
                warn!(
                    remaining = task_state.connections.len(),
                    "drain timeout reached with connections still open"
                );
            }
            stop_http.cancel();
            let _ = http.await;
            if tokio::time::timeout(RUNTIME_FLUSH_TIMEOUT, runtime.shutdown())
                .await
                .is_err()
            {
                warn!("orb runtime did not flush in time");
            }
            info!("stopped");
        });
        info!(%addr, "listening");
        Ok(Self { addr, state, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Cancel it to begin the drain.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Waits until the server stopped (after a shutdown and its drain).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Begins the drain and waits for it.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        self.wait().await;
    }
}
