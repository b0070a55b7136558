//! Auth: API keys, roles and prefixes, over REST and MCP, on both stores.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contextd::auth::keys::ApiKey;
use contextd::config::{AuthMode, Secret, Settings};
use reqwest::{Method, StatusCode};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, ProtocolVersion,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt};
use serde_json::{Value, json};

use crate::harness::{Backend, PgProxy, Setup, TestApp, TestDb, contextd, problem, use_redis};

/// Longest wait for something that should take well under a second (revocation reaching
/// another instance); the figure itself is a benchmark's business.
const PATIENCE: Duration = Duration::from_secs(5);

/// The three roles, lowest first, as the API names them.
const ROLES: [&str; 3] = ["read", "write", "admin"];

/// An app with auth on and a bootstrap admin key.
struct Secured {
    app: TestApp,
    admin: String,
}

fn secure(settings: &mut Settings, admin: &ApiKey) {
    settings.auth.mode = AuthMode::On;
    settings.auth.bootstrap_key = Some(Secret::new(admin.expose().to_owned()));
}

impl Secured {
    async fn spawn(store: Setup) -> Self {
        let admin = ApiKey::generate().unwrap();
        let app = TestApp::spawn_with(store, |s| secure(s, &admin)).await;
        Self {
            app,
            admin: admin.expose().to_owned(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        send(&self.app, method, path, key, body).await
    }

    /// A new key made through `POST /admin/keys`: (id, key).
    async fn key(&self, role: &str, prefix: Option<&str>) -> (String, String) {
        let mut body = json!({"name": format!("{role} key"), "role": role});
        if let Some(prefix) = prefix {
            body["prefix"] = json!(prefix);
        }
        let response = self
            .send(Method::POST, "/admin/keys", Some(&self.admin), Some(body))
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let made: Value = response.json().await.unwrap();
        (
            made["id"].as_str().unwrap().to_owned(),
            made["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Revokes the key `id` with the admin key.
    async fn revoke(&self, id: &str) {
        let response = self
            .send(
                Method::DELETE,
                &format!("/admin/keys/{id}"),
                Some(&self.admin),
                None,
            )
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    /// The entry of `GET /admin/keys` for the key `id`.
    async fn listed(&self, id: &str) -> Value {
        let listed: Value = self
            .send(Method::GET, "/admin/keys", Some(&self.admin), None)
            .await
            .json()
            .await
            .unwrap();
        let text = listed.to_string();
        assert!(!text.contains(&self.admin), "a key in the listing");
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not listed: {listed}"))
            .clone()
    }

    async fn put(&self, id: &str, body: Value) {
        let response = self
            .send(
                Method::PUT,
                &format!("/contexts/{id}"),
                Some(&self.admin),
                Some(body),
            )
            .await;
        assert!(response.status().is_success(), "{}", response.status());
    }
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app.http.request(method, app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

/// The role each route needs (`None`: open). Every route the router documents must be here:
/// a new route without a policy fails `every_route_answers_each_role_as_its_policy_says`.
fn policy(method: &str, path: &str) -> Option<&'static str> {
    match (method, path) {
        ("GET", "/healthz" | "/readyz" | "/metrics") => None,
        ("GET", "/contexts" | "/contexts/{id}" | "/contexts/{id}/versions")
        | ("GET", "/contexts/{id}/versions/{n}" | "/metrics/summary")
        | ("GET", "/sync/factory/changes" | "/sync/factory/{id}")
        | ("POST", "/contexts/search") => Some("read"),
        ("POST", "/contexts" | "/contexts/merge" | "/contexts/{id}/versions/{n}/restore")
        | ("PUT" | "DELETE", "/contexts/{id}")
        | ("POST", "/sync/factory") => Some("write"),
        ("POST", "/cache/warm" | "/admin/keys")
        | ("GET", "/admin/keys")
        | ("DELETE", "/admin/keys/{id}") => Some("admin"),
        _ => panic!("no auth policy for {method} {path}: add the route to this table"),
    }
}

/// A well-formed body for each route that takes one, so that only auth can refuse it.
fn body_for(method: &str, path: &str) -> Option<Value> {
    Some(match (method, path) {
        ("POST", "/admin/keys") => json!({"name": "spare", "role": "read"}),
        ("POST", "/cache/warm") => json!({"context_ids": ["matrix"]}),
        ("POST", "/contexts") => json!({"data": {"new": true}, "source": "mcp"}),
        ("POST", "/contexts/merge") => {
            json!({"context_ids": ["matrix", "matrix2"], "strategy": "union"})
        }
        ("POST", "/contexts/search") => json!({"vector": [1.0, 0.0, 0.0, 0.0]}),
        ("PUT", "/contexts/{id}") => json!({"data": {"v": 2}, "source": "mcp"}),
        ("POST", "/contexts/{id}/versions/{n}/restore") => json!({}),
        ("POST", "/sync/factory") => json!({"id": "synced", "data": {"f": 1}}),
        _ => return None,
    })
}

async fn every_route_answers_each_role_as_its_policy_says(store: Setup) {
    let secured = Secured::spawn(store).await;
    secured
        .put("matrix", json!({"data": {"v": 1}, "source": "mcp"}))
        .await;
    secured
        .put("matrix2", json!({"data": {"w": 1}, "source": "mcp"}))
        .await;
    let mut keys = Vec::new();
    for role in ROLES {
        keys.push((role, secured.key(role, None).await.1));
    }
    let document = contextd::api::openapi();
    let mut checked = 0;
    for (template, item) in &document.paths.paths {
        let operations = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
        ];
        for (method, operation) in operations {
            if operation.is_none() {
                continue;
            }
            let needed = policy(method, template);
            // A key id to revoke, fresh each time, so each role has something to revoke.
            let spare = secured.key("read", None).await.0;
            let path = template
                .replace(
                    "{id}",
                    if template.starts_with("/admin") {
                        &spare
                    } else {
                        "matrix"
                    },
                )
                .replace("{n}", "1");
            let http = Method::from_bytes(method.as_bytes()).unwrap();
            let body = body_for(method, template);

            let anonymous = secured.send(http.clone(), &path, None, body.clone()).await;
            match needed {
                None => assert!(anonymous.status().is_success(), "{method} {path} is open"),
                Some(_) => {
                    assert_eq!(
                        anonymous.headers()["www-authenticate"],
                        "Bearer realm=\"contextd\""
                    );
                    problem(anonymous, StatusCode::UNAUTHORIZED).await;
                }
            }
            for (role, key) in &keys {
                let answer = secured
                    .send(http.clone(), &path, Some(key), body.clone())
                    .await;
                let status = answer.status();
                let allowed = needed.is_none_or(|needed| {
                    ROLES.iter().position(|r| r == role) >= ROLES.iter().position(|r| *r == needed)
                });
                if allowed {
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{role} key on {method} {path}: {status}"
                    );
                } else {
                    let body = problem(answer, StatusCode::FORBIDDEN).await;
                    assert!(body["detail"].as_str().unwrap().contains(needed.unwrap()));
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 21, "only {checked} operations checked");
    // Refusals were counted, by reason.
    let metrics = secured.app.get("/metrics").await.text().await.unwrap();
    for reason in ["missing", "forbidden"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "contextd_auth_failures_total{{reason=\"{reason}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no {reason} series:\n{metrics}"));
        assert!(!line.ends_with(" 0"), "{line}");
    }
}

async fn bad_keys_answer_401_and_are_counted_by_reason(store: Setup) {
    let secured = Secured::spawn(store).await;
    let unknown = ApiKey::generate().unwrap();
    let (id, revoked) = secured.key("write", None).await;
    secured.revoke(&id).await;
    for (key, reason) in [
        (Some("not-a-key"), "malformed"),
        (Some(unknown.expose()), "unknown"),
        (Some(revoked.as_str()), "revoked"),
        (None, "missing"),
    ] {
        let answer = secured.send(Method::GET, "/contexts", key, None).await;
        assert_eq!(
            answer.headers()["www-authenticate"],
            "Bearer realm=\"contextd\""
        );
        let body = problem(answer, StatusCode::UNAUTHORIZED).await;
        let metrics = secured.app.get("/metrics").await.text().await.unwrap();
        assert!(
            metrics.contains(&format!(
                "contextd_auth_failures_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {body}\n{metrics}"
        );
    }
    // The open routes need nothing.
    for path in [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/swagger-ui/",
        "/metrics",
    ] {
        assert!(secured.app.get(path).await.status().is_success(), "{path}");
    }
}

async fn keys_are_listed_without_secrets_and_revoked_for_good(store: Setup) {
    let secured = Secured::spawn(store).await;
    let (id, key) = secured.key("read", Some("team-a:")).await;
    assert!(key.starts_with("ctxd_") && key.len() == 48, "{key}");
    assert_eq!(
        secured
            .send(Method::GET, "/contexts", Some(&key), None)
            .await
            .status(),
        StatusCode::OK
    );
    let ours = secured.listed(&id).await;
    assert!(!ours.to_string().contains(&key), "{ours}");
    assert_eq!(ours["role"], "read");
    assert_eq!(ours["prefix"], "team-a:");
    assert_eq!(ours["revoked_at"], Value::Null);
    assert!(ours.get("key").is_none() && ours.get("key_hash").is_none());
    // Its use is recorded, in a batch, within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ours = secured.listed(&id).await;
        if ours["last_used_at"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "last_used_at never set: {ours}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let bad = secured
        .send(
            Method::POST,
            "/admin/keys",
            Some(&secured.admin),
            Some(json!({"name": "x", "role": "root"})),
        )
        .await;
    problem(bad, StatusCode::UNPROCESSABLE_ENTITY).await;
    for prefix in ["", "no spaces"] {
        let bad = secured
            .send(
                Method::POST,
                "/admin/keys",
                Some(&secured.admin),
                Some(json!({"name": "x", "role": "read", "prefix": prefix})),
            )
            .await;
        problem(bad, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let gone = secured
        .send(
            Method::DELETE,
            "/admin/keys/key_nope",
            Some(&secured.admin),
            None,
        )
        .await;
    problem(gone, StatusCode::NOT_FOUND).await;

    secured.revoke(&id).await;
    problem(
        secured
            .send(Method::GET, "/contexts", Some(&key), None)
            .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let ours = secured.listed(&id).await;
    assert!(ours["revoked_at"].is_string());
}

async fn ids(response: reqwest::Response, field: &str, id: &str) -> Vec<String> {
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[id].as_str().unwrap().to_owned())
        .collect()
}

async fn a_prefix_key_sees_and_touches_only_its_prefix(store: Setup) {
    let secured = Secured::spawn(store).await;
    for id in ["team-a:1", "team-a:2", "team-b:1"] {
        secured
            .put(
                id,
                json!({"data": {"id": id}, "source": "mcp", "embedding": [1.0, 0.0, 0.0, 0.0]}),
            )
            .await;
    }
    let (_, team_key) = secured.key("write", Some("team-a:")).await;
    let key = Some(team_key.as_str());

    // get: the other team's context does not exist, whether it does or not.
    assert_eq!(
        secured
            .send(Method::GET, "/contexts/team-a:1", key, None)
            .await
            .status(),
        StatusCode::OK
    );
    let hidden = problem(
        secured
            .send(Method::GET, "/contexts/team-b:1", key, None)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let absent = problem(
        secured
            .send(Method::GET, "/contexts/team-b:nope", key, None)
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(hidden["title"], absent["title"]);
    for (method, path) in [
        (Method::DELETE, "/contexts/team-b:1"),
        (Method::GET, "/contexts/team-b:1/versions"),
        (Method::GET, "/sync/factory/team-b:1"),
    ] {
        problem(
            secured.send(method, path, key, None).await,
            StatusCode::NOT_FOUND,
        )
        .await;
    }
    problem(
        secured
            .send(
                Method::PUT,
                "/contexts/team-b:1",
                key,
                Some(json!({"data": {"x": 1}, "source": "mcp"})),
            )
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;

    // list
    let listed = ids(
        secured.send(Method::GET, "/contexts", key, None).await,
        "items",
        "context_id",
    )
    .await;
    assert_eq!(listed, ["team-a:1", "team-a:2"]);

    // search
    let deadline = Instant::now() + PATIENCE;
    let found = loop {
        let found = ids(
            secured
                .send(
                    Method::POST,
                    "/contexts/search",
                    key,
                    Some(json!({"vector": [1.0, 0.0, 0.0, 0.0], "limit": 10})),
                )
                .await,
            "results",
            "context_id",
        )
        .await;
        if found.len() >= 2 || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut found = found;
    found.sort();
    assert_eq!(found, ["team-a:1", "team-a:2"]);

    // merge: another team's id is missing, named among the missing as one that does not
    // exist would be (API.md), and nothing is merged; a made-up target id carries the prefix
    let foreign = problem(
        secured
            .send(
                Method::POST,
                "/contexts/merge",
                key,
                Some(json!({"context_ids": ["team-a:1", "team-b:1"], "strategy": "union"})),
            )
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let detail = foreign["detail"].as_str().unwrap();
    assert!(
        detail.contains("team-b:1") && !detail.contains("team-a:1"),
        "{detail}"
    );
    let merged: Value = secured
        .send(
            Method::POST,
            "/contexts/merge",
            key,
            Some(json!({"context_ids": ["team-a:1", "team-a:2"], "strategy": "union"})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        merged["context_id"]
            .as_str()
            .unwrap()
            .starts_with("team-a:merged_"),
        "{merged}"
    );
    assert_eq!(
        merged["metadata"]["merged_from"],
        json!([{"context_id": "team-a:1", "version": 1}, {"context_id": "team-a:2", "version": 1}])
    );
    let nothing_visible = problem(
        secured
            .send(
                Method::POST,
                "/contexts/merge",
                key,
                Some(json!({"context_ids": ["team-b:1", "team-b:2"], "strategy": "union"})),
            )
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(
        nothing_visible["detail"]
            .as_str()
            .unwrap()
            .contains("team-b:1")
    );
    problem(
        secured
            .send(
                Method::POST,
                "/contexts/merge",
                key,
                Some(
                    json!({"context_ids": ["team-a:1", "team-a:2"], "strategy": "union",
                            "target_id": "team-b:target"}),
                ),
            )
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;

    // POST /contexts without an id, and Factory ingest without one, make ids in the prefix
    let created: Value = secured
        .send(
            Method::POST,
            "/contexts",
            key,
            Some(json!({"data": {}, "source": "mcp"})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        created["context_id"]
            .as_str()
            .unwrap()
            .starts_with("team-a:ctx_"),
        "{created}"
    );

    // the change feed
    let feed = ids(
        secured
            .send(Method::GET, "/sync/factory/changes?limit=1000", key, None)
            .await,
        "changes",
        "id",
    )
    .await;
    assert!(!feed.is_empty());
    assert!(feed.iter().all(|id| id.starts_with("team-a:")), "{feed:?}");
    let everything = ids(
        secured
            .send(
                Method::GET,
                "/sync/factory/changes?limit=1000",
                Some(&secured.admin),
                None,
            )
            .await,
        "changes",
        "id",
    )
    .await;
    assert!(everything.iter().any(|id| id.starts_with("team-b:")));

    // MCP: the same key, the same rule
    let client = ClientConfig::new(ClientCapabilities::default(), Implementation::new("t", "1"))
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(
                StreamableHttpClientTransportConfig::with_uri(secured.app.url("/mcp"))
                    .auth_header(team_key.as_str()),
            ),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("the keyed client connects");
    let call = |tool: &'static str, arguments: Value| {
        let Value::Object(arguments) = arguments else {
            unreachable!()
        };
        client.call_tool(CallToolRequestParams::new(tool).with_arguments(arguments))
    };
    let listed = call("list_contexts", json!({})).await.unwrap();
    let listed = listed.structured_content.unwrap();
    let listed: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["context_id"].as_str().unwrap())
        .collect();
    assert!(
        listed.iter().all(|id| id.starts_with("team-a:")),
        "{listed:?}"
    );
    let hidden = call("get_context", json!({"context_id": "team-b:1"}))
        .await
        .unwrap();
    assert_eq!(hidden.is_error, Some(true));
    assert_eq!(hidden.structured_content.unwrap()["status"], 404);
    let resources = client.list_all_resources().await.unwrap();
    assert!(
        resources
            .iter()
            .all(|r| r.uri.starts_with("context://team-a:"))
    );
    assert!(!resources.is_empty());
}

async fn mcp_needs_the_key_and_obeys_its_role(store: Setup) {
    let secured = Secured::spawn(store).await;
    secured
        .put("m", json!({"data": {"v": 1}, "source": "mcp"}))
        .await;
    let anonymous = secured
        .send(
            Method::POST,
            "/mcp",
            None,
            Some(
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "curl", "version": "1"}}}),
            ),
        )
        .await;
    problem(anonymous, StatusCode::UNAUTHORIZED).await;

    let (_, reader) = secured.key("read", None).await;
    let client = ClientConfig::new(ClientCapabilities::default(), Implementation::new("t", "1"))
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
        .serve_with_lifecycle(
            StreamableHttpClientTransport::from_config(
                StreamableHttpClientTransportConfig::with_uri(secured.app.url("/mcp"))
                    .auth_header(reader),
            ),
            ClientLifecycleMode::Initialize,
        )
        .await
        .expect("a read key opens a session");
    let Value::Object(read) = json!({"context_id": "m"}) else {
        unreachable!()
    };
    let got = client
        .call_tool(CallToolRequestParams::new("get_context").with_arguments(read))
        .await
        .unwrap();
    assert_ne!(got.is_error, Some(true));
    let Value::Object(write) = json!({"context_id": "m", "data": {"v": 2}}) else {
        unreachable!()
    };
    let refused = client
        .call_tool(CallToolRequestParams::new("put_context").with_arguments(write))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert_eq!(refused.structured_content.unwrap()["status"], 403);
}

/// Postgres only: two instances share the database; a revocation on one reaches the other's
/// cache of verified keys through `NOTIFY`.
#[tokio::test]
async fn a_revocation_reaches_every_instance() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let admin = ApiKey::generate().unwrap();
    let mut settings = TestApp::settings_for(&db.url());
    use_redis(&mut settings, &format!("test:auth:{}:", std::process::id()));
    secure(&mut settings, &admin);
    let a = TestApp::start(db.clone(), settings.clone()).await;
    let b = TestApp::start(db, settings).await;
    let made: Value = send(
        &a,
        Method::POST,
        "/admin/keys",
        Some(admin.expose()),
        Some(json!({"name": "doomed", "role": "read"})),
    )
    .await
    .json()
    .await
    .unwrap();
    let key = made["key"].as_str().unwrap();
    // B hears of the new key through the commit signal, and takes it from then on.
    let deadline = Instant::now() + PATIENCE;
    while send(&b, Method::GET, "/contexts", Some(key), None)
        .await
        .status()
        == StatusCode::UNAUTHORIZED
    {
        assert!(Instant::now() < deadline, "B never took the new key");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        assert_eq!(
            send(&b, Method::GET, "/contexts", Some(key), None)
                .await
                .status(),
            StatusCode::OK
        );
    }
    let revoked = send(
        &a,
        Method::DELETE,
        &format!("/admin/keys/{}", made["id"].as_str().unwrap()),
        Some(admin.expose()),
        None,
    )
    .await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let deadline = Instant::now() + PATIENCE;
    while send(&b, Method::GET, "/contexts", Some(key), None)
        .await
        .status()
        == StatusCode::OK
    {
        assert!(Instant::now() < deadline, "B still takes the revoked key");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SQLite only: keys made and revoked by `contextd keys`, another process, reach the running
/// server (whose signal cannot hear them) through its periodic reload of the keys.
#[tokio::test]
async fn the_cli_makes_lists_and_revokes_keys_against_a_running_server() {
    let secured = Secured::spawn(Setup::SQLITE).await;
    let database_url = secured.app.db.url();
    let created = contextd()
        .args([
            "keys", "create", "--role", "write", "--name", "ci", "--prefix", "ci:",
        ])
        .env("DATABASE_URL", &database_url)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(contextd::auth::keys::is_well_formed(&key), "{key}");
    // The server's periodic reload brings in a key made by another process.
    let deadline = Instant::now() + PATIENCE;
    while secured
        .send(Method::GET, "/contexts", Some(&key), None)
        .await
        .status()
        == StatusCode::UNAUTHORIZED
    {
        assert!(
            Instant::now() < deadline,
            "the server never took the CLI's key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = contextd()
        .args(["keys", "list"])
        .env("DATABASE_URL", &database_url)
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    let line = listed
        .lines()
        .find(|l| l.contains("\tci\t"))
        .expect("the key is listed");
    assert!(line.contains("\twrite\tci:\t"), "{line}");
    assert!(!listed.contains(&key));
    let id = line.split('\t').next().unwrap();
    let revoked = contextd()
        .args(["keys", "revoke", id])
        .env("DATABASE_URL", &database_url)
        .output()
        .unwrap();
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let deadline = Instant::now() + PATIENCE;
    while secured
        .send(Method::GET, "/contexts", Some(&key), None)
        .await
        .status()
        == StatusCode::OK
    {
        assert!(
            Instant::now() < deadline,
            "the server still takes the revoked key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keys (the bootstrap key, one made by the API, a wrong one) never reach the log, even at
/// debug level, whatever the requests that carry them.
#[tokio::test]
async fn keys_never_reach_the_log() {
    let db = TestDb::new(Backend::Sqlite).await;
    let admin = ApiKey::generate().unwrap();
    let wrong = ApiKey::generate().unwrap();
    let mut child = contextd()
        .arg("serve")
        .env("DATABASE_URL", db.url())
        .env("CONTEXTD__SERVER__BIND", "127.0.0.1:0")
        .env("CONTEXTD__AUTH__MODE", "on")
        .env("CONTEXTD__AUTH__BOOTSTRAP_KEY", admin.expose())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let addr = loop {
        let line = lines
            .next()
            .expect("the log ended before `listening on`")
            .unwrap();
        log.push(line.clone());
        if let Some((_, addr)) = line.split_once("listening on http://") {
            break addr.trim().to_owned();
        }
    };
    let reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    // It listens before the store is open: wait until it is ready.
    let deadline = Instant::now() + PATIENCE;
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        != StatusCode::OK
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let made: Value = http
        .post(format!("{base}/admin/keys"))
        .bearer_auth(admin.expose())
        .json(&json!({"name": "logged?", "role": "write"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let made_key = made["key"].as_str().unwrap().to_owned();
    for key in [made_key.as_str(), wrong.expose(), "Bearer-ish nonsense"] {
        for path in ["/contexts", "/contexts/x", "/nowhere"] {
            http.get(format!("{base}{path}"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
        }
        http.put(format!("{base}/contexts/x"))
            .bearer_auth(key)
            .json(&json!({"data": {}, "source": "mcp"}))
            .send()
            .await
            .unwrap();
    }
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    log.extend(reader.join().unwrap());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let log = log.join("\n") + &stdout + &metrics;
    assert!(
        log.contains("API key created"),
        "the log is at debug level:\n{log}"
    );
    for key in [admin.expose(), made_key.as_str(), wrong.expose()] {
        assert!(!log.contains(key), "a key leaked into the log or metrics");
        assert!(!log.contains(&key[5..20]), "part of a key leaked");
    }
}

async fn auto_mode_protects_every_bind_but_loopback(store: Setup) {
    let open = TestApp::spawn(store).await;
    assert_eq!(open.get("/contexts").await.status(), StatusCode::OK);
    let exposed =
        TestApp::spawn_with(store, |s| s.server.bind = "0.0.0.0:0".parse().unwrap()).await;
    assert_eq!(exposed.settings.auth.mode, AuthMode::Auto);
    problem(exposed.get("/contexts").await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(exposed.get("/healthz").await.status(), StatusCode::OK);
    let closed_metrics = TestApp::spawn_with(store, |s| {
        s.auth.mode = AuthMode::On;
        s.auth.open_metrics = false;
    })
    .await;
    problem(
        closed_metrics.get("/metrics").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[test]
fn the_document_declares_the_bearer_scheme_on_each_guarded_operation() {
    let document: Value = serde_json::to_value(contextd::api::openapi()).unwrap();
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer", "bearerFormat": "ctxd_<43 base62 characters>",
               "description": document["components"]["securitySchemes"]["bearer"]["description"]})
    );
    assert_eq!(
        document["paths"]["/contexts/{id}"]["get"]["security"],
        json!([{"bearer": []}])
    );
    assert!(document["paths"]["/contexts/{id}"]["get"]["responses"]["401"].is_object());
    assert!(
        document["paths"]["/healthz"]["get"]
            .get("security")
            .is_none()
    );
    assert_eq!(
        document["paths"]["/metrics"]["get"]["security"],
        json!([{}, {"bearer": []}])
    );
}

async fn the_bearer_scheme_is_matched_in_any_case(store: Setup) {
    let secured = Secured::spawn(store).await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let response = secured
            .app
            .http
            .get(secured.app.url("/contexts"))
            .header("Authorization", format!("{scheme} {}", secured.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{scheme}");
    }
    for header in [format!("Basic {}", secured.admin), secured.admin.clone()] {
        let response = secured
            .app
            .http
            .get(secured.app.url("/contexts"))
            .header("Authorization", header)
            .send()
            .await
            .unwrap();
        problem(response, StatusCode::UNAUTHORIZED).await;
    }
}

/// Postgres only: with the store cut off, strangers' keys are still refused with 401 at once,
/// and a known key is still known: neither asks the store. (Before, every unknown key cost a
/// query, so an anonymous flood set the database's pace, and a cut store made them 503.)
#[tokio::test]
async fn unknown_keys_are_refused_from_memory_without_the_store() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let proxy = PgProxy::start().await;
    let admin = ApiKey::generate().unwrap();
    let mut settings = TestApp::settings_for(&proxy.url_for(&db.name));
    secure(&mut settings, &admin);
    let app = TestApp::start(db, settings).await;
    let put = send(
        &app,
        Method::PUT,
        "/contexts/cached",
        Some(admin.expose()),
        Some(json!({"data": {"a": 1}, "source": "mcp"})),
    )
    .await;
    assert_eq!(put.status(), StatusCode::CREATED);

    proxy.cut();
    let started = Instant::now();
    for _ in 0..200 {
        let stranger = ApiKey::generate().unwrap();
        let response = send(
            &app,
            Method::GET,
            "/contexts/cached",
            Some(stranger.expose()),
            None,
        )
        .await;
        problem(response, StatusCode::UNAUTHORIZED).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The admin key is known from memory: its read is served from the cache.
    let cached = send(
        &app,
        Method::GET,
        "/contexts/cached",
        Some(admin.expose()),
        None,
    )
    .await;
    assert_eq!(cached.status(), StatusCode::OK);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("contextd_auth_failures_total{reason=\"unknown\"} 200"),
        "{metrics}"
    );
}

crate::on_both_stores!(
    the_bearer_scheme_is_matched_in_any_case,
    every_route_answers_each_role_as_its_policy_says,
    bad_keys_answer_401_and_are_counted_by_reason,
    keys_are_listed_without_secrets_and_revoked_for_good,
    a_prefix_key_sees_and_touches_only_its_prefix,
    mcp_needs_the_key_and_obeys_its_role,
    auto_mode_protects_every_bind_but_loopback,
);
