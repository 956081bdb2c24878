//! A fuzz input (a crash file of cargo-fuzz, most often) turned into a RON
//! scenario for `scenarios/regress/`, by one command:
//!
//! ```text
//! cargo run -p blksnap-fuzz --bin replay -- to-ron lifecycle CRASH --out scenarios/regress/NAME.ron
//! ```
//!
//! The scenario is the one the input makes the target run (for
//! `lifecycle`, the sanitized form when that is the run the target
//! judged), with the run's seed written into it, so that
//! `blksnap-sim run FILE` runs exactly what the fuzzer ran. The conversion
//! checks that itself: it parses the text it wrote, runs it as the CLI
//! would, and refuses to write a file whose run has another trace digest.
//! A header comment says where the scenario came from, how the run ended
//! when it was written, and the replay command.
//!
//! Only the targets that run a scenario have one: `ioctl_args` builds
//! argument structs and pointers no scenario step can express, and a
//! `scenario_parse` input is text that does not load; their inputs go to
//! `fuzz/corpus/<target>/regress-*` as they are.

use std::fmt::Write;
use std::path::Path;

use blksnap_sim::scenario::{self, Outcome, RunOptions, Scenario};

use crate::{lifecycle, scenario_run};

/// What a conversion produced.
pub struct Converted {
    /// The scenario file, header included.
    pub text: String,
    /// The run of the written file: its digest and failures.
    pub outcome: Outcome,
    /// Snapshot names the file had to declare (see `blksnap_sim::swarm::declare`); when
    /// there are some, the digest is not the fuzzer's run's.
    pub declared: Vec<String>,
}

/// Convert `data`, an input of `target`; `source` names it in the header.
pub fn to_ron(target: &str, data: &[u8], source: &str) -> Result<Converted, String> {
    let (scenario, how) = match (target, lifecycle::features_of(target)) {
        (_, Some(features)) => lifecycle_scenario(features, data)?,
        ("scenario_run", None) => scenario_run_scenario(data)?,
        ("ioctl_args" | "scenario_parse", None) => {
            return Err(format!(
                "to-ron: a '{target}' input is no scenario ({}); keep it as \
                 fuzz/corpus/{target}/regress-NAME instead",
                if target == "ioctl_args" {
                    "its ioctl arguments and pointers cannot be written as steps"
                } else {
                    "it is text that the loader must reject or accept"
                }
            ))
        }
        (other, None) => return Err(format!("to-ron: unknown target '{other}'")),
    };
    let header = Header {
        target,
        source,
        bytes: data.len(),
        how,
    };
    write_scenario(&scenario, &header)
}

/// Where a scenario came from, for its header comment.
pub struct Header<'a> {
    pub target: &'a str,
    pub source: &'a str,
    pub bytes: usize,
    /// A note on how the scenario was made from the input.
    pub how: &'static str,
}

/// The scenario as RON with `header`, checked to run as `scenario` runs
/// under its own seed: same digest and failures, or, if the file had to
/// declare snapshots (see `blksnap_sim::swarm::declare`), the same failures.
pub fn write_scenario(scenario: &Scenario, header: &Header) -> Result<Converted, String> {
    let options = RunOptions::default();
    let expected = scenario::run(scenario, &options);
    let (file, declared) =
        blksnap_sim::swarm::declare::loadable(scenario).map_err(|e| format!("to-ron: {e}"))?;
    // The shrinker's writer spells out every field and checks that the
    // text loads; its own header line gives way to ours.
    let written = blksnap_sim::shrink::to_text(&file).map_err(|e| format!("to-ron: {e}"))?;
    let body = match written.split_once('\n') {
        Some((first, rest)) if first.starts_with("//") => rest,
        _ => written.as_str(),
    };
    let text = format!("{}{body}", header_text(header, &expected, &declared));
    let parsed = scenario::parse(Path::new("fuzz-to-ron.ron"), &text)
        .map_err(|e| format!("to-ron: the written scenario does not load: {e}"))?;
    let outcome = scenario::run(&parsed, &options);
    let same = if declared.is_empty() {
        outcome.digest == expected.digest && outcome.failures == expected.failures
    } else {
        verdicts(&outcome) == verdicts(&expected)
    };
    if !same {
        return Err(format!(
            "to-ron: the written scenario runs differently (digest {} vs {}; failures {:?} vs {:?})",
            outcome.digest,
            expected.digest,
            verdicts(&outcome),
            verdicts(&expected)
        ));
    }
    Ok(Converted {
        text,
        outcome,
        declared,
    })
}

/// Each failure's checker and message (not its time).
fn verdicts(outcome: &Outcome) -> Vec<(&str, &str)> {
    outcome
        .failures
        .iter()
        .map(|f| (f.checker.as_str(), f.message.as_str()))
        .collect()
}

/// The comment at the top: source, verdict when written, replay command.
fn header_text(header: &Header, outcome: &Outcome, declared: &[String]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "// Regression scenario from a `{}` fuzz input: {} ({} bytes).",
        header.target,
        one_line(header.source),
        header.bytes
    );
    let _ = writeln!(
        text,
        "// Written by `cargo run -p blksnap-fuzz --bin replay -- to-ron {} {}`; {}.",
        header.target,
        one_line(header.source),
        header.how
    );
    if outcome.failures.is_empty() {
        let _ = writeln!(
            text,
            "// When written, the run passed (seed {}, digest {}).",
            outcome.seed, outcome.digest
        );
    } else {
        let _ = writeln!(
            text,
            "// When written, the run failed (seed {}, digest {}):",
            outcome.seed, outcome.digest
        );
        for failure in outcome.failures.iter().take(MAX_HEADER_FAILURES) {
            let _ = writeln!(
                text,
                "//   [{}] {}",
                failure.checker,
                one_line(&failure.message)
            );
        }
        if outcome.failures.len() > MAX_HEADER_FAILURES {
            let more = outcome.failures.len() - MAX_HEADER_FAILURES;
            let _ = writeln!(text, "//   ... and {more} more");
        }
    }
    if !declared.is_empty() {
        let _ = writeln!(
            text,
            "// The input used snapshot(s) {declared:?} it never creates; the Repeat(times: 0) at \
             the end declares them for the loader, so the trace digest differs from the fuzzer's \
             run (the failures do not)."
        );
    }
    let _ = writeln!(
        text,
        "// Replay: cargo run --release -p blksnap-sim -- run THIS_FILE"
    );
    text
}

const MAX_HEADER_FAILURES: usize = 5;
/// Longest failure message kept in the header.
const MAX_HEADER_CHARS: usize = 300;

/// `text` safe inside a `//` comment: one line, control characters
/// escaped, bounded.
fn one_line(text: &str) -> String {
    let mut out: String = text.chars().flat_map(char::escape_debug).collect();
    if out.chars().count() > MAX_HEADER_CHARS {
        out = out.chars().take(MAX_HEADER_CHARS).collect();
        out.push_str("...");
    }
    out
}

/// The scenario a lifecycle target (`lifecycle`, `lifecycle_everything`:
/// their generator `features`) judged, with its seed.
fn lifecycle_scenario(
    features: lifecycle::Features,
    data: &[u8],
) -> Result<(Scenario, &'static str), String> {
    let (scenario, seed) = lifecycle::build_with(data, features, lifecycle::Scale::Farm)
        .ok_or("to-ron: the input decodes to no scenario")?;
    let (mut judged, how) = match lifecycle::judge(&scenario, seed) {
        Some((judged, _)) => (judged, "the scenario the target judged failing"),
        None => (scenario, "the input passes: its scenario as generated"),
    };
    judged.seed = seed;
    Ok((judged, how))
}

/// The `scenario_run` text as loaded, with what the target overrides
/// (no quirk, so no expected failure either) written in. The target's
/// small work budget is not part of a scenario: a run that failed only
/// by going over it runs on under the CLI's default budget.
fn scenario_run_scenario(data: &[u8]) -> Result<(Scenario, &'static str), String> {
    let text = scenario_run::text_of(data);
    let mut loaded = scenario::parse(Path::new(scenario_run::FILE), &text)
        .map_err(|e| format!("to-ron: the input's scenario does not load: {e}"))?;
    loaded.quirks.clear();
    loaded.expect_failure = None;
    Ok((
        loaded,
        "quirks and expect_failure cleared as the target runs it; its work budget is the CLI's",
    ))
}
