//! The Kubernetes source: the cluster's Namespaces, Pods, Services and veil policies and
//! Telemetries, watched and translated into the same model the local file produces.

mod patch;
mod pod;
mod telemetry;
mod translate;
mod watch;

pub use pod::{SlimContainer, SlimPod, SlimPodSpec, SlimPodStatus};
pub use telemetry::TelemetryObject;
pub use translate::{DATAPLANE_MODE, Objects, Translation, USE_WAYPOINT, WAYPOINT, translate};
pub use watch::{Snapshot, start};
