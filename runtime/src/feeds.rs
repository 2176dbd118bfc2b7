//! Subscribers of actors' events, held by the POP they connected to.
//!
//! Events live in the store (an actor's commit writes them, see
//! [`crate::outbox`]), so a subscriber needs no activation: each
//! (actor, topic) that has subscribers here gets one *feed* task that reads
//! new events from the store (woken at once by a local commit, else every
//! [`FEED_POLL_MS`] while the topic is busy, backing off to
//! [`FEED_POLL_MS_MAX`] while it is idle) and broadcasts them. Each subscriber first catches up
//! from the store after its `resume_after`, then follows the feed, filling
//! any gap from the store again: it sees every event once, in order, across
//! the actor's migrations and failovers.
//!
//! Nothing here can slow an actor: the feed never waits for a subscriber.
//! A subscriber more than [`FEED_BUFFER`] events behind the feed is
//! dropped with RESOURCE_EXHAUSTED, naming the seq to resume after.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_storage::{EventRecord, Store};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::error::{Result, RuntimeError};

/// Subscribers one POP holds at most.
pub const SUBSCRIBERS_MAX: usize = 10_000;
/// Events a feed holds for its slowest subscriber before that one is
/// dropped.
pub const FEED_BUFFER: usize = 256;
/// Events buffered between a subscriber and its connection.
pub const SUBSCRIBER_BUFFER: usize = 64;
/// How often a feed reads the store when no local commit woke it, ms: the
/// latency of events published at another POP while a topic is busy.
pub const FEED_POLL_MS: u64 = 20;
/// A feed whose reads find nothing doubles its wait up to this, ms: an idle
/// topic costs a store read per this period, and its next event from
/// another POP arrives within it.
pub const FEED_POLL_MS_MAX: u64 = 320;
/// Events read from the store at once.
const READ_BATCH: usize = 256;

type FeedKey = (String, String);

struct Feed {
    tx: broadcast::Sender<Arc<EventRecord>>,
    poke: Notify,
}

/// The POP's feeds and subscribers.
pub struct Feeds {
    feeds: Mutex<HashMap<FeedKey, Arc<Feed>>>,
    subscribers: Arc<AtomicUsize>,
    /// Set when the POP shuts down: every subscription ends.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for Feeds {
    fn default() -> Self {
        Feeds {
            feeds: Mutex::default(),
            subscribers: Arc::default(),
            closing: tokio::sync::watch::channel(false).0,
        }
    }
}

/// A subscriber that has not taken an event for this long is dropped, ms.
pub const SUBSCRIBER_STALL_MS: u64 = 10_000;

/// One subscription: events in order, then perhaps an error that ends it.
pub struct Subscription {
    rx: mpsc::Receiver<EventRecord>,
    end: Arc<Mutex<Option<RuntimeError>>>,
}

impl Subscription {
    /// The next event; `None` once the subscription ended without error.
    pub async fn next(&mut self) -> Option<Result<EventRecord>> {
        match self.rx.recv().await {
            Some(e) => Some(Ok(e)),
            None => self.end.lock().expect("end lock").take().map(Err),
        }
    }
}

type Out = mpsc::Sender<EventRecord>;

/// Counts a subscriber while it lives.
struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Feeds {
    /// Ends every subscription (the POP is shutting down: a server drains
    /// its open streams before it stops) and refuses new ones. Each
    /// subscriber is told to subscribe again after its last seq.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Subscribers held now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    /// Feeds running now.
    pub fn feeds(&self) -> usize {
        self.feeds.lock().expect("feeds lock").len()
    }

    /// A local commit published on `topics` of `actor`: wake their feeds.
    pub fn poke(&self, actor: &str, topics: &BTreeSet<String>) {
        let feeds = self.feeds.lock().expect("feeds lock");
        for t in topics {
            if let Some(f) = feeds.get(&(actor.to_string(), t.clone())) {
                f.poke.notify_one();
            }
        }
    }

    /// Subscribes to `actor`'s `topic` from the event after `resume_after`.
    pub fn subscribe(
        self: &Arc<Self>,
        store: &Store,
        actor: &str,
        topic: &str,
        resume_after: u64,
    ) -> Result<Subscription> {
        if *self.closing.borrow() {
            return Err(RuntimeError::ShuttingDown);
        }
        let held = self.subscribers.fetch_add(1, Ordering::AcqRel);
        let held_guard = Held(self.subscribers.clone());
        if held >= SUBSCRIBERS_MAX {
            return Err(RuntimeError::PopBudget(format!(
                "this POP holds {SUBSCRIBERS_MAX} subscribers, its limit; subscribe at another POP or later"
            )));
        }
        let key = (actor.to_string(), topic.to_string());
        let rx = {
            let mut feeds = self.feeds.lock().expect("feeds lock");
            match feeds.get(&key) {
                Some(f) => f.tx.subscribe(),
                None => {
                    let (tx, rx) = broadcast::channel(FEED_BUFFER);
                    let f = Arc::new(Feed {
                        tx,
                        poke: Notify::new(),
                    });
                    feeds.insert(key.clone(), f.clone());
                    tokio::spawn(self.clone().run_feed(store.clone(), key.clone(), f));
                    rx
                }
            }
        };
        let (out, sub) = mpsc::channel(SUBSCRIBER_BUFFER);
        let end = Arc::new(Mutex::new(None));
        metrics::gauge!("tern_subscribers").increment(1.0);
        tokio::spawn(follow(
            store.clone(),
            key,
            resume_after,
            rx,
            (out, end.clone()),
            (held_guard, self.closing.subscribe()),
        ));
        Ok(Subscription { rx: sub, end })
    }

    /// A feed: reads new events of one topic from the store and broadcasts
    /// them, until no subscriber is left.
    async fn run_feed(self: Arc<Self>, store: Store, key: FeedKey, feed: Arc<Feed>) {
        let (actor, topic) = key.clone();
        let mut last = {
            let (store, a, t) = (store.clone(), actor.clone(), topic.clone());
            match tokio::task::spawn_blocking(move || store.last_event_seq(&a, &t)).await {
                Ok(Ok(s)) => s,
                _ => 0,
            }
        };
        let mut wait = FEED_POLL_MS;
        loop {
            {
                let mut feeds = self.feeds.lock().expect("feeds lock");
                if feed.tx.receiver_count() == 0 {
                    if feeds.get(&key).is_some_and(|f| Arc::ptr_eq(f, &feed)) {
                        feeds.remove(&key);
                    }
                    return;
                }
            }
            let (s, a, t) = (store.clone(), actor.clone(), topic.clone());
            let read =
                tokio::task::spawn_blocking(move || s.read_events(&a, &t, last, READ_BATCH)).await;
            let batch = match read {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::warn!(actor = %actor, topic = %topic, error = %e, "a feed cannot read events; retrying");
                    Vec::new()
                }
                Err(_) => Vec::new(),
            };
            let full = batch.len() == READ_BATCH;
            wait = if batch.is_empty() {
                (wait * 2).min(FEED_POLL_MS_MAX)
            } else {
                FEED_POLL_MS
            };
            for e in batch {
                last = e.seq;
                // No receiver is not an error: the check above ends the feed.
                let _ = feed.tx.send(Arc::new(e));
            }
            if full {
                continue;
            }
            tokio::select! {
                () = feed.poke.notified() => wait = FEED_POLL_MS,
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
    }
}

/// Events of `key` after `after`, read from the store.
async fn read_after(store: &Store, key: &FeedKey, after: u64) -> Result<Vec<EventRecord>> {
    let (s, a, t) = (store.clone(), key.0.clone(), key.1.clone());
    tokio::task::spawn_blocking(move || s.read_events(&a, &t, after, READ_BATCH))
        .await
        .map_err(|e| RuntimeError::Internal(format!("event read panicked: {e}")))?
        .map_err(RuntimeError::from)
}

/// Sends `e` if it is the next one. `Err` ends the subscription: the
/// subscriber is gone, or an event it needs is no longer kept.
async fn deliver(
    out: &Out,
    key: &FeedKey,
    last: &mut u64,
    e: EventRecord,
) -> std::result::Result<(), Option<RuntimeError>> {
    if e.seq <= *last {
        return Ok(());
    }
    if e.seq != *last + 1 {
        return Err(Some(RuntimeError::EventsTrimmed(format!(
            "events {}..{} of {}/{} are no longer kept (each topic keeps its newest {}); subscribe with resume_after={} to skip them",
            *last + 1,
            e.seq - 1,
            key.0,
            key.1,
            tern_storage::EVENTS_KEPT_PER_TOPIC,
            e.seq - 1
        ))));
    }
    let seq = e.seq;
    match tokio::time::timeout(Duration::from_millis(SUBSCRIBER_STALL_MS), out.send(e)).await {
        Ok(Ok(())) => {
            *last = seq;
            Ok(())
        }
        // The subscriber went away.
        Ok(Err(_)) => Err(None),
        Err(_) => {
            metrics::counter!("tern_subscribers_dropped_total").increment(1);
            Err(Some(RuntimeError::SubscriberDropped(format!(
                "this subscriber of {}/{} took no event for {SUBSCRIBER_STALL_MS} ms and was dropped; subscribe again with resume_after={}",
                key.0, key.1, *last
            ))))
        }
    }
}

/// Catches up from the store after `last` until it holds no more.
async fn catch_up(
    store: &Store,
    out: &Out,
    key: &FeedKey,
    last: &mut u64,
) -> std::result::Result<(), Option<RuntimeError>> {
    loop {
        let batch = read_after(store, key, *last).await.map_err(Some)?;
        let n = batch.len();
        for e in batch {
            deliver(out, key, last, e).await?;
        }
        if n < READ_BATCH {
            return Ok(());
        }
    }
}

/// One subscriber: catch up from the store, then follow the feed.
async fn follow(
    store: Store,
    key: FeedKey,
    resume_after: u64,
    mut rx: broadcast::Receiver<Arc<EventRecord>>,
    (out, end): (Out, Arc<Mutex<Option<RuntimeError>>>),
    (held, mut closing): (Held, tokio::sync::watch::Receiver<bool>),
) {
    let mut last = resume_after;
    let work = async {
        catch_up(&store, &out, &key, &mut last).await?;
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if e.seq > last + 1 {
                        // Missed while catching up: the store has them.
                        catch_up(&store, &out, &key, &mut last).await?;
                    }
                    deliver(&out, &key, &mut last, (*e).clone()).await?;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    metrics::counter!("tern_subscribers_dropped_total").increment(1);
                    return Err(Some(RuntimeError::SubscriberDropped(format!(
                        "this subscriber of {}/{} fell more than {FEED_BUFFER} events behind and was dropped; subscribe again with resume_after={last}",
                        key.0, key.1
                    ))));
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Some(RuntimeError::Resubscribe(format!(
                        "the feed of {}/{} ended; subscribe again with resume_after={last}",
                        key.0, key.1
                    ))));
                }
            }
        }
    };
    let ended: std::result::Result<(), Option<RuntimeError>> = tokio::select! {
        r = work => r,
        _ = closing.wait_for(|c| *c) => Err(None),
    };
    let ended = match ended {
        Err(None) if *closing.borrow() => Err(Some(RuntimeError::Resubscribe(format!(
            "this POP is shutting down; subscribe to {}/{} again (at another POP) with resume_after={last}",
            key.0, key.1
        )))),
        other => other,
    };
    if let Err(Some(e)) = ended {
        *end.lock().expect("end lock") = Some(e);
    }
    drop(out);
    metrics::gauge!("tern_subscribers").decrement(1.0);
    drop(held);
}
