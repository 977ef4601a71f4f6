//! The admin account file (`/data/config/admin.toml`): the admin password, stored
//! only as an argon2id hash in PHC string form, for the web UI to verify.
//!
//! ```toml
//! user = "admin"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$...$..."
//! ```

use crate::fsutil::{AtomicWriteError, atomic_write};
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// The longest password accepted.
pub const MAX_PASSWORD_LEN: usize = 128;

/// Contents of admin.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminConfig {
    pub user: String,
    pub password_hash: String,
}

/// Errors hashing or saving the password.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("hashing the password: {0}")]
    Hash(String),
    #[error("saving the admin account: {0}")]
    Write(#[from] AtomicWriteError),
}

/// Check a new password; the error is the reason shown to the user.
pub fn check_password(p: &str) -> Result<(), String> {
    let n = p.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(format!(
            "password too short (at least {MIN_PASSWORD_LEN} characters)"
        ));
    }
    if n > MAX_PASSWORD_LEN {
        return Err(format!(
            "password too long (at most {MAX_PASSWORD_LEN} characters)"
        ));
    }
    if p.chars().any(char::is_control) {
        return Err("password cannot hold control characters".into());
    }
    Ok(())
}

/// Hash a password with argon2id and a random salt.
pub fn hash_password(p: &str) -> Result<String, AdminError> {
    argon2::Argon2::default()
        .hash_password(p.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AdminError::Hash(e.to_string()))
}

/// Whether `p` matches the PHC hash.
pub fn verify_password(p: &str, hash: &str) -> bool {
    argon2::Argon2::default()
        .verify_password(p.as_bytes(), hash)
        .is_ok()
}

/// Hash the password and write admin.toml atomically (mode 0600).
pub fn save(path: &Path, password: &str) -> Result<(), AdminError> {
    let cfg = AdminConfig {
        user: "admin".into(),
        password_hash: hash_password(password)?,
    };
    let text = toml::to_string(&cfg).map_err(|e| AdminError::Hash(e.to_string()))?;
    atomic_write(path, text.as_bytes(), 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
    }

    #[test]
    fn password_rules() {
        assert!(check_password("short").unwrap_err().contains("too short"));
        assert!(check_password("long enough").is_ok());
    }
}
