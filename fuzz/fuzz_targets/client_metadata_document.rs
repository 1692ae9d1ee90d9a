//! Client ID Metadata Documents: the client id URL (`cimd::parse_client_id_url`),
//! what a fetched document becomes (`cimd::document_record`: a JSON object whose
//! `client_id` is the URL exactly, no client secret, valid metadata), and the
//! response's `Cache-Control` (`cimd::cache_ttl`).
//!
//! Input: `<client id url>\n<document>`; the first line is also the Cache-Control
//! value.

#![no_main]

use auth_service::clients::cimd::{
    CIMD_MAX_BYTES, CIMD_MAX_TTL, CIMD_MIN_TTL, cache_ttl, document_record, parse_client_id_url,
};
use auth_service::clients::{AuthMethod, redirect_uri_allowed};
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
    let scopes = vec!["mcp".to_owned()];
    let record = document_record(client_id, body, &scopes, 0)?;
    let doc: Value = serde_json::from_slice(body).unwrap_or_else(|_| panic!("accepted but not JSON"));
    let obj = doc.as_object().unwrap_or_else(|| panic!("accepted but not an object"));
    assert!(!obj.contains_key("client_secret") && !obj.contains_key("client_secret_expires_at"));
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
