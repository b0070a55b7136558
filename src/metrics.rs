//! Prometheus metrics: the registry, HTTP request counters, and gauges read at scrape time.
//!
//! Labels are bounded: the route is the matched template (`/contexts/{id}`), never the raw
//! path, and requests matching no route share the label `unmatched`.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::cache::CacheStats;
use crate::store::Counts;

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
        Self {
            registry,
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

    /// The text exposition, with the gauges set from `counts` (left out while `None`: the store
    /// was not counted yet) and
    /// the cache's own counters.
    pub fn render(&self, counts: Option<Counts>, cache: &CacheStats) -> String {
        if let Some(counts) = counts {
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

        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(
                &self
                    .registry
                    .gather()
                    .into_iter()
                    // Until the store was first counted, no count is better than a wrong one.
                    .filter(|family| {
                        counts.is_some()
                            || !["contextd_contexts", "contextd_context_versions"]
                                .contains(&family.name())
                    })
                    .collect::<Vec<_>>(),
                &mut buffer,
            )
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
