//! Upgrades without a refused or cut connection: one ztunnel hands its pods' listening sockets to
//! the next.
//!
//! During a DaemonSet rollout (`maxSurge`), a node runs the old and the new ztunnel side by side.
//! The new one, before it binds anything, asks every predecessor listening in the handover
//! directory for its pods: each pod's network namespace and its listening sockets, passed as file
//! descriptors (`SCM_RIGHTS` over a `SOCK_SEQPACKET` Unix socket, one message per pod). Both
//! processes then accept from the *same* sockets: a connection waits in the one accept queue until
//! one of them takes it, so none is refused while they change places, and none is lost when the
//! old one stops accepting (no listener is ever closed while the other still relies on it, as two
//! `SO_REUSEPORT` listeners would be — and `SO_REUSEPORT` would also let a root process in the pod
//! join the group). The old one gives up its admin ports and the CNI socket at the same moment, and
//! stops enrolling: from then on the new one owns the node. On SIGTERM the old one stops accepting,
//! tells its HBONE peers to open new connections elsewhere (GOAWAY), and serves what it has until
//! it ends or the drain period passes.
//!
//! The old one keeps its end of the conversation open until it exits, so the new one knows when it
//! is gone: until then the old one may open sockets in the pods it handed over (it still accepts
//! and connects), and the pods' capture rules let a marked socket out from either's cgroup
//! ([`crate::capture::OwnSockets`]); then from the new one's only. With its last message the old
//! one passes on its own connections to ztunnels before it that still run, so a chain of upgrades
//! waits for all of them. A predecessor that does not say it keeps the connection (a version
//! before this), or whose handover failed, is taken to live as long as this ztunnel.
//!
//! The socket is only reachable by root on the node (mode 0600, and the peer's credentials are
//! checked): whoever holds these descriptors can accept the pods' connections.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
    sockopt,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::capture::{Family, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT};
use crate::netns::NsId;
use veil_mesh::hbone::HBONE_PORT;

/// The largest message: one pod's header (a uid and a path).
const MAX_MESSAGE: usize = 64 * 1024;
/// The most descriptors one message carries: the namespace and three listeners per family.
const MAX_FDS: usize = 1 + 3 * Family::ALL.len();
/// How long either side waits for the other's next message, or to send one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a successor gives one predecessor for the whole handover.
const HANDOVER_DEADLINE: Duration = Duration::from_secs(60);

/// What one captured pod holds that its successor needs: its namespace and its listeners, in the
/// order outbound, HBONE, plaintext inbound, per family.
#[derive(Debug)]
pub struct Handoff {
    /// Where the namespace was opened from (for logs and comparisons by path).
    pub netns_path: PathBuf,
    /// The pod's network namespace.
    pub netns: OwnedFd,
    /// The listening sockets, per family present in the pod.
    pub listeners: Vec<(Family, [OwnedFd; 3])>,
}

impl Handoff {
    /// Another handle on the same namespace and sockets.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for (family, fds) in &self.listeners {
            let [a, b, c] = fds;
            listeners.push((*family, [a.try_clone()?, b.try_clone()?, c.try_clone()?]));
        }
        Ok(Self {
            netns_path: self.netns_path.clone(),
            netns: self.netns.try_clone()?,
            listeners,
        })
    }

    /// The namespace, as a file.
    pub fn netns_file(&self) -> std::io::Result<File> {
        Ok(File::from(self.netns.try_clone()?))
    }

    /// The namespace's identity.
    pub fn netns_id(&self) -> std::io::Result<NsId> {
        NsId::of_file(&File::from(self.netns.try_clone()?))
    }

    /// The listeners of `family`, ready for tokio (outbound, HBONE, plaintext).
    pub fn tokio_listeners(
        &self,
        family: Family,
    ) -> std::io::Result<Option<[tokio::net::TcpListener; 3]>> {
        let Some((_, fds)) = self.listeners.iter().find(|(f, _)| *f == family) else {
            return Ok(None);
        };
        let convert = |fd: &OwnedFd| -> std::io::Result<tokio::net::TcpListener> {
            let std = TcpListener::from(fd.try_clone()?);
            std.set_nonblocking(true)?;
            // Accepted sockets take TCP_NODELAY from their listener (see `crate::netns`): set
            // here too rather than trusted to a predecessor (every veil build has set it so far).
            sockopt::set_tcp_nodelay(&std, true)?;
            tokio::net::TcpListener::from_std(std)
        };
        Ok(Some([
            convert(&fds[0])?,
            convert(&fds[1])?,
            convert(&fds[2])?,
        ]))
    }
}

/// The pods a ztunnel holds, by uid: what it would hand over now.
pub type Held = Arc<Mutex<HashMap<String, Handoff>>>;

/// The pods handed over by predecessors, by uid, until enrolment takes them.
pub type Inherited = Arc<Mutex<HashMap<String, Handoff>>>;

/// The pods in `map` (a [`Held`] or an [`Inherited`]), whatever a panicking holder left.
pub fn pods(map: &Held) -> std::sync::MutexGuard<'_, HashMap<String, Handoff>> {
    lock(map)
}

/// The header of one message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    /// One pod; its descriptors come with it.
    Pod {
        uid: String,
        netns_path: PathBuf,
        /// `v4` / `v6`, in the order of the descriptors.
        families: Vec<String>,
    },
    /// The end: `pods` pod messages were sent. `stays`: the sender keeps this connection open
    /// until it exits (absent from older versions: `false`). Its descriptors, if any: the sender's
    /// own connections to its predecessors still running, whose ends close when they exit.
    Done {
        pods: usize,
        #[serde(default)]
        stays: bool,
        /// How many ztunnels before the sender it counts as running for good (they do not say
        /// when they exit).
        #[serde(default)]
        forever: usize,
    },
    /// The successor's answer to `Done`: it holds `pods` of them now (those it found valid).
    Taken { pods: usize },
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

fn family_named(name: &str) -> Option<Family> {
    match name {
        "v4" => Some(Family::V4),
        "v6" => Some(Family::V6),
        _ => None,
    }
}

/// Why a handover failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The predecessor sent something this ztunnel does not accept.
    #[error("invalid handover message: {0}")]
    Invalid(String),
}

fn io(what: &'static str) -> impl FnOnce(Errno) -> HandoverError {
    move |e| HandoverError::Io {
        what,
        source: e.into(),
    }
}

fn seqpacket() -> Result<OwnedFd, HandoverError> {
    net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io("creating a handover socket"))
}

/// Sending and receiving on `fd` wait at most [`ANSWER_TIMEOUT`].
fn bound_waits(fd: &OwnedFd) -> Result<(), Errno> {
    for kind in [sockopt::Timeout::Recv, sockopt::Timeout::Send] {
        sockopt::set_socket_timeout(fd, kind, Some(ANSWER_TIMEOUT))?;
    }
    Ok(())
}

fn unix_addr(path: &Path) -> Result<SocketAddrUnix, HandoverError> {
    SocketAddrUnix::new(path).map_err(io("naming the handover socket"))
}

/// Sends `message` with `fds`.
fn send(fd: &OwnedFd, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), HandoverError> {
    let bytes = serde_json::to_vec(message).map_err(|e| HandoverError::Invalid(e.to_string()))?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(HandoverError::Invalid(format!(
            "{} descriptors in one message",
            fds.len()
        )));
    }
    net::sendmsg(
        fd,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(io("sending to the successor"))?;
    Ok(())
}

/// Receives one message and the descriptors that came with it.
fn receive(fd: &OwnedFd) -> Result<(Message, Vec<OwnedFd>), HandoverError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = net::recvmsg(
        fd,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(io("receiving from the predecessor"))?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if received
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err(HandoverError::Invalid(
            "message or descriptors truncated".into(),
        ));
    }
    if received.bytes == 0 {
        return Err(HandoverError::Invalid(
            "the predecessor closed the connection before it was done".into(),
        ));
    }
    let message = serde_json::from_slice(&buf[..received.bytes])
        .map_err(|e| HandoverError::Invalid(format!("header: {e}")))?;
    Ok((message, fds))
}

/// Checks that `fd` is a listening TCP socket of `family` on `port`.
fn check_listener(fd: &OwnedFd, family: Family, port: u16) -> Result<(), HandoverError> {
    let listening = sockopt::socket_acceptconn(fd)
        .map_err(|e| HandoverError::Invalid(format!("descriptor is not a socket: {e}")))?;
    let kind = sockopt::socket_type(fd)
        .map_err(|e| HandoverError::Invalid(format!("descriptor is not a socket: {e}")))?;
    let local: SocketAddr = TcpListener::from(
        fd.try_clone()
            .map_err(|e| HandoverError::Invalid(e.to_string()))?,
    )
    .local_addr()
    .map_err(|e| HandoverError::Invalid(format!("descriptor has no TCP address: {e}")))?;
    if !listening || kind != SocketType::STREAM {
        return Err(HandoverError::Invalid(
            "descriptor is not a listening TCP socket".into(),
        ));
    }
    if local.is_ipv6() != (family == Family::V6) || local.port() != port {
        return Err(HandoverError::Invalid(format!(
            "listener on {local}, expected {} port {port}",
            family_name(family)
        )));
    }
    Ok(())
}

/// Builds a pod's handoff from a received message, checking every descriptor.
fn handoff(
    netns_path: PathBuf,
    families: &[String],
    fds: Vec<OwnedFd>,
) -> Result<Handoff, HandoverError> {
    let families: Vec<Family> = families
        .iter()
        .map(|f| family_named(f).ok_or_else(|| HandoverError::Invalid(format!("family {f:?}"))))
        .collect::<Result<_, _>>()?;
    let distinct = families.len() == 1 || (families.len() == 2 && families[0] != families[1]);
    if !distinct || fds.len() != 1 + 3 * families.len() {
        return Err(HandoverError::Invalid(format!(
            "{} descriptors for families {families:?}",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter();
    let netns = fds.next().expect("counted above");
    NsId::of_file(&File::from(
        netns
            .try_clone()
            .map_err(|e| HandoverError::Invalid(e.to_string()))?,
    ))
    .map_err(|e| HandoverError::Invalid(format!("namespace descriptor: {e}")))?;
    let mut listeners = Vec::new();
    for family in families {
        let set = [
            fds.next().expect("counted"),
            fds.next().expect("counted"),
            fds.next().expect("counted"),
        ];
        for (fd, port) in set
            .iter()
            .zip([OUTBOUND_PORT, HBONE_PORT, INBOUND_PLAINTEXT_PORT])
        {
            check_listener(fd, family, port)?;
        }
        listeners.push((family, set));
    }
    Ok(Handoff {
        netns_path,
        netns,
        listeners,
    })
}

/// Asks the predecessor listening at `path` for its pods, and tells it which it took: a pod whose
/// message is invalid is skipped (logged), the others are taken. With them, the connections that
/// tell when the predecessor, and those before it still running, have exited (`None`: one that
/// does not say).
fn ask(path: &Path) -> Result<(HashMap<String, Handoff>, Running), HandoverError> {
    let fd = seqpacket()?;
    net::connect(&fd, &unix_addr(path)?).map_err(io("connecting to the predecessor"))?;
    let peer =
        sockopt::socket_peercred(&fd).map_err(io("reading the predecessor's credentials"))?;
    if peer.uid != rustix::process::geteuid() {
        return Err(HandoverError::Invalid(format!(
            "the socket belongs to user {}, not this one",
            peer.uid.as_raw()
        )));
    }
    bound_waits(&fd).map_err(io("setting the handover timeouts"))?;
    let deadline = tokio::time::Instant::now() + HANDOVER_DEADLINE;
    let (mut pods, mut skipped) = (HashMap::new(), 0);
    loop {
        if tokio::time::Instant::now() > deadline {
            return Err(HandoverError::Invalid(format!(
                "not done within {HANDOVER_DEADLINE:?}"
            )));
        }
        match receive(&fd)? {
            (
                Message::Pod {
                    uid,
                    netns_path,
                    families,
                },
                fds,
            ) => match handoff(netns_path, &families, fds) {
                Ok(pod) => {
                    pods.insert(uid, pod);
                }
                Err(e) => {
                    skipped += 1;
                    warn!(workload = %uid, error = %e, "a pod handed over is skipped: its sockets are bound afresh once the predecessor lets go of them");
                }
            },
            (
                Message::Done {
                    pods: sent,
                    stays,
                    forever,
                },
                older,
            ) if sent == pods.len() + skipped => {
                send(&fd, &Message::Taken { pods: pods.len() }, &[])?;
                let mut running = vec![stays.then_some(fd)];
                running.extend(older.into_iter().map(Some));
                running.extend(std::iter::repeat_with(|| None).take(forever.min(MAX_FOREVER)));
                return Ok((pods, running));
            }
            (Message::Done { pods: sent, .. }, _) => {
                return Err(HandoverError::Invalid(format!(
                    "{sent} pods announced, {} received",
                    pods.len() + skipped
                )));
            }
            (Message::Taken { .. }, _) => {
                return Err(HandoverError::Invalid(
                    "a successor's answer from a predecessor".into(),
                ));
            }
        }
    }
}

/// Connections whose other end closes when a predecessor exits (`None`: one that does not say).
type Running = Vec<Option<OwnedFd>>;

/// How many predecessors that handed pods over are still running (see the module's
/// documentation); it only ever falls.
pub type Predecessors = watch::Receiver<usize>;

/// No predecessor.
pub fn no_predecessors() -> Predecessors {
    watch::channel(0).1
}

/// Takes over from every predecessor in `dir`: their pods by uid (the first answer for a uid
/// wins), and the count of those still running. Sockets of predecessors that are gone are removed;
/// a predecessor that answers badly is logged and skipped (its pods are then bound afresh once it
/// lets go of them).
pub fn take_over(dir: &Path) -> (Inherited, Predecessors) {
    let mut inherited = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (Inherited::default(), no_predecessors());
        }
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot read the handover directory: no pod is taken over from a running ztunnel");
            return (Inherited::default(), no_predecessors());
        }
    };
    let mut running = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "sock") {
            continue;
        }
        match ask(&path) {
            Ok((pods, connections)) => {
                info!(predecessor = %path.display(), pods = pods.len(), "took over the pods of the ztunnel running before this one");
                for (uid, pod) in pods {
                    inherited.entry(uid).or_insert(pod);
                }
                running.extend(connections.into_iter().map(|c| (path.clone(), c)));
            }
            Err(HandoverError::Io { source, .. })
                if matches!(
                    source.raw_os_error().map(Errno::from_raw_os_error),
                    Some(Errno::CONNREFUSED | Errno::NOENT)
                ) =>
            {
                // A ztunnel that stopped without cleaning up: nobody answers there.
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => {
                warn!(predecessor = %path.display(), error = %e, "handover from a running ztunnel failed: its pods are bound afresh once it lets go of them");
                // It runs, and may go on opening sockets in its pods.
                running.push((path, None));
            }
        }
    }
    (Arc::new(Mutex::new(inherited)), watch_running(running))
}

/// The count of `predecessors` running, falling as each one's connection ends (one thread each);
/// one without a connection counts for as long as this process runs.
fn watch_running(predecessors: Vec<(PathBuf, Option<OwnedFd>)>) -> Predecessors {
    let (count, running) = watch::channel(predecessors.len());
    for (id, (path, connection)) in predecessors.into_iter().enumerate() {
        let Some(fd) = connection else {
            info!(predecessor = %path.display(), "a ztunnel before this one does not say when it exits: its sockets are let out of the pods by their mark alone until this ztunnel restarts");
            FOREVER.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match fd.try_clone() {
            Ok(copy) => lock(&PREDECESSORS).push((id, copy)),
            Err(e) => warn!(error = %e, "cannot keep a predecessor's connection for a successor"),
        }
        let count = count.clone();
        let spawned = std::thread::Builder::new()
            .name("predecessor".into())
            .spawn(move || {
                wait_closed(&fd);
                info!(predecessor = %path.display(), "a ztunnel before this one has exited");
                lock(&PREDECESSORS).retain(|(other, _)| *other != id);
                count.send_modify(|n| *n -= 1);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot watch a predecessor: counted as running until this ztunnel restarts");
            FOREVER.fetch_add(1, Ordering::Relaxed);
        }
    }
    running
}

/// Returns once the other end of `fd` is closed (its process exited), whatever it sends before.
fn wait_closed(fd: &OwnedFd) {
    let mut buf = [0u8; 256];
    loop {
        match net::recv(fd, &mut buf, RecvFlags::empty()) {
            Ok((0, _)) => return,
            Ok(_) => {}
            Err(Errno::AGAIN | Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

/// The connections of successors this ztunnel handed its pods to (or tried to: one that did not
/// answer may have taken them), open until it exits (then the kernel closes them, which tells
/// each successor). Only a process of the same user reaches the handover socket.
static SUCCESSORS: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// Copies of this ztunnel's connections to its own predecessors still running (by their place
/// in its handover), passed on to its successors: they too must know when those have exited.
static PREDECESSORS: Mutex<Vec<(usize, OwnedFd)>> = Mutex::new(Vec::new());

/// How many ztunnels before this one it counts as running for good.
static FOREVER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The most such ztunnels a successor believes a predecessor about (it only makes the mark alone
/// pass until the successor restarts, which one is enough for).
const MAX_FOREVER: usize = 16;

/// `mutex`'s guard, whatever a panicking holder left.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request from a successor: answered with the pods to hand over (`reply`); `outcome` then says
/// whether the successor took them (how many), or why not. Only then has it taken over.
#[derive(Debug)]
pub struct Request {
    /// Where the pods to hand over go.
    pub reply: oneshot::Sender<HashMap<String, Handoff>>,
    /// What became of them.
    pub outcome: oneshot::Receiver<Result<usize, String>>,
}

/// This ztunnel's end: answers successors until [`Server::close`].
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    closed: Arc<AtomicBool>,
}

impl Server {
    /// Listens at a new socket in `dir`; each successor's connection is turned into a
    /// [`Request`] on the returned channel and answered with what comes back.
    pub fn start(dir: &Path) -> Result<(Self, mpsc::Receiver<Request>), HandoverError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| HandoverError::Io {
                what: "creating the handover directory",
                source,
            })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = dir.join(format!("ztunnel-{}-{nanos}.sock", std::process::id()));
        // Bound and listening under a name successors ignore, then published whole: a successor
        // never finds it not yet listening (and takes it for a stale one).
        let unpublished = path.with_extension("binding");
        let fd = seqpacket()?;
        net::bind(&fd, &unix_addr(&unpublished)?).map_err(io("binding the handover socket"))?;
        std::fs::set_permissions(&unpublished, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| HandoverError::Io {
                what: "restricting the handover socket",
                source,
            },
        )?;
        net::listen(&fd, 4).map_err(io("listening on the handover socket"))?;
        std::fs::rename(&unpublished, &path).map_err(|source| HandoverError::Io {
            what: "publishing the handover socket",
            source,
        })?;
        let (tx, rx) = mpsc::channel(1);
        let closed = Arc::new(AtomicBool::new(false));
        let stop = closed.clone();
        std::thread::Builder::new()
            .name("handover".into())
            .spawn(move || serve(&fd, &tx, &stop))
            .map_err(|source| HandoverError::Io {
                what: "starting the handover thread",
                source,
            })?;
        info!(socket = %path.display(), "ready to hand this node's pods over to a successor");
        Ok((Self { path, closed }, rx))
    }

    /// Stops answering (the socket is removed): from now on nothing is handed over.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wakes the thread from `accept`; it sees `closed` and ends.
        if let (Ok(fd), Ok(addr)) = (seqpacket(), unix_addr(&self.path)) {
            let _ = net::connect(&fd, &addr);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close();
    }
}

fn serve(listener: &OwnedFd, requests: &mpsc::Sender<Request>, closed: &AtomicBool) {
    loop {
        let conn = match net::accept_with(listener, SocketFlags::CLOEXEC) {
            Ok(conn) => conn,
            Err(e) => {
                warn!(error = %e, "handover accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if closed.load(Ordering::Acquire) {
            return;
        }
        match sockopt::socket_peercred(&conn) {
            Ok(peer) if peer.uid == rustix::process::geteuid() => {}
            Ok(peer) => {
                warn!(
                    uid = peer.uid.as_raw(),
                    "handover refused to a process of another user"
                );
                continue;
            }
            Err(e) => {
                warn!(error = %e, "handover refused: the peer's credentials are unknown");
                continue;
            }
        }
        info!("a successor asks for this node's pods");
        if let Err(e) = bound_waits(&conn) {
            warn!(error = %e, "handover refused: cannot bound its waits");
            continue;
        }
        let (reply, answer) = oneshot::channel();
        let (report, outcome) = oneshot::channel();
        if requests.blocking_send(Request { reply, outcome }).is_err() {
            return;
        }
        let Ok(pods) = answer.blocking_recv() else {
            warn!("no pods to hand over: this ztunnel is stopping");
            continue;
        };
        let result = answer_successor(&conn, &pods);
        lock(&SUCCESSORS).push(conn);
        match &result {
            Ok(taken) => info!(
                offered = pods.len(),
                taken, "handed this node's pods over to a successor"
            ),
            Err(e) => {
                warn!(error = %e, "handover to a successor failed: this ztunnel keeps the node")
            }
        }
        // The handover's owner decides what follows; it may be gone already (stopping).
        let _ = report.send(result.map_err(|e| e.to_string()));
    }
}

fn answer_successor(
    conn: &OwnedFd,
    pods: &HashMap<String, Handoff>,
) -> Result<usize, HandoverError> {
    for (uid, pod) in pods {
        let mut fds = vec![pod.netns.as_fd()];
        let mut families = Vec::new();
        for (family, set) in &pod.listeners {
            families.push(family_name(*family).to_owned());
            fds.extend(set.iter().map(AsFd::as_fd));
        }
        let message = Message::Pod {
            uid: uid.clone(),
            netns_path: pod.netns_path.clone(),
            families,
        };
        send(conn, &message, &fds)?;
    }
    let done = Message::Done {
        pods: pods.len(),
        stays: true,
        forever: FOREVER.load(Ordering::Relaxed),
    };
    let predecessors = lock(&PREDECESSORS);
    let older: Vec<BorrowedFd<'_>> = predecessors
        .iter()
        .take(MAX_FDS)
        .map(|(_, fd)| fd.as_fd())
        .collect();
    send(conn, &done, &older)?;
    drop(predecessors);
    match receive(conn)? {
        (Message::Taken { pods }, _) => Ok(pods),
        (other, _) => Err(HandoverError::Invalid(format!(
            "the successor answered {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests;
