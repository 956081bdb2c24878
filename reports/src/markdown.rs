//! Markdown summary, for pull-request comments and CI job summaries (GitHub-flavoured tables).
//!
//! Text that came from a scenario goes into code spans or fenced blocks sized to whatever
//! backticks it contains, so a hostile name can neither break the table nor inject markup.

use std::fmt::Write as _;

use crate::baseline::Comparison;
use crate::model::{RunReport, ScenarioRun, Verdict};
use crate::text;

/// Renders `report` (and, when given, its comparison with a baseline) as Markdown.
pub fn render_markdown(report: &RunReport, comparison: Option<&Comparison>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# blksnap-sim report: {}\n", code(&report.suite));
    let _ = writeln!(out, "{}\n", summary_line(report, comparison));
    table(&mut out, report);
    failures(&mut out, report);
    caught(&mut out, report);
    if let Some(c) = comparison {
        changes(&mut out, c);
    }
    out
}

fn summary_line(report: &RunReport, comparison: Option<&Comparison>) -> String {
    let mut line = format!(
        "**{} passed, {} failed**, {} could not be loaded, {} caught ({}, tool {})",
        report.passed(),
        report.failed(),
        report.errored(),
        text::count(report.caught(), "expected failure"),
        text::count(report.runs.len(), "run"),
        code(&report.tool_version),
    );
    if let Some(c) = comparison {
        let n = c.regressions().count();
        let _ = write!(
            line,
            "; {} against the baseline",
            text::count(n, "regression")
        );
    }
    line.push('.');
    line
}

fn table(out: &mut String, report: &RunReport) {
    if report.runs.is_empty() {
        out.push_str("No scenarios were run.\n\n");
        return;
    }
    let metrics = report.metric_names();
    let mut header =
        String::from("| Scenario | Verdict | Seed | Digest | Virtual time | Steps | Events |");
    let mut rule = String::from("|---|---|---:|---|---:|---:|---:|");
    for m in &metrics {
        let _ = write!(header, " {} |", cell(&code(m)));
        rule.push_str("---:|");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for run in &report.runs {
        let _ = write!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            cell(&code(&run.name)),
            verdict(run),
            run.seed,
            cell(&code(&text::short_digest(&run.digest))),
            text::duration_ns(run.virtual_ns),
            run.steps,
            run.events,
        );
        for m in &metrics {
            let v = run.metric(m).map_or_else(|| "–".to_string(), text::number);
            let _ = write!(out, " {v} |");
        }
        out.push('\n');
    }
    out.push('\n');
}

/// A bug scenario's pass names the checker that caught it, so the table
/// never shows a bare "pass" for a quirk the bench was meant to catch.
fn verdict(run: &ScenarioRun) -> String {
    match (run.verdict, run.caught()) {
        (Verdict::Pass, Some(f)) => format!("pass (caught by {})", cell(&code(&f.checker))),
        (Verdict::Pass, None) => "pass".into(),
        (Verdict::Fail, _) => "**FAIL**".into(),
        (Verdict::Error, _) => "**ERROR**".into(),
    }
}

fn failures(out: &mut String, report: &RunReport) {
    let failed: Vec<_> = report
        .runs
        .iter()
        .filter(|r| r.verdict != Verdict::Pass)
        .collect();
    if failed.is_empty() {
        return;
    }
    out.push_str("## Failures\n\n");
    for run in failed {
        failure(out, run);
    }
}

fn failure(out: &mut String, run: &ScenarioRun) {
    let _ = writeln!(out, "### {} ({})\n", code(&run.name), run.verdict);
    let _ = writeln!(
        out,
        "Scenario {}, seed {}, digest {}.\n",
        code(&run.path),
        code(&run.seed.to_string()),
        code(&run.digest),
    );
    let mut messages = String::new();
    for f in &run.failures {
        let at = f
            .at_ns
            .map(|ns| format!(" at {}", text::duration_ns(ns)))
            .unwrap_or_default();
        let _ = writeln!(messages, "[{}]{at}: {}", f.label(), f.message);
    }
    if messages.is_empty() {
        messages = format!("scenario {} without a checker message\n", run.verdict);
    }
    fenced(out, "text", &messages);
    out.push_str("Replay:\n\n");
    fenced(out, "sh", &run.replay);
}

/// The bug scenarios whose quirk a checker caught: which checker, what it
/// said, and how to replay it.
fn caught(out: &mut String, report: &RunReport) {
    let caught: Vec<_> = report
        .runs
        .iter()
        .filter_map(|r| r.caught().map(|f| (r, f)))
        .collect();
    if caught.is_empty() {
        return;
    }
    out.push_str(
        "## Expected failures caught

",
    );
    for (run, f) in caught {
        let at = f
            .at_ns
            .map(|ns| format!(" at {}", text::duration_ns(ns)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "- {} ({}, seed {}, digest {}): caught by {}{at}: {}",
            code(&run.name),
            code(&run.path),
            code(&run.seed.to_string()),
            code(&text::short_digest(&run.digest)),
            code(&f.label()),
            inline(&f.message),
        );
    }
    out.push('\n');
}

fn changes(out: &mut String, c: &Comparison) {
    let _ = writeln!(
        out,
        "## Regressions against baseline {}\n",
        code(&c.baseline_version)
    );
    change_list(out, c.regressions(), "No regressions.");
    out.push_str("### Other changes\n\n");
    change_list(out, c.informational(), "None.");
}

fn change_list<'a>(
    out: &mut String,
    changes: impl Iterator<Item = &'a crate::baseline::Change>,
    none: &str,
) {
    let mut any = false;
    for change in changes {
        any = true;
        let _ = writeln!(
            out,
            "- {}: {}",
            code(&change.scenario),
            inline(&change.kind.to_string())
        );
    }
    if !any {
        out.push_str(none);
        out.push('\n');
    }
    out.push('\n');
}

/// An inline code span that survives any content: the fence is one backtick longer than the
/// longest run inside, and padded when the content touches a backtick (CommonMark rules).
fn code(s: &str) -> String {
    let s = one_line(s);
    if s.is_empty() {
        return "(empty)".to_string();
    }
    let fence = "`".repeat(longest_backtick_run(&s) + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

/// Makes inline content safe inside a table cell: GFM splits cells on `|` even inside code
/// spans, and a backslash-escaped pipe is the documented way to keep it.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// Escapes the characters that would start Markdown or HTML markup in running text.
fn inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in one_line(s).chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '&' | '#' | '~'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Inline contexts cannot hold line breaks; control characters would garble a terminal.
fn one_line(s: &str) -> String {
    text::clean(s).replace(['\n', '\r', '\t'], " ")
}

fn fenced(out: &mut String, lang: &str, body: &str) {
    let body = text::clean(body);
    let fence = "`".repeat(longest_backtick_run(&body).max(2) + 1);
    let _ = writeln!(
        out,
        "{fence}{lang}\n{}\n{fence}\n",
        body.trim_end_matches('\n')
    );
}

fn longest_backtick_run(s: &str) -> usize {
    s.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::{compare, Tolerance};
    use crate::model::Failure;

    fn report() -> RunReport {
        let mut r = RunReport::new("0.1.0", "scenarios");
        let mut ok = ScenarioRun::new("take-destroy", "scenarios/basic/take.ron", 7);
        ok.digest = "0123456789abcdef0123".into();
        ok.virtual_ns = 1_500_000;
        ok.steps = 40;
        ok.events = 90;
        ok.metrics.insert("cow_chunks".into(), 12.0);
        let mut bad = ScenarioRun::new("a|b`c", "scenarios/bugs/x.ron", 9);
        bad.verdict = Verdict::Fail;
        bad.replay = "blksnap-sim run scenarios/bugs/x.ron --seed 9 # ```".into();
        bad.failures.push(Failure {
            checker: "point_in_time".into(),
            message: "sector 8 differs\nexpected 0xaa".into(),
            at_ns: Some(2_000),
            category: Default::default(),
        });
        r.runs = vec![ok, bad];
        r
    }

    #[test]
    fn summary_and_table() {
        let md = render_markdown(&report(), None);
        assert!(md.contains(
            "**1 passed, 1 failed**, 0 could not be loaded, 0 expected failures caught (2 runs"
        ));
        assert!(md.contains(
            "| Scenario | Verdict | Seed | Digest | Virtual time | Steps | Events | `cow_chunks` |"
        ));
        assert!(
            md.contains("| `take-destroy` | pass | 7 | `0123456789ab` | 1.500 ms | 40 | 90 | 12 |")
        );
        assert!(md.contains("| ``a\\|b`c`` | **FAIL** | 9 |"), "{md}");
        assert!(md.contains(" – |"), "absent metric shown as a dash");
        assert!(!md.contains("Regressions"));
    }

    #[test]
    fn failure_section_has_messages_and_replay() {
        let md = render_markdown(&report(), None);
        assert!(md.contains("## Failures"));
        assert!(md.contains(
            "```text\n[point_in_time, engine failure] at 2.000 µs: sector 8 differs\nexpected 0xaa\n```"
        ));
        // The replay command contains three backticks, so the fence must be longer.
        assert!(md.contains("````sh\nblksnap-sim run scenarios/bugs/x.ron --seed 9 # ```\n````"));
        assert!(md.contains("seed `9`"));
    }

    #[test]
    fn passing_report_has_no_failure_section() {
        let mut r = report();
        r.runs.truncate(1);
        assert!(!render_markdown(&r, None).contains("## Failures"));
        let empty = render_markdown(&RunReport::new("v", "s"), None);
        assert!(empty.contains("No scenarios were run."));
    }

    /// A bug scenario's pass shows the checker and message that caught it,
    /// in the table, the summary and a section of its own.
    #[test]
    fn expected_failures_show_what_caught_them() {
        let mut r = report();
        let md = render_markdown(&r, None);
        assert!(!md.contains("## Expected failures caught"), "{md}");
        r.runs[1].verdict = Verdict::Pass;
        r.runs[1].caught_by = Some(Failure {
            checker: "point_in_time".into(),
            message: "sector 8 <differs>".into(),
            at_ns: Some(3_000),
            category: crate::model::Category::Expected,
        });
        let md = render_markdown(&r, None);
        assert!(md.contains(", 1 expected failure caught ("), "{md}");
        assert!(
            md.contains("| pass (caught by `point_in_time`) | 9 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "## Expected failures caught\n\n- ``a|b`c`` (`scenarios/bugs/x.ron`, seed `9`, \
                 digest (empty)): caught by `point_in_time, expected outcome` at 3.000 µs: \
                 sector 8 \\<differs\\>\n"
            ),
            "{md}"
        );
    }

    #[test]
    fn regressions_section() {
        let base = report();
        let mut cur = report();
        cur.runs[0].metrics.insert("cow_chunks".into(), 20.0);
        cur.runs[1].verdict = Verdict::Pass;
        let c = compare(&cur, &base, &Tolerance::default());
        let md = render_markdown(&cur, Some(&c));
        assert!(md.contains("; 1 regression against the baseline."));
        assert!(md.contains("## Regressions against baseline `0.1.0`"));
        assert!(
            md.contains("- `take-destroy`: metric cow\\_chunks regressed: 12 -\\> 20"),
            "{md}"
        );
        assert!(md.contains("### Other changes\n\n- ``a|b`c``: fixed: was fail, now pass"));
    }

    #[test]
    fn no_regressions_says_so() {
        let r = report();
        let c = compare(&r, &r, &Tolerance::default());
        let md = render_markdown(&r, Some(&c));
        assert!(md.contains("No regressions."));
        assert!(md.contains("### Other changes\n\nNone."));
    }

    #[test]
    fn code_spans() {
        assert_eq!(code("plain"), "`plain`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x`"), "`` `x` ``");
        assert_eq!(code("a\nb\u{1b}"), "`a b`");
        assert_eq!(code(""), "(empty)");
        assert_eq!(inline("a<b>*c*"), "a\\<b\\>\\*c\\*");
    }

    #[test]
    fn deterministic() {
        let r = report();
        let c = compare(&r, &r, &Tolerance::default());
        assert_eq!(
            render_markdown(&r, Some(&c)),
            render_markdown(&r.clone(), Some(&c.clone()))
        );
    }
}
