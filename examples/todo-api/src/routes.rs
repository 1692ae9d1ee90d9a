//! The HTTP API. Each handler checks the token first, then reads the body, then
//! touches the store, so an anonymous caller learns nothing about bodies or ids.
//!
//! | route                 | scope        | success                  |
//! |-----------------------|--------------|--------------------------|
//! | `GET /todos`          | `todo:read`  | 200 `{"todos": [...]}`   |
//! | `POST /todos`         | `todo:write` | 201 the todo             |
//! | `PATCH /todos/{id}`   | `todo:write` | 200 the todo             |
//! | `DELETE /todos/{id}`  | `todo:write` | 204                      |
//! | `GET /healthz`        | none         | 200 `{"status": "ok"}`   |

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use futures::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::auth::{AuthError, Authenticator, Owner, Scope};
use crate::error::ApiError;
use crate::store::{Patch, Store};

/// Largest request body read, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest time a client may take to send its body.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest title, in characters, after trimming.
pub const MAX_TITLE_CHARS: usize = 500;

/// What every handler shares.
pub struct AppState {
    pub auth: Authenticator,
    pub store: Store,
}

/// The routes; unknown paths are the app's `default_service` ([`not_found`]).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .service(
            web::resource("/todos")
                .route(web::get().to(list))
                .route(web::post().to(create))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/todos/{id}")
                .route(web::patch().to(update))
                .route(web::delete().to(delete))
                .default_service(web::to(method_not_allowed)),
        );
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTodo {
    title: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    title: Option<String>,
    completed: Option<bool>,
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

pub async fn not_found() -> HttpResponse {
    ApiError::NoRoute.error_response()
}

async fn method_not_allowed() -> HttpResponse {
    ApiError::MethodNotAllowed.error_response()
}

async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let owner = authorize(&req, &state, Scope::Read).await?;
    let todos = state.store.list(&owner).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "todos": todos })))
}

async fn create(req: HttpRequest, state: web::Data<AppState>, body: web::Payload) -> Result<HttpResponse, ApiError> {
    let owner = authorize(&req, &state, Scope::Write).await?;
    let new: NewTodo = read_json(body).await?;
    let todo = state.store.create(&owner, valid_title(&new.title)?).await?;
    Ok(HttpResponse::Created().json(todo))
}

async fn update(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let owner = authorize(&req, &state, Scope::Write).await?;
    let change: Change = read_json(body).await?;
    if change.title.is_none() && change.completed.is_none() {
        return Err(ApiError::BadRequest(
            "nothing to change: give title and/or completed".into(),
        ));
    }
    let patch = Patch {
        title: change.title.as_deref().map(valid_title).transpose()?,
        completed: change.completed,
    };
    let id = todo_id(&id)?;
    match state.store.update(&owner, id, &patch).await? {
        Some(todo) => Ok(HttpResponse::Ok().json(todo)),
        None => Err(ApiError::NoSuchTodo),
    }
}

async fn delete(req: HttpRequest, state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let owner = authorize(&req, &state, Scope::Write).await?;
    if state.store.delete(&owner, todo_id(&id)?).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::NoSuchTodo)
    }
}

async fn authorize(req: &HttpRequest, state: &AppState, scope: Scope) -> Result<Owner, ApiError> {
    let header = match req.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| AuthError::Invalid("malformed authorization header"))?,
        ),
    };
    let result = state.auth.authorize(header, scope).await;
    if let Err(err) = &result {
        tracing::debug!(reason = %err, "request refused");
    }
    Ok(result?)
}

/// An id that is not a UUID names no todo.
fn todo_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NoSuchTodo)
}

fn valid_title(title: &str) -> Result<String, ApiError> {
    let title = title.trim();
    let chars = title.chars().count();
    if chars == 0 || chars > MAX_TITLE_CHARS {
        return Err(ApiError::BadRequest(format!(
            "title must be 1 to {MAX_TITLE_CHARS} characters (after trimming)"
        )));
    }
    Ok(title.to_owned())
}

/// The body, a JSON object of at most [`MAX_BODY_BYTES`], received within
/// [`BODY_READ_TIMEOUT`].
async fn read_json<T: DeserializeOwned>(payload: web::Payload) -> Result<T, ApiError> {
    let body = tokio::time::timeout(BODY_READ_TIMEOUT, read_body(payload))
        .await
        .map_err(|_| ApiError::BodyTimeout)??;
    let invalid = |e: serde_json::Error| ApiError::BadRequest(format!("invalid JSON body: {e}"));
    // An object only: serde would also take `["title"]` for a struct.
    match serde_json::from_slice(&body).map_err(invalid)? {
        value @ serde_json::Value::Object(_) => serde_json::from_value(value).map_err(invalid),
        _ => Err(ApiError::BadRequest("the body must be a JSON object".into())),
    }
}

async fn read_body(mut payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::TooLarge(MAX_BODY_BYTES));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(valid_title("  buy milk \n").unwrap(), "buy milk");
        assert!(valid_title("   ").is_err());
        assert!(valid_title("").is_err());
        assert_eq!(valid_title(&"é".repeat(MAX_TITLE_CHARS)).unwrap().chars().count(), 500);
        assert!(valid_title(&"é".repeat(MAX_TITLE_CHARS + 1)).is_err());
    }
}
