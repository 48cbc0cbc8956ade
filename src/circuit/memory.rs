//! Memory thresholds: a share of Redis's `maxmemory` (`"85%"`) or an amount of bytes (`"2Gi"`).
//! Pure: the spec's strings are parsed here, and a threshold becomes bytes against the limit the
//! sample read.

use super::Bands;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Whole percents from 0 to 100, or bytes with an optional binary suffix.
const PATTERN: &str = r"^(([0-9]|[1-9][0-9]|100)%|[1-9][0-9]{0,15}(Ki|Mi|Gi|Ti)?)$";

/// The suffixes a memory threshold may end with; all three of a policy's end with the same one,
/// so that the schema can order them.
const UNITS: &str = "['%', 'Ki', 'Mi', 'Gi', 'Ti']";

/// `a < b` for two thresholds in one unit and without leading zeros: the shorter is the smaller,
/// and of two as long the first in text order.
fn less(a: &str, b: &str) -> String {
    format!("(size(self.{a}) < size(self.{b}) || (size(self.{a}) == size(self.{b}) && self.{a} < self.{b}))")
}

/// Redis memory (the fullest master's `used_memory`) that drives the circuit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(format!("{UNITS}.all(u, self.warning.endsWith(u) == self.critical.endsWith(u) && self.critical.endsWith(u) == self.recovery.endsWith(u))")).message("write the three memory thresholds in one unit: all percentages of maxmemory (\"85%\"), or all quantities with the same suffix (\"1536Mi\", not \"1.5Gi\" beside \"2Gi\")"))]
#[x_kube(validation = Rule::new(format!("{} && {}", less("recovery", "warning"), less("warning", "critical"))).message("memory thresholds must satisfy recovery < warning < critical: lower recovery or raise critical"))]
pub struct MemoryThresholds {
    /// From here the level is Warning, and an Open circuit must fall below it to half-open.
    #[schemars(length(max = 20), regex(pattern = PATTERN))]
    pub warning: String,
    /// From here the circuit opens and the level is Critical.
    #[schemars(length(max = 20), regex(pattern = PATTERN))]
    pub critical: String,
    /// At or below this a HalfOpen circuit closes.
    #[schemars(length(max = 20), regex(pattern = PATTERN))]
    pub recovery: String,
}

/// One memory threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryAmount {
    /// A share of `maxmemory`, in whole percents.
    Percent(u8),
    Bytes(u64),
}

impl MemoryAmount {
    /// `"85%"`, `"2Gi"`, `"1048576"`; `None` for what the schema refuses.
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(percent) = text.strip_suffix('%') {
            return percent
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 100)
                .map(MemoryAmount::Percent);
        }
        let (digits, unit) = [
            ("Ki", 1u64 << 10),
            ("Mi", 1 << 20),
            ("Gi", 1 << 30),
            ("Ti", 1 << 40),
        ]
        .into_iter()
        .find_map(|(suffix, unit)| text.strip_suffix(suffix).map(|digits| (digits, unit)))
        .unwrap_or((text, 1));
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .map(MemoryAmount::Bytes)
    }

    /// In bytes, against `max` (maxmemory); a percentage of no limit is `None`.
    pub fn bytes(self, max: Option<u64>) -> Option<u64> {
        match self {
            MemoryAmount::Bytes(bytes) => Some(bytes),
            MemoryAmount::Percent(percent) => {
                max.map(|max| (u128::from(max) * u128::from(percent) / 100) as u64)
            }
        }
    }
}

impl fmt::Display for MemoryAmount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryAmount::Percent(percent) => write!(f, "{percent}% of maxmemory"),
            MemoryAmount::Bytes(bytes) => write!(f, "{}", Bytes(*bytes)),
        }
    }
}

impl MemoryThresholds {
    /// The three levels, parsed (`None` for text the schema refuses).
    pub fn bands(&self) -> Option<Bands<MemoryAmount>> {
        Some(Bands {
            warning: MemoryAmount::parse(&self.warning)?,
            critical: MemoryAmount::parse(&self.critical)?,
            recovery: MemoryAmount::parse(&self.recovery)?,
        })
    }
}

impl Bands<MemoryAmount> {
    /// The levels in bytes against `max` (maxmemory); `None` for percentages of no limit.
    pub fn in_bytes(&self, max: Option<u64>) -> Option<Bands<u64>> {
        Some(Bands {
            warning: self.warning.bytes(max)?,
            critical: self.critical.bytes(max)?,
            recovery: self.recovery.bytes(max)?,
        })
    }
}

/// What a sample read of Redis memory: the fullest master's use and limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    pub used: u64,
    /// `maxmemory`; `None` when it is 0 (no limit).
    pub max: Option<u64>,
}

/// A byte count as a person reads it: `512 B`, `1.5 KiB`, `850.0 MiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < units.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_as_the_schema_writes_them() {
        assert_eq!(MemoryAmount::parse("85%"), Some(MemoryAmount::Percent(85)));
        assert_eq!(MemoryAmount::parse("0%"), Some(MemoryAmount::Percent(0)));
        assert_eq!(MemoryAmount::parse("101%"), None);
        assert_eq!(MemoryAmount::parse("2Gi"), Some(MemoryAmount::Bytes(2 << 30)));
        assert_eq!(
            MemoryAmount::parse("1536Mi"),
            Some(MemoryAmount::Bytes(1536 << 20))
        );
        assert_eq!(MemoryAmount::parse("4096"), Some(MemoryAmount::Bytes(4096)));
        assert_eq!(MemoryAmount::parse("2GB"), None);
        assert_eq!(MemoryAmount::parse("99999999999999999Ti"), None);
    }

    #[test]
    fn percentages_need_a_limit() {
        assert_eq!(MemoryAmount::Percent(85).bytes(Some(1000)), Some(850));
        assert_eq!(MemoryAmount::Percent(85).bytes(None), None);
        assert_eq!(MemoryAmount::Bytes(7).bytes(None), Some(7));
    }

    #[test]
    fn the_pattern_accepts_what_parse_reads() {
        let pattern = regex::Regex::new(PATTERN).unwrap();
        for text in ["0%", "9%", "85%", "100%", "1", "2Gi", "1536Mi", "64Ki", "1Ti"] {
            assert!(pattern.is_match(text), "{text}");
            assert!(MemoryAmount::parse(text).is_some(), "{text}");
        }
        for text in ["101%", "085%", "1.5Gi", "2GB", "0", "-1", "2 Gi", "%"] {
            assert!(!pattern.is_match(text), "{text}");
        }
    }

    #[test]
    fn bytes_read_as_a_person_writes_them() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(850 << 20).to_string(), "850.0 MiB");
    }
}
