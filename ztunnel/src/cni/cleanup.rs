//! Taking `veil-cni` off the node when veil is uninstalled — and only then.
//!
//! A ztunnel that stops for an upgrade must leave the plugin chained: pods of ambient namespaces
//! then fail to start until the new ztunnel is up, instead of starting uncaptured. A ztunnel that
//! stops because veil is being uninstalled must remove it, or every such pod would keep failing.
//! The difference is whether ztunnel's DaemonSet still exists, and only a positive answer counts:
//! the API server said 404 NotFound for it, or returned it with a `deletionTimestamp`. Anything
//! else — 401/403 (an expired token, an RBAC change, a hostile proxy), 5xx, a timeout, no
//! connection — keeps the plugin: stuck pods are recoverable, pods started in plaintext are not.
//!
//! The question is asked by `veil-cni-cleanup`, which ztunnel runs as it stops: the Kubernetes
//! client lives in that binary, not in ztunnel's nor in the plugin's.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::{Api, Client};
use tracing::{error, info, warn};

use super::install;

/// What a stopping ztunnel learns about its DaemonSet.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    /// The DaemonSet is there: ztunnel is being restarted or upgraded.
    Staying,
    /// The API server said the DaemonSet is gone (404) or being deleted (`deletionTimestamp`).
    Uninstalled,
    /// The API could not tell (refused the question, failed, or did not answer in time).
    Unknown(String),
}

/// How long a stopping ztunnel waits for the API server's answer before keeping the plugin.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the API about DaemonSet `name` in `namespace`, waiting at most `timeout`.
pub async fn fate(client: Client, namespace: &str, name: &str, timeout: Duration) -> Fate {
    let api: Api<DaemonSet> = Api::namespaced(client, namespace);
    let answer = match tokio::time::timeout(timeout, api.get_opt(name)).await {
        Ok(answer) => answer,
        Err(_) => {
            return Fate::Unknown(format!("no answer from the API server within {timeout:?}"));
        }
    };
    match answer {
        Ok(Some(ds)) if ds.metadata.deletion_timestamp.is_none() => Fate::Staying,
        // `get_opt` reads 404 NotFound as `None`: the DaemonSet positively does not exist.
        Ok(_) => Fate::Uninstalled,
        // A refusal says something about our credentials, nothing about the DaemonSet.
        Err(kube::Error::Api(status)) if matches!(status.code, 401 | 403) => {
            Fate::Unknown(format!(
                "the API server refused to say ({} {}): credentials revoked or RBAC changed, not proof of an uninstall",
                status.code, status.reason
            ))
        }
        Err(e) => Fate::Unknown(e.to_string()),
    }
}

/// The binary that asks and removes (beside ztunnel's own).
pub const BINARY: &str = "veil-cni-cleanup";

/// [`BINARY`]'s exit status when the API could not tell (the plugin is kept).
pub const EXIT_UNKNOWN: i32 = 3;

/// How long a stopping ztunnel waits for [`BINARY`] to decide and remove the plugin.
pub const DECISION_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the plugin was installed, and what identifies the DaemonSet.
#[derive(Clone, Debug)]
pub struct Cleanup {
    /// The node's CNI bin directory, as mounted.
    pub bin_dir: PathBuf,
    /// The node's CNI configuration directory, as mounted.
    pub conf_dir: PathBuf,
    /// ztunnel's namespace.
    pub namespace: String,
    /// ztunnel's DaemonSet.
    pub daemonset: String,
    /// The ambient-namespaces file, removed with the plugin.
    pub ambient_file: Option<PathBuf>,
}

/// What [`Cleanup::remove_if_uninstalled`] did.
#[derive(Debug)]
pub enum Outcome {
    /// veil is being uninstalled: the plugin was taken out of these files (and its binary removed).
    Removed(Vec<PathBuf>),
    /// The DaemonSet is there (a restart or an upgrade): the plugin stays.
    Staying,
    /// The API could not tell: the plugin stays.
    Unknown(String),
}

impl Cleanup {
    /// Removes the plugin if veil is being uninstalled: [`BINARY`]'s side (it holds the Kubernetes
    /// client; ztunnel's binary does not).
    pub async fn remove_if_uninstalled(&self) -> Result<Outcome, install::InstallError> {
        let fate = match Client::try_default().await {
            Ok(client) => fate(client, &self.namespace, &self.daemonset, API_TIMEOUT).await,
            Err(e) => Fate::Unknown(format!("no Kubernetes API credentials: {e}")),
        };
        match fate {
            Fate::Staying => return Ok(Outcome::Staying),
            Fate::Unknown(reason) => return Ok(Outcome::Unknown(reason)),
            Fate::Uninstalled => {}
        }
        let changed = install::uninstall(&self.bin_dir, &self.conf_dir)?;
        if let Some(file) = &self.ambient_file {
            let _ = std::fs::remove_file(file);
        }
        Ok(Outcome::Removed(changed))
    }

    /// The arguments that have [`BINARY`] run [`Self::remove_if_uninstalled`].
    pub fn args(&self) -> Vec<OsString> {
        let flag = |name: &str, value: &Path| {
            let mut arg = OsString::from(format!("--{name}="));
            arg.push(value);
            arg
        };
        let mut args = vec![
            OsString::from(format!("--daemonset={}/{}", self.namespace, self.daemonset)),
            flag("bin-dir", &self.bin_dir),
            flag("conf-dir", &self.conf_dir),
        ];
        if let Some(file) = &self.ambient_file {
            args.push(flag("ambient-file", file));
        }
        args
    }

    /// ztunnel's side: runs `binary` ([`BINARY`], beside ztunnel's own) to remove the plugin if veil
    /// is being uninstalled, waiting at most `timeout` (then it is killed).
    pub async fn ask(&self, binary: &Path, timeout: Duration) -> Answer {
        let mut command = tokio::process::Command::new(binary);
        command
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(timeout, command.output()).await {
            Err(_) => return Answer::Failed(format!("no decision within {timeout:?}")),
            Ok(Err(e)) => {
                return Answer::Failed(format!("could not run {}: {e}", binary.display()));
            }
            Ok(Ok(output)) => output,
        };
        let said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        match output.status.code() {
            Some(0) => Answer::Decided(said),
            Some(EXIT_UNKNOWN) => Answer::CouldNotTell(said),
            _ => Answer::Failed(format!("{} ({}): {said}", binary.display(), output.status)),
        }
    }

    /// When ztunnel stops: [`Self::ask`], within [`DECISION_TIMEOUT`], and says what came of it.
    /// Any failure keeps the plugin.
    pub async fn on_shutdown(&self, binary: &Path) {
        match self.ask(binary, DECISION_TIMEOUT).await {
            Answer::Decided(said) => info!(daemonset = %self.daemonset, "{said}"),
            Answer::CouldNotTell(said) => warn!(daemonset = %self.daemonset, "{said}"),
            Answer::Failed(why) => error!(
                daemonset = %self.daemonset,
                "{why}: keeping veil-cni installed (run `veil-cni uninstall` on the node if veil is being uninstalled)"
            ),
        }
    }
}

/// What [`Cleanup::ask`] learnt.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Removed, or kept because the DaemonSet remains: what was said.
    Decided(String),
    /// The API could not tell; the plugin was kept: what was said.
    CouldNotTell(String),
    /// No decision (it could not run, failed, or did not finish in time); the plugin was kept
    /// unless it had already been removed.
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_mesh::testing::fake_kube;

    const PATH: &str = "/apis/apps/v1/namespaces/veil-system/daemonsets/veil-ztunnel";

    fn answering(status: u16, body: impl Into<String>) -> Client {
        let body = body.into();
        fake_kube(move |method, path, _| {
            assert_eq!((method.as_str(), path), ("GET", PATH));
            Some((status, body.clone()))
        })
    }

    fn status(code: u16, reason: &str) -> String {
        format!(
            r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"{reason}","reason":"{reason}","code":{code}}}"#
        )
    }

    const LIVE: &str = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"veil-ztunnel","namespace":"veil-system"}}"#;
    const DELETING: &str = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"veil-ztunnel","namespace":"veil-system","deletionTimestamp":"2026-11-22T10:00:00Z"}}"#;

    async fn fate_of(client: Client) -> Fate {
        fate(client, "veil-system", "veil-ztunnel", API_TIMEOUT).await
    }

    /// Only positive evidence of an uninstall removes the plugin; every other answer keeps it.
    #[tokio::test]
    async fn removes_the_plugin_only_on_positive_evidence_of_an_uninstall() {
        let table: [(u16, String, bool); 9] = [
            (200, LIVE.to_owned(), false),
            (200, DELETING.to_owned(), true),
            (404, status(404, "NotFound"), true),
            (401, status(401, "Unauthorized"), false),
            (403, status(403, "Forbidden"), false),
            (429, status(429, "TooManyRequests"), false),
            (500, status(500, "InternalError"), false),
            (503, status(503, "ServiceUnavailable"), false),
            (200, "<html>captive portal</html>".to_owned(), false),
        ];
        for (code, body, uninstalled) in table {
            let got = fate_of(answering(code, body.clone())).await;
            assert_eq!(
                got == Fate::Uninstalled,
                uninstalled,
                "{code} {body}: {got:?}"
            );
        }
        assert_eq!(fate_of(answering(200, LIVE)).await, Fate::Staying);
    }

    #[tokio::test]
    async fn an_auth_refusal_is_reported_as_such() {
        let Fate::Unknown(reason) = fate_of(answering(403, status(403, "Forbidden"))).await else {
            panic!("a 403 must not decide");
        };
        assert!(
            reason.contains("403") && reason.contains("not proof"),
            "{reason}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_server_that_does_not_answer_keeps_the_plugin() {
        // The mock never answers a request it is not given a response for.
        let silent = fake_kube(|_, _, _| None);
        let got = fate(silent, "veil-system", "veil-ztunnel", API_TIMEOUT).await;
        assert!(
            matches!(got, Fate::Unknown(ref r) if r.contains("no answer")),
            "{got:?}"
        );
    }

    /// A stand-in for [`BINARY`]: a shell script `body` (`$DIR` is the test's directory).
    fn stand_in(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(BINARY);
        let text = format!("#!/bin/sh\nDIR='{}'\n{body}\n", dir.display());
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// [`Cleanup::ask`], again when the script was still open for writing in a child another
    /// test thread forked meanwhile ("Text file busy": only when tests share a process).
    async fn ask(c: &Cleanup, script: &Path, timeout: Duration) -> Answer {
        for _ in 0..20 {
            match c.ask(script, timeout).await {
                Answer::Failed(why) if why.contains("Text file busy") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                answer => return answer,
            }
        }
        panic!("{} stayed busy", script.display());
    }

    fn cleanup(dir: &Path) -> Cleanup {
        Cleanup {
            bin_dir: dir.join("cni bin"),
            conf_dir: dir.join("-net.d"),
            namespace: "veil-system".into(),
            daemonset: "ztunnel".into(),
            ambient_file: Some(dir.join("ambient.json")),
        }
    }

    #[tokio::test]
    async fn ztunnel_passes_its_flags_and_tells_the_answers_apart() {
        let dir = tempfile::tempdir().unwrap();
        let c = cleanup(dir.path());
        let said = stand_in(
            dir.path(),
            r#"printf '%s\n' "$@" > "$DIR/args"; echo 'DaemonSet veil-system/ztunnel remains' >&2"#,
        );
        assert_eq!(
            ask(&c, &said, Duration::from_secs(10)).await,
            Answer::Decided("DaemonSet veil-system/ztunnel remains".into())
        );
        // One argument each, whatever the paths hold (a space, a leading '-').
        let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
        let d = dir.path().display();
        assert_eq!(
            args.lines().collect::<Vec<_>>(),
            [
                "--daemonset=veil-system/ztunnel".to_owned(),
                format!("--bin-dir={d}/cni bin"),
                format!("--conf-dir={d}/-net.d"),
                format!("--ambient-file={d}/ambient.json"),
            ]
        );
        let unknown = stand_in(dir.path(), "echo 'cannot tell' >&2; exit 3");
        assert_eq!(
            ask(&c, &unknown, Duration::from_secs(10)).await,
            Answer::CouldNotTell("cannot tell".into())
        );
        let failed = stand_in(dir.path(), "echo 'permission denied' >&2; exit 1");
        assert!(
            matches!(ask(&c, &failed, Duration::from_secs(10)).await, Answer::Failed(why) if why.contains("permission denied")),
        );
        let missing = dir.path().join("nowhere");
        assert!(
            matches!(ask(&c, &missing, Duration::from_secs(10)).await, Answer::Failed(why) if why.contains("could not run")),
        );
    }

    #[tokio::test]
    async fn a_cleanup_that_hangs_is_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let hangs = stand_in(dir.path(), r#"echo $$ > "$DIR/pid"; exec sleep 60"#);
        let started = tokio::time::Instant::now();
        let answer = ask(&cleanup(dir.path()), &hangs, Duration::from_millis(500)).await;
        assert!(
            matches!(&answer, Answer::Failed(why) if why.contains("no decision within")),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        // Killed, not left running (a zombie until reaped is dead enough).
        let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
        let running = || {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .is_ok_and(|stat| !stat.contains(") Z "))
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!running(), "the hung cleanup still runs");
    }
}
