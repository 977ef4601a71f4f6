//! The admin account (`/data/config/admin.toml`): the user name and the password,
//! stored only as an argon2id hash in PHC string form. The console wizard and the
//! menu's password reset write it (init); lbweb reads it at every login and request.
//!
//! ```toml
//! format = 1
//! user = "admin"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$...$..."
//! ```

use std::path::Path;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};

use super::{Unknown, Warning};
use crate::atomic::{self, AtomicWriteError};

/// The format this version writes.
pub const FORMAT: u32 = 1;
/// The account the wizard makes.
pub const ADMIN_USER: &str = "admin";
/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// The longest password accepted.
pub const MAX_PASSWORD_LEN: usize = 128;

/// The contents of admin.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminFile {
    #[serde(default)]
    pub format: u32,
    pub user: String,
    pub password_hash: String,
    /// Keys of a newer version, kept when the file is rewritten.
    #[serde(flatten)]
    pub unknown: Unknown<toml::Value>,
}

/// Why admin.toml cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0} does not exist: no admin password is set yet")]
    Missing(String),
    #[error("cannot read {0}: {1}")]
    Read(String, #[source] std::io::Error),
    #[error("{0} is damaged: {1}")]
    Damaged(String, String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("cannot save the admin account: {0}")]
    Write(#[from] AtomicWriteError),
}

/// Why a new password is refused; the message is shown to the person typing it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("password too short (at least {MIN_PASSWORD_LEN} characters)")]
    TooShort,
    #[error("password too long (at most {MAX_PASSWORD_LEN} characters)")]
    TooLong,
    #[error("password cannot hold control characters")]
    ControlCharacter,
}

/// Checks a new password.
pub fn check_password(p: &str) -> Result<(), PasswordError> {
    let n = p.chars().count();
    if n < MIN_PASSWORD_LEN {
        return Err(PasswordError::TooShort);
    }
    if n > MAX_PASSWORD_LEN {
        return Err(PasswordError::TooLong);
    }
    if p.chars().any(char::is_control) {
        return Err(PasswordError::ControlCharacter);
    }
    Ok(())
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(p: &str) -> Result<String, AdminError> {
    argon2::Argon2::default()
        .hash_password(p.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AdminError::Hash(e.to_string()))
}

/// Whether `p` matches the PHC hash; `Err` when the hash itself is not an argon2 hash
/// (a damaged file, not a wrong password).
pub fn verify_password(p: &str, hash: &str) -> Result<bool, String> {
    let parsed = argon2::PasswordHash::new(hash).map_err(|e| e.to_string())?;
    Ok(argon2::Argon2::default()
        .verify_password(p.as_bytes(), &parsed)
        .is_ok())
}

impl AdminFile {
    /// Reads admin.toml; keys this version does not know are returned as warnings.
    pub fn load(path: &Path) -> Result<(AdminFile, Vec<Warning>), AdminError> {
        let name = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AdminError::Missing(name));
            }
            Err(e) => return Err(AdminError::Read(name, e)),
        };
        let file: AdminFile = toml::from_str(&text)
            .map_err(|e| AdminError::Damaged(name.clone(), e.message().to_string()))?;
        let mut warnings = super::unknown_keys(&name, "", &file.unknown);
        warnings.extend(super::newer_format(&name, file.format, FORMAT));
        Ok((file, warnings))
    }

    /// The file's text.
    pub fn to_toml(&self) -> Result<String, AdminError> {
        toml::to_string(self).map_err(|e| AdminError::Hash(e.to_string()))
    }
}

/// Hashes the password and writes admin.toml atomically (mode 0600). What a newer
/// version added to the file is kept.
pub fn save(path: &Path, password: &str) -> Result<(), AdminError> {
    let unknown = AdminFile::load(path)
        .map(|(f, _)| f.unknown)
        .unwrap_or_default();
    let file = AdminFile {
        format: FORMAT,
        user: ADMIN_USER.into(),
        password_hash: hash_password(password)?,
        unknown,
    };
    atomic::write(path, file.to_toml()?.as_bytes(), 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert_eq!(verify_password("correct horse", &h), Ok(true));
        assert_eq!(verify_password("wrong horse", &h), Ok(false));
        assert!(verify_password("x", "$argon2id$garbage").is_err());
    }

    #[test]
    fn password_rules() {
        assert_eq!(check_password("short"), Err(PasswordError::TooShort));
        assert!(
            check_password("short")
                .unwrap_err()
                .to_string()
                .contains("too short")
        );
        assert!(check_password("long enough").is_ok());
        assert_eq!(
            check_password("long\u{7}enough"),
            Err(PasswordError::ControlCharacter)
        );
    }

    #[test]
    fn saved_with_format_and_mode_and_keys_of_a_newer_version_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.toml");
        save(&path, "correct horse").unwrap();
        let (f, warnings) = AdminFile::load(&path).unwrap();
        assert_eq!((f.format, f.user.as_str()), (FORMAT, ADMIN_USER));
        assert!(warnings.is_empty());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let newer = format!("{}role = \"administrator\"\n", f.to_toml().unwrap());
        std::fs::write(&path, newer).unwrap();
        let (_, warnings) = AdminFile::load(&path).unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].at, "role");
        save(&path, "battery staple").unwrap();
        let (f, _) = AdminFile::load(&path).unwrap();
        assert_eq!(f.unknown["role"].as_str(), Some("administrator"));
        assert_eq!(
            verify_password("battery staple", &f.password_hash),
            Ok(true)
        );
    }

    #[test]
    fn missing_and_damaged_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.toml");
        assert!(matches!(
            AdminFile::load(&path),
            Err(AdminError::Missing(_))
        ));
        std::fs::write(&path, "user = 3").unwrap();
        assert!(matches!(
            AdminFile::load(&path),
            Err(AdminError::Damaged(..))
        ));
    }
}
