//! The circuit breaker in front of Redis: after consecutive failures it opens, and every L2
//! call answers at once without touching the network; after a cooldown (doubled after each
//! failed trial) one trial goes through, and its success closes it.

use super::*;

/// Consecutive failures that open the breaker.
const BREAKER_THRESHOLD: u32 = 3;
/// How long the breaker stays open the first time; doubled after each failed trial.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
const BREAKER_MAX_COOLDOWN: Duration = Duration::from_secs(10);

/// The circuit breaker: [`BREAKER_THRESHOLD`] consecutive failures open it; while open, calls
/// are refused at once; after the cooldown one trial call goes through (half-open): success
/// closes it, failure reopens it for twice the cooldown (up to [`BREAKER_MAX_COOLDOWN`]).
pub(super) struct Breaker {
    state: Mutex<BreakerState>,
}

pub(super) struct BreakerState {
    phase: Phase,
    cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// Leave to make one call; says whether it is the half-open trial. A trial dropped unsettled
/// (its caller cancelled) hands the trial on rather than leaving the breaker half-open forever.
pub(super) struct Permit<'a> {
    breaker: &'a Breaker,
    trial: bool,
    settled: bool,
}

impl Permit<'_> {
    /// The call's outcome is about to be recorded; whether it was the trial.
    pub(super) fn settle(mut self) -> bool {
        self.settled = true;
        self.trial
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.trial && !self.settled {
            self.breaker.abandoned();
        }
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: Mutex::new(BreakerState {
                phase: Phase::Closed { failures: 0 },
                cooldown: BREAKER_COOLDOWN,
            }),
        }
    }
}

impl Breaker {
    pub(super) fn lock(&self) -> MutexGuard<'_, BreakerState> {
        // The state is a few words, always left consistent: a panic elsewhere does not taint it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Leave to call Redis now, or `None` to answer without it.
    pub(super) fn admit(&self) -> Option<Permit<'_>> {
        let mut state = self.lock();
        let trial = match state.phase {
            Phase::Closed { .. } => false,
            Phase::Open { until } if Instant::now() >= until => {
                state.phase = Phase::HalfOpen;
                true
            }
            Phase::Open { .. } | Phase::HalfOpen => return None,
        };
        Some(Permit {
            breaker: self,
            trial,
            settled: false,
        })
    }

    /// Records a success; whether it closed an open breaker.
    pub(super) fn succeeded(&self, trial: bool) -> bool {
        let mut state = self.lock();
        match state.phase {
            Phase::Closed { .. } => {
                state.phase = Phase::Closed { failures: 0 };
                false
            }
            // A success of a call let in before the breaker opened proves little; the trial's does.
            _ if !trial => false,
            _ => {
                state.phase = Phase::Closed { failures: 0 };
                state.cooldown = BREAKER_COOLDOWN;
                true
            }
        }
    }

    /// Records a failure; the cooldown if it opened the breaker from closed.
    pub(super) fn failed(&self, trial: bool) -> Option<Duration> {
        let mut state = self.lock();
        let now = Instant::now();
        match state.phase {
            Phase::Closed { failures } if failures + 1 >= BREAKER_THRESHOLD => {
                state.phase = Phase::Open {
                    until: now + state.cooldown,
                };
                Some(state.cooldown)
            }
            Phase::Closed { failures } => {
                state.phase = Phase::Closed {
                    failures: failures + 1,
                };
                None
            }
            Phase::HalfOpen if trial => {
                state.cooldown = (state.cooldown * 2).min(BREAKER_MAX_COOLDOWN);
                state.phase = Phase::Open {
                    until: now + state.cooldown,
                };
                None
            }
            _ => None,
        }
    }

    pub(super) fn abandoned(&self) {
        let mut state = self.lock();
        if state.phase == Phase::HalfOpen {
            state.phase = Phase::Open {
                until: Instant::now(),
            };
        }
    }

    /// fred has reconnected: let the next call through as the trial, with the first cooldown.
    pub(super) fn retry_now(&self) {
        let mut state = self.lock();
        if let Phase::Open { .. } = state.phase {
            state.phase = Phase::Open {
                until: Instant::now(),
            };
            state.cooldown = BREAKER_COOLDOWN;
        }
    }

    pub(super) fn is_open(&self) -> bool {
        !matches!(self.lock().phase, Phase::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(breaker: &Breaker) {
        for _ in 0..BREAKER_THRESHOLD {
            let trial = breaker.admit().expect("closed").settle();
            breaker.failed(trial);
        }
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let breaker = Breaker::default();
        for _ in 0..BREAKER_THRESHOLD - 1 {
            assert_eq!(breaker.failed(false), None);
        }
        assert!(!breaker.succeeded(false));
        for _ in 0..BREAKER_THRESHOLD - 1 {
            breaker.failed(false);
        }
        assert!(!breaker.is_open());
        assert_eq!(breaker.failed(false), Some(BREAKER_COOLDOWN));
        assert!(breaker.is_open());
        assert!(breaker.admit().is_none());
    }

    #[test]
    fn after_the_cooldown_one_trial_goes_through_and_its_success_closes_the_breaker() {
        let breaker = Breaker::default();
        open(&breaker);
        breaker.retry_now(); // as if the cooldown had passed
        let trial = breaker.admit().expect("the trial");
        assert!(breaker.admit().is_none(), "only one trial at a time");
        assert!(trial.settle());
        assert!(breaker.succeeded(true));
        assert!(!breaker.is_open());
        assert!(breaker.admit().is_some());
    }

    #[test]
    fn a_failed_trial_doubles_the_cooldown_and_an_abandoned_one_hands_the_trial_on() {
        let breaker = Breaker::default();
        open(&breaker);
        breaker.retry_now();
        assert!(breaker.admit().unwrap().settle());
        breaker.failed(true);
        assert_eq!(breaker.lock().cooldown, BREAKER_COOLDOWN * 2);
        assert!(breaker.admit().is_none());

        breaker.retry_now();
        drop(breaker.admit().unwrap()); // cancelled before it finished
        assert!(breaker.admit().is_some_and(|p| p.trial));
    }
}
