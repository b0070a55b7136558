//! The webhook pusher: every committed change POSTed to `sync.factory.webhook_url` as
//! `{changes: [...]}`, in `seq` order, at least once, retried with capped exponential backoff
//! and jitter while the receiver fails, and signed when `sync.factory.secret` is set, per
//! Standard Webhooks (standardwebhooks.com): `webhook-id` names the changes (the same on
//! every retry of them, so a receiver can drop a repeat), `webhook-timestamp` is the attempt's
//! time (so a receiver can refuse a replay), and `webhook-signature` covers both and the body.
//!
//! The store claims each batch (one pusher in the whole cluster at a time, rows locked with
//! `FOR UPDATE SKIP LOCKED`) and records the outcome; this module only wakes at the right
//! moments and speaks HTTP.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::SyncState;
use crate::config::{FactorySettings, Secret};
use crate::domain::webhook_key;
use crate::metrics::Metrics;
use crate::store::{Change, ChangeLog, Deliver, DeliverOutcome, Delivery, Tally};
use crate::wire::ChangeOut;

/// The `webhook-id` of a batch: the same for the same changes, whatever the attempt. Change
/// numbers are gap-free, so the first, the last and the count name the set.
pub fn webhook_id(seqs: &[i64]) -> String {
    let (first, last) = (seqs.first().copied(), seqs.last().copied());
    format!(
        "msg_{}_{}_{}",
        first.unwrap_or(0),
        last.unwrap_or(0),
        seqs.len()
    )
}

/// The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn standard_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine as _;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The `X-Contextd-Signature` value for `body`, kept for older receivers:
/// `sha256=<hex HMAC-SHA256 of the body>` keyed with the secret's UTF-8 bytes.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// When to look again.
enum Wake {
    /// Nothing is waiting: at the next commit (or the poll, as a fallback).
    OnCommit,
    /// At this moment: a retry's backoff, another instance pushing, or an error.
    At(Instant),
}

#[derive(Clone)]
pub struct Pusher {
    store: Arc<dyn ChangeLog>,
    http: reqwest::Client,
    url: String,
    secret: Option<Secret<String>>,
    /// The Standard Webhooks key of `secret`.
    key: Option<Secret<Vec<u8>>>,
    batch_size: usize,
    retry_initial: Duration,
    retry_max: Duration,
    poll: Duration,
    metrics: Arc<Metrics>,
    state: Arc<SyncState>,
    /// Told of each delivery, so its count of waiting changes goes down with them.
    tally: Option<Arc<Tally>>,
}

impl Pusher {
    /// A pusher for `settings.webhook_url`; `None` when there is none.
    pub fn new(
        store: Arc<dyn ChangeLog>,
        settings: &FactorySettings,
        poll: Duration,
        metrics: Arc<Metrics>,
        state: Arc<SyncState>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(url) = settings.webhook_url.clone() else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.timeout_ms))
            .build()?;
        let key = match &settings.secret {
            None => None,
            Some(secret) => Some(Secret::new(
                webhook_key(secret.expose())
                    .map_err(|e| anyhow::anyhow!("sync.factory.secret: {e}"))?,
            )),
        };
        Ok(Some(Self {
            store,
            http,
            url,
            key,
            secret: settings.secret.clone(),
            batch_size: settings.batch_size,
            retry_initial: Duration::from_millis(settings.retry_initial_ms),
            retry_max: Duration::from_millis(settings.retry_max_ms),
            poll,
            metrics,
            state,
            tally: None,
        }))
    }

    /// Takes what it delivers off `tally`'s count of waiting changes.
    pub fn with_tally(mut self, tally: Arc<Tally>) -> Self {
        self.tally = Some(tally);
        self
    }

    /// Runs until `stop` turns true; a push in progress finishes first.
    pub fn spawn(self, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut commits = self.store.commits();
            self.state.set_running(true);
            loop {
                let wake = self.push_all().await;
                let deadline = match wake {
                    Wake::OnCommit => Instant::now() + self.poll,
                    Wake::At(at) => at,
                };
                let stopping = tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => true,
                    _ = commits.recv(), if matches!(wake, Wake::OnCommit) => false,
                    _ = tokio::time::sleep_until(deadline) => false,
                };
                if stopping {
                    break;
                }
                // One round serves every commit signalled so far.
                while !matches!(
                    commits.try_recv(),
                    Err(broadcast::error::TryRecvError::Empty)
                ) {}
            }
            self.state.set_running(false);
        })
    }

    /// Pushes until nothing is waiting, or until something makes it wait.
    async fn push_all(&self) -> Wake {
        if let Err(e) = self.store.sequence_outbox().await {
            tracing::warn!(error = %e, "numbering the outbox failed");
            return Wake::At(Instant::now() + self.poll);
        }
        loop {
            match self
                .store
                .deliver_pending(self.batch_size, self.deliver())
                .await
            {
                Ok(DeliverOutcome::Delivered(changes)) => {
                    if let Some(tally) = &self.tally {
                        tally.add(0, 0, -(changes.len() as i64));
                    }
                    let now = Utc::now();
                    for change in &changes {
                        let latency = (now - change.committed_at).to_std().unwrap_or_default();
                        self.metrics.observe_sync_delivery(latency);
                        self.state.set_last_latency(latency);
                    }
                }
                Ok(DeliverOutcome::Idle) => return Wake::OnCommit,
                // Another instance pushes; look again later, in case it stops.
                Ok(DeliverOutcome::Busy) => return Wake::At(Instant::now() + self.poll),
                Ok(DeliverOutcome::NotBefore(at)) => {
                    let wait = (at - Utc::now()).to_std().unwrap_or_default();
                    return Wake::At(Instant::now() + wait);
                }
                Ok(DeliverOutcome::Failed) => {
                    self.metrics.observe_sync_failure();
                    // The store recorded when to retry; the next round finds out.
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pushing changes failed");
                    return Wake::At(Instant::now() + self.poll);
                }
            }
        }
    }

    /// One delivery: the batch as `{changes: [...]}`, signed, POSTed within the timeout.
    fn deliver(&self) -> Deliver {
        let (http, url) = (self.http.clone(), self.url.clone());
        let (secret, key) = (self.secret.clone(), self.key.clone());
        let (initial, max) = (self.retry_initial, self.retry_max);
        Box::new(move |changes: Vec<Change>| {
            async move {
                let attempts = changes.first().map_or(0, |c| c.attempts);
                let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
                let entries: Vec<ChangeOut> = changes.into_iter().map(ChangeOut::from).collect();
                let body = serde_json::to_vec(&serde_json::json!({ "changes": entries }))
                    .expect("changes always serialize");
                let mut request = http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json");
                if let (Some(secret), Some(key)) = (&secret, &key) {
                    let id = webhook_id(&seqs);
                    let timestamp = Utc::now().timestamp();
                    request = request
                        .header(
                            "webhook-signature",
                            standard_signature(key.expose(), &id, timestamp, &body),
                        )
                        .header("webhook-id", id)
                        .header("webhook-timestamp", timestamp)
                        .header("X-Contextd-Signature", signature(secret.expose(), &body));
                }
                let error = match request.body(body).send().await {
                    Ok(response) if response.status().is_success() => return Delivery::Delivered,
                    Ok(response) => format!("the receiver answered {}", response.status()),
                    Err(e) => format!("no answer from the receiver: {e}"),
                };
                let delay = backoff(attempts, initial, max);
                tracing::warn!(%error, attempts = attempts + 1, retry_in = ?delay, "a push failed");
                Delivery::Failed {
                    retry_at: Utc::now()
                        + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::zero()),
                    error,
                }
            }
            .boxed()
        })
    }
}

/// `initial` doubled per attempt, capped at `max`, then jittered into its upper half so that
/// instances retrying together spread out.
fn backoff(attempts: i32, initial: Duration, max: Duration) -> Duration {
    let exponent = attempts.clamp(0, 30) as u32;
    let capped = initial.saturating_mul(1 << exponent).min(max);
    capped.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_standard_signature_matches_the_specifications_example() {
        // standard-webhooks/spec test vector (libraries' shared tests).
        let key = webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            standard_signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_batch_is_named_by_its_changes_alone() {
        assert_eq!(webhook_id(&[7, 8, 9]), "msg_7_9_3");
        assert_eq!(webhook_id(&[7, 8, 9]), webhook_id(&[7, 8, 9]));
        assert_ne!(webhook_id(&[7, 8, 9]), webhook_id(&[7, 8, 9, 10]));
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_into_the_upper_half() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            let first = backoff(0, initial, max);
            assert!(
                first >= Duration::from_millis(50) && first <= initial,
                "{first:?}"
            );
            let third = backoff(2, initial, max);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(20, initial, max);
            assert!(
                late >= Duration::from_millis(500) && late <= max,
                "{late:?}"
            );
        }
    }
}
