//! Cluster trust: how the control plane (CP) and the data planes (DPs) authenticate each other
//! on the config-sync link, in the two modes of Kong's `cluster_mtls`.
//!
//! - [`ClusterMtls::Shared`]: every node holds the same certificate and key; each side accepts
//!   its peer only if the peer's certificate has the same SHA-256 digest as its own (the
//!   handshake signature is still verified, so the peer must hold the key too).
//! - [`ClusterMtls::Pki`]: a cluster CA signs one certificate per node; the CP requires a DP
//!   certificate issued by the CA (optionally with a common name from an allow-list), the DP
//!   verifies the CP's certificate against the CA and the expected server name.
//!
//! Pieces:
//! - [`pki`]: writes a cluster CA and node certificates with rcgen (`gatehouse-cp pki`);
//! - [`server_config`] / [`client_config`]: the rustls configurations of the CP listener and
//!   of the DP connection, built with the aws-lc-rs provider (no process default needed);
//! - [`ReloadingConfig`]: such a configuration, rebuilt when its files change on disk, so new
//!   connections use a rotated certificate without a restart;
//! - [`peer_identity`]: who is on the other end of an established connection.
//!
//! Error messages name the file and the reason, never key material.

pub mod enrol;
pub mod pki;

mod reload;
#[cfg(test)]
mod test_support;
mod tls;

pub use reload::{DEFAULT_RELOAD_INTERVAL, ReloadingConfig};
pub use tls::{
    ClusterMtls, ClusterTlsError, ClusterTlsFiles, PeerIdentity, SHARED_SERVER_NAME, client_config,
    enrol_client_config, https_server_config, peer_identity, server_config, server_config_with,
    trust_bundle_client_config,
};
