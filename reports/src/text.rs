//! Escaping and number formatting shared by the renderers.
//!
//! Everything a renderer prints that came from a scenario (names, paths, checker messages)
//! passes through here, so hostile text cannot break the markup. Formatting is explicit and
//! locale-free so that the same report always renders to the same bytes.

/// True for characters XML 1.0 allows. Rust `char`s are never surrogates, so only the C0
/// controls (other than tab, newline, carriage return) and U+FFFE/U+FFFF are illegal.
fn xml_legal(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// Drops the characters XML 1.0 cannot carry (mostly terminal control codes); also used for
/// Markdown, where such bytes would only garble the reader's screen.
pub(crate) fn clean(s: &str) -> String {
    s.chars().filter(|&c| xml_legal(c)).collect()
}

/// Escapes text for XML/HTML element content and drops characters XML 1.0 cannot carry.
pub(crate) fn xml_text(s: &str) -> String {
    escape(s, false)
}

/// Escapes text for a quoted XML/HTML attribute. Tab, newline and carriage return are written
/// as character references because parsers normalise literal ones in attributes to spaces.
pub(crate) fn xml_attr(s: &str) -> String {
    escape(s, true)
}

fn escape(s: &str, attr: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|&c| xml_legal(c)) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' if attr => out.push_str("&#9;"),
            '\n' if attr => out.push_str("&#10;"),
            '\r' if attr => out.push_str("&#13;"),
            _ => out.push(c),
        }
    }
    out
}

/// Simulated time with a unit a human can read: `850 ns`, `1.250 µs`, `3.000 ms`, `2.500 s`.
pub(crate) fn duration_ns(ns: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "µs")];
    for (scale, unit) in UNITS {
        if ns >= scale {
            // Integer arithmetic keeps the output exact for every u64.
            let whole = ns / scale;
            let milli = (ns % scale) / (scale / 1000);
            return format!("{whole}.{milli:03} {unit}");
        }
    }
    format!("{ns} ns")
}

/// A metric value: whole numbers without a fraction, others with three decimals.
pub(crate) fn number(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN"
        } else if v > 0.0 {
            "inf"
        } else {
            "-inf"
        }
        .to_string();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// A signed relative change in percent, e.g. `+12.5%`.
pub(crate) fn percent(fraction: f64) -> String {
    if !fraction.is_finite() {
        return number(fraction);
    }
    format!("{:+.1}%", fraction * 100.0)
}

/// `1 regression`, `2 regressions`: counts in summaries read as sentences.
pub(crate) fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// First 12 characters of a digest: enough to tell runs apart in a table.
pub(crate) fn short_digest(digest: &str) -> String {
    digest.chars().take(12).collect()
}

/// Shortens `s` to at most `max` characters, marking the cut with an ellipsis.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            xml_text(r#"a<b&"c"'>"#),
            "a&lt;b&amp;&quot;c&quot;&#39;&gt;"
        );
    }

    #[test]
    fn strips_illegal_characters() {
        assert_eq!(
            xml_text("a\u{0}b\u{1b}c\u{FFFF}d\te\nf\rg"),
            "abcd\te\nf\rg"
        );
        assert_eq!(xml_attr("a\tb\nc\rd\u{7}"), "a&#9;b&#10;c&#13;d");
    }

    #[test]
    fn keeps_non_ascii() {
        assert_eq!(xml_text("µs – 日本 \u{10348}"), "µs – 日本 \u{10348}");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ns(0), "0 ns");
        assert_eq!(duration_ns(999), "999 ns");
        assert_eq!(duration_ns(1_250), "1.250 µs");
        assert_eq!(duration_ns(3_000_000), "3.000 ms");
        assert_eq!(duration_ns(2_500_000_000), "2.500 s");
        assert_eq!(duration_ns(u64::MAX), "18446744073.709 s");
    }

    #[test]
    fn numbers() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(-2.0), "-2");
        assert_eq!(number(0.125), "0.125");
        assert_eq!(number(1e20), "100000000000000000000.000");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::NEG_INFINITY), "-inf");
        assert_eq!(percent(0.125), "+12.5%");
        assert_eq!(percent(-0.5), "-50.0%");
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("ééééé", 3), "éé…");
        assert_eq!(short_digest("0123456789abcdef"), "0123456789ab");
        assert_eq!(count(1, "run"), "1 run");
        assert_eq!(count(0, "run"), "0 runs");
    }
}
