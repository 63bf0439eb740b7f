//! Certificates: ztunnel's metrics as its own encoder writes them, and the mesh root.

use std::time::{Duration, SystemTime};

use veil_mesh::identity::Identity;
use veil_mesh::telemetry::metrics::{CertLabels, Metrics, Principal};

use super::super::Outcome;
use super::super::certificates::{
    Held, Read, default_threshold, held_certificates, judge_root, judge_workloads, sample,
};
use super::super::ztunnel::Running;
use super::HOUR;
use super::objects::root_pem;

/// ztunnel's metrics as its own encoder writes them, with certificates expiring at `expiries`.
fn ztunnel_metrics(expiries: &[(&str, i64)]) -> String {
    let m = Metrics::new();
    for (sa, at) in expiries {
        let id = Identity::new("cluster.local", "shop", sa).unwrap();
        m.certificate_expiry
            .get_or_create(&CertLabels {
                identity: Principal(Some(id)),
            })
            .set(*at);
    }
    m.encode(None)
}

#[test]
fn certificates_are_read_from_ztunnels_own_metrics() {
    let text = ztunnel_metrics(&[("web", 1_800_000_000), ("db", 1_800_003_600)]);
    let mut held = held_certificates(&text).unwrap();
    held.sort_by(|a, b| a.identity.cmp(&b.identity));
    assert_eq!(held.len(), 2, "{text}");
    assert_eq!(held[0].identity, "spiffe://cluster.local/ns/shop/sa/db");
    assert_eq!(
        held[0].expiry,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_003_600)
    );

    // No certificate (no enrolled pod on the node) is an answer; no such metric at all is not.
    assert_eq!(held_certificates(&ztunnel_metrics(&[])).unwrap(), []);
    let other = "# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total 3\n# EOF\n";
    assert!(
        held_certificates(other)
            .unwrap_err()
            .contains("not a veil ztunnel")
    );
    let garbled = "veil_certificate_expiry_seconds{identity=\"spiffe://x/ns/a/sa/b\"} soon\n";
    assert!(
        held_certificates(garbled)
            .unwrap_err()
            .contains("unreadable sample")
    );
    let unlabelled = "veil_certificate_expiry_seconds 1800000000\n";
    assert!(
        held_certificates(unlabelled)
            .unwrap_err()
            .contains("without an identity")
    );
    // A longer name that starts with this one is another metric.
    let longer = "veil_certificate_expiry_seconds_total{identity=\"x\"} nope\n";
    assert_eq!(held_certificates(longer).unwrap(), []);
}

#[test]
fn samples_are_parsed_with_escapes_timestamps_and_without_labels() {
    let s = sample(r#"{a="x\"y\\z\n",b="",} 17 1700000000000"#).unwrap();
    assert_eq!(
        s.labels,
        [
            ("a".to_owned(), "x\"y\\z\n".to_owned()),
            ("b".into(), String::new())
        ]
    );
    assert_eq!(s.value, 17.0);
    assert_eq!(sample(" 2.5").unwrap().value, 2.5);
    for bad in [
        r#"{a="x} 1"#,
        r#"{a=x} 1"#,
        "{a=\"x\"}",
        " ",
        "{",
        r#"{a="x"} NaNish"#,
    ] {
        assert!(sample(bad).is_none(), "{bad}");
    }
}

fn at(now: SystemTime, secs: i64) -> SystemTime {
    if secs >= 0 {
        now + Duration::from_secs(secs.unsigned_abs())
    } else {
        now - Duration::from_secs(secs.unsigned_abs())
    }
}

fn read(node: &str, held: Result<Vec<(&str, SystemTime)>, &str>) -> Read {
    (
        Running {
            pod: format!("ztunnel-{node}"),
            node: node.to_owned(),
        },
        held.map(|h| {
            h.into_iter()
                .map(|(id, expiry)| Held {
                    identity: id.to_owned(),
                    expiry,
                })
                .collect()
        })
        .map_err(str::to_owned),
    )
}

#[test]
fn workload_certificates_fail_when_expired_and_warn_when_renewal_is_overdue() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let threshold = default_threshold(24 * HOUR);
    let healthy = [
        read(
            "node-a",
            Ok(vec![(
                "spiffe://cluster.local/ns/shop/sa/web",
                at(now, 20 * 3600),
            )]),
        ),
        read("node-b", Ok(vec![])),
    ];
    let ok = judge_workloads(&healthy, threshold, now);
    assert_eq!(ok.result, Outcome::Ok, "{ok:?}");
    assert!(
        ok.message
            .starts_with("1 certificates valid on 2 ztunnels; the soonest expires in 20h 0m"),
        "{}",
        ok.message
    );

    let late = [read(
        "node-a",
        Ok(vec![(
            "spiffe://cluster.local/ns/shop/sa/web",
            at(now, 3 * 3600),
        )]),
    )];
    let late = judge_workloads(&late, threshold, now);
    assert_eq!(late.result, Outcome::Warning);
    assert_eq!(
        late.details,
        ["node-a: spiffe://cluster.local/ns/shop/sa/web expires in 3h 0m"]
    );

    let gone = [
        read(
            "node-a",
            Ok(vec![(
                "spiffe://cluster.local/ns/shop/sa/web",
                at(now, -90),
            )]),
        ),
        read("node-b", Err("HTTP 403: pods \"ztunnel-b\" is forbidden")),
    ];
    let gone = judge_workloads(&gone, threshold, now);
    assert_eq!(gone.result, Outcome::Failed);
    assert!(
        gone.message.contains("1 of 1 certificates expired"),
        "{}",
        gone.message
    );
    assert_eq!(
        gone.details[0],
        "node-a: spiffe://cluster.local/ns/shop/sa/web expired 1m 30s ago"
    );
    assert!(
        gone.details[1].contains("node-b (ztunnel-node-b): metrics could not be read: HTTP 403")
    );

    let unasked = judge_workloads(
        &[read("node-b", Err("no answer within 10s"))],
        threshold,
        now,
    );
    assert_eq!(
        unasked.result,
        Outcome::Warning,
        "what cannot be read is never ok"
    );
    assert!(unasked.hint.unwrap().contains("pods/proxy"));
    assert_eq!(
        judge_workloads(&[], threshold, now).result,
        Outcome::Warning
    );
}

#[test]
fn the_root_is_judged_by_its_validity_and_what_is_left() {
    let now = SystemTime::now();
    let day = 24 * HOUR;
    let ok = judge_root(&root_pem(-1, 3650), 30 * day, now);
    assert_eq!(ok.result, Outcome::Ok, "{ok:?}");
    assert!(
        ok.message
            .starts_with("1 valid root, CN=veil test root, expires in 3649d"),
        "{}",
        ok.message
    );

    let soon = judge_root(&root_pem(-300, 10), 30 * day, now);
    assert_eq!(soon.result, Outcome::Warning);
    assert!(
        soon.message.contains("(warning below 30d 0h)"),
        "{}",
        soon.message
    );

    let expired = judge_root(&root_pem(-400, -1), 30 * day, now);
    assert_eq!(expired.result, Outcome::Failed);
    assert!(
        expired.details[0].contains("expired 1d"),
        "{:?}",
        expired.details
    );

    // Rotation: a new root beside an expired old one still verifies, but the old one should go.
    let both = root_pem(-400, -1) + &root_pem(-1, 3650);
    let both = judge_root(&both, 30 * day, now);
    assert_eq!(both.result, Outcome::Warning, "{both:?}");

    let future = judge_root(&root_pem(2, 3650), 30 * day, now);
    assert_eq!(future.result, Outcome::Failed);
    assert!(future.details[0].contains("not valid before"));

    for garbage in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
    ] {
        let check = judge_root(garbage, 30 * day, now);
        assert_eq!(check.result, Outcome::Failed, "{garbage:?}: {check:?}");
    }
}
