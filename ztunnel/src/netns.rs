//! Network namespaces: ztunnel opens its listeners and its outbound sockets *inside* each pod's
//! namespace, so connections carry the pod's own address and no node-level routing is needed.
//!
//! A socket belongs to the namespace of the thread that created it, for its whole life. Creating one
//! therefore switches the current thread into the pod's namespace and straight back (two `setns`
//! calls, no await in between). If switching back ever failed, the thread would go on serving other
//! pods from the wrong namespace: the process aborts instead.

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpListener, TcpSocket};

/// The mark on every socket ztunnel opens inside a pod, so that the pod's capture rules let them
/// through instead of redirecting ztunnel's own traffic back to itself.
pub const SOCKET_MARK: u32 = 0x539;

/// The namespace ztunnel itself runs in, opened once before any switching.
fn host() -> io::Result<&'static File> {
    static HOST: OnceLock<File> = OnceLock::new();
    if let Some(f) = HOST.get() {
        return Ok(f);
    }
    let file = File::open("/proc/self/ns/net")?;
    Ok(HOST.get_or_init(|| file))
}

/// Records ztunnel's own namespace. Call once at start-up, before any socket is created in a pod.
pub fn init() -> io::Result<()> {
    host().map(|_| ())
}

/// A pod's network namespace.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
}

impl NetNs {
    /// Opens the namespace at `path` (e.g. `/var/run/netns/<name>`).
    pub fn open(path: &Path) -> io::Result<Arc<Self>> {
        let file = File::open(path)?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            file,
        }))
    }

    /// Where the namespace lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the current thread inside this namespace.
    fn run<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let home = host()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let result = f();
        if let Err(e) = setns(home.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Unrecoverable: this thread would keep serving from the pod's namespace.
            eprintln!(
                "FATAL: could not leave network namespace {}: {e}",
                self.path.display()
            );
            std::process::abort();
        }
        result
    }

    /// A new, marked TCP socket inside the namespace, for the address family of `ip`.
    pub fn socket(&self, ip: IpAddr) -> io::Result<TcpSocket> {
        let socket = self.run(|| match ip {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        })?;
        setsockopt(&socket, sockopt::Mark, &SOCKET_MARK).map_err(io::Error::from)?;
        socket.set_nodelay(true)?;
        Ok(socket)
    }

    /// A listener inside the namespace.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = self.socket(addr.ip())?;
        socket.set_reuseaddr(true)?;
        if addr.is_ipv6() {
            // A v6 listener must not also take v4 connections: v4 has its own.
            setsockopt(&socket, sockopt::Ipv6V6Only, &true).map_err(io::Error::from)?;
        }
        socket.bind(addr)?;
        socket.listen(1024)
    }
}
