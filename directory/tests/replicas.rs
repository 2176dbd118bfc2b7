//! Several directory cores over one store (as several `tern directory`
//! processes over one database): every decision is one store transaction,
//! so they decide alike and never contradict each other, with no lock
//! shared between them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tern_directory::{ClaimOutcome, Core, DirectoryConfig, DirectoryError};
use tern_storage::{PopRecord, Store};

fn core(store: &Store) -> Core {
    Core::new(store.clone(), DirectoryConfig::default())
}

fn reg(core: &Core, pop: &str) -> u64 {
    core.register(pop, "http://127.0.0.1:7000", (0.0, 0.0))
        .unwrap()
        .incarnation
}

/// Two handles on one SQLite file: two directory processes.
fn two_directories() -> (tempfile::TempDir, Core, Core) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tern.db");
    let a = core(&Store::sqlite(&path).unwrap());
    let b = core(&Store::sqlite(&path).unwrap());
    (dir, a, b)
}

#[test]
fn claim_by_a_superseded_incarnation_is_refused_at_any_directory() {
    let (_d, a, b) = two_directories();
    let old = reg(&a, "fra");
    let new = reg(&b, "fra");
    assert!(new > old);
    match a.claim("counter/x", "fra", old) {
        Err(DirectoryError::LeaseLapsed { why, .. }) => {
            assert!(why.contains("current incarnation"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(
        a.claim("counter/x", "fra", new).unwrap(),
        ClaimOutcome::Granted { epoch: 1, .. }
    ));
}

/// A registration whose voiding never ran (its directory crashed after
/// bumping the incarnation) leaves an active record of the earlier
/// incarnation: it is void all the same, for lookups and claims.
#[test]
fn activation_of_an_earlier_incarnation_is_void_everywhere() {
    let (_d, a, b) = two_directories();
    let fra = reg(&a, "fra");
    let iad = reg(&a, "iad");
    assert!(matches!(
        a.claim("counter/x", "fra", fra).unwrap(),
        ClaimOutcome::Granted { epoch: 1, .. }
    ));
    // The crashed registration: the incarnation moved on, nothing voided.
    b.store()
        .update_pop("fra", |cur| {
            let mut r: PopRecord = cur.unwrap();
            r.incarnation += 1;
            Ok((Some(r), ()))
        })
        .unwrap();
    assert!(
        b.store()
            .get_activation("counter/x")
            .unwrap()
            .unwrap()
            .active,
        "still marked active"
    );
    assert_eq!(b.lookup("counter/x").unwrap(), None, "but void for lookups");
    assert!(
        matches!(
            b.claim("counter/x", "iad", iad).unwrap(),
            ClaimOutcome::Granted { epoch: 2, .. }
        ),
        "and claimable by another POP although fra's lease is current"
    );
}

/// A registration's voiding that runs late (a slow directory) leaves a
/// claim made by the newer incarnation alone.
#[test]
fn late_voiding_never_undoes_a_newer_claim() {
    let (_d, a, b) = two_directories();
    let first = reg(&a, "fra");
    a.claim("counter/x", "fra", first).unwrap();
    let second = reg(&b, "fra");
    let ClaimOutcome::Granted { epoch, .. } = b.claim("counter/x", "fra", second).unwrap() else {
        panic!("fra's new incarnation claims x")
    };
    // The first registration's voiding, arriving now.
    assert_eq!(
        a.store()
            .void_activation("counter/x", "fra", first)
            .unwrap(),
        None
    );
    let rec = a.store().get_activation("counter/x").unwrap().unwrap();
    assert!(rec.active && rec.epoch == epoch && rec.incarnation == second);
}

/// A zombie (fra's first incarnation, still running) keeps claiming
/// through one directory while fra registers again and again through the
/// other, and its new incarnations claim too. Once the registrations have
/// returned, no activation of an earlier incarnation is left active, the
/// newest incarnation's claims stand, and no epoch was granted twice.
#[test]
fn registration_voids_every_earlier_claim_under_concurrency() {
    let (_d, a, b) = two_directories();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let zombie = reg(&a, "fra");
    let done = Arc::new(AtomicBool::new(false));
    let grants = Arc::new(Mutex::new(Vec::new()));
    let zombie_won = Arc::new(AtomicU64::new(0));
    let claimer = {
        let (a, done, grants, zombie_won) =
            (a.clone(), done.clone(), grants.clone(), zombie_won.clone());
        std::thread::spawn(move || {
            let mut round = 0u64;
            while !done.load(Ordering::SeqCst) && round < 20_000 {
                let actor = format!("counter/{}", round % 40);
                match a.claim(&actor, "fra", zombie) {
                    Ok(ClaimOutcome::Granted { epoch, .. }) => {
                        zombie_won.fetch_add(1, Ordering::SeqCst);
                        grants.lock().unwrap().push((actor, epoch))
                    }
                    Ok(ClaimOutcome::Held(h)) => panic!("fra holds everything: {h:?}"),
                    Err(DirectoryError::LeaseLapsed { .. }) => {}
                    Err(e) => panic!("claim: {e}"),
                }
                round += 1;
            }
        })
    };
    let mut current = zombie;
    for i in 0..10 {
        // Let the zombie win a few before the first registration.
        let seen = zombie_won.load(Ordering::SeqCst);
        while i == 0 && zombie_won.load(Ordering::SeqCst) < seen + 5 {
            std::thread::yield_now();
        }
        current = reg(&b, "fra");
        let actor = format!("counter/{i}");
        if let ClaimOutcome::Granted { epoch, .. } = b.claim(&actor, "fra", current).unwrap() {
            grants.lock().unwrap().push((actor, epoch));
        }
    }
    let kept = format!("counter/{}", 9);
    done.store(true, Ordering::SeqCst);
    claimer.join().unwrap();
    assert!(
        zombie_won.load(Ordering::SeqCst) >= 5,
        "the zombie won claims"
    );
    for (actor, rec) in a.store().list_activations().unwrap() {
        if rec.active {
            assert_eq!(
                rec.incarnation, current,
                "{actor} is still active for fra's incarnation {} after incarnation {current} registered",
                rec.incarnation
            );
        }
    }
    let rec = a.store().get_activation(&kept).unwrap().unwrap();
    assert!(rec.active && rec.incarnation == current, "{kept}: {rec:?}");
    let grants = grants.lock().unwrap();
    let unique: BTreeSet<_> = grants.iter().collect();
    assert_eq!(unique.len(), grants.len(), "an epoch was granted twice");
}

/// Many claims of the same actors by two POPs, half through each
/// directory: every epoch has exactly one winner, and an actor passes to
/// the other POP only after its holder released it.
#[test]
fn concurrent_claims_through_two_cores_grant_one_per_epoch() {
    let (_d, a, b) = two_directories();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let fra = reg(&a, "fra");
    let iad = reg(&b, "iad");
    let grants = Arc::new(Mutex::new(Vec::new()));
    let released = Arc::new(Mutex::new(BTreeSet::new()));
    let threads: Vec<_> = [(a.clone(), "fra", fra), (b.clone(), "iad", iad)]
        .into_iter()
        .flat_map(|(core, pop, inc)| {
            let grants = grants.clone();
            let released = released.clone();
            let other = if pop == "fra" { b.clone() } else { a.clone() };
            // Two threads per POP: one through each directory.
            [core, other].map(|c| {
                let grants = grants.clone();
                let released = released.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        // Keep the lease (a lapse would make takeovers
                        // without a release legal).
                        if i % 20 == 0 {
                            assert!(c.heartbeat(pop, inc).unwrap().0, "{pop} kept its lease");
                        }
                        let actor = format!("counter/{}", i % 10);
                        if let ClaimOutcome::Granted { epoch, .. } =
                            c.claim(&actor, pop, inc).unwrap()
                        {
                            grants
                                .lock()
                                .unwrap()
                                .push((actor.clone(), epoch, pop.to_string()));
                            // Let the other POP have it now and then.
                            if i % 3 == 0 && c.release(&actor, epoch).is_ok() {
                                released.lock().unwrap().insert((actor.clone(), epoch));
                            }
                        }
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let grants = grants.lock().unwrap();
    let v = tern_directory::audit::takeovers_without_release(&grants, &released.lock().unwrap());
    assert!(v.is_empty(), "{v:?}");
    let winners: BTreeSet<(String, u64)> = grants.iter().map(|g| (g.0.clone(), g.1)).collect();
    assert!(
        winners.iter().any(|(a, _)| a == "counter/0")
            && grants.iter().any(|g| g.2 == "fra")
            && grants.iter().any(|g| g.2 == "iad"),
        "both POPs won some claims"
    );
}

/// A claim that got no answer in time is sent again to the other
/// directory with the same token: it gets the same grant, not a second
/// epoch that would fence the first (whichever directory commits first).
#[test]
fn same_claim_through_two_directories_gets_one_epoch() {
    let (_d, a, b) = two_directories();
    let fra = reg(&a, "fra");
    let first = b.claim_once("counter/x", "fra", fra, 77).unwrap();
    let again = a.claim_once("counter/x", "fra", fra, 77).unwrap();
    assert_eq!(first, again);
    assert!(matches!(first, ClaimOutcome::Granted { epoch: 1, .. }));
    // Another claim (another token) is another epoch.
    assert!(matches!(
        a.claim_once("counter/x", "fra", fra, 78).unwrap(),
        ClaimOutcome::Granted { epoch: 2, .. }
    ));
    // A token of another incarnation never matches.
    let fra2 = reg(&b, "fra");
    assert!(matches!(
        b.claim_once("counter/x", "fra", fra2, 78).unwrap(),
        ClaimOutcome::Granted { epoch: 3, .. }
    ));
}
