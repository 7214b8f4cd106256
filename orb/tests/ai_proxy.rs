//! The openai-realtime brain reaches its service through an HTTP CONNECT proxy when one is set
//! for the service's scheme, sends the proxy's credential, reaches hosts in `no_proxy` directly,
//! and reports a proxy's refusal as a lost connection it retries.

// The handshake callback's error type is tungstenite's HTTP response, not ours to shrink.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{SinkExt, StreamExt};
use orb::brain::openai::OpenAiBrain;
use orb::brain::{Brain, BrainEvent, BrainIo};
use orb::config::OpenAiConfig;
use orb::proxy::{ProxyEnv, ProxySettings};
use orb::signaling::Backoff;
use orb::testkit::openai_config;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const WAIT: Duration = Duration::from_secs(30);

/// A realtime service that sets each session up and keeps it open; reports each connection's
/// `authorization` header.
async fn fake_service(listener: TcpListener, seen: mpsc::UnboundedSender<String>) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let seen = seen.clone();
        tokio::spawn(async move {
            let (auth_tx, auth_rx) = std::sync::mpsc::channel();
            let mut ws = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp: Response| {
                let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok());
                auth_tx.send(auth.unwrap_or_default().to_owned()).unwrap();
                Ok(resp)
            })
            .await
            .unwrap();
            seen.send(auth_rx.recv().unwrap()).unwrap();
            let send = |v: Value| Message::text(v.to_string());
            ws.send(send(json!({"type": "session.created"}))).await.unwrap();
            let Some(Ok(Message::Text(_update))) = ws.next().await else {
                return;
            };
            ws.send(send(json!({"type": "session.updated"}))).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        });
    }
}

/// What the proxy was asked for: the CONNECT request line and its Proxy-Authorization.
#[derive(Debug)]
struct Tunnel {
    request_line: String,
    authorization: Option<String>,
}

/// An HTTP proxy that tunnels each CONNECT to its target, or refuses every one with 403.
async fn connect_proxy(listener: TcpListener, refuse: bool, asked: mpsc::UnboundedSender<Tunnel>) {
    loop {
        let (mut client, _) = listener.accept().await.unwrap();
        let asked = asked.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(client.read_u8().await.unwrap());
            }
            let head = String::from_utf8(head).unwrap();
            let request_line = head.lines().next().unwrap().to_owned();
            let authorization = head
                .lines()
                .find_map(|l| l.strip_prefix("Proxy-Authorization: "))
                .map(str::to_owned);
            let target = request_line.split_whitespace().nth(1).unwrap().to_owned();
            asked
                .send(Tunnel {
                    request_line,
                    authorization,
                })
                .unwrap();
            if refuse {
                client
                    .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
                return;
            }
            let mut upstream = TcpStream::connect(target).await.unwrap();
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .unwrap();
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}

struct Setup {
    service_addr: std::net::SocketAddr,
    seen: mpsc::UnboundedReceiver<String>,
    proxy_addr: std::net::SocketAddr,
    asked: mpsc::UnboundedReceiver<Tunnel>,
}

async fn setup(refuse: bool) -> Setup {
    let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_addr = service.local_addr().unwrap();
    let (seen_tx, seen) = mpsc::unbounded_channel();
    tokio::spawn(fake_service(service, seen_tx));
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let (asked_tx, asked) = mpsc::unbounded_channel();
    tokio::spawn(connect_proxy(proxy, refuse, asked_tx));
    Setup {
        service_addr,
        seen,
        proxy_addr,
        asked,
    }
}

/// Runs the brain against `http://{service}/v1` with `env`; returns its events and the sender
/// whose drop ends it.
fn start_brain(
    service: std::net::SocketAddr,
    env: ProxyEnv,
) -> (
    mpsc::Receiver<BrainEvent>,
    mpsc::Sender<orb::brain::BrainInput>,
    tokio::task::JoinHandle<Result<(), orb::brain::BrainError>>,
) {
    let config = OpenAiConfig {
        proxy: ProxySettings::parse(&env).unwrap().into(),
        ..openai_config(&format!("http://{service}/v1"))
    };
    let brain = Box::new(
        OpenAiBrain::new(config).with_backoff(Backoff::new(Duration::from_millis(10), Duration::from_millis(50))),
    );
    let (in_tx, input) = mpsc::channel(16);
    let (events, ev_rx) = mpsc::channel(64);
    (ev_rx, in_tx, tokio::spawn(brain.run(BrainIo { input, events })))
}

/// The next item of `rx`, within the deadline.
async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("in time").unwrap()
}

async fn until_ready(events: &mut mpsc::Receiver<BrainEvent>) {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.expect("brain event") {
            Some(BrainEvent::Ready) => return,
            Some(BrainEvent::Error(e)) => panic!("brain error: {e}"),
            Some(_) => {}
            None => panic!("the brain ended"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brain_tunnels_through_the_proxy_with_its_credential() {
    let mut s = setup(false).await;
    // A ws:// service goes through http_proxy (https_proxy is for wss://, checked below).
    let env = ProxyEnv {
        http_proxy: Some(format!("http://orb:p%40ss@{}", s.proxy_addr)),
        https_proxy: Some("http://unused.invalid:1".into()),
        no_proxy: Some("example.com,10.0.0.0/8".into()),
    };
    let (mut events, input, brain) = start_brain(s.service_addr, env);
    until_ready(&mut events).await;
    let tunnel = next(&mut s.asked).await;
    assert_eq!(
        tunnel.request_line,
        format!("CONNECT {} HTTP/1.1", s.service_addr),
        "{tunnel:?}"
    );
    assert_eq!(
        tunnel.authorization,
        Some(format!("Basic {}", B64.encode("orb:p@ss"))),
        "the URL's user info, decoded"
    );
    // The service's own header went through the tunnel untouched.
    assert_eq!(next(&mut s.seen).await, "Bearer test-key");
    drop(input);
    tokio::time::timeout(WAIT, brain).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_in_no_proxy_and_schemes_without_a_proxy_are_reached_directly() {
    let mut s = setup(false).await;
    for env in [
        ProxyEnv {
            http_proxy: Some(format!("http://{}", s.proxy_addr)),
            no_proxy: Some("other.example, 127.0.0.0/8".into()),
            ..ProxyEnv::default()
        },
        ProxyEnv {
            http_proxy: Some(format!("http://{}", s.proxy_addr)),
            no_proxy: Some(format!("127.0.0.1:{}", s.service_addr.port())),
            ..ProxyEnv::default()
        },
        // https_proxy is for wss:// and https:// services only.
        ProxyEnv {
            https_proxy: Some(format!("http://{}", s.proxy_addr)),
            ..ProxyEnv::default()
        },
    ] {
        let (mut events, input, brain) = start_brain(s.service_addr, env);
        until_ready(&mut events).await;
        assert_eq!(next(&mut s.seen).await, "Bearer test-key");
        drop(input);
        tokio::time::timeout(WAIT, brain).await.unwrap().unwrap().unwrap();
    }
    // Had any connection gone through the proxy, it would have asked before the service answered.
    assert!(s.asked.try_recv().is_err(), "nothing went through the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_s_refusal_is_reported_and_retried() {
    let mut s = setup(true).await;
    let env = ProxyEnv {
        http_proxy: Some(format!("http://{}", s.proxy_addr)),
        ..ProxyEnv::default()
    };
    let (mut events, input, brain) = start_brain(s.service_addr, env);
    let error = loop {
        match tokio::time::timeout(WAIT, events.recv()).await.expect("brain event") {
            Some(BrainEvent::Error(e)) => break e,
            Some(BrainEvent::Ready) => panic!("ready through a refusing proxy"),
            Some(_) => {}
            None => panic!("the brain ended"),
        }
    };
    assert!(error.contains("refused to tunnel") && error.contains("403"), "{error}");
    // It tries again.
    next(&mut s.asked).await;
    next(&mut s.asked).await;
    assert!(s.seen.try_recv().is_err(), "the service was never reached");
    drop(input);
    tokio::time::timeout(WAIT, brain).await.unwrap().unwrap().unwrap();
}

/// The summary's text request to the service takes the same proxy as the realtime WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_request_goes_through_the_same_proxy() {
    use orb::brain::openai_summary::ChatSummarizer;
    use orb::brain::{Summarizer, SummaryRequest};
    use orb::testkit::fake_openai::{FakeOpenAi, default_summary};

    let mut s = setup(false).await;
    let fake = FakeOpenAi::start().await.unwrap();
    let env = ProxyEnv {
        http_proxy: Some(format!("http://{}", s.proxy_addr)),
        ..ProxyEnv::default()
    };
    let config = OpenAiConfig {
        proxy: ProxySettings::parse(&env).unwrap().into(),
        ..openai_config(&fake.base_url())
    };
    let lines = [orb::summary::TranscriptLine {
        speaker: "coach-1".into(),
        role: orb_protocol::UserRole::Coach,
        text: "We talked about sleep.".into(),
        offset_ms: 0,
        overlap: false,
    }];
    let summarizer = ChatSummarizer::new(&config);
    let content = tokio::time::timeout(
        WAIT,
        summarizer.summarize(SummaryRequest {
            context: &Default::default(),
            previous: None,
            lines: &lines,
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(content, default_summary());
    let tunnel = next(&mut s.asked).await;
    let target = fake.base_url();
    let authority = target.split("//").nth(1).unwrap().split('/').next().unwrap();
    assert_eq!(tunnel.request_line, format!("CONNECT {authority} HTTP/1.1"));
    assert_eq!(fake.chat_requests().len(), 1);
}
