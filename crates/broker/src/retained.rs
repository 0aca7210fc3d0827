//! Retained messages: a tree keyed by topic level, so a SUBSCRIBE with a
//! wildcard filter walks only the matching branches.
//!
//! Like the route table this is state that the `StatePort` implementation
//! writes as it applies replicated commands. `$SYS/...` topics are kept
//! apart as node-local state: each node publishes its own statistics and
//! they are never replicated.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

use crate::message::Message;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }

    /// Sets or clears; returns the count delta (+1, 0, -1).
    fn set(&mut self, levels: &[&str], msg: Option<Arc<Message>>) -> isize {
        match levels.split_first() {
            None => {
                let had = self.message.is_some();
                let has = msg.is_some();
                self.message = msg;
                isize::from(has) - isize::from(had)
            }
            Some((level, rest)) => {
                if msg.is_none() {
                    let Some(child) = self.children.get_mut(*level) else { return 0 };
                    let d = child.set(rest, None);
                    if child.is_empty() {
                        self.children.remove(*level);
                    }
                    d
                } else {
                    self.children.entry(Box::from(*level)).or_default().set(rest, msg)
                }
            }
        }
    }

    fn collect_all(&self, now: Instant, out: &mut Vec<Arc<Message>>) {
        if let Some(m) = &self.message {
            if !m.is_expired(now) {
                out.push(m.clone());
            }
        }
        for c in self.children.values() {
            c.collect_all(now, out);
        }
    }

    fn collect(&self, filter: &[&str], root: bool, now: Instant, out: &mut Vec<Arc<Message>>) {
        match filter.split_first() {
            None => {
                if let Some(m) = &self.message {
                    if !m.is_expired(now) {
                        out.push(m.clone());
                    }
                }
            }
            Some((&"#", _)) => {
                // `#` matches the parent level too ("a/#" matches "a").
                if !root {
                    if let Some(m) = &self.message {
                        if !m.is_expired(now) {
                            out.push(m.clone());
                        }
                    }
                }
                for (name, c) in &self.children {
                    if root && name.starts_with('$') {
                        continue;
                    }
                    c.collect_all(now, out);
                }
            }
            Some((&"+", rest)) => {
                for (name, c) in &self.children {
                    if root && name.starts_with('$') {
                        continue;
                    }
                    c.collect(rest, false, now, out);
                }
            }
            Some((level, rest)) => {
                if let Some(c) = self.children.get(*level) {
                    c.collect(rest, false, now, out);
                }
            }
        }
    }
}

/// All retained messages known to this node.
#[derive(Default)]
pub struct RetainedStore {
    tree: RwLock<Node>,
    count: AtomicUsize,
}

impl std::fmt::Debug for RetainedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetainedStore").field("count", &self.len()).finish()
    }
}

impl RetainedStore {
    pub fn new() -> RetainedStore {
        RetainedStore::default()
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores `msg` as the retained message of its topic, or clears the
    /// topic when `msg` is `None`.
    pub fn set(&self, topic: &str, msg: Option<Arc<Message>>) {
        let levels: Vec<&str> = topic.split('/').collect();
        let d = self.tree.write().set(&levels, msg);
        match d {
            1 => {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
            -1 => {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    pub fn get(&self, topic: &str) -> Option<Arc<Message>> {
        let tree = self.tree.read();
        let mut node = &*tree;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.clone()
    }

    /// Unexpired retained messages whose topic matches a plain filter.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        self.tree.read().collect(&levels, true, now, &mut out);
        out
    }

    /// Every retained message (for snapshots), expired ones skipped.
    pub fn all(&self, now: Instant) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        self.tree.read().collect_all(now, &mut out);
        out
    }

    /// Drops everything (a snapshot install replaces the state).
    pub fn clear(&self) {
        *self.tree.write() = Node::default();
        self.count.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use starling_codec::QoS;
    use std::time::Duration;

    fn msg(topic: &str) -> Option<Arc<Message>> {
        Some(Arc::new(Message::new(topic.into(), Bytes::from_static(b"x"), QoS::AtMostOnce, true)))
    }

    fn topics(s: &RetainedStore, f: &str) -> Vec<String> {
        let mut v: Vec<String> = s.matching(f, Instant::now()).iter().map(|m| m.topic.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn set_replace_clear_and_match() {
        let s = RetainedStore::new();
        for t in ["a", "a/b", "a/b/c", "a/x/c", "b", "$SYS/up", "/lead"] {
            s.set(t, msg(t));
        }
        assert_eq!(s.len(), 7);
        s.set("a/b", msg("a/b"));
        assert_eq!(s.len(), 7, "replace does not add");
        assert_eq!(topics(&s, "#"), vec!["/lead", "a", "a/b", "a/b/c", "a/x/c", "b"]);
        assert_eq!(topics(&s, "a/#"), vec!["a", "a/b", "a/b/c", "a/x/c"]);
        assert_eq!(topics(&s, "a/+/c"), vec!["a/b/c", "a/x/c"]);
        assert_eq!(topics(&s, "+"), vec!["a", "b"]);
        assert_eq!(topics(&s, "+/+"), vec!["/lead", "a/b"]);
        assert_eq!(topics(&s, "$SYS/#"), vec!["$SYS/up"]);
        s.set("a/b", None);
        s.set("nope/never", None);
        assert_eq!(s.len(), 6);
        assert_eq!(topics(&s, "a/+"), Vec::<String>::new());
        assert!(s.get("a/b").is_none());
        assert!(s.get("a/b/c").is_some());
    }

    #[test]
    fn expired_messages_are_not_returned() {
        let s = RetainedStore::new();
        let now = Instant::now();
        let m =
            Message::new("e".into(), Bytes::new(), QoS::AtMostOnce, true).with_expiry_interval(Some(1), now);
        s.set("e", Some(Arc::new(m)));
        assert_eq!(s.matching("e", now).len(), 1);
        assert_eq!(s.matching("e", now + Duration::from_secs(2)).len(), 0);
    }
}
