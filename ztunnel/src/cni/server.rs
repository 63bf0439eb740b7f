//! ztunnel's end of the CNI socket: records the pod, lets enrolment capture it, and answers only
//! once the capture is done (or has failed, or does not apply).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use super::{Command, Reply, Request, pod_key};
use crate::context::Context;
use crate::enrol::{CaptureStatus, StatusMap};
use crate::netns::NsId;
use crate::registry::{CniPod, Registry};

/// How long an ADD may wait for the pod to appear in the mesh and be captured.
const CAPTURE_WAIT: Duration = Duration::from_secs(8);

/// Binds the socket at `path` (replacing a stale one); only root may use it.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the plugin forever.
pub async fn run(
    ctx: Arc<Context>,
    registry: Arc<Registry>,
    status: StatusMap,
    listener: UnixListener,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(ctx.clone(), registry.clone(), status.clone(), stream));
            }
            Err(e) => {
                warn!(error = %e, "CNI socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(ctx: Arc<Context>, registry: Arc<Registry>, status: StatusMap, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(read).read_line(&mut line).await.is_err() {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(&ctx, &registry, &status, request).await,
        Err(e) => Reply {
            captured: false,
            error: Some(format!("malformed request: {e}")),
        },
    };
    let mut out = serde_json::to_string(&reply).unwrap_or_default();
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

async fn handle(ctx: &Context, registry: &Registry, status: &StatusMap, request: Request) -> Reply {
    let key = pod_key(&request.namespace, &request.name);
    match request.command {
        Command::Add => {
            registry.insert(
                key.clone(),
                CniPod {
                    netns: request.netns.clone(),
                    ips: request.ips.clone(),
                },
            );
            let reply = match NsId::of(&request.netns) {
                Ok(netns) => await_capture(ctx, status, &key, netns).await,
                Err(e) => Reply {
                    captured: false,
                    error: Some(format!("cannot open {}: {e}", request.netns.display())),
                },
            };
            info!(pod = %key, netns = %request.netns.display(), captured = reply.captured, error = ?reply.error, "CNI ADD");
            reply
        }
        Command::Del => {
            registry.remove(&key);
            let reply = await_release(ctx, registry, status, &key).await;
            info!(pod = %key, released = reply.error.is_none(), error = ?reply.error, "CNI DEL");
            reply
        }
    }
}

/// Waits until enrolment has taken the pod's capture down, if it had one, and recorded the pod as
/// released (a pod of the mesh; its capture may also have gone for another reason just before, in
/// which case the release is recorded by the next round).
async fn await_release(ctx: &Context, registry: &Registry, status: &StatusMap, key: &str) -> Reply {
    let deadline = tokio::time::Instant::now() + CAPTURE_WAIT;
    let recorded = || {
        let state = ctx.state();
        let Some(w) = state
            .workloads_on_node(&ctx.node)
            .into_iter()
            .find(|w| w.key() == key && w.enrolled)
        else {
            return true;
        };
        matches!(
            status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&*w.uid),
            Some(CaptureStatus::Released)
        )
    };
    while registry.is_captured(key) || !recorded() {
        if tokio::time::Instant::now() > deadline {
            return Reply {
                captured: true,
                error: Some(format!(
                    "{key} is still captured, or its release not yet recorded"
                )),
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Reply {
        captured: false,
        error: None,
    }
}

/// Waits until enrolment has decided about the pod `key` of this node: captured in `netns` (a
/// capture of an earlier sandbox of the same pod does not count), not to be captured, or failed.
async fn await_capture(ctx: &Context, status: &StatusMap, key: &str, netns: NsId) -> Reply {
    let deadline = tokio::time::Instant::now() + CAPTURE_WAIT;
    loop {
        let state = ctx.state();
        let workload = state
            .workloads_on_node(&ctx.node)
            .into_iter()
            .find(|w| w.key() == key);
        match workload {
            Some(w) if !w.enrolled => {
                return Reply {
                    captured: false,
                    error: None,
                };
            }
            Some(w) => match status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&*w.uid)
            {
                Some(CaptureStatus::Captured { netns: captured }) if *captured == netns => {
                    return Reply {
                        captured: true,
                        error: None,
                    };
                }
                Some(CaptureStatus::Failed { reason })
                    if tokio::time::Instant::now() > deadline =>
                {
                    return Reply {
                        captured: false,
                        error: Some(reason.clone()),
                    };
                }
                _ => {}
            },
            None => {}
        }
        if tokio::time::Instant::now() > deadline {
            return Reply {
                captured: false,
                error: Some(format!(
                    "{key} did not appear in the mesh on node {} in time",
                    ctx.node
                )),
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
