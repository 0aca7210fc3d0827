//! The sessions whose runtime lives on this node, by client id.
//!
//! Written by the `StatePort` implementation as it applies session claims
//! and ends; read by the broker to kick connections and count sessions.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::RwLock;
use starling_codec::ReasonCode;

use crate::ids::{ClientId, Epoch};
use crate::session::Session;

#[derive(Default)]
pub struct SessionRegistry {
    /// A set keyed by each session's own client id: one pointer per
    /// entry, not a second copy of the id (there is one entry per client
    /// on the node).
    sessions: RwLock<HashSet<Entry>>,
}

/// A session, hashed and compared by its client id.
struct Entry(Arc<Session>);

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.client_id().hash(state);
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.0.client_id() == other.0.client_id()
    }
}

impl Eq for Entry {}

impl Borrow<ClientId> for Entry {
    fn borrow(&self) -> &ClientId {
        self.0.client_id()
    }
}

impl std::fmt::Debug for SessionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRegistry").field("len", &self.len()).finish()
    }
}

impl SessionRegistry {
    pub fn new() -> SessionRegistry {
        SessionRegistry::default()
    }

    pub fn get(&self, client: &ClientId) -> Option<Arc<Session>> {
        self.sessions.read().get(client).map(|e| e.0.clone())
    }

    /// Installs `session`, returning the runtime it replaced.
    pub fn insert(&self, session: Arc<Session>) -> Option<Arc<Session>> {
        self.sessions.write().replace(Entry(session)).map(|e| e.0)
    }

    /// Removes the entry only if it is still `session` (not a newer one).
    pub fn remove_if_same(&self, session: &Arc<Session>) -> bool {
        let mut map = self.sessions.write();
        match map.get(session.client_id()) {
            Some(e) if Arc::ptr_eq(&e.0, session) => {
                map.remove(session.client_id());
                true
            }
            _ => false,
        }
    }

    pub fn remove(&self, client: &ClientId) -> Option<Arc<Session>> {
        self.sessions.write().take(client).map(|e| e.0)
    }

    /// Closes the connection `epoch` of `client` if it is attached here.
    pub fn kick(&self, client: &ClientId, epoch: Option<Epoch>, reason: ReasonCode) -> bool {
        match self.get(client) {
            Some(s) => s.kick(epoch, reason),
            None => false,
        }
    }

    /// Kicks every attached connection (drain, shutdown).
    pub fn kick_all(&self, reason: ReasonCode) -> usize {
        let all = self.all();
        all.iter().filter(|s| s.kick(None, reason)).count()
    }

    pub fn len(&self) -> usize {
        self.sessions.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions.read().iter().map(|e| e.0.clone()).collect()
    }
}
