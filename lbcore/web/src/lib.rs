//! `lbweb`: the appliance's HTTPS API on port 9443, the one JSON API that the web
//! pages, scripts and the tests use ([`api`] lists the routes; `openapi.json` beside
//! this crate describes them, and lbweb serves it at `/api/openapi.json`). It holds no state of
//! the load balancer: everything it shows or changes goes through lbcore's control
//! socket, so that lbcore stays the only owner of its configuration file and of the
//! rules for changing it. Login uses the admin account the console wizard wrote
//! ([`auth`]); TLS uses the certificate in /data/tls, made on first start ([`tls`]).

pub mod api;
pub mod auth;
pub mod tls;
pub mod update;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 128;
/// Time for a client to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection may stay open, whatever the client does (a client that
/// trickles or never reads cannot hold one of the slots for long).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Time for a client to send a request's headers (and the most a kept-alive connection
/// may sit idle between requests).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Options {
    pub listen: SocketAddr,
    /// lbcore's control socket.
    pub control: PathBuf,
    /// The update agent's control socket.
    pub update: PathBuf,
    /// init's control socket (reboot).
    pub init: PathBuf,
    /// The admin account (admin.toml).
    pub admin: PathBuf,
    /// Where cert.pem and key.pem are (made on first start).
    pub tls_dir: PathBuf,
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after login, used or not.
    pub session_lifetime: Duration,
}

/// Serves the API until SIGTERM or SIGINT.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let tls_dir = opts.tls_dir.clone();
    let tls = tokio::task::spawn_blocking(move || tls::load_or_create(&tls_dir, &hostname))
        .await
        .context("the certificate task failed")??;
    let acceptor = TlsAcceptor::from(tls);
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let api = Arc::new(api::Api::new(
        auth::Auth::new(opts.admin, opts.session_idle, opts.session_lifetime),
        opts.control,
        update::Updates::new(opts.update, opts.init),
    ));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // on stdout: init takes this line as the readiness signal
    println!("lbweb listening on https://{}/", opts.listen);

    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve(stream, peer, acceptor.clone(), api.clone(), permit));
                }
                Err(e) => {
                    // out of file descriptors or memory: wait rather than spin
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping");
    Ok(())
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    api: Arc<api::Api>,
    _slot: OwnedSemaphorePermit,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let ip = peer.ip();
    let lifetime = Arc::new(Lifetime::new(CONNECTION_LIFETIME));
    let for_requests = lifetime.clone();
    let service = service_fn(move |req| {
        let (api, lifetime) = (api.clone(), for_requests.clone());
        async move { Ok::<_, Infallible>(api.handle(req, ip, &lifetime).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    loop {
        let deadline = lifetime.deadline();
        tokio::select! {
            done = &mut connection => {
                if let Err(e) = done {
                    debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                // an authenticated upload may have moved the deadline meanwhile
                if lifetime.deadline() <= tokio::time::Instant::now() {
                    debug!(%peer, "connection closed at the end of its lifetime");
                    return;
                }
            }
        }
    }
}

/// When a connection is closed, whatever its client does: [`CONNECTION_LIFETIME`]
/// after it opened, or later when a request of an authenticated administrator needs
/// it (an update archive uploading over a slow link).
pub struct Lifetime {
    deadline: std::sync::Mutex<tokio::time::Instant>,
}

impl Lifetime {
    fn new(from_now: Duration) -> Lifetime {
        Lifetime {
            deadline: std::sync::Mutex::new(tokio::time::Instant::now() + from_now),
        }
    }

    fn deadline(&self) -> tokio::time::Instant {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection may stay open `from_now` longer (never shorter than it was).
    pub fn extend(&self, from_now: Duration) {
        let mut d = self.deadline.lock().unwrap_or_else(|p| p.into_inner());
        *d = (*d).max(tokio::time::Instant::now() + from_now);
    }
}
