//! Machine clients: confidential clients that act for themselves (the
//! `client_credentials` grant) or that are resource servers allowed to call
//! `/introspect`. Only the operator creates them, in the JSON file named by
//! `AUTH_MACHINE_CLIENTS_FILE`; dynamic registration and metadata documents never can
//! (an anonymous registration must not yield a token that nobody logged in for).
//!
//! The file is a JSON array; `auth-service machine-client --id <id>` prints a fresh
//! secret and the entry to add:
//!
//! ```json
//! [{"client_id": "m_reporting", "client_secret_sha256": "<base64url SHA-256 of the secret>",
//!   "name": "nightly report", "scope": "mcp", "grant_types": ["client_credentials"],
//!   "introspect": false}]
//! ```
//!
//! Their tokens carry `sub_kind: "machine"` ([`proto::auth::SUBJECT_KIND_CLAIM`]), so
//! the gateway, tools and policy can tell them from users' tokens.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{AuthMethod, CLIENT_ID_PREFIX, ClientRecord};
use crate::clients::metadata::GRANT_CLIENT_CREDENTIALS;

/// One entry of the machine clients file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineClientEntry {
    pub client_id: String,
    /// base64url (no padding) SHA-256 of the client secret.
    pub client_secret_sha256: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Space-separated scopes it may ask for; absent: every supported scope.
    #[serde(default)]
    pub scope: Option<String>,
    /// `["client_credentials"]` (the default) or `[]` for a client that only
    /// introspects.
    #[serde(default = "default_grant_types")]
    pub grant_types: Vec<String>,
    /// May call `/introspect` (a resource server the operator trusts).
    #[serde(default)]
    pub introspect: bool,
}

fn default_grant_types() -> Vec<String> {
    vec![GRANT_CLIENT_CREDENTIALS.to_owned()]
}

/// The operator's machine clients, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineClients(HashMap<String, ClientRecord>);

impl MachineClients {
    pub fn get(&self, client_id: &str) -> Option<&ClientRecord> {
        self.0.get(client_id)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Read and check the file.
    pub fn load(path: &Path, supported_scopes: &[String]) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text, supported_scopes)
    }

    /// Check the file's text: ids unique, never a registered-client id or a URL,
    /// hashes that are SHA-256 sized, only supported scopes and grant types.
    pub fn parse(text: &str, supported_scopes: &[String]) -> Result<Self, String> {
        let entries: Vec<MachineClientEntry> =
            serde_json::from_str(text).map_err(|e| format!("not a JSON array of machine clients: {e}"))?;
        let mut out = HashMap::new();
        for e in entries {
            let id = e.client_id.as_str();
            let id_ok = !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
                && !id.starts_with(CLIENT_ID_PREFIX);
            if !id_ok {
                return Err(format!(
                    "client_id '{id}': use 1-128 of A-Z a-z 0-9 _ - . and not the '{CLIENT_ID_PREFIX}' prefix of registered clients"
                ));
            }
            let hash_ok = e.client_secret_sha256.len() == 43
                && e.client_secret_sha256
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
            if !hash_ok {
                return Err(format!(
                    "client_id '{id}': client_secret_sha256 must be the base64url SHA-256 of the secret"
                ));
            }
            if let Some(g) = e.grant_types.iter().find(|g| g.as_str() != GRANT_CLIENT_CREDENTIALS) {
                return Err(format!(
                    "client_id '{id}': grant type '{g}' is not for machine clients (client_credentials)"
                ));
            }
            if e.grant_types.is_empty() && !e.introspect {
                return Err(format!(
                    "client_id '{id}': neither a grant type nor introspect: it could do nothing"
                ));
            }
            if let Some(s) = e
                .scope
                .as_deref()
                .and_then(|s| s.split_whitespace().find(|s| !supported_scopes.iter().any(|x| x == s)))
            {
                return Err(format!("client_id '{id}': scope '{s}' is not one of AUTH_SCOPES"));
            }
            let record = ClientRecord {
                client_id: e.client_id.clone(),
                client_secret_hash: Some(e.client_secret_sha256),
                client_name: e.name,
                redirect_uris: Vec::new(),
                grant_types: e.grant_types,
                response_types: Vec::new(),
                token_endpoint_auth_method: AuthMethod::ClientSecretBasic,
                scope: e.scope,
                client_uri: None,
                logo_uri: None,
                software_id: None,
                software_version: None,
                created_at: 0,
                last_used_at: 0,
                metadata_document: false,
                machine: true,
                introspect: e.introspect,
            };
            if out.insert(e.client_id.clone(), record).is_some() {
                return Err(format!("client_id '{id}' appears twice"));
            }
        }
        Ok(Self(out))
    }
}

/// A new secret and the file entry for it (`auth-service machine-client`).
pub fn new_entry(
    client_id: &str,
    scope: Option<&str>,
    introspect: bool,
    client_credentials: bool,
) -> (String, serde_json::Value) {
    let secret = crate::crypto::random_token();
    let mut entry = serde_json::json!({
        "client_id": client_id,
        "client_secret_sha256": crate::crypto::sha256_b64(&secret),
        "grant_types": if client_credentials { vec![GRANT_CLIENT_CREDENTIALS] } else { Vec::new() },
        "introspect": introspect,
    });
    if let Some(s) = scope {
        entry["scope"] = serde_json::json!(s);
    }
    (secret, entry)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn scopes() -> Vec<String> {
        vec!["mcp".into()]
    }

    #[test]
    fn a_printed_entry_loads_and_its_secret_matches() {
        let (secret, entry) = new_entry("m_report", Some("mcp"), true, true);
        let m = MachineClients::parse(&serde_json::json!([entry]).to_string(), &scopes()).unwrap();
        let c = m.get("m_report").unwrap();
        assert!(c.machine && c.introspect);
        assert_eq!(
            c.client_secret_hash.as_deref(),
            Some(crate::crypto::sha256_b64(&secret).as_str())
        );
        assert!(c.allows_grant("client_credentials"));
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let h = crate::crypto::sha256_b64("s");
        let cases = [
            ("{}".to_owned(), "JSON array"),
            (
                format!(r#"[{{"client_id":"c_123","client_secret_sha256":"{h}"}}]"#),
                "prefix",
            ),
            (
                format!(r#"[{{"client_id":"https://x","client_secret_sha256":"{h}"}}]"#),
                "client_id",
            ),
            (
                r#"[{"client_id":"m","client_secret_sha256":"plain-secret"}]"#.to_owned(),
                "SHA-256",
            ),
            (
                format!(r#"[{{"client_id":"m","client_secret_sha256":"{h}","grant_types":["authorization_code"]}}]"#),
                "grant type",
            ),
            (
                format!(r#"[{{"client_id":"m","client_secret_sha256":"{h}","grant_types":[]}}]"#),
                "nothing",
            ),
            (
                format!(r#"[{{"client_id":"m","client_secret_sha256":"{h}","scope":"admin"}}]"#),
                "scope",
            ),
            (
                format!(
                    r#"[{{"client_id":"m","client_secret_sha256":"{h}"}},{{"client_id":"m","client_secret_sha256":"{h}"}}]"#
                ),
                "twice",
            ),
            (
                format!(r#"[{{"client_id":"m","client_secret_sha256":"{h}","secret":"x"}}]"#),
                "unknown field",
            ),
        ];
        for (text, want) in cases {
            let e = MachineClients::parse(&text, &scopes()).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
