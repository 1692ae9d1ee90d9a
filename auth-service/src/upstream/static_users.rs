//! The static-users provider: people listed in a JSON file with argon2id password
//! hashes, for the local run and tests. It has no remote side; the auth-service's
//! own `/login` page calls [`StaticUsers::verify`].
//!
//! ```json
//! {"users": [{"username": "alice", "password_hash": "$argon2id$v=19$...",
//!             "sub": "alice", "email": "alice@example.com", "name": "Alice Example",
//!             "permissions": ["image_generation"], "groups": ["engineering"], "org": null}]}
//! ```
//!
//! The file is read and checked once at start. An unknown username costs the same
//! argon2 work as a wrong password (a dummy hash with the users' parameters is
//! verified), so response time does not tell who exists. Verification is CPU-bound
//! (tens of milliseconds): call it from a blocking thread.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2};
use serde::Deserialize;

use super::config::ENV_STATIC_USERS_FILE;
use super::{Identity, UpstreamError};
use crate::config::ConfigError;

/// Longest password we hash (argon2 pre-hashes, but unbounded input is unbounded work).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest username.
pub const MAX_USERNAME_BYTES: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    username: String,
    password_hash: String,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    org: Option<String>,
}

struct User {
    password_hash: String,
    identity: Identity,
}

/// The users of the static provider. Cheap to clone.
#[derive(Clone)]
pub struct StaticUsers {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    users: HashMap<String, User>,
    /// Verified for unknown usernames: same parameters as the users', matches nothing.
    dummy_hash: String,
}

impl std::fmt::Debug for StaticUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticUsers")
            .field("path", &self.inner.path)
            .field("users", &self.inner.users.len())
            .finish()
    }
}

fn config_error(path: &Path, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(ENV_STATIC_USERS_FILE, format!("{}: {reason}", path.display()))
}

fn random_salt() -> Result<SaltString, argon2::password_hash::Error> {
    let bytes: [u8; 16] = rand::random();
    SaltString::encode_b64(&bytes)
}

/// An argon2id PHC string for `password`, with the crate's default (OWASP) cost:
/// m=19 MiB, t=2, p=1. What `auth-service hash-password` prints.
pub fn hash_password(password: &str) -> Result<String, UpstreamError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(UpstreamError::Invalid(format!(
            "password must be 1 to {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    let salt = random_salt().map_err(|e| UpstreamError::Invalid(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UpstreamError::Invalid(format!("cannot hash password: {e}")))
}

/// A hash with `template`'s algorithm and parameters that no password matches.
fn dummy_hash(template: &PasswordHash<'_>) -> Result<String, argon2::password_hash::Error> {
    let salt = random_salt()?;
    let out: [u8; 32] = rand::random();
    let dummy = PasswordHash {
        algorithm: template.algorithm,
        version: template.version,
        params: template.params.clone(),
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out)?),
    };
    Ok(dummy.to_string())
}

/// Work factor of a hash's parameters, to pick the dummy's.
fn cost(h: &PasswordHash<'_>) -> u64 {
    ["m", "t", "p"]
        .iter()
        .map(|k| h.params.get_decimal(*k).unwrap_or(1) as u64)
        .product()
}

fn valid_text(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.trim() == s && !s.chars().any(char::is_control)
}

impl StaticUsers {
    /// Read and check the users file. Errors name `AUTH_STATIC_USERS_FILE`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| config_error(path, e))?;
        Self::from_json(&text, path)
    }

    /// Check a users document; `path` is only for messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: UsersFile =
            serde_json::from_str(text).map_err(|e| config_error(path, format!("not a users file ({e})")))?;
        let mut users = HashMap::new();
        let mut seen_names = HashSet::new();
        let mut seen_subs = HashSet::new();
        let mut template: Option<(u64, String)> = None;
        for (i, u) in file.users.into_iter().enumerate() {
            let at = |what: &str| config_error(path, format!("user #{}: {what}", i + 1));
            if !valid_text(&u.username, MAX_USERNAME_BYTES) {
                return Err(at(
                    "username must be 1-256 printable characters without surrounding spaces",
                ));
            }
            if !seen_names.insert(u.username.to_lowercase()) {
                return Err(at(&format!("username '{}' appears twice", u.username)));
            }
            let parsed = PasswordHash::new(&u.password_hash)
                .map_err(|e| at(&format!("password_hash is not a PHC string ({e})")))?;
            if parsed.algorithm != Algorithm::Argon2id.ident() || parsed.hash.is_none() {
                return Err(at(
                    "password_hash must be an argon2id hash (auth-service hash-password)",
                ));
            }
            // The parameters must be ones argon2 accepts, or verify would always fail.
            argon2::Params::try_from(&parsed)
                .map_err(|e| at(&format!("password_hash parameters are invalid ({e})")))?;
            let c = cost(&parsed);
            if template.as_ref().is_none_or(|(best, _)| c > *best) {
                template = Some((c, u.password_hash.clone()));
            }
            let sub = u.sub.unwrap_or_else(|| u.username.clone());
            if !valid_text(&sub, MAX_USERNAME_BYTES) {
                return Err(at("sub must be 1-256 printable characters"));
            }
            if !seen_subs.insert(sub.clone()) {
                return Err(at(&format!("sub '{sub}' appears twice")));
            }
            let list_ok = |l: &[String]| l.iter().all(|s| valid_text(s, 256));
            if !list_ok(&u.permissions) || !list_ok(&u.groups) {
                return Err(at("permissions and groups must be non-empty strings"));
            }
            let identity = Identity {
                sub,
                email: u.email.filter(|e| !e.is_empty()),
                name: u.name.filter(|n| !n.is_empty()),
                permissions: u.permissions,
                groups: u.groups,
                org: u.org.filter(|o| !o.is_empty()),
            };
            users.insert(
                u.username,
                User {
                    password_hash: u.password_hash,
                    identity,
                },
            );
        }
        let dummy_hash = match template {
            Some((_, phc)) => {
                let parsed = PasswordHash::new(&phc).map_err(|e| config_error(path, e))?;
                dummy_hash(&parsed).map_err(|e| config_error(path, e))?
            }
            None => {
                tracing::warn!(path = %path.display(), "static users file lists nobody");
                // Default parameters, as hash_password makes them.
                let salt = random_salt().map_err(|e| config_error(path, e))?;
                let template = format!(
                    "$argon2id$v=19$m=19456,t=2,p=1${}$AAAAAAAAAAAAAAAAAAAAAA",
                    salt.as_str()
                );
                let parsed = PasswordHash::new(&template).map_err(|e| config_error(path, e))?;
                dummy_hash(&parsed).map_err(|e| config_error(path, e))?
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                users,
                dummy_hash,
            }),
        })
    }

    /// How many users the file lists.
    pub fn len(&self) -> usize {
        self.inner.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.users.is_empty()
    }

    /// The user's identity when `password` is theirs. Unknown users and wrong
    /// passwords take the same time and both give `None`. CPU-bound: run it on a
    /// blocking thread (`web::block`).
    pub fn verify(&self, username: &str, password: &str) -> Option<Identity> {
        let user = self.inner.users.get(username);
        let phc = user.map_or(self.inner.dummy_hash.as_str(), |u| u.password_hash.as_str());
        // Oversized passwords still cost one (cheap-input) verification.
        let too_long = password.len() > MAX_PASSWORD_BYTES;
        let input = if too_long { "" } else { password };
        let ok = PasswordHash::new(phc)
            .map(|h| Argon2::default().verify_password(input.as_bytes(), &h).is_ok())
            .unwrap_or(false);
        match user {
            Some(u) if ok && !too_long => Some(u.identity.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A cheap argon2id hash, so debug-build tests stay fast.
    fn cheap_hash(password: &str) -> String {
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let a = Argon2::new(Algorithm::Argon2id, argon2::Version::V0x13, params);
        a.hash_password(password.as_bytes(), &random_salt().unwrap())
            .unwrap()
            .to_string()
    }

    fn users() -> StaticUsers {
        let doc = serde_json::json!({"users": [
            {"username": "carol", "password_hash": cheap_hash("right"), "email": "carol@example.com",
             "name": "Carol", "permissions": ["image_generation"], "groups": ["eng"], "org": "acme"},
            {"username": "dave", "password_hash": cheap_hash("dave-pw"), "sub": "user-42"}
        ]});
        StaticUsers::from_json(&doc.to_string(), Path::new("users.json")).unwrap()
    }

    #[test]
    fn static_users_verify_right_password() {
        let u = users();
        let id = u.verify("carol", "right").unwrap();
        assert_eq!(id.sub, "carol");
        assert_eq!(id.email.as_deref(), Some("carol@example.com"));
        assert_eq!(id.permissions, vec!["image_generation"]);
        assert_eq!(id.groups, vec!["eng"]);
        assert_eq!(id.org.as_deref(), Some("acme"));
        assert_eq!(u.verify("dave", "dave-pw").unwrap().sub, "user-42");
    }

    #[test]
    fn static_users_reject_wrong_password_and_unknown_user() {
        let u = users();
        assert_eq!(u.verify("carol", "wrong"), None);
        assert_eq!(u.verify("carol", ""), None);
        assert_eq!(u.verify("Carol", "right"), None);
        assert_eq!(u.verify("nobody", "right"), None);
        assert_eq!(u.verify("carol", &"x".repeat(5000)), None);
    }

    #[test]
    fn unknown_users_cost_a_real_verification() {
        let u = users();
        let dummy = PasswordHash::new(&u.inner.dummy_hash).unwrap();
        assert_eq!(dummy.algorithm, Algorithm::Argon2id.ident());
        assert_eq!(dummy.params.get_decimal("m"), Some(64));
        assert_eq!(dummy.params.get_decimal("t"), Some(1));
    }

    #[test]
    fn static_users_file_errors_name_the_setting() {
        let bad = [
            r#"{"users": [{"username": "a", "password_hash": "plain"}]}"#.to_owned(),
            r#"{"users": [{"username": "", "password_hash": "x"}]}"#.to_owned(),
            r#"{"users": [{"username": "a", "password_hash": "x", "typo": 1}]}"#.to_owned(),
            format!(
                r#"{{"users": [{{"username": "a", "password_hash": "{0}"}}, {{"username": "A", "password_hash": "{0}"}}]}}"#,
                cheap_hash("p")
            ),
            format!(
                r#"{{"users": [{{"username": "a", "password_hash": "{0}", "sub": "s"}}, {{"username": "b", "password_hash": "{0}", "sub": "s"}}]}}"#,
                cheap_hash("p")
            ),
            // argon2i is not argon2id
            r#"{"users": [{"username": "a", "password_hash": "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA"}]}"#.to_owned(),
            "not json".to_owned(),
        ];
        for doc in bad {
            let err = StaticUsers::from_json(&doc, Path::new("u.json")).unwrap_err();
            assert_eq!(err.setting, ENV_STATIC_USERS_FILE, "{doc}");
        }
        let err = StaticUsers::load(Path::new("/nonexistent/users.json")).unwrap_err();
        assert_eq!(err.setting, ENV_STATIC_USERS_FILE);
        assert!(
            err.to_string()
                .starts_with("invalid AUTH_STATIC_USERS_FILE: /nonexistent/users.json")
        );
    }

    #[test]
    fn hash_password_makes_argon2id_that_verifies() {
        assert!(hash_password("").is_err());
        // Default cost is slow in debug builds: one hash, one verify.
        let phc = hash_password("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        let doc = serde_json::json!({"users": [{"username": "e", "password_hash": phc}]});
        let u = StaticUsers::from_json(&doc.to_string(), Path::new("x")).unwrap();
        assert_eq!(u.verify("e", "s3cret").unwrap().sub, "e");
    }

    #[test]
    fn the_local_sample_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/static-users.json");
        let u = StaticUsers::load(&path).unwrap();
        assert_eq!(u.len(), 2);
        let alice = u.verify("alice", "alice-dev-password").unwrap();
        assert_eq!(alice.email.as_deref(), Some("alice@example.com"));
        assert_eq!(alice.name.as_deref(), Some("Alice Example"));
        assert_eq!(alice.permissions, vec!["image_generation"]);
        assert_eq!(alice.groups, vec!["engineering"]);
    }
}
