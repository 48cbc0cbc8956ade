//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): every replica samples,
//! only the holder writes. The holder renews well inside the lease duration; on shutdown it
//! releases the Lease so a follower takes over at once instead of waiting for it to expire.

use super::{Result, Settings};
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Where the Lease lives and how long it lasts.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// Seconds a holder keeps the Lease without renewing it.
    pub duration_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace_seconds: u64,
}

/// The running election; `release` gives the Lease up.
pub struct Election {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Election {
    /// Releases the Lease (if held) and waits for that to be written.
    pub async fn release(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Starts the election; the receiver says whether this replica leads. Without lease settings the
/// replica always leads.
pub async fn elect(client: Client, settings: &Settings) -> Result<(watch::Receiver<bool>, Option<Election>)> {
    let Some(lease) = &settings.lease else {
        // Always leading: the receiver keeps this value after the sender is dropped.
        let (_, receiver) = watch::channel(true);
        return Ok((receiver, None));
    };
    let manager = LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&settings.identity)
        .with_field_manager(super::FIELD_MANAGER)
        .with_duration(lease.duration_seconds)
        .with_grace(lease.grace_seconds)
        .build()
        .await?;
    let (sender, receiver) = watch::channel(false);
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(hold(manager, sender, stopped));
    Ok((receiver, Some(Election { stop, task })))
}

async fn hold(manager: LeaseManager, sender: watch::Sender<bool>, mut stopped: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            changed = manager.changed() => match changed {
                Ok(leading) => {
                    if leading != *sender.borrow() {
                        tracing::info!(leading, "leadership changed");
                    }
                    sender.send_replace(leading);
                }
                Err(error) => {
                    tracing::warn!(%error, "lease renewal failed; stepping down until it succeeds");
                    sender.send_replace(false);
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            },
        }
    }
    sender.send_replace(false);
    if let Err(error) = manager.release().await {
        tracing::warn!(%error, "releasing the lease failed; it expires by itself");
    }
}
