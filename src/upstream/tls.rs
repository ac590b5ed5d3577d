//! TLS for https upstreams and https proxies: rustls with the ring provider, Mozilla's roots
//! compiled in (webpki-roots, so a FROM-scratch image works) plus an optional extra CA bundle.
//!
//! ureq's `RustlsConnector` builds its rustls config from a `TlsConfig`, whose roots are either
//! webpki's or a specific certificate list, never both. Users who add a private CA must still
//! reach the public providers, so this connector builds the rustls config itself. It wraps
//! whatever transport the chain made (a may TCP stream, a SOCKS5 or CONNECT tunnel).

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::{fmt, fs};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use ureq::tls::{PemItem, parse_pem};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, NextTimeout, Transport,
    TransportAdapter,
};

use crate::upstream::buffers::ConnectionBuffers;
use crate::upstream::error::TransportFailure;
use crate::upstream::resolver::host_and_port;
use crate::upstream::transport::remaining_connect_timeout;

/// Builds the rustls client config: webpki roots plus every certificate in the PEM file.
/// Errors name the file and the problem.
pub(crate) fn client_config(extra_ca_pem_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca_pem_file {
        add_pem_certificates(&mut roots, path)?;
    }
    // rustls 0.23.48 deprecates ring's provider because ring has no post-quantum key exchange
    // (X25519MLKEM768). The provider that has it, aws-lc-rs, is a second C crypto library, built
    // with cmake, far larger than the 120 KB the router build has left under 5 MiB (issue 11).
    // Key exchange stays X25519 with ring until ring, or a small Rust ML-KEM, can do it.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("tls setup failed: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn add_pem_certificates(roots: &mut RootCertStore, path: &Path) -> Result<(), String> {
    let shown = path.display();
    let pem = fs::read(path).map_err(|error| format!("cannot read CA file {shown}: {error}"))?;
    let mut certificate_count = 0;
    for item in parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(certificate)) => {
                certificate_count += 1;
                let der = CertificateDer::from(certificate.der().to_vec());
                roots.add(der).map_err(|error| {
                    format!(
                        "CA file {shown}: certificate {certificate_count} is not usable: {error}"
                    )
                })?;
            }
            // A bundle may carry other PEM sections (a key, parameters); they are not roots.
            Ok(_) => {}
            Err(error) => return Err(format!("CA file {shown} is not valid PEM: {error}")),
        }
    }
    if certificate_count == 0 {
        return Err(format!("CA file {shown} contains no PEM certificate"));
    }
    Ok(())
}

/// Wraps the chained transport in TLS when the URL is https and it is not TLS already (an
/// https proxy's tunnel is plain again: TLS to the target goes inside it).
pub(crate) struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl TlsConnector {
    pub(crate) fn new(config: Arc<ClientConfig>) -> TlsConnector {
        TlsConnector { config }
    }
}

impl<In: Transport> Connector<In> for TlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let authority = details
            .uri
            .authority()
            .ok_or_else(|| ureq::Error::BadUri("missing host".to_string()))?;
        let (bare_host, _) = host_and_port(authority.as_str());
        let server_name = ServerName::try_from(bare_host.to_string()).map_err(|_| {
            TransportFailure::Tls(format!("{bare_host} is not a valid TLS server name"))
                .into_ureq_error()
        })?;
        let mut connection = ClientConnection::new(self.config.clone(), server_name)
            .map_err(|error| TransportFailure::Tls(error.to_string()).into_ureq_error())?;

        let mut socket = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        socket.set_timeout(remaining_connect_timeout(details));
        connection
            .complete_io(&mut socket)
            .map_err(handshake_error)?;
        if connection.is_handshaking() {
            return Err(TransportFailure::Tls(
                "the server closed the connection during the handshake".to_string(),
            )
            .into_ureq_error());
        }

        let buffers = ConnectionBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsTransport {
            buffers,
            stream: StreamOwned::new(connection, socket),
        })))
    }
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("TlsConnector").finish()
    }
}

/// A TLS session over another transport.
pub(crate) struct TlsTransport {
    buffers: ConnectionBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        // The inner transport applies the timeout (and the CallControl) to each socket IO.
        self.stream.get_mut().set_timeout(timeout);
        // A request head is held back until its body joins it (one TLS record, one write) or
        // the response is read (`ConnectionBuffers::take_output`).
        match self.buffers.take_output(amount) {
            Some(bytes) => self.stream.write_all(bytes).map_err(record_error),
            None => Ok(()),
        }
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        if let Some(held) = self.buffers.take_held_output() {
            self.stream.write_all(held).map_err(record_error)?;
        }
        if self.buffers.output_is_idle() && self.stream.conn.wants_read() {
            // The response has started and the session has no plaintext left: this read goes
            // to the socket, which may make it wait (a stream between events), so the session's
            // output is given back first, as the socket's own is when its read would wait.
            // Whether it will wait is known only below; a response that simply needs another
            // record allocates the output again for its connection's next request, which costs
            // little beside a TLS session's decryption. Held TLS streams: 87 KiB each before
            // either release, 72 with the socket's, 50 with both (1,000 streams, VmRSS).
            self.buffers.release_output();
        }
        if self.stream.conn.wants_read() {
            // The session decrypts into its own buffer and the plaintext is copied into ours
            // only once it is there, so an empty input of ours need not be held while the
            // socket waits (1,000 held TLS streams: 32.9 KiB each instead of 33.8). rustls
            // keeps 4 KiB of its own for the records it reads, for the session's life.
            self.buffers.release_empty_input();
        }
        let plaintext = self.stream.fill_buf().map_err(record_error)?;
        let input = self.buffers.input_append_buf();
        let amount = plaintext.len().min(input.len());
        input[..amount].copy_from_slice(&plaintext[..amount]);
        self.stream.consume(amount);
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        !self.buffers.holds_output() && self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TlsTransport")
            .field("inner", &self.stream.sock.inner())
            .finish()
    }
}

/// During the handshake every failure not raised by our transport (a timeout, a cancel, a
/// refused connection) is a TLS failure: the server did not complete a handshake we accept.
fn handshake_error(error: io::Error) -> ureq::Error {
    if carries_our_error(&error) {
        return ureq::Error::from(error);
    }
    match rustls_error_of(&error) {
        Some(rustls_error) => TransportFailure::Tls(rustls_error.to_string()).into_ureq_error(),
        None => TransportFailure::Tls(format!("handshake failed: {error}")).into_ureq_error(),
    }
}

/// After the handshake only rustls's own errors are TLS failures; IO errors stay IO errors.
fn record_error(error: io::Error) -> ureq::Error {
    if carries_our_error(&error) {
        return ureq::Error::from(error);
    }
    match rustls_error_of(&error) {
        Some(rustls_error) => TransportFailure::Tls(rustls_error.to_string()).into_ureq_error(),
        None => ureq::Error::Io(error),
    }
}

fn carries_our_error(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<TransportFailure>() || inner.is::<ureq::Error>())
}

fn rustls_error_of(error: &io::Error) -> Option<&rustls::Error> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tls")
            .join(name)
    }

    #[test]
    fn extra_ca_file_is_added_to_the_webpki_roots() {
        assert!(client_config(None).is_ok());
        assert!(client_config(Some(&fixture("ca.pem"))).is_ok());
    }

    #[test]
    fn bad_ca_files_are_reported_with_their_name() {
        let missing = fixture("missing.pem");
        let error = client_config(Some(&missing)).unwrap_err();
        assert!(error.starts_with("cannot read CA file "), "{error}");
        assert!(error.contains("missing.pem"), "{error}");

        let key_only = fixture("server.key");
        let error = client_config(Some(&key_only)).unwrap_err();
        assert!(
            error.contains("server.key contains no PEM certificate"),
            "{error}"
        );
    }
}
