//! Settings of the control plane. Every setting is a command-line flag, the same name as a
//! `GATEHOUSE_*` environment variable, or a key of the TOML file given with `--config` (the flag
//! name with `_` for `-`). Flags and variables win over the file; the file wins over defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use gatehouse_shared::entities::KNOWN_PLUGINS;

/// Default Admin API address (Kong's `admin_listen`).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8001";
/// Default size of the Postgres connection pool.
pub const DEFAULT_DATABASE_MAX_CONNECTIONS: usize = 16;
/// Default largest accepted Admin API request body, in bytes.
pub const DEFAULT_ADMIN_MAX_BODY: usize = 8 * 1024 * 1024;

/// Gatehouse control plane: keeps the gateway configuration in PostgreSQL behind a
/// Kong-compatible Admin API.
#[derive(Debug, Parser)]
#[command(name = "gatehouse-cp", version, about)]
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
}

/// Flags shared by every subcommand (each is also a `GATEHOUSE_*` variable and a TOML key).
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Flags {
    /// TOML file with settings; keys are the flag names with `_` (e.g. `database_url`).
    #[arg(long, short = 'c', env = "GATEHOUSE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// PostgreSQL connection URL, e.g. `postgres://gatehouse@127.0.0.1:5432/gatehouse`.
    /// Required.
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

    /// Plugins that may be configured: `bundled` (every plugin the data plane knows:
    /// acl, mtls-auth), `off`, or a comma-separated list [default: bundled].
    #[arg(long, env = "GATEHOUSE_PLUGINS")]
    pub plugins: Option<String>,

    /// Log filter in `RUST_LOG` syntax, e.g. `info` or `gatehouse_cp=debug` [default: info;
    /// `RUST_LOG` is read when this is unset].
    #[arg(long, env = "GATEHOUSE_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Log format: `text` or `json` [default: text].
    #[arg(long, env = "GATEHOUSE_LOG_FORMAT")]
    pub log_format: Option<String>,
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
    /// Plugins that may be configured.
    pub plugins: Vec<String>,
    /// Logging.
    pub log: LogSettings,
}

/// A setting that does not parse; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

// === impl Cli ===

impl Cli {
    /// The flags of the chosen subcommand, merged with the `--config` file and defaults.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let flags = match &self.command {
            Command::Serve(flags) | Command::Migrate(flags) => flags,
            // `pki` reads no settings: it gets the defaults.
            Command::Pki(_) => return Flags::default().resolve(),
        };
        let file = match &flags.config {
            Some(path) => Flags::from_file(path)?,
            None => Flags::default(),
        };
        flags.clone().or(file).resolve()
    }
}

// === impl Flags ===

impl Flags {
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
            plugins: self.plugins.or(other.plugins),
            log_level: self.log_level.or(other.log_level),
            log_format: self.log_format.or(other.log_format),
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
        match admin_listen {
            Some(admin_listen) if problems.is_empty() => Ok(Settings {
                database_url: self.database_url,
                database_max_connections,
                admin_listen,
                admin_max_body: self.admin_max_body.unwrap_or(DEFAULT_ADMIN_MAX_BODY),
                plugins,
                log: LogSettings {
                    level: self.log_level,
                    json,
                },
            }),
            _ => Err(ConfigError(problems.join("; "))),
        }
    }
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
        assert_eq!(settings.plugins, vec!["acl", "mtls-auth"]);
        assert!(settings.database_url.is_none());
        assert!(settings.require_database_url().is_err());
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
