//! A boolean that tasks can wait on.
//!
//! Waiters wake in the order they began to wait. A `watch` channel would
//! not do for a deterministic simulator: it spreads its waiters over
//! several queues chosen at random (and `send` drops a value nobody
//! listens to yet).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A boolean that tasks can wait on, woken in arrival order.
#[derive(Debug, Default)]
pub struct Flag {
    value: AtomicBool,
    changed: Notify,
}

impl Flag {
    /// A flag set to `value`.
    pub fn new(value: bool) -> Flag {
        Flag {
            value: AtomicBool::new(value),
            changed: Notify::new(),
        }
    }

    /// Its value now.
    pub fn get(&self) -> bool {
        self.value.load(Ordering::Acquire)
    }

    /// Sets it, waking every waiter.
    pub fn set(&self, value: bool) {
        self.value.store(value, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Waits until it is `value`.
    pub async fn wait_until(&self, value: bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: a `set` between the check and
            // the await is not missed.
            changed.as_mut().enable();
            if self.get() == value {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn waiters_wake_in_arrival_order() {
        let flag = Arc::new(Flag::new(false));
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (f, o) = (flag.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                f.wait_until(true).await;
                o.lock().push(i);
            }));
            // Let task `i` start waiting before the next one.
            tokio::task::yield_now().await;
        }
        assert!(order.lock().is_empty());
        flag.set(true);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4]);
        // Already true: no wait.
        flag.wait_until(true).await;
    }
}
