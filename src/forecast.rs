//! The backlog's forecast: how fast it grows (jobs per second, a least-squares line through the
//! samples of the last `window`) and when it reaches critical at that rate. Pure: times are
//! inputs, nothing is read or written.
//!
//! A time to critical is given only for growth that is both steady and near: the line must
//! explain at least half of the samples' variance (R² ≥ 0.5), and critical must be reached within
//! twice the history the line was fitted on (it is never extrapolated further). So noise is not a
//! trend: for samples taken at a steady interval, within ±A of a level, with critical more than
//! 9·A above that level, there is never a time to critical (the bound is in the tests).

use jiff::Timestamp;
use std::collections::VecDeque;
use std::time::Duration;

/// At least this many samples before a rate is fitted.
const MIN_POINTS: usize = 5;
/// The share of the variance the line must explain for a time to critical.
const MIN_R_SQUARED: f64 = 0.5;
/// How far ahead the line may be followed, in multiples of the history it was fitted on.
const HORIZON: f64 = 2.0;

/// What the forecast says now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Forecast {
    /// Jobs per second the backlog grows by (negative: it drains).
    pub growth_per_second: f64,
    /// When the backlog reaches critical at that rate (zero: it has); `None` when it does not
    /// grow steadily enough, or not within the horizon.
    pub critical_in: Option<Duration>,
}

/// The samples of the last window.
#[derive(Clone, Debug)]
pub struct Forecaster {
    window: Duration,
    points: VecDeque<(Timestamp, u64)>,
}

impl Forecaster {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            points: VecDeque::new(),
        }
    }

    /// Adds a sample taken at `at`; samples older than the window are dropped. A clock that went
    /// backwards starts the history again.
    pub fn observe(&mut self, at: Timestamp, pending: u64) {
        if self.points.back().is_some_and(|(last, _)| *last >= at) {
            self.points.clear();
        }
        self.points.push_back((at, pending));
        while let Some((first, _)) = self.points.front() {
            match Duration::try_from(at.duration_since(*first)) {
                Ok(age) if age > self.window => {
                    self.points.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Forgets the history (the queues changed, or a sample failed and the line would bridge it).
    pub fn clear(&mut self) {
        self.points.clear();
    }

    /// The rate and, given the `critical` backlog, when it is reached; `None` before enough
    /// samples.
    pub fn forecast(&self, critical: Option<u64>) -> Option<Forecast> {
        if self.points.len() < MIN_POINTS {
            return None;
        }
        let (first, _) = *self.points.front()?;
        let xs: Vec<f64> = self
            .points
            .iter()
            .map(|(at, _)| at.duration_since(first).as_secs_f64())
            .collect();
        let ys: Vec<f64> = self.points.iter().map(|(_, pending)| *pending as f64).collect();
        let line = Line::fit(&xs, &ys)?;
        let now = *xs.last()?;
        let critical_in = critical.and_then(|critical| {
            let current = *ys.last()?;
            if current >= critical as f64 {
                return Some(Duration::ZERO);
            }
            if line.slope <= 0.0 || line.r_squared < MIN_R_SQUARED {
                return None;
            }
            let seconds = ((critical as f64 - line.at(now)) / line.slope).max(0.0);
            let horizon = now * HORIZON;
            (seconds <= horizon).then(|| Duration::from_secs_f64(seconds))
        });
        Some(Forecast {
            growth_per_second: line.slope,
            critical_in,
        })
    }
}

/// A least-squares line and how much of the variance it explains.
#[derive(Clone, Copy, Debug)]
struct Line {
    slope: f64,
    intercept: f64,
    r_squared: f64,
}

impl Line {
    fn fit(xs: &[f64], ys: &[f64]) -> Option<Self> {
        let n = xs.len() as f64;
        let mean_x = xs.iter().sum::<f64>() / n;
        let mean_y = ys.iter().sum::<f64>() / n;
        let sxx: f64 = xs.iter().map(|x| (x - mean_x).powi(2)).sum();
        if sxx <= f64::EPSILON {
            return None;
        }
        let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mean_x) * (y - mean_y)).sum();
        let syy: f64 = ys.iter().map(|y| (y - mean_y).powi(2)).sum();
        let slope = sxy / sxx;
        // A flat line through flat samples explains everything there is.
        let r_squared = if syy <= f64::EPSILON {
            1.0
        } else {
            (sxy * sxy) / (sxx * syy)
        };
        Some(Self {
            slope,
            intercept: mean_y - slope * mean_x,
            r_squared,
        })
    }

    fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

#[cfg(test)]
mod tests;
