//! The tools this server ships, configured by the operator's settings (the seeds'
//! variable names), with the operator's policy file applied.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::{PolicyError, PolicyFile};
use crate::toolbox::{McpTool, Toolbox};
use crate::{Add, Count, WhoAmI, documents, image, todo};

/// What the shipped tools are configured with.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `ALLOWED_EMAILS`: addresses (or `@domain`) that may use `generateImage`
    /// besides holders of the `image_generation` permission.
    pub allowed_emails: Vec<String>,
    /// `TOOL_POLICY_FILE`: the operator's changes to every tool's access.
    pub policy_file: Option<PathBuf>,
    /// `IMAGE_API_URL` & co.; `None`: the built-in renderer.
    pub image_api: Option<ImageApi>,
    /// `IMAGE_TIMEOUT`.
    pub image_timeout: Duration,
    /// `CHECKLIST_DIR`: the checklist tools exist when set.
    pub checklist_dir: Option<PathBuf>,
    /// `PROCESS_DIR`: the process tools exist when set.
    pub process_dir: Option<PathBuf>,
    /// `API_URL`: the todo tools exist when set.
    pub api_url: Option<String>,
}

/// An OpenAI-compatible images endpoint.
#[derive(Clone)]
pub struct ImageApi {
    pub url: String,
    pub key: Option<String>,
    pub model: String,
}

impl std::fmt::Debug for ImageApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageApi")
            .field("url", &self.url)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("cannot build an HTTP client: {0}")]
    Http(String),
    #[error("{0}")]
    Documents(String),
}

/// The shipped tools for `settings`.
pub fn toolbox(settings: &Settings) -> Result<Toolbox, SetupError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| SetupError::Http(e.to_string()))?;
    let backend = match &settings.image_api {
        Some(api) => image::Backend::Api {
            url: api.url.clone(),
            key: api.key.clone(),
            model: api.model.clone(),
            http: http.clone(),
        },
        None => image::Backend::BuiltIn,
    };
    let timeout = if settings.image_timeout.is_zero() {
        image::DEFAULT_TIMEOUT
    } else {
        settings.image_timeout
    };
    let mut tools: Vec<Arc<dyn McpTool>> = vec![
        Arc::new(Add),
        Arc::new(image::GenerateImage::new(
            backend,
            settings.allowed_emails.clone(),
            timeout,
        )),
        Arc::new(WhoAmI),
        Arc::new(Count),
        Arc::new(crate::notes::Notes),
    ];
    if let Some(api) = &settings.api_url {
        tools.extend(
            todo::Op::ALL
                .into_iter()
                .map(|op| Arc::new(todo::TodoTool::new(op, api, http.clone())) as Arc<dyn McpTool>),
        );
    }
    for (kind, dir) in [
        (documents::Kind::Checklist, &settings.checklist_dir),
        (documents::Kind::Process, &settings.process_dir),
    ] {
        if let Some(dir) = dir {
            tools.extend(documents::DocTool::all(kind, dir).map_err(SetupError::Documents)?);
        }
    }
    let policy = match &settings.policy_file {
        Some(path) => Some((PolicyFile::load(path)?, path.display().to_string())),
        None => None,
    };
    let library = documents::Library::new(settings.checklist_dir.as_deref(), settings.process_dir.as_deref())
        .map_err(SetupError::Documents)?;
    Ok(Toolbox::new(tools, policy.as_ref().map(|(f, p)| (f, p.as_str())))?.with_library(library))
}
