//! The config file (TOML). Small on purpose; later features add sections.
//!
//! ```toml
//! default_backend = "llama-cpp"   # used when neither the request nor --backend names one
//!
//! [plugins]
//! dirs = ["/opt/llmlocal/plugins", "plugins"]   # relative paths: from the config file's dir
//!
//! [plugins.isolation]            # per backend: "in-process" or "process" (worker process)
//! llama-cpp = "in-process"       # default: in-process for <exe dir>/plugins, else process
//! my-plugin = "process"
//!
//! [plugins.worker]               # process isolation: limits and hang detection
//! max_memory_mb = 8192           # address space of each worker (RLIMIT_AS)
//! max_threads = 4                # compute threads of each worker (OpenMP, rayon, candle)
//! step_timeout_secs = 120        # a worker owing a token this long is killed as hung
//! load_timeout_secs = 600        # ... owing a loaded model (or its constructor)
//! call_timeout_secs = 30         # ... owing tokenize/detokenize/metadata/stats
//! ```
//!
//! Found at `--config FILE`, else `$LLMLOCAL_CONFIG`, else `<config dir>/llmlocal/config.toml`
//! if it exists. `$LLMLOCAL_DEFAULT_BACKEND` overrides `default_backend`.

use crate::plugins::Isolation;
use serde::Deserialize;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

pub const CONFIG_ENV: &str = "LLMLOCAL_CONFIG";
pub const DEFAULT_BACKEND_ENV: &str = "LLMLOCAL_DEFAULT_BACKEND";

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Config {
    /// The file this was read from; `None` when no config file was found.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// The backend used when nothing more specific is asked for.
    #[serde(default)]
    pub default_backend: Option<String>,
    #[serde(default)]
    pub plugins: PluginsConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Extra plugin directories, searched after `$LLMLOCAL_PLUGIN_PATH`.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Per backend name: in this process or in a worker process of its own.
    #[serde(default)]
    pub isolation: BTreeMap<String, Isolation>,
    #[serde(default)]
    pub worker: WorkerConfig,
}

/// Process isolation: how workers are limited and watched.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Address-space limit of each worker in MiB; unset = none.
    pub max_memory_mb: Option<u64>,
    /// Compute threads of each worker (OpenMP's thread limit, rayon's and candle's pools);
    /// unset = what the backend picks. 0 is refused.
    pub max_threads: Option<std::num::NonZeroU32>,
    /// A worker that owes a token and stays silent this long is killed as hung (default 120).
    pub step_timeout_secs: Option<u64>,
    /// The same for the constructor and `load` (default 600: big models on slow disks).
    pub load_timeout_secs: Option<u64>,
    /// The same for tokenize, detokenize, metadata and stats (default 30).
    pub call_timeout_secs: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Reads the config: `explicit` (from `--config`), else `$LLMLOCAL_CONFIG`, else the
    /// default file if it exists, else defaults. Then applies the environment overrides.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let from_env = std::env::var_os(CONFIG_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let mut config = match explicit.map(Path::to_path_buf).or(from_env) {
            // A file the user named must exist.
            Some(path) => Self::read(&path)?,
            None => match default_path().filter(|p| p.is_file()) {
                Some(path) => Self::read(&path)?,
                None => Config::default(),
            },
        };
        if let Some(backend) = std::env::var(DEFAULT_BACKEND_ENV)
            .ok()
            .filter(|v| !v.is_empty())
        {
            config.default_backend = Some(backend);
        }
        Ok(config)
    }

    /// Reads and parses one config file.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        for dir in &mut config.plugins.dirs {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses config text; the error message includes the line and column.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|err| err.to_string().trim_end().to_string())
    }
}

/// `<config dir>/llmlocal/config.toml` (`~/.config/llmlocal/config.toml` on Linux).
pub fn default_path() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("llmlocal").join("config.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_per_plugin_and_worker_limits_parse_and_a_bad_mode_is_refused() {
        let config = Config::parse(
            "[plugins.isolation]\nllama-cpp = \"in-process\"\nmine = \"process\"\n\
             [plugins.worker]\nmax_memory_mb = 512\nmax_threads = 3\nstep_timeout_secs = 5\n\
             load_timeout_secs = 7\ncall_timeout_secs = 2\n",
        )
        .expect("parses");
        assert_eq!(
            config.plugins.isolation.get("mine"),
            Some(&Isolation::Process)
        );
        assert_eq!(
            config.plugins.isolation.get("llama-cpp"),
            Some(&Isolation::InProcess)
        );
        assert_eq!(config.plugins.worker.max_memory_mb, Some(512));
        assert_eq!(config.plugins.worker.max_threads.map(|n| n.get()), Some(3));
        let err = Config::parse("[plugins.worker]\nmax_threads = 0\n").expect_err("zero");
        assert!(err.contains("max_threads"), "{err}");
        assert_eq!(config.plugins.worker.load_timeout_secs, Some(7));
        assert_eq!(config.plugins.worker.call_timeout_secs, Some(2));
        let err = Config::parse("[plugins.isolation]\nx = \"sandbox\"\n").expect_err("bad");
        assert!(err.contains("sandbox"), "{err}");
    }

    #[test]
    fn parses_plugins_and_default_backend() {
        let config =
            Config::parse("default_backend = \"candle\"\n[plugins]\ndirs = [\"/a\", \"b\"]\n")
                .expect("valid config");
        assert_eq!(config.default_backend.as_deref(), Some("candle"));
        assert_eq!(
            config.plugins.dirs,
            vec![PathBuf::from("/a"), PathBuf::from("b")]
        );
        assert_eq!(
            Config::parse("").expect("empty is valid"),
            Config::default()
        );
    }

    #[test]
    fn malformed_toml_names_file_and_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[plugins]\ndirs = [\"a\",\n").expect("write");
        let err = Config::read(&path).expect_err("malformed").to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn unknown_plugin_key_is_an_error() {
        let err = Config::parse("[plugins]\ndefault_backend = \"x\"\n").expect_err("unknown key");
        assert!(err.contains("default_backend"), "{err}");
    }

    #[test]
    fn relative_dirs_are_relative_to_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[plugins]\ndirs = [\"plugins\", \"/abs\"]\n").expect("write");
        let config = Config::read(&path).expect("valid");
        assert_eq!(
            config.plugins.dirs,
            vec![dir.path().join("plugins"), PathBuf::from("/abs")]
        );
        assert_eq!(config.path.as_deref(), Some(path.as_path()));
    }
}
