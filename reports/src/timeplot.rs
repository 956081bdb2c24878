//! Plots over virtual time as standalone SVG: one plot of counters ([`render_time_plot`]) with
//! the run's freeze and TAKE windows shaded behind them and its events as vertical rules, and a
//! timeline of windows and events per device ([`render_timeline`]).
//!
//! Counters of one plot can span orders of magnitude (a storage device of millions of sectors
//! beside a few thousand filled): when the largest line exceeds the smallest non-zero one a
//! twentyfold the value axis is log10(1 + v), and says so. Each plot is scaled to its own run,
//! so a run of hours and one of milliseconds both fill the width. Drawn by hand, like
//! [`crate::svg`], so the bytes are the same for the same series.

use std::fmt::Write as _;

use crate::series::{Line, Mark, Plot, TimeSeries};
use crate::text::{self, xml_attr, xml_text};

const WIDTH: f64 = 760.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const PLOT_H: f64 = 150.0;
const LEGEND_ROW: f64 = 16.0;
const AXIS_H: f64 = 36.0;
const TIMELINE_ROW: f64 = 18.0;
/// Ratio of largest to smallest line above which the value axis is logarithmic.
const LOG_RATIO: f64 = 20.0;
const PALETTE: [&str; 8] = [
    "#4c78a8", "#f58518", "#54a24b", "#b279a2", "#9d755d", "#e45756", "#72b7b2", "#bab0ac",
];
const FREEZE_FILL: &str = "#cfe3f7";
const TAKE_FILL: &str = "#fde2c4";
const LOW_SPACE: &str = "#e0a800";
const CORRUPTED: &str = "#c62828";

/// Maps virtual time and values to the plot area.
#[derive(Debug, Clone, Copy)]
struct Axes {
    end_ns: f64,
    max: f64,
    log: bool,
}

impl Axes {
    fn of(series: &TimeSeries, lines: &[&Line]) -> Axes {
        let maxima: Vec<f64> = lines.iter().map(|l| l.max()).filter(|m| *m > 0.0).collect();
        let max = maxima.iter().copied().fold(0.0, f64::max);
        let min = maxima.iter().copied().fold(f64::INFINITY, f64::min);
        Axes {
            end_ns: series.end_ns.max(1) as f64,
            max: if max > 0.0 { max } else { 1.0 },
            log: max > LOG_RATIO * min,
        }
    }

    fn x(self, ns: u64) -> f64 {
        LEFT + (ns as f64 / self.end_ns).min(1.0) * (WIDTH - LEFT - RIGHT)
    }

    fn y(self, v: f64) -> f64 {
        let f = if self.log {
            (1.0 + v.max(0.0)).log10() / (1.0 + self.max).log10()
        } else {
            v / self.max
        };
        TOP + PLOT_H * (1.0 - f.clamp(0.0, 1.0))
    }
}

/// The counters of `plot` in `series`, one line per (device, name); `None` when the run
/// sampled none.
pub fn render_time_plot(series: &TimeSeries, plot: Plot) -> Option<String> {
    let lines: Vec<&Line> = series.plot(plot).filter(|l| !l.points.is_empty()).collect();
    if lines.is_empty() {
        return None;
    }
    let axes = Axes::of(series, &lines);
    let height = TOP + PLOT_H + AXIS_H + LEGEND_ROW * lines.len() as f64 + 8.0;
    let mut out = open_svg(plot.title(), height);
    shade_windows(&mut out, series, axes, TOP, TOP + PLOT_H);
    value_axis(&mut out, axes);
    for (i, line) in lines.iter().enumerate() {
        draw_line(&mut out, axes, line, PALETTE[i % PALETTE.len()]);
    }
    rule_marks(&mut out, series, axes, TOP, TOP + PLOT_H);
    time_axis(&mut out, axes, TOP + PLOT_H);
    let legend_top = TOP + PLOT_H + AXIS_H;
    for (i, line) in lines.iter().enumerate() {
        let y = legend_top + LEGEND_ROW * i as f64;
        let colour = PALETTE[i % PALETTE.len()];
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" \
             stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.1}\">{} on {}: {} (final)</text>",
            y + 8.0,
            LEFT + 20.0,
            y + 8.0,
            LEFT + 26.0,
            y + 12.0,
            xml_text(&line.name),
            xml_text(&line.device),
            xml_text(&text::number(line.points.last().map_or(0.0, |p| p.1))),
        );
    }
    out.push_str("</svg>\n");
    Some(out)
}

/// Freeze and TAKE windows and the engine's events, one row per (kind, device); `None` when
/// the run had none.
pub fn render_timeline(series: &TimeSeries) -> Option<String> {
    let mut rows: Vec<(String, String)> = Vec::new();
    let kinds = series
        .windows
        .iter()
        .map(|w| (w.kind.clone(), w.device.clone()))
        .chain(
            series
                .marks
                .iter()
                .map(|m| (m.kind.clone(), m.device.clone())),
        );
    for key in kinds {
        if !rows.contains(&key) {
            rows.push(key);
        }
    }
    if rows.is_empty() {
        return None;
    }
    let axes = Axes {
        end_ns: series.end_ns.max(1) as f64,
        max: 1.0,
        log: false,
    };
    let bottom = TOP + TIMELINE_ROW * rows.len() as f64;
    let title = "Freeze and TAKE windows, events the engine reported";
    let mut out = open_svg(title, bottom + AXIS_H + 4.0);
    for (r, (kind, device)) in rows.iter().enumerate() {
        let y = TOP + TIMELINE_ROW * r as f64;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"10\">{}</text>",
            LEFT - 4.0,
            y + 12.0,
            xml_text(&text::truncate(&format!("{kind} {device}"), 12)),
        );
        for w in series
            .windows
            .iter()
            .filter(|w| &w.kind == kind && &w.device == device)
        {
            let (x0, x1) = (axes.x(w.start_ns), axes.x(w.end_ns));
            let _ = writeln!(
                out,
                "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" \
                 stroke=\"#555\" stroke-width=\"0.5\"><title>{} {} from {} to {}</title></rect>",
                y + 2.0,
                (x1 - x0).max(1.5),
                TIMELINE_ROW - 4.0,
                window_fill(kind),
                xml_text(kind),
                xml_text(device),
                text::duration_ns(w.start_ns),
                text::duration_ns(w.end_ns),
            );
        }
        for m in series
            .marks
            .iter()
            .filter(|m| &m.kind == kind && &m.device == device)
        {
            let x = axes.x(m.at_ns);
            let _ = writeln!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{}\" \
                 stroke-width=\"2\"><title>{}</title></line>",
                y + 1.0,
                y + TIMELINE_ROW - 1.0,
                mark_colour(kind),
                xml_text(&mark_title(m)),
            );
        }
    }
    time_axis(&mut out, axes, bottom);
    out.push_str("</svg>\n");
    Some(out)
}

fn open_svg(title: &str, height: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH:.0} {height:.0}\" role=\"img\" aria-label=\"{}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <text x=\"8\" y=\"18\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        xml_attr(title),
        xml_text(title)
    );
    out
}

fn window_fill(kind: &str) -> &'static str {
    if kind == "take" {
        TAKE_FILL
    } else {
        FREEZE_FILL
    }
}

fn mark_colour(kind: &str) -> &'static str {
    if kind == "low_space" {
        LOW_SPACE
    } else {
        CORRUPTED
    }
}

fn shade_windows(out: &mut String, series: &TimeSeries, axes: Axes, top: f64, bottom: f64) {
    for w in &series.windows {
        let (x0, x1) = (axes.x(w.start_ns), axes.x(w.end_ns));
        let _ = writeln!(
            out,
            "<rect x=\"{x0:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" \
             opacity=\"0.7\"><title>{} {}</title></rect>",
            (x1 - x0).max(1.0),
            bottom - top,
            window_fill(&w.kind),
            xml_text(&w.kind),
            xml_text(&w.device),
        );
    }
}

fn rule_marks(out: &mut String, series: &TimeSeries, axes: Axes, top: f64, bottom: f64) {
    for m in &series.marks {
        let x = axes.x(m.at_ns);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{top:.1}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"{}\" \
             stroke-dasharray=\"4 2\"><title>{}</title></line>",
            mark_colour(&m.kind),
            xml_text(&mark_title(m)),
        );
    }
}

/// A mark stands where the engine generated the event; its tooltip also says when
/// WAIT_EVENT handed it to the user, which can be much later.
fn mark_title(m: &Mark) -> String {
    let mut title = format!(
        "{} {}: generated at {}",
        m.kind,
        m.device,
        text::duration_ns(m.at_ns)
    );
    if let Some(received) = m.received_ns {
        let _ = write!(
            title,
            ", returned by WAIT_EVENT at {}",
            text::duration_ns(received)
        );
    }
    title
}

/// A counter holds its value until the next sample: drawn as steps, not slopes.
fn draw_line(out: &mut String, axes: Axes, line: &Line, colour: &str) {
    let mut path = String::new();
    let mut last_y = axes.y(0.0);
    let _ = write!(path, "{:.1},{last_y:.1}", axes.x(0));
    for &(t, v) in &line.points {
        let (x, y) = (axes.x(t), axes.y(v));
        let _ = write!(path, " {x:.1},{last_y:.1} {x:.1},{y:.1}");
        last_y = y;
    }
    let _ = write!(path, " {:.1},{last_y:.1}", axes.x(u64::MAX));
    let _ = writeln!(
        out,
        "<polyline points=\"{path}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\">\
         <title>{} on {}</title></polyline>",
        xml_text(&line.name),
        xml_text(&line.device),
    );
}

fn value_axis(out: &mut String, axes: Axes) {
    let ticks: Vec<f64> = if axes.log {
        let decades = (1.0 + axes.max).log10().floor() as i32;
        (0..=decades).map(|d| 10f64.powi(d)).collect()
    } else {
        vec![0.0, axes.max / 2.0, axes.max]
    };
    for v in ticks {
        let y = axes.y(v);
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 4.0,
            y + 4.0,
            xml_text(&compact(v)),
        );
    }
    let scale = if axes.log { "log scale" } else { "linear" };
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#666\">{scale}</text>",
        WIDTH - RIGHT,
        TOP - 4.0,
    );
}

fn time_axis(out: &mut String, axes: Axes, y: f64) {
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#333\"/>",
        WIDTH - RIGHT
    );
    for q in 0..=4u64 {
        let ns = (axes.end_ns as u64).saturating_mul(q) / 4;
        let x = axes.x(ns);
        let anchor = match q {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            y + 4.0,
            y + 15.0,
            text::duration_ns(ns),
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#333\">virtual time</text>",
        (LEFT + WIDTH - RIGHT) / 2.0,
        y + 29.0,
    );
}

/// Axis labels: `1.5M`, `20k`, `7`.
fn compact(v: f64) -> String {
    let (scaled, suffix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if scaled.fract() == 0.0 {
        format!("{scaled:.0}{suffix}")
    } else {
        format!("{scaled:.1}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::Window;

    fn series() -> TimeSeries {
        let mut s = TimeSeries {
            end_ns: 1_000_000,
            ..TimeSeries::default()
        };
        let mut appended = Line::new(Plot::Storage, "appended", "sdb");
        appended.sample(0, 2_000_000.0);
        appended.finish();
        let mut filled = Line::new(Plot::Storage, "filled", "sdb");
        for i in 1..=10u64 {
            filled.sample(i * 50_000, (i * 100) as f64);
        }
        filled.finish();
        s.lines = vec![appended, filled];
        s.push_window(Window {
            kind: "freeze".into(),
            device: "sda".into(),
            start_ns: 100_000,
            end_ns: 200_000,
        });
        s.push_mark(Mark {
            kind: "low_space".into(),
            device: "snap".into(),
            at_ns: 600_000,
            received_ns: Some(700_000),
        });
        s
    }

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not well-formed: {e}\n{svg}"))
    }

    #[test]
    fn orders_of_magnitude_get_a_log_axis() {
        let svg = render_time_plot(&series(), Plot::Storage).expect("storage lines");
        let doc = parse(&svg);
        assert!(doc.descendants().any(|n| n.text() == Some("log scale")));
        let lines = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count();
        assert_eq!(lines, 2);
        // The window is shaded and the event is a rule.
        assert!(svg.contains(FREEZE_FILL) && svg.contains(LOW_SPACE));
        assert!(doc.descendants().any(|n| n.text() == Some("1.000 ms")));
    }

    #[test]
    fn similar_values_stay_linear_and_steps_reach_the_top() {
        let mut s = series();
        s.lines.remove(0);
        let svg = render_time_plot(&s, Plot::Storage).expect("a line");
        assert!(svg.contains(">linear<"));
        // The final value is the maximum: its step is drawn at the top of the plot.
        assert!(svg.contains(&format!(",{TOP:.1}")), "{svg}");
    }

    #[test]
    fn no_lines_no_plot_and_timeline_rows() {
        assert!(render_time_plot(&series(), Plot::Cow).is_none());
        assert!(render_timeline(&TimeSeries::default()).is_none());
        let svg = render_timeline(&series()).expect("one window, one mark");
        let doc = parse(&svg);
        assert_eq!(
            doc.descendants().filter(|n| n.has_tag_name("rect")).count(),
            1
        );
    }

    #[test]
    fn a_mark_says_when_it_was_generated_and_when_it_was_returned() {
        let want = "low_space snap: generated at 600.000 µs, returned by WAIT_EVENT at 700.000 µs";
        let plot = render_time_plot(&series(), Plot::Storage).expect("storage lines");
        let timeline = render_timeline(&series()).expect("a timeline");
        for svg in [plot, timeline] {
            let doc = parse(&svg);
            assert!(doc.descendants().any(|n| n.text() == Some(want)), "{svg}");
        }
    }

    #[test]
    fn compact_numbers() {
        assert_eq!(compact(7.0), "7");
        assert_eq!(compact(20_000.0), "20k");
        assert_eq!(compact(1_500_000.0), "1.5M");
    }
}
