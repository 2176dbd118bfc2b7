//! Checks of a record of directory decisions, for tests and simulations
//! that watch many claims from outside.

use std::collections::{BTreeMap, BTreeSet};

/// The violations in `grants` (every claim granted: actor, epoch, POP):
/// an epoch granted twice, a gap in an actor's epochs (1, 2, 3...), or an
/// actor that passed from one POP to another without the earlier epoch in
/// `released` (a takeover of an actor a live POP held). Only meaningful
/// while no holder's lease lapsed: a lapse makes such a takeover legal.
pub fn takeovers_without_release(
    grants: &[(String, u64, String)],
    released: &BTreeSet<(String, u64)>,
) -> Vec<String> {
    let mut v = Vec::new();
    let mut by_actor: BTreeMap<&str, BTreeMap<u64, &str>> = BTreeMap::new();
    for (actor, epoch, pop) in grants {
        if let Some(other) = by_actor.entry(actor).or_default().insert(*epoch, pop) {
            v.push(format!(
                "{actor} epoch {epoch} granted twice ({other}, {pop})"
            ));
        }
    }
    for (actor, epochs) in &by_actor {
        let list: Vec<(u64, &str)> = epochs.iter().map(|(e, p)| (*e, *p)).collect();
        if list[0].0 != 1 {
            v.push(format!("{actor}: the first epoch granted is {}", list[0].0));
        }
        for w in list.windows(2) {
            let ((e0, p0), (e1, p1)) = (w[0], w[1]);
            if e1 != e0 + 1 {
                v.push(format!("{actor}: epoch {e1} follows {e0}"));
            } else if p0 != p1 && !released.contains(&(actor.to_string(), e0)) {
                v.push(format!(
                    "{actor}: {p1} took epoch {e1} while {p0} held epoch {e0}, which was never released"
                ));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(actor: &str, epoch: u64, pop: &str) -> (String, u64, String) {
        (actor.into(), epoch, pop.into())
    }

    #[test]
    fn takeover_without_release_is_reported() {
        let grants = [g("a", 1, "fra"), g("a", 2, "iad"), g("a", 3, "iad")];
        let mut released = BTreeSet::new();
        assert_eq!(takeovers_without_release(&grants, &released).len(), 1);
        released.insert(("a".to_string(), 1));
        assert!(takeovers_without_release(&grants, &released).is_empty());
        let doubled = [g("a", 1, "fra"), g("a", 1, "iad")];
        assert_eq!(takeovers_without_release(&doubled, &released).len(), 1);
        let gap = [g("a", 1, "fra"), g("a", 3, "fra")];
        assert_eq!(takeovers_without_release(&gap, &released).len(), 1);
    }
}
