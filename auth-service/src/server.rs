//! The OAuth server: state shared by the handlers, the metadata document, the
//! routes, and start-up (NATS, buckets, signing keys, vault service).

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::dev::Service;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, http::header, web};

use crate::clients::{Clients, ClientsConfig};
use crate::config::{Config, OAuthConfig};
use crate::grants::Grants;
use crate::key::SigningKey;
use crate::metrics::Metrics;
use crate::signing::SigningKeys;
use crate::store::Stores;
use crate::upstream::Upstream;
use crate::vault::Vault;
use crate::{Bound, RunError};

/// Everything a handler needs.
pub struct OAuth {
    /// Verbatim issuer identifier.
    pub issuer: String,
    pub cfg: OAuthConfig,
    pub stores: Stores,
    pub clients: web::Data<Clients>,
    pub upstream: Arc<Upstream>,
    pub grants: Grants,
    pub vault: Vault,
    pub keys: SigningKeys,
    pub metrics: Metrics,
    /// `__Host-` + `Secure` cookies (https issuer) or plain ones (http, local runs).
    pub secure_cookies: bool,
    /// Where the identity provider's login page lives (CSP `form-action` of the
    /// consent page, whose approval redirects there); learnt at the first login.
    pub upstream_origin: tokio::sync::OnceCell<Option<String>>,
    pub register_limiter: web::Data<crate::net::RateLimiter>,
    pub trusted_proxies: web::Data<crate::net::TrustedProxies>,
    /// Password checks (argon2) allowed to run at once (`AUTH_MAX_PASSWORD_CHECKS`);
    /// beyond it `/login` answers 503 at once instead of queueing CPU work.
    pub password_checks: Arc<tokio::sync::Semaphore>,
    /// `/authorize` and `/login` requests per minute per client address
    /// (`AUTH_BROWSER_RATE`).
    pub browser_limiter: crate::net::RateLimiter,
}

impl OAuth {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer.trim_end_matches('/'))
    }

    /// RFC 8414 authorization server metadata.
    pub fn metadata(&self) -> serde_json::Value {
        let auth_methods: Vec<&str> = crate::clients::AuthMethod::ALL.iter().map(|m| m.as_str()).collect();
        serde_json::json!({
            "issuer": self.issuer,
            "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.url("/token"),
            "registration_endpoint": self.url("/register"),
            "revocation_endpoint": self.url("/revoke"),
            "introspection_endpoint": self.url("/introspect"),
            "jwks_uri": self.url("/jwks.json"),
            "scopes_supported": self.cfg.scopes,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "client_id_metadata_document_supported": true,
            "authorization_response_iss_parameter_supported": true,
            "resource_parameter_supported": true,
        })
    }
}

/// Where a handler reads the signing keys' JWKS.
async fn jwks(oauth: web::Data<OAuth>) -> HttpResponse {
    cacheable(&oauth.keys.jwks())
}

async fn metadata(oauth: web::Data<OAuth>) -> HttpResponse {
    cacheable(&oauth.metadata())
}

fn cacheable(body: &serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CACHE_CONTROL,
            format!("public, max-age={}", crate::METADATA_MAX_AGE_SECS),
        ))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .json(body)
}

/// CORS preflight for the endpoints browser-based clients call directly.
async fn preflight() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "POST, GET, OPTIONS"))
        .insert_header((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "authorization, content-type, mcp-protocol-version",
        ))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
        .finish()
}

fn cors<F, R>(
    handler: F,
) -> impl Fn(HttpRequest, web::Bytes, web::Data<OAuth>) -> std::pin::Pin<Box<dyn std::future::Future<Output = HttpResponse>>>
+ Clone
+ 'static
where
    F: Fn(HttpRequest, web::Bytes, web::Data<OAuth>) -> R + Clone + 'static,
    R: std::future::Future<Output = HttpResponse> + 'static,
{
    move |req, body, oauth| {
        let fut = handler(req, body, oauth);
        Box::pin(async move {
            let mut resp = fut.await;
            resp.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                header::HeaderValue::from_static("*"),
            );
            resp
        })
    }
}

fn routes(cfg: &mut web::ServiceConfig, issuer_path: &str) {
    let mut metadata_paths = vec![
        "/.well-known/oauth-authorization-server".to_owned(),
        "/.well-known/openid-configuration".to_owned(),
    ];
    let p = issuer_path;
    if !p.is_empty() && !p.contains(['{', '}']) {
        metadata_paths.push(format!("/.well-known/oauth-authorization-server{p}"));
        metadata_paths.push(format!("/.well-known/openid-configuration{p}"));
        metadata_paths.push(format!("{p}/.well-known/openid-configuration"));
    }
    for path in metadata_paths {
        cfg.route(&path, web::get().to(metadata));
    }
    let prefix = if p.contains(['{', '}']) { "" } else { p };
    let at = |s: &str| format!("{prefix}{s}");
    cfg.route(&at("/jwks.json"), web::get().to(jwks))
        .route(&at("/register"), web::post().to(crate::clients::register_handler))
        .route(
            &at("/register"),
            web::method(actix_web::http::Method::OPTIONS).to(crate::clients::register_preflight),
        )
        .route(&at("/authorize"), web::get().to(crate::flow::authorize))
        .route(&at("/consent"), web::post().to(crate::flow::consent))
        .route(&at("/login"), web::get().to(crate::flow::login_page))
        .route(&at("/login"), web::post().to(crate::flow::login_submit))
        .route(&at("/callback"), web::get().to(crate::flow::callback))
        .route(&at("/token"), web::post().to(cors(crate::token::token)))
        .route(
            &at("/token"),
            web::method(actix_web::http::Method::OPTIONS).to(preflight),
        )
        .route(&at("/revoke"), web::post().to(cors(crate::token::revoke)))
        .route(
            &at("/revoke"),
            web::method(actix_web::http::Method::OPTIONS).to(preflight),
        )
        .route(&at("/introspect"), web::post().to(crate::token::introspect));
}

/// Connect to NATS, open the buckets and keys, start the vault service, bind the
/// public server on `listener` and the admin server. Call inside an actix system.
pub async fn bind_oauth(
    config: &Config,
    oauth_cfg: OAuthConfig,
    upstream: Upstream,
    dev_key: Option<SigningKey>,
    listener: TcpListener,
) -> Result<Bound, RunError> {
    let public_addr = listener.local_addr().map_err(RunError::Server)?;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    let nats_metrics = telemetry::NatsMetrics::register(&registry)?;
    let nats = nats_metrics
        .follow(async_nats::ConnectOptions::new())
        .name("auth-service")
        .retry_on_initial_connect()
        .connect(proto::nats::servers(&oauth_cfg.nats_url));
    let nats = tokio::time::timeout(crate::NATS_CONNECT_TIMEOUT, nats)
        .await
        .map_err(|_| {
            RunError::Nats(format!(
                "no answer from {} within {:?}",
                oauth_cfg.nats_url,
                crate::NATS_CONNECT_TIMEOUT
            ))
        })?
        .map_err(|e| RunError::Nats(e.to_string()))?;
    nats_metrics.connected();
    let js = async_nats::jetstream::new(nats.clone());
    let stores = Stores::open_with(&js, oauth_cfg.store_max_bytes, oauth_cfg.nats_replicas)
        .await
        .map_err(|e| RunError::Nats(e.to_string()))?;
    let keys = SigningKeys::open(
        stores.keys.clone(),
        oauth_cfg.sealer.clone(),
        oauth_cfg.key_rotation,
        oauth_cfg.key_publish_lead,
        oauth_cfg.access_ttl,
        dev_key,
    )
    .await
    .map_err(|e| RunError::Nats(e.to_string()))?;
    let grants = Grants {
        stores: stores.clone(),
        keys: keys.clone(),
        issuer: config.issuer.clone(),
        access_ttl: oauth_cfg.access_ttl,
        refresh_grace: oauth_cfg.refresh_grace,
        code_ttl: oauth_cfg.code_ttl,
    };
    let guarded = crate::net::GuardedClient::new(oauth_cfg.cimd_allow_private)
        .map_err(|e| RunError::Nats(format!("cannot build the metadata-document client: {e}")))?;
    let clients = Clients::new(
        stores.clients.clone(),
        guarded,
        ClientsConfig {
            register_per_minute: oauth_cfg.register_rate,
            allow_private_metadata: oauth_cfg.cimd_allow_private,
            supported_scopes: oauth_cfg.scopes.clone(),
            machines: oauth_cfg.machine_clients.clone(),
        },
    );
    let register_limiter = web::Data::new(clients.register_limiter());
    let clients = web::Data::new(clients);
    let trusted_proxies = web::Data::new(oauth_cfg.trusted_proxies.clone());
    let upstream = Arc::new(upstream);
    let vault = Vault::new(
        stores.clone(),
        oauth_cfg.sealer.clone(),
        upstream.clone(),
        grants.clone(),
        config.issuer.clone(),
    )
    .with_metrics(metrics.clone())
    .with_downstream(oauth_cfg.downstream.clone());
    let secure_cookies = config.issuer.starts_with("https://");
    let issuer_path = reqwest::Url::parse(&config.issuer)
        .map(|u| u.path().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    let max_password_checks = oauth_cfg.max_password_checks;
    let browser_rate = oauth_cfg.browser_rate;
    let state = web::Data::new(OAuth {
        issuer: config.issuer.clone(),
        cfg: oauth_cfg,
        stores,
        clients,
        upstream,
        grants,
        vault: vault.clone(),
        keys: keys.clone(),
        metrics: metrics.clone(),
        secure_cookies,
        upstream_origin: tokio::sync::OnceCell::new(),
        register_limiter: register_limiter.clone(),
        trusted_proxies: trusted_proxies.clone(),
        password_checks: Arc::new(tokio::sync::Semaphore::new(max_password_checks)),
        browser_limiter: crate::net::RateLimiter::new(browser_rate),
    });
    let clients_data = state.clients.clone();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    {
        let vault = vault.clone();
        let nats = nats.clone();
        let stop = stop_rx.clone();
        tasks.push((
            "vault",
            actix_web::rt::spawn(async move {
                if let Err(e) = vault.serve(nats, stop).await {
                    tracing::error!(error = %e, "vault service stopped");
                }
            }),
        ));
    }
    {
        let keys = keys.clone();
        let mut stop = stop_rx.clone();
        tasks.push((
            "signing-keys",
            actix_web::rt::spawn(async move {
                let mut tick = tokio::time::interval(crate::signing::RELOAD_INTERVAL);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if let Err(e) = keys.reload(crate::unix_now()).await {
                                tracing::warn!(error = %e, "cannot reload the signing keys");
                            }
                        }
                        _ = stop.changed() => break,
                    }
                }
            }),
        ));
    }

    let draining = Arc::new(AtomicBool::new(false));
    let ready: telemetry::Readiness = {
        let draining = draining.clone();
        let nats = nats.clone();
        Arc::new(move || {
            !draining.load(Ordering::SeqCst)
                && matches!(nats.connection_state(), async_nats::connection::State::Connected)
        })
    };
    let admin = telemetry::admin_server(config.admin_listen, registry, ready).map_err(|source| RunError::Bind {
        addr: config.admin_listen,
        source,
    })?;
    let server = HttpServer::new(move || {
        let metrics = metrics.clone();
        let issuer_path = issuer_path.clone();
        App::new()
            .app_data(state.clone())
            .app_data(clients_data.clone())
            .app_data(register_limiter.clone())
            .app_data(trusted_proxies.clone())
            .app_data(web::FormConfig::default().limit(crate::MAX_FORM_BYTES))
            .app_data(web::PayloadConfig::new(crate::MAX_FORM_BYTES))
            .wrap_fn(move |req, srv| {
                let fut = srv.call(req);
                let metrics = metrics.clone();
                async move {
                    let res = fut.await?;
                    let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
                    metrics
                        .http_requests
                        .with_label_values(&[route.as_str(), res.status().as_str()])
                        .inc();
                    Ok(res)
                }
            })
            .configure(|cfg| routes(cfg, &issuer_path))
    })
    .workers(crate::HTTP_WORKERS)
    .disable_signals()
    .shutdown_timeout(crate::DRAIN_TIMEOUT.as_secs())
    .listen(listener)
    .map_err(|source| RunError::Bind {
        addr: public_addr,
        source,
    })?
    .run();
    tracing::info!(listen = %public_addr, admin = %admin.addr, issuer = %config.issuer, "auth-service listening (OAuth server)");
    Ok(Bound::new(public_addr, server, admin, draining, Some((stop_tx, tasks))))
}
