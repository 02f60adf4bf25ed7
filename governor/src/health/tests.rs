use proptest::prelude::*;

use super::*;

const EP: &str = "10.0.0.1:80";

fn engine(config: HealthConfig) -> Engine<String> {
    Engine::new(config)
}

fn key(name: &str) -> String {
    name.to_owned()
}

fn resets(n: u64) -> Sample {
    Sample { resets: n, ..Sample::default() }
}

fn connects(attempts: u64, failures: u64) -> Sample {
    Sample { connect_attempts: attempts, connect_failures: failures, ..Sample::default() }
}

/// Records `sample` for `EP` at `now`, then evaluates `now`.
fn tick(engine: &mut Engine<String>, now: u64, sample: Sample) -> Vec<Transition<String>> {
    engine.record(&key(EP), now, sample);
    engine.evaluate(now)
}

/// `(at, from, to)` of each transition.
fn moves(transitions: &[Transition<String>]) -> Vec<(u64, State, State)> {
    transitions.iter().map(|t| (t.at, t.from, t.to)).collect()
}

/// Evaluates every second of `seconds`, returning all transitions.
fn run(engine: &mut Engine<String>, seconds: std::ops::RangeInclusive<u64>) -> Vec<Transition<String>> {
    seconds.flat_map(|s| engine.evaluate(s)).collect()
}

#[test]
fn ten_resets_within_five_seconds_make_an_endpoint_unhealthy() {
    let mut e = engine(HealthConfig::default());
    let t = tick(&mut e, 100, resets(10));
    assert_eq!(moves(&t), [(100, State::Healthy, State::Unhealthy)]);
    assert_eq!(t[0].endpoint, EP);
    assert_eq!(t[0].reason, "10 resets within 5 s (threshold 10)");
    assert_eq!(e.state(&key(EP)), Some(State::Unhealthy));
}

#[test]
fn nine_resets_are_suspect_not_unhealthy() {
    let mut e = engine(HealthConfig::default());
    let t = tick(&mut e, 100, resets(9));
    assert_eq!(moves(&t), [(100, State::Healthy, State::Suspect)]);
    assert_eq!(t[0].reason, "9 resets within 5 s (suspect at 5)");
}

#[test]
fn resets_spread_over_seconds_add_up_in_the_window() {
    let mut e = engine(HealthConfig::default());
    let mut all = Vec::new();
    for s in 1..=6 {
        all.extend(tick(&mut e, s, resets(2)));
    }
    // Window 1..=3 holds 6 (suspect at 5); window 1..=5 holds 10.
    assert_eq!(moves(&all), [(3, State::Healthy, State::Suspect), (5, State::Suspect, State::Unhealthy)]);
    assert_eq!(all[1].reason, "10 resets within 5 s (threshold 10)");
    assert_eq!(e.endpoints(6).next().unwrap().window.resets, 10, "window 2..=6");
}

#[test]
fn resets_leave_the_window_after_its_length() {
    let mut e = engine(HealthConfig { suspect_fraction: 1.0, ..HealthConfig::default() });
    tick(&mut e, 0, resets(9));
    // Second 0 is outside the window 1..=5.
    assert!(tick(&mut e, 5, resets(1)).is_empty());
    let mut e = engine(HealthConfig { suspect_fraction: 1.0, ..HealthConfig::default() });
    tick(&mut e, 0, resets(9));
    assert_eq!(moves(&tick(&mut e, 4, resets(1))), [(4, State::Healthy, State::Unhealthy)]);
}

#[test]
fn failure_ratio_trips_only_strictly_above_it_with_enough_attempts() {
    let cases = [
        (20, 13, Some(State::Unhealthy)),
        (100, 61, Some(State::Unhealthy)),
        (100, 60, None),
        (20, 12, None),
        (19, 19, Some(State::Suspect)),
        (9, 9, None),
    ];
    for (attempts, failures, expected) in cases {
        let mut e = engine(HealthConfig::default());
        let to = tick(&mut e, 7, connects(attempts, failures)).first().map(|t| t.to);
        assert_eq!(to, expected, "{failures} of {attempts} failed");
    }
}

#[test]
fn failure_reasons_give_the_numbers() {
    let mut e = engine(HealthConfig::default());
    let t = tick(&mut e, 7, connects(20, 15));
    assert_eq!(t[0].reason, "15 of 20 connects failed within 10 s (75%, threshold 60% with at least 20)");
    let mut e = engine(HealthConfig::default());
    let t = tick(&mut e, 7, connects(19, 19));
    assert_eq!(t[0].reason, "19 of 19 connects failed within 10 s (100%, suspect above 60% with at least 10)");
    let mut e = engine(HealthConfig::default());
    let t = tick(&mut e, 7, Sample { resets: 12, connect_attempts: 3, connect_failures: 2, retransmits: 0 });
    assert_eq!(t[0].reason, "12 resets within 5 s (threshold 10)");
}

#[test]
fn recovery_takes_one_clean_second_then_three_clean_windows() {
    let mut e = engine(HealthConfig::default());
    let mut all = tick(&mut e, 10, resets(10));
    // Forgotten at 36: Healthy and idle for more than 10 + 15 s.
    for s in 11..=35 {
        all.extend(e.evaluate(s));
        let expected = match s {
            ..=14 => State::Unhealthy,
            15..=29 => State::Recovering,
            _ => State::Healthy,
        };
        assert_eq!(e.state(&key(EP)), Some(expected), "second {s}");
    }
    assert_eq!(
        moves(&all),
        [
            (10, State::Healthy, State::Unhealthy),
            (15, State::Unhealthy, State::Recovering),
            (30, State::Recovering, State::Healthy)
        ]
    );
    assert_eq!(
        all[1].reason,
        "clean: 0 resets within 5 s and 0 of 0 connects failed within 10 s; healthy after 15 more clean seconds"
    );
    assert_eq!(all[2].reason, "clean for 15 s (3 windows of 5 s)");
}

#[test]
fn a_trip_while_recovering_is_unhealthy_again() {
    let mut e = engine(HealthConfig::default());
    tick(&mut e, 0, resets(10));
    run(&mut e, 1..=9);
    assert_eq!(e.state(&key(EP)), Some(State::Recovering));
    assert_eq!(moves(&tick(&mut e, 10, resets(10))), [(10, State::Recovering, State::Unhealthy)]);
}

#[test]
fn a_suspect_second_while_recovering_restarts_the_clean_count() {
    let mut e = engine(HealthConfig::default());
    tick(&mut e, 0, resets(10));
    run(&mut e, 1..=9); // Recovering since 5.
    assert!(tick(&mut e, 10, resets(5)).is_empty(), "suspect keeps it Recovering");
    // Suspect through 14 (the 5 resets stay in the window), clean from 15;
    // 15 clean seconds after 14.
    let t = run(&mut e, 11..=40);
    assert_eq!(moves(&t), [(29, State::Recovering, State::Healthy)]);
}

#[test]
fn suspect_returns_to_healthy_after_one_clean_window() {
    let mut e = engine(HealthConfig::default());
    let mut all = tick(&mut e, 0, resets(5));
    all.extend(run(&mut e, 1..=20));
    // Suspect through 4, clean from 5: five clean seconds after 4.
    assert_eq!(moves(&all), [(0, State::Healthy, State::Suspect), (9, State::Suspect, State::Healthy)]);
    assert_eq!(all[1].reason, "clean for 5 s (1 window of 5 s)");
}

#[test]
fn a_load_hovering_at_the_suspect_level_does_not_flap() {
    let mut e = engine(HealthConfig::default());
    let mut all = Vec::new();
    // 2 resets every other second: the 5 s window holds 6 and 4 in turn,
    // around the suspect level of 5, so no clean window ever completes.
    for s in 0..60 {
        all.extend(tick(&mut e, s, resets(if s % 2 == 0 { 2 } else { 0 })));
    }
    assert_eq!(moves(&all), [(4, State::Healthy, State::Suspect)]);
}

#[test]
fn skipped_evaluations_judge_every_second_in_between() {
    let mut e = engine(HealthConfig::default());
    assert_eq!(moves(&tick(&mut e, 10, resets(10))), [(10, State::Healthy, State::Unhealthy)]);
    assert_eq!(moves(&e.evaluate(17)), [(15, State::Unhealthy, State::Recovering)]);
    assert_eq!(e.endpoints(17).next().unwrap().since, 15);
    assert!(e.evaluate(29).is_empty());
    assert_eq!(moves(&e.evaluate(1000)), [(30, State::Recovering, State::Healthy)]);
}

#[test]
fn skipped_evaluations_keep_the_counts_of_the_seconds_in_between() {
    let config = HealthConfig { suspect_fraction: 1.0, ..HealthConfig::default() };
    // Failures, then successes. Judged second by second: 20 of 20 failed at
    // 11, 30 of 50 (60%, not above) at 14. Evaluated only at 10 and 30, the
    // ring has long reused the slots of 11 to 14 by 30: `record` judges
    // them before.
    let script = |e: &mut Engine<String>, evaluate_every_second: bool| {
        let mut all = Vec::new();
        for s in 10..=30 {
            let sample = if s <= 12 { connects(10, 10) } else { connects(10, 0) };
            e.record(&key(EP), s, sample);
            if evaluate_every_second || s == 10 {
                all.extend(e.evaluate(s));
            }
        }
        all.extend(e.evaluate(30));
        all
    };
    let every = script(&mut engine(config.clone()), true);
    let skipped = script(&mut engine(config), false);
    assert_eq!(
        moves(&every),
        [
            (11, State::Healthy, State::Unhealthy),
            (14, State::Unhealthy, State::Recovering),
            (29, State::Recovering, State::Healthy)
        ]
    );
    assert_eq!(skipped, every);
}

#[test]
fn evaluating_a_second_again_judges_only_counts_added_since() {
    let mut e = engine(HealthConfig::default());
    assert_eq!(moves(&tick(&mut e, 3, resets(6))), [(3, State::Healthy, State::Suspect)]);
    assert!(e.evaluate(3).is_empty());
    e.record(&key(EP), 3, resets(4));
    assert_eq!(moves(&e.evaluate(3)), [(3, State::Suspect, State::Unhealthy)]);
    assert!(e.evaluate(3).is_empty());
}

#[test]
fn counts_added_after_a_second_was_judged_are_judged_with_a_one_second_window() {
    let mut e = engine(HealthConfig { reset_window_seconds: 1, ..HealthConfig::default() });
    e.record(&key(EP), 4, resets(1));
    assert!(e.evaluate(5).is_empty());
    e.record(&key(EP), 5, resets(10));
    assert_eq!(
        moves(&e.evaluate(6)),
        [(5, State::Healthy, State::Unhealthy), (6, State::Unhealthy, State::Recovering)]
    );
}

#[test]
fn suspect_fraction_of_one_turns_suspect_off() {
    let mut e = engine(HealthConfig { suspect_fraction: 1.0, ..HealthConfig::default() });
    assert!(tick(&mut e, 1, resets(9)).is_empty());
    assert!(tick(&mut e, 2, connects(19, 19)).is_empty());
    assert_eq!(e.state(&key(EP)), Some(State::Healthy));
}

#[test]
fn suspect_levels_round_up_but_not_past_whole_numbers() {
    for (fraction, level) in [(0.7, 7), (0.75, 8), (0.3, 3), (0.01, 1)] {
        let config = HealthConfig { suspect_fraction: fraction, ..HealthConfig::default() };
        let mut e = engine(config.clone());
        assert!(tick(&mut e, 1, resets(level - 1)).is_empty(), "fraction {fraction}");
        let mut e = engine(config);
        assert_eq!(tick(&mut e, 1, resets(level))[0].to, State::Suspect, "fraction {fraction}");
    }
}

#[test]
fn retransmits_make_an_endpoint_suspect_never_unhealthy() {
    let mut e = engine(HealthConfig { retransmit_threshold: 50, ..HealthConfig::default() });
    assert!(tick(&mut e, 1, Sample { retransmits: 49, ..Sample::default() }).is_empty());
    let t = tick(&mut e, 2, Sample { retransmits: 1, ..Sample::default() });
    assert_eq!(moves(&t), [(2, State::Healthy, State::Suspect)]);
    assert_eq!(t[0].reason, "50 retransmits within 5 s (suspect at 50)");
    assert!(tick(&mut e, 3, Sample { retransmits: 100_000, ..Sample::default() }).is_empty());
    let mut off = engine(HealthConfig::default());
    assert!(tick(&mut off, 1, Sample { retransmits: 100_000, ..Sample::default() }).is_empty());
}

#[test]
fn zero_samples_and_zero_close_wait_create_nothing() {
    let mut e = engine(HealthConfig::default());
    e.record(&key(EP), 1, Sample::default());
    e.set_close_wait(&key(EP), 0, 30);
    assert!(e.is_empty());
    assert_eq!(e.state(&key(EP)), None);
    e.set_close_wait(&key(EP), 3, 30);
    assert_eq!(e.len(), 1);
    let view = e.endpoints(1).next().unwrap();
    assert_eq!((view.state, view.window.close_wait, view.window.close_wait_oldest_seconds), (State::Healthy, 3, 30));
}

#[test]
fn views_show_the_counts_inside_the_windows() {
    let mut e = engine(HealthConfig::default());
    e.record(&key(EP), 1, Sample { resets: 1, connect_attempts: 4, connect_failures: 2, retransmits: 3 });
    e.record(&key(EP), 4, Sample { resets: 2, connect_attempts: 1, connect_failures: 0, retransmits: 1 });
    e.set_close_wait(&key(EP), 2, 40);
    let at = |now| e.endpoints(now).next().unwrap().window;
    let both = WindowCounts {
        resets: 3,
        connect_attempts: 5,
        connect_failures: 2,
        retransmits: 4,
        close_wait: 2,
        close_wait_oldest_seconds: 40,
    };
    assert_eq!(at(5), both);
    // Second 1 has left the 5 s window, not the 10 s one.
    assert_eq!(at(6), WindowCounts { resets: 2, retransmits: 1, ..both });
    assert_eq!(at(14), WindowCounts { resets: 0, retransmits: 0, connect_attempts: 0, connect_failures: 0, ..both });
}

#[test]
fn transitions_and_views_come_in_endpoint_order() {
    let mut e = engine(HealthConfig::default());
    for name in ["b", "c", "a"] {
        e.record(&key(name), 1, resets(10));
    }
    let order: Vec<_> = e.evaluate(1).into_iter().map(|t| t.endpoint).collect();
    assert_eq!(order, ["a", "b", "c"]);
    // Caught up in `record`: "c" changes at 6, before "a" and "b" are judged.
    e.record(&key("c"), 7, resets(1));
    let order: Vec<_> = e.evaluate(7).into_iter().map(|t| (t.endpoint, t.at)).collect();
    assert_eq!(order, [(key("a"), 6), (key("b"), 6), (key("c"), 6)]);
    let views: Vec<_> = e.endpoints(7).map(|v| (v.endpoint.clone(), v.last_transition.map(|t| t.to))).collect();
    assert_eq!(
        views,
        [("a", Some(State::Recovering)), ("b", Some(State::Recovering)), ("c", Some(State::Recovering))]
            .map(|(name, state)| (key(name), state))
    );
}

#[test]
fn idle_healthy_endpoints_are_forgotten_after_the_windows_and_recovery() {
    let mut e = engine(HealthConfig::default());
    tick(&mut e, 100, resets(1));
    let HealthConfig { failure_window_seconds, recovery_window_seconds, recovery_windows, .. } = *e.config();
    let idle_limit = failure_window_seconds + recovery_window_seconds * u64::from(recovery_windows);
    assert_eq!(idle_limit, 25, "the longest window plus the recovery time");
    e.evaluate(125);
    assert_eq!(e.len(), 1);
    e.evaluate(126);
    assert!(e.is_empty());
}

#[test]
fn endpoints_that_are_not_healthy_are_kept_while_idle() {
    let mut e = engine(HealthConfig { recovery_windows: 1000, ..HealthConfig::default() });
    tick(&mut e, 0, resets(10));
    e.evaluate(1000);
    assert_eq!(e.state(&key(EP)), Some(State::Recovering));
}

#[test]
fn a_close_wait_gauge_keeps_an_endpoint() {
    let mut e = engine(HealthConfig::default());
    tick(&mut e, 100, resets(1));
    for s in 101..=200 {
        e.set_close_wait(&key(EP), 1, s - 100);
        e.evaluate(s);
    }
    assert_eq!(e.len(), 1);
}

#[test]
fn over_the_limit_the_healthy_endpoint_idle_longest_is_forgotten() {
    let mut e = engine(HealthConfig { max_endpoints: 3, ..HealthConfig::default() });
    tick(&mut e, 1, resets(10)); // EP is Unhealthy and idle the longest.
    e.record(&key("a"), 2, resets(1));
    e.record(&key("b"), 3, resets(1));
    e.record(&key("c"), 4, resets(1));
    let names: Vec<_> = e.endpoints(4).map(|v| v.endpoint.clone()).collect();
    assert_eq!(names, [EP, "b", "c"]);
    e.record(&key("b"), 5, resets(1));
    e.record(&key("d"), 5, resets(1));
    let names: Vec<_> = e.endpoints(5).map(|v| v.endpoint.clone()).collect();
    assert_eq!(names, [EP, "b", "d"]);
}

#[test]
fn over_the_limit_with_none_healthy_the_endpoint_idle_longest_is_forgotten() {
    let mut e = engine(HealthConfig { max_endpoints: 2, ..HealthConfig::default() });
    e.record(&key("a"), 1, resets(10));
    e.record(&key("b"), 2, resets(10));
    e.evaluate(2);
    e.record(&key("c"), 3, resets(1));
    let names: Vec<_> = e.endpoints(3).map(|v| v.endpoint.clone()).collect();
    assert_eq!(names, ["b", "c"]);
    let mut none = engine(HealthConfig { max_endpoints: 0, ..HealthConfig::default() });
    none.record(&key("a"), 1, resets(10));
    assert!(none.is_empty());
}

#[test]
fn states_have_stable_names() {
    let names: Vec<_> = State::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(names, ["healthy", "suspect", "unhealthy", "recovering"]);
    for state in State::ALL {
        assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{state}\""));
    }
}

fn config_strategy() -> impl Strategy<Value = HealthConfig> {
    (
        (1..8u64, 1..30u64, 1..12u64, 0..=100u32, 1..40u64),
        (prop_oneof![Just(0.5), Just(1.0), 0.0..1.5f64], 0..10u64, 0..6u64, 0..4u32),
    )
        .prop_map(|((rw, rt, fw, ratio, min), (fraction, retransmits, recovery, windows))| HealthConfig {
            reset_window_seconds: rw,
            reset_threshold: rt,
            failure_window_seconds: fw,
            failure_ratio: f64::from(ratio) / 100.0,
            failure_min_attempts: min,
            suspect_fraction: fraction,
            retransmit_threshold: retransmits,
            recovery_window_seconds: recovery,
            recovery_windows: windows,
            max_endpoints: 10_000,
        })
}

fn sample_strategy(max: u64) -> impl Strategy<Value = Sample> {
    (0..max, 0..max, 0..max, 0..max).prop_map(|(resets, connect_attempts, failures, retransmits)| Sample {
        resets,
        connect_attempts,
        connect_failures: failures.min(connect_attempts),
        retransmits,
    })
}

fn severity(state: State) -> u8 {
    match state {
        State::Healthy => 0,
        State::Suspect => 1,
        State::Unhealthy => 2,
        State::Recovering => unreachable!("a steady load never recovers"),
    }
}

/// One step of a random script.
#[derive(Clone, Debug)]
enum Op {
    Record { endpoint: u8, sample: Sample },
    CloseWait { endpoint: u8, count: u64 },
    Evaluate,
    Wait(u64),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..12u8, sample_strategy(30)).prop_map(|(endpoint, sample)| Op::Record { endpoint, sample }),
        1 => (0..12u8, any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(endpoint, a, b, c, d)| {
            Op::Record { endpoint, sample: Sample { resets: a, connect_attempts: b, connect_failures: c, retransmits: d } }
        }),
        1 => (0..12u8, 0..3u64).prop_map(|(endpoint, count)| Op::CloseWait { endpoint, count }),
        2 => Just(Op::Evaluate),
        2 => prop_oneof![0..3u64, 0..100u64].prop_map(Op::Wait),
    ]
}

proptest! {
    #[test]
    fn a_steady_load_changes_state_at_most_twice_and_only_towards_worse(
        config in config_strategy(),
        sample in sample_strategy(20),
    ) {
        let mut e = engine(config);
        let mut all = Vec::new();
        for s in 0..120 {
            all.extend(tick(&mut e, s, sample));
        }
        prop_assert!(all.len() <= 2, "{all:?}");
        for t in &all {
            prop_assert!(severity(t.to) > severity(t.from), "{all:?}");
        }
    }

    #[test]
    fn resets_trip_exactly_at_the_threshold(threshold in 1..50u64, n in 0..100u64, fraction in 0.0..1.5f64) {
        let mut e = engine(HealthConfig { reset_threshold: threshold, suspect_fraction: fraction, ..HealthConfig::default() });
        tick(&mut e, 42, resets(n));
        prop_assert_eq!(e.state(&key(EP)) == Some(State::Unhealthy), n >= threshold);
    }

    #[test]
    fn failures_trip_exactly_above_the_ratio_with_enough_attempts(
        min in 1..40u64,
        percent in 0..=100u32,
        attempts in 1..80u64,
        failed in 0..=100u64,
    ) {
        let failures = attempts * failed / 100;
        let ratio = f64::from(percent) / 100.0;
        let config = HealthConfig { failure_min_attempts: min, failure_ratio: ratio, ..HealthConfig::default() };
        let mut e = engine(config);
        tick(&mut e, 42, connects(attempts, failures));
        let expected = attempts >= min && failures * 100 > u64::from(percent) * attempts;
        prop_assert_eq!(e.state(&key(EP)) == Some(State::Unhealthy), expected);
    }

    #[test]
    fn recovery_takes_exactly_the_configured_clean_windows(
        reset_window in 1..10u64,
        window in 1..10u64,
        windows in 1..5u32,
        start in 0..1000u64,
    ) {
        let config = HealthConfig {
            reset_window_seconds: reset_window,
            recovery_window_seconds: window,
            recovery_windows: windows,
            ..HealthConfig::default()
        };
        let mut e = engine(config);
        tick(&mut e, start, resets(10));
        let recovering = start + reset_window;
        let healthy = recovering + window * u64::from(windows);
        for s in start + 1..=healthy + 1 {
            e.evaluate(s);
            let expected = if s < recovering {
                State::Unhealthy
            } else if s < healthy {
                State::Recovering
            } else {
                State::Healthy
            };
            prop_assert_eq!(e.state(&key(EP)), Some(expected), "second {}", s);
        }
    }

    #[test]
    fn random_scripts_never_panic_and_stay_within_the_limit(
        max_endpoints in 0..6usize,
        ops in proptest::collection::vec(op_strategy(), 0..200),
    ) {
        let mut e = engine(HealthConfig { max_endpoints, ..HealthConfig::default() });
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Record { endpoint, sample } => e.record(&endpoint.to_string(), now, sample),
                Op::CloseWait { endpoint, count } => e.set_close_wait(&endpoint.to_string(), count, 7),
                Op::Evaluate => {
                    let t = e.evaluate(now);
                    prop_assert!(t.windows(2).all(|w| w[0].endpoint <= w[1].endpoint));
                }
                Op::Wait(seconds) => now += seconds,
            }
            prop_assert!(e.len() <= max_endpoints);
            prop_assert_eq!(e.endpoints(now).count(), e.len());
        }
    }

    #[test]
    fn skipping_evaluations_changes_no_transition(
        config in config_strategy(),
        script in proptest::collection::vec((0..4u8, sample_strategy(12), 0..4u64, any::<bool>()), 0..80),
    ) {
        let mut every = engine(config.clone());
        let mut sparse = engine(config);
        let (mut from_every, mut from_sparse) = (Vec::new(), Vec::new());
        let mut now = 0;
        // A second is evaluated once all its counts are in: when time moves on.
        for (endpoint, sample, wait, evaluate) in script {
            for s in now..now + wait {
                from_every.extend(every.evaluate(s));
            }
            if evaluate && wait > 0 {
                from_sparse.extend(sparse.evaluate(now + wait - 1));
            }
            now += wait;
            every.record(&endpoint.to_string(), now, sample);
            sparse.record(&endpoint.to_string(), now, sample);
        }
        for s in now..=now + 100 {
            from_every.extend(every.evaluate(s));
        }
        from_sparse.extend(sparse.evaluate(now + 100));
        let sort = |t: &mut Vec<Transition<String>>| t.sort_by(|a, b| (&a.endpoint, a.at).cmp(&(&b.endpoint, b.at)));
        sort(&mut from_every);
        sort(&mut from_sparse);
        prop_assert_eq!(from_every, from_sparse);
    }
}
