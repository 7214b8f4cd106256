//! A warm orb's assignment desk: `POST /assign` with the orb's credential as a bearer token and an
//! [`Assignment`] as JSON. The first valid assignment binds the orb to its room for good; the same
//! assignment sent again (a retry after a lost answer) gets the same answer, another one `409`.
//! The answer waits until the orb joined the room (`200`, `{"outcome":"joined"}`), at most
//! [`JOIN_WAIT`], else `202` (`accepted`): the caller then learns of the join from readiness.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use orb_api::assignment::{ASSIGN_PATH, AssignOutcome, Assignment, credential_matches};
use serde_json::json;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::Config;
use crate::health::Health;

/// Longest an assignment's answer waits for the join.
pub const JOIN_WAIT: Duration = Duration::from_secs(10);
/// Largest assignment body accepted.
const MAX_BODY: usize = 16 * 1024;

struct Desk {
    /// The warm configuration: the credential, and what assignments are checked against.
    warm: Config,
    health: Health,
    slot: Mutex<Option<oneshot::Sender<Config>>>,
    taken: Mutex<Option<Assignment>>,
}

/// The `/assign` route and the receiver of the orb's one assignment, as its configuration.
pub fn desk(warm: Config, health: Health) -> (Router, oneshot::Receiver<Config>) {
    let (tx, rx) = oneshot::channel();
    let desk = Arc::new(Desk {
        warm,
        health,
        slot: Mutex::new(Some(tx)),
        taken: Mutex::new(None),
    });
    let router = Router::new().route(ASSIGN_PATH, post(assign)).with_state(desk);
    (router, rx)
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": reason.into() }))).into_response()
}

async fn assign(State(desk): State<Arc<Desk>>, headers: HeaderMap, body: Bytes) -> Response {
    let expected = desk.warm.warm.as_deref().unwrap_or_default();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if expected.is_empty() || !credential_matches(presented, expected) {
        warn!("an assignment with a wrong or missing credential was refused");
        return refuse(StatusCode::UNAUTHORIZED, "wrong or missing assignment credential");
    }
    if body.len() > MAX_BODY {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "assignment too large");
    }
    let assignment: Assignment = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("malformed assignment: {e}")),
    };
    let config = match desk.warm.assigned(&assignment) {
        Ok(c) => c,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("invalid assignment: {e}")),
    };
    {
        let mut taken = desk.taken.lock().expect("not poisoned");
        match taken.as_ref() {
            Some(prev) if *prev != assignment => {
                return refuse(StatusCode::CONFLICT, format!("already assigned to room {}", prev.room));
            }
            Some(_) => {}
            None => {
                let Some(tx) = desk.slot.lock().expect("not poisoned").take() else {
                    return refuse(StatusCode::CONFLICT, "already assigned");
                };
                // Not ready again until joined: the warm readiness must not read as the join.
                desk.health.set_ready(false);
                if tx.send(config).is_err() {
                    return refuse(StatusCode::SERVICE_UNAVAILABLE, "the orb is shutting down");
                }
                info!(room = %assignment.room, "assigned to a room");
                *taken = Some(assignment);
            }
        }
    }
    let outcome = if joined_within(&desk.health, JOIN_WAIT).await {
        AssignOutcome::Joined
    } else {
        AssignOutcome::Accepted
    };
    let status = match outcome {
        AssignOutcome::Joined => StatusCode::OK,
        AssignOutcome::Accepted => StatusCode::ACCEPTED,
    };
    (status, axum::Json(json!({ "outcome": outcome }))).into_response()
}

async fn joined_within(health: &Health, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if health.is_ready() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
