//! The last few minutes of the status page's charts: a bounded ring of counter totals read once
//! a second, off the request path. Rates are the differences between neighbouring samples, so
//! the request path pays nothing beyond the Prometheus counters it already increments.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Samples kept: five minutes at one a second.
pub const SAMPLES: usize = 300;

/// Counter totals at successive instants, each series by name.
#[derive(Debug)]
pub struct History {
    /// Series names in order of first appearance; a sample's values follow this order.
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// (clock ms, totals); a series newer than a sample reads as absent there.
    samples: VecDeque<(u64, Vec<f64>)>,
    capacity: usize,
}

impl Default for History {
    fn default() -> Self {
        Self::with_capacity(SAMPLES)
    }
}

/// Per-second rates over the kept samples.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rates {
    /// Clock ms at the end of each interval.
    pub at_ms: Vec<u64>,
    /// Per series, events per second in each interval.
    pub series: BTreeMap<String, Vec<f64>>,
}

impl History {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            names: Vec::new(),
            index: HashMap::new(),
            samples: VecDeque::with_capacity(capacity),
            capacity: capacity.max(2),
        }
    }

    /// Adds the totals read at `at_ms`, dropping the oldest sample when full.
    pub fn push(&mut self, at_ms: u64, totals: impl IntoIterator<Item = (String, f64)>) {
        let mut values = vec![f64::NAN; self.names.len()];
        for (name, total) in totals {
            let i = match self.index.get(&name) {
                Some(&i) => i,
                None => {
                    self.names.push(name.clone());
                    self.index.insert(name, self.names.len() - 1);
                    values.push(f64::NAN);
                    self.names.len() - 1
                }
            };
            values[i] = total;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((at_ms, values));
    }

    /// Events per second between each pair of neighbouring samples. A series absent from
    /// either sample, or whose total went down (a restart of its counter), reads 0 there.
    pub fn rates(&self) -> Rates {
        let mut at_ms = Vec::with_capacity(self.samples.len().saturating_sub(1));
        let mut series: BTreeMap<String, Vec<f64>> = self
            .names
            .iter()
            .map(|n| (n.clone(), Vec::with_capacity(at_ms.capacity())))
            .collect();
        for (before, after) in self.samples.iter().zip(self.samples.iter().skip(1)) {
            let secs = after.0.saturating_sub(before.0) as f64 / 1_000.0;
            at_ms.push(after.0);
            for (i, name) in self.names.iter().enumerate() {
                let (a, b) = (
                    before.1.get(i).copied().unwrap_or(f64::NAN),
                    after.1.get(i).copied().unwrap_or(f64::NAN),
                );
                let rate = if secs > 0.0 && b >= a {
                    (b - a) / secs
                } else {
                    0.0
                };
                series.get_mut(name).expect("every name").push(rate);
            }
        }
        Rates { at_ms, series }
    }

    /// The latest totals, by series.
    pub fn latest(&self) -> BTreeMap<&str, f64> {
        let Some((_, values)) = self.samples.back() else {
            return BTreeMap::new();
        };
        self.names
            .iter()
            .zip(values)
            .filter(|(_, v)| !v.is_nan())
            .map(|(n, v)| (n.as_str(), *v))
            .collect()
    }

    /// How much each series grew over the kept samples (the page's "last 5 minutes").
    pub fn growth(&self) -> BTreeMap<&str, f64> {
        let (Some((_, first)), Some((_, last))) = (self.samples.front(), self.samples.back())
        else {
            return BTreeMap::new();
        };
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let a = first.get(i).copied().filter(|v| !v.is_nan()).unwrap_or(0.0);
                let b = last.get(i).copied().filter(|v| !v.is_nan()).unwrap_or(0.0);
                (n.as_str(), (b - a).max(0.0))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    #[test]
    fn rates_are_differences_per_second() {
        let mut h = History::with_capacity(10);
        h.push(1_000, totals(&[("a", 0.0)]));
        h.push(2_000, totals(&[("a", 5.0)]));
        h.push(4_000, totals(&[("a", 25.0), ("b", 3.0)]));
        h.push(5_000, totals(&[("a", 25.0), ("b", 7.0)]));
        let r = h.rates();
        assert_eq!(r.at_ms, vec![2_000, 4_000, 5_000]);
        assert_eq!(r.series["a"], vec![5.0, 10.0, 0.0]);
        assert_eq!(r.series["b"], vec![0.0, 0.0, 4.0], "b is new at 4 s");
        assert_eq!(h.latest()["b"], 7.0);
        assert_eq!(h.growth()["a"], 25.0);
        assert_eq!(h.growth()["b"], 7.0);
    }

    #[test]
    fn the_ring_is_bounded() {
        let mut h = History::with_capacity(3);
        for s in 0..10u64 {
            h.push(s * 1_000, totals(&[("a", (s * 2) as f64)]));
        }
        let r = h.rates();
        assert_eq!(r.at_ms, vec![8_000, 9_000]);
        assert_eq!(r.series["a"], vec![2.0, 2.0]);
        assert_eq!(h.growth()["a"], 4.0, "over the three kept samples");
    }

    #[test]
    fn a_counter_that_went_down_reads_zero() {
        let mut h = History::with_capacity(5);
        h.push(0, totals(&[("a", 10.0)]));
        h.push(1_000, totals(&[("a", 2.0)]));
        assert_eq!(h.rates().series["a"], vec![0.0]);
    }
}
