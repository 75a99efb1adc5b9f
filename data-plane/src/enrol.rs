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

use gatehouse_proto::v1::EnrolRequest;
use gatehouse_proto::v1::enrolment_client::EnrolmentClient;
use gatehouse_shared::cluster::enrol::{self as shared, renew_at};
use gatehouse_shared::cluster::{ReloadingConfig, enrol_client_config};
use gatehouse_shared::x509;

use crate::config::ClusterSettings;
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
}

/// This node's enrolled identity: the file, and the validity of the certificate in it.
#[derive(Debug)]
pub(crate) struct Identity {
    path: PathBuf,
    /// The trusted CA bundle ([`TRUST_FILE`]).
    trust: PathBuf,
    node_id: Uuid,
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
        token: &str,
    ) -> Result<Self, EnrolError> {
        let (validity, enrolled) = match cached(path) {
            Some(validity) => {
                tracing::info!(path = %path.display(), not_after = validity.1, "using the cached cluster certificate");
                (validity, false)
            }
            None => (enrol(cluster, path, node_id, token).await?, true),
        };
        METRICS.cluster_cert(validity.1);
        let trust = path.with_file_name(TRUST_FILE);
        // A new enrolment starts from --cluster-ca-cert again; a cached identity keeps the
        // bundle its renewals brought.
        if enrolled || !trust.exists() {
            let ca =
                cluster.files.ca.as_deref().ok_or_else(|| {
                    EnrolError::Local("enrolment needs --cluster-ca-cert".to_owned())
                })?;
            let bundle = std::fs::read(ca)
                .map_err(|e| EnrolError::Local(format!("cannot read {}: {e}", ca.display())))?;
            shared::write_private_file(&trust, &bundle).map_err(|e| {
                EnrolError::Local(format!("cannot store the cluster CA bundle: {e}"))
            })?;
        }
        Ok(Self {
            path: path.to_owned(),
            trust,
            node_id,
            validity: Mutex::new(validity),
            configs: Mutex::new(Vec::new()),
        })
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
        Ok(validity.1)
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
    let now = crate::status::unix_now() as i64;
    if facts.not_after <= now {
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

/// Enrols with the first control plane that answers; retries unreachable ones forever, stops
/// at a refusal.
async fn enrol(
    cluster: &ClusterSettings,
    path: &Path,
    node_id: Uuid,
    token: &str,
) -> Result<(i64, i64), EnrolError> {
    let ca =
        cluster.files.ca.as_deref().ok_or_else(|| {
            EnrolError::Local("--cluster-ca-cert is required to enrol".to_owned())
        })?;
    let (key_pem, csr) = shared::new_key_and_csr(node_id)
        .map_err(|e| EnrolError::Local(format!("cannot make a key: {e}")))?;
    let hostname = crate::sync::hostname();
    let mut delay = Duration::from_millis(200);
    loop {
        for cp in &cluster.control_planes {
            let name = cluster.tls_server_name_of(cp);
            let config = enrol_client_config(ca, name)
                .map_err(|e| EnrolError::Local(format!("cluster TLS: {e}")))?;
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
                let request = EnrolRequest {
                    token: token.to_owned(),
                    node_id: node_id.to_string(),
                    csr: csr.clone().into(),
                    hostname: hostname.clone(),
                };
                match attempt(socket, server_name.clone(), config.clone(), request).await {
                    Ok(cert_pem) => {
                        let validity =
                            store(path, &key_pem, &cert_pem).map_err(EnrolError::Local)?;
                        tracing::info!(addr = %socket, %node_id, not_after = validity.1, path = %path.display(), "enrolled with the control plane");
                        return Ok(validity);
                    }
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::PermissionDenied | Code::InvalidArgument
                        ) =>
                    {
                        return Err(EnrolError::Refused(status.message().to_owned()));
                    }
                    Err(status) => {
                        tracing::warn!(addr = %socket, error = %crate::sync::describe_status(&status), "enrolment attempt failed");
                    }
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
}

/// One enrolment request to `socket`.
async fn attempt(
    socket: SocketAddr,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    request: EnrolRequest,
) -> Result<String, tonic::Status> {
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
    let channel = Endpoint::from_shared(format!("http://{socket}"))
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CONNECT_TIMEOUT * 2)
        .connect_with_connector(connector)
        .await
        .map_err(|e| tonic::Status::unavailable(crate::sync::error_chain(&e)))?;
    let response = EnrolmentClient::new(channel).enrol(request).await?;
    Ok(response.into_inner().certificate)
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
