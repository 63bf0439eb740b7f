//! Network namespaces: ztunnel opens its listeners and its outbound sockets *inside* each pod's
//! namespace, so connections carry the pod's own address and no node-level routing is needed.
//!
//! A socket belongs to the namespace of the thread that created it, for its whole life. Creating one
//! therefore switches the current thread into the pod's namespace and straight back (two `setns`
//! calls, no await in between). If switching back ever failed, the thread would go on serving other
//! pods from the wrong namespace: the process aborts instead.
//!
//! Every socket made here has TCP_NODELAY (a proxy must not add Nagle's delay to what an
//! application wrote without it), listeners included: Linux copies it from a listener to each
//! socket it accepts, so the connections ztunnel accepts need no call of their own.

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, setsockopt, socket, sockopt,
};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};

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

/// A namespace's identity, whatever path it is reached by: its device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NsId {
    dev: u64,
    ino: u64,
}

impl NsId {
    /// The namespace at `path`.
    pub fn of(path: &Path) -> io::Result<Self> {
        Self::from_metadata(&std::fs::metadata(path)?)
    }

    /// The namespace `file` is open on.
    pub fn of_file(file: &File) -> io::Result<Self> {
        Self::from_metadata(&file.metadata()?)
    }

    fn from_metadata(meta: &std::fs::Metadata) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
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

    /// The namespace `file` is open on, first opened at `path`.
    pub fn from_file(path: PathBuf, file: File) -> Arc<Self> {
        Arc::new(Self { path, file })
    }

    /// Which namespace this is.
    pub fn id(&self) -> io::Result<NsId> {
        NsId::from_metadata(&self.file.metadata()?)
    }

    /// Whether `path` is this namespace (or a path to it).
    pub fn is_at(&self, path: &Path) -> bool {
        matches!((self.id(), NsId::of(path)), (Ok(a), Ok(b)) if a == b)
    }

    /// Another descriptor of the namespace (to hand it over).
    pub fn dup(&self) -> io::Result<std::os::fd::OwnedFd> {
        self.file.as_fd().try_clone_to_owned()
    }

    /// Where the namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path to this namespace that stays valid as long as ztunnel holds it open, whatever happens
    /// to the path it was opened from (a pod's process may exit): ztunnel's own descriptor.
    pub fn stable_path(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }

    /// The addresses configured in this namespace.
    pub fn addresses(&self) -> io::Result<Vec<IpAddr>> {
        self.run(|| {
            let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
            Ok(addrs
                .filter_map(|a| a.address)
                .filter_map(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                })
                .collect())
        })
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

impl NetNs {
    /// A new, marked UDP socket inside the namespace, bound to `bind` (`transparent`: an address
    /// need not be local, as for answers sent as a carried flow's original destination; also
    /// receives each datagram's original destination), connected to `connect` if given.
    pub fn udp(
        &self,
        bind: SocketAddr,
        connect: Option<SocketAddr>,
        transparent: bool,
    ) -> io::Result<UdpSocket> {
        let family = match bind {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let fd =
            self.run(|| socket(family, SockType::Datagram, flags, None).map_err(io::Error::from))?;
        setsockopt(&fd, sockopt::Mark, &SOCKET_MARK).map_err(io::Error::from)?;
        if bind.is_ipv6() {
            setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(io::Error::from)?;
        }
        if transparent {
            // Several sockets share an original destination (one per flow to it), and a successor
            // ztunnel binds the listener its predecessor still holds.
            setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(io::Error::from)?;
            setsockopt(&fd, sockopt::IpTransparent, &true).map_err(io::Error::from)?;
            match bind {
                SocketAddr::V4(_) => setsockopt(&fd, sockopt::Ipv4OrigDstAddr, &true),
                SocketAddr::V6(_) => setsockopt(&fd, sockopt::Ipv6OrigDstAddr, &true),
            }
            .map_err(io::Error::from)?;
        }
        nix::sys::socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(bind))
            .map_err(io::Error::from)?;
        let socket = std::net::UdpSocket::from(fd);
        if let Some(peer) = connect {
            socket.connect(peer)?;
        }
        UdpSocket::from_std(socket)
    }
}

/// Finds the network namespace holding address `ip` among those pinned in `pinned_dir` (where
/// containerd and CRI-O keep pods' namespaces): how pods that were running before their namespace
/// joined the mesh are found.
pub fn find_by_address(ip: IpAddr, pinned_dir: &Path) -> io::Result<Option<Arc<NetNs>>> {
    for entry in std::fs::read_dir(pinned_dir)?.flatten() {
        // Namespaces come and go while we look: skip what vanished.
        let Ok(netns) = NetNs::open(&entry.path()) else {
            continue;
        };
        if netns.addresses().is_ok_and(|addrs| addrs.contains(&ip)) {
            return Ok(Some(netns));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// The outbound and plaintext handlers set no TCP_NODELAY of their own: the sockets they are
    /// given must have it from their listener, in either family.
    #[tokio::test]
    async fn sockets_accepted_on_a_listener_made_here_have_tcp_nodelay() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: entering a network namespace needs root (CAP_SYS_ADMIN)");
            return;
        }
        init().unwrap();
        let here = NetNs::open(Path::new("/proc/self/ns/net")).unwrap();
        for loopback in [
            IpAddr::from(Ipv4Addr::LOCALHOST),
            Ipv6Addr::LOCALHOST.into(),
        ] {
            let listener = here.listen(SocketAddr::new(loopback, 0)).unwrap();
            let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (accepted, peer) = listener.accept().await.unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            assert!(
                accepted.nodelay().unwrap(),
                "{loopback}: accepted with Nagle's delay"
            );
            assert!(
                !client.nodelay().unwrap(),
                "the client's own socket is left as it was"
            );
        }
    }
}
