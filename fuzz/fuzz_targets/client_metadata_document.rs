//! Client ID Metadata Documents: the client id URL (`cimd::parse_client_id_url`),
//! the fetched document's checks as `cimd.rs` applies them after the fetch (a JSON
//! object whose `client_id` is the URL exactly, no client secret), then
//! `metadata::validate` as a metadata document (through `auth_service::fuzzing`), and
//! the response's `Cache-Control` (`cimd::cache_ttl`).
//!
//! Input: `<client id url>\n<document>`; the first line is also the Cache-Control
//! value.

#![no_main]

use auth_service::clients::cimd::{CIMD_MAX_BYTES, CIMD_MAX_TTL, CIMD_MIN_TTL, cache_ttl, parse_client_id_url};
use auth_service::clients::{AuthMethod, ClientError, redirect_uri_allowed};
use libfuzzer_sys::fuzz_target;
use reqwest::header::{CACHE_CONTROL, HeaderMap, HeaderValue};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (head, doc) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[..0]),
    };
    if let Ok(value) = HeaderValue::from_bytes(head) {
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, value);
        let ttl = cache_ttl(&headers);
        assert!((CIMD_MIN_TTL..=CIMD_MAX_TTL).contains(&ttl), "{ttl:?}");
    }
    let Ok(client_id) = std::str::from_utf8(head) else {
        return;
    };
    let _ = parse_client_id_url(client_id, true);
    let Ok(url) = parse_client_id_url(client_id, false) else {
        return;
    };
    assert_eq!(url.as_str(), client_id);
    assert_eq!(url.scheme(), "https");
    assert!(url.fragment().is_none() && url.username().is_empty() && url.password().is_none());
    assert!(url.path() != "/" && !url.path().is_empty());
    assert!(auth_service::clients::cimd::is_url_client_id(client_id));
    if doc.len() > CIMD_MAX_BYTES {
        return;
    }
    if let Err(reason) = document(client_id, doc) {
        assert!(reason.chars().count() <= 500, "{} chars", reason.chars().count());
    }
});

/// `Clients::fetch_document` after a 200 with a JSON content type.
fn document(client_id: &str, body: &[u8]) -> Result<(), String> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| "document is not valid JSON".to_owned())?;
    let Some(obj) = doc.as_object() else {
        return Err("document must be a JSON object".into());
    };
    if obj.get("client_id").and_then(Value::as_str) != Some(client_id) {
        return Err("client_id in the document does not equal its url".into());
    }
    if obj.contains_key("client_secret") || obj.contains_key("client_secret_expires_at") {
        return Err("a metadata document must not contain a client secret".into());
    }
    let scopes = vec!["mcp".to_owned()];
    let record = auth_service::fuzzing::metadata_document(client_id, &doc, &scopes).map_err(|e| {
        assert!(
            matches!(
                e,
                ClientError::InvalidClientMetadata(_) | ClientError::InvalidRedirectUri(_)
            ),
            "{e:?}"
        );
        e.description()
    })?;
    assert_eq!(record.client_id, client_id);
    assert_eq!(
        record.token_endpoint_auth_method,
        AuthMethod::None,
        "a document is a public client"
    );
    assert!(record.is_public() && record.metadata_document && record.client_secret_hash.is_none());
    for uri in &record.redirect_uris {
        assert_eq!(auth_service::fuzzing::check_redirect_uri(uri), Ok(()));
        assert!(redirect_uri_allowed(&record, uri));
    }
    if let Some(probe) = obj.get("probe").and_then(Value::as_str)
        && redirect_uri_allowed(&record, probe)
        && !record.redirect_uris.iter().any(|r| r == probe)
    {
        let url = url::Url::parse(probe).unwrap_or_else(|_| panic!("allowed but unparsable: {probe:?}"));
        assert_eq!(url.scheme(), "http", "{probe:?} allowed but not registered");
    }
    let _ = record.metadata_json();
    Ok(())
}
