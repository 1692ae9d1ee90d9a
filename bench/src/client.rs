//! A minimal MCP Streamable HTTP client, built for measuring servers rather
//! than for general use: one HTTP/1.1 connection, one request at a time, or an
//! HTTP/2 connection without TLS (prior knowledge) that many sessions share;
//! answers read whole (JSON or SSE) and checked.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    client::conn::{http1, http2},
    header::{self, HeaderValue},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpStream;

/// The sessionful revision every benchmark speaks.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// The first stateless revision: no `initialize`, the version and the client's
/// capabilities ride in each request's `_meta`, `Mcp-Method`/`Mcp-Name` headers.
pub const STATELESS_VERSION: &str = "2026-07-28";
const HEADER_METHOD: &str = "mcp-method";
const HEADER_NAME: &str = "mcp-name";
const HEADER_SESSION: &str = "mcp-session-id";
const HEADER_PROTOCOL_VERSION: &str = "mcp-protocol-version";
const ACCEPT_POST: &str = "application/json, text/event-stream";
const ACCEPT_SSE: &str = "text/event-stream";
const CONTENT_JSON: &str = "application/json";
/// Longest error body quoted in an error message.
const QUOTED_BODY_MAX: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid url {url}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("invalid header value: {0}")]
    Header(#[from] header::InvalidHeaderValue),
    #[error("{method}: unexpected status {status}: {body}")]
    Status {
        method: &'static str,
        status: StatusCode,
        body: String,
    },
    #[error("{method}: unexpected content type {content_type:?}")]
    ContentType { method: &'static str, content_type: String },
    #[error("{method}: no JSON-RPC response with id {id} in the body")]
    NoResponse { method: &'static str, id: u64 },
    #[error("invalid JSON in a response: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{method}: JSON-RPC error {error}")]
    Rpc { method: &'static str, error: String },
    #[error("tools/call add({a}, {b}): expected {expected:?}, got {got}")]
    WrongSum {
        a: i64,
        b: i64,
        expected: String,
        got: String,
    },
}

/// Where requests go: a plain `http://host:port/path` URL and an optional bearer token.
#[derive(Debug, Clone)]
pub struct Target {
    addr: String,
    host: HeaderValue,
    path: String,
    auth: Option<HeaderValue>,
}

impl Target {
    /// The URL's path (and query).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn new(url: &str, token: Option<&str>) -> Result<Self, Error> {
        let bad = |reason| Error::Url {
            url: url.to_owned(),
            reason,
        };
        let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URI"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let auth = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()?;
        Ok(Self {
            addr,
            host: HeaderValue::from_str(authority.as_str())?,
            path,
            auth,
        })
    }
}

/// One HTTP/1.1 connection (no pool), or a share of an HTTP/2 one. Its driver
/// task ends when the connection closes or the last `Conn` on it is dropped.
pub struct Conn {
    target: Arc<Target>,
    sender: Sender,
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    /// Clones of one sender: requests (streams) multiplexed on one connection.
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, Error> {
        Ok(match self {
            Self::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Self::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        })
    }

    fn is_closed(&self) -> bool {
        match self {
            Self::H1(s) => s.is_closed(),
            Self::H2(s) => s.is_closed(),
        }
    }
}

impl Conn {
    pub async fn connect(target: Arc<Target>) -> Result<Self, Error> {
        Self::connect_from(target, None).await
    }

    /// [`Conn::connect`] from local address `source` (any port): clients spread
    /// over many loopback addresses (127.0.0.0/8) are not limited to one address's
    /// ~28k ephemeral ports towards one server port.
    pub async fn connect_from(target: Arc<Target>, source: Option<std::net::IpAddr>) -> Result<Self, Error> {
        let stream = Self::tcp(&target, source).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            target,
            sender: Sender::H1(sender),
        })
    }

    /// An HTTP/2 connection without TLS (prior knowledge) from `source`; [`Conn::share`]
    /// puts more sessions and streams on it.
    pub async fn connect_h2_from(target: Arc<Target>, source: Option<std::net::IpAddr>) -> Result<Self, Error> {
        let stream = Self::tcp(&target, source).await?;
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            target,
            sender: Sender::H2(sender),
        })
    }

    /// Another handle on this HTTP/2 connection (`None` for HTTP/1.1: one request at a time).
    pub fn share(&self) -> Option<Self> {
        match &self.sender {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Self {
                target: self.target.clone(),
                sender: Sender::H2(s.clone()),
            }),
        }
    }

    async fn tcp(target: &Target, source: Option<std::net::IpAddr>) -> Result<TcpStream, Error> {
        let connect_err = |source| Error::Connect {
            addr: target.addr.clone(),
            source,
        };
        let stream = match source {
            None => TcpStream::connect(&target.addr).await.map_err(connect_err)?,
            Some(ip) => {
                let peer = tokio::net::lookup_host(&target.addr)
                    .await
                    .map_err(connect_err)?
                    .next()
                    .ok_or_else(|| connect_err(std::io::Error::other("no address")))?;
                let socket = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()
                } else {
                    tokio::net::TcpSocket::new_v6()
                }
                .map_err(connect_err)?;
                socket.bind((ip, 0).into()).map_err(connect_err)?;
                socket.connect(peer).await.map_err(connect_err)?
            }
        };
        // Requests are small and latency is what we measure.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// True once the server (or an error) closed the connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Send `method path` with the target's host and token, `headers` and `body`
    /// (JSON when not empty): for requests the typed helpers do not cover (the
    /// legacy HTTP+SSE transport's `/sse` and `/messages`).
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&'static str, HeaderValue)],
        body: Bytes,
    ) -> Result<Response<Incoming>, Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(self.uri(path))
            .header(header::HOST, self.target.host.clone());
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, CONTENT_JSON);
        }
        if let Some(auth) = &self.target.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        for (name, value) in headers {
            req = req.header(*name, value.clone());
        }
        self.sender.send(req.body(Full::new(body))?).await
    }

    /// HTTP/2 wants an absolute URI (its :scheme and :authority); HTTP/1.1 the path.
    fn uri(&self, path: &str) -> String {
        match self.sender {
            Sender::H1(_) => path.to_owned(),
            Sender::H2(_) => format!("http://{}{path}", self.target.host.to_str().unwrap_or_default()),
        }
    }

    async fn send(
        &mut self,
        method: Method,
        accept: &'static str,
        session: Option<&HeaderValue>,
        body: Bytes,
    ) -> Result<Response<Incoming>, Error> {
        self.send_with(method, accept, session, None, body).await
    }

    /// [`Conn::send`]; `stateless`: the revision of a request without a session
    /// (its version header, and for 2026-07-28 the routing headers of `tools/call add`).
    async fn send_with(
        &mut self,
        method: Method,
        accept: &'static str,
        session: Option<&HeaderValue>,
        stateless: Option<&HeaderValue>,
        body: Bytes,
    ) -> Result<Response<Incoming>, Error> {
        let mut req = Request::builder()
            .method(method)
            .uri(self.uri(&self.target.path))
            .header(header::HOST, self.target.host.clone())
            .header(header::ACCEPT, accept);
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, CONTENT_JSON);
        }
        if let Some(auth) = &self.target.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        // The revision header goes on every request after initialize.
        if let Some(session) = session {
            req = req
                .header(HEADER_SESSION, session.clone())
                .header(HEADER_PROTOCOL_VERSION, PROTOCOL_VERSION);
        }
        if let Some(version) = stateless {
            req = req.header(HEADER_PROTOCOL_VERSION, version.clone());
            if version.as_bytes() >= STATELESS_VERSION.as_bytes() {
                req = req.header(HEADER_METHOD, "tools/call").header(HEADER_NAME, "add");
            }
        }
        self.sender.send(req.body(Full::new(body))?).await
    }
}

/// An MCP session on its own connection.
pub struct Session {
    conn: Conn,
    /// `None` when the server runs stateless and issued no session id.
    id: Option<HeaderValue>,
    next_id: u64,
    /// Requests without a session, at this revision ([`Session::stateless`]).
    stateless: Option<HeaderValue>,
}

impl Session {
    /// Connect, `initialize`, then `notifications/initialized`.
    pub async fn open(target: Arc<Target>) -> Result<Self, Error> {
        Self::open_on(Conn::connect(target).await?).await
    }

    /// [`Session::open`] on a connection already made (see [`Session::into_parts`]
    /// to use it again).
    pub async fn open_on(mut conn: Conn) -> Result<Self, Error> {
        let body = Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{PROTOCOL_VERSION}","capabilities":{{}},"clientInfo":{{"name":"mcp-cluster-bench","version":"0.1.0"}}}}}}"#
        ));
        let resp = conn.send(Method::POST, ACCEPT_POST, None, body).await?;
        let id = resp.headers().get(HEADER_SESSION).cloned();
        let message = read_response(resp, "initialize", 0).await?;
        result_of(message, "initialize")?;
        let mut session = Self {
            conn,
            id,
            next_id: 1,
            stateless: None,
        };
        let body = Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        let resp = session.post(body).await?;
        let status = resp.status();
        let text = collect(resp).await?;
        if !status.is_success() {
            return Err(Error::Status {
                method: "notifications/initialized",
                status,
                body: quote(&text),
            });
        }
        Ok(session)
    }

    /// Connect only: every request stands alone at revision `version` (no
    /// `initialize`, no session id). At 2026-07-28 or later the version and the
    /// client's capabilities also ride in each request's `_meta`.
    pub async fn stateless(target: Arc<Target>, version: &str) -> Result<Self, Error> {
        Ok(Self {
            conn: Conn::connect(target).await?,
            id: None,
            next_id: 1,
            stateless: Some(HeaderValue::from_str(version)?),
        })
    }

    pub fn id(&self) -> Option<&HeaderValue> {
        self.id.as_ref()
    }

    /// The session's connection and id: the connection can carry another session.
    pub fn into_parts(self) -> (Conn, Option<HeaderValue>) {
        (self.conn, self.id)
    }

    /// True when the connection is gone and [`Session::reconnect`] is needed.
    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Keep the session, replace its connection.
    pub async fn reconnect(&mut self) -> Result<(), Error> {
        self.conn = Conn::connect(self.conn.target.clone()).await?;
        Ok(())
    }

    async fn post(&mut self, body: Bytes) -> Result<Response<Incoming>, Error> {
        self.conn
            .send_with(
                Method::POST,
                ACCEPT_POST,
                self.id.as_ref(),
                self.stateless.as_ref(),
                body,
            )
            .await
    }

    /// `tools/call add {a, b}`; an answer other than the sum as text is an error.
    pub async fn call_add(&mut self, a: i64, b: i64) -> Result<(), Error> {
        const METHOD: &str = "tools/call";
        let id = self.next_id;
        self.next_id += 1;
        let meta = match &self.stateless {
            Some(v) if v.as_bytes() >= STATELESS_VERSION.as_bytes() => format!(
                r#","_meta":{{"io.modelcontextprotocol/protocolVersion":"{}","io.modelcontextprotocol/clientCapabilities":{{}}}}"#,
                v.to_str().unwrap_or(STATELESS_VERSION)
            ),
            _ => String::new(),
        };
        let body = Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"add","arguments":{{"a":{a},"b":{b}}}{meta}}}}}"#
        ));
        let resp = self.post(body).await?;
        let result = result_of(read_response(resp, METHOD, id).await?, METHOD)?;
        let expected = (a + b).to_string();
        let text = result
            .get("content")
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("text"))
            .and_then(Value::as_str);
        let is_error = result.get("isError").and_then(Value::as_bool) == Some(true);
        if is_error || text != Some(expected.as_str()) {
            return Err(Error::WrongSum {
                a,
                b,
                expected,
                got: quote(result.to_string().as_bytes()),
            });
        }
        Ok(())
    }

    /// DELETE the session (best effort; servers may refuse).
    pub async fn close(mut self) -> Result<(), Error> {
        let Some(id) = self.id.take() else {
            return Ok(());
        };
        if self.conn.is_closed() {
            self.reconnect().await?;
        }
        let resp = self
            .conn
            .send(Method::DELETE, ACCEPT_POST, Some(&id), Bytes::new())
            .await?;
        let _ = collect(resp).await?;
        Ok(())
    }
}

/// Open the standalone GET stream of session `id` on a new connection of its
/// own. The caller holds the returned connection and response body for as
/// long as the stream should stay open.
pub async fn open_stream(target: Arc<Target>, id: &HeaderValue) -> Result<(Conn, Response<Incoming>), Error> {
    open_stream_on(Conn::connect(target).await?, id).await
}

/// [`open_stream`] on a connection already made (e.g. [`Conn::connect_from`]).
pub async fn open_stream_on(mut conn: Conn, id: &HeaderValue) -> Result<(Conn, Response<Incoming>), Error> {
    let resp = conn.send(Method::GET, ACCEPT_SSE, Some(id), Bytes::new()).await?;
    check_status(&resp, "GET /mcp")?;
    if !is_sse(&resp) {
        return Err(Error::ContentType {
            method: "GET /mcp",
            content_type: content_type(&resp).to_owned(),
        });
    }
    Ok((conn, resp))
}

fn content_type(resp: &Response<Incoming>) -> &str {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn is_sse(resp: &Response<Incoming>) -> bool {
    content_type(resp).starts_with(ACCEPT_SSE)
}

fn check_status(resp: &Response<Incoming>, method: &'static str) -> Result<(), Error> {
    if resp.status() == StatusCode::OK {
        Ok(())
    } else {
        Err(Error::Status {
            method,
            status: resp.status(),
            body: String::new(),
        })
    }
}

async fn collect(resp: Response<Incoming>) -> Result<Bytes, Error> {
    Ok(resp.into_body().collect().await?.to_bytes())
}

fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(QUOTED_BODY_MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

/// Read a POST answer whole and return the JSON-RPC response with `id`,
/// whether it came as `application/json` or inside an SSE stream.
async fn read_response(resp: Response<Incoming>, method: &'static str, id: u64) -> Result<Value, Error> {
    let status = resp.status();
    let sse = is_sse(&resp);
    let json = content_type(&resp).starts_with(CONTENT_JSON);
    let body = collect(resp).await?;
    if status != StatusCode::OK {
        return Err(Error::Status {
            method,
            status,
            body: quote(&body),
        });
    }
    let found = if sse {
        find_in_sse(&body, id)?
    } else if json {
        Some(serde_json::from_slice::<Value>(&body)?).filter(|v| is_response_to(v, id))
    } else {
        return Err(Error::ContentType {
            method,
            content_type: quote(&body),
        });
    };
    found.ok_or(Error::NoResponse { method, id })
}

fn is_response_to(message: &Value, id: u64) -> bool {
    message.get("id").and_then(Value::as_u64) == Some(id)
        && (message.get("result").is_some() || message.get("error").is_some())
}

/// Scan SSE events (`data:` lines joined per event) for the response with `id`.
fn find_in_sse(body: &[u8], id: u64) -> Result<Option<Value>, Error> {
    let text = String::from_utf8_lossy(body);
    let mut data = String::new();
    // A trailing empty line flushes the last event even if the server omitted it.
    for line in text.lines().chain(std::iter::once("")) {
        if line.is_empty() {
            if !data.trim().is_empty() {
                let message: Value = serde_json::from_str(&data)?;
                if is_response_to(&message, id) {
                    return Ok(Some(message));
                }
            }
            data.clear();
        } else if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    Ok(None)
}

fn result_of(mut message: Value, method: &'static str) -> Result<Value, Error> {
    if let Some(error) = message.get("error") {
        return Err(Error::Rpc {
            method,
            error: error.to_string(),
        });
    }
    Ok(message.get_mut("result").map(Value::take).unwrap_or(Value::Null))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_response_among_sse_events() {
        let body = b"id: 0\nretry: 500\ndata: \n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\r\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[]}}";
        let found = find_in_sse(body, 7).unwrap().unwrap();
        assert_eq!(found["id"], 7);
        assert!(find_in_sse(body, 8).unwrap().is_none());
    }

    #[test]
    fn parses_target_urls() {
        let t = Target::new("http://127.0.0.1:8788/mcp", Some("tok")).unwrap();
        assert_eq!(t.addr, "127.0.0.1:8788");
        assert_eq!(t.path, "/mcp");
        assert_eq!(t.host, "127.0.0.1:8788");
        assert_eq!(t.auth.unwrap(), "Bearer tok");
        assert!(Target::new("https://example.com/mcp", None).is_err());
    }
}
