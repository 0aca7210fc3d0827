//! The sessions whose runtime lives on this node, by client id.
//!
//! Written by the `StatePort` implementation as it applies session claims
//! and ends; read by the broker to kick connections and count sessions.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use starling_codec::ReasonCode;

use crate::ids::{ClientId, Epoch};
use crate::session::Session;

#[derive(Default)]
pub struct SessionRegistry {
    sessions: RwLock<HashMap<ClientId, Arc<Session>>>,
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
        self.sessions.read().get(client).cloned()
    }

    /// Installs `session`, returning the runtime it replaced.
    pub fn insert(&self, session: Arc<Session>) -> Option<Arc<Session>> {
        self.sessions.write().insert(session.client_id().clone(), session)
    }

    /// Removes the entry only if it is still `session` (not a newer one).
    pub fn remove_if_same(&self, session: &Arc<Session>) -> bool {
        let mut map = self.sessions.write();
        match map.get(session.client_id()) {
            Some(s) if Arc::ptr_eq(s, session) => {
                map.remove(session.client_id());
                true
            }
            _ => false,
        }
    }

    pub fn remove(&self, client: &ClientId) -> Option<Arc<Session>> {
        self.sessions.write().remove(client)
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
        let all: Vec<Arc<Session>> = self.sessions.read().values().cloned().collect();
        all.iter().filter(|s| s.kick(None, reason)).count()
    }

    pub fn len(&self) -> usize {
        self.sessions.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Arc<Session>> {
        self.sessions.read().values().cloned().collect()
    }
}
