//! The API of the orb system: the `AiOrb` custom resource and the contracts the operator,
//! signaling and the orb share (room naming, room tokens, the duration format).

pub mod aiorb;
pub mod assignment;
pub mod auth;
pub mod cidr;
pub mod duration;
pub mod ice;
pub mod naming;

pub use aiorb::{
    AiOrb, AiOrbSpec, AiOrbStatus, FINISHED_LABEL, MAX_DURATION_SECONDS, MAX_ID_CHARS, MAX_PURPOSE_CHARS,
    OPERATOR_FIELD_MANAGER, OrbPhase, PodStart, SIGNALING_FIELD_MANAGER, TerminationReason, UNFINISHED_SELECTOR,
    condition,
};

use kube::CustomResourceExt;

/// The CRD manifests, as YAML documents, in the order they should be applied.
pub fn crd_yaml() -> String {
    let crd = AiOrb::crd();
    format!(
        "---\n{}",
        serde_norway::to_string(&crd).expect("a CRD always serialises")
    )
}
