//! The client side of the SOCKS5 handshake (RFC 1928, with RFC 1929 username/password auth).
//!
//! It runs over any `Read + Write`; the transport passes its may stream (through ureq's
//! adapter) so the handshake parks the coroutine like any other read. Only the CONNECT command
//! is used.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use crate::upstream::error::TransportFailure;

const VERSION: u8 = 0x05;
const METHOD_NO_AUTH: u8 = 0x00;
const METHOD_USERNAME_PASSWORD: u8 = 0x02;
const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
const USERNAME_PASSWORD_VERSION: u8 = 0x01;
const COMMAND_CONNECT: u8 = 0x01;
const ADDRESS_IPV4: u8 = 0x01;
const ADDRESS_DOMAIN: u8 = 0x03;
const ADDRESS_IPV6: u8 = 0x04;

/// Where the proxy should connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SocksTarget<'a> {
    Address(SocketAddr),
    /// A host name the proxy resolves (`socks5h://`, or a name ureq did not resolve).
    Domain(&'a str, u16),
}

/// Credentials from the proxy URL's user info.
#[derive(Clone, Debug)]
pub(crate) struct SocksCredentials<'a> {
    pub(crate) username: &'a str,
    pub(crate) password: &'a str,
}

/// Negotiates the method, authenticates if the proxy asks, and asks it to connect to
/// `target`. On success the stream is a tunnel to the target. Protocol failures are returned
/// as `TransportFailure::Proxy` inside the `io::Error`; IO errors pass through unchanged.
pub(crate) fn socks5_handshake(
    stream: &mut (impl Read + Write),
    target: &SocksTarget<'_>,
    credentials: Option<&SocksCredentials<'_>>,
) -> io::Result<()> {
    let greeting: &[u8] = match credentials {
        Some(_) => &[VERSION, 2, METHOD_NO_AUTH, METHOD_USERNAME_PASSWORD],
        None => &[VERSION, 1, METHOD_NO_AUTH],
    };
    stream.write_all(greeting)?;
    stream.flush()?;

    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice)?;
    if choice[0] != VERSION {
        return Err(proxy_failure("the proxy does not speak SOCKS5"));
    }
    match (choice[1], credentials) {
        (METHOD_NO_AUTH, _) => {}
        (METHOD_USERNAME_PASSWORD, Some(credentials)) => authenticate(stream, credentials)?,
        (METHOD_USERNAME_PASSWORD, None) => {
            return Err(proxy_failure(
                "the SOCKS5 proxy requires a username and password",
            ));
        }
        (METHOD_NONE_ACCEPTABLE, _) => {
            return Err(proxy_failure(
                "the SOCKS5 proxy accepts none of our auth methods",
            ));
        }
        (other, _) => {
            return Err(proxy_failure(&format!(
                "the SOCKS5 proxy chose unknown auth method {other}"
            )));
        }
    }

    stream.write_all(&connect_request(target)?)?;
    stream.flush()?;
    read_connect_reply(stream)
}

fn authenticate(
    stream: &mut (impl Read + Write),
    credentials: &SocksCredentials<'_>,
) -> io::Result<()> {
    let username = credentials.username.as_bytes();
    let password = credentials.password.as_bytes();
    if username.len() > 255 || password.len() > 255 {
        return Err(proxy_failure(
            "SOCKS5 username and password are limited to 255 bytes each",
        ));
    }
    let mut request = Vec::with_capacity(3 + username.len() + password.len());
    request.push(USERNAME_PASSWORD_VERSION);
    request.push(username.len() as u8);
    request.extend_from_slice(username);
    request.push(password.len() as u8);
    request.extend_from_slice(password);
    stream.write_all(&request)?;
    stream.flush()?;

    let mut reply = [0u8; 2];
    stream.read_exact(&mut reply)?;
    if reply[1] != 0 {
        return Err(proxy_failure(
            "the SOCKS5 proxy rejected the username or password",
        ));
    }
    Ok(())
}

fn connect_request(target: &SocksTarget<'_>) -> io::Result<Vec<u8>> {
    let mut request = vec![VERSION, COMMAND_CONNECT, 0x00];
    let port = match target {
        SocksTarget::Address(SocketAddr::V4(addr)) => {
            request.push(ADDRESS_IPV4);
            request.extend_from_slice(&addr.ip().octets());
            addr.port()
        }
        SocksTarget::Address(SocketAddr::V6(addr)) => {
            request.push(ADDRESS_IPV6);
            request.extend_from_slice(&addr.ip().octets());
            addr.port()
        }
        SocksTarget::Domain(host, port) => {
            if host.is_empty() || host.len() > 255 {
                return Err(proxy_failure("the host name is too long for SOCKS5"));
            }
            request.push(ADDRESS_DOMAIN);
            request.push(host.len() as u8);
            request.extend_from_slice(host.as_bytes());
            *port
        }
    };
    request.extend_from_slice(&port.to_be_bytes());
    Ok(request)
}

fn read_connect_reply(stream: &mut impl Read) -> io::Result<()> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head)?;
    if head[0] != VERSION {
        return Err(proxy_failure("malformed SOCKS5 connect reply"));
    }
    if head[1] != 0 {
        return Err(proxy_failure(&format!(
            "the SOCKS5 proxy could not connect: {}",
            reply_meaning(head[1])
        )));
    }
    // The bound address is of no use to us, but it must be consumed: what follows is the tunnel.
    let address_length = match head[3] {
        ADDRESS_IPV4 => 4,
        ADDRESS_IPV6 => 16,
        ADDRESS_DOMAIN => {
            let mut length = [0u8; 1];
            stream.read_exact(&mut length)?;
            usize::from(length[0])
        }
        _ => return Err(proxy_failure("malformed SOCKS5 connect reply")),
    };
    let mut bound_address_and_port = vec![0u8; address_length + 2];
    stream.read_exact(&mut bound_address_and_port)?;
    Ok(())
}

fn reply_meaning(code: u8) -> String {
    match code {
        1 => "general failure".to_string(),
        2 => "connection not allowed by ruleset".to_string(),
        3 => "network unreachable".to_string(),
        4 => "host unreachable".to_string(),
        5 => "connection refused".to_string(),
        6 => "TTL expired".to_string(),
        7 => "command not supported".to_string(),
        8 => "address type not supported".to_string(),
        other => format!("reply code {other}"),
    }
}

fn proxy_failure(message: &str) -> io::Error {
    TransportFailure::Proxy(message.to_string()).into_io_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::error::UpstreamError;

    /// A scripted proxy: reads come from `replies`, writes are collected in `sent`.
    struct ScriptedProxy {
        replies: io::Cursor<Vec<u8>>,
        sent: Vec<u8>,
    }

    impl ScriptedProxy {
        fn new(replies: &[u8]) -> ScriptedProxy {
            ScriptedProxy {
                replies: io::Cursor::new(replies.to_vec()),
                sent: Vec::new(),
            }
        }
    }

    impl Read for ScriptedProxy {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            self.replies.read(buffer)
        }
    }

    impl Write for ScriptedProxy {
        fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
            self.sent.extend_from_slice(buffer);
            Ok(buffer.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const SUCCESS_IPV4_REPLY: [u8; 10] = [5, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90];

    #[test]
    fn no_auth_domain_connect() {
        let mut replies = vec![5, METHOD_NO_AUTH];
        replies.extend_from_slice(&SUCCESS_IPV4_REPLY);
        let mut proxy = ScriptedProxy::new(&replies);
        socks5_handshake(
            &mut proxy,
            &SocksTarget::Domain("api.example.com", 443),
            None,
        )
        .unwrap();

        let mut expected = vec![5, 1, 0, 5, 1, 0, 3, 15];
        expected.extend_from_slice(b"api.example.com");
        expected.extend_from_slice(&[0x01, 0xbb]);
        assert_eq!(proxy.sent, expected);
    }

    #[test]
    fn username_password_and_ipv6_target_with_domain_bound_address() {
        let mut replies = vec![5, METHOD_USERNAME_PASSWORD, 1, 0, 5, 0, 0, 3, 4];
        replies.extend_from_slice(b"host");
        replies.extend_from_slice(&[0, 80]);
        let mut proxy = ScriptedProxy::new(&replies);
        let credentials = SocksCredentials {
            username: "user",
            password: "secret",
        };
        let target = SocksTarget::Address("[::1]:8080".parse().unwrap());
        socks5_handshake(&mut proxy, &target, Some(&credentials)).unwrap();

        let mut expected = vec![5, 2, 0, 2, 1, 4];
        expected.extend_from_slice(b"user");
        expected.push(6);
        expected.extend_from_slice(b"secret");
        expected.extend_from_slice(&[5, 1, 0, 4]);
        expected.extend_from_slice(&[0; 15]);
        expected.push(1);
        expected.extend_from_slice(&[0x1f, 0x90]);
        assert_eq!(proxy.sent, expected);
    }

    #[test]
    fn failures_are_proxy_errors_without_credentials_in_the_text() {
        let cases: [(&[u8], &str); 4] = [
            (
                &[5, 0xff],
                "proxy: the SOCKS5 proxy accepts none of our auth methods",
            ),
            (
                &[5, 2, 1, 1],
                "proxy: the SOCKS5 proxy rejected the username or password",
            ),
            (
                &[5, 0, 5, 5, 0, 1],
                "proxy: the SOCKS5 proxy could not connect: connection refused",
            ),
            (&[4, 0], "proxy: the proxy does not speak SOCKS5"),
        ];
        let credentials = SocksCredentials {
            username: "user",
            password: "secret",
        };
        for (replies, expected) in cases {
            let mut proxy = ScriptedProxy::new(replies);
            let target = SocksTarget::Domain("example.com", 80);
            let error = socks5_handshake(&mut proxy, &target, Some(&credentials)).unwrap_err();
            assert_eq!(UpstreamError::from_io_error(&error).to_string(), expected);
        }
    }

    #[test]
    fn auth_required_without_credentials_fails() {
        let mut proxy = ScriptedProxy::new(&[5, METHOD_USERNAME_PASSWORD]);
        let error = socks5_handshake(&mut proxy, &SocksTarget::Domain("example.com", 80), None)
            .unwrap_err();
        assert!(matches!(
            UpstreamError::from_io_error(&error),
            UpstreamError::Proxy(_)
        ));
    }

    #[test]
    fn truncated_reply_is_an_io_error() {
        let mut proxy = ScriptedProxy::new(&[5, 0, 5, 0]);
        let error = socks5_handshake(&mut proxy, &SocksTarget::Domain("example.com", 80), None)
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
