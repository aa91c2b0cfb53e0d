//! Model presets: short names (`qwen3:0.6b`, `stories`) for curated models, so a new user
//! can `llmlocal pull qwen3:0.6b` or `llmlocal serve --model stories` without knowing a
//! Hugging Face repository and file name.
//!
//! The table is versioned ([`PRESETS_VERSION`]): bump it whenever an entry is added, removed or
//! points at other files, so `llmlocal presets --json` consumers can tell tables apart. Every
//! repository and file name was checked against the public hub listing or the model card
//! given in `source` (and `verified`, where the file name was seen); an entry whose file name
//! could not be confirmed is left out rather than guessed.
//!
//! `NAME` takes the preset's default quantization; `NAME-QUANT` (Ollama's tag style, e.g.
//! `llama3.2:1b-q8_0`) another one it lists.

use llmlocal_plugin_api::ModelFormat;
use serde::Serialize;

use super::embedded;
use super::error::{ModelError, Result};
use super::spec::{FileSelector, ModelSource, ModelSpec};

/// The version of the preset table; bump on any change to an entry.
pub const PRESETS_VERSION: u32 = 1;

/// One curated model.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Preset {
    /// The short name users type.
    pub name: &'static str,
    pub description: &'static str,
    #[serde(flatten)]
    pub source: PresetSource,
    /// The backend plugin that runs it.
    pub backend: &'static str,
    /// The chat-template family (the template itself comes from the model file).
    pub template: &'static str,
    /// Context length the engine uses unless told otherwise.
    pub context_length: u32,
    /// Tool (function) calling through the model's chat template.
    pub tools: bool,
    /// An embedding model (for /v1/embeddings), not a chat model.
    pub embedding: bool,
    /// The model card (or provenance file) the entry was written from.
    pub source_url: &'static str,
    /// Where the file names were confirmed.
    pub verified: &'static str,
}

/// Where a preset's file comes from.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PresetSource {
    /// Built into the binary ([`embedded`]).
    Embedded { file: &'static str },
    /// A Hugging Face repository; `quants` maps a quantization tag to its file.
    Hub {
        repo: &'static str,
        default_quant: &'static str,
        quants: &'static [(&'static str, &'static str)],
    },
}

/// The table. Keep it sorted by name; the tests check ids and defaults.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "gemma3:1b",
        description: "Google Gemma 3 1B instruct (Gemma terms of use)",
        source: PresetSource::Hub {
            repo: "unsloth/gemma-3-1b-it-GGUF",
            default_quant: "Q4_K_M",
            quants: &[
                ("Q4_K_M", "gemma-3-1b-it-Q4_K_M.gguf"),
                ("Q8_0", "gemma-3-1b-it-Q8_0.gguf"),
            ],
        },
        backend: "llama-cpp",
        template: "gemma",
        context_length: 8192,
        tools: false,
        embedding: false,
        source_url: "https://huggingface.co/unsloth/gemma-3-1b-it-GGUF",
        verified: "file URLs https://huggingface.co/unsloth/gemma-3-1b-it-GGUF/resolve/main/gemma-3-1b-it-{Q4_K_M,Q8_0}.gguf in public model lists",
    },
    Preset {
        name: "llama3.2:1b",
        description: "Meta Llama 3.2 1B instruct (Llama 3.2 Community License)",
        source: PresetSource::Hub {
            repo: "bartowski/Llama-3.2-1B-Instruct-GGUF",
            default_quant: "Q4_K_M",
            quants: &[
                ("Q4_K_M", "Llama-3.2-1B-Instruct-Q4_K_M.gguf"),
                ("Q8_0", "Llama-3.2-1B-Instruct-Q8_0.gguf"),
            ],
        },
        backend: "llama-cpp",
        template: "llama3",
        context_length: 8192,
        tools: true,
        embedding: false,
        source_url: "https://huggingface.co/bartowski/Llama-3.2-1B-Instruct-GGUF",
        verified: "the model card's file table (Llama-3.2-1B-Instruct-Q4_K_M.gguf 0.81GB, -Q8_0.gguf 1.32GB)",
    },
    Preset {
        name: "nomic-embed-text",
        description: "Nomic Embed Text v1.5, 768-dim text embeddings (Apache-2.0)",
        source: PresetSource::Hub {
            repo: "nomic-ai/nomic-embed-text-v1.5-GGUF",
            default_quant: "Q8_0",
            quants: &[("Q8_0", "nomic-embed-text-v1.5.Q8_0.gguf")],
        },
        backend: "llama-cpp",
        template: "none",
        context_length: 2048,
        tools: false,
        embedding: true,
        source_url: "https://huggingface.co/nomic-ai/nomic-embed-text-v1.5-GGUF",
        verified: "https://huggingface.co/nomic-ai/nomic-embed-text-v1.5-GGUF/resolve/main/nomic-embed-text-v1.5.Q8_0.gguf (146,146,432 bytes) in public model lists",
    },
    Preset {
        name: "qwen3:0.6b",
        description: "Qwen3 0.6B, thinking and non-thinking chat (Apache-2.0)",
        source: PresetSource::Hub {
            repo: "Qwen/Qwen3-0.6B-GGUF",
            default_quant: "Q8_0",
            quants: &[("Q8_0", "Qwen3-0.6B-Q8_0.gguf")],
        },
        backend: "llama-cpp",
        template: "chatml",
        context_length: 8192,
        tools: true,
        embedding: false,
        source_url: "https://huggingface.co/Qwen/Qwen3-0.6B-GGUF",
        verified: "https://huggingface.co/Qwen/Qwen3-0.6B-GGUF/resolve/main/Qwen3-0.6B-Q8_0.gguf in public model lists (the official repo ships Q8_0 only)",
    },
    Preset {
        name: "smollm2:135m",
        description: "Hugging Face SmolLM2 135M instruct (Apache-2.0)",
        source: PresetSource::Hub {
            repo: "bartowski/SmolLM2-135M-Instruct-GGUF",
            default_quant: "Q8_0",
            quants: &[
                ("Q4_K_M", "SmolLM2-135M-Instruct-Q4_K_M.gguf"),
                ("Q8_0", "SmolLM2-135M-Instruct-Q8_0.gguf"),
            ],
        },
        backend: "llama-cpp",
        template: "chatml",
        context_length: 8192,
        tools: false,
        embedding: false,
        source_url: "https://huggingface.co/bartowski/SmolLM2-135M-Instruct-GGUF",
        verified: "file URLs https://huggingface.co/bartowski/SmolLM2-135M-Instruct-GGUF/resolve/main/SmolLM2-135M-Instruct-{Q4_K_M,Q8_0}.gguf in public scripts",
    },
    Preset {
        name: "stories",
        description: "Karpathy's stories260K: a 1.1 MB story model built into llmlocal (MIT), for demos and tests",
        source: PresetSource::Embedded {
            file: embedded::STORIES260K_FILE,
        },
        backend: "llama-cpp",
        template: "none",
        context_length: 512,
        tools: false,
        embedding: false,
        source_url: "https://github.com/karpathy/llama2.c/blob/master/doc/stories260K.md",
        verified: "models/stories260K/PROVENANCE.md (sha256 270cba1b…d256d, the GGUF llama.cpp's CI uses)",
    },
];

/// The preset named `name` (exactly) and the quantization `NAME-QUANT` asked for, if any.
pub fn find(name: &str) -> Option<(&'static Preset, Option<&'static str>)> {
    let name = name.trim();
    if let Some(p) = PRESETS.iter().find(|p| p.name == name) {
        return Some((p, None));
    }
    PRESETS.iter().find_map(|p| {
        let tag = name.strip_prefix(p.name)?.strip_prefix('-')?;
        let PresetSource::Hub { quants, .. } = &p.source else {
            return None;
        };
        quants
            .iter()
            .find(|(q, _)| q.eq_ignore_ascii_case(tag))
            .map(|(q, _)| (p, Some(*q)))
    })
}

/// Preset names close to `input` (same family before `:`, or a small edit distance), for
/// "did you mean" messages.
pub fn close_names(input: &str) -> Vec<&'static str> {
    let input = input.trim().to_ascii_lowercase();
    let family = input.split([':', '-']).next().unwrap_or_default();
    PRESETS
        .iter()
        .map(|p| p.name)
        .filter(|name| {
            let name_family = name.split(':').next().unwrap_or_default();
            (!family.is_empty() && name_family == family)
                || strsim::levenshtein(&input, name) <= 2
                || (input.len() >= 3 && name.starts_with(&input))
        })
        .collect()
}

/// The spec a preset name stands for: `Ok(None)` when `input` is not a preset name.
pub fn spec_for(input: &str) -> Result<Option<ModelSpec>> {
    let Some((preset, quant)) = find(input) else {
        return Ok(None);
    };
    let spec = match &preset.source {
        PresetSource::Embedded { .. } => {
            // Built directly, not parsed: the path is ours, not user input.
            ModelSpec {
                name: String::new(),
                source: ModelSource::Local(embedded::stories260k_path()?),
                format: Some(ModelFormat::Gguf),
                backend: None,
                context_length: None,
            }
        }
        PresetSource::Hub {
            repo,
            default_quant,
            quants,
        } => {
            let wanted = quant.unwrap_or(default_quant);
            let file = quants
                .iter()
                .find(|(q, _)| *q == wanted)
                .map(|(_, f)| *f)
                .ok_or_else(|| ModelError::InvalidSpec {
                    input: input.to_string(),
                    reason: format!("preset table error: no file for `{wanted}`"),
                })?;
            ModelSpec::hugging_face(repo, None, FileSelector::File(file.to_string()))?
        }
    };
    Ok(Some(
        spec.with_name(input.trim())
            .with_backend(preset.backend)
            .with_context_length(preset.context_length),
    ))
}

/// The error for a name that looks like a preset but is none (`Some`), or `None` when `input`
/// is not close to any preset (it may still be a legacy bare repository id such as `gpt2`).
pub fn unknown(input: &str) -> Option<ModelError> {
    if let Some(err) = unknown_quant(input) {
        return Some(err);
    }
    let close = close_names(input);
    if close.is_empty() {
        return None;
    }
    Some(ModelError::InvalidSpec {
        input: input.to_string(),
        reason: format!(
            "no model preset is named `{}`; did you mean {}? (`llmlocal presets` lists them; \
             any Hugging Face model works as `org/repo` or `org/repo:QUANT`)",
            input.trim(),
            close
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    })
}

/// `NAME-TAG` where NAME is a preset without that quantization: the error lists the ones it has.
fn unknown_quant(input: &str) -> Option<ModelError> {
    let input = input.trim();
    PRESETS.iter().find_map(|p| {
        let tag = input.strip_prefix(p.name)?.strip_prefix('-')?;
        let listed: Vec<String> = match &p.source {
            PresetSource::Hub { quants, .. } => quants.iter().map(|(q, _)| q.to_string()).collect(),
            PresetSource::Embedded { .. } => Vec::new(),
        };
        let reason = if listed.is_empty() {
            format!("preset `{}` has a single built-in file; write `{}`", p.name, p.name)
        } else {
            format!(
                "preset `{}` has no `{tag}` file; it has {} (or name any file as `org/repo:FILE.gguf`)",
                p.name,
                listed.join(", ")
            )
        };
        Some(ModelError::InvalidSpec {
            input: input.to_string(),
            reason,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_self_consistent() {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted, "sorted by name, no duplicates");
        for p in PRESETS {
            assert!(p.source_url.starts_with("https://"), "{}", p.name);
            if let PresetSource::Hub {
                repo,
                default_quant,
                quants,
            } = &p.source
            {
                crate::models::validate_repo(repo).expect("valid repo id");
                assert!(
                    quants.iter().any(|(q, _)| q == default_quant),
                    "{}: the default quant has a file",
                    p.name
                );
                for (q, file) in *quants {
                    assert!(file.ends_with(".gguf"), "{file}");
                    assert!(file.contains(q), "{file} is the {q} file");
                }
            }
        }
    }

    #[test]
    fn names_and_quant_tags_resolve() {
        assert_eq!(
            find("qwen3:0.6b").map(|(p, q)| (p.name, q)),
            Some(("qwen3:0.6b", None))
        );
        assert_eq!(
            find("llama3.2:1b-q8_0").map(|(p, q)| (p.name, q)),
            Some(("llama3.2:1b", Some("Q8_0")))
        );
        assert!(
            find("llama3.2:1b-q3_k").is_none(),
            "a quant the preset lacks"
        );
        assert!(find("Qwen/Qwen3-0.6B-GGUF").is_none());
    }

    #[test]
    fn hub_preset_becomes_a_file_spec_with_backend_and_context() {
        let spec = spec_for("smollm2:135m-q4_k_m")
            .expect("ok")
            .expect("a preset");
        assert_eq!(spec.name, "smollm2:135m-q4_k_m");
        assert_eq!(spec.backend.as_deref(), Some("llama-cpp"));
        assert_eq!(spec.context_length, Some(8192));
        let ModelSource::HuggingFace(hf) = &spec.source else {
            panic!("hub source: {spec:?}")
        };
        assert_eq!(hf.repo, "bartowski/SmolLM2-135M-Instruct-GGUF");
        assert_eq!(
            hf.selector,
            FileSelector::File("SmolLM2-135M-Instruct-Q4_K_M.gguf".into())
        );
    }

    #[test]
    fn close_names_for_typos_and_families() {
        assert_eq!(close_names("qwen3:0.5b"), ["qwen3:0.6b"]);
        assert_eq!(close_names("qwen3"), ["qwen3:0.6b"]);
        assert_eq!(close_names("storie"), ["stories"]);
        assert!(close_names("gpt2").is_empty(), "a legacy repo id stays one");
        let err = unknown("lama3.2:1b")
            .expect("close to llama3.2:1b")
            .to_string();
        assert!(err.contains("`llama3.2:1b`"), "{err}");
        let err = unknown("qwen3:0.6b-q2_k")
            .expect("a missing quant")
            .to_string();
        assert!(err.contains("no `q2_k` file; it has Q8_0"), "{err}");
    }
}
