//! The client behind trusted proxies: the address a per-request bound
//! (the rate per client) and the request's log line count against.
//!
//! A request's client is its peer, unless the peer is a trusted proxy
//! (`limits.trusted_proxies`); then it is the address the proxies recorded
//! in the configured header (`limits.client_address_header`:
//! `X-Forwarded-For`, or RFC 7239 `Forwarded: for=`), read from the right:
//! the nearest hop that is not itself a trusted proxy — the one address
//! there a client cannot forge, as every proxy appends the address it was
//! connected from. A value that cannot be read there falls back to the
//! peer (logged at debug), never to an error for the client.
//!
//! Connections are not counted here: the caps per client address
//! ([`super::connections`]) are taken before a request is read, so they
//! stay per peer.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::GetAll;
use ipnet::IpNet;

use crate::config::ClientAddressHeader;

/// The client of a request, as [`ClientAddresses::resolve`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// Which peers are trusted proxies, and which header they set.
#[derive(Clone, Debug, Default)]
pub struct ClientAddresses {
    trusted: Vec<IpNet>,
    header: ClientAddressHeader,
}

impl ClientAddresses {
    pub fn new(trusted: Vec<IpNet>, header: ClientAddressHeader) -> Self {
        Self { trusted, header }
    }

    /// The client of a request from `peer` with `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let values = headers.get_all(self.header.name());
        if values.iter().next().is_none() {
            // The proxy's own request (a health check): it is the client.
            return peer;
        }
        match self.nearest_untrusted(values) {
            Ok(client) => client,
            Err(reason) => {
                tracing::debug!(
                    %peer,
                    header = self.header.name(),
                    reason,
                    "client address header not read; counting the peer"
                );
                peer
            }
        }
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&address))
    }

    /// The right-most hop that is not a trusted proxy; the left-most one
    /// when every hop is.
    fn nearest_untrusted(
        &self,
        values: GetAll<'_, http::HeaderValue>,
    ) -> Result<IpAddr, &'static str> {
        let mut hops = Vec::new();
        for value in values {
            let text = value.to_str().map_err(|_| "not visible ASCII")?;
            hops.extend(text.split(','));
        }
        let mut farthest = None;
        for hop in hops.iter().rev() {
            let address = match self.header {
                ClientAddressHeader::XForwardedFor => node(hop.trim()),
                ClientAddressHeader::Forwarded => forwarded_for(hop),
            }?
            .to_canonical();
            if !self.trusts(address) {
                return Ok(address);
            }
            farthest = Some(address);
        }
        farthest.ok_or("empty")
    }
}

/// The `for=` node of one RFC 7239 `Forwarded` element.
fn forwarded_for(element: &str) -> Result<IpAddr, &'static str> {
    let value = element
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
        .map(|(_, value)| value.trim())
        .ok_or("an element without for=")?;
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').ok_or("an unterminated quote")?,
        None => value,
    };
    node(value)
}

/// An address, with or without a port (`192.0.2.1:80`, `[2001:db8::1]:80`,
/// `[2001:db8::1]`); `unknown` and obfuscated identifiers are not one.
fn node(text: &str) -> Result<IpAddr, &'static str> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(address);
    }
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address.ip());
    }
    text.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<std::net::Ipv6Addr>().ok())
        .map(IpAddr::V6)
        .ok_or("not an address")
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    const PROXY: &str = "10.0.0.7";

    fn behind(header: ClientAddressHeader) -> ClientAddresses {
        let trusted = ["10.0.0.0/8", "2001:db8:ffff::/48"];
        ClientAddresses::new(trusted.iter().map(|n| n.parse().unwrap()).collect(), header)
    }

    fn resolve(clients: &ClientAddresses, peer: &str, values: &[&str]) -> String {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(clients.header.name(), HeaderValue::from_str(value).unwrap());
        }
        clients.resolve(peer.parse().unwrap(), &headers).to_string()
    }

    #[test]
    fn the_nearest_hop_that_is_no_trusted_proxy_is_the_client() {
        let xff = behind(ClientAddressHeader::XForwardedFor);
        assert_eq!(resolve(&xff, PROXY, &["203.0.113.9"]), "203.0.113.9");
        assert_eq!(
            resolve(&xff, PROXY, &["198.51.100.1, 203.0.113.9, 10.1.1.1"]),
            "203.0.113.9",
            "a forged left part and a trusted inner proxy are skipped"
        );
        assert_eq!(
            resolve(&xff, PROXY, &["198.51.100.1", "203.0.113.9"]),
            "203.0.113.9",
            "several header lines are one list"
        );
        assert_eq!(
            resolve(&xff, PROXY, &["10.2.2.2, 10.1.1.1"]),
            "10.2.2.2",
            "only proxies: the farthest"
        );
        assert_eq!(resolve(&xff, PROXY, &["203.0.113.9:4711"]), "203.0.113.9");
        assert_eq!(resolve(&xff, PROXY, &["::ffff:203.0.113.9"]), "203.0.113.9");
        assert_eq!(resolve(&xff, PROXY, &[]), PROXY, "the proxy's own request");
    }

    #[test]
    fn forwarded_for_nodes_are_read_with_quotes_ports_and_other_pairs() {
        let forwarded = behind(ClientAddressHeader::Forwarded);
        assert_eq!(
            resolve(
                &forwarded,
                PROXY,
                &["for=192.0.2.60;proto=http;by=203.0.113.43"]
            ),
            "192.0.2.60"
        );
        assert_eq!(
            resolve(
                &forwarded,
                PROXY,
                &["for=198.51.100.1, For=\"[2001:db8:cafe::17]:4711\", for=10.1.1.1"]
            ),
            "2001:db8:cafe::17"
        );
        assert_eq!(
            resolve(&forwarded, PROXY, &["for=\"[2001:db8:cafe::17]\""]),
            "2001:db8:cafe::17"
        );
        let xff_only = &["for=192.0.2.60"];
        assert_eq!(
            resolve(&behind(ClientAddressHeader::XForwardedFor), PROXY, xff_only),
            PROXY,
            "the other header is not read"
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let xff = behind(ClientAddressHeader::XForwardedFor);
        assert_eq!(resolve(&xff, "192.0.2.1", &["203.0.113.9"]), "192.0.2.1");
        let nobody = ClientAddresses::default();
        assert_eq!(resolve(&nobody, PROXY, &["203.0.113.9"]), PROXY);
    }

    #[test]
    fn unreadable_values_fall_back_to_the_peer() {
        let xff = behind(ClientAddressHeader::XForwardedFor);
        for bad in ["", "nonsense", "203.0.113.9, ", "203.0.113.9,,"] {
            assert_eq!(resolve(&xff, PROXY, &[bad]), PROXY, "{bad:?}");
        }
        assert_eq!(
            resolve(&xff, PROXY, &["garbage, 203.0.113.9"]),
            "203.0.113.9",
            "what lies beyond the client is not read"
        );
        let forwarded = behind(ClientAddressHeader::Forwarded);
        for bad in [
            "for=unknown",
            "for=_hidden",
            "proto=https",
            "for=\"[::1]:80",
            "for=",
        ] {
            assert_eq!(resolve(&forwarded, PROXY, &[bad]), PROXY, "{bad:?}");
        }
    }

    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u16; 8]>().prop_map(IpAddr::from),
            // Trusted ones, often.
            any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::from([10, a, b, c])),
        ]
    }

    fn render(header: ClientAddressHeader, address: IpAddr, port: Option<u16>) -> String {
        match (header, address, port) {
            (ClientAddressHeader::XForwardedFor, _, None) => address.to_string(),
            (ClientAddressHeader::XForwardedFor, _, Some(port)) => {
                SocketAddr::new(address, port).to_string()
            }
            (ClientAddressHeader::Forwarded, IpAddr::V4(v4), None) => format!("for={v4}"),
            (ClientAddressHeader::Forwarded, IpAddr::V4(v4), Some(port)) => {
                format!("for=\"{v4}:{port}\";proto=https")
            }
            (ClientAddressHeader::Forwarded, IpAddr::V6(v6), None) => format!("for=\"[{v6}]\""),
            (ClientAddressHeader::Forwarded, IpAddr::V6(v6), Some(port)) => {
                format!("by=x;FOR=\"[{v6}]:{port}\"")
            }
        }
    }

    /// Pieces of both headers' syntax, valid and not, for the fuzzer.
    const TOKENS: [&str; 16] = [
        "for=",
        "For=",
        "by=",
        "proto=http",
        ",",
        ", ",
        ";",
        "\"",
        "[",
        "]",
        "203.0.113.9",
        "10.0.0.1",
        "2001:db8::1",
        "::ffff:10.0.0.2",
        ":80",
        "unknown",
    ];

    /// Whether `address` is written in `value`, in any form.
    fn mentions(value: &str, address: IpAddr) -> bool {
        value
            .split(|c: char| ",;=\"[] ".contains(c))
            .filter_map(|piece| {
                piece
                    .parse::<IpAddr>()
                    .or_else(|_| piece.parse::<SocketAddr>().map(|a| a.ip()))
                    .ok()
            })
            .any(|written| written.to_canonical() == address)
    }

    proptest! {
        /// Whatever the hops, the client is the right-most untrusted one
        /// (the farthest when all are trusted), in either header.
        #[test]
        fn the_client_is_the_rightmost_untrusted_hop(
            hops in proptest::collection::vec((address(), any::<Option<u16>>()), 1..6),
            forwarded in any::<bool>(),
        ) {
            let header = match forwarded {
                true => ClientAddressHeader::Forwarded,
                false => ClientAddressHeader::XForwardedFor,
            };
            let clients = behind(header);
            let value = hops
                .iter()
                .map(|(address, port)| render(header, *address, *port))
                .collect::<Vec<_>>()
                .join(", ");
            let expected = hops
                .iter()
                .rev()
                .map(|(address, _)| address.to_canonical())
                .find(|address| !clients.trusts(*address))
                .unwrap_or(hops[0].0.to_canonical());
            prop_assert_eq!(resolve(&clients, PROXY, &[&value]), expected.to_string());
        }

        /// Any visible text is read without a panic, and names the peer or
        /// an address written in it.
        #[test]
        fn any_value_names_the_peer_or_an_address_in_it(
            value in prop_oneof![
                "[ -~]{0,80}",
                proptest::collection::vec(
                    proptest::sample::select(&TOKENS[..]), 0..12
                ).prop_map(|tokens| tokens.concat()),
            ],
            forwarded in any::<bool>(),
        ) {
            let header = match forwarded {
                true => ClientAddressHeader::Forwarded,
                false => ClientAddressHeader::XForwardedFor,
            };
            let client = resolve(&behind(header), PROXY, &[&value]);
            prop_assert!(
                client == PROXY || mentions(&value, client.parse().unwrap()),
                "{} from {:?}", client, value
            );
        }
    }
}
