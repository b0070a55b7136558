//! Who is asking: the role and id prefix of the API key a request came with.
//!
//! The service decides every request against a `Principal`; `auth` only resolves the bearer
//! key into one. With auth off, every request is the [`Principal::system`].

use std::sync::Arc;

use super::ContextId;

/// What a key may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Every read: GETs, search, the change feed, MCP reads.
    Read,
    /// Read, plus every write: PUT, POST, DELETE, merge, restore, sync ingest.
    Write,
    /// Write, plus `/cache/warm` and key management.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    /// Parses the wire name; `None` for anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The caller of a request, as the service sees it. Cheap to clone (it is cloned into every
/// request): the strings are shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id; `None` for the system (auth off, the CLI, background work).
    pub key_id: Option<Arc<str>>,
    pub role: Role,
    /// When set, the caller sees and touches only contexts whose id starts with it.
    pub prefix: Option<Arc<str>>,
}

impl Principal {
    /// Everything, everywhere: auth off, the CLI, and contextd's own background work.
    pub fn system() -> Self {
        Self {
            key_id: None,
            role: Role::Admin,
            prefix: None,
        }
    }

    pub fn has(&self, role: Role) -> bool {
        self.role >= role
    }

    /// Whether `id` is inside this caller's prefix.
    pub fn sees(&self, id: &ContextId) -> bool {
        self.sees_str(id.as_str())
    }

    pub fn sees_str(&self, id: &str) -> bool {
        under(self.prefix.as_deref(), id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: Role, prefix: Option<&str>) -> Principal {
        Principal {
            key_id: Some("k".into()),
            role,
            prefix: prefix.map(Arc::from),
        }
    }

    #[test]
    fn each_role_includes_the_ones_below() {
        assert!(key(Role::Admin, None).has(Role::Write));
        assert!(key(Role::Write, None).has(Role::Read));
        assert!(!key(Role::Write, None).has(Role::Admin));
        assert!(!key(Role::Read, None).has(Role::Write));
        for role in [Role::Read, Role::Write, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn a_prefix_bounds_what_a_key_sees() {
        let team = key(Role::Write, Some("team-a:"));
        assert!(team.sees(&ContextId::parse("team-a:x").unwrap()));
        assert!(!team.sees(&ContextId::parse("team-b:x").unwrap()));
        assert!(!team.sees(&ContextId::parse("team-a").unwrap()));
        assert!(Principal::system().sees(&ContextId::parse("anything").unwrap()));
        let visible = Visible::to(&team);
        assert_eq!(visible.prefix(), Some("team-a:"));
        assert!(visible.admits("team-a:x") && !visible.admits("team-b:x"));
        assert_eq!(Visible::to(&Principal::system()).prefix(), None);
    }

    #[test]
    fn the_id_range_holds_exactly_the_ids_under_the_prefix() {
        let visible = Visible::to(&key(Role::Read, Some("team-a:")));
        let (from, until) = visible.id_range().unwrap();
        assert_eq!((from, until.as_str()), ("team-a:", "team-a;"));
        for id in [
            "team-a:",
            "team-a:x",
            "team-a:zzz",
            "team-a:~",
            "team-a",
            "team-a;",
            "team-b",
        ] {
            let in_range = from <= id && id < until.as_str();
            assert_eq!(in_range, visible.admits(id), "{id}");
        }
        assert_eq!(successor("az"), "a{");
        assert_eq!(Visible::to(&Principal::system()).id_range(), None);
    }
}

/// The contexts a caller may see and touch: every one, or those whose id starts with its key's
/// prefix. It can only be made from a [`Principal`], so a query to the store or the vector
/// index cannot be made without deciding it, and cannot decide it wrongly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visible(Option<Arc<str>>);

impl Visible {
    /// What `who` may see.
    pub fn to(who: &Principal) -> Self {
        Self(who.prefix.clone())
    }

    /// The prefix every visible id starts with; `None`: every id.
    pub fn prefix(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// Whether the context `id` is visible: what [`Principal::sees`] says of it.
    pub fn admits(&self, id: &str) -> bool {
        under(self.prefix(), id)
    }

    /// The visible ids as a range of keys, `from <= id < until`: the ids that start with the
    /// prefix are exactly those that sort (bytewise) within it. A store reads that range
    /// from its key index rather than testing every id after a cursor. `None`: every id.
    pub fn id_range(&self) -> Option<(&str, String)> {
        let prefix = self.prefix()?;
        Some((prefix, successor(prefix)))
    }
}

/// The least string above every string that starts with `prefix`: its last character moved
/// one up (one dropped first while it has no successor). Ids and prefixes are ASCII, so for
/// them it is always the last byte plus one.
fn successor(prefix: &str) -> String {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return chars.into_iter().collect();
        }
    }
    // Only reached for a prefix of nothing but char::MAX, which no id holds.
    char::MAX.to_string()
}

/// The one prefix rule: no prefix sees every id, a prefix the ids that start with it.
fn under(prefix: Option<&str>, id: &str) -> bool {
    prefix.is_none_or(|prefix| id.starts_with(prefix))
}
