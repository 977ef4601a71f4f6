//! Versions of the appliance: `MAJOR.MINOR.PATCH`, compared number by number. The image's
//! `/etc/version` may carry words after the number (`0.2.0 (development build)`); only
//! the number takes part in comparisons.

use std::cmp::Ordering;
use std::fmt;

/// A version number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// Text that is not a version number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a version number (MAJOR.MINOR.PATCH, such as 1.4.0)")]
pub struct NotAVersion(pub String);

impl Version {
    /// The number at the start of `text` (`0.2.0`, `0.2.0 (development build)`).
    pub fn parse(text: &str) -> Result<Version, NotAVersion> {
        let number = text.split_whitespace().next().unwrap_or("");
        let parts: Vec<&str> = number.split('.').collect();
        let field = |s: &str| {
            (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        match parts.as_slice() {
            [a, b, c] => match (field(a), field(b), field(c)) {
                (Some(major), Some(minor), Some(patch)) => Ok(Version {
                    major,
                    minor,
                    patch,
                }),
                _ => Err(NotAVersion(text.to_string())),
            },
            _ => Err(NotAVersion(text.to_string())),
        }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch).cmp(&(other.major, other.minor, other.patch))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_number_by_number() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("0.10.0") > v("0.9.9"));
        assert!(v("1.0.0") > v("0.99.99"));
        assert_eq!(v("0.2.0 (development build)"), v("0.2.0"));
        assert_eq!(v("3.2.0").to_string(), "3.2.0");
        for bad in [
            "",
            "1.2",
            "1.2.3.4",
            "1.x.3",
            "-1.2.3",
            "1..3",
            "01234567890.1.1",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad}");
        }
    }
}
