//! A panic hook that reports through the host log instead of WASI stderr.

use std::cell::RefCell;

thread_local! {
    /// The method of the call being handled, for panic messages.
    static CURRENT_METHOD: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Remember the method being handled (reuses one allocation).
pub(crate) fn set_current_method(method: &str) {
    CURRENT_METHOD.with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            m.clear();
            m.push_str(method);
        }
    });
}

/// Install the hook once (wasm32 only: host test harnesses keep theirs).
pub(crate) fn install() {
    #[cfg(target_arch = "wasm32")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| std::panic::set_hook(Box::new(hook)));
    }
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn hook(info: &std::panic::PanicHookInfo<'_>) {
    let message = info
        .payload_as_str()
        .unwrap_or("(non-string panic payload)");
    let method = CURRENT_METHOD
        .try_with(|m| m.try_borrow().map(|m| m.clone()).unwrap_or_default())
        .unwrap_or_default();
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_else(|| "unknown location".into());
    crate::log::error(&format!(
        "actor panicked in `{method}` at {location}: {message}; the turn will be rolled back"
    ));
}
