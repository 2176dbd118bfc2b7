//! Durable alarms and published events, in process: both are committed
//! with the turn that made them, so a rolled-back turn leaves neither; an
//! alarm missed while nothing hosted its actor fires once a POP can; a
//! slow subscriber is dropped without slowing the actor.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tern_runtime::config::{Durability, Limits};
use tern_runtime::{ErrorKind, Node};
use tern_storage::Store;

/// Polls `cond` every 20 ms until it holds, for at most `secs` seconds.
async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A POP with the counter type in `turn` durability and default limits.
fn turn_node(store: &Store) -> Node {
    node_with_counter(
        store.clone(),
        "counter",
        Durability::Turn,
        Limits::default(),
    )
}

/// Sets an alarm on `counter/<id>` due in `in_ms`; `set_alarm`'s reply.
async fn set_alarm(node: &Node, id: &str, in_ms: u64, tag: &str) -> serde_json::Value {
    call(
        node,
        "counter",
        id,
        "set_alarm",
        json!({"in_ms": in_ms, "tag": tag}),
    )
    .await
    .expect("set_alarm")
}

async fn fired(node: &Node, id: &str) -> Vec<serde_json::Value> {
    call(node, "counter", id, "fired", json!(null))
        .await
        .expect("fired")["fired"]
        .as_array()
        .expect("a list")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_turn_sets_no_alarm() {
    let store = Store::memory();
    let node = turn_node(&store);
    let err = call(
        &node,
        "counter",
        "a",
        "set_alarm_then_panic",
        json!({"in_ms": 0, "tag": "ghost"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Aborted, "{err}");
    assert!(
        store.list_due(u64::MAX, 10).unwrap().is_empty(),
        "the rolled-back turn indexed an alarm"
    );
    let set = set_alarm(&node, "a", 30, "real").await;
    eventually(10, "the real alarm fires", || async {
        !fired(&node, "a").await.is_empty()
    })
    .await;
    let f = fired(&node, "a").await;
    assert_eq!(f.len(), 1, "only the committed alarm fires: {f:?}");
    assert_eq!(f[0][0], set["id"]);
    assert_eq!(f[0][1], "real");
    assert!(
        f[0][3].as_u64().unwrap() >= set["at_ms"].as_u64().unwrap(),
        "not early"
    );
    eventually(10, "the fired alarm leaves the due index", || async {
        store.list_due(u64::MAX, 10).unwrap().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_alarm_fires_when_hosted_again() {
    let store = Store::memory();
    let first = turn_node(&store);
    let set = set_alarm(&first, "m", 300, "missed").await;
    let at_ms = set["at_ms"].as_u64().unwrap();
    // The only POP goes away before the alarm is due...
    first.shutdown().await;
    drop(first);
    assert_eq!(
        store.list_due(u64::MAX, 10).unwrap().len(),
        1,
        "the alarm is durable"
    );
    // ...and stays away past the due time: nothing can fire it.
    let now = tern_runtime::clock::World::default().clock.wall_ms();
    tokio::time::sleep(Duration::from_millis(at_ms.saturating_sub(now) + 200)).await;
    // A POP comes up. Nobody calls the actor: its sweeper wakes it.
    let second = Node::new("pop-2", store.clone(), engine());
    eventually(15, "the missed alarm fires", || async {
        store.list_due(u64::MAX, 10).unwrap().is_empty()
    })
    .await;
    assert_eq!(second.active_actors(), 1, "the sweeper activated the actor");
    let f = fired(&second, "m").await;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0][1], "missed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_alarm_never_fires_and_reserved_methods_are_refused() {
    let store = Store::memory();
    let node = node_with_counter(
        store.clone(),
        "counter",
        Durability::Idle,
        Limits::default(),
    );
    let set = set_alarm(&node, "c", 200, "x").await;
    // Idle durability still commits the turn that set an alarm.
    assert_eq!(store.list_due(u64::MAX, 10).unwrap().len(), 1);
    let cancelled = call(
        &node,
        "counter",
        "c",
        "cancel_alarm",
        json!({"id": set["id"]}),
    )
    .await
    .unwrap();
    assert_eq!(cancelled, json!(true));
    assert!(store.list_due(u64::MAX, 10).unwrap().is_empty());
    // A client cannot forge an alarm's turn.
    let err = call(
        &node,
        "counter",
        "c",
        "~alarm",
        json!({"id": 1, "tag": "forged", "at_ms": 0}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(fired(&node, "c").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_from_rolled_back_turn() {
    let store = Store::memory();
    let node = turn_node(&store);
    let mut sub = node.subscribe("counter", "p", "state", 0).unwrap();
    let err = call(
        &node,
        "counter",
        "p",
        "publish_then_panic",
        json!({"topic": "state", "n": 2, "prefix": "ghost-"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Aborted, "{err}");
    call(
        &node,
        "counter",
        "p",
        "publish",
        json!({"topic": "state", "n": 3, "prefix": "real-"}),
    )
    .await
    .unwrap();
    for seq in 1..=3u64 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("an event within 10 s")
            .expect("the subscription is open")
            .expect("an event");
        assert_eq!(e.seq, seq);
        assert_eq!(
            e.payload,
            format!("real-{}", seq - 1).into_bytes(),
            "only the committed turn's events"
        );
    }
    let kept = store.read_events("counter/p", "state", 0, 100).unwrap();
    assert_eq!(kept.len(), 3);
    // A subscriber that resumes gets the rest, not what it had.
    let mut again = node.subscribe("counter", "p", "state", 2).unwrap();
    let e = again.next().await.unwrap().unwrap();
    assert_eq!((e.seq, e.payload), (3, b"real-2".to_vec()));
    // Bad subscriptions get clear errors.
    let bad = node
        .subscribe("nope", "p", "state", 0)
        .err()
        .expect("unknown type");
    assert_eq!(bad.kind(), ErrorKind::NotFound);
    let bad = node
        .subscribe("counter", "p", "", 0)
        .err()
        .expect("empty topic");
    assert_eq!(bad.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_does_not_stall_actor() {
    const TURNS: u64 = 40;
    const PER_TURN: u64 = 50;
    let store = Store::memory();
    let node = turn_node(&store);
    // One subscriber never reads; another keeps up.
    let mut slow = node.subscribe("counter", "s", "t", 0).unwrap();
    let mut fast = node.subscribe("counter", "s", "t", 0).unwrap();
    let (progress, mut seen) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut last = 0;
        while last < TURNS * PER_TURN {
            let e = tokio::time::timeout(Duration::from_secs(20), fast.next())
                .await
                .expect("the fast subscriber gets events")
                .expect("open")
                .expect("an event");
            assert_eq!(e.seq, last + 1, "in order, no gap, no duplicate");
            last = e.seq;
            let _ = progress.send(last);
        }
        last
    });
    for turn in 1..=TURNS {
        call(
            &node,
            "counter",
            "s",
            "publish",
            json!({"topic": "t", "n": PER_TURN}),
        )
        .await
        .expect("the actor's turns go on whatever its subscribers do");
        // The fast reader keeps pace (it is not what this test is about);
        // the slow one still reads nothing.
        tokio::time::timeout(
            Duration::from_secs(20),
            seen.wait_for(|s| *s == turn * PER_TURN),
        )
        .await
        .expect("the fast subscriber keeps up")
        .expect("the reader is alive");
    }
    assert_eq!(value(&node, "counter", "s").await, TURNS * PER_TURN);
    assert_eq!(reader.await.unwrap(), TURNS * PER_TURN);
    // The slow subscriber gets what its buffers held, then a clear end.
    let mut got = 0;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(20), slow.next())
            .await
            .expect("the slow subscription ends")
        {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => break e,
            None => panic!("ended without saying why"),
        }
    };
    assert!(
        got < TURNS * PER_TURN,
        "it was dropped, not served everything"
    );
    assert_eq!(end.kind(), ErrorKind::ResourceExhausted, "{end}");
    assert!(
        end.to_string().contains(&format!("resume_after={got}")),
        "{end}"
    );
}

/// A mailbox that is never empty must not hold a due alarm back: the alarm
/// takes its turn after at most one more call, while the calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_mailbox_never_starves_a_due_alarm() {
    use futures::stream::{FuturesUnordered, StreamExt};
    /// Calls kept queued at once.
    const IN_FLIGHT: usize = 8;
    /// Calls made after the alarm is due.
    const AFTER_DUE: usize = 100;
    /// Bound on the whole flood.
    const CALLS_MAX: usize = 200_000;
    let store = Store::memory();
    let node = turn_node(&store);
    let set = set_alarm(&node, "busy", 30, "due").await;
    let at_ms = set["at_ms"].as_u64().unwrap();
    let clock = tern_runtime::clock::World::default().clock;
    // Calls publish on the alarm's topic, so the events tell the order in
    // which the alarm's turn and the calls' turns ran.
    let publish = || {
        call(
            &node,
            "counter",
            "busy",
            "publish",
            json!({"topic": "alarms", "n": 1, "prefix": "call-"}),
        )
    };
    let mut flood = FuturesUnordered::new();
    let (mut made, mut after_due) = (0, 0);
    while after_due < AFTER_DUE {
        while flood.len() < IN_FLIGHT {
            flood.push(publish());
            made += 1;
            if clock.wall_ms() > at_ms {
                after_due += 1;
            }
        }
        assert!(made < CALLS_MAX, "the alarm never came due");
        flood.next().await.unwrap().expect("a call of the flood");
    }
    while let Some(r) = flood.next().await {
        r.expect("a call of the flood");
    }
    let events = store
        .read_events("counter/busy", "alarms", 0, 1_000)
        .unwrap();
    let alarm_at = events
        .iter()
        .position(|e| !e.payload.starts_with(b"call-"))
        .expect("the alarm fired, and its event is among the newest kept");
    let calls_after = events.len() - alarm_at - 1;
    assert!(
        calls_after >= AFTER_DUE / 2,
        "the alarm waited for the flood: only {calls_after} calls ran after it"
    );
    assert_eq!(fired(&node, "busy").await.len(), 1);
}
