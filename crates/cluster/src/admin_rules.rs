//! ACL rules between the admin protocol's strings and the broker's
//! `AclRule` (validated on the way in).

use starling_broker::auth::{Access, AclRule, Action};

use crate::error::ServiceError;
use crate::pb::admin as pb;

pub fn rule_to_pb(r: &AclRule) -> pb::AclRule {
    let access = if r.access == Access::Allow { "allow" } else { "deny" };
    let action = match r.action {
        Action::Read => "read",
        Action::Write => "write",
        Action::Readwrite => "readwrite",
    };
    pb::AclRule {
        access: access.into(),
        action: action.into(),
        topic: r.topic.clone(),
        user: r.user.clone().unwrap_or_default(),
        client: r.client.clone().unwrap_or_default(),
    }
}

pub fn rule_from_pb(r: &pb::AclRule) -> Result<AclRule, ServiceError> {
    let bad = |m: String| ServiceError::InvalidArgument(m);
    let access = match r.access.as_str() {
        "allow" => Access::Allow,
        "deny" => Access::Deny,
        other => return Err(bad(format!("access must be allow or deny, not {other:?}"))),
    };
    let action = match r.action.as_str() {
        "read" => Action::Read,
        "write" => Action::Write,
        "readwrite" => Action::Readwrite,
        other => return Err(bad(format!("action must be read, write or readwrite, not {other:?}"))),
    };
    let rule = AclRule {
        access,
        action,
        topic: r.topic.clone(),
        user: (!r.user.is_empty()).then(|| r.user.clone()),
        client: (!r.client.is_empty()).then(|| r.client.clone()),
    };
    rule.validate().map_err(|e| bad(e.to_string()))?;
    Ok(rule)
}
