//! Shared ground for every part of phonerig: the [`Timeline`] of [`Event`]s,
//! phone identities ([`Mac`], [`PhoneInfo`], [`PhoneDirectory`]), placeholder
//! expansion, and the [`ProvisioningTree`] that TFTP, HTTP and FTP serve from.

pub mod directory;
pub mod duration;
pub mod event;
pub mod flood;
pub mod mac;
pub mod netns;
pub mod placeholder;
pub mod service;
pub mod timeline;
pub mod tree;

pub use directory::{PhoneDirectory, PhoneInfo};
pub use event::{Event, Source};
pub use flood::{FloodGuard, FloodLimits, FloodReport};
pub use mac::Mac;
pub use placeholder::{Placeholders, RigEndpoints};
pub use service::{RunningService, ServiceContext};
pub use timeline::{Timeline, TimelineReader};
pub use tree::{FileRule, ProvisioningTree, ResolveError, ServedFile};
