//! `llmlocal run MODEL` without a prompt: an interactive chat.
//!
//! Each line read from stdin is a user message; the conversation so far goes to the engine as
//! chat messages, so the model's own chat template renders it, and the answer streams to
//! stdout. `/clear` forgets the conversation, `/bye` or end of input ends the chat. When stdin
//! is not a terminal (a pipe, a file) there is no `>>>` prompt and no banner, so stdout holds
//! only the answers, one per input line, each ended by a newline.

use super::run_cmd::RunArgs;
use crate::{
    config::Config,
    engine::ModelEntry,
    engine::{ChatMessage, Completion, Engine, EngineSettings, Event, GenerationConfig, Prompt},
    models::ModelManager,
    plugins::PluginRegistry,
};
use anyhow::Context as _;
use futures_util::StreamExt as _;
use std::{
    io::{IsTerminal as _, Write},
    path::PathBuf,
    sync::Arc,
};

/// What one input line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Input<'a> {
    Say(&'a str),
    Clear,
    Bye,
    Help,
    Unknown(&'a str),
    Nothing,
}

fn parse(line: &str) -> Input<'_> {
    let line = line.trim_end_matches(['\n', '\r']);
    match line.trim() {
        "" => Input::Nothing,
        "/bye" | "/exit" | "/quit" => Input::Bye,
        "/clear" => Input::Clear,
        "/help" | "/?" => Input::Help,
        command if command.starts_with('/') && !command.contains(char::is_whitespace) => {
            Input::Unknown(command)
        }
        _ => Input::Say(line),
    }
}

const HELP: &str = "/clear forgets the conversation, /bye (or Ctrl-D) ends the chat";

/// Runs the chat until `/bye` or the end of stdin.
pub fn run(args: &RunArgs, config: &Config, dirs: &[PathBuf]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let name = args.model_path.to_string_lossy().into_owned();
    let engine = engine_for(args, config, dirs, &name)?;
    let backend = args.backend.as_deref();
    let loaded = runtime
        .block_on(async {
            match args.adapters.as_slice() {
                [] => engine.load(&name, backend).await,
                adapters => engine.load_with_adapters(&name, backend, adapters).await,
            }
        })
        .with_context(|| format!("cannot load {name}"))?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("Chatting with {name} on `{}`; {HELP}.", loaded.backend);
    }
    let chat = Chat {
        engine,
        name,
        config: generation_config(args),
        interactive,
    };
    runtime.block_on(chat.run(std::io::stdin().lock()))
}

/// An engine that knows the model under `name`, with the config file's `[engine]` settings.
fn engine_for(
    args: &RunArgs,
    config: &Config,
    dirs: &[PathBuf],
    name: &str,
) -> anyhow::Result<Engine> {
    let mut settings = EngineSettings {
        default_backend: config.default_backend.clone(),
        open_specs: false,
        ..EngineSettings::default()
    };
    if let Some(path) = &config.path {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        settings
            .apply_config_text(&text)
            .map_err(|err| anyhow::anyhow!("invalid config file {}: {err}", path.display()))?;
    }
    let entry = ModelEntry {
        backend: args.backend.clone(),
        ..ModelEntry::new(name)
    };
    settings.models.insert(name.to_string(), entry);
    // Without a cache only local paths work, which is what `run` takes anyway.
    let manager = ModelManager::from_env().ok().map(Arc::new);
    let registry = Arc::new(PluginRegistry::load(dirs));
    Ok(Engine::new(settings, registry, manager))
}

fn generation_config(args: &RunArgs) -> GenerationConfig {
    GenerationConfig {
        max_tokens: Some(args.max_tokens),
        temperature: Some(args.temperature),
        seed: Some(args.seed),
        backend: args.backend.clone(),
        // `--adapter` flags: the same adapters for every turn.
        adapters: (!args.adapters.is_empty()).then(|| args.adapters.clone()),
        ..GenerationConfig::default()
    }
}

struct Chat {
    engine: Engine,
    name: String,
    config: GenerationConfig,
    interactive: bool,
}

impl Chat {
    async fn run(&self, mut input: impl std::io::BufRead) -> anyhow::Result<()> {
        let mut history: Vec<ChatMessage> = Vec::new();
        let mut line = String::new();
        loop {
            self.prompt()?;
            line.clear();
            // A blocking read is fine: nothing else runs while we wait for the user.
            if input.read_line(&mut line).context("cannot read stdin")? == 0 {
                break;
            }
            match parse(&line) {
                Input::Nothing => {}
                Input::Bye => break,
                Input::Clear => {
                    history.clear();
                    eprintln!("(conversation cleared)");
                }
                Input::Help => eprintln!("{HELP}"),
                Input::Unknown(command) => eprintln!("unknown command {command}: {HELP}"),
                Input::Say(text) => self.turn(&mut history, text).await?,
            }
        }
        if self.interactive {
            eprintln!();
        }
        Ok(())
    }

    fn prompt(&self) -> anyhow::Result<()> {
        if self.interactive {
            let mut stdout = std::io::stdout().lock();
            write!(stdout, ">>> ")?;
            stdout.flush()?;
        }
        Ok(())
    }

    /// One user message and the streamed answer; both join the history when it succeeds.
    /// A failed turn is reported and forgotten when interactive, and ends a piped chat.
    async fn turn(&self, history: &mut Vec<ChatMessage>, text: &str) -> anyhow::Result<()> {
        history.push(ChatMessage::new("user", text));
        let mut stdout = std::io::stdout();
        match self.answer(history, &mut stdout).await {
            Ok((answer, done)) => {
                print_stats(&done);
                history.push(ChatMessage::new("assistant", answer));
                Ok(())
            }
            Err(err) if self.interactive => {
                history.pop();
                eprintln!("error: {err:#}");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    async fn answer(
        &self,
        history: &[ChatMessage],
        out: &mut impl Write,
    ) -> anyhow::Result<(String, Completion)> {
        let mut stream = self
            .engine
            .generate(
                &self.name,
                Prompt::Chat(history.to_vec()),
                self.config.clone(),
            )
            .await?;
        let mut text = String::new();
        while let Some(event) = stream.next().await {
            match event? {
                Event::Text(piece) => {
                    out.write_all(piece.as_bytes())?;
                    out.flush().context("cannot write to stdout")?;
                    text.push_str(&piece);
                }
                // The chat never asks for logprobs.
                Event::Logprobs(_) => {}
                Event::Done(done) => {
                    writeln!(out)?;
                    out.flush()?;
                    return Ok((text, done));
                }
            }
        }
        anyhow::bail!("the generation ended without a final event")
    }
}

fn print_stats(done: &Completion) {
    eprintln!(
        "[{} prompt tokens, {} generated, {:.1} tok/s, time to first token {:.1} ms, finished: {}]",
        done.prompt_tokens,
        done.completion_tokens,
        done.stats.tokens_per_second,
        done.stats.time_to_first_token_ms,
        done.finish_reason.as_str()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_messages_or_commands() {
        assert_eq!(parse("hello there\n"), Input::Say("hello there"));
        assert_eq!(parse("  /bye \r\n"), Input::Bye);
        assert_eq!(parse("/clear\n"), Input::Clear);
        assert_eq!(parse("\n"), Input::Nothing);
        assert_eq!(parse("/nope\n"), Input::Unknown("/nope"));
        // A message that happens to start with a slash is still a message.
        assert_eq!(
            parse("/usr/bin is a dir\n"),
            Input::Say("/usr/bin is a dir")
        );
    }
}
