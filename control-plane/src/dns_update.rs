//! RFC 2136 dynamic DNS updates signed with TSIG (RFC 8945): how the control plane publishes
//! the `_acme-challenge` TXT records of ACME DNS-01 (wildcard names) in the user's DNS.
//!
//! # Settings
//!
//! | flag (`GATEHOUSE_*` variable, TOML key) | meaning |
//! |---|---|
//! | `--acme-dns-server IP[:PORT]` | the primary DNS server that accepts updates for the zone (port 53 by default) |
//! | `--acme-dns-zone NAME` | the zone the records go in (`example.com`); every name updated must lie inside it |
//! | `--acme-dns-tsig-key-file PATH` | the TSIG key, in BIND's format as `tsig-keygen` writes it: `key "name" { algorithm hmac-sha256; secret "base64"; };` |
//!
//! All three or none. Algorithms: `hmac-sha256` (recommended), `hmac-sha384`, `hmac-sha512`.
//! With BIND, grant the key the TXT records of the zone, e.g.
//! `update-policy { grant acme-key subdomain example.com. TXT; };`.
//!
//! # Protocol
//!
//! One UPDATE message per change, over TCP (two-byte length framing, RFC 7766; the messages
//! are small and TCP needs no retransmission logic): the zone section names `<zone> SOA`, the
//! update section adds one TXT record (class IN, with its TTL) or deletes exactly one (class
//! NONE), and a TSIG record signs the whole. A success (NOERROR) is believed only when the
//! answer carries a valid TSIG of the same key over the request's MAC; errors are reported in
//! operator words (REFUSED: the update policy; NOTAUTH with BADSIG/BADKEY/BADTIME: the key;
//! NOTZONE; a timeout). Adding a record that exists and deleting one that does not both
//! succeed (RFC 2136 §3.4.2), so retries are safe.
//!
//! The TSIG secret appears in no log line and no error: [`DnsUpdateSettings`]'s `Debug`
//! hides it, and errors name the key by its name only.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[cfg(test)]
mod tests;

/// How long one update may take (connect, send, answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Allowed clock difference with the server (RFC 8945 recommends 300 s).
const FUDGE: u16 = 300;
/// Port of DNS.
const DNS_PORT: u16 = 53;

const TYPE_SOA: u16 = 6;
const TYPE_TXT: u16 = 16;
const TYPE_TSIG: u16 = 250;
const CLASS_IN: u16 = 1;
const CLASS_NONE: u16 = 254;
const CLASS_ANY: u16 = 255;
/// Header flags of a request: opcode UPDATE (5).
const OPCODE_UPDATE: u16 = 5 << 11;
const FLAG_RESPONSE: u16 = 1 << 15;

/// A TSIG algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TsigAlgorithm {
    /// `hmac-sha256`.
    HmacSha256,
    /// `hmac-sha384`.
    HmacSha384,
    /// `hmac-sha512`.
    HmacSha512,
}

/// Where and how to send updates. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsUpdateSettings {
    /// The primary DNS server of the zone.
    pub server: SocketAddr,
    /// The zone (no trailing dot needed).
    pub zone: String,
    /// The TSIG key's name.
    pub key_name: String,
    /// The TSIG key's algorithm.
    pub algorithm: TsigAlgorithm,
    /// The TSIG key's secret (raw bytes).
    pub secret: Vec<u8>,
}

/// The `--acme-dns-*` settings, checked but with the key file not read yet
/// ([`AcmeDnsSettings::updater`] reads it).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcmeDnsSettings {
    /// `--acme-dns-server`.
    pub server: SocketAddr,
    /// `--acme-dns-zone`.
    pub zone: String,
    /// `--acme-dns-tsig-key-file`.
    pub tsig_key_file: PathBuf,
}

/// A TSIG key read from a BIND key file. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    /// Its name.
    pub name: String,
    /// Its algorithm.
    pub algorithm: TsigAlgorithm,
    /// Its secret (raw bytes).
    pub secret: Vec<u8>,
}

/// Sends dynamic updates of TXT records to one zone.
#[derive(Debug, Clone)]
pub struct DnsUpdater {
    settings: DnsUpdateSettings,
    /// The zone, encoded.
    zone: Vec<u8>,
    /// The key name and algorithm name, encoded (canonical: lowercase, uncompressed).
    key_name: Vec<u8>,
    algorithm_name: Vec<u8>,
    timeout: Duration,
}

/// Why settings cannot be used. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DnsSettingsError(String);

/// Why an update failed. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DNS update of {name} TXT at {server}: {kind}")]
#[non_exhaustive]
pub struct DnsUpdateError {
    /// The name updated.
    pub name: String,
    /// The server.
    pub server: SocketAddr,
    /// What went wrong.
    pub kind: DnsUpdateErrorKind,
}

/// What went wrong with an update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DnsUpdateErrorKind {
    /// The name or value cannot be sent.
    #[error("invalid {0}")]
    Invalid(String),
    /// The name is not inside the configured zone (checked before sending).
    #[error("the name is not in zone '{0}' (--acme-dns-zone)")]
    OutsideZone(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server cannot be reached, or hung up.
    #[error("cannot talk to the server: {0}")]
    Io(String),
    /// REFUSED: the server's policy does not let the key change this name.
    #[error(
        "refused (REFUSED): the server's update policy does not let key '{0}' change this name \
         (BIND: update-policy {{ grant <key> subdomain <zone> TXT; }})"
    )]
    Refused(String),
    /// NOTAUTH with a TSIG error: the server did not accept the key.
    #[error("the server did not accept TSIG key '{key}' (NOTAUTH, {tsig_error}): {hint}")]
    KeyRejected {
        /// The key's name.
        key: String,
        /// `BADSIG`, `BADKEY` or `BADTIME`.
        tsig_error: &'static str,
        /// What to check.
        hint: &'static str,
    },
    /// NOTAUTH without a TSIG error: the server is not authoritative for the zone.
    #[error("the server is not authoritative for zone '{0}' (NOTAUTH)")]
    NotAuthoritative(String),
    /// NOTZONE: the server says the name is outside the zone.
    #[error("the server says the name is not in zone '{0}' (NOTZONE)")]
    NotZone(String),
    /// Another error code.
    #[error("the server answered {0}")]
    Failed(String),
    /// The answer cannot be believed (unsigned, badly signed, malformed, not ours).
    #[error("the answer is not trusted: {0}")]
    Untrusted(String),
}

/// What the update does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Add { ttl: u32 },
    Delete,
}

/// The TSIG record of an answer.
struct Tsig {
    /// Offset of the record in the message.
    start: usize,
    name: Vec<u8>,
    algorithm: Vec<u8>,
    time: u64,
    fudge: u16,
    mac: Vec<u8>,
    original_id: u16,
    error: u16,
    other: Vec<u8>,
}

/// The parts of an answer the updater looks at.
struct Answer {
    id: u16,
    flags: u16,
    tsig: Option<Tsig>,
}

// === impl TsigAlgorithm ===

impl TsigAlgorithm {
    /// The algorithm of a BIND `algorithm` statement or TSIG algorithm name.
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Some(Self::HmacSha256),
            "hmac-sha384" => Some(Self::HmacSha384),
            "hmac-sha512" => Some(Self::HmacSha512),
            _ => None,
        }
    }

    /// Its name in TSIG records.
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha384 => "hmac-sha384",
            Self::HmacSha512 => "hmac-sha512",
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::HmacSha256 => hmac::HMAC_SHA256,
            Self::HmacSha384 => hmac::HMAC_SHA384,
            Self::HmacSha512 => hmac::HMAC_SHA512,
        }
    }
}

// === impl AcmeDnsSettings ===

impl AcmeDnsSettings {
    /// The settings from the three flags: all set, or none (`None`).
    pub fn from_flags(
        server: Option<&str>,
        zone: Option<&str>,
        tsig_key_file: Option<&Path>,
    ) -> Result<Option<Self>, DnsSettingsError> {
        match (server, zone, tsig_key_file) {
            (None, None, None) => Ok(None),
            (Some(server), Some(zone), Some(file)) => {
                let server = parse_server(server)
                    .map_err(|e| DnsSettingsError(format!("--acme-dns-server: {e}")))?;
                encode_name(zone).map_err(|e| DnsSettingsError(format!("--acme-dns-zone: {e}")))?;
                Ok(Some(Self {
                    server,
                    zone: zone.trim_end_matches('.').to_owned(),
                    tsig_key_file: file.to_owned(),
                }))
            }
            _ => Err(DnsSettingsError(
                "--acme-dns-server, --acme-dns-zone and --acme-dns-tsig-key-file go together: \
                 set all three or none"
                    .to_owned(),
            )),
        }
    }

    /// Reads the key file and makes the updater.
    pub fn updater(&self) -> Result<DnsUpdater, DnsSettingsError> {
        let text = std::fs::read_to_string(&self.tsig_key_file).map_err(|e| {
            DnsSettingsError(format!(
                "--acme-dns-tsig-key-file {}: cannot read: {e}",
                self.tsig_key_file.display()
            ))
        })?;
        let key = TsigKey::parse_bind(&text).map_err(|e| {
            DnsSettingsError(format!(
                "--acme-dns-tsig-key-file {}: {e}",
                self.tsig_key_file.display()
            ))
        })?;
        DnsUpdater::new(DnsUpdateSettings {
            server: self.server,
            zone: self.zone.clone(),
            key_name: key.name,
            algorithm: key.algorithm,
            secret: key.secret,
        })
    }
}

// === impl DnsUpdateSettings ===

/// The secret is not shown.
impl fmt::Debug for DnsUpdateSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsUpdateSettings")
            .field("server", &self.server)
            .field("zone", &self.zone)
            .field("key_name", &self.key_name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// `IP` (port 53) or `IP:PORT`.
pub fn parse_server(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .map_err(|_| format!("'{text}' is not IP or IP:PORT"))
}

// === impl TsigKey ===

impl TsigKey {
    /// Reads a BIND key file: `key "name" { algorithm hmac-sha256; secret "base64"; };`
    /// (`#`, `//` and `/* */` comments allowed; the first key is used). Errors never show the
    /// secret.
    pub fn parse_bind(text: &str) -> Result<Self, String> {
        let tokens = tokenize(text)?;
        let mut tokens = tokens.iter().map(String::as_str);
        if tokens.next() != Some("key") {
            return Err("expected `key \"name\" { algorithm ...; secret \"...\"; };`".to_owned());
        }
        let name = match tokens.next() {
            Some(name) if !matches!(name, "{" | "}" | ";") => name.to_owned(),
            _ => return Err("the key has no name".to_owned()),
        };
        if tokens.next() != Some("{") {
            return Err(format!("expected '{{' after key \"{name}\""));
        }
        let (mut algorithm, mut secret) = (None, None);
        loop {
            match tokens.next() {
                Some("}") => break,
                Some("algorithm") => {
                    let value = tokens.next().unwrap_or_default();
                    algorithm = Some(TsigAlgorithm::parse(value).ok_or_else(|| {
                        format!(
                            "key \"{name}\": unsupported algorithm '{value}' (use hmac-sha256, \
                             hmac-sha384 or hmac-sha512)"
                        )
                    })?);
                }
                Some("secret") => {
                    let value = tokens.next().unwrap_or_default();
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(value)
                        .map_err(|_| format!("key \"{name}\": the secret is not base64"))?;
                    if bytes.is_empty() {
                        return Err(format!("key \"{name}\": the secret is empty"));
                    }
                    secret = Some(bytes);
                }
                Some(other) => {
                    return Err(format!("key \"{name}\": unexpected '{other}'"));
                }
                None => return Err(format!("key \"{name}\": missing '}}'")),
            }
            if tokens.next() != Some(";") {
                return Err(format!("key \"{name}\": expected ';' after each statement"));
            }
        }
        let algorithm = algorithm.ok_or_else(|| format!("key \"{name}\": no algorithm"))?;
        let secret = secret.ok_or_else(|| format!("key \"{name}\": no secret"))?;
        Ok(Self {
            name,
            algorithm,
            secret,
        })
    }
}

/// The secret is not shown.
impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// Splits a BIND configuration text into words, quoted strings (without quotes) and the
/// punctuation `{`, `}`, `;`, dropping comments.
fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                chars.by_ref().find(|c| *c == '\n');
            }
            '/' if chars.peek() == Some(&'/') => {
                chars.by_ref().find(|c| *c == '\n');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                loop {
                    match chars.next() {
                        Some('/') if last == '*' => break,
                        Some(c) => last = c,
                        None => return Err("unterminated /* comment".to_owned()),
                    }
                }
            }
            '{' | '}' | ';' => tokens.push(c.to_string()),
            '"' => {
                let mut word = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated quoted string".to_owned()),
                    }
                }
                tokens.push(word);
            }
            c => {
                let mut word = c.to_string();
                while let Some(&next) = chars.peek() {
                    if next.is_whitespace() || matches!(next, '{' | '}' | ';' | '"') {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                tokens.push(word);
            }
        }
    }
    Ok(tokens)
}

// === impl DnsUpdater ===

impl DnsUpdater {
    /// An updater for `settings`; checks the zone and key names.
    pub fn new(settings: DnsUpdateSettings) -> Result<Self, DnsSettingsError> {
        let zone = encode_name(&settings.zone)
            .map_err(|e| DnsSettingsError(format!("--acme-dns-zone: {e}")))?;
        let key_name = encode_name(&settings.key_name)
            .map_err(|e| DnsSettingsError(format!("--acme-dns-tsig-key-file: key name: {e}")))?;
        let algorithm_name = encode_name(settings.algorithm.name())
            .map_err(|e| DnsSettingsError(format!("TSIG algorithm: {e}")))?;
        if settings.secret.is_empty() {
            return Err(DnsSettingsError(
                "--acme-dns-tsig-key-file: the secret is empty".to_owned(),
            ));
        }
        Ok(Self {
            settings,
            zone,
            key_name,
            algorithm_name,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// With another deadline per update.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &DnsUpdateSettings {
        &self.settings
    }

    /// Adds the TXT record `fqdn` = `value` with `ttl` seconds (other TXT values of the name
    /// stay; adding an existing one changes nothing).
    pub async fn add_txt(&self, fqdn: &str, value: &str, ttl: u32) -> Result<(), DnsUpdateError> {
        self.update(fqdn, value, Change::Add { ttl }).await
    }

    /// Deletes the TXT record `fqdn` = `value` (other values stay; deleting a missing one
    /// changes nothing).
    pub async fn remove_txt(&self, fqdn: &str, value: &str) -> Result<(), DnsUpdateError> {
        self.update(fqdn, value, Change::Delete).await
    }

    async fn update(&self, fqdn: &str, value: &str, change: Change) -> Result<(), DnsUpdateError> {
        let error = |kind| DnsUpdateError {
            name: fqdn.to_owned(),
            server: self.settings.server,
            kind,
        };
        let name = encode_name(fqdn).map_err(|e| error(DnsUpdateErrorKind::Invalid(e)))?;
        if !in_zone(&name, &self.zone) {
            return Err(error(DnsUpdateErrorKind::OutsideZone(
                self.settings.zone.clone(),
            )));
        }
        let rdata = txt_rdata(value).map_err(|e| error(DnsUpdateErrorKind::Invalid(e)))?;
        let id = random_id();
        let mut message = self.update_message(id, &name, &rdata, change);
        let mac = self.sign(&mut message, unix_now());
        let answer = tokio::time::timeout(self.timeout, self.exchange(&message))
            .await
            .map_err(|_| error(DnsUpdateErrorKind::Timeout(self.timeout)))?
            .map_err(|e| error(DnsUpdateErrorKind::Io(e.to_string())))?;
        self.check(id, &mac, &answer).map_err(error)?;
        tracing::info!(
            name = fqdn,
            server = %self.settings.server,
            change = match change {
                Change::Add { .. } => "add",
                Change::Delete => "delete",
            },
            "DNS TXT record updated"
        );
        Ok(())
    }

    /// The UPDATE message (unsigned): zone section `<zone> SOA IN`, one update record.
    fn update_message(&self, id: u16, name: &[u8], rdata: &[u8], change: Change) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + rdata.len());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&OPCODE_UPDATE.to_be_bytes());
        // ZOCOUNT 1, PRCOUNT 0, UPCOUNT 1, ADCOUNT 0 (the TSIG is counted when added).
        for count in [1u16, 0, 1, 0] {
            out.extend_from_slice(&count.to_be_bytes());
        }
        out.extend_from_slice(&self.zone);
        out.extend_from_slice(&TYPE_SOA.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        let (class, ttl) = match change {
            Change::Add { ttl } => (CLASS_IN, ttl),
            Change::Delete => (CLASS_NONE, 0),
        };
        out.extend_from_slice(name);
        out.extend_from_slice(&TYPE_TXT.to_be_bytes());
        out.extend_from_slice(&class.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        // rdata is at most 64 KiB: `txt_rdata` checks it.
        out.extend_from_slice(&u16::try_from(rdata.len()).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(rdata);
        out
    }

    /// Appends the TSIG record signing `message` at `time`; returns the MAC.
    fn sign(&self, message: &mut Vec<u8>, time: u64) -> Vec<u8> {
        self.sign_after(&[], message, time)
    }

    /// Appends the TSIG record signing `prefix` then `message` (an answer's MAC covers the
    /// request's MAC first) at `time`; returns the MAC.
    fn sign_after(&self, prefix: &[u8], message: &mut Vec<u8>, time: u64) -> Vec<u8> {
        let key = hmac::Key::new(self.settings.algorithm.hmac(), &self.settings.secret);
        let mut signed = prefix.to_vec();
        signed.extend_from_slice(message);
        self.tsig_variables(&mut signed, &self.key_name, time, FUDGE, 0, &[]);
        let mac = hmac::sign(&key, &signed).as_ref().to_vec();
        let id = [message[0], message[1]];
        message.extend_from_slice(&self.key_name);
        message.extend_from_slice(&TYPE_TSIG.to_be_bytes());
        message.extend_from_slice(&CLASS_ANY.to_be_bytes());
        message.extend_from_slice(&0u32.to_be_bytes());
        let mut rdata = Vec::with_capacity(64 + mac.len());
        rdata.extend_from_slice(&self.algorithm_name);
        rdata.extend_from_slice(&time.to_be_bytes()[2..]);
        rdata.extend_from_slice(&FUDGE.to_be_bytes());
        // MACs are at most 64 bytes.
        rdata.extend_from_slice(&u16::try_from(mac.len()).unwrap_or(0).to_be_bytes());
        rdata.extend_from_slice(&mac);
        rdata.extend_from_slice(&id);
        rdata.extend_from_slice(&0u16.to_be_bytes());
        rdata.extend_from_slice(&0u16.to_be_bytes());
        message.extend_from_slice(&u16::try_from(rdata.len()).unwrap_or(0).to_be_bytes());
        message.extend_from_slice(&rdata);
        let additional = u16::from_be_bytes([message[10], message[11]]).saturating_add(1);
        message[10..12].copy_from_slice(&additional.to_be_bytes());
        mac
    }

    /// The TSIG variables (RFC 8945 §4.3.3) the MAC covers after the message.
    fn tsig_variables(
        &self,
        out: &mut Vec<u8>,
        key_name: &[u8],
        time: u64,
        fudge: u16,
        error: u16,
        other: &[u8],
    ) {
        out.extend_from_slice(key_name);
        out.extend_from_slice(&CLASS_ANY.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&self.algorithm_name);
        out.extend_from_slice(&time.to_be_bytes()[2..]);
        out.extend_from_slice(&fudge.to_be_bytes());
        out.extend_from_slice(&error.to_be_bytes());
        out.extend_from_slice(&u16::try_from(other.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(other);
    }

    /// Sends `message` over TCP and reads one answer.
    async fn exchange(&self, message: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut tcp = TcpStream::connect(self.settings.server).await?;
        let length = u16::try_from(message.len())
            .map_err(|_| std::io::Error::other("update message too large"))?;
        let mut framed = Vec::with_capacity(2 + message.len());
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(message);
        tcp.write_all(&framed).await?;
        let mut length = [0u8; 2];
        tcp.read_exact(&mut length).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(length))];
        tcp.read_exact(&mut answer).await?;
        Ok(answer)
    }

    /// Reads the answer to request `id` (signed with `request_mac`): `Ok` only for a NOERROR
    /// signed by our key.
    fn check(&self, id: u16, request_mac: &[u8], bytes: &[u8]) -> Result<(), DnsUpdateErrorKind> {
        let untrusted = |reason: &str| DnsUpdateErrorKind::Untrusted(reason.to_owned());
        let answer = parse_answer(bytes).map_err(|e| untrusted(&e))?;
        if answer.id != id || answer.flags & FLAG_RESPONSE == 0 {
            return Err(untrusted("it is not the answer to this update"));
        }
        let key = self.settings.key_name.clone();
        match answer.flags & 0x000f {
            0 => {}
            5 => return Err(DnsUpdateErrorKind::Refused(key)),
            9 => {
                let (tsig_error, hint) = match answer.tsig.as_ref().map(|t| t.error) {
                    Some(16) => (
                        "BADSIG",
                        "the secret or algorithm differs from the server's",
                    ),
                    Some(17) => (
                        "BADKEY",
                        "the server knows no key of that name and algorithm",
                    ),
                    Some(18) => ("BADTIME", "the clocks differ by more than 5 minutes"),
                    _ => {
                        return Err(DnsUpdateErrorKind::NotAuthoritative(
                            self.settings.zone.clone(),
                        ));
                    }
                };
                return Err(DnsUpdateErrorKind::KeyRejected {
                    key,
                    tsig_error,
                    hint,
                });
            }
            10 => return Err(DnsUpdateErrorKind::NotZone(self.settings.zone.clone())),
            code => return Err(DnsUpdateErrorKind::Failed(rcode_name(code).to_owned())),
        }
        let tsig = answer
            .tsig
            .ok_or_else(|| untrusted("it is not signed (no TSIG)"))?;
        if tsig.name != self.key_name || tsig.algorithm != self.algorithm_name {
            return Err(untrusted("it is signed with another key"));
        }
        let mut covered = Vec::with_capacity(bytes.len() + 128);
        covered.extend_from_slice(&u16::try_from(request_mac.len()).unwrap_or(0).to_be_bytes());
        covered.extend_from_slice(request_mac);
        let mut message = bytes
            .get(..tsig.start)
            .ok_or_else(|| untrusted("malformed"))?
            .to_vec();
        message[0..2].copy_from_slice(&tsig.original_id.to_be_bytes());
        let additional = u16::from_be_bytes([message[10], message[11]]).saturating_sub(1);
        message[10..12].copy_from_slice(&additional.to_be_bytes());
        covered.extend_from_slice(&message);
        self.tsig_variables(
            &mut covered,
            &tsig.name,
            tsig.time,
            tsig.fudge,
            tsig.error,
            &tsig.other,
        );
        let key = hmac::Key::new(self.settings.algorithm.hmac(), &self.settings.secret);
        hmac::verify(&key, &covered, &tsig.mac).map_err(|_| untrusted("its TSIG MAC is wrong"))
    }
}

/// Whether encoded `name` is `zone` or below it.
fn in_zone(name: &[u8], zone: &[u8]) -> bool {
    if name == zone {
        return true;
    }
    // Walk the labels of `name`: one of its suffixes, at a label boundary, must be the zone.
    let mut at = 0;
    while let Some(&length) = name.get(at) {
        if length == 0 {
            return false;
        }
        at += 1 + usize::from(length);
        if name.get(at..) == Some(zone) {
            return true;
        }
    }
    false
}

/// A name in wire format, lowercase (canonical), uncompressed. Letters, digits, `-` and `_`.
fn encode_name(name: &str) -> Result<Vec<u8>, String> {
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(format!("name '{name}' is empty"));
    }
    if trimmed.len() > 253 {
        return Err(format!("name '{name}' is longer than 253 characters"));
    }
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("name '{name}' has an empty or too long label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "name '{name}': only letters, digits, '-' and '_' are allowed"
            ));
        }
        // At most 63: fits.
        out.push(u8::try_from(label.len()).unwrap_or(63));
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    out.push(0);
    Ok(out)
}

/// TXT rdata: the value as character-strings of at most 255 bytes.
fn txt_rdata(value: &str) -> Result<Vec<u8>, String> {
    if value.is_empty() || value.len() > 4096 {
        return Err("TXT value: expected 1 to 4096 bytes".to_owned());
    }
    let mut out = Vec::with_capacity(value.len() + value.len() / 255 + 1);
    for chunk in value.as_bytes().chunks(255) {
        // At most 255: fits.
        out.push(u8::try_from(chunk.len()).unwrap_or(255));
        out.extend_from_slice(chunk);
    }
    Ok(out)
}

/// Parses the header and, when the last additional record is a TSIG, that record.
fn parse_answer(bytes: &[u8]) -> Result<Answer, String> {
    let mut reader = Reader { bytes, at: 0 };
    let id = reader.u16()?;
    let flags = reader.u16()?;
    let questions = reader.u16()?;
    let answers = reader.u16()?;
    let authorities = reader.u16()?;
    let additional = reader.u16()?;
    for _ in 0..questions {
        reader.name()?;
        reader.skip(4)?;
    }
    for _ in 0..u32::from(answers) + u32::from(authorities) {
        reader.record()?;
    }
    let mut tsig = None;
    for index in 0..additional {
        let start = reader.at;
        let name = reader.name()?;
        let kind = reader.u16()?;
        if kind != TYPE_TSIG {
            reader.skip(6)?;
            let length = reader.u16()?;
            reader.skip(usize::from(length))?;
            continue;
        }
        if index + 1 != additional {
            return Err("the TSIG record is not the last one".to_owned());
        }
        reader.skip(6)?;
        let _length = reader.u16()?;
        let algorithm = reader.name()?;
        let high = u64::from(reader.u16()?);
        let low = u64::from(reader.u16()?) << 16 | u64::from(reader.u16()?);
        let time = high << 32 | low;
        let fudge = reader.u16()?;
        let mac_length = reader.u16()?;
        let mac = reader.take(usize::from(mac_length))?.to_vec();
        let original_id = reader.u16()?;
        let error = reader.u16()?;
        let other_length = reader.u16()?;
        let other = reader.take(usize::from(other_length))?.to_vec();
        tsig = Some(Tsig {
            start,
            name,
            algorithm,
            time,
            fudge,
            mac,
            original_id,
            error,
            other,
        });
    }
    Ok(Answer { id, flags, tsig })
}

/// Reads a DNS message.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).ok_or("malformed answer")?;
        let slice = self.bytes.get(self.at..end).ok_or("truncated answer")?;
        self.at = end;
        Ok(slice)
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        self.take(n).map(|_| ())
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn record(&mut self) -> Result<(), String> {
        self.name()?;
        self.skip(8)?;
        let length = self.u16()?;
        self.skip(usize::from(length))
    }

    /// A name, following compression pointers; returned canonical (lowercase, uncompressed).
    fn name(&mut self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut at = self.at;
        let mut end = None;
        for _ in 0..128 {
            let length = *self.bytes.get(at).ok_or("truncated name")?;
            match length {
                0 => {
                    out.push(0);
                    self.at = end.unwrap_or(at + 1);
                    return Ok(out);
                }
                l if l & 0xc0 == 0xc0 => {
                    let low = *self.bytes.get(at + 1).ok_or("truncated name")?;
                    end.get_or_insert(at + 2);
                    at = usize::from(l & 0x3f) << 8 | usize::from(low);
                }
                l if l & 0xc0 == 0 => {
                    let label = self
                        .bytes
                        .get(at + 1..at + 1 + usize::from(l))
                        .ok_or("truncated name")?;
                    out.push(l);
                    out.extend(label.iter().map(u8::to_ascii_lowercase));
                    if out.len() > 255 {
                        return Err("name too long".to_owned());
                    }
                    at += 1 + usize::from(l);
                }
                _ => return Err("unknown label type".to_owned()),
            }
        }
        Err("name with a compression loop".to_owned())
    }
}

/// The mnemonic of a DNS response code.
fn rcode_name(code: u16) -> &'static str {
    match code {
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        _ => "an unknown error code",
    }
}

/// A message id: random, so answers to another request are not taken for ours.
fn random_id() -> u16 {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
