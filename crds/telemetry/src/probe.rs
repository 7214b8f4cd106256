//! A minimal HTTP/1.0 GET for our own binaries' endpoints (`/readyz`, `/metrics`) on addresses we
//! started them on: the local runtime's readiness probe, the tests and the benchmarks. Not a
//! general HTTP client: no redirects, no TLS, no chunked bodies (HTTP/1.0 responses end at close).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// The status code and body of `GET path`, or an error (including a timeout after `timeout`).
pub async fn get(addr: impl ToSocketAddrs, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        parse(&buf)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("GET {path} timed out")))?
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
