//! Ollama's `/api/copy` and `/api/create` over loopback HTTP on the scripted backend: names
//! that outlive a restart, defaults that requests get (their own fields win), deletes that
//! remove only the name, refusals that name what is not supported, and the access rules of
//! routes that change what the server holds.

mod server_support;

use llmlocal::{engine::Engine, server::ServerSettings};
use llmlocal_formats::gguf::{self, MetaValue};
use serde_json::{json, Value};
use server_support::{
    delete, get_json, parse_ndjson, post, raw_exchange, raw_request, registry, scripted_settings,
    TestServer,
};
use std::path::{Path, PathBuf};

const SCRIPT: &str = "Ollama says hi";

/// A server with scripted model `s`; created names are kept in `dir/models.json`.
async fn server(dir: &Path, open_specs: bool, admin_keys: &[&str]) -> TestServer {
    let mut settings = scripted_settings(dir, &[("s", SCRIPT)]);
    settings.open_specs = open_specs;
    let engine = Engine::new(settings, registry(&["scripted"]), None);
    let server = ServerSettings {
        models_file: Some(models_file(dir)),
        admin_keys: admin_keys.iter().map(|k| k.to_string()).collect(),
        ..ServerSettings::default()
    };
    TestServer::start(engine, server).await
}

fn models_file(dir: &Path) -> PathBuf {
    dir.join("models.json")
}

async fn names(server: &TestServer) -> Vec<String> {
    let tags: Value = get_json(server, "/api/tags").await;
    tags["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["name"].as_str().expect("name").to_string())
        .collect()
}

async fn generate(server: &TestServer, model: &str, options: Value) -> Value {
    let body =
        json!({"model": model, "prompt": "Hi", "raw": true, "stream": false, "options": options});
    let (status, text) = post(server, "/api/generate", body).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_is_another_name_that_outlives_a_restart_and_deletes_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = server(dir.path(), false, &[]).await;
    let (status, body) = post(
        &first,
        "/api/copy",
        json!({"source": "s", "destination": "s-copy"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(names(&first).await, ["s", "s-copy"]);
    assert_eq!(
        generate(&first, "s-copy", json!({"temperature": 0})).await["response"],
        SCRIPT
    );

    // Refusals: an unknown source, a name that reads as a path, a configured name.
    let (status, _) = post(
        &first,
        "/api/copy",
        json!({"source": "nope", "destination": "x"}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = post(
        &first,
        "/api/copy",
        json!({"source": "s", "destination": "/etc/x"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("destination"), "{body}");
    let (status, _) = post(
        &first,
        "/api/copy",
        json!({"source": "s-copy", "destination": "s"}),
    )
    .await;
    assert_eq!(status, 409, "the configured name stays the operator's");

    // A new server reading the same file knows the copy.
    let second = server(dir.path(), false, &[]).await;
    assert_eq!(names(&second).await, ["s", "s-copy"]);
    // Deleting the copy removes the name only.
    assert_eq!(
        delete(&second, "/api/delete", json!({"model": "s-copy"})).await,
        200
    );
    assert_eq!(names(&second).await, ["s"]);
    assert!(dir.path().join("s.txt").exists(), "the model file stays");
    assert_eq!(
        generate(&second, "s", json!({"temperature": 0})).await["response"],
        SCRIPT
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(models_file(dir.path())).expect("file"))
            .expect("JSON");
    assert_eq!(saved, json!({}), "the file forgets it too");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_created_model_gives_its_defaults_and_a_request_s_own_win() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), false, &[]).await;
    let body = json!({"model": "short", "from": "s", "system": "Be brief.",
        "parameters": {"num_predict": 5, "temperature": 0}});
    let (status, text) = post(&server, "/api/create", body).await;
    assert_eq!(status, 200, "{text}");
    let lines = parse_ndjson(&text);
    assert_eq!(
        lines.last().expect("last")["status"],
        "success",
        "{lines:?}"
    );

    let v = generate(&server, "short", json!({})).await;
    assert_eq!(v["response"], &SCRIPT[..5]);
    assert_eq!(v["done_reason"], "length");
    let v = generate(&server, "short", json!({"num_predict": 7})).await;
    assert_eq!(v["response"], &SCRIPT[..7], "the request's option wins");

    // The stored system prompt leads a chat that has none.
    let chat = |model: &str, messages: Value| json!({"model": model, "messages": messages, "stream": false, "options": {"num_predict": 1}});
    let user = json!([{"role": "user", "content": "Hi"}]);
    let prompt_tokens = |v: Value| v["prompt_eval_count"].as_u64().expect("count");
    let (_, plain) = post(&server, "/api/chat", chat("s", user.clone())).await;
    let (_, created) = post(&server, "/api/chat", chat("short", user)).await;
    let (plain, created): (Value, Value) = (
        serde_json::from_str(&plain).expect("JSON"),
        serde_json::from_str(&created).expect("JSON"),
    );
    assert!(
        prompt_tokens(created.clone()) >= prompt_tokens(plain.clone()) + "Be brief.".len() as u64,
        "{created} vs {plain}"
    );

    let show: Value = serde_json::from_str(
        &post(&server, "/api/show", json!({"model": "short"}))
            .await
            .1,
    )
    .expect("JSON");
    assert_eq!(show["system"], "Be brief.");
    assert!(
        show["parameters"]
            .as_str()
            .expect("text")
            .contains("num_predict"),
        "{show}"
    );
    assert!(
        show["modelfile"].as_str().expect("text").contains("SYSTEM"),
        "{show}"
    );

    // A Modelfile: PARAMETER and SYSTEM over a known model; non-streamed answer.
    let modelfile = "FROM short\nPARAMETER num_predict 3\n# a comment\n";
    let (status, text) = post(
        &server,
        "/api/create",
        json!({"model": "shorter", "modelfile": modelfile, "stream": false}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("JSON"),
        json!({"status": "success"})
    );
    assert_eq!(
        generate(&server, "shorter", json!({})).await["response"],
        &SCRIPT[..3]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn create_refuses_what_it_cannot_honour_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("not-a.gguf");
    std::fs::write(&script, "llmlocal-scripted-model v1\nhi").expect("write");
    let gguf_path = dir.path().join("header-only.gguf");
    let bytes = gguf::write_to_vec(
        &[("general.architecture", MetaValue::Str("llama".into()))],
        &[],
    )
    .expect("GGUF");
    std::fs::write(&gguf_path, bytes).expect("write");

    let closed = server(dir.path(), false, &[]).await;
    let from_path = json!({"model": "m", "from": gguf_path, "stream": false});
    let (status, body) = post(&closed, "/api/create", from_path.clone()).await;
    assert_eq!(
        status, 403,
        "a path a client names needs --allow-any-model: {body}"
    );

    let server = server(dir.path(), true, &[]).await;
    let (status, body) = post(&server, "/api/create", from_path).await;
    assert_eq!(status, 200, "{body}");
    assert!(names(&server).await.contains(&"m".to_string()));
    let cases = [
        (json!({"model": "x", "from": script}), "not a readable GGUF"),
        (
            json!({"model": "x", "from": "relative.gguf"}),
            "absolute path",
        ),
        (
            json!({"model": "x", "from": "s", "quantize": "q4_K_M"}),
            "`quantize`",
        ),
        (
            json!({"model": "x", "from": "s", "files": {"a.gguf": "sha256:00"}}),
            "`files`",
        ),
        (
            json!({"model": "x", "from": "s", "template": "{{ .Prompt }}"}),
            "`template`",
        ),
        (
            json!({"model": "x", "modelfile": "FROM s\nMESSAGE user hi"}),
            "`MESSAGE`",
        ),
        (
            json!({"model": "x", "from": "s", "parameters": {"mirostat": 1}}),
            "mirostat",
        ),
        (json!({"model": "x"}), "missing `from`"),
        (
            json!({"model": "x", "from": "s", "surprise": 1}),
            "surprise",
        ),
    ];
    for (body, named) in cases {
        let (status, text) = post(&server, "/api/create", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {text}");
        assert!(text.contains(named), "{body} -> {text} should name {named}");
    }
    assert!(!names(&server).await.contains(&"x".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_and_create_follow_the_rules_of_routes_that_change_models() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = server(dir.path(), false, &[]).await;
    let json_type = "Content-Type: application/json";
    for (path, body) in [
        ("/api/copy", r#"{"source": "s", "destination": "c"}"#),
        ("/api/create", r#"{"model": "c", "from": "s"}"#),
    ] {
        // A rebound Host (a web page through DNS rebinding) is refused.
        let request = raw_request("POST", path, &["Host: evil.example", json_type], body);
        let (status, text) = raw_exchange(server.addr, &request).await;
        assert_eq!(status, 403, "{path}: {text}");
        // A cross-site simple request (text/plain) is refused.
        let host = format!("Host: {}", server.addr);
        let request = raw_request("POST", path, &[&host, "Content-Type: text/plain"], body);
        let (status, text) = raw_exchange(server.addr, &request).await;
        assert_eq!(status, 403, "{path}: {text}");
    }
    assert_eq!(names(&server).await, ["s"]);

    // With admin keys, a caller without one is refused; the admin key may.
    let keyed = server_with_keys(dir.path()).await;
    let (status, _) = post(
        &keyed,
        "/api/copy",
        json!({"source": "s", "destination": "c"}),
    )
    .await;
    assert_eq!(status, 401);
    let status = server_support::client()
        .post(keyed.url("/api/copy"))
        .bearer_auth("admin-secret")
        .json(&json!({"source": "s", "destination": "c"}))
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(status, 200);
}

async fn server_with_keys(dir: &Path) -> TestServer {
    server(dir, false, &["admin-secret"]).await
}

/// A stored name that the configuration also defines stays the configured model: it is not
/// deleted through the stored name, and the stored defaults do not apply to it.
#[tokio::test(flavor = "multi_thread")]
async fn a_configured_model_shadows_a_stored_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stored = json!({"s": {"spec": "/nowhere.gguf", "parameters": {"num_predict": 2}}});
    std::fs::write(models_file(dir.path()), stored.to_string()).expect("write");
    let server = server(dir.path(), false, &[]).await;
    assert_eq!(
        generate(&server, "s", json!({"temperature": 0})).await["response"],
        SCRIPT
    );
    assert_eq!(
        delete(&server, "/api/delete", json!({"model": "s"})).await,
        409
    );
    assert_eq!(names(&server).await, ["s"]);
}
