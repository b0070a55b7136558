//! The invalidation listener: a connection of its own subscribed to the invalidation channel,
//! forwarding each message to its owner, resubscribing after Redis comes back, and telling the
//! owner to resync when messages may have been missed.

use super::*;

/// The invalidation listener of [`RedisL2::subscribe`]: dropping it, or [`Self::stop`], ends it.
pub struct SubscriptionHandle {
    pub(super) stop: Option<oneshot::Sender<()>>,
    pub(super) task: Option<JoinHandle<()>>,
    pub(super) listening: Arc<AtomicBool>,
}

impl SubscriptionHandle {
    /// Whether the subscription is in place now (for `/readyz` and tests).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Ends the listener and waits until it has closed its connection.
    pub async fn stop(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl std::fmt::Debug for SubscriptionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionHandle")
            .field("listening", &self.is_listening())
            .finish()
    }
}

/// One message on the invalidation channel.
#[derive(Serialize, Deserialize)]
pub(super) struct Invalidation {
    pub(super) id: String,
    pub(super) stamp: String,
}

/// The invalidation listener's task and its dedicated connection.
pub(super) struct Listener {
    pub(super) client: Client,
    pub(super) channel: String,
    pub(super) listening: Arc<AtomicBool>,
    pub(super) log: LogLimiter,
}

impl Listener {
    pub(super) async fn run(
        self,
        on_invalidate: impl Fn(ContextId, Stamp),
        on_resync: impl Fn(),
        mut stopped: oneshot::Receiver<()>,
    ) {
        // Receivers first, so that nothing fred reports after `connect` is missed.
        let mut messages = self.client.message_rx();
        let mut reconnections = self.client.reconnect_rx();
        let mut errors = self.client.error_rx();
        let router = self.client.connect();
        let mut first = true;
        let mut health = tokio::time::interval(LISTENER_HEALTH_EVERY);

        'session: loop {
            self.listening.store(false, Ordering::Relaxed);
            tokio::select! {
                _ = &mut stopped => break 'session,
                () = self.subscribe(&mut reconnections) => {}
            }
            self.listening.store(true, Ordering::Relaxed);
            // The first subscription needs no resync unless fred reported trouble before it:
            // until then, this instance had nothing to miss.
            let troubled = !matches!(errors.try_recv(), Err(TryRecvError::Empty));
            if !first || troubled {
                on_resync();
            }
            first = false;
            while !matches!(
                errors.try_recv(),
                Err(TryRecvError::Empty | TryRecvError::Closed)
            ) {}
            health.reset();

            loop {
                tokio::select! {
                    _ = &mut stopped => break 'session,
                    message = messages.recv() => match message {
                        Ok(message) => self.deliver(&message, &on_invalidate),
                        Err(RecvError::Lagged(dropped)) => {
                            self.log.warn(&format!("dropped {dropped} invalidations; resyncing"));
                            on_resync();
                        }
                        Err(RecvError::Closed) => break 'session,
                    },
                    // The connection dropped: not listening until the next one subscribes.
                    error = errors.recv() => match error {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            self.listening.store(false, Ordering::Relaxed);
                        }
                        Err(RecvError::Closed) => break 'session,
                    },
                    // A new connection has none of the old one's subscriptions.
                    reconnection = reconnections.recv() => match reconnection {
                        Ok(_) | Err(RecvError::Lagged(_)) => continue 'session,
                        Err(RecvError::Closed) => break 'session,
                    },
                    _ = health.tick() => self.check_health().await,
                }
            }
        }
        self.listening.store(false, Ordering::Relaxed);
        shut_down(self.client, router).await;
    }

    /// Subscribes, retrying until it holds. Returns once Redis has processed the SUBSCRIBE.
    pub(super) async fn subscribe(&self, reconnections: &mut broadcast::Receiver<Server>) {
        loop {
            while !self.client.is_connected() {
                tokio::time::sleep(CONNECTED_POLL).await;
            }
            // This connection is the one subscribing: its own event, if still queued, is not a
            // reason to subscribe again. (A later one is, and will be seen.)
            while !matches!(
                reconnections.try_recv(),
                Err(TryRecvError::Empty | TryRecvError::Closed)
            ) {}
            // fred answers SUBSCRIBE as soon as it is written; the PING after it, answered in
            // order on the same connection, proves that Redis has processed it.
            let result = async {
                self.client.subscribe(self.channel.as_str()).await?;
                self.client.ping::<Value>(None).await
            }
            .await;
            match result {
                Ok(_) => return,
                Err(error) => {
                    self.log
                        .warn(&format!("subscribing to invalidations failed: {error}"));
                    tokio::time::sleep(LISTENER_RETRY_DELAY).await;
                }
            }
        }
    }

    /// An idle connection can die without a word (a peer gone behind a NAT, a partition): if a
    /// PING goes unanswered while fred still thinks it is connected, make it reconnect.
    pub(super) async fn check_health(&self) {
        if !self.client.is_connected() {
            return; // fred is already reconnecting; its event will resubscribe
        }
        if let Err(error) = self.client.ping::<Value>(None).await {
            self.log
                .warn(&format!("invalidation connection unresponsive: {error}"));
            let _ =
                tokio::time::timeout(LISTENER_COMMAND_TIMEOUT, self.client.force_reconnection())
                    .await;
        }
    }

    pub(super) fn deliver(&self, message: &Message, on_invalidate: &impl Fn(ContextId, Stamp)) {
        if &*message.channel != self.channel.as_str() {
            return;
        }
        let parsed = message
            .value
            .as_str()
            .and_then(|text| serde_json::from_str::<Invalidation>(&text).ok())
            .and_then(|m| Some((ContextId::parse(&m.id).ok()?, Stamp::decode(&m.stamp)?)));
        match parsed {
            Some((id, stamp)) => on_invalidate(id, stamp),
            None => self.log.warn("ignored a malformed invalidation message"),
        }
    }
}
