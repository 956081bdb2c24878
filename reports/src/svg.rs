//! Horizontal bar charts as standalone SVG, for embedding in the HTML report.
//!
//! Charts are drawn by hand rather than with a plotting crate so that the output is small,
//! needs no scripts or fonts, and is byte-for-byte the same for the same input. Values may be
//! negative (deltas against a baseline); the zero line then sits inside the plot.

use std::fmt::Write as _;

use crate::text::{self, xml_attr, xml_text};

/// One bar: a label on the left, a bar, and the value as text on the right.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Category name shown left of the bar (shortened if long; the full text is a tooltip).
    pub label: String,
    /// Length of the bar. Infinite values are drawn to the edge of the plot; NaN as no bar.
    pub value: f64,
    /// What to print beside the bar, e.g. `"1.250 ms"` or `"+12.5%"`.
    pub text: String,
    /// Draw in the warning colour (e.g. a regression).
    pub highlight: bool,
}

/// A titled chart of bars sharing one axis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BarChart {
    /// Heading drawn above the bars.
    pub title: String,
    /// Caption of the value axis, e.g. `"virtual time (ns)"`.
    pub axis_label: String,
    /// The bars, top to bottom.
    pub bars: Vec<Bar>,
}

impl BarChart {
    /// An empty chart.
    pub fn new(title: impl Into<String>, axis_label: impl Into<String>) -> Self {
        BarChart {
            title: title.into(),
            axis_label: axis_label.into(),
            bars: Vec::new(),
        }
    }

    /// Appends a bar in the normal colour.
    pub fn push(&mut self, label: impl Into<String>, value: f64, text: impl Into<String>) {
        self.bars.push(Bar {
            label: label.into(),
            value,
            text: text.into(),
            highlight: false,
        });
    }
}

const WIDTH: f64 = 760.0;
const LABEL_W: f64 = 210.0;
const VALUE_W: f64 = 110.0;
const TOP: f64 = 34.0;
const ROW: f64 = 22.0;
const BAR_H: f64 = 14.0;
const BOTTOM: f64 = 44.0;
const LABEL_CHARS: usize = 30;
const BAR_COLOUR: &str = "#4c78a8";
const HIGHLIGHT_COLOUR: &str = "#d62728";

/// The value range the plot spans; always includes zero so bars start at the zero line.
#[derive(Debug, Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
}

impl Scale {
    fn of(bars: &[Bar]) -> Scale {
        let finite = bars.iter().map(|b| b.value).filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((0.0_f64, 0.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        // All-zero (or all-infinite) data still needs a non-empty range to draw an axis.
        let hi = if hi == lo { lo + 1.0 } else { hi };
        Scale { lo, hi }
    }

    /// X coordinate of `v`; infinities clamp to the plot edges.
    fn x(self, v: f64) -> f64 {
        let v = v.clamp(self.lo, self.hi);
        LABEL_W + (v - self.lo) / (self.hi - self.lo) * plot_width()
    }
}

fn plot_width() -> f64 {
    WIDTH - LABEL_W - VALUE_W
}

/// Renders `chart` as an SVG document (also valid inline in HTML).
pub fn render_bar_chart(chart: &BarChart) -> String {
    let rows = chart.bars.len().max(1) as f64;
    let height = TOP + rows * ROW + BOTTOM;
    let scale = Scale::of(&chart.bars);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH:.0} {height:.0}\" role=\"img\" aria-label=\"{}\" \
         font-family=\"sans-serif\" font-size=\"12\">",
        xml_attr(&chart.title)
    );
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        8.0,
        xml_text(&chart.title)
    );
    if chart.bars.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"{LABEL_W:.1}\" y=\"{:.1}\" fill=\"#666\">no data</text>",
            TOP + ROW * 0.7
        );
    }
    for (i, bar) in chart.bars.iter().enumerate() {
        draw_bar(&mut out, scale, TOP + i as f64 * ROW, bar);
    }
    draw_axis(&mut out, scale, TOP + rows * ROW, &chart.axis_label);
    out.push_str("</svg>\n");
    out
}

fn draw_bar(out: &mut String, scale: Scale, y: f64, bar: &Bar) {
    let text_y = y + ROW / 2.0 + 4.0;
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{text_y:.1}\" text-anchor=\"end\"><title>{}</title>{}</text>",
        LABEL_W - 6.0,
        xml_text(&bar.label),
        xml_text(&text::truncate(&bar.label, LABEL_CHARS)),
    );
    if !bar.value.is_nan() {
        let (x0, x1) = (scale.x(0.0), scale.x(bar.value));
        let colour = if bar.highlight {
            HIGHLIGHT_COLOUR
        } else {
            BAR_COLOUR
        };
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{BAR_H:.1}\" fill=\"{colour}\"/>",
            x0.min(x1),
            y + (ROW - BAR_H) / 2.0,
            (x1 - x0).abs(),
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{text_y:.1}\">{}</text>",
        WIDTH - VALUE_W + 6.0,
        xml_text(&bar.text),
    );
}

fn draw_axis(out: &mut String, scale: Scale, y: f64, label: &str) {
    let (left, right) = (LABEL_W, LABEL_W + plot_width());
    let _ = writeln!(
        out,
        "<line x1=\"{left:.1}\" y1=\"{y:.1}\" x2=\"{right:.1}\" y2=\"{y:.1}\" stroke=\"#333\"/>"
    );
    // The zero line makes the sign of each bar obvious when the data goes negative.
    let zero = scale.x(0.0);
    let _ = writeln!(
        out,
        "<line x1=\"{zero:.1}\" y1=\"{TOP:.1}\" x2=\"{zero:.1}\" y2=\"{y:.1}\" stroke=\"#999\"/>"
    );
    let mut ticks = vec![scale.lo, scale.hi];
    if scale.lo < 0.0 {
        ticks.insert(1, 0.0);
    }
    for v in ticks {
        let x = scale.x(v);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            y + 4.0,
            y + 16.0,
            xml_text(&text::number(v)),
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#333\">{}</text>",
        (left + right) / 2.0,
        y + 34.0,
        xml_text(label),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not well-formed: {e}\n{svg}"))
    }

    fn rect_widths(doc: &roxmltree::Document<'_>) -> Vec<f64> {
        doc.descendants()
            .filter(|n| n.has_tag_name("rect"))
            .map(|n| {
                n.attribute("width")
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(-1.0)
            })
            .collect()
    }

    #[test]
    fn bars_are_proportional() {
        let mut chart = BarChart::new("virtual time", "ns");
        chart.push("a", 100.0, "100");
        chart.push("b", 50.0, "50");
        chart.push("c", 0.0, "0");
        let svg = render_bar_chart(&chart);
        let doc = parse(&svg);
        assert_eq!(rect_widths(&doc), [plot_width(), plot_width() / 2.0, 0.0]);
        let texts: Vec<_> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.contains(&"virtual time") && texts.contains(&"ns"));
        assert!(texts.contains(&"50"));
    }

    #[test]
    fn hostile_labels_are_escaped() {
        let mut chart = BarChart::new("t<&>\"'", "a<x>");
        chart.push("a<b&\"c\"\u{1}", 1.0, "<1>");
        let svg = render_bar_chart(&chart);
        let doc = parse(&svg);
        let root = doc.root_element();
        assert_eq!(root.attribute("aria-label"), Some("t<&>\"'"));
        let tooltip = doc
            .descendants()
            .find(|n| n.has_tag_name("title"))
            .and_then(|n| n.text());
        assert_eq!(tooltip, Some("a<b&\"c\""));
    }

    #[test]
    fn negative_values_straddle_zero() {
        let mut chart = BarChart::new("delta", "%");
        chart.push("up", 50.0, "+50%");
        chart.push("down", -50.0, "-50%");
        let svg = render_bar_chart(&chart);
        let doc = parse(&svg);
        let rects: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect"))
            .collect();
        let x = |i: usize| rects[i].attribute("x").unwrap_or_default().to_string();
        let mid = LABEL_W + plot_width() / 2.0;
        assert_eq!(x(0), format!("{mid:.1}"));
        assert_eq!(x(1), format!("{LABEL_W:.1}"));
        assert_eq!(rect_widths(&doc), [plot_width() / 2.0, plot_width() / 2.0]);
    }

    #[test]
    fn infinite_clamps_and_nan_draws_nothing() {
        let mut chart = BarChart::new("t", "x");
        chart.push("inf", f64::INFINITY, "from 0");
        chart.push("two", 2.0, "2");
        chart.push("nan", f64::NAN, "NaN");
        let svg = render_bar_chart(&chart);
        let doc = parse(&svg);
        assert_eq!(rect_widths(&doc), [plot_width(), plot_width()]);
    }

    #[test]
    fn highlight_colour() {
        let mut chart = BarChart::new("t", "x");
        chart.bars.push(Bar {
            label: "r".into(),
            value: 1.0,
            text: "1".into(),
            highlight: true,
        });
        assert!(render_bar_chart(&chart).contains(HIGHLIGHT_COLOUR));
    }

    #[test]
    fn empty_and_all_zero_charts_are_well_formed() {
        let empty = render_bar_chart(&BarChart::new("empty", "x"));
        assert!(parse(&empty)
            .descendants()
            .any(|n| n.text() == Some("no data")));
        let mut zeros = BarChart::new("zeros", "x");
        zeros.push("a", 0.0, "0");
        let svg = render_bar_chart(&zeros);
        assert!(!svg.contains("NaN"), "{svg}");
        parse(&svg);
    }

    #[test]
    fn long_labels_are_shortened() {
        let mut chart = BarChart::new("t", "x");
        let long = "x".repeat(100);
        chart.push(long.clone(), 1.0, "1");
        let svg = render_bar_chart(&chart);
        assert!(svg.contains(&format!("{}…", "x".repeat(LABEL_CHARS - 1))));
        assert!(svg.contains(&format!("<title>{long}</title>")));
    }
}
