//! A to-do list actor, in versions selected by cargo features: the
//! subject of the upgrade tests and of the README's "Changing an actor's
//! code".
//!
//! | build | state | methods |
//! |---|---|---|
//! | default (version 1) | `items: Vec<String>` | `add`, `list` |
//! | `v2` | adds `done: Vec<usize>` (`#[serde(default)]`) | adds `count`, `finish` |
//! | `broken` | `items: Vec<Item>` (a struct per item), no migrate | `add`, `list` |
//! | `migrate` | like `broken`, with a migrate function | `add`, `list` |

use serde::{Deserialize, Serialize};
use tern_actor_sdk::{ActorError, actor};

/// One item in the `broken` and `migrate` builds.
#[cfg(any(feature = "broken", feature = "migrate"))]
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Item {
    /// What to do.
    pub text: String,
    /// Its position when it was added.
    pub n: u64,
}

/// The list.
#[derive(Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Todo {
    #[cfg(not(any(feature = "broken", feature = "migrate")))]
    items: Vec<String>,
    #[cfg(any(feature = "broken", feature = "migrate"))]
    #[serde(default = "no_items")]
    items: Vec<Item>,
    /// Indexes of finished items (version 2).
    #[cfg(feature = "v2")]
    done: Vec<usize>,
}

#[cfg(any(feature = "broken", feature = "migrate"))]
fn no_items() -> Vec<Item> {
    Vec::new()
}

/// `add` request.
#[derive(Deserialize)]
pub struct Add {
    /// The item.
    pub text: String,
}

/// `add` and `count` reply.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Count {
    /// Items in the list.
    pub items: usize,
    /// Finished items (version 2).
    #[serde(default)]
    pub done: usize,
}

/// `finish` request (version 2).
#[derive(Deserialize)]
pub struct Finish {
    /// The item's index.
    pub index: usize,
}

impl Todo {
    fn add(&mut self, req: Add) -> Result<Count, ActorError> {
        if req.text.is_empty() {
            return Err(ActorError::invalid_argument("an item needs text"));
        }
        #[cfg(not(any(feature = "broken", feature = "migrate")))]
        self.items.push(req.text);
        #[cfg(any(feature = "broken", feature = "migrate"))]
        {
            let n = self.items.len() as u64;
            self.items.push(Item { text: req.text, n });
        }
        self.count()
    }

    fn list(&mut self) -> Result<Vec<String>, ActorError> {
        #[cfg(not(any(feature = "broken", feature = "migrate")))]
        return Ok(self.items.clone());
        #[cfg(any(feature = "broken", feature = "migrate"))]
        return Ok(self.items.iter().map(|i| i.text.clone()).collect());
    }

    fn count(&mut self) -> Result<Count, ActorError> {
        #[cfg(feature = "v2")]
        let done = self.done.len();
        #[cfg(not(feature = "v2"))]
        let done = 0;
        Ok(Count {
            items: self.items.len(),
            done,
        })
    }

    #[cfg(feature = "v2")]
    fn finish(&mut self, req: Finish) -> Result<Count, ActorError> {
        if req.index >= self.items.len() {
            return Err(ActorError::invalid_argument(format!(
                "no item {} (the list has {})",
                req.index,
                self.items.len()
            )));
        }
        if !self.done.contains(&req.index) {
            self.done.push(req.index);
        }
        self.count()
    }

    /// Version 1 kept `items` as strings: number them.
    #[cfg(feature = "migrate")]
    fn migrate(old: serde_json::Value) -> Result<Todo, ActorError> {
        let items = old["items"]
            .as_array()
            .ok_or_else(|| ActorError::failed_precondition("the old state has no items list"))?
            .iter()
            .enumerate()
            .map(|(n, t)| Item {
                text: t.as_str().unwrap_or_default().to_string(),
                n: n as u64,
            })
            .collect();
        Ok(Todo { items })
    }
}

#[cfg(feature = "v2")]
actor!(Todo {
    json add,
    json0 list,
    json0 count,
    json finish,
});

#[cfg(feature = "migrate")]
actor!(Todo { json add, json0 list } migrate Todo::migrate);

#[cfg(not(any(feature = "v2", feature = "migrate")))]
actor!(Todo {
    json add,
    json0 list,
});

#[cfg(test)]
mod tests {
    use tern_actor_sdk::Actor;

    use super::*;

    #[test]
    fn state_round_trips_through_save_and_load() {
        let mut t = Todo::default();
        t.dispatch("add", br#"{"text": "milk"}"#).unwrap();
        let saved = t.save().unwrap();
        let mut back = Todo::load(&saved).unwrap();
        assert_eq!(back.dispatch("list", b"").unwrap(), br#"["milk"]"#);
    }
}
