//! Checkpoints: the latest `session_checkpoint` of each room's orb, one record per room,
//! overwritten by the next. A replacement orb gets it on join and continues its transcript; when
//! the room's orb is gone for good without a final summary (killed, or its summary never stored),
//! the checkpoint becomes the session's summary, marked partial, and is removed; a final summary
//! supersedes (removes) it. Kept like summaries: with the Kubernetes runtime a ConfigMap per room
//! owned by its AiOrb ([`super::kube_store::KubeCheckpoints`]), else a file per room under
//! `<summary dir>/checkpoints` (written atomically), or in memory without a directory.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::StoreError;
use super::local_store::id_hash;

/// A room's latest checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its JSON, as signaling keeps it.
    pub body: Bytes,
    /// The AiOrb whose orb sent it, when the store knows it (Kubernetes runtime).
    pub orb_uid: Option<String>,
}

/// Where each room's latest checkpoint is kept.
pub trait CheckpointStore: Send + Sync + 'static {
    /// Replaces the room's checkpoint; `orb_uid` is the sending orb's AiOrb, if its token names it.
    fn put(&self, room_id: &str, orb_uid: Option<&str>, body: Bytes) -> BoxFuture<'_, Result<(), StoreError>>;
    fn get(&self, room_id: &str) -> BoxFuture<'_, Result<Option<Checkpoint>, StoreError>>;
    /// Removes the room's checkpoint if it is still `body` (a newer one stays).
    fn remove(&self, room_id: &str, body: Option<&Bytes>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The rooms with a checkpoint whose orb cannot end any more by itself: left by an earlier
    /// run of this process whose orbs ended with it (by the `roomId` each holds). Where orbs
    /// outlive signaling (Kubernetes), none: their ends come from the AiOrbs.
    fn orphaned_rooms(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
    /// The checkpoints owned by an orb not among `orb_uids` (every orb there is, as the runtime
    /// listed them), by room with their owner: left by an orb that ended while nobody watched.
    /// A store that keeps no owners has none.
    fn rooms_of_unlisted_orbs(
        &self,
        orb_uids: HashSet<String>,
    ) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>> {
        let _ = orb_uids;
        Box::pin(async { Ok(Vec::new()) })
    }
}

pub struct LocalCheckpoints {
    dir: Option<PathBuf>,
    rooms: Mutex<HashMap<String, Bytes>>,
}

impl LocalCheckpoints {
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            rooms: Mutex::default(),
        }
    }

    /// Opens (creating) `dir/checkpoints`; records are read when asked for.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let dir = dir.join("checkpoints");
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir: Some(dir),
            rooms: Mutex::default(),
        })
    }

    fn path(&self, room_id: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{}.json", id_hash(room_id))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CheckpointStore for LocalCheckpoints {
    fn put(&self, room_id: &str, _orb_uid: Option<&str>, body: Bytes) -> BoxFuture<'_, Result<(), StoreError>> {
        let room_id = room_id.to_owned();
        Box::pin(async move {
            let mut rooms = self.lock();
            if let Some(path) = self.path(&room_id) {
                let tmp = path.with_extension("tmp");
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&body)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
            }
            rooms.insert(room_id, body);
            Ok(())
        })
    }

    fn get(&self, room_id: &str) -> BoxFuture<'_, Result<Option<Checkpoint>, StoreError>> {
        let room_id = room_id.to_owned();
        Box::pin(async move {
            let checkpoint = |body| Checkpoint { body, orb_uid: None };
            if let Some(body) = self.lock().get(&room_id) {
                return Ok(Some(checkpoint(body.clone())));
            }
            // Written before a restart of this process.
            let Some(path) = self.path(&room_id) else {
                return Ok(None);
            };
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some(checkpoint(Bytes::from(bytes)))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn remove(&self, room_id: &str, body: Option<&Bytes>) -> BoxFuture<'_, Result<(), StoreError>> {
        let room_id = room_id.to_owned();
        let expected = body.cloned();
        Box::pin(async move {
            let mut rooms = self.lock();
            if let Some(expected) = &expected {
                let current = match rooms.get(&room_id) {
                    Some(b) => Some(b.clone()),
                    None => match self.path(&room_id).map(std::fs::read) {
                        Some(Ok(bytes)) => Some(Bytes::from(bytes)),
                        _ => None,
                    },
                };
                if current.as_ref() != Some(expected) {
                    return Ok(());
                }
            }
            rooms.remove(&room_id);
            if let Some(path) = self.path(&room_id) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
    }

    fn orphaned_rooms(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            let mut rooms: Vec<String> = self.lock().keys().cloned().collect();
            let Some(dir) = &self.dir else { return Ok(rooms) };
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let body: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)
                    .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
                if let Some(room) = body["roomId"].as_str()
                    && !rooms.iter().any(|r| r == room)
                {
                    rooms.push(room.to_owned());
                }
            }
            Ok(rooms)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_checkpoint_per_room_overwritten_and_kept_across_a_reopen() {
        let dir = std::env::temp_dir().join(format!("orb-checkpoints-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = LocalCheckpoints::open(&dir).unwrap();
        store
            .put("room-1", None, Bytes::from_static(b"{\"roomId\":\"room-1\",\"n\":1}"))
            .await
            .unwrap();
        store
            .put("room-1", None, Bytes::from_static(b"{\"roomId\":\"room-1\",\"n\":2}"))
            .await
            .unwrap();
        store
            .put("room-2", None, Bytes::from_static(b"{\"roomId\":\"room-2\",\"n\":9}"))
            .await
            .unwrap();
        assert_eq!(std::fs::read_dir(dir.join("checkpoints")).unwrap().count(), 2);
        let reopened = LocalCheckpoints::open(&dir).unwrap();
        assert_eq!(
            reopened.get("room-1").await.unwrap().unwrap().body,
            "{\"roomId\":\"room-1\",\"n\":2}"
        );
        let mut rooms = reopened.orphaned_rooms().await.unwrap();
        rooms.sort();
        assert_eq!(rooms, ["room-1", "room-2"]);
        // A stale removal leaves the newer checkpoint.
        reopened
            .remove("room-1", Some(&Bytes::from_static(b"{\"roomId\":\"room-1\",\"n\":1}")))
            .await
            .unwrap();
        assert!(reopened.get("room-1").await.unwrap().is_some());
        reopened.remove("room-1", None).await.unwrap();
        assert!(reopened.get("room-1").await.unwrap().is_none());
        assert!(
            LocalCheckpoints::open(&dir)
                .unwrap()
                .get("room-1")
                .await
                .unwrap()
                .is_none()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
