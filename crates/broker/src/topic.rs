//! Topic names and topic filters: validation, `$share` parsing and matching.

use std::sync::Arc;

/// Limits applied to topics on top of the spec's own rules.
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    /// Longest topic name or filter in bytes.
    pub max_len: usize,
    /// Most `/`-separated levels.
    pub max_levels: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        TopicLimits { max_len: 65_535, max_levels: 128 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic")]
    Empty,
    #[error("wildcard in a topic name")]
    Wildcard,
    #[error("'#' must be the whole last level")]
    BadMultiLevel,
    #[error("'+' must be a whole level")]
    BadSingleLevel,
    #[error("topic longer than {0} bytes")]
    TooLong(usize),
    #[error("topic deeper than {0} levels")]
    TooDeep(usize),
    #[error("invalid shared subscription: {0}")]
    BadShare(&'static str),
}

/// Checks a PUBLISH topic name (the codec already rejected wildcards).
pub fn validate_topic_name(topic: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    check_limits(topic, limits)
}

fn check_limits(s: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    if s.len() > limits.max_len {
        return Err(TopicError::TooLong(limits.max_len));
    }
    if s.split('/').count() > limits.max_levels {
        return Err(TopicError::TooDeep(limits.max_levels));
    }
    Ok(())
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != last) {
            return Err(TopicError::BadMultiLevel);
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::BadSingleLevel);
        }
    }
    Ok(())
}

/// A validated SUBSCRIBE filter, possibly a shared subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter {
    /// The filter as the client sent it (`$share/g/a/b` included).
    full: Arc<str>,
    /// Byte offset of the matching filter inside `full`.
    filter_start: usize,
    /// Length of the group name for a shared subscription; 0 otherwise.
    group_len: usize,
}

impl TopicFilter {
    pub fn parse(s: &str, limits: &TopicLimits) -> Result<TopicFilter, TopicError> {
        check_limits(s, limits)?;
        if let Some(rest) = s.strip_prefix("$share/") {
            let Some((group, filter)) = rest.split_once('/') else {
                return Err(TopicError::BadShare("missing filter after the group name"));
            };
            if group.is_empty() {
                return Err(TopicError::BadShare("empty group name"));
            }
            if group.contains(['+', '#']) {
                return Err(TopicError::BadShare("wildcard in the group name"));
            }
            validate_plain_filter(filter)?;
            return Ok(TopicFilter {
                full: Arc::from(s),
                filter_start: 8 + group.len(),
                group_len: group.len(),
            });
        }
        validate_plain_filter(s)?;
        Ok(TopicFilter { full: Arc::from(s), filter_start: 0, group_len: 0 })
    }

    /// The string the client subscribed with.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The part that matches topics (without `$share/group/`).
    pub fn filter(&self) -> &str {
        &self.full[self.filter_start..]
    }

    /// The share group name, for `$share/{group}/...`.
    pub fn share_group(&self) -> Option<&str> {
        if self.group_len == 0 {
            None
        } else {
            Some(&self.full[7..7 + self.group_len])
        }
    }

    pub fn is_shared(&self) -> bool {
        self.group_len > 0
    }

    pub fn has_wildcards(&self) -> bool {
        self.filter().contains(['+', '#'])
    }

    /// Whether this filter matches a topic name.
    pub fn matches(&self, topic: &str) -> bool {
        filter_matches(self.filter(), topic)
    }
}

/// The widest limits: replicated filters were validated, with the limits
/// in force then, by the node that proposed them; reading them back (a
/// log entry, a snapshot) must not fail because a limit changed since.
pub const STORED_LIMITS: TopicLimits = TopicLimits { max_len: 65_535, max_levels: usize::MAX };

/// Stored as the string the client subscribed with; reading it back
/// validates it again (a corrupt filter is an error, never a route).
impl serde::Serialize for TopicFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> serde::Deserialize<'de> for TopicFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TopicFilter, D::Error> {
        let s = String::deserialize(d)?;
        TopicFilter::parse(&s, &STORED_LIMITS).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
    }
}

/// Matches a (plain, already validated) filter against a topic name,
/// including the rule that a leading wildcard does not match `$` topics.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Result<TopicFilter, TopicError> {
        TopicFilter::parse(s, &TopicLimits::default())
    }

    #[test]
    fn filter_validation() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "a//b", "$SYS/#", "$share/g/a/+"] {
            assert!(f(ok).is_ok(), "{ok}");
        }
        for bad in
            ["", "a#", "a/#/b", "a/b+", "#/a", "a+/b", "$share/g", "$share//a", "$share/g+/a", "$share/g/"]
        {
            assert!(f(bad).is_err(), "{bad}");
        }
        let s = f("$share/group1/sport/+").unwrap();
        assert_eq!(s.share_group(), Some("group1"));
        assert_eq!(s.filter(), "sport/+");
        assert!(s.is_shared());
        assert_eq!(f("a/b").unwrap().share_group(), None);
    }

    #[test]
    fn limits_apply() {
        let l = TopicLimits { max_len: 5, max_levels: 2 };
        assert_eq!(validate_topic_name("abcdef", &l), Err(TopicError::TooLong(5)));
        assert_eq!(validate_topic_name("a/b/c", &l), Err(TopicError::TooDeep(2)));
        assert!(TopicFilter::parse("a/b/c", &l).is_err());
        assert!(validate_topic_name("a/b", &l).is_ok());
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
            ("sport/#", "sport", true),
            ("#", "anything/at/all", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/broker", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a//b", "a//b", true),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(filter_matches(filter, topic), want, "{filter} vs {topic}");
        }
    }
}
