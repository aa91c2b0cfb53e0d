//! KV cache options per model (`cache_type_k`, `cache_type_v`, `flash_attn`): other cache
//! types answer as f16 does on the designed fixture, impossible combinations are refused with
//! the reason (not llama.cpp's bare "could not create a context"), and a backend without the
//! capability is never sent the options (a RAM prompt cache size either, unless it is 0).

mod server_support;

use llmlocal::engine::{Engine, EngineError, GenerationConfig, KvCacheOptions, Prompt};
use server_support::{llama_cpp_settings, registry, stories260k_gguf};
use std::path::Path;

fn kv(k: &str, v: &str, flash_attn: &str) -> KvCacheOptions {
    KvCacheOptions {
        cache_type_k: Some(k.into()),
        cache_type_v: Some(v.into()),
        flash_attn: Some(flash_attn.into()),
        cache_ram_mib: None,
    }
}

/// An engine serving `path` as `m` on `backend` with the given KV options as engine defaults.
fn engine(path: &Path, backend: &str, options: Option<KvCacheOptions>) -> Engine {
    let mut settings = llama_cpp_settings("m", path);
    if let Some(entry) = settings.models.get_mut("m") {
        entry.backend = Some(backend.replace('_', "-"));
    }
    settings.kv_cache = options.unwrap_or_default();
    Engine::new(settings, registry(&[backend]), None)
}

async fn greedy(engine: &Engine, prompt: Prompt, max: u32) -> Result<String, EngineError> {
    let stream = engine
        .generate("m", prompt, GenerationConfig::greedy(max))
        .await?;
    Ok(stream.collect_text().await?.0)
}

/// The designed fixture's margins are wide: any exact-enough cache type gives its answer.
#[tokio::test(flavor = "multi_thread")]
async fn f32_and_bf16_caches_give_the_designed_answer() {
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixtures");
    let expected = llmlocal_fixtures::spec::expected_text(&[u32::from(b'w')], 16);
    for options in [kv("f32", "f32", "off"), kv("bf16", "f16", "on")] {
        let engine = engine(&fixtures.gguf_q8_0, "llama_cpp", Some(options.clone()));
        let prompt = Prompt::Tokens(vec![u32::from(b'w')]);
        let text = greedy(&engine, prompt, 16).await.expect("generates");
        assert_eq!(text, expected, "{options:?}");
    }
}

/// stories260K's heads are 8 wide: llama.cpp cannot store them in 32-value blocks, and the
/// error says so instead of llama.cpp's bare failure to create a context.
#[tokio::test(flavor = "multi_thread")]
async fn a_quantized_cache_on_narrow_heads_is_refused_with_the_reason() {
    let path = stories260k_gguf();
    let engine = engine(&path, "llama_cpp", Some(kv("q8_0", "q8_0", "on")));
    let err = greedy(&engine, Prompt::Text("Once".into()), 4)
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("blocks of 32") && message.contains("head size 8"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quantized_v_cache_without_flash_attention_is_refused_with_the_reason() {
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixtures");
    let engine = engine(
        &fixtures.gguf_q8_0,
        "llama_cpp",
        Some(kv("f16", "q4_0", "off")),
    );
    let err = greedy(&engine, Prompt::Text("w".into()), 4)
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("quantized V cache") && message.contains("flash attention"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_without_the_capability_is_never_sent_the_options() {
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixtures");
    let engine = engine(
        &fixtures.gguf_q8_0,
        "candle",
        Some(kv("q8_0", "f16", "auto")),
    );
    let err = greedy(&engine, Prompt::Text("w".into()), 4)
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        matches!(err, EngineError::InvalidRequest(_))
            && message.contains("cache_type_k")
            && message.contains("kv-cache-types")
            && message.contains("candle"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_without_a_ram_cache_is_refused_a_size_but_not_off() {
    let fixtures = llmlocal_fixtures::ensure_default().expect("fixtures");
    let with = |mib| KvCacheOptions {
        cache_ram_mib: Some(mib),
        ..KvCacheOptions::default()
    };
    let served = engine(&fixtures.gguf_q8_0, "candle", Some(with(64)));
    let err = greedy(&served, Prompt::Text("w".into()), 4)
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        matches!(err, EngineError::InvalidRequest(_))
            && message.contains("cache_ram_mib")
            && message.contains("host-ram-prompt-cache")
            && message.contains("candle"),
        "{message}"
    );
    let served = engine(&fixtures.gguf_q8_0, "candle", Some(with(0)));
    greedy(&served, Prompt::Text("w".into()), 4)
        .await
        .expect("0 = off needs no capability");
    // The llama-cpp backend takes a size.
    let served = engine(&fixtures.gguf_q8_0, "llama_cpp", Some(with(64)));
    greedy(&served, Prompt::Text("w".into()), 4)
        .await
        .expect("llama-cpp has the RAM cache");
}
