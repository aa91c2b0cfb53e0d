//! Checks on what nodes report about themselves: ids and advertised addresses.

use super::{error::RouterError, types::Registration};
use reqwest::Url;
use std::net::IpAddr;

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

/// Why the router must never send requests to `ip`, if so: addresses that are not a node's
/// (unspecified, broadcast, multicast) or that reach the router's own machine's secrets
/// (link-local: cloud metadata at 169.254.169.254, fe80::/10). IPv4-mapped IPv6 counts as
/// its IPv4 address.
pub fn blocked_ip(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_multicast() {
        return Some("a multicast address");
    }
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address (169.254.0.0/16)"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address (fe80::/10)"),
        _ => None,
    }
}

/// An advertised base URL: http or https, a host, an explicit or default port, no
/// user:password, no query or fragment, an IP the router may reach ([`blocked_ip`]), and a
/// host in `allow_hosts` when that list is not empty. Returns it normalised without a
/// trailing slash.
pub fn advertised_url(text: &str, allow_hosts: &[String]) -> Result<String, RouterError> {
    let bad = |why: &str| RouterError::BadRegistration(format!("url {text:?}: {why}"));
    let url = Url::parse(text).map_err(|err| bad(&err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("scheme must be http or https"));
    }
    // IPv6 hosts come bracketed; the parser already turned IPv4 spellings into dotted quads.
    let host = url.host_str().unwrap_or("").trim_matches(['[', ']']);
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if let Some(why) = host.parse::<IpAddr>().ok().and_then(blocked_ip) {
        return Err(bad(&format!("the host is {why}, which nodes may not use")));
    }
    if !allow_hosts.is_empty() && !allow_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err(bad(&format!(
            "host {host} is not in the router's --node-allow-hosts"
        )));
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
pub fn registration(reg: &Registration, allow_hosts: &[String]) -> Result<String, RouterError> {
    node_id(&reg.node_id)?;
    let url = advertised_url(&reg.url, allow_hosts)?;
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
            advertised_url("http://127.0.0.1:8080/", &[]).unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            advertised_url("https://node.lan", &[]).unwrap(),
            "https://node.lan"
        );
        assert_eq!(
            advertised_url("http://[::1]:9000", &[]).unwrap(),
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
            "http://169.254.169.254",
            "http://169.254.1.1:8080",
            "http://0.0.0.0:8080",
            "http://[::]:8080",
            "http://[fe80::1]:8080",
            "http://[::ffff:169.254.169.254]:80",
            "http://224.0.0.1:80",
            "http://[ff02::1]:80",
            "http://255.255.255.255:80",
        ] {
            assert!(advertised_url(bad, &[]).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn allowlist_limits_hosts() {
        let allow = ["node.lan".to_string(), "::1".to_string()];
        assert!(advertised_url("http://NODE.lan:1", &allow).is_ok());
        assert!(advertised_url("http://[::1]:1", &allow).is_ok());
        assert!(advertised_url("http://127.0.0.1:1", &allow).is_err());
    }

    #[test]
    fn node_ids() {
        assert!(node_id("node-1.lan_a").is_ok());
        for bad in ["", "a b", "../x", &"x".repeat(65)] {
            assert!(node_id(bad).is_err(), "{bad} accepted");
        }
    }
}
