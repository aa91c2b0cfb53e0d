//! Checks on what nodes report about themselves: ids and advertised addresses.

use super::{error::RouterError, types::Registration};
use reqwest::Url;

const MAX_NAME_LEN: usize = 256;
const MAX_LIST_LEN: usize = 4096;

/// A node id: 1-64 characters of `A-Z a-z 0-9 . _ -`.
pub fn node_id(id: &str) -> Result<(), RouterError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RouterError::BadRegistration(format!(
            "node_id {id:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// An advertised base URL: http or https, a host, an explicit or default port, no
/// user:password, no query or fragment. Returns it normalised without a trailing slash.
pub fn advertised_url(text: &str) -> Result<String, RouterError> {
    let bad = |why: &str| RouterError::BadRegistration(format!("url {text:?}: {why}"));
    let url = Url::parse(text).map_err(|err| bad(&err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("scheme must be http or https"));
    }
    match url.host_str() {
        None | Some("") => return Err(bad("no host")),
        Some(_) => {}
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not contain user:password"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not contain a query or fragment"));
    }
    match url.port_or_known_default() {
        Some(0) | None => return Err(bad("needs a non-zero port")),
        Some(_) => {}
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// The whole registration: id, URL, and sane sizes for the lists.
pub fn registration(reg: &Registration) -> Result<String, RouterError> {
    node_id(&reg.node_id)?;
    let url = advertised_url(&reg.url)?;
    let lists = [
        ("backends", &reg.backends),
        ("devices", &reg.devices),
        ("models_available", &reg.models_available),
        ("models_loaded", &reg.models_loaded),
    ];
    for (name, list) in lists {
        names(name, list)?;
    }
    if reg.version.len() > MAX_NAME_LEN {
        return Err(RouterError::BadRegistration("version is too long".into()));
    }
    Ok(url)
}

/// A list of short names (models, backends).
pub fn names(field: &str, list: &[String]) -> Result<(), RouterError> {
    if list.len() > MAX_LIST_LEN {
        return Err(RouterError::BadRegistration(format!(
            "{field}: too many entries"
        )));
    }
    if let Some(bad) = list.iter().find(|n| n.is_empty() || n.len() > MAX_NAME_LEN) {
        return Err(RouterError::BadRegistration(format!(
            "{field}: entry {bad:?} must be 1-{MAX_NAME_LEN} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_urls() {
        assert_eq!(
            advertised_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            advertised_url("https://node.lan").unwrap(),
            "https://node.lan"
        );
        assert_eq!(
            advertised_url("http://[::1]:9000").unwrap(),
            "http://[::1]:9000"
        );
    }

    #[test]
    fn rejects_bogus_urls() {
        for bad in [
            "ftp://host:21",
            "not a url",
            "http://user:pw@host:80",
            "http://host:0",
            "http://host:80/?x=1",
            "file:///etc/passwd",
            "",
        ] {
            assert!(advertised_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn node_ids() {
        assert!(node_id("node-1.lan_a").is_ok());
        for bad in ["", "a b", "../x", &"x".repeat(65)] {
            assert!(node_id(bad).is_err(), "{bad} accepted");
        }
    }
}
