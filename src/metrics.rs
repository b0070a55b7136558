//! Prometheus metrics: the registry, HTTP request counters, and gauges read at scrape time.
//!
//! Labels are bounded: the route is the matched template (`/contexts/{id}`), never the raw
//! path, and requests matching no route share the label `unmatched`.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::cache::CacheStats;
use crate::cache::l2::L2Stats;
use crate::store::{Counts, PoolStatus};

/// Label for requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    contexts: IntGauge,
    versions: IntGauge,
    l1_entries: IntGauge,
    l1_bytes: IntGauge,
    cache_requests: IntCounterVec,
    cache_hit_ratio: Gauge,
    sync_latency: prometheus::Histogram,
    sync_pending: IntGauge,
    sync_failures: prometheus::IntCounter,
    auth_failures: IntCounterVec,
    overload_rejections: IntCounterVec,
    inflight_body_bytes: IntGauge,
    http_connections: IntGauge,
    operations: Operations,
}

/// What an operator looks at first: the build, the process, the store's pool, Redis, the
/// indexer, the embedder and MCP. Read at scrape time from what the process already keeps.
struct Operations {
    process: process::Collectors,
    pool_size: IntGauge,
    pool_connections: IntGaugeVec,
    pool_waiting: IntGauge,
    store_up: IntGauge,
    redis_up: IntGauge,
    redis_breaker_open: IntGauge,
    vector_backlog: IntGauge,
    embedding_duration: prometheus::Histogram,
    embedding_failures: IntCounter,
    embedding_queue: IntGauge,
    mcp_sessions: IntGauge,
    mcp_tool_calls: IntCounterVec,
    /// Counts the open MCP sessions, when the MCP endpoint is mounted.
    mcp_session_count: OnceLock<Box<dyn Fn() -> Option<usize> + Send + Sync>>,
}

/// How a tool call ended: the `outcome` label of `contextd_mcp_tool_calls_total`. `ok`: the
/// tool answered; `error`: it answered with `isError` (not found, a conflict, a refusal);
/// `invalid`: the call was refused before the tool ran (unknown tool, bad arguments).
pub const MCP_TOOL_OUTCOMES: [&str; 3] = ["ok", "error", "invalid"];

/// What one scrape shows of the rest of the process, gathered by the `/metrics` handler.
pub struct Scrape<'a> {
    /// The running counts; `None` until the store was first counted (the gauges are left out).
    pub counts: Option<Counts>,
    pub cache: &'a CacheStats,
    /// The store's connection pool (Postgres); `None` leaves the pool gauges out.
    pub pool: Option<PoolStatus>,
    /// Redis's connection and breaker; `None` (no Redis configured) leaves the Redis gauges out.
    pub redis: Option<L2Stats>,
    /// The store answered its last ping.
    pub store_up: bool,
    /// Changes committed but not yet applied to the vector index.
    pub vector_backlog: i64,
}

impl Operations {
    fn new(registry: &Registry) -> Self {
        fn register<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            collector: C,
        ) -> C {
            registry
                .register(Box::new(collector.clone()))
                .expect("metric names are unique");
            collector
        }
        let gauge = |name: &str, help: &str| {
            register(registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let build_info = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "contextd_build_info",
                    "Always 1; the labels say which contextd this is.",
                ),
                &["version"],
            )
            .expect("valid metric"),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let pool_connections = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "contextd_db_pool_connections",
                    "Open Postgres connections of the pool, by state (idle, in_use).",
                ),
                &["state"],
            )
            .expect("valid metric"),
        );
        let mcp_tool_calls = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "contextd_mcp_tool_calls_total",
                    "MCP tool calls by tool and outcome (ok; error: the tool answered isError; \
                     invalid: refused before it ran).",
                ),
                &["tool", "outcome"],
            )
            .expect("valid metric"),
        );
        Self {
            process: process::Collectors::new(registry),
            pool_size: gauge(
                "contextd_db_pool_size",
                "The most connections the Postgres pool opens (database.pool_size).",
            ),
            pool_connections,
            pool_waiting: gauge(
                "contextd_db_pool_waiting",
                "Requests waiting for a Postgres connection of the pool.",
            ),
            store_up: gauge(
                "contextd_store_up",
                "1 when the store answered this scrape's ping (within 1 s), else 0.",
            ),
            redis_up: gauge(
                "contextd_redis_up",
                "1 when Redis is connected and its commands succeed, else 0 (absent without \
                 Redis).",
            ),
            redis_breaker_open: gauge(
                "contextd_redis_breaker_open",
                "1 while the Redis circuit breaker is open (L2 calls skipped), else 0 (absent \
                 without Redis).",
            ),
            vector_backlog: gauge(
                "contextd_vector_backlog",
                "Changes committed but not yet applied to the vector index.",
            ),
            embedding_duration: register(
                registry,
                prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "contextd_embedding_duration_seconds",
                        "Time to embed one batch of texts, in seconds (none while \
                         embedder.backend is none).",
                    )
                    .buckets(vec![
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            embedding_failures: register(
                registry,
                IntCounter::new(
                    "contextd_embedding_failures_total",
                    "Embedding batches that failed (each is retried).",
                )
                .expect("valid metric"),
            ),
            embedding_queue: gauge(
                "contextd_embedding_queue",
                "Contexts waiting to be embedded by the server.",
            ),
            mcp_sessions: gauge("contextd_mcp_sessions", "Open MCP sessions."),
            mcp_tool_calls,
            mcp_session_count: OnceLock::new(),
        }
    }

    fn set(&self, scrape: &Scrape<'_>) {
        self.process.sample();
        if let Some(pool) = scrape.pool {
            self.pool_size.set(pool.max_size as i64);
            let in_use = pool.open.saturating_sub(pool.idle);
            self.pool_connections
                .with_label_values(&["idle"])
                .set(pool.idle as i64);
            self.pool_connections
                .with_label_values(&["in_use"])
                .set(in_use as i64);
            self.pool_waiting.set(pool.waiting as i64);
        }
        self.store_up.set(scrape.store_up.into());
        if let Some(l2) = scrape.redis {
            self.redis_up.set((l2.connected && !l2.failing).into());
            self.redis_breaker_open.set(l2.breaker_open.into());
        }
        self.vector_backlog.set(scrape.vector_backlog);
        if let Some(count) = self.mcp_session_count.get().and_then(|count| count()) {
            self.mcp_sessions.set(count as i64);
        }
    }

    /// The families this scrape leaves out: what is not there to measure.
    fn absent(&self, scrape: &Scrape<'_>) -> Vec<&'static str> {
        let mut absent = Vec::new();
        if scrape.counts.is_none() {
            // Until the store was first counted, no count is better than a wrong one.
            absent.extend(["contextd_contexts", "contextd_context_versions"]);
        }
        if scrape.pool.is_none() {
            absent.extend([
                "contextd_db_pool_size",
                "contextd_db_pool_connections",
                "contextd_db_pool_waiting",
            ]);
        }
        if scrape.redis.is_none() {
            absent.extend(["contextd_redis_up", "contextd_redis_breaker_open"]);
        }
        if self.mcp_session_count.get().is_none() {
            absent.push("contextd_mcp_sessions");
        }
        absent
    }
}

/// Why a request was turned away because the server was full: the `reason` label of
/// `contextd_overload_rejections_total`.
pub const OVERLOAD_REASONS: [&str; 3] = ["body_budget", "connections", "mcp_streams"];

/// Why a request was refused by auth: the `reason` label of `contextd_auth_failures_total`.
pub const AUTH_FAILURE_REASONS: [&str; 5] =
    ["missing", "malformed", "unknown", "revoked", "forbidden"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("contextd_http_requests_total", "HTTP requests answered."),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "contextd_http_request_duration_seconds",
                "Time from request to response head, in seconds.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["method", "route"],
        )
        .expect("valid metric");
        let contexts = IntGauge::new("contextd_contexts", "Contexts stored.").expect("valid");
        let versions = IntGauge::new(
            "contextd_context_versions",
            "Versions kept, over all contexts.",
        )
        .expect("valid metric");
        let l1_entries = IntGauge::new(
            "contextd_cache_l1_entries",
            "Contexts held in the in-process cache.",
        )
        .expect("valid metric");
        let l1_bytes = IntGauge::new(
            "contextd_cache_l1_bytes",
            "Estimated bytes held in the in-process cache.",
        )
        .expect("valid metric");
        let cache_hit_ratio = Gauge::new(
            "contextd_cache_hit_ratio",
            "Reads answered by some cache layer, over all cacheable reads, since start (0..1).",
        )
        .expect("valid metric");
        let sync_latency = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "contextd_sync_latency_seconds",
                "From a change's commit to the webhook receiver's 2xx, in seconds.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
        )
        .expect("valid metric");
        let sync_pending = IntGauge::new(
            "contextd_sync_pending",
            "Changes waiting to be pushed to the webhook.",
        )
        .expect("valid metric");
        let sync_failures = prometheus::IntCounter::new(
            "contextd_sync_delivery_failures_total",
            "Webhook pushes that failed (each is retried).",
        )
        .expect("valid metric");
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "contextd_auth_failures_total",
                "Requests refused by auth: no key (missing), not a key (malformed), a key that \
                 does not exist (unknown) or was revoked (revoked), a role too low (forbidden).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in AUTH_FAILURE_REASONS {
            auth_failures.with_label_values(&[reason]);
        }
        let overload_rejections = IntCounterVec::new(
            Opts::new(
                "contextd_overload_rejections_total",
                "Requests and connections turned away because the server was full: no room in \
                 limits.max_inflight_body_bytes in time (body_budget), server.max_connections \
                 reached (connections), MCP stream bounds reached (mcp_streams).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in OVERLOAD_REASONS {
            overload_rejections.with_label_values(&[reason]);
        }
        let inflight_body_bytes = IntGauge::new(
            "contextd_inflight_body_bytes",
            "Bytes of request bodies being read, parsed and processed now (bounded by \
             limits.max_inflight_body_bytes).",
        )
        .expect("valid metric");
        let http_connections = IntGauge::new(
            "contextd_http_connections",
            "Open HTTP connections (bounded by server.max_connections).",
        )
        .expect("valid metric");
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "contextd_cache_requests_total",
                "Cache lookups by layer and result.",
            ),
            &["layer", "result"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(contexts.clone()),
            Box::new(versions.clone()),
            Box::new(l1_entries.clone()),
            Box::new(l1_bytes.clone()),
            Box::new(cache_requests.clone()),
            Box::new(cache_hit_ratio.clone()),
            Box::new(sync_latency.clone()),
            Box::new(sync_pending.clone()),
            Box::new(sync_failures.clone()),
            Box::new(auth_failures.clone()),
            Box::new(overload_rejections.clone()),
            Box::new(inflight_body_bytes.clone()),
            Box::new(http_connections.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        let operations = Operations::new(&registry);
        Self {
            registry,
            operations,
            http_requests,
            http_duration,
            contexts,
            versions,
            l1_entries,
            l1_bytes,
            cache_requests,
            cache_hit_ratio,
            sync_latency,
            sync_pending,
            sync_failures,
            auth_failures,
            overload_rejections,
            inflight_body_bytes,
            http_connections,
        }
    }

    /// A request or connection turned away; `reason` is one of [`OVERLOAD_REASONS`].
    pub fn observe_overload(&self, reason: &'static str) {
        self.overload_rejections.with_label_values(&[reason]).inc();
    }

    pub fn set_inflight_body_bytes(&self, bytes: usize) {
        self.inflight_body_bytes.set(bytes as i64);
    }

    /// The open connections gauge, for the server's accept loop to move.
    pub fn http_connections(&self) -> &IntGauge {
        &self.http_connections
    }

    /// A request refused by auth; `reason` is one of [`AUTH_FAILURE_REASONS`].
    pub fn observe_auth_failure(&self, reason: &'static str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// One change delivered, `latency` after its commit.
    pub fn observe_sync_delivery(&self, latency: std::time::Duration) {
        self.sync_latency.observe(latency.as_secs_f64());
    }

    pub fn observe_sync_failure(&self) {
        self.sync_failures.inc();
    }

    pub fn set_sync_pending(&self, pending: i64) {
        self.sync_pending.set(pending);
    }

    pub fn observe_http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[method, route])
            .observe(seconds);
    }

    /// Names the tools of the MCP endpoint, so that each shows (at 0) before its first call.
    pub fn know_mcp_tools<'a>(&self, tools: impl IntoIterator<Item = &'a str>) {
        for tool in tools {
            for outcome in MCP_TOOL_OUTCOMES {
                self.operations
                    .mcp_tool_calls
                    .with_label_values(&[tool, outcome]);
            }
        }
    }

    /// One MCP tool call ended; `tool` is a known tool's name (or `unknown`), `outcome` one of
    /// [`MCP_TOOL_OUTCOMES`].
    pub fn observe_mcp_tool_call(&self, tool: &str, outcome: &'static str) {
        self.operations
            .mcp_tool_calls
            .with_label_values(&[tool, outcome])
            .inc();
    }

    /// How to count the open MCP sessions at scrape time (`None`: not known just now, keep the
    /// last count). Set once, by the MCP endpoint.
    pub fn count_mcp_sessions_with(
        &self,
        count: impl Fn() -> Option<usize> + Send + Sync + 'static,
    ) {
        let _ = self.operations.mcp_session_count.set(Box::new(count));
    }

    /// One batch of texts embedded in `seconds`, or failed.
    pub fn observe_embedding(&self, seconds: Option<f64>) {
        match seconds {
            Some(seconds) => self.operations.embedding_duration.observe(seconds),
            None => self.operations.embedding_failures.inc(),
        }
    }

    pub fn set_embedding_queue(&self, queued: i64) {
        self.operations.embedding_queue.set(queued);
    }

    /// The text exposition, with the gauges set from what `scrape` gathered and the cache's own
    /// counters; families with nothing to measure (see [`Scrape`]) are left out.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        let cache = scrape.cache;
        self.operations.set(scrape);
        if let Some(counts) = scrape.counts {
            self.contexts.set(counts.contexts);
            self.versions.set(counts.versions);
        }
        self.l1_entries.set(cache.l1.entries as i64);
        self.l1_bytes.set(cache.l1.bytes as i64);
        // The layers count on their own; copy their totals so nothing is counted twice.
        let mut totals = vec![("l1", cache.l1.hits, cache.l1.misses)];
        if let Some(l2) = cache.l2 {
            totals.push(("l2", l2.hits, l2.misses));
        }
        if cache.l3_enabled {
            totals.push(("l3", cache.l3_hits, cache.l3_misses));
        }
        for (layer, hits, misses) in totals {
            for (result, total) in [("hit", hits), ("miss", misses)] {
                let counter = self.cache_requests.with_label_values(&[layer, result]);
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        let requests = cache.requests();
        self.cache_hit_ratio.set(if requests == 0 {
            0.0
        } else {
            cache.hits() as f64 / requests as f64
        });

        let absent = self.operations.absent(scrape);
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(
                &self
                    .registry
                    .gather()
                    .into_iter()
                    .filter(|family| !absent.contains(&family.name()))
                    .collect::<Vec<_>>(),
                &mut buffer,
            )
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The process's own metrics, as Prometheus's client libraries name them, read from `/proc`
/// (absent elsewhere).
mod process {
    use prometheus::{Counter, Gauge, IntGauge, Registry};

    pub struct Collectors {
        cpu_seconds: Counter,
        resident_bytes: IntGauge,
        open_fds: IntGauge,
        max_fds: IntGauge,
    }

    impl Collectors {
        pub fn new(registry: &Registry) -> Self {
            let start = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64());
            let start_time = Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
            )
            .expect("valid metric");
            start_time.set(start.floor());
            // Moved to /proc's total at each scrape (it only ever grows).
            let cpu_seconds = Counter::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent, in seconds.",
            )
            .expect("valid metric");
            let resident_bytes = IntGauge::new(
                "process_resident_memory_bytes",
                "Resident memory size, in bytes.",
            )
            .expect("valid metric");
            let open_fds =
                IntGauge::new("process_open_fds", "Open file descriptors.").expect("valid metric");
            let max_fds = IntGauge::new(
                "process_max_fds",
                "The most file descriptors the process may open (its soft limit).",
            )
            .expect("valid metric");
            if std::path::Path::new("/proc/self/stat").exists() {
                for collector in [
                    Box::new(start_time) as Box<dyn prometheus::core::Collector>,
                    Box::new(cpu_seconds.clone()),
                    Box::new(resident_bytes.clone()),
                    Box::new(open_fds.clone()),
                    Box::new(max_fds.clone()),
                ] {
                    registry
                        .register(collector)
                        .expect("metric names are unique");
                }
            }
            Self {
                cpu_seconds,
                resident_bytes,
                open_fds,
                max_fds,
            }
        }

        /// Reads the process's numbers now; what cannot be read keeps its last value.
        pub fn sample(&self) {
            if let Some((ticks, pages)) = std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|stat| cpu_ticks_and_rss_pages(&stat))
            {
                // SAFETY: sysconf only reads configuration values.
                let (ticks_per_second, page_size) = unsafe {
                    (
                        libc::sysconf(libc::_SC_CLK_TCK),
                        libc::sysconf(libc::_SC_PAGESIZE),
                    )
                };
                if ticks_per_second > 0 {
                    let total = ticks as f64 / ticks_per_second as f64;
                    self.cpu_seconds
                        .inc_by((total - self.cpu_seconds.get()).max(0.0));
                }
                self.resident_bytes
                    .set(pages.saturating_mul(page_size.max(0)));
            }
            if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
                // Less the one read_dir itself holds open.
                self.open_fds.set(fds.count().saturating_sub(1) as i64);
            }
            if let Some(max) = std::fs::read_to_string("/proc/self/limits")
                .ok()
                .and_then(|limits| max_open_files(&limits))
            {
                self.max_fds.set(max);
            }
        }
    }

    /// utime + stime (fields 14 and 15) and rss (field 24) of `/proc/self/stat`. The command
    /// name (field 2) is in parentheses and may hold spaces: count from the last `)`.
    fn cpu_ticks_and_rss_pages(stat: &str) -> Option<(u64, i64)> {
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        // fields[0] is field 3 (state).
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let rss: i64 = fields.get(21)?.parse().ok()?;
        Some((utime + stime, rss))
    }

    /// The soft limit of "Max open files" in `/proc/self/limits`.
    fn max_open_files(limits: &str) -> Option<i64> {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reads_stat_with_a_command_name_holding_spaces_and_parentheses() {
            let stat = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 2630 0 0 0 \
                        157 43 0 0 20 0 9 0 123456 123456789 5678 18446744073709551615";
            assert_eq!(cpu_ticks_and_rss_pages(stat), Some((200, 5678)));
        }

        #[test]
        fn reads_the_soft_limit_of_open_files() {
            let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                          Max processes             95123                95123                processes\n\
                          Max open files            1024                 524288               files\n";
            assert_eq!(max_open_files(limits), Some(1024));
        }
    }
}
