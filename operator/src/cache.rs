//! What the operator keeps of an AiOrb: everything it reads, nothing else. An API server returns
//! each object with its `managedFields` (one entry per field manager: the operator, signaling,
//! whoever created it) and often `kubectl`'s last-applied annotation; together they are most of an
//! orb's size, and the operator reads neither. The controller's store trims them from every watched
//! orb ([`trim`]); `orb-operator queue`'s list does not even decode them ([`ListedOrb`]).
//!
//! The store is fed by a watch, so it lags behind the operator's own writes by the time an event
//! takes to come back. [`RecentWrites`] covers that gap for the writes an admission pass plans
//! from.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

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

/// The AiOrbs as the operator itself last wrote them, until its store shows those writes.
///
/// An admission pass woken by a write (a reconcile finishing an orb, or the pass before admitting
/// one) can run before the watch delivers it, and would plan from the orb as it was: its slot
/// still held, or an orb it admitted still waiting (admitted again, at a stale version: a conflict
/// and another pass). Each write is recorded with the versions it is known to succeed, and
/// [`RecentWrites::view`] shows the written orb while the store still shows one of those.
/// Resource versions are only compared for equality.
#[derive(Debug, Default)]
pub struct RecentWrites {
    by_uid: Mutex<HashMap<String, Written>>,
}

#[derive(Debug)]
struct Written {
    orb: Arc<AiOrb>,
    /// Versions of the orb older than `orb`: the one the write was made over, and those of the
    /// writes before it.
    superseded: BTreeSet<String>,
}

/// How far an orb is along its one-way path: waiting, admitted, finished.
fn progress(orb: &AiOrb) -> u8 {
    if orb.is_finished() {
        2
    } else if orb.status.as_ref().is_some_and(|s| s.admitted_at.is_some()) {
        1
    } else {
        0
    }
}

impl RecentWrites {
    /// Records that `written` (the API server's answer) replaced `base`. A write made over an
    /// orb other than its answer names (by uid) is not recorded.
    pub fn wrote(&self, base: &AiOrb, mut written: AiOrb) {
        let Some(uid) = base
            .metadata
            .uid
            .clone()
            .filter(|u| written.metadata.uid.as_ref() == Some(u))
        else {
            return;
        };
        trim(&mut written);
        let mut by_uid = self.by_uid.lock().unwrap_or_else(PoisonError::into_inner);
        let mut superseded = by_uid.remove(&uid).map(|w| w.superseded).unwrap_or_default();
        superseded.extend(base.metadata.resource_version.clone());
        by_uid.insert(
            uid,
            Written {
                orb: Arc::new(written),
                superseded,
            },
        );
    }

    /// The `cached` orbs, each replaced by its recorded write while the cache shows a version that
    /// write superseded, or an orb less far along (admission and the end are final: a store
    /// without them is behind a write made from a fresher read). Records the store has caught up
    /// with, or whose orb it no longer has, are dropped.
    pub fn view(&self, cached: Vec<Arc<AiOrb>>) -> Vec<Arc<AiOrb>> {
        let mut by_uid = self.by_uid.lock().unwrap_or_else(PoisonError::into_inner);
        if by_uid.is_empty() {
            return cached;
        }
        let mut kept = HashMap::with_capacity(by_uid.len());
        let view = cached
            .into_iter()
            .map(|orb| {
                let Some((uid, written)) = orb.metadata.uid.as_ref().and_then(|u| by_uid.remove_entry(u)) else {
                    return orb;
                };
                let behind = orb
                    .metadata
                    .resource_version
                    .as_ref()
                    .is_some_and(|v| written.superseded.contains(v))
                    || progress(&orb) < progress(&written.orb);
                if !behind {
                    return orb;
                }
                let shown = written.orb.clone();
                kept.insert(uid, written);
                shown
            })
            .collect();
        *by_uid = kept;
        view
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

    fn versioned(rv: &str, status: serde_json::Value) -> AiOrb {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "hybridcoach.io/v1alpha1", "kind": "AiOrb",
            "metadata": {"name": "room-1", "namespace": "calls", "uid": "uid-1", "resourceVersion": rv},
            "spec": {"roomId": "room-1"},
            "status": status,
        }))
        .unwrap()
    }

    fn shown(writes: &RecentWrites, cached: AiOrb) -> String {
        let view = writes.view(vec![Arc::new(cached)]);
        view[0].metadata.resource_version.clone().unwrap()
    }

    #[test]
    fn an_orb_is_shown_as_written_until_the_store_has_the_write() {
        let writes = RecentWrites::default();
        let queued = versioned("10", serde_json::json!({"phase": "Queued"}));
        let admitted = versioned(
            "11",
            serde_json::json!({"phase": "Starting", "admittedAt": "2027-01-15T08:00:00Z"}),
        );
        writes.wrote(&queued, admitted.clone());
        assert_eq!(shown(&writes, queued.clone()), "11", "the store is behind the write");
        // A second write over the first, before the store shows either.
        let positioned = versioned(
            "12",
            serde_json::json!({"phase": "Starting", "admittedAt": "2027-01-15T08:00:00Z", "podName": "p"}),
        );
        writes.wrote(&admitted, positioned);
        assert_eq!(shown(&writes, queued.clone()), "12");
        assert_eq!(shown(&writes, admitted), "12");
        // The store caught up (or went past): it is shown, and the record dropped.
        let later = versioned(
            "15",
            serde_json::json!({"phase": "Ready", "admittedAt": "2027-01-15T08:00:00Z"}),
        );
        assert_eq!(shown(&writes, later), "15");
        assert_eq!(shown(&writes, queued), "10");
    }

    #[test]
    fn a_finish_written_over_a_fresher_read_is_shown_while_the_store_lacks_it() {
        let writes = RecentWrites::default();
        let running = versioned(
            "20",
            serde_json::json!({"phase": "Ready", "admittedAt": "2027-01-15T08:00:00Z"}),
        );
        let read = versioned(
            "21",
            serde_json::json!({"phase": "Ready", "admittedAt": "2027-01-15T08:00:00Z"}),
        );
        let done = versioned(
            "22",
            serde_json::json!({"phase": "Succeeded", "admittedAt": "2027-01-15T08:00:00Z"}),
        );
        writes.wrote(&read, done);
        // The store has neither the read nor the write: still not finished there.
        assert_eq!(shown(&writes, running), "22");
    }

    #[test]
    fn an_answer_naming_another_orb_is_not_recorded() {
        let writes = RecentWrites::default();
        let queued = versioned("10", serde_json::json!({"phase": "Queued"}));
        let mut other = versioned("11", serde_json::json!({"phase": "Starting"}));
        other.metadata.uid = Some("uid-2".into());
        writes.wrote(&queued, other);
        assert_eq!(shown(&writes, queued), "10");
    }
}
