//! What the operator keeps of an AiOrb: everything it reads, nothing else. An API server returns
//! each object with its `managedFields` (one entry per field manager: the operator, signaling,
//! whoever created it) and often `kubectl`'s last-applied annotation; together they are most of an
//! orb's size, and the operator reads neither. The controller's store trims them from every watched
//! orb ([`trim`]); an admission pass does not even decode them ([`ListedOrb`]), which is most of
//! its time with thousands of orbs queued.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta, Time};
use kube::ResourceExt;
use orb_api::{AiOrb, AiOrbSpec, AiOrbStatus};
use serde::Deserialize;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops the fields the operator never reads. Status writes are server-side applies of the
/// operator's own fields, so nothing dropped here is ever written back.
pub fn trim(orb: &mut AiOrb) {
    orb.managed_fields_mut().clear();
    orb.annotations_mut().remove(LAST_APPLIED);
}

/// A page of an AiOrb list, decoded without what [`trim`] drops.
#[derive(Deserialize)]
pub struct ListedPage {
    #[serde(default)]
    pub metadata: ListMeta,
    pub items: Vec<ListedOrb>,
}

/// An AiOrb as a list returns it, minus the metadata the operator never reads: serde skips
/// `managedFields` and the annotations without building them.
#[derive(Deserialize)]
pub struct ListedOrb {
    metadata: ListedMeta,
    spec: AiOrbSpec,
    #[serde(default)]
    status: Option<AiOrbStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    finalizers: Option<Vec<String>>,
}

impl From<ListedOrb> for AiOrb {
    fn from(o: ListedOrb) -> AiOrb {
        let m = o.metadata;
        AiOrb {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                generation: m.generation,
                creation_timestamp: m.creation_timestamp,
                deletion_timestamp: m.deletion_timestamp,
                labels: m.labels,
                finalizers: m.finalizers,
                ..Default::default()
            },
            spec: o.spec,
            status: o.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    use orb_api::AiOrbSpec;

    #[test]
    fn trimming_keeps_what_the_operator_reads() {
        let mut orb = AiOrb::new("room-1", AiOrbSpec::default());
        orb.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("orb-signaling".into()),
            ..Default::default()
        }]);
        orb.annotations_mut().insert(LAST_APPLIED.into(), "{}".into());
        orb.annotations_mut().insert("team".into(), "a".into());
        orb.labels_mut().insert(orb_api::FINISHED_LABEL.into(), "true".into());
        trim(&mut orb);
        assert!(orb.managed_fields().is_empty());
        assert_eq!(orb.annotations().keys().collect::<Vec<_>>(), ["team"]);
        assert_eq!(orb.labels().len(), 1);
    }
}
