//! Discovery: the model of the mesh (workloads, services, policies) that every proxy reads, and the
//! sources that feed it. Sources publish whole immutable snapshots ([`MeshState`]) on a watch
//! channel.

#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod local;
mod model;
mod source;
mod state;

pub use model::{Naming, Service, ServicePort, Serving, Waypoint, WaypointRef, Workload, selects};
#[cfg(feature = "kubernetes")]
pub use source::states_of;
pub use source::{AddressLookup, NodeAddresses, open};
pub use state::{ConfigError, MeshSettings, MeshState, Summary};
pub(crate) use state::{Lists, ServiceKey, front_one};
