//! Writing the Prometheus text exposition (0.0.4) by hand: a family's header before its first
//! series, a series' labels escaped, its value spelled as the format spells it. The per-policy
//! series (`policy_series.rs`) and the published values (`values_text.rs`) are both written so.

use std::fmt::Write as _;

/// One family being written: its `# HELP` and `# TYPE` lines go out before its first series,
/// and not at all when it has none.
pub(super) struct FamilyText {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    written: bool,
}

impl FamilyText {
    /// `kind`: `gauge`, `counter` or `histogram`.
    pub(super) fn new(name: &'static str, help: &'static str, kind: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            written: false,
        }
    }

    /// Writes one series `name{labels} value` (`name` differs from the family's for a
    /// histogram's `_bucket`, `_sum` and `_count`); `labels` in the order they are written.
    pub(super) fn series(&mut self, out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
        if !self.written {
            let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
            let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
            self.written = true;
        }
        out.push_str(name);
        out.push('{');
        for (at, (label, value)) in labels.iter().enumerate() {
            if at > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_into(value, out);
            out.push('"');
        }
        out.push_str("} ");
        write_number(value, out);
        out.push('\n');
    }
}

/// A label value with `\`, `"` and line feeds escaped, as the text format requires (a
/// discovered queue's name comes from Redis and may hold any of them).
fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value: integers without a fraction, `+Inf`/`-Inf`/`NaN` spelled as the format does.
pub(super) fn write_number(value: f64, out: &mut String) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_numbers_spelled_as_the_format_does() {
        let mut out = String::new();
        escape_into("a\\b\"c\nd", &mut out);
        assert_eq!(out, "a\\\\b\\\"c\\nd");
        for (value, text) in [
            (7.0, "7"),
            (1.5, "1.5"),
            (-0.25, "-0.25"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            let mut out = String::new();
            write_number(value, &mut out);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn a_family_has_its_header_once_and_only_with_a_series() {
        let mut out = String::new();
        let mut family = FamilyText::new("levee_x", "An x", "gauge");
        assert_eq!(out, "");
        family.series(&mut out, "levee_x", &[("namespace", "a"), ("policy", "q\"")], 1.0);
        family.series(&mut out, "levee_x", &[("namespace", "b"), ("policy", "p")], 2.5);
        assert_eq!(
            out,
            "# HELP levee_x An x\n# TYPE levee_x gauge\nlevee_x{namespace=\"a\",policy=\"q\\\"\"} 1\nlevee_x{namespace=\"b\",policy=\"p\"} 2.5\n"
        );
    }
}
