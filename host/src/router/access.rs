//! Which proxied routes a client key opens and which need the router's admin key.
//!
//! An allowlist, not a denylist: inference and read-only routes are listed here, and every
//! other `/v1/*` or `/api/*` route (pull, delete, copy, create, push, blobs, and whatever a
//! node adds later) is an admin route. A route forgotten here is refused to clients, never
//! opened to them by accident.

use axum::http::Method;

/// Routes clients may read with `GET`/`HEAD`.
const CLIENT_READS: &[&str] = &["/v1/models", "/api/tags", "/api/ps", "/api/version"];

/// Routes clients may `POST` to: generation, embeddings and model details.
const CLIENT_POSTS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
];

/// Whether `method path` is open to clients (with a client key when keys are set);
/// anything else needs the admin key.
pub fn is_client_route(method: &Method, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    let read = CLIENT_READS.contains(&path) || path.starts_with("/v1/models/");
    match *method {
        Method::GET | Method::HEAD => read,
        Method::POST => CLIENT_POSTS.contains(&path),
        // CORS preflights carry no credentials and change nothing.
        Method::OPTIONS => read || CLIENT_POSTS.contains(&path),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_is_open_and_mutation_is_admin() {
        for (method, path) in [
            (Method::POST, "/v1/chat/completions"),
            (Method::POST, "/api/chat"),
            (Method::GET, "/api/version"),
            (Method::GET, "/v1/models/m"),
            (Method::OPTIONS, "/v1/chat/completions"),
        ] {
            assert!(is_client_route(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::DELETE, "/api/delete"),
            (Method::POST, "/api/pull"),
            (Method::POST, "/api/copy"),
            (Method::POST, "/api/create"),
            (Method::POST, "/api/push"),
            (Method::POST, "/api/blobs/sha256:00"),
            (Method::GET, "/api/chat"),
            (Method::PUT, "/v1/chat/completions"),
            (Method::POST, "/v1/files"),
        ] {
            assert!(!is_client_route(&method, path), "{method} {path}");
        }
    }
}
