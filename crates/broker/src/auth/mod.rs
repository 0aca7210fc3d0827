//! Authentication and authorization.
//!
//! `AuthService` holds two user stores and two rule lists: one loaded from
//! files (the password file and the ACL file, reloaded on SIGHUP) and one
//! replicated through the cluster (`starling user ...`, `starling acl
//! ...`). A user is looked up in the replicated store first, then the
//! file; the effective ACL is the replicated rules followed by the file
//! rules, first match wins.
//!
//! Refusals are slowed down per address: after `failure_threshold`
//! failures within a minute, every further refusal to that address waits
//! `failure_delay` before it is answered. Password checks run off the
//! async threads and at most `VERIFY_SLOTS` at a time, so a CONNECT flood
//! cannot monopolise the CPU with hashing.

pub mod acl;
pub mod password;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use starling_codec::ReasonCode;
use tokio::sync::Semaphore;

pub use acl::{Access, AclRule, Action, ClientAcl};

/// Concurrent password verifications (argon2id is deliberately costly).
const VERIFY_SLOTS: usize = 4;
/// Addresses whose failures are remembered; the oldest are forgotten.
const FAILURE_TABLE: usize = 10_000;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub allow_anonymous: bool,
    pub failure_threshold: u32,
    pub failure_delay: Duration,
    /// Use the TLS client certificate's common name as the user name.
    pub use_identity_as_username: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            allow_anonymous: true,
            failure_threshold: 3,
            failure_delay: Duration::from_secs(2),
            use_identity_as_username: false,
        }
    }
}

/// What a CONNECT presents.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<bytes::Bytes>,
    /// Common name of a verified TLS client certificate.
    pub cert_cn: Option<String>,
    pub peer: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Connected as this user (None: anonymous).
    Allowed { username: Option<String> },
    /// Refused with this 5.0 reason (0x86 bad credentials, 0x87 not
    /// authorized), answered no sooner than `delay`.
    Refused { reason: ReasonCode, delay: Duration },
}

#[derive(Default)]
struct Failures {
    by_addr: HashMap<IpAddr, (u32, Instant)>,
}

pub struct AuthService {
    settings: AuthSettings,
    file_users: RwLock<Arc<BTreeMap<String, String>>>,
    replicated_users: RwLock<Arc<BTreeMap<String, String>>>,
    file_rules: RwLock<Arc<Vec<AclRule>>>,
    replicated_rules: RwLock<Arc<Vec<AclRule>>>,
    version: AtomicU64,
    failures: Mutex<Failures>,
    verify_slots: Arc<Semaphore>,
    pub failures_total: AtomicU64,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").field("settings", &self.settings).finish()
    }
}

impl AuthService {
    pub fn new(settings: AuthSettings) -> AuthService {
        AuthService {
            settings,
            file_users: RwLock::new(Arc::new(BTreeMap::new())),
            replicated_users: RwLock::new(Arc::new(BTreeMap::new())),
            file_rules: RwLock::new(Arc::new(Vec::new())),
            replicated_rules: RwLock::new(Arc::new(Vec::new())),
            version: AtomicU64::new(1),
            failures: Mutex::new(Failures::default()),
            verify_slots: Arc::new(Semaphore::new(VERIFY_SLOTS)),
            failures_total: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    pub fn set_file_users(&self, users: BTreeMap<String, String>) {
        *self.file_users.write() = Arc::new(users);
    }

    pub fn set_replicated_users(&self, users: BTreeMap<String, String>) {
        *self.replicated_users.write() = Arc::new(users);
    }

    pub fn set_file_rules(&self, rules: Vec<AclRule>) {
        *self.file_rules.write() = Arc::new(rules);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    pub fn set_replicated_rules(&self, rules: Vec<AclRule>) {
        *self.replicated_rules.write() = Arc::new(rules);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes whenever the rules change; connections recompile then.
    pub fn rules_version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The effective rules: replicated first, then the file's.
    pub fn rules(&self) -> Vec<AclRule> {
        let mut v = self.replicated_rules.read().as_ref().clone();
        v.extend(self.file_rules.read().iter().cloned());
        v
    }

    pub fn acl_for(&self, user: Option<&str>, client: &str) -> ClientAcl {
        ClientAcl::compile(&self.rules(), user, client)
    }

    fn lookup(&self, user: &str) -> Option<String> {
        if let Some(h) = self.replicated_users.read().get(user) {
            return Some(h.clone());
        }
        self.file_users.read().get(user).cloned()
    }

    fn any_users(&self) -> bool {
        !self.replicated_users.read().is_empty() || !self.file_users.read().is_empty()
    }

    pub async fn authenticate(&self, c: &Credentials) -> AuthOutcome {
        let outcome = self.decide(c).await;
        match &outcome {
            AuthOutcome::Allowed { .. } => outcome,
            AuthOutcome::Refused { reason, .. } => {
                self.failures_total.fetch_add(1, Ordering::Relaxed);
                AuthOutcome::Refused { reason: *reason, delay: self.record_failure(c.peer) }
            }
        }
    }

    async fn decide(&self, c: &Credentials) -> AuthOutcome {
        let refuse = |reason| AuthOutcome::Refused { reason, delay: Duration::ZERO };
        if self.settings.use_identity_as_username {
            if let Some(cn) = &c.cert_cn {
                return AuthOutcome::Allowed { username: Some(cn.clone()) };
            }
        }
        let Some(user) = c.username.clone() else {
            return if self.settings.allow_anonymous {
                AuthOutcome::Allowed { username: None }
            } else {
                refuse(ReasonCode::NOT_AUTHORIZED)
            };
        };
        match self.lookup(&user) {
            Some(hash) => {
                let Some(password) = c.password.clone() else {
                    return refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
                };
                let Ok(_slot) = self.verify_slots.clone().acquire_owned().await else {
                    return refuse(ReasonCode::SERVER_BUSY);
                };
                let ok = tokio::task::spawn_blocking(move || password::verify_password(&hash, &password))
                    .await
                    .unwrap_or(false);
                if ok {
                    AuthOutcome::Allowed { username: Some(user) }
                } else {
                    refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
                }
            }
            // No user store at all: the user name is an identity, not a
            // credential (what Mosquitto does without a password file).
            None if self.settings.allow_anonymous && !self.any_users() => {
                AuthOutcome::Allowed { username: Some(user) }
            }
            None => refuse(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
        }
    }

    /// Counts a failure from `peer`; returns how long to hold the answer.
    fn record_failure(&self, peer: Option<IpAddr>) -> Duration {
        let Some(ip) = peer else { return Duration::ZERO };
        let now = Instant::now();
        let mut f = self.failures.lock();
        if f.by_addr.len() >= FAILURE_TABLE && !f.by_addr.contains_key(&ip) {
            // Forget the stalest entries first.
            f.by_addr.retain(|_, (_, at)| now.duration_since(*at) < FAILURE_WINDOW);
            if f.by_addr.len() >= FAILURE_TABLE {
                if let Some(oldest) = f.by_addr.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k) {
                    f.by_addr.remove(&oldest);
                }
            }
        }
        let entry = f.by_addr.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) > FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        if entry.0 > self.settings.failure_threshold {
            self.settings.failure_delay
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: Option<&str>, pw: Option<&str>) -> Credentials {
        Credentials {
            username: user.map(Into::into),
            password: pw.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
            cert_cn: None,
            peer: Some("10.0.0.1".parse().unwrap()),
        }
    }

    #[tokio::test]
    async fn users_anonymous_and_failures() {
        let s = AuthService::new(AuthSettings {
            allow_anonymous: false,
            failure_threshold: 2,
            ..Default::default()
        });
        let mut users = BTreeMap::new();
        users.insert("alice".to_string(), password::hash_password("pw").unwrap());
        s.set_file_users(users);
        assert_eq!(
            s.authenticate(&creds(Some("alice"), Some("pw"))).await,
            AuthOutcome::Allowed { username: Some("alice".into()) }
        );
        let bad = s.authenticate(&creds(Some("alice"), Some("nope"))).await;
        assert!(
            matches!(bad, AuthOutcome::Refused { reason: ReasonCode::BAD_USER_NAME_OR_PASSWORD, delay } if delay.is_zero())
        );
        assert!(matches!(
            s.authenticate(&creds(None, None)).await,
            AuthOutcome::Refused { reason: ReasonCode::NOT_AUTHORIZED, .. }
        ));
        // Third failure from the address: slowed down.
        let slow = s.authenticate(&creds(Some("mallory"), Some("x"))).await;
        assert!(matches!(slow, AuthOutcome::Refused { delay, .. } if delay == Duration::from_secs(2)));
        // Replicated users take precedence over the file.
        let mut repl = BTreeMap::new();
        repl.insert("alice".to_string(), password::hash_password("new").unwrap());
        s.set_replicated_users(repl);
        assert!(matches!(
            s.authenticate(&creds(Some("alice"), Some("new"))).await,
            AuthOutcome::Allowed { .. }
        ));
    }

    #[tokio::test]
    async fn without_any_user_store_a_user_name_is_an_identity() {
        let s = AuthService::new(AuthSettings::default());
        assert_eq!(
            s.authenticate(&creds(Some("bob"), None)).await,
            AuthOutcome::Allowed { username: Some("bob".into()) }
        );
        let mut users = BTreeMap::new();
        users.insert("alice".to_string(), password::hash_password("pw").unwrap());
        s.set_file_users(users);
        assert!(matches!(s.authenticate(&creds(Some("bob"), None)).await, AuthOutcome::Refused { .. }));
        assert_eq!(s.authenticate(&creds(None, None)).await, AuthOutcome::Allowed { username: None });
    }

    #[test]
    fn rules_version_changes() {
        let s = AuthService::new(AuthSettings::default());
        let v = s.rules_version();
        s.set_file_rules(vec![]);
        assert_ne!(s.rules_version(), v);
    }
}
