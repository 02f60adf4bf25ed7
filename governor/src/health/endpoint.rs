//! One endpoint: its ring of one-second buckets and its state machine.

use super::{
    EndpointView, Sample, State, Transition, WindowCounts,
    rules::{Level, Rules},
};

/// The counts of one second.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    second: u64,
    sample: Sample,
}

/// The last `len` seconds of counts, one bucket per second; second `s`
/// lives in slot `s % len`.
#[derive(Debug)]
struct Ring {
    buckets: Box<[Bucket]>,
}

impl Ring {
    fn new(len: u64) -> Self {
        let len = usize::try_from(len).expect("window lengths fit in memory");
        Self { buckets: vec![Bucket::default(); len].into_boxed_slice() }
    }

    fn add(&mut self, second: u64, sample: Sample) {
        let len = self.buckets.len() as u64;
        let slot = usize::try_from(second % len).expect("a slot index is below the ring length");
        let bucket = &mut self.buckets[slot];
        if bucket.second != second {
            *bucket = Bucket { second, sample: Sample::default() };
        }
        bucket.sample = bucket.sample.saturating_add(sample);
    }

    /// Resets and retransmits within the reset window ending at `now`,
    /// attempts and failures within the failure window ending at `now`.
    fn window(&self, now: u64, rules: &Rules) -> Sample {
        let mut sum = Sample::default();
        for &Bucket { second, sample } in &self.buckets {
            let Some(age) = now.checked_sub(second) else { continue };
            let Sample { resets, connect_attempts, connect_failures, retransmits } = sample;
            if age < rules.reset_window {
                sum.resets = sum.resets.saturating_add(resets);
                sum.retransmits = sum.retransmits.saturating_add(retransmits);
            }
            if age < rules.failure_window {
                sum.connect_attempts = sum.connect_attempts.saturating_add(connect_attempts);
                sum.connect_failures = sum.connect_failures.saturating_add(connect_failures);
            }
        }
        sum
    }
}

/// Why the state changed.
enum Cause {
    /// The counts in the windows.
    Signals(Level),
    /// Clean seconds, in clean windows.
    CleanFor { seconds: u64, windows: u32 },
}

/// The state machine.
#[derive(Debug)]
struct Machine {
    state: State,
    since: u64,
    /// Clean seconds are counted after this one: the last second that was
    /// not clean, or the second Recovering began.
    anchor: u64,
}

impl Machine {
    /// Applies the verdict on second `s`; returns the state left and why,
    /// if the state changed.
    fn step(&mut self, s: u64, level: Level, rules: &Rules) -> Option<(State, Cause)> {
        let clean_for = s.saturating_sub(self.anchor);
        let (to, cause) = match (self.state, level) {
            (State::Unhealthy, Level::Trip | Level::Suspect) | (State::Suspect | State::Recovering, Level::Suspect) => {
                self.anchor = s;
                return None;
            }
            (_, Level::Trip) => (State::Unhealthy, Cause::Signals(level)),
            (State::Healthy, Level::Suspect) => (State::Suspect, Cause::Signals(level)),
            (State::Unhealthy, Level::Clean) => (State::Recovering, Cause::Signals(level)),
            (State::Suspect, Level::Clean) if clean_for >= rules.suspect_clean => {
                (State::Healthy, Cause::CleanFor { seconds: clean_for, windows: 1 })
            }
            (State::Recovering, Level::Clean) if clean_for >= rules.recovering_clean => {
                (State::Healthy, Cause::CleanFor { seconds: clean_for, windows: rules.recovery_windows })
            }
            (State::Healthy | State::Suspect | State::Recovering, Level::Clean) => return None,
        };
        let from = self.state;
        *self = Self { state: to, since: s, anchor: s };
        Some((from, cause))
    }

    /// The first second from `from` on at which a clean second changes the
    /// state, if any.
    fn next_clean_change(&self, from: u64, rules: &Rules) -> Option<u64> {
        match self.state {
            State::Healthy => None,
            State::Unhealthy => Some(from),
            State::Suspect => Some(from.max(self.anchor.saturating_add(rules.suspect_clean))),
            State::Recovering => Some(from.max(self.anchor.saturating_add(rules.recovering_clean))),
        }
    }
}

#[derive(Debug)]
pub(super) struct Endpoint<K> {
    ring: Ring,
    machine: Machine,
    /// The first second not judged yet, or judged before counts were added
    /// to it.
    next: u64,
    /// The last second with counts.
    last_counts: Option<u64>,
    /// The last second with counts or a non-zero `CLOSE_WAIT` gauge.
    last_seen: u64,
    close_wait: u64,
    close_wait_oldest_seconds: u64,
    last_transition: Option<Transition<K>>,
}

impl<K: Clone> Endpoint<K> {
    pub fn new(now: u64, rules: &Rules) -> Self {
        Self {
            ring: Ring::new(rules.longest_window),
            machine: Machine { state: State::Healthy, since: now, anchor: now },
            next: now,
            last_counts: None,
            last_seen: now,
            close_wait: 0,
            close_wait_oldest_seconds: 0,
            last_transition: None,
        }
    }

    pub fn state(&self) -> State {
        self.machine.state
    }

    pub fn last_seen(&self) -> u64 {
        self.last_seen
    }

    /// Adds counts to second `now`. The seconds before it are judged first,
    /// while the ring still holds what they need.
    pub fn add(&mut self, key: &K, now: u64, sample: Sample, rules: &Rules, out: &mut Vec<Transition<K>>) {
        if let Some(before) = now.checked_sub(1) {
            self.advance(key, before, rules, out);
        }
        self.next = self.next.min(now);
        self.ring.add(now, sample);
        self.last_counts = Some(now);
        self.last_seen = now;
    }

    pub fn set_close_wait(&mut self, now: u64, count: u64, oldest_seconds: u64) {
        self.close_wait = count;
        self.close_wait_oldest_seconds = if count == 0 { 0 } else { oldest_seconds };
        if count > 0 {
            self.last_seen = self.last_seen.max(now);
        }
    }

    /// Judges every second from `next` through `through`, appending the
    /// changes of state to `out`.
    pub fn advance(&mut self, key: &K, through: u64, rules: &Rules, out: &mut Vec<Transition<K>>) {
        // From this second on every window is empty, so every second is
        // clean and only the clean-second counts can change the state.
        let quiet_from = self.last_counts.map_or(0, |last| last.saturating_add(rules.longest_window));
        let mut s = self.next;
        while s <= through {
            if s >= quiet_from {
                match self.machine.next_clean_change(s, rules) {
                    Some(change) if change <= through => s = change,
                    _ => break,
                }
            }
            self.judge(key, s, rules, out);
            let Some(after) = s.checked_add(1) else { break };
            s = after;
        }
        self.next = self.next.max(through.saturating_add(1));
    }

    fn judge(&mut self, key: &K, s: u64, rules: &Rules, out: &mut Vec<Transition<K>>) {
        let window = self.ring.window(s, rules);
        let level = rules.judge(window);
        // Without cycles for a fixed verdict this ends after two changes at
        // most (Unhealthy → Recovering → Healthy with no recovery time).
        while let Some((from, cause)) = self.machine.step(s, level, rules) {
            let reason = match cause {
                Cause::Signals(level) => rules.reason(level, window),
                Cause::CleanFor { seconds, windows } => {
                    let plural = if windows == 1 { "" } else { "s" };
                    format!("clean for {seconds} s ({windows} window{plural} of {} s)", rules.recovery_window)
                }
            };
            let transition = Transition { endpoint: key.clone(), from, to: self.machine.state, at: s, reason };
            out.push(transition.clone());
            self.last_transition = Some(transition);
        }
    }

    /// Healthy and idle for longer than `idle_limit` seconds at `now`.
    pub fn is_forgettable(&self, now: u64, idle_limit: u64) -> bool {
        self.machine.state == State::Healthy && now.saturating_sub(self.last_seen) > idle_limit
    }

    pub fn view<'a>(&'a self, key: &'a K, now: u64, rules: &Rules) -> EndpointView<'a, K> {
        let Sample { resets, connect_attempts, connect_failures, retransmits } = self.ring.window(now, rules);
        EndpointView {
            endpoint: key,
            state: self.machine.state,
            since: self.machine.since,
            window: WindowCounts {
                resets,
                connect_attempts,
                connect_failures,
                retransmits,
                close_wait: self.close_wait,
                close_wait_oldest_seconds: self.close_wait_oldest_seconds,
            },
            last_transition: self.last_transition.as_ref(),
        }
    }
}
