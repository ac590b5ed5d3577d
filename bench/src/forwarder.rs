//! A zero-work TCP forwarder on the gateway's CPU: what any proxy, however fast, adds to a
//! request on this machine, measured beside the gateway in the same run.
//!
//! The wake-up floor (`wake_floor.rs`) times bare Unix-socket round trips. A proxy also pays for
//! two more TCP loopback connections (the kernel's send and receive paths, acknowledgements,
//! waking the peer on the other CPU) and for waking up itself. This forwarder pays exactly those
//! and nothing else: one thread pinned to the gateway's CPU waits in epoll, like the gateway's
//! coroutine worker, and for each client connection opens one connection to the mock and copies
//! whatever one side sends to the other, without parsing, buffering whole requests or looking at
//! a header. It makes the fewest system calls a proxy can: one read per readiness and one write,
//! with no read tried before the socket is ready. The bench sends it the direct arm's requests
//! (the mock ignores the `Host` header), so "forwarder − direct" is the added latency of a proxy
//! that does no work, "gateway − forwarder" is what the gateway's own work costs, and the
//! forwarder's CPU per request at c=64 is the part of the gateway's that the kernel takes.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::wake_floor::pin_current_thread;

/// Bytes copied per read; the bench's requests and answers fit in one.
const COPY_BUFFER_BYTES: usize = 64 * 1024;
/// Readiness events taken per wait: at c=64 that is every connection at once.
const EVENTS_PER_WAIT: usize = 256;
/// How long a wait lasts when nothing happens, so the loop sees a stop within this time.
const STOP_CHECK_MILLIS: i32 = 50;
/// How long a write that found the destination's buffer full waits for room. The bench's
/// messages are far smaller than a loopback socket's buffer, so this wait (which holds up
/// every other connection) does not happen in practice; it only keeps a stuck peer from
/// hanging the bench.
const WRITE_ROOM_WAIT_MILLIS: i32 = 5_000;
/// The epoll token of the listening socket; a connection's token is its descriptor.
const LISTENER_TOKEN: u64 = u64::MAX;

pub struct Forwarder {
    address: SocketAddr,
    /// The kernel's id of the forwarder's one thread: `/proc/<id>/stat` is its CPU time.
    thread_id: u32,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on a free loopback port and forwards every connection to `upstream`; its thread
    /// runs on `cpu` when given.
    pub fn start(upstream: SocketAddr, cpu: Option<u32>) -> io::Result<Forwarder> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let readiness = Readiness::new()?;
        readiness.watch(listener.as_raw_fd(), LISTENER_TOKEN)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let loop_stopping = Arc::clone(&stopping);
        let (thread_id_sender, thread_id_receiver) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("forwarder".to_string()).spawn(move || {
            if let Some(cpu) = cpu {
                pin_current_thread(cpu);
            }
            // SAFETY: gettid has no preconditions.
            let _ = thread_id_sender.send(unsafe { libc::gettid() } as u32);
            forward_until_stopped(&listener, &readiness, upstream, &loop_stopping);
        })?;
        let thread_id =
            thread_id_receiver.recv().map_err(|_| io::Error::other("the forwarder's thread ended before it started"))?;
        Ok(Forwarder { address, thread_id, stopping, thread: Some(thread) })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn thread_id(&self) -> u32 {
        self.thread_id
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One end of a forwarded pair: its socket, the other end's descriptor, and whether it may
/// still send (it has not closed its write side).
struct End {
    stream: TcpStream,
    peer: RawFd,
    still_sending: bool,
}

fn forward_until_stopped(listener: &TcpListener, readiness: &Readiness, upstream: SocketAddr, stopping: &AtomicBool) {
    let mut ends: HashMap<RawFd, End> = HashMap::new();
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    while !stopping.load(Ordering::Relaxed) {
        let ready = match readiness.wait(&mut events, STOP_CHECK_MILLIS) {
            Ok(ready) => ready,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for event in &events[..ready] {
            let token = event.u64;
            if token == LISTENER_TOKEN {
                accept_waiting(listener, readiness, upstream, &mut ends);
            } else {
                copy_once(token as RawFd, readiness, &mut ends, &mut buffer);
            }
        }
    }
}

/// Accepts every waiting client and pairs it with a new connection to `upstream`. A failed
/// connect drops that one client; the bench's client reports it as an error of the forwarder arm.
fn accept_waiting(listener: &TcpListener, readiness: &Readiness, upstream: SocketAddr, ends: &mut HashMap<RawFd, End>) {
    loop {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = open_pair(client, upstream, readiness, ends);
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

fn open_pair(client: TcpStream, upstream: SocketAddr, readiness: &Readiness, ends: &mut HashMap<RawFd, End>) -> io::Result<()> {
    let upstream = TcpStream::connect(upstream)?;
    for stream in [&client, &upstream] {
        // The gateway sets no-delay on both sides too; without it Nagle's algorithm would hold
        // back a request's body behind its head.
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
    }
    let (client_fd, upstream_fd) = (client.as_raw_fd(), upstream.as_raw_fd());
    readiness.watch(client_fd, client_fd as u64)?;
    readiness.watch(upstream_fd, upstream_fd as u64)?;
    ends.insert(client_fd, End { stream: client, peer: upstream_fd, still_sending: true });
    ends.insert(upstream_fd, End { stream: upstream, peer: client_fd, still_sending: true });
    Ok(())
}

/// One read from a ready end, and what it read written to the other end. An end that closed
/// its write side has the close passed on; the pair is closed once both ends have, or on any
/// error.
fn copy_once(fd: RawFd, readiness: &Readiness, ends: &mut HashMap<RawFd, End>, buffer: &mut [u8]) {
    // A pair closed earlier in this batch of events leaves its other end's event behind.
    let Some(end) = ends.get(&fd) else { return };
    let peer = end.peer;
    let read = (&end.stream).read(buffer);
    match read {
        Ok(0) => {
            let _ = readiness.unwatch(fd);
            let peer_still_sending = ends.get(&peer).is_some_and(|peer_end| {
                let _ = peer_end.stream.shutdown(Shutdown::Write);
                peer_end.still_sending
            });
            if peer_still_sending {
                if let Some(end) = ends.get_mut(&fd) {
                    end.still_sending = false;
                }
            } else {
                close_pair(fd, peer, ends);
            }
        }
        Ok(count) => {
            let written = ends.get(&peer).map(|peer_end| write_all(&peer_end.stream, &buffer[..count]));
            if !matches!(written, Some(Ok(()))) {
                close_pair(fd, peer, ends);
            }
        }
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
        Err(_) => close_pair(fd, peer, ends),
    }
}

/// Dropping both ends closes their sockets, which also takes them out of the epoll set.
fn close_pair(fd: RawFd, peer: RawFd, ends: &mut HashMap<RawFd, End>) {
    ends.remove(&fd);
    ends.remove(&peer);
}

fn write_all(mut stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(error) if error.kind() == ErrorKind::WouldBlock => wait_for_room(stream.as_raw_fd())?,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn wait_for_room(fd: RawFd) -> io::Result<()> {
    let mut poll = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd, and its count.
    match unsafe { libc::poll(&mut poll, 1, WRITE_ROOM_WAIT_MILLIS) } {
        0 => Err(ErrorKind::TimedOut.into()),
        ready if ready > 0 => Ok(()),
        _ => {
            let error = io::Error::last_os_error();
            if error.kind() == ErrorKind::Interrupted { Ok(()) } else { Err(error) }
        }
    }
}

/// A level-triggered epoll set: a socket stays ready while it has unread bytes, so one read
/// per event is enough and nothing is ever read before it is there.
struct Readiness {
    epoll: OwnedFd,
}

impl Readiness {
    fn new() -> io::Result<Readiness> {
        // SAFETY: epoll_create1 takes only flags; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and nothing else owns it.
        Ok(Readiness { epoll: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: both descriptors are open and the event is a valid epoll_event.
        os_result(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) })
    }

    fn unwatch(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: both descriptors are open; DEL ignores the event argument.
        os_result(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) })
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_millis: i32) -> io::Result<usize> {
        // SAFETY: the buffer holds events.len() epoll_events for the kernel to fill.
        let ready = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, timeout_millis) };
        if ready < 0 { Err(io::Error::last_os_error()) } else { Ok(ready as usize) }
    }
}

fn os_result(result: i32) -> io::Result<()> {
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarder in front of a listener that stands for the mock.
    fn forwarder_to_listener() -> (Forwarder, TcpListener) {
        let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
        let forwarder = Forwarder::start(upstream.local_addr().expect("address"), None).expect("forwarder");
        (forwarder, upstream)
    }

    /// A client connected through the forwarder, and the upstream's end of that connection.
    fn connect_through(forwarder: &Forwarder, upstream: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(forwarder.address()).expect("connect");
        let (far_end, _) = upstream.accept().expect("accept");
        (client, far_end)
    }

    /// The upstream end answers and closes; the client gets the answer and then the close.
    fn answer_and_close(mut far_end: TcpStream, client: &mut TcpStream) {
        far_end.write_all(b"answer").expect("write");
        drop(far_end);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).expect("read until the forwarded close");
        assert_eq!(answer, b"answer");
    }

    #[test]
    fn bytes_go_through_both_ways_and_a_close_is_passed_on() {
        let (forwarder, upstream) = forwarder_to_listener();
        let (mut client, mut far_end) = connect_through(&forwarder, &upstream);

        client.write_all(b"request").expect("write");
        let mut request = [0u8; 7];
        far_end.read_exact(&mut request).expect("read at the upstream");
        assert_eq!(&request, b"request");

        answer_and_close(far_end, &mut client);
    }

    #[test]
    fn connections_stay_apart_and_a_half_close_still_gets_its_answer() {
        let (forwarder, upstream) = forwarder_to_listener();
        let (mut first, mut first_far) = connect_through(&forwarder, &upstream);
        let (mut second, mut second_far) = connect_through(&forwarder, &upstream);

        second.write_all(b"two").expect("write");
        first.write_all(b"one").expect("write");
        let mut read = [0u8; 3];
        first_far.read_exact(&mut read).expect("read");
        assert_eq!(&read, b"one");
        second_far.read_exact(&mut read).expect("read");
        assert_eq!(&read, b"two");

        // The client is done sending: the upstream sees the end of its request, and its answer
        // still comes back through the half-open pair.
        first.shutdown(Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        first_far.read_to_end(&mut rest).expect("read to the forwarded end");
        assert!(rest.is_empty());
        answer_and_close(first_far, &mut first);
    }

    #[test]
    fn its_thread_cpu_time_is_its_own() {
        let (forwarder, _upstream) = forwarder_to_listener();
        let process_before = crate::proc_stats::cpu_micros(std::process::id()).expect("process CPU");
        let forwarder_before = crate::proc_stats::own_thread_cpu_micros(forwarder.thread_id()).expect("thread CPU");
        // This thread works for 300 ms while the forwarder's waits in epoll.
        let started = std::time::Instant::now();
        let mut spin: u64 = 0;
        while started.elapsed() < std::time::Duration::from_millis(300) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let process = crate::proc_stats::cpu_micros(std::process::id()).expect("process CPU") - process_before;
        let forwarder_cpu = crate::proc_stats::own_thread_cpu_micros(forwarder.thread_id()).expect("thread CPU") - forwarder_before;
        assert!(process >= 200_000, "the process used {process} µs");
        assert!(forwarder_cpu < 100_000, "the idle forwarder was charged {forwarder_cpu} µs");
    }
}
