//! Discovery: the model of the mesh (workloads, services, policies) that every proxy reads, and the
//! sources that feed it. Sources publish whole immutable snapshots ([`MeshState`]) on a watch
//! channel.

pub mod kubernetes;
pub mod local;
mod model;
mod source;
mod state;

pub use model::{Naming, Service, ServicePort, Serving, Waypoint, WaypointRef, Workload, selects};
pub use source::{AddressLookup, NodeAddresses, Origin, open, states_of};
pub use state::{ConfigError, MeshSettings, MeshState, Summary};
pub(crate) use state::{Lists, ServiceKey, front_one};
