//! Outbound connections to the AI service, direct or through an HTTP proxy: the usual
//! `https_proxy`/`HTTPS_PROXY` (for `wss://` and `https://` targets), `http_proxy`/`HTTP_PROXY`
//! (for `ws://` and `http://` targets) and `no_proxy`/`NO_PROXY` environment variables, lower
//! case first as curl reads them. Through a proxy the orb opens an HTTP `CONNECT` tunnel to the
//! target and speaks TLS and WebSocket inside it, so the proxy sees only the target's host and
//! port. The orb's signaling connection never uses a proxy: it stays inside the cluster.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use orb_api::cidr::{Cidr, CidrError};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, handshake::client::Response};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::debug;

/// The proxy for TLS targets, in the order they are read.
pub const HTTPS_PROXY_ENV: [&str; 2] = ["https_proxy", "HTTPS_PROXY"];
/// The proxy for plain targets, in the order they are read.
pub const HTTP_PROXY_ENV: [&str; 2] = ["http_proxy", "HTTP_PROXY"];
/// Hosts reached directly, in the order they are read.
pub const NO_PROXY_ENV: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// Longest a proxy may take to answer a `CONNECT`: a hung proxy must not stall reconnects.
const CONNECT_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `CONNECT` answer header read; a proxy's answer is a few hundred bytes.
const MAX_CONNECT_ANSWER: usize = 16 * 1024;

/// A WebSocket to the AI service, whichever way it was reached.
pub type AiWebSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The raw proxy environment, read once at start (it may carry a proxy password, so it is kept
/// out of flags and `Debug`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    pub https_proxy: Option<String>,
    pub http_proxy: Option<String>,
    pub no_proxy: Option<String>,
}

impl ProxyEnv {
    pub fn from_env() -> Self {
        let first = |names: [&str; 2]| {
            names
                .into_iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        };
        Self {
            https_proxy: first(HTTPS_PROXY_ENV),
            http_proxy: first(HTTP_PROXY_ENV),
            no_proxy: first(NO_PROXY_ENV),
        }
    }
}

impl fmt::Debug for ProxyEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyEnv")
            .field("https_proxy", &self.https_proxy.as_ref().map(|_| ".."))
            .field("http_proxy", &self.http_proxy.as_ref().map(|_| ".."))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProxyConfigError {
    #[error("{var}: proxy {url:?} is not http://[user:password@]host[:port] (only HTTP proxies are supported)")]
    Url { var: &'static str, url: String },
    #[error("no_proxy entry {entry:?}: {source}")]
    NoProxy { entry: String, source: CidrError },
}

/// Which connections go through which proxy. The default reaches everything directly.
#[derive(Clone, Debug, Default)]
pub struct ProxySettings {
    https: Option<ProxyServer>,
    http: Option<ProxyServer>,
    no_proxy: NoProxy,
}

impl ProxySettings {
    pub fn parse(env: &ProxyEnv) -> Result<Self, ProxyConfigError> {
        let server = |var, value: &Option<String>| value.as_deref().map(|v| ProxyServer::parse(var, v)).transpose();
        Ok(Self {
            https: server("https_proxy", &env.https_proxy)?,
            http: server("http_proxy", &env.http_proxy)?,
            no_proxy: env
                .no_proxy
                .as_deref()
                .map(NoProxy::parse)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// The proxy a connection to `host:port` goes through, if any; `tls` for `wss://` and
    /// `https://` targets.
    pub fn proxy_for(&self, tls: bool, host: &str, port: u16) -> Option<&ProxyServer> {
        let proxy = if tls { self.https.as_ref() } else { self.http.as_ref() }?;
        (!self.no_proxy.matches(host, port)).then_some(proxy)
    }
}

/// An HTTP proxy: where it listens and the `Proxy-Authorization` its URL's user info makes.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyServer {
    host: String,
    port: u16,
    authorization: Option<String>,
}

impl fmt::Debug for ProxyServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyServer")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("authorization", &self.authorization.as_ref().map(|_| ".."))
            .finish()
    }
}

impl ProxyServer {
    /// `http://[user:password@]host[:port][/]`, the scheme optional; port 80 when absent.
    fn parse(var: &'static str, url: &str) -> Result<Self, ProxyConfigError> {
        let bad = || ProxyConfigError::Url {
            var,
            url: redact_userinfo(url),
        };
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => return Err(bad()),
            None => url,
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(bad());
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport).ok_or_else(bad)?;
        let authorization = userinfo.map(|u| {
            let (user, password) = u.split_once(':').unwrap_or((u, ""));
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            format!("Basic {}", B64.encode(format!("{}:{}", decode(user), decode(password))))
        });
        Ok(Self {
            host,
            port: port.unwrap_or(80),
            authorization,
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; `None` when malformed.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            // A bare IPv6 address has no port.
            Some(_) if s.parse::<std::net::Ipv6Addr>().is_ok() => (s, None),
            Some(_) => return None,
            None => (s, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0)?),
    };
    Some((host.to_ascii_lowercase(), port))
}

/// A proxy URL as it may be logged: its password replaced.
fn redact_userinfo(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, after)) => {
            let scheme = before
                .split_once("://")
                .map(|(s, _)| format!("{s}://"))
                .unwrap_or_default();
            format!("{scheme}..@{after}")
        }
        None => url.to_owned(),
    }
}

/// `no_proxy`: comma-separated `*` (everything), addresses, CIDR ranges, and domain names
/// (matching the name and its subdomains; a leading `.` or `*.` is the same), each optionally
/// with `:port`.
#[derive(Clone, Debug, Default)]
struct NoProxy {
    everything: bool,
    entries: Vec<(NoProxyHost, Option<u16>)>,
}

#[derive(Clone, Debug)]
enum NoProxyHost {
    Range(Cidr),
    Address(IpAddr),
    Domain(String),
}

impl NoProxy {
    fn parse(list: &str) -> Result<Self, ProxyConfigError> {
        let mut out = Self::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                out.everything = true;
                continue;
            }
            if entry.contains('/') {
                let cidr = entry.parse().map_err(|source| ProxyConfigError::NoProxy {
                    entry: entry.to_owned(),
                    source,
                })?;
                out.entries.push((NoProxyHost::Range(cidr), None));
                continue;
            }
            let Some((host, port)) = split_host_port(entry) else {
                return Err(ProxyConfigError::NoProxy {
                    entry: entry.to_owned(),
                    source: CidrError::Syntax(entry.to_owned()),
                });
            };
            let host = match host.parse::<IpAddr>() {
                Ok(ip) => NoProxyHost::Address(ip),
                Err(_) => {
                    let domain = host.trim_start_matches("*.").trim_start_matches('.');
                    NoProxyHost::Domain(domain.trim_end_matches('.').to_owned())
                }
            };
            out.entries.push((host, port));
        }
        Ok(out)
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        if self.everything {
            return true;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
        let host = host.to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|(entry, entry_port)| {
            entry_port.is_none_or(|p| p == port)
                && match entry {
                    NoProxyHost::Range(cidr) => ip.is_some_and(|ip| cidr.contains(ip)),
                    NoProxyHost::Address(a) => ip == Some(*a),
                    NoProxyHost::Domain(d) => {
                        host == *d || host.strip_suffix(d.as_str()).is_some_and(|rest| rest.ends_with('.'))
                    }
                }
        })
    }
}

#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("invalid URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect to {what}: {source}")]
    Tcp { what: String, source: std::io::Error },
    #[error("proxy {proxy} refused to tunnel to {target}: {status}")]
    ProxyRefused {
        proxy: String,
        target: String,
        status: String,
    },
    #[error("proxy {proxy}: {reason}")]
    ProxyAnswer { proxy: String, reason: String },
    #[error(transparent)]
    WebSocket(#[from] tungstenite::Error),
}

/// A TCP stream to `host:port`, through `proxy`'s tunnel when the settings name one for it. `tls`
/// says the connection will carry TLS (it picks the proxy; the caller does the TLS).
pub async fn connect_tcp(proxy: &ProxySettings, tls: bool, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match proxy.proxy_for(tls, bare, port) {
        None => {
            debug!(%host, port, "connecting directly");
            TcpStream::connect((bare, port))
                .await
                .map_err(|source| ConnectError::Tcp {
                    what: format!("{host}:{port}"),
                    source,
                })
        }
        Some(server) => {
            debug!(%host, port, proxy = %server.host, proxy_port = server.port, "connecting through the proxy");
            tunnel(server, bare, port).await
        }
    }
}

/// Opens the WebSocket of `request` (`ws://` or `wss://`), through a proxy when the settings name
/// one for its host. The AI brains open their service connection with this.
pub async fn connect_websocket(
    request: impl IntoClientRequest,
    proxy: &ProxySettings,
) -> Result<(AiWebSocket, Response), ConnectError> {
    let request = request.into_client_request()?;
    let uri = request.uri();
    let url = uri.to_string();
    let url_error = |reason: &str| ConnectError::Url {
        url: url.clone(),
        reason: reason.to_owned(),
    };
    let tls = match uri.scheme_str() {
        Some("wss") => true,
        Some("ws") => false,
        _ => return Err(url_error("the scheme is not ws:// or wss://")),
    };
    let host = uri.host().ok_or_else(|| url_error("no host"))?.to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let stream = connect_tcp(proxy, tls, &host, port).await?;
    Ok(tokio_tungstenite::client_async_tls(request, stream).await?)
}

/// `CONNECT host:port` through `server`; the stream is the tunnel once the proxy answers 2xx.
async fn tunnel(server: &ProxyServer, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let proxy = format!("{}:{}", bracketed(&server.host), server.port);
    let target = format!("{}:{port}", bracketed(host));
    let mut stream = TcpStream::connect((server.host.as_str(), server.port))
        .await
        .map_err(|source| ConnectError::Tcp {
            what: format!("the proxy {proxy}"),
            source,
        })?;
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &server.authorization {
        request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    request.push_str("\r\n");
    let answer_error = |reason: String| ConnectError::ProxyAnswer {
        proxy: proxy.clone(),
        reason,
    };
    let exchange = async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| answer_error(format!("cannot send CONNECT: {e}")))?;
        read_answer_head(&mut stream).await.map_err(answer_error)
    };
    let head = tokio::time::timeout(CONNECT_ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| answer_error(format!("no answer to CONNECT within {CONNECT_ANSWER_TIMEOUT:?}")))??;
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    if !status_line.starts_with("HTTP/1.") || code.is_none() {
        return Err(answer_error(format!("not an HTTP answer: {status_line:?}")));
    }
    if !code.is_some_and(|c| (200..300).contains(&c)) {
        return Err(ConnectError::ProxyRefused {
            proxy,
            target,
            status: status_line,
        });
    }
    Ok(stream)
}

/// The answer's header, up to its blank line. Read a byte at a time so that nothing past the
/// header (the target's first bytes) is consumed.
async fn read_answer_head(stream: &mut TcpStream) -> Result<String, String> {
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_ANSWER {
            return Err(format!("answer header longer than {MAX_CONNECT_ANSWER} bytes"));
        }
        match stream.read_u8().await {
            Ok(b) => head.push(b),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err("closed the connection before answering CONNECT".into());
            }
            Err(e) => return Err(format!("cannot read its answer: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(https: Option<&str>, http: Option<&str>, no_proxy: Option<&str>) -> ProxySettings {
        ProxySettings::parse(&ProxyEnv {
            https_proxy: https.map(Into::into),
            http_proxy: http.map(Into::into),
            no_proxy: no_proxy.map(Into::into),
        })
        .unwrap()
    }

    #[test]
    fn proxy_urls_parse_with_defaults_and_credentials() {
        let s = ProxyServer::parse("https_proxy", "http://proxy.corp:3128/").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.authorization.is_none()),
            ("proxy.corp", 3128, true)
        );
        let s = ProxyServer::parse("https_proxy", "Proxy.Corp").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("proxy.corp", 80));
        let s = ProxyServer::parse("https_proxy", "http://[fd00::1]:8080").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("fd00::1", 8080));
        let s = ProxyServer::parse("https_proxy", "http://me:p%40ss@10.0.0.1:3128").unwrap();
        assert_eq!(
            s.authorization.as_deref(),
            Some(format!("Basic {}", B64.encode("me:p@ss")).as_str())
        );
        assert!(!format!("{s:?}").contains("Basic"), "Debug hides the credential");
    }

    #[test]
    fn unusable_proxy_urls_are_refused_without_their_password() {
        for url in [
            "https://proxy:443",
            "socks5://proxy:1080",
            "http://proxy:0",
            "http://proxy:x",
            "http://proxy/path",
            "http://",
            "http://u:secret@proxy:99999",
        ] {
            let err = ProxyServer::parse("https_proxy", url).unwrap_err();
            assert!(!err.to_string().contains("secret"), "{err}");
        }
    }

    #[test]
    fn the_target_scheme_picks_the_proxy_and_no_proxy_exempts_hosts() {
        let s = settings(Some("http://tls-proxy:1"), Some("http://plain-proxy:2"), None);
        assert_eq!(s.proxy_for(true, "api.openai.com", 443).unwrap().host, "tls-proxy");
        assert_eq!(s.proxy_for(false, "api.openai.com", 80).unwrap().host, "plain-proxy");
        assert!(
            settings(Some("http://p:1"), None, None)
                .proxy_for(false, "h", 80)
                .is_none()
        );
        assert!(
            ProxySettings::default()
                .proxy_for(true, "api.openai.com", 443)
                .is_none()
        );

        let s = settings(
            Some("http://p:1"),
            None,
            Some(" .svc.cluster.local, example.com,*.internal,10.0.0.0/8, ::1, 192.0.2.7:8443"),
        );
        let direct = |host: &str, port| s.proxy_for(true, host, port).is_none();
        assert!(direct("orb-signaling.orbs.svc.cluster.local", 443));
        assert!(direct("example.com", 443));
        assert!(direct("API.example.com.", 443));
        assert!(direct("a.internal", 443));
        assert!(direct("10.1.2.3", 443));
        assert!(direct("[::1]", 443));
        assert!(direct("192.0.2.7", 8443));
        assert!(!direct("192.0.2.7", 443), "the entry's port only");
        assert!(!direct("notexample.com", 443));
        assert!(!direct("api.openai.com", 443));
        assert!(!direct("11.0.0.1", 443));
        assert!(
            settings(Some("http://p:1"), None, Some("*"))
                .proxy_for(true, "anything", 443)
                .is_none()
        );
    }

    #[test]
    fn malformed_no_proxy_entries_are_refused() {
        for list in ["10.0.0.1/8", "10.0.0.0/40", "host:port", "[::1"] {
            let env = ProxyEnv {
                no_proxy: Some(list.into()),
                ..ProxyEnv::default()
            };
            assert!(
                matches!(ProxySettings::parse(&env), Err(ProxyConfigError::NoProxy { .. })),
                "{list}"
            );
        }
    }
}

/// A connector for hyper's client that opens its TCP connections with [`connect_tcp`], so plain
/// HTTPS requests to the AI service (the summary's) take the same proxy as its WebSocket.
#[derive(Clone, Debug)]
pub struct ProxyConnector {
    proxy: std::sync::Arc<ProxySettings>,
}

impl ProxyConnector {
    pub fn new(proxy: std::sync::Arc<ProxySettings>) -> Self {
        Self { proxy }
    }
}

impl tower_service::Service<http::Uri> for ProxyConnector {
    type Response = hyper_util::rt::TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, ConnectError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ConnectError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let proxy = self.proxy.clone();
        Box::pin(async move {
            let tls = uri.scheme_str() == Some("https");
            let host = uri.host().ok_or_else(|| ConnectError::Url {
                url: uri.to_string(),
                reason: "no host".into(),
            })?;
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            connect_tcp(&proxy, tls, host, port)
                .await
                .map(hyper_util::rt::TokioIo::new)
        })
    }
}
