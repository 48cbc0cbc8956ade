//! What a tick decides from its sample, without I/O: the forecast fed, the circuit stepped. The
//! policy task and `levee sample` both go through here, so the command line decides exactly as
//! `levee run` does.

use crate::api::BackpressurePolicy;
use crate::api::labels::ANNOTATION_RESET;
use crate::circuit::{Circuit, CircuitRules, Decision, Observation};
use crate::forecast::{Forecast, Forecaster};
use crate::sampler::Sample;
use kube::ResourceExt;

/// Feeds `sample` to `forecaster` when it read (a failed sample is no point of the trend) and
/// forecasts the backlog against `rules`' critical depth.
pub fn forecast(forecaster: &mut Forecaster, rules: &CircuitRules, sample: &Sample) -> Option<Forecast> {
    if !sample.failed() {
        forecaster.observe(sample.at, sample.pending());
    }
    forecaster.forecast(rules.depth.map(|depth| depth.critical))
}

/// Steps `circuit` at `now` with the tick's sample (its measure, with the forecast's time to
/// critical; `None` or a failed sample is a failed observation) and the policy's reset
/// annotation.
pub fn step(
    circuit: &mut Circuit,
    rules: &CircuitRules,
    policy: &BackpressurePolicy,
    now: jiff::Timestamp,
    sample: Option<&Sample>,
    forecast: Option<Forecast>,
) -> Decision {
    let observation = match sample.map(|sample| sample.observation(rules)) {
        Some(Observation::Sampled(mut measure)) => {
            measure.critical_in = forecast.and_then(|f| f.critical_in);
            Observation::Sampled(measure)
        }
        _ => Observation::SampleFailed,
    };
    let reset = policy.annotations().get(ANNOTATION_RESET).map(String::as_str);
    circuit.step(rules, now, observation, reset)
}
