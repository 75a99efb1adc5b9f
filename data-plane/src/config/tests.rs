#![allow(clippy::unwrap_used)]

use super::*;

const REQUIRED: [&str; 4] = [
    "--cluster-cert",
    "/etc/gh/dp.crt",
    "--cluster-cert-key",
    "/etc/gh/dp.key",
];

fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
    let mut argv = vec!["gatehouse-dp"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).unwrap().settings()
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gh-dp-cfg-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn defaults() {
    let settings = parse(&REQUIRED).unwrap();
    assert_eq!(
        settings.cluster.control_plane,
        DEFAULT_CLUSTER_CONTROL_PLANE
    );
    assert_eq!(settings.cluster.control_planes.len(), 1);
    assert_eq!(settings.cluster.control_planes[0].server_name, "127.0.0.1");
    assert_eq!(settings.cluster.mode, ClusterMtls::Shared);
    assert_eq!(settings.cluster.tls_server_name(), SHARED_SERVER_NAME);
    assert_eq!(settings.cache_dir, PathBuf::from(DEFAULT_CACHE_DIR));
    assert_eq!(settings.status_listen.to_string(), DEFAULT_STATUS_LISTEN);
    assert_eq!(settings.advertise_version, env!("CARGO_PKG_VERSION"));
    assert!(settings.labels.is_empty());
    assert!(!settings.log.json);
    assert_eq!(settings.proxy.tls, SslSettings::default());
    assert!(settings.proxy.tls.certs.is_empty() && settings.proxy.tls.session_tickets);
    assert!(settings.proxy.trusted_ips.is_empty());
}

#[test]
fn cluster_certificate_is_required() {
    let err = parse(&[]).unwrap_err().to_string();
    assert!(
        err.contains("--cluster-cert (GATEHOUSE_CLUSTER_CERT"),
        "{err}"
    );
    assert!(
        err.contains("--cluster-cert-key (GATEHOUSE_CLUSTER_CERT_KEY"),
        "{err}"
    );
    let mut args = REQUIRED.to_vec();
    args.extend(["--cluster-mtls", "pki"]);
    let err = parse(&args).unwrap_err().to_string();
    assert!(err.contains("--cluster-ca-cert"), "{err}");
}

#[test]
fn pki_server_name_defaults_to_the_host() {
    let mut args = REQUIRED.to_vec();
    args.extend([
        "--cluster-mtls",
        "pki",
        "--cluster-ca-cert",
        "/ca.crt",
        "--cluster-control-plane",
        "cp.example.com:9005",
    ]);
    let settings = parse(&args).unwrap();
    assert_eq!(settings.cluster.tls_server_name(), "cp.example.com");
    args.extend(["--cluster-server-name", "cp.internal"]);
    assert_eq!(
        parse(&args).unwrap().cluster.tls_server_name(),
        "cp.internal"
    );
    let mut args = REQUIRED.to_vec();
    args.extend(["--cluster-control-plane", "[::1]:8005"]);
    assert_eq!(
        parse(&args).unwrap().cluster.control_planes[0].server_name,
        "::1"
    );
}

#[test]
fn several_control_planes_each_keep_their_server_name() {
    let mut args = REQUIRED.to_vec();
    args.extend([
        "--cluster-mtls",
        "pki",
        "--cluster-ca-cert",
        "/ca.crt",
        "--cluster-control-plane",
        "cp-a.example.com:8005, 198.18.0.12:8005,cp-a.example.com:8005",
    ]);
    let settings = parse(&args).unwrap();
    let cps = &settings.cluster.control_planes;
    assert_eq!(cps.len(), 2, "{cps:?}");
    assert_eq!(cps[0].addr, "cp-a.example.com:8005");
    assert_eq!(
        settings.cluster.tls_server_name_of(&cps[0]),
        "cp-a.example.com"
    );
    assert_eq!(cps[1].addr, "198.18.0.12:8005");
    assert_eq!(settings.cluster.tls_server_name_of(&cps[1]), "198.18.0.12");

    // An explicit name applies to every address.
    args.extend(["--cluster-server-name", "cp.internal"]);
    let settings = parse(&args).unwrap();
    for cp in &settings.cluster.control_planes {
        assert_eq!(settings.cluster.tls_server_name_of(cp), "cp.internal");
    }

    // Every bad item is reported; an empty list is refused.
    let mut args = REQUIRED.to_vec();
    args.extend(["--cluster-control-plane", "a:1,nope,b:0"]);
    let err = parse(&args).unwrap_err().to_string();
    assert!(err.contains("'nope' is not HOST:PORT"), "{err}");
    assert!(err.contains("invalid port '0'"), "{err}");
    let mut args = REQUIRED.to_vec();
    args.extend(["--cluster-control-plane", " , "]);
    let err = parse(&args).unwrap_err().to_string();
    assert!(err.contains("no address given"), "{err}");
}

#[test]
fn labels_from_flags_and_file() {
    let mut args = REQUIRED.to_vec();
    args.extend(["--label", "region=eu-west", "--label", "tier=gold,zone=a"]);
    let labels = parse(&args).unwrap().labels;
    assert_eq!(labels.len(), 3);
    assert_eq!(labels["region"], "eu-west");
    assert_eq!(labels["zone"], "a");

    let path = temp_file("dp.toml", "labels = { region = \"us\" }\n");
    let mut args = REQUIRED.to_vec();
    args.extend(["--config", path.to_str().unwrap()]);
    assert_eq!(parse(&args).unwrap().labels["region"], "us");
    let path = temp_file("dp.toml", "labels = [\"a=b\"]\n");
    let mut args = REQUIRED.to_vec();
    args.extend(["--config", path.to_str().unwrap()]);
    assert_eq!(parse(&args).unwrap().labels["a"], "b");
}

#[test]
fn file_fills_what_flags_leave_unset() {
    let path = temp_file(
        "dp.toml",
        "cluster_cert = \"/f/dp.crt\"\ncluster_cert_key = \"/f/dp.key\"\n\
         status_listen = \"127.0.0.1:9100\"\ncache_dir = \"/tmp/dp\"\n",
    );
    let settings = parse(&[
        "--config",
        path.to_str().unwrap(),
        "--status-listen",
        "127.0.0.1:0",
    ])
    .unwrap();
    assert_eq!(settings.cluster.files.cert, PathBuf::from("/f/dp.crt"));
    assert_eq!(settings.cache_dir, PathBuf::from("/tmp/dp"));
    assert_eq!(settings.status_listen.to_string(), "127.0.0.1:0");
}

#[test]
fn every_problem_is_reported_at_once() {
    let err = parse(&[
        "--cluster-control-plane",
        "nope",
        "--cluster-mtls",
        "mutual",
        "--status-listen",
        "x",
        "--label",
        "novalue",
        "--label",
        "a=b",
        "--label",
        "a=c",
        "--log-format",
        "xml",
        "--advertise-version",
        "1.2",
    ])
    .unwrap_err()
    .to_string();
    for expected in [
        "--cluster-control-plane",
        "--cluster-mtls",
        "--status-listen",
        "'novalue' is not KEY=VALUE",
        "'a' is given more than once",
        "--log-format",
        "--advertise-version",
        "--cluster-cert ",
    ] {
        assert!(err.contains(expected), "{expected} in {err}");
    }

    let path = temp_file("dp.toml", "cache_dri = \"x\"\n");
    let err = parse(&["--config", path.to_str().unwrap()]).unwrap_err();
    assert!(err.to_string().contains("cache_dri"), "{err}");
}

#[test]
fn host_port_and_versions() {
    assert_eq!(split_host_port("cp:8005").unwrap(), "cp");
    assert_eq!(split_host_port("[fe80::1]:1").unwrap(), "fe80::1");
    assert!(split_host_port("fe80::1:8005").is_err());
    assert!(split_host_port(":8005").is_err());
    assert!(split_host_port("cp:0").is_err());
    assert!(split_host_port("cp").is_err());
    assert!(is_version("0.1.0"));
    assert!(is_version("10.20.30-rc.1"));
    assert!(!is_version("1.2"));
    assert!(!is_version("1.x.3"));
}

#[test]
fn ssl_settings() {
    let mut args = REQUIRED.to_vec();
    args.extend([
        "--ssl-cert",
        "/tls/rsa.crt, /tls/ecdsa.crt",
        "--ssl-cert-key",
        "/tls/rsa.key,/tls/ecdsa.key",
        "--ssl-session-tickets",
        "off",
        "--ssl-session-cache",
        "off",
    ]);
    let ssl = parse(&args).unwrap().proxy.tls;
    assert!(!ssl.session_cache);
    assert_eq!(
        ssl.certs,
        [
            CertKeyFiles {
                cert: "/tls/rsa.crt".into(),
                key: "/tls/rsa.key".into()
            },
            CertKeyFiles {
                cert: "/tls/ecdsa.crt".into(),
                key: "/tls/ecdsa.key".into()
            },
        ]
    );
    assert!(!ssl.session_tickets);

    let path = temp_file(
        "dp.toml",
        "ssl_cert = \"/f/a.crt\"\nssl_cert_key = \"/f/a.key\"\nssl_session_tickets = false\n",
    );
    let mut args = REQUIRED.to_vec();
    args.extend(["--config", path.to_str().unwrap()]);
    let ssl = parse(&args).unwrap().proxy.tls;
    assert_eq!(ssl.certs.len(), 1);
    assert!(!ssl.session_tickets);

    for (flags, expected) in [
        (&["--ssl-cert", "/a.crt"][..], "--ssl-cert-key is required"),
        (&["--ssl-cert-key", "/a.key"][..], "--ssl-cert is required"),
        (
            &["--ssl-cert", "/a,/b", "--ssl-cert-key", "/k"][..],
            "lists 2 file(s) but --ssl-cert-key lists 1",
        ),
        (
            &["--ssl-cert", "/a,/b,/c", "--ssl-cert-key", "/k,/l,/m"][..],
            "at most 2 certificates",
        ),
        (
            &["--ssl-session-tickets", "maybe"][..],
            "'maybe' is not one of on, off",
        ),
    ] {
        let mut args = REQUIRED.to_vec();
        args.extend(flags);
        let err = parse(&args).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected} in {err}");
    }
}

#[test]
fn proxy_listeners() {
    let defaults = parse(&REQUIRED).unwrap();
    assert_eq!(
        defaults.proxy_listen,
        vec![DEFAULT_PROXY_LISTEN.parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(
        defaults.proxy_ssl_listen,
        vec![DEFAULT_PROXY_SSL_LISTEN.parse::<SocketAddr>().unwrap()]
    );

    let mut args = REQUIRED.to_vec();
    args.extend([
        "--proxy-listen",
        "127.0.0.1:0, [::1]:8080",
        "--proxy-ssl-listen",
        "off",
    ]);
    let settings = parse(&args).unwrap();
    assert_eq!(
        settings.proxy_listen,
        vec![
            "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
            "[::1]:8080".parse().unwrap()
        ]
    );
    assert!(settings.proxy_ssl_listen.is_empty());

    let file = temp_file(
        "proxy.toml",
        "proxy_listen = \"off\"\nproxy_ssl_listen = \"0.0.0.0:9443\"\n",
    );
    let mut args = REQUIRED.to_vec();
    args.extend(["--config", file.to_str().unwrap()]);
    let settings = parse(&args).unwrap();
    assert!(settings.proxy_listen.is_empty());
    assert_eq!(settings.proxy_ssl_listen[0].port(), 9443);

    for (flags, expected) in [
        (
            &["--proxy-listen", "localhost:80"][..],
            "--proxy-listen: 'localhost:80'",
        ),
        (
            &["--proxy-ssl-listen", ""][..],
            "--proxy-ssl-listen: no address given",
        ),
        (
            &["--proxy-listen", "127.0.0.1:1,127.0.0.1:1"][..],
            "127.0.0.1:1 is given more than once",
        ),
    ] {
        let mut args = REQUIRED.to_vec();
        args.extend(flags);
        let err = parse(&args).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected} in {err}");
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn trusted_ips_match_addresses_and_blocks() {
    let trusted =
        TrustedIps::parse(" 10.0.0.0/8, 192.168.1.7,2001:db8::/32 , ::1,172.16.0.1/12").unwrap();
    for yes in [
        "10.0.0.0",
        "10.255.255.255",
        "192.168.1.7",
        "2001:db8::1",
        "2001:db8:ffff::",
        "::1",
        "172.31.255.255",
        // IPv4-mapped IPv6 peers (dual-stack sockets) match as IPv4.
        "::ffff:10.1.2.3",
    ] {
        assert!(trusted.contains(ip(yes)), "{yes}");
    }
    for no in [
        "11.0.0.0",
        "192.168.1.8",
        "2001:db9::",
        "::2",
        "172.32.0.0",
        "127.0.0.1",
        "::ffff:11.0.0.1",
    ] {
        assert!(!trusted.contains(ip(no)), "{no}");
    }

    let none = TrustedIps::parse("").unwrap();
    assert!(none.is_empty());
    assert!(!none.contains(ip("127.0.0.1")) && !none.contains(ip("::1")));

    let all = TrustedIps::parse("0.0.0.0/0,::/0").unwrap();
    for any in [
        "1.2.3.4",
        "255.255.255.255",
        "::",
        "fe80::1",
        "::ffff:1.2.3.4",
    ] {
        assert!(all.contains(ip(any)), "{any}");
    }
    // Only IPv4 trusted: IPv6 peers are not.
    let v4 = TrustedIps::parse("0.0.0.0/0").unwrap();
    assert!(v4.contains(ip("8.8.8.8")) && !v4.contains(ip("2001:db8::1")));
    // Host bits of a block are ignored.
    assert!(
        TrustedIps::parse("10.1.2.3/8")
            .unwrap()
            .contains(ip("10.9.9.9"))
    );

    let bad = TrustedIps::parse("10.0.0.0/33,::/129,nope,1.2.3.4/x,1.2.3.4").unwrap_err();
    assert_eq!(bad.len(), 4, "{bad:?}");
}

#[test]
fn trusted_ips_setting() {
    let mut args = REQUIRED.to_vec();
    args.extend(["--trusted-ips", "127.0.0.1,::1/128"]);
    let trusted = parse(&args).unwrap().proxy.trusted_ips;
    assert!(trusted.contains(ip("127.0.0.1")) && trusted.contains(ip("::1")));
    assert!(!trusted.contains(ip("127.0.0.2")));

    let path = temp_file("dp.toml", "trusted_ips = \"10.0.0.0/8\"\n");
    let mut args = REQUIRED.to_vec();
    args.extend(["--config", path.to_str().unwrap()]);
    let trusted = parse(&args).unwrap().proxy.trusted_ips;
    assert!(trusted.contains(ip("10.2.3.4")));
    // The flag wins over the file.
    args.extend(["--trusted-ips", "192.0.2.1"]);
    let trusted = parse(&args).unwrap().proxy.trusted_ips;
    assert!(trusted.contains(ip("192.0.2.1")) && !trusted.contains(ip("10.2.3.4")));

    // Reported with the other problems.
    let mut args = REQUIRED.to_vec();
    args.extend(["--trusted-ips", "1.2.3.4/40,x", "--log-format", "xml"]);
    let err = parse(&args).unwrap_err().to_string();
    for expected in [
        "--trusted-ips: '1.2.3.4/40'",
        "--trusted-ips: 'x' is not an IP",
        "--log-format",
    ] {
        assert!(err.contains(expected), "{expected} in {err}");
    }
}

#[test]
fn client_timeouts_drain_and_worker_threads() {
    let defaults = parse(&REQUIRED).unwrap();
    assert_eq!(defaults.proxy.timeouts, ClientTimeouts::default());
    assert_eq!(defaults.proxy.timeouts.header, Duration::from_secs(60));
    assert_eq!(defaults.drain_timeout, Duration::from_secs(10));
    assert_eq!(defaults.worker_threads, None);

    let mut args = REQUIRED.to_vec();
    args.extend([
        "--client-header-timeout",
        "500ms",
        "--client-body-timeout",
        "2m",
        "--drain-timeout",
        "3",
        "--worker-threads",
        "1",
    ]);
    let settings = parse(&args).unwrap();
    assert_eq!(settings.proxy.timeouts.header, Duration::from_millis(500));
    assert_eq!(settings.proxy.timeouts.body, Duration::from_secs(120));
    assert_eq!(settings.drain_timeout, Duration::from_secs(3));
    assert_eq!(settings.worker_threads, Some(1));

    let path = temp_file(
        "dp.toml",
        "client_header_timeout = 5\nclient_body_timeout = \"1.5s\"\ndrain_timeout = 0.25\n\
         worker_threads = 2\n",
    );
    let mut args = REQUIRED.to_vec();
    args.extend(["--config", path.to_str().unwrap()]);
    let settings = parse(&args).unwrap();
    assert_eq!(settings.proxy.timeouts.header, Duration::from_secs(5));
    assert_eq!(settings.proxy.timeouts.body, Duration::from_millis(1500));
    assert_eq!(settings.drain_timeout, Duration::from_millis(250));
    assert_eq!(settings.worker_threads, Some(2));

    let mut args = REQUIRED.to_vec();
    args.extend([
        "--client-header-timeout",
        "soon",
        "--client-body-timeout",
        "0",
        "--drain-timeout",
        "5h",
        "--worker-threads",
        "0",
    ]);
    let err = parse(&args).unwrap_err().to_string();
    for expected in [
        "--client-header-timeout: 'soon' is not a duration",
        "--client-body-timeout: '0' must be more than 0",
        "--drain-timeout: '5h' has an unknown unit",
        "--worker-threads: '0' is not a number from 1 to 1024",
    ] {
        assert!(err.contains(expected), "{expected} in {err}");
    }
}

#[test]
fn client_head_limits() {
    let defaults = parse(&REQUIRED).unwrap().proxy.limits;
    assert_eq!(defaults, ClientLimits::default());
    assert_eq!(
        (defaults.request_line, defaults.header, defaults.headers),
        (8192, 8192, 32768)
    );

    let mut args = REQUIRED.to_vec();
    args.extend([
        "--client-max-request-line",
        "16k",
        "--client-max-header-size",
        "4096",
        "--client-max-headers-size",
        "1m",
    ]);
    let limits = parse(&args).unwrap().proxy.limits;
    assert_eq!(
        (limits.request_line, limits.header, limits.headers),
        (16384, 4096, 1 << 20)
    );

    let path = temp_file(
        "limits.toml",
        "client_max_request_line = 2048\nclient_max_header_size = \"2k\"\n",
    );
    let mut args = REQUIRED.to_vec();
    args.extend(["--config", path.to_str().unwrap()]);
    let limits = parse(&args).unwrap().proxy.limits;
    assert_eq!(
        (limits.request_line, limits.header, limits.headers),
        (2048, 2048, 32768)
    );

    let mut args = REQUIRED.to_vec();
    args.extend([
        "--client-max-request-line",
        "big",
        "--client-max-header-size",
        "100",
        "--client-max-headers-size",
        "8g",
    ]);
    let mut too_long = REQUIRED.to_vec();
    too_long.extend(["--client-max-request-line", "65537"]);
    let err = parse(&too_long).unwrap_err().to_string();
    assert!(
        err.contains("--client-max-request-line: 65537 bytes is more than 64k"),
        "{err}"
    );
    let err = parse(&args).unwrap_err().to_string();
    for expected in [
        "--client-max-request-line: 'big' is not a size",
        "--client-max-header-size: '100' must be from 1k to 1m",
        "--client-max-headers-size: '8g' has an unknown unit",
    ] {
        assert!(err.contains(expected), "{expected} in {err}");
    }
}

#[test]
fn upstream_tls_defaults_and_client_ssl() {
    let defaults = parse(&REQUIRED).unwrap().proxy.upstream;
    assert_eq!(defaults, UpstreamTlsFiles::default());
    assert!(defaults.verify, "verification is on unless turned off");

    let mut args = REQUIRED.to_vec();
    args.extend([
        "--upstream-tls-verify",
        "off",
        "--upstream-tls-verify-depth",
        "2",
        "--upstream-trusted-ca",
        "/pki/bundle.pem",
        "--client-ssl",
        "on",
        "--client-ssl-cert",
        "/pki/gw.crt",
        "--client-ssl-cert-key",
        "/pki/gw.key",
    ]);
    let upstream = parse(&args).unwrap().proxy.upstream;
    assert!(!upstream.verify);
    assert_eq!(upstream.verify_depth, Some(2));
    assert_eq!(upstream.trusted_ca, Some(PathBuf::from("/pki/bundle.pem")));
    assert_eq!(
        upstream.client_cert,
        Some(CertKeyFiles {
            cert: "/pki/gw.crt".into(),
            key: "/pki/gw.key".into()
        })
    );

    for (flags, expected) in [
        (
            &["--client-ssl", "on"][..],
            "--client-ssl-cert is required with --client-ssl on",
        ),
        (
            &[
                "--client-ssl-cert",
                "/a.crt",
                "--client-ssl-cert-key",
                "/a.key",
            ][..],
            "are given but --client-ssl is off",
        ),
        (
            &["--upstream-tls-verify", "yes"][..],
            "--upstream-tls-verify: 'yes' is not one of on, off",
        ),
        (
            &["--upstream-tls-verify-depth", "101"][..],
            "is not a number from 0 to 100",
        ),
    ] {
        let mut args = REQUIRED.to_vec();
        args.extend(flags);
        let err = parse(&args).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected} in {err}");
    }
}

#[test]
fn upstream_keepalive_pools() {
    let defaults = parse(&REQUIRED).unwrap().proxy.upstream_keepalive;
    assert_eq!(defaults, UpstreamKeepalive::default());
    assert_eq!(defaults.idle_timeout, Duration::from_secs(60));
    assert_eq!(defaults.pool_size, 512);

    let mut args = REQUIRED.to_vec();
    args.extend([
        "--upstream-keepalive-idle-timeout",
        "5m",
        "--upstream-keepalive-pool-size",
        "64",
    ]);
    let keepalive = parse(&args).unwrap().proxy.upstream_keepalive;
    assert_eq!(keepalive.idle_timeout, Duration::from_secs(300));
    assert_eq!(keepalive.pool_size, 64);

    let mut args = REQUIRED.to_vec();
    args.extend(["--upstream-keepalive-pool-size", "lots"]);
    let err = parse(&args).unwrap_err().to_string();
    assert!(
        err.contains("--upstream-keepalive-pool-size: 'lots' is not a number"),
        "{err}"
    );
}

#[test]
fn a_bootstrap_token_enrols_in_pki_mode_with_the_identity_in_the_cache_dir() {
    let settings = parse(&[
        "--cluster-bootstrap-token",
        " ghbt_secret ",
        "--cluster-ca-cert",
        "/etc/gh/ca.crt",
        "--cache-dir",
        "/var/lib/dp",
    ])
    .unwrap();
    let cluster = &settings.cluster;
    assert_eq!(cluster.mode, ClusterMtls::Pki);
    let identity = PathBuf::from("/var/lib/dp/cluster-identity.pem");
    assert_eq!(
        (&cluster.files.cert, &cluster.files.key),
        (&identity, &identity)
    );
    assert_eq!(
        cluster.bootstrap_token,
        Some(BootstrapToken("ghbt_secret".into()))
    );
    // Never printed.
    assert!(!format!("{settings:?}").contains("ghbt_secret"));

    // Without it, nothing changes.
    assert_eq!(parse(&REQUIRED).unwrap().cluster.bootstrap_token, None);

    let err = parse(&[&["--cluster-bootstrap-token", "t"][..], &REQUIRED[..]].concat())
        .unwrap_err()
        .to_string();
    assert!(err.contains("replaces --cluster-cert"), "{err}");
    assert!(err.contains("needs --cluster-ca-cert"), "{err}");
    let err = parse(&[
        "--cluster-bootstrap-token",
        "t",
        "--cluster-mtls",
        "shared",
        "--cluster-ca-cert",
        "/ca",
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs --cluster-mtls pki"), "{err}");
    assert!(
        !err.contains("--cluster-cert ("),
        "no certificate required: {err}"
    );
}
