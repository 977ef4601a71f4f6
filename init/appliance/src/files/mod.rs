//! The files on `/data`, one model each, and the rules every one of them follows
//! (docs/compatibility.md is the whole text):
//!
//! - Each file carries a format version (`format`); a missing one is format 0, the
//!   files written before versions were introduced, and is read like format 1.
//! - Fields are added, never renamed or retyped; a field's meaning never changes.
//! - A file written by a newer version is read by an older one: keys this version does
//!   not know are reported as [`Warning`]s (in the log and in the status) and kept
//!   when the file is rewritten, never a reason to refuse the file.
//! - What a person *submits* (a configuration through `lbctl apply` or the web API)
//!   is checked strictly ([`Strictness::Submitted`]): a misspelt key is refused by
//!   name, because nobody is there to read a warning about it later.
//!
//! | file | model | written by |
//! |---|---|---|
//! | `config/network.toml` | [`network`] | the console wizard and menu (init), the web UI |
//! | `config/admin.toml` | [`admin`] | the console wizard and menu (init); read by lbweb |
//! | `config/lbcore.toml` | [`lbcore`] | lbcore, with the text lbctl or the web API submitted |
//! | `config/lbcore-state.json` | [`operator_state`] | lbcore (Drain / Halt of real servers) |
//! | `config/lbcore-ipvs.json` | [`ipvs_owned`] | lbcore (the IPVS services it made) |
//! | `updates/state.json` | [`update_state`] | the update agent (where an update is) |
//! | `config/update.toml` | [`update_settings`] | the update agent (where to look online) |
//! | `config/firewall.toml` | [`firewall`] | lbcore (lockdown networks, custom rules) |

pub mod admin;
pub mod certificate;
pub mod firewall;
pub mod ipvs_owned;
pub mod lbcore;
pub mod network;
pub mod operator_state;
pub mod update_settings;
pub mod update_state;

use std::collections::BTreeMap;
use std::fmt;

/// How strictly a file's text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Read from /data (at start, at a reload): unknown keys are warnings.
    Stored,
    /// Submitted by a person or a client: unknown keys are refused by name.
    Submitted,
}

/// Something in a file that this version reads past: a key it does not know, or a
/// format newer than its own. Shown in the log and the status, never fatal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Warning {
    /// The file (its path) the warning is about.
    pub file: String,
    /// Where in the file (`service 1 ("PACS"), real server "DS1": weigth`), or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub at: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.at, self.message)
        }
    }
}

/// What a newer version wrote: kept as it was read, written back unchanged.
pub type Unknown<V> = BTreeMap<String, V>;

/// The message for a key this version does not know.
pub(crate) const UNKNOWN_KEY: &str =
    "not known to this version (written by a newer one?): kept, but not used";

/// A warning when `format` is newer than `known`.
pub(crate) fn newer_format(file: &str, format: u32, known: u32) -> Option<Warning> {
    (format > known).then(|| Warning {
        file: file.to_string(),
        at: String::new(),
        message: format!(
            "format {format} is newer than this version's ({known}): read as far as this version understands it"
        ),
    })
}

/// Warnings for the keys of `extra` (found under `at`, e.g. `interface[0]`).
pub(crate) fn unknown_keys<V>(file: &str, at: &str, extra: &Unknown<V>) -> Vec<Warning> {
    extra
        .keys()
        .map(|k| Warning {
            file: file.to_string(),
            at: if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            },
            message: UNKNOWN_KEY.to_string(),
        })
        .collect()
}

/// The field names (aliases included) a struct's `Deserialize` knows, for "expected
/// one of" in a refusal. Serde hands them to the deserializer with the struct; this
/// one only takes note of them.
pub(crate) fn fields_of<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields(&'static [&'static str]);
    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> serde::Deserializer<'de> for &mut Fields {
        type Error = Stop;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }
    let mut f = Fields(&[]);
    let _ = T::deserialize(&mut f);
    f.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Example {
        #[serde(alias = "name")]
        label: String,
        weight: u32,
    }

    #[test]
    fn the_fields_of_a_struct_are_found_with_their_aliases() {
        assert_eq!(fields_of::<Example>(), ["label", "name", "weight"]);
        assert!(fields_of::<u32>().is_empty());
    }

    #[test]
    fn warnings_name_file_place_and_problem() {
        let extra: Unknown<u32> = [("mtu_v2".to_string(), 1)].into();
        let w = unknown_keys("/data/config/network.toml", "interface[0]", &extra);
        assert_eq!(
            w[0].to_string(),
            format!("/data/config/network.toml: interface[0].mtu_v2: {UNKNOWN_KEY}")
        );
        assert!(newer_format("f", 1, 1).is_none());
        assert!(
            newer_format("f", 2, 1)
                .unwrap()
                .message
                .contains("format 2")
        );
    }
}
