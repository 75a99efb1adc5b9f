//! Enrolment and renewal of this node's cluster certificate (`--cluster-bootstrap-token`).
//!
//! At start, a usable certificate in the cache directory (`cluster-identity.pem`: the key and
//! the certificate in one file, mode 0600, replaced atomically) is reused. Otherwise the node
//! makes a new ECDSA P-256 key, sends a CSR and the token to the control plane's `Enrolment`
//! service over TLS that verifies the control plane against `--cluster-ca-cert` (the node has
//! no certificate to present yet), and stores the certificate it gets. The key never leaves
//! the node.
//!
//! Renewal happens over the sync stream (see `sync`): two thirds into the certificate's
//! lifetime the node sends a new CSR; the new file is written and the cluster TLS
//! configurations reloaded, so the next connection uses it while the open stream goes on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tonic::Code;
use tonic::transport::Endpoint;
use uuid::Uuid;

use gatehouse_proto::v1::enrolment_client::EnrolmentClient;
use gatehouse_proto::v1::{EnrolRequest, TrustBundleRequest};
use gatehouse_shared::cluster::enrol::{self as shared, renew_at};
use gatehouse_shared::cluster::{ReloadingConfig, enrol_client_config, trust_bundle_client_config};
use gatehouse_shared::x509;

use crate::config::{BootstrapToken, ClusterSettings};
use crate::metrics::METRICS;

/// The file of the enrolled key and certificate, in the cache directory.
pub(crate) const IDENTITY_FILE: &str = "cluster-identity.pem";
/// The cluster CA bundle this node trusts, in the cache directory: a copy of
/// `--cluster-ca-cert` made when missing, replaced by the bundle the control plane sends with
/// each renewal (how a CA rotation reaches enrolled nodes).
pub(crate) const TRUST_FILE: &str = "cluster-ca.pem";
/// Longest wait between two enrolment rounds.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Longest TCP + TLS + HTTP/2 handshake of an enrolment attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why enrolment failed for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrolError {
    /// The control plane refused the token or the request.
    #[error("the control plane refused the enrolment: {0}")]
    Refused(String),
    /// The key or the certificate could not be made or stored.
    #[error("{0}")]
    Local(String),
    /// The CA bundle fetched for `--cluster-ca-pin` holds no pinned CA.
    #[error("the control plane cannot be trusted: {0}")]
    Untrusted(String),
}

/// This node's enrolled identity: the file, and the validity of the certificate in it.
#[derive(Debug)]
pub(crate) struct Identity {
    path: PathBuf,
    /// The trusted CA bundle ([`TRUST_FILE`]).
    trust: PathBuf,
    node_id: Uuid,
    /// The cluster settings and the token, to enrol again when the certificate expired while
    /// the node was cut off.
    cluster: ClusterSettings,
    token: BootstrapToken,
    /// (notBefore, notAfter), Unix seconds.
    validity: Mutex<(i64, i64)>,
    /// The TLS configurations built from the file, reloaded after a renewal.
    configs: Mutex<Vec<Arc<ReloadingConfig<ClientConfig>>>>,
}

// === impl Identity ===

impl Identity {
    /// The cached identity at `path` if usable (the key and a certificate that is its own and
    /// not expired), else a new one obtained from the control planes with `token`.
    pub(crate) async fn load_or_enrol(
        cluster: &ClusterSettings,
        path: &Path,
        node_id: Uuid,
        token: &BootstrapToken,
    ) -> Result<Self, EnrolError> {
        let trust = path.with_file_name(TRUST_FILE);
        let validity = match cached(path) {
            Some(validity) => {
                tracing::info!(path = %path.display(), not_after = validity.1, "using the cached cluster certificate");
                // A cached identity keeps the bundle its renewals brought.
                if !trust.exists() {
                    store_trust(&trust, &initial_trust(cluster).await?)?;
                }
                validity
            }
            None => {
                // A new enrolment starts from --cluster-ca-cert (or the pinned CAs) again.
                store_trust(&trust, &initial_trust(cluster).await?)?;
                enrol(cluster, &trust, path, node_id, &token.0).await?
            }
        };
        METRICS.cluster_cert(validity.1);
        Ok(Self {
            path: path.to_owned(),
            trust,
            node_id,
            cluster: cluster.clone(),
            token: token.clone(),
            validity: Mutex::new(validity),
            configs: Mutex::new(Vec::new()),
        })
    }

    /// A node whose certificate expired while it could not reach a control plane (renewal
    /// needs a stream) enrols again with its bootstrap token, if the token still has a use,
    /// and reloads its TLS configurations. `Ok(false)`: the certificate has not expired.
    pub(crate) async fn reenrol_if_expired(&self) -> Result<bool, EnrolError> {
        let (_, not_after) = *self.validity.lock().unwrap_or_else(PoisonError::into_inner);
        if not_after > unix_now() {
            return Ok(false);
        }
        tracing::warn!(
            not_after,
            "the cluster certificate expired while no control plane was reachable; enrolling again with the bootstrap token"
        );
        let validity = enrol(&self.cluster, &self.trust, &self.path, self.node_id, &self.token.0)
            .await
            .inspect_err(|error| {
                tracing::error!(%error, "cannot enrol again: give this node a new bootstrap token (--cluster-bootstrap-token) and restart it");
            })?;
        self.adopt(validity).map_err(EnrolError::Local)?;
        Ok(true)
    }

    /// The CA bundle to verify control planes with: the copy in the cache directory.
    pub(crate) fn trust_path(&self) -> &Path {
        &self.trust
    }

    /// Registers a TLS configuration to reload after a renewal.
    pub(crate) fn watch(&self, config: Arc<ReloadingConfig<ClientConfig>>) {
        self.configs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(config);
    }

    /// When to renew (Unix seconds).
    pub(crate) fn renew_at(&self) -> i64 {
        let (not_before, not_after) = *self.validity.lock().unwrap_or_else(PoisonError::into_inner);
        renew_at(not_before, not_after)
    }

    /// How long to wait after a failed renewal: a tenth of what is left, 1 to 60 s.
    pub(crate) fn retry_delay(&self, now: i64) -> Duration {
        let (_, not_after) = *self.validity.lock().unwrap_or_else(PoisonError::into_inner);
        let left = u64::try_from((not_after - now) / 10).unwrap_or(0);
        Duration::from_secs(left.clamp(1, 60))
    }

    /// A new key and a CSR for it; the key is kept by the caller until the answer.
    pub(crate) fn new_request(&self) -> Result<(String, Vec<u8>), String> {
        shared::new_key_and_csr(self.node_id).map_err(|e| format!("cannot make a key: {e}"))
    }

    /// Installs a renewed certificate for `key_pem`: checks they match, writes the file
    /// atomically and reloads the TLS configurations (new connections use it; the open stream
    /// keeps its own).
    ///
    /// A non-empty `ca_bundle` (the control plane's current trust, see CA rotation) replaces
    /// the trusted bundle first; it must hold only CA certificates, one of them the issuer of
    /// the new certificate.
    pub(crate) fn install(
        &self,
        key_pem: &str,
        cert_pem: &str,
        ca_bundle: &str,
    ) -> Result<i64, String> {
        if !ca_bundle.is_empty() {
            check_bundle(ca_bundle, cert_pem)?;
            if std::fs::read_to_string(&self.trust).ok().as_deref() != Some(ca_bundle) {
                shared::write_private_file(&self.trust, ca_bundle.as_bytes())
                    .map_err(|e| format!("cannot store the cluster CA bundle: {e}"))?;
                tracing::info!(path = %self.trust.display(), "cluster CA bundle replaced by the control plane's");
            }
        }
        let validity = store(&self.path, key_pem, cert_pem)?;
        self.adopt(validity)?;
        Ok(validity.1)
    }

    /// Takes the certificate just written to the file (valid for `validity`) into use: new
    /// connections present it.
    fn adopt(&self, validity: (i64, i64)) -> Result<(), String> {
        *self.validity.lock().unwrap_or_else(PoisonError::into_inner) = validity;
        for config in self
            .configs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            config
                .reload_if_changed()
                .map_err(|e| format!("the renewed certificate cannot be used: {e}"))?;
        }
        METRICS.cluster_cert(validity.1);
        Ok(())
    }
}

/// The validity of the identity file at `path` when it holds a key and its certificate, not
/// expired.
fn cached(path: &Path) -> Option<(i64, i64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let facts = match x509::check_key_pair(&text, &text) {
        Ok(facts) => facts,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "the cached cluster certificate is unusable; enrolling again");
            return None;
        }
    };
    if facts.not_after <= unix_now() {
        tracing::warn!(path = %path.display(), not_after = facts.not_after, "the cached cluster certificate has expired; enrolling again");
        return None;
    }
    Some((facts.not_before, facts.not_after))
}

/// Checks a CA bundle sent by the control plane: CA certificates only, one of them the
/// issuer of `cert_pem`.
fn check_bundle(bundle: &str, cert_pem: &str) -> Result<(), String> {
    let bad = |reason: String| format!("the control plane sent an unusable CA bundle: {reason}");
    let leaf = x509::parse_certificates(cert_pem)
        .ok()
        .and_then(|certs| certs.first().and_then(|c| x509::cert_facts(c).ok()))
        .ok_or_else(|| bad("the renewed certificate cannot be read".to_owned()))?;
    let mut has_issuer = false;
    for der in x509::parse_certificates(bundle).map_err(bad)? {
        let facts = x509::cert_facts(&der).map_err(bad)?;
        if !facts.is_ca {
            return Err(bad("a certificate in it is not a CA".to_owned()));
        }
        has_issuer |= facts.subject == leaf.issuer;
    }
    if has_issuer {
        Ok(())
    } else {
        Err(bad(
            "it does not hold the issuer of the renewed certificate".to_owned(),
        ))
    }
}

/// Checks `cert_pem` is the certificate of `key_pem` and writes both to `path` (0600).
fn store(path: &Path, key_pem: &str, cert_pem: &str) -> Result<(i64, i64), String> {
    let facts = x509::check_key_pair(cert_pem, key_pem)
        .map_err(|e| format!("the control plane sent an unusable certificate: {e}"))?;
    let contents = format!("{}\n{}", key_pem.trim_end(), cert_pem);
    shared::write_private_file(path, contents.as_bytes())
        .map_err(|e| format!("cannot store the cluster certificate: {e}"))?;
    Ok((facts.not_before, facts.not_after))
}

/// Now, Unix seconds.
fn unix_now() -> i64 {
    crate::status::unix_now() as i64
}

/// Writes the trusted CA bundle (0600).
fn store_trust(path: &Path, bundle: &str) -> Result<(), EnrolError> {
    shared::write_private_file(path, bundle.as_bytes())
        .map_err(|e| EnrolError::Local(format!("cannot store the cluster CA bundle: {e}")))
}

/// The CA bundle to enrol with: `--cluster-ca-cert`, or the CAs of the control plane's bundle
/// that match `--cluster-ca-pin`.
async fn initial_trust(cluster: &ClusterSettings) -> Result<String, EnrolError> {
    if let Some(ca) = cluster.files.ca.as_deref() {
        return std::fs::read_to_string(ca)
            .map_err(|e| EnrolError::Local(format!("cannot read {}: {e}", ca.display())));
    }
    if cluster.ca_pins.is_empty() {
        return Err(EnrolError::Local(
            "enrolment needs --cluster-ca-cert or --cluster-ca-pin".to_owned(),
        ));
    }
    let config =
        trust_bundle_client_config().map_err(|e| EnrolError::Local(format!("cluster TLS: {e}")))?;
    let pins = &cluster.ca_pins;
    let bundle = each_control_plane(
        cluster,
        |_| Ok(config.clone()),
        |channel| async move {
            let response = EnrolmentClient::new(channel)
                .trust_bundle(TrustBundleRequest {})
                .await
                .map_err(Attempt::from)?;
            shared::pinned_cas(&response.into_inner().ca_bundle, pins)
                .map_err(|reason| Attempt::Fatal(EnrolError::Untrusted(reason)))
        },
    )
    .await?;
    tracing::info!(pins = %pins.join(","), "cluster CA bundle fetched and checked against the pins");
    Ok(bundle)
}

/// Enrols with the first control plane that answers, verified with the CA bundle at `trust`;
/// retries unreachable ones forever, stops at a refusal.
async fn enrol(
    cluster: &ClusterSettings,
    trust: &Path,
    path: &Path,
    node_id: Uuid,
    token: &str,
) -> Result<(i64, i64), EnrolError> {
    let (key_pem, csr) = shared::new_key_and_csr(node_id)
        .map_err(|e| EnrolError::Local(format!("cannot make a key: {e}")))?;
    let hostname = crate::sync::hostname();
    let tls = |name: &str| {
        enrol_client_config(trust, name).map_err(|e| EnrolError::Local(format!("cluster TLS: {e}")))
    };
    let cert_pem = each_control_plane(cluster, tls, |channel| {
        let request = EnrolRequest {
            token: token.to_owned(),
            node_id: node_id.to_string(),
            csr: csr.clone().into(),
            hostname: hostname.clone(),
        };
        async move {
            let response = EnrolmentClient::new(channel)
                .enrol(request)
                .await
                .map_err(Attempt::from)?;
            Ok(response.into_inner().certificate)
        }
    })
    .await?;
    let validity = store(path, &key_pem, &cert_pem).map_err(EnrolError::Local)?;
    tracing::info!(%node_id, not_after = validity.1, path = %path.display(), "enrolled with the control plane");
    Ok(validity)
}

/// How one call to a control plane's `Enrolment` service ended, when not with an answer.
enum Attempt {
    /// The control plane could not be reached or answered "later": try the next one.
    Retry(String),
    /// Stop enrolling.
    Fatal(EnrolError),
}

impl From<tonic::Status> for Attempt {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            Code::PermissionDenied | Code::InvalidArgument => {
                Self::Fatal(EnrolError::Refused(status.message().to_owned()))
            }
            _ => Self::Retry(crate::sync::describe_status(&status)),
        }
    }
}

/// Runs `call` on a channel to each address of each control plane in turn, until one answers
/// or fails for good; after a round of failures waits (200 ms doubling to [`MAX_RETRY`]) and
/// starts again. `tls` gives the TLS configuration for a control plane's server name.
async fn each_control_plane<T, F>(
    cluster: &ClusterSettings,
    tls: impl Fn(&str) -> Result<Arc<ClientConfig>, EnrolError>,
    call: impl Fn(tonic::transport::Channel) -> F,
) -> Result<T, EnrolError>
where
    F: Future<Output = Result<T, Attempt>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        for cp in &cluster.control_planes {
            let name = cluster.tls_server_name_of(cp);
            let config = tls(name)?;
            let server_name = ServerName::try_from(name.to_owned())
                .map_err(|_| EnrolError::Local(format!("invalid server name '{name}'")))?;
            let sockets: Vec<SocketAddr> = match tokio::net::lookup_host(cp.addr.as_str()).await {
                Ok(addrs) => addrs.collect(),
                Err(error) => {
                    tracing::warn!(addr = %cp.addr, %error, "cannot resolve the control plane");
                    continue;
                }
            };
            for socket in sockets {
                let outcome = match channel(socket, server_name.clone(), config.clone()).await {
                    Ok(channel) => call(channel).await,
                    Err(error) => Err(Attempt::Retry(error)),
                };
                match outcome {
                    Ok(answer) => return Ok(answer),
                    Err(Attempt::Fatal(error)) => return Err(error),
                    Err(Attempt::Retry(error)) => {
                        tracing::warn!(addr = %socket, %error, "enrolment attempt failed");
                    }
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
}

/// A gRPC channel to `socket` over TLS with `config` (no client certificate).
async fn channel(
    socket: SocketAddr,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
) -> Result<tonic::transport::Channel, String> {
    let label = socket.to_string();
    let connector = tower::service_fn(move |_: http::Uri| {
        let config = config.clone();
        let server_name = server_name.clone();
        let label = label.clone();
        async move {
            crate::sync::connect_tls(socket, &label, server_name, config)
                .await
                .map(hyper_util::rt::TokioIo::new)
        }
    });
    Endpoint::from_shared(format!("http://{socket}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CONNECT_TIMEOUT * 2)
        .connect_with_connector(connector)
        .await
        .map_err(|e| crate::sync::error_chain(&e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use gatehouse_shared::cluster::pki;
    use uuid::Uuid;

    use super::check_bundle;

    fn pki_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gh-dp-bundle-{tag}-{}", Uuid::new_v4()));
        pki::init(&dir, &[], &["dp1".to_owned()], 30, false).unwrap();
        dir
    }

    #[test]
    fn a_ca_bundle_from_the_control_plane_is_checked() {
        let (ours, other) = (pki_dir("ours"), pki_dir("other"));
        let read =
            |dir: &std::path::Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
        let cert = read(&ours, "dp1.crt");
        // The issuer alone, and with another CA (a rotation), are accepted.
        check_bundle(&read(&ours, "ca.crt"), &cert).unwrap();
        let both = format!("{}{}", read(&other, "ca.crt"), read(&ours, "ca.crt"));
        check_bundle(&both, &cert).unwrap();
        // Not the issuer, a leaf, or no certificate at all: refused.
        let error = check_bundle(&read(&other, "ca.crt"), &cert).unwrap_err();
        assert!(error.contains("does not hold the issuer"), "{error}");
        let error = check_bundle(&read(&ours, "cp.crt"), &cert).unwrap_err();
        assert!(error.contains("not a CA"), "{error}");
        assert!(check_bundle("garbage", &cert).is_err());
        for dir in [ours, other] {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
