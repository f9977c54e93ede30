//! Coalesces one consumer channel's acks.
//!
//! On a quorum queue every `basic.ack` is a Raft command, so acking each delivery alone costs
//! the broker more than the delivery itself. RabbitMQ's `multiple` ack settles every delivery
//! of the channel up to a tag at once. The window tracks a channel's deliveries in the order
//! received: once its oldest ones are settled (their outcome durable), they go out as one
//! `multiple` ack. Settled deliveries behind one that is not (a held user) wait at most
//! [`ACK_WAIT`] for it, then are acked one by one.
//!
//! Only one job is written at a time: RabbitMQ closes the channel on an ack of a tag it no
//! longer holds, so a `multiple` ack must never overtake, or be overtaken by, another ack.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a settled delivery behind an unsettled one waits to be covered by a `multiple`
/// ack before it is acked alone.
pub const ACK_WAIT: Duration = Duration::from_millis(20);

/// Acks to write, oldest first.
#[derive(Debug, PartialEq)]
pub struct AckJob<T> {
    /// The channel's oldest deliveries, all settled: one `multiple` ack on the last covers them.
    pub oldest: Vec<T>,
    /// Settled deliveries behind an unsettled one: each acked alone.
    pub singles: Vec<T>,
}

/// A channel's deliveries not acked yet, by the order received; `Some` once settled.
#[derive(Debug)]
pub struct AckWindow<T> {
    slots: BTreeMap<u64, Option<(Instant, T)>>,
    settled: usize,
    writing: bool,
}

impl<T> Default for AckWindow<T> {
    fn default() -> Self {
        Self {
            slots: BTreeMap::new(),
            settled: 0,
            writing: false,
        }
    }
}

impl<T> AckWindow<T> {
    /// The `seq`-th delivery of the channel arrived (seqs rise in the order received).
    pub fn received(&mut self, seq: u64) {
        self.slots.insert(seq, None);
    }

    /// Its outcome is durable: it may be acked.
    pub fn settled(&mut self, seq: u64, item: T, now: Instant) {
        if let Some(slot) = self.slots.get_mut(&seq)
            && slot.is_none()
        {
            *slot = Some((now, item));
            self.settled += 1;
        }
    }

    /// Acked elsewhere (a dead letter, by the DLQ actor): no longer the window's to ack.
    pub fn forget(&mut self, seq: u64) {
        if let Some(Some(_)) = self.slots.remove(&seq) {
            self.settled -= 1;
        }
    }

    /// Whether settled deliveries are waiting for an ack.
    pub fn waiting(&self) -> bool {
        self.settled > 0
    }

    /// The acks to write now, unless a job is still being written: the settled oldest, and
    /// those behind an unsettled one that waited [`ACK_WAIT`] (all of them when `flush`).
    pub fn next_job(&mut self, now: Instant, flush: bool) -> Option<AckJob<T>> {
        if self.writing || self.settled == 0 {
            return None;
        }
        let mut oldest = Vec::new();
        while let Some(entry) = self.slots.first_entry()
            && entry.get().is_some()
        {
            oldest.extend(entry.remove().map(|(_, item)| item));
        }
        let due: Vec<u64> = self
            .slots
            .iter()
            .filter_map(|(seq, slot)| match slot {
                Some((at, _)) if flush || now.duration_since(*at) >= ACK_WAIT => Some(*seq),
                _ => None,
            })
            .collect();
        let singles: Vec<T> = due
            .into_iter()
            .filter_map(|seq| self.slots.remove(&seq).flatten().map(|(_, item)| item))
            .collect();
        if oldest.is_empty() && singles.is_empty() {
            return None;
        }
        self.settled -= oldest.len() + singles.len();
        self.writing = true;
        Some(AckJob { oldest, singles })
    }

    /// The job from [`AckWindow::next_job`] is written (or failed): the next may go.
    pub fn written(&mut self) {
        self.writing = false;
    }

    /// The channel is gone: every settled delivery not acked is redelivered.
    pub fn abandon(&mut self) -> Vec<T> {
        std::mem::take(self)
            .slots
            .into_values()
            .filter_map(|slot| slot.map(|(_, item)| item))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(seqs: std::ops::Range<u64>) -> AckWindow<u64> {
        let mut window = AckWindow::default();
        seqs.for_each(|seq| window.received(seq));
        window
    }

    #[test]
    fn the_settled_oldest_go_out_as_one_job() {
        let now = Instant::now();
        let mut window = window(0..5);
        for seq in [2, 0, 1] {
            window.settled(seq, seq, now);
        }
        let job = window.next_job(now, false).expect("a job");
        assert_eq!(job.oldest, vec![0, 1, 2]);
        assert!(job.singles.is_empty());
        assert!(!window.waiting());
    }

    #[test]
    fn settled_ones_behind_an_open_one_wait_then_go_alone() {
        let now = Instant::now();
        let mut window = window(0..4);
        window.settled(1, 1, now);
        window.settled(3, 3, now);
        assert_eq!(window.next_job(now, false), None, "they wait for 0 first");
        assert!(window.waiting());
        let later = now + ACK_WAIT;
        let job = window.next_job(later, false).expect("a job");
        assert_eq!((job.oldest, job.singles), (vec![], vec![1, 3]));
        window.written();
        window.settled(0, 0, later);
        window.settled(2, 2, later);
        let job = window.next_job(later, false).expect("a job");
        assert_eq!(job.oldest, vec![0, 2], "what was acked alone is gone");
    }

    #[test]
    fn one_job_at_a_time_and_flush_takes_every_settled_one() {
        let now = Instant::now();
        let mut window = window(0..3);
        window.settled(0, 0, now);
        assert!(window.next_job(now, false).is_some());
        window.settled(2, 2, now);
        assert_eq!(
            window.next_job(now, true),
            None,
            "the first is being written"
        );
        window.written();
        let job = window.next_job(now, true).expect("a job");
        assert_eq!((job.oldest, job.singles), (vec![], vec![2]));
    }

    #[test]
    fn forgotten_ones_do_not_hold_back_the_rest() {
        let now = Instant::now();
        let mut window = window(0..3);
        window.settled(1, 1, now);
        window.settled(2, 2, now);
        window.forget(0);
        assert_eq!(
            window.next_job(now, false).expect("a job").oldest,
            vec![1, 2]
        );
    }

    #[test]
    fn abandoning_hands_back_the_settled_and_empties_the_window() {
        let now = Instant::now();
        let mut window = window(0..2);
        window.settled(1, 1, now);
        assert_eq!(window.abandon(), vec![1]);
        assert!(!window.waiting());
        assert_eq!(window.next_job(now, true), None);
    }
}
