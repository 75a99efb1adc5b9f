//! The Gatehouse configuration model, shared by the control plane and the data planes.
//!
//! - [`schema`]: a Kong-style schema engine (typed fields, defaults, checks, form coercion,
//!   Kong-shaped field errors);
//! - [`entities`]: the schema of every entity (services, routes, certificates, ...) and the
//!   plugins the data plane knows;
//! - [`checks`]: validators for names, tags, hosts, paths, regexes and SNIs;
//! - [`x509`]: PEM parsing, key/certificate matching and certificate facts;
//! - [`cluster`]: cluster trust between the control plane and the data planes (PKI
//!   generation, rustls configurations for `shared` and `pki` modes, reload on change);
//! - [`sealed`]: AES-256-GCM sealing with a context (keys at rest, the data plane's cache).
//!
//! - [`revocation`]: DER, OCSP requests and checked answers, HTTP fetches of CRLs/OCSP answers.
//!
//! No I/O happens here, except in [`cluster`], which reads and writes the cluster certificate
//! files, and [`revocation::fetch`] (HTTP GET/POST to CRL and OCSP servers): otherwise both planes call into this crate with bytes they already hold.

pub mod checks;
pub mod cluster;
pub mod entities;
pub mod model;
pub mod revocation;
pub mod schema;
pub mod sealed;
pub mod snapshot;
pub mod x509;
