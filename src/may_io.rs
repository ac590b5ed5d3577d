//! may TCP streams whose reads and writes survive may's spurious errors.
//!
//! may 0.3 can hand a coroutine an error left over from an earlier operation on the same worker:
//! seen under load as `EINPROGRESS` ("Operation now in progress", what a non-blocking connect
//! reports) on a read or write of an established stream. The error is reported before any system
//! call is made, so nothing was read or written and trying again is safe; `EAGAIN` is treated the
//! same way (a may stream parks instead of returning it). Without the retry a client's new
//! connection was closed at random, unanswered, whenever upstream connects were being made
//! (1,000 streams opened through a TLS upstream: 1 to 3 clients got an empty reply in most runs),
//! and upstream streams broke under 1,000 concurrent.

use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};

/// Consecutive spurious errors tolerated on one read or write before the error is believed.
const MAX_SPURIOUS_RETRIES: u32 = 16;

fn is_spurious_may_error(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(code) if code == libc::EINPROGRESS || code == libc::EAGAIN)
}

/// Runs `operation` again while it fails with a spurious may error, at most
/// `MAX_SPURIOUS_RETRIES` times in a row.
fn retrying_spurious_errors<T>(mut operation: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut spurious_errors = 0;
    loop {
        match operation() {
            Err(error) if is_spurious_may_error(&error) && spurious_errors < MAX_SPURIOUS_RETRIES => spurious_errors += 1,
            other => return other,
        }
    }
}

/// A may TCP stream whose `read` and `write` retry may's spurious errors; everything else (timeouts,
/// shutdown, addresses) is the stream's own, through `Deref`.
#[derive(Debug)]
pub struct SteadyTcpStream(pub may::net::TcpStream);

impl Read for SteadyTcpStream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        retrying_spurious_errors(|| self.0.read(buffer))
    }
}

impl Write for SteadyTcpStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        retrying_spurious_errors(|| self.0.write(data))
    }

    fn flush(&mut self) -> io::Result<()> {
        retrying_spurious_errors(|| self.0.flush())
    }
}

impl Deref for SteadyTcpStream {
    type Target = may::net::TcpStream;

    fn deref(&self) -> &may::net::TcpStream {
        &self.0
    }
}

impl DerefMut for SteadyTcpStream {
    fn deref_mut(&mut self) -> &mut may::net::TcpStream {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spurious_errors_are_retried_and_others_are_not() {
        let mut failures = vec![libc::EINPROGRESS, libc::EAGAIN, libc::EINPROGRESS];
        let read = retrying_spurious_errors(|| match failures.pop() {
            Some(code) => Err(io::Error::from_raw_os_error(code)),
            None => Ok(7),
        });
        assert_eq!(read.unwrap(), 7);

        let mut calls = 0;
        let refused = retrying_spurious_errors(|| -> io::Result<()> {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::ECONNRESET))
        });
        assert_eq!(refused.unwrap_err().raw_os_error(), Some(libc::ECONNRESET));
        assert_eq!(calls, 1, "a real error is believed at once");

        let mut calls = 0;
        let endless = retrying_spurious_errors(|| -> io::Result<()> {
            calls += 1;
            Err(io::Error::from_raw_os_error(libc::EINPROGRESS))
        });
        assert!(endless.is_err());
        assert_eq!(calls, MAX_SPURIOUS_RETRIES + 1, "an error that keeps coming is believed");
    }
}
