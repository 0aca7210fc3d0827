//! One node-wide timer for the coarse deadlines of connections: the
//! keep-alive limit and the release of idle buffers.
//!
//! A tokio timer per connection costs a 112-byte allocation for every idle
//! client. Here a connection registers its session under a 100 ms tick in
//! one shared map instead (a weak pointer, 8 bytes); a single task wakes
//! the sessions whose tick has passed, and each woken connection checks
//! its own deadlines and registers again if they moved. Registration is
//! lazy: a busy connection moves its deadlines by writing two fields and
//! is woken at most once per registered deadline, not once per packet.
//!
//! Deadlines are counted in ticks since the wheel started (`Tick`, four
//! bytes where an `Instant` takes sixteen), rounded up: they fire up to
//! one tick late, never early. Entries of sessions that are gone are
//! dropped when their tick passes; the map holds at most a few entries
//! per connection (one per registration still ahead).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::session::Session;

/// Resolution of the shared timer.
pub const TICK: Duration = Duration::from_millis(100);
const TICK_MS: u64 = 100;

/// A point in time as a count of ticks since the wheel's origin (about
/// 13 years of range). Never zero, so an absent deadline costs nothing.
pub type Tick = NonZeroU32;

pub struct DeadlineWheel {
    origin: Instant,
    slots: Mutex<BTreeMap<u32, Vec<Weak<Session>>>>,
    ticker: OnceLock<()>,
}

impl std::fmt::Debug for DeadlineWheel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineWheel").field("ticks", &self.slots.lock().len()).finish()
    }
}

impl DeadlineWheel {
    pub fn new() -> Arc<DeadlineWheel> {
        Arc::new(DeadlineWheel {
            origin: Instant::now(),
            slots: Mutex::new(BTreeMap::new()),
            ticker: OnceLock::new(),
        })
    }

    /// The first tick at or after `at` (a deadline never fires early).
    pub fn tick_at(&self, at: Instant) -> Tick {
        let since = at.saturating_duration_since(self.origin);
        let ms = since.as_secs().saturating_mul(1000) + u64::from(since.subsec_millis());
        let exact = ms.is_multiple_of(TICK_MS) && since.subsec_nanos().is_multiple_of(1_000_000);
        let tick = ms / TICK_MS + u64::from(!exact);
        NonZeroU32::new(u32::try_from(tick).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
    }

    /// The ticks that have fully passed at `now`: a deadline `t` is due
    /// once `t <= ticks_passed(now)`.
    pub fn ticks_passed(&self, now: Instant) -> u32 {
        let since = now.saturating_duration_since(self.origin);
        let ms = since.as_secs().saturating_mul(1000) + u64::from(since.subsec_millis());
        u32::try_from(ms / TICK_MS).unwrap_or(u32::MAX)
    }

    /// Wakes `session` (`Session::wake`) once `tick` has passed. Must be
    /// called inside the tokio runtime: the first call starts the ticking
    /// task.
    pub fn schedule(self: &Arc<Self>, tick: Tick, session: &Arc<Session>) {
        self.ticker.get_or_init(|| {
            tokio::spawn(tick_loop(Arc::downgrade(self)));
        });
        self.slots.lock().entry(tick.get()).or_default().push(Arc::downgrade(session));
    }

    /// Takes every registration whose tick has passed at `now` (never one
    /// whose tick is still ahead: a connection woken early would find its
    /// deadline not passed and wait for a registration that is gone).
    fn take_due(&self, now: Instant) -> Vec<Weak<Session>> {
        let passed = self.ticks_passed(now);
        let mut slots = self.slots.lock();
        let later = slots.split_off(&passed.saturating_add(1));
        let due = std::mem::replace(&mut *slots, later);
        drop(slots);
        due.into_values().flatten().collect()
    }

    /// Registrations waiting (for metrics and tests).
    pub fn len(&self) -> usize {
        self.slots.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.lock().is_empty()
    }
}

/// Runs while the wheel exists (the broker holds it).
async fn tick_loop(wheel: Weak<DeadlineWheel>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(w) = wheel.upgrade() else { return };
        let due = w.take_due(Instant::now());
        drop(w);
        for s in due {
            if let Some(s) = s.upgrade() {
                s.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ClientId;
    use crate::metrics::Metrics;
    use crate::session::SessionLimits;
    use std::future::poll_fn;

    fn session() -> Arc<Session> {
        let limits = SessionLimits { max_queued: 10, queue_qos0_offline: false };
        Arc::new(Session::new(ClientId::from("c"), limits, Arc::new(Metrics::default())))
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_the_session_once_its_deadline_passed_never_before() {
        let wheel = DeadlineWheel::new();
        let s = session();
        let start = Instant::now();
        let tick = wheel.tick_at(start + Duration::from_millis(1250));
        wheel.schedule(tick, &s);
        assert_eq!(wheel.len(), 1);
        poll_fn(|cx| s.poll_wake(cx)).await;
        let woke = Instant::now();
        assert!(woke >= start + Duration::from_millis(1250), "woke after {:?}", woke - start);
        assert!(woke <= start + Duration::from_millis(1250) + 2 * TICK, "woke after {:?}", woke - start);
        assert!(wheel.is_empty());
    }

    #[test]
    fn ticks_round_deadlines_up_and_time_down() {
        let wheel = DeadlineWheel::new();
        let o = wheel.origin;
        assert_eq!(wheel.tick_at(o + Duration::from_millis(1450)).get(), 15);
        assert_eq!(wheel.tick_at(o + Duration::from_millis(1500)).get(), 15);
        assert_eq!(wheel.tick_at(o + Duration::from_micros(1_500_001)).get(), 16);
        assert_eq!(wheel.tick_at(o).get(), 1, "never zero");
        assert_eq!(wheel.ticks_passed(o + Duration::from_millis(1499)), 14);
        assert_eq!(wheel.ticks_passed(o + Duration::from_millis(1500)), 15);
    }

    #[test]
    fn nothing_is_due_before_its_tick() {
        let wheel = DeadlineWheel::new();
        let s = session();
        let tick = wheel.tick_at(wheel.origin + Duration::from_millis(1450));
        // Registered without the ticking task (no runtime here).
        wheel.slots.lock().entry(tick.get()).or_default().push(Arc::downgrade(&s));
        assert!(wheel.take_due(wheel.origin + Duration::from_millis(1420)).is_empty());
        assert!(wheel.take_due(wheel.origin + Duration::from_millis(1499)).is_empty());
        assert_eq!(wheel.take_due(wheel.origin + Duration::from_millis(1500)).len(), 1);
        assert!(wheel.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn entries_of_dropped_sessions_are_discarded() {
        let wheel = DeadlineWheel::new();
        let s = session();
        wheel.schedule(wheel.tick_at(Instant::now() + Duration::from_millis(300)), &s);
        drop(s);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(wheel.is_empty());
    }
}
