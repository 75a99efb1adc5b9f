//! `acl`: allow or deny by group, as Kong's.
//!
//! The groups are the consumer's (its `acls`), or the authenticated groups of the request
//! (mtls-auth's `authenticated_group_by`) when no consumer was identified or
//! `always_use_authenticated_groups` is set and there are some. Nobody identified: 401
//! `Unauthorized`. `allow`: one of the groups must be listed; `deny`: none may be;
//! otherwise 403 `You cannot consume this service`. The groups go upstream as
//! `X-Consumer-Groups` (consumer's) or `X-Authenticated-Groups`, unless
//! `hide_groups_header`.

use std::collections::HashSet;

use gatehouse_shared::model::AclConfig;

use super::*;

/// One `acl` instance, compiled.
pub(crate) struct Acl {
    pub(super) allow: Option<HashSet<String>>,
    deny: Option<HashSet<String>>,
    hide_groups_header: bool,
    always_use_authenticated_groups: bool,
    protocols: Vec<String>,
}

impl Acl {
    pub(super) fn new(config: &AclConfig, protocols: &[String]) -> Self {
        let set = |list: &Option<Vec<String>>| {
            list.as_ref()
                .filter(|l| !l.is_empty())
                .map(|l| l.iter().cloned().collect())
        };
        Self {
            allow: set(&config.allow),
            deny: set(&config.deny),
            hide_groups_header: config.hide_groups_header,
            always_use_authenticated_groups: config.always_use_authenticated_groups,
            protocols: protocols.to_vec(),
        }
    }

    pub(super) fn runs_for(&self, protocol: Protocol) -> bool {
        runs_for(&self.protocols, protocol)
    }

    pub(super) fn access(
        &self,
        runtime: &Runtime,
        identity: &Identity,
        headers: &mut Vec<(HeaderName, String)>,
    ) -> Result<(), Denied> {
        let authenticated = &identity.authenticated_groups;
        let use_authenticated = !authenticated.is_empty()
            && (identity.consumer.is_none() || self.always_use_authenticated_groups);
        let (groups, header): (Vec<&str>, HeaderName) = if use_authenticated {
            (
                authenticated.iter().map(String::as_str).collect(),
                AUTHENTICATED_GROUPS,
            )
        } else if let Some(consumer) = &identity.consumer {
            (
                runtime
                    .consumer_groups(&consumer.id)
                    .iter()
                    .map(String::as_str)
                    .collect(),
                CONSUMER_GROUPS,
            )
        } else {
            return Err(if identity.credential {
                forbidden()
            } else {
                Denied {
                    status: StatusCode::UNAUTHORIZED,
                    message: "Unauthorized",
                }
            });
        };
        let allowed = match (&self.allow, &self.deny) {
            (Some(allow), _) => groups.iter().any(|g| allow.contains(*g)),
            (None, Some(deny)) => !groups.iter().any(|g| deny.contains(*g)),
            (None, None) => true,
        };
        if !allowed {
            return Err(forbidden());
        }
        if !self.hide_groups_header && !groups.is_empty() {
            headers.push((header, groups.join(", ")));
        }
        Ok(())
    }
}

fn forbidden() -> Denied {
    Denied {
        status: StatusCode::FORBIDDEN,
        message: "You cannot consume this service",
    }
}
