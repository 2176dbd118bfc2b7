//! The `bank` workload: clients move money between `account` actors
//! (`examples/bank`). A transfer is a keyed call to the paying account,
//! which makes a nested `deposit` call to the receiving one (tern derives
//! its key) and then debits itself. Transfers only go from a
//! lower-numbered account to a higher-numbered one, so two turns never
//! wait on each other in a cycle.
//!
//! After the faults heal, every transfer that was never acknowledged is
//! sent again with its key until it is, and then checked:
//! - the bank's total is conserved (every account starts at 0);
//! - every transfer is in the payer's ledger exactly once (as a debit) and
//!   in the payee's exactly once (as a deposit), and no ledger holds an
//!   entry nobody sent;
//! - each account's balance is the sum of its ledger.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rand::Rng;
use tern_runtime::CallRequest;

use crate::{Caller, Load, Shared, SimConfig, final_call};

/// One transfer a client sent.
#[derive(Debug, Clone)]
struct Sent {
    id: u64,
    from: String,
    to: String,
    amount: i64,
    key: String,
    sent_ms: u64,
    acked: bool,
}

impl Sent {
    fn request(&self) -> CallRequest {
        let body = serde_json::json!({"id": self.id, "to": self.to, "amount": self.amount});
        let mut req = CallRequest::new(
            "account",
            &self.from,
            "transfer",
            serde_json::to_vec(&body).expect("json"),
        );
        req.idempotency_key = Some(self.key.clone());
        req
    }
}

/// Each account's balance and ledger (`(transfer id, delta)`, oldest
/// first).
type Ledgers = BTreeMap<String, (i64, Vec<(u64, i64)>)>;

/// The workload.
pub(crate) struct Bank {
    cfg: SimConfig,
    sent: Mutex<Vec<Sent>>,
}

impl Bank {
    pub(crate) fn new(cfg: &SimConfig) -> Bank {
        assert!(cfg.actors >= 2, "a bank needs two accounts");
        Bank {
            cfg: cfg.clone(),
            sent: Mutex::new(Vec::new()),
        }
    }
}

fn account(i: usize) -> String {
    format!("acct{i}")
}

#[async_trait]
impl Load for Bank {
    fn types(&self) -> &'static [&'static str] {
        &["account"]
    }

    async fn client(self: Arc<Self>, shared: Arc<Shared>, cid: usize) {
        let cfg = &self.cfg;
        let mut caller = Caller::new(&shared, format!("c{cid}"), cid);
        for n in 0..cfg.calls_per_client {
            let (from, to, amount) = shared.draw(|r| {
                let from = r.random_range(0..cfg.actors - 1);
                (
                    from,
                    r.random_range(from + 1..cfg.actors),
                    r.random_range(1..=100i64),
                )
            });
            tokio::time::sleep(shared.think(cfg, cfg.calls_per_client)).await;
            let t = Sent {
                id: (cid as u64) << 32 | n as u64,
                from: account(from),
                to: account(to),
                amount,
                key: format!("t{cid}-{n}"),
                sent_ms: shared.now_ms(),
                acked: false,
            };
            let i = {
                let mut s = self.sent.lock();
                s.push(t.clone());
                s.len() - 1
            };
            if caller.call(&shared, t.request(), true).await.is_ok() {
                self.sent.lock()[i].acked = true;
            }
        }
    }

    async fn finish(&self, shared: &Arc<Shared>, healed_ms: u64) -> Vec<String> {
        let mut v = Vec::new();
        // Finish every transfer nobody saw acknowledged: its retry with the
        // same key must complete it exactly once.
        let pending: Vec<Sent> = self
            .sent
            .lock()
            .iter()
            .filter(|t| !t.acked)
            .cloned()
            .collect();
        let mut caller = Caller::new(shared, "finisher".into(), 0);
        let mut unfinished = std::collections::BTreeSet::new();
        for t in &pending {
            match caller
                .call_sent_at(shared, t.request(), true, t.sent_ms)
                .await
            {
                Ok(_) => {}
                Err(e) => {
                    unfinished.insert(t.id);
                    v.push(format!(
                        "transfer #{:x} ({} -> {}) did not complete after the faults healed: {e}",
                        t.id, t.from, t.to
                    ));
                }
            }
        }
        // Read every ledger.
        let mut ledgers = Ledgers::new();
        for a in 0..self.cfg.actors {
            let acct = account(a);
            let req = CallRequest::new("account", &acct, "ledger", Vec::new());
            let got = final_call(shared, req, healed_ms, &mut v).await;
            let Some(out) = got else { continue };
            let parsed = serde_json::from_slice::<serde_json::Value>(&out.payload)
                .ok()
                .and_then(|l| {
                    let balance = l["balance"].as_i64()?;
                    let entries = l["entries"]
                        .as_array()?
                        .iter()
                        .map(|e| Some((e[0].as_u64()?, e[1].as_i64()?)))
                        .collect::<Option<Vec<_>>>()?;
                    Some((balance, entries))
                });
            match parsed {
                Some(l) => {
                    ledgers.insert(acct, l);
                }
                None => v.push(format!("account/{acct}: `ledger` answered garbage")),
            }
        }
        if ledgers.len() == self.cfg.actors {
            let total: i64 = ledgers.values().map(|(b, _)| b).sum();
            if total != 0 {
                v.push(format!(
                    "the bank's total is {total}, not 0: money was created or destroyed"
                ));
            }
        }
        v.extend(check(&self.sent.lock(), &ledgers, &unfinished));
        v
    }
}

/// Checks each transfer against the ledgers.
fn check(
    sent: &[Sent],
    ledgers: &Ledgers,
    unfinished: &std::collections::BTreeSet<u64>,
) -> Vec<String> {
    let mut v = Vec::new();
    let by_id: BTreeMap<u64, &Sent> = sent.iter().map(|t| (t.id, t)).collect();
    for (acct, (balance, entries)) in ledgers {
        let sum: i64 = entries.iter().map(|(_, d)| d).sum();
        if sum != *balance {
            v.push(format!(
                "account/{acct}: balance {balance} is not the sum of its ledger ({sum})"
            ));
        }
        for (id, delta) in entries {
            let ok = by_id.get(id).is_some_and(|t| {
                (t.from == *acct && *delta == -t.amount) || (t.to == *acct && *delta == t.amount)
            });
            if !ok {
                v.push(format!(
                    "account/{acct} holds entry #{id:x} of {delta}, which no transfer sent"
                ));
            }
        }
    }
    for t in sent {
        if unfinished.contains(&t.id) {
            continue;
        }
        for (acct, delta, what) in [
            (&t.from, -t.amount, "debited"),
            (&t.to, t.amount, "credited"),
        ] {
            let Some((_, entries)) = ledgers.get(acct) else {
                continue;
            };
            let n = entries
                .iter()
                .filter(|(id, d)| *id == t.id && *d == delta)
                .count();
            if n != 1 {
                v.push(format!(
                    "transfer #{:x} ({} -> {}, {}{}) was {what} {n} times at account/{acct}",
                    t.id,
                    t.from,
                    t.to,
                    t.amount,
                    if t.acked { ", acknowledged" } else { "" }
                ));
            }
        }
    }
    v
}
