//! Settings of the control plane. Every setting is a command-line flag, the same name as a
//! `GATEHOUSE_*` environment variable, or a key of the TOML file given with `--config` (the flag
//! name with `_` for `-`). Flags and variables win over the file; the file wins over defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Deserializer};

use gatehouse_shared::cluster::{ClusterMtls, ClusterTlsFiles, enrol};
use gatehouse_shared::entities::KNOWN_PLUGINS;

/// Default Admin API address (Kong's `admin_listen`).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8001";
/// Default size of the Postgres connection pool.
pub const DEFAULT_DATABASE_MAX_CONNECTIONS: usize = 16;
/// Default largest accepted Admin API request body, in bytes.
pub const DEFAULT_ADMIN_MAX_BODY: usize = 8 * 1024 * 1024;
/// Default address of the cluster (config sync) listener (Kong's `cluster_listen`).
pub const DEFAULT_CLUSTER_LISTEN: &str = "0.0.0.0:8005";
/// Default time between two looks for ACME certificates due for renewal, in seconds.
pub const DEFAULT_ACME_RENEW_INTERVAL: u64 = 3600;
/// Default longest time of one ACME order, in seconds.
pub const DEFAULT_ACME_ORDER_TIMEOUT: u64 = 90;
/// Default lifetime of an enrolled data plane's certificate, in seconds (24 h).
pub const DEFAULT_DP_CERT_LIFETIME: u64 = 24 * 3600;
/// Default of `--cluster-enrol-max-failures`.
pub const DEFAULT_ENROL_MAX_FAILURES: u32 = 10;
/// Longest lifetime of an enrolled data plane's certificate, in seconds (90 days).
pub const MAX_DP_CERT_LIFETIME: u64 = 90 * 24 * 3600;
/// Default time between two resolutions of the secret references, in seconds.
pub const DEFAULT_SECRET_REFRESH_INTERVAL: u64 = 60;
/// Default time a secret reference that stops resolving keeps its last good value.
pub const DEFAULT_SECRET_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);
/// The environment variable holding the key-encryption keys themselves.
pub const ENV_KEYRING_KEY: &str = "GATEHOUSE_KEYRING_KEY";
/// Default address of the status listener (Kong's `status_listen`).
pub const DEFAULT_STATUS_LISTEN: &str = "127.0.0.1:8100";
/// Default time between two full rescans of each certificate source, in seconds.
pub const DEFAULT_CERT_SOURCE_RESCAN_INTERVAL: u64 = 30;
/// Default quiet time after a file event before a certificate source is read, in milliseconds.
pub const DEFAULT_CERT_SOURCE_DEBOUNCE_MS: u64 = 200;
/// Default window before `not_after` in which certificates are reported as expiring (30 days).
pub const DEFAULT_CERT_EXPIRY_WARNING: &str = "30d";
/// Default time between two looks for expired and expiring certificates, in seconds.
pub const DEFAULT_CERT_EXPIRY_CHECK_INTERVAL: u64 = 3600;
/// Default `--ocsp-stapling-interval`, seconds.
pub const DEFAULT_OCSP_STAPLING_INTERVAL: u64 = 60;

/// Gatehouse control plane: keeps the gateway configuration in PostgreSQL behind a
/// Kong-compatible Admin API.
#[derive(Debug, Parser)]
#[command(
    name = "gatehouse-cp",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("GATEHOUSE_GIT_COMMIT"), ")"),
    about
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply database migrations, then serve the Admin API.
    Serve(Flags),
    /// Apply database migrations and exit.
    Migrate(Flags),
    /// Write the cluster PKI: a CA and the CP, shared-mode and DP certificates.
    #[command(subcommand)]
    Pki(crate::pki::PkiCommand),
    /// Create, list and revoke the bearer tokens of the Admin API.
    #[command(subcommand)]
    AdminToken(crate::credentials::TokenCommand),
    /// Register, list and revoke the client certificates of the Admin API.
    #[command(subcommand)]
    AdminCert(crate::credentials::CertCommand),
    /// Manage the bootstrap tokens data planes enrol with.
    #[command(subcommand, name = "cluster-token")]
    ClusterToken(crate::tokens::TokenCommand),
    /// Keys encrypted at rest: make a key-encryption key, rotate data keys, show status.
    #[command(subcommand)]
    Keyring(crate::keyring::KeyringCommand),
    /// The whole configuration as a file (Kong's declarative format): export, import, diff.
    #[command(subcommand)]
    Config(crate::declarative::ConfigCommand),
}

/// Flags shared by every subcommand (each is also a `GATEHOUSE_*` variable and a TOML key).
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Flags {
    /// TOML file with settings; keys are the flag names with `_` (e.g. `database_url`).
    #[arg(long, short = 'c', env = "GATEHOUSE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// PostgreSQL connection URL, e.g. `postgres://gatehouse@127.0.0.1:5432/gatehouse`, or a
    /// secret reference to it (`{vault://env/NAME}`, `{vault://file/PATH}`). Required.
    #[arg(long, env = "GATEHOUSE_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Size of the PostgreSQL connection pool [default: 16].
    #[arg(long, env = "GATEHOUSE_DATABASE_MAX_CONNECTIONS")]
    pub database_max_connections: Option<usize>,

    /// Address of the Admin API (port 0 picks a free port; the address is logged)
    /// [default: 127.0.0.1:8001].
    #[arg(long, env = "GATEHOUSE_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// Largest accepted Admin API request body, in bytes [default: 8388608].
    #[arg(long, env = "GATEHOUSE_ADMIN_MAX_BODY")]
    pub admin_max_body: Option<usize>,

    /// PEM certificate (chain) of the Admin API: with --admin-ssl-cert-key, the Admin API
    /// is served over TLS only (HTTP/1.1 and HTTP/2). Re-read when it changes on disk.
    #[arg(long, env = "GATEHOUSE_ADMIN_SSL_CERT")]
    pub admin_ssl_cert: Option<PathBuf>,

    /// PEM private key of --admin-ssl-cert. Re-read when it changes on disk.
    #[arg(long, env = "GATEHOUSE_ADMIN_SSL_CERT_KEY")]
    pub admin_ssl_cert_key: Option<PathBuf>,

    /// PEM CA certificate(s) whose client certificates may authenticate to the Admin API
    /// (registered with `gatehouse-cp admin-cert add`). Needs --admin-ssl-cert and
    /// --admin-auth on. Re-read when it changes on disk.
    #[arg(long, env = "GATEHOUSE_ADMIN_CLIENT_CA_CERT")]
    pub admin_client_ca_cert: Option<PathBuf>,

    /// `on`: every Admin API request needs a credential (a bearer token, or a client
    /// certificate); `off`: none is asked [default: off].
    #[arg(long, env = "GATEHOUSE_ADMIN_AUTH")]
    pub admin_auth: Option<String>,

    /// Serve the Admin API without authentication on an address that is not loopback.
    /// Insecure: whoever reaches the address owns every certificate, key and route of the
    /// fleet. Without it, such a setup refuses to start.
    #[arg(long, env = "GATEHOUSE_ADMIN_INSECURE_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub admin_insecure_no_auth: Option<bool>,

    /// Plugins that may be configured: `bundled` (every plugin the data plane knows:
    /// acl, acme, mtls-auth), `off`, or a comma-separated list [default: bundled].
    #[arg(long, env = "GATEHOUSE_PLUGINS")]
    pub plugins: Option<String>,

    /// Log filter in `RUST_LOG` syntax, e.g. `info` or `gatehouse_cp=debug` [default: info;
    /// `RUST_LOG` is read when this is unset].
    #[arg(long, env = "GATEHOUSE_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "GATEHOUSE_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// Address of the cluster listener, where data planes connect over mutual TLS to receive
    /// the configuration (port 0 picks a free port; the address is logged). It runs only when
    /// --cluster-cert and --cluster-cert-key are set [default: 0.0.0.0:8005].
    #[arg(long, env = "GATEHOUSE_CLUSTER_LISTEN")]
    pub cluster_listen: Option<String>,

    /// How control plane and data planes authenticate each other: `shared` (every node has the
    /// same certificate, pinned by digest) or `pki` (a cluster CA issues each node's
    /// certificate; needs --cluster-ca-cert) [default: shared].
    #[arg(long, env = "GATEHOUSE_CLUSTER_MTLS")]
    pub cluster_mtls: Option<String>,

    /// PEM certificate of the cluster listener (in `shared` mode the certificate every node
    /// holds). Re-read when it changes on disk. `auto` (`pki` mode with --cluster-ca-key):
    /// this control plane issues its own short-lived certificate from the cluster CA and
    /// renews it two thirds into its lifetime (no --cluster-cert-key then).
    #[arg(long, env = "GATEHOUSE_CLUSTER_CERT")]
    pub cluster_cert: Option<PathBuf>,

    /// PEM private key of --cluster-cert. Re-read when it changes on disk.
    #[arg(long, env = "GATEHOUSE_CLUSTER_CERT_KEY")]
    pub cluster_cert_key: Option<PathBuf>,

    /// PEM cluster CA certificate(s) that issue data-plane certificates (`pki` mode).
    /// Re-read when it changes on disk.
    #[arg(long, env = "GATEHOUSE_CLUSTER_CA_CERT")]
    pub cluster_ca_cert: Option<PathBuf>,

    /// `pki` mode only: comma-separated common names a data-plane certificate must carry one
    /// of (in the TOML file, a string or a list of strings) [default: any name the CA signed].
    #[arg(long, env = "GATEHOUSE_CLUSTER_ALLOWED_COMMON_NAMES")]
    #[serde(default, deserialize_with = "string_or_list")]
    pub cluster_allowed_common_names: Option<String>,

    /// `pki` mode: PEM private key of the cluster CA (the first certificate of
    /// --cluster-ca-cert). Enables enrolment: data planes with a bootstrap token get their
    /// certificate from this control plane.
    #[arg(long, env = "GATEHOUSE_CLUSTER_CA_KEY")]
    pub cluster_ca_key: Option<PathBuf>,

    /// With `--cluster-cert auto`: comma-separated DNS names or IP addresses data planes
    /// reach this control plane by (in the TOML file, a string or a list of strings)
    /// [default: localhost,127.0.0.1].
    #[arg(long, env = "GATEHOUSE_CLUSTER_CERT_NAMES")]
    #[serde(default, deserialize_with = "string_or_list")]
    pub cluster_cert_names: Option<String>,

    /// Name of the cluster, the trust domain of enrolled data planes' SPIFFE IDs
    /// (`spiffe://NAME/dp/NODE-ID`) [default: gatehouse].
    #[arg(long, env = "GATEHOUSE_CLUSTER_NAME")]
    pub cluster_name: Option<String>,

    /// Lifetime of the certificates issued to enrolled data planes, in seconds (at least 30);
    /// they renew two thirds into it [default: 86400].
    #[arg(long, env = "GATEHOUSE_CLUSTER_DP_CERT_LIFETIME")]
    pub cluster_dp_cert_lifetime: Option<u64>,

    /// Refused enrolment attempts (bad token or request) allowed per source address per
    /// minute, as a burst that refills over the minute; past it, that address's attempts are
    /// refused unchecked (`RESOURCE_EXHAUSTED`) until it refills [default: 10].
    #[arg(long, env = "GATEHOUSE_CLUSTER_ENROL_MAX_FAILURES")]
    pub cluster_enrol_max_failures: Option<u32>,

    /// Address of the status listener (`GET /status`, `GET /status/ready`), or `off`
    /// (port 0 picks a free port; the address is logged) [default: 127.0.0.1:8100].
    #[arg(long, env = "GATEHOUSE_STATUS_LISTEN")]
    pub status_listen: Option<String>,

    /// PEM file of the CA certificate(s) to trust for the ACME server (the `acme` plugin's
    /// `api_uri`), instead of the system's roots: a private or test CA.
    #[arg(long, env = "GATEHOUSE_ACME_CA_BUNDLE")]
    pub acme_ca_bundle: Option<PathBuf>,

    /// Seconds between two looks for ACME certificates due for renewal or names due for a
    /// retry [default: 3600].
    #[arg(long, env = "GATEHOUSE_ACME_RENEW_INTERVAL")]
    pub acme_renew_interval: Option<u64>,

    /// Port of the data planes' plain HTTP listeners behind the names, used by
    /// `POST /acme` with `test_http_challenge_flow` (a CA always uses 80) [default: 80].
    #[arg(long, env = "GATEHOUSE_ACME_HTTP_PORT")]
    pub acme_http_port: Option<u16>,

    /// The ACME challenge answered by the data planes: `http-01` (port 80) or `tls-alpn-01`
    /// (port 443); the other one is used when the CA does not offer it [default: http-01].
    #[arg(long, env = "GATEHOUSE_ACME_CHALLENGE")]
    pub acme_challenge: Option<String>,

    /// Longest time one ACME order may take, in seconds; a replica that dies mid-order holds
    /// the name for twice this at most [default: 90].
    #[arg(long, env = "GATEHOUSE_ACME_ORDER_TIMEOUT")]
    pub acme_order_timeout: Option<u64>,
    /// ACME DNS-01: the primary DNS server that accepts RFC 2136 updates (TSIG-signed) for
    /// --acme-dns-zone, `IP` or `IP:PORT` [default port: 53]. With --acme-dns-zone and
    /// --acme-dns-tsig-key-file, or none of them.
    #[arg(long, env = "GATEHOUSE_ACME_DNS_SERVER")]
    pub acme_dns_server: Option<String>,

    /// ACME DNS-01: the zone the `_acme-challenge` TXT records are written in.
    #[arg(long, env = "GATEHOUSE_ACME_DNS_ZONE")]
    pub acme_dns_zone: Option<String>,

    /// ACME DNS-01: the TSIG key signing the updates, a BIND key file as `tsig-keygen` writes
    /// it (`key "name" { algorithm hmac-sha256; secret "..."; };`).
    #[arg(long, env = "GATEHOUSE_ACME_DNS_TSIG_KEY_FILE")]
    pub acme_dns_tsig_key_file: Option<PathBuf>,

    // --- keys at rest (keyring) ---
    /// File of the key-encryption keys that seal private keys in the database (written by
    /// `gatehouse-cp keyring init`): `ID:BASE64` of 32 random bytes per line, the first
    /// active; the same file on every control plane. Without it (and without
    /// GATEHOUSE_KEYRING_KEY) private keys are stored in clear.
    #[arg(long, env = "GATEHOUSE_KEYRING_KEY_FILE")]
    pub keyring_key_file: Option<PathBuf>,

    /// The key-encryption keys themselves, as the file holds them (entries separated by
    /// newlines or commas); only from the environment, never from the command line or file.
    #[arg(skip)]
    #[serde(skip)]
    pub keyring_key: Option<String>,

    /// Seconds between two resolutions of the certificates' secret references
    /// (`{vault://env/NAME}`, `{vault://file/PATH}`); a changed value makes a new config
    /// version [default: 60].
    #[arg(long, env = "GATEHOUSE_SECRET_REFRESH_INTERVAL")]
    pub secret_refresh_interval: Option<u64>,

    /// Seconds a secret reference that stops resolving keeps its last good value (logged);
    /// after that no snapshot is built until it resolves again [default: 3600].
    #[arg(long, env = "GATEHOUSE_SECRET_GRACE")]
    pub secret_grace: Option<u64>,

    // --- Certificate sources and expiry (README "Certificates from your existing tooling").
    /// A directory of certificate/key files this control plane keeps as `certificates` rows
    /// (certbot `live/<name>/`, Kubernetes TLS secret mounts, `<name>.crt|.pem` +
    /// `<name>.key`), watched for changes. Repeatable; comma-separated in the variable; a list
    /// in the TOML file.
    #[arg(long, env = "GATEHOUSE_CERT_SOURCE", value_delimiter = ',')]
    pub cert_source: Option<Vec<PathBuf>>,

    /// What happens to a source's certificate when its files disappear: `keep` (serve the
    /// last good one) or `remove` (delete the row) [default: keep].
    #[arg(long, env = "GATEHOUSE_CERT_SOURCE_MISSING")]
    pub cert_source_missing: Option<String>,

    /// Seconds between two full rescans of each certificate source, the safety net of the
    /// file watches [default: 30].
    #[arg(long, env = "GATEHOUSE_CERT_SOURCE_RESCAN_INTERVAL")]
    pub cert_source_rescan_interval: Option<u64>,

    /// Quiet time after the last file event before a certificate source is read, in
    /// milliseconds [default: 200].
    #[arg(long, env = "GATEHOUSE_CERT_SOURCE_DEBOUNCE_MS")]
    pub cert_source_debounce_ms: Option<u64>,

    /// Window before `not_after` in which a certificate or CA certificate is logged as
    /// expiring: seconds, or a number with `s`, `m`, `h` or `d` [default: 30d].
    #[arg(long, env = "GATEHOUSE_CERT_EXPIRY_WARNING")]
    pub cert_expiry_warning: Option<String>,

    /// Seconds between two looks for expired and expiring certificates (each one is logged
    /// at most once a day) [default: 3600].
    #[arg(long, env = "GATEHOUSE_CERT_EXPIRY_CHECK_INTERVAL")]
    pub cert_expiry_check_interval: Option<u64>,

    /// Seconds between two looks for OCSP answers to staple (certificates whose leaf names an
    /// OCSP responder); 0 turns OCSP stapling off [default: 60].
    #[arg(long, env = "GATEHOUSE_OCSP_STAPLING_INTERVAL")]
    pub ocsp_stapling_interval: Option<u64>,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Filter directives; `None` means `RUST_LOG` or `info`.
    pub level: Option<String>,
    /// Emit JSON lines instead of text.
    pub json: bool,
}

/// Typed, validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// PostgreSQL connection URL.
    pub database_url: Option<String>,
    /// Pool size.
    pub database_max_connections: usize,
    /// Admin API address.
    pub admin_listen: SocketAddr,
    /// Largest Admin API body in bytes.
    pub admin_max_body: usize,
    /// Admin API TLS: certificate, key and (as `ca`) the client-certificate CA; `None`:
    /// plain HTTP.
    pub admin_tls: Option<ClusterTlsFiles>,
    /// Every Admin API request needs a credential.
    pub admin_auth: bool,
    /// The operator accepts an unauthenticated Admin API on a non-loopback address.
    pub admin_insecure_no_auth: bool,
    /// Plugins that may be configured.
    pub plugins: Vec<String>,
    /// Logging.
    pub log: LogSettings,
    /// The cluster listener.
    pub cluster: ClusterSettings,
    /// Status listener address; `None` when `off`.
    pub status_listen: Option<SocketAddr>,
    /// The ACME client.
    pub acme: AcmeSettings,
    /// Where ACME DNS-01 records are written; `None` when not configured.
    pub acme_dns: Option<crate::dns_update::AcmeDnsSettings>,
    /// The key-encryption keys of keys at rest; `None`: private keys are stored in clear.
    pub keyring: Option<crate::keyring::KekSource>,
    /// Secret references.
    pub secrets: SecretSettings,
    /// Watched certificate directories.
    pub cert_sources: CertSourceSettings,
    /// Expiry warnings.
    pub cert_expiry: ExpirySettings,
    /// Time between two OCSP stapling passes; `None` when stapling is off.
    pub ocsp_stapling_interval: Option<std::time::Duration>,
}

/// Settings of secret references.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SecretSettings {
    /// Time between two resolutions.
    pub refresh_interval: std::time::Duration,
    /// How long a reference that stops resolving keeps its last good value.
    pub grace: std::time::Duration,
}

/// What becomes of a source's certificate when its files disappear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingPolicy {
    /// Keep the row (the last good certificate stays served).
    Keep,
    /// Delete the row (after the files stayed away for a grace period).
    Remove,
}

/// Settings of the watched certificate sources (`--cert-source`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertSourceSettings {
    /// The directories, as given.
    pub dirs: Vec<PathBuf>,
    /// Files gone: keep or remove.
    pub missing: MissingPolicy,
    /// Time between two full rescans.
    pub rescan_interval: std::time::Duration,
    /// Quiet time after a file event before reading.
    pub debounce: std::time::Duration,
}

/// Settings of the expiry warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExpirySettings {
    /// Certificates whose `not_after` is within this many seconds are expiring.
    pub warning_window: i64,
    /// Time between two looks.
    pub check_interval: std::time::Duration,
}

/// Settings of the control plane's ACME client.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AcmeSettings {
    /// CA certificates trusted for the ACME server; `None`: the system's roots.
    pub ca_bundle: Option<PathBuf>,
    /// Time between two renewal passes.
    pub renew_interval: std::time::Duration,
    /// Port fetched by the `test_http_challenge_flow` check.
    pub http_port: u16,
    /// Whether TLS-ALPN-01 is preferred over HTTP-01.
    pub prefer_tls_alpn: bool,
    /// Longest time of one order.
    pub order_timeout: std::time::Duration,
}

/// Settings of the cluster (config sync) listener.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterSettings {
    /// Listener address.
    pub listen: SocketAddr,
    /// Trust mode.
    pub mtls: ClusterMtls,
    /// Certificate files; `None` (neither --cluster-cert nor --cluster-cert-key set) disables
    /// the listener.
    pub files: Option<ClusterTlsFiles>,
    /// Enrolment of data planes; `None` without --cluster-ca-key.
    pub enrolment: Option<EnrolSettings>,
    /// `--cluster-cert auto`: the names of the certificate this node issues itself (into
    /// `files.cert`, which is also `files.key`); `None` with operator-made files.
    pub auto_cert: Option<Vec<String>>,
}

/// How this control plane issues data-plane certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnrolSettings {
    /// The CA certificate (--cluster-ca-cert).
    pub ca_cert: PathBuf,
    /// Its key (--cluster-ca-key).
    pub ca_key: PathBuf,
    /// The SPIFFE trust domain.
    pub cluster_name: String,
    /// Lifetime of an issued certificate.
    pub lifetime: std::time::Duration,
    /// Refused enrolment attempts allowed per source address per minute.
    pub max_failures_per_minute: u32,
}

/// A setting that does not parse; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

// === impl ConfigError ===

impl ConfigError {
    /// An error with this message (which names the setting at fault).
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

// === impl Cli ===

impl Cli {
    /// The flags of the chosen subcommand, merged with the `--config` file and defaults.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        match &self.command {
            Command::Serve(flags) | Command::Migrate(flags) => flags.settings(),
            Command::ClusterToken(command) => command.flags().settings(),
            Command::AdminToken(command) => command.flags().settings(),
            Command::AdminCert(command) => command.flags().settings(),
            Command::Keyring(command) => command.flags().settings(),
            Command::Config(command) => command.flags().settings(),
            // `pki` reads no settings: it gets the defaults.
            Command::Pki(_) => Flags::default().resolve(),
        }
    }
}

// === impl Flags ===

impl Flags {
    /// These flags merged with the `--config` file and defaults.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => Flags::from_file(path)?,
            None => Flags::default(),
        };
        self.clone().or(file).resolve()
    }

    fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Fills every unset value from `other`.
    fn or(self, other: Self) -> Self {
        Self {
            config: self.config,
            database_url: self.database_url.or(other.database_url),
            database_max_connections: self
                .database_max_connections
                .or(other.database_max_connections),
            admin_listen: self.admin_listen.or(other.admin_listen),
            admin_max_body: self.admin_max_body.or(other.admin_max_body),
            admin_ssl_cert: self.admin_ssl_cert.or(other.admin_ssl_cert),
            admin_ssl_cert_key: self.admin_ssl_cert_key.or(other.admin_ssl_cert_key),
            admin_client_ca_cert: self.admin_client_ca_cert.or(other.admin_client_ca_cert),
            admin_auth: self.admin_auth.or(other.admin_auth),
            admin_insecure_no_auth: self.admin_insecure_no_auth.or(other.admin_insecure_no_auth),
            plugins: self.plugins.or(other.plugins),
            log_level: self.log_level.or(other.log_level),
            log_format: self.log_format.or(other.log_format),
            cluster_listen: self.cluster_listen.or(other.cluster_listen),
            cluster_mtls: self.cluster_mtls.or(other.cluster_mtls),
            cluster_cert: self.cluster_cert.or(other.cluster_cert),
            cluster_cert_key: self.cluster_cert_key.or(other.cluster_cert_key),
            cluster_ca_cert: self.cluster_ca_cert.or(other.cluster_ca_cert),
            cluster_allowed_common_names: self
                .cluster_allowed_common_names
                .or(other.cluster_allowed_common_names),
            cluster_ca_key: self.cluster_ca_key.or(other.cluster_ca_key),
            cluster_name: self.cluster_name.or(other.cluster_name),
            cluster_dp_cert_lifetime: self
                .cluster_dp_cert_lifetime
                .or(other.cluster_dp_cert_lifetime),
            cluster_enrol_max_failures: self
                .cluster_enrol_max_failures
                .or(other.cluster_enrol_max_failures),
            cluster_cert_names: self.cluster_cert_names.or(other.cluster_cert_names),
            status_listen: self.status_listen.or(other.status_listen),
            acme_ca_bundle: self.acme_ca_bundle.or(other.acme_ca_bundle),
            acme_renew_interval: self.acme_renew_interval.or(other.acme_renew_interval),
            acme_http_port: self.acme_http_port.or(other.acme_http_port),
            acme_challenge: self.acme_challenge.or(other.acme_challenge),
            acme_order_timeout: self.acme_order_timeout.or(other.acme_order_timeout),
            acme_dns_server: self.acme_dns_server.or(other.acme_dns_server),
            acme_dns_zone: self.acme_dns_zone.or(other.acme_dns_zone),
            acme_dns_tsig_key_file: self.acme_dns_tsig_key_file.or(other.acme_dns_tsig_key_file),
            keyring_key_file: self.keyring_key_file.or(other.keyring_key_file),
            keyring_key: self.keyring_key.or(other.keyring_key),
            secret_refresh_interval: self
                .secret_refresh_interval
                .or(other.secret_refresh_interval),
            secret_grace: self.secret_grace.or(other.secret_grace),
            cert_source: self.cert_source.or(other.cert_source),
            cert_source_missing: self.cert_source_missing.or(other.cert_source_missing),
            cert_source_rescan_interval: self
                .cert_source_rescan_interval
                .or(other.cert_source_rescan_interval),
            cert_source_debounce_ms: self
                .cert_source_debounce_ms
                .or(other.cert_source_debounce_ms),
            cert_expiry_warning: self.cert_expiry_warning.or(other.cert_expiry_warning),
            cert_expiry_check_interval: self
                .cert_expiry_check_interval
                .or(other.cert_expiry_check_interval),
            ocsp_stapling_interval: self.ocsp_stapling_interval.or(other.ocsp_stapling_interval),
        }
    }

    /// Parses every value, reporting all bad settings at once.
    fn resolve(self) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let admin_listen = self
            .admin_listen
            .as_deref()
            .unwrap_or(DEFAULT_ADMIN_LISTEN)
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("--admin-listen: {e} (expected IP:PORT)")))
            .ok();
        let plugins = match self.plugins.as_deref().map(str::trim) {
            None | Some("bundled") => KNOWN_PLUGINS.iter().map(|p| (*p).to_owned()).collect(),
            Some("off") => Vec::new(),
            Some(list) => {
                let names: Vec<String> = list
                    .split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect();
                for name in &names {
                    if name != "bundled" && !KNOWN_PLUGINS.contains(&name.as_str()) {
                        problems.push(format!(
                            "--plugins: unknown plugin '{name}' (known: {})",
                            KNOWN_PLUGINS.join(", ")
                        ));
                    }
                }
                let mut expanded: Vec<String> = names
                    .into_iter()
                    .flat_map(|name| {
                        if name == "bundled" {
                            KNOWN_PLUGINS.iter().map(|p| (*p).to_owned()).collect()
                        } else {
                            vec![name]
                        }
                    })
                    .collect();
                expanded.sort();
                expanded.dedup();
                expanded
            }
        };
        let json = match self.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                problems.push(format!("--log-format: '{other}' is not one of text, json"));
                false
            }
        };
        let database_max_connections = self
            .database_max_connections
            .unwrap_or(DEFAULT_DATABASE_MAX_CONNECTIONS);
        if database_max_connections == 0 {
            problems.push("--database-max-connections: must be at least 1".into());
        }
        let cluster = self.cluster(&mut problems);
        let (admin_tls, admin_auth) = self.admin_access(&mut problems);
        let cert_sources = self.cert_sources(&mut problems);
        let cert_expiry = self.cert_expiry(&mut problems);
        let status_listen = match self.status_listen.as_deref().map(str::trim) {
            Some("off") => Some(None),
            other => other
                .unwrap_or(DEFAULT_STATUS_LISTEN)
                .parse::<SocketAddr>()
                .map_err(|e| {
                    problems.push(format!("--status-listen: {e} (expected IP:PORT or off)"))
                })
                .ok()
                .map(Some),
        };
        let renew_interval = self
            .acme_renew_interval
            .unwrap_or(DEFAULT_ACME_RENEW_INTERVAL);
        if renew_interval == 0 {
            problems.push("--acme-renew-interval: must be at least 1".into());
        }
        let prefer_tls_alpn = match self.acme_challenge.as_deref().map(str::trim) {
            None | Some("http-01") => false,
            Some("tls-alpn-01") => true,
            Some(other) => {
                problems.push(format!(
                    "--acme-challenge: '{other}' is not one of http-01, tls-alpn-01"
                ));
                false
            }
        };
        let order_timeout = self
            .acme_order_timeout
            .unwrap_or(DEFAULT_ACME_ORDER_TIMEOUT);
        if order_timeout == 0 {
            problems.push("--acme-order-timeout: must be at least 1".into());
        }
        let acme = AcmeSettings {
            prefer_tls_alpn,
            order_timeout: std::time::Duration::from_secs(order_timeout),
            ca_bundle: self.acme_ca_bundle,
            renew_interval: std::time::Duration::from_secs(renew_interval),
            http_port: self.acme_http_port.unwrap_or(80),
        };
        let acme_dns = crate::dns_update::AcmeDnsSettings::from_flags(
            self.acme_dns_server.as_deref(),
            self.acme_dns_zone.as_deref(),
            self.acme_dns_tsig_key_file.as_deref(),
        )
        .map_err(|e| problems.push(e.to_string()))
        .ok()
        .flatten();
        let keyring_key = self
            .keyring_key
            .clone()
            .or_else(|| std::env::var(ENV_KEYRING_KEY).ok())
            .filter(|k| !k.trim().is_empty());
        let keyring = match (&self.keyring_key_file, keyring_key) {
            (Some(_), Some(_)) => {
                problems.push(format!(
                    "--keyring-key-file and {ENV_KEYRING_KEY}: set one of them, not both"
                ));
                None
            }
            (Some(path), None) => Some(crate::keyring::KekSource::File(path.clone())),
            (None, Some(text)) => Some(crate::keyring::KekSource::Env(text)),
            (None, None) => None,
        };
        let secret_refresh_interval = self
            .secret_refresh_interval
            .unwrap_or(DEFAULT_SECRET_REFRESH_INTERVAL);
        if secret_refresh_interval == 0 {
            problems.push("--secret-refresh-interval: must be at least 1".into());
        }
        let secrets = SecretSettings {
            refresh_interval: std::time::Duration::from_secs(secret_refresh_interval),
            grace: self
                .secret_grace
                .map_or(DEFAULT_SECRET_GRACE, std::time::Duration::from_secs),
        };
        let database_url = self.database_url.as_deref().and_then(|url| {
            crate::secrets::Secrets::setting(url)
                .map_err(|e| problems.push(format!("--database-url: {e}")))
                .ok()
        });
        match (admin_listen, cluster, status_listen) {
            (Some(admin_listen), Some(cluster), Some(status_listen)) if problems.is_empty() => {
                Ok(Settings {
                    database_url,
                    database_max_connections,
                    admin_listen,
                    admin_max_body: self.admin_max_body.unwrap_or(DEFAULT_ADMIN_MAX_BODY),
                    admin_tls,
                    admin_auth,
                    admin_insecure_no_auth: self.admin_insecure_no_auth.unwrap_or(false),
                    plugins,
                    log: LogSettings {
                        level: self.log_level,
                        json,
                    },
                    cluster,
                    status_listen,
                    acme,
                    acme_dns,
                    keyring,
                    secrets,
                    cert_sources,
                    cert_expiry,
                    ocsp_stapling_interval: match self
                        .ocsp_stapling_interval
                        .unwrap_or(DEFAULT_OCSP_STAPLING_INTERVAL)
                    {
                        0 => None,
                        secs => Some(std::time::Duration::from_secs(secs)),
                    },
                })
            }
            _ => Err(ConfigError(problems.join("; "))),
        }
    }

    /// Parses the certificate-source settings, adding what is wrong to `problems`.
    fn cert_sources(&self, problems: &mut Vec<String>) -> CertSourceSettings {
        let missing = match self.cert_source_missing.as_deref().map(str::trim) {
            None | Some("keep") => MissingPolicy::Keep,
            Some("remove") => MissingPolicy::Remove,
            Some(other) => {
                problems.push(format!(
                    "--cert-source-missing: '{other}' is not one of keep, remove"
                ));
                MissingPolicy::Keep
            }
        };
        let rescan = self
            .cert_source_rescan_interval
            .unwrap_or(DEFAULT_CERT_SOURCE_RESCAN_INTERVAL);
        if rescan == 0 {
            problems.push("--cert-source-rescan-interval: must be at least 1".into());
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for dir in self.cert_source.iter().flatten() {
            if dir.as_os_str().is_empty() {
                continue;
            }
            if !dir.is_dir() {
                problems.push(format!(
                    "--cert-source: {} is not a directory",
                    dir.display()
                ));
            }
            if !dirs.contains(dir) {
                dirs.push(dir.clone());
            }
        }
        CertSourceSettings {
            dirs,
            missing,
            rescan_interval: std::time::Duration::from_secs(rescan.max(1)),
            debounce: std::time::Duration::from_millis(
                self.cert_source_debounce_ms
                    .unwrap_or(DEFAULT_CERT_SOURCE_DEBOUNCE_MS),
            ),
        }
    }

    /// Parses the expiry-warning settings, adding what is wrong to `problems`.
    fn cert_expiry(&self, problems: &mut Vec<String>) -> ExpirySettings {
        let window = self
            .cert_expiry_warning
            .as_deref()
            .unwrap_or(DEFAULT_CERT_EXPIRY_WARNING);
        let warning_window = parse_duration_secs(window)
            .map_err(|reason| problems.push(format!("--cert-expiry-warning: {reason}")))
            .unwrap_or(0);
        let interval = self
            .cert_expiry_check_interval
            .unwrap_or(DEFAULT_CERT_EXPIRY_CHECK_INTERVAL);
        if interval == 0 {
            problems.push("--cert-expiry-check-interval: must be at least 1".into());
        }
        ExpirySettings {
            warning_window,
            check_interval: std::time::Duration::from_secs(interval.max(1)),
        }
    }

    /// Parses the Admin API's TLS and authentication settings, adding what is wrong to
    /// `problems`.
    fn admin_access(&self, problems: &mut Vec<String>) -> (Option<ClusterTlsFiles>, bool) {
        let auth = match self.admin_auth.as_deref().map(str::trim) {
            None | Some("off") => false,
            Some("on") => true,
            Some(other) => {
                problems.push(format!("--admin-auth: '{other}' is not one of on, off"));
                false
            }
        };
        let tls = match (&self.admin_ssl_cert, &self.admin_ssl_cert_key) {
            (Some(cert), Some(key)) => Some(ClusterTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: self.admin_client_ca_cert.clone(),
                allowed_common_names: Vec::new(),
            }),
            (None, None) => None,
            _ => {
                problems
                    .push("--admin-ssl-cert and --admin-ssl-cert-key: set both or neither".into());
                None
            }
        };
        if self.admin_client_ca_cert.is_some() {
            if self.admin_ssl_cert.is_none() {
                problems.push(
                    "--admin-client-ca-cert: client certificates need TLS; set --admin-ssl-cert \
                     and --admin-ssl-cert-key"
                        .into(),
                );
            }
            if !auth {
                problems.push(
                    "--admin-client-ca-cert: client certificates authenticate only with \
                     --admin-auth on"
                        .into(),
                );
            }
        }
        if auth && self.admin_insecure_no_auth == Some(true) {
            problems.push("--admin-insecure-no-auth contradicts --admin-auth on".into());
        }
        (tls, auth)
    }

    /// Parses the `--cluster-*` settings, adding what is wrong to `problems`. The files are
    /// only named here; they are read when the listener starts.
    fn cluster(&self, problems: &mut Vec<String>) -> Option<ClusterSettings> {
        let listen = self
            .cluster_listen
            .as_deref()
            .unwrap_or(DEFAULT_CLUSTER_LISTEN)
            .trim()
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("--cluster-listen: {e} (expected IP:PORT)")))
            .ok();
        let mtls = match self.cluster_mtls.as_deref() {
            None => Some(ClusterMtls::default()),
            Some(value) => value
                .parse::<ClusterMtls>()
                .map_err(|_| {
                    problems.push(format!(
                        "--cluster-mtls: '{}' is not one of shared, pki",
                        value.trim()
                    ))
                })
                .ok(),
        };
        let allowed = comma_list(self.cluster_allowed_common_names.as_deref());
        let auto = self.cluster_cert.as_deref() == Some(Path::new("auto"));
        let files = match (&self.cluster_cert, &self.cluster_cert_key) {
            (Some(_), Some(_)) if auto => {
                problems.push(
                    "--cluster-cert auto makes its own key: --cluster-cert-key must not be set"
                        .into(),
                );
                None
            }
            (Some(_), None) if auto => {
                // A private directory per process: the key is made at start and never reused.
                let file = std::env::temp_dir()
                    .join(format!("gatehouse-cp-cluster-{}", uuid::Uuid::new_v4()))
                    .join("cluster-cp.pem");
                Some(ClusterTlsFiles {
                    cert: file.clone(),
                    key: file,
                    ca: self.cluster_ca_cert.clone(),
                    allowed_common_names: allowed.clone(),
                })
            }
            (Some(cert), Some(key)) => Some(ClusterTlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: self.cluster_ca_cert.clone(),
                allowed_common_names: allowed.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => {
                problems.push("--cluster-cert is set but --cluster-cert-key is not".into());
                None
            }
            (None, Some(_)) => {
                problems.push("--cluster-cert-key is set but --cluster-cert is not".into());
                None
            }
        };
        if files.is_some() {
            if mtls == Some(ClusterMtls::Pki) && self.cluster_ca_cert.is_none() {
                problems.push(
                    "--cluster-mtls pki needs --cluster-ca-cert (the cluster CA that issues \
                     data-plane certificates)"
                        .into(),
                );
            }
            if mtls == Some(ClusterMtls::Shared) && !allowed.is_empty() {
                problems.push(
                    "--cluster-allowed-common-names needs --cluster-mtls pki (in shared mode \
                     the certificate digest is checked, not names)"
                        .into(),
                );
            }
        }
        let cluster_name = self
            .cluster_name
            .clone()
            .unwrap_or_else(|| enrol::DEFAULT_CLUSTER_NAME.to_owned());
        if let Err(reason) = enrol::check_cluster_name(&cluster_name) {
            problems.push(format!("--cluster-name: {reason}"));
        }
        let lifetime = self
            .cluster_dp_cert_lifetime
            .unwrap_or(DEFAULT_DP_CERT_LIFETIME);
        if lifetime < enrol::MIN_LIFETIME.as_secs() || lifetime > MAX_DP_CERT_LIFETIME {
            problems.push(format!(
                "--cluster-dp-cert-lifetime: {lifetime} is not from {} to {MAX_DP_CERT_LIFETIME} \
                 seconds",
                enrol::MIN_LIFETIME.as_secs()
            ));
        }
        let enrolment = match (&self.cluster_ca_key, &self.cluster_ca_cert) {
            (None, _) => None,
            (Some(_), _) if files.is_some() && mtls != Some(ClusterMtls::Pki) => {
                problems.push("--cluster-ca-key needs --cluster-mtls pki".into());
                None
            }
            (Some(_), None) => {
                problems.push("--cluster-ca-key needs --cluster-ca-cert".into());
                None
            }
            (Some(key), Some(cert)) => Some(EnrolSettings {
                ca_cert: cert.clone(),
                ca_key: key.clone(),
                cluster_name,
                lifetime: std::time::Duration::from_secs(lifetime),
                max_failures_per_minute: self
                    .cluster_enrol_max_failures
                    .unwrap_or(DEFAULT_ENROL_MAX_FAILURES)
                    .max(1),
            }),
        };
        let auto_cert = if auto {
            if enrolment.is_none() {
                problems.push(
                    "--cluster-cert auto needs --cluster-ca-key (and --cluster-mtls pki)".into(),
                );
            }
            Some(comma_list(self.cluster_cert_names.as_deref()))
        } else {
            if self.cluster_cert_names.is_some() {
                problems.push("--cluster-cert-names needs --cluster-cert auto".into());
            }
            None
        };
        Some(ClusterSettings {
            listen: listen?,
            mtls: mtls?,
            files,
            enrolment,
            auto_cert,
        })
    }
}

/// Parses a duration in whole seconds: `3600`, `90s`, `15m`, `12h` or `30d`.
fn parse_duration_secs(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => (&text[..at], c),
        _ => (text, 's'),
    };
    let factor: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("'{text}': unknown unit (expected s, m, h or d)")),
    };
    number
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("'{text}' is not a duration (e.g. 3600, 12h, 30d)"))
}

/// The non-empty, trimmed items of a comma-separated list.
fn comma_list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Reads an optional TOML string, or a list of strings joined with commas.
fn string_or_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrList {
        One(String),
        Many(Vec<String>),
    }
    Ok(
        Option::<StringOrList>::deserialize(deserializer)?.map(|value| match value {
            StringOrList::One(one) => one,
            StringOrList::Many(many) => many.join(","),
        }),
    )
}

// === impl Settings ===

impl Settings {
    /// The database URL, or an error naming the flag and variable that set it.
    pub fn require_database_url(&self) -> Result<&str, ConfigError> {
        self.database_url.as_deref().ok_or_else(|| {
            ConfigError(
                "--database-url (GATEHOUSE_DATABASE_URL, or database_url in --config) is required"
                    .into(),
            )
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["gatehouse-cp", "serve"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().settings()
    }

    #[test]
    fn defaults() {
        let settings = parse(&[]).unwrap();
        assert_eq!(settings.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(settings.plugins, vec!["acl", "acme", "mtls-auth"]);
        assert!(settings.database_url.is_none());
        assert!(settings.require_database_url().is_err());
        assert_eq!(settings.acme.http_port, 80);
        assert_eq!(
            settings.acme.renew_interval.as_secs(),
            DEFAULT_ACME_RENEW_INTERVAL
        );
        assert!(settings.acme.ca_bundle.is_none());
        assert_eq!(settings.cluster.listen.to_string(), DEFAULT_CLUSTER_LISTEN);
        assert_eq!(settings.cluster.mtls, ClusterMtls::Shared);
        assert!(settings.cluster.files.is_none(), "listener disabled");
        assert_eq!(
            settings.status_listen.map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_STATUS_LISTEN)
        );
    }

    /// A `pki` mode cluster listener.
    const PKI: [&str; 8] = [
        "--cluster-mtls",
        "pki",
        "--cluster-cert",
        "/pki/cp.crt",
        "--cluster-cert-key",
        "/pki/cp.key",
        "--cluster-ca-cert",
        "/pki/ca.crt",
    ];

    #[test]
    fn cluster_settings() {
        let settings = parse(
            &[
                &PKI[..],
                &[
                    "--cluster-listen",
                    "127.0.0.1:0",
                    "--cluster-allowed-common-names",
                    "dp1, dp2,",
                    "--status-listen",
                    "off",
                ],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(settings.cluster.listen.to_string(), "127.0.0.1:0");
        assert_eq!(settings.cluster.mtls, ClusterMtls::Pki);
        assert_eq!(
            settings.cluster.files,
            Some(ClusterTlsFiles {
                cert: "/pki/cp.crt".into(),
                key: "/pki/cp.key".into(),
                ca: Some("/pki/ca.crt".into()),
                allowed_common_names: vec!["dp1".into(), "dp2".into()],
            })
        );
        assert_eq!(settings.status_listen, None);
    }

    #[test]
    fn acme_dns_settings_go_together() {
        assert_eq!(parse(&[]).unwrap().acme_dns, None);
        let settings = parse(&[
            "--acme-dns-server",
            "127.0.0.1",
            "--acme-dns-zone",
            "example.com",
            "--acme-dns-tsig-key-file",
            "/keys/acme.key",
        ])
        .unwrap();
        let dns = settings.acme_dns.unwrap();
        assert_eq!(dns.server.to_string(), "127.0.0.1:53");
        assert_eq!(dns.zone, "example.com");
        assert_eq!(dns.tsig_key_file, std::path::Path::new("/keys/acme.key"));
        let err = parse(&["--acme-dns-zone", "example.com"]).unwrap_err();
        assert!(err.to_string().contains("set all three or none"), "{err}");
    }

    #[test]
    fn bad_cluster_settings_are_reported_together() {
        let err = parse(&[
            "--cluster-listen",
            "8005",
            "--cluster-mtls",
            "mutual",
            "--cluster-cert",
            "/pki/cp.crt",
            "--status-listen",
            "localhost",
        ])
        .unwrap_err()
        .to_string();
        for needle in [
            "--cluster-listen",
            "--cluster-mtls: 'mutual' is not one of shared, pki",
            "--cluster-cert is set but --cluster-cert-key is not",
            "--status-listen",
        ] {
            assert!(err.contains(needle), "{needle} in {err}");
        }

        let pki = ["--cluster-cert", "a", "--cluster-cert-key", "b"];
        let err = parse(&[&pki[..], &["--cluster-mtls", "pki"]].concat())
            .unwrap_err()
            .to_string();
        assert!(err.contains("pki needs --cluster-ca-cert"), "{err}");
        let err = parse(&[&pki[..], &["--cluster-allowed-common-names", "dp1"]].concat())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--cluster-allowed-common-names needs --cluster-mtls pki"),
            "{err}"
        );
        // Without certificates the listener is off, and the mode's needs do not matter.
        assert!(parse(&["--cluster-mtls", "pki"]).is_ok());
    }

    #[test]
    fn the_ca_key_turns_enrolment_on() {
        let pki = PKI;
        assert_eq!(parse(&pki).unwrap().cluster.enrolment, None);
        let settings = parse(&[&pki[..], &["--cluster-ca-key", "/pki/ca.key"]].concat()).unwrap();
        assert_eq!(
            settings.cluster.enrolment,
            Some(EnrolSettings {
                ca_cert: "/pki/ca.crt".into(),
                ca_key: "/pki/ca.key".into(),
                cluster_name: "gatehouse".into(),
                lifetime: std::time::Duration::from_secs(DEFAULT_DP_CERT_LIFETIME),
                max_failures_per_minute: DEFAULT_ENROL_MAX_FAILURES,
            })
        );
        let err = parse(
            &[
                &pki[..],
                &[
                    "--cluster-ca-key",
                    "/k",
                    "--cluster-name",
                    "Bad/Name",
                    "--cluster-dp-cert-lifetime",
                    "5",
                ],
            ]
            .concat(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--cluster-name"), "{err}");
        assert!(err.contains("--cluster-dp-cert-lifetime: 5"), "{err}");
        let shared = ["--cluster-cert", "/c", "--cluster-cert-key", "/k"];
        let err = parse(&[&shared[..], &["--cluster-ca-key", "/k"]].concat())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--cluster-ca-key needs --cluster-mtls pki"),
            "{err}"
        );
    }

    #[test]
    fn cluster_cert_auto_needs_the_ca_key_and_no_key_file() {
        let auto = [
            "--cluster-mtls",
            "pki",
            "--cluster-cert",
            "auto",
            "--cluster-ca-cert",
            "/pki/ca.crt",
        ];
        let settings = parse(
            &[
                &auto[..],
                &["--cluster-ca-key", "/pki/ca.key"],
                &["--cluster-cert-names", "cp.example, 10.0.0.1"],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(
            settings.cluster.auto_cert,
            Some(vec!["cp.example".to_owned(), "10.0.0.1".to_owned()])
        );
        let files = settings.cluster.files.unwrap();
        assert_eq!(files.cert, files.key);
        assert!(files.cert.starts_with(std::env::temp_dir()), "{files:?}");

        let err = parse(&auto).unwrap_err().to_string();
        assert!(
            err.contains("--cluster-cert auto needs --cluster-ca-key"),
            "{err}"
        );
        let err = parse(
            &[
                &auto[..],
                &["--cluster-ca-key", "/k", "--cluster-cert-key", "/k2"],
            ]
            .concat(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--cluster-cert-key must not be set"), "{err}");
        let err = parse(&[&PKI[..], &["--cluster-cert-names", "a"]].concat())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--cluster-cert-names needs --cluster-cert auto"),
            "{err}"
        );
    }

    #[test]
    fn allowed_common_names_may_be_a_toml_list() {
        let dir = std::env::temp_dir().join(format!("gh-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cp.toml");
        std::fs::write(
            &path,
            "cluster_mtls = \"pki\"\ncluster_cert = \"/c\"\ncluster_cert_key = \"/k\"\n\
             cluster_ca_cert = \"/ca\"\ncluster_allowed_common_names = [\"dp1\", \"dp2\"]\n\
             status_listen = \"127.0.0.1:9100\"\n",
        )
        .unwrap();
        let settings = parse(&["--config", path.to_str().unwrap()]).unwrap();
        let files = settings.cluster.files.unwrap();
        assert_eq!(files.allowed_common_names, ["dp1", "dp2"]);
        assert_eq!(files.ca.unwrap().to_str(), Some("/ca"));
        assert_eq!(
            settings.status_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9100")
        );
    }

    #[test]
    fn cert_source_and_expiry_settings() {
        let settings = parse(&[]).unwrap();
        assert!(settings.cert_sources.dirs.is_empty());
        assert_eq!(settings.cert_sources.missing, MissingPolicy::Keep);
        assert_eq!(settings.cert_expiry.warning_window, 30 * 86_400);
        let dir = std::env::temp_dir();
        let dir = dir.to_str().unwrap();
        let settings = parse(&[
            "--cert-source",
            dir,
            "--cert-source",
            dir,
            "--cert-source-missing",
            "remove",
            "--cert-expiry-warning",
            "12h",
        ])
        .unwrap();
        assert_eq!(settings.cert_sources.dirs, [PathBuf::from(dir)]);
        assert_eq!(settings.cert_sources.missing, MissingPolicy::Remove);
        assert_eq!(settings.cert_expiry.warning_window, 12 * 3600);
        let err = parse(&[
            "--cert-source",
            "/nonexistent/gatehouse",
            "--cert-source-missing",
            "drop",
            "--cert-expiry-warning",
            "3w",
        ])
        .unwrap_err()
        .to_string();
        for needle in [
            "--cert-source: /nonexistent/gatehouse is not a directory",
            "--cert-source-missing: 'drop' is not one of keep, remove",
            "--cert-expiry-warning: '3w': unknown unit",
        ] {
            assert!(err.contains(needle), "{needle} in {err}");
        }
        let path = std::env::temp_dir().join(format!("gh-cfg-src-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            format!("cert_source = [\"{dir}\"]\ncert_source_missing = \"remove\"\n"),
        )
        .unwrap();
        let settings = parse(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(settings.cert_sources.dirs, [PathBuf::from(dir)]);
        assert_eq!(settings.cert_sources.missing, MissingPolicy::Remove);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(parse_duration_secs("3600"), Ok(3600));
        assert_eq!(parse_duration_secs("2d"), Ok(172_800));
        assert!(parse_duration_secs("-1d").is_err());
        assert!(parse_duration_secs("d").is_err());
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let dir = std::env::temp_dir().join(format!("gh-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cp.toml");
        std::fs::write(
            &path,
            "database_url = \"postgres://file/db\"\nadmin_listen = \"127.0.0.1:9001\"\n",
        )
        .unwrap();
        let settings = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:9002",
        ])
        .unwrap();
        assert_eq!(settings.database_url.as_deref(), Some("postgres://file/db"));
        assert_eq!(settings.admin_listen.to_string(), "127.0.0.1:9002");
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_reported_together() {
        let dir = std::env::temp_dir().join(format!("gh-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cp.toml");
        std::fs::write(&path, "databse_url = \"x\"\n").unwrap();
        let err = parse(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("databse_url"), "{err}");

        let err = parse(&["--admin-listen", "nope", "--plugins", "acl,bogus"]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--admin-listen") && text.contains("bogus"),
            "{text}"
        );
    }
}
