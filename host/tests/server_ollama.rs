//! Ollama-compatible routes over loopback HTTP on the scripted backend.

mod server_support;

use llmlocal::{
    engine::{Engine, ModelEntry},
    models::{ManagerConfig, ModelManager},
    server::ServerSettings,
};
use llmlocal_formats::gguf::{self, GgmlType, MetaArray, MetaValue, TensorSpec};
use serde_json::{json, Value};
use server_support::{
    delete, get_json, parse_ndjson, post, registry, scripted_settings, write_script, TestServer,
};
use std::sync::Arc;

const SCRIPT: &str = "Ollama says hi ✓";

async fn server(dir: &std::path::Path) -> TestServer {
    server_with(dir, false).await
}

async fn server_with(dir: &std::path::Path, open_specs: bool) -> TestServer {
    let mut settings = scripted_settings(dir, &[("s", SCRIPT)]);
    settings.open_specs = open_specs;
    // Pulled `.gguf`-named scripted files have a format the scripted backend does not list.
    settings.default_backend = Some("scripted".into());
    let manager = ModelManager::new(ManagerConfig::new(dir.join("hub-cache"))).expect("manager");
    let engine = Engine::new(settings, registry(&["scripted"]), Some(Arc::new(manager)));
    TestServer::start(engine, ServerSettings::default()).await
}

/// The body of a successful POST.
async fn post_ok(server: &TestServer, path: &str, body: Value) -> String {
    let (status, body) = post(server, path, body).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The one JSON object of a successful non-streamed POST.
async fn post_whole(server: &TestServer, path: &str, body: Value) -> Value {
    serde_json::from_str(&post_ok(server, path, body).await).expect("one JSON object")
}

fn check_final(last: &Value, completion_tokens: usize) {
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["eval_count"], completion_tokens);
    assert!(last["prompt_eval_count"].as_u64().expect("count") > 0);
    for field in [
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(last[field].is_u64(), "{field} in {last}");
    }
    assert!(last["created_at"]
        .as_str()
        .expect("created_at")
        .ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_streams_ndjson_and_answers_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let body = post_ok(
        &server,
        "/api/generate",
        json!({"model": "s", "prompt": "Hi", "options": {"temperature": 0}}),
    )
    .await;
    let lines = parse_ndjson(&body);
    assert!(lines.len() > 3, "streams by default");
    let text: String = lines
        .iter()
        .filter_map(|l| l["response"].as_str())
        .collect();
    assert_eq!(text, SCRIPT);
    assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false));
    check_final(lines.last().expect("final"), SCRIPT.len());

    let v = post_whole(
        &server,
        "/api/generate",
        json!({"model": "s", "prompt": "Hi", "stream": false, "raw": true, "options": {"temperature": 0, "num_predict": 6}}),
    )
    .await;
    assert_eq!(v["response"], &SCRIPT[..6]);
    assert_eq!(v["done_reason"], "length");
    assert_eq!(v["prompt_eval_count"], 3, "raw: BOS + 2 bytes, no template");
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_streams_messages_and_answers_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let messages =
        json!([{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]);
    let body = post_ok(
        &server,
        "/api/chat",
        json!({"model": "s", "messages": messages, "options": {"temperature": 0, "stop": ["hi"]}}),
    )
    .await;
    let lines = parse_ndjson(&body);
    let text: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(text, "Ollama says ", "the stop option applies");
    assert!(lines.iter().all(|l| l["message"]["role"] == "assistant"));
    let v = post_whole(
        &server,
        "/api/chat",
        json!({"model": "s", "messages": messages, "stream": false, "options": {"temperature": 0}}),
    )
    .await;
    assert_eq!(v["message"]["content"], SCRIPT);
    check_final(&v, SCRIPT.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_ps_show_and_load_only_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    let tags: Value = get_json(&server, "/api/tags").await;
    let models = tags["models"].as_array().expect("models");
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["name"], "s");
    assert_eq!(
        models[0]["size"],
        (SCRIPT.len() + "llmlocal-scripted-model v1\n".len()) as u64
    );
    let ps: Value = get_json(&server, "/api/ps").await;
    assert_eq!(ps["models"], json!([]), "nothing loaded yet");
    // An empty prompt only loads the model.
    let v = post_whole(&server, "/api/generate", json!({"model": "s"})).await;
    assert_eq!(v["done_reason"], "load");
    let ps: Value = get_json(&server, "/api/ps").await;
    assert_eq!(ps["models"][0]["name"], "s");
    assert_eq!(ps["models"][0]["details"]["family"], "scripted");
    assert!(ps["models"][0]["expires_at"].is_string());
    let v = post_whole(&server, "/api/show", json!({"model": "s"})).await;
    assert!(v["template"]
        .as_str()
        .expect("template")
        .contains("<|im_start|>"));
    assert_eq!(v["model_info"]["general.architecture"], "scripted");
    let version: Value = get_json(&server, "/api/version").await;
    assert!(version["version"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_reports_progress_and_makes_the_model_usable_and_delete_forgets_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_script(dir.path(), "pulled.gguf", "pulled!");
    let name = file.to_string_lossy().into_owned();
    // Without --allow-any-model a client cannot make the server load local files.
    let closed = server(dir.path()).await;
    let (status, body) = post(&closed, "/api/pull", json!({"model": name})).await;
    assert_eq!(status, 403, "{body}");
    let server = server_with(dir.path(), true).await;
    let lines = parse_ndjson(&post_ok(&server, "/api/pull", json!({"model": name})).await);
    assert_eq!(lines.first().expect("first")["status"], "pulling manifest");
    assert_eq!(
        lines.last().expect("last")["status"],
        "success",
        "{lines:?}"
    );
    let v = post_whole(&server, "/api/generate", json!({"model": name, "prompt": "x", "raw": true, "stream": false, "options": {"temperature": 0}})).await;
    assert_eq!(v["response"], "pulled!");
    let tags: Value = get_json(&server, "/api/tags").await;
    assert_eq!(tags["models"].as_array().expect("models").len(), 2);

    // A spec that is not valid is a 400, a missing name too.
    let (status, body) = post(&server, "/api/pull", json!({"model": "bad//spec"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = post(&server, "/api/pull", json!({})).await;
    assert_eq!(status, 400);

    // A loaded model is not deleted (409) until it is unloaded.
    assert_eq!(
        delete(&server, "/api/delete", json!({"model": name})).await,
        409
    );
    post_whole(
        &server,
        "/api/generate",
        json!({"model": name, "keep_alive": 0}),
    )
    .await;
    assert_eq!(
        delete(&server, "/api/delete", json!({"model": name})).await,
        200
    );
    assert!(file.exists(), "a local file is forgotten, not deleted");
    // Deleting it again: the name is unknown now.
    assert_eq!(
        delete(&server, "/api/delete", json!({"model": name})).await,
        404
    );
    let tags: Value = get_json(&server, "/api/tags").await;
    assert_eq!(
        tags["models"].as_array().expect("models").len(),
        1,
        "the name is gone: {tags}"
    );
}

/// A GGUF with only a header worth reading: `metadata` and F32 tensors of `dims`.
fn write_gguf(
    path: &std::path::Path,
    metadata: &[(&str, MetaValue)],
    tensors: &[(&str, Vec<u64>)],
) {
    let specs: Vec<(TensorSpec, Vec<f32>)> = tensors
        .iter()
        .map(|(name, dims)| {
            let count = dims.iter().product::<u64>() as usize;
            (
                TensorSpec::new(*name, dims.clone(), GgmlType::F32),
                vec![0.0; count],
            )
        })
        .collect();
    let refs: Vec<(TensorSpec, &[f32])> = specs
        .iter()
        .map(|(s, v)| (s.clone(), v.as_slice()))
        .collect();
    let bytes = gguf::write_to_vec(metadata, &refs).expect("write GGUF");
    std::fs::write(path, bytes).expect("write file");
}

fn sha256_hex(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).expect("read");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `/api/show` and `/api/tags` read the GGUF header of a model that is not loaded:
/// capabilities from the template and the backend, Ollama's `details` and `model_info`,
/// the file's size, mtime and sha256.
#[tokio::test(flavor = "multi_thread")]
async fn show_and_tags_read_the_model_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tooled = dir.path().join("tooled.gguf");
    let template = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}{{ tools | tojson }}{% endif %}";
    let vocab: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
    write_gguf(
        &tooled,
        &[
            ("general.architecture", MetaValue::Str("llama".into())),
            ("general.file_type", MetaValue::U32(15)),
            ("llama.context_length", MetaValue::U32(4096)),
            ("llama.block_count", MetaValue::U32(2)),
            ("tokenizer.chat_template", MetaValue::Str(template.into())),
            (
                "tokenizer.ggml.tokens",
                MetaValue::Array(MetaArray::Str(vocab)),
            ),
        ],
        &[("a", vec![64, 32]), ("b", vec![64])],
    );
    let plain = dir.path().join("plain.gguf");
    write_gguf(
        &plain,
        &[("general.architecture", MetaValue::Str("qwen2".into()))],
        &[("w", vec![1000, 1500])],
    );
    let mut settings = scripted_settings(dir.path(), &[]);
    let entry = |path: &std::path::Path, backend: &str| ModelEntry {
        backend: Some(backend.into()),
        ..ModelEntry::new(path.to_string_lossy())
    };
    settings
        .models
        .insert("tooled".into(), entry(&tooled, "llama-cpp"));
    settings
        .models
        .insert("plain".into(), entry(&plain, "scripted"));
    let engine = Engine::new(settings, registry(&["scripted", "llama_cpp"]), None);
    let server = TestServer::start(engine, ServerSettings::default()).await;

    let show = post_whole(&server, "/api/show", json!({"model": "tooled"})).await;
    // llama.cpp declares embeddings; the template renders tools.
    assert_eq!(
        show["capabilities"],
        json!(["completion", "tools", "embedding"]),
        "{show}"
    );
    assert_eq!(show["template"], template);
    assert_eq!(
        show["details"],
        json!({"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
               "parameter_size": "2K", "quantization_level": "Q4_K_M"})
    );
    let info = &show["model_info"];
    assert_eq!(info["general.architecture"], "llama");
    assert_eq!(info["general.parameter_count"], 64 * 32 + 64);
    assert_eq!(info["llama.context_length"], 4096);
    assert_eq!(info["llama.block_count"], 2);
    assert_eq!(
        info["tokenizer.ggml.tokens"],
        Value::Null,
        "long arrays are null"
    );

    let show = post_whole(&server, "/api/show", json!({"model": "plain"})).await;
    assert_eq!(show["capabilities"], json!(["completion"]), "{show}");
    assert_eq!(show["details"]["parameter_size"], "1.50M");
    assert_eq!(
        show["details"]["quantization_level"], "F32",
        "from the tensors"
    );
    let (status, body) = post(&server, "/api/show", json!({"model": "nope"})).await;
    assert_eq!(status, 404, "{body}");

    let tags: Value = get_json(&server, "/api/tags").await;
    let tag = |name: &str| {
        tags["models"]
            .as_array()
            .expect("models")
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .expect("listed")
    };
    for (name, path) in [("tooled", &tooled), ("plain", &plain)] {
        let meta = std::fs::metadata(path).expect("metadata");
        let listed = tag(name);
        assert_eq!(listed["size"], meta.len());
        assert_eq!(listed["digest"], sha256_hex(path));
        let mtime = chrono::DateTime::<chrono::Utc>::from(meta.modified().expect("mtime"));
        assert_eq!(
            listed["modified_at"],
            mtime.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    assert_eq!(tag("tooled")["details"]["quantization_level"], "Q4_K_M");
}

/// `/api/ps`: the engine's memory figure (more than the file: KV cache and buffers), no VRAM
/// on the CPU, the load's context, `expires_at` from the request's keep-alive, and the
/// file's digest as `/api/tags` gives it.
#[tokio::test(flavor = "multi_thread")]
async fn ps_reports_memory_context_and_expiry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path()).await;
    post_whole(
        &server,
        "/api/generate",
        json!({"model": "s", "keep_alive": "10m"}),
    )
    .await;
    let ps: Value = get_json(&server, "/api/ps").await;
    let running = &ps["models"][0];
    let tags: Value = get_json(&server, "/api/tags").await;
    assert_eq!(running["digest"], tags["models"][0]["digest"]);
    assert!(
        running["size"].as_u64().expect("size") > tags["models"][0]["size"].as_u64().expect("size"),
        "{running}"
    );
    assert_eq!(running["size_vram"], 0);
    assert!(running["context_length"].as_u64().expect("context") > 0);
    let expires =
        chrono::DateTime::parse_from_rfc3339(running["expires_at"].as_str().expect("expires_at"))
            .expect("RFC 3339");
    let left = expires
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!((8 * 60..=11 * 60).contains(&left), "expires in {left} s");
}
