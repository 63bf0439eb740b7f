//! Processes running inside a namespace, their output collected in a file, killed on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context as _, bail};

/// The file, next to the logs, that lists the processes a run started.
pub const PID_FILE: &str = "pids";

/// A process in a namespace.
#[derive(Debug)]
pub struct Proc {
    /// A name for messages.
    pub name: String,
    child: Child,
    log: PathBuf,
    /// The cgroup it was started in, removed once it has exited.
    cgroup: Option<PathBuf>,
}

/// Where cgroup v2 (the unified hierarchy) is mounted, if it is.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        mount.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// A new, empty cgroup (v2) of its own for a process (the hierarchy is mounted first where it is
/// not: a node with cgroup v1 has it too, without controllers). Needs root, as every mesh does.
pub fn new_cgroup(name: &str) -> anyhow::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mount = match cgroup2_mount() {
        Some(mount) => mount,
        None => {
            let dir = PathBuf::from("/run/veil-e2e-cgroup2");
            std::fs::create_dir_all(&dir)?;
            let status = Command::new("mount")
                .args(["-t", "cgroup2", "cgroup2"])
                .arg(&dir)
                .status()?;
            anyhow::ensure!(status.success(), "mounting cgroup2 at {}", dir.display());
            dir
        }
    };
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = mount.join(format!("veil-e2e-{}-{name}-{n}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating the cgroup {}", dir.display()))?;
    Ok(dir)
}

impl Proc {
    /// Starts `argv` in `netns` (`None`: ztunnel's own, the root namespace) with `env`, stdout and
    /// stderr going to `log`.
    pub fn spawn(
        name: &str,
        netns: Option<&str>,
        argv: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn_in(name, netns, argv, env, log, None)
    }

    /// [`Proc::spawn`], the process moved into `cgroup` (a directory of the cgroup v2 hierarchy,
    /// removed once it has exited) before it runs `argv`.
    pub fn spawn_in(
        name: &str,
        netns: Option<&str>,
        argv: &[&str],
        env: &[(&str, &str)],
        log: &Path,
        cgroup: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut full: Vec<String> = Vec::new();
        if let Some(dir) = &cgroup {
            // The shell moves itself (the built-in echo's `0`), then becomes the process: it
            // opens no socket before it is in the cgroup.
            let procs = dir.join("cgroup.procs");
            full.extend([
                "sh".into(),
                "-c".into(),
                r#"echo 0 > "$0" && exec "$@""#.into(),
            ]);
            full.push(procs.to_string_lossy().into_owned());
        }
        if let Some(ns) = netns {
            full.extend(["ip".into(), "netns".into(), "exec".into(), ns.into()]);
        }
        full.extend(argv.iter().map(|a| (*a).to_owned()));
        let mut cmd = Command::new(&full[0]);
        cmd.args(&full[1..]);
        let child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {argv:?}"))?;
        // Recorded so that a later run can clean up after this one if it crashes.
        if let Some(dir) = log.parent() {
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(PID_FILE))
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, format!("{}\n", child.id()).as_bytes())
                });
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            cgroup,
        })
    }

    /// Its process id (a process started in a namespace is `ip netns exec`, which becomes it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time it has used so far (user + system), from `/proc`.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // Linux reports in USER_HZ, 100 on every architecture it supports.
        Some(ticks as f64 / 100.0)
    }

    /// Its resident memory, in bytes, from `/proc`: all of it (`VmRSS`, which counts the pages of
    /// its executable that are mapped in, shared with any other process running it).
    pub fn rss_bytes(&self) -> Option<u64> {
        self.status_kib("VmRSS:").map(|kib| kib * 1024)
    }

    /// The most resident memory it has had, in bytes (`VmHWM` in `/proc`), since it started or
    /// since [`Proc::reset_peak_rss`].
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        self.status_kib("VmHWM:").map(|kib| kib * 1024)
    }

    /// Starts its peak resident memory over from what it holds now (Linux 4.0 and later: `5`
    /// written to `/proc/<pid>/clear_refs`, which only its owner or root may write), so that
    /// [`Proc::peak_rss_bytes`] reads the peak of what runs next.
    pub fn reset_peak_rss(&self) -> std::io::Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")
    }

    /// Its private anonymous resident memory (heap, stacks), in bytes, from `/proc`.
    pub fn rss_anon_bytes(&self) -> Option<u64> {
        self.status_kib("RssAnon:").map(|kib| kib * 1024)
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// Everything it has written so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its output contains `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGINT (a clean stop for tcpdump) and waits for the exit.
    pub fn interrupt(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// Sends SIGTERM (a graceful stop) without waiting.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits up to `timeout` for it to exit; true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops it now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.cgroup {
            // Its children (ztunnel's `iptables` runs) may take a moment to be gone too.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
