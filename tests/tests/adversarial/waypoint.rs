//! Waypoint canonicalization under attack (issue 10, classes 3, 4 and 9): path and host spellings
//! that a web server resolves to a protected resource, Host/authority confusion, request smuggling
//! and pipelining, and query names that hide credentials from redaction.
//!
//! The backend is real nginx, which merges slashes, resolves `.`/`..` and decodes `%xx` like most
//! servers, so any bypass shows as the secret content. `profiles` (DENY
//! `/api/v1/profiles/private*` and host `admin.internal`) and `public` (ALLOW `/public*` on host
//! `public.internal` or `public.internal:8000`) are two services of the same nginx pod behind the
//! waypoint. Without nginx installed, every case is skipped loudly.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use veil_e2e::cluster::exec;
use veil_e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec, skip_unless_root};

const PROFILES: &str = "10.96.0.40";
const PUBLIC: &str = "10.96.0.41";
const NGINX_PORT: u16 = 8081;

const POLICIES: &str = r#"
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: no-private, namespace: user-data}
    spec:
      targetRefs: [{kind: Service, name: profiles}]
      action: DENY
      rules:
        - to: [{operation: {paths: [/api/v1/profiles/private*]}}]
        - to: [{operation: {hosts: [admin.internal, "admin.internal:*"]}}]
  - apiVersion: security.veil.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: public-only, namespace: user-data}
    spec:
      targetRefs: [{kind: Service, name: public}]
      rules:
        - to: [{operation: {paths: [/public*], hosts: [public.internal, "public.internal:8000"]}}]
"#;

/// What only a bypass can return.
const SECRETS: &[&str] = &["SECRET-PROFILE", "SECRET-PAGE", "ADMIN-CONSOLE"];

/// The mesh, with nginx serving in pod `backend`.
struct Fixture {
    mesh: Mesh,
    nginx: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.nginx.join("nginx.pid")).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<u32>() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = std::fs::remove_dir_all(&self.nginx);
    }
}

/// The nginx binary, or `None` after a loud message (CI installs it; see .ci/run).
fn nginx_binary(test: &str) -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        eprintln!(
            "\n*** SKIPPED {test}: nginx is not installed (apt-get install nginx-light): the waypoint \
             adversarial cases need a backend that resolves paths like a real web server. ***\n"
        );
    }
    found
}

fn fixture(test: &str, waypoint_args: &[&str]) -> Option<Fixture> {
    if skip_unless_root(test) {
        return None;
    }
    let nginx_bin = nginx_binary(test)?;
    let mut backend = PodSpec::new("backend", "user-data", "node-a");
    backend.labels.insert("app".into(), "backend".into());
    let service = |name: &str, vip: &str| ServiceSpec {
        name: name.into(),
        namespace: "user-data".into(),
        vip: vip.into(),
        selects: "backend".into(),
        ports: vec![(80, NGINX_PORT)],
        udp_ports: Vec::new(),
    };
    let mut mesh = Mesh::start(MeshSpec {
        nodes: vec!["node-a".into()],
        pods: vec![PodSpec::new("client", "production", "node-a"), backend],
        services: vec![service("profiles", PROFILES), service("public", PUBLIC)],
        waypoints: vec![WaypointSpec {
            name: "waypoint".into(),
            namespace: "user-data".into(),
            node: "node-a".into(),
            args: waypoint_args.iter().map(|a| (*a).to_owned()).collect(),
        }],
        policies: POLICIES.into(),
        ..MeshSpec::default()
    })
    .expect("starting the mesh");
    let nginx = start_nginx(&mut mesh, &nginx_bin, test);
    Some(Fixture { mesh, nginx })
}

/// Writes nginx's configuration and content, starts it in pod `backend`, waits until it answers.
fn start_nginx(mesh: &mut Mesh, bin: &Path, test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("veil-nginx-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let files = [
        ("www/api/v1/profiles/private", "SECRET-PROFILE\n"),
        ("www/api/v1/profiles/public", "public-profile\n"),
        ("www/private", "SECRET-PAGE\n"),
        ("www/public/page", "public-page\n"),
    ];
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("nginx dir");
        std::fs::write(path, content).expect("nginx content");
    }
    std::fs::create_dir_all(dir.join("tmp")).expect("nginx tmp");
    let d = dir.display();
    let mut conf = String::new();
    let _ = write!(
        conf,
        "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  default_type text/plain;\n  access_log {d}/access.log;\n\
           client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;\n\
           fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;\n\
           server {{ listen {NGINX_PORT} default_server; root {d}/www; }}\n\
           server {{ listen {NGINX_PORT}; server_name admin.internal;\n\
             location / {{ return 200 \"ADMIN-CONSOLE\\n\"; }} }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
    let conf = dir.join("nginx.conf").to_string_lossy().into_owned();
    let prefix = dir.to_string_lossy().into_owned();
    let bin = bin.to_string_lossy().into_owned();
    mesh.spawn_in_pod(
        "backend",
        "nginx",
        &[&bin, "-p", &prefix, "-c", &conf, "-g", "daemon off;"],
    )
    .expect("starting nginx");
    // Over loopback: the pod's own address is captured, and reachable only through the waypoint.
    let url = format!("http://127.0.0.1:{NGINX_PORT}/api/v1/profiles/public");
    let netns = mesh.cluster.pod("backend").netns.clone();
    let up = mesh.eventually(Duration::from_secs(10), || {
        exec(&netns, &["curl", "-s", "-m", "1", &url])
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("public-profile"))
    });
    assert!(up, "nginx did not start: {}", error_log(&dir));
    // From here on the access log holds only what came through the waypoint.
    std::fs::write(dir.join("access.log"), "").expect("truncating nginx's access log");
    dir
}

fn error_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
}

impl Fixture {
    /// `curl --path-as-is` from the client: status and body.
    fn get(&self, vip: &str, path: &str, host: Option<&str>) -> (u16, String) {
        let mut args = vec!["--path-as-is"];
        let header = host.map(|h| format!("Host: {h}"));
        if let Some(h) = &header {
            args.extend(["-H", h.as_str()]);
        }
        self.mesh
            .curl_with("client", &args, &format!("http://{vip}{path}"))
            .unwrap_or_else(|e| panic!("curl {vip}{path}: {e}"))
    }

    /// Sends `bytes` on one connection from the client to `vip:80`; everything that comes back
    /// before the server closes (or 3 s of silence).
    fn raw(&self, vip: &str, bytes: &[u8]) -> String {
        const CLIENT: &str = "import socket,sys\n\
            s=socket.create_connection((sys.argv[1],80),timeout=5)\n\
            s.sendall(bytes.fromhex(sys.argv[2]))\n\
            s.settimeout(3)\n\
            out=b''\n\
            try:\n  while True:\n    d=s.recv(65536)\n    if not d: break\n    out+=d\n\
            except (socket.timeout, ConnectionResetError): pass\n\
            sys.stdout.write(out.decode('latin-1'))\n";
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let out = self
            .mesh
            .run_in_pod("client", &["python3", "-c", CLIENT, vip, &hex])
            .expect("python3 in the client pod");
        assert!(
            out.status.success(),
            "raw client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The request lines nginx served.
    fn nginx_log(&self) -> String {
        std::fs::read_to_string(self.nginx.join("access.log")).unwrap_or_default()
    }

    /// The safe outcome's common part: no secret in `answer`, nginx never asked for a protected
    /// resource, and the waypoint still ready.
    fn assert_safe(&self, answer: &str) {
        for secret in SECRETS {
            assert!(!answer.contains(secret), "bypass: {secret} in {answer:?}");
        }
        let served = self.nginx_log();
        for protected in ["/api/v1/profiles/private", " /private "] {
            assert!(
                !served.contains(protected),
                "nginx was asked for {protected}:\n{served}"
            );
        }
        let ready = self.mesh.waypoint_readiness("waypoint");
        assert!(ready.starts_with("ready"), "waypoint not ready: {ready:?}");
    }

    /// Asserts `path` on `vip` is answered `want` and is safe.
    fn expect(&self, vip: &str, path: &str, host: Option<&str>, want: u16) {
        let (status, body) = self.get(vip, path, host);
        assert_eq!(status, want, "{vip}{path} (host {host:?}): {body}");
        self.assert_safe(&body);
    }
}

/// Status codes of the responses in a raw HTTP/1.1 answer, in order.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|s| s.get(..3)?.parse().ok())
        .collect()
}

#[test]
fn double_slash_before_a_denied_segment() {
    let Some(f) = fixture("wp_double_slash", &[]) else {
        return;
    };
    f.expect(PROFILES, "/api/v1/profiles//private", None, 403);
    f.expect(PROFILES, "//api//v1/profiles///private", None, 403);
    // The control: the allowed neighbour is served, so a 403 above is the policy, not the setup.
    f.expect(PROFILES, "/api/v1/profiles//public", None, 200);
}

#[test]
fn dot_segment_before_a_denied_segment() {
    let Some(f) = fixture("wp_dot_segment", &[]) else {
        return;
    };
    f.expect(PROFILES, "/api/v1/profiles/./private", None, 403);
    // What is forwarded is the canonical path itself, not the spelling the client sent.
    let (status, body) = f.get(PROFILES, "/api/./v1/profiles/./public", None);
    assert_eq!((status, body.trim()), (200, "public-profile"));
    assert!(
        f.nginx_log()
            .contains("GET /api/v1/profiles/public HTTP/1.1"),
        "{}",
        f.nginx_log()
    );
    f.assert_safe(&body);
}

#[test]
fn percent_encoded_letters_in_a_denied_path() {
    let Some(f) = fixture("wp_percent_letters", &[]) else {
        return;
    };
    f.expect(PROFILES, "/api/v1/profiles/%70rivate", None, 403);
    // `%50` is `P`: a different (missing) resource, not a way around the rule.
    f.expect(PROFILES, "/%61pi/v1/profiles/%50%72ivate", None, 404);
    f.expect(PROFILES, "/api/v1/%70rofiles/private", None, 403);
}

#[test]
fn parent_segment_into_a_denied_path() {
    let Some(f) = fixture("wp_parent_segment", &[]) else {
        return;
    };
    f.expect(PROFILES, "/api/v1/profiles/x/../private", None, 403);
    f.expect(PROFILES, "/x/../../api/v1/profiles/private", None, 403);
    f.expect(
        PROFILES,
        "/api/v1/profiles/%2e%2e/profiles/private",
        None,
        403,
    );
}

#[test]
fn backslash_as_a_path_separator() {
    let Some(f) = fixture("wp_backslash", &[]) else {
        return;
    };
    let answer = f.raw(
        PROFILES,
        b"GET /api/v1/profiles\\private HTTP/1.1\r\nHost: profiles\r\nConnection: close\r\n\r\n",
    );
    let codes = statuses(&answer);
    assert!(
        codes == [403] || codes == [400],
        "backslash: {codes:?} {answer}"
    );
    f.assert_safe(&answer);
}

#[test]
fn traversal_out_of_an_allowed_prefix() {
    let Some(f) = fixture("wp_traversal_allow", &[]) else {
        return;
    };
    f.expect(PUBLIC, "/public/page", Some("public.internal"), 200);
    f.expect(PUBLIC, "/public/../private", Some("public.internal"), 403);
    f.expect(PUBLIC, "/public/./../private", Some("public.internal"), 403);
}

#[test]
fn encoded_traversal_out_of_an_allowed_prefix() {
    let Some(f) = fixture("wp_encoded_traversal", &[]) else {
        return;
    };
    f.expect(
        PUBLIC,
        "/public/%2e%2e/private",
        Some("public.internal"),
        403,
    );
    f.expect(PUBLIC, "/public/%2E./private", Some("public.internal"), 403);
    f.expect(PUBLIC, "/public\\..\\private", Some("public.internal"), 403);
}

#[test]
fn encoded_slash_and_invalid_escapes_are_refused() {
    let Some(f) = fixture("wp_encoded_slash", &[]) else {
        return;
    };
    f.expect(PROFILES, "/api/v1/profiles%2Fprivate", None, 400);
    f.expect(PROFILES, "/api/v1/profiles%2fprivate", None, 400);
    f.expect(
        PUBLIC,
        "/public%2F..%2Fprivate",
        Some("public.internal"),
        400,
    );
    f.expect(PROFILES, "/api/v1/profiles%5Cprivate", None, 400);
    f.expect(PROFILES, "/api/v1/profiles/%zz", None, 400);
    f.expect(PROFILES, "/api/v1/profiles/%4", None, 400);
    f.expect(PROFILES, "/api/v1/profiles/private%00", None, 400);
    let log = f.mesh.waypoint_log("waypoint");
    assert!(log.contains("encoded slash or backslash"), "{log}");
}

#[test]
fn host_spelling_variants_of_a_denied_host() {
    let Some(f) = fixture("wp_host_variants", &[]) else {
        return;
    };
    let path = "/api/v1/profiles/public";
    f.expect(PROFILES, path, Some("profiles.user-data"), 200);
    for host in [
        "ADMIN.internal",
        "admin.internal.",
        "Admin.Internal.:80",
        "admin.internal:80",
    ] {
        f.expect(PROFILES, path, Some(host), 403);
    }
    f.expect(PROFILES, path, Some("admin.internal:"), 400);
    f.expect(PROFILES, path, Some("admin..internal"), 400);
    f.expect(PROFILES, path, Some("admin.internal%2e"), 400);
}

#[test]
fn host_port_not_named_by_the_policy() {
    let Some(f) = fixture("wp_host_port", &[]) else {
        return;
    };
    // `hosts: [public.internal, public.internal:8000]`: exactly those, as Istio compares them.
    f.expect(PUBLIC, "/public/page", Some("public.internal"), 200);
    f.expect(PUBLIC, "/public/page", Some("PUBLIC.internal.:8000"), 200);
    f.expect(PUBLIC, "/public/page", Some("public.internal:9000"), 403);
    f.expect(PUBLIC, "/public/page", Some("public.internal:80"), 403);
}

#[test]
fn absolute_form_authority_that_contradicts_the_host_header() {
    let Some(f) = fixture("wp_absolute_form", &[]) else {
        return;
    };
    let answer = f.raw(
        PROFILES,
        b"GET http://profiles.user-data/api/v1/profiles/public HTTP/1.1\r\n\
          Host: admin.internal\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(statuses(&answer), [400], "{answer}");
    f.assert_safe(&answer);
    // Agreeing forms are served, with the canonical host forwarded.
    let answer = f.raw(
        PROFILES,
        b"GET http://Profiles.User-Data./api/v1/profiles/public HTTP/1.1\r\n\
          Host: profiles.user-data\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(statuses(&answer), [200], "{answer}");
    f.assert_safe(&answer);
}

#[test]
fn percent_encoded_credential_names_in_the_query() {
    let Some(f) = fixture("wp_query_redaction", &["--access-log", "full"]) else {
        return;
    };
    let queries = [
        "%74oken=SECRET-1&page=1",
        "page=2;token=SECRET-2",
        "access%5Ftoken=SECRET-3",
        "TOKEN=SECRET-4",
        "to%zzken=SECRET-5",
    ];
    for q in queries {
        f.expect(PROFILES, &format!("/api/v1/profiles/public?{q}"), None, 200);
    }
    let log = f.mesh.waypoint_log("waypoint");
    assert!(log.contains("%74oken=REDACTED&page=1"), "{log}");
    assert!(log.contains("page=2;token=REDACTED"), "{log}");
    assert!(
        !log.contains("SECRET-"),
        "a credential in the access log:\n{log}"
    );
    // The query itself reached the backend unchanged.
    assert!(f.nginx_log().contains("?%74oken=SECRET-1&page=1"));
}

#[test]
fn conflicting_content_lengths_smuggle_a_request() {
    let Some(f) = fixture("wp_smuggle_cl_cl", &[]) else {
        return;
    };
    let smuggled = "GET /api/v1/profiles/private HTTP/1.1\r\nHost: profiles\r\n\r\n";
    let request = format!(
        "POST /api/v1/profiles/public HTTP/1.1\r\nHost: profiles\r\nContent-Length: 0\r\n\
         Content-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let answer = f.raw(PROFILES, request.as_bytes());
    assert_eq!(statuses(&answer), [400], "{answer}");
    f.assert_safe(&answer);
}

#[test]
fn transfer_encoding_with_content_length_smuggles_a_request() {
    let Some(f) = fixture("wp_smuggle_te_cl", &[]) else {
        return;
    };
    // A front end reading Content-Length would see one request; one reading chunked, two.
    let smuggled = "GET /api/v1/profiles/private HTTP/1.1\r\nHost: profiles\r\n\r\n";
    let body = format!("0\r\n\r\n{smuggled}");
    let request = format!(
        "POST /api/v1/profiles/public HTTP/1.1\r\nHost: profiles\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let answer = f.raw(PROFILES, request.as_bytes());
    // Whatever follows the chunked body is never served: the connection closes, or the next
    // request is judged (and denied) on its own.
    assert!(!statuses(&answer).contains(&200), "{answer}");
    f.assert_safe(&answer);
    // Transfer-Encoding other than chunked, and obsolete line folding: refused.
    for request in [
        "POST /api/v1/profiles/public HTTP/1.1\r\nHost: profiles\r\nTransfer-Encoding: identity\r\n\r\n",
        "GET /api/v1/profiles/public HTTP/1.1\r\nHost: profiles\r\nX-Fold: a\r\n b\r\n\r\n",
        "GET /api/v1/profiles/public HTTP/1.1\r\nHost: profiles\r\nHost: admin.internal\r\n\
         Connection: close\r\n\r\n",
    ] {
        let answer = f.raw(PROFILES, request.as_bytes());
        assert_eq!(statuses(&answer), [400], "{request:?}: {answer}");
        f.assert_safe(&answer);
    }
}

#[test]
fn request_pipelined_behind_a_denied_one() {
    let Some(f) = fixture("wp_pipelined", &[]) else {
        return;
    };
    let answer = f.raw(
        PROFILES,
        b"GET /api/v1/profiles/private HTTP/1.1\r\nHost: profiles\r\n\r\n\
          GET /api/v1/profiles//private HTTP/1.1\r\nHost: profiles\r\n\r\n\
          GET /api/v1/profiles/public HTTP/1.1\r\nHost: admin.internal\r\n\r\n\
          GET /api/v1/profiles/public HTTP/1.1\r\nHost: profiles\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(statuses(&answer), [403, 403, 403, 200], "{answer}");
    f.assert_safe(&answer);
    assert_eq!(
        f.nginx_log().lines().count(),
        1,
        "only the last request reaches nginx: {}",
        f.nginx_log()
    );
}
