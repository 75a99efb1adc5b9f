//! Upstream TLS errors, worded for operators: the proxy logs them and answers 502.
//!
//! rustls reports a failed handshake as an `io::Error` wrapping a [`rustls::Error`];
//! [`TlsFailure::from_rustls`] turns that into one of a few causes an operator can act on
//! (expired certificate, unknown issuer, name mismatch, chain too long, client certificate
//! missing or refused, ...). No message carries key material: only names, ids, dates and
//! alert names.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

use rustls::{AlertDescription, CertificateError};
use uuid::Uuid;

/// Why no upstream TLS connection (or client) could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum UpstreamTlsError {
    /// The name to send as SNI and to verify is neither a DNS name nor an IP address.
    #[error("upstream TLS: '{name}' is not a valid TLS server name")]
    ServerName {
        /// The name as given.
        name: String,
    },
    /// The service's TLS settings cannot be applied (configuration, the same for every target).
    #[error("upstream TLS of service {service}: {problem}")]
    Setting {
        /// The service.
        service: Uuid,
        /// What is wrong.
        problem: SettingError,
    },
    /// The connector was handed a URI that is not `https://` (it never sends plaintext).
    #[error("refusing to connect to '{uri}' without TLS")]
    NotHttps {
        /// The URI.
        uri: String,
    },
    /// The upstream host name does not resolve.
    #[error("cannot resolve upstream host '{host}': {source}")]
    Resolve {
        /// The host.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The TCP connection failed (refused, unreachable, ...).
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect {
        /// `host:port` as given.
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// TCP connect and TLS handshake took longer than the connect timeout.
    #[error(
        "connecting to upstream {addr} timed out after {} ms (TCP connect and TLS handshake)",
        timeout.as_millis()
    )]
    Timeout {
        /// `host:port` as given.
        addr: String,
        /// The limit.
        timeout: Duration,
    },
    /// The TLS handshake failed, or the upstream refused it right after (TLS 1.3 reports a
    /// refused client certificate on the first read).
    #[error("TLS handshake with upstream {addr} (server name '{server_name}') failed: {failure}")]
    Handshake {
        /// `host:port` as given.
        addr: String,
        /// The name sent as SNI and verified.
        server_name: String,
        /// Why.
        failure: TlsFailure,
    },
}

/// A service TLS setting the data plane cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SettingError {
    /// A certificate referenced as client certificate is not in the runtime.
    #[error("{field} {id} is not in the configuration")]
    MissingCertificate {
        /// `service.client_certificate` or `upstream.client_certificate`.
        field: &'static str,
        /// The certificate id.
        id: Uuid,
    },
    /// A CA certificate of `service.ca_certificates` is not in the runtime.
    #[error("ca_certificate {id} (service.ca_certificates) is not in the configuration")]
    MissingCaCertificate {
        /// The CA certificate id.
        id: Uuid,
    },
    /// Verification is on but the trust store is empty (an empty `ca_certificates` list):
    /// no certificate could ever be accepted.
    #[error("verification is on but {trust} holds no CA certificate")]
    NoTrustedCa {
        /// Which store.
        trust: TrustSource,
    },
    /// rustls refused the verifier or client configuration.
    #[error("cannot build the TLS client: {reason}")]
    Build {
        /// rustls' reason.
        reason: String,
    },
}

/// The trust store an upstream certificate is verified against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TrustSource {
    /// The service's `ca_certificates`.
    Service,
    /// The `--upstream-trusted-ca` bundle.
    Global,
    /// The compiled-in Mozilla roots (webpki-roots).
    System,
}

/// What went wrong in a TLS handshake with an upstream.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum TlsFailure {
    /// The upstream's certificate is past its end of validity.
    #[error("the upstream's certificate has expired{}", at("on", *not_after))]
    CertificateExpired {
        /// Its `notAfter`, Unix seconds, when known.
        not_after: Option<u64>,
    },
    /// The upstream's certificate is not valid yet.
    #[error("the upstream's certificate is not valid yet{}", at("before", *not_before))]
    CertificateNotYetValid {
        /// Its `notBefore`, Unix seconds, when known.
        not_before: Option<u64>,
    },
    /// No chain from the upstream's certificate to a trusted CA.
    #[error(
        "the upstream's certificate is not issued by a trusted CA (unknown issuer; trusted: {trust})"
    )]
    UnknownIssuer {
        /// The store it was checked against.
        trust: TrustSource,
    },
    /// The certificate is not valid for the server name.
    #[error(
        "the upstream's certificate does not match the server name{}",
        names(presented)
    )]
    NameMismatch {
        /// The DNS and IP names the certificate holds.
        presented: Vec<String>,
    },
    /// The chain to a trusted CA needs more intermediate certificates than allowed.
    #[error(
        "the upstream's certificate chain needs more than {depth} intermediate certificate(s) \
         to reach a trusted CA (tls_verify_depth {depth})"
    )]
    DepthExceeded {
        /// The limit.
        depth: u8,
    },
    /// The certificate is revoked.
    #[error("the upstream's certificate is revoked")]
    CertificateRevoked,
    /// The certificate's extended key usage does not allow server authentication.
    #[error("the upstream's certificate is not for TLS servers (extended key usage)")]
    NotServerCertificate,
    /// Any other certificate problem.
    #[error("the upstream's certificate is invalid: {reason}")]
    CertificateInvalid {
        /// rustls' description.
        reason: String,
    },
    /// The upstream asked for a client certificate and none is configured.
    #[error(
        "the upstream requires a client certificate and none is configured \
         (service.client_certificate, upstream.client_certificate or --client-ssl-cert); alert {}",
        alert_name(*alert)
    )]
    ClientCertificateRequired {
        /// The alert the upstream sent.
        alert: AlertDescription,
    },
    /// The upstream did not accept the client certificate presented.
    #[error("the upstream refused the client certificate (alert {})", alert_name(*alert))]
    ClientCertificateRejected {
        /// The alert the upstream sent.
        alert: AlertDescription,
    },
    /// The upstream refused the handshake for another reason.
    #[error("the upstream refused the handshake (alert {}{})", alert_name(*alert), alert_hint(*alert))]
    Refused {
        /// The alert the upstream sent.
        alert: AlertDescription,
    },
    /// The upstream answered with something that is not TLS (a plaintext server?).
    #[error("the upstream does not speak TLS on this port ({reason})")]
    NotTls {
        /// rustls' description.
        reason: String,
    },
    /// The upstream closed the connection during the handshake.
    #[error("the upstream closed the connection during the handshake")]
    Closed,
    /// Another TLS protocol problem (no common version or cipher suite, ...).
    #[error("{reason}")]
    Protocol {
        /// rustls' description.
        reason: String,
    },
    /// A socket error during the handshake.
    #[error("connection error during the handshake: {reason}")]
    Io {
        /// The socket error.
        reason: String,
    },
}

/// The error a depth-limited verifier returns inside
/// `rustls::CertificateError::Other`; [`TlsFailure::from_rustls`] finds it again.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("certificate chain longer than tls_verify_depth {depth}")]
pub(super) struct DepthExceeded {
    pub(super) depth: u8,
}

/// What the classification of a handshake error needs to know about the connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct FailureContext {
    /// The trust store used (`None`: verification is off).
    pub(super) trust: Option<TrustSource>,
    /// Whether a client certificate is configured for the connection.
    pub(super) client_certificate: bool,
}

// === impl UpstreamTlsError ===

impl UpstreamTlsError {
    /// Whether another target (or another attempt) may succeed: connection and handshake
    /// failures are per target, setting problems are the same for every target.
    pub(crate) fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::ServerName { .. } | Self::Setting { .. } | Self::NotHttps { .. }
        )
    }

    /// The upstream TLS error behind a hyper-util client error (or any error), if there is
    /// one: the connector's own error, or one carried inside an `io::Error` (a refusal reported
    /// on the first read). Walks the `source()` chain and looks inside `io::Error`s, whose
    /// `source()` skips the error they wrap.
    pub(crate) fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a Self> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(found) = error.downcast_ref::<Self>() {
                return Some(found);
            }
            if let Some(io) = error.downcast_ref::<io::Error>()
                && let Some(inner) = io.get_ref()
            {
                if let Some(found) = inner.downcast_ref::<Self>() {
                    return Some(found);
                }
                current = Some(inner);
                continue;
            }
            current = error.source();
        }
        None
    }
}

// === impl TrustSource ===

impl fmt::Display for TrustSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Service => "the service's ca_certificates",
            Self::Global => "the --upstream-trusted-ca bundle",
            Self::System => "the built-in public roots",
        })
    }
}

// === impl TlsFailure ===

impl TlsFailure {
    /// The failure behind an error of the handshake (`tokio_rustls` wraps rustls' error in
    /// an `io::Error`).
    pub(super) fn from_io(error: &io::Error, context: FailureContext) -> Self {
        if let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Self::from_rustls(tls, context);
        }
        match error.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Self::Closed,
            _ => Self::Io {
                reason: error.to_string(),
            },
        }
    }

    /// The failure behind a rustls error.
    pub(super) fn from_rustls(error: &rustls::Error, context: FailureContext) -> Self {
        match error {
            rustls::Error::InvalidCertificate(cert) => Self::from_certificate(cert, context),
            rustls::Error::AlertReceived(alert) => Self::from_alert(*alert, context),
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                Self::NotTls {
                    reason: error.to_string(),
                }
            }
            other => Self::Protocol {
                reason: other.to_string(),
            },
        }
    }

    /// The failure an alert from the upstream means.
    pub(super) fn from_alert(alert: AlertDescription, context: FailureContext) -> Self {
        use AlertDescription as A;
        let about_client_certificate = matches!(
            alert,
            A::CertificateRequired
                | A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::NoCertificate
        );
        match (alert, context.client_certificate) {
            (A::CertificateRequired | A::NoCertificate, false) => {
                Self::ClientCertificateRequired { alert }
            }
            (_, true) if about_client_certificate => Self::ClientCertificateRejected { alert },
            _ => Self::Refused { alert },
        }
    }

    fn from_certificate(error: &CertificateError, context: FailureContext) -> Self {
        match error {
            CertificateError::Expired => Self::CertificateExpired { not_after: None },
            CertificateError::ExpiredContext { not_after, .. } => Self::CertificateExpired {
                not_after: Some(not_after.as_secs()),
            },
            CertificateError::NotValidYet => Self::CertificateNotYetValid { not_before: None },
            CertificateError::NotValidYetContext { not_before, .. } => {
                Self::CertificateNotYetValid {
                    not_before: Some(not_before.as_secs()),
                }
            }
            CertificateError::UnknownIssuer => Self::UnknownIssuer {
                trust: context.trust.unwrap_or(TrustSource::System),
            },
            CertificateError::NotValidForName => Self::NameMismatch {
                presented: Vec::new(),
            },
            CertificateError::NotValidForNameContext { presented, .. } => Self::NameMismatch {
                presented: presented.iter().filter_map(|n| san_name(n)).collect(),
            },
            CertificateError::Revoked => Self::CertificateRevoked,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Self::NotServerCertificate
            }
            CertificateError::Other(other) => match other.0.downcast_ref::<DepthExceeded>() {
                Some(depth) => Self::DepthExceeded { depth: depth.depth },
                None => Self::CertificateInvalid {
                    reason: other.0.to_string(),
                },
            },
            other => Self::CertificateInvalid {
                reason: rustls::Error::InvalidCertificate(other.clone()).to_string(),
            },
        }
    }
}

/// ` on 2024-05-01 12:00:00 UTC`, or nothing.
fn at(word: &str, unix: Option<u64>) -> String {
    let Some(secs) = unix else {
        return String::new();
    };
    let date = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok());
    match date {
        Some(d) => format!(
            " ({word} {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC)",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        None => String::new(),
    }
}

/// A DNS or IP SAN as webpki describes it (`DnsName("a.example")`, `IpAddress(10.0.0.1)`),
/// without the wrapping; other kinds of names are left out.
fn san_name(described: &str) -> Option<String> {
    if let Some(name) = described
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
    {
        return Some(name.to_owned());
    }
    described
        .strip_prefix("IpAddress(")
        .and_then(|rest| rest.strip_suffix(')'))
        .map(str::to_owned)
}

/// ` (it is valid for a, b)`, or nothing.
fn names(presented: &[String]) -> String {
    if presented.is_empty() {
        String::new()
    } else {
        format!(" (it is valid for {})", presented.join(", "))
    }
}

/// An alert's name as the TLS RFCs write it.
pub(super) fn alert_name(alert: AlertDescription) -> String {
    use AlertDescription as A;
    let name = match alert {
        A::CloseNotify => "close_notify",
        A::UnexpectedMessage => "unexpected_message",
        A::BadRecordMac => "bad_record_mac",
        A::HandshakeFailure => "handshake_failure",
        A::NoCertificate => "no_certificate",
        A::BadCertificate => "bad_certificate",
        A::UnsupportedCertificate => "unsupported_certificate",
        A::CertificateRevoked => "certificate_revoked",
        A::CertificateExpired => "certificate_expired",
        A::CertificateUnknown => "certificate_unknown",
        A::IllegalParameter => "illegal_parameter",
        A::UnknownCA => "unknown_ca",
        A::AccessDenied => "access_denied",
        A::DecodeError => "decode_error",
        A::DecryptError => "decrypt_error",
        A::ProtocolVersion => "protocol_version",
        A::InsufficientSecurity => "insufficient_security",
        A::InternalError => "internal_error",
        A::UserCanceled => "user_canceled",
        A::MissingExtension => "missing_extension",
        A::UnsupportedExtension => "unsupported_extension",
        A::UnrecognisedName => "unrecognized_name",
        A::CertificateRequired => "certificate_required",
        A::NoApplicationProtocol => "no_application_protocol",
        other => return format!("{other:?}"),
    };
    name.to_owned()
}

/// What an alert usually means, for the alerts whose name says little.
fn alert_hint(alert: AlertDescription) -> &'static str {
    match alert {
        AlertDescription::HandshakeFailure => {
            ": no common TLS parameters, or the upstream requires a client certificate"
        }
        AlertDescription::ProtocolVersion => {
            ": no common TLS version (TLS 1.2 and 1.3 are offered)"
        }
        AlertDescription::UnrecognisedName => ": the upstream does not serve this server name",
        AlertDescription::NoApplicationProtocol => {
            ": the upstream does not accept the offered ALPN protocol"
        }
        _ => "",
    }
}
