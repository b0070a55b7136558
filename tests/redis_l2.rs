//! The Redis L2 against a real Redis: `CONTEXTD_TEST_REDIS_URL`, else 127.0.0.1:6379. Each test
//! uses its own key prefix, so tests can run in parallel and leave nothing that outlives its TTL.
//! The fault test starts (and kills) its own `redis-server` on a free port.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use contextd::cache::Stamp;
use contextd::cache::l2::{L2Lookup, L2Settings, RedisL2};
use contextd::domain::ContextId;
use tokio::sync::mpsc;

/// The incarnation (created_at) of the contexts whose versions these tests cache.
fn born() -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    chrono::Utc.timestamp_micros(1_700_000_000_000_000).unwrap()
}

fn redis_url() -> String {
    std::env::var("CONTEXTD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn settings(url: &str) -> L2Settings {
    L2Settings {
        url: url.to_owned(),
        key_prefix: format!("contextd-test:{}:", uuid::Uuid::new_v4()),
        ttl: Duration::from_secs(60),
        version_ttl: Duration::from_secs(60),
        command_timeout: Duration::from_millis(100),
        cluster: false,
        tls_ca_file: None,
    }
}

async fn connect(settings: L2Settings) -> RedisL2 {
    let l2 = RedisL2::connect(settings).await.expect("a well-formed URL");
    assert!(l2.ping().await, "Redis must be reachable for this test");
    l2
}

fn id(raw: &str) -> ContextId {
    ContextId::parse(raw).unwrap()
}

/// The stamp of version `version` of the incarnation created `created` microseconds after 2024.
fn stamp(created: i64, version: i64) -> Stamp {
    let micros = 1_704_067_200_000_000 + created;
    Stamp::decode(&format!("{micros:020}:{version:020}")).unwrap()
}

fn tombstone(created: i64) -> Stamp {
    stamp(created, i64::MAX)
}

fn hit(bytes: &'static str) -> L2Lookup {
    L2Lookup::Hit(Bytes::from_static(bytes.as_bytes()))
}

fn value(bytes: &'static str) -> Bytes {
    Bytes::from_static(bytes.as_bytes())
}

/// Polls `check` until it holds, failing the test at `limit`.
async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_entry_is_read_back_and_an_unknown_id_is_a_miss() {
    let l2 = connect(settings(&redis_url())).await;
    let a = id("ctx-a");

    assert_eq!(l2.get(&a).await, L2Lookup::Miss);
    assert!(l2.put(&a, stamp(0, 1), value("{\"v\":1}")).await);
    assert_eq!(l2.get(&a).await, hit("{\"v\":1}"));
    assert_eq!(l2.get(&id("ctx-b")).await, L2Lookup::Miss);

    let stats = l2.stats();
    assert_eq!((stats.hits, stats.misses, stats.errors), (1, 2, 0));
    assert!(stats.connected && !stats.breaker_open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_stamp_never_overwrites_a_newer_one() {
    let l2 = connect(settings(&redis_url())).await;
    let a = id("ctx-a");

    assert!(l2.put(&a, stamp(0, 2), value("v2")).await);
    assert!(
        !l2.put(&a, stamp(0, 1), value("v1")).await,
        "older version refused"
    );
    assert_eq!(l2.get(&a).await, hit("v2"));
    assert!(
        l2.put(&a, stamp(0, 2), value("v2")).await,
        "the same stamp may refill"
    );
    assert!(
        l2.put(&a, stamp(0, 10), value("v10")).await,
        "10 sorts after 2"
    );
    assert_eq!(l2.get(&a).await, hit("v10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_refuses_late_puts_of_its_incarnation_but_not_a_re_created_context() {
    let l2 = connect(settings(&redis_url())).await;
    let a = id("ctx-a");

    assert!(l2.put(&a, stamp(0, 3), value("first life, v3")).await);
    assert!(l2.delete(&a, tombstone(0)).await);
    assert_eq!(l2.get(&a).await, L2Lookup::Tombstone);
    assert!(!l2.put(&a, stamp(0, 3), value("late fill")).await);
    assert!(
        !l2.put(&a, stamp(0, 7), value("later version, same life"))
            .await
    );
    assert_eq!(l2.get(&a).await, L2Lookup::Tombstone);

    assert!(l2.put(&a, stamp(1, 1), value("second life, v1")).await);
    assert_eq!(l2.get(&a).await, hit("second life, v1"));
    assert!(
        !l2.delete(&a, tombstone(0)).await,
        "an old delete is refused too"
    );
    assert_eq!(l2.get(&a).await, hit("second life, v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_entries_live_apart_from_the_current_entry_and_forget_drops_them() {
    let l2 = connect(settings(&redis_url())).await;
    let a = id("ctx:a");

    l2.put_version(&a, born(), 1, value("a v1")).await;
    l2.put_version(&a, born(), 2, value("a v2")).await;
    assert_eq!(l2.get_version(&a, born(), 1).await, hit("a v1"));
    assert_eq!(l2.get_version(&a, born(), 2).await, hit("a v2"));
    assert_eq!(l2.get_version(&a, born(), 3).await, L2Lookup::Miss);
    // A re-created `a` (a later incarnation) never meets its predecessor's versions.
    let reborn = born() + chrono::Duration::seconds(1);
    assert_eq!(l2.get_version(&a, reborn, 1).await, L2Lookup::Miss);
    assert_eq!(
        l2.get(&a).await,
        L2Lookup::Miss,
        "versions are not the current entry"
    );
    // Ids may contain ':': the current entry of "ctx:a:v1" is not version 1 of "ctx:a".
    let lookalike = id("ctx:a:v1");
    assert!(l2.put(&lookalike, stamp(0, 1), value("lookalike")).await);
    assert_eq!(l2.get_version(&a, born(), 1).await, hit("a v1"));
    assert_eq!(l2.get(&lookalike).await, hit("lookalike"));

    // Forget drops the versions and the current entry...
    assert!(l2.put(&a, stamp(0, 2), value("a v2")).await);
    l2.forget(&a).await;
    assert_eq!(l2.get_version(&a, born(), 1).await, L2Lookup::Miss);
    assert_eq!(l2.get_version(&a, born(), 2).await, L2Lookup::Miss);
    assert_eq!(l2.get(&a).await, L2Lookup::Miss);
    assert_eq!(
        l2.get(&lookalike).await,
        hit("lookalike"),
        "other ids untouched"
    );

    // ...but not a tombstone, whichever of delete and forget comes first.
    l2.put_version(&a, born(), 1, value("a v1")).await;
    assert!(l2.delete(&a, tombstone(0)).await);
    l2.forget(&a).await;
    assert_eq!(l2.get(&a).await, L2Lookup::Tombstone);
    assert_eq!(l2.get_version(&a, born(), 1).await, L2Lookup::Miss);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_their_ttl() {
    let mut settings = settings(&redis_url());
    settings.ttl = Duration::from_millis(500);
    settings.version_ttl = Duration::from_millis(500);
    let l2 = connect(settings).await;
    let a = id("ctx-a");

    let put_at = Instant::now();
    assert!(l2.put(&a, stamp(0, 1), value("v1")).await);
    l2.put_version(&a, born(), 1, value("v1")).await;
    let b = id("ctx-b");
    assert!(l2.delete(&b, tombstone(0)).await);
    if put_at.elapsed() < Duration::from_millis(400) {
        assert_eq!(l2.get(&a).await, hit("v1"));
        assert_eq!(l2.get_version(&a, born(), 1).await, hit("v1"));
    }
    eventually(Duration::from_secs(5), "entries expire", || async {
        l2.get(&a).await == L2Lookup::Miss
            && l2.get_version(&a, born(), 1).await == L2Lookup::Miss
            && l2.get(&b).await == L2Lookup::Miss
    })
    .await;
    assert!(
        put_at.elapsed() >= Duration::from_millis(500),
        "not before the TTL"
    );
    assert!(
        l2.put(&b, stamp(0, 1), value("the tombstone is gone"))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_number_in_the_url_selects_that_database() {
    let base = redis_url();
    let base = match base.rsplit_once('/') {
        Some((head, db)) if !db.is_empty() && db.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => base.as_str(),
    };
    let one = settings(&format!("{base}/1"));
    let mut two = one.clone();
    two.url = format!("{base}/2");
    let (one, two) = (connect(one).await, connect(two).await);
    let a = id("ctx-a");

    assert!(one.put(&a, stamp(0, 1), value("in db 1")).await);
    assert_eq!(one.get(&a).await, hit("in db 1"));
    assert_eq!(
        two.get(&a).await,
        L2Lookup::Miss,
        "same prefix, other database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_invalidation_reaches_a_subscriber_on_another_instance() {
    let publisher_settings = settings(&redis_url());
    let publisher = connect(publisher_settings.clone()).await;
    let other = connect(publisher_settings).await;
    let (sent, mut received) = mpsc::unbounded_channel();
    let resyncs = Arc::new(AtomicUsize::new(0));
    let counted = resyncs.clone();
    let subscription = other.subscribe(
        move |id, stamp| {
            let _ = sent.send((id, stamp));
        },
        move || {
            counted.fetch_add(1, Ordering::SeqCst);
        },
    );
    eventually(Duration::from_secs(5), "subscribed", || async {
        subscription.is_listening()
    })
    .await;

    let a = id("ctx:a");
    publisher.publish(&a, stamp(5, 3)).await;
    let message = tokio::time::timeout(Duration::from_secs(1), received.recv()).await;
    assert_eq!(message.expect("within 1 s"), Some((a.clone(), stamp(5, 3))));
    publisher.publish(&a, tombstone(5)).await;
    let message = tokio::time::timeout(Duration::from_secs(1), received.recv()).await;
    assert_eq!(message.expect("within 1 s"), Some((a, tombstone(5))));
    assert_eq!(resyncs.load(Ordering::SeqCst), 0, "nothing was missed");

    subscription.stop().await;
    // Another instance's channel (another prefix) is not heard.
    let stranger = connect(settings(&redis_url())).await;
    stranger.publish(&id("ctx:a"), stamp(5, 4)).await;
    assert!(received.try_recv().is_err());
}

/// A `redis-server` of the test's own, killed when dropped.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        Self { port, child }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap(); // SIGKILL: no goodbye to the clients
        self.child.wait().unwrap();
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_costs_requests_nothing_and_everything_recovers_when_it_returns() {
    let mut redis = OwnRedis::start(free_port());
    let mut settings = settings(&redis.url());
    settings.command_timeout = Duration::from_millis(100);
    let l2 = RedisL2::connect(settings.clone()).await.unwrap();
    eventually(Duration::from_secs(10), "redis-server is up", || l2.ping()).await;
    let publisher = connect(settings).await;

    let (sent, mut received) = mpsc::unbounded_channel();
    let resyncs = Arc::new(AtomicUsize::new(0));
    let counted = resyncs.clone();
    let subscription = l2.subscribe(
        move |id, stamp| {
            let _ = sent.send((id, stamp));
        },
        move || {
            counted.fetch_add(1, Ordering::SeqCst);
        },
    );
    eventually(Duration::from_secs(5), "subscribed", || async {
        subscription.is_listening()
    })
    .await;
    let a = id("ctx-a");
    assert!(l2.put(&a, stamp(0, 1), value("v1")).await);
    assert_eq!(l2.get(&a).await, hit("v1"));

    redis.kill();
    let errors_before = l2.stats().errors;
    let (mut calls, mut slowest) = (0, Duration::ZERO);
    let down_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < down_until {
        let started = Instant::now();
        assert_eq!(l2.get(&a).await, L2Lookup::Unavailable);
        slowest = slowest.max(started.elapsed());
        let started = Instant::now();
        assert!(!l2.put(&a, stamp(0, 2), value("v2")).await);
        slowest = slowest.max(started.elapsed());
        let started = Instant::now();
        assert_eq!(l2.get_version(&a, born(), 1).await, L2Lookup::Unavailable);
        slowest = slowest.max(started.elapsed());
        let started = Instant::now();
        l2.publish(&a, stamp(0, 2)).await;
        slowest = slowest.max(started.elapsed());
        calls += 4;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = l2.stats();
    eprintln!("slowest call while Redis was down: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(200),
        "slowest call: {slowest:?}"
    );
    assert!(stats.breaker_open, "{stats:?}");
    assert!(!stats.connected && !l2.is_connected() && !l2.ping().await);
    assert!(!subscription.is_listening());
    // Once open, the breaker answers without Redis: a few calls failed, not all of them.
    let failed = stats.errors - errors_before;
    assert!(
        (3..=10).contains(&failed) && calls > 100,
        "{failed} of {calls} calls reached the client"
    );

    let _redis = OwnRedis::start(redis.port);
    let back = Instant::now();
    eventually(
        Duration::from_secs(15),
        "puts and gets work again",
        || async { l2.put(&a, stamp(0, 3), value("v3")).await && l2.get(&a).await == hit("v3") },
    )
    .await;
    eprintln!("L2 usable again {:?} after the restart", back.elapsed());
    assert!(!l2.stats().breaker_open);
    eventually(
        Duration::from_secs(10),
        "resubscribed and resynced",
        || async { subscription.is_listening() && resyncs.load(Ordering::SeqCst) >= 1 },
    )
    .await;
    while received.try_recv().is_ok() {} // whatever was published before the kill
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        publisher.publish(&a, stamp(0, 4)).await;
        let heard = tokio::time::timeout(Duration::from_millis(200), received.recv()).await;
        if heard == Ok(Some((a.clone(), stamp(0, 4)))) {
            break;
        }
        assert!(Instant::now() < deadline, "invalidations do not flow again");
    }
    subscription.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_requests_at_most_the_command_timeout_and_is_used_again_once_it_answers()
{
    let redis = OwnRedis::start(free_port());
    let l2 = RedisL2::connect(settings(&redis.url())).await.unwrap();
    eventually(Duration::from_secs(10), "redis-server is up", || l2.ping()).await;
    let a = id("ctx-a");
    assert!(l2.put(&a, stamp(0, 1), value("v1")).await);

    // SIGSTOP: the connection stays open, and nothing answers.
    let signal = |name: &str| {
        let status = Command::new("kill")
            .args([name, &redis.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let (mut calls, mut slowest) = (0, Duration::ZERO);
    let hung_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < hung_until {
        let started = Instant::now();
        assert_eq!(l2.get(&a).await, L2Lookup::Unavailable);
        slowest = slowest.max(started.elapsed());
        calls += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal("-CONT");
    let stats = l2.stats();
    eprintln!("slowest call while Redis hung: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(200),
        "slowest call: {slowest:?}"
    );
    assert!(stats.breaker_open, "{stats:?}");
    assert!(
        stats.errors <= 6 && calls > 50,
        "{} of {calls} calls waited for Redis",
        stats.errors
    );

    eventually(Duration::from_secs(15), "gets work again", || async {
        l2.get(&a).await == hit("v1")
    })
    .await;
    assert!(!l2.stats().breaker_open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_url_fails_to_connect_and_an_absent_redis_does_not() {
    assert!(RedisL2::connect(settings("not a url")).await.is_err());
    let with_password = settings("redis://user:secret@127.0.0.1:notaport/0");
    assert!(!format!("{with_password:?}").contains("secret"));
    let error = RedisL2::connect(with_password)
        .await
        .err()
        .expect("a bad port");
    assert!(!format!("{error:#}").contains("secret"), "{error:#}");

    // Nothing listens on a port just freed.
    let started = Instant::now();
    let l2 = RedisL2::connect(settings(&format!("redis://127.0.0.1:{}", free_port())))
        .await
        .expect("connects in the background");
    assert!(started.elapsed() < Duration::from_secs(3));
    let started = Instant::now();
    assert_eq!(l2.get(&id("ctx-a")).await, L2Lookup::Unavailable);
    assert!(!l2.put(&id("ctx-a"), stamp(0, 1), value("v1")).await);
    assert!(started.elapsed() < Duration::from_millis(200));
    assert!(!l2.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_made_while_redis_is_down_resyncs_once_it_is_up() {
    let port = free_port();
    let l2 = RedisL2::connect(settings(&format!("redis://127.0.0.1:{port}")))
        .await
        .unwrap();
    let resyncs = Arc::new(AtomicUsize::new(0));
    let counted = resyncs.clone();
    let subscription = l2.subscribe(
        |_, _| {},
        move || {
            counted.fetch_add(1, Ordering::SeqCst);
        },
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // let it fail a few times
    assert!(!subscription.is_listening());

    let _redis = OwnRedis::start(port);
    eventually(
        Duration::from_secs(10),
        "subscribed and resynced",
        || async { subscription.is_listening() && resyncs.load(Ordering::SeqCst) == 1 },
    )
    .await;
}

#[path = "common/redis_servers.rs"]
mod redis_servers;

use redis_servers::{RedisCluster, TlsRedis};

/// `rediss://`: TLS with the test's own CA (given as `redis.tls_ca_file`), and never a
/// plaintext fallback: a CA that did not sign the certificate leaves Redis unused.
#[tokio::test(flavor = "multi_thread")]
async fn rediss_speaks_tls_with_a_ca_file_and_never_falls_back_to_plaintext() {
    let server = tokio::task::spawn_blocking(TlsRedis::start).await.unwrap();
    let mut trusted = settings(&server.url());
    trusted.tls_ca_file = Some(server.ca_file());
    let l2 = connect(trusted).await;
    let id = id("tls");
    assert!(
        l2.put(&id, stamp(0, 1), Bytes::from_static(b"over tls"))
            .await
    );
    assert_eq!(
        l2.get(&id).await,
        L2Lookup::Hit(Bytes::from_static(b"over tls"))
    );

    let mut untrusted = settings(&server.url());
    untrusted.tls_ca_file = Some(server.untrusted_ca_file());
    let l2 = RedisL2::connect(untrusted).await.unwrap();
    assert!(
        !l2.ping().await,
        "a certificate that does not verify was taken"
    );
    assert_eq!(l2.get(&id).await, L2Lookup::Unavailable);
    // The same port with redis:// (plaintext) is not Redis either.
    let plaintext = RedisL2::connect(settings(&format!("redis://127.0.0.1:{}", server.port())))
        .await
        .unwrap();
    assert!(!plaintext.ping().await);
}

/// An ACL user over TLS, percent-encoded in the URL: works; a wrong password degrades L2
/// (no error reaches a caller) and never stops it from coming back.
#[tokio::test(flavor = "multi_thread")]
async fn an_acl_user_logs_in_over_tls_and_a_wrong_password_only_degrades() {
    let server =
        tokio::task::spawn_blocking(|| TlsRedis::start_with_password("ctx:d", "p@ss:w/rd"))
            .await
            .unwrap();
    let mut right = settings(&server.url_with_credentials());
    right.tls_ca_file = Some(server.ca_file());
    let l2 = connect(right).await;
    assert!(
        l2.put(&id("acl"), stamp(0, 1), Bytes::from_static(b"x"))
            .await
    );

    let wrong_url = server.url_with_credentials().replacen("p%40ss", "nope", 1);
    assert_ne!(wrong_url, server.url_with_credentials());
    let mut wrong = settings(&wrong_url);
    wrong.tls_ca_file = Some(server.ca_file());
    let l2 = RedisL2::connect(wrong).await.unwrap();
    assert!(!l2.ping().await);
    assert_eq!(l2.get(&id("acl")).await, L2Lookup::Unavailable);
}

/// A real three-master cluster: the keys of one context share a slot (scripts touch them
/// together), contexts spread over the nodes, and invalidations reach a subscriber.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_cluster_spreads_contexts_over_its_nodes_and_carries_invalidations() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let mut config = settings(&cluster.seed_url());
    config.cluster = true;
    let prefix = config.key_prefix.clone();
    let writer = connect(config.clone()).await;
    let reader = connect(config).await;
    let (seen, mut heard) = mpsc::unbounded_channel();
    let _subscription = reader.subscribe(
        move |id, _| {
            let _ = seen.send(id);
        },
        || {},
    );
    for n in 0..30 {
        let id = id(&format!("c{n}"));
        assert!(
            writer
                .put(&id, stamp(0, 1), Bytes::from(format!("v{n}")))
                .await,
            "put {n}"
        );
        writer
            .put_version(
                &id,
                chrono::DateTime::UNIX_EPOCH,
                1,
                Bytes::from(format!("v{n}")),
            )
            .await;
        assert_eq!(
            reader.get(&id).await,
            L2Lookup::Hit(Bytes::from(format!("v{n}")))
        );
    }
    let spread = cluster.keys_per_node(&format!("{prefix}*"));
    assert!(
        spread.iter().filter(|n| **n > 0).count() >= 2,
        "every key on one node: {spread:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        writer.publish(&id("c0"), stamp(0, 2)).await;
        match tokio::time::timeout(Duration::from_millis(200), heard.recv()).await {
            Ok(Some(heard)) => {
                assert_eq!(heard, id("c0"));
                break;
            }
            _ => assert!(
                Instant::now() < deadline,
                "no invalidation crossed the cluster"
            ),
        }
    }
}
