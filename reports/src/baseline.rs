//! Comparing a run against a stored baseline run.
//!
//! Runs are matched by scenario name. When a name occurs more than once in a report (the same
//! scenario under several seeds), the n-th occurrence in the current report is matched with the
//! n-th in the baseline, so such sweeps still compare one to one.
//!
//! Besides the simulator's named metrics, the run's simulated time is compared as the metric
//! `virtual_ns`, because a slower simulated run is as much a regression as more COW chunks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{RunReport, ScenarioRun, Verdict};
use crate::text;

/// Name under which [`ScenarioRun::virtual_ns`] takes part in the metric comparison.
pub const VIRTUAL_NS: &str = "virtual_ns";

/// How much a metric may move before it counts as a regression.
///
/// Metrics are "lower is better" unless named in `higher_is_better`. A tolerance is a fraction
/// of the baseline value: `0.10` lets a metric grow by 10 % (or, for higher-is-better metrics,
/// shrink by 10 %) without complaint.
/// It reads from JSON (or any serde format) with every field optional, so a project can keep
/// its tolerances in a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tolerance {
    /// Tolerance for every metric without its own entry in `per_metric`.
    pub default_ratio: f64,
    /// Per-metric tolerances that override `default_ratio`.
    pub per_metric: BTreeMap<String, f64>,
    /// Metrics never compared; by default `wall_ms`, which depends on the host, not the engine.
    pub excluded: BTreeSet<String>,
    /// Metrics where a decrease, not an increase, is the regression.
    pub higher_is_better: BTreeSet<String>,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            default_ratio: 0.10,
            per_metric: BTreeMap::new(),
            excluded: BTreeSet::from(["wall_ms".to_string()]),
            higher_is_better: BTreeSet::new(),
        }
    }
}

impl Tolerance {
    /// Sets the tolerance of one metric.
    pub fn with_metric(mut self, metric: impl Into<String>, ratio: f64) -> Self {
        self.per_metric.insert(metric.into(), ratio);
        self
    }

    /// Leaves one metric out of the comparison.
    pub fn exclude(mut self, metric: impl Into<String>) -> Self {
        self.excluded.insert(metric.into());
        self
    }

    /// Marks one metric as "higher is better".
    pub fn higher_is_better(mut self, metric: impl Into<String>) -> Self {
        self.higher_is_better.insert(metric.into());
        self
    }

    /// The tolerance that applies to `metric`.
    pub fn ratio_for(&self, metric: &str) -> f64 {
        self.per_metric
            .get(metric)
            .copied()
            .unwrap_or(self.default_ratio)
    }

    /// True when moving from `baseline` to `current` exceeds the tolerance in the bad direction.
    /// NaN tolerances or values never count as regressions (the comparison is simply false).
    pub fn is_regression(&self, metric: &str, baseline: f64, current: f64) -> bool {
        let change = relative_change(baseline, current);
        let allowed = self.ratio_for(metric);
        if self.higher_is_better.contains(metric) {
            change < -allowed
        } else {
            change > allowed
        }
    }
}

/// `(current - baseline) / |baseline|`; from a zero baseline any move is infinitely large.
pub fn relative_change(baseline: f64, current: f64) -> f64 {
    let diff = current - baseline;
    if baseline == 0.0 {
        if diff == 0.0 {
            0.0
        } else {
            diff.signum() * f64::INFINITY
        }
    } else {
        diff / baseline.abs()
    }
}

/// What changed for one scenario between baseline and current run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ChangeKind {
    /// Passed in the baseline, fails (or no longer loads) now: a regression.
    NewFailure {
        /// Verdict now (`Fail` or `Error`).
        current: Verdict,
    },
    /// Failed (or did not load) in the baseline, passes now.
    Fixed {
        /// Verdict in the baseline (`Fail` or `Error`).
        baseline: Verdict,
    },
    /// Same seed, different trace digest: the engine behaves differently. Informational.
    DigestChanged {
        /// The seed both runs used.
        seed: u64,
        /// Baseline digest.
        baseline: String,
        /// Current digest.
        current: String,
    },
    /// A metric moved past its tolerance in the bad direction: a regression.
    MetricRegression {
        /// Metric name.
        metric: String,
        /// Baseline value.
        baseline: f64,
        /// Current value.
        current: f64,
        /// `current / baseline` (infinite when the baseline was zero).
        ratio: f64,
    },
    /// In the baseline but not run now: a regression, since coverage was lost.
    Missing,
    /// Run now but not in the baseline.
    Added,
}

/// One change, attributed to a scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Scenario name.
    pub scenario: String,
    /// What changed.
    pub kind: ChangeKind,
}

impl Change {
    /// True for the kinds that should fail a CI gate.
    pub fn is_regression(&self) -> bool {
        matches!(
            self.kind,
            ChangeKind::NewFailure { .. }
                | ChangeKind::Missing
                | ChangeKind::MetricRegression { .. }
        )
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeKind::NewFailure { current } => write!(f, "new failure: was pass, now {current}"),
            ChangeKind::Fixed { baseline } => write!(f, "fixed: was {baseline}, now pass"),
            ChangeKind::DigestChanged {
                seed,
                baseline,
                current,
            } => write!(f, "digest changed for seed {seed}: {baseline} -> {current}"),
            ChangeKind::MetricRegression {
                metric,
                baseline,
                current,
                ..
            } => write!(
                f,
                "metric {metric} regressed: {} -> {} ({})",
                text::number(*baseline),
                text::number(*current),
                text::percent(relative_change(*baseline, *current)),
            ),
            ChangeKind::Missing => f.write_str("missing: in the baseline, not run now"),
            ChangeKind::Added => f.write_str("added: not in the baseline"),
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.scenario, self.kind)
    }
}

/// One metric of one scenario, in both runs; kept for every compared metric (not only
/// regressions) so renderers can plot how everything moved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricDelta {
    /// Scenario name.
    pub scenario: String,
    /// Metric name.
    pub metric: String,
    /// Baseline value.
    pub baseline: f64,
    /// Current value.
    pub current: f64,
    /// Whether the move exceeds the tolerance in the bad direction.
    pub regression: bool,
}

impl MetricDelta {
    /// Relative change, see [`relative_change`].
    pub fn relative(&self) -> f64 {
        relative_change(self.baseline, self.current)
    }
}

/// The result of [`compare`].
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Comparison {
    /// `tool_version` of the baseline report.
    pub baseline_version: String,
    /// Changes in current-report order, then scenarios missing from it in baseline order.
    pub changes: Vec<Change>,
    /// Every compared metric of every matched scenario, in the same order.
    pub deltas: Vec<MetricDelta>,
    /// Why no digest was compared, if none was: the two reports' digests
    /// come from different hashes, so every one would differ while the
    /// runs may be the same.
    pub digests_not_compared: Option<String>,
}

impl Comparison {
    /// True when any change is a regression (new failure, missing scenario, metric).
    pub fn has_regressions(&self) -> bool {
        self.changes.iter().any(Change::is_regression)
    }

    /// The changes that are regressions.
    pub fn regressions(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.is_regression())
    }

    /// The changes that are not regressions (fixed, digest changed, added).
    pub fn informational(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| !c.is_regression())
    }
}

/// Compares `current` against `baseline`, matching runs by name.
pub fn compare(current: &RunReport, baseline: &RunReport, tolerance: &Tolerance) -> Comparison {
    let mut out = Comparison {
        baseline_version: baseline.tool_version.clone(),
        ..Comparison::default()
    };
    let same_hash = current.digest_hash == baseline.digest_hash;
    if !same_hash {
        out.digests_not_compared = Some(format!(
            "digests not compared: the baseline's are {}, these {}",
            baseline.digest_hash, current.digest_hash
        ));
    }
    let base_index: BTreeMap<_, _> = keyed(baseline).collect();
    let cur_index: BTreeMap<_, _> = keyed(current).collect();
    for (key, run) in keyed(current) {
        match base_index.get(&key) {
            Some(base) => compare_pair(base, run, tolerance, same_hash, &mut out),
            None => out.changes.push(change(run, ChangeKind::Added)),
        }
    }
    for (key, run) in keyed(baseline) {
        if !cur_index.contains_key(&key) {
            out.changes.push(change(run, ChangeKind::Missing));
        }
    }
    out
}

/// Each run with its match key: the name and how many earlier runs had that name.
fn keyed(report: &RunReport) -> impl Iterator<Item = ((&str, usize), &ScenarioRun)> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    report.runs.iter().map(move |run| {
        let n = seen.entry(run.name.as_str()).or_insert(0);
        let key = (run.name.as_str(), *n);
        *n += 1;
        (key, run)
    })
}

fn change(run: &ScenarioRun, kind: ChangeKind) -> Change {
    Change {
        scenario: run.name.clone(),
        kind,
    }
}

fn compare_pair(
    base: &ScenarioRun,
    cur: &ScenarioRun,
    tol: &Tolerance,
    same_hash: bool,
    out: &mut Comparison,
) {
    compare_verdicts(base, cur, out);
    // A run that could not load has no digest or metrics worth comparing; the verdict change
    // above already says what happened.
    if base.verdict == Verdict::Error || cur.verdict == Verdict::Error {
        return;
    }
    if same_hash && base.seed == cur.seed && base.digest != cur.digest {
        let kind = ChangeKind::DigestChanged {
            seed: cur.seed,
            baseline: base.digest.clone(),
            current: cur.digest.clone(),
        };
        out.changes.push(change(cur, kind));
    }
    compare_metrics(base, cur, tol, out);
}

fn compare_verdicts(base: &ScenarioRun, cur: &ScenarioRun, out: &mut Comparison) {
    let kind = match (base.verdict, cur.verdict) {
        (Verdict::Pass, now) if now != Verdict::Pass => ChangeKind::NewFailure { current: now },
        (was, Verdict::Pass) if was != Verdict::Pass => ChangeKind::Fixed { baseline: was },
        _ => return,
    };
    out.changes.push(change(cur, kind));
}

fn compare_metrics(base: &ScenarioRun, cur: &ScenarioRun, tol: &Tolerance, out: &mut Comparison) {
    let base_metrics = comparable(base);
    for (metric, current) in comparable(cur) {
        let Some(&baseline) = base_metrics.get(&metric) else {
            continue;
        };
        if tol.excluded.contains(&metric) || !baseline.is_finite() || !current.is_finite() {
            continue;
        }
        let regression = tol.is_regression(&metric, baseline, current);
        if regression {
            let kind = ChangeKind::MetricRegression {
                metric: metric.clone(),
                baseline,
                current,
                ratio: current / baseline,
            };
            out.changes.push(change(cur, kind));
        }
        out.deltas.push(MetricDelta {
            scenario: cur.name.clone(),
            metric,
            baseline,
            current,
            regression,
        });
    }
}

/// The run's metrics plus its simulated time, which is compared like any metric.
fn comparable(run: &ScenarioRun) -> BTreeMap<String, f64> {
    let mut metrics = run.metrics.clone();
    // u64 -> f64 loses precision only beyond 2^53 ns (about 104 days), far past any run.
    metrics.insert(VIRTUAL_NS.to_string(), run.virtual_ns as f64);
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Failure;

    fn run(name: &str, seed: u64, verdict: Verdict, metrics: &[(&str, f64)]) -> ScenarioRun {
        let mut r = ScenarioRun::new(name, format!("scenarios/{name}.ron"), seed);
        r.verdict = verdict;
        r.digest = format!("d{seed}");
        r.virtual_ns = 1_000;
        r.metrics = metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        if verdict == Verdict::Fail {
            r.failures.push(Failure {
                checker: "expect".into(),
                message: "boom".into(),
                at_ns: None,
                category: Default::default(),
            });
        }
        r
    }

    fn report(runs: Vec<ScenarioRun>) -> RunReport {
        RunReport {
            schema_version: crate::model::SCHEMA_VERSION,
            tool_version: "v".into(),
            suite: "scenarios".into(),
            digest_hash: crate::model::DIGEST_HASH.into(),
            runs,
        }
    }

    fn kinds(c: &Comparison) -> Vec<(String, ChangeKind)> {
        c.changes
            .iter()
            .map(|c| (c.scenario.clone(), c.kind.clone()))
            .collect()
    }

    #[test]
    fn identical_reports_have_no_changes() {
        let r = report(vec![run("a", 1, Verdict::Pass, &[("cow_chunks", 4.0)])]);
        let c = compare(&r, &r, &Tolerance::default());
        assert!(c.changes.is_empty());
        assert!(!c.has_regressions());
        assert_eq!(c.deltas.len(), 2, "cow_chunks and virtual_ns are compared");
    }

    #[test]
    fn verdict_changes() {
        let base = report(vec![
            run("a", 1, Verdict::Pass, &[]),
            run("b", 2, Verdict::Fail, &[]),
            run("c", 3, Verdict::Pass, &[]),
            run("d", 4, Verdict::Error, &[]),
        ]);
        let cur = report(vec![
            run("a", 1, Verdict::Fail, &[]),
            run("b", 2, Verdict::Pass, &[]),
            run("c", 3, Verdict::Error, &[]),
            run("d", 4, Verdict::Pass, &[]),
        ]);
        let c = compare(&cur, &base, &Tolerance::default());
        let expected = vec![
            (
                "a".into(),
                ChangeKind::NewFailure {
                    current: Verdict::Fail,
                },
            ),
            (
                "b".into(),
                ChangeKind::Fixed {
                    baseline: Verdict::Fail,
                },
            ),
            (
                "c".into(),
                ChangeKind::NewFailure {
                    current: Verdict::Error,
                },
            ),
            (
                "d".into(),
                ChangeKind::Fixed {
                    baseline: Verdict::Error,
                },
            ),
        ];
        assert_eq!(kinds(&c), expected);
        assert!(c.has_regressions());
        assert_eq!(c.regressions().count(), 2);
        assert_eq!(c.informational().count(), 2);
    }

    #[test]
    fn fail_to_error_is_not_reported_as_fixed_or_new() {
        let base = report(vec![run("a", 1, Verdict::Fail, &[])]);
        let cur = report(vec![run("a", 1, Verdict::Error, &[])]);
        assert!(compare(&cur, &base, &Tolerance::default())
            .changes
            .is_empty());
    }

    #[test]
    fn digest_change_needs_same_seed() {
        let base = report(vec![
            run("a", 1, Verdict::Pass, &[]),
            run("b", 2, Verdict::Pass, &[]),
        ]);
        let mut cur = base.clone();
        cur.runs[0].digest = "other".into();
        cur.runs[1].seed = 3;
        cur.runs[1].digest = "d3".into();
        let c = compare(&cur, &base, &Tolerance::default());
        let expected = vec![(
            "a".into(),
            ChangeKind::DigestChanged {
                seed: 1,
                baseline: "d1".into(),
                current: "other".into(),
            },
        )];
        assert_eq!(kinds(&c), expected);
        assert!(!c.has_regressions(), "a digest change is informational");
    }

    /// Digests of another hash (a baseline from before session 21, blake3)
    /// all differ: none is compared, and the comparison says why; verdicts
    /// still are.
    #[test]
    fn digests_of_another_hash_are_not_compared() {
        let mut base = report(vec![
            run("a", 1, Verdict::Pass, &[]),
            run("b", 2, Verdict::Pass, &[]),
        ]);
        base.digest_hash = "blake3".into();
        let mut cur = report(vec![
            run("a", 1, Verdict::Pass, &[]),
            run("b", 2, Verdict::Fail, &[]),
        ]);
        cur.runs[0].digest = "other".into();
        let c = compare(&cur, &base, &Tolerance::default());
        assert_eq!(
            c.digests_not_compared.as_deref(),
            Some("digests not compared: the baseline's are blake3, these xxh3-64")
        );
        assert_eq!(kinds(&c).len(), 1, "{:?}", c.changes);
        assert!(matches!(c.changes[0].kind, ChangeKind::NewFailure { .. }));
        let same = compare(&cur, &report(base.runs.clone()), &Tolerance::default());
        assert_eq!(same.digests_not_compared, None);
        assert!(kinds(&same)
            .iter()
            .any(|(_, k)| matches!(k, ChangeKind::DigestChanged { .. })));
    }

    /// A report written before `digest_hash` existed reads as blake3.
    #[test]
    fn a_report_without_digest_hash_is_blake3() {
        let mut json: serde_json::Value =
            serde_json::from_str(&report(vec![]).to_json().unwrap()).unwrap();
        json.as_object_mut().unwrap().remove("digest_hash");
        let old = RunReport::from_json(&json.to_string()).unwrap();
        assert_eq!(old.digest_hash, "blake3");
        assert_eq!(report(vec![]).digest_hash, "xxh3-64");
    }

    #[test]
    fn missing_and_added() {
        let base = report(vec![run("old", 1, Verdict::Pass, &[])]);
        let cur = report(vec![run("new", 1, Verdict::Pass, &[])]);
        let c = compare(&cur, &base, &Tolerance::default());
        let expected = vec![
            ("new".into(), ChangeKind::Added),
            ("old".into(), ChangeKind::Missing),
        ];
        assert_eq!(kinds(&c), expected);
        assert!(c.has_regressions(), "a missing scenario is lost coverage");
    }

    #[test]
    fn added_alone_is_not_a_regression() {
        let base = report(vec![]);
        let cur = report(vec![run("new", 1, Verdict::Pass, &[])]);
        assert!(!compare(&cur, &base, &Tolerance::default()).has_regressions());
    }

    #[test]
    fn metric_regression_is_detected() {
        let base = report(vec![run("a", 1, Verdict::Pass, &[("cow_chunks", 100.0)])]);
        let within = report(vec![run("a", 1, Verdict::Pass, &[("cow_chunks", 110.0)])]);
        let beyond = report(vec![run("a", 1, Verdict::Pass, &[("cow_chunks", 111.0)])]);
        let tol = Tolerance::default();
        assert!(!compare(&within, &base, &tol).has_regressions());
        let c = compare(&beyond, &base, &tol);
        assert!(c.has_regressions());
        let expected = vec![(
            "a".into(),
            ChangeKind::MetricRegression {
                metric: "cow_chunks".into(),
                baseline: 100.0,
                current: 111.0,
                ratio: 1.11,
            },
        )];
        assert_eq!(kinds(&c), expected);
        assert!(c
            .deltas
            .iter()
            .any(|d| d.metric == "cow_chunks" && d.regression));
    }

    #[test]
    fn improvement_is_not_a_regression() {
        let base = report(vec![run("a", 1, Verdict::Pass, &[("cow_chunks", 100.0)])]);
        let cur = report(vec![run("a", 1, Verdict::Pass, &[("cow_chunks", 10.0)])]);
        let c = compare(&cur, &base, &Tolerance::default());
        assert!(!c.has_regressions());
        assert!((c.deltas[0].relative() + 0.9).abs() < 1e-12);
    }

    #[test]
    fn per_metric_override_and_exclusion() {
        let base = report(vec![run(
            "a",
            1,
            Verdict::Pass,
            &[("x", 10.0), ("wall_ms", 1.0)],
        )]);
        let cur = report(vec![run(
            "a",
            1,
            Verdict::Pass,
            &[("x", 14.0), ("wall_ms", 99.0)],
        )]);
        let lax = Tolerance::default().with_metric("x", 0.5);
        let c = compare(&cur, &base, &lax);
        assert!(
            !c.has_regressions(),
            "x within 50 %, wall_ms excluded by default"
        );
        assert!(c.deltas.iter().all(|d| d.metric != "wall_ms"));
        let strict = Tolerance::default().exclude("x");
        assert!(!compare(&cur, &base, &strict).has_regressions());
        assert!(compare(&cur, &base, &Tolerance::default()).has_regressions());
    }

    #[test]
    fn higher_is_better_metric() {
        let tol = Tolerance::default().higher_is_better("hit_rate");
        let base = report(vec![run("a", 1, Verdict::Pass, &[("hit_rate", 0.9)])]);
        let worse = report(vec![run("a", 1, Verdict::Pass, &[("hit_rate", 0.5)])]);
        let better = report(vec![run("a", 1, Verdict::Pass, &[("hit_rate", 2.0)])]);
        assert!(compare(&worse, &base, &tol).has_regressions());
        assert!(!compare(&better, &base, &tol).has_regressions());
    }

    #[test]
    fn growth_from_zero_is_a_regression() {
        let base = report(vec![run("a", 1, Verdict::Pass, &[("leaks", 0.0)])]);
        let cur = report(vec![run("a", 1, Verdict::Pass, &[("leaks", 1.0)])]);
        let c = compare(&cur, &base, &Tolerance::default());
        assert!(c.has_regressions());
        assert_eq!(relative_change(0.0, 0.0), 0.0);
        assert_eq!(relative_change(0.0, -1.0), f64::NEG_INFINITY);
    }

    #[test]
    fn virtual_time_is_compared() {
        let base = report(vec![run("a", 1, Verdict::Pass, &[])]);
        let mut cur = base.clone();
        cur.runs[0].virtual_ns = 2_000;
        let c = compare(&cur, &base, &Tolerance::default());
        assert!(matches!(
            &c.changes[0].kind,
            ChangeKind::MetricRegression { metric, .. } if metric == VIRTUAL_NS
        ));
    }

    #[test]
    fn non_finite_and_one_sided_metrics_are_skipped() {
        let base = report(vec![run(
            "a",
            1,
            Verdict::Pass,
            &[("x", f64::NAN), ("y", 1.0)],
        )]);
        let cur = report(vec![run("a", 1, Verdict::Pass, &[("x", 5.0), ("z", 9.0)])]);
        let c = compare(&cur, &base, &Tolerance::default());
        assert!(!c.has_regressions());
        assert_eq!(
            c.deltas.len(),
            1,
            "only virtual_ns is in both with finite values"
        );
    }

    #[test]
    fn errored_runs_compare_only_verdicts() {
        let base = report(vec![run("a", 1, Verdict::Pass, &[("x", 1.0)])]);
        let mut cur = report(vec![run("a", 1, Verdict::Error, &[("x", 100.0)])]);
        cur.runs[0].digest.clear();
        let c = compare(&cur, &base, &Tolerance::default());
        assert_eq!(c.changes.len(), 1);
        assert!(c.deltas.is_empty());
    }

    #[test]
    fn duplicate_names_pair_by_occurrence() {
        let base = report(vec![
            run("sweep", 1, Verdict::Pass, &[]),
            run("sweep", 2, Verdict::Pass, &[]),
        ]);
        let cur = report(vec![
            run("sweep", 1, Verdict::Pass, &[]),
            run("sweep", 2, Verdict::Fail, &[]),
            run("sweep", 3, Verdict::Pass, &[]),
        ]);
        let c = compare(&cur, &base, &Tolerance::default());
        let expected = vec![
            (
                "sweep".into(),
                ChangeKind::NewFailure {
                    current: Verdict::Fail,
                },
            ),
            ("sweep".into(), ChangeKind::Added),
        ];
        assert_eq!(kinds(&c), expected);
    }

    #[test]
    fn tolerance_from_json() {
        let tol: Tolerance =
            serde_json::from_str(r#"{"per_metric": {"cow_chunks": 0.5}}"#).expect("valid");
        assert_eq!(tol.ratio_for("cow_chunks"), 0.5);
        assert_eq!(tol.ratio_for("other"), 0.10);
        assert!(
            tol.excluded.contains("wall_ms"),
            "absent fields keep their defaults"
        );
        assert!(serde_json::from_str::<Tolerance>(r#"{"tolerance": 1}"#).is_err());
    }

    #[test]
    fn change_descriptions() {
        let c = Change {
            scenario: "a".into(),
            kind: ChangeKind::MetricRegression {
                metric: "x".into(),
                baseline: 10.0,
                current: 12.5,
                ratio: 1.25,
            },
        };
        assert_eq!(
            c.to_string(),
            "a: metric x regressed: 10 -> 12.500 (+25.0%)"
        );
        let n = ChangeKind::NewFailure {
            current: Verdict::Fail,
        };
        assert_eq!(n.to_string(), "new failure: was pass, now fail");
    }
}
