//! Settings of the data plane. Every setting is a command-line flag, the same name as a
//! `GATEHOUSE_*` environment variable, or a key of the TOML file given with `--config` (the flag
//! name with `_` for `-`; labels are the key `labels`). Flags and variables win over the file;
//! the file wins over defaults.
//!
//! | flag | variable | TOML key | default |
//! |---|---|---|---|
//! | `--cluster-control-plane HOST:PORT[,HOST:PORT]` | `GATEHOUSE_CLUSTER_CONTROL_PLANE` | `cluster_control_plane` | `127.0.0.1:8005` (replicas: a list, and/or a name with several addresses) |
//! | `--cluster-server-name NAME` | `GATEHOUSE_CLUSTER_SERVER_NAME` | `cluster_server_name` | the host of each `--cluster-control-plane` address (`pki` mode only) |
//! | `--cluster-cert FILE` | `GATEHOUSE_CLUSTER_CERT` | `cluster_cert` | required |
//! | `--cluster-cert-key FILE` | `GATEHOUSE_CLUSTER_CERT_KEY` | `cluster_cert_key` | required |
//! | `--cluster-ca-cert FILE` | `GATEHOUSE_CLUSTER_CA_CERT` | `cluster_ca_cert` | required in `pki` mode |
//! | `--cluster-mtls shared\|pki` | `GATEHOUSE_CLUSTER_MTLS` | `cluster_mtls` | `shared` |
//! | `--cluster-ca-pin PINS` | `GATEHOUSE_CLUSTER_CA_PIN` | `cluster_ca_pin` | none (with a bootstrap token and no --cluster-ca-cert: the CA bundle is fetched from the control plane and only its CAs with these public-key pins are trusted) |
//! | `--cluster-bootstrap-token TOKEN` | `GATEHOUSE_CLUSTER_BOOTSTRAP_TOKEN` | `cluster_bootstrap_token` | none (enrol: `pki` mode, the certificate and key are made and kept in the cache directory) |
//! | `--cache-dir DIR` | `GATEHOUSE_CACHE_DIR` | `cache_dir` | `/var/lib/gatehouse-dp` |
//! | `--cache-key-file FILE` | `GATEHOUSE_CACHE_KEY_FILE` | `cache_key_file` | derived from the cluster private key (the cached snapshot is encrypted) |
//! | `--status-listen IP:PORT` | `GATEHOUSE_STATUS_LISTEN` | `status_listen` | `127.0.0.1:8100` |
//! | `--proxy-listen IP:PORT[,IP:PORT]\|off` | `GATEHOUSE_PROXY_LISTEN` | `proxy_listen` | `0.0.0.0:8000` (plain HTTP/1.1 and h2c) |
//! | `--proxy-ssl-listen IP:PORT[,IP:PORT]\|off` | `GATEHOUSE_PROXY_SSL_LISTEN` | `proxy_ssl_listen` | `0.0.0.0:8443` (TLS, ALPN `h2` and `http/1.1`) |
//! | `--stream-listen IP:PORT[,IP:PORT]\|off` | `GATEHOUSE_STREAM_LISTEN` | `stream_listen` | `off` (TCP and TLS stream routes: `tcp`, `tls`, `tls_passthrough`) |
//! | `--label KEY=VALUE` (repeatable) | `GATEHOUSE_LABELS` (`k=v,k2=v2`) | `labels` (table or list of `k=v`) | none |
//! | `--log-level FILTER` | `GATEHOUSE_LOG_LEVEL` | `log_level` | `RUST_LOG`, else `info` |
//! | `--log-format text\|json` | `GATEHOUSE_LOG_FORMAT` | `log_format` | `text` |
//! | `--ssl-cert FILE[,FILE]` | `GATEHOUSE_SSL_CERT` | `ssl_cert` | a self-signed certificate for `localhost`, generated at start |
//! | `--ssl-cert-key FILE[,FILE]` | `GATEHOUSE_SSL_CERT_KEY` | `ssl_cert_key` | the key of the generated certificate |
//! | `--ssl-session-tickets on\|off` | `GATEHOUSE_SSL_SESSION_TICKETS` | `ssl_session_tickets` (`"on"`, `"off"` or a boolean) | `on` |
//! | `--ssl-session-cache on\|off` | `GATEHOUSE_SSL_SESSION_CACHE` | `ssl_session_cache` (`"on"`, `"off"` or a boolean) | `on` |
//! | `--trusted-ips IP\|CIDR[,IP\|CIDR]` | `GATEHOUSE_TRUSTED_IPS` | `trusted_ips` | none (`0.0.0.0/0,::/0` trusts every client) |
//! | `--client-header-timeout DURATION` | `GATEHOUSE_CLIENT_HEADER_TIMEOUT` | `client_header_timeout` | `60s` (nginx's `client_header_timeout`) |
//! | `--client-body-timeout DURATION` | `GATEHOUSE_CLIENT_BODY_TIMEOUT` | `client_body_timeout` | `60s` (between two reads of a request body) |
//! | `--client-max-request-line SIZE` | `GATEHOUSE_CLIENT_MAX_REQUEST_LINE` | `client_max_request_line` | `8k` (longer: 414; nginx's `large_client_header_buffers` size; at most `64k`) |
//! | `--client-max-header-size SIZE` | `GATEHOUSE_CLIENT_MAX_HEADER_SIZE` | `client_max_header_size` | `8k` (one header line; longer: 400) |
//! | `--client-max-headers-size SIZE` | `GATEHOUSE_CLIENT_MAX_HEADERS_SIZE` | `client_max_headers_size` | `32k` (all header lines; more: 400; nginx's 4 × 8k) |
//! | `--drain-timeout DURATION` | `GATEHOUSE_DRAIN_TIMEOUT` | `drain_timeout` | `10s` (on SIGTERM: how long in-flight requests may finish) |
//! | `--worker-threads N` | `GATEHOUSE_WORKER_THREADS` | `worker_threads` | the number of CPUs |
//! | `--metrics-consumer-label on\|off` | `GATEHOUSE_METRICS_CONSUMER_LABEL` | `metrics_consumer_label` (`"on"`, `"off"` or a boolean) | `off` (`gatehouse_http_requests_total` gets a `consumer` label) |
//! | `--upstream-keepalive-idle-timeout DURATION` | `GATEHOUSE_UPSTREAM_KEEPALIVE_IDLE_TIMEOUT` | `upstream_keepalive_idle_timeout` | `60s` (Kong's `upstream_keepalive_idle_timeout`) |
//! | `--upstream-keepalive-pool-size N` | `GATEHOUSE_UPSTREAM_KEEPALIVE_POOL_SIZE` | `upstream_keepalive_pool_size` | `512` idle connections per upstream address (Kong's) |
//! | `--upstream-tls-verify on\|off` | `GATEHOUSE_UPSTREAM_TLS_VERIFY` | `upstream_tls_verify` | `on` (a service's `tls_verify` wins) |
//! | `--upstream-tls-verify-depth N` | `GATEHOUSE_UPSTREAM_TLS_VERIFY_DEPTH` | `upstream_tls_verify_depth` | no limit (a service's `tls_verify_depth` wins) |
//! | `--upstream-trusted-ca FILE` | `GATEHOUSE_UPSTREAM_TRUSTED_CA` | `upstream_trusted_ca` | the built-in public roots (a service's `ca_certificates` win) |
//! | `--client-ssl on\|off` | `GATEHOUSE_CLIENT_SSL` | `client_ssl` | `off` |
//! | `--client-ssl-cert FILE` | `GATEHOUSE_CLIENT_SSL_CERT` | `client_ssl_cert` | required with `--client-ssl on` |
//! | `--client-ssl-cert-key FILE` | `GATEHOUSE_CLIENT_SSL_CERT_KEY` | `client_ssl_cert_key` | required with `--client-ssl on` |
//!
//! A DURATION is a number with a unit, `ms`, `s` or `m` (`500ms`, `60s`, `2m`); a bare number
//! is seconds. In TOML it may be a string or a number (seconds). A SIZE is bytes, or a number
//! with `k` (KiB) or `m` (MiB), from 1k to 1m; in TOML a string or a number (bytes).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};
use serde::{Deserialize, Deserializer};

use gatehouse_shared::cluster::{ClusterMtls, ClusterTlsFiles, SHARED_SERVER_NAME};

/// Default address of the control plane's cluster listener (Kong's `cluster_control_plane`).
pub const DEFAULT_CLUSTER_CONTROL_PLANE: &str = "127.0.0.1:8005";
/// Default directory of the node id and the snapshot cache.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/gatehouse-dp";
/// Default address of the status listener.
pub const DEFAULT_STATUS_LISTEN: &str = "127.0.0.1:8100";
/// Default addresses of the plain proxy listener (Kong's `proxy_listen`).
pub const DEFAULT_PROXY_LISTEN: &str = "0.0.0.0:8000";
/// Default addresses of the TLS proxy listener.
pub const DEFAULT_PROXY_SSL_LISTEN: &str = "0.0.0.0:8443";
/// Default `--client-header-timeout` and `--client-body-timeout` (nginx's).
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `--client-max-request-line` and `--client-max-header-size` (nginx's
/// `large_client_header_buffers` buffer size).
pub const DEFAULT_CLIENT_MAX_LINE: usize = 8 * 1024;
/// Default `--client-max-headers-size` (nginx's `large_client_header_buffers 4 8k`).
pub const DEFAULT_CLIENT_MAX_HEADERS_SIZE: usize = 32 * 1024;
/// Smallest and largest SIZE of the `--client-max-*` settings.
const CLIENT_LIMIT_RANGE: std::ops::RangeInclusive<usize> = 1024..=1024 * 1024;
/// Largest `--client-max-request-line`: hyper refuses request targets over 64 KiB itself.
const MAX_CLIENT_REQUEST_LINE: usize = 64 * 1024;
/// Default `--upstream-keepalive-idle-timeout` (Kong's).
pub const DEFAULT_UPSTREAM_KEEPALIVE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `--upstream-keepalive-pool-size` (Kong's).
pub const DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE: usize = 512;
/// Default `--drain-timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Most `--worker-threads`.
const MAX_WORKER_THREADS: usize = 1024;
/// Longest label key or value (Kong's limit).
const MAX_LABEL_LEN: usize = 63;
/// Most default certificates (`--ssl-cert`): one per key type, RSA and ECDSA.
const MAX_SSL_CERTS: usize = 2;

/// Gatehouse data plane: applies the configuration snapshots pushed by the control plane.
#[derive(Debug, Parser)]
#[command(
    name = "gatehouse-dp",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("GATEHOUSE_GIT_COMMIT"), ")"),
    about
)]
pub struct Cli {
    /// The settings.
    #[command(flatten)]
    pub flags: Flags,
}

/// Every setting as given (each is also a `GATEHOUSE_*` variable and a TOML key); unset values
/// are `None` so that the file and the defaults can fill them.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Flags {
    /// TOML file with settings; keys are the flag names with `_` (e.g. `cache_dir`), labels
    /// are `labels = { region = "eu" }`.
    #[arg(long, short = 'c', env = "GATEHOUSE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Control plane cluster listeners, HOST:PORT, comma-separated for several replicas (a
    /// name may also resolve to several addresses) [default: 127.0.0.1:8005].
    #[arg(long, env = "GATEHOUSE_CLUSTER_CONTROL_PLANE")]
    pub cluster_control_plane: Option<String>,

    /// Name the control plane's certificate must carry in `pki` mode, also sent as SNI
    /// [default: the host of each --cluster-control-plane address]. `shared` mode always uses
    /// `gatehouse_clustering`.
    #[arg(long, env = "GATEHOUSE_CLUSTER_SERVER_NAME")]
    pub cluster_server_name: Option<String>,

    /// PEM certificate this node presents to the control plane. Required.
    #[arg(long, env = "GATEHOUSE_CLUSTER_CERT")]
    pub cluster_cert: Option<PathBuf>,

    /// PEM private key of --cluster-cert. Required.
    #[arg(long, env = "GATEHOUSE_CLUSTER_CERT_KEY")]
    pub cluster_cert_key: Option<PathBuf>,

    /// PEM cluster CA certificate(s) the control plane's certificate is verified against.
    /// Required in `pki` mode.
    #[arg(long, env = "GATEHOUSE_CLUSTER_CA_CERT")]
    pub cluster_ca_cert: Option<PathBuf>,

    /// Cluster trust: `shared` (one certificate on every node, pinned by digest) or `pki`
    /// (verified against --cluster-ca-cert) [default: shared].
    #[arg(long, env = "GATEHOUSE_CLUSTER_MTLS")]
    pub cluster_mtls: Option<String>,

    /// Bootstrap token to enrol with (`gatehouse-cp cluster-token create`): the node makes its
    /// own key, gets a short-lived certificate from the control plane (verified against
    /// --cluster-ca-cert), keeps both in the cache directory and renews it over the sync
    /// stream. Implies `--cluster-mtls pki`; replaces --cluster-cert and --cluster-cert-key.
    /// Used only when the cache holds no usable certificate.
    #[arg(
        long,
        env = "GATEHOUSE_CLUSTER_BOOTSTRAP_TOKEN",
        hide_env_values = true
    )]
    pub cluster_bootstrap_token: Option<String>,

    /// Instead of --cluster-ca-cert when enrolling: SHA-256 pins of the cluster CA's public key
    /// (`sha256:<hex>`, comma-separated; `gatehouse-cp pki pin` prints them). The node fetches
    /// the control plane's CA bundle without verifying it, keeps only the CA certificates whose
    /// public key matches a pin, and enrols over TLS verified with them.
    #[arg(long, env = "GATEHOUSE_CLUSTER_CA_PIN")]
    pub cluster_ca_pin: Option<String>,

    /// Directory of the node id and the cached snapshot; created (mode 0700) if missing
    /// [default: /var/lib/gatehouse-dp].
    #[arg(long, env = "GATEHOUSE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// File whose content (at least 32 random bytes, e.g. base64 of them) keys the encryption
    /// of the cached snapshot (AES-256-GCM, key by HKDF-SHA256) [default: derived from the
    /// cluster private key, --cluster-cert-key or the enrolled key].
    #[arg(long, env = "GATEHOUSE_CACHE_KEY_FILE")]
    pub cache_key_file: Option<PathBuf>,

    /// Address of the status listener (port 0 picks a free port; the address is logged)
    /// [default: 127.0.0.1:8100].
    #[arg(long, env = "GATEHOUSE_STATUS_LISTEN")]
    pub status_listen: Option<String>,

    /// Addresses of the plain proxy listener (HTTP/1.1 and h2c), comma-separated, or `off`
    /// (port 0 picks a free port; each address is logged) [default: 0.0.0.0:8000].
    #[arg(long, env = "GATEHOUSE_PROXY_LISTEN")]
    pub proxy_listen: Option<String>,

    /// Addresses of the TLS proxy listener (TLS 1.2 and 1.3, ALPN h2 and http/1.1),
    /// comma-separated, or `off` [default: 0.0.0.0:8443].
    #[arg(long, env = "GATEHOUSE_PROXY_SSL_LISTEN")]
    pub proxy_ssl_listen: Option<String>,

    /// Addresses of the stream listener (TCP; TLS is detected per connection): routes with
    /// protocols `tcp`, `tls` (TLS terminated here) and `tls_passthrough` (routed by SNI,
    /// not terminated), comma-separated, or `off` [default: off].
    #[arg(long, env = "GATEHOUSE_STREAM_LISTEN")]
    pub stream_listen: Option<String>,

    /// A label reported to the control plane, KEY=VALUE; repeatable (the variable takes a
    /// comma-separated list).
    #[arg(
        long = "label",
        env = "GATEHOUSE_LABELS",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    #[serde(alias = "label", deserialize_with = "labels_from_toml")]
    pub labels: Vec<String>,

    /// Log filter in `RUST_LOG` syntax, e.g. `info` or `gatehouse_dp=debug` [default: info;
    /// `RUST_LOG` is read when this is unset].
    #[arg(long, env = "GATEHOUSE_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "GATEHOUSE_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// PEM certificate (chain) the proxy presents when no SNI matches (Kong's `ssl_cert`); a
    /// comma-separated pair (one RSA, one ECDSA) serves each client the key type it prefers
    /// [default: a self-signed certificate for `localhost`, generated at start].
    #[arg(long, env = "GATEHOUSE_SSL_CERT")]
    pub ssl_cert: Option<String>,

    /// PEM private key(s) of --ssl-cert, in the same order. Required with --ssl-cert.
    #[arg(long, env = "GATEHOUSE_SSL_CERT_KEY")]
    pub ssl_cert_key: Option<String>,

    /// TLS session tickets (stateless resumption): `on` or `off` [default: on]. Sessions
    /// are also resumed from a per-process cache either way.
    #[arg(long, env = "GATEHOUSE_SSL_SESSION_TICKETS")]
    #[serde(deserialize_with = "on_off_from_toml")]
    pub ssl_session_tickets: Option<String>,

    /// The server-side TLS session cache (TLS 1.2 session ids, TLS 1.3 stateful tickets):
    /// `on` or `off` [default: on]. With tickets off too, no session is ever resumed.
    #[arg(long, env = "GATEHOUSE_SSL_SESSION_CACHE")]
    #[serde(deserialize_with = "on_off_from_toml")]
    pub ssl_session_cache: Option<String>,

    /// Clients (TCP peers) whose `X-Forwarded-Proto`, `-Host`, `-Port`, `-Path` and `-Prefix`
    /// are passed upstream (Kong's `trusted_ips`): comma-separated IPv4/IPv6 addresses and
    /// CIDR blocks; `0.0.0.0/0,::/0` trusts everyone [default: none].
    #[arg(long, env = "GATEHOUSE_TRUSTED_IPS")]
    pub trusted_ips: Option<String>,

    /// How long a client has to send a request's headers (`500ms`, `60s`, `2m`; a bare number
    /// is seconds) before the connection is closed [default: 60s].
    #[arg(long, env = "GATEHOUSE_CLIENT_HEADER_TIMEOUT")]
    #[serde(deserialize_with = "text_or_number_from_toml")]
    pub client_header_timeout: Option<String>,

    /// Longest pause between two reads of a client's request body; the request then fails
    /// with 408 (or the upstream request is aborted) [default: 60s].
    #[arg(long, env = "GATEHOUSE_CLIENT_BODY_TIMEOUT")]
    #[serde(deserialize_with = "text_or_number_from_toml")]
    pub client_body_timeout: Option<String>,

    /// Longest request line (method, target, version) a client may send; a longer one is
    /// refused with 414 (`8k`, `16384`; bytes, or `k`/`m`) [default: 8k].
    #[arg(long, env = "GATEHOUSE_CLIENT_MAX_REQUEST_LINE")]
    #[serde(deserialize_with = "text_or_number_from_toml")]
    pub client_max_request_line: Option<String>,

    /// Longest single request header line (name, colon, value); a longer one is refused with
    /// 400 `Request header or cookie too large` [default: 8k].
    #[arg(long, env = "GATEHOUSE_CLIENT_MAX_HEADER_SIZE")]
    #[serde(deserialize_with = "text_or_number_from_toml")]
    pub client_max_header_size: Option<String>,

    /// Most bytes of all request header lines together (with their line ends); more is
    /// refused with 400 `Request header or cookie too large` [default: 32k].
    #[arg(long, env = "GATEHOUSE_CLIENT_MAX_HEADERS_SIZE")]
    #[serde(deserialize_with = "text_or_number_from_toml")]
    pub client_max_headers_size: Option<String>,

    /// On SIGTERM/SIGINT, how long requests in flight may take to finish after the listeners
    /// close [default: 10s].
    #[arg(long, env = "GATEHOUSE_DRAIN_TIMEOUT")]
    #[serde(deserialize_with = "text_or_number_from_toml")]
    pub drain_timeout: Option<String>,

    /// Threads serving traffic [default: the number of CPUs].
    #[arg(long, env = "GATEHOUSE_WORKER_THREADS")]
    #[serde(deserialize_with = "text_or_number_from_toml")]
    pub worker_threads: Option<String>,

    /// A `consumer` label on `gatehouse_http_requests_total`: `on` or `off` [default: off].
    /// One series per consumer and route that saw traffic; costs a lock per request with a
    /// consumer.
    #[arg(long, env = "GATEHOUSE_METRICS_CONSUMER_LABEL")]
    #[serde(deserialize_with = "on_off_from_toml")]
    pub metrics_consumer_label: Option<String>,

    /// How long an idle keep-alive connection to an upstream is kept [default: 60s].
    #[arg(long, env = "GATEHOUSE_UPSTREAM_KEEPALIVE_IDLE_TIMEOUT")]
    #[serde(deserialize_with = "text_or_number_from_toml")]
    pub upstream_keepalive_idle_timeout: Option<String>,

    /// Most idle keep-alive connections kept per upstream address [default: 512].
    #[arg(long, env = "GATEHOUSE_UPSTREAM_KEEPALIVE_POOL_SIZE")]
    #[serde(deserialize_with = "text_or_number_from_toml")]
    pub upstream_keepalive_pool_size: Option<String>,

    /// Verify upstream TLS certificates when a service's `tls_verify` is null: `on` or `off`
    /// [default: on].
    #[arg(long, env = "GATEHOUSE_UPSTREAM_TLS_VERIFY")]
    #[serde(deserialize_with = "on_off_from_toml")]
    pub upstream_tls_verify: Option<String>,

    /// Most intermediate certificates between an upstream's certificate and a trusted CA when
    /// a service's `tls_verify_depth` is null [default: no limit].
    #[arg(long, env = "GATEHOUSE_UPSTREAM_TLS_VERIFY_DEPTH")]
    #[serde(deserialize_with = "text_or_number_from_toml")]
    pub upstream_tls_verify_depth: Option<String>,

    /// PEM bundle of CAs trusted for upstream certificates when a service lists no
    /// `ca_certificates` [default: the built-in public roots].
    #[arg(long, env = "GATEHOUSE_UPSTREAM_TRUSTED_CA")]
    pub upstream_trusted_ca: Option<PathBuf>,

    /// Present --client-ssl-cert to upstreams when neither the service nor its upstream names a
    /// client certificate: `on` or `off` [default: off].
    #[arg(long, env = "GATEHOUSE_CLIENT_SSL")]
    #[serde(deserialize_with = "on_off_from_toml")]
    pub client_ssl: Option<String>,

    /// PEM certificate (leaf first) presented to upstreams with --client-ssl on.
    #[arg(long, env = "GATEHOUSE_CLIENT_SSL_CERT")]
    pub client_ssl_cert: Option<PathBuf>,

    /// PEM private key of --client-ssl-cert.
    #[arg(long, env = "GATEHOUSE_CLIENT_SSL_CERT_KEY")]
    pub client_ssl_cert_key: Option<PathBuf>,

    /// Test only: the Gatehouse version announced to the control plane (X.Y.Z) [default: this
    /// build's version].
    #[arg(long, env = "GATEHOUSE_ADVERTISE_VERSION", hide = true)]
    pub advertise_version: Option<String>,
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Filter directives; `None` means `RUST_LOG` or `info`.
    pub level: Option<String>,
    /// Emit JSON lines instead of text.
    pub json: bool,
}

/// Where the control plane is and how this node authenticates to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `--cluster-control-plane` as configured (shown by `/status`).
    pub control_plane: String,
    /// Each control-plane address of the list (at least one), resolved at each connection.
    pub control_planes: Vec<ControlPlaneAddr>,
    /// Trust mode.
    pub mode: ClusterMtls,
    /// Certificate, key and CA files (re-read when they change). When enrolling, the
    /// certificate and the key are the one file `<cache-dir>/cluster-identity.pem`.
    pub files: ClusterTlsFiles,
    /// The bootstrap token, when this node enrols.
    pub bootstrap_token: Option<BootstrapToken>,
    /// Pins of the cluster CA's public key (`--cluster-ca-pin`), when enrolling without
    /// `--cluster-ca-cert`.
    pub ca_pins: Vec<String>,
}

/// A bootstrap token; `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken(pub String);

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootstrapToken(redacted)")
    }
}

/// One control-plane address and the name its certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneAddr {
    /// `HOST:PORT`; a DNS name may resolve to several replicas.
    pub addr: String,
    /// The name the certificate is checked against in `pki` mode: `--cluster-server-name`, else
    /// the host of `addr`.
    pub server_name: String,
}

/// Typed, validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The cluster link.
    pub cluster: ClusterSettings,
    /// Directory of the node id and the snapshot cache.
    pub cache_dir: PathBuf,
    /// The secret the cached snapshot's encryption key is derived from: --cache-key-file, or
    /// else the cluster private key file.
    pub cache_key: PathBuf,
    /// Address of the status listener.
    pub status_listen: SocketAddr,
    /// Addresses of the plain proxy listener (empty: `off`).
    pub proxy_listen: Vec<SocketAddr>,
    /// Addresses of the TLS proxy listener (empty: `off`).
    pub proxy_ssl_listen: Vec<SocketAddr>,
    /// Addresses of the stream listener (empty: `off`).
    pub stream_listen: Vec<SocketAddr>,
    /// Labels reported to the control plane.
    pub labels: BTreeMap<String, String>,
    /// The version announced to the control plane and shown by `/status`.
    pub advertise_version: String,
    /// Logging.
    pub log: LogSettings,
    /// Settings of the proxy listeners: server TLS and trusted clients.
    pub proxy: ProxySettings,
    /// How long requests in flight may finish after a stop signal.
    pub drain_timeout: Duration,
    /// Threads of the async runtime; `None`: one per CPU.
    pub worker_threads: Option<usize>,
    /// `--metrics-consumer-label`.
    pub metrics_consumer_label: bool,
}

/// What the proxy listeners are bound with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// Server TLS of the TLS listeners.
    pub tls: SslSettings,
    /// Clients whose `X-Forwarded-*` headers are believed (`--trusted-ips`).
    pub trusted_ips: TrustedIps,
    /// How long clients may take to send headers and bodies.
    pub timeouts: ClientTimeouts,
    /// How large a client's request head may be.
    pub limits: ClientLimits,
    /// Defaults of TLS towards upstreams.
    pub upstream: UpstreamTlsFiles,
    /// The upstream connection pools.
    pub upstream_keepalive: UpstreamKeepalive,
}

/// Keep-alive pools towards upstreams (Kong's `upstream_keepalive_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamKeepalive {
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// Most idle connections kept per upstream address (0: none kept).
    pub pool_size: usize,
}

impl Default for UpstreamKeepalive {
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_UPSTREAM_KEEPALIVE_IDLE_TIMEOUT,
            pool_size: DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE,
        }
    }
}

/// Process-wide defaults of TLS towards upstreams (a service's own fields win): Kong's
/// `proxy_ssl_verify` (here on by default), `lua_ssl_verify_depth`,
/// `lua_ssl_trusted_certificate`, `client_ssl`, `client_ssl_cert`, `client_ssl_cert_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsFiles {
    /// Verify upstream certificates (default true).
    pub verify: bool,
    /// Most intermediates; `None`: no limit.
    pub verify_depth: Option<u8>,
    /// PEM bundle of trusted CAs; `None`: the built-in public roots.
    pub trusted_ca: Option<PathBuf>,
    /// The client certificate presented when neither service nor upstream names one.
    pub client_cert: Option<CertKeyFiles>,
}

impl Default for UpstreamTlsFiles {
    fn default() -> Self {
        Self {
            verify: true,
            verify_depth: None,
            trusted_ca: None,
            client_cert: None,
        }
    }
}

/// Deadlines for slow clients (nginx's `client_header_timeout`, `client_body_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// From the connection (or the previous response) to a request's complete headers.
    pub header: Duration,
    /// Longest pause between two reads of a request body.
    pub body: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            header: DEFAULT_CLIENT_TIMEOUT,
            body: DEFAULT_CLIENT_TIMEOUT,
        }
    }
}

/// Size limits of a client's request head (nginx's `large_client_header_buffers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Longest request line, without its line end (`--client-max-request-line`).
    pub request_line: usize,
    /// Longest header line, without its line end (`--client-max-header-size`).
    pub header: usize,
    /// Most bytes of all header lines with their line ends (`--client-max-headers-size`).
    pub headers: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            request_line: DEFAULT_CLIENT_MAX_LINE,
            header: DEFAULT_CLIENT_MAX_LINE,
            headers: DEFAULT_CLIENT_MAX_HEADERS_SIZE,
        }
    }
}

/// The `--trusted-ips` matcher: IPv4 and IPv6 networks, parsed once; [`TrustedIps::contains`]
/// does not allocate. An IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`) is matched as IPv4.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedIps {
    /// `(network, mask)`, the network already masked.
    v4: Vec<(u32, u32)>,
    /// `(network, mask)`, the network already masked.
    v6: Vec<(u128, u128)>,
}

/// Server TLS of the proxy listeners (Kong's `ssl_cert`, `ssl_cert_key`,
/// `ssl_session_tickets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslSettings {
    /// The default certificate: one pair, or two of different key types (RSA and ECDSA).
    /// Empty: a self-signed certificate for `localhost` is generated at start.
    pub certs: Vec<CertKeyFiles>,
    /// Whether stateless session tickets are issued (default true).
    pub session_tickets: bool,
    /// Whether the server-side session cache is on (default true).
    pub session_cache: bool,
}

/// A PEM certificate file and the file of its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyFiles {
    /// Certificate, leaf first, optionally followed by intermediates.
    pub cert: PathBuf,
    /// Private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A setting that does not parse, or a required one that is missing; the message names every
/// problem found.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// A TOML on/off value: `"on"`/`"off"` or a boolean.
#[derive(Deserialize)]
#[serde(untagged)]
enum TomlOnOff {
    Bool(bool),
    Text(String),
}

/// A TOML `labels` value: a table or a list of `KEY=VALUE` strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum TomlLabels {
    Table(BTreeMap<String, String>),
    List(Vec<String>),
}

// === impl Cli ===

impl Cli {
    /// The flags merged with the `--config` file and the defaults.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let file = match &self.flags.config {
            Some(path) => Flags::from_file(path)?,
            None => Flags::default(),
        };
        self.flags.clone().or(file).resolve()
    }
}

// === impl Flags ===

impl Flags {
    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Fills every unset value from `other`.
    fn or(self, other: Self) -> Self {
        Self {
            config: self.config,
            cluster_control_plane: self.cluster_control_plane.or(other.cluster_control_plane),
            cluster_server_name: self.cluster_server_name.or(other.cluster_server_name),
            cluster_cert: self.cluster_cert.or(other.cluster_cert),
            cluster_cert_key: self.cluster_cert_key.or(other.cluster_cert_key),
            cluster_ca_cert: self.cluster_ca_cert.or(other.cluster_ca_cert),
            cluster_mtls: self.cluster_mtls.or(other.cluster_mtls),
            cluster_bootstrap_token: self
                .cluster_bootstrap_token
                .or(other.cluster_bootstrap_token),
            cluster_ca_pin: self.cluster_ca_pin.or(other.cluster_ca_pin),
            cache_dir: self.cache_dir.or(other.cache_dir),
            cache_key_file: self.cache_key_file.or(other.cache_key_file),
            status_listen: self.status_listen.or(other.status_listen),
            proxy_listen: self.proxy_listen.or(other.proxy_listen),
            proxy_ssl_listen: self.proxy_ssl_listen.or(other.proxy_ssl_listen),
            stream_listen: self.stream_listen.or(other.stream_listen),
            labels: if self.labels.is_empty() {
                other.labels
            } else {
                self.labels
            },
            log_level: self.log_level.or(other.log_level),
            log_format: self.log_format.or(other.log_format),
            advertise_version: self.advertise_version.or(other.advertise_version),
            ssl_cert: self.ssl_cert.or(other.ssl_cert),
            ssl_cert_key: self.ssl_cert_key.or(other.ssl_cert_key),
            ssl_session_tickets: self.ssl_session_tickets.or(other.ssl_session_tickets),
            ssl_session_cache: self.ssl_session_cache.or(other.ssl_session_cache),
            trusted_ips: self.trusted_ips.or(other.trusted_ips),
            client_header_timeout: self.client_header_timeout.or(other.client_header_timeout),
            client_body_timeout: self.client_body_timeout.or(other.client_body_timeout),
            client_max_request_line: self
                .client_max_request_line
                .or(other.client_max_request_line),
            client_max_header_size: self.client_max_header_size.or(other.client_max_header_size),
            client_max_headers_size: self
                .client_max_headers_size
                .or(other.client_max_headers_size),
            drain_timeout: self.drain_timeout.or(other.drain_timeout),
            worker_threads: self.worker_threads.or(other.worker_threads),
            metrics_consumer_label: self.metrics_consumer_label.or(other.metrics_consumer_label),
            upstream_keepalive_idle_timeout: self
                .upstream_keepalive_idle_timeout
                .or(other.upstream_keepalive_idle_timeout),
            upstream_keepalive_pool_size: self
                .upstream_keepalive_pool_size
                .or(other.upstream_keepalive_pool_size),
            upstream_tls_verify: self.upstream_tls_verify.or(other.upstream_tls_verify),
            upstream_tls_verify_depth: self
                .upstream_tls_verify_depth
                .or(other.upstream_tls_verify_depth),
            upstream_trusted_ca: self.upstream_trusted_ca.or(other.upstream_trusted_ca),
            client_ssl: self.client_ssl.or(other.client_ssl),
            client_ssl_cert: self.client_ssl_cert.or(other.client_ssl_cert),
            client_ssl_cert_key: self.client_ssl_cert_key.or(other.client_ssl_cert_key),
        }
    }

    /// Parses every value, reporting all problems at once.
    fn resolve(self) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let upstream = self.upstream_tls(&mut problems);

        let control_plane = self
            .cluster_control_plane
            .as_deref()
            .unwrap_or(DEFAULT_CLUSTER_CONTROL_PLANE)
            .trim()
            .to_owned();
        let mut hosts = Vec::new();
        for addr in crate::sync::targets::split_list(&control_plane) {
            match split_host_port(&addr) {
                Ok(host) => hosts.push((addr, host)),
                Err(reason) => problems.push(format!("--cluster-control-plane: {reason}")),
            }
        }
        if hosts.is_empty() && problems.is_empty() {
            problems.push("--cluster-control-plane: no address given".to_owned());
        }

        let mode = match self.cluster_mtls.as_deref().map(str::trim) {
            None | Some("shared") => ClusterMtls::Shared,
            Some("pki") => ClusterMtls::Pki,
            Some(other) => {
                problems.push(format!(
                    "--cluster-mtls: '{other}' is not one of shared, pki"
                ));
                ClusterMtls::Shared
            }
        };

        if let Some(name) = &self.cluster_server_name
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            problems.push(format!(
                "--cluster-server-name: '{name}' is not a DNS name or an IP address"
            ));
        }
        let control_planes: Vec<ControlPlaneAddr> = hosts
            .into_iter()
            .map(|(addr, host)| ControlPlaneAddr {
                addr,
                server_name: self.cluster_server_name.clone().unwrap_or(host),
            })
            .collect();
        if self.cluster_server_name.is_none() {
            for cp in &control_planes {
                if rustls::pki_types::ServerName::try_from(cp.server_name.as_str()).is_err() {
                    problems.push(format!(
                        "--cluster-server-name: '{}' (the host of {}) is not a DNS name or an \
                         IP address",
                        cp.server_name, cp.addr
                    ));
                }
            }
        }

        let required = |value: Option<PathBuf>, flag: &str, problems: &mut Vec<String>| {
            value.unwrap_or_else(|| {
                let name = flag.trim_start_matches("--");
                problems.push(format!(
                    "{flag} ({}, or {} in --config) is required",
                    format_args!("GATEHOUSE_{}", name.replace('-', "_").to_uppercase()),
                    name.replace('-', "_"),
                ));
                PathBuf::new()
            })
        };
        let cache_dir = self
            .cache_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));
        let bootstrap_token = self
            .cluster_bootstrap_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| BootstrapToken(t.to_owned()));
        let ca_pins: Vec<String> = self
            .cluster_ca_pin
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter(|pin| !pin.trim().is_empty())
            .filter_map(
                |pin| match gatehouse_shared::cluster::enrol::parse_pin(pin) {
                    Ok(pin) => Some(pin),
                    Err(reason) => {
                        problems.push(format!("--cluster-ca-pin: {reason}"));
                        None
                    }
                },
            )
            .collect();
        if !ca_pins.is_empty() && bootstrap_token.is_none() {
            problems.push(
                "--cluster-ca-pin is for enrolment: it needs --cluster-bootstrap-token".to_owned(),
            );
        }
        let (cert, key, mode) = if bootstrap_token.is_some() {
            if self.cluster_cert.is_some() || self.cluster_cert_key.is_some() {
                problems.push(
                    "--cluster-bootstrap-token replaces --cluster-cert and --cluster-cert-key \
                     (the enrolled certificate is kept in the cache directory); set one or the \
                     other"
                        .to_owned(),
                );
            }
            if self.cluster_mtls.as_deref().map(str::trim) == Some("shared") {
                problems.push("--cluster-bootstrap-token needs --cluster-mtls pki".to_owned());
            }
            if self.cluster_ca_cert.is_none() && ca_pins.is_empty() {
                problems.push(
                    "--cluster-bootstrap-token needs --cluster-ca-cert (the cluster CA the \
                     control plane's certificate is verified against) or --cluster-ca-pin"
                        .to_owned(),
                );
            }
            let identity = cache_dir.join(crate::enrol::IDENTITY_FILE);
            (identity.clone(), identity, ClusterMtls::Pki)
        } else {
            let cert = required(self.cluster_cert, "--cluster-cert", &mut problems);
            let key = required(self.cluster_cert_key, "--cluster-cert-key", &mut problems);
            (cert, key, mode)
        };
        if mode == ClusterMtls::Pki && self.cluster_ca_cert.is_none() && bootstrap_token.is_none() {
            problems.push(
                "--cluster-ca-cert (GATEHOUSE_CLUSTER_CA_CERT, or cluster_ca_cert in --config) \
                 is required with --cluster-mtls pki"
                    .to_owned(),
            );
        }

        if cache_dir.as_os_str().is_empty() {
            problems.push("--cache-dir: must not be empty".to_owned());
        }
        let cache_key = self.cache_key_file.clone().unwrap_or_else(|| key.clone());

        let status_listen = self
            .status_listen
            .as_deref()
            .unwrap_or(DEFAULT_STATUS_LISTEN)
            .trim()
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("--status-listen: {e} (expected IP:PORT)")))
            .ok();

        let proxy_listen = parse_listen(
            self.proxy_listen.as_deref().unwrap_or(DEFAULT_PROXY_LISTEN),
            "--proxy-listen",
            &mut problems,
        );
        let proxy_ssl_listen = parse_listen(
            self.proxy_ssl_listen
                .as_deref()
                .unwrap_or(DEFAULT_PROXY_SSL_LISTEN),
            "--proxy-ssl-listen",
            &mut problems,
        );

        let stream_listen = parse_listen(
            self.stream_listen.as_deref().unwrap_or("off"),
            "--stream-listen",
            &mut problems,
        );

        let labels = parse_labels(&self.labels, &mut problems);

        let advertise_version = self
            .advertise_version
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
        if !is_version(&advertise_version) {
            problems.push(format!(
                "--advertise-version: '{advertise_version}' is not a version X.Y.Z"
            ));
        }

        let json = match self.log_format.as_deref().map(str::trim) {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                problems.push(format!("--log-format: '{other}' is not one of text, json"));
                false
            }
        };

        let ssl = SslSettings {
            certs: parse_ssl_certs(
                self.ssl_cert.as_deref(),
                self.ssl_cert_key.as_deref(),
                &mut problems,
            ),
            session_tickets: match self.ssl_session_tickets.as_deref().map(str::trim) {
                None | Some("on") => true,
                Some("off") => false,
                Some(other) => {
                    problems.push(format!(
                        "--ssl-session-tickets: '{other}' is not one of on, off"
                    ));
                    true
                }
            },
            session_cache: match self.ssl_session_cache.as_deref().map(str::trim) {
                None | Some("on") => true,
                Some("off") => false,
                Some(other) => {
                    problems.push(format!(
                        "--ssl-session-cache: '{other}' is not one of on, off"
                    ));
                    true
                }
            },
        };

        let trusted_ips = match TrustedIps::parse(self.trusted_ips.as_deref().unwrap_or("")) {
            Ok(trusted) => trusted,
            Err(bad) => {
                problems.extend(bad.into_iter().map(|b| format!("--trusted-ips: {b}")));
                TrustedIps::default()
            }
        };

        let mut duration = |value: Option<&str>, flag: &str, default: Duration| match value {
            None => default,
            Some(raw) => parse_duration(raw).unwrap_or_else(|reason| {
                problems.push(format!("{flag}: {reason}"));
                default
            }),
        };
        let timeouts = ClientTimeouts {
            header: duration(
                self.client_header_timeout.as_deref(),
                "--client-header-timeout",
                DEFAULT_CLIENT_TIMEOUT,
            ),
            body: duration(
                self.client_body_timeout.as_deref(),
                "--client-body-timeout",
                DEFAULT_CLIENT_TIMEOUT,
            ),
        };
        let drain_timeout = duration(
            self.drain_timeout.as_deref(),
            "--drain-timeout",
            DEFAULT_DRAIN_TIMEOUT,
        );
        let keepalive_idle = duration(
            self.upstream_keepalive_idle_timeout.as_deref(),
            "--upstream-keepalive-idle-timeout",
            DEFAULT_UPSTREAM_KEEPALIVE_IDLE_TIMEOUT,
        );
        let mut size = |value: Option<&str>, flag: &str, default: usize| match value {
            None => default,
            Some(raw) => parse_size(raw).unwrap_or_else(|reason| {
                problems.push(format!("{flag}: {reason}"));
                default
            }),
        };
        let mut limits = ClientLimits {
            request_line: size(
                self.client_max_request_line.as_deref(),
                "--client-max-request-line",
                DEFAULT_CLIENT_MAX_LINE,
            ),
            header: size(
                self.client_max_header_size.as_deref(),
                "--client-max-header-size",
                DEFAULT_CLIENT_MAX_LINE,
            ),
            headers: size(
                self.client_max_headers_size.as_deref(),
                "--client-max-headers-size",
                DEFAULT_CLIENT_MAX_HEADERS_SIZE,
            ),
        };
        if limits.request_line > MAX_CLIENT_REQUEST_LINE {
            problems.push(format!(
                "--client-max-request-line: {} bytes is more than 64k",
                limits.request_line
            ));
            limits.request_line = DEFAULT_CLIENT_MAX_LINE;
        }
        let pool_size = match self.upstream_keepalive_pool_size.as_deref().map(str::trim) {
            None => DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if n <= 1_000_000 => n,
                _ => {
                    problems.push(format!(
                        "--upstream-keepalive-pool-size: '{raw}' is not a number from 0 to 1000000"
                    ));
                    DEFAULT_UPSTREAM_KEEPALIVE_POOL_SIZE
                }
            },
        };
        let upstream_keepalive = UpstreamKeepalive {
            idle_timeout: keepalive_idle,
            pool_size,
        };

        let metrics_consumer_label = match self.metrics_consumer_label.as_deref().map(str::trim) {
            None | Some("off") => false,
            Some("on") => true,
            Some(other) => {
                problems.push(format!(
                    "--metrics-consumer-label: '{other}' is not one of on, off"
                ));
                false
            }
        };
        let worker_threads = match self.worker_threads.as_deref().map(str::trim) {
            None => None,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=MAX_WORKER_THREADS).contains(&n) => Some(n),
                _ => {
                    problems.push(format!(
                        "--worker-threads: '{raw}' is not a number from 1 to {MAX_WORKER_THREADS}"
                    ));
                    None
                }
            },
        };

        match status_listen {
            Some(status_listen) if problems.is_empty() => Ok(Settings {
                cluster: ClusterSettings {
                    control_plane,
                    control_planes,
                    mode,
                    files: ClusterTlsFiles {
                        cert,
                        key,
                        ca: self.cluster_ca_cert,
                        allowed_common_names: Vec::new(),
                    },
                    bootstrap_token,
                    ca_pins,
                },
                cache_key,
                cache_dir,
                status_listen,
                proxy_listen,
                proxy_ssl_listen,
                stream_listen,
                labels,
                advertise_version,
                log: LogSettings {
                    level: self.log_level,
                    json,
                },
                proxy: ProxySettings {
                    tls: ssl,
                    trusted_ips,
                    timeouts,
                    limits,
                    upstream,
                    upstream_keepalive,
                },
                drain_timeout,
                worker_threads,
                metrics_consumer_label,
            }),
            _ => Err(ConfigError(problems.join("; "))),
        }
    }
}

impl Flags {
    /// The upstream TLS defaults, adding what is wrong to `problems`.
    fn upstream_tls(&self, problems: &mut Vec<String>) -> UpstreamTlsFiles {
        let mut on_off = |value: Option<&str>, flag: &str, default: bool| match value.map(str::trim)
        {
            None => default,
            Some("on") => true,
            Some("off") => false,
            Some(other) => {
                problems.push(format!("{flag}: '{other}' is not one of on, off"));
                default
            }
        };
        let verify = on_off(
            self.upstream_tls_verify.as_deref(),
            "--upstream-tls-verify",
            true,
        );
        let client_ssl = on_off(self.client_ssl.as_deref(), "--client-ssl", false);
        let verify_depth = match self.upstream_tls_verify_depth.as_deref().map(str::trim) {
            None => None,
            Some(raw) => match raw.parse::<u8>() {
                Ok(depth) if depth <= 100 => Some(depth),
                _ => {
                    problems.push(format!(
                        "--upstream-tls-verify-depth: '{raw}' is not a number from 0 to 100"
                    ));
                    None
                }
            },
        };
        let client_cert = match (
            client_ssl,
            self.client_ssl_cert.clone(),
            self.client_ssl_cert_key.clone(),
        ) {
            (true, Some(cert), Some(key)) => Some(CertKeyFiles { cert, key }),
            (true, cert, key) => {
                for (missing, flag) in [
                    (cert.is_none(), "--client-ssl-cert"),
                    (key.is_none(), "--client-ssl-cert-key"),
                ] {
                    if missing {
                        problems.push(format!("{flag} is required with --client-ssl on"));
                    }
                }
                None
            }
            (false, None, None) => None,
            (false, _, _) => {
                problems.push(
                    "--client-ssl-cert/--client-ssl-cert-key are given but --client-ssl is off"
                        .to_owned(),
                );
                None
            }
        };
        UpstreamTlsFiles {
            verify,
            verify_depth,
            trusted_ca: self.upstream_trusted_ca.clone(),
            client_cert,
        }
    }
}

// === impl ClusterSettings ===

impl ClusterSettings {
    /// The name connections to the first address are opened with: see
    /// [`ClusterSettings::tls_server_name_of`].
    pub fn tls_server_name(&self) -> &str {
        match self.control_planes.first() {
            Some(cp) => self.tls_server_name_of(cp),
            None => SHARED_SERVER_NAME,
        }
    }

    /// The name a connection to `cp` is opened with (SNI): [`SHARED_SERVER_NAME`] in `shared`
    /// mode (where names are not checked, the certificate digest is), its server name
    /// otherwise.
    pub fn tls_server_name_of<'a>(&self, cp: &'a ControlPlaneAddr) -> &'a str {
        match self.mode {
            ClusterMtls::Pki => &cp.server_name,
            _ => SHARED_SERVER_NAME,
        }
    }
}

// === impl SslSettings ===

/// No certificate files (a self-signed one is generated), session tickets on.
impl Default for SslSettings {
    fn default() -> Self {
        Self {
            certs: Vec::new(),
            session_tickets: true,
            session_cache: true,
        }
    }
}

// === impl TrustedIps ===

impl TrustedIps {
    /// Parses a comma-separated list of IP addresses and `IP/BITS` blocks (blank: none);
    /// every entry that does not parse is returned.
    pub fn parse(raw: &str) -> Result<Self, Vec<String>> {
        let mut trusted = Self::default();
        let mut bad = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (addr, bits) = match item.split_once('/') {
                Some((addr, bits)) => (addr.trim(), Some(bits.trim())),
                None => (item, None),
            };
            let Ok(addr) = addr.parse::<IpAddr>() else {
                bad.push(format!("'{item}' is not an IP address or CIDR block"));
                continue;
            };
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits.map(str::parse::<u8>) {
                None => max,
                Some(Ok(bits)) if bits <= max => bits,
                Some(_) => {
                    bad.push(format!("'{item}': the prefix length must be 0 to {max}"));
                    continue;
                }
            };
            match addr {
                IpAddr::V4(ip) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                    trusted.v4.push((u32::from(ip) & mask, mask));
                }
                IpAddr::V6(ip) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                    trusted.v6.push((u128::from(ip) & mask, mask));
                }
            }
        }
        if bad.is_empty() {
            Ok(trusted)
        } else {
            Err(bad)
        }
    }

    /// Whether no client is trusted.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => {
                let ip = u32::from(ip);
                self.v4.iter().any(|&(net, mask)| ip & mask == net)
            }
            IpAddr::V6(ip) => {
                let ip = u128::from(ip);
                self.v6.iter().any(|&(net, mask)| ip & mask == net)
            }
        }
    }
}

/// The host of `HOST:PORT` (IPv6 in brackets, returned without them), checking the port.
fn split_host_port(addr: &str) -> Result<String, String> {
    let bad = || format!("'{addr}' is not HOST:PORT");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']').ok_or_else(bad)?,
        // An unbracketed IPv6 address would have split at its last group.
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("'{addr}': invalid port '{port}'")),
        Ok(_) => Ok(host.to_owned()),
    }
}

/// Parses a comma-separated list of `IP:PORT` listen addresses; `off` (alone) is none. An
/// empty list is refused: say `off`.
fn parse_listen(raw: &str, flag: &str, problems: &mut Vec<String>) -> Vec<SocketAddr> {
    let raw = raw.trim();
    if raw.eq_ignore_ascii_case("off") {
        return Vec::new();
    }
    let mut addrs = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.parse::<SocketAddr>() {
            Ok(addr) if addrs.contains(&addr) => {
                problems.push(format!("{flag}: {addr} is given more than once"));
            }
            Ok(addr) => addrs.push(addr),
            Err(e) => problems.push(format!("{flag}: '{item}': {e} (expected IP:PORT or off)")),
        }
    }
    if addrs.is_empty() && !problems.iter().any(|p| p.starts_with(flag)) {
        problems.push(format!("{flag}: no address given (use off to disable it)"));
    }
    addrs
}

/// Parses `KEY=VALUE` labels; keys and values are 1 to 63 characters of `A-Z a-z 0-9 . _ -`
/// (values may also hold `:` and `/`), each key at most once.
fn parse_labels(raw: &[String], problems: &mut Vec<String>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for item in raw.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        let Some((key, value)) = item.split_once('=') else {
            problems.push(format!("--label: '{item}' is not KEY=VALUE"));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_LEN
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        let value_ok = !value.is_empty()
            && value.len() <= MAX_LABEL_LEN
            && value.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/')
            });
        if !key_ok {
            problems.push(format!(
                "--label: invalid key '{key}' (1 to 63 of A-Z a-z 0-9 . _ -)"
            ));
        } else if !value_ok {
            problems.push(format!(
                "--label: invalid value '{value}' for '{key}' (1 to 63 of A-Z a-z 0-9 . _ - : /)"
            ));
        } else if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            problems.push(format!("--label: '{key}' is given more than once"));
        }
    }
    labels
}

/// Pairs the comma-separated `--ssl-cert` and `--ssl-cert-key` lists: both or neither, the
/// same length, at most [`MAX_SSL_CERTS`]. The files are read when the proxy starts.
fn parse_ssl_certs(
    certs: Option<&str>,
    keys: Option<&str>,
    problems: &mut Vec<String>,
) -> Vec<CertKeyFiles> {
    let split = |list: Option<&str>| -> Vec<PathBuf> {
        list.into_iter()
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect()
    };
    let (certs, keys) = (split(certs), split(keys));
    match (certs.len(), keys.len()) {
        (0, 0) => Vec::new(),
        (_, 0) => {
            problems.push("--ssl-cert-key is required with --ssl-cert".to_owned());
            Vec::new()
        }
        (0, _) => {
            problems.push("--ssl-cert is required with --ssl-cert-key".to_owned());
            Vec::new()
        }
        (c, k) if c != k => {
            problems.push(format!(
                "--ssl-cert lists {c} file(s) but --ssl-cert-key lists {k}"
            ));
            Vec::new()
        }
        (c, _) if c > MAX_SSL_CERTS => {
            problems.push(format!(
                "--ssl-cert: at most {MAX_SSL_CERTS} certificates (one RSA, one ECDSA), got {c}"
            ));
            Vec::new()
        }
        _ => certs
            .into_iter()
            .zip(keys)
            .map(|(cert, key)| CertKeyFiles { cert, key })
            .collect(),
    }
}

/// Whether `v` is `X.Y.Z` (decimal numbers), optionally followed by `-pre` or `+build`.
fn is_version(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Reads an on/off setting from TOML as `"on"`/`"off"` or a boolean.
/// Parses `500ms`, `60s`, `2m` or a bare number of seconds; zero is refused.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{raw}' is not a duration (e.g. 500ms, 60s, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => return Err(format!("'{raw}' has an unknown unit (ms, s or m)")),
    };
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!("'{raw}' must be more than 0 and at most one day"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A SIZE: bytes, or a number with `k` (KiB) or `m` (MiB), within [`CLIENT_LIMIT_RANGE`].
fn parse_size(raw: &str) -> Result<usize, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("'{raw}' is not a size (e.g. 8k, 16384, 1m)"))?;
    let factor = match unit.trim() {
        "" => 1,
        "k" | "K" => 1024,
        "m" | "M" => 1024 * 1024,
        _ => return Err(format!("'{raw}' has an unknown unit (k or m)")),
    };
    match value.checked_mul(factor) {
        Some(bytes) if CLIENT_LIMIT_RANGE.contains(&bytes) => Ok(bytes),
        _ => Err(format!("'{raw}' must be from 1k to 1m")),
    }
}

/// A TOML value that may be a string or a number, kept as text.
fn text_or_number_from_toml<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Integer(i64),
        Float(f64),
        Text(String),
    }
    Ok(Some(match TextOrNumber::deserialize(deserializer)? {
        TextOrNumber::Integer(n) => n.to_string(),
        TextOrNumber::Float(n) => n.to_string(),
        TextOrNumber::Text(text) => text,
    }))
}

fn on_off_from_toml<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Ok(Some(match TomlOnOff::deserialize(deserializer)? {
        TomlOnOff::Bool(true) => "on".to_owned(),
        TomlOnOff::Bool(false) => "off".to_owned(),
        TomlOnOff::Text(text) => text,
    }))
}

/// Reads `labels` from TOML as a table (`{ region = "eu" }`) or a list (`["region=eu"]`).
fn labels_from_toml<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(match TomlLabels::deserialize(deserializer)? {
        TomlLabels::Table(map) => map.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        TomlLabels::List(list) => list,
    })
}

#[cfg(test)]
mod tests;
