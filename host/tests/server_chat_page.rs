//! The chat page at `/` of `llmlocal serve`: served from the binary with a strict content
//! policy, open without an API key (it holds no data), off with `chat_page = false`
//! (`--no-chat-page`); and in real headless Chromium it lists the models, streams an answer
//! from stories260K and shows tokens/s and the time to first token.

mod server_support;
#[path = "support/webdriver.rs"]
mod webdriver;

use llmlocal::{engine::Engine, server::ServerSettings};
use server_support::{client, llama_cpp_settings, registry, stories260k_gguf, TestServer};
use std::time::{Duration, Instant};
use webdriver::{ensure_chromium, Driver};

async fn stories_server(settings: ServerSettings) -> TestServer {
    let engine = Engine::new(
        llama_cpp_settings("stories", &stories260k_gguf()),
        registry(&["llama_cpp"]),
        None,
    );
    TestServer::start(engine, settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_without_a_key_and_can_be_turned_off() {
    let keyed = ServerSettings {
        api_keys: vec!["sekrit".into()],
        ..ServerSettings::default()
    };
    let server = stories_server(keyed).await;
    let page = client().get(server.url("/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"),
        "{policy}"
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains("/v1/chat/completions") && !html.contains("https://"),
        "no CDN"
    );
    // The API behind it still needs the key.
    let models = client().get(server.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 401);

    let off = ServerSettings {
        chat_page: false,
        ..ServerSettings::default()
    };
    let server = stories_server(off).await;
    let page = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_streams_a_chat_in_headless_chromium() {
    ensure_chromium();
    let server = stories_server(ServerSettings::default()).await;
    let driver = Driver::start().await;
    driver.open(&server.url("/")).await;
    wait_for(
        &driver,
        "return document.querySelectorAll('#model option').length > 0;",
    )
    .await;
    assert_eq!(
        driver
            .run("return document.getElementById('model').value;")
            .await,
        "stories"
    );
    // Markdown is rendered from escaped text: markup in model output stays text.
    let rendered = driver
        .run("return markdown('<img src=x onerror=alert(1)> **bold** `x<y`');")
        .await;
    assert_eq!(
        rendered,
        "<p>&lt;img src=x onerror=alert(1)&gt; <strong>bold</strong> <code>x&lt;y</code></p>"
    );
    driver
        .run(
            "document.getElementById('input').value = 'Once upon a time';\
             document.getElementById('form').requestSubmit(); return true;",
        )
        .await;
    wait_for(
        &driver,
        "return document.getElementById('stats').textContent.includes('tok/s');",
    )
    .await;
    let answer = driver
        .run("return document.querySelector('.msg.assistant .body').textContent;")
        .await;
    assert!(
        answer.as_str().is_some_and(|a| a.trim().len() > 20),
        "text streamed in: {answer}"
    );
    let stats = driver
        .run("return document.getElementById('stats').textContent;")
        .await;
    assert!(
        stats.as_str().is_some_and(|s| s.contains("first token")),
        "{stats}"
    );
    driver.screenshot("chat_page.png").await;
}

/// Polls `script` (which returns a boolean) until it is true; fails after 20 s.
async fn wait_for(driver: &Driver, script: &str) {
    let start = Instant::now();
    while driver.run(script).await != true {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "page never matched: {script}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
