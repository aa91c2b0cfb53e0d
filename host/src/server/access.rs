//! Who may change what this server holds: pull, delete, and the downloads a request would
//! start (an adapter or model spec that is not cached). A pure decision over the request's
//! facts, so every case is testable without a network.
//!
//! - With admin keys set: `Authorization: Bearer ADMIN_KEY` is needed (none: 401; another
//!   key, e.g. an inference key: 403).
//! - Without: only a loopback peer, with `Content-Type: application/json` (a browser cannot
//!   send that cross-site without a CORS preflight, which this server does not grant), a
//!   loopback `Host` (a DNS-rebinding page sends its own name) and, when an `Origin` is
//!   present, a loopback or allowlisted one (Ollama's OLLAMA_ORIGINS model).

use super::settings::ServerSettings;
use axum::http::{header, uri::Authority, HeaderMap, StatusCode, Uri};
use std::net::{IpAddr, SocketAddr};
use subtle::ConstantTimeEq as _;

/// What the decision looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts<'a> {
    /// The TCP peer; `None` when unknown (then only an admin key helps).
    pub peer: Option<SocketAddr>,
    /// `Host`, or the request target's authority (HTTP/2).
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub content_type: Option<&'a str>,
    /// The key sent: `Authorization: Bearer KEY`, or Anthropic's `x-api-key: KEY`.
    pub bearer: Option<&'a str>,
}

impl<'a> RequestFacts<'a> {
    pub fn from_parts(peer: Option<SocketAddr>, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
        RequestFacts {
            peer,
            host: text(header::HOST).or_else(|| uri.authority().map(Authority::as_str)),
            origin: text(header::ORIGIN),
            content_type: text(header::CONTENT_TYPE),
            bearer: api_key(headers),
        }
    }
}

/// Why a change is refused; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("this changes the models this server holds and needs the admin key: send `Authorization: Bearer ADMIN_KEY`")]
    MissingAdminKey,
    #[error("this changes the models this server holds and needs the admin key; the key sent is not an admin key")]
    NotAdmin,
    #[error("this changes the models this server holds, which only this machine may do when no admin key is set (the client is {0}); start the server with --admin-key KEY and send `Authorization: Bearer KEY`")]
    NotLoopback(String),
    #[error("this changes the models this server holds and needs `Content-Type: application/json` (a guard against cross-site requests)")]
    NotJson,
    #[error("this changes the models this server holds, which needs a loopback Host (localhost, 127.0.0.1, [::1]) when no admin key is set, got {0:?} (a guard against DNS rebinding); call http://127.0.0.1:PORT or set --admin-key")]
    ForeignHost(String),
    #[error("this changes the models this server holds, and Origin {0:?} may not do that; add it with --allowed-origins or set --admin-key")]
    ForeignOrigin(String),
    #[error("downloads are turned off on this server (--no-remote-pull / no_remote_pull)")]
    PullsOff,
}

impl Denial {
    pub fn status(&self) -> StatusCode {
        match self {
            Denial::MissingAdminKey => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        }
    }

    /// The machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::MissingAdminKey => "admin_key_required",
            Denial::NotAdmin => "admin_key_required",
            Denial::PullsOff => "pulls_disabled",
            _ => "not_local",
        }
    }
}

/// Whether this request may change what the server holds (see the module doc).
pub fn check_mutation(facts: &RequestFacts<'_>, settings: &ServerSettings) -> Result<(), Denial> {
    if !settings.admin_keys.is_empty() {
        return match facts.bearer {
            None => Err(Denial::MissingAdminKey),
            Some(key) if key_matches(&settings.admin_keys, key) => Ok(()),
            Some(_) => Err(Denial::NotAdmin),
        };
    }
    match facts.peer {
        Some(peer) if is_loopback_ip(peer.ip()) => {}
        Some(peer) => return Err(Denial::NotLoopback(peer.ip().to_string())),
        None => return Err(Denial::NotLoopback("unknown".to_string())),
    }
    if !facts.content_type.is_some_and(is_json) {
        return Err(Denial::NotJson);
    }
    let host = facts.host.unwrap_or("");
    if !is_loopback_authority(host) {
        return Err(Denial::ForeignHost(host.to_string()));
    }
    match facts.origin {
        Some(origin) if !origin_allowed(origin, &settings.allowed_origins) => {
            Err(Denial::ForeignOrigin(origin.to_string()))
        }
        _ => Ok(()),
    }
}

/// The key a client sent: `Authorization: Bearer KEY` (OpenAI, Ollama), else `x-api-key: KEY`
/// (Anthropic's clients). Either header carries an API key or an admin key alike; a browser
/// cannot send either cross-site without a CORS preflight.
pub fn api_key(headers: &HeaderMap) -> Option<&str> {
    bearer(headers).or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    })
}

/// The token of `Authorization: Bearer TOKEN`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Whether `given` is one of `keys`, compared in constant time per key.
pub fn key_matches(keys: &[String], given: &str) -> bool {
    keys.iter()
        .any(|k| bool::from(k.as_bytes().ct_eq(given.as_bytes())))
}

fn is_loopback_ip(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// A host name or address (no port, IPv6 possibly in brackets) that means this machine:
/// `localhost` and `*.localhost` (browsers resolve those to loopback themselves, RFC 6761),
/// 127.0.0.0/8 and ::1.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return is_loopback_ip(ip);
    }
    let lower = host.to_ascii_lowercase();
    lower == "localhost" || lower.ends_with(".localhost")
}

/// `Host` (name or address with an optional port) that means this machine.
fn is_loopback_authority(authority: &str) -> bool {
    authority
        .parse::<Authority>()
        .is_ok_and(|a| is_loopback_host(a.host()))
}

/// An `Origin` (`scheme://host[:port]`) that is loopback or matches an allowlist entry.
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let loopback = origin
        .parse::<Uri>()
        .ok()
        .filter(|uri| matches!(uri.scheme_str(), Some("http" | "https")))
        .and_then(|uri| uri.host().map(is_loopback_host))
        .unwrap_or(false);
    loopback || allowed.iter().any(|pattern| glob_matches(pattern, origin))
}

/// Case-insensitive match where `*` stands for any run of characters.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern = pattern.trim().trim_end_matches('/').to_ascii_lowercase();
    let text = text.trim_end_matches('/').to_ascii_lowercase();
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "127.0.0.1:50000";

    fn facts<'a>(peer: &str, host: &'a str) -> RequestFacts<'a> {
        RequestFacts {
            peer: Some(peer.parse().expect("addr")),
            host: Some(host),
            origin: None,
            content_type: Some("application/json"),
            bearer: None,
        }
    }

    fn open() -> ServerSettings {
        ServerSettings::default()
    }

    #[test]
    fn a_loopback_json_request_may_change_models() {
        for host in [
            "localhost",
            "localhost:11435",
            "127.0.0.1:11435",
            "127.8.0.1",
            "[::1]:80",
            "LOCALHOST.",
            "app.localhost:3000",
        ] {
            assert_eq!(
                check_mutation(&facts(LOCAL, host), &open()),
                Ok(()),
                "{host}"
            );
        }
        let v6 = facts("[::1]:5000", "[::1]:11435");
        assert_eq!(check_mutation(&v6, &open()), Ok(()));
        let mapped = facts("[::ffff:127.0.0.1]:5000", "localhost");
        assert_eq!(check_mutation(&mapped, &open()), Ok(()));
    }

    #[test]
    fn a_remote_peer_is_refused_without_an_admin_key() {
        for peer in ["192.168.1.20:40000", "[2001:db8::1]:40000", "0.0.0.0:1"] {
            let denial = check_mutation(&facts(peer, "localhost"), &open());
            assert!(
                matches!(denial, Err(Denial::NotLoopback(_))),
                "{peer}: {denial:?}"
            );
        }
        let unknown = RequestFacts {
            peer: None,
            ..facts(LOCAL, "localhost")
        };
        assert!(matches!(
            check_mutation(&unknown, &open()),
            Err(Denial::NotLoopback(_))
        ));
    }

    #[test]
    fn a_cross_site_simple_request_is_refused() {
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
        ] {
            let request = RequestFacts {
                content_type,
                ..facts(LOCAL, "localhost")
            };
            assert_eq!(check_mutation(&request, &open()), Err(Denial::NotJson));
        }
        let with_charset = RequestFacts {
            content_type: Some("Application/JSON; charset=utf-8"),
            ..facts(LOCAL, "localhost")
        };
        assert_eq!(check_mutation(&with_charset, &open()), Ok(()));
    }

    #[test]
    fn a_rebound_host_is_refused() {
        for host in [
            "evil.example",
            "evil.example:11435",
            "localhost.evil.example",
            "192.168.1.2:11435",
            "",
        ] {
            let denial = check_mutation(&facts(LOCAL, host), &open());
            assert!(
                matches!(denial, Err(Denial::ForeignHost(_))),
                "{host}: {denial:?}"
            );
        }
    }

    #[test]
    fn origins_must_be_loopback_or_allowed() {
        let with = |origin| RequestFacts {
            origin: Some(origin),
            ..facts(LOCAL, "localhost")
        };
        assert_eq!(
            check_mutation(&with("http://localhost:3000"), &open()),
            Ok(())
        );
        assert_eq!(check_mutation(&with("https://[::1]"), &open()), Ok(()));
        for origin in [
            "https://evil.example",
            "null",
            "file://",
            "http://localhost.evil",
        ] {
            assert!(
                matches!(
                    check_mutation(&with(origin), &open()),
                    Err(Denial::ForeignOrigin(_))
                ),
                "{origin}"
            );
        }
        let settings = ServerSettings {
            allowed_origins: vec!["https://app.example".into(), "chrome-extension://*".into()],
            ..open()
        };
        assert_eq!(
            check_mutation(&with("https://app.example"), &settings),
            Ok(())
        );
        assert_eq!(
            check_mutation(&with("chrome-extension://abc"), &settings),
            Ok(())
        );
        assert!(check_mutation(&with("https://app.example.evil"), &settings).is_err());
    }

    #[test]
    fn with_admin_keys_only_an_admin_key_may_change_models() {
        let settings = ServerSettings {
            api_keys: vec!["user".into()],
            admin_keys: vec!["admin".into()],
            ..open()
        };
        let remote = RequestFacts {
            content_type: Some("text/plain"),
            ..facts("10.0.0.9:1234", "models.example")
        };
        assert_eq!(
            check_mutation(&remote, &settings),
            Err(Denial::MissingAdminKey)
        );
        let user = RequestFacts {
            bearer: Some("user"),
            ..remote
        };
        assert_eq!(check_mutation(&user, &settings), Err(Denial::NotAdmin));
        let admin = RequestFacts {
            bearer: Some("admin"),
            ..remote
        };
        assert_eq!(check_mutation(&admin, &settings), Ok(()));
        // A loopback request without the key is refused too: the key is the rule.
        assert_eq!(
            check_mutation(&facts(LOCAL, "localhost"), &settings),
            Err(Denial::MissingAdminKey)
        );
        assert_eq!(Denial::MissingAdminKey.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Denial::NotAdmin.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn globs_match_whole_origins() {
        assert!(glob_matches("*", "https://x"));
        assert!(glob_matches("https://*.example", "https://a.example"));
        assert!(!glob_matches("https://*.example", "https://a.example.evil"));
        assert!(glob_matches("https://a.example/", "https://A.example"));
        assert!(!glob_matches("https://a.example", "https://a.example.evil"));
        assert!(glob_matches("a*b*c", "abc"));
        assert!(!glob_matches("ab*ba", "aba"));
    }
}
