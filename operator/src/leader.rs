//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager), so that of two
//! replicas exactly one runs the controller and the admitter.

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

pub const LEASE_NAME: &str = "orb-operator-leader";
/// A leader that stops renewing loses the lease after this long.
const LEASE_SECONDS: u64 = 15;
const RENEW_GRACE_SECONDS: u64 = 5;

pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader election on Lease {LEASE_NAME}: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("leader election on Lease {LEASE_NAME}: the lease manager stopped")]
    Stopped(#[from] watch::error::RecvError),
}

/// Waits until this replica leads, or returns `None` when `shutdown` comes first.
pub async fn acquire(
    client: Client,
    namespace: &str,
    identity: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Option<Leadership>, LeaderError> {
    let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(RENEW_GRACE_SECONDS)
        .with_field_manager(orb_api::OPERATOR_FIELD_MANAGER)
        .build()
        .await?;
    let (mut state, task) = manager.watch().await;
    info!(lease = LEASE_NAME, %identity, "waiting for leadership");
    tokio::select! {
        r = state.wait_for(|leading| *leading) => { r?; }
        _ = shutdown => return Ok(None),
    }
    info!(%identity, "acquired leadership");
    Ok(Some(Leadership { state, task }))
}

impl Leadership {
    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        let mut state = self.state.clone();
        let _ = state.wait_for(|leading| !*leading).await;
    }

    /// Gives the lease up so that a standby takes over at once instead of after it expires.
    pub async fn release(self) {
        drop(self.state);
        let _ = self.task.await;
    }
}
