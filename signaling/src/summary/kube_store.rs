//! Summaries as ConfigMaps in the AiOrbs' namespace, one per summary: `orb-summary-<hash of id>`,
//! the record in an annotation, the body gzip-compressed in `binaryData` (a two-hour transcript of
//! several MiB fits the 1 MiB object limit compressed). Updates carry the resourceVersion they
//! read, so two replicas never both claim an attempt.
//!
//! A pending summary has no owner, so it outlives its AiOrb (which signaling replaces when the
//! room is used again, and the operator deletes after its TTL). Once delivered, given up, or
//! stored without a webhook, it gets the AiOrb as owner and goes with it; if the AiOrb is already
//! gone, it is deleted. The AiOrb's `status.summary` mirrors the record (field manager
//! [`SUMMARY_FIELD_MANAGER`]; presence has its own, so neither apply drops the other's fields).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use bytes::Bytes;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use orb_api::aiorb::{SummaryState, SummaryStatus};
use orb_api::naming::orb_name_for_room;
use orb_api::{AiOrb, SIGNALING_FIELD_MANAGER};
use serde_json::json;
use tracing::{debug, warn};

use super::local_store::id_hash;
use super::{PutOutcome, StoreError, StoredSummary, SummaryMeta, SummaryStore};
use crate::orb_runtime::kubernetes::is_status;

/// The field manager of `status.summary`.
pub const SUMMARY_FIELD_MANAGER: &str = "orb-signaling-summary";
pub const STATE_LABEL: &str = "hybridcoach.io/summary-state";
const RECORD_ANNOTATION: &str = "hybridcoach.io/summary-record";
const BODY_KEY: &str = "summary.json.gz";
/// Compressed bodies above this do not fit a ConfigMap with its metadata.
pub const MAX_COMPRESSED_BYTES: usize = 900 * 1024;

/// Every Kubernetes API call this store makes, as RBAC rules `(apiGroup, resource, verbs)`.
pub const API_CALLS: &[(&str, &str, &[&str])] = &[
    ("", "configmaps", &["list", "create", "update", "delete"]),
    // The owning AiOrb (get) and its status.summary (apply).
    ("hybridcoach.io", "aiorbs", &["get"]),
    ("hybridcoach.io", "aiorbs/status", &["patch"]),
];

pub fn config_map_name(id: &str) -> String {
    format!("orb-summary-{}", id_hash(id))
}

fn state_label(state: SummaryState) -> String {
    state.as_str().to_ascii_lowercase()
}

pub struct KubeStore {
    config_maps: Api<ConfigMap>,
    orbs: Api<AiOrb>,
}

impl KubeStore {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            config_maps: Api::namespaced(client.clone(), namespace),
            orbs: Api::namespaced(client, namespace),
        }
    }

    /// The room's AiOrb, if it is still the one the summary came from.
    async fn owner(&self, meta: &SummaryMeta) -> Result<Option<AiOrb>, StoreError> {
        let orb = self.orbs.get_opt(&orb_name_for_room(&meta.room_id)).await?;
        Ok(orb.filter(|o| o.spec.room_id == meta.room_id && (meta.orb_uid.is_none() || o.uid() == meta.orb_uid)))
    }

    /// Mirrors the record on the AiOrb (best effort: the ConfigMap is the record of truth).
    async fn mirror(&self, orb: &AiOrb, meta: &SummaryMeta) {
        let status = SummaryStatus {
            id: meta.id.clone(),
            state: meta.state,
            config_map: Some(config_map_name(&meta.id)),
            stored_at: Some(Time(meta.stored_at)),
            delivered_at: meta.delivered_at.map(Time),
            attempts: i32::try_from(meta.attempts).unwrap_or(i32::MAX),
            last_error: meta.last_error.clone(),
            retry_until: (meta.state == SummaryState::Pending).then_some(Time(meta.retry_until)),
        };
        let patch = json!({
            "apiVersion": AiOrb::api_version(&()),
            "kind": AiOrb::kind(&()),
            // The uid makes the apply fail rather than land on a newer AiOrb of the room.
            "metadata": { "name": orb.name_any(), "uid": orb.uid() },
            "status": { "summary": status },
        });
        let params = PatchParams::apply(SUMMARY_FIELD_MANAGER).force();
        if let Err(e) = self
            .orbs
            .patch_status(&orb.name_any(), &params, &Patch::Apply(patch))
            .await
        {
            debug!(orb = %orb.name_any(), error = %e, "could not mirror the summary state on the AiOrb");
        }
    }

    fn to_config_map(
        s: &StoredSummary,
        owner: Option<&AiOrb>,
        body: Option<ByteString>,
    ) -> Result<ConfigMap, StoreError> {
        let record = serde_json::to_string(&s.meta).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let owner_references = owner.map(|o| {
            vec![OwnerReference {
                api_version: AiOrb::api_version(&()).into_owned(),
                kind: AiOrb::kind(&()).into_owned(),
                name: o.name_any(),
                uid: o.uid().unwrap_or_default(),
                ..Default::default()
            }]
        });
        Ok(ConfigMap {
            metadata: ObjectMeta {
                name: Some(config_map_name(&s.meta.id)),
                resource_version: s.version.clone(),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/managed-by".into(), SIGNALING_FIELD_MANAGER.into()),
                    (STATE_LABEL.into(), state_label(s.meta.state)),
                ])),
                annotations: Some(BTreeMap::from([(RECORD_ANNOTATION.into(), record)])),
                owner_references,
                ..Default::default()
            },
            binary_data: body.map(|b| BTreeMap::from([(BODY_KEY.into(), b)])),
            ..Default::default()
        })
    }

    fn read(cm: &ConfigMap) -> Result<StoredSummary, StoreError> {
        let name = cm.name_any();
        let record = cm
            .annotations()
            .get(RECORD_ANNOTATION)
            .ok_or_else(|| StoreError::Corrupt(format!("{name}: no record")))?;
        let meta: SummaryMeta =
            serde_json::from_str(record).map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))?;
        let gz = cm
            .binary_data
            .as_ref()
            .and_then(|d| d.get(BODY_KEY))
            .ok_or_else(|| StoreError::Corrupt(format!("{name}: no body")))?;
        Ok(StoredSummary {
            meta,
            body: Bytes::from(gunzip(&gz.0)?),
            version: cm.resource_version(),
        })
    }
}

pub fn gzip(body: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(body)?;
    Ok(enc.finish()?)
}

fn gunzip(gz: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    GzDecoder::new(gz).read_to_end(&mut out)?;
    Ok(out)
}

impl SummaryStore for KubeStore {
    fn put(&self, mut summary: StoredSummary) -> BoxFuture<'_, Result<PutOutcome, StoreError>> {
        Box::pin(async move {
            let gz = gzip(&summary.body)?;
            if gz.len() > MAX_COMPRESSED_BYTES {
                return Err(StoreError::TooLarge(gz.len()));
            }
            let orb = self.owner(&summary.meta).await?;
            summary.meta.orb_uid = orb.as_ref().and_then(ResourceExt::uid);
            // Only a final record is owned: a pending one must outlive a replaced AiOrb.
            let final_state = summary.meta.state != SummaryState::Pending;
            let cm = Self::to_config_map(&summary, orb.as_ref().filter(|_| final_state), Some(ByteString(gz)))?;
            match self.config_maps.create(&PostParams::default(), &cm).await {
                Ok(_) => {
                    if let Some(orb) = &orb {
                        self.mirror(orb, &summary.meta).await;
                    }
                    Ok(PutOutcome::Stored)
                }
                Err(e) if is_status(&e, 409) => Ok(PutOutcome::AlreadyStored),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn pending(&self) -> BoxFuture<'_, Result<Vec<StoredSummary>, StoreError>> {
        Box::pin(async move {
            let selector = format!("{STATE_LABEL}={}", state_label(SummaryState::Pending));
            let list = self.config_maps.list(&ListParams::default().labels(&selector)).await?;
            Ok(list
                .items
                .iter()
                .filter_map(|cm| {
                    Self::read(cm)
                        .inspect_err(|e| warn!(error = %e, "skipping an unreadable stored summary"))
                        .ok()
                })
                .collect())
        })
    }

    fn update(&self, summary: StoredSummary) -> BoxFuture<'_, Result<StoredSummary, StoreError>> {
        Box::pin(async move {
            let name = config_map_name(&summary.meta.id);
            let final_state = summary.meta.state != SummaryState::Pending;
            let orb = self.owner(&summary.meta).await?;
            if final_state && orb.is_none() {
                // Nothing left to garbage-collect it with.
                let params = DeleteParams {
                    preconditions: summary.version.clone().map(|rv| kube::api::Preconditions {
                        resource_version: Some(rv),
                        uid: None,
                    }),
                    ..DeleteParams::default()
                };
                return match self.config_maps.delete(&name, &params).await {
                    Ok(_) => Ok(StoredSummary {
                        version: None,
                        ..summary
                    }),
                    Err(e) if is_status(&e, 409) => Err(StoreError::Conflict),
                    Err(e) if is_status(&e, 404) => Ok(StoredSummary {
                        version: None,
                        ..summary
                    }),
                    Err(e) => Err(e.into()),
                };
            }
            let gz = gzip(&summary.body)?;
            let cm = Self::to_config_map(&summary, orb.as_ref().filter(|_| final_state), Some(ByteString(gz)))?;
            match self.config_maps.replace(&name, &PostParams::default(), &cm).await {
                Ok(written) => {
                    if let Some(orb) = &orb {
                        self.mirror(orb, &summary.meta).await;
                    }
                    Ok(StoredSummary {
                        version: written.resource_version(),
                        ..summary
                    })
                }
                Err(e) if is_status(&e, 409) => Err(StoreError::Conflict),
                Err(e) => Err(e.into()),
            }
        })
    }
}
