//! The shape of the TOML file and every rule about what is valid in it.
//!
//! The file is read in two steps: serde into the `Raw*` structs below (which refuses
//! wrong types, with line and column), then [`Validator`] turns them into the model of
//! `mod.rs`, checking ranges, combinations and uniqueness. Keys the `Raw*` structs do
//! not know are collected on the way ([`serde_ignored`]): a submitted configuration
//! is refused for them, naming the key and where it is; a stored one (which a newer
//! version may have written) is read with a warning for each.

use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{
    Check, CheckKind, Config, ConfigError, Endpoint, FORMAT, Forwarding, Invalid, Layer, OnFailure,
    Persistence, Probe, ProxySettings, RealServer, Scheduler, Service, Span,
};
use crate::files::{Strictness, UNKNOWN_KEY, fields_of};

#[derive(Deserialize)]
struct RawFile {
    /// The file's format version; absent means the current one (a person writes
    /// these files, and most will not write it).
    format: Option<u32>,
    #[serde(default, alias = "services")]
    service: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
struct RawService {
    #[serde(alias = "name")]
    label: String,
    layer: u8,
    address: IpAddr,
    #[serde(default)]
    ports: Vec<u16>,
    /// A single port, for services that have one.
    port: Option<u16>,
    scheduler: Option<Scheduler>,
    forwarding: Option<Forwarding>,
    /// Layer 4: `remove` (default) or `weight-zero` for a server that fails its check.
    on_failure: Option<OnFailure>,
    persistence: Option<Spanned<RawPersistence>>,
    check: Option<Spanned<RawCheck>>,
    fallback: Option<Spanned<RawEndpoint>>,
    connect_timeout: Option<Span>,
    retries: Option<u32>,
    queue: Option<Spanned<RawQueue>>,
    keepalive: Option<Span>,
    #[serde(default, alias = "real_servers")]
    real_server: Vec<Spanned<RawRealServer>>,
}

#[derive(Deserialize)]
struct RawPersistence {
    timeout: Span,
    netmask: Option<u8>,
}

#[derive(Deserialize)]
struct RawEndpoint {
    address: IpAddr,
    port: Option<u16>,
}

#[derive(Deserialize)]
struct RawQueue {
    size: Option<u32>,
    timeout: Option<Span>,
}

#[derive(Deserialize)]
struct RawCheck {
    #[serde(alias = "type")]
    kind: CheckKind,
    interval: Option<Span>,
    timeout: Option<Span>,
    rise: Option<u32>,
    fall: Option<u32>,
    port: Option<u16>,
    calling_ae: Option<String>,
    called_ae: Option<String>,
    message: Option<String>,
    path: Option<String>,
    expect_status: Option<u16>,
    host: Option<String>,
    script: Option<PathBuf>,
}

#[derive(Deserialize)]
struct RawRealServer {
    #[serde(alias = "name")]
    label: String,
    address: IpAddr,
    port: Option<u16>,
    weight: Option<u32>,
    max_connections: Option<u32>,
    min_connections: Option<u32>,
}

const DEFAULT_WEIGHT: u32 = 100;
const MAX_WEIGHT: u32 = 65_535;
const DEFAULT_CALLING_AE: &str = "LOADBALANCER";
const DEFAULT_CALLED_AE: &str = "ANY-SCP";

/// A key the `Raw*` structs do not know: where it is and, when it is a key of one of
/// them, which.
pub(super) struct UnknownKey {
    /// The key as written.
    pub key: String,
    /// `in service 1 ("PACS"), real server "DS1": ` and the like.
    pub place: String,
    /// ` (line 9, column 1)` where it can be found.
    pub location: String,
    /// Where it is in the text (for reporting the first one first).
    offset: usize,
}

pub(super) fn parse(
    text: &str,
    strictness: Strictness,
) -> Result<(Config, Vec<UnknownKey>, Option<u32>), ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| syntax_error(text, &e))?;
    let mut ignored: Vec<Vec<Segment>> = Vec::new();
    let raw: RawFile = serde_ignored::deserialize(de, |path| ignored.push(segments(&path)))
        .map_err(|e| syntax_error(text, &e))?;
    let mut unknown: Vec<(UnknownKey, &Vec<Segment>)> =
        ignored.iter().map(|p| (unknown_key(text, p), p)).collect();
    unknown.sort_by_key(|(u, _)| u.offset);
    if strictness == Strictness::Submitted {
        if let Some((u, path)) = unknown.first() {
            let expected = fields_for(path)
                .map(|f| {
                    let names: Vec<String> = f.iter().map(|n| format!("`{n}`")).collect();
                    format!(", expected one of {}", names.join(", "))
                })
                .unwrap_or_default();
            return Err(ConfigError::Syntax {
                path: None,
                message: format!(
                    "{}unknown field `{}`{expected}{}",
                    u.place, u.key, u.location
                ),
            });
        }
    }
    let unknown = unknown.into_iter().map(|(u, _)| u).collect();
    let format = raw.format;
    let config = Validator { text }.config(raw)?;
    Ok((config, unknown, format.filter(|f| *f > FORMAT)))
}

/// One step of the path to an ignored key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The path to an ignored key, without serde's internal steps (options, newtypes and
/// toml's `Spanned` wrapper).
fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path as P;
    let mut out = match path {
        P::Root => return Vec::new(),
        P::Seq { parent, .. }
        | P::Map { parent, .. }
        | P::Some { parent }
        | P::NewtypeStruct { parent }
        | P::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        P::Seq { index, .. } => out.push(Segment::Index(*index)),
        P::Map { key, .. } if !key.starts_with("$__serde_spanned_private") => {
            out.push(Segment::Key(key.clone()))
        }
        _ => {}
    }
    out
}

/// The fields of the table an ignored key was found in, for "expected one of".
fn fields_for(path: &[Segment]) -> Option<&'static [&'static str]> {
    use Segment::{Index, Key};
    let key = |s: &Segment, names: &[&str]| matches!(s, Key(k) if names.contains(&k.as_str()));
    let service = ["service", "services"];
    Some(match path {
        [_] => fields_of::<RawFile>(),
        [s, Index(_), _] if key(s, &service) => fields_of::<RawService>(),
        [s, Index(_), t, _] if key(s, &service) => match t {
            Key(t) if t == "check" => fields_of::<RawCheck>(),
            Key(t) if t == "persistence" => fields_of::<RawPersistence>(),
            Key(t) if t == "fallback" => fields_of::<RawEndpoint>(),
            Key(t) if t == "queue" => fields_of::<RawQueue>(),
            _ => return None,
        },
        [s, Index(_), r, Index(_), _]
            if key(s, &service) && key(r, &["real_server", "real_servers"]) =>
        {
            fields_of::<RawRealServer>()
        }
        _ => return None,
    })
}

/// Where an ignored key is in the text, found through toml's own parse with spans.
fn unknown_key(text: &str, path: &[Segment]) -> UnknownKey {
    let key = match path.last() {
        Some(Segment::Key(k)) => k.clone(),
        _ => String::from("?"),
    };
    let offset = key_offset(text, path);
    // the service and real server it is in, by the path's shape (a top-level key is in
    // neither, whatever table precedes it in the text)
    let in_service = path.len() > 2;
    let in_server = path.len() > 4
        && matches!(&path[2], Segment::Key(k) if k == "real_server" || k == "real_servers");
    let place: Vec<String> = offset
        .map(|o| {
            [
                in_service.then(|| service_around(text, o)).flatten(),
                in_server.then(|| real_server_around(text, o)).flatten(),
            ]
        })
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    UnknownKey {
        key,
        place: if place.is_empty() {
            String::new()
        } else {
            format!("in {}: ", place.join(", "))
        },
        location: location_suffix(text, offset.map(|o| o..o)),
        offset: offset.unwrap_or(usize::MAX),
    }
}

/// The byte offset of the key at `path`.
fn key_offset(text: &str, path: &[Segment]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = root.get_ref();
    let mut value: Option<&DeValue<'_>> = None;
    for segment in path {
        match segment {
            Segment::Key(k) => {
                if let Some(DeValue::Table(t)) = value {
                    table = t;
                }
                let (key, v) = table.iter().find(|(key, _)| key.get_ref() == k)?;
                if std::ptr::eq(segment, path.last()?) {
                    return Some(key.span().start);
                }
                value = Some(v.get_ref());
            }
            Segment::Index(i) => {
                let DeValue::Array(items) = value? else {
                    return None;
                };
                value = Some(items.get(*i)?.get_ref());
            }
        }
    }
    None
}

/// The warning text for an unknown key of a stored configuration.
pub(super) fn unknown_warning(u: &UnknownKey) -> (String, String) {
    (
        format!(
            "{}{}{}",
            u.place.trim_start_matches("in "),
            u.key,
            u.location
        ),
        UNKNOWN_KEY.to_string(),
    )
}

/// Turns a serde/TOML error into one that also names the service, the real server
/// and the field it is in.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let place: Vec<String> = e
        .span()
        .map(|span| {
            [
                service_around(text, span.start),
                real_server_around(text, span.start),
                key_at(text, span.start).map(|k| format!("field `{k}`")),
            ]
            .into_iter()
            .flatten()
            .collect()
        })
        .unwrap_or_default();
    let place = if place.is_empty() {
        String::new()
    } else {
        format!("in {}: ", place.join(", "))
    };
    ConfigError::Syntax {
        path: None,
        message: format!("{place}{}", e.message().trim_end()).replace('\n', " ")
            + &location_suffix(text, e.span()),
    }
}

/// The key of the `key = value` line whose value holds byte `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let line = &before[before.rfind('\n').map_or(0, |nl| nl + 1)..];
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    plain.then(|| key.to_string())
}

/// For byte `offset` inside a `[[service.real_server]]` table: `real server "DS2"`
/// (or `real server 2` when it has no label yet).
fn real_server_around(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let mut index = 0;
    let mut start = None;
    let mut pos = 0;
    for line in before.split_inclusive('\n') {
        let header = line.trim_start();
        if header.starts_with("[[service]]") {
            index = 0;
            start = None;
        } else if header.starts_with("[[service.real_server]]") {
            index += 1;
            start = Some(pos);
        } else if header.starts_with('[') {
            start = None; // some other table follows the real server
        }
        pos += line.len();
    }
    let label = table_label(text, start?);
    Some(match label {
        Some(l) => format!("real server \"{l}\""),
        None => format!("real server {index}"),
    })
}

fn location_suffix(text: &str, span: Option<Range<usize>>) -> String {
    match span {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!(" (line {line}, column {col})")
        }
        None => String::new(),
    }
}

/// For an error the serde step found, which `[[service]]` table holds byte `offset`:
/// `service 2 ("PACS")`. Best effort; the line and column are always given as well.
fn service_around(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let mut index = 0;
    let mut start = None;
    let mut pos = 0;
    for line in before.split_inclusive('\n') {
        if line.trim_start().starts_with("[[service]]") {
            index += 1;
            start = Some(pos);
        }
        pos += line.len();
    }
    let label = table_label(text, start?);
    Some(match label {
        Some(l) => format!("service {index} (\"{l}\")"),
        None => format!("service {index}"),
    })
}

/// The `label` (or `name`) of the table whose header line starts at byte `start`.
fn table_label(text: &str, start: usize) -> Option<String> {
    text[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            matches!(key.trim(), "label" | "name")
                .then(|| value.trim().trim_matches('"').to_string())
        })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

struct Validator<'a> {
    text: &'a str,
}

/// Where an error is: the table it belongs to and how to name it.
struct At<'v> {
    v: &'v Validator<'v>,
    span: Range<usize>,
    context: String,
}

impl At<'_> {
    fn err(&self, field: &str, problem: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(self.v.text, self.span.start);
        ConfigError::Invalid(Box::new(Invalid {
            path: None,
            line: Some(line),
            column: Some(column),
            context: self.context.clone(),
            field: field.to_string(),
            problem: problem.into(),
        }))
    }

    fn nested(&self, span: Range<usize>, context: String) -> At<'_> {
        At {
            v: self.v,
            span,
            context: format!("{}{context}", self.context),
        }
    }
}

fn check_label(at: &At, label: &str) -> Result<(), ConfigError> {
    if label.is_empty() {
        return Err(at.err("label", "must not be empty"));
    }
    if label.len() > 64 {
        return Err(at.err("label", "must be at most 64 characters"));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(at.err(
            "label",
            format!("`{label}` contains `{c}`: use letters, digits, `_`, `-` and `.`"),
        ));
    }
    Ok(())
}

fn check_address(at: &At, field: &str, address: IpAddr) -> Result<(), ConfigError> {
    if address.is_unspecified() {
        return Err(at.err(field, format!("{address} is not a usable address")));
    }
    if address.is_multicast() || address == IpAddr::from([255, 255, 255, 255]) {
        return Err(at.err(
            field,
            format!("{address} is a multicast or broadcast address"),
        ));
    }
    Ok(())
}

/// A duration within `[min, max]`; `max` keeps every deadline computed from it sane.
fn check_span(
    at: &At,
    field: &str,
    span: Span,
    min: std::time::Duration,
    max: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    let d = span.0;
    if d < min || d > max {
        let low = if min.is_zero() {
            "longer than 0s".to_string()
        } else {
            format!("at least {}", Span(min))
        };
        return Err(at.err(
            field,
            format!("must be {low} and at most {}, got {span}", Span(max)),
        ));
    }
    Ok(d)
}

const MS: fn(u64) -> std::time::Duration = std::time::Duration::from_millis;
const SECS: fn(u64) -> std::time::Duration = std::time::Duration::from_secs;

fn check_port(at: &At, field: &str, port: u16) -> Result<(), ConfigError> {
    if port == 0 {
        return Err(at.err(field, "port 0 is not a valid port (use 1 to 65535)"));
    }
    Ok(())
}

impl Validator<'_> {
    fn config(&self, raw: RawFile) -> Result<Config, ConfigError> {
        let mut services: Vec<Service> = Vec::with_capacity(raw.service.len());
        for (i, spanned) in raw.service.into_iter().enumerate() {
            let span = spanned.span();
            let raw = spanned.into_inner();
            let at = At {
                v: self,
                span,
                context: format!("service {} (\"{}\"): ", i + 1, raw.label),
            };
            let service = self.service(&at, raw)?;
            if services.iter().any(|s| s.label == service.label) {
                return Err(at.err(
                    "label",
                    format!("another service is already called `{}`", service.label),
                ));
            }
            for other in &services {
                if other.address == service.address {
                    if let Some(port) = service.ports.iter().find(|p| other.ports.contains(p)) {
                        return Err(at.err(
                            "ports",
                            format!(
                                "{}:{port} is already used by service `{}`",
                                service.address, other.label
                            ),
                        ));
                    }
                }
            }
            services.push(service);
        }
        Ok(Config { services })
    }

    fn service(&self, at: &At, raw: RawService) -> Result<Service, ConfigError> {
        check_label(at, &raw.label)?;
        check_address(at, "address", raw.address)?;

        let mut ports = raw.ports.clone();
        match (raw.port, ports.is_empty()) {
            (Some(p), true) => ports.push(p),
            (Some(_), false) => {
                return Err(at.err("port", "give either `port` or `ports`, not both"));
            }
            (None, true) => {
                return Err(at.err("ports", "at least one port is required, e.g. ports = [104]"));
            }
            (None, false) => {}
        }
        let mut seen = HashSet::new();
        for &p in &ports {
            check_port(at, "ports", p)?;
            if !seen.insert(p) {
                return Err(at.err("ports", format!("port {p} is listed twice")));
            }
        }

        let layer = match raw.layer {
            4 => {
                for (set, field) in [
                    (raw.connect_timeout.is_some(), "connect_timeout"),
                    (raw.retries.is_some(), "retries"),
                    (raw.queue.is_some(), "queue"),
                    (raw.keepalive.is_some(), "keepalive"),
                ] {
                    if set {
                        return Err(at.err(field, "applies only to layer 7 services"));
                    }
                }
                if matches!(raw.forwarding, Some(Forwarding::Snat)) && raw.address.is_ipv6() {
                    return Err(at.err(
                        "forwarding",
                        "snat is available for IPv4 service addresses only (use nat, with the real servers routing through the appliance)",
                    ));
                }
                Layer::Four {
                    forwarding: raw.forwarding.unwrap_or(Forwarding::DirectRouting),
                    on_failure: raw.on_failure.unwrap_or_default(),
                }
            }
            7 => {
                if raw.forwarding.is_some() {
                    return Err(at.err(
                        "forwarding",
                        "applies only to layer 4 services (a layer 7 service always proxies)",
                    ));
                }
                if raw.on_failure.is_some() {
                    return Err(at.err(
                        "on_failure",
                        "applies only to layer 4 services (a layer 7 service stops using a failed server by itself)",
                    ));
                }
                Layer::Seven(self.proxy(at, &raw)?)
            }
            other => return Err(at.err("layer", format!("must be 4 or 7, got {other}"))),
        };

        let scheduler = raw.scheduler.unwrap_or(Scheduler::Wlc);
        if matches!(layer, Layer::Seven(_)) && matches!(scheduler, Scheduler::Sh | Scheduler::Mh) {
            return Err(at.err(
                "scheduler",
                format!(
                    "`{}` is available only for layer 4 services; layer 7 offers rr, wrr, lc and wlc (use persistence to keep a client on one server)",
                    scheduler.name()
                ),
            ));
        }

        let persistence = match raw.persistence {
            None => None,
            Some(p) => {
                let pat = at.nested(p.span(), String::new());
                let p = p.into_inner();
                check_span(
                    &pat,
                    "persistence.timeout",
                    p.timeout,
                    MS(1),
                    SECS(30 * 86_400),
                )?;
                if let Some(mask) = p.netmask {
                    if matches!(layer, Layer::Seven(_)) {
                        return Err(
                            pat.err("persistence.netmask", "applies only to layer 4 services")
                        );
                    }
                    let max = if raw.address.is_ipv4() { 32 } else { 128 };
                    if mask == 0 || mask > max {
                        return Err(pat.err(
                            "persistence.netmask",
                            format!("must be a prefix length from 1 to {max}, got {mask}"),
                        ));
                    }
                }
                Some(Persistence {
                    timeout: p.timeout.0,
                    netmask: p.netmask,
                })
            }
        };

        let check = match raw.check {
            None => Check::default(),
            Some(c) => {
                let cat = at.nested(c.span(), String::new());
                self.check(&cat, c.into_inner())?
            }
        };

        let fallback = match raw.fallback {
            None => None,
            Some(f) => {
                let fat = at.nested(f.span(), String::new());
                let f = f.into_inner();
                check_address(&fat, "fallback.address", f.address)?;
                if let Some(p) = f.port {
                    check_port(&fat, "fallback.port", p)?;
                }
                Some(Endpoint {
                    address: f.address,
                    port: f.port,
                })
            }
        };

        let mut real_servers: Vec<RealServer> = Vec::with_capacity(raw.real_server.len());
        for (i, spanned) in raw.real_server.into_iter().enumerate() {
            let rs = spanned.get_ref();
            let rat = at.nested(
                spanned.span(),
                format!("real_server {} (\"{}\"): ", i + 1, rs.label),
            );
            let server = self.real_server(&rat, &layer, &ports, spanned.into_inner())?;
            if real_servers.iter().any(|s| s.label == server.label) {
                return Err(rat.err(
                    "label",
                    format!(
                        "this service already has a real server called `{}`",
                        server.label
                    ),
                ));
            }
            if let Some(twin) = real_servers
                .iter()
                .find(|s| s.address == server.address && s.port == server.port)
            {
                return Err(rat.err(
                    "address",
                    format!("same address and port as real server `{}`", twin.label),
                ));
            }
            real_servers.push(server);
        }

        Ok(Service {
            label: raw.label,
            address: raw.address,
            ports,
            layer,
            scheduler,
            persistence,
            check,
            fallback,
            real_servers,
        })
    }

    fn proxy(&self, at: &At, raw: &RawService) -> Result<ProxySettings, ConfigError> {
        let mut p = ProxySettings::default();
        if let Some(t) = raw.connect_timeout {
            p.connect_timeout = check_span(at, "connect_timeout", t, MS(1), SECS(600))?;
        }
        if let Some(r) = raw.retries {
            p.retries = r;
        }
        if let Some(q) = &raw.queue {
            let qat = at.nested(q.span(), String::new());
            let q = q.get_ref();
            if let Some(size) = q.size {
                if size > 100_000 {
                    return Err(
                        qat.err("queue.size", format!("must be at most 100000, got {size}"))
                    );
                }
                p.queue_size = size;
            }
            if let Some(t) = q.timeout {
                p.queue_timeout = check_span(&qat, "queue.timeout", t, MS(1), SECS(600))?;
            }
        }
        if let Some(k) = raw.keepalive {
            // TCP_KEEPIDLE takes whole seconds up to 32767.
            p.keepalive_idle = check_span(at, "keepalive", k, SECS(1), SECS(32_767))?;
        }
        Ok(p)
    }

    fn check(&self, at: &At, raw: RawCheck) -> Result<Check, ConfigError> {
        let kind = raw.kind;
        let only_for = |set: bool, field: &str, kinds: &[CheckKind]| -> Result<(), ConfigError> {
            if set && !kinds.contains(&kind) {
                let names: Vec<_> = kinds.iter().map(|k| format!("\"{}\"", k.name())).collect();
                return Err(at.err(
                    &format!("check.{field}"),
                    format!(
                        "does not apply to check kind \"{}\" (only to {})",
                        kind.name(),
                        names.join(", ")
                    ),
                ));
            }
            Ok(())
        };
        use CheckKind as K;
        only_for(raw.calling_ae.is_some(), "calling_ae", &[K::DicomEcho])?;
        only_for(raw.called_ae.is_some(), "called_ae", &[K::DicomEcho])?;
        only_for(raw.message.is_some(), "message", &[K::Hl7])?;
        only_for(raw.path.is_some(), "path", &[K::Http, K::Https])?;
        only_for(
            raw.expect_status.is_some(),
            "expect_status",
            &[K::Http, K::Https],
        )?;
        only_for(raw.host.is_some(), "host", &[K::Http, K::Https])?;
        only_for(raw.script.is_some(), "script", &[K::Script])?;
        only_for(
            raw.port.is_some(),
            "port",
            &[K::Tcp, K::DicomEcho, K::Hl7, K::Http, K::Https, K::Script],
        )?;

        let mut check = Check::default();
        if let Some(i) = raw.interval {
            check.interval = check_span(at, "check.interval", i, MS(100), SECS(3600))?;
        }
        if let Some(t) = raw.timeout {
            check.timeout = check_span(at, "check.timeout", t, MS(10), SECS(600))?;
        }
        for (value, field) in [(raw.rise, "rise"), (raw.fall, "fall")] {
            if let Some(n) = value {
                if !(1..=100).contains(&n) {
                    return Err(at.err(
                        &format!("check.{field}"),
                        format!("must be from 1 to 100, got {n}"),
                    ));
                }
            }
        }
        check.rise = raw.rise.unwrap_or(check.rise);
        check.fall = raw.fall.unwrap_or(check.fall);
        if let Some(p) = raw.port {
            check_port(at, "check.port", p)?;
            check.port = Some(p);
        }

        check.probe = match kind {
            K::None => Probe::None,
            K::Tcp => Probe::Tcp,
            K::Ping => Probe::Ping,
            K::DicomEcho => {
                let calling_ae = raw.calling_ae.unwrap_or_else(|| DEFAULT_CALLING_AE.into());
                let called_ae = raw.called_ae.unwrap_or_else(|| DEFAULT_CALLED_AE.into());
                check_ae_title(at, "check.calling_ae", &calling_ae)?;
                check_ae_title(at, "check.called_ae", &called_ae)?;
                Probe::DicomEcho {
                    calling_ae,
                    called_ae,
                }
            }
            K::Hl7 => {
                if let Some(m) = &raw.message {
                    if !m.starts_with("MSH") || m.len() < 9 {
                        return Err(at.err(
                            "check.message",
                            "must be an HL7 v2 message starting with an MSH segment",
                        ));
                    }
                    if m.split(['\r', '\n']).next().is_some_and(|msh| {
                        // MSH-1, the field separator, is the character after "MSH".
                        let sep = msh[3..].chars().next().unwrap_or('|');
                        msh.split(sep).nth(9).is_none()
                    }) {
                        return Err(at.err(
                            "check.message",
                            "the MSH segment needs a message control ID (MSH-10) for the ACK to echo",
                        ));
                    }
                }
                Probe::Hl7 {
                    message: raw.message,
                }
            }
            K::Http | K::Https => {
                let path = raw.path.unwrap_or_else(|| "/".into());
                if !path.starts_with('/')
                    || path.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(at.err(
                        "check.path",
                        format!("`{path}` must start with `/` and contain no spaces"),
                    ));
                }
                let expect_status = raw.expect_status.unwrap_or(200);
                if !(100..=599).contains(&expect_status) {
                    return Err(at.err(
                        "check.expect_status",
                        format!("must be an HTTP status from 100 to 599, got {expect_status}"),
                    ));
                }
                Probe::Http {
                    path,
                    expect_status,
                    tls: kind == K::Https,
                    host: raw.host,
                }
            }
            K::Script => {
                let Some(path) = raw.script else {
                    return Err(at.err(
                        "check.script",
                        "is required for check kind \"script\" (the absolute path of the program)",
                    ));
                };
                if !path.is_absolute() {
                    return Err(at.err(
                        "check.script",
                        format!("`{}` must be an absolute path", path.display()),
                    ));
                }
                Probe::Script { path }
            }
        };
        Ok(check)
    }

    fn real_server(
        &self,
        at: &At,
        layer: &Layer,
        service_ports: &[u16],
        raw: RawRealServer,
    ) -> Result<RealServer, ConfigError> {
        check_label(at, &raw.label)?;
        check_address(at, "address", raw.address)?;
        if let Some(p) = raw.port {
            check_port(at, "port", p)?;
        }
        let weight = raw.weight.unwrap_or(DEFAULT_WEIGHT);
        if weight > MAX_WEIGHT {
            return Err(at.err(
                "weight",
                format!("must be from 0 to {MAX_WEIGHT}, got {weight}"),
            ));
        }
        let max_connections = raw.max_connections.unwrap_or(0);
        let min_connections = raw.min_connections.unwrap_or(0);
        match layer {
            Layer::Seven(_) => {
                if raw.min_connections.is_some() {
                    return Err(at.err(
                        "min_connections",
                        "applies only to layer 4 services (the IPVS lower threshold)",
                    ));
                }
            }
            Layer::Four { forwarding, .. } => {
                if max_connections != 0 && min_connections > max_connections {
                    return Err(at.err(
                        "min_connections",
                        format!("{min_connections} is above max_connections ({max_connections})"),
                    ));
                }
                if *forwarding == Forwarding::DirectRouting {
                    if let Some(p) = raw.port.filter(|p| !service_ports.contains(p)) {
                        return Err(at.err(
                            "port",
                            format!(
                                "direct routing cannot change the port: {p} is not one of the service's ports {service_ports:?} (leave it out or use nat)"
                            ),
                        ));
                    }
                }
            }
        }
        Ok(RealServer {
            label: raw.label,
            address: raw.address,
            port: raw.port,
            weight,
            max_connections,
            min_connections,
        })
    }
}

/// DICOM PS3.8: an AE title is 1 to 16 characters of the default repertoire, no backslash
/// or control characters, and not only spaces.
fn check_ae_title(at: &At, field: &str, ae: &str) -> Result<(), ConfigError> {
    if ae.trim().is_empty() {
        return Err(at.err(field, "must not be empty or only spaces"));
    }
    if ae.len() > 16 {
        return Err(at.err(field, format!("`{ae}` is longer than 16 characters")));
    }
    if let Some(c) = ae
        .chars()
        .find(|c| !c.is_ascii() || c.is_ascii_control() || *c == '\\')
    {
        return Err(at.err(
            field,
            format!("`{ae}` contains {c:?}; AE titles are plain ASCII without `\\`"),
        ));
    }
    Ok(())
}
