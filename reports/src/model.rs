//! The plain data of one test-bench run: which scenarios ran, with which seed, what they
//! produced and how they were judged.
//!
//! These types are the contract between the simulator (which fills them in) and every renderer
//! and the baseline comparison (which only read them). They round-trip through JSON so a run can
//! be stored as a baseline and read back by a later tool version.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Everything one invocation of the bench produced for one suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Layout version of this JSON ([`SCHEMA_VERSION`]); 0 in files written
    /// before it existed. A reader refuses a newer one.
    #[serde(default)]
    pub schema_version: u32,
    /// Version of the tool that produced the report, so a baseline says where it came from.
    pub tool_version: String,
    /// Name of the suite, e.g. `"scenarios"` or `"bugs"`.
    pub suite: String,
    /// The hash behind every run's `digest` ([`DIGEST_HASH`] now); a report
    /// written before the field existed hashed with blake3. A baseline's
    /// digests are compared only with digests of the same hash.
    #[serde(default = "legacy_digest_hash")]
    pub digest_hash: String,
    /// One entry per scenario run, in the order they ran.
    pub runs: Vec<ScenarioRun>,
}

/// The layout version this crate writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The hash of the simulator's trace digests (`sim/src/trace.rs`).
pub const DIGEST_HASH: &str = "xxh3-64";

/// What reports without a `digest_hash` used (until session 21).
fn legacy_digest_hash() -> String {
    "blake3".into()
}

/// The outcome of running one scenario with one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioRun {
    /// Scenario name; runs are matched against a baseline by this name.
    pub name: String,
    /// Path of the scenario file, as given to the tool.
    pub path: String,
    /// The seed the run used; with `path` it reproduces the run exactly.
    pub seed: u64,
    /// Hex digest of the trace; same seed and same engine give the same digest.
    pub digest: String,
    /// How the checkers judged the run.
    pub verdict: Verdict,
    /// The exact shell command that replays this run.
    pub replay: String,
    /// Simulated time the run took, in nanoseconds.
    pub virtual_ns: u64,
    /// Scheduler steps taken.
    pub steps: u64,
    /// Trace events recorded.
    pub events: u64,
    /// Named measurements, e.g. `"cow_chunks"`, `"image_reads"`, `"wall_ms"`.
    /// A map (not a list) so every renderer sees them in the same, sorted order.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// What the checkers reported; empty for a passing run.
    #[serde(default)]
    pub failures: Vec<Failure>,
    /// For a bug scenario that passed: the failure that caught the quirk
    /// (its checker and message, category `expected`), so a report shows
    /// what caught the bug, not just "pass". Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caught_by: Option<Failure>,
    /// The last trace events before the end of a failed run (the ones that say what the
    /// engine and the users did: IO, ioctls, events, freezes, steps, warnings, failures).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_events: Vec<String>,
    /// Counters sampled over virtual time; absent in reports written before they existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<crate::series::TimeSeries>,
}

/// The judgement on one scenario run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every checker was satisfied.
    Pass,
    /// At least one checker reported a failure.
    Fail,
    /// The scenario could not be loaded or parsed, so nothing was checked.
    Error,
}

/// One problem a checker reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Which checker spoke, e.g. `"point_in_time"`, `"expect"`, `"kernel_warn"`.
    pub checker: String,
    /// What it said, possibly several lines.
    pub message: String,
    /// Virtual time of the failure, when the checker knows it.
    #[serde(default)]
    pub at_ns: Option<u64>,
    /// Who is to blame; absent in reports older than categories: engine.
    #[serde(default)]
    pub category: Category,
}

/// Who a failure is blamed on.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The engine did something wrong.
    #[default]
    Engine,
    /// A checker failed because of a fault the scenario declared (e.g. undetected corruption
    /// caused by a lost write on the diff storage).
    DeclaredFault,
    /// The failure a bug scenario expects: the bench caught the quirk.
    Expected,
    /// Not a verdict on the engine: the scenario could not be loaded, or the bench itself broke.
    BenchError,
}

impl Category {
    /// How every rendering names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Engine => "engine failure",
            Category::DeclaredFault => "caused by a declared fault",
            Category::Expected => "expected outcome",
            Category::BenchError => "bench or input error",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Failure {
    /// Checker and category, as renderings show them in brackets.
    pub fn label(&self) -> String {
        format!("{}, {}", self.checker, self.category)
    }
}

/// Why a report could not be written or read.
#[derive(Debug)]
pub enum ReportError {
    /// The JSON text was malformed or did not describe a report.
    Json(serde_json::Error),
    /// The file has a newer layout than this tool reads.
    Schema(u32),
    /// A metric is NaN or infinite. JSON has no such numbers (serde_json would write `null`,
    /// which then fails to read back), so it is refused when writing rather than later.
    NonFiniteMetric {
        /// The scenario holding the metric.
        scenario: String,
        /// The metric's name.
        metric: String,
    },
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::Json(e) => write!(f, "run report JSON: {e}"),
            ReportError::Schema(v) => write!(
                f,
                "run report JSON: schema_version {v} is newer than this tool reads ({SCHEMA_VERSION})"
            ),
            ReportError::NonFiniteMetric { scenario, metric } => write!(
                f,
                "run report: metric `{metric}` of scenario `{scenario}` is not a finite number"
            ),
        }
    }
}

impl std::error::Error for ReportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReportError::Json(e) => Some(e),
            ReportError::NonFiniteMetric { .. } | ReportError::Schema(_) => None,
        }
    }
}

impl From<serde_json::Error> for ReportError {
    fn from(e: serde_json::Error) -> Self {
        ReportError::Json(e)
    }
}

impl Verdict {
    /// Lower-case name, as it appears in JSON and in every rendering.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Error => "error",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RunReport {
    /// An empty report for `suite`.
    pub fn new(tool_version: impl Into<String>, suite: impl Into<String>) -> Self {
        RunReport {
            schema_version: SCHEMA_VERSION,
            tool_version: tool_version.into(),
            suite: suite.into(),
            digest_hash: DIGEST_HASH.into(),
            runs: Vec::new(),
        }
    }

    /// Number of runs with the given verdict.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.runs.iter().filter(|r| r.verdict == verdict).count()
    }

    /// Number of passing runs.
    pub fn passed(&self) -> usize {
        self.count(Verdict::Pass)
    }

    /// Number of runs a checker failed (not counting scenarios that could not be loaded).
    pub fn failed(&self) -> usize {
        self.count(Verdict::Fail)
    }

    /// Number of scenarios that could not be loaded or parsed.
    pub fn errored(&self) -> usize {
        self.count(Verdict::Error)
    }

    /// Number of bug scenarios that passed because a checker caught their quirk.
    pub fn caught(&self) -> usize {
        self.runs.iter().filter(|r| r.caught().is_some()).count()
    }

    /// True when every run passed (an empty report counts as success).
    pub fn all_passed(&self) -> bool {
        self.runs.iter().all(|r| r.verdict == Verdict::Pass)
    }

    /// Names of the metrics any run recorded, sorted.
    pub fn metric_names(&self) -> BTreeSet<&str> {
        self.runs
            .iter()
            .flat_map(|r| r.metrics.keys().map(String::as_str))
            .collect()
    }

    /// Names of the metrics every run recorded, sorted; empty when there are no runs.
    pub fn common_metric_names(&self) -> BTreeSet<&str> {
        let mut names = self.metric_names();
        names.retain(|n| self.runs.iter().all(|r| r.metrics.contains_key(*n)));
        names
    }

    /// Pretty JSON; refuses non-finite metrics so that what is written can always be read.
    pub fn to_json(&self) -> Result<String, ReportError> {
        self.check_finite()?;
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Reads a report written by [`RunReport::to_json`].
    pub fn from_json(text: &str) -> Result<Self, ReportError> {
        let report: RunReport = serde_json::from_str(text)?;
        if report.schema_version > SCHEMA_VERSION {
            return Err(ReportError::Schema(report.schema_version));
        }
        Ok(report)
    }

    fn check_finite(&self) -> Result<(), ReportError> {
        for run in &self.runs {
            if let Some((metric, _)) = run.metrics.iter().find(|(_, v)| !v.is_finite()) {
                return Err(ReportError::NonFiniteMetric {
                    scenario: run.name.clone(),
                    metric: metric.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Coverage metrics are named for what a checker judged or excused.
pub fn is_coverage_metric(name: &str) -> bool {
    ["_checked", "_judged", "_excused"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

impl ScenarioRun {
    /// A passing run with no measurements yet; the caller fills in the rest.
    pub fn new(name: impl Into<String>, path: impl Into<String>, seed: u64) -> Self {
        ScenarioRun {
            name: name.into(),
            path: path.into(),
            seed,
            digest: String::new(),
            verdict: Verdict::Pass,
            replay: String::new(),
            virtual_ns: 0,
            steps: 0,
            events: 0,
            metrics: BTreeMap::new(),
            failures: Vec::new(),
            caught_by: None,
            recent_events: Vec::new(),
            series: None,
        }
    }

    /// The failure that caught a bug scenario's quirk, for a passing run:
    /// `caught_by`, or in a report written before that field existed the
    /// failure whose category is `expected`.
    pub fn caught(&self) -> Option<&Failure> {
        if self.verdict != Verdict::Pass {
            return None;
        }
        self.caught_by.as_ref().or_else(|| {
            self.failures
                .iter()
                .find(|f| f.category == Category::Expected)
        })
    }

    /// A metric's value, if the run recorded it.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }

    /// The checkers' coverage counts (how much each judged: sectors, reads,
    /// ioctls, CBT blocks, excused errors), by metric name. A passing run
    /// whose counts are all zero checked nothing.
    pub fn coverage(&self) -> impl Iterator<Item = (&str, f64)> {
        self.metrics
            .iter()
            .filter(|(name, _)| is_coverage_metric(name))
            .map(|(name, value)| (name.as_str(), *value))
    }

    /// Wall-clock seconds taken, from the `wall_ms` metric; 0 when absent or not meaningful.
    pub fn wall_seconds(&self) -> f64 {
        match self.metric("wall_ms") {
            Some(ms) if ms.is_finite() && ms > 0.0 => ms / 1000.0,
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunReport {
        let mut report = RunReport::new("0.1.0", "scenarios");
        let mut ok = ScenarioRun::new("ok", "scenarios/ok.ron", 1);
        ok.metrics.insert("cow_chunks".into(), 3.0);
        let mut bad = ScenarioRun::new("bad", "scenarios/bad.ron", 2);
        bad.verdict = Verdict::Fail;
        bad.failures.push(Failure {
            checker: "point_in_time".into(),
            message: "wrong data".into(),
            at_ns: Some(5),
            category: Default::default(),
        });
        let mut broken = ScenarioRun::new("broken", "scenarios/broken.ron", 3);
        broken.verdict = Verdict::Error;
        report.runs = vec![ok, bad, broken];
        report
    }

    #[test]
    fn counts() {
        let r = sample();
        assert_eq!((r.passed(), r.failed(), r.errored()), (1, 1, 1));
        assert!(!r.all_passed());
        assert!(RunReport::new("v", "s").all_passed());
    }

    #[test]
    fn json_round_trip() {
        let r = sample();
        let text = r.to_json().expect("finite metrics serialise");
        assert!(text.contains("\"verdict\": \"fail\""));
        assert_eq!(RunReport::from_json(&text).expect("reads back"), r);
    }

    /// A bug scenario's catch survives the JSON round trip; runs without
    /// one write no `caught_by` key, so older readers see the same layout.
    #[test]
    fn caught_by_round_trip() {
        let mut r = sample();
        let text = r.to_json().expect("serialises");
        assert!(!text.contains("caught_by"), "{text}");
        r.runs[0].caught_by = Some(Failure {
            checker: "point_in_time".into(),
            message: "read 0x21".into(),
            at_ns: Some(7),
            category: Category::Expected,
        });
        let text = r.to_json().expect("serialises");
        assert!(text.contains("\"caught_by\""), "{text}");
        assert_eq!(RunReport::from_json(&text).expect("reads back"), r);
        assert_eq!(r.caught(), 1);
        assert_eq!(
            r.runs[0].caught().map(|f| f.message.as_str()),
            Some("read 0x21")
        );
        // A failed run caught nothing, whatever it carries.
        r.runs[0].verdict = Verdict::Fail;
        assert_eq!(r.caught(), 0);
        // An older report: no caught_by, but the failure's category says it.
        let mut old = sample();
        old.runs[0].failures.push(Failure {
            checker: "expect".into(),
            message: "step 2 failed".into(),
            at_ns: None,
            category: Category::Expected,
        });
        assert_eq!(
            old.runs[0].caught().map(|f| f.checker.as_str()),
            Some("expect")
        );
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        for text in ["", "{", "[]", "{\"tool_version\": 1}", "null"] {
            let err = RunReport::from_json(text).expect_err("must be rejected");
            assert!(err.to_string().starts_with("run report JSON:"), "{err}");
        }
    }

    #[test]
    fn unknown_verdict_is_rejected() {
        let mut text = sample().to_json().expect("serialises");
        text = text.replace("\"fail\"", "\"flaky\"");
        assert!(RunReport::from_json(&text).is_err());
    }

    #[test]
    fn missing_optional_fields_default() {
        let text = r#"{"tool_version":"v","suite":"s","runs":[{"name":"n","path":"p",
            "seed":7,"digest":"ab","verdict":"pass","replay":"r","virtual_ns":1,"steps":2,
            "events":3}]}"#;
        let r = RunReport::from_json(text).expect("optional fields may be absent");
        assert!(r.runs[0].metrics.is_empty() && r.runs[0].failures.is_empty());
    }

    #[test]
    fn non_finite_metric_is_refused_when_writing() {
        let mut r = sample();
        r.runs[0].metrics.insert("ratio".into(), f64::NAN);
        match r.to_json() {
            Err(ReportError::NonFiniteMetric { scenario, metric }) => {
                assert_eq!((scenario.as_str(), metric.as_str()), ("ok", "ratio"));
            }
            other => panic!("expected NonFiniteMetric, got {other:?}"),
        }
    }

    #[test]
    fn metric_name_sets() {
        let mut r = sample();
        r.runs[1].metrics.insert("cow_chunks".into(), 1.0);
        r.runs[1].metrics.insert("image_reads".into(), 1.0);
        assert_eq!(
            r.metric_names().into_iter().collect::<Vec<_>>(),
            ["cow_chunks", "image_reads"]
        );
        assert!(
            r.common_metric_names().is_empty(),
            "run `broken` has no metrics"
        );
        r.runs.pop();
        assert_eq!(
            r.common_metric_names().into_iter().collect::<Vec<_>>(),
            ["cow_chunks"]
        );
    }

    #[test]
    fn wall_seconds() {
        let mut run = ScenarioRun::new("n", "p", 0);
        assert_eq!(run.wall_seconds(), 0.0);
        run.metrics.insert("wall_ms".into(), 1500.0);
        assert_eq!(run.wall_seconds(), 1.5);
        run.metrics.insert("wall_ms".into(), f64::NAN);
        assert_eq!(run.wall_seconds(), 0.0);
    }

    /// Every rendering and the JSON carry each failure's category.
    #[test]
    fn categories_reach_every_rendering() {
        let mut r = sample();
        r.runs[1].failures[0].category = Category::DeclaredFault;
        r.runs[1].failures.push(Failure {
            checker: "storage".into(),
            message: "overlap".into(),
            at_ns: None,
            category: Category::Engine,
        });
        let json = r.to_json().expect("serialises");
        assert!(json.contains("\"category\": \"declared_fault\""), "{json}");
        assert!(json.contains("\"category\": \"engine\""), "{json}");
        assert_eq!(RunReport::from_json(&json).expect("reads back"), r);
        let renderings = [
            ("junit", crate::render_junit(&r)),
            ("markdown", crate::render_markdown(&r, None)),
            ("html", crate::render_html(&r, None)),
        ];
        for (name, text) in renderings {
            assert!(
                text.contains("[point_in_time, caused by a declared fault]"),
                "{name}: {text}"
            );
            assert!(text.contains("[storage, engine failure]"), "{name}: {text}");
        }
        assert_eq!(Category::Expected.to_string(), "expected outcome");
    }
}
