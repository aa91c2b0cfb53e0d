//! `AdapterSpec`: where an adapter comes from, its scale, and the base model it is meant for.
//!
//! Accepted strings (each optionally followed by `:SCALE`, a number):
//! - `gh:OWNER/REPO@TAG/ASSET` — an asset of a GitHub release (the tag is the version);
//! - `hf:ORG/REPO[@REVISION][/PATH]` — a Hugging Face repository (the whole snapshot, a PEFT
//!   folder) or one file in it (a GGUF LoRA);
//! - anything else — a local path (a GGUF LoRA file or a PEFT folder).

use std::fmt;
use std::path::PathBuf;

use super::error::{AdapterError, Result};

/// Scale used when the spec names none.
pub const DEFAULT_SCALE: f32 = 1.0;

/// One asset of one GitHub release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitHubAsset {
    pub owner: String,
    pub repo: String,
    pub tag: String,
    pub asset: String,
}

/// Where the adapter's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdapterSource {
    GitHub(GitHubAsset),
    HuggingFace {
        repo: String,
        revision: Option<String>,
        /// One file in the repository; `None` takes the whole snapshot (a PEFT folder).
        file: Option<String>,
    },
    Local(PathBuf),
}

/// An adapter to apply: source, scale, and (optionally) the base model it was trained for.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    pub source: AdapterSource,
    pub scale: f32,
    /// The base model it is meant for (a model spec or name), when known; the compatibility
    /// check compares shapes, this is only reported.
    pub base_model: Option<String>,
}

impl AdapterSpec {
    /// Parses a spec string; see the module doc.
    pub fn parse(input: &str) -> Result<Self> {
        let invalid = |reason: &str| AdapterError::InvalidSpec {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(invalid("it is empty"));
        }
        let (body, scale) = split_scale(trimmed).map_err(|r| invalid(&r))?;
        let source = if let Some(rest) = body.strip_prefix("gh:") {
            AdapterSource::GitHub(parse_github(rest).map_err(|r| invalid(&r))?)
        } else if let Some(rest) = body.strip_prefix("hf:") {
            parse_hf(rest).map_err(|r| invalid(&r))?
        } else {
            AdapterSource::Local(PathBuf::from(body))
        };
        Ok(AdapterSpec {
            source,
            scale,
            base_model: None,
        })
    }

    pub fn with_scale(mut self, scale: f32) -> Self {
        self.scale = scale;
        self
    }

    pub fn with_base_model(mut self, base: impl Into<String>) -> Self {
        self.base_model = Some(base.into());
        self
    }
}

impl std::str::FromStr for AdapterSpec {
    type Err = AdapterError;
    fn from_str(s: &str) -> Result<Self> {
        AdapterSpec::parse(s)
    }
}

impl fmt::Display for AdapterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdapterSource::GitHub(a) => {
                write!(f, "gh:{}/{}@{}/{}", a.owner, a.repo, a.tag, a.asset)
            }
            AdapterSource::HuggingFace {
                repo,
                revision,
                file,
            } => {
                write!(f, "hf:{repo}")?;
                if let Some(rev) = revision {
                    write!(f, "@{rev}")?;
                }
                if let Some(file) = file {
                    write!(f, "/{file}")?;
                }
                Ok(())
            }
            AdapterSource::Local(path) => write!(f, "{}", path.display()),
        }
    }
}

impl fmt::Display for AdapterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if self.scale != DEFAULT_SCALE {
            write!(f, ":{}", self.scale)?;
        }
        Ok(())
    }
}

/// Splits a trailing `:SCALE` off (only when what follows the last `:` is a number, so
/// `C:\x` or `hf:org/repo` keep their colon).
fn split_scale(s: &str) -> std::result::Result<(&str, f32), String> {
    let Some((body, tail)) = s.rsplit_once(':') else {
        return Ok((s, DEFAULT_SCALE));
    };
    match tail.parse::<f32>() {
        Ok(scale) if !scale.is_finite() => Err(format!("scale `{tail}` is not a finite number")),
        Ok(_) if body.is_empty() || body == "gh" || body == "hf" => {
            Err("nothing before the scale".into())
        }
        Ok(scale) => Ok((body, scale)),
        Err(_) => Ok((s, DEFAULT_SCALE)),
    }
}

/// A GitHub owner or repository name: letters, digits, `-`, `_`, `.`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A path component that stays inside its folder (tags and asset names become folder names).
fn safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0'])
}

fn parse_github(rest: &str) -> std::result::Result<GitHubAsset, String> {
    let (owner, after) = rest
        .split_once('/')
        .ok_or("a GitHub spec needs OWNER/REPO@TAG/ASSET")?;
    let (repo, after) = after
        .split_once('@')
        .ok_or("a GitHub spec needs @TAG (the release version)")?;
    let (tag, asset) = after
        .split_once('/')
        .ok_or("a GitHub spec needs /ASSET after the tag")?;
    if !valid_name(owner) || !valid_name(repo) {
        return Err(format!("`{owner}/{repo}` is not a GitHub repository name"));
    }
    if !safe_component(tag) {
        return Err(format!("`{tag}` is not a usable tag"));
    }
    if !safe_component(asset) {
        return Err(format!("`{asset}` is not an asset name"));
    }
    Ok(GitHubAsset {
        owner: owner.into(),
        repo: repo.into(),
        tag: tag.into(),
        asset: asset.into(),
    })
}

fn parse_hf(rest: &str) -> std::result::Result<AdapterSource, String> {
    let mut parts = rest.splitn(3, '/');
    let org = parts.next().unwrap_or_default();
    let name_rev = parts.next().ok_or("a Hugging Face spec needs ORG/REPO")?;
    let file = parts.next().filter(|f| !f.is_empty()).map(str::to_string);
    let (name, revision) = match name_rev.split_once('@') {
        Some((n, r)) if !r.is_empty() => (n, Some(r.to_string())),
        Some(_) => return Err("empty revision after @".into()),
        None => (name_rev, None),
    };
    let repo = format!("{org}/{name}");
    crate::models::validate_repo(&repo)?;
    Ok(AdapterSource::HuggingFace {
        repo,
        revision,
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_github_with_scale() {
        let s = AdapterSpec::parse("gh:acme/loras@v1.2/style.gguf:0.5").unwrap();
        assert_eq!(s.scale, 0.5);
        assert_eq!(
            s.source,
            AdapterSource::GitHub(GitHubAsset {
                owner: "acme".into(),
                repo: "loras".into(),
                tag: "v1.2".into(),
                asset: "style.gguf".into()
            })
        );
        assert_eq!(s.to_string(), "gh:acme/loras@v1.2/style.gguf:0.5");
    }

    #[test]
    fn parses_hf_forms() {
        let s = AdapterSpec::parse("hf:org/repo").unwrap();
        assert_eq!(
            s.source,
            AdapterSource::HuggingFace {
                repo: "org/repo".into(),
                revision: None,
                file: None
            }
        );
        let s = AdapterSpec::parse("hf:org/repo@abc/sub/lora.gguf:2").unwrap();
        assert_eq!(s.scale, 2.0);
        assert_eq!(
            s.source,
            AdapterSource::HuggingFace {
                repo: "org/repo".into(),
                revision: Some("abc".into()),
                file: Some("sub/lora.gguf".into())
            }
        );
    }

    #[test]
    fn parses_local_paths() {
        let s = AdapterSpec::parse("./my-lora:0.25").unwrap();
        assert_eq!(s.source, AdapterSource::Local("./my-lora".into()));
        assert_eq!(s.scale, 0.25);
        let s = AdapterSpec::parse("C:/x/lora.gguf").unwrap();
        assert_eq!(s.source, AdapterSource::Local("C:/x/lora.gguf".into()));
        assert_eq!(s.scale, DEFAULT_SCALE);
    }

    #[test]
    fn rejects_bad_specs_with_reasons() {
        for (bad, needle) in [
            ("gh:acme/loras/style.gguf", "@TAG"),
            ("gh:acme/loras@v1", "/ASSET"),
            ("gh:acme@v1/a", "OWNER/REPO"),
            ("gh:acme/lo ras@v1/a", "repository name"),
            ("gh:acme/loras@../a", "tag"),
            ("hf:org", "ORG/REPO"),
            ("./x:inf", "finite"),
            ("", "empty"),
        ] {
            let err = AdapterSpec::parse(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
