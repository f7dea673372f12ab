//! The I/O port grant format of init's protocol.
//!
//! Units name ports (`ioports = ["0x600-0x67f", "0xcf9"]`), an enumerator
//! asks init to grant ranges to a driver instance (`spawn-io`), and init
//! tells the process what it granted in `INIT_IOPORTS`: inclusive hex
//! ranges, space separated (`"600-67f cf9-cf9"`). This module is the one
//! parser and formatter of all three; the checked port accesses themselves
//! are the driver kit's (`common::port::PortGrant`).

use std::io;
use std::ops::RangeInclusive;

/// Environment variable in which init lists the ports it granted.
pub const IOPORTS_ENV: &str = "INIT_IOPORTS";

/// One hex number, with or without `0x`, that fits in 16 bits.
fn parse_port(text: &str) -> Option<u16> {
    let hex = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if hex.is_empty() || hex.len() > 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// Parses one range: `"0x600-0x67f"`, `"600-67f"` (inclusive) or a single
/// port (`"0xcf9"`, `"cf9"`). Numbers are hex, `0x` optional.
pub fn parse_range(word: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("{word:?} is not a port or an inclusive port range (hex, e.g. 0x70-0x71)");
    let (first, last) = match word.split_once('-') {
        Some((a, b)) => (
            parse_port(a).ok_or_else(bad)?,
            parse_port(b).ok_or_else(bad)?,
        ),
        None => {
            let p = parse_port(word).ok_or_else(bad)?;
            (p, p)
        }
    };
    if first > last {
        return Err(format!("{word:?}: the range ends before it starts"));
    }
    Ok(first..=last)
}

/// Parses a grant as init writes it in `INIT_IOPORTS`: ranges separated by
/// white space. Empty text is an empty grant.
pub fn parse_grant(text: &str) -> Result<Vec<RangeInclusive<u16>>, String> {
    text.split_whitespace().map(parse_range).collect()
}

/// Formats ranges the way [`parse_grant`] reads them: `"600-67f cf9-cf9"`.
pub fn format_grant(ranges: &[RangeInclusive<u16>]) -> String {
    ranges
        .iter()
        .map(|r| format!("{:x}-{:x}", r.start(), r.end()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The ports init granted this process (from `INIT_IOPORTS`); empty when
/// the variable is unset, an error when it is malformed.
pub fn granted_from_env() -> io::Result<Vec<RangeInclusive<u16>>> {
    match std::env::var(IOPORTS_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(Vec::new()),
        Err(std::env::VarError::NotUnicode(_)) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{IOPORTS_ENV} is not UTF-8"),
        )),
        Ok(text) => parse_grant(&text).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{IOPORTS_ENV}: {e}"))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_with_or_without_0x() {
        assert_eq!(parse_range("0x600-0x67f"), Ok(0x600..=0x67f));
        assert_eq!(parse_range("600-67f"), Ok(0x600..=0x67f));
        assert_eq!(parse_range("0xcf9"), Ok(0xcf9..=0xcf9));
        assert_eq!(parse_range("CF9"), Ok(0xcf9..=0xcf9));
        assert_eq!(parse_range("0-ffff"), Ok(0..=0xffff));
        for bad in [
            "",
            "-",
            "0x",
            "70-",
            "-71",
            "0x10000",
            "12345",
            "71-70",
            "zz",
            "70 71",
            "0x70-0x71-0x72",
        ] {
            assert!(parse_range(bad).is_err(), "{bad:?}");
        }
        assert!(parse_range("71-70").unwrap_err().contains("ends before"));
    }

    #[test]
    fn grants_round_trip_through_the_env_format() {
        let g = vec![0x600..=0x67f, 0xcf9..=0xcf9, 0x70..=0x71];
        let text = format_grant(&g);
        assert_eq!(text, "600-67f cf9-cf9 70-71");
        assert_eq!(parse_grant(&text), Ok(g));
        assert_eq!(parse_grant(""), Ok(vec![]));
        assert_eq!(
            parse_grant("  70-71\t80 "),
            Ok(vec![0x70..=0x71, 0x80..=0x80])
        );
        assert!(parse_grant("70-71 nope").is_err());
    }
}
