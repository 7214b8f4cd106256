//! The web client, served by signaling: a landing page and the room page
//! (`/rooms/{roomId}?role=coach|client&name=…`) with seed 001's tri-party WebRTC logic (a mesh;
//! the AI never offers), video tiles for the humans and an animated orb for the AI. The assets are
//! plain HTML, JavaScript and CSS compiled into the binary: no build step.
//!
//! Dev mode (`--orb-runtime local`) also mints room tokens for the page
//! (`GET /api/dev/token?room=…&role=…&user=…`), standing in for the app backend that mints them in
//! production; elsewhere that route does not exist and the page takes its token from `?token=`.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use orb_api::auth::{Role, RoomClaims, SigningKey, unix_now};
use serde::Deserialize;

use crate::auth::Authenticator;
use crate::config::{Config, RuntimeKind};

const INDEX_HTML: &str = include_str!("../web/index.html");
const ROOM_HTML: &str = include_str!("../web/room.html");
const ROOM_JS: &str = include_str!("../web/room.js");
const STYLE_CSS: &str = include_str!("../web/style.css");

/// How long a token minted for a dev page is valid.
const DEV_TOKEN_SECONDS: u64 = 12 * 3600;

#[derive(Clone)]
struct WebState {
    /// Set in dev mode: mint tokens for pages (`None` inside means auth is off).
    dev_tokens: Option<Option<SigningKey>>,
}

/// The web client's routes.
pub fn router(config: &Config) -> Router {
    let dev_tokens = (config.orb_runtime == RuntimeKind::Local).then(|| match &config.auth {
        Authenticator::Jwt { key, .. } => Some(key.clone()),
        Authenticator::None => None,
    });
    let mut router = Router::new()
        .route("/", get(|| async { html(INDEX_HTML) }))
        .route("/rooms/{room_id}", get(room_page))
        .route(
            "/web/room.js",
            get(|| async { asset("text/javascript; charset=utf-8", ROOM_JS) }),
        )
        .route(
            "/web/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        );
    if dev_tokens.is_some() {
        router = router.route("/api/dev/token", get(dev_token));
    }
    router.with_state(WebState { dev_tokens })
}

fn html(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn room_page(Path(room_id): Path<String>) -> Response {
    match orb_api::naming::validate_room_id(&room_id) {
        Ok(()) => html(ROOM_HTML),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    room: String,
    role: String,
    user: String,
}

/// A user id a page may choose: short, and safe in logs and JSON.
fn valid_user_id(user: &str) -> bool {
    (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

async fn dev_token(State(state): State<WebState>, Query(q): Query<TokenQuery>) -> Response {
    let Some(key) = state.dev_tokens else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let role = match q.role.as_str() {
        "coach" => Role::Coach,
        "client" => Role::Client,
        // Never the AI: only the orb runtime mints AI tokens.
        _ => return (StatusCode::BAD_REQUEST, "role must be coach or client").into_response(),
    };
    if let Err(e) = orb_api::naming::validate_room_id(&q.room) {
        return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
    }
    if !valid_user_id(&q.user) {
        return (StatusCode::BAD_REQUEST, "user must be 1-64 of A-Z a-z 0-9 - _ .").into_response();
    }
    let token = key.map(|key| {
        key.mint(&RoomClaims {
            room: q.room.clone(),
            sub: q.user.clone(),
            role,
            exp: unix_now() + DEV_TOKEN_SECONDS,
            session: None,
            iat: orb_api::auth::unix_now(),
            aud: orb_api::auth::ROOM_TOKEN_AUDIENCE.into(),
            orb: None,
        })
    });
    axum::Json(serde_json::json!({ "userId": q.user, "token": token })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_bounded_and_plain() {
        assert!(valid_user_id("coach-1a2b"));
        assert!(!valid_user_id(""));
        assert!(!valid_user_id("a b"));
        assert!(!valid_user_id("<script>"));
        assert!(!valid_user_id(&"x".repeat(65)));
    }

    #[test]
    fn the_page_is_wired_to_its_assets() {
        assert!(ROOM_HTML.contains("/web/room.js"));
        assert!(ROOM_HTML.contains("/web/style.css"));
        assert!(ROOM_JS.contains("/ws-simple/"));
    }
}
