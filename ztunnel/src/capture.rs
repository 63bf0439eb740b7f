//! Traffic capture inside a pod's network namespace.
//!
//! Rules (nat table, IPv4 and, for pods with IPv6 addresses, IPv6):
//! - outbound TCP the pod opens is redirected to ztunnel's outbound listener (15001), except
//!   loopback traffic and ztunnel's own marked sockets;
//! - inbound TCP is redirected to the plaintext listener (15006), except HBONE (15008).
//!
//! Rules are generated as text (pure, tested) and applied atomically with `iptables-restore`
//! inside the namespace. Install order matters for safety: listeners first, then rules, so a
//! redirected connection always finds ztunnel; removal takes rules out before listeners.

use std::io::Write;
use std::process::{Command, Stdio};

use veil_mesh::hbone::HBONE_PORT;

use super::netns::SOCKET_MARK;

/// Outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture port.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// The ports ztunnel itself listens on inside a pod; never a valid destination for a tunnel.
pub const PROXY_PORTS: [u16; 3] = [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT];

const OUT_CHAIN: &str = "VEIL_OUTPUT";
const IN_CHAIN: &str = "VEIL_INBOUND";

/// IP family of a rule set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.0/8",
            Self::V6 => "::1/128",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }

    fn tool(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }
}

/// The `iptables-restore` input that installs capture (to be applied after [`uninstall`]).
pub fn rules(family: Family) -> String {
    let hbone = HBONE_PORT;
    let loopback = family.loopback();
    format!(
        "*nat
:{OUT_CHAIN} - [0:0]
:{IN_CHAIN} - [0:0]
-A {OUT_CHAIN} -m mark --mark {SOCKET_MARK:#x}/0xfff -j RETURN
-A {OUT_CHAIN} -d {loopback} -j RETURN
-A {OUT_CHAIN} -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}
-A {IN_CHAIN} -p tcp --dport {hbone} -j RETURN
-A {IN_CHAIN} -p tcp -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}
-I OUTPUT 1 -p tcp -j {OUT_CHAIN}
-I PREROUTING 1 -p tcp -j {IN_CHAIN}
COMMIT
"
    )
}

/// Why capture could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The tool could not be run.
    #[error("running {tool}: {source} (is iptables installed?)")]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("{tool} failed in {netns}: {stderr}")]
    Failed {
        tool: &'static str,
        netns: String,
        stderr: String,
    },
}

/// Installs capture in the namespace at `netns` for `family`, replacing any earlier veil rules.
pub fn install(netns: &std::path::Path, family: Family) -> Result<(), CaptureError> {
    uninstall(netns, family)?;
    run_in(
        netns,
        family.restore(),
        &["--noflush"],
        Some(&rules(family)),
    )
}

/// Removes veil's capture from the namespace at `netns` (no error if there is none).
pub fn uninstall(netns: &std::path::Path, family: Family) -> Result<(), CaptureError> {
    for (chain, hook) in [(OUT_CHAIN, "OUTPUT"), (IN_CHAIN, "PREROUTING")] {
        // Delete every jump (there should be one), then the chain.
        while run_in(
            netns,
            family.tool(),
            &["-t", "nat", "-D", hook, "-p", "tcp", "-j", chain],
            None,
        )
        .is_ok()
        {}
        let _ = run_in(netns, family.tool(), &["-t", "nat", "-F", chain], None);
        let _ = run_in(netns, family.tool(), &["-t", "nat", "-X", chain], None);
    }
    Ok(())
}

/// Whether capture is in place (the jump into veil's outbound chain exists).
pub fn installed(netns: &std::path::Path, family: Family) -> bool {
    run_in(
        netns,
        family.tool(),
        &["-t", "nat", "-C", "OUTPUT", "-p", "tcp", "-j", OUT_CHAIN],
        None,
    )
    .is_ok()
}

fn run_in(
    netns: &std::path::Path,
    tool: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(), CaptureError> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CaptureError::Spawn { tool, source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| CaptureError::Spawn { tool, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CaptureError::Spawn { tool, source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CaptureError::Failed {
            tool,
            netns: netns.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_redirect_pod_traffic_except_loopback_hbone_and_ztunnel_itself() {
        let v4 = rules(Family::V4);
        assert!(v4.starts_with("*nat\n") && v4.ends_with("COMMIT\n"));
        let lines: Vec<&str> = v4.lines().collect();
        let pos = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no rule with {needle:?} in\n{v4}"))
        };
        // Exclusions come before the redirect in each chain.
        assert!(pos("--mark 0x539/0xfff -j RETURN") < pos("REDIRECT --to-ports 15001"));
        assert!(pos("-d 127.0.0.0/8 -j RETURN") < pos("REDIRECT --to-ports 15001"));
        assert!(pos("--dport 15008 -j RETURN") < pos("REDIRECT --to-ports 15006"));
        assert!(v4.contains("-I OUTPUT 1 -p tcp -j VEIL_OUTPUT"));
        assert!(v4.contains("-I PREROUTING 1 -p tcp -j VEIL_INBOUND"));
        let v6 = rules(Family::V6);
        assert!(v6.contains("-d ::1/128 -j RETURN"));
        assert!(!v6.contains("127.0.0.0"));
    }
}
