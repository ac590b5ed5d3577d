//! The socket a database client talks over: TCP (no Nagle delay, with keepalive) or a Unix socket.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A connected socket to a database server.
pub enum DatabaseSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl DatabaseSocket {
    /// Connects to the first address of `host` that answers within `timeout` each.
    pub fn connect_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<DatabaseSocket> {
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, format!("no address for host {host}"));
        for address in (host, port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&address, timeout) {
                Ok(stream) => {
                    // Statements are single round trips; Nagle would hold a message for the ACK
                    // of the one before it.
                    stream.set_nodelay(true)?;
                    enable_keepalive(&stream);
                    return Ok(DatabaseSocket::Tcp(stream));
                }
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    pub fn connect_unix(path: &str) -> io::Result<DatabaseSocket> {
        UnixStream::connect(path).map(DatabaseSocket::Unix)
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            DatabaseSocket::Tcp(stream) => stream.write_all(bytes),
            DatabaseSocket::Unix(stream) => stream.write_all(bytes),
        }
    }
}

impl Read for DatabaseSocket {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            DatabaseSocket::Tcp(stream) => stream.read(buffer),
            DatabaseSocket::Unix(stream) => stream.read(buffer),
        }
    }
}

/// Turns on TCP keepalive (the system's timing), as libpq and libmysqlclient do: a server that
/// vanished without closing the connection then ends a blocked read with an error, not never.
fn enable_keepalive(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let enabled: libc::c_int = 1;
    // SAFETY: the descriptor is the open socket `stream` owns, and the option value is a
    // c_int that lives for the call, with its size passed.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&raw const enabled).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        log::debug!("database socket: cannot enable TCP keepalive: {}", io::Error::last_os_error());
    }
}
