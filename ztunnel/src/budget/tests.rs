use super::*;

fn small() -> Limits {
    Limits {
        node: [3; 6],
        pod: [2; 6],
        pipes: 0,
        pipe_capacity: 0,
    }
}

#[test]
fn a_pod_is_held_to_its_share_and_the_node_to_its_total() {
    let metrics = Metrics::new();
    let budgets = Budgets::new(small(), &metrics);
    let (a, b) = (PodBudget::default(), PodBudget::default());
    let r = Resource::OutboundConnections;
    let a1 = budgets.acquire(&a, r).unwrap();
    let _a2 = budgets.acquire(&a, r).unwrap();
    assert_eq!(
        budgets.acquire(&a, r).unwrap_err(),
        Refused::Pod {
            resource: r,
            limit: 2
        }
    );
    let _b1 = budgets.acquire(&b, r).unwrap();
    assert_eq!(
        budgets.acquire(&b, r).unwrap_err(),
        Refused::Node {
            resource: r,
            limit: 3
        }
    );
    // Other resources have their own budgets.
    let _h = budgets.acquire(&b, Resource::HboneConnections).unwrap();
    // What is given back can be taken again, by anyone.
    drop(a1);
    let _b2 = budgets.acquire(&b, r).unwrap();
    assert!(
        metrics
            .encode(None)
            .contains("veil_resource_in_use{resource=\"outbound_connections\"} 3")
    );
}

#[test]
fn a_refusal_by_the_node_gives_the_pods_unit_back() {
    let metrics = Metrics::new();
    let budgets = Budgets::new(small(), &metrics);
    let pods: Vec<PodBudget> = (0..3).map(|_| PodBudget::default()).collect();
    let r = Resource::PlaintextConnections;
    let _held: Vec<Permit> = pods
        .iter()
        .map(|p| budgets.acquire(p, r).unwrap())
        .collect();
    let late = PodBudget::default();
    for _ in 0..10 {
        assert!(matches!(
            budgets.acquire(&late, r),
            Err(Refused::Node { .. })
        ));
    }
    assert_eq!(late.in_use[r.index()].load(Ordering::Acquire), 0);
}

#[test]
fn defaults_fit_the_descriptor_limit_they_are_derived_from() {
    for nofile in [1024, 4096, 20_000, 65_536, 1 << 20] {
        let limits = Limits::for_nofile(nofile);
        assert!(limits.fit(nofile), "{nofile}: {limits:?}");
        for r in Resource::ALL {
            assert!(limits.pod[r.index()] <= limits.node[r.index()]);
            assert!(limits.pod[r.index()] >= 1);
        }
        assert!(
            limits.pipes >= 1 && limits.pipes <= MOST_PIPES,
            "{limits:?}"
        );
    }
    // The pipes are part of what must fit.
    let mut limits = Limits::for_nofile(4096);
    let spare = 4096 - reserve(4096) - limits.descriptors();
    limits.pipes += spare / 2 + 1;
    assert!(!limits.fit(4096), "{limits:?}");
    assert!(!Limits::for_nofile(1 << 20).fit(1024));
}
