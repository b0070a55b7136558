//! TLS to Postgres, with real handshakes against the tests' own Postgres (which runs with
//! `ssl=on` and a self-signed certificate for `localhost`): `pg_stat_ssl` says whether the
//! app's connections are encrypted, and certificates that do not verify stop start-up.

use std::sync::Arc;

use contextd::config::{Secret, Settings};
use contextd::startup::App;

use crate::harness::{Backend, TestApp, TestDb, admin_url, connect};

/// The server's certificate file (self-signed, so it is its own CA), as Postgres reports it.
async fn server_certificate() -> String {
    let admin = connect(&admin_url()).await;
    let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(
        ssl, "on",
        "the tests' Postgres must run with ssl=on (scripts/test.sh starts one so)"
    );
    admin
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0)
}

/// `database`'s URL with `host` and TLS parameters.
fn url_with(db: &TestDb, host: &str, query: &str) -> String {
    let url = db.url().replacen("127.0.0.1", host, 1);
    format!("{url}?{query}")
}

/// Whether the app's connections to `database` are encrypted: (any, all), from pg_stat_ssl.
async fn app_connections_encrypted(database: &str) -> (bool, bool) {
    let admin = connect(&admin_url()).await;
    let row = admin
        .query_one(
            "SELECT coalesce(bool_or(s.ssl), false), coalesce(bool_and(s.ssl), false), count(*)
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND a.application_name = 'contextd'",
            &[&database],
        )
        .await
        .unwrap();
    let count: i64 = row.get(2);
    assert!(count > 0, "the app holds no connection to {database}");
    (row.get(0), row.get(1))
}

async fn start(db: Arc<TestDb>, url: String) -> TestApp {
    let settings = TestApp::settings_for(&url);
    let app = TestApp::start(db, settings).await;
    app.put_data("tls", serde_json::json!({"over": "tls"}))
        .await;
    app
}

/// Start-up with this URL fails; the error's text.
async fn refused(url: String) -> String {
    let mut settings = Settings::default();
    settings.database.url = Some(Secret::new(url));
    settings.database.connect_timeout_seconds = 2;
    settings.server.bind = "127.0.0.1:0".parse().unwrap();
    match App::build(&settings).await {
        Ok(_) => panic!("start-up took a certificate that does not verify"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn the_default_prefer_and_require_encrypt_and_disable_does_not() {
    server_certificate().await;
    for (query, encrypted) in [
        ("application_name=contextd", true),
        ("sslmode=prefer", true),
        ("sslmode=require", true),
        ("sslmode=disable", false),
    ] {
        let db = Arc::new(TestDb::new(Backend::Postgres).await);
        let name = db.name.clone();
        let _app = start(db.clone(), url_with(&db, "127.0.0.1", query)).await;
        assert_eq!(
            app_connections_encrypted(&name).await,
            (encrypted, encrypted),
            "{query}"
        );
    }
}

#[tokio::test]
async fn verify_ca_and_verify_full_check_the_certificate_with_sslrootcert() {
    let certificate = server_certificate().await;
    // verify-ca: the chain only, so 127.0.0.1 (not a name in the certificate) is fine.
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let name = db.name.clone();
    let app = start(
        db.clone(),
        url_with(
            &db,
            "127.0.0.1",
            &format!("sslmode=verify-ca&sslrootcert={certificate}"),
        ),
    )
    .await;
    assert_eq!(app_connections_encrypted(&name).await, (true, true));
    drop(app);
    // verify-full: by the name the certificate holds.
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let name = db.name.clone();
    let _app = start(
        db.clone(),
        url_with(
            &db,
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={certificate}"),
        ),
    )
    .await;
    assert_eq!(app_connections_encrypted(&name).await, (true, true));
}

#[tokio::test]
async fn a_certificate_that_does_not_verify_stops_start_up_saying_tls_and_why() {
    let certificate = server_certificate().await;
    let db = TestDb::new(Backend::Postgres).await;
    // A CA that did not sign the server's certificate. (Not the system roots: a machine's
    // store may hold the very certificate, as Debian's SSL_CERT_DIR holds its snakeoil.)
    let other_ca =
        std::env::temp_dir().join(format!("contextd-other-ca-{}.pem", std::process::id()));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-keyout",
            "/dev/null",
            "-days",
            "1",
            "-subj",
            "/CN=not the server's CA",
        ])
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let untrusted = refused(url_with(
        &db,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", other_ca.display()),
    ))
    .await;
    let _ = std::fs::remove_file(&other_ca);
    assert!(untrusted.contains("TLS handshake failed"), "{untrusted}");
    assert!(
        untrusted.contains("not signed by a trusted CA"),
        "{untrusted}"
    );
    // Trusted, but 127.0.0.1 is not a name the certificate holds.
    let wrong_name = refused(url_with(
        &db,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={certificate}"),
    ))
    .await;
    assert!(wrong_name.contains("TLS handshake failed"), "{wrong_name}");
    assert!(
        wrong_name.contains("does not name the host"),
        "{wrong_name}"
    );
    // A CA file that is not there is named.
    let missing = refused(url_with(
        &db,
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/root.crt",
    ))
    .await;
    assert!(missing.contains("/nonexistent/root.crt"), "{missing}");
}
