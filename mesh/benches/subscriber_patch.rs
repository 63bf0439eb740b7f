//! What one pod change costs a subscriber (what every ztunnel pays for every pod change in the
//! cluster): a new version of one workload applied to a `Store` holding 10,000 or 100,000
//! workloads (a Service and an Authorization per ten), and the mesh patched. Also the heap the
//! store and its mesh hold per workload, counted by this binary's allocator and written to
//! `target/criterion/subscriber_patch/memory.json`. Run by `cargo xtask bench`, or
//! `cargo bench -p veil-mesh --bench subscriber_patch`.

#![allow(
    missing_docs,
    unsafe_code,
    reason = "criterion's macros generate undocumented items; a counting allocator wraps the system's"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use veil_mesh::discovery::MeshSettings;
use veil_mesh::xds::proto::discovery::Resource;
use veil_mesh::xds::proto::istio::security as sec;
use veil_mesh::xds::proto::istio::workload as wl;
use veil_mesh::xds::{Kind, Store, workload_name};

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's guarantees, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's guarantees, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        LIVE.fetch_add(size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's guarantees, passed on.
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn resource(kind: Kind, name: &str, version: &str, body: Vec<u8>) -> Resource {
    kind.resource(name, version, body)
}

/// Pod `i` of a mesh with `groups` apps: in namespace `ns{g % 100}`, backing Service `svc{g}` and
/// named by Authorization `p{g}`, at `address`.
fn pod(i: usize, groups: usize, address: [u8; 4]) -> (String, Vec<u8>) {
    let g = i % groups;
    let ns = format!("ns{}", g % 100);
    let name = format!("pod-{i}");
    let uid = workload_name(&ns, &name);
    let service = format!("{ns}/svc{g}.{ns}.svc.cluster.local");
    let body = wl::Address {
        r#type: Some(wl::address::Type::Workload(wl::Workload {
            uid: uid.clone(),
            name,
            namespace: ns.clone(),
            service_account: format!("sa{g}"),
            node: format!("node-{}", i % 500),
            addresses: vec![address.to_vec()],
            tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
            status: wl::WorkloadStatus::Healthy as i32,
            services: [(
                service,
                wl::PortList {
                    ports: vec![wl::Port {
                        service_port: 80,
                        target_port: 8080,
                        ..Default::default()
                    }],
                },
            )]
            .into(),
            authorization_policies: vec![format!("{ns}/p{g}")],
            ..Default::default()
        })),
    }
    .encode_to_vec();
    (uid, body)
}

/// A store holding `pods` workloads, `pods / 10` Services and Authorizations, its mesh built.
fn store(pods: usize) -> Store {
    let groups = pods / 10;
    let mut addresses = Vec::with_capacity(pods + groups);
    for i in 0..pods {
        let (uid, body) = pod(i, groups, [10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        addresses.push(resource(Kind::Address, &uid, "v1", body));
    }
    let mut authorizations = Vec::with_capacity(groups);
    for g in 0..groups {
        let ns = format!("ns{}", g % 100);
        let hostname = format!("svc{g}.{ns}.svc.cluster.local");
        let service = wl::Address {
            r#type: Some(wl::address::Type::Service(wl::Service {
                name: format!("svc{g}"),
                namespace: ns.clone(),
                hostname: hostname.clone(),
                addresses: vec![wl::NetworkAddress {
                    address: vec![172, 16 + (g >> 16) as u8, (g >> 8) as u8, g as u8],
                    ..Default::default()
                }],
                ports: vec![wl::Port {
                    service_port: 80,
                    target_port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            })),
        };
        let name = format!("{ns}/{hostname}");
        addresses.push(resource(
            Kind::Address,
            &name,
            "v1",
            service.encode_to_vec(),
        ));
        let principal = sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Exact(format!(
                "cluster.local/ns/ns{}/sa/sa{g}",
                (g + 1) % 100
            ))),
        };
        let policy = sec::Authorization {
            name: format!("p{g}"),
            namespace: ns.clone(),
            scope: sec::Scope::WorkloadSelector as i32,
            action: sec::Action::Allow as i32,
            rules: vec![sec::Rule {
                clauses: vec![sec::Clause {
                    matches: vec![sec::Match {
                        principals: vec![principal],
                        destination_ports: vec![8080],
                        ..Default::default()
                    }],
                }],
            }],
            ..Default::default()
        };
        let name = format!("{ns}/p{g}");
        authorizations.push(resource(
            Kind::Authorization,
            &name,
            "v1",
            policy.encode_to_vec(),
        ));
    }
    let mut store = Store::new(MeshSettings::default());
    assert!(
        store
            .apply(Kind::Authorization, &authorizations, &[])
            .is_empty()
    );
    assert!(store.apply(Kind::Address, &addresses, &[]).is_empty());
    store.build_whole();
    store
}

fn patch(c: &mut Criterion) {
    let mut memory = serde_json::Map::new();
    let mut group = c.benchmark_group("subscriber_patch");
    for pods in [10_000, 100_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let mut store = store(pods);
        let held = LIVE.load(Ordering::Relaxed).saturating_sub(before);
        memory.insert(pods.to_string(), (held / pods).into());
        // Pod 1 moves between two addresses no pod has, a new version each time.
        let changes: Vec<Resource> = (0..2u8)
            .map(|k| {
                let (uid, body) = pod(1, pods / 10, [10, 250, 0, k]);
                resource(Kind::Address, &uid, &format!("m{k}"), body)
            })
            .collect();
        let mut n = 0usize;
        group.bench_function(format!("{pods}"), |b| {
            b.iter(|| {
                n += 1;
                store.apply(Kind::Address, &changes[n % 2..][..1], &[]);
                let mesh = store.patch().expect("one moved workload is patched");
                black_box(mesh.summary());
            });
        });
    }
    group.finish();
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("../target"), PathBuf::from)
        .join("criterion/subscriber_patch");
    std::fs::create_dir_all(&dir).expect("the criterion directory");
    let memory = serde_json::json!({ "heap_bytes_per_workload": memory });
    std::fs::write(dir.join("memory.json"), memory.to_string()).expect("memory.json written");
}

criterion_group!(benches, patch);
criterion_main!(benches);
