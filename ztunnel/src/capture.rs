//! Traffic capture inside a pod's network namespace, for IPv4 and IPv6 alike (every pod has IPv6,
//! if only link-local: a family left out would be a way around the mesh).
//!
//! `nat` table:
//! - outbound TCP the pod opens is redirected to ztunnel's outbound listener (15001), except
//!   loopback traffic and ztunnel's own sockets: marked, and opened from ztunnel's cgroup
//!   ([`OwnSockets`]; a pod keeping `CAP_NET_RAW` can mark its own sockets);
//! - inbound TCP is redirected to the plaintext listener (15006), except HBONE (15008) and, with
//!   kubelet probes admitted, TCP from the reserved probe source ([`PROBE_SOURCE_V4`]), which only
//!   this node's own processes can originate ([`crate::probes`]).
//!
//! `filter` table:
//! - the capture listeners (15001, 15006) take only connections that were redirected to them
//!   (conntrack state `DNAT`): an application dialling `127.0.0.1:15001` itself is reset by the
//!   kernel and never makes ztunnel read its own listener as a destination (a loop);
//! - inbound, whatever capture does not handle is dropped: only TCP (captured), loopback, replies
//!   to the pod's own flows (`ESTABLISHED`/`RELATED`) and ICMP (errors, echo, IPv6 neighbour
//!   discovery) pass;
//! - outbound, what the mesh cannot carry is refused at the source: UDP (and any other protocol
//!   but TCP and ICMP) leaves the pod only to the allowed UDP ports and CIDRs (DNS by default).
//!
//! `mangle` table, only where ztunnel carries UDP (`--carry-udp`):
//! - outbound UDP that is not allowed out in clear, not to the pod itself (`lo`) and not from
//!   ztunnel's own sockets is marked ([`UDP_MARK`]); a routing rule sends marked packets to the
//!   local table ([`UDP_ROUTE_TABLE`]: every address local, through `lo`), where `TPROXY` hands
//!   them to ztunnel's transparent UDP socket on 15001 (`crate::udp`) with their original
//!   destination intact. Nothing marked leaves the pod: a marked datagram that would leave by
//!   another device (a socket bound to one) is dropped in `POSTROUTING`; IPv6 link-local is never
//!   marked (the filter table refuses it, as without carrying).
//!
//! Rules are generated as text (pure, tested) and applied with `iptables-restore --noflush` inside
//! the namespace: each table's rules are swapped in as one unit, re-installing replaces veil's
//! chains in place (the jumps into them are added only where missing), and a failed install is
//! undone by the caller. Listeners come first, then rules, so a redirected connection always
//! finds ztunnel; removal takes rules out before listeners.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};

use ipnet::IpNet;
use veil_mesh::hbone::HBONE_PORT;

use super::netns::SOCKET_MARK;

/// Outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture port.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// The ports ztunnel itself listens on inside a pod; never a valid destination for a tunnel.
pub const PROXY_PORTS: [u16; 3] = [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT];

/// nat: outbound TCP → 15001.
const NAT_OUT: &str = "VEIL_OUTPUT";
/// nat: inbound TCP → 15006.
const NAT_IN: &str = "VEIL_INBOUND";
/// filter: what may enter the pod.
const FILTER_IN: &str = "VEIL_IN_FILTER";
/// filter: what may leave the pod.
const FILTER_OUT: &str = "VEIL_OUT_FILTER";

/// Every jump veil adds: (table, built-in chain, match, veil chain). The match is part of the rule's
/// identity for `-C`/`-D`, so it must be spelled the same in install, check and removal.
const JUMPS: [(&str, &str, &str, &str); 4] = [
    ("filter", "INPUT", "", FILTER_IN),
    ("filter", "OUTPUT", "", FILTER_OUT),
    ("nat", "OUTPUT", "-p tcp ", NAT_OUT),
    ("nat", "PREROUTING", "-p tcp ", NAT_IN),
];

/// The source address the node gives its own connections to captured pods (the kubelet's probes):
/// link-local, so no other node routes it; the node drops it arriving from any interface. The same
/// addresses as Istio's ambient mode, which operators' firewalls may already know.
pub const PROBE_SOURCE_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 7, 127);
/// The IPv6 probe source (unique-local, reserved the same way).
pub const PROBE_SOURCE_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(
    0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
);

/// mangle: outbound UDP to be carried → marked.
const MANGLE_UDP_OUT: &str = "VEIL_UDP_OUT";
/// mangle: marked UDP arriving on `lo` → ztunnel's socket.
const MANGLE_UDP_IN: &str = "VEIL_UDP_IN";

/// mangle: a marked packet about to leave by any device but `lo` → dropped.
const MANGLE_UDP_GUARD: &str = "VEIL_UDP_GUARD";

/// The jumps into the UDP chains (only where ztunnel carries UDP).
const UDP_JUMPS: [(&str, &str, &str, &str); 3] = [
    ("mangle", "OUTPUT", "-p udp ", MANGLE_UDP_OUT),
    ("mangle", "PREROUTING", "-p udp ", MANGLE_UDP_IN),
    ("mangle", "POSTROUTING", "-p udp ", MANGLE_UDP_GUARD),
];

/// The mark on outbound UDP packets ztunnel carries (the bits of [`SOCKET_MARK`]'s mask: never
/// mistaken for ztunnel's own sockets).
pub const UDP_MARK: u32 = 0x53a;
/// The routing table (and rule priority) that delivers marked UDP locally.
pub const UDP_ROUTE_TABLE: u32 = 0x53a;

/// IPv6 link-local unicast.
const LINK_LOCAL_V6: &str = "fe80::/10";

/// `iptables-restore` accepts at most 15 ports per `multiport` match.
const MULTIPORT_MAX: usize = 15;

/// IP family of a rule set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

impl Family {
    /// Both families: capture is installed for each in every pod.
    pub const ALL: [Self; 2] = [Self::V4, Self::V6];

    fn loopback(self) -> &'static str {
        match self {
            Self::V4 => "127.0.0.0/8",
            Self::V6 => "::1/128",
        }
    }

    fn icmp(self) -> &'static str {
        match self {
            Self::V4 => "icmp",
            Self::V6 => "ipv6-icmp",
        }
    }

    fn prohibited(self) -> &'static str {
        match self {
            Self::V4 => "icmp-admin-prohibited",
            Self::V6 => "icmp6-adm-prohibited",
        }
    }

    fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Self::V4, IpNet::V4(_)) | (Self::V6, IpNet::V6(_))
        )
    }

    pub(crate) fn restore(self) -> &'static str {
        match self {
            Self::V4 => "iptables-restore",
            Self::V6 => "ip6tables-restore",
        }
    }

    pub(crate) fn save(self) -> &'static str {
        match self {
            Self::V4 => "iptables-save",
            Self::V6 => "ip6tables-save",
        }
    }

    /// The probe source of this family, as a host network.
    /// The probe source of this family.
    pub(crate) fn probe_address(self) -> IpAddr {
        match self {
            Self::V4 => PROBE_SOURCE_V4.into(),
            Self::V6 => PROBE_SOURCE_V6.into(),
        }
    }

    /// The probe source of this family, as a network of one address.
    pub(crate) fn probe_source(self) -> String {
        host_net(self.probe_address())
    }

    /// Those of `ips` of this family (IPv4-mapped IPv6 counting as IPv4), as host networks.
    pub(crate) fn hosts<'a>(self, ips: impl IntoIterator<Item = &'a IpAddr>) -> Vec<String> {
        ips.into_iter()
            .map(|ip| ip.to_canonical())
            .filter(|ip| ip.is_ipv4() == (self == Self::V4))
            .map(host_net)
            .collect()
    }

    pub(crate) fn tool(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }
}

/// Which UDP destinations an enrolled pod may reach in clear, and what happens to the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpAllowance {
    /// Destination ports allowed to any address.
    pub ports: Vec<u16>,
    /// Destination networks allowed on any port.
    pub cidrs: Vec<IpNet>,
    /// The rest is captured and carried by the mesh (`crate::udp`); without, it is refused.
    pub carry: bool,
    /// ztunnel's own HBONE over QUIC passes (UDP 15008 in; out only from its marked sockets).
    pub quic: bool,
}

impl Default for UdpAllowance {
    /// DNS only: pods must resolve names through the cluster DNS, which is outside the mesh.
    fn default() -> Self {
        Self {
            ports: vec![53],
            cidrs: Vec::new(),
            carry: false,
            quic: false,
        }
    }
}

/// How the rules tell ztunnel's own sockets (not redirected, not refused) from the pod's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnSockets {
    /// ztunnel's cgroup ([`crate::cgroup`]): a marked socket is ztunnel's only if opened from it.
    /// `None`: the mark alone, which a pod with `CAP_NET_RAW` can set (Linux 5.17 and later).
    pub cgroup: Option<String>,
    /// Also the mark alone: a predecessor handed pods over and may still open sockets in them,
    /// from its own cgroup ([`crate::handover`]).
    pub mark_only: bool,
}

impl OwnSockets {
    /// Whether a socket with ztunnel's mark passes from any cgroup.
    pub fn lets_mark_alone(&self) -> bool {
        self.mark_only || self.cgroup.is_none()
    }

    /// The matches that each let a socket of ztunnel's through (one rule per match).
    fn matches(&self) -> Vec<String> {
        let mark = format!("-m mark --mark {SOCKET_MARK:#x}/0xfff");
        let mut matches = Vec::new();
        if let Some(path) = &self.cgroup {
            matches.push(format!("{mark} -m cgroup --path {path}"));
        }
        if self.lets_mark_alone() {
            matches.push(mark);
        }
        matches
    }
}

/// The `iptables-restore --noflush` input that installs capture for `family`. Declaring veil's
/// chains empties them, so applying it again replaces them; `jumps` are the jumps still missing
/// (see [`missing_jumps`]). `probes`: the pod's own addresses, to which the node's probe source is
/// admitted in plaintext (none: not admitted).
pub fn rules(
    family: Family,
    udp: &UdpAllowance,
    own: &OwnSockets,
    probes: &[IpAddr],
    jumps: &[usize],
) -> String {
    let mut filter = format!("*filter\n:{FILTER_IN} - [0:0]\n:{FILTER_OUT} - [0:0]\n");
    filter.push_str(&filter_in(family, udp.quic));
    filter.push_str(&filter_out(family, udp, own));
    let mut nat = format!("*nat\n:{NAT_OUT} - [0:0]\n:{NAT_IN} - [0:0]\n");
    nat.push_str(&nat_rules(family, own, probes));
    for (table, line) in jump_lines(&JUMPS, jumps) {
        if table == "filter" {
            filter.push_str(&line);
        } else {
            nat.push_str(&line);
        }
    }
    // filter first: without it, nat alone would already capture (safe); the reverse order would
    // leave a moment with loop protection but no capture, equally safe, and filter-first keeps the
    // listeners guarded from the start.
    format!("{filter}COMMIT\n{nat}COMMIT\n")
}

fn filter_in(family: Family, quic: bool) -> String {
    let (icmp, out, plain) = (family.icmp(), OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT);
    // HBONE over QUIC: UDP 15008 only when the socket that would receive it is ztunnel's (its
    // mark): an application that bound the port first (before enrolment, or while a successor
    // waits for its predecessor's socket) receives nothing from outside. What ztunnel's endpoint
    // receives is mutual TLS or nothing. The receiving socket's cgroup cannot be matched here (it
    // is found by a lookup that gives its mark only), so an application that keeps CAP_NET_RAW,
    // marks a socket and binds the port before ztunnel does would receive the QUIC handshakes
    // meant for its own pod: a way around its own pod's protection, no other pod's.
    let quic = if quic {
        format!(
            "-A {FILTER_IN} -p udp --dport {HBONE_PORT} -m socket --nowildcard --restore-skmark -m mark --mark {SOCKET_MARK:#x}/0xfff -j RETURN\n"
        )
    } else {
        String::new()
    };
    // The capture listeners are only for redirected connections: reached directly (dialled as
    // 127.0.0.1:15001, or the pod's address on 15006) ztunnel would read itself as the original
    // destination. TCP resets give the caller a clear, immediate error.
    format!(
        "-A {FILTER_IN} -p tcp -m multiport --dports {out},{plain} -m conntrack ! --ctstate DNAT -j REJECT --reject-with tcp-reset
-A {FILTER_IN} -p tcp -j RETURN
-A {FILTER_IN} -i lo -j RETURN
-A {FILTER_IN} -m connmark --mark {UDP_MARK:#x}/0xfff -j DROP
{quic}-A {FILTER_IN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
-A {FILTER_IN} -p {icmp} -j RETURN
-A {FILTER_IN} -j DROP
"
    )
}

fn filter_out(family: Family, udp: &UdpAllowance, own: &OwnSockets) -> String {
    let (icmp, prohibited) = (family.icmp(), family.prohibited());
    let mut out = String::new();
    if family == Family::V6 {
        // IPv6 link-local is not redirected (see `nat_rules`): new TCP to a neighbour's link-local
        // address is refused here, with a reset, so it never leaves the pod in plaintext (replies
        // to connections into the pod, captured on 15006, are not new and pass).
        out.push_str(&format!(
            "-A {FILTER_OUT} ! -o lo -p tcp -d {LINK_LOCAL_V6} -m conntrack --ctstate NEW -j REJECT --reject-with tcp-reset\n"
        ));
    }
    // A flow ztunnel carried (connmark, set by the mangle table) answers only through ztunnel,
    // over `lo`: never by the wire, whether a datagram from outside claims to belong to it or the
    // application goes on sending after carrying was turned off (conntrack still knows the flow,
    // and its datagrams, no longer marked, would pass as ESTABLISHED). Always installed, so that
    // turning carrying off cannot open what it tracked.
    out.push_str(&format!(
        "-A {FILTER_OUT} -p tcp -j RETURN
-A {FILTER_OUT} -o lo -j RETURN
-A {FILTER_OUT} -m connmark --mark {UDP_MARK:#x}/0xfff -m mark ! --mark {UDP_MARK:#x}/0xfff -j REJECT --reject-with {prohibited}
-A {FILTER_OUT} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
-A {FILTER_OUT} -p {icmp} -j RETURN
"
    ));
    if udp.quic {
        // ztunnel's QUIC endpoint (its mark and cgroup), from or to 15008: the port is its own
        // both ways.
        for own in own.matches() {
            out.push_str(&format!(
                "-A {FILTER_OUT} -p udp {own} -m multiport --ports {HBONE_PORT} -j RETURN\n"
            ));
        }
    }
    out.push_str(&allowed_udp(FILTER_OUT, family, udp));
    if udp.carry {
        // Marked for ztunnel (mangle) and rerouted to `lo`, though this hook still sees the
        // device first chosen (`-o` is fixed before the mangle table runs). Nothing marked leaves
        // the pod: mangle's guard drops it on any other device.
        out.push_str(&format!(
            "-A {FILTER_OUT} -p udp -m mark --mark {UDP_MARK:#x}/0xfff -j RETURN\n"
        ));
    }
    // REJECT, not DROP: the application learns at once that the mesh does not carry it.
    out.push_str(&format!(
        "-A {FILTER_OUT} -j REJECT --reject-with {}\n",
        family.prohibited()
    ));
    out
}

/// The rules letting the allowed UDP destinations out of `chain`.
fn allowed_udp(chain: &str, family: Family, udp: &UdpAllowance) -> String {
    let mut out = String::new();
    for chunk in udp.ports.chunks(MULTIPORT_MAX) {
        let ports: Vec<String> = chunk.iter().map(u16::to_string).collect();
        out.push_str(&format!(
            "-A {chain} -p udp -m multiport --dports {} -j RETURN\n",
            ports.join(",")
        ));
    }
    for net in udp.cidrs.iter().filter(|n| family.holds(n)) {
        out.push_str(&format!("-A {chain} -p udp -d {net} -j RETURN\n"));
    }
    out
}

/// The `iptables-restore --noflush` input capturing outbound UDP for ztunnel to carry (see the
/// module's documentation); `jumps`: the indices in [`UDP_JUMPS`] still missing.
pub fn udp_rules(family: Family, udp: &UdpAllowance, own: &OwnSockets, jumps: &[usize]) -> String {
    let on_ip = match family {
        Family::V4 => "127.0.0.1",
        Family::V6 => "::1",
    };
    let mut mangle = format!(
        "*mangle
:{MANGLE_UDP_OUT} - [0:0]
:{MANGLE_UDP_IN} - [0:0]
:{MANGLE_UDP_GUARD} - [0:0]
"
    );
    for own in own.matches() {
        mangle.push_str(&format!("-A {MANGLE_UDP_OUT} {own} -j RETURN\n"));
    }
    mangle.push_str(&format!("-A {MANGLE_UDP_OUT} -o lo -j RETURN\n"));
    if family == Family::V6 {
        // A datagram to a neighbour's link-local address is bound to an interface and would not
        // take the local route: left to the filter table, which refuses it.
        mangle.push_str(&format!(
            "-A {MANGLE_UDP_OUT} -d {LINK_LOCAL_V6} -j RETURN\n"
        ));
    }
    mangle.push_str(&allowed_udp(MANGLE_UDP_OUT, family, udp));
    // The guard: a marked datagram whose socket is bound to another device (`SO_BINDTODEVICE`,
    // a scoped address) keeps that device whatever the routing rule says; it is dropped on its way
    // out instead of leaving in clear. The filter table lets marked datagrams pass, because it
    // still sees the device chosen before the mark.
    mangle.push_str(&format!(
        "-A {MANGLE_UDP_OUT} -p udp -j MARK --set-xmark {UDP_MARK:#x}/0xfff
-A {MANGLE_UDP_OUT} -p udp -j CONNMARK --set-xmark {UDP_MARK:#x}/0xfff
-A {MANGLE_UDP_IN} -p udp -m mark --mark {UDP_MARK:#x}/0xfff -j TPROXY --on-port {OUTBOUND_PORT} --on-ip {on_ip} --tproxy-mark {UDP_MARK:#x}/0xfff
-A {MANGLE_UDP_GUARD} -m mark --mark {UDP_MARK:#x}/0xfff ! -o lo -j DROP
"
    ));
    for (_, line) in jump_lines(&UDP_JUMPS, jumps) {
        mangle.push_str(&line);
    }
    format!("{mangle}COMMIT\n")
}

fn nat_rules(family: Family, own: &OwnSockets, probes: &[IpAddr]) -> String {
    let (loopback, hbone) = (family.loopback(), HBONE_PORT);
    // The kubelet's probes reach the application as they would without the mesh: plaintext from
    // the node itself, which the node marks with the probe source (see `crate::probes`), to the
    // pod's own addresses only (not its link-local ones, nor a secondary interface's, which may
    // not pass through the node's guard).
    let source = family.probe_source();
    let probe: String = family
        .hosts(probes)
        .iter()
        .map(|pod| format!("-A {NAT_IN} -p tcp -s {source} -d {pod} -j RETURN\n"))
        .collect();
    // A connection to a neighbour's IPv6 link-local address is bound to an interface: redirected
    // to `::1` it cannot be routed and hangs. It is left to the filter table, which resets it.
    let link_local = match family {
        Family::V4 => String::new(),
        Family::V6 => format!("-A {NAT_OUT} -d {LINK_LOCAL_V6} -j RETURN\n"),
    };
    let own: String = own
        .matches()
        .iter()
        .map(|own| format!("-A {NAT_OUT} {own} -j RETURN\n"))
        .collect();
    format!(
        "{own}-A {NAT_OUT} -d {loopback} -j RETURN
{link_local}-A {NAT_OUT} -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}
-A {NAT_IN} -p tcp --dport {hbone} -j RETURN
{probe}-A {NAT_IN} -p tcp -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}
"
    )
}

/// `ip` as a network of one address (`/32`, `/128`).
fn host_net(ip: IpAddr) -> String {
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    format!("{ip}/{bits}")
}

/// The rules adding the jumps of `all` at indices `missing`, each with its table.
pub(crate) fn jump_lines<'a>(
    all: &'a [(&'a str, &'a str, &'a str, &'a str)],
    missing: &'a [usize],
) -> impl Iterator<Item = (&'a str, String)> + 'a {
    missing.iter().map(|&i| {
        let (table, hook, matcher, chain) = all[i];
        (table, format!("-I {hook} 1 {matcher}-j {chain}\n"))
    })
}

/// The indices in [`JUMPS`] of the jumps absent from `save` (`iptables-save` output).
pub fn missing_jumps(save: &str) -> Vec<usize> {
    missing(save, &JUMPS)
}

/// The indices in `jumps` of those absent from `save`.
pub(crate) fn missing(save: &str, jumps: &[(&str, &str, &str, &str)]) -> Vec<usize> {
    let mut table = "";
    let mut present = vec![false; jumps.len()];
    for line in save.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.trim();
            continue;
        }
        for (i, (t, hook, matcher, chain)) in jumps.iter().enumerate() {
            if *t == table && line.trim() == format!("-A {hook} {matcher}-j {chain}") {
                present[i] = true;
            }
        }
    }
    (0..jumps.len()).filter(|&i| !present[i]).collect()
}

/// Why ztunnel will not connect a captured connection to its original destination: every case
/// would lead back into ztunnel (a loop) or out of the mesh's reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    /// One of ztunnel's own in-pod ports, on any address: connecting there reaches ztunnel again.
    #[error("port {0} is one of ztunnel's own ports")]
    ProxyPort(u16),
    /// Loopback: capture never redirects loopback, so such a connection reached the listener
    /// directly and "passing it through" would connect ztunnel to itself.
    #[error("loopback is never a captured destination")]
    Loopback,
    /// Unspecified, multicast or broadcast: not the address of any one peer.
    #[error("not a unicast address")]
    NotUnicast,
    /// IPv6 link-local: the original destination carries no interface, and no mesh identity can be
    /// told from it; passing it through would be plaintext to a neighbour.
    #[error("IPv6 link-local destinations are not carried")]
    LinkLocal,
}

/// Whether `dst` must be refused whatever the mesh says about it.
pub fn forbidden(dst: SocketAddr) -> Option<Forbidden> {
    if PROXY_PORTS.contains(&dst.port()) {
        return Some(Forbidden::ProxyPort(dst.port()));
    }
    match dst.ip().to_canonical() {
        ip if ip.is_loopback() => Some(Forbidden::Loopback),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() => {
            Some(Forbidden::NotUnicast)
        }
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() => Some(Forbidden::NotUnicast),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(Forbidden::LinkLocal),
        _ => None,
    }
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

/// Installs capture in the namespace at `netns` for `family`, replacing any earlier veil rules in
/// place (no moment without them when re-installing).
pub fn install(
    netns: &std::path::Path,
    family: Family,
    udp: &UdpAllowance,
    own: &OwnSockets,
    probes: &[IpAddr],
) -> Result<(), CaptureError> {
    let save = run_in(netns, family.save(), &[], None)?;
    let input = rules(family, udp, own, probes, &missing_jumps(&save));
    run_in(netns, family.restore(), &["--noflush"], Some(&input))?;
    if udp.carry {
        // The route first: a marked packet must take it from the moment it is marked.
        if let Err(e) = udp_route(netns, family) {
            // IPv6 turned off in the pod (no IPv6 route can be added): no IPv6 datagram leaves it
            // anyway, and should one be marked, the guard below drops it. Carrying fails closed.
            if family == Family::V4 {
                return Err(e);
            }
            tracing::info!(netns = %netns.display(), error = %e, "no IPv6 route for carried UDP: IPv6 UDP is dropped in this pod");
        }
        let input = udp_rules(family, udp, own, &missing(&save, &UDP_JUMPS));
        run_in(netns, family.restore(), &["--noflush"], Some(&input))?;
    } else if save.contains(MANGLE_UDP_OUT) {
        // Carried before (another setting, an earlier ztunnel): no longer.
        remove_udp(netns, family);
    }
    Ok(())
}

/// The local route (replaced) and the rule (added where missing) delivering marked UDP to ztunnel.
fn udp_route(netns: &std::path::Path, family: Family) -> Result<(), CaptureError> {
    let (flag, any) = match family {
        Family::V4 => ("-4", "0.0.0.0/0"),
        Family::V6 => ("-6", "::/0"),
    };
    let (mark, table) = (format!("{UDP_MARK:#x}/0xfff"), UDP_ROUTE_TABLE.to_string());
    run_in(
        netns,
        "ip",
        &[
            flag, "route", "replace", "local", any, "dev", "lo", "table", &table,
        ],
        None,
    )?;
    // Added only where missing: deleting and adding again would leave a moment without it.
    let rules = run_in(
        netns,
        "ip",
        &[flag, "rule", "show", "priority", &table],
        None,
    )?;
    if rules.contains(&format!("lookup {table}")) {
        return Ok(());
    }
    let add = [
        flag, "rule", "add", "fwmark", &mark, "lookup", &table, "priority", &table,
    ];
    run_in(netns, "ip", &add, None).map(drop)
}

/// Removes UDP capture (best effort: none there is no error): the jumps and chains, then the
/// routing rule and table.
fn remove_udp(netns: &std::path::Path, family: Family) {
    remove_chains(netns, family, &UDP_JUMPS);
    let flag = match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    };
    let (mark, table) = (format!("{UDP_MARK:#x}/0xfff"), UDP_ROUTE_TABLE.to_string());
    let rule = [
        flag, "rule", "del", "fwmark", &mark, "lookup", &table, "priority", &table,
    ];
    while run_in(netns, "ip", &rule, None).is_ok() {}
    let _ = run_in(
        netns,
        "ip",
        &[flag, "route", "flush", "table", &table],
        None,
    );
}

/// Deletes every jump of `jumps` and their chains (no error for what is not there).
fn remove_chains(netns: &std::path::Path, family: Family, jumps: &[(&str, &str, &str, &str)]) {
    for (table, hook, matcher, chain) in jumps {
        let mut args = vec!["-t", table, "-D", hook];
        args.extend(matcher.split_whitespace());
        args.extend(["-j", chain]);
        // Delete every jump (there should be one; a crash between two installs could leave two).
        while run_in(netns, family.tool(), &args, None).is_ok() {}
    }
    for (table, _, _, chain) in jumps {
        let _ = run_in(netns, family.tool(), &["-t", table, "-F", chain], None);
        let _ = run_in(netns, family.tool(), &["-t", table, "-X", chain], None);
    }
}

/// Removes veil's capture from the namespace at `netns` (no error if there is none): UDP capture
/// first (if any), then every jump and veil's chains, in both tables.
pub fn uninstall(netns: &std::path::Path, family: Family) -> Result<(), CaptureError> {
    remove_udp(netns, family);
    remove_chains(netns, family, &JUMPS);
    let left = run_in(netns, family.save(), &[], None)?;
    match left.lines().find(|l| l.contains("VEIL_")) {
        Some(line) => Err(CaptureError::Failed {
            tool: family.tool(),
            netns: netns.display().to_string(),
            stderr: format!("rule left behind after removal: {line}"),
        }),
        None => Ok(()),
    }
}

/// Whether capture is complete: every jump into veil's chains exists.
pub fn installed(netns: &std::path::Path, family: Family) -> bool {
    run_in(netns, family.save(), &[], None).is_ok_and(|save| missing_jumps(&save).is_empty())
}

/// Runs `tool args` inside the namespace at `netns`; its standard output.
pub(crate) fn run_in(
    netns: &std::path::Path,
    tool: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, CaptureError> {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .arg(tool)
        .args(args);
    run(command, tool, &netns.display().to_string(), stdin)
}

/// Runs `tool args` in ztunnel's own network namespace (the node's); its standard output.
pub(crate) fn run_here(
    tool: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, CaptureError> {
    let mut command = Command::new(tool);
    command.args(args);
    run(command, tool, "the node's namespace", stdin)
}

fn run(
    mut command: Command,
    tool: &'static str,
    netns: &str,
    stdin: Option<&str>,
) -> Result<String, CaptureError> {
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
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
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CaptureError::Failed {
            tool,
            netns: netns.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests;
