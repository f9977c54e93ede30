//! A delivering actor's work runs under `catch_unwind`: a panic (a bug, say in building one
//! request) fails that attempt as retryable, so its message is retried, and the actor keeps
//! serving. Left alone, the panic would end the actor's task for good (actix's supervisor
//! restarts only actors that stop) and every later message of its kind would fail.

use super::messages::Failure;
use crate::telemetry::events;
use futures::FutureExt;
use futures::future::LocalBoxFuture;
use parking_lot::Mutex;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// Runs `work` now and its future later, turning a panic in either into a retryable failure.
pub fn guarded<T, Fut>(work: impl FnOnce() -> Fut) -> LocalBoxFuture<'static, Result<T, Failure>>
where
    T: 'static,
    Fut: Future<Output = Result<T, Failure>> + 'static,
{
    match std::panic::catch_unwind(AssertUnwindSafe(work)) {
        Ok(attempt) => Box::pin(
            AssertUnwindSafe(attempt)
                .catch_unwind()
                .map(|outcome| outcome.unwrap_or_else(panicked)),
        ),
        Err(panic) => Box::pin(std::future::ready(panicked(panic))),
    }
}

fn panicked<T>(panic: Box<dyn Any + Send>) -> Result<T, Failure> {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    events::attempt_panicked(&what);
    Err(Failure::retryable(format!("the attempt panicked: {what}")))
}

/// Test-only fault hook: the next delivery attempt for this user panics. Production code
/// never arms it.
#[doc(hidden)]
pub fn panic_next_attempt_of(user: &str) {
    *PANIC_NEXT.lock() = Some(user.to_string());
}

static PANIC_NEXT: Mutex<Option<String>> = Mutex::new(None);

/// Called by the delivering actors while building a request.
pub(crate) fn fault_hook(user: &str) {
    let mut armed = PANIC_NEXT.lock();
    if armed.as_deref() == Some(user) {
        *armed = None;
        drop(armed);
        panic!("fault hook: injected panic for user {user}");
    }
}
