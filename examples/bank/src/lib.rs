//! `bank`: account actors that move money between them with nested actor
//! calls. The simulator's `bank` workload runs it: with idempotency keys,
//! the bank's total is conserved through crashes, pauses and partitions.
//!
//! ## Methods (type `account`)
//!
//! | method | payload | reply |
//! |---|---|---|
//! | `transfer` | `{"id": n, "to": account id, "amount": a}` | `{"balance": b}`; calls `account/<to>.deposit`, then debits this account |
//! | `deposit` | `{"id": n, "from": account id, "amount": a}` | `{"balance": b}` |
//! | `ledger` | (ignored) | `{"balance": b, "entries": [[id, delta], ...]}`, oldest first |
//!
//! Balances may go negative (an overdraft), so a transfer never fails for
//! want of money and its retry always makes the same nested call.
//!
//! **Why the total is conserved.** A transfer sent with an idempotency key
//! `K` makes its nested `deposit` with the key `K#0` (tern derives it). The
//! debit happens only after the deposit answered. If the deposit fails, the
//! transfer answers its error; an `unavailable` one (the deposit may or may
//! not have landed) rolls the transfer's turn back, so the caller's retry
//! with `K` runs it again, and the deposit's `K#0` is answered from the
//! callee's idempotency record instead of being applied twice.
//!
//! **No deadlock.** Turns run one at a time per actor, and a transfer holds
//! its account while it waits for the deposit. Two transfers in opposite
//! directions at once would each wait for the other until their deadlines
//! passed. Callers avoid the cycle by ordering accounts (the simulator only
//! transfers from a lower-numbered account to a higher-numbered one).

use serde::{Deserialize, Serialize};
use tern_actor_sdk::{ActorError, actor};

/// Most ledger entries an account keeps (older ones are dropped; the
/// balance stays exact).
pub const LEDGER_MAX: usize = 100_000;
/// Largest amount one transfer moves.
pub const AMOUNT_MAX: i64 = 1_000_000_000;

/// One account.
#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Account {
    balance: i64,
    entries: Vec<(u64, i64)>,
}

/// `transfer` request.
#[derive(Deserialize, Serialize)]
pub struct Transfer {
    /// The transfer's id (the audit trail's key).
    pub id: u64,
    /// The receiving account's id (type `account`).
    pub to: String,
    /// How much, `1..=AMOUNT_MAX`.
    pub amount: i64,
}

/// `deposit` request.
#[derive(Deserialize, Serialize)]
pub struct Deposit {
    /// The transfer's id.
    pub id: u64,
    /// The paying account.
    pub from: String,
    /// How much, `1..=AMOUNT_MAX`.
    pub amount: i64,
}

/// `transfer` and `deposit` reply.
#[derive(Deserialize, Serialize, Debug, PartialEq, Eq)]
pub struct Balance {
    /// The balance after the call.
    pub balance: i64,
}

/// `ledger` reply.
#[derive(Deserialize, Serialize, Debug, PartialEq, Eq)]
pub struct Ledger {
    /// The balance.
    pub balance: i64,
    /// `(transfer id, delta)`, oldest first: negative for a transfer out,
    /// positive for a deposit.
    pub entries: Vec<(u64, i64)>,
}

fn check_amount(amount: i64) -> Result<(), ActorError> {
    if !(1..=AMOUNT_MAX).contains(&amount) {
        return Err(ActorError::invalid_argument(format!(
            "amount {amount} is out of range 1..={AMOUNT_MAX}"
        )));
    }
    Ok(())
}

impl Account {
    fn record(&mut self, id: u64, delta: i64) -> i64 {
        self.balance += delta;
        if self.entries.len() >= LEDGER_MAX {
            self.entries.remove(0);
        }
        self.entries.push((id, delta));
        self.balance
    }

    fn transfer(&mut self, req: Transfer) -> Result<Balance, ActorError> {
        check_amount(req.amount)?;
        let me = tern_actor_sdk::self_address();
        if req.to == me.id {
            return Err(ActorError::invalid_argument(format!(
                "transfer {}: account {} cannot pay itself",
                req.id, req.to
            )));
        }
        let _: Balance = tern_actor_sdk::call(
            "account",
            &req.to,
            "deposit",
            &Deposit {
                id: req.id,
                from: me.id,
                amount: req.amount,
            },
        )?;
        Ok(Balance {
            balance: self.record(req.id, -req.amount),
        })
    }

    fn deposit(&mut self, req: Deposit) -> Result<Balance, ActorError> {
        check_amount(req.amount)?;
        Ok(Balance {
            balance: self.record(req.id, req.amount),
        })
    }

    fn ledger(&mut self) -> Result<Ledger, ActorError> {
        Ok(Ledger {
            balance: self.balance,
            entries: self.entries.clone(),
        })
    }
}

actor!(Account {
    json transfer,
    json deposit,
    json0 ledger,
});

#[cfg(test)]
mod tests {
    use super::*;
    use tern_actor_sdk::{Actor, ErrorKind};

    fn call<T: for<'de> Deserialize<'de>>(a: &mut Account, m: &str, body: &str) -> T {
        serde_json::from_slice(&a.dispatch(m, body.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn deposits_add_up_and_are_recorded() {
        let mut a = Account::default();
        let b: Balance = call(&mut a, "deposit", r#"{"id":1,"from":"x","amount":5}"#);
        assert_eq!(b.balance, 5);
        let b: Balance = call(&mut a, "deposit", r#"{"id":2,"from":"y","amount":7}"#);
        assert_eq!(b.balance, 12);
        let l: Ledger = call(&mut a, "ledger", "");
        assert_eq!(l.entries, vec![(1, 5), (2, 7)]);
    }

    #[test]
    fn bad_amounts_are_refused_and_change_nothing() {
        let mut a = Account::default();
        for body in [
            r#"{"id":1,"from":"x","amount":0}"#,
            r#"{"id":1,"from":"x","amount":-3}"#,
            r#"{"id":1,"from":"x","amount":2000000000}"#,
        ] {
            let e = a.dispatch("deposit", body.as_bytes()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
        }
        let e = a.dispatch("deposit", b"not json").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
        let l: Ledger = call(&mut a, "ledger", "");
        assert_eq!(
            l,
            Ledger {
                balance: 0,
                entries: vec![]
            }
        );
    }

    #[test]
    fn a_transfer_whose_deposit_fails_debits_nothing() {
        // Off wasm, actor calls fail with `unavailable`.
        let mut a = Account::default();
        let e = a
            .dispatch("transfer", br#"{"id":9,"to":"b","amount":4}"#)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
        let l: Ledger = call(&mut a, "ledger", "");
        assert_eq!(l.balance, 0);
        assert!(l.entries.is_empty());
    }
}
