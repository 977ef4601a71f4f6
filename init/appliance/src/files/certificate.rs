//! The web UI's certificate (`/data/tls/cert.pem`, PEM): lbweb makes it on first start,
//! or the hospital puts its own there. What the console and the API show of it: its
//! SHA-256 fingerprint, as browsers show it, so that an administrator can compare it
//! before accepting a self-signed certificate.

use std::path::Path;

use ring::digest::{SHA256, digest};

/// Why no fingerprint can be shown.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
}

/// The DER bytes of the first certificate of a PEM text.
pub fn first_der(pem: &str) -> Option<Vec<u8>> {
    let begin = pem.find("-----BEGIN CERTIFICATE-----")?;
    let body = &pem[begin + "-----BEGIN CERTIFICATE-----".len()..];
    let end = body.find("-----END CERTIFICATE-----")?;
    base64_decode(&body[..end])
}

/// `AB:CD:...`: the SHA-256 of the certificate's DER, in upper-case hex pairs.
pub fn fingerprint_of_der(der: &[u8]) -> String {
    digest(&SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprint of the first certificate in the PEM file at `path`.
pub fn fingerprint(path: &Path) -> Result<String, CertificateError> {
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| CertificateError::Read(name.clone(), e))?;
    let der = first_der(&text).ok_or(CertificateError::NoCertificate(name))?;
    Ok(fingerprint_of_der(&der))
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let data = clean.split(|c| *c == b'=').next()?;
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in data {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_fingerprints() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs\nbG8gd29ybGQ=").unwrap(), b"hello world");
        let pem = "junk\n-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert_eq!(first_der(pem).unwrap(), b"hello");
        // sha256("hello")
        assert!(fingerprint_of_der(b"hello").starts_with("2C:F2:4D:BA:5F:B0:A3:0E"));
        assert!(first_der("no certificate").is_none());
    }
}
