//! CORS: browsers may call this API only from the origins the operator names
//! (`--cors-origins`); none by default. Preflights are answered before authentication, as
//! browsers send them without credentials. Routes that change the models a server holds keep
//! their own Origin rule ([`super::access`]): a CORS origin is not thereby an admin.

use axum::http::{header, HeaderName, HeaderValue, Method, Uri};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The layer for `origins`; `None` when there are none (no CORS headers at all).
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let values: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(normalize(o)).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(values))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                // Anthropic's clients authenticate and version their calls with these.
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("anthropic-version"),
                HeaderName::from_static("anthropic-dangerous-direct-browser-access"),
            ]),
    )
}

/// Checks that each origin is `http(s)://host[:port]`, as browsers send `Origin`.
pub fn check(origins: &[String]) -> Result<(), String> {
    for origin in origins {
        let bad = |why: &str| {
            Err(format!(
                "CORS origin {origin:?} {why}; give origins as http(s)://host[:port] \
                 (e.g. http://localhost:3000), one per entry"
            ))
        };
        let text = normalize(origin);
        if text.contains('*') {
            return bad("has a wildcard, which CORS origins may not");
        }
        let Ok(uri) = text.parse::<Uri>() else {
            return bad("is not a URL");
        };
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return bad("is not an http(s) origin");
        }
        if uri.path() != "/" || uri.query().is_some() || text.ends_with('/') {
            return bad("has a path");
        }
        if HeaderValue::from_str(text).is_err() {
            return bad("is not a valid header value");
        }
    }
    Ok(())
}

/// Without the trailing `/` a copied URL often has (an `Origin` header never does).
fn normalize(origin: &str) -> &str {
    let trimmed = origin.trim();
    trimmed.strip_suffix('/').unwrap_or(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_checked() {
        let ok = |o: &str| check(&[o.to_string()]);
        assert!(ok("http://localhost:3000").is_ok());
        assert!(ok("https://app.example/").is_ok());
        for bad in [
            "*",
            "app.example",
            "ftp://x",
            "http://x/path",
            "https://*.example",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        assert!(layer(&[]).is_none());
    }
}
