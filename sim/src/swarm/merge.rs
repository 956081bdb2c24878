//! `blksnap-sim merge`: the run reports of several shards (`sweep --json`
//! or `run --json` with `--partition`) as one report, in the order one
//! unsharded run would have written it, and optionally compared with a
//! baseline.

use std::collections::BTreeSet;
use std::path::PathBuf;

use blksnap_reports::RunReport;

use crate::console::{say_line, warn};
use crate::suite::{exit_code, write_outputs, Outputs};

pub struct MergeArgs {
    pub inputs: Vec<PathBuf>,
    pub json: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub baseline: Option<PathBuf>,
}

/// The shards as one report; an error names the shard at fault.
pub fn merge(inputs: &[PathBuf]) -> Result<RunReport, String> {
    let mut merged: Option<RunReport> = None;
    let mut seen = BTreeSet::new();
    for path in inputs {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let shard = RunReport::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for run in &shard.runs {
            // Two shards that ran the same file at the same seed overlap:
            // the merged counts would be wrong.
            if !seen.insert((run.path.clone(), run.seed, run.name.clone())) {
                return Err(format!(
                    "{}: {} at seed {} is already in an earlier shard (overlapping partitions?)",
                    path.display(),
                    run.path,
                    run.seed
                ));
            }
        }
        match &mut merged {
            None => merged = Some(shard),
            Some(report) => {
                // One report, one kind of digest: a baseline compares them all.
                if report.digest_hash != shard.digest_hash {
                    return Err(format!(
                        "{}: its digests are {}, the first shard's {}",
                        path.display(),
                        shard.digest_hash,
                        report.digest_hash
                    ));
                }
                if report.tool_version != shard.tool_version {
                    warn(&format!(
                        "warning: {} was written by version {}, the first shard by {}",
                        path.display(),
                        shard.tool_version,
                        report.tool_version
                    ));
                }
                report.runs.extend(shard.runs);
            }
        }
    }
    let mut report = merged.ok_or("merge: no input file")?;
    report.schema_version = blksnap_reports::SCHEMA_VERSION;
    report
        .runs
        .sort_by(|a, b| (PathBuf::from(&a.path), a.seed).cmp(&(PathBuf::from(&b.path), b.seed)));
    Ok(report)
}

pub fn merge_command(args: &MergeArgs) -> i32 {
    let report = match merge(&args.inputs) {
        Ok(report) => report,
        Err(e) => {
            warn(&format!("error: {e}"));
            return 2;
        }
    };
    let outputs = Outputs {
        junit: args.junit.clone(),
        json: args.json.clone(),
        markdown: args.markdown.clone(),
        html: None,
        baseline: args.baseline.clone(),
    };
    let code = write_outputs(&report, &outputs);
    let failed = report.runs.len() - report.passed();
    say_line(&format!(
        "merged {} shard(s), {} runs",
        args.inputs.len(),
        report.runs.len()
    ));
    say_line(&format!("{} passed, {failed} failed", report.passed()));
    exit_code(report.errored() > 0 || code == 2, failed > 0 || code == 1)
}
