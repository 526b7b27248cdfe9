//! Channels to the services this one calls, by service name.

use std::{collections::HashMap, time::Duration};

use tonic::transport::Channel;

use crate::config::PeersConfig;

/// One lazily connecting channel per peer service (its name, e.g. `escrow`,
/// is also the audience of the tokens sent to it).
#[derive(Clone, Debug, Default)]
pub struct Peers {
    channels: HashMap<String, Channel>,
}

impl Peers {
    /// No peers: a leaf service.
    pub fn new() -> Self {
        Self::default()
    }

    /// The peers configured in `config`; `timeout` bounds each call.
    ///
    /// # Errors
    /// A URL is malformed; the message names its variable.
    pub fn from_config(config: &PeersConfig, timeout: Duration) -> Result<Self, String> {
        let mut peers = Self::new();
        for (name, url) in config.configured() {
            peers = peers
                .with(name, url, timeout)
                .map_err(|e| format!("{}_URL: {e}", name.to_ascii_uppercase().replace('-', "_")))?;
        }
        Ok(peers)
    }

    /// Adds (or replaces) the peer `name` at `url`.
    ///
    /// # Errors
    /// `url` is not a valid endpoint.
    pub fn with(mut self, name: &str, url: &str, timeout: Duration) -> Result<Self, String> {
        let channel = ta_runtime::client::lazy_channel(url, timeout)?;
        self.channels.insert(name.to_owned(), channel);
        Ok(self)
    }

    pub fn channel(&self, name: &str) -> Option<Channel> {
        self.channels.get(name).cloned()
    }
}
