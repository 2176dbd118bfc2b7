//! An actor's durable alarms and published events: what a turn asks the
//! runtime to do later (an alarm) or for others (an event), committed with
//! the turn's snapshot so that a rolled-back turn does neither.
//!
//! - **Alarms** are `extra` side records `alarm/<id>` of the actor's
//!   snapshot (restored with it), plus an entry in the store's due index
//!   written in the same transaction, through which a POP wakes an actor
//!   that is not active anywhere ([`crate::node::Node`]'s alarm sweeper).
//!   An active actor fires its own alarms from its mailbox loop.
//! - **Events** get per-topic sequence numbers here (the last one of each
//!   topic is the side record `topic/<name>`) and are stored by the commit
//!   (`ev/<actor>/<topic>/<seq>`); subscribers read them from the store
//!   ([`crate::feeds`]), so holding a subscriber needs no activation.
//!
//! A turn works on a [`TurnEffects`] copy; the activation folds it in
//! ([`Outbox::apply`]) only when the turn stands, and the commit that
//! persists the turn carries [`Outbox::pending`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tern_storage::{DueChange, EventRecord};

/// Alarms one actor may hold at once.
pub const ALARMS_PER_ACTOR_MAX: usize = 64;
/// Longest alarm tag, bytes.
pub const ALARM_TAG_BYTES_MAX: usize = 1024;
/// Topics one actor may publish on.
pub const TOPICS_PER_ACTOR_MAX: usize = 16;
/// Events one turn may publish.
pub const EVENTS_PER_TURN_MAX: usize = 64;
/// The method of an alarm's turn (the SDK's `ALARM_METHOD`).
pub const ALARM_METHOD: &str = "~alarm";
/// The method the alarm sweeper calls to wake a hibernated actor: it
/// activates the actor (whose due alarms then fire) and runs no guest code.
pub const WAKE_METHOD: &str = "~wake";
/// First retry delay of an alarm whose turn was rolled back, ms; it
/// doubles with each failure up to [`ALARM_RETRY_MS_MAX`].
pub const ALARM_RETRY_MS_MIN: u64 = 1_000;
/// Longest retry delay of a failing alarm, ms.
pub const ALARM_RETRY_MS_MAX: u64 = 60_000;

const ALARM_PREFIX: &str = "alarm/";
const TOPIC_PREFIX: &str = "topic/";

/// One pending alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmEntry {
    /// When it is due, ms since the Unix epoch.
    pub at_ms: u64,
    /// The actor's tag.
    pub tag: String,
}

impl AlarmEntry {
    fn encode(&self) -> Vec<u8> {
        let mut v = self.at_ms.to_le_bytes().to_vec();
        v.extend_from_slice(self.tag.as_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<AlarmEntry> {
        let (at, tag) = v.split_at_checked(8)?;
        Some(AlarmEntry {
            at_ms: u64::from_le_bytes(at.try_into().ok()?),
            tag: String::from_utf8(tag.to_vec()).ok()?,
        })
    }
}

/// What one turn did to the outbox, as the guest's host calls see it.
#[derive(Debug, Default)]
pub struct TurnEffects {
    /// Alarms as this turn sees them: the committed ones, minus the one
    /// being delivered, plus this turn's changes.
    pub(crate) alarms: BTreeMap<u64, AlarmEntry>,
    /// Topics published on before this turn.
    pub(crate) topics: BTreeSet<String>,
    /// Events this turn published, in order.
    pub(crate) events: Vec<(String, Vec<u8>)>,
    /// Whether a host call may change anything (not in `save`/`load`).
    pub(crate) open: bool,
    /// The next alarm id this turn hands out.
    next_id: u64,
}

/// Why a host call on the outbox was refused: (is it a limit, message).
pub type Refusal = (bool, String);

impl TurnEffects {
    /// A view for upgrades' `save` and `load`, which may change nothing.
    pub fn closed() -> TurnEffects {
        TurnEffects::default()
    }

    /// `set-alarm`.
    pub fn set_alarm(&mut self, at_ms: u64, tag: String) -> Result<u64, Refusal> {
        if !self.open {
            return Err((false, "alarms cannot be set from save or load".into()));
        }
        if tag.len() > ALARM_TAG_BYTES_MAX {
            return Err((
                false,
                format!(
                    "alarm tag is {} bytes, over the limit of {ALARM_TAG_BYTES_MAX}",
                    tag.len()
                ),
            ));
        }
        if self.alarms.len() >= ALARMS_PER_ACTOR_MAX {
            return Err((
                true,
                format!(
                    "the actor already holds {ALARMS_PER_ACTOR_MAX} alarms, the limit; cancel one first"
                ),
            ));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.alarms.insert(id, AlarmEntry { at_ms, tag });
        Ok(id)
    }

    /// `cancel-alarm`.
    pub fn cancel_alarm(&mut self, id: u64) -> bool {
        self.open && self.alarms.remove(&id).is_some()
    }

    /// `publish`.
    pub fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), Refusal> {
        if !self.open {
            return Err((false, "events cannot be published from save or load".into()));
        }
        if topic.is_empty() || topic.len() > tern_storage::TOPIC_BYTES_MAX {
            return Err((
                false,
                format!(
                    "topic must be 1 to {} bytes (has {})",
                    tern_storage::TOPIC_BYTES_MAX,
                    topic.len()
                ),
            ));
        }
        if topic.chars().any(char::is_control) {
            return Err((false, "topic must not contain control characters".into()));
        }
        if payload.len() > tern_storage::EVENT_BYTES_MAX {
            return Err((
                true,
                format!(
                    "event is {} bytes, over the limit of {}",
                    payload.len(),
                    tern_storage::EVENT_BYTES_MAX
                ),
            ));
        }
        if self.events.len() >= EVENTS_PER_TURN_MAX {
            return Err((
                true,
                format!("a turn may publish at most {EVENTS_PER_TURN_MAX} events"),
            ));
        }
        if !self.topics.contains(&topic) {
            let new_topics: BTreeSet<&String> = self
                .events
                .iter()
                .map(|(t, _)| t)
                .filter(|t| !self.topics.contains(*t))
                .collect();
            if !new_topics.contains(&topic)
                && self.topics.len() + new_topics.len() >= TOPICS_PER_ACTOR_MAX
            {
                return Err((
                    true,
                    format!("an actor may publish on at most {TOPICS_PER_ACTOR_MAX} topics"),
                ));
            }
        }
        self.events.push((topic, payload));
        Ok(())
    }
}

/// An actor's alarms and topics, committed and pending.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Alarms, by id (committed plus pending: the turns that set them stood).
    alarms: BTreeMap<u64, AlarmEntry>,
    /// The last seq of each topic.
    topics: BTreeMap<String, u64>,
    /// Alarm ids hand out `epoch << 32 | n`: unique across activations.
    epoch: u64,
    next: u64,
    /// Retry state of alarms whose turns were rolled back: (failures, not
    /// before ms). In memory only: a new activation retries at once.
    retries: HashMap<u64, (u32, u64)>,
    /// Side records, due-index changes and events waiting for a commit.
    pending_extra: BTreeMap<String, Vec<u8>>,
    pending_due: Vec<DueChange>,
    pending_events: Vec<EventRecord>,
}

/// What the next commit carries for the outbox.
#[derive(Debug, Default, Clone)]
pub struct Pending {
    /// `extra` side records (alarms, topic seqs).
    pub extra: Vec<(String, Vec<u8>)>,
    /// Due-index changes.
    pub due: Vec<DueChange>,
    /// Events.
    pub events: Vec<EventRecord>,
}

impl Outbox {
    /// An empty outbox for an activation at `epoch`.
    pub fn new(epoch: u64) -> Outbox {
        Outbox {
            epoch,
            ..Outbox::default()
        }
    }

    /// The outbox of a restored actor, from its snapshot's side records.
    /// A record that does not decode is dropped (and deleted with the next
    /// commit), with a warning: an alarm must not keep a restore from
    /// working.
    pub fn restore(actor: &str, epoch: u64, extra: &[(String, Vec<u8>)]) -> Outbox {
        let mut o = Outbox::new(epoch);
        for (name, v) in extra {
            if let Some(id) = name.strip_prefix(ALARM_PREFIX) {
                match (id.parse::<u64>(), AlarmEntry::decode(v)) {
                    (Ok(id), Some(a)) => {
                        o.alarms.insert(id, a);
                    }
                    _ => {
                        tracing::warn!(actor, record = %name, "an alarm record does not decode; it is dropped");
                        o.pending_extra.insert(name.clone(), Vec::new());
                    }
                }
            } else if let Some(topic) = name.strip_prefix(TOPIC_PREFIX) {
                match v.as_slice().try_into().map(u64::from_le_bytes) {
                    Ok(seq) => {
                        o.topics.insert(topic.to_string(), seq);
                    }
                    Err(_) => {
                        tracing::warn!(actor, record = %name, "a topic record does not decode; its numbering restarts after what the store holds");
                    }
                }
            }
        }
        o
    }

    /// The view a turn starts from. `firing` is the alarm this turn
    /// delivers: consumed if the turn stands.
    pub fn begin(&self, firing: Option<u64>) -> TurnEffects {
        let mut alarms = self.alarms.clone();
        if let Some(id) = firing {
            alarms.remove(&id);
        }
        TurnEffects {
            alarms,
            topics: self.topics.keys().cloned().collect(),
            events: Vec::new(),
            open: true,
            next_id: (self.epoch << 32) | self.next,
        }
    }

    /// Folds in the effects of a turn that stood. `last_seq(topic)` gives
    /// the store's newest seq of a topic not seen before (a topic record
    /// lost to corruption must not restart the numbering).
    pub fn apply(&mut self, fx: TurnEffects, mut last_seq: impl FnMut(&str) -> u64) {
        self.next = (fx.next_id & 0xFFFF_FFFF).max(self.next);
        for (id, a) in &self.alarms {
            if fx.alarms.get(id) != Some(a) {
                self.pending_extra
                    .insert(format!("{ALARM_PREFIX}{id}"), Vec::new());
                self.pending_due.push(DueChange {
                    at_ms: a.at_ms,
                    id: *id,
                    set: false,
                });
                self.retries.remove(id);
            }
        }
        for (id, a) in &fx.alarms {
            if self.alarms.get(id) != Some(a) {
                self.pending_extra
                    .insert(format!("{ALARM_PREFIX}{id}"), a.encode());
                self.pending_due.push(DueChange {
                    at_ms: a.at_ms,
                    id: *id,
                    set: true,
                });
            }
        }
        self.alarms = fx.alarms;
        for (topic, payload) in fx.events {
            if !self.topics.contains_key(&topic) {
                let start = last_seq(&topic);
                self.topics.insert(topic.clone(), start);
            }
            let seq = self.topics.get_mut(&topic).expect("inserted above");
            *seq += 1;
            self.pending_extra
                .insert(format!("{TOPIC_PREFIX}{topic}"), seq.to_le_bytes().to_vec());
            self.pending_events.push(EventRecord {
                topic,
                seq: *seq,
                payload,
            });
        }
    }

    /// Whether anything waits for a commit.
    pub fn is_dirty(&self) -> bool {
        !self.pending_extra.is_empty()
            || !self.pending_due.is_empty()
            || !self.pending_events.is_empty()
    }

    /// What the next commit carries.
    pub fn pending(&self) -> Pending {
        Pending {
            extra: self
                .pending_extra
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            due: self.pending_due.clone(),
            events: self.pending_events.clone(),
        }
    }

    /// The commit carrying [`Outbox::pending`] landed: returns the topics
    /// that got events.
    pub fn committed(&mut self) -> BTreeSet<String> {
        self.pending_extra.clear();
        self.pending_due.clear();
        self.pending_events.drain(..).map(|e| e.topic).collect()
    }

    /// The alarm to deliver next and when (ms since the Unix epoch): the
    /// earliest due time, pushed back by retries.
    pub fn next_alarm(&self) -> Option<(u64, u64)> {
        self.alarms
            .iter()
            .map(|(id, a)| {
                let not_before = self.retries.get(id).map_or(0, |r| r.1);
                (a.at_ms.max(not_before), *id)
            })
            .min()
    }

    /// The alarm `id`, if set.
    pub fn alarm(&self, id: u64) -> Option<&AlarmEntry> {
        self.alarms.get(&id)
    }

    /// Alarms held.
    pub fn alarms_len(&self) -> usize {
        self.alarms.len()
    }

    /// The turn delivering alarm `id` was rolled back at `now_ms`: retry
    /// it later (1 s, doubling, at most a minute).
    pub fn failed(&mut self, id: u64, now_ms: u64) -> u64 {
        let r = self.retries.entry(id).or_insert((0, 0));
        r.0 = r.0.saturating_add(1);
        let delay = ALARM_RETRY_MS_MIN
            .saturating_mul(1u64 << r.0.min(16).saturating_sub(1))
            .min(ALARM_RETRY_MS_MAX);
        r.1 = now_ms.saturating_add(delay);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_changes_become_records_and_due_entries() {
        let mut o = Outbox::new(3);
        let mut fx = o.begin(None);
        let a = fx.set_alarm(100, "tick".into()).unwrap();
        let b = fx.set_alarm(50, "other".into()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a >> 32, 3, "ids carry the epoch");
        o.apply(fx, |_| 0);
        let p = o.pending();
        assert_eq!(p.extra.len(), 2);
        assert_eq!(p.due.iter().filter(|d| d.set).count(), 2);
        assert_eq!(o.next_alarm(), Some((50, b)));
        o.committed();
        // Delivering `b` consumes it; the handler sets nothing.
        let fx = o.begin(Some(b));
        o.apply(fx, |_| 0);
        let p = o.pending();
        assert_eq!(p.extra, vec![(format!("alarm/{b}"), Vec::new())]);
        assert_eq!(
            p.due,
            vec![DueChange {
                at_ms: 50,
                id: b,
                set: false
            }]
        );
        // The restored outbox sees what was committed.
        let restored = Outbox::restore(
            "t/1",
            4,
            &[(
                format!("alarm/{a}"),
                AlarmEntry {
                    at_ms: 100,
                    tag: "tick".into(),
                }
                .encode(),
            )],
        );
        assert_eq!(restored.next_alarm(), Some((100, a)));
    }

    #[test]
    fn alarms_and_topics_are_bounded() {
        let o = Outbox::new(1);
        let mut fx = o.begin(None);
        for i in 0..ALARMS_PER_ACTOR_MAX {
            fx.set_alarm(i as u64, String::new()).unwrap();
        }
        assert!(fx.set_alarm(0, String::new()).unwrap_err().0, "a limit");
        for i in 0..TOPICS_PER_ACTOR_MAX {
            fx.publish(format!("t{i}"), vec![]).unwrap();
        }
        assert!(fx.publish("one-more".into(), vec![]).is_err());
        fx.publish("t0".into(), vec![]).unwrap();
        assert!(!TurnEffects::closed().cancel_alarm(1));
        assert!(TurnEffects::closed().set_alarm(1, String::new()).is_err());
    }

    #[test]
    fn events_are_numbered_per_topic_from_the_store() {
        let mut o = Outbox::new(1);
        let mut fx = o.begin(None);
        fx.publish("a".into(), b"1".to_vec()).unwrap();
        fx.publish("a".into(), b"2".to_vec()).unwrap();
        fx.publish("b".into(), b"x".to_vec()).unwrap();
        o.apply(fx, |t| if t == "a" { 10 } else { 0 });
        let seqs: Vec<(String, u64)> = o
            .pending()
            .events
            .into_iter()
            .map(|e| (e.topic, e.seq))
            .collect();
        assert_eq!(
            seqs,
            vec![("a".into(), 11), ("a".into(), 12), ("b".into(), 1)]
        );
        assert_eq!(o.committed().len(), 2);
        assert!(!o.is_dirty());
    }

    #[test]
    fn failing_alarm_backs_off_to_a_bound() {
        let mut o = Outbox::new(1);
        let mut fx = o.begin(None);
        let id = fx.set_alarm(10, String::new()).unwrap();
        o.apply(fx, |_| 0);
        let delays: Vec<u64> = (0..10).map(|_| o.failed(id, 0)).collect();
        assert_eq!(delays[0], ALARM_RETRY_MS_MIN);
        assert_eq!(delays[1], 2 * ALARM_RETRY_MS_MIN);
        assert_eq!(*delays.last().unwrap(), ALARM_RETRY_MS_MAX);
        assert_eq!(o.next_alarm(), Some((ALARM_RETRY_MS_MAX, id)));
    }
}
