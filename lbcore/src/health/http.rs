//! HTTP(S) check: the server is up when `GET path` answers with the expected status code.
//!
//! One HTTP/1.1 request with `Connection: close`; only the status line is read, since the
//! status is all the check compares and a large body must not cost the prober anything.
//! HTTPS uses rustls (ring provider) **without certificate verification**: health checks
//! target the real servers behind the appliance by address, and those are internal hosts
//! that typically carry self-signed or internally issued certificates whose names do not
//! match the address probed. The check is about whether the service answers, not about
//! authenticating it; handshake signatures are still verified, so a peer must at least own
//! the key of the certificate it presents.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::{Deadline, ProbeError, Target, io_error, read_reply, tcp};

/// A status line longer than this is not HTTP.
const MAX_STATUS_LINE: usize = 8 * 1024;

/// The check's settings, borrowed from the configuration.
pub(super) struct Request<'a> {
    pub path: &'a str,
    pub expect_status: u16,
    pub tls: bool,
    /// Host header (and TLS server name); default: the real server's address and port.
    pub host: Option<&'a str>,
}

pub(super) async fn probe(
    request: &Request<'_>,
    target: &Target,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let deadline = Deadline::after(timeout);
    let host = match request.host {
        Some(h) => h.to_string(),
        None => target.server.to_string(),
    };
    let bytes = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lbcore-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        request.path
    );
    let stream = tcp::connect(target.server, &deadline).await?;
    let status = if request.tls {
        let connector = TlsConnector::from(tls_config()?);
        let name = server_name(request.host, target.server);
        let stage = "in the TLS handshake";
        let mut tls = deadline
            .run(stage, async {
                connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| ProbeError::Tls(e.to_string()))
            })
            .await?;
        exchange(&mut tls, bytes.as_bytes(), &deadline).await?
    } else {
        let mut stream = stream;
        exchange(&mut stream, bytes.as_bytes(), &deadline).await?
    };
    if status != request.expect_status {
        return Err(ProbeError::HttpStatus {
            got: status,
            expected: request.expect_status,
        });
    }
    Ok(())
}

/// Sends the request and returns the status code of the answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    deadline: &Deadline,
) -> Result<u16, ProbeError> {
    let stage = "sending the HTTP request";
    deadline
        .run(stage, async {
            stream.write_all(request).await.map_err(io_error(stage))?;
            stream.flush().await.map_err(io_error(stage))
        })
        .await?;
    let line = read_reply(
        stream,
        deadline,
        "waiting for the HTTP status line",
        "status line",
        MAX_STATUS_LINE,
        |buffer| {
            let end = buffer.iter().position(|b| *b == b'\n')?;
            Some(buffer[..end].to_vec())
        },
        ProbeError::HttpMalformed,
    )
    .await?;
    parse_status_line(&line)
}

/// `HTTP/1.1 503 Service Unavailable` -> 503.
fn parse_status_line(line: &[u8]) -> Result<u16, ProbeError> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit())
    {
        let shown: String = text.chars().take(80).collect();
        return Err(ProbeError::HttpMalformed(format!("status line `{shown}`")));
    }
    code.parse()
        .map_err(|_| ProbeError::HttpMalformed(format!("status code `{code}`")))
}

/// The TLS server name: the configured host without a port, or else the server's address
/// (for which rustls sends no SNI, as RFC 6066 wants).
fn server_name(host: Option<&str>, server: SocketAddr) -> ServerName<'static> {
    let fallback = ServerName::IpAddress(server.ip().into());
    let Some(host) = host else {
        return fallback;
    };
    let name = if let Some(bracketed) = host.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            _ => host,
        }
    };
    ServerName::try_from(name.to_string()).unwrap_or(fallback)
}

/// One client configuration for all HTTPS probes: building it costs more than a probe.
fn tls_config() -> Result<Arc<ClientConfig>, ProbeError> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(ProbeError::Tls)
}

/// Accepts any server certificate (see the module documentation for why), but checks the
/// handshake signatures with the provider's algorithms as usual.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rustls::ServerConfig;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::config::Probe;
    use crate::health::testutil::{closed_port, local};
    use tokio::io::AsyncReadExt;

    const TIMEOUT: Duration = Duration::from_secs(3);

    fn http(path: &str, expect_status: u16, tls: bool, host: Option<&str>) -> Probe {
        Probe::Http {
            path: path.into(),
            expect_status,
            tls,
            host: host.map(str::to_string),
        }
    }

    /// Requests the test servers received, as text, and the TLS server names they saw.
    type Log = Arc<Mutex<Vec<String>>>;

    /// Reads one request head and answers `status` with an empty body.
    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, status: u16, log: Log) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        log.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&head).into_owned());
        let reply =
            format!("HTTP/1.1 {status} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// A plain HTTP server answering every request with `status`.
    async fn http_server(status: u16) -> (u16, Log) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Log::default();
        let requests = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, status, requests.clone()));
            }
        });
        (port, log)
    }

    /// An HTTPS server with a fresh self-signed certificate, answering with `status`.
    async fn https_server(status: u16) -> (u16, Log) {
        let certified = rcgen::generate_simple_self_signed(vec!["backend.invalid".into()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Log::default();
        let requests = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let requests = requests.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
                        requests.lock().unwrap().push(format!("SNI {sni}"));
                        answer(tls, status, requests).await;
                    }
                });
            }
        });
        (port, log)
    }

    #[tokio::test]
    async fn expected_status_is_up() {
        let (port, log) = http_server(200).await;
        let result = crate::health::probe(
            &http("/health?x=1", 200, false, None),
            &local(port),
            TIMEOUT,
        )
        .await;
        assert_eq!(result, Ok(()));
        let requests = log.lock().unwrap().clone();
        assert_eq!(requests.len(), 1);
        let head = &requests[0];
        assert!(head.starts_with("GET /health?x=1 HTTP/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    }

    #[tokio::test]
    async fn other_status_is_down() {
        let (port, _log) = http_server(503).await;
        let result =
            crate::health::probe(&http("/", 200, false, None), &local(port), TIMEOUT).await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "HTTP status 503, expected 200"
        );
        // ...unless 503 is what the check expects.
        let result =
            crate::health::probe(&http("/", 503, false, None), &local(port), TIMEOUT).await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn https_with_self_signed_certificate() {
        let (port, log) = https_server(200).await;
        let probe = http("/status", 200, true, Some("pacs.hospital.example:8443"));
        let result = crate::health::probe(&probe, &local(port), TIMEOUT).await;
        assert_eq!(result, Ok(()));
        let requests = log.lock().unwrap().clone();
        assert_eq!(requests[0], "SNI pacs.hospital.example");
        assert!(
            requests[1].contains("\r\nHost: pacs.hospital.example:8443\r\n"),
            "{}",
            requests[1]
        );
        // By address: no SNI at all.
        let result = crate::health::probe(&http("/", 200, true, None), &local(port), TIMEOUT).await;
        assert_eq!(result, Ok(()));
        assert_eq!(log.lock().unwrap()[2], "SNI -");
    }

    #[tokio::test]
    async fn https_status_is_compared() {
        let (port, _log) = https_server(503).await;
        let result = crate::health::probe(&http("/", 200, true, None), &local(port), TIMEOUT).await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "HTTP status 503, expected 200"
        );
    }

    #[tokio::test]
    async fn https_against_plain_http_fails_in_the_handshake() {
        // A plain-HTTP server that, like most, answers bytes it cannot parse with a 400.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut first = [0u8; 512];
                let _ = stream.read(&mut first).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        let result = crate::health::probe(&http("/", 200, true, None), &local(port), TIMEOUT).await;
        let error = result.unwrap_err();
        assert!(matches!(error, ProbeError::Tls(_)), "{error:?}");
        assert!(
            error.to_string().starts_with("TLS handshake failed: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let (port, _silent) = crate::health::testutil::silent_server().await;
        let result = crate::health::probe(
            &http("/", 200, false, None),
            &local(port),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "timed out after 300ms while waiting for the HTTP status line"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_connection_refused() {
        let result =
            crate::health::probe(&http("/", 200, false, None), &local(closed_port()), TIMEOUT)
                .await;
        assert_eq!(result, Err(ProbeError::Refused));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r"), Ok(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 500"), Ok(500));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH_9.2").is_err());
        assert!(parse_status_line(b"HTTP/1.1 20 OK").is_err());
    }

    #[test]
    fn server_names() {
        let server: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let name = |h| format!("{:?}", server_name(h, server));
        assert!(name(Some("pacs.example:8443")).contains("pacs.example"));
        assert!(!name(Some("pacs.example:8443")).contains("8443"));
        assert!(name(Some("pacs.example")).contains("pacs.example"));
        assert!(name(None).contains("IpAddress"));
        assert!(name(Some("[fd00::1]:443")).contains("IpAddress"));
        assert!(name(Some("127.0.0.2")).contains("IpAddress"));
    }
}
