//! Summaries as ConfigMaps in the AiOrbs' namespace, one per summary: `orb-summary-<hash of id>`,
//! the record in an annotation, the body gzip-compressed in `binaryData` (a two-hour transcript of
//! several MiB fits the 1 MiB object limit compressed). A delivery pass lists the pending records
//! as metadata only (the record is an annotation, the state a label) and reads a body only for a
//! summary it has claimed. Updates patch the metadata with the resourceVersion they read, so two
//! replicas never both claim an attempt, and never rewrite the body.
//!
//! A pending summary has no owner, so it outlives its AiOrb (which signaling replaces when the
//! room is used again, and the operator deletes after its TTL). Once delivered, given up, or
//! stored without a webhook, it gets the AiOrb as owner and goes with it; if the AiOrb is already
//! gone, it is deleted, and a summary that would be final at once (no webhook) is not stored
//! without its AiOrb. Each record is labelled with its orb attempt, which stores at most
//! [`super::MAX_PER_ORB`]. The AiOrb's `status.summary` mirrors the record (field manager
//! [`SUMMARY_FIELD_MANAGER`]; presence has its own, so neither apply drops the other's fields).
//!
//! The rooms' checkpoints are ConfigMaps too ([`KubeCheckpoints`]), with the same compression.

use std::collections::{BTreeMap, HashSet};
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
use kube::core::PartialObjectMeta;
use kube::{Resource, ResourceExt};
use orb_api::aiorb::{SummaryState, SummaryStatus};
use orb_api::naming::orb_name_for_room;
use orb_api::{AiOrb, SIGNALING_FIELD_MANAGER};
use serde_json::json;
use tracing::{debug, warn};

use super::local_store::id_hash;
use super::{PutOutcome, Refusal, StoreError, StoredSummary, SummaryMeta, SummaryRecord, SummaryStore, admit, orb_key};
use crate::orb_runtime::kubernetes::is_status;

/// The field manager of `status.summary`.
pub const SUMMARY_FIELD_MANAGER: &str = "orb-signaling-summary";
pub const STATE_LABEL: &str = "hybridcoach.io/summary-state";
/// The orb attempt a summary counts against ([`orb_key`]): its AiOrb's uid, else `room-<hash>`.
pub const ORB_LABEL: &str = "hybridcoach.io/summary-orb";
const RECORD_ANNOTATION: &str = "hybridcoach.io/summary-record";
/// The room of a checkpoint ConfigMap (its name is a hash of it).
const CHECKPOINT_ROOM_ANNOTATION: &str = "hybridcoach.io/checkpoint-room";
const CHECKPOINT_PREFIX: &str = "orb-checkpoint-";
const BODY_KEY: &str = "summary.json.gz";
/// Records per list request: a page of metadata stays small however many summaries wait.
const LIST_PAGE: u32 = 500;
/// Compressed bodies above this do not fit a ConfigMap with its metadata.
pub const MAX_COMPRESSED_BYTES: usize = 900 * 1024;

/// Every Kubernetes API call this store makes, as RBAC rules `(apiGroup, resource, verbs)`.
pub const API_CALLS: &[(&str, &str, &[&str])] = &[
    // List (metadata only), get (a claimed summary's body), patch (its record); checkpoints:
    // apply (patch), get, delete.
    ("", "configmaps", &["list", "get", "create", "patch", "delete"]),
    // The owning AiOrb (get; a checkpoint's, when the orb's token names none) and its
    // status.summary (apply).
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
        orb_key: &str,
        owner: Option<&AiOrb>,
        gz: ByteString,
    ) -> Result<ConfigMap, StoreError> {
        Ok(ConfigMap {
            metadata: ObjectMeta {
                name: Some(config_map_name(&s.meta.id)),
                resource_version: s.version.clone(),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/managed-by".into(), SIGNALING_FIELD_MANAGER.into()),
                    (STATE_LABEL.into(), state_label(s.meta.state)),
                    (ORB_LABEL.into(), orb_key.into()),
                ])),
                annotations: Some(BTreeMap::from([(RECORD_ANNOTATION.into(), record_json(&s.meta)?)])),
                owner_references: owner.map(owner_references),
                ..Default::default()
            },
            binary_data: Some(BTreeMap::from([(BODY_KEY.into(), gz)])),
            ..Default::default()
        })
    }
}

fn record_json(meta: &SummaryMeta) -> Result<String, StoreError> {
    serde_json::to_string(meta).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn owner_references(orb: &AiOrb) -> Vec<OwnerReference> {
    vec![owner_reference(&orb.name_any(), &orb.uid().unwrap_or_default())]
}

fn owner_reference(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: AiOrb::api_version(&()).into_owned(),
        kind: AiOrb::kind(&()).into_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        ..Default::default()
    }
}

/// The record a ConfigMap's metadata holds.
fn record_of(metadata: &ObjectMeta) -> Result<SummaryRecord, StoreError> {
    let name = metadata.name.as_deref().unwrap_or_default();
    let record = metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RECORD_ANNOTATION))
        .ok_or_else(|| StoreError::Corrupt(format!("{name}: no record")))?;
    let meta: SummaryMeta = serde_json::from_str(record).map_err(|e| StoreError::Corrupt(format!("{name}: {e}")))?;
    Ok(SummaryRecord {
        meta,
        version: metadata.resource_version.clone(),
    })
}

/// The merge patch that writes `record` over the version it was read at (the server refuses it
/// with 409 when that version is no longer current), with `owner` once the record is final.
fn record_patch(record: &SummaryRecord, owner: Option<&AiOrb>) -> Result<serde_json::Value, StoreError> {
    let mut metadata = json!({
        "resourceVersion": record.version,
        "labels": { STATE_LABEL: state_label(record.meta.state) },
        "annotations": { RECORD_ANNOTATION: record_json(&record.meta)? },
    });
    if let Some(orb) = owner {
        metadata["ownerReferences"] = json!(owner_references(orb));
    }
    Ok(json!({ "metadata": metadata }))
}

/// The gzip-compressed body of a record, refused when it would not fit a ConfigMap.
fn compressed(body: &[u8]) -> Result<ByteString, StoreError> {
    let gz = gzip(body)?;
    if gz.len() > MAX_COMPRESSED_BYTES {
        return Err(Refusal::TooLargeCompressed(gz.len()).into());
    }
    Ok(ByteString(gz))
}

/// The uncompressed body of a record stored under `key`.
fn body_of(cm: &ConfigMap, key: &str) -> Result<Bytes, StoreError> {
    let gz = cm
        .binary_data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| StoreError::Corrupt(format!("{}: no body", cm.name_any())))?;
    Ok(Bytes::from(gunzip(&gz.0)?))
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
            let gz = compressed(&summary.body)?;
            let orb = self.owner(&summary.meta).await?;
            // Only a final record is owned: a pending one must outlive a replaced AiOrb, and is
            // removed by the delivery pass at the end of its retry window if it has no owner by
            // then. A final one without its AiOrb would never be removed.
            let final_state = summary.meta.state != SummaryState::Pending;
            if final_state && orb.is_none() {
                return Err(Refusal::NoOwner.into());
            }
            if summary.meta.orb_uid.is_none() {
                summary.meta.orb_uid = orb.as_ref().and_then(ResourceExt::uid);
            }
            let name = config_map_name(&summary.meta.id);
            let key = orb_key(&summary.meta);
            // Counted across replicas and restarts: the records of this orb attempt, as metadata.
            // Two replicas storing for the same orb at once may both pass (the orb has one socket
            // at a time, so at most one over the cap per socket being replaced).
            let params = ListParams::default()
                .labels(&format!("{ORB_LABEL}={key}"))
                .limit(LIST_PAGE);
            let stored = self.config_maps.list_metadata(&params).await?;
            if admit(&name, stored.items.iter().filter_map(|cm| cm.metadata.name.as_deref()))?
                == PutOutcome::AlreadyStored
            {
                return Ok(PutOutcome::AlreadyStored);
            }
            let cm = Self::to_config_map(&summary, &key, orb.as_ref().filter(|_| final_state), gz)?;
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

    fn pending(&self) -> BoxFuture<'_, Result<Vec<SummaryRecord>, StoreError>> {
        Box::pin(async move {
            let selector = format!("{STATE_LABEL}={}", state_label(SummaryState::Pending));
            let listed = list_metadata(&self.config_maps, &selector).await?;
            Ok(listed
                .iter()
                .filter_map(|cm: &PartialObjectMeta<ConfigMap>| {
                    record_of(&cm.metadata)
                        .inspect_err(|e| warn!(error = %e, "skipping an unreadable stored summary"))
                        .ok()
                })
                .collect())
        })
    }

    fn body(&self, id: &str) -> BoxFuture<'_, Result<Bytes, StoreError>> {
        let name = config_map_name(id);
        Box::pin(async move { body_of(&self.config_maps.get(&name).await?, BODY_KEY) })
    }

    fn update(&self, record: SummaryRecord) -> BoxFuture<'_, Result<SummaryRecord, StoreError>> {
        Box::pin(async move {
            let name = config_map_name(&record.meta.id);
            // Without the version it was read at, a write could not be a compare-and-swap.
            let Some(version) = record.version.clone() else {
                return Err(StoreError::Conflict);
            };
            let final_state = record.meta.state != SummaryState::Pending;
            let orb = self.owner(&record.meta).await?;
            if final_state && orb.is_none() {
                // Nothing left to garbage-collect it with.
                let params = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        resource_version: Some(version),
                        uid: None,
                    }),
                    ..DeleteParams::default()
                };
                return match self.config_maps.delete(&name, &params).await {
                    Ok(_) => Ok(SummaryRecord {
                        version: None,
                        ..record
                    }),
                    Err(e) if is_status(&e, 409) || is_status(&e, 404) => Err(StoreError::Conflict),
                    Err(e) => Err(e.into()),
                };
            }
            let patch = record_patch(&record, orb.as_ref().filter(|_| final_state))?;
            match self
                .config_maps
                .patch_metadata(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(written) => {
                    if let Some(orb) = &orb {
                        self.mirror(orb, &record.meta).await;
                    }
                    Ok(SummaryRecord {
                        version: written.metadata.resource_version,
                        ..record
                    })
                }
                // Changed, or finished and deleted, by another replica.
                Err(e) if is_status(&e, 409) || is_status(&e, 404) => Err(StoreError::Conflict),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn stored_any(&self, orb_key: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let params = ListParams::default().labels(&format!("{ORB_LABEL}={orb_key}")).limit(1);
        Box::pin(async move { Ok(!self.config_maps.list_metadata(&params).await?.items.is_empty()) })
    }
}

/// Every ConfigMap matching `selector`, metadata only, a page of [`LIST_PAGE`] at a time.
async fn list_metadata(api: &Api<ConfigMap>, selector: &str) -> Result<Vec<PartialObjectMeta<ConfigMap>>, kube::Error> {
    let mut params = ListParams::default().labels(selector).limit(LIST_PAGE);
    let mut items = Vec::new();
    loop {
        let page = api.list_metadata(&params).await?;
        items.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(items),
        }
    }
}

/// The room's checkpoint ConfigMap: one per room, overwritten by each checkpoint.
pub fn checkpoint_config_map_name(room_id: &str) -> String {
    format!("{CHECKPOINT_PREFIX}{}", id_hash(room_id))
}

const CHECKPOINT_KEY: &str = "checkpoint.json.gz";

/// Checkpoints as ConfigMaps ([`checkpoint_config_map_name`]), the body gzip-compressed like a
/// summary's, owned by the AiOrb whose orb sent it: a checkpoint goes with its AiOrb, and one
/// whose AiOrb is gone (deleted before any replica saw it end) is collected, never left behind.
/// Every write is idempotent or a compare-and-swap, so any number of replicas may act on one room.
pub struct KubeCheckpoints {
    config_maps: Api<ConfigMap>,
    orbs: Api<AiOrb>,
}

impl KubeCheckpoints {
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            config_maps: Api::namespaced(client.clone(), namespace),
            orbs: Api::namespaced(client, namespace),
        }
    }

    /// The uid of the room's AiOrb, to own a checkpoint whose orb's token named none.
    async fn room_orb_uid(&self, room_id: &str) -> Result<String, StoreError> {
        self.orbs
            .get_opt(&orb_name_for_room(room_id))
            .await?
            .filter(|o| o.spec.room_id == room_id && o.metadata.deletion_timestamp.is_none())
            .and_then(|o| o.uid())
            .ok_or_else(|| Refusal::NoOwner.into())
    }
}

impl super::checkpoint::CheckpointStore for KubeCheckpoints {
    fn put(&self, room_id: &str, orb_uid: Option<&str>, body: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        let (room_id, orb_uid) = (room_id.to_owned(), orb_uid.map(str::to_owned));
        Box::pin(async move {
            let gz = compressed(&body)?;
            let uid = match orb_uid {
                Some(uid) => uid,
                None => self.room_orb_uid(&room_id).await?,
            };
            let name = checkpoint_config_map_name(&room_id);
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".into(),
                        SIGNALING_FIELD_MANAGER.into(),
                    )])),
                    annotations: Some(BTreeMap::from([(CHECKPOINT_ROOM_ANNOTATION.into(), room_id.clone())])),
                    owner_references: Some(vec![owner_reference(&orb_name_for_room(&room_id), &uid)]),
                    ..Default::default()
                },
                binary_data: Some(BTreeMap::from([(CHECKPOINT_KEY.into(), gz)])),
                ..Default::default()
            };
            // Create or overwrite in one call; the owner is replaced too when the room's AiOrb is.
            let params = PatchParams::apply(SIGNALING_FIELD_MANAGER).force();
            self.config_maps.patch(&name, &params, &Patch::Apply(&cm)).await?;
            Ok(())
        })
    }

    fn get(&self, room_id: &str) -> BoxFuture<'_, Result<Option<super::checkpoint::Checkpoint>, StoreError>> {
        let name = checkpoint_config_map_name(room_id);
        Box::pin(async move {
            let Some(cm) = self.config_maps.get_opt(&name).await? else {
                return Ok(None);
            };
            let orb_uid = cm.owner_references().first().map(|o| o.uid.clone());
            Ok(Some(super::checkpoint::Checkpoint {
                body: body_of(&cm, CHECKPOINT_KEY)?,
                orb_uid,
            }))
        })
    }

    fn remove(&self, room_id: &str, body: Option<&Bytes>) -> BoxFuture<'_, Result<(), StoreError>> {
        let name = checkpoint_config_map_name(room_id);
        let expected = body.cloned();
        Box::pin(async move {
            let mut params = DeleteParams::default();
            if let Some(expected) = expected {
                let Some(cm) = self.config_maps.get_opt(&name).await? else {
                    return Ok(());
                };
                if body_of(&cm, CHECKPOINT_KEY)? != expected {
                    return Ok(());
                }
                // Deleted only as read: a checkpoint written since then stays.
                params.preconditions = Some(kube::api::Preconditions {
                    resource_version: cm.resource_version(),
                    uid: None,
                });
            }
            match self.config_maps.delete(&name, &params).await {
                Ok(_) => Ok(()),
                // Gone already (another replica), or overwritten since it was read.
                Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn orphaned_rooms(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        // AiOrbs outlive signaling: the AiOrb watch reports the ones that ended meanwhile.
        Box::pin(async { Ok(Vec::new()) })
    }

    fn rooms_of_unlisted_orbs(
        &self,
        orb_uids: HashSet<String>,
    ) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(async move {
            // Signaling's ConfigMaps without a summary's state: the checkpoints.
            let selector = format!("app.kubernetes.io/managed-by={SIGNALING_FIELD_MANAGER},!{STATE_LABEL}");
            let mut rooms = Vec::new();
            for cm in list_metadata(&self.config_maps, &selector).await? {
                let name = cm.name_any();
                let Some(owner) = cm.owner_references().first().map(|o| o.uid.clone()) else {
                    continue;
                };
                if !name.starts_with(CHECKPOINT_PREFIX) || orb_uids.contains(&owner) {
                    continue;
                }
                let room = match cm.annotations().get(CHECKPOINT_ROOM_ANNOTATION) {
                    Some(room) => Some(room.clone()),
                    // Written before the annotation: the room is in the body.
                    None => self.room_in_body(&name).await?,
                };
                rooms.extend(room.map(|room| (room, owner)));
            }
            Ok(rooms)
        })
    }
}

impl KubeCheckpoints {
    async fn room_in_body(&self, name: &str) -> Result<Option<String>, StoreError> {
        let Some(cm) = self.config_maps.get_opt(name).await? else {
            return Ok(None);
        };
        let body: serde_json::Value = serde_json::from_slice(&body_of(&cm, CHECKPOINT_KEY)?)
            .map_err(|e| StoreError::Corrupt(format!("checkpoint {name}: {e}")))?;
        Ok(body["roomId"].as_str().map(str::to_owned))
    }
}
