//! The engine facade on the scripted test backend: streaming, limits, stop sequences, chat
//! templates, errors, and cancellation when the stream is dropped.

mod server_support;

use futures_util::StreamExt;
use llmlocal::engine::{
    memory, template::CHATML_STOP, ChatMessage, ChatTemplate, Completion, Constraint, Engine,
    EngineError, ErrorClass, Event, FinishReason, GenerationConfig, ModelEntry, Prompt,
};
use server_support::{eventually, metric, scripted_engine, scripted_settings};
use std::time::Duration;

const SCRIPT: &str = "Hello, wörld! ✓ done.";

/// An engine whose one model `s` answers `script`.
fn engine_answering(dir: &std::path::Path, script: &str) -> Engine {
    scripted_engine(scripted_settings(dir, &[("s", script)]))
}

fn text(prompt: &str) -> Prompt {
    Prompt::Text(prompt.into())
}

/// Runs a whole generation on model `s`.
async fn complete(
    engine: &Engine,
    prompt: Prompt,
    config: GenerationConfig,
) -> (String, Completion) {
    engine
        .generate("s", prompt, config)
        .await
        .expect("starts")
        .collect_text()
        .await
        .expect("completes")
}

/// The error of a generation that must not start.
async fn refused(
    engine: &Engine,
    model: &str,
    prompt: Prompt,
    config: GenerationConfig,
) -> EngineError {
    engine
        .generate(model, prompt, config)
        .await
        .expect_err("fails")
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_text_pieces_then_a_final_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_answering(dir.path(), SCRIPT);
    let mut stream = engine
        .generate("s", text("hi"), GenerationConfig::greedy(1000))
        .await
        .expect("generation starts");
    let mut pieces = Vec::new();
    let mut done = None;
    while let Some(event) = stream.next().await {
        match event.expect("no error") {
            Event::Text(text) => {
                assert!(done.is_none(), "text after the final event");
                assert!(!text.is_empty(), "empty pieces are not sent");
                pieces.push(text);
            }
            Event::Logprobs(_) => panic!("logprobs were not asked for"),
            Event::Done(completion) => done = Some(completion),
            other => panic!("an event of a newer engine: {other:?}"),
        }
    }
    let done = done.expect("a final event");
    assert_eq!(pieces.concat(), SCRIPT);
    assert!(pieces.len() > 1, "streamed in pieces: {pieces:?}");
    // Multi-byte characters arrive whole: every piece is one character here.
    assert!(pieces.iter().all(|p| p.chars().count() == 1), "{pieces:?}");
    assert_eq!(done.finish_reason, FinishReason::Stop);
    assert_eq!(
        done.completion_tokens as usize,
        SCRIPT.len(),
        "one token per byte"
    );
    assert_eq!(done.prompt_tokens, 3, "BOS + 2 bytes");
    assert_eq!(done.backend, "scripted");
    assert_eq!(
        engine.last_stats().expect("last stats").completion_tokens,
        done.completion_tokens
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_tokens_ends_with_length() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_answering(dir.path(), SCRIPT);
    let (answer, done) = complete(&engine, text("hi"), GenerationConfig::greedy(5)).await;
    assert_eq!(answer, &SCRIPT[..5]);
    assert_eq!(done.finish_reason, FinishReason::Length);
    assert_eq!(done.completion_tokens, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_sequences_work_across_token_boundaries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_answering(dir.path(), "abcENDdef ENX");
    let config = GenerationConfig {
        stop: vec!["END".into()],
        ..GenerationConfig::greedy(100)
    };
    let (answer, done) = complete(&engine, text("x"), config).await;
    assert_eq!(answer, "abc");
    assert_eq!(done.finish_reason, FinishReason::Stop);
    // A held-back prefix ("EN") that never completes is released at the end.
    let config = GenerationConfig {
        stop: vec!["ENZ".into()],
        ..GenerationConfig::greedy(100)
    };
    let (answer, _) = complete(&engine, text("x"), config).await;
    assert_eq!(answer, "abcENDdef ENX");
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_without_a_template_uses_chatml_and_its_stop() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = format!("Hi there{CHATML_STOP}\nignored");
    let engine = engine_answering(dir.path(), &script);
    let messages = vec![
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hello"),
    ];
    let chat = Prompt::Chat(messages.clone());
    let (answer, done) = complete(&engine, chat, GenerationConfig::greedy(100)).await;
    assert_eq!(answer, "Hi there");
    assert_eq!(done.finish_reason, FinishReason::Stop);
    let rendered = ChatTemplate::fallback("<s>", "</s>")
        .render(&messages, true)
        .expect("renders");
    // The scripted tokenizer: one token per byte, plus the BOS the backend adds.
    assert_eq!(done.prompt_tokens as usize, rendered.len() + 1);
    let loaded = engine.loaded();
    assert_eq!(loaded.len(), 1);
    assert!(loaded[0].chat_template.contains("<|im_start|>"));
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_before_the_first_token_have_classes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("s", SCRIPT)]);
    settings
        .models
        .insert("gone".into(), ModelEntry::new("/nonexistent/model.txt"));
    let engine = scripted_engine(settings);
    let unknown = refused(&engine, "nope", text("x"), GenerationConfig::default()).await;
    assert_eq!(unknown.class(), ErrorClass::NotFound, "{unknown}");
    assert!(
        unknown.to_string().contains("available models: gone, s"),
        "{unknown}"
    );
    let missing = refused(&engine, "gone", text("x"), GenerationConfig::default()).await;
    assert_eq!(missing.class(), ErrorClass::NotFound, "{missing}");
    let backend = GenerationConfig {
        backend: Some("nope".into()),
        ..GenerationConfig::default()
    };
    let bad_backend = refused(&engine, "s", text("x"), backend).await;
    assert_eq!(bad_backend.class(), ErrorClass::BadRequest, "{bad_backend}");
    assert!(bad_backend.to_string().contains("nope"), "{bad_backend}");
    let zero = refused(&engine, "s", text("x"), GenerationConfig::greedy(0)).await;
    assert_eq!(zero.class(), ErrorClass::BadRequest, "{zero}");
    let hot = GenerationConfig {
        temperature: Some(-1.0),
        ..GenerationConfig::default()
    };
    assert_eq!(
        refused(&engine, "s", text("x"), hot).await.class(),
        ErrorClass::BadRequest
    );
    let empty = refused(
        &engine,
        "s",
        Prompt::Chat(Vec::new()),
        GenerationConfig::default(),
    )
    .await;
    assert_eq!(empty.class(), ErrorClass::BadRequest, "{empty}");
}

/// The scripted backend declares no capability beyond plain sampling: each request that
/// needs one is a 400 naming the backend and the capability, before the plugin is called.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_needing_an_undeclared_capability_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_answering(dir.path(), SCRIPT);
    let cases = [
        (
            "grammar",
            GenerationConfig {
                constraint: Some(Constraint::Grammar("root ::= \"a\"".into())),
                ..GenerationConfig::default()
            },
        ),
        (
            "json-schema",
            GenerationConfig {
                constraint: Some(Constraint::JsonSchema("{}".into())),
                ..GenerationConfig::default()
            },
        ),
        (
            "logprobs",
            GenerationConfig {
                logprobs: Some(2),
                ..GenerationConfig::default()
            },
        ),
        (
            "logit-bias",
            GenerationConfig {
                logit_bias: vec![(65, f32::NEG_INFINITY)],
                ..GenerationConfig::default()
            },
        ),
        (
            "full-sampling",
            GenerationConfig {
                presence_penalty: Some(0.5),
                ..GenerationConfig::default()
            },
        ),
    ];
    for (capability, config) in cases {
        let err = refused(&engine, "s", text("x"), config).await;
        assert_eq!(err.class(), ErrorClass::BadRequest, "{err}");
        let message = err.to_string();
        assert!(
            message.contains("`scripted`") && message.contains(&format!("`{capability}`")),
            "{message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prompt_longer_than_the_context_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("s", SCRIPT)]);
    settings.context_length = Some(16);
    let engine = scripted_engine(settings);
    let err = refused(
        &engine,
        "s",
        text(&"x".repeat(40)),
        GenerationConfig::default(),
    )
    .await;
    assert_eq!(err.class(), ErrorClass::BadRequest);
    assert!(err.to_string().contains("context"), "{err}");
    assert_eq!(
        engine.loaded()[0].metadata.context_length,
        16,
        "the explicit setting wins"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_context_follows_the_machine() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_answering(dir.path(), SCRIPT);
    let info = engine.load("s", None).await.expect("loads");
    let expected = memory::default_context_length(memory::read().total, None);
    assert_eq!(info.metadata.context_length, expected);
}

/// Dropping the stream stops decoding: the token counter stops growing long before the
/// requested length, and the generation is counted as cancelled.
#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_stream_cancels_the_generation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = scripted_settings(dir.path(), &[("s", "0123456789")]);
    settings.context_length = Some(u32::MAX / 2);
    let engine = scripted_engine(settings);
    let asked = 50_000_000u32;
    let config = GenerationConfig {
        ignore_eos: true,
        ..GenerationConfig::greedy(asked)
    };
    let mut stream = engine
        .generate("s", text("x"), config)
        .await
        .expect("starts");
    for _ in 0..5 {
        assert!(matches!(stream.next().await, Some(Ok(Event::Text(_)))));
    }
    drop(stream);
    let metrics = engine.metrics().clone();
    let stopped = eventually(Duration::from_secs(10), || {
        metric(&metrics.render(), "llmlocal_active_generations") == Some(0.0)
    })
    .await;
    assert!(stopped, "the generation thread ended");
    let text = metrics.render();
    let generated = metric(&text, "llmlocal_generated_tokens_total{model=\"s\"}").expect("counter");
    assert!(
        generated < 1000.0,
        "decoding stopped early: {generated} tokens"
    );
    assert_eq!(
        metric(
            &text,
            "llmlocal_generations_total{model=\"s\",reason=\"cancelled\"}"
        ),
        Some(1.0)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = metric(
        &metrics.render(),
        "llmlocal_generated_tokens_total{model=\"s\"}",
    );
    assert_eq!(later, Some(generated), "no tokens after the cancel");
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_settings_reach_the_backend() {
    // The scripted backend rotates its script by (prompt + seed) when sampling, so equal
    // seeds give equal text and the greedy text differs from a sampled one.
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = engine_answering(dir.path(), "abcdefghijklmnopqrstuvwxyz");
    let run = |seed: u64| {
        let engine = engine.clone();
        async move {
            let config = GenerationConfig {
                temperature: Some(0.7),
                seed: Some(seed),
                ..GenerationConfig::greedy(26)
            };
            complete(&engine, text("q"), config).await.0
        }
    };
    let (a, b, c) = (run(1).await, run(1).await, run(2).await);
    assert_eq!(a, b, "same seed, same text");
    assert_ne!(a, c, "another seed, another rotation");
}
