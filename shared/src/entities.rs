//! The schema of every entity of the configuration, with Kong's field names, defaults and
//! rules (see `reference/kong-behaviour.md` §1), plus the plugins the data plane knows.

use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use crate::checks;
use crate::schema::{Access, Check, Field, FieldErrors, Schema, Type};
use crate::x509::{self, KeyPairError};

/// Names of the plugins this build knows: the data plane runs all of them but those in
/// [`CONTROL_PLANE_PLUGINS`].
pub const KNOWN_PLUGINS: &[&str] = &["acl", "acme", "mtls-auth"];

/// Plugins the control plane runs itself: they never travel to data planes as plugins (their
/// configuration holds account keys), the snapshot carries what data planes need of them.
pub const CONTROL_PLANE_PLUGINS: &[&str] = &["acme"];

/// Directory URLs of Let's Encrypt, whose terms of service must be accepted (Kong's check).
const LETS_ENCRYPT_DIRECTORIES: &[&str] = &[
    "https://acme-v02.api.letsencrypt.org",
    "https://acme-staging-v02.api.letsencrypt.org",
];

/// Every protocol a service or route may name.
pub const PROTOCOLS: &[&str] = &[
    "grpc",
    "grpcs",
    "http",
    "https",
    "tcp",
    "tls",
    "tls_passthrough",
    "udp",
];

/// Collections in dependency order: an entity only references collections listed before it.
pub const COLLECTIONS: &[&str] = &[
    "ca_certificates",
    "certificates",
    "snis",
    "services",
    "routes",
    "upstreams",
    "targets",
    "consumers",
    "acls",
    "mtls_auth_credentials",
    "plugins",
];

/// Largest timeout Kong accepts, in milliseconds.
const MAX_TIMEOUT_MS: i64 = 2_147_483_646;

/// What [`checks::tag`] accepts: printable ASCII but `,` and `/`, or any non-ASCII character.
pub const TAG_PATTERN: &str = r"^[^\x00-\x1f\x7f,/]+$";
/// What [`checks::utf8_name`] accepts: ASCII `A-Z a-z 0-9 . - _ ~`, or any non-ASCII character.
pub const NAME_PATTERN: &str = r"^[^\x00-\x2c\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7d\x7f]+$";
/// What [`checks::http_method`] accepts.
pub const METHOD_PATTERN: &str = r"^[A-Z]+$";

/// Adapts a `&str` validator to a schema check (non-strings are reported by the type check).
macro_rules! str_rule {
    ($rule:path) => {
        |value: &Value| value.as_str().map_or(Ok(()), $rule)
    };
}

/// The schema of `collection`, if it is one of [`COLLECTIONS`]. For plugins this is the
/// generic schema whose `config` is an open record; use [`plugin_schema`] for a named plugin.
pub fn schema(collection: &str) -> Option<&'static Schema> {
    SCHEMAS.iter().find(|s| s.name == collection)
}

/// The schema of a plugin entity whose `config` follows the named plugin's config schema.
pub fn plugin_schema(name: &str) -> Option<&'static Schema> {
    PLUGIN_SCHEMAS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, schema)| schema)
}

static SCHEMAS: LazyLock<Vec<Schema>> = LazyLock::new(|| {
    vec![
        ca_certificates(),
        certificates(),
        snis(),
        services(),
        routes(),
        upstreams(),
        targets(),
        consumers(),
        acls(),
        mtls_auth_credentials(),
        plugins(Vec::new()),
    ]
});

static PLUGIN_SCHEMAS: LazyLock<Vec<(&'static str, Schema)>> = LazyLock::new(|| {
    vec![
        ("acl", plugins(acl_config())),
        ("acme", plugins(acme_config())),
        ("mtls-auth", plugins(mtls_auth_config())),
    ]
});

fn id() -> Field {
    Field::uuid("id").access(Access::Auto)
}

fn timestamps() -> [Field; 2] {
    [
        Field::integer("created_at").access(Access::Auto),
        Field::integer("updated_at").access(Access::Auto),
    ]
}

fn tags() -> Field {
    Field::set(
        "tags",
        Field::elem(Type::String)
            .custom(str_rule!(checks::tag))
            .pattern(TAG_PATTERN),
    )
}

fn name() -> Field {
    Field::string("name")
        .custom(str_rule!(checks::utf8_name))
        .pattern(NAME_PATTERN)
        .unique()
}

fn timeout(name: &'static str) -> Field {
    Field::integer(name)
        .default(json!(60_000))
        .check(Check::Between(1, MAX_TIMEOUT_MS))
}

fn protocol_set(default: &[&str]) -> Field {
    Field::set(
        "protocols",
        Field::elem(Type::String).check(Check::OneOf(PROTOCOLS)),
    )
    .required()
    .default(json!(default))
    .check(Check::LenMin(1))
}

fn with_common(mut fields: Vec<Field>) -> Vec<Field> {
    let [created, updated] = timestamps();
    let mut all = vec![id(), created, updated];
    all.append(&mut fields);
    all.push(tags());
    all
}

fn ca_certificates() -> Schema {
    Schema {
        name: "ca_certificates",
        fields: with_common(vec![
            Field::string("cert").required(),
            Field::string("cert_digest")
                .access(Access::Computed)
                .unique(),
            Field::string("subject").access(Access::Computed),
            Field::string("issuer").access(Access::Computed),
            Field::integer("not_before").access(Access::Computed),
            Field::integer("not_after").access(Access::Computed),
        ]),
        endpoint_key: None,
        entity_checks: vec![check_ca_certificate],
    }
}

fn certificates() -> Schema {
    Schema {
        name: "certificates",
        fields: with_common(vec![
            Field::string("cert").required(),
            Field::string("key").required(),
            Field::string("cert_alt"),
            Field::string("key_alt"),
            Field::set(
                "snis",
                Field::elem(Type::String).custom(str_rule!(checks::sni_name)),
            )
            .access(Access::Transient),
            Field::string("subject").access(Access::Computed),
            Field::string("issuer").access(Access::Computed),
            Field::array("sans", Field::elem(Type::String)).access(Access::Computed),
            Field::integer("not_before").access(Access::Computed),
            Field::integer("not_after").access(Access::Computed),
            Field::string("fingerprint_sha256").access(Access::Computed),
            Field::string("key_type").access(Access::Computed),
        ]),
        endpoint_key: None,
        entity_checks: vec![check_certificate],
    }
}

fn snis() -> Schema {
    Schema {
        name: "snis",
        fields: with_common(vec![
            Field::string("name")
                .required()
                .custom(str_rule!(checks::sni_name))
                .unique(),
            Field::foreign("certificate", "certificates").required(),
        ]),
        endpoint_key: Some("name"),
        entity_checks: vec![],
    }
}

fn services() -> Schema {
    Schema {
        name: "services",
        fields: with_common(vec![
            name(),
            Field::integer("retries")
                .default(json!(5))
                .check(Check::Between(0, 32767)),
            Field::string("protocol")
                .required()
                .default(json!("http"))
                .check(Check::OneOf(PROTOCOLS)),
            Field::string("host")
                .required()
                .custom(str_rule!(checks::host)),
            Field::integer("port")
                .required()
                .default(json!(80))
                .check(Check::Between(0, 65535)),
            Field::string("path").custom(str_rule!(checks::service_path)),
            timeout("connect_timeout"),
            timeout("write_timeout"),
            timeout("read_timeout"),
            Field::foreign("client_certificate", "certificates"),
            Field::boolean("tls_verify"),
            Field::integer("tls_verify_depth").check(Check::Between(0, 64)),
            Field::array("ca_certificates", Field::elem(Type::Uuid)),
            Field::boolean("enabled").required().default(json!(true)),
            Field::string("url").access(Access::Transient),
        ]),
        endpoint_key: Some("name"),
        entity_checks: vec![check_service],
    }
}

fn routes() -> Schema {
    let strings = || Field::elem(Type::String);
    let endpoint = |name| {
        Field::set(
            name,
            Field::elem(Type::Record(vec![
                Field::string("ip").custom(str_rule!(checks::ip_or_cidr)),
                Field::integer("port").check(Check::Between(0, 65535)),
            ]))
            // As Kong's `at_least_one_of = { "ip", "port" }`: `{}` would match everything.
            .custom(|value| {
                let set = |key: &str| value.get(key).is_some_and(|v| !v.is_null());
                if set("ip") || set("port") {
                    Ok(())
                } else {
                    Err("at least one of these fields must be non-empty: 'ip', 'port'".into())
                }
            }),
        )
    };
    Schema {
        name: "routes",
        fields: with_common(vec![
            name(),
            protocol_set(&["http", "https"]),
            Field::set(
                "methods",
                strings()
                    .custom(str_rule!(checks::http_method))
                    .pattern(METHOD_PATTERN),
            ),
            Field::array("hosts", strings().custom(str_rule!(checks::wildcard_host))),
            Field::array("paths", strings().custom(str_rule!(checks::route_path))),
            Field::map(
                "headers",
                Field::elem(Type::Array(Box::new(
                    strings().custom(str_rule!(checks::header_value_pattern)),
                ))),
            ),
            Field::integer("https_redirect_status_code")
                .required()
                .default(json!(426))
                .check(Check::IntOneOf(&[426, 301, 302, 307, 308])),
            Field::integer("regex_priority").default(json!(0)),
            // Defaulted by `check_route`: true, or false for grpc routes (as Kong's subschemas).
            Field::boolean("strip_path"),
            Field::string("path_handling")
                .default(json!("v0"))
                .check(Check::OneOf(&["v0", "v1"])),
            Field::boolean("preserve_host")
                .required()
                .default(json!(false)),
            Field::boolean("request_buffering")
                .required()
                .default(json!(true)),
            Field::boolean("response_buffering")
                .required()
                .default(json!(true)),
            Field::set("snis", strings().custom(str_rule!(checks::sni_name))),
            endpoint("sources"),
            endpoint("destinations"),
            Field::foreign("service", "services"),
        ]),
        endpoint_key: Some("name"),
        entity_checks: vec![check_route],
    }
}

fn upstreams() -> Schema {
    let hash = |name| {
        Field::string(name)
            .default(json!("none"))
            .check(Check::OneOf(&[
                "none",
                "consumer",
                "ip",
                "header",
                "cookie",
                "path",
                "query_arg",
                "uri_capture",
            ]))
    };
    let statuses = |name, default: &[u16]| {
        Field::array(
            name,
            Field::elem(Type::Integer).check(Check::Between(100, 999)),
        )
        .default(json!(default))
    };
    let counter = |name| {
        Field::integer(name)
            .default(json!(0))
            .check(Check::Between(0, 255))
    };
    let interval = || {
        Field::number("interval")
            .default(json!(0))
            .custom(non_negative)
    };
    let record = |name, fields| Field::record(name, fields).default(json!({}));
    let active = record(
        "active",
        vec![
            Field::string("type")
                .default(json!("http"))
                .check(Check::OneOf(&["tcp", "http", "https", "grpc", "grpcs"])),
            Field::number("timeout")
                .default(json!(1))
                .custom(non_negative),
            Field::integer("concurrency")
                .default(json!(10))
                .check(Check::Between(1, 2_147_483_648)),
            Field::string("http_path").default(json!("/")),
            Field::string("https_sni"),
            Field::boolean("https_verify_certificate").default(json!(true)),
            Field::map(
                "headers",
                Field::elem(Type::Array(Box::new(Field::elem(Type::String)))),
            ),
            record(
                "healthy",
                vec![
                    interval(),
                    statuses("http_statuses", &[200, 302]),
                    counter("successes"),
                ],
            ),
            record(
                "unhealthy",
                vec![
                    interval(),
                    statuses("http_statuses", &[429, 404, 500, 501, 502, 503, 504, 505]),
                    counter("tcp_failures"),
                    counter("timeouts"),
                    counter("http_failures"),
                ],
            ),
        ],
    );
    let passive = record(
        "passive",
        vec![
            Field::string("type")
                .default(json!("http"))
                .check(Check::OneOf(&["tcp", "http", "https", "grpc", "grpcs"])),
            record(
                "healthy",
                vec![
                    statuses(
                        "http_statuses",
                        &[
                            200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303,
                            304, 305, 306, 307, 308,
                        ],
                    ),
                    counter("successes"),
                ],
            ),
            record(
                "unhealthy",
                vec![
                    statuses("http_statuses", &[429, 500, 503]),
                    counter("tcp_failures"),
                    counter("timeouts"),
                    counter("http_failures"),
                ],
            ),
        ],
    );
    Schema {
        name: "upstreams",
        fields: with_common(vec![
            Field::string("name")
                .required()
                .custom(str_rule!(checks::host))
                .unique(),
            Field::string("algorithm")
                .default(json!("round-robin"))
                .check(Check::OneOf(&[
                    "round-robin",
                    "consistent-hashing",
                    "least-connections",
                    "latency",
                ])),
            hash("hash_on"),
            hash("hash_fallback"),
            Field::string("hash_on_header"),
            Field::string("hash_fallback_header"),
            Field::string("hash_on_cookie"),
            Field::string("hash_on_cookie_path").default(json!("/")),
            Field::string("hash_on_query_arg"),
            Field::string("hash_fallback_query_arg"),
            Field::string("hash_on_uri_capture"),
            Field::string("hash_fallback_uri_capture"),
            Field::integer("slots")
                .default(json!(10_000))
                .check(Check::Between(10, 65536)),
            Field::record(
                "healthchecks",
                vec![
                    active,
                    passive,
                    Field::number("threshold")
                        .default(json!(0))
                        .custom(|v| match v.as_f64() {
                            Some(n) if (0.0..=100.0).contains(&n) => Ok(()),
                            _ => Err("value should be between 0 and 100".into()),
                        }),
                ],
            )
            .default(json!({})),
            Field::string("host_header").custom(str_rule!(checks::host)),
            Field::foreign("client_certificate", "certificates"),
            Field::boolean("use_srv_name").default(json!(false)),
        ]),
        endpoint_key: Some("name"),
        entity_checks: vec![check_upstream],
    }
}

fn targets() -> Schema {
    Schema {
        name: "targets",
        fields: vec![
            id(),
            Field::number("created_at").access(Access::Auto),
            Field::number("updated_at").access(Access::Auto),
            Field::foreign("upstream", "upstreams").required(),
            Field::string("target").required().custom(|v| {
                v.as_str()
                    .map_or(Ok(()), |s| checks::host_with_optional_port(s).map(|_| ()))
            }),
            Field::integer("weight")
                .default(json!(100))
                .check(Check::Between(0, 65535)),
            tags(),
        ],
        endpoint_key: Some("target"),
        entity_checks: vec![normalize_target],
    }
}

fn consumers() -> Schema {
    Schema {
        name: "consumers",
        fields: with_common(vec![
            Field::string("username").unique(),
            Field::string("custom_id").unique(),
        ]),
        endpoint_key: Some("username"),
        entity_checks: vec![|obj, errors| {
            if is_empty(obj.get("username")) && is_empty(obj.get("custom_id")) {
                errors.entity(
                    "at least one of these fields must be non-empty: 'custom_id', 'username'",
                );
            }
        }],
    }
}

fn acls() -> Schema {
    Schema {
        name: "acls",
        fields: with_common(vec![
            Field::foreign("consumer", "consumers").required(),
            Field::string("group").required().check(Check::LenMin(1)),
        ]),
        // The group names an ACL in URLs under its consumer
        // (`/consumers/{c}/acls/{group}`); it is unique per consumer only.
        endpoint_key: Some("group"),
        entity_checks: vec![],
    }
}

/// Kong's `mtls_auth_credentials` (the `mtls-auth` plugin's DAO, `kong/plugins/mtls-auth/
/// daos.lua` [EE]): a consumer named by the subject of a client certificate (its SAN, else its
/// CN), optionally only when issued by one CA certificate. The pair (`subject_name`,
/// `ca_certificate`) is unique across every consumer (Kong's cache key), a null CA counting as
/// one value; the store enforces it.
fn mtls_auth_credentials() -> Schema {
    Schema {
        name: "mtls_auth_credentials",
        fields: with_common(vec![
            Field::foreign("consumer", "consumers").required(),
            Field::string("subject_name")
                .required()
                .check(Check::LenMin(1)),
            Field::foreign("ca_certificate", "ca_certificates"),
        ]),
        // As Kong: no endpoint key, URLs name a credential by id only.
        endpoint_key: None,
        entity_checks: vec![],
    }
}

/// The protocols of the plugins this build knows: every one of them runs on HTTP requests.
const HTTP_PROTOCOLS: &[&str] = &["grpc", "grpcs", "http", "https"];

fn plugins(config: Vec<Field>) -> Schema {
    let open = config.is_empty();
    let protocols = if open {
        protocol_set(&["grpc", "grpcs", "http", "https"])
    } else {
        Field::set(
            "protocols",
            Field::elem(Type::String).check(Check::OneOf(HTTP_PROTOCOLS)),
        )
        .required()
        .default(json!(HTTP_PROTOCOLS))
        .check(Check::LenMin(1))
    };
    Schema {
        name: "plugins",
        fields: with_common(vec![
            Field::string("name").required(),
            Field::string("instance_name")
                .custom(str_rule!(checks::utf8_name))
                .pattern(NAME_PATTERN)
                .unique(),
            Field::foreign("route", "routes"),
            Field::foreign("service", "services"),
            Field::foreign("consumer", "consumers"),
            if open {
                Field::map("config", Field::elem(Type::String)).default(json!({}))
            } else {
                Field::record("config", config)
                    .required()
                    .default(json!({}))
            },
            protocols,
            Field::boolean("enabled").required().default(json!(true)),
        ]),
        endpoint_key: Some("instance_name"),
        entity_checks: vec![check_plugin],
    }
}

fn acl_config() -> Vec<Field> {
    vec![
        Field::array("allow", Field::elem(Type::String)),
        Field::array("deny", Field::elem(Type::String)),
        Field::boolean("hide_groups_header").default(json!(false)),
        Field::boolean("always_use_authenticated_groups").default(json!(false)),
    ]
}

/// Kong's `kong/plugins/acme/schema.lua`. `storage` and `storage_config` are accepted with
/// Kong's values and ignored: the control plane keeps everything in its own database.
fn acme_config() -> Vec<Field> {
    // Kong's sub-records of `storage_config` are kept as string maps, so that a Kong
    // configuration loads; none is used.
    let storage_record = |name| Field::map(name, Field::elem(Type::String));
    vec![
        Field::string("account_email")
            .required()
            .custom(|v| {
                // Kong's "very loose" Lua pattern `%w*%p*@+%w*%.?%w*`, unanchored: an `@`.
                match v.as_str() {
                    Some(s) if !s.contains('@') => Err(format!("invalid value: {s}")),
                    _ => Ok(()),
                }
            })
            .pattern("@"),
        Field::record(
            "account_key",
            vec![Field::string("key_id").required(), Field::string("key_set")],
        ),
        Field::string("api_uri")
            .default(json!("https://acme-v02.api.letsencrypt.org/directory"))
            .custom(str_rule!(acme_url))
            .pattern(URL_PATTERN),
        Field::boolean("tos_accepted").default(json!(false)),
        Field::string("eab_kid"),
        Field::string("eab_hmac_key"),
        Field::string("cert_type")
            .default(json!("rsa"))
            .check(Check::OneOf(&["rsa", "ecc"])),
        Field::number("rsa_key_size")
            .default(json!(4096))
            .check(Check::IntOneOf(&[2048, 3072, 4096])),
        Field::number("renew_threshold_days").default(json!(14)),
        Field::array(
            "domains",
            Field::elem(Type::String).custom(str_rule!(checks::wildcard_host)),
        ),
        Field::boolean("allow_any_domain").default(json!(false)),
        Field::number("fail_backoff_minutes").default(json!(5)),
        Field::string("storage")
            .default(json!("shm"))
            .check(Check::OneOf(&["kong", "shm", "redis", "consul", "vault"])),
        Field::record(
            "storage_config",
            ["shm", "kong", "redis", "consul", "vault"]
                .into_iter()
                .map(storage_record)
                .collect(),
        ),
        Field::string("preferred_chain"),
        Field::boolean("enable_ipv4_common_name").default(json!(true)),
    ]
}

/// What [`acme_url`] accepts (Kong's `typedefs.url`): a scheme, `://`, optional user
/// information, and a host.
pub const URL_PATTERN: &str = r"^[A-Za-z][A-Za-z0-9+.\-]*://([^/?#@]*@)?[^/?#@:]";

/// Kong's `typedefs.url`: a scheme and a host.
fn acme_url(url: &str) -> Result<(), String> {
    static SCHEME: LazyLock<Option<regex::Regex>> =
        LazyLock::new(|| regex::Regex::new(r"^[A-Za-z][A-Za-z0-9+.\-]*://").ok());
    static FULL: LazyLock<Option<regex::Regex>> =
        LazyLock::new(|| regex::Regex::new(URL_PATTERN).ok());
    let matches =
        |re: &LazyLock<Option<regex::Regex>>| re.as_ref().is_some_and(|re| re.is_match(url));
    if !matches(&SCHEME) {
        return Err("missing scheme in url".to_owned());
    }
    if !matches(&FULL) {
        return Err("missing host in url".to_owned());
    }
    Ok(())
}

fn mtls_auth_config() -> Vec<Field> {
    let port = |name| Field::integer(name).check(Check::Between(0, 65535));
    vec![
        Field::array("ca_certificates", Field::elem(Type::Uuid))
            .required()
            .check(Check::LenMin(1)),
        Field::boolean("skip_consumer_lookup").default(json!(false)),
        Field::string("authenticated_group_by")
            .default(json!("CN"))
            .check(Check::OneOf(&["CN", "DN"])),
        Field::array(
            "consumer_by",
            Field::elem(Type::String).check(Check::OneOf(&["username", "custom_id"])),
        )
        .default(json!(["username", "custom_id"])),
        Field::string("anonymous"),
        Field::string("default_consumer"),
        Field::string("revocation_check_mode")
            .default(json!("IGNORE_CA_ERROR"))
            .check(Check::OneOf(&["SKIP", "IGNORE_CA_ERROR", "STRICT"])),
        Field::number("http_timeout")
            .default(json!(30_000))
            .custom(non_negative),
        Field::number("cache_ttl")
            .default(json!(60))
            .custom(non_negative),
        Field::number("cert_cache_ttl")
            .default(json!(60_000))
            .custom(non_negative),
        Field::boolean("allow_partial_chain").default(json!(false)),
        Field::boolean("send_ca_dn").default(json!(false)),
        Field::string("http_proxy_host").custom(str_rule!(checks::host)),
        port("http_proxy_port"),
        Field::string("https_proxy_host").custom(str_rule!(checks::host)),
        port("https_proxy_port"),
        Field::boolean("ssl_verify").default(json!(true)),
    ]
}

fn non_negative(value: &Value) -> Result<(), String> {
    match value.as_f64() {
        Some(n) if n >= 0.0 => Ok(()),
        _ => Err("value must be greater than or equal to 0".into()),
    }
}

fn is_empty(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    obj.get(name).and_then(Value::as_str)
}

fn protocols(obj: &Map<String, Value>) -> Vec<&str> {
    obj.get("protocols")
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Fills the computed facts of a certificate from its PEM.
fn check_certificate(obj: &mut Map<String, Value>, errors: &mut FieldErrors) {
    let (Some(cert), Some(key)) = (str_field(obj, "cert"), str_field(obj, "key")) else {
        return;
    };
    // As Kong: unparsable PEM is a field error (each field reported), a key that does not match
    // its certificate fails the entity check (`@entity`).
    let facts = match x509::check_key_pair(cert, key) {
        Ok(facts) => facts,
        Err(KeyPairError::Mismatch) => return errors.entity("certificate does not match key"),
        Err(error @ KeyPairError::Cert(_)) => {
            errors.field("cert", error.message());
            if let Err(reason) = x509::parse_private_key(key) {
                errors.field("key", KeyPairError::Key(reason).message());
            }
            return;
        }
        Err(error) => return errors.field(error.field(), error.message()),
    };
    match (str_field(obj, "cert_alt"), str_field(obj, "key_alt")) {
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            errors.entity("all or none of these fields must be set: 'cert_alt', 'key_alt'");
        }
        (Some(cert_alt), Some(key_alt)) => match x509::check_key_pair(cert_alt, key_alt) {
            Err(KeyPairError::Mismatch) => {
                errors.entity("alternative certificate does not match key");
            }
            Err(error) => {
                let field = if error.field() == "cert" {
                    "cert_alt"
                } else {
                    "key_alt"
                };
                errors.field(field, error.message());
            }
            Ok(alt) if alt.key_type == facts.key_type => errors.entity(
                "certificate and alternative certificate need to have different type \
                 (e.g. RSA and ECDSA), the provided certificates were both of the same type",
            ),
            Ok(_) => {}
        },
    }
    obj.insert("subject".into(), json!(facts.subject));
    obj.insert("issuer".into(), json!(facts.issuer));
    obj.insert("sans".into(), json!(facts.sans));
    obj.insert("not_before".into(), json!(facts.not_before));
    obj.insert("not_after".into(), json!(facts.not_after));
    obj.insert("fingerprint_sha256".into(), json!(facts.fingerprint_sha256));
    obj.insert("key_type".into(), json!(facts.key_type.as_str()));
}

fn check_ca_certificate(obj: &mut Map<String, Value>, errors: &mut FieldErrors) {
    let Some(cert) = str_field(obj, "cert") else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match x509::check_ca_certificate(cert, now) {
        Err(message) => errors.field("cert", message),
        Ok(ca) => {
            obj.insert("cert_digest".into(), json!(ca.digest));
            obj.insert("subject".into(), json!(ca.facts.subject));
            obj.insert("issuer".into(), json!(ca.facts.issuer));
            obj.insert("not_before".into(), json!(ca.facts.not_before));
            obj.insert("not_after".into(), json!(ca.facts.not_after));
        }
    }
}

fn check_service(obj: &mut Map<String, Value>, errors: &mut FieldErrors) {
    let protocol = str_field(obj, "protocol").unwrap_or("http").to_owned();
    if matches!(protocol.as_str(), "tcp" | "tls" | "udp" | "grpc" | "grpcs")
        && !is_empty(obj.get("path"))
    {
        errors.field("path", "value must be null");
    }
    if !matches!(protocol.as_str(), "https" | "tls") {
        for field in [
            "client_certificate",
            "tls_verify",
            "tls_verify_depth",
            "ca_certificates",
        ] {
            if !obj.get(field).is_none_or(Value::is_null) {
                errors.field(field, "value must be null");
            }
        }
    }
}

fn check_route(obj: &mut Map<String, Value>, errors: &mut FieldErrors) {
    // Kong's grpc route subschema defaults `strip_path` to false, the others to true.
    if obj.get("strip_path").is_none_or(Value::is_null) {
        let grpc = protocols(obj)
            .iter()
            .any(|p| matches!(*p, "grpc" | "grpcs"));
        obj.insert("strip_path".into(), Value::Bool(!grpc));
    }
    let protocols = protocols(obj);
    let groups: [&[&str]; 4] = [
        &["http", "https"],
        &["tcp", "tls", "udp"],
        &["tls_passthrough"],
        &["grpc", "grpcs"],
    ];
    let touched = groups
        .iter()
        .filter(|group| protocols.iter().any(|p| group.contains(p)))
        .count();
    if touched > 1 {
        errors.field(
            "protocols",
            "these sets are mutually exclusive: ('http', 'https'), ('tcp', 'tls', 'udp'), \
             ('tls_passthrough'), ('grpc', 'grpcs')",
        );
        return;
    }
    let has = |field: &str| !is_empty(obj.get(field));
    let is_http = protocols.iter().any(|p| matches!(*p, "http" | "https"));
    let is_grpc = protocols.iter().any(|p| matches!(*p, "grpc" | "grpcs"));
    let is_stream = protocols
        .iter()
        .any(|p| matches!(*p, "tcp" | "tls" | "udp" | "tls_passthrough"));
    let tls_capable = protocols
        .iter()
        .any(|p| matches!(*p, "https" | "grpcs" | "tls" | "tls_passthrough"));

    if has("snis") && !tls_capable {
        errors.field(
            "snis",
            "'snis' can only be set when 'protocols' is 'grpcs', 'https', 'tls' or \
             'tls_passthrough'",
        );
    }
    if let Some(headers) = obj.get("headers").and_then(Value::as_object) {
        for name in headers.keys() {
            if name.eq_ignore_ascii_case("host") {
                errors.field(
                    "headers",
                    "cannot contain 'host' header, which must be specified in the 'hosts' \
                     attribute",
                );
            } else if let Err(message) = checks::header_name(name) {
                errors.field("headers", message);
            }
        }
    }
    if is_grpc && obj.get("strip_path") == Some(&Value::Bool(true)) {
        errors.field(
            "strip_path",
            "cannot set 'strip_path' when 'protocols' is 'grpc' or 'grpcs'",
        );
    }
    if is_grpc && has("methods") {
        errors.field(
            "methods",
            "cannot set 'methods' when 'protocols' is 'grpc' or 'grpcs'",
        );
    }
    if is_stream {
        for field in ["methods", "hosts", "paths", "headers"] {
            if has(field) {
                errors.field(
                    field,
                    format!(
                        "cannot set '{field}' when 'protocols' is one of 'tcp', 'tls', 'udp' \
                         or 'tls_passthrough'"
                    ),
                );
            }
        }
    } else {
        for field in ["sources", "destinations"] {
            if has(field) {
                errors.field(
                    field,
                    format!(
                        "cannot set '{field}' when 'protocols' is one of 'http', 'https', \
                         'grpc' or 'grpcs'"
                    ),
                );
            }
        }
    }
    if !errors.is_empty() {
        return;
    }
    // Kong's wording (`routes_subschemas.lua`): the message names the protocol whose subschema
    // applies (`https` over `http`, `grpcs` over `grpc`), not every protocol given.
    let message =
        |list: &str, when: &str| format!("must set one of {list} when 'protocols' is {when}");
    let (criteria, message): (&[&str], String) = if protocols == ["tls_passthrough"] {
        (
            &["snis"],
            "must set snis when 'protocols' is 'tls_passthrough'".to_owned(),
        )
    } else if is_stream {
        (
            &["sources", "destinations", "snis"],
            message("'sources', 'destinations', 'snis'", "'tcp', 'tls' or 'udp'"),
        )
    } else if is_grpc {
        if protocols.contains(&"grpcs") {
            (
                &["hosts", "headers", "paths", "snis"],
                message("'hosts', 'headers', 'paths', 'snis'", "'grpcs'"),
            )
        } else {
            (
                &["hosts", "headers", "paths"],
                message("'hosts', 'headers', 'paths'", "'grpc'"),
            )
        }
    } else if is_http && protocols.contains(&"https") {
        (
            &["methods", "hosts", "headers", "paths", "snis"],
            message("'methods', 'hosts', 'headers', 'paths', 'snis'", "'https'"),
        )
    } else {
        (
            &["methods", "hosts", "headers", "paths"],
            message("'methods', 'hosts', 'headers', 'paths'", "'http'"),
        )
    };
    if !criteria.iter().any(|field| has(field)) {
        errors.entity(message);
    }
}

fn check_upstream(obj: &mut Map<String, Value>, errors: &mut FieldErrors) {
    if let Some(name) = str_field(obj, "name")
        && name.parse::<std::net::IpAddr>().is_ok()
    {
        errors.field(
            "name",
            format!("Invalid name ('{name}'); no ip addresses allowed"),
        );
    }
    let needs = |on: &str, field: &str| {
        if str_field(obj, on) == Some("header") && is_empty(obj.get(field)) {
            Some((field.to_owned(), "required field missing"))
        } else {
            None
        }
    };
    let missing: Vec<_> = [
        needs("hash_on", "hash_on_header"),
        needs("hash_fallback", "hash_fallback_header"),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (field, message) in missing {
        errors.field(&field, message);
    }
    if str_field(obj, "hash_on") == Some("cookie") && is_empty(obj.get("hash_on_cookie")) {
        errors.field("hash_on_cookie", "required field missing");
    }
    if str_field(obj, "hash_on") == Some("none")
        && str_field(obj, "hash_fallback").is_some_and(|f| f != "none")
    {
        errors.field("hash_fallback", "must be 'none' when 'hash_on' is 'none'");
    }
}

/// Kong stores targets with their port: `host` becomes `host:8000`.
fn normalize_target(obj: &mut Map<String, Value>, _errors: &mut FieldErrors) {
    let Some(target) = str_field(obj, "target") else {
        return;
    };
    if let Ok((host, port)) = checks::host_with_optional_port(target) {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        let normalized = format!("{host}:{}", port.unwrap_or(8000));
        obj.insert("target".into(), Value::from(normalized));
    }
}

fn check_plugin(obj: &mut Map<String, Value>, errors: &mut FieldErrors) {
    let Some(name) = str_field(obj, "name").map(str::to_owned) else {
        return;
    };
    let is_set = |field: &str| !obj.get(field).is_none_or(Value::is_null);
    // Protocols are checked by the plugin's schema; no plugin applies per consumer, and
    // acme is global only.
    if matches!(name.as_str(), "acl" | "acme" | "mtls-auth") && is_set("consumer") {
        errors.field("consumer", "value must be null");
    }
    if name == "acme" {
        for field in ["service", "route"] {
            if is_set(field) {
                errors.field(field, "value must be null");
            }
        }
        let config = obj.get("config").and_then(Value::as_object);
        let api_uri = config
            .and_then(|c| c.get("api_uri"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let tos = config
            .and_then(|c| c.get("tos_accepted"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !tos
            && LETS_ENCRYPT_DIRECTORIES
                .iter()
                .any(|le| api_uri.starts_with(le))
        {
            errors.nested_field(
                "config",
                "tos_accepted",
                "terms of service must be accepted, see https://letsencrypt.org/repository/",
            );
        }
    }
    if name == "acl" {
        let config = obj.get("config").and_then(Value::as_object);
        let set = |field: &str| config.is_some_and(|c| !is_empty(c.get(field)));
        match (set("allow"), set("deny")) {
            (true, true) => errors.entity(
                "only one of these fields must be non-empty: 'config.allow', 'config.deny'",
            ),
            (false, false) => errors.entity(
                "at least one of these fields must be non-empty: 'config.allow', 'config.deny'",
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn validate(collection: &str, value: Value) -> Result<Map<String, Value>, FieldErrors> {
        let mut obj = value.as_object().cloned().unwrap();
        schema(collection).unwrap().validate(&mut obj).map(|()| obj)
    }

    /// Every field's published pattern accepts exactly what its checks accept.
    #[test]
    fn patterns_match_their_checks() {
        fn walk<'a>(fields: &'a [Field], out: &mut Vec<&'a Field>) {
            for field in fields {
                out.push(field);
                match &field.ty {
                    Type::Array(elem) | Type::Set(elem) | Type::Map(elem) => {
                        walk(std::slice::from_ref(elem), out)
                    }
                    Type::Record(inner) => walk(inner, out),
                    _ => {}
                }
            }
        }
        let mut fields = Vec::new();
        for schema in SCHEMAS.iter().chain(PLUGIN_SCHEMAS.iter().map(|(_, s)| s)) {
            walk(&schema.fields, &mut fields);
        }
        let with_pattern: Vec<&Field> =
            fields.into_iter().filter(|f| f.pattern.is_some()).collect();
        assert!(with_pattern.len() >= 5, "{}", with_pattern.len());

        let mut samples: Vec<String> = vec![
            String::new(),
            "GET".into(),
            "a.b-c_d~e".into(),
            "tag with spaces".into(),
            "a,b".into(),
            "a/b".into(),
            "Ünïcödé".into(),
            "名前".into(),
            "😀".into(),
            "\u{ffff}".into(),
            "a\nb".into(),
            "a\n".into(),
            "a\u{0}".into(),
        ];
        for c in (0u32..0x100)
            .chain([0x2028, 0xfeff, 0x10ffff])
            .filter_map(char::from_u32)
        {
            samples.push(c.to_string());
            samples.push(format!("a{c}"));
            samples.push(format!("{c}Z"));
        }
        for field in with_pattern {
            let pattern = field.pattern.unwrap_or_default();
            let regex = regex::Regex::new(pattern).unwrap();
            for sample in &samples {
                let accepted = crate::schema::run_checks(&field.checks, &json!(sample)).is_none();
                assert_eq!(
                    regex.is_match(sample),
                    accepted,
                    "field {:?}, pattern {pattern}: {sample:?}",
                    field.name
                );
            }
        }
    }

    #[test]
    fn acme_plugin_follows_kong() {
        let schema = plugin_schema("acme").unwrap();
        let mut obj = json!({"name": "acme",
                             "config": {"account_email": "a@b.test", "tos_accepted": true}})
        .as_object()
        .cloned()
        .unwrap();
        schema.validate(&mut obj).unwrap();
        let config = &obj["config"];
        assert_eq!(
            config["api_uri"],
            json!("https://acme-v02.api.letsencrypt.org/directory")
        );
        assert_eq!(config["cert_type"], json!("rsa"));
        assert_eq!(config["rsa_key_size"], json!(4096));
        assert_eq!(config["renew_threshold_days"], json!(14));
        assert_eq!(config["fail_backoff_minutes"], json!(5));
        assert_eq!(config["storage"], json!("shm"));
        assert_eq!(config["enable_ipv4_common_name"], json!(true));

        assert_eq!(acme_url("nothing"), Err("missing scheme in url".into()));
        assert_eq!(acme_url("https://"), Err("missing host in url".into()));
        assert_eq!(acme_url("https://:443/"), Err("missing host in url".into()));
        assert_eq!(acme_url("https://127.0.0.1:14000/dir"), Ok(()));

        // Global only, and Let's Encrypt's terms must be accepted.
        let id = json!({"id": "5fd1d3a4-6f29-4a4c-a0f1-a52f4b7d5f6e"});
        let mut obj = json!({"name": "acme", "service": id, "route": id,
                             "config": {"account_email": "a@b.test"}})
        .as_object()
        .cloned()
        .unwrap();
        let err = schema.validate(&mut obj).unwrap_err().to_json();
        assert_eq!(err["service"], json!("value must be null"));
        assert_eq!(err["route"], json!("value must be null"));
        assert_eq!(
            err["config"]["tos_accepted"],
            json!("terms of service must be accepted, see https://letsencrypt.org/repository/")
        );
    }

    #[test]
    fn every_collection_has_a_schema() {
        for collection in COLLECTIONS {
            assert!(schema(collection).is_some(), "{collection}");
        }
        for name in KNOWN_PLUGINS {
            assert!(plugin_schema(name).is_some(), "{name}");
        }
    }

    #[test]
    fn service_defaults() {
        let obj = validate("services", json!({"host": "example.com"})).unwrap();
        assert_eq!(obj["protocol"], json!("http"));
        assert_eq!(obj["port"], json!(80));
        assert_eq!(obj["retries"], json!(5));
        assert_eq!(obj["read_timeout"], json!(60000));
        assert_eq!(obj["enabled"], json!(true));
        assert_eq!(obj["path"], Value::Null);
    }

    #[test]
    fn service_tls_fields_need_tls_protocol() {
        let err = validate(
            "services",
            json!({"host": "a.test", "protocol": "http", "tls_verify": true}),
        )
        .unwrap_err();
        assert_eq!(err.to_json(), json!({"tls_verify": "value must be null"}));
    }

    #[test]
    fn route_minimum_criteria() {
        let err = validate("routes", json!({"protocols": ["http"]})).unwrap_err();
        assert_eq!(
            err.message(),
            "schema violation (must set one of 'methods', 'hosts', 'headers', 'paths' when \
             'protocols' is 'http')"
        );
        validate("routes", json!({"paths": ["/a"]})).unwrap();
        let err = validate("routes", json!({"protocols": ["tls_passthrough"]})).unwrap_err();
        assert_eq!(
            err.message(),
            "schema violation (must set snis when 'protocols' is 'tls_passthrough')"
        );
    }

    #[test]
    fn route_strip_path_defaults_by_protocol() {
        let obj = validate("routes", json!({"paths": ["/a"]})).unwrap();
        assert_eq!(obj["strip_path"], json!(true));
        let obj = validate("routes", json!({"protocols": ["grpc"], "paths": ["/a"]})).unwrap();
        assert_eq!(obj["strip_path"], json!(false));
        let err = validate(
            "routes",
            json!({"protocols": ["grpcs"], "paths": ["/a"], "strip_path": true}),
        )
        .unwrap_err();
        assert_eq!(
            err.to_json(),
            json!({"strip_path": "cannot set 'strip_path' when 'protocols' is 'grpc' or 'grpcs'"})
        );
    }

    #[test]
    fn route_rejects_host_header_and_mixed_protocols() {
        let err = validate(
            "routes",
            json!({"paths": ["/"], "headers": {"Host": ["a"]}}),
        )
        .unwrap_err();
        assert!(
            err.to_json()["headers"]
                .as_str()
                .unwrap()
                .contains("'host'")
        );
        let err = validate(
            "routes",
            json!({"protocols": ["http", "tcp"], "paths": ["/"]}),
        )
        .unwrap_err();
        assert!(
            err.to_json()["protocols"]
                .as_str()
                .unwrap()
                .contains("mutually exclusive")
        );
    }

    #[test]
    fn consumer_needs_username_or_custom_id() {
        let err = validate("consumers", json!({})).unwrap_err();
        assert_eq!(
            err.to_json(),
            json!({"@entity": ["at least one of these fields must be non-empty: 'custom_id', 'username'"]})
        );
    }

    #[test]
    fn target_gets_default_port() {
        let upstream = json!({"id": uuid::Uuid::new_v4().to_string()});
        let obj = validate(
            "targets",
            json!({"upstream": upstream, "target": "10.0.0.1"}),
        )
        .unwrap();
        assert_eq!(obj["target"], json!("10.0.0.1:8000"));
        assert_eq!(obj["weight"], json!(100));
    }

    #[test]
    fn upstream_healthcheck_defaults_are_filled() {
        let obj = validate("upstreams", json!({"name": "backend"})).unwrap();
        let hc = &obj["healthchecks"];
        assert_eq!(hc["active"]["http_path"], json!("/"));
        assert_eq!(hc["active"]["healthy"]["http_statuses"], json!([200, 302]));
        assert_eq!(
            hc["passive"]["unhealthy"]["http_statuses"],
            json!([429, 500, 503])
        );
        assert_eq!(hc["threshold"], json!(0));
    }

    #[test]
    fn acl_needs_exactly_one_list() {
        let mut obj = json!({"name": "acl", "config": {"allow": ["a"], "deny": ["b"]}})
            .as_object()
            .cloned()
            .unwrap();
        let err = plugin_schema("acl")
            .unwrap()
            .validate(&mut obj)
            .unwrap_err();
        assert!(err.message().contains("only one of these fields"));
        let mut obj = json!({"name": "acl", "config": {"allow": ["a"]}})
            .as_object()
            .cloned()
            .unwrap();
        plugin_schema("acl").unwrap().validate(&mut obj).unwrap();
        assert_eq!(obj["config"]["hide_groups_header"], json!(false));
        assert_eq!(obj["protocols"], json!(["grpc", "grpcs", "http", "https"]));
    }

    #[test]
    fn mtls_auth_credential_fields() {
        let consumer = json!({"id": uuid::Uuid::new_v4().to_string()});
        let obj = validate(
            "mtls_auth_credentials",
            json!({"consumer": consumer, "subject_name": "client.example.com"}),
        )
        .unwrap();
        assert_eq!(obj["ca_certificate"], Value::Null);
        assert_eq!(obj["tags"], Value::Null);
        let err = validate("mtls_auth_credentials", json!({"subject_name": ""})).unwrap_err();
        assert_eq!(
            err.to_json(),
            json!({"consumer": "required field missing",
                   "subject_name": "length must be at least 1"})
        );
        let err = validate(
            "mtls_auth_credentials",
            json!({"consumer": consumer, "subject_name": "a", "ca_certificate": {"id": "x"}}),
        )
        .unwrap_err();
        assert_eq!(
            err.to_json(),
            json!({"ca_certificate": {"id": "expected a valid UUID"}})
        );
        let schema = schema("mtls_auth_credentials").unwrap();
        assert_eq!(schema.endpoint_key, None);
        // Form input: `ca_certificate.id=<uuid>`, an empty value clears it.
        let coerced = schema.coerce_form(json!({"subject_name": "a", "ca_certificate": ""}));
        assert_eq!(coerced["ca_certificate"], Value::Null);
    }

    #[test]
    fn mtls_auth_requires_ca_certificates() {
        let mut obj = json!({"name": "mtls-auth", "config": {}})
            .as_object()
            .cloned()
            .unwrap();
        let err = plugin_schema("mtls-auth")
            .unwrap()
            .validate(&mut obj)
            .unwrap_err();
        assert_eq!(
            err.to_json(),
            json!({"config": {"ca_certificates": "required field missing"}})
        );
    }
}
