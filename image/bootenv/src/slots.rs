//! The slot protocol, from `image/slots.conf` (the one description that image/build and
//! buildroot's post-image also read, and that tests/image/test_build_description.py
//! checks grub.cfg and genimage.cfg against). The file is compiled in and read by
//! `const fn`s, so a key that is missing or a line that bash and this parser could
//! read differently fails the build of bootenv, not a boot.
//!
//! The update agent (image/update) compiles this same file in (`#[path]`); each of the
//! two uses part of it.
#![allow(dead_code)]

/// `image/slots.conf`, as it was when bootenv was compiled.
pub const CONF: &str = include_str!("../../slots.conf");
const _: () = check_format(CONF);

/// The environment block's variables.
pub const BOOT_SLOT: &str = conf("VAR_BOOT_SLOT");
pub const GOOD_SLOT: &str = conf("VAR_GOOD_SLOT");
pub const BOOT_TRIES: &str = conf("VAR_BOOT_TRIES");
/// The slots, separated by spaces (`a b`).
pub const SLOTS: &str = conf("SLOTS");
/// The GPT name of the EFI system partition, which holds the environment block.
pub const ESP_NAME: &str = conf("ESP_NAME");
/// The kernel argument naming the booted slot (`lb.slot`, as in `lb.slot=a`).
pub const KERNEL_ARG: &str = conf("KERNEL_ARG");
/// A new disk's environment block: `NAME=VALUE` words.
pub const DEFAULT_ENV: &str = conf("DEFAULT_ENV");
pub const DEFAULT_BOOT_SLOT: &str = default_of(BOOT_SLOT);
pub const DEFAULT_GOOD_SLOT: &str = default_of(GOOD_SLOT);
/// The most tries a slot on trial can have (GRUB counts down from it).
pub const MAX_TRIES: u8 = number(conf("MAX_TRIES"));
/// The tries `bootenv try SLOT` gives when none are named.
pub const UPDATE_TRIES: u8 = number(conf("UPDATE_TRIES"));
/// The GPT names of the slot partitions (the update agent writes them).
pub const SLOT_A_NAME: &str = conf("SLOT_A_NAME");
pub const SLOT_B_NAME: &str = conf("SLOT_B_NAME");

/// The GPT name of `slot`'s partition (`a` → `slot_a`); `None` for what is not a slot.
pub fn partition_name(slot: &str) -> Option<&'static str> {
    match slot {
        "a" => Some(SLOT_A_NAME),
        "b" => Some(SLOT_B_NAME),
        _ => None,
    }
}

/// The other slot (`a` ↔ `b`).
pub fn other(slot: &str) -> Option<&'static str> {
    match slot {
        "a" => Some("b"),
        "b" => Some("a"),
        _ => None,
    }
}

const _: () = {
    assert!(
        MAX_TRIES >= 1 && MAX_TRIES <= 9,
        "slots.conf: MAX_TRIES must be 1 to 9"
    );
    assert!(
        UPDATE_TRIES >= 1 && UPDATE_TRIES <= MAX_TRIES,
        "slots.conf: UPDATE_TRIES must be 1 to MAX_TRIES"
    );
    assert!(
        is_slot(DEFAULT_BOOT_SLOT) && is_slot(DEFAULT_GOOD_SLOT),
        "slots.conf: DEFAULT_ENV's slots must be in SLOTS"
    );
    assert!(
        default_of(BOOT_TRIES).is_empty(),
        "slots.conf: a new disk has no slot on trial"
    );
    assert!(
        count(SLOTS, b' ') == 2 && is_slot("a") && is_slot("b"),
        "slots.conf: the slots are a and b (partition_name and other know them)"
    );
    assert!(
        count(DEFAULT_ENV, b' ') == 3,
        "slots.conf: DEFAULT_ENV holds exactly the three variables"
    );
};

/// Whether `s` is one of `SLOTS`.
pub const fn is_slot(s: &str) -> bool {
    let (t, w) = (SLOTS.as_bytes(), s.as_bytes());
    let mut start = 0;
    while start < t.len() {
        let end = entry_end(t, b' ', start);
        if end - start == w.len() && !w.is_empty() && starts_with(t, start, w) {
            return true;
        }
        start = end + 1;
    }
    false
}

/// The value of `key` in slots.conf. A missing key is a compile error in the constant
/// that asks for it ("evaluation panicked: KEY": slots.conf lacks KEY).
const fn conf(key: &str) -> &'static str {
    match value(CONF, b'\n', key) {
        Some(v) => v,
        None => panic!("{}", key),
    }
}

/// The value of variable `var` in `DEFAULT_ENV`.
const fn default_of(var: &str) -> &'static str {
    match value(DEFAULT_ENV, b' ', var) {
        Some(v) => v,
        None => panic!("slots.conf: DEFAULT_ENV lacks one of the VAR_ variables"),
    }
}

/// The value of the entry `KEY=VALUE` (double quotes around VALUE removed) whose KEY is
/// `key`, among the entries of `text` separated by `sep`.
const fn value(text: &'static str, sep: u8, key: &str) -> Option<&'static str> {
    let (t, k) = (text.as_bytes(), key.as_bytes());
    let mut start = 0;
    while start < t.len() {
        let end = entry_end(t, sep, start);
        if end - start > k.len() && starts_with(t, start, k) && t[start + k.len()] == b'=' {
            let (mut from, mut to) = (start + k.len() + 1, end);
            if to - from >= 2 && t[from] == b'"' && t[to - 1] == b'"' {
                from += 1;
                to -= 1;
            }
            return Some(slice(text, from, to));
        }
        start = end + 1;
    }
    None
}

/// Where the entry starting at `start` ends (at `sep` or the end of `t`).
const fn entry_end(t: &[u8], sep: u8, start: usize) -> usize {
    let mut end = start;
    while end < t.len() && t[end] != sep {
        end += 1;
    }
    end
}

/// Whether `t[at..]` starts with `p`.
const fn starts_with(t: &[u8], at: usize, p: &[u8]) -> bool {
    if at + p.len() > t.len() {
        return false;
    }
    let mut i = 0;
    while i < p.len() {
        if t[at + i] != p[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn slice(text: &'static str, from: usize, to: usize) -> &'static str {
    let (_, rest) = text.as_bytes().split_at(from);
    let (part, _) = rest.split_at(to - from);
    match core::str::from_utf8(part) {
        Ok(s) => s,
        Err(_) => panic!("slots.conf is not UTF-8"),
    }
}

/// The number of non-empty words of `text` separated by `sep`.
const fn count(text: &str, sep: u8) -> usize {
    let t = text.as_bytes();
    let (mut n, mut i, mut in_word) = (0, 0, false);
    while i < t.len() {
        if t[i] == sep {
            in_word = false;
        } else if !in_word {
            in_word = true;
            n += 1;
        }
        i += 1;
    }
    n
}

const fn number(v: &str) -> u8 {
    let b = v.as_bytes();
    assert!(
        !b.is_empty() && b.len() <= 2,
        "slots.conf: a number has one or two digits"
    );
    let mut n = 0u8;
    let mut i = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "slots.conf: not a number");
        n = n * 10 + (b[i] - b'0');
        i += 1;
    }
    n
}

/// Every line is empty, a comment, or `KEY=VALUE` with KEY of `A-Z 0-9 _` and VALUE
/// bare (of `A-Z a-z 0-9 _ . / : @ % + , = -`) or double-quoted (no `"`, `$`, `\` or
/// backquote inside): a form that bash's `source` and `value` read alike.
const fn check_format(text: &str) {
    let t = text.as_bytes();
    let mut start = 0;
    while start < t.len() {
        let mut end = start;
        while end < t.len() && t[end] != b'\n' {
            end += 1;
        }
        if end > start && t[start] != b'#' {
            let mut i = start;
            while i < end && (t[i].is_ascii_uppercase() || t[i].is_ascii_digit() || t[i] == b'_') {
                i += 1;
            }
            assert!(
                i > start && i < end && t[i] == b'=',
                "slots.conf: a line is not KEY=VALUE"
            );
            i += 1;
            let quoted = i < end && t[i] == b'"';
            if quoted {
                assert!(
                    end - i >= 2 && t[end - 1] == b'"',
                    "slots.conf: an unclosed quote"
                );
                i += 1;
                while i < end - 1 {
                    let c = t[i];
                    assert!(
                        c != b'"' && c != b'$' && c != b'\\' && c != b'`',
                        "slots.conf: a quoted value holds \", $, \\ or `"
                    );
                    i += 1;
                }
            } else {
                while i < end {
                    let c = t[i];
                    assert!(
                        c.is_ascii_alphanumeric()
                            || matches!(
                                c,
                                b'_' | b'.' | b'/' | b':' | b'@' | b'%' | b'+' | b',' | b'=' | b'-'
                            ),
                        "slots.conf: a bare value holds other than A-Z a-z 0-9 _ . / : @ % + , = -"
                    );
                    i += 1;
                }
            }
        }
        start = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constants are what a plain line-by-line reading of slots.conf (as bash's
    /// `source` does it) gives.
    #[test]
    fn constants_match_a_plain_reading() {
        let plain: std::collections::HashMap<&str, &str> = CONF
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k, v.trim_matches('"'))
            })
            .collect();
        for (key, got) in [
            ("VAR_BOOT_SLOT", BOOT_SLOT),
            ("VAR_GOOD_SLOT", GOOD_SLOT),
            ("VAR_BOOT_TRIES", BOOT_TRIES),
            ("SLOTS", SLOTS),
            ("ESP_NAME", ESP_NAME),
            ("KERNEL_ARG", KERNEL_ARG),
            ("DEFAULT_ENV", DEFAULT_ENV),
        ] {
            assert_eq!(plain[key], got, "{key}");
        }
        assert_eq!(plain["MAX_TRIES"].parse::<u8>().unwrap(), MAX_TRIES);
        assert_eq!(plain["UPDATE_TRIES"].parse::<u8>().unwrap(), UPDATE_TRIES);
        let env: Vec<(&str, &str)> = DEFAULT_ENV
            .split_whitespace()
            .map(|w| w.split_once('=').unwrap())
            .collect();
        assert!(env.contains(&(BOOT_SLOT, DEFAULT_BOOT_SLOT)));
        assert!(env.contains(&(GOOD_SLOT, DEFAULT_GOOD_SLOT)));
        for s in SLOTS.split(' ') {
            assert!(is_slot(s));
        }
        assert!(!is_slot("") && !is_slot(SLOTS) && !is_slot("c"));
    }

    #[test]
    fn default_env_names_each_variable_once() {
        let mut names: Vec<&str> = DEFAULT_ENV
            .split_whitespace()
            .map(|w| w.split_once('=').unwrap().0)
            .collect();
        names.sort();
        let mut want = vec![BOOT_SLOT, GOOD_SLOT, BOOT_TRIES];
        want.sort();
        assert_eq!(names, want);
    }

    #[test]
    fn value_reads_quotes_and_whole_keys() {
        const T: &str = "# c\nAB=1\nA=\"x y\"\nB=\n";
        assert_eq!(value(T, b'\n', "A"), Some("x y"));
        assert_eq!(value(T, b'\n', "AB"), Some("1"));
        assert_eq!(value(T, b'\n', "B"), Some(""));
        assert_eq!(value(T, b'\n', "C"), None);
        assert_eq!(value("x=1 y=", b' ', "y"), Some(""));
        assert_eq!(count(" x  y ", b' '), 2);
        check_format(T);
    }

    #[test]
    #[should_panic]
    fn format_refuses_what_bash_would_expand() {
        check_format("A=$HOME\n");
    }

    #[test]
    #[should_panic]
    fn format_refuses_a_tilde() {
        check_format("A=~root\n");
    }

    #[test]
    #[should_panic]
    fn format_refuses_a_trailing_comment() {
        check_format("A=1 # one\n");
    }
}
