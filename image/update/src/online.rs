//! Online updates: the update server's index, and downloads that resume.
//!
//! The index (JSON, at the configured HTTPS URL) lists releases; `lbupdate index`
//! writes it for a directory of archives:
//!
//! ```json
//! {"format": 1, "product": "medlb", "releases": [
//!   {"version": "0.2.0", "min_version": "0.1.0", "archive": "medlb-0.2.0.update",
//!    "checksum": "medlb-0.2.0.update.sha256", "size": 18874880, "notes": "..."}]}
//! ```
//!
//! `archive` and `checksum` are relative to the index (or absolute https:// URLs). The
//! index is not trusted for anything but finding the archive: the archive is verified
//! like an uploaded one. The server's certificate is checked against the system's CA
//! roots and, for a hospital's internal mirror, an extra CA file; an HTTP proxy (with
//! credentials) may stand in between. HTTP is hyper, TLS rustls with ring, as
//! everywhere in the appliance.
//!
//! A download that breaks off resumes: the part already received is kept and asked
//! for again from where it stopped (`Range`), on the condition that it is still the
//! same file (`If-Range` with the server's `ETag` or `Last-Modified`); a server that
//! answers with the whole file instead makes the agent start over. What is received is
//! never trusted before the whole archive passed the checksum and signature checks.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::manifest::PRODUCT;
use crate::version::Version;
use appliance::files::update_settings::UpdateSettings;

/// The index format this version writes.
pub const INDEX_FORMAT: u32 = 1;
/// The largest index accepted.
const MAX_INDEX: usize = 1 << 20;
/// Time to connect and to receive a response's head; and the longest pause inside a body.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a download before it is given up (each resumes where the last stopped).
pub const ATTEMPTS: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    #[serde(default)]
    pub format: u32,
    pub product: String,
    pub releases: Vec<Release>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    #[serde(default)]
    pub min_version: String,
    pub archive: String,
    pub checksum: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub notes: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    #[error("no update server is set (url in the update settings)")]
    NoServer,
    #[error("`{0}` is not an https:// address")]
    Url(String),
    #[error("cannot read the CA file {0}: {1}")]
    CaFile(String, String),
    #[error("cannot reach {0}: {1}")]
    Connect(String, String),
    #[error("the proxy refused the connection to {0}: {1}")]
    Proxy(String, String),
    #[error("the TLS connection to {0} failed: {1}")]
    Tls(String, String),
    #[error("{0} answered {1}")]
    Status(String, StatusCode),
    #[error("{0} did not answer within {1} s")]
    Timeout(String, u64),
    #[error("the connection to {0} broke off: {1}")]
    Broken(String, String),
    #[error("the update server's index is not understood: {0}")]
    Index(String),
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
}

/// An HTTPS client as the settings ask for it.
pub struct Fetcher {
    tls: TlsConnector,
    proxy: Option<(String, u16, Option<String>)>,
}

impl Fetcher {
    pub fn new(settings: &UpdateSettings) -> Result<Fetcher, OnlineError> {
        let mut roots = rustls::RootCertStore::empty();
        // the system's roots (the image carries Debian's bundle); a missing one leaves
        // only the CA file, which an internal mirror needs anyway
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(ca) = &settings.ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .map_err(|e| OnlineError::CaFile(ca.clone(), e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| OnlineError::CaFile(ca.clone(), e.to_string()))?;
            if certs.is_empty() {
                return Err(OnlineError::CaFile(
                    ca.clone(),
                    "it holds no certificate".into(),
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| OnlineError::CaFile(ca.clone(), e.to_string()))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| OnlineError::Tls("the update server".into(), e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let proxy = match &settings.proxy {
            None => None,
            Some(p) => Some(parse_proxy(p).ok_or_else(|| OnlineError::Url(p.clone()))?),
        };
        Ok(Fetcher {
            tls: TlsConnector::from(Arc::new(config)),
            proxy,
        })
    }

    /// Sends GET `url` (with `Range` from `from` and `If-Range: validator` when given).
    pub async fn get(
        &self,
        url: &str,
        resume: Option<(u64, &str)>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, OnlineError> {
        let uri: Uri = url.parse().map_err(|_| OnlineError::Url(url.into()))?;
        if uri.scheme_str() != Some("https") {
            return Err(OnlineError::Url(url.into()));
        }
        let host = uri
            .host()
            .ok_or_else(|| OnlineError::Url(url.into()))?
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let site = format!("{host}:{port}");
        let tcp = match &self.proxy {
            None => connect(&host, port).await?,
            Some((ph, pp, auth)) => {
                let mut s = connect(ph, *pp).await?;
                tunnel(&mut s, &site, auth.as_deref()).await?;
                s
            }
        };
        let name = ServerName::try_from(host.clone()).map_err(|_| OnlineError::Url(url.into()))?;
        let tls = tokio::time::timeout(TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| OnlineError::Timeout(site.clone(), TIMEOUT.as_secs()))?
            .map_err(|e| OnlineError::Tls(site.clone(), e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| OnlineError::Broken(site.clone(), e.to_string()))?;
        tokio::spawn(conn);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = Request::get(path)
            .header(hyper::header::HOST, host.as_str())
            .header(
                hyper::header::USER_AGENT,
                concat!("medlb-lbupdate/", env!("CARGO_PKG_VERSION")),
            );
        if let Some((from, validator)) = resume {
            req = req
                .header(hyper::header::RANGE, format!("bytes={from}-"))
                .header(hyper::header::IF_RANGE, validator);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| OnlineError::Url(e.to_string()))?;
        let resp = tokio::time::timeout(TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| OnlineError::Timeout(site.clone(), TIMEOUT.as_secs()))?
            .map_err(|e| OnlineError::Broken(site.clone(), e.to_string()))?;
        Ok(resp)
    }

    /// A small document (the index, a checksum file) as text.
    pub async fn text(&self, url: &str, limit: usize) -> Result<String, OnlineError> {
        let resp = self.get(url, None).await?;
        if resp.status() != StatusCode::OK {
            return Err(OnlineError::Status(url.into(), resp.status()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), limit);
        let bytes = tokio::time::timeout(TIMEOUT, body.collect())
            .await
            .map_err(|_| OnlineError::Timeout(url.into(), TIMEOUT.as_secs()))?
            .map_err(|e| OnlineError::Broken(url.into(), e.to_string()))?
            .to_bytes();
        String::from_utf8(bytes.to_vec())
            .map_err(|_| OnlineError::Index(format!("{url} is not text")))
    }

    /// The server's index.
    pub async fn index(&self, url: &str) -> Result<Index, OnlineError> {
        let text = self.text(url, MAX_INDEX).await?;
        let index: Index =
            serde_json::from_str(&text).map_err(|e| OnlineError::Index(e.to_string()))?;
        if index.product != PRODUCT {
            return Err(OnlineError::Index(format!(
                "it lists releases of {}, not of {PRODUCT}",
                index.product
            )));
        }
        Ok(index)
    }
}

fn parse_proxy(p: &str) -> Option<(String, u16, Option<String>)> {
    let rest = p.strip_prefix("http://")?.trim_end_matches('/');
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(base64(a.as_bytes())), h),
        None => (None, rest),
    };
    let (host, port) = hostport.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?, auth))
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, OnlineError> {
    let site = format!("{host}:{port}");
    tokio::time::timeout(TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| OnlineError::Timeout(site.clone(), TIMEOUT.as_secs()))?
        .map_err(|e| OnlineError::Connect(site, e.to_string()))
}

/// HTTP CONNECT through a proxy.
async fn tunnel(s: &mut TcpStream, site: &str, auth: Option<&str>) -> Result<(), OnlineError> {
    let mut head = format!("CONNECT {site} HTTP/1.1\r\nHost: {site}\r\n");
    if let Some(a) = auth {
        head += &format!("Proxy-Authorization: Basic {a}\r\n");
    }
    head += "\r\n";
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| OnlineError::Proxy(site.into(), e.to_string()))?;
    let mut reader = BufReader::new(&mut *s);
    let mut status = String::new();
    tokio::time::timeout(TIMEOUT, reader.read_line(&mut status))
        .await
        .map_err(|_| OnlineError::Timeout(site.into(), TIMEOUT.as_secs()))?
        .map_err(|e| OnlineError::Proxy(site.into(), e.to_string()))?;
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(OnlineError::Proxy(site.into(), status.trim().to_string()));
    }
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| OnlineError::Proxy(site.into(), e.to_string()))?;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    Ok(())
}

/// Standard base64 (RFC 4648), for Proxy-Authorization.
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The URL of `link` relative to the index at `index_url`.
pub fn resolve(index_url: &str, link: &str) -> String {
    if link.starts_with("https://") {
        return link.to_string();
    }
    match index_url.rfind('/') {
        Some(i) => format!("{}/{link}", &index_url[..i]),
        None => link.to_string(),
    }
}

/// The newest release that installs over `running`, if one is newer.
pub fn newest(index: &Index, running: Version) -> Option<Release> {
    index
        .releases
        .iter()
        .filter_map(|r| Some((Version::parse(&r.version).ok()?, r)))
        .filter(|(v, r)| {
            *v > running && Version::parse(&r.min_version).map_or(true, |min| running >= min)
        })
        .max_by_key(|(v, _)| *v)
        .map(|(_, r)| r.clone())
}

/// How far a download got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub done: u64,
    pub total: u64,
    /// Bytes per second over the download so far.
    pub rate: u64,
}

/// Downloads `url` into `part` (a file that may already hold a beginning of it, received
/// with `validator`), resuming after a break up to [`ATTEMPTS`] times. Returns the
/// size. `progress` is told as bytes come in.
pub async fn download(
    fetcher: &Fetcher,
    url: &str,
    part: &Path,
    limit: u64,
    mut progress: impl FnMut(Transfer),
) -> Result<u64, OnlineError> {
    let write = |e| OnlineError::Write(part.display().to_string(), e);
    let started = Instant::now();
    let mut validator: Option<String> = None;
    let mut last_error = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
        let have = tokio::fs::metadata(part).await.map_or(0, |m| m.len());
        let resume = match (&validator, have) {
            (Some(v), n) if n > 0 => Some((n, v.as_str())),
            _ => None,
        };
        let resp = match fetcher.get(url, resume).await {
            Ok(r) => r,
            Err(e) => {
                last_error = Some(e);
                continue;
            }
        };
        let (mut file, mut done) = match resp.status() {
            // the same file, from where it stopped
            StatusCode::PARTIAL_CONTENT if resume.is_some() => {
                let f = tokio::fs::OpenOptions::new()
                    .append(true)
                    .open(part)
                    .await
                    .map_err(write)?;
                (f, have)
            }
            // the whole file (first attempt, or it changed: the part is discarded)
            StatusCode::OK => (tokio::fs::File::create(part).await.map_err(write)?, 0),
            other => return Err(OnlineError::Status(url.into(), other)),
        };
        let headers = resp.headers();
        validator = headers
            .get(hyper::header::ETAG)
            .or_else(|| headers.get(hyper::header::LAST_MODIFIED))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or(validator);
        let total = content_total(headers, done).unwrap_or(0);
        if total > limit {
            return Err(OnlineError::Index(format!(
                "{url} is {total} bytes, more than an update may be ({limit})"
            )));
        }
        let mut body = resp.into_body();
        let broke = loop {
            match tokio::time::timeout(TIMEOUT, body.frame()).await {
                Err(_) => break Some(OnlineError::Timeout(url.into(), TIMEOUT.as_secs())),
                Ok(None) => break None,
                Ok(Some(Err(e))) => break Some(OnlineError::Broken(url.into(), e.to_string())),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        file.write_all(&data).await.map_err(write)?;
                        done += data.len() as u64;
                        if done > limit {
                            return Err(OnlineError::Index(format!(
                                "{url} is more than an update may be ({limit} bytes)"
                            )));
                        }
                        let secs = started.elapsed().as_secs_f64().max(0.001);
                        progress(Transfer {
                            done,
                            total,
                            rate: (done as f64 / secs) as u64,
                        });
                    }
                }
            }
        };
        file.sync_all().await.map_err(write)?;
        match broke {
            None if total == 0 || done == total => return Ok(done),
            None => {
                last_error = Some(OnlineError::Broken(
                    url.into(),
                    format!("it ended after {done} of {total} bytes"),
                ));
            }
            Some(e) => last_error = Some(e),
        }
        tracing::warn!("download of {url} broke off at {done} bytes; resuming");
    }
    Err(last_error.unwrap_or(OnlineError::Broken(
        url.into(),
        "no attempt was made".into(),
    )))
}

/// The whole file's size from Content-Range (`bytes 100-199/200`) or Content-Length.
fn content_total(h: &hyper::HeaderMap, already: u64) -> Option<u64> {
    if let Some(r) = h
        .get(hyper::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        return r.rsplit('/').next()?.parse().ok();
    }
    let len: u64 = h
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(len + already)
}

/// An index for the archives in `dir` (what the release process publishes beside them).
pub fn index_of(dir: &Path) -> std::io::Result<Index> {
    let mut releases = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".update"))
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let mut archive = tar::Archive::new(std::fs::File::open(&path)?);
        let mut entries = archive.entries()?;
        let Some(Ok(mut first)) = entries.next() else {
            continue;
        };
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(&mut first, crate::manifest::MAX_MANIFEST),
            &mut text,
        )?;
        let Ok(m) = crate::manifest::Manifest::parse(&text) else {
            continue;
        };
        releases.push(Release {
            version: m.version,
            min_version: m.min_version,
            archive: name.clone(),
            checksum: format!("{name}.sha256"),
            size: std::fs::metadata(&path)?.len(),
            notes: m.notes,
        });
    }
    Ok(Index {
        format: INDEX_FORMAT,
        product: PRODUCT.into(),
        releases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_links_and_releases() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(
            parse_proxy("http://user:pass@proxy.example:3128"),
            Some(("proxy.example".into(), 3128, Some("dXNlcjpwYXNz".into())))
        );
        assert_eq!(
            parse_proxy("http://p:8080/"),
            Some(("p".into(), 8080, None))
        );
        assert_eq!(
            resolve("https://u.example/medlb/index.json", "medlb-0.2.0.update"),
            "https://u.example/medlb/medlb-0.2.0.update"
        );
        assert_eq!(
            resolve("https://u.example/i.json", "https://cdn.example/a.update"),
            "https://cdn.example/a.update"
        );
        let r = |v: &str, min: &str| Release {
            version: v.into(),
            min_version: min.into(),
            archive: String::new(),
            checksum: String::new(),
            size: 0,
            notes: String::new(),
        };
        let index = Index {
            format: 1,
            product: PRODUCT.into(),
            releases: vec![
                r("0.2.0", "0.1.0"),
                r("0.3.0", "0.2.0"),
                r("0.1.5", "0.1.0"),
            ],
        };
        let running = Version::parse("0.1.0").unwrap();
        assert_eq!(
            newest(&index, running).unwrap().version,
            "0.2.0",
            "0.3.0 needs 0.2.0 first"
        );
        assert_eq!(
            newest(&index, Version::parse("0.2.0").unwrap())
                .unwrap()
                .version,
            "0.3.0"
        );
        assert!(newest(&index, Version::parse("0.3.0").unwrap()).is_none());
    }
}
