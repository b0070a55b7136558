//! Start, stop, restart: migrations, durability, graceful shutdown.

use std::sync::Arc;

use contextd::startup::App;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Setup, TestApp, TestDb};

async fn data_survives_a_restart(store: Setup) {
    let app = TestApp::spawn(store).await;
    app.put_data("durable", json!({"a": 1})).await;
    app.put_data("durable", json!({"a": 2})).await;
    let app = app.restart().await;
    let body: Value = app.get("/contexts/durable").await.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert_eq!(body["data"], json!({"a": 2}));
    let v1: Value = app
        .get("/contexts/durable/versions/1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v1["data"], json!({"a": 1}));
}

async fn two_instances_starting_at_once_on_a_new_database_both_come_up_and_migrate_once(
    store: Setup,
) {
    let db = TestDb::fresh(store.backend);
    let settings = TestApp::settings_for(&db.url());
    let (a, b) = tokio::join!(App::build(&settings), App::build(&settings));
    let (a, b) = (a.expect("first instance"), b.expect("second instance"));
    drop((a, b));

    let applied = db
        .query("SELECT version FROM contextd_schema_migrations ORDER BY version")
        .await;
    assert_eq!(
        applied,
        vec![
            vec![json!(1)],
            vec![json!(2)],
            vec![json!(3)],
            vec![json!(4)]
        ]
    );

    // And a third start on the migrated database changes nothing.
    let app = TestApp::start(Arc::new(db), settings).await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

/// The reported fault: a connection opened and never used (a load balancer's pre-connect, a
/// client pool's spare) held the server's exit until the header timeout ran out. It has no
/// request to finish, so the stop closes it at once.
async fn a_connection_that_sent_nothing_does_not_hold_up_the_stop(store: Setup) {
    let mut app = TestApp::spawn_with(store, |s| s.server.header_timeout_seconds = 60).await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let stopping = app.begin_stop();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), stopping).await;
    assert!(
        stopped.is_ok(),
        "the server still waited on a connection that never sent a byte"
    );
    stopped.unwrap().unwrap().unwrap();
    // And the connection was closed, not left open.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(1), idle.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}

async fn a_request_in_flight_when_shutdown_begins_still_completes(store: Setup) {
    let mut app = TestApp::spawn(store).await;
    let body = r#"{"data": {"finished": true}, "source": "mcp"}"#;
    let (head, tail) = body.split_at(10);
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "PUT /contexts/inflight HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{head}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Let the server start on the request, then ask it to stop.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let stopping = app.begin_stop();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stream.write_all(tail.as_bytes()).await.unwrap();

    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    stopping.await.unwrap().unwrap();

    let app = TestApp::start(app.db.clone(), app.settings.clone()).await;
    let stored: Value = app.get("/contexts/inflight").await.json().await.unwrap();
    assert_eq!(stored["data"], json!({"finished": true}));
}

crate::on_both_stores!(
    data_survives_a_restart,
    two_instances_starting_at_once_on_a_new_database_both_come_up_and_migrate_once,
    a_request_in_flight_when_shutdown_begins_still_completes,
    a_connection_that_sent_nothing_does_not_hold_up_the_stop,
);
