//! Who may use the API: the admin account that the console wizard wrote
//! (`/data/config/admin.toml`, an argon2id hash; its model is
//! `appliance::files::admin`),
//! sessions held in memory behind a random cookie, a CSRF token per session, and a
//! brake on guessing passwords.
//!
//! The account file is read at every login, so a password reset from the console menu
//! counts at once. Sessions end after a time without use and after a fixed lifetime,
//! and all of them end when lbweb restarts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use appliance::files::admin::{self, AdminError, AdminFile};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Semaphore;

/// Failed logins from one address before it must wait.
const MAX_FAILURES: u32 = 5;
/// How long an address that failed too often must wait.
const LOCKOUT: Duration = Duration::from_secs(60);
/// Sessions held at most; the least recently used goes first.
const MAX_SESSIONS: usize = 64;
/// Addresses with failed logins remembered at most (a flood cannot grow memory).
const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    created: Instant,
    last_used: Instant,
    /// The account as it was at login: a password reset on the console (or a new
    /// user name) ends every session opened with the old one.
    account: AdminFile,
}

/// What a request does with its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// The operator did something: the idle time starts again.
    Operator,
    /// A page refreshing itself (status polling): the session is checked but not kept
    /// alive, so a browser left open on a ward PC still logs out when idle.
    Poll,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoginError {
    #[error("wrong user name or password")]
    Wrong,
    #[error("too many failed logins from this address: try again in {0} s")]
    Locked(u64),
    #[error("no admin password is set yet: finish the setup wizard on the appliance's console")]
    NoAccount,
    /// The account file is unreadable or damaged; the detail (with its path) goes to
    /// the log, the client only learns where to look.
    #[error("the admin account cannot be read: see the appliance's log")]
    Account(String),
}

#[derive(Default)]
struct Failures {
    /// A login from this address is being checked: the next waits its turn (refused),
    /// so parallel guesses cannot slip past the count.
    in_flight: bool,
    count: u32,
    locked_until: Option<Instant>,
    last: Option<Instant>,
}

pub struct Auth {
    admin_file: PathBuf,
    idle: Duration,
    lifetime: Duration,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// argon2 takes ~20 MB and tens of milliseconds per try: logins are checked one
    /// at a time, so a flood of them cannot take the proxy's cores or much memory.
    verifying: Semaphore,
    random: SystemRandom,
}

impl Auth {
    pub fn new(admin_file: PathBuf, idle: Duration, lifetime: Duration) -> Auth {
        Auth {
            admin_file,
            idle,
            lifetime,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            verifying: Semaphore::new(1),
            random: SystemRandom::new(),
        }
    }

    /// Checks the user name and password; on success returns the new session's cookie
    /// value and the session.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<(String, Session), LoginError> {
        self.begin(peer, Instant::now())?;
        let _turn = InFlight { auth: self, peer };
        let _permit = self
            .verifying
            .acquire()
            .await
            .map_err(|e| LoginError::Account(e.to_string()))?;
        let path = self.admin_file.clone();
        let (user, password) = (user.to_string(), password.to_string());
        let verdict = tokio::task::spawn_blocking(move || check(&path, &user, &password))
            .await
            .map_err(|e| LoginError::Account(format!("the checking task failed: {e}")))?;
        let now = Instant::now();
        match verdict {
            Ok(account) => {
                if let Some(f) = self.lock_failures().get_mut(&peer) {
                    f.count = 0;
                }
                let token = self.token()?;
                let session = Session {
                    user: account.user.clone(),
                    csrf: self.token()?,
                    created: now,
                    last_used: now,
                    account,
                };
                let mut sessions = self.lock_sessions();
                self.prune(&mut sessions, now);
                if sessions.len() >= MAX_SESSIONS {
                    if let Some(oldest) = sessions
                        .iter()
                        .min_by_key(|(_, s)| s.last_used)
                        .map(|(k, _)| k.clone())
                    {
                        sessions.remove(&oldest);
                    }
                }
                sessions.insert(token.clone(), session.clone());
                Ok((token, session))
            }
            Err(LoginError::Wrong) => {
                self.failed(peer, now);
                Err(LoginError::Wrong)
            }
            Err(e) => Err(e),
        }
    }

    /// The session for a cookie value, if it is still valid and the account has not
    /// changed since its login; `Use::Operator` marks it used.
    pub fn session(&self, token: &str, how: Use) -> Option<Session> {
        // A few hundred bytes, read at human request rates: cheaper than being wrong
        // about a password reset.
        let account = read_account(&self.admin_file).ok();
        self.session_at(token, Instant::now(), account.as_ref(), how)
    }

    fn session_at(
        &self,
        token: &str,
        now: Instant,
        account: Option<&AdminFile>,
        how: Use,
    ) -> Option<Session> {
        let mut sessions = self.lock_sessions();
        let s = sessions.get_mut(token)?;
        if self.expired(s, now) || account != Some(&s.account) {
            sessions.remove(token);
            return None;
        }
        if how == Use::Operator {
            s.last_used = now;
        }
        Some(s.clone())
    }

    pub fn logout(&self, token: &str) {
        self.lock_sessions().remove(token);
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_used) > self.idle || now.duration_since(s.created) > self.lifetime
    }

    fn prune(&self, sessions: &mut HashMap<String, Session>, now: Instant) {
        sessions.retain(|_, s| !self.expired(s, now));
    }

    /// Starts a login attempt from `peer`: refused while it is locked out or while
    /// another attempt from it is being checked.
    fn begin(&self, peer: IpAddr, now: Instant) -> Result<(), LoginError> {
        let mut failures = self.lock_failures();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&peer) {
            failures.retain(|_, f| {
                f.in_flight
                    || f.locked_until.is_some_and(|u| u > now)
                    || f.last.is_some_and(|l| now.duration_since(l) < LOCKOUT)
            });
            if failures.len() >= MAX_TRACKED {
                return Err(LoginError::Locked(LOCKOUT.as_secs()));
            }
        }
        let f = failures.entry(peer).or_default();
        if let Some(until) = f.locked_until.filter(|u| *u > now) {
            // rounded up: a client that waits Retry-After seconds must find the lockout over
            let left = until - now;
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(LoginError::Locked(secs.max(1)));
        }
        if f.in_flight {
            return Err(LoginError::Locked(1));
        }
        f.in_flight = true;
        Ok(())
    }

    fn failed(&self, peer: IpAddr, now: Instant) {
        let mut failures = self.lock_failures();
        let f = failures.entry(peer).or_default();
        if f.last.is_some_and(|l| now.duration_since(l) > LOCKOUT * 5) {
            f.count = 0;
        }
        f.count += 1;
        f.last = Some(now);
        if f.count >= MAX_FAILURES {
            f.count = 0;
            f.locked_until = Some(now + LOCKOUT);
        }
    }

    /// 32 random bytes as hex.
    fn token(&self) -> Result<String, LoginError> {
        let mut bytes = [0u8; 32];
        self.random
            .fill(&mut bytes)
            .map_err(|_| LoginError::Account("the system's random source failed".into()))?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ends a login attempt's turn, whatever its outcome.
struct InFlight<'a> {
    auth: &'a Auth,
    peer: IpAddr,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.auth.lock_failures().get_mut(&self.peer) {
            f.in_flight = false;
        }
    }
}

fn read_account(path: &std::path::Path) -> Result<AdminFile, LoginError> {
    match AdminFile::load(path) {
        Ok((account, _)) => Ok(account),
        Err(AdminError::Missing(_)) => Err(LoginError::NoAccount),
        Err(e) => Err(LoginError::Account(e.to_string())),
    }
}

/// Checks a login against the account file; returns the account on success.
fn check(path: &std::path::Path, user: &str, password: &str) -> Result<AdminFile, LoginError> {
    let account = read_account(path)?;
    // the hash is checked even for a wrong user name, so that the answer's timing does
    // not tell which of the two was wrong; a damaged hash is the file's fault, not the
    // operator's: saying "wrong password" would send them guessing into the lockout
    let password_ok = admin::verify_password(password, &account.password_hash).map_err(|e| {
        LoginError::Account(format!(
            "{}: password_hash is not an argon2 hash ({e}); set the password again on the console",
            path.display()
        ))
    })?;
    if password_ok && same(user.as_bytes(), account.user.as_bytes()) {
        Ok(account)
    } else {
        Err(LoginError::Wrong)
    }
}

/// Compares two secrets in time that depends only on their lengths.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(dir: &tempfile::TempDir, password: &str) -> PathBuf {
        let path = dir.path().join("admin.toml");
        let hash = admin::hash_password(password).unwrap();
        std::fs::write(
            &path,
            format!("user = \"admin\"\npassword_hash = \"{hash}\"\n"),
        )
        .unwrap();
        path
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));

    /// The appliance's defaults scaled down: 60 s idle, 600 s lifetime.
    fn auth_for(path: &std::path::Path) -> Auth {
        Auth::new(
            path.to_path_buf(),
            Duration::from_secs(60),
            Duration::from_secs(600),
        )
    }

    /// Whether the session is still valid at `at` (and marks it used if `how` says so).
    fn valid_at(auth: &Auth, token: &str, at: Instant, acct: &AdminFile, how: Use) -> bool {
        auth.session_at(token, at, Some(acct), how).is_some()
    }

    #[tokio::test]
    async fn login_checks_user_and_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = account(&dir, "correct horse");
        let auth = auth_for(&path);
        assert_eq!(
            auth.login("admin", "wrong horse", PEER).await.unwrap_err(),
            LoginError::Wrong
        );
        assert_eq!(
            auth.login("root", "correct horse", PEER).await.unwrap_err(),
            LoginError::Wrong
        );
        let (token, session) = auth.login("admin", "correct horse", PEER).await.unwrap();
        assert_eq!(token.len(), 64);
        assert_ne!(token, session.csrf);
        assert_eq!(auth.session(&token, Use::Operator).unwrap().user, "admin");
        auth.logout(&token);
        assert!(auth.session(&token, Use::Operator).is_none());
    }

    #[tokio::test]
    async fn sessions_end_when_idle_and_after_their_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let path = account(&dir, "correct horse");
        let auth = Auth::new(
            path.clone(),
            Duration::from_secs(60),
            Duration::from_secs(150),
        );
        let acct = read_account(&path).unwrap();
        let (token, _) = auth.login("admin", "correct horse", PEER).await.unwrap();
        let t0 = Instant::now();
        // used every 50 s: the idle limit never hits, the lifetime does
        for (secs, valid) in [(50, true), (100, true), (151, false)] {
            let at = t0 + Duration::from_secs(secs);
            assert_eq!(
                valid_at(&auth, &token, at, &acct, Use::Operator),
                valid,
                "at {secs} s"
            );
        }
        let (token, _) = auth.login("admin", "correct horse", PEER).await.unwrap();
        assert!(!valid_at(
            &auth,
            &token,
            Instant::now() + Duration::from_secs(61),
            &acct,
            Use::Operator
        ));
    }

    #[tokio::test]
    async fn a_damaged_hash_is_not_reported_as_a_wrong_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = account(&dir, "correct horse");
        std::fs::write(
            &path,
            "user = \"admin\"\npassword_hash = \"$argon2id$garbage\"\n",
        )
        .unwrap();
        let auth = auth_for(&path);
        for _ in 0..MAX_FAILURES + 1 {
            match auth.login("admin", "correct horse", PEER).await {
                Err(LoginError::Account(detail)) => {
                    assert!(detail.contains("not an argon2 hash"), "{detail}")
                }
                other => panic!("expected an account error, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn status_polling_does_not_keep_a_session_alive() {
        let dir = tempfile::tempdir().unwrap();
        let path = account(&dir, "correct horse");
        let acct = read_account(&path).unwrap();
        let auth = auth_for(&path);
        let (token, _) = auth.login("admin", "correct horse", PEER).await.unwrap();
        let t0 = Instant::now();
        for s in [20, 40, 59] {
            let at = t0 + Duration::from_secs(s);
            assert!(valid_at(&auth, &token, at, &acct, Use::Poll));
        }
        let at = t0 + Duration::from_secs(61);
        assert!(!valid_at(&auth, &token, at, &acct, Use::Poll));
    }

    #[tokio::test]
    async fn a_password_reset_ends_the_sessions_opened_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = account(&dir, "correct horse");
        let auth = auth_for(&path);
        let (old, _) = auth.login("admin", "correct horse", PEER).await.unwrap();
        assert!(auth.session(&old, Use::Operator).is_some());
        // what the console's password reset does: a new hash in the same file
        let again = account(&dir, "battery staple");
        assert_eq!(again, path);
        assert!(auth.session(&old, Use::Operator).is_none());
        let (new, _) = auth.login("admin", "battery staple", PEER).await.unwrap();
        assert!(auth.session(&new, Use::Operator).is_some());
        std::fs::remove_file(&path).unwrap();
        assert!(
            auth.session(&new, Use::Operator).is_none(),
            "no account file, no session"
        );
    }

    #[tokio::test]
    async fn guessing_locks_the_address_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = account(&dir, "correct horse");
        let auth = auth_for(&path);
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                auth.login("admin", "guess", PEER).await.unwrap_err(),
                LoginError::Wrong
            );
        }
        assert!(matches!(
            auth.login("admin", "correct horse", PEER).await,
            Err(LoginError::Locked(_))
        ));
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        assert!(auth.login("admin", "correct horse", other).await.is_ok());
    }

    #[tokio::test]
    async fn parallel_guesses_from_one_address_are_checked_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = account(&dir, "correct horse");
        let auth = std::sync::Arc::new(auth_for(&path));
        let tries: Vec<_> = (0..20)
            .map(|_| {
                let auth = auth.clone();
                tokio::spawn(async move { auth.login("admin", "guess", PEER).await })
            })
            .collect();
        let mut wrong = 0;
        for t in tries {
            if matches!(t.await.unwrap(), Err(LoginError::Wrong)) {
                wrong += 1;
            }
        }
        assert!(
            wrong <= MAX_FAILURES as usize,
            "{wrong} guesses were checked"
        );
    }

    #[tokio::test]
    async fn without_an_account_login_says_to_finish_the_wizard() {
        let auth = Auth::new(
            PathBuf::from("/nonexistent/admin.toml"),
            Duration::from_secs(60),
            Duration::from_secs(600),
        );
        assert_eq!(
            auth.login("admin", "x", PEER).await.unwrap_err(),
            LoginError::NoAccount
        );
    }

    #[test]
    fn same_compares_whole_secrets() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
