//! The routes of the JSON API and what each asks of lbcore. Every answer is JSON;
//! an error is `{"error": "..."}` with a status code that says whose mistake it was.
//!
//! | Method and path | Body | Answer |
//! |---|---|---|
//! | `POST /api/login` | `{"user", "password"}` | session cookie, `{"user", "csrf_token"}` |
//! | `POST /api/logout` | – | the session ends |
//! | `GET /api/session` | – | `{"user", "csrf_token"}` of the current session |
//! | `GET /api/status` | – | the System Overview (lbcore's status, IPVS table included) |
//! | `GET /api/config` | – | `{"text"}`: lbcore's configuration file |
//! | `PUT /api/config` | `{"text"}` | applied, or refused with the reason; nothing changes then |
//! | `POST /api/services/{service}/servers/{server}/state` | `{"state": "drain"\|"halt"\|"online"}` | done |
//! | `GET /api/openapi.json` | – | the OpenAPI 3.1 description of these routes (`openapi.json` of this crate) |
//! | `GET /api/update` | – | the software update: running version and slot, step, progress, last result |
//! | `PUT /api/update/archive` | the archive (`application/octet-stream`), `?name=NAME` | staged (streamed to the update agent) |
//! | `PUT /api/update/checksum` | `{"text"}`: the archive's `.sha256` file | staged |
//! | `POST /api/update/install` | `{"allow_downgrade"}` (optional) | verified and installed into the other slot, or refused with the check that failed |
//! | `POST /api/update/discard` | – | what was staged is forgotten |
//! | `POST /api/update/check` | – | what the update server offers (`{"message", "available"}`) |
//! | `POST /api/update/download` | – | the available version downloaded (resuming after a break) and staged |
//! | `GET /api/update/settings` | – | where the appliance looks for updates online (a proxy password masked) |
//! | `PUT /api/update/settings` | `{"url", "check", "interval_hours", "ca_file", "proxy"}` | taken, or refused naming the field |
//! | `POST /api/system/reboot` | – | the appliance restarts (an installed update then boots) |
//! | `GET /api/firewall` | – | lockdown, custom rules, active ruleset, drop counters, last apply; the caller's address and the network proposed for lockdown |
//! | `PUT /api/firewall/lockdown` | `{"networks"}` | applied for 60 s (`{"token", ...}`), or refused when it would shut the caller out |
//! | `DELETE /api/firewall/lockdown` | – | management from anywhere again |
//! | `POST /api/firewall/lockdown/confirm` | `{"token"}` (a new connection: the lockdown's answer closed its own) | the lockdown is kept and saved |
//! | `PUT /api/firewall/custom` | `{"text"}` | the custom rules, once nft took them; else refused with nft's message |
//!
//! Everything but login and the description needs the session cookie; every request
//! that changes something also needs the header `X-CSRF-Token` with the session's
//! token, and a body of type `application/json` (which a cross-site form cannot send;
//! the archive upload, whose body is the archive, needs the token like every change).
//!
//! [`Route`] is the one list of these paths and their methods: `Api::route` finds a
//! request's route in it, and a unit test checks that `openapi.json` describes exactly
//! these routes and this table names them.

use appliance::net::canonical;
use std::net::IpAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::Lifetime;
use super::auth::{self, Auth, LoginError, Session, Use};
use super::update::Updates;
use lbcore_control::{AdminState, CallError, Client, RefusalKind};
use lbupdate::protocol::{Answer as UpdateAnswer, Request as UpdateRequest};

/// `__Host-`: browsers accept the cookie only from this host, over HTTPS, for the whole
/// site, so a neighbouring host name cannot plant or shadow a session.
pub const SESSION_COOKIE: &str = "__Host-medlb_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The largest configuration body accepted (well inside lbcore's request limit).
const MAX_CONFIG_BODY: usize = 256 << 10;
/// The largest body of every other request (login, state).
const MAX_SMALL_BODY: usize = 4 << 10;
/// Time for a client to send a whole body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest user name a login may give.
const MAX_USER: usize = 64;

pub type Reply = Response<Full<Bytes>>;

/// The OpenAPI description of the routes, served at `/api/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// A route of the API. Its path is written as the OpenAPI description writes it, with
/// `{name}` for a segment that names something (a service, a real server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Login,
    Logout,
    Session,
    Status,
    Config,
    ServerState,
    OpenApi,
    Update,
    UpdateArchive,
    UpdateChecksum,
    UpdateInstall,
    UpdateDiscard,
    UpdateCheck,
    UpdateDownload,
    UpdateSettings,
    Reboot,
    Firewall,
    FirewallLockdown,
    FirewallConfirm,
    FirewallCustom,
}

impl Route {
    pub const ALL: [Route; 20] = [
        Route::Login,
        Route::Logout,
        Route::Session,
        Route::Status,
        Route::Config,
        Route::ServerState,
        Route::OpenApi,
        Route::Update,
        Route::UpdateArchive,
        Route::UpdateChecksum,
        Route::UpdateInstall,
        Route::UpdateDiscard,
        Route::UpdateCheck,
        Route::UpdateDownload,
        Route::UpdateSettings,
        Route::Reboot,
        Route::Firewall,
        Route::FirewallLockdown,
        Route::FirewallConfirm,
        Route::FirewallCustom,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Route::Login => "/api/login",
            Route::Logout => "/api/logout",
            Route::Session => "/api/session",
            Route::Status => "/api/status",
            Route::Config => "/api/config",
            Route::ServerState => "/api/services/{service}/servers/{server}/state",
            Route::OpenApi => "/api/openapi.json",
            Route::Update => "/api/update",
            Route::UpdateArchive => "/api/update/archive",
            Route::UpdateChecksum => "/api/update/checksum",
            Route::UpdateInstall => "/api/update/install",
            Route::UpdateDiscard => "/api/update/discard",
            Route::UpdateCheck => "/api/update/check",
            Route::UpdateDownload => "/api/update/download",
            Route::UpdateSettings => "/api/update/settings",
            Route::Reboot => "/api/system/reboot",
            Route::Firewall => "/api/firewall",
            Route::FirewallLockdown => "/api/firewall/lockdown",
            Route::FirewallConfirm => "/api/firewall/lockdown/confirm",
            Route::FirewallCustom => "/api/firewall/custom",
        }
    }

    /// The methods it takes, as the `Allow` header of a 405 lists them.
    pub fn methods(self) -> &'static str {
        match self {
            Route::Config | Route::UpdateSettings => "GET, PUT",
            Route::UpdateArchive | Route::UpdateChecksum | Route::FirewallCustom => "PUT",
            Route::FirewallLockdown => "PUT, DELETE",
            Route::Login
            | Route::Logout
            | Route::ServerState
            | Route::UpdateInstall
            | Route::UpdateDiscard
            | Route::UpdateCheck
            | Route::UpdateDownload
            | Route::Reboot
            | Route::FirewallConfirm => "POST",
            Route::Session | Route::Status | Route::OpenApi | Route::Update | Route::Firewall => {
                "GET"
            }
        }
    }

    /// The route of a path's (decoded) segments, with the values of its `{name}`
    /// segments in order.
    pub fn find<'a>(segments: &[&'a str]) -> Option<(Route, Vec<&'a str>)> {
        Route::ALL.into_iter().find_map(|route| {
            let template: Vec<&str> = route.path().split('/').filter(|s| !s.is_empty()).collect();
            if template.len() != segments.len() {
                return None;
            }
            let mut values = Vec::new();
            for (t, s) in template.iter().zip(segments) {
                if t.starts_with('{') {
                    values.push(*s);
                } else if t != s {
                    return None;
                }
            }
            Some((route, values))
        })
    }
}

/// A request that cannot be served, and why.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
    allow: Option<&'static str>,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
            retry_after: None,
            allow: None,
        }
    }

    fn reply(self) -> Reply {
        let mut r = json(
            self.status,
            &ErrorBody {
                error: self.message,
            },
        );
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self.allow {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        r
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

#[derive(Serialize)]
struct SessionBody<'a> {
    user: &'a str,
    csrf_token: &'a str,
}

#[derive(Serialize)]
struct MessageBody {
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    user: String,
    password: String,
}

/// The configuration as GET sends it and PUT takes it. `version` identifies the text
/// (a SHA-256 of it): a PUT that sends the version it started from is refused with 409
/// when someone else changed the configuration meanwhile, instead of silently undoing
/// their change. A PUT without it replaces whatever is there.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

fn version_of(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Serialize)]
struct AppliedBody {
    message: String,
    /// The version of the configuration now in place.
    version: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: AdminState,
}

/// What `GET /api/firewall` answers: the firewall, and what the lockdown wizard
/// proposes to the caller.
#[derive(Serialize)]
struct FirewallBody {
    firewall: lbcore_control::FirewallStatus,
    /// The address this request came from, as the appliance sees it.
    your_address: String,
    /// The caller's network (/24 of IPv4, /64 of IPv6): the wizard's first proposal.
    proposal: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockdownBody {
    networks: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomBody {
    text: String,
}

/// The network proposed for a lockdown from `ip`.
fn proposal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
            format!("{net}/64")
        }
    }
}

/// The archive's checksum file, as text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChecksumBody {
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallBody {
    #[serde(default)]
    allow_downgrade: bool,
}

/// How long a connection that carries an update (upload or install) may stay open.
const UPLOAD_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 60);

fn unexpected_update(a: &UpdateAnswer) -> Failure {
    Failure::new(
        StatusCode::BAD_GATEWAY,
        format!("the update agent answered `{}`", a.name()),
    )
}

/// The decoded value of query parameter `name`.
fn query<B>(req: &Request<B>, name: &str) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| percent_decode(v))
}

pub struct Api {
    auth: Auth,
    /// lbcore's control socket.
    control: Client,
    /// The update agent and init, for the update routes.
    updates: Updates,
    /// Held from the version check of a PUT to its end, so that two edits cannot both
    /// pass the check.
    editing: tokio::sync::Mutex<()>,
}

impl Api {
    pub fn new(auth: Auth, control: PathBuf, updates: Updates) -> Api {
        Api {
            auth,
            control: Client::new(control),
            updates,
            editing: tokio::sync::Mutex::new(()),
        }
    }

    pub async fn handle(&self, req: Request<Incoming>, peer: IpAddr, lifetime: &Lifetime) -> Reply {
        let mut reply = match self.route(req, peer, lifetime).await {
            Ok(r) => r,
            Err(f) => {
                if f.status.is_server_error() {
                    warn!(%peer, "{}", f.message);
                }
                f.reply()
            }
        };
        let h = reply.headers_mut();
        for (name, value) in [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
            (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
            (header::REFERRER_POLICY, "no-referrer"),
        ] {
            h.insert(name, HeaderValue::from_static(value));
        }
        reply
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        peer: IpAddr,
        lifetime: &Lifetime,
    ) -> Result<Reply, Failure> {
        let segments: Vec<String> = req
            .uri()
            .path()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect::<Option<_>>()
            .ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "badly encoded path"))?;
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let Some((route, values)) = Route::find(&segments) else {
            return Err(match segments.first() {
                Some(&"api") => Failure::new(StatusCode::NOT_FOUND, "no such API path"),
                _ => Failure::new(StatusCode::NOT_FOUND, "not found"),
            });
        };
        allow(&req, route.methods())?;
        match route {
            Route::Login => self.login(req, peer).await,
            Route::Logout => {
                let (token, _) = self.change(&req)?;
                self.auth.logout(&token);
                let mut r = json(
                    StatusCode::OK,
                    &MessageBody {
                        message: "logged out".into(),
                    },
                );
                r.headers_mut().insert(
                    header::SET_COOKIE,
                    HeaderValue::from_static(
                        "__Host-medlb_session=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict",
                    ),
                );
                Ok(r)
            }
            Route::Session => {
                let (_, s) = self.session(&req, Use::Poll)?;
                Ok(json(
                    StatusCode::OK,
                    &SessionBody {
                        user: &s.user,
                        csrf_token: &s.csrf,
                    },
                ))
            }
            Route::Status => {
                self.session(&req, Use::Poll)?;
                let status = self.ask(|c| c.status()).await?;
                Ok(json(StatusCode::OK, &status))
            }
            Route::Config if req.method() == Method::GET => {
                self.session(&req, Use::Operator)?;
                let text = self.config_text().await?;
                Ok(json(
                    StatusCode::OK,
                    &ConfigBody {
                        version: Some(version_of(&text)),
                        text,
                    },
                ))
            }
            Route::Config => {
                let (_, s) = self.change(&req)?;
                let body: ConfigBody = read_json(req, MAX_CONFIG_BODY).await?;
                let _editing = self.editing.lock().await;
                if let Some(started_from) = &body.version {
                    if *started_from != version_of(&self.config_text().await?) {
                        return Err(Failure::new(
                            StatusCode::CONFLICT,
                            "the configuration was changed by someone else since you loaded it: load it again and redo your change",
                        ));
                    }
                }
                let version = version_of(&body.text);
                let text = body.text;
                let applied = self
                    .ask(move |c| c.apply(&text, Some("the configuration you submitted")))
                    .await?;
                info!(user = %s.user, %peer, "configuration applied: {}", applied.message);
                Ok(json(
                    StatusCode::OK,
                    &AppliedBody {
                        message: applied.message,
                        version,
                    },
                ))
            }
            Route::ServerState => {
                let [service, server] = values[..] else {
                    return Err(Failure::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("the route {} has no service and server", route.path()),
                    ));
                };
                let (_, s) = self.change(&req)?;
                let (service, server) = (service.to_string(), server.to_string());
                let body: StateBody = read_json(req, MAX_SMALL_BODY).await?;
                let set = self
                    .ask(move |c| c.set_state(&service, &server, body.state))
                    .await?;
                info!(user = %s.user, %peer, "{}", set.message);
                Ok(json(
                    StatusCode::OK,
                    &MessageBody {
                        message: set.message,
                    },
                ))
            }
            Route::Update => {
                self.session(&req, Use::Poll)?;
                let status = self.updates.status().await?;
                Ok(json(StatusCode::OK, &status))
            }
            Route::UpdateArchive => {
                let (_, s) = self.change(&req)?;
                let name = query(&req, "name").ok_or_else(|| {
                    Failure::new(
                        StatusCode::BAD_REQUEST,
                        "name the archive: PUT /api/update/archive?name=medlb-VERSION.update",
                    )
                })?;
                let size = req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| {
                        Failure::new(
                            StatusCode::LENGTH_REQUIRED,
                            "the upload needs a Content-Length (the archive's size)",
                        )
                    })?;
                if size > lbupdate::agent::MAX_ARCHIVE {
                    return Err(Failure::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "an update archive is at most {} bytes",
                            lbupdate::agent::MAX_ARCHIVE
                        ),
                    ));
                }
                // an administrator's upload may take longer than a connection's lifetime
                lifetime.extend(UPLOAD_LIFETIME);
                info!(user = %s.user, %peer, name, size, "update archive upload");
                let staged = self.updates.receive(req, name, size).await?;
                Ok(json(StatusCode::OK, &staged))
            }
            Route::UpdateChecksum => {
                let (_, _) = self.change(&req)?;
                let body: ChecksumBody = read_json(req, MAX_SMALL_BODY).await?;
                match self
                    .updates
                    .call(UpdateRequest::Checksum { text: body.text })
                    .await?
                {
                    UpdateAnswer::ChecksumTaken(staged) => Ok(json(StatusCode::OK, &staged)),
                    other => Err(unexpected_update(&other)),
                }
            }
            Route::UpdateInstall => {
                let (_, s) = self.change(&req)?;
                let body: InstallBody = read_json(req, MAX_SMALL_BODY).await?;
                if body.allow_downgrade {
                    warn!(user = %s.user, %peer, "install with allow_downgrade");
                }
                lifetime.extend(UPLOAD_LIFETIME);
                match self
                    .updates
                    .call(UpdateRequest::Install {
                        allow_downgrade: body.allow_downgrade,
                    })
                    .await?
                {
                    UpdateAnswer::Installed(done) => {
                        info!(user = %s.user, %peer, "{}", done.message);
                        Ok(json(StatusCode::OK, &done))
                    }
                    other => Err(unexpected_update(&other)),
                }
            }
            Route::UpdateDiscard => {
                self.change(&req)?;
                match self.updates.call(UpdateRequest::Discard).await? {
                    UpdateAnswer::Discarded => Ok(json(
                        StatusCode::OK,
                        &MessageBody {
                            message: "nothing is staged any more".into(),
                        },
                    )),
                    other => Err(unexpected_update(&other)),
                }
            }
            Route::UpdateCheck => {
                self.change(&req)?;
                match self.updates.call(UpdateRequest::Check).await? {
                    UpdateAnswer::Checked(c) => Ok(json(StatusCode::OK, &c)),
                    other => Err(unexpected_update(&other)),
                }
            }
            Route::UpdateDownload => {
                let (_, s) = self.change(&req)?;
                lifetime.extend(UPLOAD_LIFETIME);
                info!(user = %s.user, %peer, "update download");
                match self.updates.call(UpdateRequest::Download).await? {
                    UpdateAnswer::Received(staged) => Ok(json(StatusCode::OK, &staged)),
                    other => Err(unexpected_update(&other)),
                }
            }
            Route::UpdateSettings if req.method() == Method::GET => {
                self.session(&req, Use::Operator)?;
                match self.updates.call(UpdateRequest::Settings).await? {
                    UpdateAnswer::Settings(set) => Ok(json(StatusCode::OK, &set)),
                    other => Err(unexpected_update(&other)),
                }
            }
            Route::UpdateSettings => {
                let (_, s) = self.change(&req)?;
                let settings: lbupdate::protocol::Settings = read_json(req, MAX_SMALL_BODY).await?;
                match self
                    .updates
                    .call(UpdateRequest::SetSettings { settings })
                    .await?
                {
                    UpdateAnswer::Settings(set) => {
                        info!(user = %s.user, %peer, "update settings changed");
                        Ok(json(StatusCode::OK, &set))
                    }
                    other => Err(unexpected_update(&other)),
                }
            }
            Route::Reboot => {
                let (_, s) = self.change(&req)?;
                warn!(user = %s.user, %peer, "reboot requested");
                self.updates.reboot().await?;
                Ok(json(
                    StatusCode::ACCEPTED,
                    &MessageBody {
                        message: "the appliance restarts now".into(),
                    },
                ))
            }
            Route::Firewall => {
                self.session(&req, Use::Poll)?;
                let f = self
                    .ask(|c| c.firewall(&lbcore_control::Request::Firewall))
                    .await?;
                let you = canonical(peer);
                Ok(json(
                    StatusCode::OK,
                    &FirewallBody {
                        proposal: proposal(you),
                        your_address: you.to_string(),
                        firewall: f,
                    },
                ))
            }
            Route::FirewallLockdown if req.method() == Method::DELETE => {
                let (_, s) = self.change(&req)?;
                let origin = format!("the web UI ({} at {})", s.user, canonical(peer));
                let f = self
                    .ask(move |c| c.firewall(&lbcore_control::Request::LockdownOff { origin }))
                    .await?;
                Ok(json(StatusCode::OK, &f))
            }
            Route::FirewallLockdown => {
                let (_, s) = self.change(&req)?;
                let body: LockdownBody = read_json(req, MAX_SMALL_BODY).await?;
                let you = canonical(peer).to_string();
                let applied = self
                    .ask(move |c| c.set_lockdown(body.networks, Some(you)))
                    .await?;
                info!(user = %s.user, %peer, "{}", applied.message);
                let mut r = json(StatusCode::OK, &applied);
                // the confirmation must prove that a new connection gets through: hyper
                // closes this one after the answer, so the confirmation cannot ride on
                // a connection the old rules let in
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                Ok(r)
            }
            Route::FirewallConfirm => {
                let (_, s) = self.change(&req)?;
                let body: ConfirmBody = read_json(req, MAX_SMALL_BODY).await?;
                let token = body.token;
                let f = self
                    .ask(move |c| c.firewall(&lbcore_control::Request::ConfirmLockdown { token }))
                    .await?;
                info!(user = %s.user, %peer, "lockdown confirmed: management from {}", f.lockdown.join(", "));
                Ok(json(StatusCode::OK, &f))
            }
            Route::FirewallCustom => {
                let (_, s) = self.change(&req)?;
                let body: CustomBody = read_json(req, MAX_CONFIG_BODY).await?;
                let text = body.text;
                let f = self
                    .ask(move |c| c.firewall(&lbcore_control::Request::SetCustomRules { text }))
                    .await?;
                info!(user = %s.user, %peer, "custom firewall rules applied");
                Ok(json(StatusCode::OK, &f))
            }
            // not secret, and needed before logging in: no session
            Route::OpenApi => {
                let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Ok(r)
            }
        }
    }

    async fn login(&self, req: Request<Incoming>, peer: IpAddr) -> Result<Reply, Failure> {
        let body: LoginBody = read_json(req, MAX_SMALL_BODY).await?;
        if body.user.len() > MAX_USER || body.user.chars().any(char::is_control) {
            return Err(Failure::new(StatusCode::BAD_REQUEST, "invalid user name"));
        }
        match self.auth.login(&body.user, &body.password, peer).await {
            Ok((token, session)) => {
                info!(user = %session.user, %peer, "logged in");
                let mut r = json(
                    StatusCode::OK,
                    &SessionBody {
                        user: &session.user,
                        csrf_token: &session.csrf,
                    },
                );
                let cookie =
                    format!("{SESSION_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict");
                let value = HeaderValue::from_str(&cookie)
                    .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
                r.headers_mut().insert(header::SET_COOKIE, value);
                Ok(r)
            }
            Err(e) => {
                let status = match e {
                    LoginError::Wrong => {
                        warn!(user = ?body.user, %peer, "failed login");
                        StatusCode::UNAUTHORIZED
                    }
                    LoginError::Locked(_) => StatusCode::TOO_MANY_REQUESTS,
                    LoginError::NoAccount => StatusCode::SERVICE_UNAVAILABLE,
                    LoginError::Account(ref detail) => {
                        error!(%peer, "login impossible: {detail}");
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                };
                let mut f = Failure::new(status, e.to_string());
                if let LoginError::Locked(secs) = e {
                    f.retry_after = Some(secs);
                }
                Err(f)
            }
        }
    }

    async fn config_text(&self) -> Result<String, Failure> {
        self.ask(|c| c.show_config()).await
    }

    /// The caller's session (cookie value and session), or 401.
    fn session<B>(&self, req: &Request<B>, how: Use) -> Result<(String, Session), Failure> {
        let token = cookie(req.headers(), SESSION_COOKIE).ok_or_else(|| {
            Failure::new(StatusCode::UNAUTHORIZED, "log in first (POST /api/login)")
        })?;
        let session = self.auth.session(&token, how).ok_or_else(|| {
            Failure::new(
                StatusCode::UNAUTHORIZED,
                "the session has ended: log in again",
            )
        })?;
        Ok((token, session))
    }

    /// The session of a request that changes something: the CSRF token must match.
    fn change<B>(&self, req: &Request<B>) -> Result<(String, Session), Failure> {
        let (token, session) = self.session(req, Use::Operator)?;
        let sent = req
            .headers()
            .get(CSRF_HEADER)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !auth::same(sent, session.csrf.as_bytes()) {
            return Err(Failure::new(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token header (the csrf_token of the login answer)",
            ));
        }
        Ok((token, session))
    }

    /// One request to lbcore (a blocking call, off the async threads); a refusal
    /// becomes 422 (invalid), 404 (no such service or server) or 500 (lbcore could not
    /// carry it out), with lbcore's reason.
    async fn ask<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Client) -> Result<T, CallError> + Send + 'static,
    ) -> Result<T, Failure> {
        let client = self.control.clone();
        tokio::task::spawn_blocking(move || call(&client))
            .await
            .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| match e {
                CallError::Connect { .. } => {
                    Failure::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                }
                CallError::Refused(r) => {
                    let status = match r.kind {
                        RefusalKind::NotFound => StatusCode::NOT_FOUND,
                        RefusalKind::Failed => StatusCode::INTERNAL_SERVER_ERROR,
                        RefusalKind::Invalid | RefusalKind::TooLong => {
                            StatusCode::UNPROCESSABLE_ENTITY
                        }
                        // lbweb asked something this lbcore does not know: lbweb's fault
                        RefusalKind::Unsupported => StatusCode::BAD_GATEWAY,
                    };
                    Failure::new(status, r.reason)
                }
                CallError::Io(_) | CallError::Protocol(_) => {
                    Failure::new(StatusCode::BAD_GATEWAY, e.to_string())
                }
            })
    }
}

/// 405 unless the request's method is one of `list` (`GET, PUT`).
fn allow<B>(req: &Request<B>, list: &'static str) -> Result<(), Failure> {
    if list.split(", ").any(|m| m == req.method().as_str()) {
        return Ok(());
    }
    let mut f = Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed here (allowed: {list})", req.method()),
    );
    f.allow = Some(list);
    Err(f)
}

/// Reads a JSON body of at most `limit` bytes, sent within [`BODY_TIMEOUT`].
/// A JSON body a route takes, and how the API describes it in a refusal.
trait Body: DeserializeOwned {
    /// What the body is, in the API's words (`a login is {"user": ..., "password": ...}`).
    const SHAPE: &'static str;
}

impl Body for LoginBody {
    const SHAPE: &'static str = r#"a login is {"user": "admin", "password": "..."}"#;
}
impl Body for ConfigBody {
    const SHAPE: &'static str =
        r#"a configuration is {"text": "<lbcore.toml>", "version": "<from GET, optional>"}"#;
}
impl Body for StateBody {
    const SHAPE: &'static str = r#"a state is {"state": "drain" | "halt" | "online"}"#;
}
impl Body for ChecksumBody {
    const SHAPE: &'static str = r#"a checksum file is {"text": "<the .sha256 file>"}"#;
}
impl Body for LockdownBody {
    const SHAPE: &'static str = r#"a lockdown is {"networks": ["192.0.2.0/24", ...]}"#;
}
impl Body for ConfirmBody {
    const SHAPE: &'static str = r#"a confirmation is {"token": "<from the lockdown's answer>"}"#;
}
impl Body for CustomBody {
    const SHAPE: &'static str = r#"custom rules are {"text": "<nftables rules, one a line>"}"#;
}
impl Body for InstallBody {
    const SHAPE: &'static str = r#"an install is {} or {"allow_downgrade": true}"#;
}
impl Body for lbupdate::protocol::Settings {
    const SHAPE: &'static str = r#"the update settings are {"url": "https://...", "check": true, "interval_hours": 24, "ca_file": "/...", "proxy": "http://..."}"#;
}

/// What is wrong with a body, in the API's words: serde's message without its
/// positions and type names.
fn body_problem(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let text = e.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text).to_string();
    let quoted = |t: &str| t.split('`').nth(1).unwrap_or("").to_string();
    match e.classify() {
        Category::Syntax | Category::Eof => "the body is not valid JSON".into(),
        Category::Io => "the body cannot be read".into(),
        Category::Data if text.starts_with("missing field") => {
            format!("`{}` is missing", quoted(&text))
        }
        Category::Data if text.starts_with("unknown field") => {
            format!("`{}` is not one of its fields", quoted(&text))
        }
        Category::Data if text.starts_with("unknown variant") => {
            format!("`{}` is not one of the values it takes", quoted(&text))
        }
        Category::Data if text.starts_with("invalid type") || text.starts_with("invalid value") => {
            let expected = text.rsplit("expected ").next().unwrap_or("another type");
            format!("a value has the wrong type (expected {expected})")
        }
        Category::Data => "a value is not acceptable".into(),
    }
}

async fn read_json<T: Body>(req: Request<Incoming>, limit: usize) -> Result<T, Failure> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    let collected =
        tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), limit).collect())
            .await
            .map_err(|_| Failure::new(StatusCode::REQUEST_TIMEOUT, "the body came too slowly"))?;
    let bytes = collected
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Failure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is larger than {limit} bytes"),
                )
            } else {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                )
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("{}: {}", body_problem(&e), T::SHAPE),
        )
    })
}

fn json(status: StatusCode, body: &impl Serialize) -> Reply {
    let (status, text) = match serde_json::to_vec(body) {
        Ok(t) => (status, t),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{{\"error\":\"cannot encode the answer: {e}\"}}").into_bytes(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Decodes `%XX` escapes of a path segment; `None` when they are malformed or the
/// result is not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            // from_str_radix alone would take a sign ("%+f")
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn description() -> serde_json::Value {
        serde_json::from_str(OPENAPI).expect("openapi.json is not valid JSON")
    }

    /// Path → sorted methods.
    fn sorted(
        routes: impl Iterator<Item = (String, Vec<String>)>,
    ) -> BTreeMap<String, Vec<String>> {
        routes
            .map(|(path, mut methods)| {
                methods.sort();
                (path, methods)
            })
            .collect()
    }

    #[test]
    fn the_description_lists_exactly_the_routes_there_are() {
        let d = description();
        assert!(
            d["openapi"].as_str().is_some_and(|v| v.starts_with("3.1.")),
            "{}",
            d["openapi"]
        );
        const OPERATIONS: [&str; 8] = [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ];
        let paths = d["paths"].as_object().expect("openapi.json has no paths");
        let described = sorted(paths.iter().map(|(path, item)| {
            let methods = OPERATIONS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_uppercase())
                .collect();
            (path.clone(), methods)
        }));
        let known = sorted(Route::ALL.iter().map(|r| {
            let methods = r.methods().split(", ").map(String::from).collect();
            (r.path().to_string(), methods)
        }));
        assert_eq!(described, known);
    }

    #[test]
    fn the_route_table_of_the_module_doc_names_every_route() {
        let doc: String = include_str!("api.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect();
        for r in Route::ALL {
            for m in r.methods().split(", ") {
                let row = format!("| `{m} {}` |", r.path());
                assert!(doc.contains(&row), "the module doc has no row {row}");
            }
        }
    }

    #[test]
    fn every_reference_of_the_description_resolves() {
        fn walk(v: &serde_json::Value, root: &serde_json::Value, found: &mut usize) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(r) = map.get("$ref") {
                        let target = r.as_str().and_then(|r| r.strip_prefix('#'));
                        assert!(
                            target.and_then(|t| root.pointer(t)).is_some(),
                            "$ref {r} does not resolve"
                        );
                        *found += 1;
                    }
                    map.values().for_each(|v| walk(v, root, found));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, root, found)),
                _ => {}
            }
        }
        let d = description();
        let mut found = 0;
        walk(&d, &d, &mut found);
        assert!(found > 100, "only {found} references");
    }

    #[test]
    fn a_malformed_body_is_refused_in_the_api_s_words() {
        let problem = |text: &str| {
            let e = serde_json::from_str::<LoginBody>(text).unwrap_err();
            format!("{}: {}", body_problem(&e), LoginBody::SHAPE)
        };
        assert_eq!(
            problem(r#"{"user": "admin"}"#),
            r#"`password` is missing: a login is {"user": "admin", "password": "..."}"#
        );
        assert!(
            problem(r#"{"user": "admin", "password": "x", "otp": 1}"#)
                .starts_with("`otp` is not one of its fields")
        );
        assert!(
            problem(r#"{"user": 3, "password": "x"}"#)
                .starts_with("a value has the wrong type (expected a string)")
        );
        assert!(problem("{user").starts_with("the body is not valid JSON"));
        let e = serde_json::from_str::<StateBody>(r#"{"state": "paused"}"#).unwrap_err();
        assert_eq!(
            body_problem(&e),
            "`paused` is not one of the values it takes"
        );
        for text in [r#"{"user": 3}"#, "{", r#"{"a":1}"#] {
            let e = serde_json::from_str::<LoginBody>(text).unwrap_err();
            let p = body_problem(&e);
            assert!(!p.contains("line") && !p.contains("column"), "{p}");
        }
    }

    #[test]
    fn routes_are_found_with_the_names_in_their_path() {
        assert_eq!(
            Route::find(&["api", "services", "PACS", "servers", "DS1", "state"]),
            Some((Route::ServerState, vec!["PACS", "DS1"]))
        );
        assert_eq!(
            Route::find(&["api", "status"]),
            Some((Route::Status, vec![]))
        );
        assert_eq!(
            Route::find(&["api", "openapi.json"]),
            Some((Route::OpenApi, vec![]))
        );
        assert_eq!(Route::find(&["api", "services", "PACS"]), None);
        assert_eq!(Route::find(&["api", "status", "x"]), None);
        assert_eq!(Route::find(&["status"]), None);
        assert_eq!(Route::find(&[]), None);
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; medlb_session=old; __Host-medlb_session=abc"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn path_segments_are_decoded() {
        assert_eq!(percent_decode("DS%5FDICOM").as_deref(), Some("DS_DICOM"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%4"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_decode("%+f"), None);
        assert_eq!(percent_decode("%-1"), None);
    }
}
