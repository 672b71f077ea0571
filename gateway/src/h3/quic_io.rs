//! What quinn runs on here: tokio's runtime, with a timer and a UDP
//! socket of our own that spare the gateway thread wake-ups tokio's would
//! cost it. At a fixed 1k requests/s over HTTP/3 the gateway's thread was
//! woken about 1.9 times a request against 1.25 over HTTP/2 with TLS
//! (`perf record -e sched:sched_wakeup`), and two causes were quinn's
//! tokio glue rather than QUIC.
//!
//! **Timers.** A connection has one timer, reset to its next deadline each
//! time it is driven: after a response, the loss-detection deadline some
//! 26 ms out; when the client's acknowledgement arrives, the idle timeout
//! 30 s out. tokio moves a timer later lazily: the entry stays in the
//! timer wheel at the old deadline, the runtime wakes then and only then
//! files it anew. So most responses cost a wake-up 26 ms later for
//! nothing (0.4 a request in the count above). [`Timer`] re-files a timer
//! whose old deadline is near when it moves later.
//!
//! **The socket.** Linux marks a UDP socket writable again each time a
//! datagram it sent is freed, which on loopback (or a veth, or a tunnel)
//! is when the receiver has read it. quinn's tokio socket is registered
//! for reads and writes, so every datagram sent came back as an event
//! (`strace` at 1k rps: 3.1 `epoll_wait` a request over HTTP/3 against
//! 1.7 over HTTP/2 with TLS). Here the socket is registered for reads
//! alone and sends go straight to `sendmsg`; only when a send finds the
//! buffer full does a connection wait for room, through a duplicate of
//! the socket registered for writes while it waits. And quinn reads the
//! socket until a read would block: after each batch of datagrams one
//! more `recvmmsg` that finds nothing (0.4 a request at 5k requests/s).
//! A batch shorter than asked for shows the queue was empty, so the
//! socket's readiness is cleared then without that read.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, UdpPoller};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::{Sleep, sleep_until};

/// quinn on the current tokio runtime, with [`Timer`] and
/// [`ReadWatchedSocket`].
#[derive(Debug)]
pub(crate) struct QuicRuntime;

impl Runtime for QuicRuntime {
    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(Timer {
            sleep: Box::pin(sleep_until(deadline.into())),
        })
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        tokio::spawn(future);
    }

    fn wrap_udp_socket(&self, socket: UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(ReadWatchedSocket::new(socket)?)
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// A timer moved later is filed anew when its old deadline is closer than
/// this; one further out is left to tokio's lazy move, as a spurious
/// wake-up that far apart costs nothing worth a re-filing.
const REFILE_WITHIN: Duration = Duration::from_secs(1);

/// One connection's timer. See the module documentation.
#[derive(Debug)]
struct Timer {
    sleep: Pin<Box<Sleep>>,
}

impl AsyncTimer for Timer {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        let deadline = tokio::time::Instant::from_std(deadline);
        let old = self.sleep.deadline();
        if deadline > old && old < tokio::time::Instant::now() + REFILE_WITHIN {
            // Dropping the old entry takes it out of the wheel.
            self.sleep.set(sleep_until(deadline));
        } else {
            self.sleep.as_mut().reset(deadline);
        }
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<()> {
        Future::poll(self.sleep.as_mut(), cx)
    }
}

/// Whether a batch read of fewer datagrams than asked for drained the
/// socket: quinn-udp reads a batch with one `recvmmsg` on Linux, which
/// returns what was queued; elsewhere it may read one datagram a call.
const DRAINED_ON_SHORT_BATCH: bool = cfg!(target_os = "linux");

/// The listener's socket. See the module documentation.
#[derive(Debug)]
struct ReadWatchedSocket {
    io: AsyncFd<UdpSocket>,
    state: UdpSocketState,
    /// A send found the buffer full and no wait has seen room since.
    full: AtomicBool,
}

impl ReadWatchedSocket {
    /// Takes over `socket` (made non-blocking here); call on the runtime
    /// that will serve it.
    fn new(socket: UdpSocket) -> io::Result<Arc<ReadWatchedSocket>> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Arc::new(ReadWatchedSocket {
            io: register(socket, Interest::READABLE)?,
            state,
            full: AtomicBool::new(false),
        }))
    }
}

/// Registers `socket` with the runtime for `interest` alone.
// tokio asks the caller to vouch for the descriptor.
#[allow(unsafe_code)]
fn register(socket: UdpSocket, interest: Interest) -> io::Result<AsyncFd<UdpSocket>> {
    // Safety: the `AsyncFd` owns `socket`, whose `as_raw_fd` is the
    // descriptor it owns, open and unchanged until the socket is dropped,
    // which is after the registration (the `AsyncFd` deregisters first).
    Ok(unsafe { AsyncFd::register_with_interest(socket, interest) }?)
}

impl AsyncUdpSocket for ReadWatchedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(RoomWait {
            socket: self,
            watch: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let sent = self.state.send(self.io.get_ref().into(), transmit);
        if matches!(&sent, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.full.store(true, Ordering::Relaxed);
        }
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.io.poll_read_ready(cx))?;
            // A read that would block clears the readiness: poll again.
            let Ok(read) = ready.try_io(|io| self.state.recv(io.get_ref().into(), bufs, meta))
            else {
                continue;
            };
            if DRAINED_ON_SHORT_BATCH
                && matches!(read, Ok(n) if n < bufs.len().min(quinn::udp::BATCH_SIZE))
            {
                // Fewer datagrams than asked for: the queue was empty when
                // the batch was read. quinn reads until a read would block,
                // which would cost a `recvmmsg` per wake-up that finds
                // nothing; clearing the readiness here spares it, as tokio
                // does for a short read on TCP. One that arrived since
                // raises a new edge, so none is missed.
                ready.clear_ready();
            }
            return Poll::Ready(read);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

/// One connection's wait for room to send. quinn asks before every send;
/// the answer is yes at once unless a send found the buffer full.
#[derive(Debug)]
struct RoomWait {
    socket: Arc<ReadWatchedSocket>,
    /// The duplicate registered for writes, while waiting.
    watch: Option<AsyncFd<UdpSocket>>,
}

impl UdpPoller for RoomWait {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        if !self.socket.full.load(Ordering::Relaxed) {
            self.watch = None;
            return Poll::Ready(Ok(()));
        }
        if self.watch.is_none() {
            // Registering reports the socket's state at once, so room
            // made since the failed send is not missed.
            let dup = self.socket.io.get_ref().try_clone()?;
            self.watch = Some(register(dup, Interest::WRITABLE)?);
        }
        if let Some(watch) = &self.watch {
            // The registration goes next, so its readiness need not be
            // cleared.
            let _room = ready!(watch.poll_write_ready(cx))?;
        }
        self.watch = None;
        self.socket.full.store(false, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Waits for `timer`; how long that took on the paused clock.
    async fn fired(timer: &mut Pin<Box<dyn AsyncTimer>>) -> Duration {
        let start = tokio::time::Instant::now();
        poll_fn(|cx| timer.as_mut().poll(cx)).await;
        start.elapsed()
    }

    /// Whichever way a deadline moves, near or far, the timer fires at the
    /// last one it was given and not before. (That the re-filing spares a
    /// wake-up at the old deadline is not visible through tokio's API; it
    /// was counted with `perf record -e sched:sched_wakeup`, bench/README.md.)
    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_at_its_last_deadline() {
        let at = |d: Duration| (tokio::time::Instant::now() + d).into_std();
        // Later from a near deadline (re-filed), as after an
        // acknowledgement: loss detection gives way to the idle timeout.
        let mut timer = QuicRuntime.new_timer(at(ms(26)));
        timer.as_mut().reset(at(ms(30_000)));
        assert_eq!(fired(&mut timer).await, ms(30_000));
        // Earlier again.
        timer.as_mut().reset(at(ms(30_000)));
        timer.as_mut().reset(at(ms(26)));
        assert_eq!(fired(&mut timer).await, ms(26));
        // Later from a far deadline (tokio's lazy move).
        timer.as_mut().reset(at(ms(5_000)));
        timer.as_mut().reset(at(ms(9_000)));
        assert_eq!(fired(&mut timer).await, ms(9_000));
        // Unchanged, and already past.
        timer.as_mut().reset(at(ms(40)));
        timer.as_mut().reset(at(ms(40)));
        assert_eq!(fired(&mut timer).await, ms(40));
        timer.as_mut().reset(at(Duration::ZERO));
        assert_eq!(fired(&mut timer).await, Duration::ZERO);
    }

    /// Datagrams go out and come in through the socket registered for
    /// reads only; after a short batch the socket waits for the runtime
    /// to report a datagram instead of reading again (and misses none),
    /// after a full one it reads again; a connection asks for room at once
    /// unless a send found the buffer full, and after such a send waits
    /// until there is room (here at once: nothing is queued), through a
    /// registration that goes when the wait is over.
    #[tokio::test]
    async fn the_socket_sends_receives_and_waits_for_room_only_when_full() {
        let socket = ReadWatchedSocket::new(UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .expect("registered");
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        let here = socket.local_addr().expect("address");
        socket
            .try_send(&Transmit {
                destination: peer.local_addr().expect("peer address"),
                ecn: None,
                contents: b"out",
                segment_size: None,
                src_ip: None,
            })
            .expect("sent");
        let mut buf = [0u8; 16];
        let (n, from) = peer.recv_from(&mut buf).expect("peer received");
        assert_eq!((&buf[..n], from), (&b"out"[..], here));

        peer.send_to(b"in", here).expect("peer sent");
        let mut space = [0u8; 1500];
        let mut meta = [RecvMeta::default()];
        let got = poll_fn(|cx| {
            let mut bufs = [io::IoSliceMut::new(&mut space)];
            socket.poll_recv(cx, &mut bufs, &mut meta)
        })
        .await
        .expect("received");
        assert_eq!(got, 1);
        assert_eq!(&space[..meta[0].len], b"in");
        assert_eq!(meta[0].addr, peer.local_addr().expect("peer address"));

        // A short batch (one datagram where four would fit) drained the
        // socket: the next poll waits for the runtime to see a new datagram
        // instead of reading again, and that datagram is not missed.
        peer.send_to(b"one", here).expect("peer sent");
        let mut spaces = [[0u8; 1500]; 4];
        let mut metas = [RecvMeta::default(); 4];
        let recv = |cx: &mut Context<'_>, spaces: &mut [[u8; 1500]; 4], metas: &mut [RecvMeta]| {
            let mut bufs = spaces.each_mut().map(|b| io::IoSliceMut::new(b));
            socket.poll_recv(cx, &mut bufs, metas)
        };
        let got = poll_fn(|cx| recv(cx, &mut spaces, &mut metas))
            .await
            .expect("received");
        assert_eq!(got, 1);
        peer.send_to(b"two", here).expect("peer sent");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            recv(&mut cx, &mut spaces, &mut metas).is_pending(),
            "read again before the runtime saw the datagram"
        );
        let got = poll_fn(|cx| recv(cx, &mut spaces, &mut metas))
            .await
            .expect("received");
        assert_eq!(got, 1);
        assert_eq!(&spaces[0][..metas[0].len], b"two");
        // A full batch may have left more behind: the next poll reads.
        for d in [b"3", b"4", b"5", b"6", b"7"] {
            peer.send_to(d, here).expect("peer sent");
        }
        let got = poll_fn(|cx| recv(cx, &mut spaces, &mut metas))
            .await
            .expect("received");
        assert_eq!(got, 4);
        let Poll::Ready(Ok(1)) = recv(&mut cx, &mut spaces, &mut metas) else {
            panic!("after a full batch the next poll reads the fifth datagram");
        };
        assert_eq!(&spaces[0][..metas[0].len], b"7");

        let mut wait = socket.clone().create_io_poller();
        let room = poll_fn(|cx| Poll::Ready(wait.as_mut().poll_writable(cx))).await;
        assert!(matches!(room, Poll::Ready(Ok(()))));
        socket.full.store(true, Ordering::Relaxed);
        poll_fn(|cx| wait.as_mut().poll_writable(cx))
            .await
            .expect("room");
        assert!(!socket.full.load(Ordering::Relaxed));
    }
}
