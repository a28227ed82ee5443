//! How many attempts may be in flight: a fixed number (`--workers N`), or a number that adapts
//! to the backend (`--workers auto`).
//!
//! The adaptive limit follows TCP Vegas: with latency at its floor, every extra request is
//! served in parallel, so the limit grows; once requests queue on the server (Ollama queues
//! past its parallel slots), latency grows in proportion and the estimated queue,
//! `limit × (1 − floor / latency)`, says by how much the limit overshoots, and the limit comes
//! down by that much. It starts by doubling (slow start, as TCP does) until the first sign of
//! queueing, then moves by one. A 503 or 429 halves it at once. After the limit comes down,
//! the answers of attempts sent under the old limit are passed over: they queued behind the
//! old overshoot and would make it come down again for the same cause (slow start's last
//! doubling then undershot to half the slots, and a whole run at 32 slots kept 0.91 of the
//! fixed rate instead of 0.97). The limit settles a little above the server's parallel slots,
//! where throughput is at its best and the server's queue stays short.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Queue length (in requests) below which the limit grows and above which it shrinks.
const QUEUE_LOW: f64 = 1.0;
const QUEUE_HIGH: f64 = 3.0;

/// What one attempt tells the controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// An answer (any status but overload) after this long.
    Answered(Duration),
    /// The server said it is full (503) or asked to slow down (429).
    Overloaded,
    /// No information about load (a connection error, a timeout).
    Nothing,
}

/// The Vegas controller, pure: it is fed signals and says what the limit should be.
#[derive(Debug, Clone)]
pub struct Vegas {
    limit: f64,
    max: f64,
    /// The lowest average latency seen: the latency of a request that did not queue.
    floor: Option<f64>,
    /// Latencies since the limit last moved; the limit moves once per `limit` answers.
    window: Vec<f64>,
    /// Doubling until the first queueing or overload.
    slow_start: bool,
    /// Answers still to come from attempts that were in flight when the limit last came
    /// down. They waited in the queue the old limit built, so they would count that overshoot
    /// again; they are passed over, and a burst of 503s halves the limit once, not once per
    /// answer.
    stale: usize,
}

impl Vegas {
    pub fn new(initial: usize, max: usize) -> Vegas {
        Vegas {
            limit: initial.max(1) as f64,
            max: max.max(1) as f64,
            floor: None,
            window: Vec::new(),
            slow_start: true,
            stale: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.round() as usize
    }

    /// Takes one attempt's signal, with `in_flight` other attempts still out; returns the new
    /// limit.
    pub fn observe(&mut self, signal: Signal, in_flight: usize) -> usize {
        if self.stale > 0 {
            self.stale -= 1;
            return self.limit();
        }
        match signal {
            Signal::Nothing => {}
            Signal::Overloaded => {
                self.slow_start = false;
                self.come_down((self.limit * 0.5).max(1.0), in_flight);
            }
            Signal::Answered(latency) => {
                self.window.push(latency.as_secs_f64());
                if self.window.len() >= self.limit() {
                    let average = self.window.iter().sum::<f64>() / self.window.len() as f64;
                    self.window.clear();
                    let floor = self.floor.map_or(average, |floor| floor.min(average));
                    self.floor = Some(floor);
                    let queue = self.limit * (1.0 - floor / average.max(f64::MIN_POSITIVE));
                    if queue < QUEUE_LOW {
                        let grown = if self.slow_start {
                            self.limit * 2.0
                        } else {
                            self.limit + 1.0
                        };
                        self.limit = grown.min(self.max);
                    } else {
                        self.slow_start = false;
                        if queue > QUEUE_HIGH {
                            let lower = (self.limit - (queue - QUEUE_HIGH).max(1.0)).max(1.0);
                            self.come_down(lower, in_flight);
                        }
                    }
                }
            }
        }
        self.limit()
    }

    /// Lowers the limit to `limit`; the `in_flight` attempts sent under the old one are stale.
    fn come_down(&mut self, limit: f64, in_flight: usize) {
        self.stale = in_flight;
        self.limit = limit;
        self.window.clear();
    }
}

/// The stage's concurrency limit.
pub struct ConcurrencyLimit {
    permits: Semaphore,
    adaptive: Option<Mutex<Vegas>>,
    /// Permits to drop as they come back, after the limit shrank below those in use.
    debt: AtomicUsize,
    current: AtomicUsize,
    /// Attempts holding a permit (counted when adaptive, for the controller).
    in_flight: AtomicUsize,
}

impl ConcurrencyLimit {
    pub fn fixed(workers: usize) -> ConcurrencyLimit {
        ConcurrencyLimit {
            permits: Semaphore::new(workers),
            adaptive: None,
            debt: AtomicUsize::new(0),
            current: AtomicUsize::new(workers),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn adaptive(initial: usize, max: usize) -> ConcurrencyLimit {
        let vegas = Vegas::new(initial, max);
        let start = vegas.limit();
        ConcurrencyLimit {
            permits: Semaphore::new(start),
            adaptive: Some(Mutex::new(vegas)),
            debt: AtomicUsize::new(0),
            current: AtomicUsize::new(start),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// The limit now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    pub async fn acquire(&self) -> SemaphorePermit<'_> {
        let permit = self
            .permits
            .acquire()
            .await
            .expect("the limit's semaphore is never closed");
        if self.adaptive.is_some() {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
        }
        permit
    }

    /// Ends an attempt: returns its permit (or drops it, if the limit shrank) and, when
    /// adaptive, feeds the controller.
    pub fn release(&self, permit: SemaphorePermit<'_>, signal: Signal) {
        let owes = self
            .debt
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |debt| {
                debt.checked_sub(1)
            })
            .is_ok();
        if owes {
            permit.forget();
        } else {
            drop(permit);
        }
        let Some(vegas) = &self.adaptive else {
            return;
        };
        let others_in_flight = self
            .in_flight
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1);
        // Held until the permits match the new limit, so concurrent releases apply in order.
        let mut controller = vegas.lock().unwrap_or_else(|p| p.into_inner());
        let new = controller.observe(signal, others_in_flight);
        let old = self.current.swap(new, Ordering::SeqCst);
        if new > old {
            let mut grow = new - old;
            while grow > 0
                && self
                    .debt
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |debt| {
                        debt.checked_sub(1)
                    })
                    .is_ok()
            {
                grow -= 1;
            }
            self.permits.add_permits(grow);
        } else if new < old {
            let shrink = old - new;
            let taken = self.permits.forget_permits(shrink);
            self.debt.fetch_add(shrink - taken, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server with `slots` parallel slots and a long queue: latency grows with the requests
    /// beyond its slots.
    fn latency(limit: usize, slots: usize) -> Duration {
        let base = 0.05;
        Duration::from_secs_f64(base * (limit.max(slots) as f64 / slots as f64))
    }

    #[test]
    fn the_limit_climbs_to_the_servers_slots_and_stays_near_them() {
        for slots in [1, 4, 8, 32] {
            let mut vegas = Vegas::new(1, 256);
            let mut history = Vec::new();
            for _ in 0..4000 {
                let limit = vegas.limit();
                history.push(vegas.observe(Signal::Answered(latency(limit, slots)), 0));
            }
            let settled = &history[history.len() - 500..];
            let (low, high) = (
                settled.iter().min().copied().unwrap_or(0),
                settled.iter().max().copied().unwrap_or(0),
            );
            assert!(low >= slots, "slots {slots}: settled as low as {low}");
            assert!(
                high <= slots + 4,
                "slots {slots}: settled as high as {high}"
            );
        }
    }

    #[test]
    fn overload_halves_the_limit_once_per_round_of_attempts() {
        let mut vegas = Vegas::new(16, 64);
        assert_eq!(vegas.observe(Signal::Overloaded, 15), 8);
        // The other 15 attempts of the same burst were sent under the old limit.
        for left in (1..15).rev() {
            assert_eq!(vegas.observe(Signal::Overloaded, left), 8);
        }
        assert_eq!(
            vegas.observe(Signal::Nothing, 0),
            8,
            "the last stale answer"
        );
        assert_eq!(
            vegas.observe(Signal::Overloaded, 3),
            4,
            "a new round still overloads"
        );
        // With nothing else in flight (retries wait in backoff without a permit), the next
        // overload is fresh and counts at once.
        let mut alone = Vegas::new(64, 64);
        assert_eq!(alone.observe(Signal::Overloaded, 0), 32);
        assert_eq!(alone.observe(Signal::Overloaded, 0), 16);
        for _ in 0..500 {
            vegas.observe(Signal::Overloaded, 0);
        }
        assert_eq!(vegas.limit(), 1, "never below one");
    }

    /// A closed-loop run against a server with `slots` slots, a FIFO queue and a fixed
    /// service time: the client keeps `limit` attempts in flight, as the stage does. Returns
    /// the time `requests` answers took.
    fn simulated_run(
        slots: usize,
        requests: usize,
        mut limit: impl FnMut(Duration, usize) -> usize,
    ) -> f64 {
        const SERVICE: f64 = 0.05;
        let mut free_at = vec![0.0f64; slots];
        // (finish, start) of each attempt in flight.
        let mut in_flight: Vec<(f64, f64)> = Vec::new();
        let (mut now, mut answered, mut allowed) = (0.0f64, 0, limit(Duration::ZERO, 0));
        while answered < requests {
            while in_flight.len() < allowed {
                let slot = (0..slots)
                    .min_by(|a, b| free_at[*a].total_cmp(&free_at[*b]))
                    .unwrap_or(0);
                let finish = free_at[slot].max(now) + SERVICE;
                free_at[slot] = finish;
                in_flight.push((finish, now));
            }
            let next = (0..in_flight.len())
                .min_by(|a, b| in_flight[*a].0.total_cmp(&in_flight[*b].0))
                .unwrap_or(0);
            let (finish, start) = in_flight.swap_remove(next);
            now = finish;
            answered += 1;
            allowed = limit(Duration::from_secs_f64(finish - start), in_flight.len());
        }
        now
    }

    #[test]
    fn a_whole_run_from_one_worker_keeps_95_percent_of_the_best_fixed_rate() {
        for slots in [1, 4, 8, 32] {
            let requests = slots * 100;
            let fixed = simulated_run(slots, requests, |_, _| slots);
            let mut vegas = Vegas::new(1, 256);
            let adaptive = simulated_run(slots, requests, |latency, in_flight| {
                if latency.is_zero() {
                    vegas.limit()
                } else {
                    vegas.observe(Signal::Answered(latency), in_flight)
                }
            });
            let ratio = fixed / adaptive;
            assert!(ratio >= 0.95, "slots {slots}: auto at {ratio:.3} of fixed");
        }
    }

    #[tokio::test]
    async fn shrinking_below_the_permits_in_use_takes_them_back_as_they_return() {
        let limit = ConcurrencyLimit::adaptive(8, 64);
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(limit.acquire().await);
        }
        let first = held.pop().expect("a permit");
        limit.release(first, Signal::Overloaded);
        assert_eq!(limit.current(), 4);
        for permit in held {
            limit.release(permit, Signal::Nothing);
        }
        assert_eq!(limit.permits.available_permits(), 4, "the limit, no more");
    }
}
