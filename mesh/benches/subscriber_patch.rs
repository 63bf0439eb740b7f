//! What one pod change costs a subscriber (what every ztunnel pays for every pod change in the
//! cluster): a new version of one workload applied to a `Store` holding 10,000 or 100,000
//! workloads (a Service and an Authorization per ten), and the mesh patched. Also the heap the
//! store and its mesh hold per workload, counted by this binary's allocator and written to
//! `target/criterion/subscriber_patch/memory.json`: the bytes requested, the allocations, and what
//! glibc's malloc spends on them (each allocation takes a 16-byte-aligned chunk of at least 32
//! bytes, 8 of them its header): many small allocations cost far more than they ask for. The
//! workloads carry what veil's controller sends for a pod (names, canonical names, the node, two
//! Authorizations). Run by `cargo xtask bench`, or `cargo bench -p veil-mesh --bench subscriber_patch`.

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

/// Counts the bytes and allocations not yet freed, and the malloc chunks they take.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static CHUNKS: AtomicUsize = AtomicUsize::new(0);

/// The chunk glibc's malloc takes for `size` bytes on a 64-bit machine: the size and an 8-byte
/// header, rounded up to 16, at least 32.
fn chunk(size: usize) -> usize {
    ((size + 8).next_multiple_of(16)).max(32)
}

/// Counts `size` bytes held, and one more allocation when `new` (not a reallocation).
fn count(size: usize, new: bool) {
    LIVE.fetch_add(size, Ordering::Relaxed);
    CHUNKS.fetch_add(chunk(size), Ordering::Relaxed);
    if new {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts `size` bytes no longer held, and one allocation fewer when `freed` (not reallocated).
fn uncount(size: usize, freed: bool) {
    LIVE.fetch_sub(size, Ordering::Relaxed);
    CHUNKS.fetch_sub(chunk(size), Ordering::Relaxed);
    if freed {
        ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), true);
        // SAFETY: the caller's guarantees, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        uncount(layout.size(), true);
        // SAFETY: the caller's guarantees, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        count(size, false);
        uncount(layout.size(), false);
        // SAFETY: the caller's guarantees, passed on.
        unsafe { System.realloc(ptr, layout, size) }
    }
}

/// Bytes requested, allocations and malloc chunks' bytes held now.
fn held() -> [usize; 3] {
    [&LIVE, &ALLOCATIONS, &CHUNKS].map(|c| c.load(Ordering::Relaxed))
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
            trust_domain: "cluster.local".into(),
            canonical_name: format!("app{g}"),
            canonical_revision: "2.14.1".into(),
            workload_name: format!("deploy{g}"),
            workload_type: wl::WorkloadType::Pod as i32,
            cluster_id: "Kubernetes".into(),
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
            // Its own, and the one veil's controller names for every pod under a STRICT mesh.
            authorization_policies: vec![
                format!("{ns}/p{g}"),
                "veil-system/veil:peer-strict".into(),
            ],
            ..Default::default()
        })),
    }
    .encode_to_vec();
    (uid, body)
}

/// Authorization `p{g}` (named by the pods of app `g`): it allows `port` from app `g + 1`'s
/// identity. Its xDS name and body.
fn policy(g: usize, port: u32) -> (String, Vec<u8>) {
    let ns = format!("ns{}", g % 100);
    let principal = sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Exact(format!(
            "cluster.local/ns/ns{}/sa/sa{}",
            (g + 1) % 100,
            g
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
                    destination_ports: vec![port],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    (format!("{ns}/p{g}"), policy.encode_to_vec())
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
        let (name, body) = policy(g, 8080);
        authorizations.push(resource(Kind::Authorization, &name, "v1", body));
    }
    // What veil's controller sends for a STRICT mesh: plaintext refused on every port.
    let peer_strict = sec::Authorization {
        name: "veil:peer-strict".into(),
        namespace: "veil-system".into(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Deny as i32,
        rules: vec![sec::Rule {
            clauses: vec![sec::Clause {
                matches: vec![sec::Match {
                    not_principals: vec![sec::StringMatch {
                        match_type: Some(sec::string_match::MatchType::Presence(())),
                    }],
                    ..Default::default()
                }],
            }],
        }],
        ..Default::default()
    };
    authorizations.push(resource(
        Kind::Authorization,
        "veil-system/veil:peer-strict",
        "v1",
        peer_strict.encode_to_vec(),
    ));
    let mut store = Store::new(MeshSettings::default());
    assert!(
        store
            .apply(Kind::Authorization, &authorizations, &[])
            .is_empty()
    );
    assert!(store.apply(Kind::Address, &addresses, &[]).is_empty());
    let mesh = store.build_whole();
    assert!(mesh.rejected().is_empty(), "{:?}", mesh.rejected());
    store
}

fn patch(c: &mut Criterion) {
    let mut memory = serde_json::Map::new();
    let mut group = c.benchmark_group("subscriber_patch");
    for pods in [10_000, 100_000] {
        let before = held();
        let mut store = store(pods);
        let [bytes, allocations, chunks] = [0, 1, 2].map(|i| held()[i].saturating_sub(before[i]));
        memory.insert(
            pods.to_string(),
            serde_json::json!({
                "requested": bytes / pods,
                "allocations": allocations as f64 / pods as f64,
                "malloc_chunks": chunks / pods,
            }),
        );
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
        // Authorization p1 (named by the pods of app 1) allows another port, and back.
        let changes: Vec<Resource> = [8081, 8080]
            .iter()
            .enumerate()
            .map(|(k, port)| {
                let (name, body) = policy(1, *port);
                resource(Kind::Authorization, &name, &format!("a{k}"), body)
            })
            .collect();
        group.bench_function(format!("authorization-{pods}"), |b| {
            b.iter(|| {
                n += 1;
                store.apply(Kind::Authorization, &changes[n % 2..][..1], &[]);
                let mesh = store.patch().expect("one changed Authorization is patched");
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
