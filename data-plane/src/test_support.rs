//! Test helpers: temporary directories, rcgen certificates, a valid configuration using every
//! kind of entity.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use gatehouse_shared::model;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use serde_json::json;
use uuid::Uuid;

/// Fixed ids, so tests can name the entities of [`valid_config`].
pub(crate) const SERVICE: Uuid = Uuid::from_u128(0x1000);
pub(crate) const ROUTE: Uuid = Uuid::from_u128(0x2000);
pub(crate) const CERTIFICATE: Uuid = Uuid::from_u128(0x3000);
pub(crate) const SNI: Uuid = Uuid::from_u128(0x4000);
pub(crate) const CA: Uuid = Uuid::from_u128(0x5000);
pub(crate) const UPSTREAM: Uuid = Uuid::from_u128(0x6000);
pub(crate) const TARGET: Uuid = Uuid::from_u128(0x7000);
pub(crate) const CONSUMER: Uuid = Uuid::from_u128(0x8000);
pub(crate) const ACL: Uuid = Uuid::from_u128(0x9000);
pub(crate) const PLUGIN: Uuid = Uuid::from_u128(0xa000);
pub(crate) const MTLS_CREDENTIAL: Uuid = Uuid::from_u128(0xb000);

/// A directory removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        let path = std::env::temp_dir().join(format!("gatehouse-dp-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed ECDSA certificate entity for `name`, with a random id.
pub(crate) fn certificate(name: &str) -> model::Certificate {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    serde_json::from_value(json!({
        "id": Uuid::new_v4(),
        "created_at": 1,
        "updated_at": 1,
        "cert": cert.pem(),
        "key": key.serialize_pem(),
        "subject": format!("CN={name}"),
        "issuer": format!("CN={name}"),
        "sans": [name],
        "not_before": 0,
        "not_after": 4_000_000_000_i64,
        "fingerprint_sha256": "",
        "key_type": "ecdsa",
    }))
    .unwrap()
}

/// A self-signed CA certificate entity, with a random id.
pub(crate) fn ca_certificate() -> model::CaCertificate {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    serde_json::from_value(json!({
        "id": Uuid::new_v4(),
        "created_at": 1,
        "updated_at": 1,
        "cert": cert.pem(),
        "cert_digest": "",
        "subject": "CN=test CA",
        "issuer": "CN=test CA",
        "not_before": 0,
        "not_after": 4_000_000_000_i64,
    }))
    .unwrap()
}

/// A CA certificate entity that is not self-issued (an intermediate of a throwaway root),
/// with a random id: it cannot anchor a chain on its own.
pub(crate) fn intermediate_ca_certificate() -> model::CaCertificate {
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::new(Vec::new()).unwrap();
    root.distinguished_name
        .push(rcgen::DnType::CommonName, "test root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(root, root_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let mut entity = ca_certificate();
    entity.cert = cert.pem();
    entity
}

/// A configuration with one entity of each kind, all references resolving; ids are the
/// constants of this module.
pub(crate) fn valid_config() -> model::Config {
    let mut cert = certificate("api.example.com");
    cert.id = CERTIFICATE;
    cert.snis = vec!["api.example.com".into()];
    let mut ca = ca_certificate();
    ca.id = CA;
    let value = json!({
        "services": [{
            "id": SERVICE, "created_at": 1, "updated_at": 1, "name": "svc",
            "protocol": "https", "host": "backend.internal", "port": 443,
            "client_certificate": {"id": CERTIFICATE}, "ca_certificates": [CA],
            "enabled": true,
        }],
        "routes": [{
            "id": ROUTE, "created_at": 1, "updated_at": 1, "name": "r",
            "protocols": ["http", "https"], "hosts": ["api.example.com", "*.example.org:8443"],
            "paths": ["/v1", "~/items/(?<id>\\d+)$"],
            "headers": {"X-Env": ["Prod", "~*^stag"]},
            "https_redirect_status_code": 426, "strip_path": true, "preserve_host": false,
            "request_buffering": true, "response_buffering": true,
            "service": {"id": SERVICE},
        }],
        "snis": [{
            "id": SNI, "created_at": 1, "updated_at": 1, "name": "api.example.com",
            "certificate": {"id": CERTIFICATE},
        }],
        "upstreams": [{
            "id": UPSTREAM, "created_at": 1, "updated_at": 1, "name": "backend.internal",
        }],
        "targets": [{
            "id": TARGET, "created_at": 1.0, "updated_at": 1.0, "upstream": {"id": UPSTREAM},
            "target": "10.0.0.1:8000",
        }],
        "consumers": [{"id": CONSUMER, "created_at": 1, "updated_at": 1, "username": "alice"}],
        "acls": [{
            "id": ACL, "created_at": 1, "updated_at": 1, "consumer": {"id": CONSUMER},
            "group": "admins",
        }],
        "mtls_auth_credentials": [{
            "id": MTLS_CREDENTIAL, "created_at": 1, "updated_at": 1,
            "consumer": {"id": CONSUMER}, "subject_name": "client.example.com",
            "ca_certificate": {"id": CA},
        }],
        "plugins": [{
            "id": PLUGIN, "created_at": 1, "updated_at": 1, "name": "mtls-auth",
            "route": {"id": ROUTE}, "service": null, "consumer": null,
            "config": {"ca_certificates": [CA]},
            "protocols": ["https"], "enabled": true,
        }],
    });
    let mut config: model::Config = serde_json::from_value(value).unwrap();
    config.certificates = vec![cert];
    config.ca_certificates = vec![ca];
    config
}
