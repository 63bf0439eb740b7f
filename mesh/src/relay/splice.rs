//! Moving a relay's bytes through the kernel: `splice(2)` from one socket into a pipe and from the
//! pipe into the other socket, so that no byte is copied into ztunnel's memory and back.
//!
//! Every pipe holds two descriptors, so the pipes in existence are bounded by [`Pipes`]' limit
//! (ztunnel's descriptor budget accounts for it). A relay direction holds a pipe only while its
//! socket has data to read, as it would a buffer, and hands it back empty for the next one; with
//! no pipe to be had (the limit reached, or the kernel refusing one) it copies through a buffer.
//! A pipe holding bytes is never handed back: a relay cut while bytes are in it closes it. The
//! bytes in pipes are not charged to any socket: at most a pipe's capacity each.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// At most this many bytes are asked of one `splice` (the pipe takes what its capacity allows).
const MOST: usize = 1 << 20;

const FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

/// The pipes relays may splice through: at most `limit` exist at once; empty ones are kept for the
/// next relay that needs one.
#[derive(Debug)]
pub struct Pipes {
    limit: usize,
    /// Bytes asked of the kernel for each new pipe (0: its default, 64 KiB).
    capacity: usize,
    live: AtomicUsize,
    free: Mutex<Vec<Pipe>>,
    /// Set when the kernel refused to splice a socket (or a filter forbids the call): copy only.
    disabled: AtomicBool,
    /// Bytes spliced out of pipes, all relays together.
    spliced: AtomicU64,
}

#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipes {
    /// Up to `limit` pipes (0: relays always copy).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            capacity: 0,
            live: AtomicUsize::new(0),
            free: Mutex::new(Vec::new()),
            disabled: AtomicBool::new(false),
            spliced: AtomicU64::new(0),
        }
    }

    /// Pipes of `bytes` each (rounded up by the kernel to a power of two pages), where the kernel
    /// allows it: past `/proc/sys/fs/pipe-max-size` only with CAP_SYS_RESOURCE, past the user's
    /// `pipe-user-pages-soft` only with CAP_SYS_RESOURCE or CAP_SYS_ADMIN (refused, a pipe keeps
    /// the size it was made with: 64 KiB, or two pages for a user past that soft limit).
    pub fn with_capacity(mut self, bytes: usize) -> Self {
        self.capacity = bytes;
        self
    }

    /// Whether relays may splice at all (a limit above 0, and splicing not found unsupported).
    pub fn usable(&self) -> bool {
        self.limit > 0 && !self.disabled.load(Ordering::Relaxed)
    }

    /// Stops all splicing: this kernel (or a seccomp filter) will not splice sockets. The pipes
    /// kept for reuse are closed (those lent out are, when handed back).
    pub(super) fn disable(&self) {
        if !self.disabled.swap(true, Ordering::Relaxed) {
            tracing::warn!("splice(2) is refused here: plaintext relays copy through buffers");
        }
        let kept = std::mem::take(&mut *self.free.lock().unwrap_or_else(|e| e.into_inner()));
        self.live.fetch_sub(kept.len(), Ordering::AcqRel);
    }

    /// Bytes spliced so far, all relays together.
    pub fn spliced(&self) -> u64 {
        self.spliced.load(Ordering::Relaxed)
    }

    /// Pipes in existence now (held by relays or kept empty for reuse).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// An empty pipe, or none when the limit is reached or the kernel refuses a new one.
    pub(super) fn take(&self) -> Option<Held<'_>> {
        if !self.usable() {
            return None;
        }
        let kept = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let pipe = match kept {
            Some(pipe) => pipe,
            None => {
                let claimed = self
                    .live
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < self.limit).then_some(n + 1)
                    });
                claimed.ok()?;
                match pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) {
                    Ok((read, write)) => {
                        if self.capacity > 0 {
                            // Refused: the default size still splices, in smaller steps.
                            let _ = rustix::pipe::fcntl_setpipe_size(&write, self.capacity);
                        }
                        Pipe { read, write }
                    }
                    Err(_) => {
                        // Out of descriptors or pipe pages: this burst is copied instead.
                        self.live.fetch_sub(1, Ordering::AcqRel);
                        return None;
                    }
                }
            }
        };
        Some(Held {
            pipe: Some(pipe),
            pipes: self,
            pending: 0,
        })
    }
}

/// A pipe lent to one relay direction; back to its [`Pipes`] when dropped empty, closed otherwise
/// (bytes stranded in it belong to a relay that failed or was cut).
#[derive(Debug)]
pub(super) struct Held<'a> {
    pipe: Option<Pipe>,
    pipes: &'a Pipes,
    /// Bytes in the pipe not yet spliced out.
    pending: usize,
}

impl Held<'_> {
    fn pipe(&self) -> &Pipe {
        self.pipe
            .as_ref()
            .expect("a held pipe is there until dropped")
    }

    /// Splices what `from` has to read into the pipe (the pipe must be empty): the bytes moved, 0
    /// when none (at the end of `from`'s stream, at urgent data, or nothing to read now). A splice
    /// finding nothing leaves the socket's readiness set: splicing stops at urgent data, where a
    /// `recv` would go on, so the caller's read finds out whether the socket is really drained.
    pub(super) fn fill(&mut self, from: &TcpStream) -> io::Result<usize> {
        debug_assert_eq!(self.pending, 0, "filled only once drained");
        let write = &self.pipe().write;
        self.pending = from.try_io(Interest::READABLE, || {
            match splice(from.as_fd(), None, write, None, MOST, FLAGS) {
                Err(rustix::io::Errno::AGAIN) => Ok(0),
                spliced => spliced.map_err(io::Error::from),
            }
        })?;
        Ok(self.pending)
    }

    /// Splices everything in the pipe out to `to`, telling `written` of each part as it goes.
    pub(super) async fn drain(
        &mut self,
        to: &TcpStream,
        written: &mut impl FnMut(usize),
    ) -> io::Result<()> {
        while self.pending > 0 {
            to.writable().await?;
            let read = &self.pipe().read;
            let pending = self.pending;
            match to.try_io(Interest::WRITABLE, || {
                splice(read, None, to.as_fd(), None, pending, FLAGS).map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending -= n;
                    self.pipes.spliced.fetch_add(n as u64, Ordering::Relaxed);
                    written(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let Some(pipe) = self.pipe.take() else { return };
        if self.pending == 0 && self.pipes.usable() {
            self.pipes
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(pipe);
        } else {
            drop(pipe);
            self.pipes.live.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Whether a failed splice says splicing these descriptors is not possible here (the relays then
/// copy) rather than that the connection failed.
pub(super) fn unsupported(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let code = e.raw_os_error();
    [Errno::INVAL, Errno::NOSYS, Errno::PERM]
        .iter()
        .any(|errno| code == Some(errno.raw_os_error()))
}
