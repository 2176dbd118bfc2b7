//! The DirectoryService end to end: the real tonic server on 127.0.0.1:0,
//! the generated client, and a manual clock (no sleeps as synchronisation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tern_directory::core::{CLOCK_SKEW_MS_MAX, WATCH_BUFFER_CHANGES_MAX};
use tern_directory::server::{DIRECTORY_REQUEST_MS_MAX, GrpcDirectory};
use tern_directory::{Core, DirectoryConfig, DirectoryError, serve, service};
use tern_proto::directory::claim_reply::Outcome;
use tern_proto::directory::directory_service_client::DirectoryServiceClient;
use tern_proto::directory::*;
use tern_storage::Store;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

const LEASE_MS: u64 = 3000;
const T0: u64 = 1_000_000;

struct Dir {
    clock: Arc<AtomicU64>,
    c: DirectoryServiceClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), DirectoryError>>,
}

impl Dir {
    async fn start(store: Store) -> Dir {
        Dir::start_with_clock(store, Arc::new(AtomicU64::new(T0))).await
    }

    async fn start_with_clock(store: Store, clock: Arc<AtomicU64>) -> Dir {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cl = clock.clone();
        let cfg = DirectoryConfig {
            lease_ms: LEASE_MS,
            heartbeat_ms: 1000,
            clock: Arc::new(move || cl.load(Ordering::SeqCst)),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, store, cfg, None, async {
            let _ = rx.await;
        }));
        let c = DirectoryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Dir {
            clock,
            c,
            stop: Some(tx),
            task,
        }
    }

    fn advance(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    async fn stop(mut self) {
        drop(self.c);
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }

    async fn register(&mut self, name: &str, port: u16) -> u64 {
        self.c
            .register(RegisterRequest {
                name: name.into(),
                endpoint: format!("http://127.0.0.1:{port}"),
                lat: 50.1,
                lon: 8.7,
            })
            .await
            .unwrap()
            .into_inner()
            .incarnation
    }

    async fn heartbeat(&mut self, name: &str, incarnation: u64) -> bool {
        self.c
            .heartbeat(HeartbeatRequest {
                name: name.into(),
                incarnation,
            })
            .await
            .unwrap()
            .into_inner()
            .alive
    }

    async fn claim(
        &mut self,
        actor: &str,
        pop: &str,
        incarnation: u64,
    ) -> Result<Outcome, tonic::Status> {
        Ok(self
            .c
            .claim(ClaimRequest {
                actor: actor.into(),
                pop: pop.into(),
                incarnation,
                request_token: 0,
            })
            .await?
            .into_inner()
            .outcome
            .expect("a claim reply has an outcome"))
    }

    async fn granted(&mut self, actor: &str, pop: &str, incarnation: u64) -> u64 {
        match self.claim(actor, pop, incarnation).await.unwrap() {
            Outcome::Granted(g) => g.epoch,
            Outcome::Held(h) => panic!("{actor} held by {h:?}, expected a grant to {pop}"),
        }
    }

    async fn lookup(&mut self, actor: &str) -> Option<Activation> {
        self.c
            .lookup(LookupRequest {
                actor: actor.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .active
    }

    async fn release(&mut self, actor: &str, epoch: u64) -> Result<(), tonic::Status> {
        self.c
            .release(ReleaseRequest {
                actor: actor.into(),
                epoch,
            })
            .await
            .map(|_| ())
    }

    async fn activations(&mut self, pop: &str) -> Vec<Activation> {
        self.c
            .list_activations(ListActivationsRequest { pop: pop.into() })
            .await
            .unwrap()
            .into_inner()
            .activations
    }
}

#[tokio::test]
async fn claim_refused_while_live_pop_holds_actor() {
    let mut d = Dir::start(Store::memory()).await;
    let a = d.register("fra", 7001).await;
    let b = d.register("iad", 7002).await;
    assert_eq!(d.granted("counter/x", "fra", a).await, 1);
    match d.claim("counter/x", "iad", b).await.unwrap() {
        Outcome::Held(h) => {
            assert_eq!(h.pop, "fra");
            assert_eq!(h.endpoint, "http://127.0.0.1:7001");
            assert_eq!(h.epoch, 1);
            assert!(h.pop_alive);
        }
        o => panic!("expected held, got {o:?}"),
    }
    // Still held by fra at epoch 1.
    let l = d.lookup("counter/x").await.unwrap();
    assert_eq!((l.pop.as_str(), l.epoch), ("fra", 1));
    d.stop().await;
}

#[tokio::test]
async fn claim_takes_over_after_lease_lapses() {
    let mut d = Dir::start(Store::memory()).await;
    let a = d.register("fra", 7001).await;
    let b = d.register("iad", 7002).await;
    assert_eq!(d.granted("counter/x", "fra", a).await, 1);
    d.advance(2000);
    assert!(d.heartbeat("iad", b).await);
    d.advance(LEASE_MS - 2000 + 1); // fra lapsed by 1 ms, iad renewed
    // Within the clock-skew margin fra still counts as the holder: another
    // directory's clock may run behind this one's.
    let held = d.claim("counter/x", "iad", b).await.unwrap();
    assert!(matches!(held, Outcome::Held(_)), "{held:?}");
    d.advance(CLOCK_SKEW_MS_MAX);
    assert_eq!(
        d.granted("counter/x", "iad", b).await,
        2,
        "epoch goes up by one"
    );
    let l = d.lookup("counter/x").await.unwrap();
    assert_eq!((l.pop.as_str(), l.epoch), ("iad", 2));
    d.stop().await;
}

#[tokio::test]
async fn lease_exactly_at_its_end_is_still_alive() {
    let mut d = Dir::start(Store::memory()).await;
    let a = d.register("fra", 7001).await;
    d.advance(LEASE_MS);
    assert!(d.heartbeat("fra", a).await, "now == lease_until is alive");
}

#[tokio::test]
async fn lapsed_lease_stays_dead_until_reregister() {
    let mut d = Dir::start(Store::memory()).await;
    let a = d.register("fra", 7001).await;
    assert_eq!(a, 1);
    d.advance(LEASE_MS + 1);
    assert!(!d.heartbeat("fra", a).await);
    // Not renewed by that refused heartbeat: still dead.
    assert!(!d.heartbeat("fra", a).await);
    let e = d.claim("counter/x", "fra", a).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("lease lapsed"), "{}", e.message());
    assert!(e.message().contains("register again"), "{}", e.message());

    let a2 = d.register("fra", 7001).await;
    assert_eq!(a2, 2, "a new incarnation");
    assert!(d.heartbeat("fra", a2).await);
    assert!(
        !d.heartbeat("fra", a).await,
        "the old incarnation stays dead"
    );
    let e = d.claim("counter/x", "fra", a).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(d.granted("counter/x", "fra", a2).await, 1);
    d.stop().await;
}

#[tokio::test]
async fn claim_by_unregistered_pop_refused() {
    let mut d = Dir::start(Store::memory()).await;
    let e = d.claim("counter/x", "nowhere", 1).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("not registered"), "{}", e.message());
    assert!(d.lookup("counter/x").await.is_none());
    d.stop().await;
}

#[tokio::test]
async fn register_voids_earlier_incarnation() {
    let mut d = Dir::start(Store::memory()).await;
    let a = d.register("fra", 7001).await;
    let b = d.register("iad", 7002).await;
    assert_eq!(d.granted("counter/x", "fra", a).await, 1);
    assert_eq!(d.granted("counter/y", "fra", a).await, 1);
    assert_eq!(d.granted("counter/z", "iad", b).await, 1);

    let a2 = d.register("fra", 7001).await; // fra restarted
    assert_eq!(a2, 2);
    assert!(d.lookup("counter/x").await.is_none());
    assert!(d.lookup("counter/y").await.is_none());
    assert!(d.activations("fra").await.is_empty());
    // Other POPs' activations are untouched.
    assert_eq!(d.lookup("counter/z").await.unwrap().pop, "iad");
    // Claimable at once, with a higher epoch, by anyone.
    assert_eq!(d.granted("counter/x", "iad", b).await, 2);
    assert_eq!(d.granted("counter/y", "fra", a2).await, 2);
    d.stop().await;
}

#[tokio::test]
async fn lookup_hides_actor_of_dead_pop() {
    let mut d = Dir::start(Store::memory()).await;
    let a = d.register("fra", 7001).await;
    d.granted("counter/x", "fra", a).await;
    let l = d.lookup("counter/x").await.unwrap();
    assert_eq!(l.endpoint, "http://127.0.0.1:7001");
    assert!(l.pop_alive);
    d.advance(LEASE_MS + CLOCK_SKEW_MS_MAX + 1);
    assert!(d.lookup("counter/x").await.is_none());
    // Listings still show it, marked dead (claimable).
    let all = d.activations("").await;
    assert_eq!(all.len(), 1);
    assert!(!all[0].pop_alive);
    d.stop().await;
}

#[tokio::test]
async fn release_with_stale_epoch_refused() {
    let mut d = Dir::start(Store::memory()).await;
    let a = d.register("fra", 7001).await;
    assert_eq!(d.granted("counter/x", "fra", a).await, 1);
    assert_eq!(d.granted("counter/x", "fra", a).await, 2);
    let e = d.release("counter/x", 1).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("fenced"), "{}", e.message());
    assert_eq!(d.lookup("counter/x").await.unwrap().epoch, 2);
    d.release("counter/x", 2).await.unwrap();
    assert!(d.lookup("counter/x").await.is_none());
    d.release("counter/x", 2).await.unwrap(); // twice is fine
    let e = d.release("never-claimed", 1).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    d.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument() {
    let mut d = Dir::start(Store::memory()).await;
    let reg = |name: &str, endpoint: &str| RegisterRequest {
        name: name.into(),
        endpoint: endpoint.into(),
        lat: 0.0,
        lon: 0.0,
    };
    for (name, endpoint) in [
        ("", "http://127.0.0.1:1"),
        ("fra", ""),
        ("fra", "127.0.0.1:7000"),
        ("fra", "http://127.0.0.1"),
        ("fra", "http://:7000"),
        ("fra", "http://host:notaport"),
    ] {
        let e = d.c.register(reg(name, endpoint)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name:?} {endpoint:?}");
    }
    let mut bad = reg("fra", "http://h:1");
    bad.lat = 91.0;
    assert_eq!(
        d.c.register(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let e = d.claim("", "fra", 1).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e =
        d.c.lookup(LookupRequest { actor: "".into() })
            .await
            .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    d.stop().await;
}

#[tokio::test]
async fn list_pops_reports_liveness_and_lease_age() {
    let mut d = Dir::start(Store::memory()).await;
    let a = d.register("fra", 7001).await;
    d.register("iad", 7002).await;
    d.advance(1200);
    assert!(d.heartbeat("fra", a).await);
    d.advance(2000);
    let r =
        d.c.list_pops(ListPopsRequest {})
            .await
            .unwrap()
            .into_inner();
    assert_eq!(r.now_ms, T0 + 3200);
    let by = |n: &str| r.pops.iter().find(|p| p.name == n).unwrap().clone();
    let fra = by("fra");
    assert!(fra.alive);
    assert_eq!(fra.lease_age_ms, 2000);
    assert_eq!(fra.lease_until_ms, T0 + 1200 + LEASE_MS);
    assert_eq!((fra.lat, fra.lon), (50.1, 8.7));
    let iad = by("iad");
    assert!(!iad.alive);
    assert_eq!(iad.lease_age_ms, 3200);
    d.stop().await;
}

#[tokio::test]
async fn migrations_listed_newest_first() {
    let mut d = Dir::start(Store::memory()).await;
    for (i, actor) in ["a", "b", "c"].iter().enumerate() {
        d.c.record_migration(Migration {
            actor: actor.to_string(),
            from_pop: "fra".into(),
            to_pop: "iad".into(),
            at_ms: 100 + i as u64,
            duration_ms: 5,
            reason: "caller moved".into(),
        })
        .await
        .unwrap();
    }
    let all =
        d.c.list_migrations(ListMigrationsRequest { limit: 0 })
            .await
            .unwrap()
            .into_inner()
            .migrations;
    let actors: Vec<&str> = all.iter().map(|m| m.actor.as_str()).collect();
    assert_eq!(actors, ["c", "b", "a"]);
    let two =
        d.c.list_migrations(ListMigrationsRequest { limit: 2 })
            .await
            .unwrap()
            .into_inner()
            .migrations;
    assert_eq!(two.len(), 2);
    d.stop().await;
}

#[tokio::test]
async fn directory_restart_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tern.db");
    let clock = Arc::new(AtomicU64::new(T0));
    let mut d = Dir::start_with_clock(Store::sqlite(&path).unwrap(), clock.clone()).await;
    let a = d.register("fra", 7001).await;
    assert_eq!(d.granted("counter/x", "fra", a).await, 1);
    d.c.record_migration(Migration {
        actor: "counter/x".into(),
        from_pop: "iad".into(),
        to_pop: "fra".into(),
        at_ms: T0,
        duration_ms: 7,
        reason: "caller moved".into(),
    })
    .await
    .unwrap();
    d.stop().await;

    let mut d = Dir::start_with_clock(Store::sqlite(&path).unwrap(), clock).await;
    let pops =
        d.c.list_pops(ListPopsRequest {})
            .await
            .unwrap()
            .into_inner();
    assert_eq!(pops.pops.len(), 1);
    assert_eq!(pops.pops[0].incarnation, a);
    assert!(
        d.heartbeat("fra", a).await,
        "the lease survives the restart"
    );
    let l = d.lookup("counter/x").await.unwrap();
    assert_eq!((l.pop.as_str(), l.epoch), ("fra", 1));
    let m =
        d.c.list_migrations(ListMigrationsRequest { limit: 10 })
            .await
            .unwrap()
            .into_inner()
            .migrations;
    assert_eq!(m.len(), 1);
    assert_eq!((m[0].actor.as_str(), m[0].duration_ms), ("counter/x", 7));
    // Epochs continue where they were.
    assert_eq!(d.granted("counter/x", "fra", a).await, 2);
    d.stop().await;
}

#[tokio::test]
async fn watch_streams_changes() {
    let mut d = Dir::start(Store::memory()).await;
    let mut w = d.c.watch(WatchRequest {}).await.unwrap().into_inner();
    let a = d.register("fra", 7001).await;
    assert_eq!(d.granted("counter/x", "fra", a).await, 1);
    assert_eq!(d.granted("counter/y", "fra", a).await, 1);
    d.release("counter/x", 1).await.unwrap();
    d.register("fra", 7001).await; // voids counter/y
    let mut got = Vec::new();
    for _ in 0..4 {
        let c = w.message().await.unwrap().unwrap();
        got.push((c.actor, c.pop, c.epoch));
    }
    let s = |a: &str, p: &str, e| (a.to_string(), p.to_string(), e);
    assert_eq!(
        got,
        [
            s("counter/x", "fra", 1),
            s("counter/y", "fra", 1),
            s("counter/x", "", 1),
            s("counter/y", "", 1),
        ]
    );
    d.stop().await;
    // The stream ends when the directory stops.
    assert!(matches!(w.message().await, Ok(None) | Err(_)));
}

/// A server over a [`GrpcDirectory`] whose core the test drives directly.
async fn start_core(
    clock: Arc<AtomicU64>,
) -> (
    Arc<Core>,
    DirectoryServiceClient<Channel>,
    oneshot::Sender<()>,
) {
    let cfg = DirectoryConfig {
        lease_ms: LEASE_MS,
        heartbeat_ms: 1000,
        clock: Arc::new(move || clock.load(Ordering::SeqCst)),
    };
    start_edge(cfg, DIRECTORY_REQUEST_MS_MAX, None).await
}

/// A tonic server over a fresh core, with the edge's per-request deadline
/// `request_ms` and, optionally, tonic's server-wide `Server::timeout`.
async fn start_edge(
    cfg: DirectoryConfig,
    request_ms: u64,
    server_timeout_ms: Option<u64>,
) -> (
    Arc<Core>,
    DirectoryServiceClient<Channel>,
    oneshot::Sender<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let core = Arc::new(Core::new(Store::memory(), cfg));
    let dir =
        GrpcDirectory::new(core.clone()).with_request_timeout(Duration::from_millis(request_ms));
    let (tx, rx) = oneshot::channel::<()>();
    let mut server = tonic::transport::Server::builder();
    if let Some(ms) = server_timeout_ms {
        server = server.timeout(Duration::from_millis(ms));
    }
    tokio::spawn(
        server
            .add_service(service(dir))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            ),
    );
    let c = DirectoryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (core, c, tx)
}

/// A clock that blocks every caller while shut: it stands in for a store
/// call that hangs.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn set_shut(&self, shut: bool) {
        *self.0.0.lock().unwrap() = shut;
        self.0.1.notify_all();
    }

    /// Shuts the gate until the returned guard drops (so a failing test
    /// does not leave blocking threads stuck, hanging the runtime's drop).
    fn shut(&self) -> impl Drop + '_ {
        struct Open<'a>(&'a Gate);
        impl Drop for Open<'_> {
            fn drop(&mut self) {
                self.0.set_shut(false);
            }
        }
        self.set_shut(true);
        Open(self)
    }

    fn pass(&self) {
        let (m, cv) = &*self.0;
        let _g = cv.wait_while(m.lock().unwrap(), |shut| *shut).unwrap();
    }
}

#[tokio::test]
async fn directory_request_has_deadline() {
    const REQUEST_MS: u64 = 200;
    let gate = Gate::default();
    let g = gate.clone();
    let cfg = DirectoryConfig {
        lease_ms: LEASE_MS,
        heartbeat_ms: 1000,
        clock: Arc::new(move || {
            g.pass();
            T0
        }),
    };
    // tonic's own server-wide timeout too, longer than the edge's, to show
    // it does not cut a streaming reply either.
    let (_core, mut c, _stop) = start_edge(cfg, REQUEST_MS, Some(2 * REQUEST_MS)).await;
    let mut w = c.watch(WatchRequest {}).await.unwrap().into_inner();

    let shut = gate.shut();
    // Three hung requests in a row: together they outlast both timeouts
    // since the watch opened (their failures are the evidence; no sleep).
    for _ in 0..3 {
        let hung = c.lookup(LookupRequest {
            actor: "counter/x".into(),
        });
        let e = tokio::time::timeout(Duration::from_secs(20), hung)
            .await
            .expect("a hung request must fail at its deadline, not hang")
            .unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        assert!(e.message().contains("deadline"), "{}", e.message());
    }
    drop(shut);

    // The service still answers, and the long-lived watch still streams.
    let inc = c
        .register(RegisterRequest {
            name: "fra".into(),
            endpoint: "http://127.0.0.1:7001".into(),
            lat: 0.0,
            lon: 0.0,
        })
        .await
        .unwrap()
        .into_inner()
        .incarnation;
    c.claim(ClaimRequest {
        actor: "counter/x".into(),
        pop: "fra".into(),
        incarnation: inc,
        request_token: 0,
    })
    .await
    .unwrap();
    let m = w.message().await.unwrap().expect("the watch is still open");
    assert_eq!(
        (m.actor.as_str(), m.pop.as_str(), m.epoch),
        ("counter/x", "fra", 1)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn lagging_watch_ends_with_aborted() {
    let (core, mut c, _stop) = start_core(Arc::new(AtomicU64::new(T0))).await;
    let mut w = c.watch(WatchRequest {}).await.unwrap().into_inner();
    let n = WATCH_BUFFER_CHANGES_MAX + 10;
    // Publish on the runtime's only thread, so the server cannot drain the
    // subscriber meanwhile: it falls behind by construction.
    let inc = core
        .register("fra", "http://127.0.0.1:7001", (0.0, 0.0))
        .unwrap()
        .incarnation;
    for _ in 0..n {
        core.claim("counter/x", "fra", inc).unwrap();
    }
    let mut seen = 0;
    let err = loop {
        match w.message().await {
            Ok(Some(_)) => seen += 1,
            Ok(None) => panic!("the stream ended without an error after {seen} changes"),
            Err(e) => break e,
        }
    };
    assert!(seen < n, "{seen} changes of {n} before the error");
    assert_eq!(err.code(), Code::Aborted);
    assert!(err.message().contains("reconnect"), "{}", err.message());
    assert!(w.message().await.unwrap().is_none(), "the stream ends");
}

#[tokio::test]
async fn sweep_announces_lapsed_pop_once() {
    let clock = Arc::new(AtomicU64::new(T0));
    let (core, mut c, _stop) = start_core(clock.clone()).await;
    let mut w = c.watch(WatchRequest {}).await.unwrap().into_inner();
    let core2 = core.clone();
    tokio::task::spawn_blocking(move || {
        let inc = core2
            .register("fra", "http://127.0.0.1:7001", (0.0, 0.0))
            .unwrap()
            .incarnation;
        core2.claim("counter/x", "fra", inc).unwrap();
        core2.sweep().unwrap(); // alive: nothing
    })
    .await
    .unwrap();
    clock.fetch_add(LEASE_MS + 1, Ordering::SeqCst);
    tokio::task::spawn_blocking(move || {
        core.sweep().unwrap();
        core.sweep().unwrap(); // already announced: nothing more
        core.release("counter/x", 1).unwrap(); // a marker after the sweeps
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = w.message().await.unwrap().unwrap();
        got.push((m.pop, m.epoch));
    }
    let s = |p: &str, e| (p.to_string(), e);
    assert_eq!(got, [s("fra", 1), s("", 1), s("", 1)]);
}
