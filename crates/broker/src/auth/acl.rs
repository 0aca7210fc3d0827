//! Access control rules.
//!
//! A rule allows or denies reading, writing or both on a topic filter, for
//! one user, one client id, or everyone; `%u` and `%c` in the filter stand
//! for the connecting user name and client id. Rules are evaluated in
//! order and the first that matches decides. With no rules at all
//! everything is allowed; as soon as one rule exists, anything no rule
//! allows is denied.
//!
//! PUBLISH checks `write` on the topic; every delivery (live, retained,
//! will) checks `read` on the topic; SUBSCRIBE checks `read` on the
//! filter: it is granted when the first rule whose filter *covers* it
//! (every topic the subscription can match, the rule matches too) allows.

use serde::{Deserialize, Serialize};

use crate::topic::{filter_matches, TopicFilter, TopicLimits};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Write,
    Readwrite,
}

impl Action {
    fn covers(self, wanted: Action) -> bool {
        self == Action::Readwrite || self == wanted
    }
}

/// Stored in the Raft log with bincode, which needs every field present:
/// no `skip_serializing_if` here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    pub access: Access,
    pub action: Action,
    pub topic: String,
    /// Applies to this user only.
    #[serde(default)]
    pub user: Option<String>,
    /// Applies to this client id only.
    #[serde(default)]
    pub client: Option<String>,
}

impl AclRule {
    /// Checks the rule's shape: one of user/client at most, a valid filter.
    pub fn validate(&self) -> Result<(), String> {
        if self.user.is_some() && self.client.is_some() {
            return Err("a rule applies to a user or a client id, not both".into());
        }
        let probe = self.topic.replace("%u", "u").replace("%c", "c");
        let limits = TopicLimits { max_len: 65_535, max_levels: usize::MAX };
        let f = TopicFilter::parse(&probe, &limits).map_err(|e| format!("topic `{}`: {e}", self.topic))?;
        if f.is_shared() {
            return Err(format!("topic `{}`: rules name topics, not $share subscriptions", self.topic));
        }
        Ok(())
    }

    fn applies_to(&self, user: Option<&str>, client: &str) -> bool {
        match (&self.user, &self.client) {
            (Some(u), _) => user == Some(u.as_str()),
            (_, Some(c)) => c == client,
            _ => true,
        }
    }
}

impl std::fmt::Display for AclRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = match (&self.user, &self.client) {
            (Some(u), _) => format!("user {u}"),
            (_, Some(c)) => format!("client {c}"),
            _ => "all".into(),
        };
        let access = if self.access == Access::Allow { "allow" } else { "deny" };
        let action = match self.action {
            Action::Read => "read",
            Action::Write => "write",
            Action::Readwrite => "readwrite",
        };
        write!(f, "{access} {action} {} ({who})", self.topic)
    }
}

/// A rules file: `[[rule]]` tables in TOML.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<AclRule>,
}

pub fn parse_rules(text: &str) -> Result<Vec<AclRule>, String> {
    let f: RulesFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
    for (i, r) in f.rule.iter().enumerate() {
        r.validate().map_err(|e| format!("rule {}: {e}", i + 1))?;
    }
    Ok(f.rule)
}

/// The rules as they apply to one connection (user and client id
/// substituted), in order.
///
/// Every connection holds one, so it is kept to two words: `None` when no
/// rules are configured at all (everything is allowed).
#[derive(Debug, Clone)]
pub struct ClientAcl {
    rules: Option<Box<[(Access, Action, String)]>>,
}

impl Default for ClientAcl {
    /// No rule applies: everything is denied.
    fn default() -> ClientAcl {
        ClientAcl { rules: Some(Box::default()) }
    }
}

impl ClientAcl {
    pub fn open() -> ClientAcl {
        ClientAcl { rules: None }
    }

    pub fn compile(rules: &[AclRule], user: Option<&str>, client: &str) -> ClientAcl {
        if rules.is_empty() {
            return ClientAcl::open();
        }
        let mut out = Vec::new();
        for r in rules {
            if !r.applies_to(user, client) {
                continue;
            }
            if r.topic.contains("%u") && user.is_none() {
                continue;
            }
            // A user name or client id containing a wildcard or separator
            // must not widen a rule; such a rule does not apply to it.
            let unsafe_id = |s: &str| s.contains(['+', '#', '/']);
            if (r.topic.contains("%u") && user.is_some_and(unsafe_id))
                || (r.topic.contains("%c") && unsafe_id(client))
            {
                continue;
            }
            let topic = r.topic.replace("%u", user.unwrap_or("")).replace("%c", client);
            out.push((r.access, r.action, topic));
        }
        ClientAcl { rules: Some(out.into_boxed_slice()) }
    }

    pub fn is_open(&self) -> bool {
        self.rules.is_none()
    }

    /// May this connection read (receive) or write (publish) `topic`?
    pub fn check(&self, action: Action, topic: &str) -> bool {
        let Some(rules) = &self.rules else { return true };
        for (access, a, filter) in rules.iter() {
            if a.covers(action) && filter_matches(filter, topic) {
                return *access == Access::Allow;
            }
        }
        false
    }

    /// May this connection subscribe to the (plain) filter `sub`?
    pub fn check_subscribe(&self, sub: &str) -> bool {
        let Some(rules) = &self.rules else { return true };
        for (access, a, filter) in rules.iter() {
            if a.covers(Action::Read) && filter_covers(filter, sub) {
                return *access == Access::Allow;
            }
        }
        false
    }
}

/// Whether every topic matched by `inner` is matched by `outer`.
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') && (outer.starts_with('+') || outer.starts_with('#')) {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(x)) if x != "#" => {}
            (Some(a), Some(b)) if a == b && b != "+" && b != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(access: Access, action: Action, topic: &str, user: Option<&str>) -> AclRule {
        AclRule { access, action, topic: topic.into(), user: user.map(Into::into), client: None }
    }

    #[test]
    fn first_match_wins_and_default_deny() {
        let rules = vec![
            rule(Access::Deny, Action::Read, "chat/secret", None),
            rule(Access::Allow, Action::Readwrite, "chat/#", None),
            rule(Access::Allow, Action::Write, "users/%u/#", None),
            rule(Access::Allow, Action::Read, "$SYS/#", Some("admin")),
        ];
        let alice = ClientAcl::compile(&rules, Some("alice"), "c1");
        assert!(alice.check(Action::Read, "chat/lobby"));
        assert!(alice.check(Action::Write, "chat/secret"), "deny rule is read-only");
        assert!(!alice.check(Action::Read, "chat/secret"));
        assert!(alice.check(Action::Write, "users/alice/status"));
        assert!(!alice.check(Action::Write, "users/bob/status"));
        assert!(!alice.check(Action::Read, "users/alice/status"));
        assert!(!alice.check(Action::Read, "$SYS/broker/uptime"));
        assert!(!alice.check(Action::Read, "other"), "not allowed = denied");
        let admin = ClientAcl::compile(&rules, Some("admin"), "c2");
        assert!(admin.check(Action::Read, "$SYS/broker/uptime"));
        let anon = ClientAcl::compile(&rules, None, "c3");
        assert!(!anon.check(Action::Write, "users//x"), "%u never matches without a user");
        assert!(ClientAcl::compile(&[], None, "c").check(Action::Write, "anything"));
    }

    #[test]
    fn subscriptions_need_a_covering_allow() {
        let rules = vec![
            rule(Access::Deny, Action::Read, "chat/secret", None),
            rule(Access::Allow, Action::Read, "chat/#", None),
        ];
        let acl = ClientAcl::compile(&rules, None, "c");
        assert!(acl.check_subscribe("chat/#"));
        assert!(acl.check_subscribe("chat/+"));
        assert!(!acl.check_subscribe("chat/secret"), "the deny rule covers it first");
        assert!(!acl.check_subscribe("#"));
        assert!(!acl.check_subscribe("+/lobby"));
    }

    #[test]
    fn covering() {
        assert!(filter_covers("#", "a/b"));
        assert!(filter_covers("a/#", "a/+/c"));
        assert!(filter_covers("a/+", "a/b"));
        assert!(filter_covers("a/+", "a/+"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(!filter_covers("#", "$SYS/x"));
        assert!(filter_covers("$SYS/#", "$SYS/broker/+"));
    }

    #[test]
    fn ids_with_wildcards_do_not_widen_rules() {
        let rules = vec![rule(Access::Allow, Action::Readwrite, "clients/%c/#", None)];
        assert!(!ClientAcl::compile(&rules, None, "#").check(Action::Read, "clients/x/y"));
        assert!(ClientAcl::compile(&rules, None, "dev1").check(Action::Read, "clients/dev1/y"));
    }

    #[test]
    fn rules_file() {
        let rules = parse_rules(
            r#"
            [[rule]]
            access = "allow"
            action = "readwrite"
            topic = "chat/#"

            [[rule]]
            access = "deny"
            action = "read"
            topic = "x"
            user = "eve"
            "#,
        )
        .unwrap();
        assert_eq!(rules.len(), 2);
        assert!(parse_rules("[[rule]]\naccess = \"allow\"\naction = \"read\"\ntopic = \"a/#/b\"\n").is_err());
        assert!(parse_rules("[[rule]]\naccess = \"maybe\"\naction = \"read\"\ntopic = \"a\"\n").is_err());
    }
}
