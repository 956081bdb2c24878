//! # blksnap-reports
//!
//! Plain data for the results of a blksnap-sim run ([`RunReport`]), renderers for the people
//! and machines that read them ([`render_junit`], [`render_markdown`], [`render_html`] with
//! inline SVG charts from [`render_bar_chart`]), and the comparison of a run with a stored
//! baseline ([`compare`]).
//!
//! ## Invariants
//!
//! - This crate knows nothing of `blksnap-core` or `blksnap-sim`: the simulator fills in a
//!   [`RunReport`]; everything here only reads it. That keeps the report format stable while
//!   the engine and the simulator change, and lets a baseline written by one version be read by
//!   the next.
//! - Rendering is deterministic: the same report (and comparison) always renders to the same
//!   bytes. There are no timestamps, no host names, no hash-map iteration order (metrics live
//!   in a `BTreeMap`) and no locale-dependent formatting, so rendered reports can be diffed and
//!   snapshot-tested.
//! - Text that came from a scenario (names, paths, checker messages, replay commands) is
//!   escaped for the output format, and characters XML 1.0 cannot carry are dropped, so no
//!   input can produce a malformed document.
//! - Nothing here panics on data read from files: [`RunReport::from_json`] returns a
//!   [`ReportError`].

pub mod baseline;
pub mod html;
pub mod junit;
pub mod markdown;
pub mod model;
pub mod series;
pub mod svg;
mod text;
pub mod timeplot;

pub use baseline::{
    compare, relative_change, Change, ChangeKind, Comparison, MetricDelta, Tolerance, VIRTUAL_NS,
};
pub use html::render_html;
pub use junit::render_junit;
pub use markdown::render_markdown;
pub use model::{
    Category, Failure, ReportError, RunReport, ScenarioRun, Verdict, DIGEST_HASH, SCHEMA_VERSION,
};
pub use series::{Line, Mark, Plot, TimeSeries, Window};
pub use svg::{render_bar_chart, Bar, BarChart};
pub use timeplot::{render_time_plot, render_timeline};
