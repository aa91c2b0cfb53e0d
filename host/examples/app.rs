//! An application using llmlocal as a library: build an [`Engine`] from the config, fetch the
//! model with a progress callback, stream a generation, cancel another one half-way, read the
//! last generation's stats, and unload everything when memory runs short.
//!
//! ```text
//! cargo run -p llmlocal --example app                 # the built-in `stories` model, offline
//! cargo run -p llmlocal --example app -- qwen3:0.6b   # a preset, downloaded once
//! ```
//! Backends are found like `llmlocal` finds them: `$LLMLOCAL_PLUGIN_PATH`, the config's
//! `plugins.dirs`, `<exe dir>/plugins`, `~/.local/share/llmlocal/plugins`.
//! `host/tests/example_app.rs` runs [`run`] on stories260K in CI.

use futures_util::StreamExt as _;
use llmlocal::{
    config::Config,
    engine::{ChatMessage, Engine, ErrorClass, Event, GenerationConfig, Prompt},
    models::CancellationToken,
};

/// What one run of the app saw (the test checks it).
#[derive(Debug)]
pub struct Summary {
    pub was_cached: bool,
    /// The streamed text of the full generation.
    pub text: String,
    /// Tokens the engine reported for it (`last_stats`).
    pub completion_tokens: u32,
    pub tokens_per_second: f64,
    /// Text pieces received before the second generation was cancelled.
    pub pieces_before_cancel: usize,
    /// Models unloaded on the (simulated) memory warning.
    pub unloaded: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let model = std::env::args().nth(1).unwrap_or_else(|| "stories".into());
    let engine = Engine::from_config(&Config::load(None)?, &[])?;
    match run(&engine, &model, &mut std::io::stdout()).await {
        Ok(summary) => {
            println!("\n{summary:#?}");
            Ok(())
        }
        // Errors carry a class an app can branch on (and a message a user can act on).
        Err(err) => {
            let what = match err
                .downcast_ref::<llmlocal::engine::EngineError>()
                .map(|e| e.class())
            {
                Some(ErrorClass::NotFound) => "unknown model or file",
                Some(ErrorClass::Unavailable) => "no backend or not enough memory",
                Some(ErrorClass::BadRequest) => "bad request",
                _ => "failed",
            };
            anyhow::bail!("{what}: {err}")
        }
    }
}

/// The app's flow on `model`, writing the story to `out` as it streams.
pub async fn run(
    engine: &Engine,
    model: &str,
    out: &mut impl std::io::Write,
) -> anyhow::Result<Summary> {
    // 1. Is it on disk? If not, fetch it with progress (Ctrl-C-like cancel via the token).
    let was_cached = engine.is_cached(model);
    let files = engine
        .prefetch_with_progress(
            model,
            |p| eprint!("\rdownloading {}: {:5.1}%", p.file, p.fraction * 100.0),
            CancellationToken::new(),
        )
        .await?;
    writeln!(out, "model files: {}", files.path.display())?;

    // 2. Stream a generation. A story model continues text; a chat model gets messages.
    let prompt = if model == "stories" {
        Prompt::Text("Once upon a time".into())
    } else {
        Prompt::Chat(vec![ChatMessage::new("user", "Tell me a two-line story.")])
    };
    let config = GenerationConfig::greedy(64);
    let mut stream = engine
        .generate(model, prompt.clone(), config.clone())
        .await?;
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event? {
            Event::Text(piece) => {
                write!(out, "{piece}")?;
                out.flush()?;
                text.push_str(&piece);
            }
            Event::Done(_) => break,
            // Logprobs (when asked for) and events of later versions.
            _ => {}
        }
    }
    writeln!(out)?;

    // 3. The stats of the generation that just finished.
    let stats = engine
        .last_stats()
        .ok_or_else(|| anyhow::anyhow!("no stats after a finished generation"))?;
    writeln!(
        out,
        "[{} tokens, {:.0} tok/s, first token after {:.1} ms]",
        stats.completion_tokens, stats.stats.tokens_per_second, stats.stats.time_to_first_token_ms
    )?;

    // 4. Cancel: dropping the stream stops the generation (the user pressed "stop").
    let mut stream = engine.generate(model, prompt, config).await?;
    let mut pieces_before_cancel = 0;
    while let Some(event) = stream.next().await {
        if let Event::Text(_) = event? {
            pieces_before_cancel += 1;
            if pieces_before_cancel == 3 {
                break;
            }
        }
    }
    drop(stream);

    // 5. The OS says memory is short (e.g. a mobile app's memory warning): free the models.
    let unloaded = engine.unload_all();
    Ok(Summary {
        was_cached,
        text,
        completion_tokens: stats.completion_tokens,
        tokens_per_second: stats.stats.tokens_per_second,
        pieces_before_cancel,
        unloaded,
    })
}
