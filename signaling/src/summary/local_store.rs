//! Summaries kept by one process: in a directory (`--summary-dir`; dev mode uses its state
//! directory), one JSON file per summary written atomically (temporary file, fsync, rename), so a
//! crash leaves either the old or the new record; or in memory only, when no directory is set.
//! An orb attempt ([`super::orb_key`]: its AiOrb's uid from the orb's token, else the room) stores
//! at most [`super::MAX_PER_ORB`] summaries, counted over what the store holds (so across
//! restarts with a directory). Nothing here is removed: the local runtime is for development.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{PutOutcome, StoreError, StoredSummary, SummaryMeta, SummaryRecord, SummaryStore, admit, orb_key};
use orb_api::aiorb::SummaryState;

/// One stored file: the record, a revision (the compare-and-swap token) and the body as sent.
#[derive(Serialize, Deserialize)]
struct File<'a> {
    meta: SummaryMeta,
    revision: u64,
    #[serde(borrow)]
    summary: &'a RawValue,
}

pub struct LocalStore {
    dir: Option<PathBuf>,
    summaries: Mutex<BTreeMap<String, StoredSummary>>,
}

/// The file (or ConfigMap) name part for a summary id: stable, short and safe.
pub fn id_hash(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..8])
}

impl LocalStore {
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            summaries: Mutex::default(),
        }
    }

    /// Opens (creating) `dir` and loads what it holds.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut summaries = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let file: File<'_> =
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
            let stored = StoredSummary {
                body: Bytes::copy_from_slice(file.summary.get().as_bytes()),
                version: Some(file.revision.to_string()),
                meta: file.meta,
            };
            summaries.insert(stored.meta.id.clone(), stored);
        }
        Ok(Self {
            dir: Some(dir.to_owned()),
            summaries: Mutex::new(summaries),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoredSummary>> {
        self.summaries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every stored summary, for tests and diagnostics.
    pub fn all(&self) -> Vec<StoredSummary> {
        self.lock().values().cloned().collect()
    }

    fn persist(&self, s: &StoredSummary, revision: u64) -> Result<(), StoreError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let body = std::str::from_utf8(&s.body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let raw = RawValue::from_string(body.to_owned()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let text = serde_json::to_vec(&File {
            meta: s.meta.clone(),
            revision,
            summary: &raw,
        })
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let name = id_hash(&s.meta.id);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("{name}.json")))?;
        Ok(())
    }
}

impl SummaryStore for LocalStore {
    fn put(&self, mut summary: StoredSummary) -> BoxFuture<'_, Result<PutOutcome, StoreError>> {
        Box::pin(async move {
            let mut all = self.lock();
            if all.contains_key(&summary.meta.id) {
                return Ok(PutOutcome::AlreadyStored);
            }
            // Counted and stored under one lock: no copy in flight slips past the count.
            let key = orb_key(&summary.meta);
            admit(
                &summary.meta.id,
                all.values()
                    .filter(|s| orb_key(&s.meta) == key)
                    .map(|s| s.meta.id.as_str()),
            )?;
            self.persist(&summary, 1)?;
            summary.version = Some("1".into());
            all.insert(summary.meta.id.clone(), summary);
            Ok(PutOutcome::Stored)
        })
    }

    fn pending(&self) -> BoxFuture<'_, Result<Vec<SummaryRecord>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .lock()
                .values()
                .filter(|s| s.meta.state == SummaryState::Pending)
                .map(StoredSummary::record)
                .collect())
        })
    }

    fn body(&self, id: &str) -> BoxFuture<'_, Result<Bytes, StoreError>> {
        let body = self
            .lock()
            .get(id)
            .map(|s| s.body.clone())
            .ok_or_else(|| StoreError::Corrupt(format!("no stored summary {id:?}")));
        Box::pin(async move { body })
    }

    fn update(&self, record: SummaryRecord) -> BoxFuture<'_, Result<SummaryRecord, StoreError>> {
        Box::pin(async move {
            let mut all = self.lock();
            let Some(stored) = all.get(&record.meta.id) else {
                return Err(StoreError::Conflict);
            };
            if stored.version.is_none() || stored.version != record.version {
                return Err(StoreError::Conflict);
            }
            let revision = stored
                .version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            let updated = StoredSummary {
                meta: record.meta,
                body: stored.body.clone(),
                version: Some(revision.to_string()),
            };
            self.persist(&updated, revision)?;
            let record = updated.record();
            all.insert(record.meta.id.clone(), updated);
            Ok(record)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{SummarySettings, new_meta};
    use jiff::Timestamp;

    fn summary(id: &str) -> StoredSummary {
        summary_of(id, "room", None)
    }

    fn summary_of(id: &str, room: &str, orb_uid: Option<&str>) -> StoredSummary {
        let settings = SummarySettings {
            webhook_url: Some("http://h/".parse().unwrap()),
            retry_window: std::time::Duration::from_secs(60),
            ..Default::default()
        };
        StoredSummary {
            meta: SummaryMeta {
                orb_uid: orb_uid.map(str::to_owned),
                ..new_meta(
                    id.into(),
                    room.into(),
                    Timestamp::from_second(1_700_000_000).unwrap(),
                    &settings,
                )
            },
            body: Bytes::from_static(br#"{"roomId":"room","summary":{"transcript":["x"]}}"#),
            version: None,
        }
    }

    #[tokio::test]
    async fn a_directory_store_survives_a_reopen_and_refuses_stale_updates() {
        let dir = std::env::temp_dir().join(format!("orb-summaries-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = LocalStore::open(&dir).unwrap();
        assert_eq!(store.put(summary("a")).await.unwrap(), PutOutcome::Stored);
        assert_eq!(store.put(summary("a")).await.unwrap(), PutOutcome::AlreadyStored);
        let pending = store.pending().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(store.body("a").await.unwrap(), summary("a").body);
        let mut first = pending[0].clone();
        first.meta.attempts = 1;
        let updated = store.update(first.clone()).await.unwrap();
        assert!(
            matches!(store.update(first).await, Err(StoreError::Conflict)),
            "stale version"
        );

        // A new process reads back the same record and body.
        drop(store);
        let reopened = LocalStore::open(&dir).unwrap();
        let again = reopened.pending().await.unwrap();
        assert_eq!(again, vec![updated]);
        assert_eq!(reopened.body("a").await.unwrap(), summary("a").body);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_orb_attempt_stores_a_few_summaries_also_after_a_reopen() {
        use crate::summary::{MAX_PER_ORB, Refusal};
        let dir = std::env::temp_dir().join(format!("orb-summaries-cap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = LocalStore::open(&dir).unwrap();
        for i in 0..MAX_PER_ORB {
            let s = summary_of(&format!("a{i}"), "room", Some("uid-a"));
            assert_eq!(store.put(s).await.unwrap(), PutOutcome::Stored);
        }
        let refused = store.put(summary_of("a-more", "room", Some("uid-a"))).await;
        assert!(
            matches!(refused, Err(StoreError::Refused(Refusal::TooMany))),
            "{refused:?}"
        );
        assert_eq!(
            store.put(summary_of("a0", "room", Some("uid-a"))).await.unwrap(),
            PutOutcome::AlreadyStored
        );
        // The room's next orb, and an orb without a uid (no auth: the room is its key), count apart.
        assert_eq!(
            store.put(summary_of("b0", "room", Some("uid-b"))).await.unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(
            store.put(summary_of("n0", "room", None)).await.unwrap(),
            PutOutcome::Stored
        );

        drop(store);
        let reopened = LocalStore::open(&dir).unwrap();
        let refused = reopened.put(summary_of("a-later", "room", Some("uid-a"))).await;
        assert!(matches!(refused, Err(StoreError::Refused(Refusal::TooMany))));
        assert_eq!(reopened.all().len(), MAX_PER_ORB + 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
