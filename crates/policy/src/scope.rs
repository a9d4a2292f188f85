//! SMART on FHIR scopes: v2 (`patient/Observation.rs`, `system/*.cruds`) and
//! v1 (`user/Patient.read`, `patient/*.write`, `.*`).
//!
//! Fine-grained v2 scopes with a query (`patient/Observation.rs?category=…`)
//! would narrow access in ways this server does not evaluate yet, so they
//! parse to nothing: ignoring only the query would widen the grant.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Action;

/// The context a scope applies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ScopeContext {
    /// `patient/`: confined to the launch patient's compartment.
    Patient,
    /// `user/`: whatever the user may do.
    User,
    /// `system/`: a backend service with no user.
    System,
}

/// One parsed resource scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    pub context: ScopeContext,
    /// A resource type, or `None` for `*`.
    pub resource_type: Option<String>,
    pub create: bool,
    pub read: bool,
    pub update: bool,
    pub delete: bool,
    pub search: bool,
}

impl Scope {
    /// Parse one scope; `None` for non-resource scopes (`openid`,
    /// `launch/patient`, `offline_access`) and anything malformed.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let (context, rest) = text.split_once('/')?;
        let context = match context {
            "patient" => ScopeContext::Patient,
            "user" => ScopeContext::User,
            "system" => ScopeContext::System,
            _ => return None,
        };
        if rest.contains('?') {
            return None;
        }
        let (resource_type, perms) = rest.split_once('.')?;
        let resource_type = match resource_type {
            "*" => None,
            t if !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric()) => {
                Some(t.to_owned())
            }
            _ => return None,
        };
        let mut scope = Self {
            context,
            resource_type,
            create: false,
            read: false,
            update: false,
            delete: false,
            search: false,
        };
        match perms {
            // SMART v1.
            "read" => {
                scope.read = true;
                scope.search = true;
            }
            "write" => {
                scope.create = true;
                scope.update = true;
                scope.delete = true;
            }
            "*" => {
                scope.create = true;
                scope.read = true;
                scope.update = true;
                scope.delete = true;
                scope.search = true;
            }
            // SMART v2: letters in the order c r u d s, each at most once.
            v2 => {
                let mut last = 0;
                for ch in v2.chars() {
                    let rank = match ch {
                        'c' => 1,
                        'r' => 2,
                        'u' => 3,
                        'd' => 4,
                        's' => 5,
                        _ => return None,
                    };
                    if rank <= last {
                        return None;
                    }
                    last = rank;
                    match ch {
                        'c' => scope.create = true,
                        'r' => scope.read = true,
                        'u' => scope.update = true,
                        'd' => scope.delete = true,
                        _ => scope.search = true,
                    }
                }
                if last == 0 {
                    return None;
                }
            }
        }
        Some(scope)
    }

    /// Parse a space-separated `scope` claim, dropping what is not a
    /// resource scope.
    #[must_use]
    pub fn parse_list(text: &str) -> Vec<Self> {
        text.split_whitespace().filter_map(Self::parse).collect()
    }

    /// Does this scope allow `action` on `resource_type`?
    #[must_use]
    pub fn allows(&self, action: Action, resource_type: &str) -> bool {
        if let Some(t) = &self.resource_type
            && t != resource_type
        {
            return false;
        }
        match action {
            Action::Create => self.create,
            // Reading a version or an instance's history is a read.
            Action::Read | Action::History => self.read,
            Action::Search => self.search,
            Action::Update => self.update,
            Action::Delete => self.delete,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let context = match self.context {
            ScopeContext::Patient => "patient",
            ScopeContext::User => "user",
            ScopeContext::System => "system",
        };
        let mut perms = String::new();
        for (on, c) in [
            (self.create, 'c'),
            (self.read, 'r'),
            (self.update, 'u'),
            (self.delete, 'd'),
            (self.search, 's'),
        ] {
            if on {
                perms.push(c);
            }
        }
        write!(
            f,
            "{context}/{}.{perms}",
            self.resource_type.as_deref().unwrap_or("*")
        )
    }
}

/// Does any scope in one of `contexts` allow `action` on `resource_type`?
#[must_use]
pub fn any_allows(
    scopes: &[Scope],
    contexts: &[ScopeContext],
    action: Action,
    resource_type: &str,
) -> bool {
    scopes
        .iter()
        .any(|s| contexts.contains(&s.context) && s.allows(action, resource_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decision table: scope text × action × type → allowed.
    #[test]
    fn scope_table() {
        use Action::*;
        let table: &[(&str, Action, &str, bool)] = &[
            ("system/*.cruds", Create, "Observation", true),
            ("system/*.cruds", Delete, "Patient", true),
            ("system/*.rs", Create, "Observation", false),
            ("system/*.rs", Read, "Observation", true),
            ("system/*.rs", Search, "Observation", true),
            ("system/*.rs", History, "Observation", true),
            ("system/Observation.r", Search, "Observation", false),
            ("system/Observation.r", Read, "Condition", false),
            ("patient/Observation.rs", Read, "Observation", true),
            ("patient/Observation.read", Search, "Observation", true),
            ("patient/Observation.read", Update, "Observation", false),
            ("user/*.write", Update, "Condition", true),
            ("user/*.write", Read, "Condition", false),
            ("user/*.*", Delete, "Condition", true),
            ("user/Consent.cu", Update, "Consent", true),
        ];
        for (text, action, rt, want) in table {
            let scope = Scope::parse(text).unwrap_or_else(|| panic!("{text} should parse"));
            assert_eq!(scope.allows(*action, rt), *want, "{text} {action:?} {rt}");
        }
    }

    #[test]
    fn rejects_malformed_and_non_resource_scopes() {
        for text in [
            "openid",
            "launch/patient",
            "offline_access",
            "system/*.",
            "system/*.rc",
            "system/*.rr",
            "system/*.x",
            "admin/*.cruds",
            "system/Obs-ervation.r",
            "patient/Observation.rs?category=laboratory",
            "system.cruds",
        ] {
            assert_eq!(Scope::parse(text), None, "{text}");
        }
    }

    #[test]
    fn parse_list_and_display_round_trip() {
        let scopes = Scope::parse_list("openid system/Patient.rs  system/*.cruds launch");
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[0].to_string(), "system/Patient.rs");
        assert_eq!(scopes[1].to_string(), "system/*.cruds");
        assert_eq!(
            Scope::parse("user/*.read").map(|s| s.to_string()),
            Some("user/*.rs".to_owned())
        );
    }

    #[test]
    fn any_allows_respects_context() {
        let scopes = Scope::parse_list("patient/*.rs");
        assert!(any_allows(
            &scopes,
            &[ScopeContext::Patient],
            Action::Read,
            "Observation"
        ));
        assert!(!any_allows(
            &scopes,
            &[ScopeContext::System],
            Action::Read,
            "Observation"
        ));
    }
}
