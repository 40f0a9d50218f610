//! Medians and spreads over rounds, and the verdict of a target given the
//! spread of its ratio.
//!
//! A value measured in R rounds is reported as its median and its min–max
//! over the rounds (for an even R the median is the mean of the two middle
//! values). A ratio between two systems is the ratio of their medians, with
//! the min–max of the ratios taken within each round beside it: the ratio of
//! the medians always lies inside that range, because the median is monotone
//! and scales with its inputs.

/// Median and min–max of one value over the rounds that measured it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many rounds measured it.
    pub rounds: usize,
}

impl Spread {
    pub fn contains(&self, v: f64) -> bool {
        self.min <= v && v <= self.max
    }
}

/// The spread of `values`; `None` when there are none.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    let k = v.len();
    let median = match k {
        0 => return None,
        _ if k % 2 == 1 => v[k / 2],
        _ => (v[k / 2 - 1] + v[k / 2]) / 2.0,
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[k - 1],
        rounds: k,
    })
}

/// What a target's measurement says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// The rounds disagree: some are on each side of the threshold.
    WithinNoise,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::WithinNoise => "within noise",
        }
    }
}

/// Judges `s` against `threshold`: the median decides, unless the per-round
/// range straddles the threshold (some rounds meet it, some do not), which
/// is "within noise". `higher` says which side meets it (`>=` when higher is
/// better, `<=` otherwise).
pub fn verdict(s: &Spread, threshold: f64, higher: bool) -> Verdict {
    let meets = |v: f64| {
        if higher {
            v >= threshold
        } else {
            v <= threshold
        }
    };
    match (meets(s.min), meets(s.max)) {
        (a, b) if a != b => Verdict::WithinNoise,
        _ if meets(s.median) => Verdict::Met,
        _ => Verdict::Missed,
    }
}

/// The rule of `--diff`: a value moved when each run's median lies outside
/// the other run's min–max (so neither run's rounds can explain the other).
pub fn moved(a: &Spread, b: &Spread) -> bool {
    !a.contains(b.median) && !b.contains(a.median)
}
