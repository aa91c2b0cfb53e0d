//! `llmlocal serve`: the OpenAI- and Ollama-compatible HTTP server.

use crate::{
    config::Config,
    engine::{
        defaults::flag_of, template_override, Engine, EngineSettings, KvCacheOptions,
        SamplingDefaults,
    },
    models::ModelManager,
    plugins::PluginRegistry,
    server::{self, ServerSettings},
};
use anyhow::Context as _;
use std::{io::Write as _, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (default: the config's [server] bind, else 127.0.0.1:11435;
    /// port 0 picks a free one).
    #[arg(long, env = "LLMLOCAL_BIND", value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// A model requests can name: NAME=SPEC, where SPEC is a path, a preset (`stories`,
    /// `qwen3:0.6b`; see `llmlocal presets`) or a Hugging Face spec (org/repo:Q4_K_M,
    /// hf://org/repo/file.gguf); a bare SPEC is named after itself (repeatable).
    #[arg(long = "model", value_name = "NAME=SPEC")]
    pub models: Vec<String>,
    /// The backend for models that name none (default: the config's default_backend, else
    /// the first loaded backend that reads the model's format).
    #[arg(long)]
    pub backend: Option<String>,
    /// Require `Authorization: Bearer KEY` (repeatable; also $LLMLOCAL_API_KEYS).
    #[arg(long = "api-key", value_name = "KEY")]
    pub api_keys: Vec<String>,
    /// Require `Authorization: Bearer KEY` for routes that change the models this server
    /// holds: pull, delete, and downloads a request names (repeatable; also
    /// $LLMLOCAL_ADMIN_KEY). Without one those answer only loopback clients sending JSON
    /// with a loopback Host.
    #[arg(long = "admin-key", value_name = "KEY")]
    pub admin_keys: Vec<String>,
    /// Browser Origins (besides loopback ones) whose pages may pull/delete without an admin
    /// key; `*` matches any run of characters (comma-separated or repeatable).
    #[arg(
        long = "allowed-origins",
        env = "LLMLOCAL_ALLOWED_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Origins browsers may call this API from (CORS), as http(s)://host[:port]
    /// (comma-separated or repeatable; default none).
    #[arg(
        long = "cors-origins",
        env = "LLMLOCAL_CORS_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Refuse /api/pull and every download a request names (configured models still
    /// download on first use).
    #[arg(long)]
    pub no_remote_pull: bool,
    /// Connections open at once; one more is answered 503 and closed (default 512).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Seconds a client has to send a request's headers, from its connection's start or the
    /// end of its previous response (so also the keep-alive idle limit; default 30).
    #[arg(long, value_name = "SECS")]
    pub header_timeout: Option<u64>,
    /// Do not serve the chat page at `/` (a browser chat over this server's own API).
    #[arg(long)]
    pub no_chat_page: bool,
    /// Accept any model spec as a model name, not only the configured names.
    #[arg(long)]
    pub allow_any_model: bool,
    /// Unload a model idle this many seconds (0 = never).
    #[arg(long, value_name = "SECS")]
    pub keep_alive: Option<u64>,
    /// Requests that may wait per model before new ones get 429.
    #[arg(long, value_name = "N")]
    pub queue_depth: Option<usize>,
    /// Generations run at once per model (default: what the backend says).
    #[arg(long, value_name = "N")]
    pub parallel: Option<u32>,
    /// Context length for models that set none (default: from the machine's memory).
    #[arg(long, value_name = "TOKENS")]
    pub context_length: Option<u32>,
    /// CPU threads per model (default: the backend's, one per physical core for llama.cpp).
    #[arg(long, value_name = "N")]
    pub threads: Option<u32>,
    /// KV cache K type for models that set none: f16 (default), q8_0, q4_0, ... (llama-cpp).
    #[arg(long, value_name = "TYPE")]
    pub cache_type_k: Option<String>,
    /// KV cache V type, as --cache-type-k; a quantized V cache needs flash attention.
    #[arg(long, value_name = "TYPE")]
    pub cache_type_v: Option<String>,
    /// Flash attention for models that set none: on, off or auto (default: the backend's).
    #[arg(long, value_name = "on|off|auto")]
    pub flash_attn: Option<String>,
    /// MiB of host RAM for the KV state of prompts pushed out of the sequence slots, restored
    /// when a conversation comes back (llama-server's --cache-ram; llama-cpp). 0 = off;
    /// default: 1/8 of the machine's memory, at most 2048.
    #[arg(long = "cache-ram", value_name = "MIB")]
    pub cache_ram: Option<u64>,
    /// Default temperature for requests that give none (0 = greedy). This and the sampling
    /// flags below are llama-server's; a model's config wins over them, a request's own field
    /// over both.
    #[arg(
        long = "temp",
        visible_alias = "temperature",
        value_name = "F",
        allow_negative_numbers = true
    )]
    pub temp: Option<f32>,
    /// Default seed for requests that give none (-1 = random, the default).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub seed: Option<i64>,
    /// Tokens to generate when a request gives no limit (-1 = up to --max-tokens-cap).
    #[arg(
        long = "n-predict",
        visible_alias = "predict",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub n_predict: Option<i64>,
    /// Default top-k (0 = off).
    #[arg(long, value_name = "N")]
    pub top_k: Option<u32>,
    /// Default top-p (1 = off).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Default min-p (0 = off).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Default repeat penalty (1 = off).
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    pub repeat_penalty: Option<f32>,
    /// A chat template over every model's own, as llama-server's: a built-in name (chatml,
    /// llama2, llama3, gemma, phi3, mistral-v7) or a Jinja template. A model's config
    /// `chat_template` wins over it.
    #[arg(
        long,
        value_name = "NAME_OR_JINJA",
        conflicts_with = "chat_template_file"
    )]
    pub chat_template: Option<String>,
    /// As --chat-template, from a file.
    #[arg(long, value_name = "PATH")]
    pub chat_template_file: Option<PathBuf>,
    /// The most tokens one request may generate (and the default).
    #[arg(long, value_name = "TOKENS")]
    pub max_tokens_cap: Option<u32>,
    /// Largest request body accepted (413 above).
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Memory loaded models may use in all (default: what the OS has available).
    #[arg(long, value_name = "MIB")]
    pub memory_limit_mib: Option<u64>,
    /// On Ctrl-C/SIGTERM, wait this long for in-flight requests before exiting anyway.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub drain_timeout: u64,
    /// Join an `llmlocal router` at this URL (needs --join-token).
    #[arg(long, value_name = "ROUTER_URL", requires = "join_token")]
    pub join: Option<String>,
    /// The router's join token.
    #[arg(
        long,
        env = "LLMLOCAL_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
    /// The URL the router reaches this node at (default: http://<bound address>).
    #[arg(long, value_name = "URL", requires = "join")]
    pub advertise: Option<String>,
    /// This node's id at the router (default: from the advertised address).
    #[arg(long, value_name = "ID", requires = "join")]
    pub node_id: Option<String>,
}

pub fn run(args: ServeArgs, config: &Config, dirs: &[PathBuf]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, config, dirs))
}

fn settings(args: &ServeArgs, config: &Config) -> anyhow::Result<(EngineSettings, ServerSettings)> {
    let mut engine = EngineSettings {
        default_backend: config.default_backend.clone(),
        open_specs: false,
        ..EngineSettings::default()
    };
    let mut server = ServerSettings {
        // Names made by /api/copy and /api/create outlive a restart (without a data dir,
        // they live in memory only).
        models_file: dirs::data_dir().map(|d| d.join("llmlocal").join("ollama-models.json")),
        ..ServerSettings::default()
    };
    if let Some(path) = &config.path {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let invalid =
            |err: String| anyhow::anyhow!("invalid config file {}: {err}", path.display());
        engine.apply_config_text(&text).map_err(invalid)?;
        let base = path.parent().unwrap_or_else(|| std::path::Path::new("."));
        engine.read_chat_template_files(base).map_err(invalid)?;
        server.apply_config_text(&text).map_err(invalid)?;
    }
    for flag in &args.models {
        engine.add_model_flag(flag).map_err(anyhow::Error::msg)?;
    }
    engine.default_backend = args.backend.clone().or(engine.default_backend);
    engine.open_specs |= args.allow_any_model;
    if let Some(secs) = args.keep_alive {
        engine.keep_alive = (secs > 0).then(|| Duration::from_secs(secs));
    }
    engine.queue_depth = args.queue_depth.unwrap_or(engine.queue_depth);
    engine.parallel = args.parallel.or(engine.parallel);
    engine.context_length = args.context_length.or(engine.context_length);
    engine.threads = args.threads.unwrap_or(engine.threads);
    engine.kv_cache = KvCacheOptions {
        cache_type_k: args.cache_type_k.clone(),
        cache_type_v: args.cache_type_v.clone(),
        flash_attn: args.flash_attn.clone(),
        cache_ram_mib: args.cache_ram,
    }
    .or(&engine.kv_cache);
    engine.kv_cache.check().map_err(anyhow::Error::msg)?;
    engine.memory_limit = args
        .memory_limit_mib
        .map(|m| m << 20)
        .or(engine.memory_limit);
    server.bind = args.bind.unwrap_or(server.bind);
    server.api_keys.extend(args.api_keys.iter().cloned());
    server.admin_keys.extend(args.admin_keys.iter().cloned());
    server.apply_env();
    server
        .allowed_origins
        .extend(args.allowed_origins.iter().cloned());
    server.no_remote_pull |= args.no_remote_pull;
    server.chat_page &= !args.no_chat_page;
    server
        .cors_origins
        .extend(args.cors_origins.iter().cloned());
    server.max_connections = args.max_connections.unwrap_or(server.max_connections);
    if let Some(secs) = args.header_timeout {
        server.header_timeout = Duration::from_secs(secs);
    }
    server.check().map_err(anyhow::Error::msg)?;
    server.max_tokens_cap = args.max_tokens_cap.unwrap_or(server.max_tokens_cap);
    server.max_body_bytes = args.max_body_bytes.unwrap_or(server.max_body_bytes);
    sampling_defaults(args, &mut engine, server.max_tokens_cap)?;
    chat_template(args, &mut engine)?;
    Ok((engine, server))
}

/// `--chat-template` / `--chat-template-file` over the config's `[engine]` one, checked.
fn chat_template(args: &ServeArgs, engine: &mut EngineSettings) -> anyhow::Result<()> {
    if let Some(value) = &args.chat_template {
        template_override::check(value).map_err(|err| anyhow::anyhow!("--chat-template: {err}"))?;
        engine.chat_template = Some(value.clone());
    }
    if let Some(path) = &args.chat_template_file {
        let text = template_override::read_file(path)
            .map_err(|err| anyhow::anyhow!("--chat-template-file: {err}"))?;
        engine.chat_template = Some(text);
    }
    Ok(())
}

/// The sampling flags over the config's `[engine]` defaults, checked; every default
/// (server-wide and per model) is checked against the per-request cap.
fn sampling_defaults(
    args: &ServeArgs,
    engine: &mut EngineSettings,
    cap: u32,
) -> anyhow::Result<()> {
    engine.sampling = SamplingDefaults {
        temperature: args.temp,
        seed: args.seed,
        n_predict: args.n_predict,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
    }
    .or(&engine.sampling);
    // The config's values were checked when it was read: a bad value here is a flag's.
    engine
        .sampling
        .check()
        .map_err(|err| anyhow::anyhow!("{} {}: {}", flag_of(err.key), err.value, err.reason))?;
    engine
        .sampling
        .check_cap(cap)
        .map_err(|err| anyhow::anyhow!("{} / [engine] {err}", flag_of(err.key)))?;
    for (name, entry) in &engine.models {
        entry
            .sampling()
            .check_cap(cap)
            .map_err(|err| anyhow::anyhow!("[models.{name}] {err}"))?;
    }
    Ok(())
}

async fn serve(args: ServeArgs, config: &Config, dirs: &[PathBuf]) -> anyhow::Result<()> {
    let (engine_settings, server_settings) = settings(&args, config)?;
    let registry = Arc::new(PluginRegistry::load(dirs));
    let backends = registry.backend_names();
    if backends.is_empty() {
        tracing::warn!("no backend plugin loaded; `llmlocal plugins` lists what was found");
    }
    let manager = match ModelManager::from_env() {
        Ok(manager) => Some(Arc::new(manager)),
        Err(err) => {
            tracing::warn!("no model cache ({err}): only local model paths will work");
            None
        }
    };
    let models: Vec<String> = engine_settings.models.keys().cloned().collect();
    let engine = Engine::new(engine_settings, registry, manager);
    let bind = server_settings.bind;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let address = listener.local_addr()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "llmlocal listening on http://{address}")?;
    stdout.flush()?;
    eprintln!(
        "backends: {}; models: {}; auth: {}",
        list(&backends),
        list(&models),
        auth_summary(&server_settings)
    );
    if server_settings.chat_page {
        eprintln!("chat page: http://{address}/ (--no-chat-page turns it off)");
    }
    // `--join`: register with a router and send it heartbeats while serving (router/).
    if let Some(router_url) = args.join.clone() {
        let options = crate::router::serve_join::JoinOptions {
            router_url,
            join_token: args.join_token.clone().unwrap_or_default(),
            advertise: args.advertise.clone(),
            node_id: args.node_id.clone(),
        };
        crate::router::serve_join::spawn_engine_agent(options, address, engine.clone());
    }
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            stop.cancel();
        }
    });
    let drain = Duration::from_secs(args.drain_timeout);
    let served = server::serve(
        listener,
        engine,
        server_settings,
        stop.clone().cancelled_owned(),
    );
    tokio::select! {
        result = served => result?,
        () = async { stop.cancelled().await; tokio::time::sleep(drain).await } => {
            eprintln!("llmlocal: in-flight requests did not finish within {}s; exiting", drain.as_secs());
        }
    }
    eprintln!("llmlocal: stopped");
    Ok(())
}

/// How requests are authorized, for the start-up line.
fn auth_summary(settings: &ServerSettings) -> String {
    let inference = if settings.api_keys.is_empty() {
        "open"
    } else {
        "API key"
    };
    let changes = match (settings.no_remote_pull, settings.admin_keys.is_empty()) {
        (true, true) => "pulls off; delete from loopback only",
        (true, false) => "pulls off; delete with the admin key",
        (false, true) => "loopback only",
        (false, false) => "admin key",
    };
    format!("inference {inference}, model changes {changes}")
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {err}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!("cannot listen for SIGTERM: {err}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    eprintln!("llmlocal: shutting down, finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn settings_of(flags: &[&str]) -> EngineSettings {
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
            .expect("flags parse");
        settings(&cli.serve, &Config::default())
            .expect("settings")
            .0
    }

    fn server_of(flags: &[&str]) -> anyhow::Result<ServerSettings> {
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
            .expect("flags parse");
        settings(&cli.serve, &Config::default()).map(|(_, server)| server)
    }

    #[test]
    fn security_flags_reach_the_server() {
        let server = server_of(&[
            "--admin-key",
            "a",
            "--allowed-origins",
            "http://x,http://y",
            "--no-remote-pull",
            "--max-connections",
            "9",
            "--header-timeout",
            "4",
        ])
        .expect("settings");
        assert!(server.admin_keys.contains(&"a".to_string()));
        assert!(server.allowed_origins.contains(&"http://y".to_string()));
        assert!(server.no_remote_pull);
        assert_eq!(server.max_connections, 9);
        assert_eq!(server.header_timeout, Duration::from_secs(4));
        let err = server_of(&["--max-connections", "0"]).expect_err("zero");
        assert!(err.to_string().contains("max_connections"), "{err}");
    }

    #[test]
    fn load_shape_flags_reach_the_engine() {
        let engine = settings_of(&[
            "--threads",
            "3",
            "--parallel",
            "2",
            "--context-length",
            "640",
        ]);
        assert_eq!(engine.threads, 3);
        assert_eq!(engine.parallel, Some(2));
        assert_eq!(engine.context_length, Some(640));
        // Unset: the backend's own thread count (0).
        assert_eq!(settings_of(&[]).threads, 0);
    }

    #[test]
    fn sampling_flags_reach_the_engine_and_bad_ones_name_the_flag() {
        let engine = settings_of(&["--temp", "0", "--seed", "-1", "--n-predict", "5"]);
        assert_eq!(engine.sampling.temperature, Some(0.0));
        assert_eq!(engine.sampling.seed, Some(-1));
        assert_eq!(engine.sampling.n_predict, Some(5));
        for (flags, named) in [
            (&["--temp", "-1"][..], "--temp -1"),
            (&["--top-p", "1.5"][..], "--top-p 1.5"),
            (&["--n-predict", "0"][..], "--n-predict 0"),
            (&["--repeat-penalty", "0"][..], "--repeat-penalty 0"),
            (
                &["--n-predict", "100", "--max-tokens-cap", "10"][..],
                "--n-predict",
            ),
        ] {
            let cli = Cli::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
                .expect("flags parse");
            let err = settings(&cli.serve, &Config::default()).expect_err("bad value");
            assert!(err.to_string().contains(named), "{flags:?}: {err}");
        }
    }

    #[test]
    fn chat_template_flags_are_checked_and_reach_the_engine() {
        assert_eq!(
            settings_of(&["--chat-template", "gemma"])
                .chat_template
                .as_deref(),
            Some("gemma")
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("t.jinja");
        std::fs::write(&file, "{{ 'X' }}").expect("write");
        let flag = file.to_string_lossy().to_string();
        assert_eq!(
            settings_of(&["--chat-template-file", &flag])
                .chat_template
                .as_deref(),
            Some("{{ 'X' }}")
        );
        std::fs::write(&file, "{% for %}").expect("write");
        for (flags, named) in [
            (vec!["--chat-template", "nope"], "--chat-template: `nope`"),
            (
                vec!["--chat-template", "{{ x"],
                "--chat-template: the Jinja",
            ),
            (
                vec!["--chat-template-file", &flag],
                "--chat-template-file: ",
            ),
        ] {
            let cli = Cli::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()))
                .expect("flags parse");
            let err = settings(&cli.serve, &Config::default()).expect_err("bad template");
            assert!(err.to_string().contains(named), "{flags:?}: {err}");
        }
    }

    #[test]
    fn kv_cache_flags_reach_the_engine_and_are_checked() {
        let engine = settings_of(&[
            "--cache-type-k",
            "q8_0",
            "--flash-attn",
            "on",
            "--cache-ram",
            "512",
        ]);
        assert_eq!(engine.kv_cache.cache_ram_mib, Some(512));
        assert_eq!(engine.kv_cache.cache_type_k.as_deref(), Some("q8_0"));
        assert_eq!(engine.kv_cache.cache_type_v, None);
        assert_eq!(engine.kv_cache.flash_attn.as_deref(), Some("on"));
        let cli = Cli::try_parse_from(["serve", "--cache-type-v", "q9"]).expect("flags parse");
        let err = settings(&cli.serve, &Config::default()).expect_err("bad type");
        assert!(err.to_string().contains("cache_type_v `q9`"), "{err}");
    }
}
