//! The route table: a trie from topic filter to the sessions subscribed to
//! it, each on this node (`RouteTarget::Local`) or another (`Remote`).
//!
//! It is derived state: whoever applies replicated subscribe/unsubscribe
//! commands (the `StatePort` implementation) writes it; the publish path
//! only reads it. Readers take a shared lock for the duration of one match
//! and never across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use starling_codec::SubscriptionOptions;

use crate::ids::{ClientId, Incarnation, NodeId};
use crate::session::Session;
use crate::topic::TopicFilter;

/// Where a subscriber's messages go.
#[derive(Clone)]
pub enum RouteTarget {
    /// A session whose runtime lives on this node.
    Local(Arc<Session>),
    /// A session owned by another node; the message is forwarded there.
    Remote(NodeId),
    /// A persistent session whose node died and that no node owns until
    /// its client reconnects: messages for it are not delivered.
    Unowned,
}

impl std::fmt::Debug for RouteTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteTarget::Local(s) => write!(f, "Local({})", s.client_id()),
            RouteTarget::Remote(n) => write!(f, "Remote({n})"),
            RouteTarget::Unowned => f.write_str("Unowned"),
        }
    }
}

/// One subscription of one session.
#[derive(Clone, Debug)]
pub struct Route {
    pub client: ClientId,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
    pub target: RouteTarget,
    /// The session is persistent (this life of it): its QoS 1/2 messages
    /// go to its durable queue (replicated) instead of straight to its
    /// runtime.
    pub durable: Option<Incarnation>,
}

/// Members of one `$share/{group}/{filter}` subscription.
#[derive(Debug)]
pub struct SharedGroup {
    pub name: Arc<str>,
    pub members: Vec<Route>,
    cursor: AtomicUsize,
}

impl SharedGroup {
    /// Picks the member to receive the next message: round robin, skipping
    /// members whose session is offline while any member is online.
    pub fn pick(&self) -> Option<&Route> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let r = &self.members[(start + i) % n];
            match &r.target {
                RouteTarget::Local(s) if !s.is_online() => continue,
                RouteTarget::Unowned => continue,
                _ => return Some(r),
            }
        }
        Some(&self.members[start % n])
    }
}

impl SharedGroup {
    /// The member every node picks for `key` given the same membership:
    /// the group's members ordered by client id, indexed by a hash of the
    /// key. Used when each node delivers its share of a replicated event.
    pub fn pick_deterministic(&self, key: &str) -> Option<&Route> {
        let mut members: Vec<&Route> = self.members.iter().collect();
        members.sort_by(|a, b| a.client.cmp(&b.client));
        // FNV-1a: stable across processes and versions, unlike the std hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        members.get((h % members.len().max(1) as u64) as usize).copied()
    }
}

#[derive(Default, Debug)]
struct Leaf {
    routes: Vec<Route>,
    shared: Vec<SharedGroup>,
}

impl Leaf {
    fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.shared.is_empty()
    }

    /// Inserts or replaces; returns true if it replaced an existing entry.
    fn insert(&mut self, group: Option<&str>, route: Route) -> bool {
        let list = match group {
            None => &mut self.routes,
            Some(g) => {
                let idx = match self.shared.iter().position(|s| &*s.name == g) {
                    Some(i) => i,
                    None => {
                        self.shared.push(SharedGroup {
                            name: Arc::from(g),
                            members: Vec::new(),
                            cursor: AtomicUsize::new(0),
                        });
                        self.shared.len() - 1
                    }
                };
                &mut self.shared[idx].members
            }
        };
        if let Some(r) = list.iter_mut().find(|r| r.client == route.client) {
            *r = route;
            true
        } else {
            list.push(route);
            false
        }
    }

    fn remove(&mut self, group: Option<&str>, client: &ClientId) -> bool {
        match group {
            None => {
                let before = self.routes.len();
                self.routes.retain(|r| &r.client != client);
                before != self.routes.len()
            }
            Some(g) => {
                let Some(idx) = self.shared.iter().position(|s| &*s.name == g) else {
                    return false;
                };
                let members = &mut self.shared[idx].members;
                let before = members.len();
                members.retain(|r| &r.client != client);
                let removed = before != members.len();
                if members.is_empty() {
                    self.shared.swap_remove(idx);
                }
                removed
            }
        }
    }

    fn get_mut(&mut self, group: Option<&str>, client: &ClientId) -> Option<&mut Route> {
        match group {
            None => self.routes.iter_mut().find(|r| &r.client == client),
            Some(g) => self
                .shared
                .iter_mut()
                .find(|s| &*s.name == g)
                .and_then(|s| s.members.iter_mut().find(|r| &r.client == client)),
        }
    }
}

#[derive(Default, Debug)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Subscribers of `<this prefix>/#` (or `#` at the root).
    hash: Option<Box<Leaf>>,
    /// Subscribers of exactly `<this prefix>`.
    exact: Option<Box<Leaf>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.hash.is_none() && self.exact.is_none()
    }

    fn leaf_for<'a>(&'a mut self, levels: &[&str]) -> &'a mut Leaf {
        match levels.split_first() {
            None => self.exact.get_or_insert_with(Default::default),
            Some((&"#", _)) => self.hash.get_or_insert_with(Default::default),
            Some((&"+", rest)) => self.plus.get_or_insert_with(Default::default).leaf_for(rest),
            Some((level, rest)) => self.children.entry(Box::from(*level)).or_default().leaf_for(rest),
        }
    }

    fn find_leaf<'a>(&'a mut self, levels: &[&str]) -> Option<&'a mut Leaf> {
        match levels.split_first() {
            None => self.exact.as_deref_mut(),
            Some((&"#", _)) => self.hash.as_deref_mut(),
            Some((&"+", rest)) => self.plus.as_deref_mut()?.find_leaf(rest),
            Some((level, rest)) => self.children.get_mut(*level)?.find_leaf(rest),
        }
    }

    /// Removes and prunes emptied nodes; returns whether an entry went.
    fn remove(&mut self, levels: &[&str], group: Option<&str>, client: &ClientId) -> bool {
        match levels.split_first() {
            None => remove_from_slot(&mut self.exact, group, client),
            Some((&"#", _)) => remove_from_slot(&mut self.hash, group, client),
            Some((&"+", rest)) => {
                let Some(child) = self.plus.as_deref_mut() else { return false };
                let removed = child.remove(rest, group, client);
                if child.is_empty() {
                    self.plus = None;
                }
                removed
            }
            Some((level, rest)) => {
                let Some(child) = self.children.get_mut(*level) else { return false };
                let removed = child.remove(rest, group, client);
                if child.is_empty() {
                    self.children.remove(*level);
                }
                removed
            }
        }
    }

    fn collect<'a, F: FnMut(Matched<'a>)>(&'a self, levels: &[&str], root: bool, dollar: bool, f: &mut F) {
        if !(root && dollar) {
            if let Some(h) = &self.hash {
                visit_leaf(h, f);
            }
        }
        match levels.split_first() {
            None => {
                if let Some(e) = &self.exact {
                    visit_leaf(e, f);
                }
            }
            Some((level, rest)) => {
                if let Some(child) = self.children.get(*level) {
                    child.collect(rest, false, dollar, f);
                }
                if !(root && dollar) {
                    if let Some(p) = &self.plus {
                        p.collect(rest, false, dollar, f);
                    }
                }
            }
        }
    }
}

fn remove_from_slot(slot: &mut Option<Box<Leaf>>, group: Option<&str>, client: &ClientId) -> bool {
    let Some(leaf) = slot.as_deref_mut() else { return false };
    let removed = leaf.remove(group, client);
    if leaf.is_empty() {
        *slot = None;
    }
    removed
}

fn visit_leaf<'a, F: FnMut(Matched<'a>)>(leaf: &'a Leaf, f: &mut F) {
    for r in &leaf.routes {
        f(Matched::Route(r));
    }
    for g in &leaf.shared {
        f(Matched::Shared(g));
    }
}

/// One match found for a topic.
#[derive(Debug)]
pub enum Matched<'a> {
    Route(&'a Route),
    Shared(&'a SharedGroup),
}

/// The trie behind a lock, with a count of subscriptions.
#[derive(Default)]
pub struct RouteTable {
    root: RwLock<Node>,
    count: AtomicUsize,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable").field("count", &self.len()).finish()
    }
}

impl RouteTable {
    pub fn new() -> RouteTable {
        RouteTable::default()
    }

    /// Number of subscriptions (shared members included).
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces `route.client`'s subscription to `filter`; returns
    /// true if it replaced one.
    pub fn insert(&self, filter: &TopicFilter, route: Route) -> bool {
        let levels: Vec<&str> = filter.filter().split('/').collect();
        let replaced = self.root.write().leaf_for(&levels).insert(filter.share_group(), route);
        if !replaced {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        replaced
    }

    /// Removes `client`'s subscription to `filter`; returns whether it existed.
    pub fn remove(&self, filter: &TopicFilter, client: &ClientId) -> bool {
        let levels: Vec<&str> = filter.filter().split('/').collect();
        let removed = self.root.write().remove(&levels, filter.share_group(), client);
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Points an existing subscription at a new target (a session that
    /// moved between nodes). Returns false if there is no such entry.
    pub fn retarget(
        &self,
        filter: &TopicFilter,
        client: &ClientId,
        target: RouteTarget,
        durable: Option<Incarnation>,
    ) -> bool {
        let levels: Vec<&str> = filter.filter().split('/').collect();
        let mut root = self.root.write();
        match root.find_leaf(&levels).and_then(|l| l.get_mut(filter.share_group(), client)) {
            Some(r) => {
                r.target = target;
                r.durable = durable;
                true
            }
            None => false,
        }
    }

    /// Removes every subscription (a snapshot install rebuilds the table).
    pub fn clear(&self) {
        *self.root.write() = Node::default();
        self.count.store(0, Ordering::Relaxed);
    }

    /// Calls `f` for every subscription matching `topic`, under the read lock.
    pub fn for_each_match<F: FnMut(Matched<'_>)>(&self, topic: &str, mut f: F) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        let root = self.root.read();
        root.collect(&levels, true, dollar, &mut f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicLimits;
    use starling_codec::QoS;

    fn route(c: &str, node: u64) -> Route {
        Route {
            client: ClientId::new(c),
            options: SubscriptionOptions::new(QoS::AtLeastOnce),
            subscription_id: None,
            target: RouteTarget::Remote(NodeId(node)),
            durable: None,
        }
    }

    fn tf(s: &str) -> TopicFilter {
        TopicFilter::parse(s, &TopicLimits::default()).unwrap()
    }

    fn matched(t: &RouteTable, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        t.for_each_match(topic, |m| match m {
            Matched::Route(r) => out.push(r.client.to_string()),
            Matched::Shared(g) => out.push(format!("share:{}:{}", g.name, g.members.len())),
        });
        out.sort();
        out
    }

    #[test]
    fn matches_agree_with_filter_matches() {
        let filters = ["#", "+", "a/#", "a/+", "a/b", "+/b", "a/+/c", "/+", "+/+", "$SYS/#", "a//b", "a/b/#"];
        let topics = ["a", "a/b", "a/b/c", "/x", "x/b", "$SYS/up", "a//b", "a/", "b"];
        let t = RouteTable::new();
        for (i, f) in filters.iter().enumerate() {
            t.insert(&tf(f), route(&format!("c{i}"), 1));
        }
        assert_eq!(t.len(), filters.len());
        for topic in topics {
            let mut want: Vec<String> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| crate::topic::filter_matches(f, topic))
                .map(|(i, _)| format!("c{i}"))
                .collect();
            want.sort();
            assert_eq!(matched(&t, topic), want, "topic {topic}");
        }
    }

    #[test]
    fn insert_replaces_and_remove_prunes() {
        let t = RouteTable::new();
        assert!(!t.insert(&tf("a/b"), route("x", 1)));
        assert!(t.insert(&tf("a/b"), route("x", 2)));
        assert_eq!(t.len(), 1);
        assert!(t.remove(&tf("a/b"), &ClientId::new("x")));
        assert!(!t.remove(&tf("a/b"), &ClientId::new("x")));
        assert!(t.is_empty());
        assert!(t.root.read().is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn shared_groups_round_robin() {
        let t = RouteTable::new();
        t.insert(&tf("$share/g/a/+"), route("m1", 1));
        t.insert(&tf("$share/g/a/+"), route("m2", 1));
        t.insert(&tf("$share/h/a/+"), route("m3", 1));
        t.insert(&tf("a/+"), route("plain", 1));
        assert_eq!(matched(&t, "a/x"), vec!["plain", "share:g:2", "share:h:1"]);
        let mut picks = Vec::new();
        for _ in 0..4 {
            t.for_each_match("a/x", |m| {
                if let Matched::Shared(g) = m {
                    if &*g.name == "g" {
                        picks.push(g.pick().unwrap().client.to_string());
                    }
                }
            });
        }
        picks.sort();
        assert_eq!(picks, vec!["m1", "m1", "m2", "m2"]);
        assert!(t.remove(&tf("$share/g/a/+"), &ClientId::new("m1")));
        assert!(t.remove(&tf("$share/g/a/+"), &ClientId::new("m2")));
        assert_eq!(matched(&t, "a/x"), vec!["plain", "share:h:1"]);
    }

    #[test]
    fn retarget_moves_a_route() {
        let t = RouteTable::new();
        t.insert(&tf("a/#"), route("x", 1));
        assert!(t.retarget(&tf("a/#"), &ClientId::new("x"), RouteTarget::Remote(NodeId(3)), None));
        let mut nodes = Vec::new();
        t.for_each_match("a/b", |m| {
            if let Matched::Route(r) = m {
                if let RouteTarget::Remote(n) = r.target {
                    nodes.push(n.0);
                }
            }
        });
        assert_eq!(nodes, vec![3]);
        assert!(!t.retarget(&tf("b"), &ClientId::new("x"), RouteTarget::Remote(NodeId(3)), None));
    }
}
