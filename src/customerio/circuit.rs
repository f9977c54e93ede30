//! A circuit per Customer.io API: while the workspace itself fails (credentials refused, wrong
//! region, an outage seen across users), requests wait here instead of failing, so no message
//! spends an attempt on a fault that is not its own.
//!
//! Closed: every request passes. A workspace failure opens it: requests wait, and one probe at a
//! time is let through, at a backoff that doubles up to `customerio.circuit_max_backoff_ms`. A
//! probe that gets an answer about the request (2xx, or a 4xx naming it) closes the circuit.
//! Transient failures (5xx, timeouts, connection errors) open it once `threshold` requests in a
//! row failed: a lone 5xx among successes stays the message's own, retryable failure.

use crate::retry::{Backoff, FailureStreak};
use crate::telemetry::events;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What one request's answer says about the workspace.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Customer.io answered about the request itself: the workspace works.
    Healthy,
    /// Says nothing either way (a 429: the budget handles it).
    Neutral,
    /// A failure of the workspace for certain (401, wrong region, a multi-user batch 5xx).
    Workspace(String),
    /// A 5xx, timeout or connection error of a request about one user.
    Transient(String),
}

/// Whether the failed request's message should wait (the circuit is open) or count an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blame {
    Workspace,
    Message,
}

pub(crate) struct Circuit {
    api: &'static str,
    threshold: u32,
    max_backoff: Duration,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    consecutive_failures: u32,
    open: Option<Open>,
    /// The last failure that counted against the workspace, open or not, and when.
    last_failure: Option<(String, std::time::SystemTime)>,
}

/// What `/admin/status` shows of a circuit.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CircuitStatus {
    pub open: bool,
    /// Since when it is open (RFC 3339), and why.
    pub open_since: Option<String>,
    pub reason: Option<String>,
    /// The last request failure that counted (the workspace's, or one of a run), and when.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

struct Open {
    reason: String,
    since: Instant,
    /// Failed probes since it opened: each waits longer, up to `max_backoff`.
    probes: FailureStreak,
    next_probe: Instant,
    probing: bool,
}

/// Leave to send one request; a probe's is given back if the request never reports.
pub(crate) struct Pass {
    circuit: Arc<Circuit>,
    probe: bool,
}

impl Drop for Pass {
    fn drop(&mut self) {
        if self.probe {
            // Cancelled before a verdict: let the next waiter probe.
            if let Some(open) = self.circuit.state.lock().open.as_mut() {
                open.probing = false;
            }
            self.circuit.changed.notify_waiters();
        }
    }
}

impl Pass {
    /// Records what the answer says and whether a failure is the workspace's.
    pub(crate) fn settle(mut self, verdict: Verdict) -> Blame {
        let probe = std::mem::replace(&mut self.probe, false);
        self.circuit.record(verdict, probe)
    }
}

impl Circuit {
    pub(crate) fn new(api: &'static str, threshold: u32, max_backoff: Duration) -> Arc<Self> {
        events::circuit_created(api);
        Arc::new(Self {
            api,
            threshold: threshold.max(1),
            max_backoff: max_backoff.max(Duration::from_millis(1)),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        })
    }

    /// Between probes: from a quarter of the cap (at most a second) up to the cap.
    fn probe_backoff(&self) -> Backoff {
        Backoff::exact(
            (self.max_backoff / 4).min(Duration::from_secs(1)),
            self.max_backoff,
        )
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state.lock().open.is_some()
    }

    /// Waits until a request may go: the circuit is closed, or this one is the probe. `None`
    /// after waiting `max_backoff` in vain, so the caller can give the message back (a drain
    /// is not held up for a whole outage).
    pub(crate) async fn admit(self: &Arc<Self>) -> Option<Pass> {
        let give_up = Instant::now() + self.max_backoff;
        loop {
            let changed = self.changed.notified();
            let wake = {
                let mut state = self.state.lock();
                match state.open.as_mut() {
                    None => return Some(self.pass(false)),
                    Some(open) if !open.probing && Instant::now() >= open.next_probe => {
                        open.probing = true;
                        return Some(self.pass(true));
                    }
                    Some(open) if open.probing => give_up,
                    Some(open) => open.next_probe.min(give_up),
                }
            };
            if Instant::now() >= give_up {
                return None;
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn pass(self: &Arc<Self>, probe: bool) -> Pass {
        Pass {
            circuit: self.clone(),
            probe,
        }
    }

    fn record(&self, verdict: Verdict, probe: bool) -> Blame {
        let mut state = self.state.lock();
        let blame = match verdict {
            Verdict::Healthy => {
                state.consecutive_failures = 0;
                if let Some(open) = state.open.take() {
                    events::circuit_closed(self.api, open.since.elapsed());
                }
                Blame::Message
            }
            Verdict::Neutral => {
                if let Some(open) = state.open.as_mut().filter(|_| probe) {
                    open.probing = false;
                }
                Blame::Workspace
            }
            Verdict::Workspace(reason) => {
                state.last_failure = Some((reason.clone(), std::time::SystemTime::now()));
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                self.trip(&mut state, reason, probe);
                Blame::Workspace
            }
            Verdict::Transient(reason) => {
                state.last_failure = Some((reason.clone(), std::time::SystemTime::now()));
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                if state.open.is_some() || state.consecutive_failures >= self.threshold {
                    let reason = format!(
                        "{} requests in a row failed, last: {reason}",
                        state.consecutive_failures
                    );
                    self.trip(&mut state, reason, probe);
                    Blame::Workspace
                } else {
                    Blame::Message
                }
            }
        };
        drop(state);
        self.changed.notify_waiters();
        blame
    }

    /// Opens the circuit, or after a failed probe schedules the next one later.
    fn trip(&self, state: &mut State, reason: String, probe: bool) {
        let now = Instant::now();
        match state.open.as_mut() {
            Some(open) => {
                if probe {
                    open.probing = false;
                    let backoff = open.probes.failed();
                    open.next_probe = now + backoff;
                    tracing::debug!(api = self.api, backoff_ms = backoff.as_millis() as u64, %reason, "probe failed");
                }
                open.reason = reason;
            }
            None => {
                events::circuit_opened(self.api, &reason);
                let mut probes = self.probe_backoff().streak();
                // The failure that opened it counts: the first probe waits the base.
                let first = probes.failed();
                state.open = Some(Open {
                    reason,
                    since: now,
                    next_probe: now + first,
                    probes,
                    probing: false,
                });
            }
        }
    }

    pub(crate) fn status(&self) -> CircuitStatus {
        let state = self.state.lock();
        let rfc3339 =
            |at: std::time::SystemTime| chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339();
        CircuitStatus {
            open: state.open.is_some(),
            open_since: state
                .open
                .as_ref()
                .map(|o| rfc3339(std::time::SystemTime::now() - o.since.elapsed())),
            reason: state.open.as_ref().map(|o| o.reason.clone()),
            last_error: state.last_failure.as_ref().map(|(e, _)| e.clone()),
            last_error_at: state.last_failure.as_ref().map(|(_, at)| rfc3339(*at)),
        }
    }

    /// Why the circuit is open, if it is.
    pub(crate) fn reason(&self) -> Option<String> {
        self.state.lock().open.as_ref().map(|o| o.reason.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(threshold: u32) -> Arc<Circuit> {
        Circuit::new("test", threshold, Duration::from_millis(200))
    }

    #[tokio::test]
    async fn a_lone_transient_failure_is_the_message_s_own() {
        let c = circuit(3);
        let pass = c.admit().await.unwrap();
        assert_eq!(
            pass.settle(Verdict::Transient("503".into())),
            Blame::Message
        );
        let pass = c.admit().await.unwrap();
        assert_eq!(pass.settle(Verdict::Healthy), Blame::Message);
        for _ in 0..2 {
            let pass = c.admit().await.unwrap();
            assert_eq!(
                pass.settle(Verdict::Transient("503".into())),
                Blame::Message
            );
        }
        assert!(!c.is_open(), "a success in between resets the count");
    }

    #[tokio::test]
    async fn consecutive_failures_open_and_a_probe_closes() {
        let c = circuit(3);
        for _ in 0..2 {
            c.admit()
                .await
                .unwrap()
                .settle(Verdict::Transient("503".into()));
        }
        let third = c.admit().await.unwrap();
        assert_eq!(
            third.settle(Verdict::Transient("503".into())),
            Blame::Workspace
        );
        assert!(c.is_open());
        assert!(c.reason().unwrap().contains("3 requests in a row"));

        // One probe at a time: the second waiter gets none while the first is out.
        let started = Instant::now();
        let probe = c.admit().await.unwrap();
        assert!(probe.probe);
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "probes wait for the backoff"
        );
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.admit().await.map(|p| p.probe) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(probe.settle(Verdict::Healthy), Blame::Message);
        assert!(!c.is_open());
        assert_eq!(
            waiter.await.unwrap(),
            Some(false),
            "closing lets waiters through"
        );
    }

    #[tokio::test]
    async fn a_workspace_failure_opens_at_once_and_failed_probes_back_off() {
        let c = circuit(3);
        let pass = c.admit().await.unwrap();
        assert_eq!(
            pass.settle(Verdict::Workspace("401".into())),
            Blame::Workspace
        );
        assert!(c.is_open());
        let mut last = Instant::now();
        let mut gaps = Vec::new();
        for _ in 0..4 {
            let probe = c.admit().await.unwrap();
            gaps.push(last.elapsed());
            last = Instant::now();
            probe.settle(Verdict::Workspace("401".into()));
        }
        assert!(
            gaps.windows(2)
                .all(|w| w[1] + Duration::from_millis(5) >= w[0]),
            "{gaps:?}"
        );
        assert!(
            gaps[3] <= Duration::from_millis(300),
            "capped near the maximum: {gaps:?}"
        );
        assert!(c.is_open());
    }

    #[tokio::test]
    async fn a_cancelled_probe_hands_over_and_waiters_give_up_after_the_cap() {
        let c = circuit(1);
        c.admit()
            .await
            .unwrap()
            .settle(Verdict::Workspace("301".into()));
        let probe = c.admit().await.unwrap();
        drop(probe);
        let next = tokio::time::timeout(Duration::from_millis(150), c.admit()).await;
        let next = next.expect("the next waiter probes at once").unwrap();
        assert!(next.probe);
        let started = Instant::now();
        assert!(
            c.admit().await.is_none(),
            "no second probe while one is out"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        drop(next);
    }
}
