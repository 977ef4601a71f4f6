//! TCP connect check: the server is up when it accepts a connection. Also the connect step
//! shared by the probes that speak a protocol over TCP (DICOM, HL7, HTTP).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{Deadline, ProbeError, Target};

pub(super) async fn probe(target: &Target, timeout: Duration) -> Result<(), ProbeError> {
    let deadline = Deadline::after(timeout);
    let stream = connect(target.server, &deadline).await?;
    // Closing right away is all a connect check needs; the server sees an ordinary FIN.
    drop(stream);
    Ok(())
}

/// Connects within the deadline. The request/response probes write each message in one
/// go and then wait for the answer, so Nagle's algorithm would only add latency.
pub(super) async fn connect(
    addr: SocketAddr,
    deadline: &Deadline,
) -> Result<TcpStream, ProbeError> {
    let stream = deadline
        .run("connecting", async {
            TcpStream::connect(addr).await.map_err(|e| match e.kind() {
                ErrorKind::ConnectionRefused => ProbeError::Refused,
                _ => ProbeError::Connect {
                    reason: e.to_string(),
                },
            })
        })
        .await?;
    // Failing to set the option changes nothing about the server's health.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Probe;
    use crate::health::testutil::{closed_port, local};

    #[tokio::test]
    async fn tcp_accepting_server_is_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Target {
            service: addr,
            server: addr,
        };
        let result = crate::health::probe(&Probe::Tcp, &target, Duration::from_secs(2)).await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn tcp_nothing_listening_is_refused() {
        let target = local(closed_port());
        let result = crate::health::probe(&Probe::Tcp, &target, Duration::from_secs(2)).await;
        assert_eq!(result, Err(ProbeError::Refused));
        assert_eq!(
            result.unwrap_err().to_string(),
            "connection refused".to_string()
        );
    }

    #[tokio::test]
    async fn none_always_succeeds() {
        let target = local(closed_port());
        let result = crate::health::probe(&Probe::None, &target, Duration::from_secs(2)).await;
        assert_eq!(result, Ok(()));
    }
}
