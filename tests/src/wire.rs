//! Captures of the inter-node link with tcpdump, to prove what crossed the wire.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::process::Proc;

/// A running capture of all TCP on the fabric bridge.
#[derive(Debug)]
pub struct Capture {
    proc: Proc,
    file: PathBuf,
}

/// What a finished capture holds.
#[derive(Debug)]
pub struct Captured {
    /// The raw pcap bytes.
    pub bytes: Vec<u8>,
    /// `tcpdump -nn -r` of it, one line per packet.
    pub summary: String,
}

impl Captured {
    /// Whether `needle` appears anywhere in the captured bytes (headers and payloads).
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// Packets to or from `port`.
    pub fn packets_on_port(&self, port: u16) -> usize {
        let tag = format!(".{port}");
        self.summary
            .lines()
            .filter(|l| l.contains(&format!("{tag}:")) || l.contains(&format!("{tag} >")))
            .count()
    }

    /// Packets sent from address `ip`.
    pub fn packets_from(&self, ip: impl std::fmt::Display) -> usize {
        // `… IP 10.20.0.2.43210 > 10.20.0.4.15008: …`: each address, then its port after a dot.
        let tag = format!(" IP {ip}.");
        self.summary.lines().filter(|l| l.contains(&tag)).count()
    }

    /// Packets sent from address `from` to address `to`.
    pub fn packets_between(
        &self,
        from: impl std::fmt::Display,
        to: impl std::fmt::Display,
    ) -> usize {
        let (src, dst) = (format!(" IP {from}."), format!(" > {to}."));
        self.summary
            .lines()
            .filter(|l| l.contains(&src) && l.contains(&dst))
            .count()
    }
}

impl Capture {
    /// Starts capturing TCP on interface `iface` of `netns` into `file`.
    pub fn start(netns: &str, iface: &str, file: &Path, log: &Path) -> anyhow::Result<Self> {
        Self::start_with(netns, iface, file, log, "tcp")
    }

    /// Starts capturing every IPv4 and IPv6 packet (UDP too) on `iface` of `netns` into `file`.
    pub fn start_ip(netns: &str, iface: &str, file: &Path, log: &Path) -> anyhow::Result<Self> {
        Self::start_with(netns, iface, file, log, "ip or ip6")
    }

    fn start_with(
        netns: &str,
        iface: &str,
        file: &Path,
        log: &Path,
        filter: &str,
    ) -> anyhow::Result<Self> {
        let file_arg = file.to_string_lossy().into_owned();
        let mut proc = Proc::spawn(
            "tcpdump",
            Some(netns),
            &[
                "tcpdump",
                "--immediate-mode",
                "-i",
                iface,
                "-U",
                "-s",
                "0",
                "-w",
                &file_arg,
                filter,
            ],
            &[],
            log,
        )?;
        proc.wait_for("listening on", Duration::from_secs(10))
            .context("tcpdump did not start (apt-get install tcpdump)")?;
        Ok(Self {
            proc,
            file: file.to_owned(),
        })
    }

    /// Stops the capture and reads it.
    pub fn finish(mut self) -> anyhow::Result<Captured> {
        self.proc.interrupt();
        let bytes = std::fs::read(&self.file)?;
        let out = Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(&self.file)
            .output()?;
        if !out.status.success() {
            bail!("tcpdump -r: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Captured {
            bytes,
            summary: String::from_utf8_lossy(&out.stdout).into_owned(),
        })
    }
}
