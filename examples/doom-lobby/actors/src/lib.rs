//! doom-lobby's actors: `player/<name>`, `matchmaker/<region>` and
//! `match/<id>`, served by one component.
//!
//! The component is deployed three times, under the types `player`,
//! `matchmaker` and `match`. On its first call an actor looks at its own
//! address ([`tern_actor_sdk::self_address`]) and becomes a [`Player`], a
//! [`Matchmaker`] or a [`Game`]; from then on its state is that plain Rust
//! struct, persisted by tern with the rest of linear memory.
//!
//! Calls between actors only go one way, so tern's call-cycle check never
//! fires: the matchmaker calls matches (`start`) and players
//! (`match_found`), a match calls players (`match_result`), and players call
//! nobody.
//!
//! Every method takes and returns JSON; see [`player`], [`matchmaker`] and
//! [`game`] for their payloads.

pub mod game;
pub mod matchmaker;
pub mod player;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tern_actor_sdk::{ActorError, actor};

pub use game::Game;
pub use matchmaker::Matchmaker;
pub use player::Player;

/// Players in a match.
pub const MATCH_SIZE: usize = 4;

/// Decodes a JSON request (an empty payload is `null`), runs `f`, encodes
/// its reply.
pub(crate) fn json<Req: DeserializeOwned, Resp: Serialize>(
    what: &str,
    payload: &[u8],
    f: impl FnOnce(Req) -> Result<Resp, ActorError>,
) -> Result<Vec<u8>, ActorError> {
    let bytes: &[u8] = if payload.is_empty() { b"null" } else { payload };
    let req = serde_json::from_slice(bytes).map_err(|e| {
        ActorError::invalid_argument(format!("{what}: payload is not the expected JSON: {e}"))
    })?;
    let resp = f(req)?;
    serde_json::to_vec(&resp)
        .map_err(|e| ActorError::internal(format!("{what}: reply does not encode: {e}")))
}

/// What an actor of this component is.
#[derive(serde::Serialize, serde::Deserialize)]
pub enum Role {
    /// `player/<name>`.
    Player(Player),
    /// `matchmaker/<region>`.
    Matchmaker(Matchmaker),
    /// `match/<id>`.
    Match(Game),
}

impl Role {
    /// The role for an actor address.
    pub fn for_address(actor_type: &str, id: &str) -> Result<Role, ActorError> {
        match actor_type {
            "player" => Ok(Role::Player(Player::new(id))),
            "matchmaker" => Ok(Role::Matchmaker(Matchmaker::new(id))),
            "match" => Ok(Role::Match(Game::new(id))),
            other => Err(ActorError::invalid_argument(format!(
                "the doom-lobby component serves the types `player`, `matchmaker` and `match`; deploy it under one of those names, not `{other}`"
            ))),
        }
    }

    /// Runs one method.
    pub fn dispatch(&mut self, method: &str, payload: &[u8]) -> Result<Vec<u8>, ActorError> {
        match self {
            Role::Player(p) => p.dispatch(method, payload),
            Role::Matchmaker(m) => m.dispatch(method, payload),
            Role::Match(g) => g.dispatch(method, payload),
        }
    }
}

/// The component's single actor: a [`Role`] chosen on the first call.
#[derive(Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Lobby {
    role: Option<Role>,
}

impl Lobby {
    /// A lobby actor that already has its role (for host tests).
    pub fn with_role(role: Role) -> Lobby {
        Lobby { role: Some(role) }
    }

    fn route(&mut self, method: &str, payload: &[u8]) -> Result<Vec<u8>, ActorError> {
        if self.role.is_none() {
            let me = tern_actor_sdk::self_address();
            self.role = Some(Role::for_address(&me.actor_type, &me.id)?);
        }
        match &mut self.role {
            Some(role) => role.dispatch(method, payload),
            None => Err(ActorError::internal("no role")),
        }
    }
}

macro_rules! forward {
    ($($m:ident),* $(,)?) => {
        impl Lobby {
            $(
                fn $m(&mut self, payload: &[u8]) -> Result<Vec<u8>, ActorError> {
                    self.route(stringify!($m), payload)
                }
            )*
        }
        impl Lobby {
            fn alarm(&mut self, payload: &[u8]) -> Result<Vec<u8>, ActorError> {
                self.route(tern_actor_sdk::ALARM_METHOD, payload)
            }
        }
        actor!(Lobby { $(raw $m,)* raw alarm as "~alarm" });
    };
}

// Every wire method of the three roles; each role answers `not-found` for
// the ones it does not have.
forward!(
    join,
    act,
    match_found,
    match_result,
    state,
    audit,
    enqueue,
    poll,
    leave,
    start,
    input,
    tick,
);

#[cfg(test)]
mod tests {
    use super::*;
    use tern_actor_sdk::{Actor, ErrorKind};

    #[test]
    fn lobby_routes_to_its_role() {
        let mut l = Lobby::with_role(Role::for_address("player", "ann").unwrap());
        let s: serde_json::Value =
            serde_json::from_slice(&l.dispatch("state", b"").unwrap()).unwrap();
        assert_eq!(s["name"], "ann");
        let e = l.dispatch("enqueue", b"{}").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        let e = Role::for_address("counter", "x").err().unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        // Off wasm the address is `local/test`, which is no role.
        let e = Lobby::default().dispatch("state", b"").unwrap_err();
        assert!(e.message.contains("`local`"), "{e}");
    }
}
