use super::*;

fn position(rules: &str, needle: &str) -> usize {
    rules
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no rule with {needle:?} in\n{rules}"))
}

fn all_jumps() -> Vec<usize> {
    (0..JUMPS.len()).collect()
}

/// The rules with the default UDP allowance, ztunnel's sockets told apart by their mark alone.
fn default_rules(family: Family, probes: &[IpAddr], jumps: &[usize]) -> String {
    rules(
        family,
        &UdpAllowance::default(),
        &OwnSockets::default(),
        probes,
        jumps,
    )
}

#[test]
fn rules_redirect_pod_traffic_except_loopback_hbone_and_ztunnel_itself() {
    let v4 = default_rules(Family::V4, &pod_ips(), &all_jumps());
    assert!(v4.starts_with("*filter\n") && v4.ends_with("COMMIT\n"));
    assert!(v4.contains("COMMIT\n*nat\n"), "{v4}");
    let pos = |needle| position(&v4, needle);
    // Exclusions come before the redirect in each chain.
    assert!(pos("--mark 0x539/0xfff -j RETURN") < pos("REDIRECT --to-ports 15001"));
    assert!(pos("-d 127.0.0.0/8 -j RETURN") < pos("REDIRECT --to-ports 15001"));
    assert!(pos("--dport 15008 -j RETURN") < pos("REDIRECT --to-ports 15006"));
    assert!(v4.contains("-I OUTPUT 1 -p tcp -j VEIL_OUTPUT"));
    assert!(v4.contains("-I PREROUTING 1 -p tcp -j VEIL_INBOUND"));
    let v6 = default_rules(Family::V6, &pod_ips(), &all_jumps());
    assert!(v6.contains("-d ::1/128 -j RETURN"));
    assert!(v6.contains("REDIRECT --to-ports 15001") && v6.contains("REDIRECT --to-ports 15006"));
    assert!(!v6.contains("127.0.0.0"));
}

#[test]
fn capture_listeners_take_only_redirected_connections() {
    for family in Family::ALL {
        let r = default_rules(family, &pod_ips(), &all_jumps());
        let guard = "-A VEIL_IN_FILTER -p tcp -m multiport --dports 15001,15006 -m conntrack ! --ctstate DNAT -j REJECT --reject-with tcp-reset";
        // First in the chain: nothing may let a direct connection to a listener through before it.
        assert_eq!(
            r.lines().find(|l| l.starts_with("-A VEIL_IN_FILTER")),
            Some(guard),
            "{r}"
        );
        assert!(r.contains("-I INPUT 1 -j VEIL_IN_FILTER"), "{r}");
    }
}

#[test]
fn inbound_drops_what_capture_does_not_handle_but_keeps_replies_icmp_and_loopback() {
    for (family, icmp) in [(Family::V4, "icmp"), (Family::V6, "ipv6-icmp")] {
        let r = default_rules(family, &pod_ips(), &all_jumps());
        let pos = |needle| position(&r, needle);
        let drop = pos("-A VEIL_IN_FILTER -j DROP");
        for allowed in [
            "-A VEIL_IN_FILTER -p tcp -j RETURN",
            "-A VEIL_IN_FILTER -i lo -j RETURN",
            "-A VEIL_IN_FILTER -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
            &format!("-A VEIL_IN_FILTER -p {icmp} -j RETURN"),
        ] {
            assert!(pos(allowed) < drop, "{allowed} after the drop in\n{r}");
        }
        // Nothing after the drop: it is the chain's last word.
        assert!(
            !r.lines()
                .skip(drop + 1)
                .any(|l| l.starts_with("-A VEIL_IN_FILTER")),
            "{r}"
        );
    }
}

#[test]
fn outbound_udp_is_refused_at_the_source_except_dns_by_default() {
    let r = default_rules(Family::V4, &pod_ips(), &all_jumps());
    let pos = |needle| position(&r, needle);
    let reject = pos("-A VEIL_OUT_FILTER -j REJECT --reject-with icmp-admin-prohibited");
    assert!(pos("-A VEIL_OUT_FILTER -p udp -m multiport --dports 53 -j RETURN") < reject);
    assert!(pos("-A VEIL_OUT_FILTER -p tcp -j RETURN") < reject);
    assert!(pos("-A VEIL_OUT_FILTER -p icmp -j RETURN") < reject);
    assert!(r.contains("-I OUTPUT 1 -j VEIL_OUT_FILTER"));
    let v6 = default_rules(Family::V6, &pod_ips(), &all_jumps());
    assert!(v6.contains("-A VEIL_OUT_FILTER -j REJECT --reject-with icmp6-adm-prohibited"));
    // Nothing allowed: only the final refusal mentions UDP-less traffic.
    let none = UdpAllowance {
        ports: vec![],
        cidrs: vec![],
        carry: false,
        quic: false,
    };
    assert!(!rules(Family::V4, &none, &OwnSockets::default(), &pod_ips(), &[]).contains("-p udp"));
}

#[test]
fn allowed_udp_ports_and_cidrs_go_to_their_family_and_long_port_lists_are_split() {
    let udp = UdpAllowance {
        ports: (1000..1020).collect(),
        cidrs: vec!["10.96.0.0/12".parse().unwrap(), "fd00::/8".parse().unwrap()],
        carry: false,
        quic: false,
    };
    let v4 = rules(Family::V4, &udp, &OwnSockets::default(), &pod_ips(), &[]);
    assert!(v4.contains("-A VEIL_OUT_FILTER -p udp -d 10.96.0.0/12 -j RETURN"));
    assert!(!v4.contains("fd00::/8"));
    let v6 = rules(Family::V6, &udp, &OwnSockets::default(), &pod_ips(), &[]);
    assert!(v6.contains("-A VEIL_OUT_FILTER -p udp -d fd00::/8 -j RETURN"));
    assert!(!v6.contains("10.96.0.0/12"));
    let multiport: Vec<&str> = v4
        .lines()
        .filter(|l| l.contains("multiport --dports 10"))
        .collect();
    assert_eq!(multiport.len(), 2, "{v4}");
    assert!(
        multiport
            .iter()
            .all(|l| l.split(',').count() <= MULTIPORT_MAX)
    );
}

#[test]
fn carried_udp_is_marked_for_tproxy_except_what_is_allowed_local_or_ztunnels_own() {
    let udp = UdpAllowance {
        ports: vec![53],
        cidrs: vec!["10.96.0.10/32".parse().unwrap()],
        carry: true,
        quic: false,
    };
    for (family, on_ip) in [(Family::V4, "127.0.0.1"), (Family::V6, "::1")] {
        let r = udp_rules(family, &udp, &OwnSockets::default(), &[0, 1, 2]);
        let mark = position(&r, "-j MARK --set-xmark 0x53a/0xfff");
        // Every exception comes before the mark.
        for exception in [
            "-A VEIL_UDP_OUT -m mark --mark 0x539/0xfff -j RETURN",
            "-A VEIL_UDP_OUT -o lo -j RETURN",
            "-A VEIL_UDP_OUT -p udp -m multiport --dports 53 -j RETURN",
        ] {
            assert!(
                position(&r, exception) < mark,
                "{family:?}: {exception}\n{r}"
            );
        }
        assert_eq!(
            r.contains("-A VEIL_UDP_OUT -p udp -d 10.96.0.10/32 -j RETURN"),
            family == Family::V4
        );
        assert!(r.contains(&format!(
            "-A VEIL_UDP_IN -p udp -m mark --mark 0x53a/0xfff -j TPROXY --on-port 15001 --on-ip {on_ip} --tproxy-mark 0x53a/0xfff"
        )));
        assert!(r.contains("-A VEIL_UDP_GUARD -m mark --mark 0x53a/0xfff ! -o lo -j DROP"));
        assert!(
            position(&r, "-j CONNMARK --set-xmark 0x53a/0xfff") > mark,
            "the flow is remembered as carried"
        );
        assert!(r.contains("-I POSTROUTING 1 -p udp -j VEIL_UDP_GUARD"));
        assert_eq!(
            r.contains("-A VEIL_UDP_OUT -d fe80::/10 -j RETURN"),
            family == Family::V6
        );
        assert!(r.contains("-I OUTPUT 1 -p udp -j VEIL_UDP_OUT"));
        assert!(r.contains("-I PREROUTING 1 -p udp -j VEIL_UDP_IN"));
        assert!(r.starts_with("*mangle\n") && r.ends_with("COMMIT\n"));
        // Re-installing adds no second jump.
        assert!(!udp_rules(family, &udp, &OwnSockets::default(), &[]).contains("-I "));
        // The filter table lets marked packets (routed to `lo`) through, and only when carrying.
        let plain = UdpAllowance {
            carry: false,
            ..udp.clone()
        };
        let filter = rules(family, &udp, &OwnSockets::default(), &pod_ips(), &[]);
        let marked = "-A VEIL_OUT_FILTER -p udp -m mark --mark 0x53a/0xfff -j RETURN";
        assert!(position(&filter, marked) < position(&filter, "-A VEIL_OUT_FILTER -j REJECT"));
        assert!(!rules(family, &plain, &OwnSockets::default(), &pod_ips(), &[]).contains(marked));
        // Carried or not, a flow ztunnel carried (connmark) never answers or goes on by the wire.
        for r in [
            &filter,
            &rules(family, &plain, &OwnSockets::default(), &pod_ips(), &[]),
        ] {
            let established = "-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN";
            let inbound = "-A VEIL_IN_FILTER -m connmark --mark 0x53a/0xfff -j DROP";
            assert!(position(r, "-A VEIL_IN_FILTER -i lo -j RETURN") < position(r, inbound));
            assert!(position(r, inbound) < position(r, &format!("VEIL_IN_FILTER {established}")));
            let outbound = "-A VEIL_OUT_FILTER -m connmark --mark 0x53a/0xfff -m mark ! --mark 0x53a/0xfff -j REJECT";
            assert!(position(r, "-A VEIL_OUT_FILTER -o lo -j RETURN") < position(r, outbound));
            assert!(position(r, outbound) < position(r, &format!("VEIL_OUT_FILTER {established}")));
        }
    }
}

#[test]
fn reinstalling_adds_only_the_missing_jumps() {
    let save = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j VEIL_IN_FILTER\n-A OUTPUT -j KUBE\nCOMMIT\n*nat\n-A OUTPUT -p tcp -j VEIL_OUTPUT\n-A PREROUTING -p tcp -j VEIL_INBOUND\nCOMMIT\n";
    let missing = missing_jumps(save);
    assert_eq!(missing.len(), 1);
    assert_eq!(JUMPS[missing[0]].3, FILTER_OUT);
    let r = default_rules(Family::V4, &pod_ips(), &missing);
    assert_eq!(r.matches("-I ").count(), 1, "{r}");
    assert!(missing_jumps("").len() == JUMPS.len());
    // A jump of the same name in the other table does not count.
    assert_eq!(
        missing_jumps("*nat\n-A INPUT -j VEIL_IN_FILTER\n").len(),
        JUMPS.len()
    );
}

#[test]
fn ztunnel_never_connects_to_its_own_ports_loopback_or_link_local() {
    let f = |s: &str| forbidden(s.parse().unwrap());
    for port in PROXY_PORTS {
        assert_eq!(
            f(&format!("10.0.0.5:{port}")),
            Some(Forbidden::ProxyPort(port))
        );
    }
    assert_eq!(f("127.0.0.1:8080"), Some(Forbidden::Loopback));
    assert_eq!(f("127.1.2.3:80"), Some(Forbidden::Loopback));
    assert_eq!(f("[::1]:8080"), Some(Forbidden::Loopback));
    assert_eq!(f("[::ffff:127.0.0.1]:8080"), Some(Forbidden::Loopback));
    assert_eq!(f("0.0.0.0:80"), Some(Forbidden::NotUnicast));
    assert_eq!(f("[::]:80"), Some(Forbidden::NotUnicast));
    assert_eq!(f("224.0.0.1:80"), Some(Forbidden::NotUnicast));
    assert_eq!(f("255.255.255.255:80"), Some(Forbidden::NotUnicast));
    assert_eq!(f("[fe80::1]:80"), Some(Forbidden::LinkLocal));
    assert_eq!(f("10.0.0.5:8080"), None);
    assert_eq!(f("[fd00::5]:8080"), None);
    // Cloud metadata (IPv4 link-local) is an ordinary destination.
    assert_eq!(f("169.254.169.254:80"), None);
}

#[test]
fn ipv6_link_local_tcp_out_is_reset_not_redirected_into_a_dead_end() {
    let v6 = default_rules(Family::V6, &pod_ips(), &all_jumps());
    let pos = |needle| position(&v6, needle);
    assert!(pos("-A VEIL_OUTPUT -d fe80::/10 -j RETURN") < pos("REDIRECT --to-ports 15001"));
    let reset = pos(
        "-A VEIL_OUT_FILTER ! -o lo -p tcp -d fe80::/10 -m conntrack --ctstate NEW -j REJECT --reject-with tcp-reset",
    );
    assert!(reset < pos("-A VEIL_OUT_FILTER -p tcp -j RETURN"));
    assert!(!default_rules(Family::V4, &pod_ips(), &[]).contains("fe80"));
}

#[test]
fn the_nodes_probe_source_goes_to_the_application_only_when_probes_are_admitted() {
    for (family, source, pod) in [
        (Family::V4, "169.254.7.127/32", "10.1.0.5/32"),
        (
            Family::V6,
            "fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128",
            "fd00::5/128",
        ),
    ] {
        let r = default_rules(family, &pod_ips(), &[]);
        // Only to the pod's own address of the family: not link-local, not another interface's.
        let probe = format!("-A VEIL_INBOUND -p tcp -s {source} -d {pod} -j RETURN");
        let at = r.find(&probe).unwrap_or_else(|| panic!("{r}"));
        let redirect = r.find("-A VEIL_INBOUND -p tcp -j REDIRECT").unwrap();
        assert!(
            at < redirect,
            "the exemption must come before the redirect:\n{r}"
        );
        assert_eq!(
            r.matches(source).count(),
            1,
            "nothing else names the probe source"
        );
        let off = default_rules(family, &[], &[]);
        assert!(!off.contains(source), "{off}");
    }
    // A pod with no IPv6 address of its own (link-local only) admits no IPv6 probe at all.
    let v4_only: Vec<std::net::IpAddr> = vec!["10.1.0.5".parse().unwrap()];
    let v6 = default_rules(Family::V6, &v4_only, &[]);
    assert!(!v6.contains("fd16:9254"), "{v6}");
}

/// A pod's own addresses, one of each family.
fn pod_ips() -> Vec<std::net::IpAddr> {
    vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()]
}

#[test]
fn hbone_over_quic_lets_udp_15008_in_and_only_ztunnels_marked_sockets_out() {
    let quic = UdpAllowance {
        quic: true,
        ..UdpAllowance::default()
    };
    for family in Family::ALL {
        let r = rules(
            family,
            &quic,
            &OwnSockets::default(),
            &pod_ips(),
            &all_jumps(),
        );
        // Only into ztunnel's own socket (the receiving socket's mark, restored onto the packet).
        let inbound = position(
            &r,
            "-A VEIL_IN_FILTER -p udp --dport 15008 -m socket --nowildcard --restore-skmark -m mark --mark 0x539/0xfff -j RETURN",
        );
        // After the guard of carried flows, before the final drop.
        assert!(
            position(
                &r,
                "-A VEIL_IN_FILTER -m connmark --mark 0x53a/0xfff -j DROP"
            ) < inbound
        );
        assert!(inbound < position(&r, "-A VEIL_IN_FILTER -j DROP"), "{r}");
        // Out: marked (ztunnel's own socket, which no application can mark) and on 15008 only.
        let outbound = position(
            &r,
            "-A VEIL_OUT_FILTER -p udp -m mark --mark 0x539/0xfff -m multiport --ports 15008 -j RETURN",
        );
        assert!(
            outbound < position(&r, "-A VEIL_OUT_FILTER -j REJECT"),
            "{r}"
        );
        assert_eq!(r.matches("-p udp --dport 15008").count(), 1, "{r}");
        assert_eq!(r.matches("--ports 15008").count(), 1, "{r}");
        // Without QUIC, neither.
        let plain = default_rules(family, &pod_ips(), &all_jumps());
        assert!(!plain.contains("-p udp --dport 15008"), "{plain}");
        assert!(!plain.contains("--ports 15008"), "{plain}");
    }
}

#[test]
fn ztunnels_own_sockets_are_told_apart_by_mark_and_cgroup() {
    let udp = UdpAllowance {
        carry: true,
        quic: true,
        ..UdpAllowance::default()
    };
    let own = OwnSockets {
        cgroup: Some("/kubepods.slice/ztunnel.scope".into()),
        mark_only: false,
    };
    let both = "-m mark --mark 0x539/0xfff -m cgroup --path /kubepods.slice/ztunnel.scope";
    for family in Family::ALL {
        let r = rules(family, &udp, &own, &pod_ips(), &all_jumps());
        let u = udp_rules(family, &udp, &own, &[]);
        // Every exemption of a marked socket also names the cgroup: not redirected, not refused
        // (QUIC out), not carried.
        for (text, exempt) in [
            (&r, format!("-A VEIL_OUTPUT {both} -j RETURN")),
            (
                &r,
                format!("-A VEIL_OUT_FILTER -p udp {both} -m multiport --ports 15008 -j RETURN"),
            ),
            (&u, format!("-A VEIL_UDP_OUT {both} -j RETURN")),
        ] {
            position(text, &exempt);
        }
        assert!(
            position(&r, both) < position(&r, "REDIRECT --to-ports 15001"),
            "{r}"
        );
        // No exemption by the mark alone on the way out (the way in, `-m socket`, cannot see a
        // cgroup and keeps the mark).
        for text in [&r, &u] {
            for line in text.lines().filter(|l| l.contains("--mark 0x539/0xfff")) {
                assert!(
                    line.contains("-m cgroup") || line.contains("--restore-skmark"),
                    "{line}"
                );
            }
        }
        // While a predecessor may still open sockets: its (the mark alone) as well, after ours.
        let handing = OwnSockets {
            mark_only: true,
            ..own.clone()
        };
        let r = rules(family, &udp, &handing, &pod_ips(), &all_jumps());
        assert!(
            position(&r, both)
                < position(&r, "-A VEIL_OUTPUT -m mark --mark 0x539/0xfff -j RETURN"),
            "{r}"
        );
        // Without a cgroup that tells ztunnel apart: the mark alone, as before.
        let r = rules(
            family,
            &udp,
            &OwnSockets::default(),
            &pod_ips(),
            &all_jumps(),
        );
        assert!(!r.contains("-m cgroup"), "{r}");
        position(&r, "-A VEIL_OUTPUT -m mark --mark 0x539/0xfff -j RETURN");
    }
}
