//! ztunnel's own cgroup (v2), which the capture rules match beside its socket mark.
//!
//! The mark alone is not a privilege boundary: since Linux 5.17 `SO_MARK` needs only
//! `CAP_NET_RAW`, which container runtimes grant by default, so an application in a pod could mark
//! its own sockets and step around capture. A socket belongs to the cgroup its creator was in, and
//! a pod cannot move its processes into ztunnel's: with the cgroup in the rule, a marked socket is
//! let through only if ztunnel opened it.
//!
//! The rule names the cgroup by the path `/proc/self/cgroup` shows (`/` in a container's own
//! cgroup namespace), which `iptables`, run by ztunnel in ztunnel's cgroup namespace, resolves
//! when the rule is loaded. ztunnel uses it only where it identifies ztunnel alone:
//! - not the root of the hierarchy without a cgroup namespace (every socket's cgroup descends from
//!   it; a node with cgroup v1 alone looks the same);
//! - in a cgroup namespace, a kernel that resolves the path there (6.1 and later; some older
//!   stable kernels carry the change, but are not told apart): an older one resolves `/` to the
//!   hierarchy's root, which would let every socket out;
//! - a cgroup holding ztunnel and its children only, with no cgroup below it (a cgroup shared
//!   with other containers, as a runtime's own with the `cgroupfs` driver, would let theirs out);
//! - and a rule naming it must load and match a socket ztunnel opens (checked in a throwaway
//!   network namespace: a kernel without the `cgroup` match, or one that does not match
//!   ztunnel's sockets, is found here rather than by every pod's capture failing or looping).
//!
//! Otherwise the rules keep the mark alone, as before, and ztunnel says so at start. Before Linux
//! 5.17 nothing is needed: a mark needs `CAP_NET_ADMIN`, with which a pod could as well remove the
//! rules in its namespace.

use std::path::{Path, PathBuf};

/// The inode of the initial cgroup namespace (`PROC_CGROUP_INIT_INO`, fixed by the kernel).
const INIT_CGROUP_NS: &str = "cgroup:[4026531835]";

/// The longest path iptables' `cgroup` match takes (its revision 2 buffer, less the final NUL).
const MAX_PATH: usize = 511;

/// ztunnel's cgroup path for the capture rules (`None`: not needed, the kernel is older than
/// 5.17), or why there is none that tells its sockets apart.
pub fn own() -> Result<Option<String>, String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
    // No cgroup namespaces in this kernel: the initial one, as far as paths go.
    let namespace = std::fs::read_link("/proc/self/ns/cgroup")
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_else(|_| INIT_CGROUP_NS.to_owned());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("reading the kernel's release: {e}"))?;
    let release = release.trim();
    if !at_least(release, (5, 17)) {
        return Ok(None);
    }
    let path = choose(&cgroups, namespace != INIT_CGROUP_NS, release)?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    let dir = directory(&mounts, &path).ok_or_else(|| {
        format!("ztunnel's cgroup {path} is not mounted where it can check who else is in it")
    })?;
    // A failure to run the tools, or a child of ztunnel's exiting while its cgroup is read, may
    // pass; a kernel that does not match, or a cgroup shared, will not.
    let mut tries = 0;
    loop {
        tries += 1;
        match alone(&dir).and_then(|()| matches_own_sockets(&path)) {
            Ok(()) => return Ok(Some(path)),
            Err(e) if tries == 3 => return Err(e),
            Err(e) => {
                tracing::info!(error = %e, "checking the cgroup match again");
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
    }
}

/// The decision, from `/proc/self/cgroup`, whether ztunnel is in a cgroup namespace of its own,
/// and the kernel's release.
fn choose(cgroups: &str, namespaced: bool, release: &str) -> Result<String, String> {
    let path = unified(cgroups).ok_or("ztunnel is in no cgroup v2 (the unified hierarchy)")?;
    check_path(path)?;
    if path == "/" && !namespaced {
        return Err(
            "ztunnel runs in the root cgroup, which every process descends from (a node with \
             cgroup v1 alone looks the same)"
                .into(),
        );
    }
    if namespaced && !at_least(release, (6, 1)) {
        return Err(format!(
            "kernel {release} may resolve a rule's cgroup path from the hierarchy's root rather \
             than from ztunnel's cgroup namespace (6.1 and later do not)"
        ));
    }
    Ok(path.to_owned())
}

/// The unified hierarchy's line (`0::/path`) of `/proc/self/cgroup`.
fn unified(cgroups: &str) -> Option<&str> {
    cgroups.lines().find_map(|l| l.strip_prefix("0::"))
}

/// A path `iptables` takes as one word and the kernel as one cgroup: absolute, no `..` (a path
/// outside ztunnel's namespace shows as one), no character that would need quoting.
fn check_path(path: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || "/._-:@+=,".contains(c);
    if !path.starts_with('/')
        || path.len() > MAX_PATH
        || !path.chars().all(fine)
        || Path::new(path)
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("ztunnel's cgroup path {path:?} cannot be matched"));
    }
    Ok(())
}

/// Whether this kernel release (`6.1.0-18-amd64`) is `version` or later: from 5.17 a socket mark
/// needs only `CAP_NET_RAW` (before, `CAP_NET_ADMIN`, with which a pod could as well remove its
/// rules: the mark is enough there); from 6.1 `cgroup` match paths are resolved in the caller's
/// cgroup namespace.
fn at_least(release: &str, version: (u32, u32)) -> bool {
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next(), numbers.next()) {
        (Some(Some(major)), Some(Some(minor))) => (major, minor) >= version,
        (Some(Some(major)), _) => major > version.0,
        _ => false,
    }
}

/// Where the cgroup at `path` is in this filesystem, from `/proc/self/mountinfo`: under a
/// cgroup2 mount whose root (the hierarchy's part it shows) holds it.
fn directory(mountinfo: &str, path: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = mount.split_whitespace().skip(3);
        let (root, point) = (fields.next()?, fields.next()?);
        let below = if root == "/" {
            path.strip_prefix('/')?
        } else if path == root {
            ""
        } else {
            path.strip_prefix(root)?.strip_prefix('/')?
        };
        Some(Path::new(point).join(below))
    })
}

/// Whether the cgroup at `dir` holds ztunnel and its children only, and no cgroup below it.
fn alone(dir: &Path) -> Result<(), String> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map_err(|e| format!("reading {}: {e}", dir.join("cgroup.procs").display()))?;
    let me = std::process::id();
    for pid in procs.lines() {
        // `0`: a process this one cannot see (another PID namespace), so not one of its own.
        let pid: u32 = pid.trim().parse().unwrap_or(0);
        if pid != me && parent(pid) != Some(me) {
            return Err(format!(
                "ztunnel's cgroup {} also holds process {pid}: its sockets would pass as ztunnel's",
                dir.display()
            ));
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    if let Some(child) = entries.flatten().find(|e| e.path().is_dir()) {
        return Err(format!(
            "ztunnel's cgroup has a cgroup below it ({}), whose sockets would pass as ztunnel's",
            child.path().display()
        ));
    }
    Ok(())
}

/// The parent of process `pid`, from `/proc`.
fn parent(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Whether a rule matching `path` loads for both families and matches a socket this process opens:
/// in a network namespace of its own, which nothing else sees and which goes away with it.
fn matches_own_sockets(path: &str) -> Result<(), String> {
    use crate::capture::{Family, run_in};
    // A thread's own network namespace, and a socket opened in it; the thread ends, the open
    // file keeps the namespace.
    let (netns, socket) = std::thread::spawn(|| -> std::io::Result<_> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        let netns = std::fs::File::open("/proc/thread-self/ns/net")?;
        Ok((netns, std::net::UdpSocket::bind("0.0.0.0:0")?))
    })
    .join()
    .map_err(|_| "the namespace for checking the cgroup match panicked".to_owned())?
    .map_err(|e| format!("a namespace for checking the cgroup match: {e}"))?;
    // `nsenter` opens it as this process's descriptor (its own `self` is another process).
    let at = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        std::os::fd::AsRawFd::as_raw_fd(&netns)
    ));
    let check = |what: &str, r: Result<String, crate::capture::CaptureError>| {
        r.map(drop)
            .map_err(|e| format!("checking the cgroup match ({what}): {e}"))
    };
    check(
        "loopback",
        run_in(&at, "ip", &["link", "set", "lo", "up"], None),
    )?;
    // Before any rule: a datagram goes out (so that a refusal below is the rule's).
    socket
        .send_to(b"veil", "127.0.0.1:9")
        .map_err(|e| format!("checking the cgroup match: sending before the rule: {e}"))?;
    let rule = format!(
        "*filter\n:VEIL_CGROUP_CHECK - [0:0]\n-A VEIL_CGROUP_CHECK -m mark --mark {:#x}/0xfff -m cgroup --path {path} -j RETURN\n-I OUTPUT 1 -p udp -m cgroup --path {path} -j DROP\nCOMMIT\n",
        crate::netns::SOCKET_MARK
    );
    for family in Family::ALL {
        check("loading", run_in(&at, family.restore(), &[], Some(&rule)))?;
    }
    // Dropped in `OUTPUT`, a datagram of this process's is refused to the sender (EPERM): the
    // rule matched its socket.
    match socket.send_to(b"veil", "127.0.0.1:9") {
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => Ok(()),
        Ok(_) => Err("a rule naming ztunnel's cgroup does not match ztunnel's own socket".into()),
        Err(e) => Err(format!("checking the cgroup match: sending: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "9:name=systemd:/\n4:memory:/a/b\n1:cpu:/\n0::/veil/ztunnel-1\n";

    #[test]
    fn the_unified_line_is_the_path() {
        assert_eq!(
            choose(HYBRID, false, "6.1.0-18-amd64").unwrap(),
            "/veil/ztunnel-1"
        );
        let k8s = "0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab12.scope\n";
        assert_eq!(
            choose(k8s, false, "5.15.0").unwrap(),
            "/kubepods.slice/kubepods-pod1.slice/cri-containerd-ab12.scope"
        );
    }

    #[test]
    fn a_namespaced_root_is_its_own_cgroup_on_recent_kernels_only() {
        assert_eq!(choose("0::/\n", true, "6.18.44").unwrap(), "/");
        assert_eq!(choose("0::/\n", true, "6.1.0-18-amd64").unwrap(), "/");
        for old in ["6.0.19", "5.19.17"] {
            let err = choose("0::/\n", true, old).unwrap_err();
            assert!(err.contains(old), "{err}");
        }
    }

    #[test]
    fn the_real_root_tells_nothing_apart() {
        let err = choose("0::/\n", false, "6.18.44").unwrap_err();
        assert!(err.contains("root cgroup"), "{err}");
        // cgroup v1 alone: no unified line at all, or `/` for every process.
        assert!(choose("4:memory:/a\n1:cpu:/\n", false, "6.1").is_err());
    }

    #[test]
    fn paths_that_would_need_quoting_or_leave_the_namespace_are_refused() {
        for bad in [
            "0::/a b\n",
            "0::/a\"b\n",
            "0::/../../kubepods\n",
            "0::relative\n",
            "0::/a\\b\n",
        ] {
            assert!(choose(bad, false, "6.1").is_err(), "{bad:?}");
        }
        let long = format!("0::/{}\n", "a".repeat(MAX_PATH));
        assert!(choose(&long, false, "6.1").is_err());
        let longest = format!("0::/{}\n", "a".repeat(MAX_PATH - 1));
        assert!(choose(&longest, false, "6.1").is_ok());
    }

    #[test]
    fn kernel_releases() {
        let ns = (6, 1);
        assert!(at_least("6.1.0", ns));
        assert!(at_least("6.18.44-fc", ns));
        assert!(at_least("10.2", ns));
        assert!(at_least("7", ns));
        assert!(!at_least("6.0.19", ns));
        assert!(!at_least("5.19.0-rc1", ns));
        assert!(!at_least("4.18.0-553.el8_10.x86_64", ns));
        assert!(!at_least("garbage", ns));
        assert!(at_least("5.17.0", (5, 17)));
        assert!(!at_least("5.15.0-91-generic", (5, 17)));
    }

    #[test]
    fn the_cgroup_is_found_under_the_mount_that_shows_it() {
        // A container's own mount (root `/` in its namespace), and the node's view of a hybrid
        // hierarchy.
        let container = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n";
        assert_eq!(
            directory(container, "/"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let node = "22 1 0:5 / /proc rw - proc proc rw\n\
                    31 24 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            directory(node, "/veil/ztunnel-1"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/veil/ztunnel-1"))
        );
        // A mount of part of the hierarchy holds only what is under its root.
        let part = "31 24 0:27 /kubepods /mnt/k rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            directory(part, "/kubepods/pod1"),
            Some(PathBuf::from("/mnt/k/pod1"))
        );
        assert_eq!(directory(part, "/kubepods2"), None);
        assert_eq!(directory(part, "/system.slice"), None);
        // Mounted from outside the namespace (`/..`): not found.
        let outside = "31 24 0:27 /.. /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(directory(outside, "/"), None);
        assert_eq!(directory("", "/"), None);
    }

    #[test]
    fn a_rule_naming_this_process_cgroup_matches_its_socket_and_another_does_not() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root (a network namespace and iptables)");
            return;
        }
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = unified(&cgroups).expect("in a cgroup v2");
        matches_own_sockets(own).unwrap();
        // A cgroup that holds none of this process's sockets: the rule loads, matches nothing.
        let Some(mount) = directory(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
            own,
        ) else {
            eprintln!("skipped the second half: the hierarchy is not mounted here");
            return;
        };
        let other = mount.join(format!("veil-cgroup-test-{}", std::process::id()));
        std::fs::create_dir(&other).unwrap();
        let name = format!(
            "{}/{}",
            own.trim_end_matches('/'),
            other.file_name().unwrap().to_str().unwrap()
        );
        let result = matches_own_sockets(&name);
        std::fs::remove_dir(&other).unwrap();
        let err = result.unwrap_err();
        assert!(err.contains("does not match ztunnel's own socket"), "{err}");
    }

    #[test]
    fn a_cgroup_shared_with_other_processes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        std::fs::write(dir.path().join("cgroup.procs"), format!("{me}\n")).unwrap();
        alone(dir.path()).unwrap();
        // A child of this process is its own (ztunnel's `iptables` runs).
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        std::fs::write(
            dir.path().join("cgroup.procs"),
            format!("{me}\n{}\n", child.id()),
        )
        .unwrap();
        alone(dir.path()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        // Another process (pid 1), or one this process cannot see (0).
        for other in ["1", "0"] {
            std::fs::write(dir.path().join("cgroup.procs"), format!("{me}\n{other}\n")).unwrap();
            assert!(alone(dir.path()).is_err(), "{other}");
        }
        // A cgroup below it.
        std::fs::write(dir.path().join("cgroup.procs"), format!("{me}\n")).unwrap();
        std::fs::create_dir(dir.path().join("pod")).unwrap();
        assert!(alone(dir.path()).unwrap_err().contains("below it"));
    }
}
