//! Method dispatch and the single actor instance.

use std::cell::RefCell;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ActorError;

/// An actor: its state and a dispatcher over its methods. Implemented by the
/// [`actor!`](crate::actor!) macro; you normally do not implement it by hand.
pub trait Actor: Default + 'static {
    /// The actor's Rust type name, used in error messages.
    const NAME: &'static str;
    /// The wire names of its methods, in declaration order.
    const METHODS: &'static [&'static str];

    /// Run one method. Unknown methods give `not-found`.
    fn dispatch(&mut self, method: &str, payload: &[u8]) -> Result<Vec<u8>, ActorError>;

    /// The state, serialized for another version of this code (upgrades).
    fn save(&self) -> Result<Vec<u8>, ActorError>;

    /// The state `save` wrote in another version of this code (upgrades).
    fn load(state: &[u8]) -> Result<Self, ActorError>;
}

/// Holds the single instance of an actor, created with [`Default`] on the
/// first call. The [`actor!`](crate::actor!) macro puts one in a `static`;
/// because the runtime persists linear memory, the instance (and everything
/// it owns on the heap) survives between calls, evictions and migrations.
pub struct ActorCell<T> {
    inner: RefCell<Option<T>>,
}

// SAFETY: on wasm32 without the `atomics` target feature there are no threads
// at all (`wasm32-wasip2` guests are single-threaded), so a value can never be
// reached from two threads. On every other target `ActorCell` is not `Sync`
// and cannot be put in a `static`; the `actor!` macro only does so on wasm32.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<T> Sync for ActorCell<T> {}

impl<T> Default for ActorCell<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ActorCell<T> {
    /// An empty cell; the actor is created on the first call.
    pub const fn new() -> Self {
        Self {
            inner: RefCell::new(None),
        }
    }
}

impl<T: Actor> ActorCell<T> {
    /// Handle one call: install the panic hook (first call only), create the
    /// actor if needed, and dispatch.
    pub fn handle(&self, method: &str, payload: &[u8]) -> Result<Vec<u8>, ActorError> {
        crate::panic_hook::install();
        crate::panic_hook::set_current_method(method);
        let Ok(mut slot) = self.inner.try_borrow_mut() else {
            return Err(ActorError::failed_precondition(format!(
                "{}: `{method}` called while another call is running (re-entrant call)",
                T::NAME
            )));
        };
        slot.get_or_insert_with(T::default)
            .dispatch(method, payload)
    }

    /// The `save` export: the actor's state for another version (an actor
    /// that never ran a call saves its `Default`).
    pub fn save(&self) -> Result<Vec<u8>, ActorError> {
        crate::panic_hook::install();
        crate::panic_hook::set_current_method("save");
        let Ok(mut slot) = self.inner.try_borrow_mut() else {
            return Err(ActorError::failed_precondition(format!(
                "{}: save called while a call is running",
                T::NAME
            )));
        };
        slot.get_or_insert_with(T::default).save()
    }

    /// The `load` export: replaces the state with one saved by another
    /// version; on error the state is unchanged.
    pub fn load(&self, state: &[u8]) -> Result<(), ActorError> {
        crate::panic_hook::install();
        crate::panic_hook::set_current_method("load");
        let Ok(mut slot) = self.inner.try_borrow_mut() else {
            return Err(ActorError::failed_precondition(format!(
                "{}: load called while a call is running",
                T::NAME
            )));
        };
        *slot = Some(T::load(state)?);
        Ok(())
    }

    /// Run `f` on the actor (creating it if needed); for tests and tools.
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(self.inner.borrow_mut().get_or_insert_with(T::default))
    }
}

/// Support code for the `actor!` macro. Not a stable API.
#[doc(hidden)]
pub mod kinds {
    use super::*;

    fn decode<Req: DeserializeOwned>(
        actor: &str,
        method: &str,
        payload: &[u8],
    ) -> Result<Req, ActorError> {
        let bytes: &[u8] = if payload.is_empty() { b"null" } else { payload };
        serde_json::from_slice(bytes).map_err(|e| {
            ActorError::invalid_argument(format!(
                "{actor}.{method}: payload is not the expected JSON: {e}"
            ))
        })
    }

    fn encode<Resp: Serialize>(
        actor: &str,
        method: &str,
        resp: &Resp,
    ) -> Result<Vec<u8>, ActorError> {
        serde_json::to_vec(resp).map_err(|e| {
            ActorError::internal(format!(
                "{actor}.{method}: reply does not encode as JSON: {e}"
            ))
        })
    }

    /// `json`: JSON argument, JSON reply.
    pub fn json<S: Actor, Req: DeserializeOwned, Resp: Serialize>(
        s: &mut S,
        f: impl FnOnce(&mut S, Req) -> Result<Resp, ActorError>,
        method: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, ActorError> {
        let req = decode(S::NAME, method, payload)?;
        let resp = f(s, req)?;
        encode(S::NAME, method, &resp)
    }

    /// `json0`: no argument (the payload is ignored), JSON reply.
    pub fn json0<S: Actor, Resp: Serialize>(
        s: &mut S,
        f: impl FnOnce(&mut S) -> Result<Resp, ActorError>,
        method: &str,
        _payload: &[u8],
    ) -> Result<Vec<u8>, ActorError> {
        let resp = f(s)?;
        encode(S::NAME, method, &resp)
    }

    /// `raw`: bytes in, bytes out.
    pub fn raw<S: Actor>(
        s: &mut S,
        f: impl FnOnce(&mut S, &[u8]) -> Result<Vec<u8>, ActorError>,
        _method: &str,
        payload: &[u8],
    ) -> Result<Vec<u8>, ActorError> {
        f(s, payload)
    }

    /// `save` of the `actor!` macro: the state as JSON.
    pub fn save<S: Actor + Serialize>(s: &S) -> Result<Vec<u8>, ActorError> {
        serde_json::to_vec(s).map_err(|e| {
            ActorError::internal(format!(
                "{}: the state does not encode as JSON: {e}",
                S::NAME
            ))
        })
    }

    /// A `migrate` function of the `actor!` macro: builds the state from
    /// the JSON an older version saved, when it does not decode as is.
    pub type Migrate<S> = fn(serde_json::Value) -> Result<S, ActorError>;

    /// `load` of the `actor!` macro: the state from JSON, through
    /// `migrate` if it does not decode as this version's type.
    pub fn load<S: Actor + DeserializeOwned>(
        state: &[u8],
        migrate: Option<Migrate<S>>,
    ) -> Result<S, ActorError> {
        match serde_json::from_slice::<S>(state) {
            Ok(s) => Ok(s),
            Err(e) => match migrate {
                Some(m) => {
                    let v = serde_json::from_slice(state).map_err(|e| {
                        ActorError::invalid_argument(format!(
                            "{}: the saved state is not JSON: {e}",
                            S::NAME
                        ))
                    })?;
                    m(v)
                }
                None => Err(ActorError::failed_precondition(format!(
                    "{}: the state saved by the previous version does not fit this one ({e}); give new fields #[serde(default)], or write a migrate function: actor!(Type {{ ... }} migrate Type::migrate)",
                    S::NAME
                ))),
            },
        }
    }

    /// The error for a method the actor does not have.
    pub fn unknown_method<S: Actor>(method: &str) -> ActorError {
        ActorError::not_found(format!(
            "{} has no method `{method}`; known methods: {}",
            S::NAME,
            S::METHODS.join(", ")
        ))
    }
}

/// Declare an actor: its state type and its methods.
///
/// ```text
/// actor!(Type { kind method, kind method as "wire-name", ... });
/// actor!(Type { ... } migrate Type::from_old);   // optional
/// ```
///
/// - `Type` implements [`Default`] (the state before the first call) and
///   serde's `Serialize` and `Deserialize` (its state moves to a new
///   version of the code as JSON: fields added with `#[serde(default)]`,
///   removed fields and any change of methods need no code);
/// - `migrate` names a `fn(serde_json::Value) -> Result<Type, ActorError>`
///   called with the old version's state when it does not decode as
///   `Type` (an incompatible change);
/// - `kind` is `json` (`fn(&mut self, Req) -> Result<Resp, ActorError>`),
///   `json0` (`fn(&mut self) -> Result<Resp, ActorError>`) or `raw`
///   (`fn(&mut self, &[u8]) -> Result<Vec<u8>, ActorError>`);
/// - the wire name is the method's Rust name unless `as "..."` is given.
///
/// It implements [`Actor`] for `Type` (so `Type::default().dispatch(..)` works
/// in host unit tests) and, when compiling for wasm32, keeps the single
/// instance in a `static` [`ActorCell`] and exports the component's `handle`
/// function. Use it once per crate, in the module that defines the methods
/// (they may stay private). See the [crate docs](crate) for a full example.
#[macro_export]
macro_rules! actor {
    ($ty:ident { $($kind:ident $method:ident $(as $wire:literal)?),* $(,)? } $(migrate $migrate:path)?) => {
        impl $crate::Actor for $ty {
            const NAME: &'static str = ::core::stringify!($ty);
            const METHODS: &'static [&'static str] =
                &[$($crate::__wire_name!($method $(as $wire)?)),*];

            fn dispatch(
                &mut self,
                method: &str,
                payload: &[u8],
            ) -> ::core::result::Result<::std::vec::Vec<u8>, $crate::ActorError> {
                $(
                    if method == $crate::__wire_name!($method $(as $wire)?) {
                        return $crate::__private::kinds::$kind(self, $ty::$method, method, payload);
                    }
                )*
                ::core::result::Result::Err($crate::__private::kinds::unknown_method::<Self>(method))
            }

            fn save(&self) -> ::core::result::Result<::std::vec::Vec<u8>, $crate::ActorError> {
                $crate::__private::kinds::save(self)
            }

            fn load(state: &[u8]) -> ::core::result::Result<Self, $crate::ActorError> {
                #[allow(unused_mut, unused_assignments)]
                let mut migrate: ::core::option::Option<$crate::__private::kinds::Migrate<Self>> =
                    ::core::option::Option::None;
                $(migrate = ::core::option::Option::Some($migrate);)?
                $crate::__private::kinds::load(state, migrate)
            }
        }

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static __TERN_ACTOR: $crate::ActorCell<$ty> = $crate::ActorCell::new();

            struct __TernGuest;

            impl $crate::bindings::Guest for __TernGuest {
                fn handle(
                    method: ::std::string::String,
                    payload: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<u8>,
                    $crate::bindings::tern::actor::types::ActorError,
                > {
                    __TERN_ACTOR
                        .handle(&method, &payload)
                        .map_err(::core::convert::Into::into)
                }

                fn save() -> ::core::result::Result<
                    ::std::vec::Vec<u8>,
                    $crate::bindings::tern::actor::types::ActorError,
                > {
                    __TERN_ACTOR.save().map_err(::core::convert::Into::into)
                }

                fn load(
                    state: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<(), $crate::bindings::tern::actor::types::ActorError> {
                    __TERN_ACTOR.load(&state).map_err(::core::convert::Into::into)
                }
            }

            $crate::bindings::export!(__TernGuest with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wire_name {
    ($method:ident) => {
        ::core::stringify!($method)
    };
    ($method:ident as $wire:literal) => {
        $wire
    };
}
