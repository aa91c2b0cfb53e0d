//! The HTTP server of `llmlocal serve` (axum): OpenAI `/v1/*` (Responses included), Anthropic
//! `/v1/messages`, Ollama `/api/*`, `/health` and Prometheus `/metrics` over one [`Engine`].
//!
//! Limits: optional API keys (`Authorization: Bearer KEY` or `x-api-key: KEY` on every route
//! but `/health`),
//! admin keys or a loopback-only rule for routes that change what the server holds
//! ([`access`]), a request body limit (413), a `max_tokens` cap (400 above it; also the default), and the
//! engine's bounded queue per model (429 + `Retry-After` when full). Shutdown is graceful:
//! the listener closes and in-flight streams finish. A client that disconnects drops its
//! response stream, which cancels its generation.

pub mod access;
mod anthropic;
mod anthropic_tools;
mod chat_page;
mod cors;
mod embeddings;
mod error;
mod events;
mod extract;
mod guard;
mod keep_alive;
mod listen;
mod llama_server;
mod logprobs;
mod ollama;
mod openai;
mod params;
mod pull;
mod removal;
mod responses;
mod responses_tools;
mod settings;
mod streaming;
mod tools;

pub use error::{ApiError, Flavor};
pub use settings::ServerSettings;

use crate::{
    adapters::{AdapterConfig, AdapterManager},
    engine::{metrics::RequestLabel, Engine},
};
use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use serde_json::json;
use std::{future::Future, sync::Arc, time::Instant};
use tokio::net::TcpListener;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub settings: Arc<ServerSettings>,
    pub started: Instant,
    /// Where GitHub adapters are cached (the engine's default manager reads the same
    /// environment), to tell whether a request's adapter would be downloaded.
    pub adapters: Option<Arc<AdapterManager>>,
    /// Names made by `/api/copy` and `/api/create`, with their defaults.
    pub created: Arc<ollama::Store>,
}

/// Routes whose names label the request counter (anything else counts as `other`).
const ENDPOINTS: &[&str] = &[
    "/v1/models",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/completion",
    "/tokenize",
    "/detokenize",
    "/apply-template",
    "/props",
    "/slots",
    "/api/generate",
    "/api/chat",
    "/api/tags",
    "/api/ps",
    "/api/show",
    "/api/pull",
    "/api/delete",
    "/api/copy",
    "/api/create",
    "/api/version",
    "/health",
    "/metrics",
];

/// The application: every route with its limits.
pub fn router(engine: Engine, settings: ServerSettings) -> Router {
    let created = ollama::Store::open(settings.models_file.clone());
    created.register(&engine);
    let state = AppState {
        engine,
        created: Arc::new(created),
        settings: Arc::new(settings),
        started: Instant::now(),
        adapters: AdapterManager::new(AdapterConfig::from_env())
            .map(Arc::new)
            .map_err(|err| tracing::warn!("no adapter cache to check requests against: {err}"))
            .ok(),
    };
    let body_limit = state.settings.max_body_bytes;
    let app = Router::new()
        .route("/v1/models", get(openai::list_models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/responses", post(responses::create))
        .route("/v1/embeddings", post(embeddings::openai))
        .route("/v1/models/{id}", get(llama_server::model))
        // llama-server's aliases: the OpenAI routes without `/v1`, and its native routes.
        .route("/models", get(openai::list_models))
        .route("/models/{id}", get(llama_server::model))
        .route("/chat/completions", post(openai::chat_completions))
        .route("/completions", post(openai::completions))
        .route("/embeddings", post(embeddings::openai))
        .route("/completion", post(llama_server::completion))
        .route("/tokenize", post(llama_server::tokenize))
        .route("/detokenize", post(llama_server::detokenize))
        .route("/apply-template", post(llama_server::apply_template))
        .route("/props", get(llama_server::props))
        .route("/slots", get(llama_server::slots))
        .route("/api/embed", post(embeddings::ollama))
        .route("/api/embeddings", post(embeddings::legacy))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/pull", post(ollama::pull))
        .route("/api/delete", delete(ollama::delete))
        .route("/api/copy", post(ollama::copy))
        .route("/api/create", post(ollama::create))
        .route("/api/version", get(ollama::version))
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    // The chat page is static (no data in it): it is served without a key, and asks for
    // one (`/#key=KEY`) only for the API calls it makes.
    let app = if state.settings.chat_page {
        app.route("/", get(chat_page::page))
    } else {
        app
    };
    let app = app
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), count));
    // Outermost: a preflight is answered before authentication.
    let app = match cors::layer(&state.settings.cors_origins) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.with_state(state)
}

/// Serves until `shutdown` resolves, then lets in-flight requests (streams included) finish.
/// Connections are bounded as [`listen`] describes.
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let maintenance = engine.spawn_maintenance();
    let limits = listen::Limits {
        max_connections: settings.max_connections.max(1),
        header_timeout: settings.header_timeout,
    };
    let app = router(engine, settings);
    let result = listen::serve(listener, app, limits, shutdown).await;
    maintenance.abort();
    result
}

async fn health(State(state): State<AppState>) -> Response {
    let backends = state.engine.registry().backend_names();
    let status = if backends.is_empty() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "status": if backends.is_empty() { "no backends" } else { "ok" },
        "backends": backends,
        // Process isolation: backends refused after their worker crashed in a loop.
        "refused_backends": state.engine.registry().refused_now(),
        "loaded_models": state.engine.loaded().len(),
        "uptime_seconds": state.started.elapsed().as_secs(),
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    // Read now: the caches change with every generation, not only at loads.
    let prompt_caches = state.engine.prompt_cache_bytes().await;
    state.engine.metrics().set_prompt_caches(&prompt_caches);
    let text = state.engine.metrics().render();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    let path = request.uri().path().to_string();
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "not_found",
        format!("no route for {path}"),
    )
    .flavor(Flavor::of_path(&path))
}

/// Checks `Authorization: Bearer KEY` or `x-api-key: KEY` when API keys are configured
/// (`/health` is open); an admin key is accepted wherever an API key is.
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let settings = &state.settings;
    let path = request.uri().path();
    let open = path == "/health" || (path == "/" && settings.chat_page);
    if settings.api_keys.is_empty() || open {
        return next.run(request).await;
    }
    let flavor = Flavor::of_path(path);
    let message = match access::api_key(request.headers()) {
        Some(key)
            if access::key_matches(&settings.api_keys, key)
                || access::key_matches(&settings.admin_keys, key) =>
        {
            return next.run(request).await
        }
        Some(_) => "invalid API key",
        None => "missing API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
    };
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_api_key",
        message,
    )
    .flavor(flavor)
    .into_response()
}

/// Counts requests by endpoint and status, and errors by code.
async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let endpoint = ENDPOINTS
        .iter()
        .find(|e| **e == path)
        .copied()
        .unwrap_or("other");
    let response = next.run(request).await;
    let metrics = state.engine.metrics();
    metrics
        .requests
        .get_or_create(&RequestLabel {
            endpoint: endpoint.to_string(),
            status: response.status().as_u16().to_string(),
        })
        .inc();
    if let Some(code) = response.extensions().get::<error::ErrorCode>() {
        metrics.error(code.0);
    }
    response
}
