//! Cross-origin reads of `/ice-servers` (`--cors-allowed-origins`): a page served from another
//! origin (the app's own site) may fetch its ICE servers with its room token. Only the exact
//! origins configured get CORS headers; any other origin gets none, so its browser keeps the
//! answer from the page. No cookies are involved (the token travels in `Authorization`), so
//! credentials mode is never allowed.

use axum::http::{HeaderMap, HeaderValue, header};

/// How long a browser may keep a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE_SECONDS: u32 = 600;

/// Why an origin in `--cors-allowed-origins` is refused at start-up.
#[derive(Debug, thiserror::Error)]
#[error(
    "--cors-allowed-origins: {0:?} is not an origin; write scheme://host[:port] in lower case, with no path or trailing slash (e.g. https://app.example.com)"
)]
pub struct OriginError(String);

/// The origins allowed to read the answers (exact, as browsers serialize them).
#[derive(Clone, Debug, Default)]
pub struct AllowedOrigins(Vec<HeaderValue>);

impl AllowedOrigins {
    /// Empty entries are skipped; every other one must be an origin exactly as a browser sends
    /// it in `Origin` (`https://app.example.com`, `http://localhost:8080`).
    pub fn new(origins: &[String]) -> Result<Self, OriginError> {
        origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .map(|o| {
                let bad = || OriginError(o.to_owned());
                let uri: http::Uri = o.parse().map_err(|_| bad())?;
                let authority = uri.authority().ok_or_else(bad)?;
                let serialized = format!("{}://{authority}", uri.scheme_str().unwrap_or_default());
                let plain = matches!(uri.scheme_str(), Some("http" | "https"))
                    && !authority.as_str().contains('@')
                    && serialized == o
                    && !o.bytes().any(|b| b.is_ascii_uppercase());
                if !plain {
                    return Err(bad());
                }
                HeaderValue::from_str(o).map_err(|_| bad())
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether CORS is on at all (answers then vary with `Origin`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The request's `Origin` when it is one of the allowed ones.
    fn allowed<'a>(&'a self, request: &HeaderMap) -> Option<&'a HeaderValue> {
        let origin = request.get(header::ORIGIN)?;
        self.0.iter().find(|allowed| *allowed == origin)
    }

    /// Adds the headers of an actual (non-preflight) answer: the allowed origin echoed, and
    /// `Vary: Origin` whenever CORS is configured (a cache must not hand one origin's answer to
    /// another).
    pub fn decorate(&self, request: &HeaderMap, response: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        response.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = self.allowed(request) {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        }
    }

    /// Adds a preflight's headers (GET with an `Authorization` header) for an allowed origin;
    /// nothing for any other, which makes the browser refuse the request itself.
    pub fn decorate_preflight(&self, request: &HeaderMap, response: &mut HeaderMap) {
        self.decorate(request, response);
        if self.allowed(request).is_some() {
            response.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET"));
            response.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization"),
            );
            response.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(PREFLIGHT_MAX_AGE_SECONDS),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> Result<AllowedOrigins, String> {
        let list: Vec<String> = list.iter().map(|o| (*o).to_owned()).collect();
        AllowedOrigins::new(&list).map_err(|e| e.to_string())
    }

    #[test]
    fn only_plain_origins_are_accepted() {
        assert_eq!(
            origins(&["https://app.example.com", " http://localhost:8080 ", ""])
                .unwrap()
                .0
                .len(),
            2
        );
        for bad in [
            "*",
            "null",
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://APP.example.com",
            "ftp://app.example.com",
            "https://user@app.example.com",
            "https://app.example.com?x=1",
        ] {
            let err = origins(&[bad]).unwrap_err();
            assert!(err.contains("--cors-allowed-origins"), "{bad}: {err}");
        }
    }

    #[test]
    fn only_an_allowed_origin_is_echoed() {
        let allowed = origins(&["https://app.example.com"]).unwrap();
        let request = |origin: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ORIGIN, origin.parse().unwrap());
            h
        };
        let mut out = HeaderMap::new();
        allowed.decorate_preflight(&request("https://app.example.com"), &mut out);
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_HEADERS], "Authorization");
        assert_eq!(out[header::VARY], "Origin");
        let mut out = HeaderMap::new();
        allowed.decorate_preflight(&request("https://evil.example.com"), &mut out);
        assert!(!out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!out.contains_key(header::ACCESS_CONTROL_ALLOW_HEADERS));
        let mut out = HeaderMap::new();
        AllowedOrigins::default().decorate(&request("https://app.example.com"), &mut out);
        assert!(out.is_empty(), "no CORS configured: no headers at all");
    }
}
