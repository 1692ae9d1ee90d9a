//! From a provider's claims to our one [`Identity`] shape.
//!
//! - `sub`: required, non-empty.
//! - `email`: the `email` claim, dropped when `email_verified` is explicitly false
//!   (e-mail allow-lists must not trust an address nobody verified).
//! - `name`: `name`, else `given_name family_name`.
//! - permissions: the configured claim (default `permissions`; Entra `roles`), an
//!   array of strings or one space-separated string. A dotted name such as
//!   `realm_access.roles` (Keycloak) walks into objects when no claim has that exact name.
//! - groups: `groups`, same forms.
//! - org: the first string of `org_id`, `org`, `tid` (Entra's tenant).
//!
//! Lists are capped at [`MAX_LIST_ITEMS`] entries of at most [`MAX_ITEM_LEN`] bytes:
//! they travel in our access tokens.

use serde_json::{Map, Value};

use super::{Identity, UpstreamError};

pub const MAX_LIST_ITEMS: usize = 256;
pub const MAX_ITEM_LEN: usize = 256;
/// Longest `sub`, e-mail or name we keep.
pub const MAX_FIELD_LEN: usize = 512;

/// Which claims carry what, per provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    pub permissions: String,
    pub groups: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            permissions: "permissions".to_owned(),
            groups: "groups".to_owned(),
        }
    }
}

/// The claim `name`, or for a dotted name the nested value.
pub fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

/// An array of strings or a space-separated string, capped.
pub fn string_list(v: Option<&Value>) -> Vec<String> {
    let items: Vec<String> = match v {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if item.is_empty() || item.len() > MAX_ITEM_LEN || out.contains(&item) {
            continue;
        }
        if out.len() == MAX_LIST_ITEMS {
            break;
        }
        out.push(item);
    }
    out
}

fn short_string(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= MAX_FIELD_LEN)
        .map(str::to_owned)
}

fn is_false(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => !b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("false"),
        _ => false,
    }
}

/// Map OIDC-style claims.
pub fn identity(claims: &Map<String, Value>, mapping: &ClaimMapping) -> Result<Identity, UpstreamError> {
    let sub = short_string(claims.get("sub")).ok_or_else(|| UpstreamError::Invalid("no usable sub claim".into()))?;
    let email = if is_false(claims.get("email_verified")) {
        None
    } else {
        short_string(claims.get("email"))
    };
    let name = short_string(claims.get("name")).or_else(|| {
        let given = short_string(claims.get("given_name"));
        let family = short_string(claims.get("family_name"));
        join_name(given, family)
    });
    let org = ["org_id", "org", "tid"]
        .iter()
        .find_map(|c| short_string(claims.get(*c)));
    Ok(Identity {
        sub,
        email,
        name,
        permissions: string_list(lookup(claims, &mapping.permissions)),
        groups: string_list(lookup(claims, &mapping.groups)),
        org,
    })
}

/// "First Last" from optional parts.
pub fn join_name(first: Option<String>, last: Option<String>) -> Option<String> {
    match (first, last) {
        (Some(f), Some(l)) => Some(format!("{f} {l}")),
        (f, l) => f.or(l),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn maps_standard_claims() {
        let c = map(json!({
            "sub": "u1", "email": "a@example.com", "email_verified": true,
            "given_name": "Ada", "family_name": "Lovelace",
            "permissions": ["image_generation", "image_generation", 3],
            "groups": "eng ops", "org_id": "org_1"
        }));
        let id = identity(&c, &ClaimMapping::default()).unwrap();
        assert_eq!(id.sub, "u1");
        assert_eq!(id.email.as_deref(), Some("a@example.com"));
        assert_eq!(id.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(id.permissions, vec!["image_generation"]);
        assert_eq!(id.groups, vec!["eng", "ops"]);
        assert_eq!(id.org.as_deref(), Some("org_1"));
    }

    #[test]
    fn unverified_email_is_dropped() {
        let c = map(json!({"sub": "u1", "email": "a@example.com", "email_verified": false}));
        assert_eq!(identity(&c, &ClaimMapping::default()).unwrap().email, None);
        let c = map(json!({"sub": "u1", "email": "a@example.com", "email_verified": "false"}));
        assert_eq!(identity(&c, &ClaimMapping::default()).unwrap().email, None);
    }

    #[test]
    fn entra_style_and_nested_claims() {
        let c = map(json!({
            "sub": "pairwise", "roles": ["Tools.Admin"], "groups": ["g-1"],
            "tid": "tenant", "realm_access": {"roles": ["x"]}
        }));
        let entra = ClaimMapping {
            permissions: "roles".into(),
            groups: "groups".into(),
        };
        let id = identity(&c, &entra).unwrap();
        assert_eq!(id.permissions, vec!["Tools.Admin"]);
        assert_eq!(id.org.as_deref(), Some("tenant"));
        let kc = ClaimMapping {
            permissions: "realm_access.roles".into(),
            groups: "groups".into(),
        };
        assert_eq!(identity(&c, &kc).unwrap().permissions, vec!["x"]);
    }

    #[test]
    fn sub_is_required_and_lists_are_capped() {
        assert!(identity(&map(json!({"sub": ""})), &ClaimMapping::default()).is_err());
        assert!(identity(&map(json!({"email": "x"})), &ClaimMapping::default()).is_err());
        let many: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
        let c = map(json!({"sub": "u", "permissions": many}));
        assert_eq!(
            identity(&c, &ClaimMapping::default()).unwrap().permissions.len(),
            MAX_LIST_ITEMS
        );
    }
}
