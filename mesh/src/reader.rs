//! Reading an application's socket as data arrives, without the system call that finds nothing.
//!
//! A read that leaves part of its buffer empty has drained the socket, so tokio's `poll_read`
//! takes it as such and waits for the kernel's next event before it reads again, where
//! `try_read` would make one more `recv` to be told there is nothing (one per message on an
//! interactive connection: a fifth of a ztunnel's system calls in a request/response run,
//! docs/benchmarks.md; a connection quiet for [`RECHECK`] after a message pays a timer and a peek
//! instead). One case breaks that rule: a read also stops short at TCP urgent data
//! (out-of-band, `MSG_OOB`), and the bytes queued behind the mark get no event of their own. So a
//! socket left after a short read with nothing new for [`RECHECK`] is peeked at, past tokio's
//! bookkeeping, and read when the peek finds something; once the peek finds the socket empty,
//! waiting needs no timer.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::BufMut;
use tokio::net::tcp::ReadHalf;
use tokio_util::io::poll_read_buf;

/// How long a socket left after a short read stays quiet before it is read once more: what bytes
/// behind TCP urgent data may wait, at most.
const RECHECK: Duration = Duration::from_millis(50);

/// What a read made before the splice (early data's) left known of a socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LastRead {
    /// Nothing read, or a read that filled its buffer or found the end: tokio's readiness tells.
    #[default]
    Tracked,
    /// A read through tokio's `poll_read` that stopped short: tokio took the socket as drained
    /// (so the next read waits for the kernel's next event), or it stopped at urgent data.
    Short,
}

/// The read half of an application's socket, and what the last read said of it.
#[derive(Debug)]
pub(crate) struct Reader<'a, 'b> {
    rd: &'a mut ReadHalf<'b>,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Tokio's readiness tells: the last read filled its buffer, a read or peek past tokio's
    /// readiness found the socket empty, or nothing was read yet. (A read that finds nothing
    /// leaves the state as it was: after a short read the timer stays armed.)
    Tracked,
    /// The last read stopped short: drained, or stopped at urgent data.
    Short,
    /// Quiet for [`RECHECK`] after a short read yet not empty (a peek found bytes or the end), or a read past tokio's readiness filled its buffer: read past tokio's readiness
    /// again.
    Recheck,
}

impl<'a, 'b> Reader<'a, 'b> {
    /// Reads `rd`, of which `last` (a read made before, if any) is known.
    pub(crate) fn new(rd: &'a mut ReadHalf<'b>, last: LastRead) -> Self {
        let state = match last {
            LastRead::Tracked => State::Tracked,
            LastRead::Short => State::Short,
        };
        Self { rd, state }
    }

    /// The socket, for what reads it otherwise (splicing).
    pub(crate) fn socket(&self) -> &tokio::net::TcpStream {
        self.rd.as_ref()
    }

    /// Reads what the socket holds into `buf` without waiting (at most what `buf` offers in one
    /// chunk): `Some(Ok(0))` at its end, `None` when there is nothing to read yet.
    pub(crate) async fn read(&mut self, buf: &mut impl BufMut) -> Option<io::Result<usize>> {
        if self.state == State::Recheck {
            return self.recheck(buf);
        }
        let offered = buf.chunk_mut().len();
        let rd = &mut *self.rd;
        let read = std::future::poll_fn(|cx| match poll_read_buf(Pin::new(&mut *rd), cx, buf) {
            Poll::Ready(read) => Poll::Ready(Some(read)),
            // Out of the task's budget, `poll_read` refuses without reading and leaves readiness
            // set, so `readable` would answer at once: yield (the task is woken again at once)
            // instead of going round without ever letting the budget be renewed.
            Poll::Pending if !tokio::task::coop::has_budget_remaining() => Poll::Pending,
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        if let Some(Ok(n)) = read {
            self.state = if n > 0 && n < offered {
                State::Short
            } else {
                State::Tracked
            };
        }
        read
    }

    /// A read past tokio's readiness (cleared by the short read before, or by a read that filled
    /// its buffer this way): `recv` itself.
    fn recheck(&mut self, buf: &mut impl BufMut) -> Option<io::Result<usize>> {
        let offered = buf.chunk_mut().len();
        let mut got = Vec::with_capacity(offered.max(1));
        let read = rustix::net::recv(
            self.socket().as_fd(),
            rustix::buffer::spare_capacity(&mut got),
            rustix::net::RecvFlags::DONTWAIT,
        );
        match read {
            // A full read: more may be queued behind it, with no event of its own; read on this
            // way. A short one is taken as before, with the timer for another mark.
            Ok((n, _)) => {
                buf.put_slice(&got);
                if n > 0 && n < offered {
                    self.state = State::Short;
                }
                Some(Ok(n))
            }
            Err(rustix::io::Errno::AGAIN) => {
                // Empty, and tokio's readiness was cleared before this read: what comes next
                // raises an event.
                self.state = State::Tracked;
                None
            }
            Err(e) => Some(Err(e.into())),
        }
    }

    /// Waits until a read may find something: the kernel's next event, or, after a short read,
    /// [`RECHECK`] of quiet at most.
    pub(crate) async fn readable(&mut self) -> io::Result<()> {
        match self.state {
            State::Tracked => self.rd.readable().await,
            State::Short => match tokio::time::timeout(RECHECK, self.rd.readable()).await {
                Ok(ready) => ready,
                Err(_quiet) => {
                    // A peek, which takes no buffer: the caller takes one for the read only when
                    // there is something to read (the usual answer is that there is nothing).
                    let peek = rustix::net::recv(
                        self.socket().as_fd(),
                        &mut [0u8; 1],
                        rustix::net::RecvFlags::DONTWAIT | rustix::net::RecvFlags::PEEK,
                    );
                    match peek {
                        Err(rustix::io::Errno::AGAIN) => {
                            // Empty, and tokio's readiness was cleared by the short read: what
                            // comes next raises an event.
                            self.state = State::Tracked;
                            self.rd.readable().await
                        }
                        // The socket's pending error (a reset) is reported once, peek or not:
                        // said here, since the read after would find only an end.
                        Err(e) => Err(e.into()),
                        // Bytes or the end: the read takes them.
                        Ok(_) => {
                            self.state = State::Recheck;
                            Ok(())
                        }
                    }
                }
            },
            State::Recheck => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::testing::socket_pair;

    #[tokio::test]
    async fn a_read_refused_for_want_of_budget_yields_instead_of_saying_drained() {
        let (mut app, mut proxied) = socket_pair().await;
        app.write_all(b"waiting").await.unwrap();
        let (mut rd, _wr) = proxied.split();
        rd.readable().await.unwrap();
        let mut reader = Reader::new(&mut rd, LastRead::Tracked);
        let mut buf = Vec::with_capacity(64);
        let outcome = std::future::poll_fn(|cx| {
            // Spend the task's whole budget, as a long run of reads and writes does.
            while let Poll::Ready(spent) = tokio::task::coop::poll_proceed(cx) {
                spent.made_progress();
            }
            Poll::Ready(pin!(reader.read(&mut buf)).poll(cx))
        })
        .await;
        // `None` would tell the caller the socket is drained: it would wait for readiness,
        // which is set, and come back round without yielding, for ever.
        assert!(outcome.is_pending(), "{outcome:?}");
        // With a budget again, the bytes are there (a lost wake-up would hang: bounded).
        let read = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await;
        assert_eq!(read.expect("woken again").unwrap().unwrap(), 7);
        assert_eq!(buf, b"waiting");
    }

    /// A reader of `rd` whose last read stopped short: it read the three bytes `app` wrote.
    async fn after_a_short_read<'a, 'b>(
        app: &mut tokio::net::TcpStream,
        rd: &'a mut ReadHalf<'b>,
    ) -> Reader<'a, 'b> {
        app.write_all(b"one").await.unwrap();
        rd.readable().await.unwrap();
        let mut reader = Reader::new(rd, LastRead::Tracked);
        let mut buf = Vec::with_capacity(64);
        assert_eq!(reader.read(&mut buf).await.unwrap().unwrap(), 3);
        assert_eq!(reader.state, State::Short);
        reader
    }

    #[tokio::test]
    async fn a_socket_found_empty_after_the_quiet_wait_is_waited_on_without_another_read() {
        let (mut app, mut proxied) = socket_pair().await;
        let (mut rd, _wr) = proxied.split();
        let mut reader = after_a_short_read(&mut app, &mut rd).await;
        let mut buf = Vec::with_capacity(64);
        // Quiet for longer than the recheck: the peek finds nothing, so the wait goes on for the
        // kernel's next event instead of handing the caller a read (and a buffer) to make.
        let quiet = tokio::time::timeout(RECHECK * 6, reader.readable()).await;
        assert!(quiet.is_err(), "woken with nothing to read: {quiet:?}");
        assert_eq!(reader.state, State::Tracked);
        // What comes next raises the event the wait is for (a lost one would hang: bounded).
        app.write_all(b"two").await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), reader.readable())
            .await
            .expect("woken by the next bytes")
            .unwrap();
        assert_eq!(reader.read(&mut buf).await.unwrap().unwrap(), 3);
        assert_eq!(buf, b"two");
    }

    #[tokio::test]
    async fn bytes_found_by_the_quiet_wait_are_read_past_tokios_readiness() {
        let (mut app, mut proxied) = socket_pair().await;
        let (mut rd, _wr) = proxied.split();
        let mut reader = after_a_short_read(&mut app, &mut rd).await;
        let mut buf = Vec::with_capacity(64);
        // Bytes behind urgent data raise no event of their own: the quiet wait's peek finds them.
        app.write_all(b"x").await.unwrap();
        let fd = std::os::fd::AsFd::as_fd(&app);
        rustix::net::send(fd, b"!", rustix::net::SendFlags::OOB).unwrap();
        app.write_all(b"behind").await.unwrap();
        let mut read = Vec::new();
        while read.len() < b"xbehind".len() {
            tokio::time::timeout(Duration::from_secs(10), reader.readable())
                .await
                .unwrap_or_else(|_| panic!("the bytes behind the mark are not found: {read:?}"))
                .unwrap();
            if let Some(n) = reader.read(&mut buf).await {
                assert!(n.unwrap() > 0);
                read.append(&mut buf);
            }
        }
        assert_eq!(read, b"xbehind");
    }
}
