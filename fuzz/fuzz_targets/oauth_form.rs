//! The auth-service's reading of `/token`, `/revoke` and `/introspect` bodies and
//! client authentication: `token::parse_form` (form-urlencoded, a repeated parameter
//! is `invalid_request`), then `clients::client_credentials`
//! (HTTP Basic with form-urlencoded id and secret, or the form's `client_id` and
//! `client_secret`), the `resource` check, and the OAuth error the client gets.
//! Also the query and form extractors `/authorize`, `/consent`, `/login` and
//! `/callback` use on the same bytes.
//!
//! Input: `<Authorization header value>\n<form body>`; no newline: no header.

#![no_main]

use std::collections::HashMap;

use actix_web::ResponseError;
use actix_web::http::header::HeaderValue;
use actix_web::test::TestRequest;
use auth_service::clients::{AuthMethod, ClientError, client_credentials};
use auth_service::errors::{Code, OAuthError};
use libfuzzer_sys::fuzz_target;

const RESOURCE: &str = "https://mcp.example/mcp";

fuzz_target!(|data: &[u8]| {
    let (authorization, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    let form = match auth_service::token::parse_form(body) {
        Ok(form) => form,
        Err(e) => {
            assert_eq!(e.code, Code::InvalidRequest);
            render(&e);
            return;
        }
    };
    let mut req = TestRequest::default().insert_header(("content-type", "application/x-www-form-urlencoded"));
    let mut basic_tried = false;
    if let Some(value) = authorization.and_then(|a| HeaderValue::from_bytes(a).ok()) {
        req = req.insert_header(("authorization", value));
        basic_tried = true;
    }
    let req = req.to_http_request();
    match client_credentials(&req, &form) {
        Ok((id, secret, method)) => {
            assert!(!id.is_empty(), "a client id is never empty");
            assert!(
                secret.as_deref().is_none_or(|s| !s.is_empty()),
                "an empty secret counts as none"
            );
            match method {
                AuthMethod::None => assert!(secret.is_none()),
                AuthMethod::ClientSecretPost => assert!(secret.is_some()),
                AuthMethod::ClientSecretBasic => {}
            }
        }
        Err(e) => {
            // The refusal does not depend on the secret's value (it never echoes it).
            if form.get("client_secret").is_some_and(|s| !s.is_empty()) {
                let mut other = form.clone();
                other.insert("client_secret".to_owned(), "other-secret".to_owned());
                assert_eq!(client_credentials(&req, &other).err(), Some(e.clone()));
            }
            check_client_error(&e);
            render(&OAuthError::from(&e).basic(basic_tried));
        }
    }
    if let Some(resource) = form.get("resource") {
        let _ = auth_service::flow::resource_matches(RESOURCE, resource);
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = actix_web::web::Query::<Vec<(String, String)>>::from_query(text);
        let _ = actix_web::web::Query::<HashMap<String, String>>::from_query(text);
    }
});

fn check_client_error(e: &ClientError) {
    assert!(
        matches!(e, ClientError::InvalidClient(_) | ClientError::InvalidRequest(_)),
        "client authentication fails with invalid_client or invalid_request only: {e:?}"
    );
}

fn render(e: &OAuthError) {
    let resp = e.error_response();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    let bytes = futures::executor::block_on(actix_web::body::to_bytes(resp.into_body()))
        .unwrap_or_else(|_| panic!("error body is readable"));
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("the error body is JSON");
    assert_eq!(v["error"], e.code.name());
}
