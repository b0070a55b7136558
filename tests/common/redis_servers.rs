//! Real Redis servers of a test's own: a TLS-only `redis-server` ([`TlsRedis`]) and a
//! three-master Redis Cluster ([`RedisCluster`]), each on free loopback ports, in a temp dir of
//! its own (`$TMPDIR/contextd-<kind>-<pid>-<n>`), so tests can run in parallel. Dropping a
//! fixture kills its servers (SIGKILL, then wait) and removes its dir.
//!
//! Include it from a test crate with
//! `#[path = "../common/redis_servers.rs"] mod redis_servers;` (or `"common/redis_servers.rs"`
//! from a top-level test file). It uses only std, and needs `redis-server` (built with TLS, as
//! Debian's is), `redis-cli` and `openssl` on `PATH`.
//!
//! Everything here is blocking `std::process` code. `start()` takes a few hundred milliseconds
//! for [`TlsRedis`] and one to two seconds for [`RedisCluster`] (`redis-cli --cluster create`
//! waits a second for the nodes to meet). Calling it from an async test is fine with
//! `#[tokio::test(flavor = "multi_thread")]` (it only holds up one worker); on a current-thread
//! runtime, or when that matters, use `tokio::task::spawn_blocking(TlsRedis::start)`. Drop is
//! quick (kill and wait). Keep a fixture owned by one test: one kept in a `static` is never
//! dropped, so its servers would outlive the test binary.
//!
//! Every wait is a bounded poll; a failure panics with what was tried and the servers' logs.
//! Free ports are found by binding `127.0.0.1:0` and dropping the listener; when another
//! process takes the port in between, the server exits with "Address already in use" and the
//! fixture starts again on new ports (a few times).
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Most a server may take to answer its first PING.
const READY_LIMIT: Duration = Duration::from_secs(20);
/// Most `redis-cli --cluster create` may take, and then the nodes to agree the cluster is ok.
const CLUSTER_LIMIT: Duration = Duration::from_secs(30);
/// Most one `redis-cli` (or `openssl`) call may take before it is killed.
pub const CLI_LIMIT: Duration = Duration::from_secs(10);
/// Starts on new ports when a chosen port was taken before the server bound it.
const PORT_ATTEMPTS: usize = 5;
const POLL: Duration = Duration::from_millis(10);
/// The lines of each server log that a failure message shows.
const LOG_TAIL_LINES: usize = 80;

/// What a bounded command did.
#[derive(Debug)]
pub struct CliOutput {
    /// `None` when it did not finish within its limit (and was killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// It finished, with status 0 (`redis-cli` exits 1 on an error reply only with `-e`).
    pub fn success(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }

    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// Stdout, then stderr, trimmed: what to search for a reply or an error.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout.trim(), self.stderr.trim())
            .trim()
            .to_owned()
    }
}

/// Runs `cmd` (stdin closed, output captured), killing it after `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> CliOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is it installed?)"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    CliOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// `redis-cli ARGS`, bounded by [`CLI_LIMIT`].
pub fn redis_cli<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> CliOutput {
    run_bounded(Command::new("redis-cli").args(args), CLI_LIMIT)
}

/// `n` distinct free loopback ports (all bound at once, so they differ, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// A temp dir of the fixture's own, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(kind: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("contextd-{kind}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path); // left by an earlier process with our pid
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `redis-server` process, its output in `log`; killed on drop.
struct Server {
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(dir: &Path, port: u16, args: &[String]) -> Self {
        let log = dir.join(format!("redis-{port}.log"));
        let out = File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().expect("clone the log's handle");
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server (is it installed?): {e}"));
        Self { port, child, log }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log, headed by its port and pid.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!(
            "--- redis-server :{} (pid {}) log {} ---\n{tail}",
            self.port,
            self.child.id(),
            self.log.display()
        )
    }

    /// Polls `info` (which runs `INFO server` against the server's port) until the answer is
    /// from this very process (`process_id:<pid>`: another test's server may have taken the
    /// port): `true`. `false` when the server exited because its port was taken. Panics, with
    /// the log, when it exited otherwise or is not ready within [`READY_LIMIT`].
    fn await_ready(&mut self, mut info: impl FnMut() -> CliOutput) -> bool {
        let deadline = Instant::now() + READY_LIMIT;
        let ours = format!("process_id:{}", self.child.id());
        loop {
            let out = info();
            if out.stdout.lines().any(|line| line.trim() == ours) {
                return true;
            }
            let seen = out.text();
            if let Some(status) = self.exited() {
                if std::fs::read_to_string(&self.log)
                    .unwrap_or_default()
                    .contains("Address already in use")
                {
                    return false;
                }
                panic!(
                    "redis-server on :{} exited ({status}) before it was ready; last probe: \
                     {seen}\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server on :{} not ready within {READY_LIMIT:?}; last probe: {seen}\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for URL userinfo).
fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = contextd test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
";

fn openssl(dir: &Path, args: &[&str]) {
    let out = run_bounded(
        Command::new("openssl").args(args).current_dir(dir),
        CLI_LIMIT,
    );
    assert!(out.success(), "openssl {} failed: {out:?}", args.join(" "));
}

/// In `dir`: `ca.crt` (+ `ca.key`), `server.crt` and `server.key` signed by it, for
/// IP:127.0.0.1 and DNS:localhost, and `untrusted-ca.crt`, a CA that signed nothing. P-256
/// keys, X.509 v3 with the extensions webpki/rustls insist on; valid for two days from now.
fn make_certificates(dir: &Path) {
    std::fs::write(dir.join("openssl.cnf"), OPENSSL_CONFIG).expect("write openssl.cnf");
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, subject) in [
        ("ca", "/CN=contextd test CA"),
        ("untrusted-ca", "/CN=contextd untrusted test CA"),
    ] {
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        let mut args = vec![
            "req",
            "-x509",
            "-config",
            "openssl.cnf",
            "-extensions",
            "ca",
        ];
        args.extend(new_key);
        args.extend([
            "-keyout", &key, "-out", &crt, "-days", "2", "-subj", subject,
        ]);
        openssl(dir, &args);
    }
    let mut args = vec!["req", "-new", "-config", "openssl.cnf"];
    args.extend(new_key);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &args);
    let sign = "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
                -out server.crt -days 2 -extfile openssl.cnf -extensions server";
    openssl(dir, &sign.split_whitespace().collect::<Vec<_>>());
}

/// A TLS-only `redis-server` (no plaintext port) on a free loopback port, with a throwaway CA.
/// Clients need not present certificates (`--tls-auth-clients no`). Nothing is persisted.
pub struct TlsRedis {
    // Declared before `dir`: the server is killed before its dir is removed.
    server: Server,
    credentials: Option<(String, String)>,
    dir: Scratch,
}

impl TlsRedis {
    /// No password: every connection is the `default` user, allowed everything.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// Clients must authenticate as `user` with `pass`. For `"default"`, that is
    /// `--requirepass pass` (`AUTH pass` works too); for any other name, the `default` user is
    /// off and `user` is an ACL user with `on >pass ~* &* +@all` (all keys, all pub/sub
    /// channels: Redis 7 denies channels unless `&*`, all commands). Neither may contain
    /// whitespace (they become a config line).
    pub fn start_with_password(user: &str, pass: &str) -> Self {
        assert!(
            !user.is_empty() && !pass.is_empty(),
            "user and password must not be empty"
        );
        assert!(
            !user.chars().chain(pass.chars()).any(char::is_whitespace),
            "user and password must not contain whitespace"
        );
        Self::launch(Some((user.to_owned(), pass.to_owned())))
    }

    fn launch(credentials: Option<(String, String)>) -> Self {
        let dir = Scratch::new("tls-redis");
        make_certificates(&dir.0);
        for _ in 0..PORT_ATTEMPTS {
            let port = free_ports(1)[0];
            let mut args: Vec<String> = [
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                path_str(&dir.0.join("server.crt")),
                "--tls-key-file",
                path_str(&dir.0.join("server.key")),
                "--tls-ca-cert-file",
                path_str(&dir.0.join("ca.crt")),
                "--tls-auth-clients",
                "no",
                "--bind",
                "127.0.0.1",
                "--dir",
                path_str(&dir.0),
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(str::to_owned)
            .into();
            match &credentials {
                None => {}
                Some((user, pass)) if user == "default" => {
                    args.extend(["--requirepass".to_owned(), pass.clone()]);
                }
                Some((user, pass)) => {
                    args.extend(["--user", "default", "off"].map(str::to_owned));
                    args.extend(["--user".to_owned(), user.clone(), "on".to_owned()]);
                    args.push(format!(">{pass}"));
                    args.extend(["~*", "&*", "+@all"].map(str::to_owned));
                }
            }
            let mut server = Server::spawn(&dir.0, port, &args);
            let ca = dir.0.join("ca.crt");
            let ready = server.await_ready(|| {
                redis_cli(tls_cli_args(
                    port,
                    &ca,
                    credentials.as_ref(),
                    &["info", "server"],
                ))
            });
            if ready {
                return Self {
                    server,
                    credentials,
                    dir,
                };
            }
        }
        panic!(
            "TlsRedis: every free port was taken before redis-server bound it ({PORT_ATTEMPTS} tries)"
        );
    }

    /// `rediss://127.0.0.1:<port>` (no credentials, no database).
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port())
    }

    /// `rediss://<user>:<pass>@127.0.0.1:<port>` (percent-encoded) when started with a password,
    /// else the same as [`url`](Self::url).
    pub fn url_with_credentials(&self) -> String {
        match &self.credentials {
            None => self.url(),
            Some((user, pass)) => format!(
                "rediss://{}:{}@127.0.0.1:{}",
                percent_encode(user),
                percent_encode(pass),
                self.port()
            ),
        }
    }

    /// The TLS port.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The user and password it was started with.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, pass)| (user.as_str(), pass.as_str()))
    }

    /// The PEM CA certificate that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.0.join("ca.crt")
    }

    /// A PEM CA certificate that did NOT sign the server's certificate, for negative tests.
    pub fn untrusted_ca_file(&self) -> PathBuf {
        self.dir.0.join("untrusted-ca.crt")
    }

    /// The fixture's temp dir (certificates, keys, the server log); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// `redis-cli --tls --cacert <ca> -p <port> [--user U --pass P] ARGS` (credentials when it
    /// has them), bounded by [`CLI_LIMIT`].
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let ca = self.ca_file();
        redis_cli(tls_cli_args(
            self.port(),
            &ca,
            self.credentials.as_ref(),
            args,
        ))
    }

    /// The server's log (its last lines).
    pub fn log(&self) -> String {
        self.server.log_tail()
    }
}

fn tls_cli_args(
    port: u16,
    ca: &Path,
    credentials: Option<&(String, String)>,
    args: &[&str],
) -> Vec<String> {
    let mut all: Vec<String> = vec!["--tls".into(), "--cacert".into(), path_str(ca).into()];
    all.extend(["-p".to_owned(), port.to_string()]);
    if let Some((user, pass)) = credentials {
        all.extend([
            "--user".to_owned(),
            user.clone(),
            "--pass".to_owned(),
            pass.clone(),
        ]);
        all.push("--no-auth-warning".to_owned());
    }
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all
}

/// A real Redis Cluster of three masters (no replicas) on free loopback ports, all 16384 slots
/// assigned (`redis-cli --cluster create`), every node saying `cluster_state:ok`.
pub struct RedisCluster {
    // Declared before `dir`: the servers are killed before their dir is removed.
    servers: Vec<Server>,
    dir: Scratch,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = Scratch::new("redis-cluster");
        'attempt: for _ in 0..PORT_ATTEMPTS {
            // A client port and an explicit cluster bus port (`--cluster-port`, Redis 7) per
            // node: the default bus port, port + 10000, may be taken or above 65535.
            let ports = free_ports(6);
            let mut servers: Vec<Server> = (0..3)
                .map(|i| {
                    let (port, bus) = (ports[i], ports[i + 3]);
                    let conf = dir.0.join(format!("nodes-{port}.conf"));
                    let args: Vec<String> = [
                        "--port",
                        &port.to_string(),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus.to_string(),
                        "--cluster-config-file",
                        path_str(&conf),
                        "--cluster-node-timeout",
                        "2000",
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        path_str(&dir.0),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ]
                    .map(str::to_owned)
                    .into();
                    Server::spawn(&dir.0, port, &args)
                })
                .collect();
            for server in &mut servers {
                let port = server.port.to_string();
                if !server.await_ready(|| redis_cli(["-p", &port, "info", "server"])) {
                    continue 'attempt; // a port was taken: drop these servers, new ports
                }
            }
            let cluster = Self { servers, dir };
            cluster.create();
            return cluster;
        }
        panic!(
            "RedisCluster: free ports were taken before redis-server bound them ({PORT_ATTEMPTS} tries)"
        );
    }

    fn create(&self) {
        let nodes = self.nodes();
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create").args(&nodes);
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = run_bounded(&mut cmd, CLUSTER_LIMIT);
        if !out.success() {
            panic!(
                "redis-cli --cluster create {} failed: {out:?}\n{}",
                nodes.join(" "),
                self.logs()
            );
        }
        let deadline = Instant::now() + CLUSTER_LIMIT;
        loop {
            let infos: Vec<String> = self
                .servers
                .iter()
                .map(|s| redis_cli(["-p", &s.port.to_string(), "cluster", "info"]).text())
                .collect();
            let ok = infos.iter().all(|info| {
                let lines: Vec<&str> = info.lines().map(str::trim).collect();
                lines.contains(&"cluster_state:ok") && lines.contains(&"cluster_known_nodes:3")
            });
            if ok {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the cluster {} did not reach cluster_state:ok on every node within \
                     {CLUSTER_LIMIT:?}; last CLUSTER INFO per node:\n{}\n--- cluster create ---\n{}\n{}",
                    nodes.join(" "),
                    infos.join("\n--\n"),
                    out.text(),
                    self.logs()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// `redis://127.0.0.1:<port of the first node>`.
    pub fn seed_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.servers[0].port)
    }

    /// The three masters as `127.0.0.1:<port>`, the seed first.
    pub fn nodes(&self) -> Vec<String> {
        self.ports()
            .into_iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }

    /// The three masters' client ports, the seed first.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }

    /// How many keys match `pattern` on each node (`redis-cli --scan --pattern`), in the order
    /// of [`nodes`](Self::nodes).
    pub fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        self.servers
            .iter()
            .map(|s| {
                let port = s.port.to_string();
                let out = redis_cli(["-p", &port, "--scan", "--pattern", pattern]);
                assert!(out.success(), "--scan on :{port} failed: {out:?}");
                out.stdout.lines().filter(|l| !l.is_empty()).count()
            })
            .collect()
    }

    /// `redis-cli -c -p <seed port> ARGS` (following MOVED/ASK), bounded by [`CLI_LIMIT`].
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let port = self.servers[0].port.to_string();
        let mut all = vec!["-c", "-p", &port];
        all.extend(args);
        redis_cli(all)
    }

    /// `redis-cli -p <port of node i> ARGS` (no redirections), bounded by [`CLI_LIMIT`].
    pub fn node_cli(&self, i: usize, args: &[&str]) -> CliOutput {
        let port = self.servers[i].port.to_string();
        let mut all = vec!["-p", &port];
        all.extend(args);
        redis_cli(all)
    }

    /// The fixture's temp dir (nodes-*.conf, the server logs); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// The three servers' logs (their last lines).
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(Server::log_tail)
            .collect::<Vec<_>>()
            .join("\n")
    }
}
