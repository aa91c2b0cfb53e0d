//! `ModelSpec`: what model to run and where it comes from, parsed from strings such as
//! `org/repo`, `org/repo:Q8_0`, `org/repo@rev`, `./path/model.gguf`, `hf://org/repo/file.gguf`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use llmlocal_plugin_api::ModelFormat;

use super::error::{ModelError, Result};
use super::hub_input::{check_repo_file, check_revision};

/// The revision used when none is named.
pub const DEFAULT_REVISION: &str = "main";

/// A model to run: a name, where its files come from, and how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The name the user gave (the spec string unless set otherwise).
    pub name: String,
    pub source: ModelSource,
    /// The format, when it is known from the spec alone; otherwise detected at resolve time.
    pub format: Option<ModelFormat>,
    /// Backend to prefer (plugin name), if any.
    pub backend: Option<String>,
    /// Context length to use, if any (also used to size the KV-cache allowance when picking a quant).
    pub context_length: Option<u32>,
}

/// Where a model's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    HuggingFace(HfSource),
    /// A `.gguf` file or a safetensors folder on local disk.
    Local(PathBuf),
}

/// A Hugging Face repository, a revision and which files to take from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfSource {
    /// `org/name` (or a bare legacy `name`).
    pub repo: String,
    /// Branch, tag or commit hash.
    pub revision: String,
    pub selector: FileSelector,
}

/// Which files of a repository make up the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSelector {
    /// Decide from the repository's files: a GGUF quant that fits memory, else the safetensors snapshot.
    Auto,
    /// One file by path inside the repository.
    File(String),
    /// A GGUF quantization tag such as `Q4_K_M` (case-insensitive).
    Quant(String),
    /// The whole snapshot (a safetensors folder).
    Snapshot,
}

impl ModelSpec {
    /// Parses a spec string; see the module doc for the accepted forms.
    pub fn parse(input: &str) -> Result<Self> {
        let trimmed = input.trim();
        // Presets first: `qwen3:0.6b` would otherwise read as repo `qwen3`, quant `0.6b`.
        if let Some(spec) = super::presets::spec_for(trimmed)? {
            return Ok(spec);
        }
        if !trimmed.contains('/') && !looks_local(trimmed) {
            if let Some(err) = super::presets::unknown(trimmed) {
                return Err(err);
            }
        }
        let source = parse_source(trimmed).map_err(|reason| ModelError::InvalidSpec {
            input: input.to_string(),
            reason,
        })?;
        let format = format_from_source(&source);
        Ok(ModelSpec {
            name: trimmed.to_string(),
            source,
            format,
            backend: None,
            context_length: None,
        })
    }

    /// A spec for one Hugging Face repository and selector.
    pub fn hugging_face(
        repo: &str,
        revision: Option<&str>,
        selector: FileSelector,
    ) -> Result<Self> {
        let invalid = |reason| ModelError::InvalidSpec {
            input: repo.to_string(),
            reason,
        };
        validate_repo(repo).map_err(invalid)?;
        if let Some(rev) = revision {
            check_revision(rev).map_err(invalid)?;
        }
        if let FileSelector::File(file) = &selector {
            check_repo_file(file).map_err(invalid)?;
        }
        let source = ModelSource::HuggingFace(HfSource {
            repo: repo.to_string(),
            revision: revision.unwrap_or(DEFAULT_REVISION).to_string(),
            selector,
        });
        let format = format_from_source(&source);
        Ok(ModelSpec {
            name: repo.to_string(),
            source,
            format,
            backend: None,
            context_length: None,
        })
    }

    pub fn with_backend(mut self, backend: impl Into<String>) -> Self {
        self.backend = Some(backend.into());
        self
    }

    pub fn with_context_length(mut self, context_length: u32) -> Self {
        self.context_length = Some(context_length);
        self
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

impl FromStr for ModelSpec {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        ModelSpec::parse(s)
    }
}

/// The format implied by the spec alone (`None` when it needs the repository's file list).
fn format_from_source(source: &ModelSource) -> Option<ModelFormat> {
    match source {
        ModelSource::Local(path) => format_of_path(path),
        ModelSource::HuggingFace(hf) => match &hf.selector {
            FileSelector::Quant(_) => Some(ModelFormat::Gguf),
            FileSelector::Snapshot => Some(ModelFormat::Safetensors),
            FileSelector::File(file) => format_of_path(Path::new(file)),
            FileSelector::Auto => None,
        },
    }
}

/// GGUF for a `.gguf` file, safetensors for a folder or a `.safetensors` file.
pub fn format_of_path(path: &Path) -> Option<ModelFormat> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("gguf") => Some(ModelFormat::Gguf),
        Some("safetensors") => Some(ModelFormat::Safetensors),
        _ if path.is_dir() => Some(ModelFormat::Safetensors),
        _ => None,
    }
}

fn looks_local(s: &str) -> bool {
    s.starts_with('/')
        || s.starts_with("./")
        || s.starts_with("../")
        || s.starts_with('~')
        || s.starts_with("file://")
        || s == "."
        || s.contains('\\')
        || (s.len() > 2
            && s.as_bytes()[0].is_ascii_alphabetic()
            && s.as_bytes()[1] == b':'
            && matches!(s.as_bytes()[2], b'/' | b'\\'))
}

fn parse_source(s: &str) -> std::result::Result<ModelSource, String> {
    if s.is_empty() {
        return Err("empty spec; expected `org/repo`, `org/repo:QUANT`, `org/repo@revision`, `hf://org/repo/file` or a local path".into());
    }
    if let Some(rest) = s.strip_prefix("hf://") {
        return parse_hf_url(rest).map(ModelSource::HuggingFace);
    }
    if looks_local(s) {
        return Ok(ModelSource::Local(expand_local(s)));
    }
    parse_repo_form(s).map(ModelSource::HuggingFace)
}

fn expand_local(s: &str) -> PathBuf {
    let s = s.strip_prefix("file://").unwrap_or(s);
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(home) = dirs::home_dir() {
            return home.join(rest);
        }
    }
    PathBuf::from(s)
}

/// `org/repo[@rev][:QUANT]`; a `:name.gguf` suffix names a file.
fn parse_repo_form(s: &str) -> std::result::Result<HfSource, String> {
    let (rest, selector) = match s.rsplit_once(':') {
        Some((rest, tag)) => (rest, parse_tag(tag)?),
        None => (s, FileSelector::Auto),
    };
    let (repo, revision) = split_revision(rest)?;
    if repo.matches('/').count() > 1 {
        return Err(format!(
            "`{repo}` has more than one `/`; a repository is `org/name`; for a file inside it write `hf://{repo}`"
        ));
    }
    if repo.to_ascii_lowercase().ends_with(".gguf") && !repo.contains('/') {
        return Err(format!(
            "`{repo}` looks like a file name; write `./{repo}` for a local file or `org/repo:{repo}` for a file in a repository"
        ));
    }
    validate_repo(repo)?;
    Ok(HfSource {
        repo: repo.to_string(),
        revision,
        selector,
    })
}

fn parse_tag(tag: &str) -> std::result::Result<FileSelector, String> {
    if tag.is_empty() {
        return Err("empty quantization after `:`; e.g. `org/repo:Q4_K_M`".into());
    }
    if tag.contains('.') {
        check_repo_file(tag)?;
        return Ok(FileSelector::File(tag.to_string()));
    }
    if !tag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "`{tag}` is not a quantization tag (letters, digits, `_`), e.g. `Q4_K_M`"
        ));
    }
    Ok(FileSelector::Quant(tag.to_string()))
}

fn split_revision(s: &str) -> std::result::Result<(&str, String), String> {
    match s.split_once('@') {
        None => Ok((s, DEFAULT_REVISION.to_string())),
        Some((_, rev)) if rev.trim().is_empty() => {
            Err("empty revision after `@`; e.g. `org/repo@main`".into())
        }
        Some((_, rev)) if rev.contains('@') => Err("more than one `@`".into()),
        Some((repo, rev)) => {
            check_revision(rev)?;
            Ok((repo, rev.to_string()))
        }
    }
}

/// `hf://org/repo[@rev][/path/in/repo]`.
fn parse_hf_url(rest: &str) -> std::result::Result<HfSource, String> {
    let mut parts = rest.splitn(3, '/');
    let org = parts.next().unwrap_or_default();
    let name_rev = parts
        .next()
        .ok_or_else(|| format!("`hf://{rest}` needs `hf://org/repo` or `hf://org/repo/file`"))?;
    let file = parts.next().filter(|f| !f.is_empty());
    let (name, revision) = split_revision(name_rev)?;
    let repo = format!("{org}/{name}");
    validate_repo(&repo)?;
    let selector = match file {
        Some(f) => {
            check_repo_file(f).map_err(|why| format!("bad file path `{f}`: {why}"))?;
            FileSelector::File(f.to_string())
        }
        None => FileSelector::Auto,
    };
    Ok(HfSource {
        repo,
        revision,
        selector,
    })
}

/// Checks a repository id the way the hub does: `org/name` or `name`, letters, digits, `-_.`,
/// no `--` or `..`, at most 96 characters.
pub fn validate_repo(repo: &str) -> std::result::Result<(), String> {
    let bad = |why: &str| Err(format!("`{repo}` is not a valid repository id: {why}"));
    if repo.is_empty() {
        return bad("it is empty");
    }
    if repo.len() > 96 {
        return bad("longer than 96 characters");
    }
    let segments: Vec<&str> = repo.split('/').collect();
    if segments.len() > 2 || segments.iter().any(|s| s.is_empty()) {
        return bad("expected `org/name`");
    }
    for seg in &segments {
        if !seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad("only letters, digits, `-`, `_` and `.` are allowed");
        }
        if seg.contains("--") || seg.contains("..") {
            return bad("`--` and `..` are not allowed");
        }
        if seg.starts_with(['-', '.']) || seg.ends_with(['-', '.']) {
            return bad("a part cannot start or end with `-` or `.`");
        }
    }
    Ok(())
}
