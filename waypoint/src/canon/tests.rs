use super::*;
use Normalization::{Base, DecodeAndMergeSlashes, MergeSlashes, None as Raw};

fn path_at(level: Normalization, raw: &str) -> Result<String, PathError> {
    path::canonicalize(raw.as_bytes(), level)
}

#[test]
fn the_bypasses_of_issue_10_canonicalize_to_the_path_they_reach() {
    let p = "/api/v1/profiles/private";
    let cases = [
        "/api/v1/profiles//private",
        "/api/v1/profiles/./private",
        "/api/v1/profiles/%70rivate",
        "/api/v1/profiles/x/../private",
        "/api/v1/profiles\\private",
        "/api/v1/profiles/%2e%2E/profiles/private",
        "/api/v1/profiles/public/../private",
        "/api/v1/profiles/public/%2e%2e/private",
        "/api///v1/profiles/.//private",
        "/%61pi/v1/profiles/private",
        "/../../api/v1/profiles/private",
    ];
    for raw in cases {
        assert_eq!(path_at(MergeSlashes, raw).as_deref(), Ok(p), "{raw}");
    }
}

#[test]
fn levels_follow_istio() {
    let cases: &[(&str, Normalization, Result<&str, PathError>)] = &[
        ("/a/../b", Raw, Ok("/a/../b")),
        ("/a//b", Raw, Ok("/a//b")),
        ("/a%2fb", Raw, Err(PathError::EncodedSlash)),
        ("/a%zz", Raw, Err(PathError::InvalidPercent)),
        ("/a\\b", Raw, Ok("/a\\b")),
        ("/a/../b", Base, Ok("/b")),
        ("/a//b", Base, Ok("/a//b")),
        ("\\da", Base, Err(PathError::NotOriginForm)),
        ("/\\da", Base, Ok("//da")),
        ("/a//b", MergeSlashes, Ok("/a/b")),
        ("/a/..//b", MergeSlashes, Ok("/b")),
        ("/a%2fb", MergeSlashes, Err(PathError::EncodedSlash)),
        ("/a%5Cb", MergeSlashes, Err(PathError::EncodedSlash)),
        ("/a%2fb", DecodeAndMergeSlashes, Ok("/a/b")),
        ("/a%5c..%2fb", DecodeAndMergeSlashes, Ok("/b")),
        ("/a%2F%2Fb", DecodeAndMergeSlashes, Ok("/a/b")),
    ];
    for (raw, level, want) in cases {
        assert_eq!(
            path_at(*level, raw).as_deref(),
            want.as_deref(),
            "{raw} at {level:?}"
        );
    }
}

#[test]
fn rfc3986_dot_segments_and_encodings() {
    let cases: &[(&str, &str)] = &[
        ("/", "/"),
        ("/.", "/"),
        ("/..", "/"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/./b/../c/", "/a/c/"),
        ("/a/.../b", "/a/.../b"),
        ("/a/..b/.c", "/a/..b/.c"),
        ("/a%3ab", "/a%3Ab"),
        ("/%7e%41%5F%2D", "/~A_-"),
        ("/%252e%252e/x", "/%252e%252e/x"),
        ("/a;b=c/d", "/a;b=c/d"),
        ("/caf%C3%A9", "/caf%C3%A9"),
    ];
    for (raw, want) in cases {
        assert_eq!(path_at(Base, raw).as_deref(), Ok(*want), "{raw}");
    }
}

#[test]
fn invalid_paths_are_refused_at_every_level() {
    let cases: &[(&[u8], PathError)] = &[
        (b"", PathError::NotOriginForm),
        (b"*", PathError::NotOriginForm),
        (b"a/b", PathError::NotOriginForm),
        (b"http://x/", PathError::NotOriginForm),
        (b"/a\0b", PathError::InvalidChar),
        (b"/a b", PathError::InvalidChar),
        (b"/a\tb", PathError::InvalidChar),
        (b"/a\x7f", PathError::InvalidChar),
        (b"/caf\xc3\xa9", PathError::InvalidChar),
        (b"/a%00", PathError::EncodedNul),
        (b"/a%zz", PathError::InvalidPercent),
        (b"/a%4", PathError::InvalidPercent),
        (b"/a%", PathError::InvalidPercent),
        (b"/a%%41", PathError::InvalidPercent),
        (b"/a?b", PathError::Delimiter),
        (b"/a#b", PathError::Delimiter),
    ];
    for level in [Raw, Base, MergeSlashes, DecodeAndMergeSlashes] {
        for (raw, want) in cases {
            assert_eq!(
                path::canonicalize(raw, level),
                Err(*want),
                "{:?} at {level:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}

#[test]
fn canonical_paths_are_fixed_points() {
    let inputs = [
        "/a/%2e%2E/%2e/b//c/..",
        "/x\\..\\..\\y/%7E",
        "/a/b/../../../c/./d/",
        "//..//..//a",
        "/%41%3a%2a",
    ];
    for level in [Base, MergeSlashes, DecodeAndMergeSlashes] {
        for raw in inputs {
            let once = path_at(level, raw).unwrap();
            assert_eq!(
                path_at(level, &once),
                Ok(once.clone()),
                "{raw} at {level:?}"
            );
        }
    }
}

#[test]
fn hosts_have_one_canonical_form() {
    let cases: &[(&str, Result<&str, HostError>)] = &[
        ("admin.internal", Ok("admin.internal")),
        ("ADMIN.Internal", Ok("admin.internal")),
        ("admin.internal.", Ok("admin.internal")),
        ("admin.internal.:8000", Ok("admin.internal:8000")),
        ("admin.internal:08000", Ok("admin.internal:8000")),
        ("svc_1.ns-2", Ok("svc_1.ns-2")),
        ("10.96.0.20:80", Ok("10.96.0.20:80")),
        ("[FD00::0:1]:80", Ok("[fd00::1]:80")),
        ("[::1]", Ok("[::1]")),
        ("admin.internal:", Err(HostError::EmptyPort)),
        ("admin.internal:0", Err(HostError::InvalidPort)),
        ("admin.internal:65536", Err(HostError::InvalidPort)),
        ("admin.internal:+80", Err(HostError::InvalidPort)),
        ("admin.internal:80:80", Err(HostError::InvalidPort)),
        ("admin.internal:000080", Err(HostError::InvalidPort)),
        ("", Err(HostError::Empty)),
        (":80", Err(HostError::Empty)),
        (".", Err(HostError::InvalidName)),
        ("admin..internal", Err(HostError::InvalidName)),
        ("admin.internal..", Err(HostError::InvalidName)),
        (".admin.internal", Err(HostError::InvalidName)),
        ("admin%2einternal", Err(HostError::InvalidName)),
        ("admin internal", Err(HostError::InvalidName)),
        ("user@admin.internal", Err(HostError::InvalidName)),
        ("adm\u{131}n.internal", Err(HostError::InvalidName)),
        ("[fd00::1", Err(HostError::InvalidIpv6)),
        ("[fd00::zz]", Err(HostError::InvalidIpv6)),
        ("[fd00::1]x", Err(HostError::InvalidIpv6)),
        ("[fd00::1]:", Err(HostError::EmptyPort)),
    ];
    for (raw, want) in cases {
        assert_eq!(
            host::canonicalize(raw.as_bytes()).as_deref(),
            want.as_deref(),
            "{raw:?}"
        );
    }
    assert_eq!(
        host::canonicalize(b"admin.internal\xff"),
        Err(HostError::InvalidName)
    );
}

fn req(version: Version, method: &str, uri: &str, hosts: &[&str]) -> Request<()> {
    let mut b = Request::builder().version(version).method(method).uri(uri);
    for h in hosts {
        b = b.header(HOST, *h);
    }
    b.body(()).unwrap()
}

#[test]
fn the_host_is_the_authority_and_the_host_header_agreeing() {
    const HTTP_10: Version = Version::HTTP_10;
    const HTTP_11: Version = Version::HTTP_11;
    const HTTP_2: Version = Version::HTTP_2;
    let host = |r: Request<()>| request(&r, MergeSlashes).map(|c| c.host);
    let ok = |s: &str| Ok(s.to_owned());
    assert_eq!(host(req(HTTP_11, "GET", "/", &["A.b."])), ok("a.b"));
    assert_eq!(host(req(HTTP_11, "GET", "http://A.b/x", &[])), ok("a.b"));
    assert_eq!(
        host(req(HTTP_11, "GET", "http://a.b:80/x", &["A.B.:80"])),
        ok("a.b:80")
    );
    assert_eq!(
        host(req(HTTP_11, "GET", "http://other/x", &["admin.internal"])),
        Err(Refusal::HostMismatch)
    );
    assert_eq!(
        host(req(HTTP_11, "GET", "http://a.b:8000/x", &["a.b"])),
        Err(Refusal::HostMismatch),
        "a port is part of the host"
    );
    assert_eq!(
        host(req(HTTP_2, "GET", "http://a.b/x", &["c.d"])),
        Err(Refusal::HostMismatch)
    );
    assert_eq!(host(req(HTTP_2, "GET", "http://a.b/x", &[])), ok("a.b"));
    assert_eq!(
        host(req(HTTP_11, "GET", "/", &["a.b", "c.d"])),
        Err(Refusal::MultipleHosts)
    );
    assert_eq!(
        host(req(HTTP_11, "GET", "/", &[])),
        Err(Refusal::MissingHost)
    );
    assert_eq!(host(req(HTTP_10, "GET", "/", &[])), ok(""));
    assert_eq!(
        host(req(HTTP_11, "GET", "/", &["a.b:"])),
        Err(Refusal::Host(HostError::EmptyPort))
    );
    assert_eq!(
        host(req(HTTP_11, "GET", "http://u:p@a.b/x", &["a.b"])),
        Err(Refusal::UserInfo)
    );
}

#[test]
fn requests_keep_their_query_and_options_star() {
    let r = req(Version::HTTP_11, "GET", "/a/./b?x=%2F..&y=/../", &["a.b"]);
    let c = request(&r, MergeSlashes).unwrap();
    assert_eq!(c.path, "/a/b");
    assert_eq!(c.query.as_deref(), Some("x=%2F..&y=/../"));
    assert_eq!(c.path_and_query(), "/a/b?x=%2F..&y=/../");
    let star = req(Version::HTTP_11, "OPTIONS", "*", &["a.b"]);
    assert_eq!(request(&star, MergeSlashes).unwrap().path, "*");
    let get_star = req(Version::HTTP_11, "GET", "*", &["a.b"]);
    assert_eq!(
        request(&get_star, MergeSlashes),
        Err(Refusal::Path(PathError::NotOriginForm))
    );
    let encoded = req(Version::HTTP_11, "GET", "/a%2Fb", &["a.b"]);
    assert_eq!(
        request(&encoded, MergeSlashes),
        Err(Refusal::Path(PathError::EncodedSlash))
    );
    let control = req(Version::HTTP_11, "GET", "/a?b=%zz", &["a.b"]);
    assert!(
        request(&control, MergeSlashes).is_ok(),
        "queries are not decoded"
    );
    assert_eq!(check_query(b"a=1\x01"), Err(Refusal::Query));
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap deterministic sweep here; the fuzz target does the real work.
    let alphabet: &[u8] = b"/.%2eEfF5cC\\?#\0 a:[]@\xff";
    let mut seed = 0x9e37_79b9_u32;
    for _ in 0..20_000 {
        let len = (seed % 12) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                alphabet[(seed >> 16) as usize % alphabet.len()]
            })
            .collect();
        for level in [Raw, Base, MergeSlashes, DecodeAndMergeSlashes] {
            if let Ok(p) = path::canonicalize(&bytes, level) {
                assert_eq!(path::canonicalize(p.as_bytes(), level), Ok(p.clone()));
            }
        }
        let _ = host::canonicalize(&bytes);
    }
}
