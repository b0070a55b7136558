//! The Redis fixtures of `tests/common/redis_servers.rs` work: a TLS-only server that answers
//! only TLS clients that trust its CA (and, with a password, only the right credentials), and a
//! three-master Redis Cluster that spreads keys over its nodes. Checked with `redis-cli` and
//! `openssl s_client`, independently of how contextd configures its Redis client.

#[path = "common/redis_servers.rs"]
mod redis_servers;

use std::process::Command;

use redis_servers::{CLI_LIMIT, RedisCluster, TlsRedis, redis_cli, run_bounded};

#[test]
fn tls_redis_answers_only_tls_clients_that_trust_its_ca() {
    let redis = TlsRedis::start();
    let port = redis.port().to_string();
    assert_eq!(redis.url(), format!("rediss://127.0.0.1:{port}"));
    assert_eq!(redis.url_with_credentials(), redis.url());
    let ca = redis.ca_file();
    let untrusted = redis.untrusted_ca_file();
    let (ca, untrusted) = (ca.to_str().unwrap(), untrusted.to_str().unwrap());

    let out = redis_cli(["-e", "--tls", "--cacert", ca, "-p", &port, "ping"]);
    assert_eq!(out.stdout.trim(), "PONG", "{out:?}\n{}", redis.log());
    let out = redis.cli(&["set", "greeting", "hi"]);
    assert_eq!(out.stdout.trim(), "OK", "{out:?}");
    assert_eq!(redis.cli(&["get", "greeting"]).stdout.trim(), "hi");

    let out = redis_cli(["-e", "--tls", "--cacert", untrusted, "-p", &port, "ping"]);
    assert!(!out.success(), "{out:?}");
    assert!(!out.stdout.contains("PONG"), "{out:?}");
    assert!(out.text().contains("certificate verify failed"), "{out:?}");

    let out = redis_cli(["-e", "-p", &port, "ping"]);
    assert!(!out.success() && !out.text().contains("PONG"), "{out:?}");

    // The certificate names what clients that check names (rustls does) will dial.
    let s_client = |extra: &[&str]| {
        let connect = format!("127.0.0.1:{port}");
        let mut cmd = Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &connect,
            "-CAfile",
            ca,
            "-verify_return_error",
        ]);
        run_bounded(cmd.args(extra), CLI_LIMIT)
    };
    for check in [
        ["-verify_ip", "127.0.0.1"],
        ["-verify_hostname", "localhost"],
    ] {
        let out = s_client(&check);
        assert!(out.success(), "{check:?}: {out:?}");
        assert!(out.stdout.contains("Verify return code: 0 (ok)"), "{out:?}");
    }
    let out = s_client(&["-verify_hostname", "example.com"]);
    assert!(!out.success(), "a name not in the certificate: {out:?}");

    let dir = redis.dir().to_owned();
    drop(redis);
    assert!(!dir.exists(), "{} is left after drop", dir.display());
    let out = redis_cli(["--tls", "--cacert", ca, "-p", &port, "ping"]);
    assert!(
        !out.text().contains("PONG"),
        "still answers after drop: {out:?}"
    );
}

#[test]
fn tls_redis_with_a_password_wants_the_right_one() {
    let redis = TlsRedis::start_with_password("contextd", "s3cret/pass");
    let port = redis.port().to_string();
    let ca = redis.ca_file();
    let ca = ca.to_str().unwrap();
    assert_eq!(redis.credentials(), Some(("contextd", "s3cret/pass")));
    assert_eq!(
        redis.url_with_credentials(),
        format!("rediss://contextd:s3cret%2Fpass@127.0.0.1:{port}")
    );
    let tls = ["--no-auth-warning", "--tls", "--cacert", ca, "-p", &port];
    let with = |extra: &[&str]| redis_cli(tls.iter().chain(extra));

    let out = with(&["--user", "contextd", "--pass", "s3cret/pass", "ping"]);
    assert_eq!(out.stdout.trim(), "PONG", "{out:?}\n{}", redis.log());
    assert_eq!(redis.cli(&["ping"]).stdout.trim(), "PONG");
    // The URL with credentials works as is (redis-cli decodes %2F).
    let url = redis.url_with_credentials();
    let out = redis_cli([
        "--tls",
        "--cacert",
        ca,
        "-u",
        &url,
        "--no-auth-warning",
        "ping",
    ]);
    assert_eq!(out.stdout.trim(), "PONG", "{out:?}");

    let out = with(&["-e", "--user", "contextd", "--pass", "wrong", "ping"]);
    assert!(out.text().contains("WRONGPASS"), "{out:?}");
    assert!(!out.text().contains("PONG"), "{out:?}");
    let out = with(&["-e", "--user", "someone", "--pass", "s3cret/pass", "ping"]);
    assert!(out.text().contains("WRONGPASS"), "{out:?}");
    // No credentials: the default user is off.
    let out = with(&["-e", "ping"]);
    assert!(out.text().contains("NOAUTH"), "{out:?}");
    let out = with(&["-e", "--user", "default", "--pass", "s3cret/pass", "ping"]);
    assert!(out.text().contains("WRONGPASS"), "{out:?}");

    // The `default` user: `--requirepass`.
    let redis = TlsRedis::start_with_password("default", "pw");
    let port = redis.port().to_string();
    let ca = redis.ca_file();
    let tls = [
        "--no-auth-warning",
        "--tls",
        "--cacert",
        ca.to_str().unwrap(),
        "-p",
        &port,
    ];
    let with = |extra: &[&str]| redis_cli(tls.iter().chain(extra));
    assert_eq!(with(&["-a", "pw", "ping"]).stdout.trim(), "PONG");
    assert_eq!(redis.cli(&["ping"]).stdout.trim(), "PONG");
    assert!(with(&["-e", "ping"]).text().contains("NOAUTH"));
    assert!(
        with(&["-e", "-a", "nope", "ping"])
            .text()
            .contains("WRONGPASS")
    );
}

#[test]
fn redis_cluster_spreads_keys_over_its_three_masters() {
    let cluster = RedisCluster::start();
    let nodes = cluster.nodes();
    let ports = cluster.ports();
    assert_eq!(nodes.len(), 3);
    assert_eq!(cluster.seed_url(), format!("redis://{}", nodes[0]));
    for (node, port) in nodes.iter().zip(&ports) {
        assert_eq!(*node, format!("127.0.0.1:{port}"));
    }

    for i in 0..20 {
        let out = cluster.cli(&["set", &format!("fixture:{{tag-{i}}}"), &format!("v{i}")]);
        assert_eq!(out.stdout.trim(), "OK", "{out:?}\n{}", cluster.logs());
    }
    for i in 0..20 {
        let out = cluster.cli(&["get", &format!("fixture:{{tag-{i}}}")]);
        assert_eq!(out.stdout.trim(), format!("v{i}"), "{out:?}");
    }
    let counts = cluster.keys_per_node("fixture:*");
    assert_eq!(counts.iter().sum::<usize>(), 20, "{counts:?}");
    assert!(
        counts.iter().filter(|&&n| n > 0).count() > 1,
        "all keys on one node: {counts:?}"
    );
    // Without -c, only the owner answers; the others redirect.
    for i in 0..20 {
        let key = format!("fixture:{{tag-{i}}}");
        let replies: Vec<String> = (0..3)
            .map(|n| cluster.node_cli(n, &["get", &key]).text())
            .collect();
        assert_eq!(
            replies.iter().filter(|r| **r == format!("v{i}")).count(),
            1,
            "{replies:?}"
        );
        assert_eq!(
            replies.iter().filter(|r| r.starts_with("MOVED")).count(),
            2,
            "{replies:?}"
        );
    }

    for i in 0..3 {
        let info = cluster.node_cli(i, &["cluster", "info"]).stdout;
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
        assert!(info.contains("cluster_size:3"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    }
    let out = cluster.cli(&["cluster", "nodes"]);
    assert_eq!(out.stdout.matches("master").count(), 3, "{out:?}");

    let dir = cluster.dir().to_owned();
    drop(cluster);
    assert!(!dir.exists(), "{} is left after drop", dir.display());
    for port in ports {
        let out = redis_cli(["-p", &port.to_string(), "ping"]);
        assert!(
            !out.text().contains("PONG"),
            ":{port} answers after drop: {out:?}"
        );
    }
}
