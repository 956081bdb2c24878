//! JUnit XML, the format CI systems read to show test results.
//!
//! One `<testsuite>` per report and one `<testcase>` per scenario run. A failing run has one
//! `<failure>` element (several are not understood by every consumer) whose text lists every
//! checker message, the seed and the replay command, so the CI page alone is enough to
//! reproduce the failure.

use std::fmt::Write as _;

use crate::model::{Failure, RunReport, ScenarioRun, Verdict};
use crate::text::{self, xml_attr, xml_text};

/// Renders `report` as a JUnit XML document.
pub fn render_junit(report: &RunReport) -> String {
    let suite = xml_attr(&report.suite);
    let counts = format!(
        "tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{}\"",
        report.runs.len(),
        report.failed(),
        report.errored(),
        seconds(report.runs.iter().map(ScenarioRun::wall_seconds).sum()),
    );
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(out, "<testsuites name=\"{suite}\" {counts}>");
    let _ = writeln!(out, "  <testsuite name=\"{suite}\" {counts} skipped=\"0\">");
    let _ = writeln!(out, "    <properties>");
    let _ = writeln!(
        out,
        "      <property name=\"tool_version\" value=\"{}\"/>",
        xml_attr(&report.tool_version)
    );
    let _ = writeln!(out, "    </properties>");
    for run in &report.runs {
        testcase(&mut out, &suite, run);
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// The directory a scenario file sits in, dotted like a Java package, so a
/// CI page groups the cases by suite directory; the suite name for a file
/// given without a directory.
fn classname(suite: &str, run: &ScenarioRun) -> String {
    let dir = run.path.rsplit_once('/').map_or("", |(dir, _)| dir);
    let dir = dir.trim_start_matches("./").trim_matches('/');
    if dir.is_empty() || dir == "." {
        suite.to_string()
    } else {
        xml_attr(&dir.replace('/', "."))
    }
}

fn testcase(out: &mut String, suite: &str, run: &ScenarioRun) {
    let _ = writeln!(
        out,
        "    <testcase classname=\"{}\" name=\"{}\" time=\"{}\">",
        classname(suite, run),
        xml_attr(&run.name),
        seconds(run.wall_seconds()),
    );
    let element = match run.verdict {
        Verdict::Pass => None,
        Verdict::Fail => Some("failure"),
        Verdict::Error => Some("error"),
    };
    if let Some(element) = element {
        let (kind, message) = headline(run);
        let _ = writeln!(
            out,
            "      <{element} message=\"{}\" type=\"{}\">{}</{element}>",
            xml_attr(&message),
            xml_attr(&kind),
            xml_text(&details(run)),
        );
    }
    coverage_properties(out, run);
    let _ = writeln!(
        out,
        "      <system-out>{}</system-out>",
        xml_text(&identity(run))
    );
    out.push_str("    </testcase>\n");
}

/// The checkers' coverage counts as testcase properties, so a CI page shows
/// how much each passing scenario actually judged; for a bug scenario, also
/// the checker and message that caught its quirk.
fn coverage_properties(out: &mut String, run: &ScenarioRun) {
    let mut coverage = run.coverage().peekable();
    let caught = run.caught();
    if coverage.peek().is_none() && caught.is_none() {
        return;
    }
    out.push_str("      <properties>\n");
    if let Some(f) = caught {
        let _ = writeln!(
            out,
            "        <property name=\"caught_by\" value=\"{}\"/>",
            xml_attr(&f.checker)
        );
        let _ = writeln!(
            out,
            "        <property name=\"caught_message\" value=\"{}\"/>",
            xml_attr(&f.message)
        );
    }
    for (name, value) in coverage {
        let _ = writeln!(
            out,
            "        <property name=\"{}\" value=\"{value}\"/>",
            xml_attr(name)
        );
    }
    out.push_str("      </properties>\n");
}

/// The `type` and `message` attributes: the first checker's, since CI shows them in lists
/// where one line is all there is room for.
fn headline(run: &ScenarioRun) -> (String, String) {
    match run.failures.first() {
        Some(f) => {
            let first_line = f.message.lines().next().unwrap_or("").to_string();
            (f.checker.clone(), first_line)
        }
        None => (run.verdict.to_string(), format!("scenario {}", run.verdict)),
    }
}

/// Element text: every failure in full, then how to reproduce the run.
fn details(run: &ScenarioRun) -> String {
    let mut s = String::new();
    for f in &run.failures {
        let _ = writeln!(s, "{}", failure_line(f));
    }
    s.push_str(&identity(run));
    s
}

/// `[checker, category] at TIME: message`, the time left out when unknown.
fn failure_line(f: &Failure) -> String {
    match f.at_ns {
        Some(ns) => format!(
            "[{}] at {}: {}",
            f.label(),
            text::duration_ns(ns),
            f.message
        ),
        None => format!("[{}] {}", f.label(), f.message),
    }
}

/// Seed, digest and replay command: what anyone needs to reproduce the run;
/// for a bug scenario, first what caught its quirk.
fn identity(run: &ScenarioRun) -> String {
    let caught = run
        .caught()
        .map(|f| format!("caught_by: {}\n", failure_line(f)))
        .unwrap_or_default();
    format!(
        "{caught}scenario: {}\nseed: {}\ndigest: {}\nreplay: {}\n",
        run.path, run.seed, run.digest, run.replay
    )
}

fn seconds(s: f64) -> String {
    format!("{s:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile_report() -> RunReport {
        let mut report = RunReport::new("0.1.0 <dev>", "scen&arios");
        let mut ok = ScenarioRun::new("a<b&\"c\"", "scenarios/a.ron", 11);
        ok.digest = "abcdef".into();
        ok.replay = "blksnap-sim run 'scenarios/a.ron' --seed 11".into();
        ok.metrics.insert("wall_ms".into(), 1500.0);
        ok.metrics.insert("image_sectors_checked".into(), 96.0);
        ok.metrics.insert("ioctls_judged".into(), 7.0);
        let mut bad = ScenarioRun::new("bad'one>", "scenarios/b.ron", 22);
        bad.verdict = Verdict::Fail;
        bad.replay = "blksnap-sim run scenarios/b.ron --seed 22 && echo \"<x>\"".into();
        bad.metrics.insert("wall_ms".into(), 250.0);
        bad.failures = vec![
            Failure {
                checker: "point_in_time".into(),
                message: "read 0x1\u{0}\u{1b}[31m wrong\nsecond line".into(),
                at_ns: Some(1_500),
                category: Default::default(),
            },
            Failure {
                checker: "kernel_warn".into(),
                message: "WARN at ]]> here".into(),
                at_ns: None,
                category: Default::default(),
            },
        ];
        let mut broken = ScenarioRun::new("broken", "scenarios/c.ron", 33);
        broken.verdict = Verdict::Error;
        broken.failures.push(Failure {
            checker: "load".into(),
            message: "c.ron:3:7: expected `)`".into(),
            at_ns: None,
            category: Default::default(),
        });
        report.runs = vec![ok, bad, broken];
        report
    }

    fn parse(xml: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("not well-formed: {e}\n{xml}"))
    }

    #[test]
    fn well_formed_with_counts() {
        let xml = render_junit(&hostile_report());
        let doc = parse(&xml);
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "testsuites");
        let suite = root
            .children()
            .find(|n| n.has_tag_name("testsuite"))
            .expect("one testsuite");
        assert_eq!(suite.attribute("name"), Some("scen&arios"));
        assert_eq!(suite.attribute("tests"), Some("3"));
        assert_eq!(suite.attribute("failures"), Some("1"));
        assert_eq!(suite.attribute("errors"), Some("1"));
        assert_eq!(suite.attribute("time"), Some("1.750"));
        let cases: Vec<_> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[0].attribute("time"), Some("1.500"));
        assert_eq!(cases[2].attribute("time"), Some("0.000"));
    }

    #[test]
    fn classname_is_the_suite_directory() {
        let at = |path: &str| classname("suite", &ScenarioRun::new("n", path, 1));
        assert_eq!(at("scenarios/races/a.ron"), "scenarios.races");
        assert_eq!(at("./scenarios/a.ron"), "scenarios");
        assert_eq!(at("/tmp/x/a.ron"), "tmp.x");
        assert_eq!(at("a.ron"), "suite");
    }

    #[test]
    fn hostile_text_round_trips() {
        let xml = render_junit(&hostile_report());
        let doc = parse(&xml);
        let names: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .map(|n| n.attribute("name").unwrap_or_default().to_string())
            .collect();
        assert_eq!(names, ["a<b&\"c\"", "bad'one>", "broken"]);
        let classes: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .map(|n| n.attribute("classname").unwrap_or_default().to_string())
            .collect();
        assert_eq!(classes, ["scenarios", "scenarios", "scenarios"]);
        let prop = doc
            .descendants()
            .find(|n| n.has_tag_name("property"))
            .expect("tool version property");
        assert_eq!(prop.attribute("value"), Some("0.1.0 <dev>"));
    }

    #[test]
    fn failure_carries_seed_replay_and_all_messages() {
        let xml = render_junit(&hostile_report());
        let doc = parse(&xml);
        let failure = doc
            .descendants()
            .find(|n| n.has_tag_name("failure"))
            .expect("one failure");
        assert_eq!(failure.attribute("type"), Some("point_in_time"));
        // Control characters are stripped; only the first line goes in the attribute.
        assert_eq!(failure.attribute("message"), Some("read 0x1[31m wrong"));
        let body = failure.text().unwrap_or_default();
        assert!(body.contains(
            "[point_in_time, engine failure] at 1.500 µs: read 0x1[31m wrong\nsecond line"
        ));
        assert!(body.contains("[kernel_warn, engine failure] WARN at ]]> here"));
        assert!(body.contains("seed: 22"));
        assert!(body.contains("replay: blksnap-sim run scenarios/b.ron --seed 22 && echo \"<x>\""));
        assert_eq!(
            doc.descendants()
                .filter(|n| n.has_tag_name("failure"))
                .count(),
            1
        );
    }

    #[test]
    fn error_verdict_is_an_error_element() {
        let xml = render_junit(&hostile_report());
        let doc = parse(&xml);
        let error = doc
            .descendants()
            .find(|n| n.has_tag_name("error"))
            .expect("one error");
        assert_eq!(error.attribute("type"), Some("load"));
        assert!(error.text().unwrap_or_default().contains("c.ron:3:7"));
    }

    #[test]
    fn fail_without_failures_still_explains() {
        let mut report = RunReport::new("v", "s");
        let mut run = ScenarioRun::new("x", "x.ron", 1);
        run.verdict = Verdict::Fail;
        report.runs.push(run);
        let xml = render_junit(&report);
        let doc = parse(&xml);
        let failure = doc
            .descendants()
            .find(|n| n.has_tag_name("failure"))
            .expect("failure element");
        assert_eq!(failure.attribute("type"), Some("fail"));
        assert_eq!(failure.attribute("message"), Some("scenario fail"));
    }

    #[test]
    fn system_out_has_seed_digest_replay() {
        let xml = render_junit(&hostile_report());
        let doc = parse(&xml);
        let out = doc
            .descendants()
            .find(|n| n.has_tag_name("system-out"))
            .and_then(|n| n.text())
            .expect("system-out text");
        assert!(out.contains("seed: 11\ndigest: abcdef\nreplay: blksnap-sim run 'scenarios/a.ron'"));
    }

    #[test]
    fn empty_report_is_well_formed() {
        let xml = render_junit(&RunReport::new("v", "s"));
        let doc = parse(&xml);
        assert_eq!(doc.root_element().attribute("tests"), Some("0"));
    }

    #[test]
    fn deterministic() {
        let r = hostile_report();
        assert_eq!(render_junit(&r), render_junit(&r.clone()));
    }

    #[test]
    fn coverage_counts_are_testcase_properties() {
        let xml = render_junit(&hostile_report());
        let doc = parse(&xml);
        let case = doc
            .descendants()
            .find(|n| n.has_tag_name("testcase"))
            .expect("a testcase");
        let props: Vec<(String, String)> = case
            .descendants()
            .filter(|n| n.has_tag_name("property"))
            .map(|n| {
                let get = |a| n.attribute(a).unwrap_or_default().to_string();
                (get("name"), get("value"))
            })
            .collect();
        assert_eq!(
            props,
            vec![
                ("image_sectors_checked".to_string(), "96".to_string()),
                ("ioctls_judged".to_string(), "7".to_string()),
            ]
        );
        // wall_ms is a measurement, not coverage.
        assert!(!xml.contains("name=\"wall_ms\""));
    }

    /// A bug scenario's pass names the checker and message that caught it,
    /// as properties and in system-out; a plain pass has neither.
    #[test]
    fn expected_failure_shows_what_caught_it() {
        let mut report = hostile_report();
        assert!(!render_junit(&report).contains("caught_by"));
        report.runs[0].caught_by = Some(Failure {
            checker: "point_in_time".into(),
            message: "read 0x21 <wrong>".into(),
            at_ns: Some(7_000_000),
            category: crate::model::Category::Expected,
        });
        let xml = render_junit(&report);
        let doc = parse(&xml);
        let case = doc
            .descendants()
            .find(|n| n.has_tag_name("testcase"))
            .expect("a testcase");
        let prop = |name: &str| {
            case.descendants()
                .find(|n| n.has_tag_name("property") && n.attribute("name") == Some(name))
                .and_then(|n| n.attribute("value"))
                .map(str::to_string)
        };
        assert_eq!(prop("caught_by").as_deref(), Some("point_in_time"));
        assert_eq!(prop("caught_message").as_deref(), Some("read 0x21 <wrong>"));
        let out = case
            .descendants()
            .find(|n| n.has_tag_name("system-out"))
            .and_then(|n| n.text())
            .expect("system-out text");
        assert!(
            out.starts_with(
                "caught_by: [point_in_time, expected outcome] at 7.000 ms: read 0x21 <wrong>\n"
            ),
            "{out}"
        );
        assert!(!case.descendants().any(|n| n.has_tag_name("failure")));
    }
}
