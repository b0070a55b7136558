//! Live resource subscriptions: which MCP clients listen to which contexts, fed by the commit
//! signal.
//!
//! One task reads the store's commit signal (Postgres `LISTEN/NOTIFY`, so commits of every
//! instance; in process on SQLite) and marks each subscriber of the changed context. A
//! subscriber is a set of pending ids and a wake-up; its own task sends the notifications. So
//! the fan-out never waits on a client: a slow one only collects pending ids (one per context,
//! however many commits), and a write never waits on the fan-out, which is a broadcast away.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use crate::domain::ContextId;
use crate::store::CommitNotice;

/// The URI scheme of a context resource: `context://{context_id}`.
pub const URI_PREFIX: &str = "context://";

/// The resource URI of a context.
pub fn uri(id: &ContextId) -> String {
    format!("{URI_PREFIX}{id}")
}

/// The context a resource URI names, if it names one.
pub fn parse_uri(uri: &str) -> Option<ContextId> {
    ContextId::parse(uri.strip_prefix(URI_PREFIX)?).ok()
}

/// Every subscriber, by the context it listens to.
#[derive(Default)]
pub struct Subscriptions {
    by_context: Mutex<HashMap<ContextId, Vec<Weak<Subscriber>>>>,
}

/// One listener: a `subscriptions/listen` stream, or a 2025 session's `resources/subscribe`s.
#[derive(Default)]
pub struct Subscriber {
    pending: Mutex<HashSet<ContextId>>,
    wake: Notify,
}

impl Subscriber {
    fn mark(&self, id: &ContextId) {
        let fresh = self
            .pending
            .lock()
            .expect("pending ids are never left half-changed")
            .insert(id.clone());
        if fresh {
            self.wake.notify_one();
        }
    }

    /// Waits until some subscribed context changed, and takes the ids that did.
    pub async fn changed(&self) -> Vec<ContextId> {
        loop {
            let ids: Vec<ContextId> = self
                .pending
                .lock()
                .expect("pending ids are never left half-changed")
                .drain()
                .collect();
            if !ids.is_empty() {
                return ids;
            }
            self.wake.notified().await;
        }
    }
}

/// A subscriber's place in [`Subscriptions`]; dropping it unsubscribes from everything.
pub struct Registration {
    hub: Arc<Subscriptions>,
    subscriber: Arc<Subscriber>,
    ids: Mutex<HashSet<ContextId>>,
}

impl Registration {
    pub fn subscriber(&self) -> &Subscriber {
        &self.subscriber
    }

    pub fn add(&self, id: ContextId) {
        let fresh = self
            .ids
            .lock()
            .expect("subscribed ids are never left half-changed")
            .insert(id.clone());
        if fresh {
            self.hub
                .by_context
                .lock()
                .expect("the subscription map is never left half-changed")
                .entry(id)
                .or_default()
                .push(Arc::downgrade(&self.subscriber));
        }
    }

    pub fn remove(&self, id: &ContextId) {
        let had = self
            .ids
            .lock()
            .expect("subscribed ids are never left half-changed")
            .remove(id);
        if had {
            self.hub.forget(id, &self.subscriber);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let ids = std::mem::take(
            &mut *self
                .ids
                .lock()
                .expect("subscribed ids are never left half-changed"),
        );
        for id in &ids {
            self.hub.forget(id, &self.subscriber);
        }
    }
}

impl Subscriptions {
    /// A new subscriber, listening to nothing yet.
    pub fn register(self: &Arc<Self>) -> Registration {
        Registration {
            hub: self.clone(),
            subscriber: Arc::new(Subscriber::default()),
            ids: Mutex::default(),
        }
    }

    fn forget(&self, id: &ContextId, subscriber: &Arc<Subscriber>) {
        let mut map = self
            .by_context
            .lock()
            .expect("the subscription map is never left half-changed");
        if let Some(list) = map.get_mut(id) {
            list.retain(|w| w.upgrade().is_some_and(|s| !Arc::ptr_eq(&s, subscriber)));
            if list.is_empty() {
                map.remove(id);
            }
        }
    }

    /// How many contexts have at least one subscriber.
    pub fn watched(&self) -> usize {
        self.by_context
            .lock()
            .expect("the subscription map is never left half-changed")
            .len()
    }

    fn changed(&self, id: &ContextId) {
        let subscribers: Vec<Arc<Subscriber>> = self
            .by_context
            .lock()
            .expect("the subscription map is never left half-changed")
            .get(id)
            .map(|list| list.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        for subscriber in subscribers {
            subscriber.mark(id);
        }
    }

    /// The signal was interrupted: anything may have changed, so every subscriber hears of
    /// every context it listens to.
    fn changed_all(&self) {
        let marks: Vec<(ContextId, Arc<Subscriber>)> = self
            .by_context
            .lock()
            .expect("the subscription map is never left half-changed")
            .iter()
            .flat_map(|(id, list)| {
                list.iter()
                    .filter_map(Weak::upgrade)
                    .map(move |s| (id.clone(), s))
            })
            .collect();
        for (id, subscriber) in marks {
            subscriber.mark(&id);
        }
    }

    /// Feeds the subscribers from the store's commit signal until `stop`.
    pub fn spawn_feed(
        self: &Arc<Self>,
        mut commits: broadcast::Receiver<CommitNotice>,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    notice = commits.recv() => match notice {
                        Ok(CommitNotice::Changed(id, _)) => hub.changed(&id),
                        Ok(CommitNotice::KeysChanged) => {}
                        Ok(CommitNotice::Unknown) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            hub.changed_all();
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = stop.wait_for(|stop| *stop) => return,
                }
            }
        })
    }
}

/// Sends each change `registration` hears of through `send`, until `send` fails (the client is
/// gone) or `until` completes.
pub async fn forward<F, Fut>(registration: &Registration, until: impl Future<Output = ()>, send: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = bool>,
{
    tokio::pin!(until);
    loop {
        tokio::select! {
            () = &mut until => return,
            ids = registration.subscriber().changed() => {
                for id in ids {
                    if !send(uri(&id)).await {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(raw: &str) -> ContextId {
        ContextId::parse(raw).unwrap()
    }

    #[test]
    fn uris_name_contexts_and_nothing_else() {
        assert_eq!(uri(&id("a.b")), "context://a.b");
        assert_eq!(parse_uri("context://a.b"), Some(id("a.b")));
        assert_eq!(parse_uri("file:///a"), None);
        assert_eq!(parse_uri("context://"), None);
        assert_eq!(parse_uri("context://a/b"), None);
    }

    #[tokio::test]
    async fn a_change_reaches_its_subscribers_once_however_often_it_commits() {
        let hub = Arc::new(Subscriptions::default());
        let (a, b) = (hub.register(), hub.register());
        a.add(id("x"));
        b.add(id("y"));
        hub.changed(&id("x"));
        hub.changed(&id("x"));
        assert_eq!(a.subscriber().changed().await, vec![id("x")]);
        let quiet = tokio::time::timeout(Duration::from_millis(20), b.subscriber().changed());
        assert!(quiet.await.is_err(), "y did not change");
    }

    #[tokio::test]
    async fn an_interrupted_signal_wakes_every_subscriber() {
        let hub = Arc::new(Subscriptions::default());
        let a = hub.register();
        a.add(id("x"));
        a.add(id("y"));
        hub.changed_all();
        let mut ids = a.subscriber().changed().await;
        ids.sort_by(|p, q| p.as_str().cmp(q.as_str()));
        assert_eq!(ids, vec![id("x"), id("y")]);
    }

    #[test]
    fn dropping_or_removing_a_registration_unsubscribes() {
        let hub = Arc::new(Subscriptions::default());
        let a = hub.register();
        a.add(id("x"));
        a.add(id("y"));
        assert_eq!(hub.watched(), 2);
        a.remove(&id("x"));
        assert_eq!(hub.watched(), 1);
        drop(a);
        assert_eq!(hub.watched(), 0);
    }
}
