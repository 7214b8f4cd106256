//! What a pod's state means for the lifecycle, and the replacement backoff.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::Limits;

/// What the orb's pod is doing, reduced to what the lifecycle cares about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodState {
    /// No such pod (never created, or deleted underneath).
    Missing,
    Pending {
        node: Option<String>,
    },
    Running {
        ready: bool,
        node: Option<String>,
    },
    /// Being deleted; `finished` once its container has stopped.
    Deleting {
        /// The pod's `deletionTimestamp`: when its grace period ends.
        grace_ends: Option<Timestamp>,
    },
    Succeeded {
        message: Option<String>,
    },
    Failed {
        reason: Option<String>,
        message: Option<String>,
    },
}

pub fn observe_pod(pod: Option<&Pod>) -> PodState {
    let Some(pod) = pod else { return PodState::Missing };
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let message = status.and_then(termination_message);
    match phase {
        "Succeeded" => PodState::Succeeded { message },
        "Failed" => PodState::Failed {
            reason: status.and_then(|s| s.reason.clone()),
            message: message.or_else(|| status.and_then(|s| s.message.clone())),
        },
        _ if pod.metadata.deletion_timestamp.is_some() => PodState::Deleting {
            grace_ends: pod.metadata.deletion_timestamp.as_ref().map(|t| t.0),
        },
        "Running" => {
            let ready = status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            PodState::Running { ready, node }
        }
        _ => PodState::Pending { node },
    }
}

/// The orb container's termination message (the orb writes its end reason there).
fn termination_message(status: &k8s_openapi::api::core::v1::PodStatus) -> Option<String> {
    status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
        .map(|m| m.trim().to_owned())
        .find(|m| !m.is_empty())
}

/// Delay before replacement number `restarts + 1`.
pub fn restart_backoff(restarts: i32, limits: &Limits) -> Duration {
    let factor = 1u32.checked_shl(restarts.clamp(0, 16) as u32).unwrap_or(u32::MAX);
    limits
        .restart_backoff
        .saturating_mul(factor)
        .min(limits.max_restart_backoff)
}
