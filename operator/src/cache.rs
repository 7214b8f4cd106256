//! What the operator keeps of an AiOrb: everything it reads, nothing else. An API server returns
//! each object with its `managedFields` (one entry per field manager: the operator, signaling,
//! whoever created it) and often `kubectl`'s last-applied annotation; together they are most of an
//! orb's size, and the operator reads neither. Trimming them before an orb enters the controller's
//! store or an admission pass's list is what keeps 10 000 AiOrbs in a small heap.

use kube::ResourceExt;
use orb_api::AiOrb;

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops the fields the operator never reads. Status writes are server-side applies of the
/// operator's own fields, so nothing dropped here is ever written back.
pub fn trim(orb: &mut AiOrb) {
    orb.managed_fields_mut().clear();
    orb.annotations_mut().remove(LAST_APPLIED);
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
