//! The live cluster page (`tern dev` serves it, and `tern pop --http`):
//! POPs on a world map with
//! their lease state, actors per POP, migrations drawn as arcs as they
//! happen, turns and errors per second per POP, and an actor inspector.
//!
//! One poller asks every POP for its status every [`POLL_MS`] and keeps
//! the newest [`Snapshot`]. It starts from the POPs it is given and learns
//! the others (and new addresses) from their status replies, which carry
//! the directory's list of POPs; the page follows it by server-sent events
//! (`/events`), and asks `/api/actor?actor=TYPE/ID` for the inspector.
//! The page itself (HTML, CSS, JavaScript, the map) is embedded in the
//! binary. It only reads, but with the cluster's admin credentials (under
//! `tern dev`) or a POP's certificate (under `tern pop`), so it listens on
//! loopback unless the POP runs `--insecure`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json};
use serde::Serialize;
use tern_client::{Client, Credentials, pb};
use tokio::sync::watch;

/// How often the page's data is refreshed, ms.
pub const POLL_MS: u64 = 500;
/// How long a migration stays on the map, ms.
pub const ARC_MS: u64 = 30_000;
/// Migrations listed at most.
const MIGRATIONS_SHOWN_MAX: usize = 50;
/// Actors listed per POP at most.
const ACTORS_SHOWN_MAX: usize = 100;
/// Deadline of one status or inspect request, ms.
const REQUEST_MS: u64 = 2_000;
/// POPs the page follows at most (it learns them from the directory).
pub const POPS_SHOWN_MAX: usize = 256;

const PAGE: &str = include_str!("page.html");

/// One POP on the page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PopView {
    /// Its name.
    pub name: String,
    /// `[lat, lon]`.
    pub coords: [f64; 2],
    /// Whether its lease is current (the directory's view).
    pub alive: bool,
    /// Time since its last lease renewal, ms.
    pub lease_age_ms: u64,
    /// Actors active there.
    pub actors: u64,
    /// Some of them.
    pub actor_list: Vec<String>,
    /// Turns per second over the last poll.
    pub turns_per_s: f64,
    /// Failed turns per second over the last poll.
    pub errors_per_s: f64,
    /// Whether it answered the last poll.
    pub reachable: bool,
}

/// One migration on the page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MigrationView {
    /// The actor.
    pub actor: String,
    /// From POP.
    pub from: String,
    /// To POP.
    pub to: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// What the page shows.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Snapshot {
    /// When it was taken, ms since the Unix epoch.
    pub at_ms: u64,
    /// The POPs.
    pub pops: Vec<PopView>,
    /// Migrations of the last [`ARC_MS`], newest first.
    pub migrations: Vec<MigrationView>,
}

/// The POPs the page knows: name to endpoint.
type Known = Arc<parking_lot::Mutex<BTreeMap<String, String>>>;

struct Page {
    snapshot: watch::Receiver<Snapshot>,
    known: Known,
    creds: Credentials,
}

/// Learns `name` at `endpoint` (or its new address). Returns whether its
/// address changed.
fn learn(known: &Known, name: &str, endpoint: &str) -> bool {
    let mut k = known.lock();
    match k.get(name) {
        Some(e) if e == endpoint => false,
        Some(_) => {
            k.insert(name.to_string(), endpoint.to_string());
            true
        }
        None if k.len() < POPS_SHOWN_MAX => {
            k.insert(name.to_string(), endpoint.to_string());
            true
        }
        None => false,
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn client(endpoint: &str, creds: &Credentials) -> Option<Client> {
    tern_client::connect_with_deadline(endpoint, creds, Duration::from_millis(REQUEST_MS))
        .await
        .ok()
}

/// Polls every POP it knows and publishes snapshots.
async fn poll(known: Known, creds: Credentials, out: watch::Sender<Snapshot>) {
    let mut clients: HashMap<String, Client> = HashMap::new();
    let mut last: HashMap<String, (u64, u64, std::time::Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(POLL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if out.is_closed() {
            return;
        }
        let mut cluster: BTreeMap<String, pb::ClusterPop> = BTreeMap::new();
        let mut migrations: Vec<MigrationView> = Vec::new();
        let mut own: HashMap<String, (pb::StatusReply, f64, f64)> = HashMap::new();
        let endpoints: Vec<(String, String)> = known
            .lock()
            .iter()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        // Every POP at once: a dead or frozen one costs the poll its
        // deadline once, not once per POP.
        let asks = endpoints.iter().map(|(name, endpoint)| {
            let held = clients.remove(name);
            let creds = &creds;
            async move {
                let mut c = match held {
                    Some(c) => c,
                    None => client(endpoint, creds).await?,
                };
                let mut req = tonic::Request::new(pb::StatusRequest {});
                req.set_timeout(Duration::from_millis(REQUEST_MS));
                // On an error the client is dropped: connect again next
                // time (the POP may be restarting).
                let s = c.status(req).await.ok()?.into_inner();
                Some((name.clone(), c, s))
            }
        });
        let replies: Vec<_> = futures::future::join_all(asks).await;
        for (name, c, s) in replies.into_iter().flatten() {
            clients.insert(name.clone(), c);
            let name = &name;
            let now = std::time::Instant::now();
            let (turns_s, errors_s) = match last.get(name) {
                Some((t, e, at)) if s.turns_total >= *t => {
                    let secs = now.duration_since(*at).as_secs_f64().max(0.001);
                    (
                        (s.turns_total - t) as f64 / secs,
                        s.turns_failed_total.saturating_sub(*e) as f64 / secs,
                    )
                }
                _ => (0.0, 0.0),
            };
            last.insert(name.clone(), (s.turns_total, s.turns_failed_total, now));
            for p in &s.pops {
                if !p.endpoint.is_empty() && learn(&known, &p.name, &p.endpoint) {
                    clients.remove(&p.name);
                }
                cluster.insert(p.name.clone(), p.clone());
            }
            for m in &s.migrations {
                let v = MigrationView {
                    actor: m.actor.clone(),
                    from: m.from_pop.clone(),
                    to: m.to_pop.clone(),
                    at_ms: m.at_ms,
                };
                if !migrations.contains(&v) {
                    migrations.push(v);
                }
            }
            own.insert(name.clone(), (s, turns_s, errors_s));
        }
        let at_ms = wall_ms();
        let pops = endpoints
            .iter()
            .map(|(name, _)| {
                let c = cluster.get(name);
                let mine = own.get(name);
                PopView {
                    name: name.clone(),
                    coords: c.map_or([0.0, 0.0], |c| [c.lat, c.lon]),
                    alive: c.is_some_and(|c| c.alive),
                    lease_age_ms: c.map_or(0, |c| c.lease_age_ms),
                    actors: mine.map_or(c.map_or(0, |c| c.actors), |(s, _, _)| s.active_actors),
                    actor_list: mine
                        .map(|(s, _, _)| s.actors.iter().take(ACTORS_SHOWN_MAX).cloned().collect())
                        .unwrap_or_default(),
                    turns_per_s: mine.map_or(0.0, |m| m.1),
                    errors_per_s: mine.map_or(0.0, |m| m.2),
                    reachable: mine.is_some(),
                }
            })
            .collect();
        migrations.retain(|m| at_ms.saturating_sub(m.at_ms) <= ARC_MS);
        migrations.sort_by_key(|m| std::cmp::Reverse(m.at_ms));
        migrations.truncate(MIGRATIONS_SHOWN_MAX);
        out.send_replace(Snapshot {
            at_ms,
            pops,
            migrations,
        });
    }
}

/// The page, with the newest snapshot in it, so it shows the cluster as
/// soon as it loads (server-sent events bring the changes).
async fn index(State(page): State<Arc<Page>>) -> impl IntoResponse {
    let snapshot = page.snapshot.borrow().clone();
    // In a <script>: no `<` may close it early (actor names are the
    // users'); `\u003c` is the same character to JSON.
    let json = serde_json::to_string(&snapshot)
        .unwrap_or_else(|_| "null".into())
        .replace('<', "\\u003c");
    Html(PAGE.replace("/*SNAPSHOT*/null", &json))
}

async fn events(
    State(page): State<Arc<Page>>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    use futures::StreamExt;
    let stream = tokio_stream::wrappers::WatchStream::new(page.snapshot.clone()).map(|s| {
        Ok(Event::default().data(serde_json::to_string(&s).unwrap_or_else(|_| "{}".into())))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(serde::Deserialize)]
struct ActorQuery {
    actor: String,
}

/// The inspector: where TYPE/ID is, and how it stands there.
async fn actor(
    State(page): State<Arc<Page>>,
    Query(q): Query<ActorQuery>,
) -> Json<serde_json::Value> {
    let Some((ty, id)) = q.actor.split_once('/') else {
        return Json(serde_json::json!({"error": "write the actor as TYPE/ID"}));
    };
    let snapshot = page.snapshot.borrow().clone();
    let at = snapshot
        .pops
        .iter()
        .find(|p| p.actor_list.contains(&q.actor))
        .map(|p| p.name.clone());
    // Ask where the snapshot saw it, else every POP.
    let order: Vec<String> = page
        .known
        .lock()
        .iter()
        .filter(|(n, _)| at.as_ref().is_none_or(|a| a == *n))
        .map(|(_, e)| e.clone())
        .collect();
    for endpoint in order {
        let Some(mut c) = client(&endpoint, &page.creds).await else {
            continue;
        };
        let req = pb::InspectRequest {
            r#type: ty.to_string(),
            id: id.to_string(),
        };
        match c.inspect(req).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.active {
                    return Json(serde_json::json!({
                        "actor": q.actor,
                        "pop": r.pop,
                        "epoch": r.epoch,
                        "version": r.version,
                        "memory_bytes": r.memory_bytes,
                        "last_turns": r.last_turns.iter().map(|t| serde_json::json!({
                            "method": t.method, "at_ms": t.at_ms, "ok": t.ok, "micros": t.micros,
                        })).collect::<Vec<_>>(),
                    }));
                }
            }
            Err(s) => {
                return Json(
                    serde_json::json!({"error": format!("{:?}: {}", s.code(), s.message())}),
                );
            }
        }
    }
    Json(serde_json::json!({"actor": q.actor, "active": false,
        "error": "not active at any POP (it is hibernated in the store, or never ran)"}))
}

/// Serves the page on `listener`, starting from the POPs `(name,
/// endpoint)` and the others they name, reading with `creds`, until the
/// process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoints: Vec<(String, String)>,
    creds: Credentials,
) -> Result<(), String> {
    let known: Known = Arc::default();
    for (name, endpoint) in &endpoints {
        learn(&known, name, endpoint);
    }
    let (tx, rx) = watch::channel(Snapshot::default());
    tokio::spawn(poll(known.clone(), creds.clone(), tx));
    let page = Arc::new(Page {
        snapshot: rx,
        known,
        creds,
    });
    let app = axum::Router::new()
        .route("/", axum::routing::get(index))
        .route("/events", axum::routing::get(events))
        .route("/api/actor", axum::routing::get(actor))
        .with_state(page);
    axum::serve(listener, app)
        .await
        .map_err(|e| format!("cluster page: {e}"))
}
