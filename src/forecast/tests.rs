use super::*;
use proptest::prelude::*;

fn t(millis: i64) -> Timestamp {
    Timestamp::from_millisecond(1_800_000_000_000 + millis).unwrap()
}

fn fed(window_secs: u64, interval_ms: i64, values: &[f64]) -> Forecaster {
    let mut forecaster = Forecaster::new(Duration::from_secs(window_secs));
    for (i, value) in values.iter().enumerate() {
        forecaster.observe(t(i as i64 * interval_ms), value.round().max(0.0) as u64);
    }
    forecaster
}

#[test]
fn an_exact_ramp_gives_its_rate_and_the_time_to_critical() {
    // 10 jobs a second from 100, one sample a second for 20 s: 290 now, critical 400 in 11 s.
    let values: Vec<f64> = (0..20).map(|i| 100.0 + 10.0 * i as f64).collect();
    let forecast = fed(60, 1000, &values).forecast(Some(400)).unwrap();
    assert!((forecast.growth_per_second - 10.0).abs() < 1e-9);
    let critical_in = forecast.critical_in.unwrap().as_secs_f64();
    assert!((critical_in - 11.0).abs() < 1e-6, "{critical_in}");
}

#[test]
fn too_few_samples_give_no_forecast() {
    assert_eq!(fed(60, 1000, &[1.0, 2.0, 3.0, 4.0]).forecast(Some(10)), None);
    assert!(
        fed(60, 1000, &[1.0, 2.0, 3.0, 4.0, 5.0])
            .forecast(Some(10))
            .is_some()
    );
}

#[test]
fn a_backlog_at_critical_is_there_now_and_a_draining_one_never_gets_there() {
    let rising: Vec<f64> = (0..10).map(|i| 10.0 * i as f64).collect();
    assert_eq!(
        fed(60, 1000, &rising).forecast(Some(90)).unwrap().critical_in,
        Some(Duration::ZERO)
    );
    let draining: Vec<f64> = (0..10).map(|i| 100.0 - 10.0 * i as f64).collect();
    let forecast = fed(60, 1000, &draining).forecast(Some(500)).unwrap();
    assert!(forecast.growth_per_second < 0.0);
    assert_eq!(forecast.critical_in, None);
    assert_eq!(fed(60, 1000, &rising).forecast(None).unwrap().critical_in, None);
}

#[test]
fn only_the_window_counts_and_a_clock_going_back_starts_again() {
    // A flat minute, then a steep ramp: with a 10 s window only the ramp is fitted.
    let mut values = vec![50.0; 60];
    values.extend((1..=10).map(|i| 50.0 + 20.0 * f64::from(i)));
    let forecast = fed(10, 1000, &values).forecast(Some(1000)).unwrap();
    assert!((forecast.growth_per_second - 20.0).abs() < 1e-9, "{forecast:?}");
    let mut forecaster = fed(60, 1000, &values);
    forecaster.observe(t(0), 7);
    assert_eq!(
        forecaster.forecast(Some(1000)),
        None,
        "one point left after the clock stepped back"
    );
}

#[test]
fn a_critical_beyond_twice_the_history_is_not_forecast() {
    // 10 s of history at 1 job/s from 0: critical 25 is 16 s away (within 20 s), 40 is 31 s away.
    let values: Vec<f64> = (0..=10).map(f64::from).collect();
    let forecaster = fed(60, 1000, &values);
    assert!(forecaster.forecast(Some(25)).unwrap().critical_in.is_some());
    assert_eq!(forecaster.forecast(Some(40)).unwrap().critical_in, None);
}

proptest! {
    /// A steady ramp (at least 2 jobs a sample, 20 samples), with noise of up to 5 % of one
    /// sample's growth, is forecast within 10 %: its rate and its time to critical.
    #[test]
    fn a_steady_ramp_is_forecast_within_ten_percent(
        step in 2.0_f64..2_000.0,
        start in 0.0_f64..10_000.0,
        interval_ms in prop::sample::select(vec![250_i64, 500, 1000, 2000, 5000]),
        points in 20_usize..120,
        noise in prop::collection::vec(-1.0_f64..1.0, 120),
        ahead in 0.3_f64..1.0,
    ) {
        let rate = step * 1000.0 / interval_ms as f64;
        let values: Vec<f64> = (0..points)
            .map(|i| start + step * i as f64 + noise[i] * 0.05 * step)
            .collect();
        let span = (points - 1) as f64 * interval_ms as f64 / 1000.0;
        let now_true = start + step * (points - 1) as f64;
        // Critical lies `ahead` of one history's length away, at the true rate.
        let critical = (now_true + rate * span * ahead).ceil() as u64;
        let truth = (critical as f64 - now_true) / rate;
        let window = (span.ceil() as u64) + 1;
        let forecast = fed(window, interval_ms, &values).forecast(Some(critical)).unwrap();
        prop_assert!((forecast.growth_per_second - rate).abs() <= 0.1 * rate, "{forecast:?} vs {rate}");
        let critical_in = forecast.critical_in.expect("a steady ramp has a time to critical").as_secs_f64();
        // Rounding the backlog to whole jobs costs up to one job: allow its time too.
        let slack = 0.1 * truth + 1.0 / rate;
        prop_assert!((critical_in - truth).abs() <= slack, "{critical_in} vs {truth}");
    }

    /// Noise alone never gives a time to critical: samples at a steady interval, anywhere within
    /// ±A of a level, with critical more than 9·A above it. (The largest slope a least-squares
    /// line can take through evenly spaced samples within a band of 2·A is 3·A over the history
    /// S; its value now is then at most level + A + 1.5·A, and following it for 2·S adds at most
    /// 6·A: 8.5·A in all.)
    #[test]
    fn noise_alone_never_forecasts_critical(
        level in 0.0_f64..100_000.0,
        amplitude in 10.0_f64..1_000.0,
        interval_ms in prop::sample::select(vec![250_i64, 500, 1000, 5000]),
        noise in prop::collection::vec(-1.0_f64..=1.0, 5..200),
        headroom in 9.0_f64..50.0,
    ) {
        let values: Vec<f64> = noise.iter().map(|n| level + amplitude + n * amplitude).collect();
        let critical = (level + amplitude + headroom * amplitude).ceil() as u64 + 1;
        let window = noise.len() as u64 * interval_ms as u64 / 1000 + 1;
        let forecast = fed(window, interval_ms, &values).forecast(Some(critical));
        prop_assert_eq!(forecast.and_then(|f| f.critical_in), None);
    }
}
