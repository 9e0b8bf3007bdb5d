//! Human-readable sizes (`"64MiB"`) and durations (`"200ms"`) as written in config files.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A size in bytes. Written as a plain integer (bytes) or a string with a unit: `B`, decimal
/// `KB`/`MB`/`GB`/`TB` (powers of 1000) or binary `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024);
/// units are case-insensitive and may follow a space: `"64MiB"`, `"10 MB"`, `"4096"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KIB: u64 = 1 << 10;
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        if number.is_empty() {
            return Err(format!(
                "invalid size {s:?}: expected a whole number with an optional unit, like \"64MiB\""
            ));
        }
        let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "kib" => Self::KIB,
            "mib" => Self::MIB,
            "gib" => Self::GIB,
            "tib" => 1 << 40,
            other => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit `{other}` (use B, KB, MB, GB, TB, KiB, \
                     MiB, GiB or TiB)"
                ));
            }
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {s:?}: too large"))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that represents the size exactly: `64MiB`, `1500B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            (1u64 << 40, "TiB"),
            (Self::GIB, "GiB"),
            (Self::MIB, "MiB"),
            (Self::KIB, "KiB"),
        ];
        for (size, unit) in units {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Parses a human duration (`"200ms"`, `"5s"`, `"1m"`, `"1h 30m"`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub(crate) fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_plain_bytes_and_units() {
        let cases = [
            ("4096", 4096),
            ("64MiB", 64 << 20),
            ("10 MiB", 10 << 20),
            ("1GiB", 1 << 30),
            ("1gib", 1 << 30),
            ("512KiB", 512 << 10),
            ("10MB", 10_000_000),
            ("7B", 7),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn bad_sizes_say_what_is_wrong() {
        assert!("".parse::<ByteSize>().unwrap_err().contains("whole number"));
        assert!(
            "1.5GiB"
                .parse::<ByteSize>()
                .unwrap_err()
                .contains("unknown unit `.5gib`")
        );
        assert!(
            "64MB/s"
                .parse::<ByteSize>()
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(
            "99999999999TiB"
                .parse::<ByteSize>()
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn sizes_display_in_the_largest_exact_unit_and_round_trip() {
        for bytes in [0, 1, 1500, 1024, 64 << 20, 3 << 30, (1 << 40) + 1] {
            let size = ByteSize(bytes);
            assert_eq!(size.to_string().parse::<ByteSize>(), Ok(size));
        }
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
    }

    #[test]
    fn durations_parse_human_forms() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .starts_with("invalid duration")
        );
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
    }
}
