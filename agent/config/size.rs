//! Sizes as operators write them: "64M" is 64 MiB; K, M, G, T are powers of 1024.

/// Parses "512", "64K", "64M", "2G", "1T" (an optional trailing "B" or "iB" is accepted).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let upper = trimmed.to_ascii_uppercase();
    let without_unit = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match without_unit.chars().last() {
        Some('K') => (&without_unit[..without_unit.len() - 1], 10),
        Some('M') => (&without_unit[..without_unit.len() - 1], 20),
        Some('G') => (&without_unit[..without_unit.len() - 1], 30),
        Some('T') => (&without_unit[..without_unit.len() - 1], 40),
        _ => (without_unit, 0),
    };
    let number: u64 = digits.trim().parse().map_err(|_| {
        format!("`{text}` is not a size: use a whole number with an optional K, M, G or T suffix")
    })?;
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

/// The other way: powers of 1024 with the same suffixes, whole numbers without decimals
/// ("64M", "12.3M", "512B").
pub fn format_size(value: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        let unit = 1u64 << shift;
        if value >= unit {
            return if value.is_multiple_of(unit) {
                format!("{}{suffix}", value / unit)
            } else {
                format!("{:.1}{suffix}", value as f64 / unit as f64)
            };
        }
    }
    format!("{value}B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_are_written_with_the_same_suffixes() {
        assert_eq!(format_size(64 << 20), "64M");
        assert_eq!(format_size(12_897_484), "12.3M");
        assert_eq!(format_size(2 << 30), "2G");
        assert_eq!(format_size(1536), "1.5K");
        assert_eq!(format_size(512), "512B");
    }

    #[test]
    fn suffixes_are_powers_of_1024() {
        assert_eq!(parse_size("64M"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
    }

    #[test]
    fn garbage_and_overflow_are_errors() {
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,12}") {
            let _ = parse_size(&text);
        }

        #[test]
        fn whole_sizes_round_trip(n in 1u64..1024, shift in prop::sample::select(vec![0u32, 10, 20, 30, 40])) {
            let value = n << shift;
            prop_assert_eq!(parse_size(&format_size(value)), Ok(value));
        }

        #[test]
        fn round_trips_mebibytes(n in 0u64..1_000_000) {
            prop_assert_eq!(parse_size(&format!("{n}M")), Ok(n << 20));
        }
    }
}
