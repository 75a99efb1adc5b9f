//! TLS termination for the proxy listeners (certificate path 1 of the design: gateway →
//! client).
//!
//! [`TlsTerminator::accept`] takes a freshly accepted connection through the handshake:
//!
//! 1. the ClientHello is read ([`tokio_rustls::LazyConfigAcceptor`]);
//! 2. the current [`Runtime`] is loaded **once** for the connection;
//! 3. the `ServerConfig` is chosen for that ClientHello. Today every ClientHello gets the
//!    same one; client-certificate requests (`mtls-auth`), ALPN or TLS versions per SNI will
//!    choose here, which is why the choice comes after the ClientHello;
//!    An ACME TLS-ALPN-01 validation (ALPN exactly `acme-tls/1`, the SNI of a pending
//!    challenge: see `acme`) gets the challenge's own config instead, and the connection ends
//!    after the handshake ([`Accepted::AcmeValidation`]);
//! 4. the handshake completes, and the facts the proxy needs later (SNI, ALPN, version,
//!    cipher suite, resumption, client certificates, which certificate was served) are taken
//!    from the connection into a [`TlsInfo`] before the stream is handed to hyper.
//!
//! The whole handshake has one deadline ([`TlsOptions::with_handshake_timeout`], 10 s by
//! default): a client that stalls, sends garbage or hangs up gets an error, never a panic.
//!
//! # Server certificates
//!
//! Chosen by Kong's rules ([`Runtime::certificate_for_sni`]): the exact SNI, `*.rest`,
//! `first.*`, the `*` SNI, then the [`DefaultCertificate`] (`--ssl-cert`, or a self-signed
//! certificate for `localhost` generated at start). A client that sends no SNI gets the
//! default certificate. When a certificate has a `cert_alt`/`key_alt` pair of the other key
//! type, the client gets the pair it can verify, ECDSA when it can verify both. A server name
//! served the default certificate may ask the control plane for one (ACME on-demand
//! issuance, see `acme`).
//!
//! # Configurations per runtime
//!
//! The `ServerConfig`s are built once per runtime, on the first handshake that sees it, and
//! shared by every handshake until the next swap: the hot path loads two `ArcSwap`s and
//! clones an `Arc`. Each config's certificate resolver holds the runtime it was built for,
//! so a certificate added, changed or removed at the control plane is served by the next
//! handshake after the swap, and established connections are not touched.
//!
//! # Session resumption
//!
//! A per-process session cache (TLS 1.2 session ids, TLS 1.3 stateful tickets) always, and
//! stateless tickets ([`Ticketer`]) unless `--ssl-session-tickets off`. Tickets are per
//! process: a client resumes only on the node that issued its ticket.
//!
//! **Rule for sharing resumption state** (rustls leaves it to us, see
//! [`ServerConfig`]'s "Sharing resumption storage" section): the session cache and the
//! ticketer may only be shared by configs with the same client-authentication policy. A
//! session resumed under another config keeps the client identity (or the lack of one) of
//! the config that made it, so sharing between an anonymous config and one that verifies
//! client certificates would let an unauthenticated session look authenticated. Therefore:
//!
//! - every config without client authentication shares the terminator's one anonymous
//!   resumption state, across runtimes too (certificates changing is fine: rustls resumes
//!   only for the same SNI, and the client verified the certificate when it made the
//!   session);
//! - a config that requests or requires client certificates (the `mtls-auth` work) gets
//!   its own resumption state per verification policy (its trust roots and whether a
//!   certificate is optional), made anew when that policy changes in a new runtime, so a
//!   session verified against roots since removed is not resumed.
//!
//! Early data (0-RTT) stays off: it can be replayed.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::crypto::aws_lc_rs::{self, Ticketer};
use rustls::pki_types::CertificateDer;
use rustls::server::{
    Acceptor, ClientHello, NoServerSessionStorage, ProducesTickets, ServerSessionMemoryCache,
    StoresServerSessions,
};
use rustls::{CipherSuite, HandshakeKind, NamedGroup, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use uuid::Uuid;

use crate::acme::{self, Acme};
use crate::config::SslSettings;
use crate::plugins::{ClientAuth, Plugins};
use crate::runtime::{Part, PerRuntime, Runtime, SharedRuntime};
use client_auth::RequestClientCertificate;

mod client_auth;
mod default_cert;
mod resolver;
#[cfg(test)]
pub(crate) mod tests;

pub use default_cert::DefaultCertificate;
pub(crate) use default_cert::load_certified_key;

use resolver::SniResolver;

/// How long a client has to complete the handshake, from the connection on.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions kept for stateful resumption (TLS 1.2 session ids, and TLS 1.3 when tickets are
/// off); the oldest are dropped first. A few hundred bytes each.
const SESSION_CACHE_SIZE: usize = 16_384;
/// ALPN protocol id of HTTP/2.
const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Terminates TLS for one proxy listener (or several with the same options): chooses the
/// configuration and certificate from the current runtime for each ClientHello and runs the
/// handshake. Share it behind an `Arc`; [`TlsTerminator::accept`] takes `&self`.
pub struct TlsTerminator {
    runtime: Arc<SharedRuntime>,
    default: Arc<DefaultCertificate>,
    /// Everything but the certificate resolver: cloned for each runtime.
    template: Arc<ServerConfig>,
    options: TlsOptions,
    /// The configurations of the recent runtimes.
    configs: PerRuntime<RuntimeTls>,
    /// The plugin plans (which names request client certificates).
    plugins: Arc<Plugins>,
    /// Resumption state of the configs that request client certificates (never shared with
    /// the anonymous ones; see the module docs).
    client_auth_resumption: Resumption,
    /// ACME: TLS-ALPN-01 answers and on-demand requests.
    acme: Arc<Acme>,
}

/// What [`TlsTerminator::accept`] did with a connection.
#[derive(Debug)]
#[non_exhaustive]
// Made once per connection and matched at once: boxing the connection would cost an
// allocation per connection for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Accepted<IO = TcpStream> {
    /// The handshake completed: serve the connection.
    Connection(TlsConnection<IO>),
    /// The connection was an ACME TLS-ALPN-01 validation (RFC 8737): the challenge
    /// certificate was served and the connection closed. Nothing more to do.
    AcmeValidation {
        /// The name validated.
        server_name: String,
    },
}

/// Options of a [`TlsTerminator`]; [`Default`]: ALPN `h2` and `http/1.1`, session tickets
/// on, [`DEFAULT_HANDSHAKE_TIMEOUT`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// Application protocols offered.
    pub alpn: Alpn,
    /// Whether stateless session tickets are issued.
    pub session_tickets: bool,
    /// Whether sessions are kept in the server-side cache (TLS 1.2 ids, TLS 1.3 stateful
    /// tickets).
    pub session_cache: bool,
    /// Deadline of the whole handshake.
    pub handshake_timeout: Duration,
}

/// The application protocols a listener negotiates with ALPN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Alpn {
    /// `h2`, then `http/1.1` (the proxy's HTTPS listener).
    #[default]
    Http2AndHttp1,
    /// `http/1.1` only (a listener without HTTP/2).
    Http1,
    /// None (the stream listener: the bytes inside are not HTTP's business).
    None,
}

/// A connection whose handshake completed: the TLS stream and what was negotiated. It reads
/// and writes the decrypted stream, so hyper can serve it directly.
pub struct TlsConnection<IO = TcpStream> {
    stream: TlsStream<IO>,
    info: Arc<TlsInfo>,
}

/// What a handshake negotiated, captured before the stream goes to hyper. Cheap to share:
/// [`TlsConnection::info`] hands out an `Arc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    server_name: Option<String>,
    alpn: Option<Vec<u8>>,
    version: ProtocolVersion,
    cipher_suite: CipherSuite,
    key_exchange_group: Option<NamedGroup>,
    resumed: bool,
    peer_certificates: Vec<CertificateDer<'static>>,
    certificate: ServedCertificate,
    runtime_version: u64,
}

/// Which certificate the server name of a handshake selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServedCertificate {
    /// A certificate entity of the runtime (through an SNI, including `*`).
    Entity(Uuid),
    /// The proxy's default certificate (`--ssl-cert`, or the self-signed one).
    Default,
}

/// Why a TLS connection did not get through its handshake. Client-side causes (garbage,
/// hang-ups, stalls, unsupported parameters) are expected on a public port: log them at a
/// low level.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// No complete ClientHello arrived before the deadline.
    #[error("no TLS ClientHello within {0:?}")]
    ClientHelloTimeout(Duration),
    /// The ClientHello could not be read: the client hung up or did not speak TLS.
    #[error("reading the TLS ClientHello: {0}")]
    ClientHello(#[source] io::Error),
    /// The handshake did not complete before the deadline.
    #[error("TLS handshake{} not completed within {timeout:?}", for_name(.server_name))]
    HandshakeTimeout {
        /// The SNI the client sent.
        server_name: Option<String>,
        /// The deadline.
        timeout: Duration,
    },
    /// The runtime's TLS configuration cannot be built: the connection is refused.
    #[error("TLS configuration unusable: {0}")]
    Config(String),
    /// The handshake failed (no common version, cipher suite, ALPN protocol or key type; a
    /// bad message; the client rejected the certificate; a hang-up).
    #[error("TLS handshake{}: {source}", for_name(.server_name))]
    Handshake {
        /// The SNI the client sent.
        server_name: Option<String>,
        /// The failure; [`TlsError::tls_error`] gives the rustls error inside it.
        source: io::Error,
    },
}

/// Why a [`TlsTerminator`] or its [`DefaultCertificate`] cannot be set up. Messages name the
/// file at fault and never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A certificate file cannot be read or holds no usable certificate.
    #[error("{flag} {}: {reason}", .path.display())]
    Cert {
        /// The setting (`--ssl-cert`, `--client-ssl-cert`).
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A key file cannot be read or holds no usable private key.
    #[error("{flag} {}: {reason}", .path.display())]
    Key {
        /// The setting (`--ssl-cert-key`, `--client-ssl-cert-key`).
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong (a fixed text: the key is never echoed).
        reason: String,
    },
    /// A key is not the key of its certificate.
    #[error("{} {}: does not match {} {}", .flags.cert, .cert.display(), .flags.key, .key.display())]
    Mismatch {
        /// The settings naming the files.
        flags: PairFlags,
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// Two default certificates have the same key type.
    #[error("--ssl-cert: both certificates are {0}; give one RSA and one ECDSA certificate")]
    SameKeyType(&'static str),
    /// Not one or two default certificates.
    #[error("--ssl-cert: expected one or two certificates, got {0}")]
    CertCount(usize),
    /// The self-signed default certificate cannot be generated.
    #[error("cannot generate the self-signed default certificate: {0}")]
    SelfSigned(String),
    /// rustls refused the configuration (ticketer, protocol versions).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The settings naming a certificate file and its key file, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairFlags {
    /// The certificate's setting.
    pub cert: &'static str,
    /// The key's setting.
    pub key: &'static str,
}

impl PairFlags {
    /// The default server certificate.
    pub const SSL: Self = Self {
        cert: "--ssl-cert",
        key: "--ssl-cert-key",
    };
    /// The global upstream client certificate.
    pub const CLIENT_SSL: Self = Self {
        cert: "--client-ssl-cert",
        key: "--client-ssl-cert-key",
    };
}

/// The server configurations of one runtime.
#[derive(Debug)]
struct RuntimeTls {
    runtime: Arc<Runtime>,
    /// Without client authentication; its resolver reads `runtime`.
    anonymous: Arc<ServerConfig>,
    /// Requesting (not requiring) a client certificate, for the server names `mtls-auth`
    /// applies to; `None` when no instance does.
    requesting: Option<Arc<ServerConfig>>,
    client_auth: Arc<ClientAuth>,
}

/// Resumption state; see the module docs for which configs may share one.
struct Resumption {
    sessions: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

// === impl TlsTerminator ===

impl TlsTerminator {
    /// A terminator with the settings' default certificate (loaded from the files, or
    /// generated) and session tickets, and the other options at their defaults.
    pub fn from_settings(
        settings: &SslSettings,
        runtime: Arc<SharedRuntime>,
    ) -> Result<Self, TlsSetupError> {
        let default = Arc::new(DefaultCertificate::from_settings(settings)?);
        let options = TlsOptions::default()
            .with_session_tickets(settings.session_tickets)
            .with_session_cache(settings.session_cache);
        Self::new(runtime, default, options)
    }

    /// A terminator serving the certificates of `runtime`, falling back to `default`.
    /// Several terminators may share one default certificate; each has its own resumption
    /// state.
    pub fn new(
        runtime: Arc<SharedRuntime>,
        default: Arc<DefaultCertificate>,
        options: TlsOptions,
    ) -> Result<Self, TlsSetupError> {
        let resumption = Resumption::new(options.session_tickets, options.session_cache)?;
        let client_auth_resumption =
            Resumption::new(options.session_tickets, options.session_cache)?;
        let placeholder = Arc::new(SniResolver::new(
            Arc::new(Runtime::empty()),
            default.clone(),
        ));
        let mut template =
            ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_no_client_auth()
                .with_cert_resolver(placeholder);
        template.alpn_protocols = options.alpn.protocols();
        template.session_storage = resumption.sessions;
        template.ticketer = resumption.ticketer;
        if !options.session_tickets && !options.session_cache {
            // No resumption at all: do not hand out TLS 1.3 tickets nobody will honour.
            template.send_tls13_tickets = 0;
        }
        Ok(Self {
            runtime,
            default,
            template: Arc::new(template),
            options,
            configs: PerRuntime::default(),
            plugins: Arc::default(),
            client_auth_resumption,
            acme: Arc::default(),
        })
    }

    /// Runs the TLS handshake of a new connection: reads the ClientHello, loads the current
    /// runtime once, picks the configuration and certificate for that ClientHello, and
    /// completes the handshake, all within the handshake timeout. Dropping the future (or an
    /// error) closes the connection.
    ///
    /// A ClientHello offering exactly the ALPN `acme-tls/1` for the name of a pending
    /// TLS-ALPN-01 challenge gets the challenge certificate, and the connection is closed
    /// after the handshake ([`Accepted::AcmeValidation`]). A server name served the default
    /// certificate may ask the control plane for one (on-demand issuance; see `acme`).
    pub async fn accept<IO>(&self, io: IO) -> Result<Accepted<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let accepted = self.handshake(io).await;
        if let Err(error) = &accepted {
            crate::metrics::METRICS.handshake_failure(error);
        }
        accepted
    }

    /// [`TlsTerminator::accept`] before the failure is counted.
    async fn handshake<IO>(&self, io: IO) -> Result<Accepted<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let timeout = self.options.handshake_timeout;
        let deadline = Instant::now() + timeout;
        let start =
            tokio::time::timeout_at(deadline, LazyConfigAcceptor::new(Acceptor::default(), io))
                .await
                .map_err(|_| TlsError::ClientHelloTimeout(timeout))?
                .map_err(TlsError::ClientHello)?;

        let tls = self.current().map_err(TlsError::Config)?;
        let (server_name, config, acme_config) = {
            let hello = start.client_hello();
            let acme_config = self
                .acme
                .for_runtime(&tls.runtime)
                .tls_alpn01(&hello, acme::unix_now());
            let config = tls.config_for(&hello);
            (hello.server_name().map(str::to_owned), config, acme_config)
        };
        if let Some(acme_config) = acme_config {
            let server_name = server_name.unwrap_or_default();
            return answer_tls_alpn01(start, acme_config, server_name, deadline, timeout).await;
        }
        let certificate = served(&tls.runtime, server_name.as_deref());
        if certificate == ServedCertificate::Default
            && let Some(name) = &server_name
        {
            self.acme.certificate_missing(&tls.runtime, name);
        }

        let stream = match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(TlsError::Handshake {
                    server_name,
                    source,
                });
            }
            Err(_) => {
                return Err(TlsError::HandshakeTimeout {
                    server_name,
                    timeout,
                });
            }
        };

        let (_, conn) = stream.get_ref();
        // A completed handshake always has a version and a cipher suite; refuse the
        // connection rather than panic if rustls ever says otherwise.
        let (Some(version), Some(suite)) =
            (conn.protocol_version(), conn.negotiated_cipher_suite())
        else {
            return Err(TlsError::Handshake {
                server_name,
                source: io::Error::other("handshake completed without a version or cipher suite"),
            });
        };
        crate::metrics::METRICS.handshake(
            version,
            conn.handshake_kind() == Some(HandshakeKind::Resumed),
        );
        let info = TlsInfo {
            server_name,
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version,
            cipher_suite: suite.suite(),
            key_exchange_group: conn.negotiated_key_exchange_group().map(|g| g.name()),
            resumed: conn.handshake_kind() == Some(HandshakeKind::Resumed),
            peer_certificates: conn
                .peer_certificates()
                .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            certificate,
            runtime_version: tls.runtime.version(),
        };
        Ok(Accepted::Connection(TlsConnection {
            stream,
            info: Arc::new(info),
        }))
    }

    /// Shares `plugins` (the proxy's plans) instead of building its own.
    pub(crate) fn with_plugins(mut self, plugins: Arc<Plugins>) -> Self {
        self.plugins = plugins;
        self
    }

    /// Shares `acme` (the challenges of each runtime, the on-demand requests).
    pub(crate) fn with_acme(mut self, acme: Arc<Acme>) -> Self {
        self.acme = acme;
        self
    }

    /// The ACME part it answers TLS-ALPN-01 validations with.
    pub(crate) fn acme(&self) -> &Arc<Acme> {
        &self.acme
    }

    /// The certificate served when no SNI selects one.
    pub fn default_certificate(&self) -> &Arc<DefaultCertificate> {
        &self.default
    }

    /// The configurations of the current runtime: prepared by the apply step, else built
    /// now.
    fn current(&self) -> Result<Arc<RuntimeTls>, String> {
        let runtime = self.runtime.load_full();
        if let Some(tls) = self.configs.get(&runtime) {
            return Ok(tls);
        }
        let built = Arc::new(self.build(&runtime)?);
        self.configs.insert(&runtime, built.clone());
        Ok(built)
    }

    /// The server configurations of `runtime`. Fails only when rustls refuses the
    /// client-certificate configuration: then no handshake may proceed without it.
    fn build(&self, runtime: &Arc<Runtime>) -> Result<RuntimeTls, String> {
        let resolver = Arc::new(SniResolver::new(Arc::clone(runtime), self.default.clone()));
        let mut anonymous = ServerConfig::clone(&self.template);
        anonymous.cert_resolver = resolver.clone();
        let client_auth = self.plugins.for_runtime(runtime).client_auth().clone();
        let requesting = if client_auth.is_used() {
            let config = self
                .requesting_config(resolver, &client_auth)
                .map_err(|e| format!("cannot build the client-certificate TLS config: {e}"))?;
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(RuntimeTls {
            runtime: Arc::clone(runtime),
            anonymous: Arc::new(anonymous),
            requesting,
            client_auth,
        })
    }
}

impl Part for TlsTerminator {
    fn prepare(&self, runtime: &Arc<Runtime>, _warnings: &mut Vec<String>) -> Result<(), String> {
        let built = self.build(runtime)?;
        self.configs.insert(runtime, Arc::new(built));
        Ok(())
    }
}

impl TlsTerminator {
    /// The template's settings with a verifier that requests a client certificate (verified
    /// later, by the plugin instance) and its own resumption state.
    fn requesting_config(
        &self,
        resolver: Arc<SniResolver>,
        client_auth: &ClientAuth,
    ) -> Result<ServerConfig, rustls::Error> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let verifier = Arc::new(RequestClientCertificate::new(
            provider.clone(),
            client_auth.hints().to_vec(),
        ));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver);
        config.alpn_protocols = self.template.alpn_protocols.clone();
        config.session_storage = self.client_auth_resumption.sessions.clone();
        config.ticketer = self.client_auth_resumption.ticketer.clone();
        config.send_tls13_tickets = self.template.send_tls13_tickets;
        Ok(config)
    }
}

/// Shows the options and the runtime version of the cached configs: no key material.
impl fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("default", &self.default)
            .field("options", &self.options)
            .field(
                "runtime_version",
                &self.configs.newest().map(|t| t.runtime.version()),
            )
            .finish()
    }
}

/// Completes a TLS-ALPN-01 validation's handshake with the challenge's configuration, then
/// closes the connection (`close_notify`), all before `deadline`.
async fn answer_tls_alpn01<IO>(
    start: tokio_rustls::StartHandshake<IO>,
    config: Arc<ServerConfig>,
    server_name: String,
    deadline: Instant,
    timeout: Duration,
) -> Result<Accepted<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = match tokio::time::timeout_at(deadline, start.into_stream(config)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(TlsError::Handshake {
                server_name: Some(server_name),
                source,
            });
        }
        Err(_) => {
            return Err(TlsError::HandshakeTimeout {
                server_name: Some(server_name),
                timeout,
            });
        }
    };
    crate::metrics::METRICS.acme_answer(true);
    // The validation is over once the handshake is: the peer's hang-up is not our concern.
    let _ =
        tokio::time::timeout_at(deadline, tokio::io::AsyncWriteExt::shutdown(&mut stream)).await;
    Ok(Accepted::AcmeValidation { server_name })
}

/// Which certificate `server_name` selects in `runtime` (what the resolver serves).
fn served(runtime: &Runtime, server_name: Option<&str>) -> ServedCertificate {
    server_name
        .and_then(|name| runtime.certificate_for_sni(name))
        .map_or(ServedCertificate::Default, |cert| {
            ServedCertificate::Entity(cert.id())
        })
}

// === impl RuntimeTls ===

impl RuntimeTls {
    /// The configuration for a ClientHello: the one requesting a client certificate when
    /// `mtls-auth` applies to its server name, else the anonymous one.
    fn config_for(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        match &self.requesting {
            Some(requesting) if self.client_auth.requests(hello.server_name()) => {
                Arc::clone(requesting)
            }
            _ => Arc::clone(&self.anonymous),
        }
    }
}

// === impl Resumption ===

impl Resumption {
    /// A session cache, and a ticketer when tickets are on.
    fn new(tickets: bool, cache: bool) -> Result<Self, rustls::Error> {
        let ticketer: Arc<dyn ProducesTickets> = if tickets {
            Ticketer::new()?
        } else {
            Arc::new(NeverProducesTickets)
        };
        let sessions: Arc<dyn StoresServerSessions> = if cache {
            ServerSessionMemoryCache::new(SESSION_CACHE_SIZE)
        } else {
            Arc::new(NoServerSessionStorage {})
        };
        Ok(Self { sessions, ticketer })
    }
}

/// rustls' own `NeverProducesTickets` is not public; this is the same.
#[derive(Debug)]
struct NeverProducesTickets;

impl ProducesTickets for NeverProducesTickets {
    fn enabled(&self) -> bool {
        false
    }

    fn lifetime(&self) -> u32 {
        0
    }

    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }

    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

// === impl TlsOptions ===

impl TlsOptions {
    /// With these ALPN protocols.
    pub fn with_alpn(mut self, alpn: Alpn) -> Self {
        self.alpn = alpn;
        self
    }

    /// With session tickets on or off.
    pub fn with_session_tickets(mut self, on: bool) -> Self {
        self.session_tickets = on;
        self
    }

    /// With the server-side session cache on or off.
    pub fn with_session_cache(mut self, on: bool) -> Self {
        self.session_cache = on;
        self
    }

    /// With this handshake deadline.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            alpn: Alpn::default(),
            session_tickets: true,
            session_cache: true,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

// === impl Alpn ===

impl Alpn {
    /// The protocol ids, most preferred first.
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Self::Http2AndHttp1 => vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()],
            Self::Http1 => vec![ALPN_HTTP1.to_vec()],
            Self::None => Vec::new(),
        }
    }
}

// === impl TlsConnection ===

impl<IO> TlsConnection<IO> {
    /// What the handshake negotiated.
    pub fn info(&self) -> &Arc<TlsInfo> {
        &self.info
    }

    /// The TLS stream.
    pub fn get_ref(&self) -> &TlsStream<IO> {
        &self.stream
    }

    /// The TLS stream, mutably.
    pub fn get_mut(&mut self) -> &mut TlsStream<IO> {
        &mut self.stream
    }

    /// The TLS stream and the handshake facts.
    pub fn into_parts(self) -> (TlsStream<IO>, Arc<TlsInfo>) {
        (self.stream, self.info)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConnection<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConnection<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl<IO> fmt::Debug for TlsConnection<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnection")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

// === impl TlsInfo ===

impl TlsInfo {
    /// The SNI the client sent, lowercase (rustls ignores an IP address sent as SNI).
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// The negotiated ALPN protocol id, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// Whether HTTP/2 was negotiated (otherwise the connection speaks HTTP/1.1).
    pub fn is_h2(&self) -> bool {
        self.alpn() == Some(ALPN_H2)
    }

    /// The TLS version (1.2 or 1.3).
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The cipher suite.
    pub fn cipher_suite(&self) -> CipherSuite {
        self.cipher_suite
    }

    /// The key exchange group, when the handshake had one (a TLS 1.2 resumption has none).
    pub fn key_exchange_group(&self) -> Option<NamedGroup> {
        self.key_exchange_group
    }

    /// Whether the session was resumed (no certificate was sent).
    pub fn is_resumed(&self) -> bool {
        self.resumed
    }

    /// The client's certificate chain, end-entity first; empty without client
    /// authentication. On a resumed session it is the chain of the original handshake.
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.peer_certificates
    }

    /// The certificate the SNI selects in the connection's runtime: the one sent on a full
    /// handshake (on a resumed one, none is sent).
    pub fn certificate(&self) -> ServedCertificate {
        self.certificate
    }

    /// The version of the runtime the handshake used.
    pub fn runtime_version(&self) -> u64 {
        self.runtime_version
    }
}

// === impl ServedCertificate ===

/// The entity id, or `default`.
impl fmt::Display for ServedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Entity(id) => id.fmt(f),
            Self::Default => f.write_str("default"),
        }
    }
}

// === impl TlsError ===

impl TlsError {
    /// The SNI the client sent, when the ClientHello was read.
    pub fn server_name(&self) -> Option<&str> {
        match self {
            Self::HandshakeTimeout { server_name, .. } | Self::Handshake { server_name, .. } => {
                server_name.as_deref()
            }
            Self::ClientHelloTimeout(_) | Self::ClientHello(_) | Self::Config(_) => None,
        }
    }

    /// Whether the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::ClientHelloTimeout(_) | Self::HandshakeTimeout { .. }
        )
    }

    /// The TLS protocol error, when the failure was one (not a hang-up or a timeout).
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        let source = match self {
            Self::ClientHello(source) | Self::Handshake { source, .. } => source,
            Self::ClientHelloTimeout(_) | Self::HandshakeTimeout { .. } | Self::Config(_) => {
                return None;
            }
        };
        source.get_ref()?.downcast_ref()
    }
}

/// ` for 'name'` when the client sent an SNI.
fn for_name(server_name: &Option<String>) -> String {
    server_name
        .as_deref()
        .map(|name| format!(" for '{name}'"))
        .unwrap_or_default()
}

// === impl TlsSetupError ===

impl TlsSetupError {
    /// Whether the operator must fix the settings or files (exit code `EX_USAGE`).
    pub fn is_config(&self) -> bool {
        !matches!(self, Self::SelfSigned(_) | Self::Rustls(_))
    }
}
