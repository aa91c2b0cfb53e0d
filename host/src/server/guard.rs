//! The HTTP side of [`super::access`]: a middleware that decides once per request whether it
//! may change what the server holds, refuses the routes that always do (pull, delete) before
//! their body is read, and leaves the decision to handlers whose request only sometimes does
//! (a completion naming an adapter or model that is not cached starts a download).

use super::{
    access::{check_mutation, Denial, RequestFacts},
    error::{ApiError, Flavor},
    AppState,
};
use crate::{
    adapters::{AdapterSource, AdapterSpec},
    models::{FileSelector, ModelSource, ModelSpec},
};
use axum::{
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::request::Parts,
    middleware::Next,
    response::{IntoResponse, Response},
};
use std::net::SocketAddr;

/// Routes that change what the server holds, whatever their body says.
const MUTATING_ROUTES: &[&str] = &[
    "/api/pull",
    "/api/delete",
    "/api/copy",
    "/api/create",
    "/api/push",
];

/// Routes that download.
const PULL_ROUTES: &[&str] = &["/api/pull"];

/// This request's right to change what the server holds, for handlers to consult.
#[derive(Debug, Clone)]
pub struct Mutation(Result<(), Denial>);

impl Mutation {
    /// Refuses when the request would download (an adapter or model spec that is not cached)
    /// and may not change what the server holds, or downloads are off.
    pub fn allow_downloads(
        &self,
        state: &AppState,
        model: &str,
        adapters: Option<&[String]>,
        flavor: Flavor,
    ) -> Result<(), ApiError> {
        let Some(what) = download_needed(state, model, adapters) else {
            return Ok(());
        };
        let refused = if state.settings.no_remote_pull {
            Err(Denial::PullsOff)
        } else {
            self.0.clone()
        };
        refused.map_err(|denial| {
            let mut error = denial_error(&denial, flavor);
            error.message = format!(
                "`{what}` is not cached and this request would download it: {}",
                error.message
            );
            error
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Mutation {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Absent only if the middleware did not run: then nothing is allowed.
        Ok(parts
            .extensions
            .get::<Mutation>()
            .cloned()
            .unwrap_or(Mutation(Err(Denial::NotLoopback("unknown".to_string())))))
    }
}

/// Decides [`Mutation`] for the request; refuses mutating routes that may not run.
pub async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let facts = RequestFacts::from_parts(peer, request.uri(), request.headers());
    let decision = check_mutation(&facts, &state.settings);
    let path = request.uri().path();
    let flavor = Flavor::of_path(path);
    if PULL_ROUTES.contains(&path) && state.settings.no_remote_pull {
        return denial_error(&Denial::PullsOff, flavor).into_response();
    }
    if MUTATING_ROUTES.contains(&path) {
        if let Err(denial) = &decision {
            tracing::warn!(path, ?peer, "refused: {denial}");
            return denial_error(denial, flavor).into_response();
        }
    }
    request.extensions_mut().insert(Mutation(decision));
    next.run(request).await
}

fn denial_error(denial: &Denial, flavor: Flavor) -> ApiError {
    let kind = if denial.status() == axum::http::StatusCode::UNAUTHORIZED {
        "authentication_error"
    } else {
        "permission_error"
    };
    ApiError::new(denial.status(), kind, denial.code(), denial.to_string()).flavor(flavor)
}

/// The first spec in the request that is not cached and would be downloaded: an adapter from
/// GitHub or Hugging Face, or (with `--allow-any-model`) a model named by its spec.
fn download_needed(state: &AppState, model: &str, adapters: Option<&[String]>) -> Option<String> {
    let adapter = adapters.into_iter().flatten().find(|text| {
        AdapterSpec::parse(text).is_ok_and(|spec| !adapter_cached(state, &spec.source))
    });
    if let Some(text) = adapter {
        return Some(text.clone());
    }
    let engine = &state.engine;
    let named_by_spec = engine.settings().open_specs && !engine.models().contains_key(model);
    let remote =
        ModelSpec::parse(model).is_ok_and(|s| matches!(s.source, ModelSource::HuggingFace(_)));
    (named_by_spec && remote && !engine.is_cached(model)).then(|| model.to_string())
}

/// Whether an adapter source is on disk already (a local path never downloads).
fn adapter_cached(state: &AppState, source: &AdapterSource) -> bool {
    match source {
        AdapterSource::Local(_) => true,
        AdapterSource::GitHub(asset) => state
            .adapters
            .as_ref()
            .is_some_and(|m| m.github_path(asset).is_file()),
        AdapterSource::HuggingFace {
            repo,
            revision,
            file,
        } => {
            let selector = file
                .clone()
                .map_or(FileSelector::Snapshot, FileSelector::File);
            let spec = ModelSpec::hugging_face(repo, revision.as_deref(), selector);
            match (spec, state.engine.model_manager()) {
                (Ok(spec), Some(manager)) => manager.is_cached(&spec),
                _ => false,
            }
        }
    }
}
