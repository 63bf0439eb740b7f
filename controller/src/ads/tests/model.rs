//! A model client against one stream: random snapshots, acknowledgements and refusals of parts,
//! stale nonces, subscription changes and reconnects (Authorizations first, as veil's subscriber
//! resumes, or Addresses first), checking after every response that no held workload names a
//! policy the client does not hold (make before break, over everything held), and at the end that
//! the client holds exactly the newest snapshot and nothing more is due. (Written by an
//! independent review, which found with it that a stream resumed Authorizations first released
//! policy removals before the client's Addresses were updated.)

use std::collections::VecDeque;

use super::*;

#[derive(Default, Clone)]
struct Model {
    /// name -> (version, body), per type.
    held: HashMap<Kind, HashMap<String, (String, Vec<u8>)>>,
    /// Address subscription.
    wildcard: bool,
    names: std::collections::BTreeSet<String>,
}

fn named_policies(body: &[u8]) -> Vec<String> {
    let address = veil_mesh::xds::proto::istio::workload::Address::decode(body).unwrap();
    match address.r#type {
        Some(veil_mesh::xds::proto::istio::workload::address::Type::Workload(w)) => {
            w.authorization_policies
        }
        _ => vec![],
    }
}

impl Model {
    fn new() -> Self {
        Self {
            wildcard: true,
            ..Default::default()
        }
    }
    fn wants(&self, kind: Kind, name: &str) -> bool {
        kind == Kind::Authorization || self.wildcard || self.names.contains(name)
    }
    fn apply(&mut self, kind: Kind, response: &DeltaDiscoveryResponse) {
        let wanted: Vec<_> = response
            .resources
            .iter()
            .filter(|r| self.wants(kind, &r.name))
            .cloned()
            .collect();
        let held = self.held.entry(kind).or_default();
        for name in &response.removed_resources {
            held.remove(name);
        }
        for r in wanted {
            held.insert(
                r.name.clone(),
                (r.version.clone(), r.resource.unwrap().value),
            );
        }
    }
    /// Make before break: every policy a held workload names is held.
    fn violations(&self) -> Vec<String> {
        let policies = self
            .held
            .get(&Kind::Authorization)
            .cloned()
            .unwrap_or_default();
        let mut out = vec![];
        for (name, (_, body)) in self.held.get(&Kind::Address).into_iter().flatten() {
            for p in named_policies(body) {
                if !policies.contains_key(&p) {
                    out.push(format!("{name} names {p}, not held"));
                }
            }
        }
        out
    }
    fn versions(&self, kind: Kind) -> HashMap<String, String> {
        self.held
            .get(&kind)
            .into_iter()
            .flatten()
            .map(|(n, (v, _))| (n.clone(), v.clone()))
            .collect()
    }
    fn expected(&self, hub: &Hub, kind: Kind) -> HashMap<String, String> {
        let mut s = snapshot_of(hub, kind);
        s.retain(|n, _| self.wants(kind, n));
        s
    }
}

fn split_req(kind: Kind, split: bool) -> DeltaDiscoveryRequest {
    if split {
        split_request(kind)
    } else {
        request(kind)
    }
}

/// Opens a stream the way veil's subscriber does: Authorization, then Address, each with the
/// versions held, the controller computing what is due after each request (as `drive` does).
fn reconnect(
    hub: &Arc<Hub>,
    model: &Model,
    budget: usize,
    split: bool,
    address_first: bool,
    inflight: &mut VecDeque<DeltaDiscoveryResponse>,
) -> Stream {
    let order = if address_first {
        [Kind::Address, Kind::Authorization]
    } else {
        [Kind::Authorization, Kind::Address]
    };
    // The real wait for the other type's subscription (veil's subscriber sends both at once).
    let mut stream = Stream::new(hub.clone())
        .with_authorization_grace(std::time::Duration::from_secs(3600))
        .with_response_budget(budget);
    for kind in order {
        let mut req = DeltaDiscoveryRequest {
            initial_resource_versions: model.versions(kind),
            ..split_req(kind, split)
        };
        if kind == Kind::Address && !(model.wildcard && model.names.is_empty()) {
            if model.wildcard {
                req.resource_names_subscribe.push("*".into());
            }
            req.resource_names_subscribe
                .extend(model.names.iter().cloned());
            if !model.wildcard && model.names.is_empty() {
                // Nothing by wildcard, nothing by name (Istio's on-demand opener).
                req.resource_names_subscribe.push("*".into());
                req.resource_names_unsubscribe.push("*".into());
            }
        }
        stream.on_request(req).unwrap();
        inflight.extend(stream.due());
    }
    stream
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random rounds of: snapshots, deliveries with ACK or NACK, stale nonces, Address subscription
/// changes, reconnects; then quiescence. Returns the problems found.
fn fuzz(seed: u64, budget: usize, split: bool, ops: u64) -> Result<(), String> {
    // Streams opened both ways: veil's subscriber asks for Authorizations first, Istio's ztunnel
    // for Addresses.
    let address_first = seed.is_multiple_of(2);
    let mut rng = Lcg(seed);
    let hub = Hub::new(grouped(0, 12, [true, true, true]));
    let mut model = Model::new();
    let mut inflight = VecDeque::new();
    let mut stream = reconnect(&hub, &model, budget, split, address_first, &mut inflight);
    let mut nonces: Vec<String> = vec![];
    let mut log: Vec<String> = vec![];
    let deliver = |stream: &mut Stream,
                   model: &mut Model,
                   inflight: &mut VecDeque<DeltaDiscoveryResponse>,
                   nonces: &mut Vec<String>,
                   log: &mut Vec<String>,
                   nack: bool|
     -> Result<(), String> {
        let Some(response) = inflight.pop_front() else {
            return Ok(());
        };
        let kind = Kind::from_type_url(&response.type_url).unwrap();
        if !split && veil_mesh::xds::is_partial(&response) {
            return Err(format!("non-split client got a part: {response:?}"));
        }
        model.apply(kind, &response);
        log.push(format!(
            "{kind:?} v{} +{:?} -{:?}",
            response.system_version_info,
            names(&response),
            response.removed_resources
        ));
        let v = model.violations();
        if !v.is_empty() {
            return Err(format!("make-before-break: {v:?}\nlog: {:#?}", log));
        }
        nonces.push(response.nonce.clone());
        let mut a = ack(kind, &response);
        a.node = split_req(kind, split).node;
        if nack {
            a.error_detail = Some(RpcStatus {
                code: 3,
                message: "refused".into(),
                details: vec![],
            });
        }
        stream.on_request(a).unwrap();
        inflight.extend(stream.due());
        Ok(())
    };
    for round in 0..ops {
        match rng.below(12) {
            0 | 1 => {
                let bits = rng.next();
                let r = if bits.is_multiple_of(13) {
                    Resources::default()
                } else {
                    grouped(
                        round + 1,
                        3 + (bits % 15) as usize,
                        [bits & 16 == 0, bits & 32 == 0, bits & 64 == 0],
                    )
                };
                hub.publish(r);
                log.push(format!("publish {}", hub.current().seq));
                inflight.extend(stream.due());
            }
            // Deliveries, one in six refused.
            n @ 2..=7 => deliver(
                &mut stream,
                &mut model,
                &mut inflight,
                &mut nonces,
                &mut log,
                n == 7,
            )?,
            8 if !nonces.is_empty() => {
                // A stale (duplicate) acknowledgement.
                let nonce = nonces[rng.below(nonces.len() as u64) as usize].clone();
                let kind = if rng.below(2) == 0 {
                    Kind::Address
                } else {
                    Kind::Authorization
                };
                stream
                    .on_request(DeltaDiscoveryRequest {
                        response_nonce: nonce,
                        ..split_req(kind, split)
                    })
                    .unwrap();
                inflight.extend(stream.due());
            }
            9 => {
                // Address subscription changes.
                let name = pod(&format!("p{:03}", rng.below(16)));
                let mut req = split_req(Kind::Address, split);
                match rng.below(4) {
                    0 => {
                        model.names.insert(name.clone());
                        req.resource_names_subscribe.push(name);
                    }
                    1 => {
                        model.names.remove(&name);
                        if !model.wildcard {
                            model.held.entry(Kind::Address).or_default().remove(&name);
                        }
                        req.resource_names_unsubscribe.push(name);
                    }
                    2 => {
                        model.wildcard = true;
                        req.resource_names_subscribe.push("*".into());
                    }
                    _ => {
                        model.wildcard = false;
                        let names = model.names.clone();
                        model
                            .held
                            .entry(Kind::Address)
                            .or_default()
                            .retain(|n, _| names.contains(n));
                        req.resource_names_unsubscribe.push("*".into());
                    }
                }
                log.push(format!(
                    "subscription +{:?} -{:?}",
                    req.resource_names_subscribe, req.resource_names_unsubscribe
                ));
                stream.on_request(req).unwrap();
                inflight.extend(stream.due());
            }
            10 if rng.below(4) == 0 => {
                inflight.clear();
                log.push("reconnect".into());
                stream = reconnect(&hub, &model, budget, split, address_first, &mut inflight);
            }
            _ => {}
        }
    }
    // Quiescence: everything delivered and acknowledged.
    let mut steps = 0;
    while !inflight.is_empty() {
        deliver(
            &mut stream,
            &mut model,
            &mut inflight,
            &mut nonces,
            &mut log,
            false,
        )?;
        steps += 1;
        if steps > 100_000 {
            return Err("no end to the responses".into());
        }
    }
    let due = stream.due();
    if !due.is_empty() {
        return Err(format!("still due after all acknowledged: {due:?}"));
    }
    for kind in [Kind::Authorization, Kind::Address] {
        let (have, want) = (model.versions(kind), model.expected(&hub, kind));
        if have != want {
            let mut extra: Vec<_> = have
                .iter()
                .filter(|(n, v)| want.get(*n) != Some(v))
                .collect();
            let mut missing: Vec<_> = want
                .iter()
                .filter(|(n, v)| have.get(*n) != Some(v))
                .collect();
            extra.sort();
            missing.sort();
            return Err(format!(
                "{kind:?} differs from the newest snapshot: held but not wanted/other version {extra:?}, missing {missing:?}\nlog tail: {:#?}",
                &log[log.len().saturating_sub(30)..]
            ));
        }
    }
    Ok(())
}

#[test]
fn a_model_client_under_changes_refusals_resubscriptions_and_reconnects_stays_consistent() {
    let mut failures = vec![];
    for (split, budgets) in [(true, &[1, 300, 4000][..]), (false, &[700][..])] {
        for budget in budgets {
            for seed in 0..24 {
                if let Err(e) = fuzz(seed, *budget, split, 300) {
                    failures.push(format!("split {split} budget {budget} seed {seed}: {e}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures; first:\n{}",
        failures.len(),
        failures[0]
    );
}

#[test]
fn a_resuming_veil_subscriber_keeps_the_policies_its_workloads_name() {
    // Workload a is restricted by a policy; while the subscriber is away the policy is replaced
    // by one of another name (a names the new one).
    let policy = |name: &str| {
        resources(&format!(
            "workloads:\n  - {{name: a, namespace: n, serviceAccount: a, node: x, ips: [10.0.0.1], labels: {{app: a}}}}\npolicies:\n  - apiVersion: security.veil.dev/v1\n    kind: AuthorizationPolicy\n    metadata: {{name: {name}, namespace: n}}\n    spec:\n      selector: {{matchLabels: {{app: a}}}}\n      rules: [{{from: [{{source: {{principals: [cluster.local/ns/n/sa/b]}}}}]}}]\n"
        ))
    };
    let hub = Hub::new(policy("only-b"));
    let mut model = Model::new();
    let mut stream = stream_of(hub.clone()).with_response_budget(RESPONSE_BUDGET);
    for kind in [Kind::Authorization, Kind::Address] {
        stream.on_request(split_request(kind)).unwrap();
    }
    let mut inflight: VecDeque<_> = stream.due().into();
    while let Some(r) = inflight.pop_front() {
        let kind = Kind::from_type_url(&r.type_url).unwrap();
        model.apply(kind, &r);
        stream.on_request(ack(kind, &r)).unwrap();
        inflight.extend(stream.due());
    }
    assert!(model.violations().is_empty());
    assert_eq!(
        model.versions(Kind::Address),
        snapshot_of(&hub, Kind::Address)
    );
    drop(stream);

    hub.publish(policy("only-b-v2"));
    // veil's subscriber resumes as mesh/src/xds/client.rs does: Authorization, then Address, each
    // with what it holds; the controller's `drive` computes what is due after each request.
    let mut stream = Stream::new(hub.clone());
    for kind in [Kind::Authorization, Kind::Address] {
        stream
            .on_request(DeltaDiscoveryRequest {
                initial_resource_versions: model.versions(kind),
                ..split_request(kind)
            })
            .unwrap();
        for r in stream.due() {
            let kind = Kind::from_type_url(&r.type_url).unwrap();
            model.apply(kind, &r);
            assert_eq!(
                model.violations(),
                Vec::<String>::new(),
                "after {kind:?} +{:?} -{:?}",
                names(&r),
                r.removed_resources
            );
        }
    }
}

#[test]
fn a_new_snapshot_between_every_part_still_converges() {
    for budget in [1, 300, 700] {
        for start in 0..8_u64 {
            let hub = Hub::new(grouped(start, 20, [true, true, true]));
            let mut model = Model::new();
            let mut stream = stream_of(hub.clone()).with_response_budget(budget);
            for kind in [Kind::Authorization, Kind::Address] {
                stream.on_request(split_request(kind)).unwrap();
            }
            let mut inflight: VecDeque<_> = stream.due().into();
            let mut round = start;
            let mut delivered = 0;
            while let Some(r) = inflight.pop_front() {
                let kind = Kind::from_type_url(&r.type_url).unwrap();
                model.apply(kind, &r);
                assert_eq!(model.violations(), Vec::<String>::new(), "budget {budget}");
                stream.on_request(ack(kind, &r)).unwrap();
                inflight.extend(stream.due());
                delivered += 1;
                if delivered < 400 {
                    round += 1;
                    let b = round * 7 + start;
                    hub.publish(if b % 11 == 0 {
                        Resources::default()
                    } else {
                        grouped(
                            round,
                            5 + (b % 20) as usize,
                            [b & 1 == 0, b & 2 == 0, b & 4 == 0],
                        )
                    });
                    inflight.extend(stream.due());
                }
                assert!(delivered < 100_000, "no end");
            }
            assert!(stream.due().is_empty() && stream.synced());
            for kind in [Kind::Authorization, Kind::Address] {
                assert_eq!(
                    model.versions(kind),
                    snapshot_of(&hub, kind),
                    "{kind:?} budget {budget}"
                );
            }
        }
    }
}
