//! `generateImage`: a PNG for a prompt, for holders of the `image_generation`
//! permission or an allow-listed e-mail (`ALLOWED_EMAILS`), as in the WorkOS and
//! Cloudflare Access seeds.
//!
//! The backend is an OpenAI-compatible images endpoint when `IMAGE_API_URL` is set
//! (`IMAGE_API_KEY`, `IMAGE_MODEL`), else the built-in renderer ([`crate::render`])
//! that draws the prompt, so the picture visibly depends on it. Limits: prompt
//! length ([`MAX_PROMPT_CHARS`]), the sizes of [`SIZES`], a time limit
//! (`IMAGE_TIMEOUT`), the size of an API answer ([`MAX_API_RESPONSE_BYTES`]).
//! Progress notifications go out while it works when the client asked for them;
//! `notifications/cancelled` stops the work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rmcp::model::{CallToolResult, ContentBlock, Tool, ToolAnnotations};
use serde_json::{Value, json};

use crate::policy::Access;
use crate::toolbox::{McpTool, ToolCx, ToolFuture, schema, tool_error};

pub(crate) const NAME: &str = "generateImage";
/// The permission that grants the tool (WorkOS seed).
pub const PERMISSION: &str = "image_generation";
/// Longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 1000;
/// Sizes offered; the first is the default.
pub const SIZES: &[&str] = &["512x512", "256x256", "1024x1024"];
/// Largest answer read from an images API (a base64 PNG of 1024×1024 fits).
pub const MAX_API_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Default of `IMAGE_TIMEOUT`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where pictures come from.
#[derive(Clone, Debug)]
pub enum Backend {
    /// Draw the prompt ([`crate::render`]).
    BuiltIn,
    /// An OpenAI-compatible `POST {url}/images/generations`.
    Api {
        url: String,
        key: Option<String>,
        model: String,
        http: reqwest::Client,
    },
}

pub struct GenerateImage {
    backend: Backend,
    allowed_emails: Vec<String>,
    timeout: Duration,
}

impl GenerateImage {
    pub fn new(backend: Backend, allowed_emails: Vec<String>, timeout: Duration) -> Self {
        Self {
            backend,
            allowed_emails,
            timeout,
        }
    }
}

impl McpTool for GenerateImage {
    fn definition(&self) -> Tool {
        let input = schema(json!({
            "type": "object",
            "properties": {
                "prompt": {
                    "type": "string",
                    "description": "What the picture should show",
                    "maxLength": MAX_PROMPT_CHARS,
                },
                "size": { "type": "string", "enum": SIZES, "default": SIZES[0] }
            },
            "required": ["prompt"]
        }));
        Tool::new(NAME, "Generate a PNG image from a text prompt.", input)
            .with_annotations(ToolAnnotations::new().read_only(true).open_world(self.is_api()))
    }

    fn access(&self) -> Access {
        Access::users()
            .permission(PERMISSION)
            .emails(self.allowed_emails.iter().cloned())
    }

    /// A picture from an API can take a minute: a client that speaks the tasks
    /// extension gets a task to poll rather than a request held open.
    fn task_support(&self) -> crate::tasks::TaskSupport {
        crate::tasks::TaskSupport::Optional
    }

    fn call<'a>(&'a self, cx: ToolCx<'a>) -> ToolFuture<'a> {
        Box::pin(async move { Ok(self.generate(cx).await) })
    }
}

impl GenerateImage {
    fn is_api(&self) -> bool {
        matches!(self.backend, Backend::Api { .. })
    }

    async fn generate(&self, cx: ToolCx<'_>) -> CallToolResult {
        let Some(prompt) = cx.str_arg("prompt").map(str::to_owned) else {
            return tool_error("generateImage needs a `prompt`");
        };
        if prompt.chars().count() > MAX_PROMPT_CHARS {
            return tool_error(format!("the prompt is longer than {MAX_PROMPT_CHARS} characters"));
        }
        let size = cx.str_arg("size").unwrap_or(SIZES[0]).to_owned();
        let Some((width, height)) = parse_size(&size) else {
            return tool_error(format!("size must be one of {}", SIZES.join(", ")));
        };
        let work = async {
            match &self.backend {
                Backend::BuiltIn => built_in(&cx, &prompt, width, height).await,
                Backend::Api { url, key, model, http } => {
                    cx.progress(0.0, Some(1.0), "asking the image service").await;
                    let png = api(http, url, key.as_deref(), model, &prompt, &size).await;
                    cx.progress(1.0, Some(1.0), "done").await;
                    png
                }
            }
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(self.timeout, work) => r,
            () = cx.cancel.cancelled() => return tool_error("cancelled"),
        };
        match outcome {
            Ok(Ok(png)) => {
                tracing::info!(sub = %cx.caller.sub, bytes = png.len(), "image generated");
                CallToolResult::success(vec![
                    ContentBlock::image(B64.encode(&png), "image/png"),
                    ContentBlock::text(format!("Image ({size}) for: {prompt}")),
                ])
            }
            Ok(Err(message)) => tool_error(message),
            Err(_) => tool_error(format!("the image took longer than {} s", self.timeout.as_secs())),
        }
    }
}

fn parse_size(size: &str) -> Option<(u32, u32)> {
    if !SIZES.contains(&size) {
        return None;
    }
    let (w, h) = size.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// Render on a blocking thread; progress crosses back over a channel, cancellation
/// (the request's, or the time limit dropping this future) over a flag.
async fn built_in(cx: &ToolCx<'_>, prompt: &str, width: u32, height: u32) -> Result<Vec<u8>, String> {
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u32, u32)>();
    let prompt = prompt.to_owned();
    let flag = stop.clone();
    let mut job = tokio::task::spawn_blocking(move || {
        let cancelled = || flag.load(Ordering::Relaxed);
        let mut progress = |done: u32, total: u32| {
            let _ = tx.send((done, total));
        };
        crate::render::render_png(&prompt, width, height, &cancelled, &mut progress)
    });
    loop {
        tokio::select! {
            Some((done, total)) = rx.recv() => {
                cx.progress(f64::from(done), Some(f64::from(total)), "drawing").await;
            }
            joined = &mut job => {
                return match joined {
                    Ok(Ok(png)) => Ok(png),
                    Ok(Err(e)) => Err(format!("cannot draw the image: {e}")),
                    Err(e) => Err(format!("the renderer failed: {e}")),
                };
            }
            () = cx.cancel.cancelled() => {
                stop.store(true, Ordering::Relaxed);
                return Err("cancelled".into());
            }
        }
    }
}

/// An OpenAI-compatible images API; the answer's first `b64_json` PNG.
async fn api(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    model: &str,
    prompt: &str,
    size: &str,
) -> Result<Vec<u8>, String> {
    let endpoint = format!("{}/images/generations", url.trim_end_matches('/'));
    let mut req = http.post(&endpoint).json(&json!({
        "model": model,
        "prompt": prompt,
        "size": size,
        "n": 1,
        "response_format": "b64_json",
    }));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.map_err(|e| {
        tracing::warn!(error = %e, "image service unreachable");
        "the image service cannot be reached".to_owned()
    })?;
    let status = resp.status();
    let body = read_limited(resp, MAX_API_RESPONSE_BYTES).await?;
    if !status.is_success() {
        tracing::warn!(%status, "image service refused");
        return Err(format!("the image service answered HTTP {}", status.as_u16()));
    }
    let doc: Value = serde_json::from_slice(&body).map_err(|_| "the image service answered no JSON".to_owned())?;
    let b64 = doc
        .pointer("/data/0/b64_json")
        .and_then(Value::as_str)
        .ok_or_else(|| "the image service answered no image".to_owned())?;
    let png = B64
        .decode(b64)
        .map_err(|_| "the image service answered a malformed image".to_owned())?;
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err("the image service answered something other than a PNG".into());
    }
    Ok(png)
}

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|_| "the image service's answer was cut off".to_owned())?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("the image service's answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_the_offered_ones() {
        assert_eq!(parse_size("512x512"), Some((512, 512)));
        assert_eq!(parse_size("1024x1024"), Some((1024, 1024)));
        assert_eq!(parse_size("2048x2048"), None);
        assert_eq!(parse_size("10x10"), None);
        assert_eq!(parse_size("512"), None);
    }

    fn text(r: &CallToolResult) -> String {
        r.content[0].as_text().map(|t| t.text.clone()).unwrap_or_default()
    }

    #[tokio::test]
    async fn cancellation_and_the_time_limit_stop_the_work() {
        let caller = proto::Principal::default();
        let tool = GenerateImage::new(Backend::BuiltIn, Vec::new(), DEFAULT_TIMEOUT);
        let cancel = tokio_util::sync::CancellationToken::new();
        cancel.cancel();
        let args = json!({ "prompt": "never drawn", "size": "1024x1024" });
        let r = tool.generate(ToolCx::detached(&caller, args.clone(), cancel)).await;
        assert_eq!((r.is_error, text(&r).as_str()), (Some(true), "cancelled"));

        let hurried = GenerateImage::new(Backend::BuiltIn, Vec::new(), Duration::from_nanos(1));
        let r = hurried
            .generate(ToolCx::detached(
                &caller,
                args,
                tokio_util::sync::CancellationToken::new(),
            ))
            .await;
        assert_eq!(r.is_error, Some(true));
        assert!(text(&r).contains("took longer"), "{}", text(&r));
    }

    #[test]
    fn access_is_the_permission_or_the_allow_list_for_users() {
        let tool = GenerateImage::new(Backend::BuiltIn, vec!["boss@example.com".into()], DEFAULT_TIMEOUT);
        let a = tool.access();
        assert_eq!(a.permissions, vec![PERMISSION]);
        assert_eq!(a.emails, vec!["boss@example.com"]);
        assert!(a.users_only);
    }
}
