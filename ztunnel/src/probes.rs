//! The kubelet's probes under STRICT: the node's own connections to the pods it captured leave with
//! a reserved source address ([`PROBE_SOURCE_V4`], [`PROBE_SOURCE_V6`]), which each pod's capture
//! lets through in plaintext to the application (see [`crate::capture`]). Nothing else can use it:
//!
//! - `nat POSTROUTING` → `VEIL_PROBE_SNAT`: TCP from a socket of the node's own network namespace
//!   (`-m owner --socket-exists`: the kubelet, not traffic the node forwards) to the address of a pod
//!   this ztunnel captured (or is about to: the rule goes in before the pod's capture, so that a
//!   probe sent the moment the capture is in is admitted) is given the probe source. Only those
//!   addresses: the node's connections to anything else keep their source (a reply to the probe
//!   source from another node would not come back).
//! - `raw PREROUTING` → `VEIL_PROBE_GUARD`: a packet with the probe source arriving from any
//!   interface (a pod forging it, or another node) is dropped before anything else sees it. The
//!   node's own probes never pass PREROUTING; their replies are addressed to the probe source, not
//!   from it.
//!
//! The trust boundary is the node's network namespace: anything running in it (the kubelet, and any
//! `hostNetwork` pod) reaches this node's enrolled pods in plaintext, as Istio's ambient mode allows.
//! Rules are written with `iptables-restore --noflush` in ztunnel's own namespace (the node's: the
//! DaemonSet runs with `hostNetwork`), each table's chain replaced as one unit.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::capture::{CaptureError, Family, jump_lines, missing, run_here};
pub use crate::capture::{PROBE_SOURCE_V4, PROBE_SOURCE_V6};

/// raw: drop the probe source arriving from outside.
const GUARD: &str = "VEIL_PROBE_GUARD";
/// nat: give the node's connections to captured pods the probe source.
const SNAT: &str = "VEIL_PROBE_SNAT";

/// The jumps into the node's chains, spelled as `iptables-save` prints them.
const JUMPS: [(&str, &str, &str, &str); 2] = [
    ("raw", "PREROUTING", "", GUARD),
    ("nat", "POSTROUTING", "-p tcp ", SNAT),
];

/// The `iptables-restore --noflush` input that sets the node's probe rules for `family` to the pods
/// at `pods` (addresses of other families are left out); `jumps` are the jumps still missing.
pub fn node_rules(family: Family, pods: &BTreeSet<IpAddr>, jumps: &[usize]) -> String {
    let (source, bare) = (family.probe_source(), family.probe_address());
    let mut raw = format!("*raw\n:{GUARD} - [0:0]\n-A {GUARD} -s {source} -j DROP\n");
    let mut nat = format!("*nat\n:{SNAT} - [0:0]\n");
    for pod in family.hosts(pods) {
        nat.push_str(&format!(
            "-A {SNAT} -d {pod} -p tcp -m owner --socket-exists -j SNAT --to-source {bare}\n"
        ));
    }
    for (table, line) in jump_lines(&JUMPS, jumps) {
        if table == "raw" {
            raw.push_str(&line);
        } else {
            nat.push_str(&line);
        }
    }
    // The guard first: the probe source is admitted by pods only once nothing else can forge it.
    format!("{raw}COMMIT\n{nat}COMMIT\n")
}

/// Sets the node's probe rules, both families, to the pods at `pods`.
pub fn sync(pods: &BTreeSet<IpAddr>) -> Result<(), CaptureError> {
    for family in Family::ALL {
        // Only the two tables written: a node's nat table can be large (kube-proxy).
        let mut save = run_here(family.save(), &["-t", "raw"], None)?;
        save.push_str(&run_here(family.save(), &["-t", "nat"], None)?);
        let input = node_rules(family, pods, &missing(&save, &JUMPS));
        run_here(family.restore(), &["--noflush"], Some(&input))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> BTreeSet<IpAddr> {
        ["10.20.0.5", "10.20.0.6", "fd00::5", "::ffff:10.20.0.7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect()
    }

    #[test]
    fn only_the_nodes_own_connections_to_captured_pods_get_the_probe_source() {
        let v4 = node_rules(Family::V4, &pods(), &[0, 1]);
        assert!(v4.starts_with("*raw\n"), "the guard goes in first:\n{v4}");
        assert!(v4.contains("-A VEIL_PROBE_GUARD -s 169.254.7.127/32 -j DROP\n"));
        for pod in ["10.20.0.5", "10.20.0.6", "10.20.0.7"] {
            assert!(
                v4.contains(&format!("-A VEIL_PROBE_SNAT -d {pod}/32 -p tcp -m owner --socket-exists -j SNAT --to-source 169.254.7.127\n")),
                "{v4}"
            );
        }
        assert_eq!(v4.matches("SNAT --to-source").count(), 3, "{v4}");
        assert!(v4.contains("-I PREROUTING 1 -j VEIL_PROBE_GUARD\n"));
        assert!(v4.contains("-I POSTROUTING 1 -p tcp -j VEIL_PROBE_SNAT\n"));

        let v6 = node_rules(Family::V6, &pods(), &[]);
        assert!(v6.contains(
            "-A VEIL_PROBE_GUARD -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -j DROP\n"
        ));
        assert!(v6.contains("-A VEIL_PROBE_SNAT -d fd00::5/128 -p tcp -m owner --socket-exists -j SNAT --to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff\n"));
        assert_eq!(v6.matches("SNAT --to-source").count(), 1, "{v6}");
        assert!(!v6.contains("-I "), "no jump asked for");

        // No pods: the guard stays, the SNAT chain is emptied.
        let none = node_rules(Family::V4, &BTreeSet::new(), &[]);
        assert!(none.contains(":VEIL_PROBE_SNAT - [0:0]\n") && !none.contains("--to-source"));
        assert!(none.contains("-j DROP"));
    }

    #[test]
    fn jumps_are_recognised_as_iptables_save_prints_them() {
        let save = "*raw\n-A PREROUTING -j VEIL_PROBE_GUARD\nCOMMIT\n*nat\n-A POSTROUTING -p tcp -j VEIL_PROBE_SNAT\nCOMMIT\n";
        assert!(missing(save, &JUMPS).is_empty());
        assert_eq!(missing("*raw\nCOMMIT\n", &JUMPS), [0, 1]);
    }
}
