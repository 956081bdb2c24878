//! A single self-contained HTML page: summary, results table, charts, failures and, when a
//! baseline is given, the regressions.
//!
//! The page needs nothing beside itself (inline CSS and SVG, no scripts, no external links) so
//! it can be archived as a CI artifact and opened years later. It is also well-formed XML
//! (every element closed, everything escaped), which lets the tests check its structure with an
//! XML parser rather than by string matching.

use std::fmt::Write as _;

use crate::baseline::{Change, Comparison, MetricDelta};
use crate::model::{RunReport, ScenarioRun, Verdict};
use crate::svg::{render_bar_chart, Bar, BarChart};
use crate::text::{self, xml_attr, xml_text as esc};

const STYLE: &str = "\
body{font-family:sans-serif;margin:2em;color:#222;max-width:70em}\
table{border-collapse:collapse;margin:1em 0}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
td.num{text-align:right;font-variant-numeric:tabular-nums}\
tr.fail td,tr.error td{background:#fdecea}\
.pass{color:#1a7f37}.fail,.error,.regression{color:#c62828;font-weight:bold}\
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;white-space:pre-wrap}\
figure{margin:1em 0}";

/// Renders `report` (and, when given, its comparison with a baseline) as an HTML page.
pub fn render_html(report: &RunReport, comparison: Option<&Comparison>) -> String {
    let title = format!("blksnap-sim report: {}", report.suite);
    let mut out = String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n");
    let _ = writeln!(
        out,
        "<meta charset=\"utf-8\"/>\n<title>{}</title>",
        esc(&title)
    );
    let _ = writeln!(out, "<style>{STYLE}</style>\n</head>\n<body>");
    let _ = writeln!(out, "<h1>{}</h1>", esc(&title));
    summary(&mut out, report, comparison);
    table(&mut out, report);
    charts(&mut out, report);
    failures(&mut out, report);
    if let Some(c) = comparison {
        regressions(&mut out, c);
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn summary(out: &mut String, report: &RunReport, comparison: Option<&Comparison>) {
    let _ = write!(
        out,
        "<p class=\"summary\"><strong>{} passed, {} failed</strong>, {} could not be loaded \
         ({}, tool {})",
        report.passed(),
        report.failed(),
        report.errored(),
        text::count(report.runs.len(), "run"),
        esc(&report.tool_version),
    );
    if let Some(c) = comparison {
        let n = c.regressions().count();
        let class = if n > 0 { "regression" } else { "pass" };
        let _ = write!(
            out,
            "; <span class=\"{class}\">{}</span> against the baseline",
            text::count(n, "regression")
        );
    }
    out.push_str(".</p>\n");
}

fn table(out: &mut String, report: &RunReport) {
    out.push_str("<h2>Scenarios</h2>\n");
    if report.runs.is_empty() {
        out.push_str("<p>No scenarios were run.</p>\n");
        return;
    }
    let metrics = report.metric_names();
    out.push_str("<table>\n<thead><tr><th>Scenario</th><th>Verdict</th><th>Seed</th>");
    out.push_str("<th>Digest</th><th>Virtual time</th><th>Steps</th><th>Events</th>");
    for m in &metrics {
        let _ = write!(out, "<th>{}</th>", esc(m));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for (i, run) in report.runs.iter().enumerate() {
        row(out, i, run, &metrics);
    }
    out.push_str("</tbody>\n</table>\n");
}

fn row(
    out: &mut String,
    index: usize,
    run: &ScenarioRun,
    metrics: &std::collections::BTreeSet<&str>,
) {
    let v = run.verdict.as_str();
    // Failed runs link to their entry in the failures section.
    let name = if run.verdict == Verdict::Pass {
        esc(&run.name)
    } else {
        format!("<a href=\"#run-{index}\">{}</a>", esc(&run.name))
    };
    let _ = write!(
        out,
        "<tr class=\"{v}\"><td title=\"{}\">{name}</td><td class=\"{v}\">{v}</td>\
         <td class=\"num\">{}</td><td title=\"{}\"><code>{}</code></td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td>",
        xml_attr(&run.path),
        run.seed,
        xml_attr(&run.digest),
        esc(&text::short_digest(&run.digest)),
        text::duration_ns(run.virtual_ns),
        run.steps,
        run.events,
    );
    for m in metrics {
        let value = run.metric(m).map_or_else(|| "–".to_string(), text::number);
        let _ = write!(out, "<td class=\"num\">{value}</td>");
    }
    out.push_str("</tr>\n");
}

/// Virtual time, then every metric all runs share (a metric only some runs have would make
/// the missing bars look like zeros).
fn charts(out: &mut String, report: &RunReport) {
    if report.runs.is_empty() {
        return;
    }
    out.push_str("<h2>Charts</h2>\n");
    let mut time = BarChart::new("Virtual time per scenario", "virtual time (ns)");
    for run in &report.runs {
        // u64 -> f64 is exact below 2^53 ns, far beyond any simulated run.
        time.push(
            run.name.clone(),
            run.virtual_ns as f64,
            text::duration_ns(run.virtual_ns),
        );
    }
    figure(out, &time);
    for metric in report.common_metric_names() {
        let mut chart = BarChart::new(format!("{metric} per scenario"), metric);
        for run in &report.runs {
            let v = run.metric(metric).unwrap_or(f64::NAN);
            chart.push(run.name.clone(), v, text::number(v));
        }
        figure(out, &chart);
    }
}

fn figure(out: &mut String, chart: &BarChart) {
    let _ = write!(out, "<figure>\n{}</figure>\n", render_bar_chart(chart));
}

fn failures(out: &mut String, report: &RunReport) {
    let failed = report
        .runs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.verdict != Verdict::Pass);
    let mut any = false;
    for (index, run) in failed {
        if !any {
            out.push_str("<h2>Failures</h2>\n");
            any = true;
        }
        failure(out, index, run);
    }
}

fn failure(out: &mut String, index: usize, run: &ScenarioRun) {
    let v = run.verdict.as_str();
    let _ = writeln!(
        out,
        "<section id=\"run-{index}\">\n<h3>{} <span class=\"{v}\">({v})</span></h3>",
        esc(&run.name)
    );
    let _ = writeln!(
        out,
        "<p>Scenario <code>{}</code>, seed <code>{}</code>, digest <code>{}</code>.</p>",
        esc(&run.path),
        run.seed,
        esc(&run.digest),
    );
    out.push_str("<pre>");
    for f in &run.failures {
        let at = f
            .at_ns
            .map(|ns| format!(" at {}", text::duration_ns(ns)))
            .unwrap_or_default();
        let _ = writeln!(out, "[{}]{at}: {}", esc(&f.label()), esc(&f.message));
    }
    if run.failures.is_empty() {
        let _ = writeln!(out, "scenario {v} without a checker message");
    }
    out.push_str("</pre>\n<p>Replay:</p>\n");
    let _ = writeln!(
        out,
        "<pre><code>{}</code></pre>\n</section>",
        esc(&run.replay)
    );
}

fn regressions(out: &mut String, c: &Comparison) {
    let _ = writeln!(
        out,
        "<h2>Comparison with baseline <code>{}</code></h2>\n<h3>Regressions</h3>",
        esc(&c.baseline_version)
    );
    change_list(out, c.regressions(), "No regressions.");
    out.push_str("<h3>Other changes</h3>\n");
    change_list(out, c.informational(), "None.");
    delta_chart(out, &c.deltas);
}

fn change_list<'a>(out: &mut String, changes: impl Iterator<Item = &'a Change>, none: &str) {
    let items: Vec<String> = changes
        .map(|ch| {
            let class = if ch.is_regression() {
                " class=\"regression\""
            } else {
                ""
            };
            format!(
                "<li><code>{}</code>: <span{class}>{}</span></li>",
                esc(&ch.scenario),
                esc(&ch.kind.to_string())
            )
        })
        .collect();
    if items.is_empty() {
        let _ = writeln!(out, "<p>{none}</p>");
    } else {
        let _ = writeln!(out, "<ul>\n{}\n</ul>", items.join("\n"));
    }
}

/// Only metrics that moved are plotted: unchanged ones would be rows of empty bars.
fn delta_chart(out: &mut String, deltas: &[MetricDelta]) {
    let mut chart = BarChart::new("Metric change against baseline", "change (%)");
    for d in deltas.iter().filter(|d| d.relative() != 0.0) {
        let rel = d.relative();
        let text = if rel.is_finite() {
            text::percent(rel)
        } else {
            format!("from 0 to {}", text::number(d.current))
        };
        chart.bars.push(Bar {
            label: format!("{} · {}", d.scenario, d.metric),
            value: rel * 100.0,
            text,
            highlight: d.regression,
        });
    }
    if chart.bars.is_empty() {
        out.push_str("<p>No compared metric changed.</p>\n");
    } else {
        figure(out, &chart);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::{compare, Tolerance};
    use crate::model::Failure;

    fn report() -> RunReport {
        let mut r = RunReport::new("0.1.0", "scen<arios>");
        let mut a = ScenarioRun::new("a<b&\"c\"'", "scenarios/a.ron", 1);
        a.digest = "feedfacecafebeef".into();
        a.virtual_ns = 2_000_000;
        a.metrics.insert("cow_chunks".into(), 4.0);
        a.metrics.insert("only_here".into(), 1.0);
        let mut b = ScenarioRun::new("b", "scenarios/b.ron", 2);
        b.verdict = Verdict::Fail;
        b.virtual_ns = 1_000_000;
        b.replay = "blksnap-sim run scenarios/b.ron --seed 2 </dev/null".into();
        b.metrics.insert("cow_chunks".into(), 8.0);
        b.failures.push(Failure {
            checker: "expect".into(),
            message: "errno <EINVAL> & \u{7}bell".into(),
            at_ns: Some(10),
            category: Default::default(),
        });
        r.runs = vec![a, b];
        r
    }

    fn parse(html: &str) -> roxmltree::Document<'_> {
        let opts = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..roxmltree::ParsingOptions::default()
        };
        roxmltree::Document::parse_with_options(html, opts)
            .unwrap_or_else(|e| panic!("not well-formed: {e}\n{html}"))
    }

    fn texts<'a>(doc: &'a roxmltree::Document<'a>, tag: &str) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name(tag))
            .map(|n| {
                n.descendants()
                    .filter(|d| d.is_text())
                    .filter_map(|d| d.text())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn well_formed_and_self_contained() {
        let r = report();
        let c = compare(&r, &r, &Tolerance::default());
        let html = render_html(&r, Some(&c));
        let doc = parse(&html);
        assert_eq!(doc.root_element().tag_name().name(), "html");
        for tag in ["script", "link", "img", "iframe"] {
            assert!(
                !doc.descendants().any(|n| n.has_tag_name(tag)),
                "{tag} found"
            );
        }
        // The SVG namespace is a name, not a fetched resource; nothing else may point outside.
        let rest = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!rest.contains("http:") && !rest.contains("https:") && !rest.contains("url("));
    }

    #[test]
    fn summary_table_and_escaping() {
        let html = render_html(&report(), None);
        let doc = parse(&html);
        assert_eq!(texts(&doc, "title")[0], "blksnap-sim report: scen<arios>");
        let summary = &texts(&doc, "p")[0];
        assert!(
            summary.starts_with("1 passed, 1 failed, 0 could not be loaded (2 runs"),
            "{summary}"
        );
        let rows = doc.descendants().filter(|n| n.has_tag_name("tr")).count();
        assert_eq!(rows, 3, "header and two runs");
        let cells = texts(&doc, "td");
        assert_eq!(cells[0], "a<b&\"c\"'");
        assert!(cells.contains(&"feedfacecafe".to_string()));
        assert!(cells.contains(&"2.000 ms".to_string()));
        assert!(cells.contains(&"–".to_string()), "absent metric is a dash");
    }

    #[test]
    fn charts_for_time_and_common_metrics() {
        let html = render_html(&report(), None);
        let doc = parse(&html);
        let svgs: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("svg"))
            .collect();
        let labels: Vec<_> = svgs
            .iter()
            .filter_map(|s| s.attribute("aria-label"))
            .collect();
        assert_eq!(
            labels,
            ["Virtual time per scenario", "cow_chunks per scenario"]
        );
        let bars = svgs[0]
            .descendants()
            .filter(|n| n.has_tag_name("rect"))
            .count();
        assert_eq!(bars, 2);
    }

    #[test]
    fn failures_section() {
        let html = render_html(&report(), None);
        let doc = parse(&html);
        let section = doc
            .descendants()
            .find(|n| n.attribute("id") == Some("run-1"))
            .expect("failure anchor");
        let text: String = section
            .descendants()
            .filter(|d| d.is_text())
            .filter_map(|d| d.text())
            .collect();
        assert!(
            text.contains("[expect, engine failure] at 10 ns: errno <EINVAL> & bell"),
            "{text}"
        );
        assert!(text.contains("blksnap-sim run scenarios/b.ron --seed 2 </dev/null"));
        let link = doc
            .descendants()
            .find(|n| n.attribute("href") == Some("#run-1"));
        assert!(link.is_some(), "table links to the failure");
    }

    #[test]
    fn regression_is_shown_with_delta_chart() {
        let base = report();
        let mut cur = report();
        cur.runs[0].metrics.insert("cow_chunks".into(), 40.0);
        let c = compare(&cur, &base, &Tolerance::default());
        let html = render_html(&cur, Some(&c));
        let doc = parse(&html);
        let items = texts(&doc, "li");
        assert_eq!(items.len(), 1);
        assert!(items[0].starts_with("a<b&\"c\"': metric cow_chunks regressed: 4 -> 40"));
        let delta = doc
            .descendants()
            .find(|n| n.attribute("aria-label") == Some("Metric change against baseline"))
            .expect("delta chart");
        let red = delta
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some("#d62728"))
            .count();
        assert_eq!(red, 1);
    }

    #[test]
    fn unchanged_comparison_has_no_delta_chart() {
        let r = report();
        let c = compare(&r, &r, &Tolerance::default());
        let html = render_html(&r, Some(&c));
        assert!(html.contains("No regressions."));
        assert!(html.contains("No compared metric changed."));
    }

    #[test]
    fn empty_report() {
        let html = render_html(&RunReport::new("v", "s"), None);
        let doc = parse(&html);
        assert!(texts(&doc, "p")
            .iter()
            .any(|p| p == "No scenarios were run."));
        assert!(!html.contains("<svg"));
    }

    #[test]
    fn deterministic() {
        let base = report();
        let mut cur = report();
        cur.runs[1].metrics.insert("cow_chunks".into(), 1.0);
        let c = compare(&cur, &base, &Tolerance::default());
        let first = render_html(&cur, Some(&c));
        for _ in 0..3 {
            assert_eq!(render_html(&cur.clone(), Some(&c.clone())), first);
        }
    }
}
