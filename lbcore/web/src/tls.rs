//! The web API's certificate: `cert.pem` and `key.pem` in the TLS directory on /data
//! (`/data/tls`). A fresh appliance has none, so the first start makes a self-signed
//! one for the host name; later starts use what is there, so a certificate the hospital
//! puts in its place (or the one browsers were told to trust) stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use appliance::atomic::{self, AtomicWriteError};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] AtomicWriteError),
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("{path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

pub use appliance::layout::{TLS_CERT_FILE as CERT_FILE, TLS_KEY_FILE as KEY_FILE};

/// The server's TLS settings from `dir`, making a self-signed certificate for
/// `hostname` when there is none. A pair that cannot be used (a half-written pair
/// after a crash, a key that does not parse) is moved aside with the suffix
/// `.broken-<unix time>` (never overwriting an earlier one) and replaced, so that the
/// appliance stays reachable over HTTPS; the log says so, and the hospital's
/// certificate can be put back from the file moved aside.
pub fn load_or_create(dir: &Path, hostname: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let cert = dir.join(CERT_FILE);
    let key = dir.join(KEY_FILE);
    if cert.exists() && key.exists() {
        match load(&cert, &key) {
            Ok(c) => return Ok(c),
            Err(e) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                warn!(
                    "{e}: the pair is moved aside (suffix .broken-{stamp}) and a new self-signed certificate made"
                );
                for p in [&cert, &key] {
                    let mut aside = p.clone().into_os_string();
                    aside.push(format!(".broken-{stamp}"));
                    let _ = std::fs::rename(p, aside);
                }
            }
        }
    }
    create(dir, hostname)?;
    load(&cert, &key)
}

fn create(dir: &Path, hostname: &str) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let made = self_signed(hostname, &addresses())?;
    // key first: a crash between the two leaves no certificate, which the next start
    // treats as "none yet" rather than pairing an old certificate with a new key
    let key = dir.join(KEY_FILE);
    let cert = dir.join(CERT_FILE);
    let _ = std::fs::remove_file(&cert);
    atomic::write(&key, made.1.as_bytes(), 0o600)?;
    atomic::write(&cert, made.0.as_bytes(), 0o644)?;
    info!(
        "made a self-signed certificate for {hostname} in {}",
        cert.display()
    );
    Ok(())
}

/// How long a self-signed certificate is valid: browsers take what an appliance makes
/// for itself for this long (the hospital replaces it with its own when it wants a
/// trusted one).
const VALID_YEARS: i32 = 10;

/// The addresses a browser may use to reach this appliance: every address of its
/// interfaces but loopback and IPv6 link-local ones.
fn addresses() -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|ifs| {
            ifs.filter_map(|i| {
                let a = i.address?;
                a.as_sockaddr_in()
                    .map(|v4| std::net::IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
            })
            .filter(|ip| !ip.is_loopback() && !matches!(ip, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
            .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// A self-signed certificate (PEM) and its key (PEM): the host name as CN, the host
/// name and `addresses` as subject alternative names, valid from yesterday (a clock a
/// little behind) for [`VALID_YEARS`].
pub fn self_signed(
    hostname: &str,
    addresses: &[std::net::IpAddr],
) -> Result<(String, String), TlsError> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
    let fail = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, hostname);
    dn.push(
        DnType::OrganizationName,
        "Medical load balancer (self-signed)",
    );
    params.distinguished_name = dn;
    let mut sans = vec![SanType::DnsName(hostname.try_into().map_err(fail)?)];
    if hostname != "localhost" {
        sans.push(SanType::DnsName("localhost".try_into().map_err(fail)?));
    }
    sans.extend(addresses.iter().map(|a| SanType::IpAddress(*a)));
    params.subject_alt_names = sans;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now
        .replace_year(now.year() + VALID_YEARS)
        .unwrap_or(now + time::Duration::days(365 * i64::from(VALID_YEARS)));
    let key = KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let bad = |path: &Path, reason: String| TlsError::Load {
        path: path.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "holds no certificate".into()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| bad(cert, format!("does not go with {}: {e}", key.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A directory for one test's pair (`tls` inside a fresh temporary directory, so
    /// that load_or_create has to make it).
    fn tempdir(_name: &str) -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("tls");
        (t, d)
    }

    #[test]
    fn made_once_then_kept() {
        let (_t, dir) = tempdir("kept");
        load_or_create(&dir, "lb1.example").unwrap();
        let key_mode = std::fs::metadata(dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600, "the key is private");
        let first = std::fs::read(dir.join(CERT_FILE)).unwrap();
        load_or_create(&dir, "lb1.example").unwrap();
        assert_eq!(std::fs::read(dir.join(CERT_FILE)).unwrap(), first);
    }

    #[test]
    fn a_broken_pair_is_moved_aside_and_replaced() {
        let (_t, dir) = tempdir("broken");
        load_or_create(&dir, "lb1.example").unwrap();
        std::fs::write(dir.join(KEY_FILE), "not a key").unwrap();
        load_or_create(&dir, "lb1.example").unwrap();
        let aside: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("key.pem.broken-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(
            std::fs::read_to_string(dir.join(&aside[0])).unwrap(),
            "not a key"
        );
        assert!(load(&dir.join(CERT_FILE), &dir.join(KEY_FILE)).is_ok());
    }

    #[test]
    fn a_certificate_without_its_key_is_replaced() {
        let (_t, dir) = tempdir("half");
        load_or_create(&dir, "lb1.example").unwrap();
        std::fs::remove_file(dir.join(KEY_FILE)).unwrap();
        load_or_create(&dir, "lb1.example").unwrap();
        assert!(load(&dir.join(CERT_FILE), &dir.join(KEY_FILE)).is_ok());
    }
}
