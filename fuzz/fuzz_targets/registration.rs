//! `POST /register` (RFC 7591) bodies: the JSON read as `clients::http` does (size
//! cap, then `serde_json`), then `clients::metadata::validate` for a registration
//! (through `auth_service::fuzzing`), the registration response built from the
//! result, and the 400 the client gets otherwise. A registered client's redirect URIs
//! must each be allowed back at `/authorize` (`redirect_uri_allowed`), and a string
//! `probe` field is tried there as a redirect URI too.

#![no_main]

use actix_web::ResponseError;
use auth_service::clients::metadata::{GRANT_CLIENT_CREDENTIALS, SUPPORTED_GRANT_TYPES};
use auth_service::clients::{AuthMethod, ClientError, ClientRecord, MAX_REGISTRATION_BYTES, redirect_uri_allowed};
use auth_service::errors::OAuthError;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_REGISTRATION_BYTES {
        return;
    }
    let Ok(meta) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let scopes = vec!["mcp".to_owned(), "checklist.read".to_owned()];
    match auth_service::fuzzing::registration(&meta, &scopes) {
        Ok(record) => {
            check_record(&record);
            if let Some(probe) = meta.get("probe").and_then(Value::as_str) {
                probe_redirect(&record, probe);
            }
        }
        Err(e) => check_refusal(&e),
    }
});

fn check_record(record: &ClientRecord) {
    assert!(!record.grant_types.is_empty());
    assert!(
        record
            .grant_types
            .iter()
            .all(|g| SUPPORTED_GRANT_TYPES.contains(&g.as_str()))
    );
    assert!(!record.grant_types.iter().any(|g| g == GRANT_CLIENT_CREDENTIALS));
    for uri in &record.redirect_uris {
        assert_eq!(auth_service::fuzzing::check_redirect_uri(uri), Ok(()));
        assert!(redirect_uri_allowed(record, uri), "{uri:?} registered but not allowed");
    }
    if record.allows_grant("authorization_code") {
        assert!(!record.redirect_uris.is_empty());
    }
    assert_eq!(
        record.is_public(),
        record.token_endpoint_auth_method == AuthMethod::None
    );
    let body = record.metadata_json();
    assert!(serde_json::to_vec(&body).is_ok());
    assert!(body.get("client_secret").is_none());
}

/// A URI allowed at `/authorize` that is not registered as is must be a loopback
/// http URI in normal form, without a fragment.
fn probe_redirect(record: &ClientRecord, probe: &str) {
    if !redirect_uri_allowed(record, probe) || record.redirect_uris.iter().any(|r| r == probe) {
        return;
    }
    assert!(!probe.contains('#'), "{probe:?}");
    let url = url::Url::parse(probe).unwrap_or_else(|_| panic!("allowed but unparsable: {probe:?}"));
    assert_eq!(url.scheme(), "http", "{probe:?}");
    let host = url.host_str().unwrap_or("");
    assert!(
        ["127.0.0.1", "[::1]"].contains(&host) || host.eq_ignore_ascii_case("localhost"),
        "{probe:?} allowed on {host:?}"
    );
}

fn check_refusal(e: &ClientError) {
    assert!(
        matches!(
            e,
            ClientError::InvalidClientMetadata(_) | ClientError::InvalidRedirectUri(_)
        ),
        "{e:?}"
    );
    // Client-supplied values are clipped in messages.
    assert!(
        e.description().chars().count() <= 400,
        "{} chars",
        e.description().chars().count()
    );
    let resp = OAuthError::from(e).error_response();
    assert_eq!(resp.status().as_u16(), 400);
}
