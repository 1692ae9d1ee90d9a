//! The tools this server ships, configured by the operator's settings (the seeds'
//! variable names), with the operator's policy file applied.

use std::path::PathBuf;
use std::sync::Arc;

use crate::policy::{PolicyError, PolicyFile};
use crate::toolbox::{McpTool, Toolbox};
use crate::{Add, WhoAmI};

/// What the shipped tools are configured with.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `ALLOWED_EMAILS`: addresses (or `@domain`) that may use `generateImage`
    /// besides holders of the `image_generation` permission.
    pub allowed_emails: Vec<String>,
    /// `TOOL_POLICY_FILE`: the operator's changes to every tool's access.
    pub policy_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// The shipped tools for `settings`.
pub fn toolbox(settings: &Settings) -> Result<Toolbox, SetupError> {
    let tools: Vec<Arc<dyn McpTool>> = vec![Arc::new(Add), Arc::new(WhoAmI)];
    let policy = match &settings.policy_file {
        Some(path) => Some((PolicyFile::load(path)?, path.display().to_string())),
        None => None,
    };
    Ok(Toolbox::new(tools, policy.as_ref().map(|(f, p)| (f, p.as_str())))?)
}
