//! Engine settings: model aliases and limits, from the config file's `[engine]` and
//! `[models.NAME]` sections, plus `--model NAME=SPEC` flags.
//!
//! ```toml
//! [engine]
//! keep_alive_secs = 300        # unload a model idle this long (0 = never)
//! memory_limit_mib = 8192      # memory models may use (default: what the OS says is free)
//! queue_depth = 64             # requests that may wait per model before 429
//! context_length = 4096        # default for every model (default: from the machine's memory)
//!
//! [models.tiny]
//! spec = "./models/tiny.gguf"  # or `path = ...`; any model spec (org/repo:Q4_K_M, hf://...)
//! backend = "llama-cpp"
//! context_length = 2048
//! pinned = true                # never unloaded for memory or idleness
//! adapters = ["gh:me/loras@v1/tiny.gguf:0.8"]  # default LoRA adapters (requests may override)
//! cache_type_k = "q8_0"        # KV cache types (f16 default; q8_0, q4_0, ...), also in [engine]
//! cache_type_v = "q8_0"        # a quantized V cache needs flash attention (llama.cpp)
//! flash_attn = "auto"          # on | off | auto
//! cache_ram_mib = 4096         # host-RAM prompt cache (llama-cpp; 0 = off), also in [engine]
//! temperature = 0.2            # sampling defaults for requests that leave them out (also in
//! seed = 42                    # [engine]; these win over those): temperature (or temp),
//! n_predict = 256              # seed (-1 = random), n_predict (-1 = up to the cap), top_k,
//! top_p = 0.9                  # top_p, min_p, repeat_penalty
//! chat_template = "chatml"     # over the model's own: a built-in name or Jinja (also in
//! # chat_template_file = "t.jinja"  # [engine]); a file relative to the config file's dir
//! ```

use super::{defaults::SamplingDefaults, kv_cache::KvCacheOptions, template_override};
use serde::Deserialize;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

/// One named model.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// A model spec (see [`crate::models::ModelSpec`]).
    #[serde(alias = "path")]
    pub spec: String,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub context_length: Option<u32>,
    #[serde(default)]
    pub pinned: bool,
    /// Overrides the engine's keep-alive for this model.
    #[serde(default)]
    pub keep_alive_secs: Option<u64>,
    /// LoRA adapters applied by default (adapter specs `SPEC[:scale]`); a request's own
    /// `adapters` replace them.
    #[serde(default)]
    pub adapters: Vec<String>,
    /// KV cache options over the engine's (see [`KvCacheOptions`]).
    #[serde(default)]
    pub cache_type_k: Option<String>,
    #[serde(default)]
    pub cache_type_v: Option<String>,
    #[serde(default)]
    pub flash_attn: Option<String>,
    #[serde(default)]
    pub cache_ram_mib: Option<u64>,
    /// Sampling defaults over the engine's (see [`SamplingDefaults`]).
    #[serde(default, alias = "temp")]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub n_predict: Option<i64>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repeat_penalty: Option<f32>,
    /// A chat template over the model's own: a built-in name or Jinja (see
    /// [`template_override`]); wins over the engine's.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// A file holding the chat template; read into `chat_template` at startup
    /// ([`EngineSettings::read_chat_template_files`]).
    #[serde(default)]
    pub chat_template_file: Option<PathBuf>,
}

impl ModelEntry {
    pub fn new(spec: impl Into<String>) -> Self {
        ModelEntry {
            spec: spec.into(),
            ..ModelEntry::default()
        }
    }

    /// This entry's KV cache options, each falling back to the engine's.
    pub fn kv_cache(&self, engine: &KvCacheOptions) -> KvCacheOptions {
        KvCacheOptions {
            cache_type_k: self.cache_type_k.clone(),
            cache_type_v: self.cache_type_v.clone(),
            flash_attn: self.flash_attn.clone(),
            cache_ram_mib: self.cache_ram_mib,
        }
        .or(engine)
    }

    /// This entry's own sampling defaults (without the engine's).
    pub fn sampling(&self) -> SamplingDefaults {
        SamplingDefaults {
            temperature: self.temperature,
            seed: self.seed,
            n_predict: self.n_predict,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
        }
    }
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Backend for models that name none (after the request and the model entry).
    pub default_backend: Option<String>,
    /// Model aliases: the names requests use.
    pub models: BTreeMap<String, ModelEntry>,
    /// Accept any model spec (Hugging Face repo, path) as a model name, not only aliases.
    pub open_specs: bool,
    /// Idle time after which a model is unloaded; `None` = never.
    pub keep_alive: Option<Duration>,
    /// Bytes loaded models may use in all; `None` = the OS's available memory.
    pub memory_limit: Option<u64>,
    /// Below this much available OS memory, idle models are unloaded (least recently used first).
    pub low_memory_threshold: u64,
    /// Requests that may wait for a busy model before new ones are refused.
    pub queue_depth: usize,
    /// Generations run at once per model; `None` = what the backend's manifest says.
    pub parallel: Option<u32>,
    /// Context length for models whose entry sets none; `None` = chosen from the machine.
    pub context_length: Option<u32>,
    /// Device for loads (`auto`, `cpu`, `cuda:0`, ...).
    pub device: String,
    /// CPU threads per model; 0 = backend default.
    pub threads: u32,
    /// KV cache options for models whose entry sets none.
    pub kv_cache: KvCacheOptions,
    /// Sampling defaults for every model (a model entry's own win over these).
    pub sampling: SamplingDefaults,
    /// A chat template over every model's own (a built-in name or Jinja); a model entry's
    /// own wins over this.
    pub chat_template: Option<String>,
    /// `[engine] chat_template_file`, until [`Self::read_chat_template_files`] reads it.
    pub chat_template_file: Option<PathBuf>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            default_backend: None,
            models: BTreeMap::new(),
            open_specs: true,
            keep_alive: Some(Duration::from_secs(300)),
            memory_limit: None,
            low_memory_threshold: 256 << 20,
            queue_depth: 64,
            parallel: None,
            context_length: None,
            device: "auto".to_string(),
            threads: 0,
            kv_cache: KvCacheOptions::default(),
            sampling: SamplingDefaults::default(),
            chat_template: None,
            chat_template_file: None,
        }
    }
}

/// The config file sections the engine reads (other sections are ignored here).
#[derive(Debug, Default, Deserialize)]
struct FileSections {
    #[serde(default)]
    engine: EngineSection,
    #[serde(default)]
    models: BTreeMap<String, ModelEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EngineSection {
    keep_alive_secs: Option<u64>,
    memory_limit_mib: Option<u64>,
    low_memory_threshold_mib: Option<u64>,
    queue_depth: Option<usize>,
    parallel: Option<u32>,
    context_length: Option<u32>,
    device: Option<String>,
    threads: Option<u32>,
    open_specs: Option<bool>,
    cache_type_k: Option<String>,
    cache_type_v: Option<String>,
    flash_attn: Option<String>,
    cache_ram_mib: Option<u64>,
    #[serde(alias = "temp")]
    temperature: Option<f32>,
    seed: Option<i64>,
    n_predict: Option<i64>,
    top_k: Option<u32>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    chat_template: Option<String>,
    chat_template_file: Option<PathBuf>,
}

impl EngineSettings {
    /// Applies the `[engine]` and `[models.*]` sections of config text.
    pub fn apply_config_text(&mut self, text: &str) -> Result<(), String> {
        let sections: FileSections =
            toml::from_str(text).map_err(|err| err.to_string().trim_end().to_string())?;
        let e = sections.engine;
        if let Some(secs) = e.keep_alive_secs {
            self.keep_alive = (secs > 0).then(|| Duration::from_secs(secs));
        }
        self.memory_limit = e.memory_limit_mib.map(|m| m << 20).or(self.memory_limit);
        if let Some(mib) = e.low_memory_threshold_mib {
            self.low_memory_threshold = mib << 20;
        }
        self.queue_depth = e.queue_depth.unwrap_or(self.queue_depth);
        self.parallel = e.parallel.or(self.parallel);
        self.context_length = e.context_length.or(self.context_length);
        self.device = e.device.unwrap_or(std::mem::take(&mut self.device));
        self.threads = e.threads.unwrap_or(self.threads);
        self.open_specs = e.open_specs.unwrap_or(self.open_specs);
        self.kv_cache = KvCacheOptions {
            cache_type_k: e.cache_type_k,
            cache_type_v: e.cache_type_v,
            flash_attn: e.flash_attn,
            cache_ram_mib: e.cache_ram_mib,
        }
        .or(&self.kv_cache);
        self.kv_cache
            .check()
            .map_err(|err| format!("[engine] {err}"))?;
        self.sampling = SamplingDefaults {
            temperature: e.temperature,
            seed: e.seed,
            n_predict: e.n_predict,
            top_k: e.top_k,
            top_p: e.top_p,
            min_p: e.min_p,
            repeat_penalty: e.repeat_penalty,
        }
        .or(&self.sampling);
        self.sampling
            .check()
            .map_err(|err| format!("[engine] {err}"))?;
        check_template_keys(
            "[engine]",
            e.chat_template.as_deref(),
            &e.chat_template_file,
        )?;
        if e.chat_template.is_some() || e.chat_template_file.is_some() {
            self.chat_template = e.chat_template;
            // Read later, relative to the config file (see `read_chat_template_files`).
            self.chat_template_file = e.chat_template_file;
        }
        for (name, entry) in &sections.models {
            let section = format!("[models.{name}]");
            check_template_keys(
                &section,
                entry.chat_template.as_deref(),
                &entry.chat_template_file,
            )?;
            entry
                .kv_cache(&KvCacheOptions::default())
                .check()
                .map_err(|err| format!("[models.{name}] {err}"))?;
            entry
                .sampling()
                .check()
                .map_err(|err| format!("[models.{name}] {err}"))?;
        }
        self.models.extend(sections.models);
        Ok(())
    }

    /// Reads the engine sections of a config file.
    pub fn apply_config_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read config file {}: {err}", path.display()))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        self.apply_config_text(&text)
            .and_then(|()| self.read_chat_template_files(base))
            .map_err(|err| format!("invalid config file {}: {err}", path.display()))
    }

    /// Reads every `chat_template_file` (relative ones from `base`, the config file's
    /// directory) into its `chat_template`, checking that it compiles.
    pub fn read_chat_template_files(&mut self, base: &Path) -> Result<(), String> {
        if let Some(file) = self.chat_template_file.take() {
            let text = template_override::read_file(&base.join(file))
                .map_err(|err| format!("[engine] chat_template_file: {err}"))?;
            self.chat_template = Some(text);
        }
        for (name, entry) in &mut self.models {
            if let Some(file) = entry.chat_template_file.take() {
                let text = template_override::read_file(&base.join(file))
                    .map_err(|err| format!("[models.{name}] chat_template_file: {err}"))?;
                entry.chat_template = Some(text);
            }
        }
        Ok(())
    }

    /// Adds a `NAME=SPEC` (or bare `SPEC`, named after itself) model flag.
    pub fn add_model_flag(&mut self, flag: &str) -> Result<(), String> {
        let (name, spec) = parse_model_flag(flag)?;
        let entry = self.models.entry(name).or_default();
        entry.spec = spec;
        Ok(())
    }
}

/// One of `chat_template` and `chat_template_file` per section, and a template that
/// compiles (files are checked when read).
fn check_template_keys(
    section: &str,
    template: Option<&str>,
    file: &Option<PathBuf>,
) -> Result<(), String> {
    match (template, file) {
        (Some(_), Some(_)) => Err(format!(
            "{section} sets both chat_template and chat_template_file; give one"
        )),
        (Some(value), None) => {
            template_override::check(value).map_err(|err| format!("{section} chat_template: {err}"))
        }
        _ => Ok(()),
    }
}

/// Splits `NAME=SPEC`; a flag without `=` names the model after its spec.
pub fn parse_model_flag(flag: &str) -> Result<(String, String), String> {
    let (name, spec) = match flag.split_once('=') {
        Some((name, spec)) => (name.trim(), spec.trim()),
        None => (flag.trim(), flag.trim()),
    };
    if name.is_empty() || spec.is_empty() {
        return Err(format!(
            "`--model {flag}`: expected NAME=SPEC, e.g. `--model tiny=./tiny.gguf`"
        ));
    }
    Ok((name.to_string(), spec.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_engine_and_model_sections() {
        let mut settings = EngineSettings::default();
        settings
            .apply_config_text(
                "default_backend = \"x\"\n[engine]\nkeep_alive_secs = 0\nqueue_depth = 3\n\
                 [models.tiny]\npath = \"./t.gguf\"\nbackend = \"llama-cpp\"\npinned = true\n\
                 adapters = [\"gh:o/r@v1/a.gguf:0.5\"]\n",
            )
            .expect("valid");
        assert_eq!(settings.keep_alive, None);
        assert_eq!(settings.queue_depth, 3);
        let tiny = &settings.models["tiny"];
        assert_eq!(tiny.spec, "./t.gguf");
        assert_eq!(tiny.backend.as_deref(), Some("llama-cpp"));
        assert!(tiny.pinned);
        assert_eq!(tiny.adapters, ["gh:o/r@v1/a.gguf:0.5"]);
    }

    #[test]
    fn cache_ram_per_engine_and_model() {
        let mut settings = EngineSettings::default();
        settings
            .apply_config_text(
                "[engine]\ncache_ram_mib = 512\n\
                 [models.a]\npath = \"a\"\ncache_ram_mib = 0\n[models.b]\npath = \"b\"\n",
            )
            .expect("valid");
        assert_eq!(settings.kv_cache.cache_ram_mib, Some(512));
        let a = settings.models["a"].kv_cache(&settings.kv_cache);
        let b = settings.models["b"].kv_cache(&settings.kv_cache);
        assert_eq!((a.cache_ram_mib, b.cache_ram_mib), (Some(0), Some(512)));
        let err = EngineSettings::default()
            .apply_config_text("[engine]\ncache_ram_mib = -1\n")
            .expect_err("negative");
        assert!(err.contains("cache_ram_mib"), "{err}");
    }

    #[test]
    fn sampling_defaults_per_engine_and_model_and_bad_ones_name_the_key() {
        let mut settings = EngineSettings::default();
        settings
            .apply_config_text(
                "[engine]\ntemp = 0.5\nn_predict = 9\n\
                 [models.tiny]\npath = \"t.gguf\"\nn_predict = 3\nseed = 4\n",
            )
            .expect("valid");
        assert_eq!(settings.sampling.temperature, Some(0.5));
        assert_eq!(settings.sampling.n_predict, Some(9));
        let tiny = settings.models["tiny"].sampling();
        assert_eq!((tiny.n_predict, tiny.seed), (Some(3), Some(4)));
        let err = EngineSettings::default()
            .apply_config_text("[engine]\ntop_p = 2.0\n")
            .expect_err("top_p 2");
        assert!(err.contains("[engine] top_p = 2"), "{err}");
        let err = EngineSettings::default()
            .apply_config_text("[models.x]\npath = \"x\"\nmin_p = -1.0\n")
            .expect_err("min_p -1");
        assert!(err.contains("[models.x] min_p = -1"), "{err}");
    }

    #[test]
    fn chat_templates_per_engine_and_model_files_relative_to_the_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("t.jinja"), "{{ messages[0]['content'] }}!").expect("write");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            "[engine]\nchat_template = \"llama3\"\n\
             [models.x]\npath = \"x\"\nchat_template_file = \"t.jinja\"\n",
        )
        .expect("write");
        let mut settings = EngineSettings::default();
        settings.apply_config_file(&config).expect("valid");
        assert_eq!(settings.chat_template.as_deref(), Some("llama3"));
        let x = &settings.models["x"];
        assert_eq!(
            x.chat_template.as_deref(),
            Some("{{ messages[0]['content'] }}!")
        );
        assert_eq!(x.chat_template_file, None);
        for (text, needle) in [
            (
                "[engine]\nchat_template = \"nope\"\n",
                "[engine] chat_template: `nope`",
            ),
            (
                "[models.y]\npath = \"y\"\nchat_template = \"{% if %}\"\n",
                "[models.y] chat_template: the Jinja template does not compile",
            ),
            (
                "[engine]\nchat_template = \"chatml\"\nchat_template_file = \"a\"\n",
                "give one",
            ),
        ] {
            let err = EngineSettings::default()
                .apply_config_text(text)
                .expect_err(text);
            assert!(err.contains(needle), "{err}");
        }
        std::fs::write(
            &config,
            "[engine]\nchat_template_file = \"missing.jinja\"\n",
        )
        .expect("write");
        let err = EngineSettings::default()
            .apply_config_file(&config)
            .expect_err("missing file");
        assert!(
            err.contains("chat_template_file") && err.contains("missing.jinja"),
            "{err}"
        );
    }

    #[test]
    fn unknown_engine_key_is_an_error() {
        let err = EngineSettings::default()
            .apply_config_text("[engine]\nkeepalive = 3\n")
            .expect_err("unknown key");
        assert!(err.contains("keepalive"), "{err}");
    }

    #[test]
    fn model_flags() {
        assert_eq!(
            parse_model_flag("a=./x.gguf").expect("ok"),
            ("a".into(), "./x.gguf".into())
        );
        assert_eq!(
            parse_model_flag("org/repo:Q4_K_M").expect("ok"),
            ("org/repo:Q4_K_M".into(), "org/repo:Q4_K_M".into())
        );
        assert!(parse_model_flag("=x").is_err());
        assert!(parse_model_flag("a=").is_err());
    }
}
