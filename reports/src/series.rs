//! Time series of one run over virtual time: what the simulator saw the engine do, sampled as
//! it happened, for the per-scenario plots of the HTML report.
//!
//! Only what crosses the kernel boundary is sampled (writes the engine issues to the diff
//! storage, IO on the image disks, ranges the user appended, events the engine reported, freeze
//! windows, TAKE ioctls); engine internals never are. Host time never appears: every abscissa
//! is virtual nanoseconds.
//!
//! A [`Line`] holds a bounded number of points whatever the run length: it keeps every
//! `stride`-th change and doubles the stride (dropping every other kept point) when full, which
//! is cheap per sample and deterministic (a function of the sample sequence alone). The last
//! value is always kept, so a line ends at the run's final count.

use serde::{Deserialize, Serialize};

/// Most points one line keeps (the plot is 700 px wide: more would not show).
pub const MAX_POINTS: usize = 512;
/// Most windows and marks one run keeps; the rest are counted in [`TimeSeries::dropped`].
pub const MAX_SPANS: usize = 256;

/// Which plot a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plot {
    /// Diff storage sectors: appended by the user, filled by the engine, low-space level.
    Storage,
    /// Writes the engine issued to the diff storage (copy-on-write and stored image chunks).
    Cow,
    /// Bios submitted to the image disks.
    ImageIo,
}

impl Plot {
    /// Heading of the plot.
    pub fn title(self) -> &'static str {
        match self {
            Plot::Storage => "Diff storage (sectors): appended vs filled, low-space level",
            Plot::Cow => "Writes to the diff storage (cumulative count)",
            Plot::ImageIo => "Image IO (cumulative bios)",
        }
    }
}

/// One sampled quantity on one device, as (virtual ns, value) points, value non-decreasing
/// in time order for counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// The plot it is drawn in.
    pub plot: Plot,
    /// What it counts, e.g. `"filled"`, `"writes"`, `"reads"`.
    pub name: String,
    /// The device as the scenario names it (or `major:minor`).
    pub device: String,
    /// (virtual ns, value), in time order.
    pub points: Vec<(u64, f64)>,
    /// Only every `stride`-th change is kept (a power of two; 1 until the line first fills).
    #[serde(skip)]
    stride: u64,
    /// Changes seen, to pick every `stride`-th.
    #[serde(skip)]
    seen: u64,
    /// The newest change when it was not kept, so the line still ends at the final value.
    #[serde(skip)]
    pending: Option<(u64, f64)>,
}

impl Line {
    /// An empty line.
    pub fn new(plot: Plot, name: impl Into<String>, device: impl Into<String>) -> Self {
        Line {
            plot,
            name: name.into(),
            device: device.into(),
            points: Vec::new(),
            stride: 1,
            seen: 0,
            pending: None,
        }
    }

    /// The value became `value` at `at_ns`. Unchanged values add nothing; a change at the same
    /// instant as the last kept point replaces it.
    pub fn sample(&mut self, at_ns: u64, value: f64) {
        if self.last_value() == Some(value) {
            return;
        }
        if let Some(last) = self.points.last_mut().filter(|p| p.0 == at_ns) {
            last.1 = value;
            self.pending = None;
            return;
        }
        self.seen += 1;
        if !self.seen.is_multiple_of(self.stride.max(1)) {
            self.pending = Some((at_ns, value));
            return;
        }
        self.pending = None;
        self.points.push((at_ns, value));
        if self.points.len() >= MAX_POINTS {
            self.halve();
        }
    }

    /// Keeps every other point (the first always) and samples half as often from now on. The
    /// newest point, if dropped, waits as the pending one so the line still ends on it.
    fn halve(&mut self) {
        if self.points.len().is_multiple_of(2) {
            self.pending = self.points.last().copied();
        }
        let mut i = 0;
        self.points.retain(|_| {
            i += 1;
            i % 2 == 1
        });
        self.stride = self.stride.max(1) * 2;
    }

    fn last_value(&self) -> Option<f64> {
        self.pending.or(self.points.last().copied()).map(|p| p.1)
    }

    /// Ends sampling: the newest value is kept even if its turn had not come.
    /// The sampler state is reset, so a finished line equals its JSON round trip.
    pub fn finish(&mut self) {
        if let Some(p) = self.pending.take() {
            if self.points.len() >= MAX_POINTS {
                self.points.pop();
            }
            self.points.push(p);
        }
        self.stride = 0;
        self.seen = 0;
    }

    /// The largest value (0 for an empty line).
    pub fn max(&self) -> f64 {
        self.points.iter().map(|p| p.1).fold(0.0, f64::max)
    }
}

/// A span of virtual time on one device, e.g. a freeze or a TAKE ioctl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// `"freeze"` or `"take"`.
    pub kind: String,
    /// Device (freeze) or snapshot (take) it concerns.
    pub device: String,
    /// Virtual ns it began.
    pub start_ns: u64,
    /// Virtual ns it ended (the run's end when it never did).
    pub end_ns: u64,
}

/// An instant: an event the engine reported, e.g. low free space or corruption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// `"low_space"`, `"corrupted"` or `"event <code>"`.
    pub kind: String,
    /// The snapshot or device it concerns.
    pub device: String,
    /// Virtual ns the engine generated it (the event's time label).
    pub at_ns: u64,
    /// Virtual ns WAIT_EVENT returned it to the user, when known (older
    /// reports have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_ns: Option<u64>,
}

/// Everything sampled over one run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TimeSeries {
    /// Virtual ns at the end of the run (the right edge of every plot).
    pub end_ns: u64,
    /// Sampled counters, sorted by plot, then device, then name.
    #[serde(default)]
    pub lines: Vec<Line>,
    /// Freeze and TAKE windows, in the order they began.
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Events the engine reported, in time order.
    #[serde(default)]
    pub marks: Vec<Mark>,
    /// Windows and marks past [`MAX_SPANS`] that were not kept.
    #[serde(default)]
    pub dropped: u64,
}

impl TimeSeries {
    /// Points over all lines, plus windows and marks: zero means nothing was sampled.
    pub fn samples(&self) -> usize {
        self.lines.iter().map(|l| l.points.len()).sum::<usize>()
            + self.windows.len()
            + self.marks.len()
    }

    /// The lines of one plot.
    pub fn plot(&self, plot: Plot) -> impl Iterator<Item = &Line> {
        self.lines.iter().filter(move |l| l.plot == plot)
    }

    /// Keeps a window, or counts it when the run already has [`MAX_SPANS`].
    pub fn push_window(&mut self, window: Window) {
        if self.windows.len() < MAX_SPANS {
            self.windows.push(window);
        } else {
            self.dropped += 1;
        }
    }

    /// Keeps a mark, or counts it when the run already has [`MAX_SPANS`].
    pub fn push_mark(&mut self, mark: Mark) {
        if self.marks.len() < MAX_SPANS {
            self.marks.push(mark);
        } else {
            self.dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_values_and_same_instant_collapse() {
        let mut l = Line::new(Plot::Cow, "writes", "d");
        l.sample(1, 1.0);
        l.sample(2, 1.0);
        l.sample(3, 2.0);
        l.sample(3, 3.0);
        l.finish();
        assert_eq!(l.points, [(1, 1.0), (3, 3.0)]);
    }

    #[test]
    fn bounded_and_ends_at_the_last_value() {
        let mut l = Line::new(Plot::Cow, "writes", "d");
        for i in 1..=100_000u64 {
            l.sample(i * 10, i as f64);
        }
        l.finish();
        assert!(l.points.len() <= MAX_POINTS, "{}", l.points.len());
        assert!(l.points.len() >= MAX_POINTS / 4, "{}", l.points.len());
        assert_eq!(l.points.first(), Some(&(10, 1.0)));
        assert_eq!(l.points.last(), Some(&(1_000_000, 100_000.0)));
        assert!(l
            .points
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        // Evenly spread over the run, not crowded at either end.
        let mid = l.points.iter().filter(|p| p.0 <= 500_000).count();
        let share = mid as f64 / l.points.len() as f64;
        assert!((0.4..0.6).contains(&share), "{share}");
    }

    /// The sample that fills the line (and halves it) is still its last point.
    #[test]
    fn the_sample_that_halves_is_kept() {
        for n in [
            MAX_POINTS as u64,
            2 * MAX_POINTS as u64 - 1,
            3 * MAX_POINTS as u64,
        ] {
            let mut l = Line::new(Plot::Cow, "writes", "d");
            for i in 1..=n {
                l.sample(i, i as f64);
            }
            l.finish();
            assert_eq!(l.points.last(), Some(&(n, n as f64)), "{n} samples");
            assert!(l.points.len() <= MAX_POINTS);
        }
    }

    #[test]
    fn deterministic() {
        let run = || {
            let mut l = Line::new(Plot::ImageIo, "reads", "i");
            for i in 0..5_000u64 {
                l.sample(i * 7 + i % 3, (i * i % 977) as f64);
            }
            l.finish();
            l
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn spans_are_bounded() {
        let mut s = TimeSeries::default();
        for i in 0..(MAX_SPANS as u64 + 5) {
            s.push_mark(Mark {
                kind: "low_space".into(),
                device: "s".into(),
                at_ns: i,
                received_ns: None,
            });
        }
        assert_eq!((s.marks.len(), s.dropped), (MAX_SPANS, 5));
        assert_eq!(s.samples(), MAX_SPANS);
    }

    #[test]
    fn json_round_trip_without_sampler_state() {
        let mut s = TimeSeries {
            end_ns: 9,
            ..TimeSeries::default()
        };
        let mut l = Line::new(Plot::Storage, "filled", "s");
        l.sample(1, 8.0);
        l.finish();
        s.lines.push(l);
        let text = serde_json::to_string(&s).expect("serialises");
        assert!(!text.contains("stride"), "{text}");
        let back: TimeSeries = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, s);
    }
}
