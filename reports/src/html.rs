//! A single self-contained HTML page, in the order people read it: a summary, then the
//! failures (each with its checker, message, seed, digest, replay command and last trace
//! events), the comparison with a baseline, the expected failures bug scenarios caught, a
//! compact table of every run, and per scenario, collapsed, its metrics and its plots over
//! virtual time.
//!
//! The page needs nothing beside itself (inline CSS and SVG, one inline script and no external
//! links) so it can be archived as a CI artifact and opened years later. The script only sets a
//! marker on `<body>` once the page has rendered (and another if a script error happened), so a
//! headless browser can tell a page that loaded from one that broke. The page is also
//! well-formed XML (every element closed, everything escaped), which lets the tests check its
//! structure with an XML parser rather than by string matching. Host timings (`wall_*`) are
//! listed apart and never plotted: they measure the machine, not the engine.

use std::fmt::Write as _;

use crate::baseline::{Change, Comparison, MetricDelta};
use crate::model::{Category, RunReport, ScenarioRun, Verdict};
use crate::series::{Plot, TimeSeries};
use crate::svg::{render_bar_chart, Bar, BarChart};
use crate::text::{self, xml_attr, xml_text as esc};
use crate::timeplot::{render_time_plot, render_timeline};

const STYLE: &str = "\
body{font-family:sans-serif;margin:1.2em 2em;color:#222;max-width:72em}\
h1{font-size:1.5em;margin:.2em 0 .4em}h2{font-size:1.25em;margin:1.2em 0 .4em}\
table{border-collapse:collapse;margin:.6em 0}\
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left}\
td.num{text-align:right;font-variant-numeric:tabular-nums}\
tr.fail td,tr.error td{background:#fdecea}\
.pass{color:#1a7f37}.fail,.error,.regression{color:#c62828;font-weight:bold}\
.summary{display:flex;flex-wrap:wrap;gap:.6em;margin:.4em 0}\
.summary div{border:1px solid #ccc;border-radius:4px;padding:.3em .8em;min-width:7em}\
.summary b{display:block;font-size:1.6em}\
.summary .bad{border-color:#c62828;background:#fdecea}\
section.failure{border-left:4px solid #c62828;padding:.1em .8em;margin:.6em 0}\
section.failure h3{margin:.3em 0}\
pre{background:#f6f8fa;padding:.5em;overflow-x:auto;white-space:pre-wrap;margin:.3em 0}\
pre.trace{font-size:.85em;max-height:16em;overflow-y:auto}\
details{border:1px solid #ddd;border-radius:4px;padding:.2em .6em;margin:.3em 0}\
summary{cursor:pointer}figure{margin:.6em 0}";

/// Once the page loaded: opens the scenario a `#scn-N` link names (so a link from a failure,
/// or a URL, shows its plots), or every scenario when the URL ends in `?open`, sets `data-rendered` on `<body>` with the number of plots, and
/// `data-failure-bottom` to where the first failure's message ends (a browser test checks it
/// is above the fold); `data-script-error` marks any script error. Free of `<` and `&` so the
/// page stays well-formed XML.
const MARKER_SCRIPT: &str = "\
window.addEventListener('error',function(){document.body.setAttribute('data-script-error','1')});\
function openTarget(){var d=document.getElementById(location.hash.slice(1));\
if(d){if(d.tagName=='DETAILS'){d.open=true;d.scrollIntoView();}}}\
window.addEventListener('hashchange',openTarget);\
window.addEventListener('load',function(){openTarget();var b=document.body;\
if(location.search=='?open'){document.querySelectorAll('details').forEach(function(d){d.open=true;});}\
b.setAttribute('data-rendered','ok '+document.querySelectorAll('svg').length+' svg');\
var f=document.querySelector('section.failure pre');\
if(f){b.setAttribute('data-failure-bottom',Math.round(f.getBoundingClientRect().bottom+window.scrollY));}});";

/// Trace lines a failure shows (the report keeps more; the last ones matter most).
const TRACE_SHOWN: usize = 25;
/// Checker messages a failure shows before "and N more": a run with hundreds of WARNs must not
/// push its seed, replay command and the next failures off the screen.
const MESSAGES_SHOWN: usize = 8;

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
    failures(&mut out, report);
    if let Some(c) = comparison {
        regressions(&mut out, c);
    }
    expected(&mut out, report);
    table(&mut out, report);
    details(&mut out, report);
    let _ = writeln!(out, "<script>{MARKER_SCRIPT}</script>");
    out.push_str("</body>\n</html>\n");
    out
}

/// Bug scenarios whose expected failure was caught: a passing run with an `Expected` failure.
fn caught(report: &RunReport) -> impl Iterator<Item = (usize, &ScenarioRun)> {
    report.runs.iter().enumerate().filter(|(_, r)| {
        r.verdict == Verdict::Pass && r.failures.iter().any(|f| f.category == Category::Expected)
    })
}

fn summary(out: &mut String, report: &RunReport, comparison: Option<&Comparison>) {
    let seeds = report.runs.iter().map(|r| r.seed);
    let seed_range = match (seeds.clone().min(), seeds.max()) {
        (Some(lo), Some(hi)) if lo == hi => format!("seed {lo}"),
        (Some(lo), Some(hi)) => format!("seeds {lo}–{hi}"),
        _ => "no seeds".to_string(),
    };
    let regressions = comparison.map(|c| c.regressions().count());
    let mut boxes = vec![
        ("passed", report.passed().to_string(), false),
        ("failed", report.failed().to_string(), report.failed() > 0),
        (
            "could not be loaded",
            report.errored().to_string(),
            report.errored() > 0,
        ),
    ];
    match regressions {
        Some(n) => boxes.push(("regressions", n.to_string(), n > 0)),
        None => boxes.push(("regressions", "no baseline".to_string(), false)),
    }
    boxes.push((
        "expected failures caught",
        caught(report).count().to_string(),
        false,
    ));
    out.push_str("<div class=\"summary\" id=\"summary\">\n");
    for (label, value, bad) in boxes {
        let class = if bad { " class=\"bad\"" } else { "" };
        let _ = writeln!(out, "<div{class}><b>{}</b>{label}</div>", esc(&value));
    }
    out.push_str("</div>\n");
    let _ = writeln!(
        out,
        "<p class=\"summary-line\"><strong>{} passed, {} failed</strong>, {} could not be loaded \
         ({}, {}, tool {}).</p>",
        report.passed(),
        report.failed(),
        report.errored(),
        text::count(report.runs.len(), "run"),
        esc(&seed_range),
        esc(&report.tool_version),
    );
}

fn failures(out: &mut String, report: &RunReport) {
    let failed: Vec<_> = report
        .runs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.verdict != Verdict::Pass)
        .collect();
    if failed.is_empty() {
        return;
    }
    out.push_str("<h2>Failures</h2>\n");
    for (index, run) in failed {
        failure(out, index, run);
    }
}

fn failure(out: &mut String, index: usize, run: &ScenarioRun) {
    let v = run.verdict.as_str();
    let _ = writeln!(
        out,
        "<section class=\"failure\" id=\"run-{index}\">\n<h3>{} <span class=\"{v}\">({v})</span></h3>",
        esc(&run.name)
    );
    out.push_str("<pre>");
    for f in run.failures.iter().take(MESSAGES_SHOWN) {
        let at = f
            .at_ns
            .map(|ns| format!(" at {}", text::duration_ns(ns)))
            .unwrap_or_default();
        let _ = writeln!(out, "[{}]{at}: {}", esc(&f.label()), esc(&f.message));
    }
    if run.failures.is_empty() {
        let _ = writeln!(out, "scenario {v} without a checker message");
    }
    if run.failures.len() > MESSAGES_SHOWN {
        let more = run.failures.len() - MESSAGES_SHOWN;
        let _ = writeln!(
            out,
            "... and {more} more (all of them in the JSON and JUnit reports)"
        );
    }
    out.push_str("</pre>\n");
    let _ = writeln!(
        out,
        "<p>Scenario <code>{}</code>, seed <code>{}</code>, digest <code>{}</code>. Replay:</p>",
        esc(&run.path),
        run.seed,
        esc(&run.digest),
    );
    let _ = writeln!(out, "<pre><code>{}</code></pre>", esc(&run.replay));
    if !run.recent_events.is_empty() {
        let skip = run.recent_events.len().saturating_sub(TRACE_SHOWN);
        let _ = writeln!(
            out,
            "<details open=\"open\"><summary>Last {} trace events (virtual ns)</summary>\
             <pre class=\"trace\">",
            run.recent_events.len() - skip
        );
        for line in &run.recent_events[skip..] {
            let _ = writeln!(out, "{}", esc(line));
        }
        out.push_str("</pre></details>\n");
    }
    let _ = writeln!(
        out,
        "<p><a href=\"#scn-{index}\">Metrics and plots of this run</a></p>\n</section>"
    );
}

fn expected(out: &mut String, report: &RunReport) {
    let runs: Vec<_> = caught(report).collect();
    if runs.is_empty() {
        return;
    }
    out.push_str("<h2>Expected failures caught</h2>\n<ul>\n");
    for (index, run) in runs {
        for f in run
            .failures
            .iter()
            .filter(|f| f.category == Category::Expected)
        {
            let _ = writeln!(
                out,
                "<li><a href=\"#scn-{index}\">{}</a>: caught by <strong>{}</strong>: {}</li>",
                esc(&run.name),
                esc(&f.checker),
                esc(&text::truncate(&f.message, 300)),
            );
        }
    }
    out.push_str("</ul>\n");
}

fn table(out: &mut String, report: &RunReport) {
    out.push_str("<h2>Scenarios</h2>\n");
    if report.runs.is_empty() {
        out.push_str("<p>No scenarios were run.</p>\n");
        return;
    }
    out.push_str("<table>\n<thead><tr><th>Scenario</th><th>Verdict</th><th>Seed</th>");
    out.push_str("<th>Digest</th><th>Virtual time</th><th>Steps</th><th>Events</th>");
    out.push_str("</tr></thead>\n<tbody>\n");
    for (i, run) in report.runs.iter().enumerate() {
        row(out, i, run);
    }
    out.push_str("</tbody>\n</table>\n");
}

fn row(out: &mut String, index: usize, run: &ScenarioRun) {
    let v = run.verdict.as_str();
    // Failed runs link to their failure, the others to their plots.
    let target = if run.verdict == Verdict::Pass {
        "scn"
    } else {
        "run"
    };
    let _ = writeln!(
        out,
        "<tr class=\"{v}\"><td title=\"{}\"><a href=\"#{target}-{index}\">{}</a></td>\
         <td class=\"{v}\">{v}</td><td class=\"num\">{}</td><td title=\"{}\"><code>{}</code></td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
        xml_attr(&run.path),
        esc(&run.name),
        run.seed,
        xml_attr(&run.digest),
        esc(&text::short_digest(&run.digest)),
        text::duration_ns(run.virtual_ns),
        run.steps,
        run.events,
    );
}

/// Host timings measure the machine running the bench: listed, never plotted.
fn is_host_timing(metric: &str) -> bool {
    metric.starts_with("wall_")
}

fn details(out: &mut String, report: &RunReport) {
    if report.runs.is_empty() {
        return;
    }
    out.push_str("<h2>Per scenario</h2>\n");
    for (index, run) in report.runs.iter().enumerate() {
        scenario_details(out, index, run);
    }
}

fn scenario_details(out: &mut String, index: usize, run: &ScenarioRun) {
    let v = run.verdict.as_str();
    let _ = writeln!(
        out,
        "<details id=\"scn-{index}\"><summary>{} <span class=\"{v}\">{v}</span>, {} virtual</summary>",
        esc(&run.name),
        text::duration_ns(run.virtual_ns),
    );
    match &run.series {
        Some(series) => plots(out, series),
        None => out.push_str("<p>No time series in this report.</p>\n"),
    }
    metrics(out, run);
    out.push_str("</details>\n");
}

fn plots(out: &mut String, series: &TimeSeries) {
    let mut any = false;
    for plot in [Plot::Storage, Plot::Cow, Plot::ImageIo] {
        if let Some(svg) = render_time_plot(series, plot) {
            let _ = write!(out, "<figure>\n{svg}</figure>\n");
            any = true;
        }
    }
    if let Some(svg) = render_timeline(series) {
        let _ = write!(out, "<figure>\n{svg}</figure>\n");
        any = true;
    }
    if series.dropped > 0 {
        let _ = writeln!(
            out,
            "<p>{} more windows and events were not kept.</p>",
            series.dropped
        );
    }
    if !any {
        out.push_str("<p>Nothing was sampled over virtual time in this run.</p>\n");
    }
}

fn metrics(out: &mut String, run: &ScenarioRun) {
    if run.metrics.is_empty() {
        return;
    }
    out.push_str("<table class=\"metrics\"><tbody>\n");
    let (host, engine): (Vec<_>, Vec<_>) = run
        .metrics
        .iter()
        .partition(|(name, _)| is_host_timing(name));
    for (name, value) in engine.into_iter().chain(host) {
        let note = if is_host_timing(name) {
            " (host time, not a measure of the engine)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<tr><td>{}{note}</td><td class=\"num\">{}</td></tr>",
            esc(name),
            text::number(*value)
        );
    }
    out.push_str("</tbody></table>\n");
}

fn figure(out: &mut String, chart: &BarChart) {
    let _ = write!(out, "<figure>\n{}</figure>\n", render_bar_chart(chart));
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
    // Host timings never reach a plot (they are excluded from comparison by default, but a
    // tolerance may include them).
    let moved = deltas
        .iter()
        .filter(|d| d.relative() != 0.0 && !is_host_timing(&d.metric));
    for d in moved {
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
    use crate::model::{Category, Failure};

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
        b.recent_events = vec!["1 Poll".into(), "10 last-trace-line".into()];
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
        for tag in ["link", "img", "iframe", "object", "embed"] {
            assert!(
                !doc.descendants().any(|n| n.has_tag_name(tag)),
                "{tag} found"
            );
        }
        // One inline script (the render marker), nothing it could load.
        let scripts: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("script"))
            .collect();
        assert_eq!(scripts.len(), 1);
        assert!(scripts[0].attributes().len() == 0, "no src");
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
            summary.starts_with("1 passed, 1 failed, 0 could not be loaded (2 runs, seeds 1–2"),
            "{summary}"
        );
        let boxes = texts(&doc, "div");
        assert!(boxes.contains(&"1failed".to_string()), "{boxes:?}");
        assert!(
            boxes.contains(&"no baselineregressions".to_string()),
            "{boxes:?}"
        );
        assert!(
            boxes.contains(&"0expected failures caught".to_string()),
            "{boxes:?}"
        );
        let table = doc
            .descendants()
            .find(|n| n.has_tag_name("table"))
            .expect("scenario table");
        let rows = table.descendants().filter(|n| n.has_tag_name("tr")).count();
        assert_eq!(rows, 3, "header and two runs");
        let cells = texts(&doc, "td");
        assert_eq!(cells[0], "a<b&\"c\"'");
        assert!(cells.contains(&"feedfacecafe".to_string()));
        assert!(cells.contains(&"2.000 ms".to_string()));
    }

    /// People read the failures first: they come before the table and the per-scenario plots.
    #[test]
    fn failures_come_right_after_the_summary() {
        let html = render_html(&report(), None);
        let at = |needle: &str| html.find(needle).unwrap_or_else(|| panic!("{needle}"));
        assert!(at("id=\"summary\"") < at("<h2>Failures</h2>"));
        assert!(at("<h2>Failures</h2>") < at("<h2>Scenarios</h2>"));
        assert!(at("<h2>Scenarios</h2>") < at("<h2>Per scenario</h2>"));
        assert!(
            at("last-trace-line") < at("<h2>Scenarios</h2>"),
            "trace tail shown"
        );
    }

    /// A run with hundreds of messages shows a few, and still its replay command.
    #[test]
    fn many_messages_are_capped() {
        let mut r = report();
        let warn = r.runs[1].failures[0].clone();
        r.runs[1].failures = vec![warn; 300];
        let html = render_html(&r, None);
        assert_eq!(html.matches("errno &lt;EINVAL&gt;").count(), MESSAGES_SHOWN);
        assert!(html.contains("... and 292 more"));
        assert!(html.contains("--seed 2 &lt;/dev/null"));
    }

    #[test]
    fn expected_failures_show_checker_and_message() {
        let mut r = report();
        r.runs[0].failures.push(Failure {
            checker: "point_in_time".into(),
            message: "image sector 8 holds data written after TAKE".into(),
            at_ns: Some(3),
            category: Category::Expected,
        });
        let html = render_html(&r, None);
        let doc = parse(&html);
        let items = texts(&doc, "li");
        assert_eq!(
            items,
            ["a<b&\"c\"': caught by point_in_time: image sector 8 holds data written after TAKE"]
        );
        assert!(texts(&doc, "div").contains(&"1expected failures caught".to_string()));
    }

    /// Each scenario has collapsed plots of its series; host timings are never plotted.
    #[test]
    fn per_scenario_plots_over_virtual_time() {
        let mut r = report();
        let mut series = TimeSeries {
            end_ns: 2_000_000,
            ..TimeSeries::default()
        };
        let mut cow = crate::series::Line::new(Plot::Cow, "writes", "sdb");
        cow.sample(500_000, 3.0);
        cow.sample(900_000, 7.0);
        cow.finish();
        series.lines.push(cow);
        series.push_window(crate::series::Window {
            kind: "take".into(),
            device: "snap".into(),
            start_ns: 100,
            end_ns: 400_000,
        });
        r.runs[0].series = Some(series);
        r.runs[0].metrics.insert("wall_ms".into(), 12.0);
        let html = render_html(&r, None);
        let doc = parse(&html);
        let details = doc
            .descendants()
            .find(|n| n.attribute("id") == Some("scn-0"))
            .expect("details of run 0");
        assert!(details.has_tag_name("details"));
        assert!(details.attribute("open").is_none(), "collapsed");
        let labels: Vec<_> = details
            .descendants()
            .filter(|n| n.has_tag_name("svg"))
            .filter_map(|n| n.attribute("aria-label"))
            .collect();
        assert_eq!(
            labels,
            [
                Plot::Cow.title(),
                "Freeze and TAKE windows, events the engine reported"
            ]
        );
        for svg in doc.descendants().filter(|n| n.has_tag_name("svg")) {
            let text: String = svg.descendants().filter_map(|d| d.text()).collect();
            assert!(!text.contains("wall"), "host timing plotted: {text}");
        }
        let other = doc
            .descendants()
            .find(|n| n.attribute("id") == Some("scn-1"))
            .expect("details of run 1");
        let text: String = other.descendants().filter_map(|d| d.text()).collect();
        assert!(text.contains("No time series in this report."), "{text}");
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
