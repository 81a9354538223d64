//! What every service gets from the bench and gives back to it.

use std::net::{IpAddr, SocketAddr};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::directory::PhoneDirectory;
use crate::event::{NewEvent, Source};
use crate::placeholder::Placeholders;
use crate::timeline::Timeline;
use crate::tree::ProvisioningTree;

/// Handed to each service at start.
#[derive(Clone, Debug)]
pub struct ServiceContext {
    pub timeline: Timeline,
    pub directory: PhoneDirectory,
    /// The address to bind (the lab NIC's address, or a loopback address).
    pub bind_ip: IpAddr,
    /// `{rig.*}` values; add `.with_phone(..)` to expand per requesting phone.
    pub placeholders: Placeholders,
    /// The tree TFTP, HTTP and FTP serve.
    pub tree: ProvisioningTree,
    /// Cancelled when the bench stops; services end their tasks and release ports.
    pub shutdown: CancellationToken,
}

/// A started service: its name, where it listens, and the task to await on stop.
pub struct RunningService {
    pub name: &'static str,
    pub addrs: Vec<SocketAddr>,
    pub task: JoinHandle<()>,
}

impl RunningService {
    /// Waits for the service's task after the shutdown token was cancelled.
    /// A panic inside the service is reported as an event, not propagated.
    pub async fn join(self, timeline: &Timeline) {
        if let Err(error) = self.task.await {
            if error.is_panic() {
                timeline.publish(
                    NewEvent::new(Source::Rig, "service.panicked")
                        .field("service", self.name)
                        .field("error", error.to_string()),
                );
            }
        }
    }
}
