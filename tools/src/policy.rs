//! Who may use a tool: what each tool declares it needs ([`Access`], in code), what
//! an operator's policy file changes about it ([`PolicyFile`], `TOOL_POLICY_FILE`,
//! no rebuild), and the one function that decides ([`decide`]).
//!
//! A tool is granted when the caller is authenticated, is a user if the tool is
//! for users only, and — when the tool names any permissions, e-mails or groups —
//! holds one of them (any one suffices: the WorkOS seed's `image_generation`
//! permission *or* the Access seed's e-mail allow-list). OAuth scopes are apart:
//! every listed scope is required, and a missing one is not a refusal but a
//! step-up challenge (HTTP 403 `insufficient_scope`), since the client can get it
//! by authorizing again. So `tools/list` shows granted tools even when a scope is
//! missing, and `tools/call` answers the challenge.

use std::collections::BTreeMap;
use std::path::Path;

use proto::Principal;
use serde::Deserialize;

/// What a tool needs. The default: any authenticated caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// OAuth scopes the caller's token must all carry.
    pub scopes: Vec<String>,
    /// Permission claims (WorkOS `permissions`, …); any one grants.
    pub permissions: Vec<String>,
    /// E-mail addresses (case-insensitive) or `@domain` entries; any one grants.
    pub emails: Vec<String>,
    /// Groups (the `groups` claim); any one grants.
    pub groups: Vec<String>,
    /// Refuse machine clients (client-credentials tokens).
    pub users_only: bool,
    /// Hidden from and refused to everyone.
    pub disabled: bool,
}

impl Access {
    /// Any authenticated caller.
    pub fn anyone() -> Self {
        Self::default()
    }

    /// Users only (no machine clients).
    pub fn users() -> Self {
        Self {
            users_only: true,
            ..Self::default()
        }
    }

    pub fn scope(mut self, scope: &str) -> Self {
        self.scopes.push(scope.to_owned());
        self
    }

    pub fn permission(mut self, permission: &str) -> Self {
        self.permissions.push(permission.to_owned());
        self
    }

    pub fn emails<I: IntoIterator<Item = S>, S: Into<String>>(mut self, emails: I) -> Self {
        self.emails.extend(emails.into_iter().map(Into::into));
        self
    }

    pub fn group(mut self, group: &str) -> Self {
        self.groups.push(group.to_owned());
        self
    }

    fn entitles(&self, caller: &Principal) -> bool {
        if self.permissions.is_empty() && self.emails.is_empty() && self.groups.is_empty() {
            return true;
        }
        self.permissions.iter().any(|p| caller.has_permission(p))
            || self.groups.iter().any(|g| caller.groups.iter().any(|c| c == g))
            || caller
                .email
                .as_deref()
                .is_some_and(|email| self.emails.iter().any(|allowed| email_matches(allowed, email)))
    }
}

/// `allowed` is an address (case-insensitive) or `@domain` (every address there).
fn email_matches(allowed: &str, email: &str) -> bool {
    let (allowed, email) = (allowed.trim(), email.trim());
    if allowed.is_empty() || !email.contains('@') {
        return false;
    }
    if allowed.starts_with('@') {
        email
            .rsplit_once('@')
            .is_some_and(|(_, domain)| allowed[1..].eq_ignore_ascii_case(domain))
    } else {
        allowed.eq_ignore_ascii_case(email)
    }
}

/// The answer for one caller and one tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Granted, but the token lacks these scopes: a step-up challenge.
    MissingScopes(Vec<String>),
    Deny(Denial),
}

impl Decision {
    /// Whether `tools/list` shows the tool (a missing scope can be stepped up to).
    pub fn listed(&self) -> bool {
        !matches!(self, Decision::Deny(_))
    }
}

/// Why a caller may not use a tool. The text is shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("this tool is disabled")]
    Disabled,
    #[error("this tool needs an authenticated caller")]
    Unauthenticated,
    #[error("this tool is for users, not machine clients")]
    MachineCaller,
    #[error("you do not have access to this tool: {needs}")]
    NotEntitled { needs: String },
}

/// The one decision: may `caller` use a tool that needs `access`?
pub fn decide(access: &Access, caller: Option<&Principal>) -> Decision {
    if access.disabled {
        return Decision::Deny(Denial::Disabled);
    }
    let Some(caller) = caller else {
        return Decision::Deny(Denial::Unauthenticated);
    };
    if access.users_only && !caller.is_user() {
        return Decision::Deny(Denial::MachineCaller);
    }
    if !access.entitles(caller) {
        return Decision::Deny(Denial::NotEntitled { needs: needs(access) });
    }
    let missing: Vec<String> = access.scopes.iter().filter(|s| !caller.has_scope(s)).cloned().collect();
    if missing.is_empty() {
        Decision::Allow
    } else {
        Decision::MissingScopes(missing)
    }
}

/// What grants a tool, in words (never the allow-listed addresses themselves).
fn needs(access: &Access) -> String {
    let mut parts = Vec::new();
    if !access.permissions.is_empty() {
        parts.push(format!("the {} permission", access.permissions.join(" or ")));
    }
    if !access.groups.is_empty() {
        parts.push(format!("membership of {}", access.groups.join(" or ")));
    }
    if !access.emails.is_empty() {
        parts.push("an allow-listed e-mail address".to_owned());
    }
    format!("it needs {}", parts.join(", or "))
}

/// An operator's change to one tool's [`Access`]: each field given replaces the
/// tool's own; fields left out keep it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessOverride {
    pub scopes: Option<Vec<String>>,
    pub permissions: Option<Vec<String>>,
    pub emails: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub users_only: Option<bool>,
    pub disabled: Option<bool>,
}

impl AccessOverride {
    pub fn apply(&self, access: &mut Access) {
        let set = |field: &mut Vec<String>, value: &Option<Vec<String>>| {
            if let Some(v) = value {
                field.clone_from(v);
            }
        };
        set(&mut access.scopes, &self.scopes);
        set(&mut access.permissions, &self.permissions);
        set(&mut access.emails, &self.emails);
        set(&mut access.groups, &self.groups);
        if let Some(v) = self.users_only {
            access.users_only = v;
        }
        if let Some(v) = self.disabled {
            access.disabled = v;
        }
    }
}

/// `TOOL_POLICY_FILE`: TOML, one table per tool name.
///
/// ```toml
/// [tools.generateImage]
/// permissions = ["image_generation"]
/// emails = ["@example.com"]
///
/// [tools.deleteTodo]
/// disabled = true
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub tools: BTreeMap<String, AccessOverride>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a valid policy file: {message}")]
    Parse { path: String, message: String },
    #[error("{path} names unknown tools: {names} (known: {known})")]
    UnknownTools { path: String, names: String, known: String },
}

impl PolicyFile {
    pub fn parse(text: &str, path: &str) -> Result<Self, PolicyError> {
        toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Refuse a file that names a tool nobody ships (a typo would silently leave the
    /// tool as it was).
    pub fn check_names<'a>(&self, known: impl Iterator<Item = &'a str> + Clone, path: &str) -> Result<(), PolicyError> {
        let unknown: Vec<&str> = self
            .tools
            .keys()
            .map(String::as_str)
            .filter(|name| !known.clone().any(|k| k == *name))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        Err(PolicyError::UnknownTools {
            path: path.to_owned(),
            names: unknown.join(", "),
            known: known.collect::<Vec<_>>().join(", "),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proto::principal::SubjectKind;

    fn user(email: Option<&str>, scopes: &[&str], permissions: &[&str], groups: &[&str]) -> Principal {
        Principal {
            iss: "https://idp.example".into(),
            sub: "u1".into(),
            email: email.map(str::to_owned),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            permissions: permissions.iter().map(|s| (*s).to_owned()).collect(),
            groups: groups.iter().map(|s| (*s).to_owned()).collect(),
            ..Principal::default()
        }
    }

    fn machine(scopes: &[&str]) -> Principal {
        Principal {
            kind: SubjectKind::Machine,
            ..user(None, scopes, &[], &[])
        }
    }

    #[test]
    fn decision_table() {
        let image = Access::users()
            .permission("image_generation")
            .emails(["boss@example.com", "@trusted.example"]);
        let checklist = Access::users().scope("checklist.read");
        let both = Access::anyone().permission("process.read").scope("process.search");
        let ops = Access::anyone().group("ops");
        let off = Access {
            disabled: true,
            ..Access::anyone()
        };
        let allow = Decision::Allow;
        let missing = |s: &[&str]| Decision::MissingScopes(s.iter().map(|s| (*s).to_owned()).collect());
        let not_entitled = |a: &Access| Decision::Deny(Denial::NotEntitled { needs: needs(a) });

        let alice = user(Some("alice@example.com"), &["mcp"], &["image_generation"], &[]);
        let boss = user(Some("BOSS@Example.com"), &["mcp"], &[], &[]);
        let bob = user(Some("bob@example.com"), &["mcp", "checklist.read"], &[], &["ops"]);
        let trusted = user(Some("carol@trusted.example"), &[], &[], &[]);
        let lookalike = user(Some("eve@untrusted.example"), &[], &[], &[]);
        let no_email = user(None, &["process.search"], &["process.read"], &[]);
        let robot = machine(&["checklist.read", "process.search"]);
        let permitted = user(None, &[], &["process.read"], &[]);
        let anyone = Access::anyone();

        let cases: Vec<(&str, &Access, Option<&Principal>, Decision)> = vec![
            ("anyone: a user", &anyone, Some(&bob), allow.clone()),
            ("anyone: a machine", &anyone, Some(&robot), allow.clone()),
            ("anyone: nobody", &anyone, None, Decision::Deny(Denial::Unauthenticated)),
            ("permission grants", &image, Some(&alice), allow.clone()),
            ("e-mail grants, any case", &image, Some(&boss), allow.clone()),
            ("@domain grants", &image, Some(&trusted), allow.clone()),
            ("other domain refused", &image, Some(&lookalike), not_entitled(&image)),
            ("neither refused", &image, Some(&bob), not_entitled(&image)),
            (
                "users only refuses machines",
                &image,
                Some(&robot),
                Decision::Deny(Denial::MachineCaller),
            ),
            ("scope present", &checklist, Some(&bob), allow.clone()),
            (
                "scope missing: step up",
                &checklist,
                Some(&alice),
                missing(&["checklist.read"]),
            ),
            (
                "scope for machines too, users only",
                &checklist,
                Some(&robot),
                Decision::Deny(Denial::MachineCaller),
            ),
            ("permission and scope", &both, Some(&no_email), allow.clone()),
            (
                "scope without permission: refused, not step-up",
                &both,
                Some(&alice),
                not_entitled(&both),
            ),
            (
                "permission present, scope missing",
                &both,
                Some(&permitted),
                missing(&["process.search"]),
            ),
            ("group grants", &ops, Some(&bob), allow.clone()),
            ("no group", &ops, Some(&alice), not_entitled(&ops)),
            (
                "disabled beats everything",
                &off,
                Some(&alice),
                Decision::Deny(Denial::Disabled),
            ),
        ];
        for (name, access, caller, expected) in cases {
            assert_eq!(decide(access, caller), expected, "{name}");
        }
    }

    #[test]
    fn listing_shows_granted_and_step_up_tools_only() {
        assert!(Decision::Allow.listed());
        assert!(Decision::MissingScopes(vec!["a".into()]).listed());
        assert!(!Decision::Deny(Denial::Disabled).listed());
    }

    #[test]
    fn refusal_text_never_names_allow_listed_addresses() {
        let a = Access::users()
            .permission("image_generation")
            .emails(["secret.person@example.com"]);
        let Decision::Deny(d) = decide(&a, Some(&user(Some("x@y.z"), &[], &[], &[]))) else {
            panic!("refused")
        };
        let text = d.to_string();
        assert!(
            text.contains("image_generation") && text.contains("allow-listed"),
            "{text}"
        );
        assert!(!text.contains("secret.person"), "{text}");
    }

    #[test]
    fn email_matching() {
        assert!(email_matches("a@b.c", "A@B.C"));
        assert!(email_matches("@b.c", "x@B.c"));
        assert!(!email_matches("@b.c", "x@sub.b.c"));
        assert!(!email_matches("@b.c", "b.c"));
        assert!(!email_matches("", "a@b.c"));
        assert!(!email_matches("a@b.c", "a@b.c.evil"));
    }

    #[test]
    fn policy_file_overrides_only_what_it_names() {
        let file = PolicyFile::parse(
            r#"
            [tools.generateImage]
            emails = ["ops@example.com"]
            [tools.deleteTodo]
            disabled = true
            [tools.add]
            scopes = ["math"]
            users_only = true
            "#,
            "policy.toml",
        )
        .unwrap();
        let mut image = Access::users().permission("image_generation").emails(["x@example.com"]);
        file.tools["generateImage"].apply(&mut image);
        assert_eq!(image.permissions, vec!["image_generation"]);
        assert_eq!(image.emails, vec!["ops@example.com"]);
        assert!(image.users_only);
        let mut add = Access::anyone();
        file.tools["add"].apply(&mut add);
        assert_eq!(add.scopes, vec!["math"]);
        assert!(add.users_only);
        let mut delete = Access::users();
        file.tools["deleteTodo"].apply(&mut delete);
        assert_eq!(
            decide(&delete, Some(&user(None, &[], &[], &[]))),
            Decision::Deny(Denial::Disabled)
        );
    }

    #[test]
    fn policy_file_errors_are_clear() {
        let e = PolicyFile::parse("[tools.add]\nscope = [\"x\"]\n", "p.toml").unwrap_err();
        assert!(
            e.to_string().contains("p.toml") && e.to_string().contains("scope"),
            "{e}"
        );
        let e = PolicyFile::parse("[tools.add]\ndisabled = \"yes\"\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("p.toml"), "{e}");
        let file = PolicyFile::parse("[tools.genrateImage]\ndisabled = true\n", "p.toml").unwrap();
        let known = ["add", "generateImage"];
        let e = file.check_names(known.iter().copied(), "p.toml").unwrap_err();
        assert!(e.to_string().contains("genrateImage"), "{e}");
        assert!(
            PolicyFile::parse("", "p.toml")
                .unwrap()
                .check_names(known.iter().copied(), "p")
                .is_ok()
        );
        let missing = PolicyFile::load(Path::new("/nonexistent/policy.toml")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/policy.toml"), "{missing}");
    }
}
