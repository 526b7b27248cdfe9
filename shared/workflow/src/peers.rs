//! Channels to the services this one calls, by service name: an `http://`
//! URL in plaintext, an `https://` one over TLS (`PEER_TLS_*`, see
//! `ta_runtime::client::PeerConnector`).

use std::{collections::HashMap, time::Duration};

use tonic::transport::{Channel, Endpoint};

use crate::config::PeersConfig;

/// One lazily connecting channel per peer service (its name, e.g. `escrow`,
/// is also the audience of the tokens sent to it).
///
/// The channels carry no overall request timeout: a feed stream lives for
/// hours. Each unary call gets its own deadline from the relay, and HTTP/2
/// keepalive notices a peer that vanished under an idle stream.
#[derive(Clone, Debug, Default)]
pub struct Peers {
    channels: HashMap<String, Channel>,
}

impl Peers {
    /// No peers: a leaf service.
    pub fn new() -> Self {
        Self::default()
    }

    /// The peers configured in `config`.
    ///
    /// # Errors
    /// A URL is malformed; the message names its variable.
    pub fn from_config(config: &PeersConfig) -> Result<Self, String> {
        let mut peers = Self::new();
        for (name, url) in config.configured() {
            peers = peers
                .with(name, url)
                .map_err(|e| format!("{}_URL: {e}", name.to_ascii_uppercase().replace('-', "_")))?;
        }
        Ok(peers)
    }

    /// Adds (or replaces) the peer `name` at `url`.
    ///
    /// # Errors
    /// `url` is not a valid endpoint.
    pub fn with(mut self, name: &str, url: &str) -> Result<Self, String> {
        let connector = ta_runtime::client::PeerConnector::for_url(url)?;
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("`{url}` is not a valid endpoint URL: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(connector);
        self.channels.insert(name.to_owned(), channel);
        Ok(self)
    }

    pub fn channel(&self, name: &str) -> Option<Channel> {
        self.channels.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn peers_are_named_and_bad_urls_name_their_variable() {
        let config = PeersConfig {
            escrow_url: Some("http://escrow:50053".into()),
            ..PeersConfig::default()
        };
        let peers = Peers::from_config(&config).unwrap();
        assert!(peers.channel("escrow").is_some());
        assert!(peers.channel("contract").is_none());
        let bad = PeersConfig {
            supplier_registry_url: Some("not a url".into()),
            ..PeersConfig::default()
        };
        let error = Peers::from_config(&bad).unwrap_err();
        assert!(error.starts_with("SUPPLIER_REGISTRY_URL"), "{error}");
        let tls = PeersConfig {
            contract_url: Some("https://contract:50052".into()),
            ..PeersConfig::default()
        };
        assert!(
            Peers::from_config(&tls)
                .unwrap()
                .channel("contract")
                .is_some()
        );
        let other = PeersConfig {
            dispute_url: Some("grpc://dispute:50054".into()),
            ..PeersConfig::default()
        };
        let error = Peers::from_config(&other).unwrap_err();
        assert!(error.starts_with("DISPUTE_URL"), "{error}");
    }
}
