//! A minimal HTTP/1.0 client for our own binaries' endpoints (`/readyz`, `/metrics`, a warm orb's
//! `/assign`) on addresses we started them on: the local runtime's readiness probe and
//! assignments, the operator's assignments, the tests and the benchmarks. Not a
//! general HTTP client: no redirects, no TLS, no chunked bodies (HTTP/1.0 responses end at close).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// The status code and body of `GET path`, or an error (including a timeout after `timeout`).
pub async fn get(addr: impl ToSocketAddrs, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    request(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n"),
        path,
        timeout,
    )
    .await
}

/// `POST path` with a JSON body and a bearer credential: how an orb's starter hands a warm orb
/// its assignment. The status code and body, or an error (a timeout after `timeout`).
pub async fn post_json(
    addr: impl ToSocketAddrs,
    path: &str,
    bearer: &str,
    body: &str,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {bearer}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    request(addr, &head, path, timeout).await
}

/// Longest answer read: the peer may be hostile (a warm pod someone planted), and an answer is a
/// status line and a short JSON body.
pub const MAX_ANSWER_BYTES: u64 = 64 * 1024;

async fn request(addr: impl ToSocketAddrs, raw: &str, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(raw.as_bytes()).await?;
        let mut buf = Vec::new();
        (&mut stream).take(MAX_ANSWER_BYTES + 1).read_to_end(&mut buf).await?;
        if buf.len() as u64 > MAX_ANSWER_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{path} answered more than {MAX_ANSWER_BYTES} bytes"),
            ));
        }
        parse(&buf)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("{path} timed out")))?
}

fn parse(response: &[u8]) -> io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_endless_answer_is_cut_off_not_buffered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            // Far more than any answer; stops when the client hangs up.
            for _ in 0..1024 {
                if socket.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let err = post_json(addr, "/assign", "c", "{}", Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn status_and_body() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nok").unwrap(), (200, "ok".into()));
        assert_eq!(parse(b"HTTP/1.0 503 X\r\n\r\n").unwrap(), (503, String::new()));
        assert!(parse(b"garbage").is_err());
        assert!(parse(b"").is_err());
    }

    #[tokio::test]
    async fn a_closed_port_is_an_error_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(
            get(("127.0.0.1", port), "/readyz", Duration::from_secs(5))
                .await
                .is_err()
        );
    }
}
