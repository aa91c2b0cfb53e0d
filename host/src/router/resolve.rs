//! Name resolution for requests to nodes that drops addresses nodes may not use
//! ([`blocked_ip`]): registration refuses such IPs written in a URL, and this catches a
//! name that resolves to one (at registration time or later, by DNS rebinding).

use super::validate::blocked_ip;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;

/// The system resolver (getaddrinfo, as reqwest's default), filtered.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|addr| blocked_ip(addr.ip()).is_none())
                .collect();
            if allowed.is_empty() && !found.is_empty() {
                let message = format!(
                    "node host {host} resolves only to addresses the router never contacts \
                     (link-local, multicast, unspecified): {found:?}"
                );
                return Err(message.into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr as _;

    #[tokio::test]
    async fn keeps_loopback() {
        let name = Name::from_str("localhost").unwrap();
        let addrs: Vec<SocketAddr> = GuardedResolver.resolve(name).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
