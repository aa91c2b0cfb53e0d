//! Who may change the models a server holds (issue 24, item 2), attacked on loopback: a
//! cross-site `text/plain` pull, a DNS-rebinding Host, a foreign Origin, inference keys on
//! admin routes, deleting a configured or loaded model, and adapter downloads a request names.
//! (A non-loopback peer cannot be made on loopback: `server::access`'s unit tests decide it.)

#[path = "support/hf_mock.rs"]
mod hf_mock;
mod server_support;

use hf_mock::{Content, MockHub};
use llmlocal::{
    engine::{Engine, EngineSettings, ModelEntry},
    models::{ModelManager, ModelSpec},
    server::ServerSettings,
};
use serde_json::json;
use server_support::{
    client, delete, parse_ndjson, post, raw_exchange, raw_request, registry, write_script,
    TestServer,
};
use std::sync::Arc;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const MODEL: &str = "org/tiny:model.gguf";
const PULL_BODY: &str = r#"{"model": "org/tiny:model.gguf", "stream": false}"#;

/// A hub holding `org/tiny` (a scripted model) and `org/lora` (an adapter repository).
async fn hub() -> MockHub {
    let hub = MockHub::start().await;
    let model = "llmlocal-scripted-model v1\nhello from the hub";
    hub.add_repo(
        "org/tiny",
        COMMIT,
        vec![(
            "model.gguf",
            Content::Bytes(model.as_bytes().to_vec().into()),
            true,
        )],
    );
    hub.add_repo(
        "org/lora",
        COMMIT,
        vec![(
            "adapter.gguf",
            Content::Bytes(b"not really".to_vec().into()),
            true,
        )],
    );
    hub
}

/// A scripted engine whose model manager reads `hub` into `cache`, with `models` configured.
fn engine(hub: &MockHub, cache: &std::path::Path, models: &[(&str, &str)]) -> Engine {
    let manager = ModelManager::new(hub.manager_config(cache)).expect("manager");
    let mut settings = EngineSettings {
        default_backend: Some("scripted".into()),
        ..EngineSettings::default()
    };
    for (name, spec) in models {
        settings
            .models
            .insert(name.to_string(), ModelEntry::new(*spec));
    }
    Engine::new(settings, registry(&["scripted"]), Some(Arc::new(manager)))
}

fn pull_request(headers: &[&str]) -> String {
    raw_request("POST", "/api/pull", headers, PULL_BODY)
}

fn host(server: &TestServer) -> String {
    format!("Host: {}", server.addr)
}

fn is_cached(engine: &Engine, spec: &str) -> bool {
    let spec = ModelSpec::parse(spec).expect("spec");
    engine.model_manager().expect("manager").is_cached(&spec)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cross_site_simple_request_cannot_pull() {
    let hub = hub().await;
    let cache = tempfile::tempdir().expect("temp dir");
    let server =
        TestServer::start(engine(&hub, cache.path(), &[]), ServerSettings::default()).await;
    let host = host(&server);
    // What a web page can send without a CORS preflight: text/plain, a form type, or no type.
    for content_type in [
        "Content-Type: text/plain;charset=UTF-8",
        "Content-Type: application/x-www-form-urlencoded",
        "X-No-Type: 1",
    ] {
        let (status, text) = raw_exchange(
            server.addr,
            &pull_request(&[&host, content_type, "Origin: https://evil.example"]),
        )
        .await;
        assert_eq!(status, 403, "{content_type}: {text}");
        let (status, text) = raw_exchange(server.addr, &pull_request(&[&host, content_type])).await;
        assert_eq!(status, 403, "{content_type}: {text}");
        assert!(text.contains("application/json"), "{text}");
    }
    assert!(
        hub.requests().is_empty(),
        "nothing was fetched: {:?}",
        hub.requests()
    );
    assert!(!is_cached(&server.engine, MODEL));
    // The same request as a JSON client sends it pulls.
    let (status, text) = raw_exchange(
        server.addr,
        &pull_request(&[&host, "Content-Type: application/json"]),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(is_cached(&server.engine, MODEL));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebound_host_or_a_foreign_origin_cannot_pull_or_delete() {
    let hub = hub().await;
    let cache = tempfile::tempdir().expect("temp dir");
    let server =
        TestServer::start(engine(&hub, cache.path(), &[]), ServerSettings::default()).await;
    let json = "Content-Type: application/json";
    // DNS rebinding: the page's own name reaches 127.0.0.1.
    for rebound in [
        "Host: evil.example",
        "Host: evil.example:11435",
        "Host: 10.1.2.3",
    ] {
        let (status, text) = raw_exchange(server.addr, &pull_request(&[rebound, json])).await;
        assert_eq!(status, 403, "{rebound}: {text}");
        assert!(text.contains("--admin-key"), "{text}");
    }
    let local = host(&server);
    let (status, text) = raw_exchange(
        server.addr,
        &pull_request(&[&local, json, "Origin: https://evil.example"]),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("--allowed-origins"), "{text}");
    let delete_body = format!(r#"{{"model": "{MODEL}"}}"#);
    let (status, text) = raw_exchange(
        server.addr,
        &raw_request(
            "DELETE",
            "/api/delete",
            &["Host: evil.example", json],
            &delete_body,
        ),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(
        hub.requests().is_empty(),
        "nothing was fetched: {:?}",
        hub.requests()
    );
    // `localhost` with a loopback Origin is this machine.
    let (status, text) = raw_exchange(
        server.addr,
        &pull_request(&[
            "Host: localhost:11435",
            json,
            "Origin: http://localhost:3000",
        ]),
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowlisted_origin_may_pull() {
    let hub = hub().await;
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = ServerSettings {
        allowed_origins: vec!["https://*.app.example".into()],
        ..ServerSettings::default()
    };
    let server = TestServer::start(engine(&hub, cache.path(), &[]), settings).await;
    let local = host(&server);
    let json = "Content-Type: application/json";
    let (status, text) = raw_exchange(
        server.addr,
        &pull_request(&[&local, json, "Origin: https://ui.app.example"]),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, _) = raw_exchange(
        server.addr,
        &pull_request(&[&local, json, "Origin: https://ui.app.example.evil"]),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_can_be_turned_off() {
    let hub = hub().await;
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = ServerSettings {
        no_remote_pull: true,
        ..ServerSettings::default()
    };
    let server = TestServer::start(engine(&hub, cache.path(), &[]), settings).await;
    let (status, body) = post(&server, "/api/pull", json!({"model": MODEL})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no-remote-pull"), "{body}");
    let (status, body) = post(
        &server,
        "/api/generate",
        json!({"model": "s", "prompt": "x", "adapters": ["hf:org/lora/adapter.gguf"]}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        hub.requests().is_empty(),
        "nothing was fetched: {:?}",
        hub.requests()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_admin_key_only_the_admin_key_may_pull() {
    let hub = hub().await;
    let cache = tempfile::tempdir().expect("temp dir");
    let settings = ServerSettings {
        api_keys: vec!["user-key".into()],
        admin_keys: vec!["admin-key".into()],
        ..ServerSettings::default()
    };
    let server = TestServer::start(engine(&hub, cache.path(), &[]), settings).await;
    let pull = |key: Option<&str>| {
        let mut request = client()
            .post(server.url("/api/pull"))
            .json(&json!({"model": MODEL, "stream": false}));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.text().await.expect("body"))
        }
    };
    let (status, body) = pull(None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = pull(Some("user-key")).await;
    assert_eq!(status, 403, "an inference key is not an admin key: {body}");
    assert!(body.contains("admin key"), "{body}");
    assert!(
        hub.requests().is_empty(),
        "nothing was fetched: {:?}",
        hub.requests()
    );
    let (status, body) = pull(Some("admin-key")).await;
    assert_eq!(status, 200, "{body}");
    assert!(is_cached(&server.engine, MODEL));
    // The admin key also works where an inference key does.
    let tags = client()
        .get(server.url("/api/tags"))
        .bearer_auth("admin-key")
        .send()
        .await
        .expect("request");
    assert_eq!(tags.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_model_is_not_deleted() {
    let hub = hub().await;
    let cache = tempfile::tempdir().expect("temp dir");
    let engine = engine(&hub, cache.path(), &[("tiny", MODEL)]);
    let server = TestServer::start(engine, ServerSettings::default()).await;
    let (_, body) = post(&server, "/api/pull", json!({"model": "tiny"})).await;
    assert_eq!(
        parse_ndjson(&body).last().expect("a line")["status"],
        "success",
        "{body}"
    );
    assert!(is_cached(&server.engine, MODEL));
    let status = delete(&server, "/api/delete", json!({"model": "tiny"})).await;
    assert_eq!(status, 409);
    let response = client()
        .delete(server.url("/api/delete"))
        .json(&json!({"model": "tiny"}))
        .send()
        .await
        .expect("request");
    let text = response.text().await.expect("body");
    assert!(text.contains("configured"), "{text}");
    assert!(
        is_cached(&server.engine, MODEL),
        "the files are still there"
    );
    assert!(server.engine.models().contains_key("tiny"));
    // Another name for the same repository would take the configured model's files with it.
    let (_, body) = post(&server, "/api/pull", json!({"model": MODEL})).await;
    assert_eq!(
        parse_ndjson(&body).last().expect("a line")["status"],
        "success"
    );
    let (status, text) = {
        let response = client()
            .delete(server.url("/api/delete"))
            .json(&json!({"model": MODEL}))
            .send()
            .await
            .expect("request");
        (
            response.status().as_u16(),
            response.text().await.expect("body"),
        )
    };
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("tiny"), "{text}");
    assert!(
        is_cached(&server.engine, MODEL),
        "the files are still there"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adapter_downloads_need_the_right_to_change_models() {
    let hub = hub().await;
    let cache = tempfile::tempdir().expect("temp dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let script = write_script(dir.path(), "s.txt", "hi");
    let model = script.to_string_lossy().into_owned();
    let settings = ServerSettings {
        api_keys: vec!["user-key".into()],
        admin_keys: vec!["admin-key".into()],
        ..ServerSettings::default()
    };
    let engine = engine(&hub, cache.path(), &[("s", &model)]);
    let server = TestServer::start(engine, settings).await;
    let adapter = "hf:org/lora/adapter.gguf";
    let generate = |key: &'static str, adapters: Option<&'static str>| {
        let mut body = json!({"model": "s", "prompt": "x", "stream": false});
        if let Some(adapter) = adapters {
            body["adapters"] = json!([adapter]);
        }
        let request = client()
            .post(server.url("/api/generate"))
            .bearer_auth(key)
            .json(&body);
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (status, response.text().await.expect("body"))
        }
    };
    let (status, body) = generate("user-key", None).await;
    assert_eq!(status, 200, "inference needs no admin key: {body}");
    let (status, body) = generate("user-key", Some(adapter)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(adapter),
        "the refusal names the adapter: {body}"
    );
    assert!(
        hub.requests().is_empty(),
        "nothing was fetched: {:?}",
        hub.requests()
    );
    let chat = client()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth("user-key")
        .json(
            &json!({"model": "s", "messages": [{"role": "user", "content": "x"}],
                      "adapters": [adapter]}),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(chat.status(), 403);
    // The admin key passes the guard (what the scripted backend then makes of the adapter
    // does not matter here).
    let (status, body) = generate("admin-key", Some(adapter)).await;
    assert!(status != 401 && status != 403, "{status}: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_keys_adapter_downloads_follow_the_loopback_rule() {
    let hub = hub().await;
    let cache = tempfile::tempdir().expect("temp dir");
    let dir = tempfile::tempdir().expect("temp dir");
    let script = write_script(dir.path(), "s.txt", "hi");
    let model = script.to_string_lossy().into_owned();
    let engine = engine(&hub, cache.path(), &[("s", &model)]);
    let server = TestServer::start(engine, ServerSettings::default()).await;
    let body = r#"{"model": "s", "prompt": "x", "stream": false, "adapters": ["hf:org/lora/adapter.gguf"]}"#;
    let local = host(&server);
    for headers in [
        vec![local.as_str(), "Content-Type: text/plain"],
        vec!["Host: evil.example", "Content-Type: application/json"],
    ] {
        let (status, text) = raw_exchange(
            server.addr,
            &raw_request("POST", "/api/generate", &headers, body),
        )
        .await;
        assert_eq!(status, 403, "{headers:?}: {text}");
    }
    assert!(
        hub.requests().is_empty(),
        "nothing was fetched: {:?}",
        hub.requests()
    );
    // Without an adapter the same cross-site request is inference, which stays open.
    let plain = r#"{"model": "s", "prompt": "x", "stream": false}"#;
    let (status, text) = raw_exchange(
        server.addr,
        &raw_request(
            "POST",
            "/api/generate",
            &[&local, "Content-Type: text/plain"],
            plain,
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = raw_exchange(
        server.addr,
        &raw_request(
            "POST",
            "/api/generate",
            &[&local, "Content-Type: application/json"],
            body,
        ),
    )
    .await;
    assert!(status != 403, "{status}: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_answers_only_the_named_origins() {
    let hub = hub().await;
    let cache = tempfile::tempdir().expect("temp dir");
    let preflight = |server: &TestServer, origin: &str| {
        let request = client()
            .request(reqwest::Method::OPTIONS, server.url("/v1/chat/completions"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "content-type,authorization",
            );
        async move {
            let response = request.send().await.expect("request");
            response
                .headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().expect("text").to_string())
        }
    };
    // By default no origin is allowed.
    let closed =
        TestServer::start(engine(&hub, cache.path(), &[]), ServerSettings::default()).await;
    assert_eq!(preflight(&closed, "http://localhost:3000").await, None);
    let settings = ServerSettings {
        api_keys: vec!["user-key".into()],
        cors_origins: vec!["http://localhost:3000".into()],
        ..ServerSettings::default()
    };
    let server = TestServer::start(engine(&hub, cache.path(), &[]), settings).await;
    // The preflight carries no key and is answered anyway.
    assert_eq!(
        preflight(&server, "http://localhost:3000").await.as_deref(),
        Some("http://localhost:3000")
    );
    assert_eq!(preflight(&server, "https://evil.example").await, None);
}
