//! Per-address dispatch, the heart of the StateFun request-reply contract: at most ONE request
//! in flight per address; messages that arrive meanwhile queue and go out together as the next
//! batch, capped at the endpoint's `maxNumBatchRequests`. A queue at its cap is the
//! back-pressure signal: the processor stops taking input until it drains.
//!
//! Pure data: no I/O, no clocks. The processor owns one `Dispatcher` per partition.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug)]
struct Slot<T> {
    max_batch: usize,
    queue: VecDeque<T>,
}

/// Tracks, per address, whether a request is in flight and what waits behind it.
#[derive(Debug)]
pub struct Dispatcher<A, T> {
    /// Present = a request is in flight for the address.
    busy: HashMap<A, Slot<T>>,
    queued: usize,
    full: usize,
}

impl<A: Eq + Hash + Clone, T> Default for Dispatcher<A, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Eq + Hash + Clone, T> Dispatcher<A, T> {
    pub fn new() -> Self {
        Dispatcher {
            busy: HashMap::new(),
            queued: 0,
            full: 0,
        }
    }

    /// Offers a message for `addr`. Returns the batch to send now when the address was idle;
    /// otherwise the message waits for the in-flight request to complete.
    pub fn enqueue(&mut self, addr: A, item: T, max_batch: usize) -> Option<Vec<T>> {
        match self.busy.get_mut(&addr) {
            Some(slot) => {
                slot.queue.push_back(item);
                self.queued += 1;
                if slot.queue.len() == slot.max_batch {
                    self.full += 1;
                }
                None
            }
            None => {
                self.busy.insert(
                    addr,
                    Slot {
                        max_batch: max_batch.max(1),
                        queue: VecDeque::new(),
                    },
                );
                Some(vec![item])
            }
        }
    }

    /// The in-flight request of `addr` finished. Returns the next batch (the address stays
    /// busy) or `None` when nothing waits (the address becomes idle).
    pub fn complete(&mut self, addr: &A) -> Option<Vec<T>> {
        let slot = self.busy.get_mut(addr)?;
        if slot.queue.is_empty() {
            self.busy.remove(addr);
            return None;
        }
        if slot.queue.len() >= slot.max_batch {
            self.full -= 1;
        }
        let n = slot.queue.len().min(slot.max_batch);
        let batch: Vec<T> = slot.queue.drain(..n).collect();
        if slot.queue.len() >= slot.max_batch {
            self.full += 1;
        }
        self.queued -= batch.len();
        Some(batch)
    }

    #[cfg(test)]
    /// True when no address has a request in flight or a message waiting.
    pub fn is_idle(&self) -> bool {
        self.busy.is_empty()
    }

    /// True while some address's queue has reached its batch cap.
    pub fn is_backpressured(&self) -> bool {
        self.full > 0
    }

    pub fn is_busy(&self, addr: &A) -> bool {
        self.busy.contains_key(addr)
    }

    /// Every address with a request in flight, with the messages queued behind it.
    pub fn busy(&self) -> impl Iterator<Item = (&A, impl Iterator<Item = &T>)> {
        self.busy.iter().map(|(a, slot)| (a, slot.queue.iter()))
    }

    #[cfg(test)]
    /// Messages waiting behind in-flight requests.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Addresses with a request in flight.
    pub fn in_flight(&self) -> usize {
        self.busy.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_address_is_invoked_at_once() {
        let mut d = Dispatcher::new();
        assert_eq!(d.enqueue("a", 1, 10), Some(vec![1]));
        assert!(!d.is_idle());
    }

    #[test]
    fn batch_is_accumulated_while_a_request_is_in_flight() {
        let mut d = Dispatcher::new();
        assert_eq!(d.enqueue("a", 1, 10), Some(vec![1]));
        assert_eq!(d.enqueue("a", 2, 10), None);
        assert_eq!(d.enqueue("a", 3, 10), None);
        assert_eq!(d.queued(), 2);
        assert_eq!(d.complete(&"a"), Some(vec![2, 3]));
        assert_eq!(d.queued(), 0);
        assert_eq!(d.complete(&"a"), None);
        assert!(d.is_idle());
    }

    #[test]
    fn addresses_are_independent() {
        let mut d = Dispatcher::new();
        assert_eq!(d.enqueue("a", 1, 10), Some(vec![1]));
        assert_eq!(d.enqueue("b", 2, 10), Some(vec![2]));
        assert_eq!(d.in_flight(), 2);
        assert_eq!(d.complete(&"b"), None);
        assert!(d.is_busy(&"a"));
        assert!(!d.is_busy(&"b"));
    }

    #[test]
    fn reaching_a_batch_limit_triggers_back_pressure() {
        let mut d = Dispatcher::new();
        d.enqueue("a", 0, 2);
        d.enqueue("a", 1, 2);
        assert!(!d.is_backpressured());
        d.enqueue("a", 2, 2);
        assert!(d.is_backpressured());
        d.enqueue("a", 3, 2);
        assert!(d.is_backpressured(), "three queued, cap two");
        assert_eq!(d.complete(&"a"), Some(vec![1, 2]));
        assert!(!d.is_backpressured());
        assert_eq!(d.complete(&"a"), Some(vec![3]));
        assert_eq!(d.complete(&"a"), None);
        assert!(d.is_idle());
    }

    #[test]
    fn order_of_one_sender_is_kept() {
        let mut d = Dispatcher::new();
        let mut seen = d.enqueue("a", 0, 3).unwrap();
        for i in 1..10 {
            assert_eq!(d.enqueue("a", i, 3), None);
        }
        while let Some(batch) = d.complete(&"a") {
            assert!(batch.len() <= 3);
            seen.extend(batch);
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn busy_addresses_list_their_queues() {
        let mut d = Dispatcher::new();
        d.enqueue("a", 1, 10);
        d.enqueue("a", 2, 10);
        d.enqueue("b", 3, 10);
        let mut busy: Vec<(&str, Vec<i32>)> =
            d.busy().map(|(a, q)| (*a, q.copied().collect())).collect();
        busy.sort();
        assert_eq!(busy, vec![("a", vec![2]), ("b", vec![])]);
    }

    #[test]
    fn completing_an_unknown_address_is_harmless() {
        let mut d: Dispatcher<&str, i32> = Dispatcher::new();
        assert_eq!(d.complete(&"x"), None);
        assert!(d.is_idle());
    }
}
