//! A zero-work TCP forwarder on the gateway's CPU: what any proxy, however fast, adds to a
//! request on this machine, measured beside the gateway in the same run.
//!
//! The wake-up floor (`wake_floor.rs`) times bare Unix-socket round trips. A proxy also pays for
//! two more TCP loopback connections (the kernel's send and receive paths, acknowledgements)
//! and for the wake-ups of its own threads. This forwarder pays exactly those and nothing else:
//! for each client connection it opens one connection to the mock and copies bytes both ways on
//! two blocking threads pinned to the gateway's CPU, without parsing, buffering whole requests
//! or looking at a header. The bench sends it the direct arm's requests (the mock ignores the
//! `Host` header), so "forwarder − direct" is the added latency of a proxy that does no work,
//! and "gateway − forwarder" is what the gateway's own work costs.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::wake_floor::pin_current_thread;

/// Bytes copied per read; the bench's requests and answers fit in one.
const COPY_BUFFER_BYTES: usize = 64 * 1024;

pub struct Forwarder {
    address: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on a free loopback port and forwards every connection to `upstream`; its threads
    /// run on `cpu` when given.
    pub fn start(upstream: SocketAddr, cpu: Option<u32>) -> std::io::Result<Forwarder> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor_stopping = Arc::clone(&stopping);
        let acceptor = std::thread::Builder::new().name("forwarder-accept".to_string()).spawn(move || {
            if let Some(cpu) = cpu {
                pin_current_thread(cpu);
            }
            for client in listener.incoming() {
                if acceptor_stopping.load(Ordering::Relaxed) {
                    break;
                }
                // A failed accept or connect drops this one connection; the bench's client
                // reports it as an error of the forwarder arm.
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(upstream) else { continue };
                let _ = spawn_pumps(client, upstream, cpu);
            }
        })?;
        Ok(Forwarder { address, stopping, acceptor: Some(acceptor) })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        // The acceptor is blocked in accept; one connection wakes it to see the flag.
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Two threads, one per direction. Each ends when its source closes (it then closes the write
/// side of its destination, so the other end sees the close too) or on any error.
fn spawn_pumps(client: TcpStream, upstream: TcpStream, cpu: Option<u32>) -> std::io::Result<()> {
    // The gateway sets no-delay on both sides too; without it Nagle's algorithm would hold
    // back a request's body behind its head.
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let client_to_upstream = (client.try_clone()?, upstream.try_clone()?);
    let upstream_to_client = (upstream, client);
    for (source, destination) in [client_to_upstream, upstream_to_client] {
        std::thread::Builder::new().name("forwarder-pump".to_string()).spawn(move || {
            if let Some(cpu) = cpu {
                pin_current_thread(cpu);
            }
            pump(source, destination);
        })?;
    }
    Ok(())
}

fn pump(mut source: TcpStream, mut destination: TcpStream) {
    let mut buffer = vec![0u8; COPY_BUFFER_BYTES];
    loop {
        match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => {
                if destination.write_all(&buffer[..read]).is_err() {
                    break;
                }
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = destination.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_go_through_both_ways_and_a_close_is_passed_on() {
        let upstream = TcpListener::bind("127.0.0.1:0").expect("bind");
        let forwarder = Forwarder::start(upstream.local_addr().expect("address"), None).expect("forwarder");
        let mut client = TcpStream::connect(forwarder.address()).expect("connect");
        let (mut far_end, _) = upstream.accept().expect("accept");

        client.write_all(b"request").expect("write");
        let mut request = [0u8; 7];
        far_end.read_exact(&mut request).expect("read at the upstream");
        assert_eq!(&request, b"request");

        far_end.write_all(b"answer").expect("write");
        drop(far_end);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).expect("read until the forwarded close");
        assert_eq!(answer, b"answer");
    }
}
