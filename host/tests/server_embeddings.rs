//! Embedding routes over loopback HTTP: OpenAI `/v1/embeddings`, Ollama `/api/embed` and the
//! legacy `/api/embeddings`, on stories260K with the llama.cpp and candle plugins (skipped
//! with a SKIP line when the shared models are not there), and the capability refusal on
//! the scripted backend, which does not compute embeddings.

mod server_support;

use base64::Engine as _;
use llmlocal::{
    engine::{Engine, EngineSettings, ModelEntry},
    plugins::LoadRequest,
    server::ServerSettings,
};
use serde_json::{json, Value};
use server_support::{client, metric, post, registry, write_script, TestServer};
use std::path::{Path, PathBuf};

const TEXT: &str = "Once upon a time, there was a little girl";
/// The context of `short`: inputs longer than this are cut or refused.
const SHORT_CONTEXT: u32 = 8;

fn stories() -> Option<PathBuf> {
    llmlocal_fixtures::shared::stories260k()
}

fn entry(path: &Path, backend: &str, context: Option<u32>) -> ModelEntry {
    ModelEntry {
        backend: Some(backend.into()),
        context_length: context,
        ..ModelEntry::new(path.to_string_lossy())
    }
}

/// Models: `story` (llama.cpp, GGUF), `story-candle` (candle, HF folder), `short` (llama.cpp
/// with an 8-token context) and `fox` (scripted: no embeddings).
async fn server(dir: &Path) -> Option<TestServer> {
    let stories = stories()?;
    let gguf = stories.join("stories260K.gguf");
    let mut settings = EngineSettings {
        open_specs: false,
        ..EngineSettings::default()
    };
    let models = [
        ("story", entry(&gguf, "llama-cpp", None)),
        ("story-candle", entry(&stories.join("hf"), "candle", None)),
        ("short", entry(&gguf, "llama-cpp", Some(SHORT_CONTEXT))),
        (
            "fox",
            entry(&write_script(dir, "fox.txt", "xyz"), "scripted", None),
        ),
    ];
    for (name, entry) in models {
        settings.models.insert(name.into(), entry);
    }
    let engine = Engine::new(
        settings,
        registry(&["llama_cpp", "candle", "scripted"]),
        None,
    );
    Some(TestServer::start(engine, ServerSettings::default()).await)
}

async fn ok(server: &TestServer, path: &str, body: Value) -> Value {
    let (status, text) = post(server, path, body).await;
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).expect("JSON")
}

/// The error message of a request that must be a 400.
async fn bad(server: &TestServer, path: &str, body: Value) -> String {
    let (status, text) = post(server, path, body).await;
    assert_eq!(status, 400, "{path}: {text}");
    let v: Value = serde_json::from_str(&text).expect("JSON error");
    let message = v["error"]["message"].as_str().or(v["error"].as_str());
    message.expect("an error message").to_string()
}

fn floats(v: &Value) -> Vec<f32> {
    let list = v.as_array().expect("a list of numbers");
    list.iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b))
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_embeddings_float_base64_tokens_and_limits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(server) = server(dir.path()).await else {
        return;
    };
    let v = ok(
        &server,
        "/v1/embeddings",
        json!({"model": "story", "input": [TEXT, "The cat"], "user": "someone"}),
    )
    .await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "story");
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["object"], "embedding");
    let first = floats(&data[0]["embedding"]);
    assert_eq!(first.len(), 64);
    assert!((norm(&first) - 1.0).abs() < 1e-4, "normalised");
    let tokens = v["usage"]["prompt_tokens"].as_u64().expect("usage");
    assert!(tokens > 4, "{tokens}");
    assert_eq!(v["usage"]["total_tokens"].as_u64(), Some(tokens));

    // base64: the same floats as little-endian bytes.
    let v = ok(
        &server,
        "/v1/embeddings",
        json!({"model": "story", "input": TEXT, "encoding_format": "base64", "dimensions": 64}),
    )
    .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().expect("base64 text"))
        .expect("base64");
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert!(close(&decoded, &first));

    // Token ids give what the text gives.
    let ids = stories_ids(TEXT);
    let v = ok(
        &server,
        "/v1/embeddings",
        json!({"model": "story", "input": [ids.clone(), ids]}),
    )
    .await;
    assert!(close(&floats(&v["data"][1]["embedding"]), &first));

    let too_many = vec!["a"; 2049];
    for (body, says) in [
        (
            json!({"model": "story", "input": TEXT, "dimensions": 32}),
            "dimensions",
        ),
        (
            json!({"model": "story", "input": TEXT, "encoding_format": "int8"}),
            "encoding_format",
        ),
        (
            json!({"model": "story", "input": TEXT, "pooling": "max"}),
            "pooling",
        ),
        (json!({"model": "story", "input": []}), "empty"),
        (json!({"model": "story", "input": [""]}), "empty"),
        (json!({"model": "story", "input": too_many}), "2048"),
        (json!({"model": "story", "input": [[1, 2], [512]]}), "512"),
        (json!({"model": "short", "input": TEXT}), "holds 8"),
    ] {
        let message = bad(&server, "/v1/embeddings", body.clone()).await;
        assert!(message.contains(says), "{body}: {message}");
    }
}

/// The tokens of `text` as the llama.cpp plugin makes them (with BOS).
fn stories_ids(text: &str) -> Vec<u32> {
    let path = stories()
        .expect("checked by the caller")
        .join("stories260K.gguf");
    let model = registry(&["llama_cpp"])
        .backend("llama-cpp")
        .expect("llama-cpp backend")
        .load_model(LoadRequest::new(path.to_string_lossy()))
        .expect("stories260K loads");
    model.tokenize(text, true, false).expect("tokenizes")
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_embed_truncates_and_legacy_is_raw() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(server) = server(dir.path()).await else {
        return;
    };
    let v = ok(
        &server,
        "/api/embed",
        json!({"model": "story", "input": [TEXT, "The cat"], "options": {"temperature": 0},
               "keep_alive": "5m"}),
    )
    .await;
    let embeddings = v["embeddings"].as_array().expect("embeddings");
    assert_eq!(embeddings.len(), 2);
    let unit = floats(&embeddings[0]);
    assert!((norm(&unit) - 1.0).abs() < 1e-4);
    assert!(v["prompt_eval_count"].as_u64().expect("count") > 4);
    assert!(v["total_duration"].as_u64().expect("total") > 0);
    assert!(v["load_duration"].is_u64());

    // The legacy route: one raw (not normalised) vector in the same direction.
    let v = ok(
        &server,
        "/api/embeddings",
        json!({"model": "story", "prompt": TEXT}),
    )
    .await;
    let raw = floats(&v["embedding"]);
    assert!((norm(&raw) - 1.0).abs() > 1e-3, "raw, not normalised");
    assert!(cosine(&raw, &unit) > 0.9999);
    // An empty prompt only loads the model.
    let v = ok(
        &server,
        "/api/embeddings",
        json!({"model": "story", "prompt": ""}),
    )
    .await;
    assert_eq!(v["embedding"], json!([]));

    // Truncation: on by default, a 400 naming the limit when off.
    let v = ok(
        &server,
        "/api/embed",
        json!({"model": "short", "input": TEXT}),
    )
    .await;
    assert_eq!(v["prompt_eval_count"], SHORT_CONTEXT);
    let message = bad(
        &server,
        "/api/embed",
        json!({"model": "short", "input": TEXT, "truncate": false}),
    )
    .await;
    assert!(message.contains("holds 8"), "{message}");
    for (body, says) in [
        (
            json!({"model": "story", "input": TEXT, "options": {"num_ctx": 8}}),
            "num_ctx",
        ),
        (json!({"model": "story", "input": [1, 2]}), "string"),
        (
            json!({"model": "story", "input": TEXT, "format": "json"}),
            "format",
        ),
    ] {
        let message = bad(&server, "/api/embed", body.clone()).await;
        assert!(message.contains(says), "{body}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backend_without_embeddings_is_a_400_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(server) = server(dir.path()).await else {
        return;
    };
    for path in ["/v1/embeddings", "/api/embed"] {
        let message = bad(&server, path, json!({"model": "fox", "input": "hi"})).await;
        assert!(
            message.contains("scripted") && message.contains("embeddings"),
            "{path}: {message}"
        );
    }
}

/// Two independent implementations agree: llama.cpp's and candle's mean-pooled hidden
/// states of the same weights (GGUF and HF forms of stories260K).
#[tokio::test(flavor = "multi_thread")]
async fn llama_cpp_and_candle_agree() {
    let dir = tempfile::tempdir().expect("temp dir");
    let Some(server) = server(dir.path()).await else {
        return;
    };
    let texts = [
        TEXT,
        "The cat sat on the mat.",
        "Lily saw a big red ball in the park",
    ];
    let body = |model: &str| json!({"model": model, "input": texts});
    let a = ok(&server, "/api/embed", body("story")).await;
    let b = ok(&server, "/api/embed", body("story-candle")).await;
    for i in 0..texts.len() {
        let (x, y) = (floats(&a["embeddings"][i]), floats(&b["embeddings"][i]));
        let c = cosine(&x, &y);
        assert!(c > 0.99, "input {i}: cosine {c}");
    }
    // And different texts are not all the same vector.
    let (x, y) = (floats(&a["embeddings"][0]), floats(&a["embeddings"][1]));
    assert!(cosine(&x, &y) < 0.999);
    // /metrics counts the vectors per model.
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let series = "llmlocal_embeddings_total{model=\"story-candle\"}";
    assert_eq!(metric(&text, series), Some(texts.len() as f64), "{text}");
}

/// The BERT fixture (`llmlocal_fixtures::family_bert`) through `/v1/embeddings`: candle on the
/// sentence-transformers folder and on the F32 GGUF (its WordPiece vocabulary) returns
/// llama.cpp's vectors for the same texts, tokenized by each backend itself; generating on
/// the encoder is a 400 saying it embeds only.
#[tokio::test(flavor = "multi_thread")]
async fn bert_embeddings_agree_between_llama_cpp_and_candle() {
    let fixtures = llmlocal_fixtures::default_dir();
    let bert = llmlocal_fixtures::family_bert::ensure_bert(&fixtures).expect("bert fixtures");
    let gguf = bert.gguf(llmlocal_fixtures::GgufFormat::F32);
    let mut settings = EngineSettings {
        open_specs: false,
        ..EngineSettings::default()
    };
    for (name, entry) in [
        ("bert", entry(&gguf, "llama-cpp", None)),
        ("bert-candle", entry(&bert.hf, "candle", None)),
        ("bert-candle-gguf", entry(&gguf, "candle", None)),
    ] {
        settings.models.insert(name.into(), entry);
    }
    let engine = Engine::new(settings, registry(&["llama_cpp", "candle"]), None);
    let server = TestServer::start(engine, ServerSettings::default()).await;
    let texts = [
        "The cat sat on the mat.",
        "Hello world, the sky is blue!",
        "rust models embedding locally",
    ];
    let body = |model: &str| json!({"model": model, "input": texts});
    let reference = ok(&server, "/v1/embeddings", body("bert")).await;
    for model in ["bert-candle", "bert-candle-gguf"] {
        let v = ok(&server, "/v1/embeddings", body(model)).await;
        assert_eq!(v["usage"], reference["usage"], "{model}: the same tokens");
        for i in 0..texts.len() {
            let x = floats(&reference["data"][i]["embedding"]);
            let y = floats(&v["data"][i]["embedding"]);
            assert_eq!(y.len(), llmlocal_fixtures::family_bert::HIDDEN);
            let c = cosine(&x, &y);
            assert!(c > 0.999, "{model} input {i}: cosine {c} with llama.cpp");
        }
    }
    let x = floats(&reference["data"][0]["embedding"]);
    let y = floats(&reference["data"][1]["embedding"]);
    assert!(cosine(&x, &y) < 0.99, "different texts, different vectors");
    let message = bad(
        &server,
        "/v1/completions",
        json!({"model": "bert-candle", "prompt": "the cat", "max_tokens": 4}),
    )
    .await;
    assert!(message.contains("embeddings only"), "{message}");
}
