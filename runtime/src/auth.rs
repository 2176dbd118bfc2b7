//! Client authentication: bearer tokens with scopes.
//!
//! A token reads `tern_<id>_<secret>`: a 16-hex-digit id and a
//! 64-hex-digit secret (32 bytes from the operating system's generator
//! through `rand`'s thread generator). The store keeps, under the id, only
//! the sha256 of the secret, with the token's scopes and types, so reading
//! the store does not give anyone a usable token. The secret has 256 bits
//! of entropy, so a fast hash is enough (no password stretching needed).
//!
//! Scopes:
//! - `call`: call actors (of the token's types only, if it names any);
//! - `deploy`: deploy code (of the token's types only, if it names any);
//! - `admin`: everything, including `Status` and managing tokens.
//!
//! Verified tokens are cached for [`TOKEN_CACHE_MS`] (bounded), so a call
//! does not read the store each time; a revoked token therefore stops
//! working at other POPs within that time (at once at the POP that revoked
//! it).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use sha2::{Digest, Sha256};
use tern_storage::{Store, TokenRecord};

use crate::error::{Result, RuntimeError};

/// What every token starts with.
pub const TOKEN_PREFIX: &str = "tern_";

/// Hex digits of a token's id.
pub const TOKEN_ID_HEX: usize = 16;

/// Hex digits of a token's secret.
pub const TOKEN_SECRET_HEX: usize = 64;

/// How long a POP trusts a token it verified (or remembers one it
/// refused) before reading the store again, ms.
pub const TOKEN_CACHE_MS: u64 = 5_000;

/// Verified tokens a POP caches; past it the expired ones are dropped,
/// and if none has expired, the whole cache. Only real tokens enter it,
/// so nobody without one can flush it.
pub const TOKEN_CACHE_ENTRIES_MAX: usize = 10_000;

/// Refused tokens a POP remembers; past it that memory is cleared. It is
/// kept apart from the verified tokens, so a flood of made-up tokens
/// costs the flooder store reads but never evicts a real token.
pub const TOKEN_REFUSED_ENTRIES_MAX: usize = 10_000;

/// Most actor types one token may be limited to.
pub const TOKEN_TYPES_MAX: usize = 64;

/// Longest token label, bytes.
pub const TOKEN_LABEL_BYTES_MAX: usize = 256;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Call actors.
    Call,
    /// Deploy code.
    Deploy,
    /// Everything, including status and tokens.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 3] = [Scope::Call, Scope::Deploy, Scope::Admin];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Call => "call",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Scope> {
        Scope::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                RuntimeError::InvalidArgument(format!(
                    "unknown scope `{s}`; scopes are call, deploy and admin"
                ))
            })
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Calling an actor of this type.
    Call(&'a str),
    /// Deploying this type.
    Deploy(&'a str),
    /// Administration (status, tokens).
    Admin,
}

/// What a verified token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's id (not secret).
    pub id: String,
    /// Its scopes.
    pub scopes: BTreeSet<Scope>,
    /// The types it is limited to (empty: all).
    pub types: BTreeSet<String>,
    /// Its label.
    pub label: String,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
}

impl Grant {
    /// `Ok` if the token allows `need`; else PERMISSION_DENIED naming what
    /// is missing.
    pub fn check(&self, need: Need<'_>) -> Result<()> {
        if self.scopes.contains(&Scope::Admin) {
            return Ok(());
        }
        let (scope, ty) = match need {
            Need::Call(t) => (Scope::Call, Some(t)),
            Need::Deploy(t) => (Scope::Deploy, Some(t)),
            Need::Admin => (Scope::Admin, None),
        };
        if !self.scopes.contains(&scope) {
            let what = match need {
                Need::Call(t) => format!("calling actors of type `{t}`"),
                Need::Deploy(t) => format!("deploying type `{t}`"),
                Need::Admin => "this administrative request".to_string(),
            };
            return Err(RuntimeError::PermissionDenied(format!(
                "token {} has scopes [{}]; {what} needs scope `{scope}` (tern token create --scope {scope})",
                self.id,
                self.scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if let Some(t) = ty
            && !self.types.is_empty()
            && !self.types.contains(t)
        {
            return Err(RuntimeError::PermissionDenied(format!(
                "token {} is limited to types [{}]; `{scope}` on type `{t}` needs a token for that type",
                self.id,
                self.types.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    fn from_record(id: &str, rec: TokenRecord) -> Result<Grant> {
        let scopes = rec
            .scopes
            .iter()
            .map(|s| s.parse())
            .collect::<Result<BTreeSet<Scope>>>()
            .map_err(|e| RuntimeError::Internal(format!("stored token {id}: {e}")))?;
        Ok(Grant {
            id: id.to_string(),
            scopes,
            types: rec.types.into_iter().collect(),
            label: rec.label,
            created_ms: rec.created_ms,
        })
    }
}

/// A token just made: the only time its secret is seen.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// The whole token, to hand to its user.
    pub token: String,
    /// What it allows.
    pub grant: Grant,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Splits a token into id and secret, or says what is wrong with it.
pub fn parse_token(token: &str) -> Result<(&str, &str)> {
    let bad = || {
        RuntimeError::Unauthenticated(format!(
            "malformed token: a tern token reads {TOKEN_PREFIX}<{TOKEN_ID_HEX} hex digits>_<{TOKEN_SECRET_HEX} hex digits>"
        ))
    };
    let rest = token.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
    if !is_hex(id, TOKEN_ID_HEX) || !is_hex(secret, TOKEN_SECRET_HEX) {
        return Err(bad());
    }
    Ok((id, secret))
}

/// The tokens of a cluster, kept in its store.
pub struct Tokens {
    store: Store,
    cache: Mutex<TokenCache>,
}

/// What a POP remembers of tokens it checked, keyed by the token's sha256.
#[derive(Default)]
struct TokenCache {
    granted: HashMap<String, (Instant, Grant)>,
    refused: HashMap<String, Instant>,
}

impl TokenCache {
    /// What is remembered of `key` younger than `ttl`: `Some(None)` for a
    /// refused token.
    fn get(&self, key: &str, ttl: Duration) -> Option<Option<Grant>> {
        if let Some((at, g)) = self.granted.get(key)
            && at.elapsed() < ttl
        {
            return Some(Some(g.clone()));
        }
        match self.refused.get(key) {
            Some(at) if at.elapsed() < ttl => Some(None),
            _ => None,
        }
    }

    fn put(&mut self, key: String, found: Option<Grant>, ttl: Duration) {
        let now = Instant::now();
        match found {
            Some(g) => {
                self.refused.remove(&key);
                if self.granted.len() >= TOKEN_CACHE_ENTRIES_MAX {
                    self.granted.retain(|_, (at, _)| at.elapsed() < ttl);
                    if self.granted.len() >= TOKEN_CACHE_ENTRIES_MAX {
                        self.granted.clear();
                    }
                }
                self.granted.insert(key, (now, g));
            }
            None => {
                self.granted.remove(&key);
                if self.refused.len() >= TOKEN_REFUSED_ENTRIES_MAX {
                    self.refused.clear();
                }
                self.refused.insert(key, now);
            }
        }
    }

    fn clear(&mut self) {
        self.granted.clear();
        self.refused.clear();
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

impl Tokens {
    /// The tokens in `store`.
    pub fn new(store: Store) -> Tokens {
        Tokens {
            store,
            cache: Mutex::new(TokenCache::default()),
        }
    }

    /// Makes a token with `scopes`, limited to `types` (empty: all).
    pub fn create(&self, scopes: &[Scope], types: &[String], label: &str) -> Result<NewToken> {
        if scopes.is_empty() {
            return Err(RuntimeError::InvalidArgument(
                "a token needs at least one scope (call, deploy or admin)".into(),
            ));
        }
        if types.len() > TOKEN_TYPES_MAX {
            return Err(RuntimeError::InvalidArgument(format!(
                "a token may name at most {TOKEN_TYPES_MAX} types, not {}",
                types.len()
            )));
        }
        for t in types {
            crate::node::check_name("actor type", t, crate::node::ACTOR_NAME_BYTES_MAX)?;
        }
        if label.len() > TOKEN_LABEL_BYTES_MAX {
            return Err(RuntimeError::InvalidArgument(format!(
                "a token label is at most {TOKEN_LABEL_BYTES_MAX} bytes"
            )));
        }
        let mut rng = rand::rng();
        let id = hex::encode(rng.random::<[u8; TOKEN_ID_HEX / 2]>());
        let secret = hex::encode(rng.random::<[u8; TOKEN_SECRET_HEX / 2]>());
        let scopes: BTreeSet<Scope> = scopes.iter().copied().collect();
        let rec = TokenRecord {
            secret_sha256: sha256_hex(secret.as_bytes()),
            scopes: scopes.iter().map(|s| s.as_str().to_string()).collect(),
            types: types.to_vec(),
            label: label.to_string(),
            created_ms: crate::clock::Clock::wall_ms(&crate::clock::SystemClock),
        };
        self.store.create_token(&id, &rec)?;
        let grant = Grant::from_record(&id, rec)?;
        Ok(NewToken {
            token: format!("{TOKEN_PREFIX}{id}_{secret}"),
            grant,
        })
    }

    /// What `token` allows, or UNAUTHENTICATED saying why it is refused.
    /// Reads the store at most once per [`TOKEN_CACHE_MS`] per token.
    pub fn verify(&self, token: &str) -> Result<Grant> {
        let (id, secret) = parse_token(token)?;
        let key = sha256_hex(token.as_bytes());
        let ttl = Duration::from_millis(TOKEN_CACHE_MS);
        if let Some(g) = self.cache.lock().get(&key, ttl) {
            return g.ok_or_else(|| unknown(id));
        }
        let found = match self.store.get_token(id)? {
            // Both sides are hashes of secrets, so comparing them leaks
            // nothing an attacker can steer.
            Some(rec) if rec.secret_sha256 == sha256_hex(secret.as_bytes()) => {
                Some(Grant::from_record(id, rec)?)
            }
            _ => None,
        };
        self.cache.lock().put(key, found.clone(), ttl);
        found.ok_or_else(|| unknown(id))
    }

    /// Every token (without secrets), sorted by id.
    pub fn list(&self) -> Result<Vec<Grant>> {
        self.store
            .list_tokens()?
            .into_iter()
            .map(|(id, rec)| Grant::from_record(&id, rec))
            .collect()
    }

    /// Revokes the token `id`; `false` if there was none. It stops working
    /// here at once, elsewhere within [`TOKEN_CACHE_MS`].
    pub fn revoke(&self, id: &str) -> Result<bool> {
        let had = self.store.delete_token(id)?;
        self.cache.lock().clear();
        Ok(had)
    }
}

fn unknown(id: &str) -> RuntimeError {
    RuntimeError::Unauthenticated(format!(
        "token {id} is unknown to this cluster or was revoked"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(Store::memory())
    }

    #[test]
    fn token_round_trip_and_wrong_secret_refused() {
        let t = tokens();
        let new = t.create(&[Scope::Call], &[], "test").unwrap();
        assert_eq!(t.verify(&new.token).unwrap(), new.grant);
        let (id, _) = parse_token(&new.token).unwrap();
        let forged = format!("{TOKEN_PREFIX}{id}_{}", "0".repeat(TOKEN_SECRET_HEX));
        let e = t.verify(&forged).unwrap_err();
        assert!(matches!(e, RuntimeError::Unauthenticated(_)), "{e}");
        let e = t.verify("Bearer nonsense").unwrap_err();
        assert!(e.to_string().contains("malformed token"), "{e}");
    }

    #[test]
    fn made_up_tokens_never_evict_a_verified_one() {
        let store = Store::memory();
        let t = Tokens::new(store.clone());
        let new = t.create(&[Scope::Call], &[], "").unwrap();
        t.verify(&new.token).unwrap();
        // A flood of well-formed tokens nobody issued, more than either
        // cache holds.
        for i in 0..(TOKEN_REFUSED_ENTRIES_MAX + TOKEN_CACHE_ENTRIES_MAX + 10) {
            let bogus = format!(
                "{TOKEN_PREFIX}{i:0w$x}_{}",
                "a".repeat(TOKEN_SECRET_HEX),
                w = TOKEN_ID_HEX
            );
            assert!(t.verify(&bogus).is_err());
        }
        // The record is gone from the store behind the cache's back: only
        // a cached grant can still answer, which proves the flood left it.
        assert!(store.delete_token(&new.grant.id).unwrap());
        assert_eq!(t.verify(&new.token).unwrap(), new.grant);
    }

    #[test]
    fn store_holds_no_secret() {
        let store = Store::memory();
        let t = Tokens::new(store.clone());
        let new = t.create(&[Scope::Admin], &[], "").unwrap();
        let (id, secret) = parse_token(&new.token).unwrap();
        let rec = store.get_token(id).unwrap().unwrap();
        assert_ne!(rec.secret_sha256, secret);
        assert!(!format!("{rec:?}").contains(secret));
    }

    #[test]
    fn scopes_and_types_limit_what_a_token_allows() {
        let t = tokens();
        let call_player = t
            .create(&[Scope::Call], &["player".into()], "")
            .unwrap()
            .grant;
        call_player.check(Need::Call("player")).unwrap();
        let e = call_player.check(Need::Call("match")).unwrap_err();
        assert!(e.to_string().contains("limited to types [player]"), "{e}");
        let e = call_player.check(Need::Deploy("player")).unwrap_err();
        assert!(e.to_string().contains("needs scope `deploy`"), "{e}");
        let e = call_player.check(Need::Admin).unwrap_err();
        assert!(matches!(e, RuntimeError::PermissionDenied(_)), "{e}");
        let admin = t.create(&[Scope::Admin], &[], "").unwrap().grant;
        for n in [Need::Call("x"), Need::Deploy("y"), Need::Admin] {
            admin.check(n).unwrap();
        }
    }

    #[test]
    fn revoked_token_refused() {
        let t = tokens();
        let new = t.create(&[Scope::Deploy], &[], "").unwrap();
        t.verify(&new.token).unwrap();
        assert!(t.revoke(&new.grant.id).unwrap());
        assert!(t.verify(&new.token).is_err());
        assert!(!t.revoke(&new.grant.id).unwrap());
    }

    #[test]
    fn bad_token_requests_refused_clearly() {
        let t = tokens();
        assert!(t.create(&[], &[], "").is_err());
        assert!(t.create(&[Scope::Call], &["bad/type".into()], "").is_err());
        assert!(
            t.create(&[Scope::Call], &[], &"x".repeat(TOKEN_LABEL_BYTES_MAX + 1))
                .is_err()
        );
        assert!("root".parse::<Scope>().is_err());
    }
}
