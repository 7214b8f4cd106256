//! A server on an ephemeral port and a small WebSocket test client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use orb_api::auth::{Role, RoomClaims, SigningKey, unix_now};
use orb_signaling::cluster::testing::RedisServer;
use orb_signaling::config::Config;
use orb_signaling::metrics::Metrics;
use orb_signaling::orb_runtime::testing::RecordingRuntime;
use orb_signaling::orb_runtime::{OrbEvents, OrbRuntime};
use orb_signaling::server::Server;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous: the machine may be busy; a healthy run never waits this long.
pub const WAIT: Duration = Duration::from_secs(20);
pub const KEY: [u8; 32] = [7; 32];

pub fn key() -> SigningKey {
    SigningKey::new(KEY.to_vec()).unwrap()
}

pub fn token(room: &str, sub: &str, role: Role) -> String {
    key().mint(&RoomClaims {
        room: room.into(),
        sub: sub.into(),
        role,
        exp: unix_now() + 600,
        session: None,
        iat: orb_api::auth::unix_now(),
        aud: orb_api::auth::ROOM_TOKEN_AUDIENCE.into(),
        orb: None,
    })
}

pub struct TestServer {
    /// The first replica (the only one without Redis).
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub runtime: Arc<RecordingRuntime>,
    /// The first replica's orb events and metrics.
    pub events: OrbEvents,
    pub metrics: Arc<Metrics>,
    /// With Redis: the other replicas, every replica's address, and the Redis they share.
    pub others: Vec<Server>,
    pub addrs: Vec<SocketAddr>,
    pub redis: Option<RedisServer>,
    next: AtomicUsize,
}

/// How many signaling replicas a suite runs against: the same expectations hold for one
/// process alone and for three sharing rooms through Redis with each room's members spread
/// over them ([`TestServer::join`] takes the replicas in turn).
#[derive(Clone, Copy, Debug)]
pub enum Setup {
    One,
    Three,
}

impl Setup {
    pub async fn start(self, args: &[&str]) -> TestServer {
        match self {
            Setup::One => start(args).await,
            Setup::Three => start_replicas(3, args).await,
        }
    }
}

/// `n` replicas sharing a fresh Redis, all ready (registered and subscribed) when this returns.
pub async fn start_replicas(n: usize, args: &[&str]) -> TestServer {
    let redis = RedisServer::start();
    start_replicas_on(n, args, redis).await
}

/// `n` replicas on `redis` sharing one recording orb runtime.
pub async fn start_replicas_on(n: usize, args: &[&str], redis: RedisServer) -> TestServer {
    let runtime = Arc::new(RecordingRuntime::default());
    let mut replicas = vec![];
    for i in 0..n {
        let argv = replica_args(&redis, i, args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        replicas.push(start_with(&argv, runtime.clone(), runtime.clone()).await);
    }
    TestServer::replicas(replicas, redis).await
}

/// The flags of replica `i` on `redis`, then `args`.
pub fn replica_args(redis: &RedisServer, i: usize, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        "--redis-url".to_owned(),
        redis.url(),
        "--replica-id".to_owned(),
        format!("replica-{i}"),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv
}

/// Waits until the server answers `/readyz` with 200.
pub async fn eventually_ready(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_get(addr, "/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "{addr} never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a server with auth off and a recording orb runtime; `args` are extra flags.
pub async fn start(args: &[&str]) -> TestServer {
    let runtime = Arc::new(RecordingRuntime::default());
    start_with(args, runtime.clone(), runtime).await
}

pub async fn start_with(args: &[&str], runtime: Arc<dyn OrbRuntime>, recording: Arc<RecordingRuntime>) -> TestServer {
    let metrics = Metrics::shared();
    let (events, rx) = OrbEvents::new(metrics.clone());
    start_full(args, runtime, recording, metrics, events, rx).await
}

pub async fn start_full(
    args: &[&str],
    runtime: Arc<dyn OrbRuntime>,
    recording: Arc<RecordingRuntime>,
    metrics: Arc<Metrics>,
    events: OrbEvents,
    rx: tokio::sync::mpsc::UnboundedReceiver<orb_signaling::orb_runtime::OrbEvent>,
) -> TestServer {
    let mut argv = vec!["orb-signaling", "--listen", "127.0.0.1:0"];
    if !args.contains(&"--auth") {
        argv.extend_from_slice(&["--auth", "none"]);
    }
    // The runtime under test is passed in; the flag only has to allow `--auth none`.
    if !args.contains(&"--orb-runtime") {
        argv.extend_from_slice(&["--orb-runtime", "none"]);
    }
    argv.extend_from_slice(args);
    let key = String::from_utf8(KEY.to_vec()).ok();
    let config = Config::parse_from(argv, key).unwrap();
    let server = Server::start(&config, runtime, rx, metrics.clone()).await.unwrap();
    let addr = server.local_addr();
    TestServer {
        addr,
        server: Some(server),
        runtime: recording,
        events,
        metrics,
        others: vec![],
        addrs: vec![addr],
        redis: None,
        next: AtomicUsize::new(0),
    }
}

impl TestServer {
    /// One test server of several replicas (started on `redis`), once every one is ready; the
    /// first one's events and metrics are the fixture's.
    pub async fn replicas(replicas: Vec<TestServer>, redis: RedisServer) -> TestServer {
        for r in &replicas {
            eventually_ready(r.addr).await;
        }
        let mut replicas = replicas.into_iter();
        let mut first = replicas.next().expect("at least one replica");
        let rest: Vec<TestServer> = replicas.collect();
        first.addrs = std::iter::once(first.addr).chain(rest.iter().map(|s| s.addr)).collect();
        first.others = rest.into_iter().filter_map(|mut s| s.server.take()).collect();
        first.redis = Some(redis);
        first
    }

    /// The address of replica `i`.
    pub fn url_at(&self, i: usize, room: &str) -> String {
        format!("ws://{}/ws-simple/{room}", self.addrs[i])
    }

    /// Joins on replica `i` without auth.
    pub async fn join_at(&self, i: usize, room: &str, user: &str, role: &str) -> (Client, Value) {
        join_url(&self.url_at(i, room), room, user, role).await
    }

    pub fn url(&self, room: &str) -> String {
        format!("ws://{}/ws-simple/{room}", self.addr)
    }

    pub async fn connect(&self, room: &str) -> Client {
        Client::connect(&self.url(room), None).await
    }

    /// The replicas in turn: each connection made through it lands on the next one.
    pub fn next_url(&self, room: &str) -> String {
        let addr = self.addrs[self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len()];
        format!("ws://{addr}/ws-simple/{room}")
    }

    /// Connects (to the next replica) and joins without auth, returning the client and its
    /// peer-discovery.
    pub async fn join(&self, room: &str, user: &str, role: &str) -> (Client, Value) {
        join_url(&self.next_url(room), room, user, role).await
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }
}

/// Connects to `url` and joins without auth, returning the client and its peer-discovery.
pub async fn join_url(url: &str, room: &str, user: &str, role: &str) -> (Client, Value) {
    let mut c = Client::connect(url, None).await;
    let ptype = if role == "ai" { "ai" } else { "human" };
    c.send(json!({"type": "join", "roomId": room, "userId": user, "userRole": role, "userName": user, "participantType": ptype}))
        .await;
    let discovery = c.recv().await;
    assert_eq!(discovery["type"], "peer-discovery", "{discovery}");
    (c, discovery)
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// A handshake the server answered with something else than an upgrade.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    /// The JSON body (`{"error", "reason"}`), or `Null` when it is not JSON.
    pub body: Value,
    pub headers: tungstenite::http::HeaderMap,
}

/// The `Sec-WebSocket-Protocol` value carrying `token` as this server expects it.
pub fn token_protocols(token: &str) -> String {
    format!("orb-signaling, bearer.{token}")
}

/// Opens a WebSocket to `url` with extra request headers. `Ok` with the handshake response's
/// headers when the server upgraded, `Err` with its answer when it refused.
pub async fn handshake(url: &str, headers: &[(&str, &str)]) -> Result<(Client, tungstenite::http::HeaderMap), Refused> {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake timed out")
    {
        Ok((ws, response)) => Ok((Client { ws }, response.headers().clone())),
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Err(Refused {
                status: response.status().as_u16(),
                body,
                headers: response.headers().clone(),
            })
        }
        Err(e) => panic!("handshake failed without an HTTP answer: {e}"),
    }
}

/// [`handshake`] that must be refused.
pub async fn refused_with(url: &str, headers: &[(&str, &str)]) -> Refused {
    match handshake(url, headers).await {
        Ok(_) => panic!("{url} was upgraded; expected a refusal"),
        Err(refused) => refused,
    }
}

impl Client {
    pub async fn connect(url: &str, bearer: Option<&str>) -> Client {
        let mut request = url.into_client_request().unwrap();
        if let Some(t) = bearer {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        Client { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).await.unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// The next text message; fails on close or timeout.
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a message")
                .expect("stream ended")
                .expect("socket error");
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(f) => panic!("closed while waiting for a message: {f:?}"),
                _ => {}
            }
        }
    }

    /// The next text message, or the close code and reason if the server closes first.
    pub async fn recv_or_close(&mut self) -> Result<Value, (u16, String)> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a message")
                .expect("stream ended")
                .expect("socket error");
            match m {
                Message::Text(t) => return Ok(serde_json::from_str(t.as_str()).unwrap()),
                Message::Close(f) => {
                    return Err(f.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string())));
                }
                _ => {}
            }
        }
    }

    /// Skips messages of other types until one of type `t` arrives.
    pub async fn recv_type(&mut self, t: &str) -> serde_json::Value {
        loop {
            let m = self.recv().await;
            if m["type"] == t {
                return m;
            }
        }
    }

    /// Proves that nothing else is queued for this client: a ping's pong is the next message.
    pub async fn expect_nothing_pending(&mut self) {
        self.send(json!({"type": "ping"})).await;
        let m = self.recv().await;
        assert_eq!(m, json!({"type": "pong"}), "unexpected message before pong");
    }

    /// Reads until the server closes; returns the close code and reason (text messages before
    /// the close are returned too).
    pub async fn closed(&mut self) -> (u16, String, Vec<Value>) {
        let mut texts = vec![];
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match next {
                Some(Ok(Message::Text(t))) => texts.push(serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(Message::Close(f))) => {
                    // Keep polling so that the close reply is written, as a browser does.
                    let _ = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = self.ws.next().await {} }).await;
                    return match f {
                        Some(f) => (u16::from(f.code), f.reason.to_string(), texts),
                        None => (u16::from(CloseCode::Status), String::new(), texts),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(tungstenite::Error::ConnectionClosed)) | None => return (1006, String::new(), texts),
                Some(Err(e)) => return (1006, e.to_string(), texts),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Wait for the server's close reply so the leave is processed before the caller goes on.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }

    /// Drops the TCP connection without a close handshake.
    pub fn abort(self) {
        drop(self.ws);
    }
}

/// `GET path`: the probe endpoints and handshake refusals.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    orb_telemetry::probe::get(addr, path, WAIT).await.unwrap()
}

/// Sends `request` as it is over a fresh TCP connection and reads the answer to the end: the
/// status and the body.
pub async fn raw_http(addr: SocketAddr, request: &str) -> (u16, String) {
    let answer = raw_http_answer(addr, request).await;
    (answer.status, answer.body)
}

/// An HTTP answer read off the wire.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Names in lower case, in the order sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The value of header `name` (lower case), if sent once or more (the first).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// [`raw_http`] with the answer's headers.
pub async fn raw_http_answer(addr: SocketAddr, request: &str) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("no answer in time")
        .unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out.as_str(), ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpAnswer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// `method path` with `headers`, on a connection of its own.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpAnswer {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: signaling\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    raw_http_answer(addr, &request).await
}

/// A file holding `secret` (a TURN shared secret, say), in a directory of its own.
pub fn secret_file(secret: &str) -> std::path::PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "orb-signaling-secret-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, secret).unwrap();
    path
}

/// base64(HMAC-SHA1(secret, username)): the TURN REST credential, computed here on its own.
pub fn turn_rest_credential(secret: &str, username: &str) -> String {
    use base64::Engine;
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Waits until `cond` holds, polling; for effects that have no message to wait on.
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_for(what, WAIT, cond).await;
}

/// [`eventually`] with a longer wait, for effects scheduled by a backoff.
pub async fn eventually_for(what: &str, wait: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + wait;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
