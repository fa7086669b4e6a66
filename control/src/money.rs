//! Exact decimal amounts for prices and multipliers.
//!
//! Operators type decimals ("0.15", "3"); the store and the route table hold integers with six
//! decimal places (micro-USD per million tokens, parts per million), so that no price ever passes
//! through a binary float.

use std::fmt;

/// Six decimal places: the unit of prices (micro-USD per million tokens) and multipliers (ppm).
pub const SCALE: u64 = 1_000_000;

/// Why a decimal was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecimalError {
    Empty,
    Negative,
    NotANumber,
    TooPrecise,
    TooLarge,
}

impl fmt::Display for DecimalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecimalError::Empty => "is empty",
            DecimalError::Negative => "is negative",
            DecimalError::NotANumber => "is not a decimal number",
            DecimalError::TooPrecise => "has more than 6 decimal places",
            DecimalError::TooLarge => "is too large",
        })
    }
}

/// Parses a non-negative decimal such as `0.15`, `3`, `.5` or `2.000001` into millionths.
pub fn parse_micros(text: &str) -> Result<u64, DecimalError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DecimalError::Empty);
    }
    if text.starts_with('-') {
        return Err(DecimalError::Negative);
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(DecimalError::NotANumber);
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > 6 {
        return Err(DecimalError::TooPrecise);
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| DecimalError::TooLarge)?
    };
    let mut frac_value: u64 = 0;
    for (i, digit) in frac.bytes().enumerate() {
        frac_value += u64::from(digit - b'0') * 10u64.pow(5 - i as u32);
    }
    whole
        .checked_mul(SCALE)
        .and_then(|w| w.checked_add(frac_value))
        .ok_or(DecimalError::TooLarge)
}

/// Formats millionths as the shortest exact decimal: 150000 → "0.15", 3000000 → "3".
pub fn format_micros(value: u64) -> String {
    let whole = value / SCALE;
    let frac = value % SCALE;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_decimals() {
        assert_eq!(parse_micros("0.15"), Ok(150_000));
        assert_eq!(parse_micros("3"), Ok(3_000_000));
        assert_eq!(parse_micros(".5"), Ok(500_000));
        assert_eq!(parse_micros("5."), Ok(5_000_000));
        assert_eq!(parse_micros("+2.000001"), Ok(2_000_001));
        assert_eq!(parse_micros("0.0375000"), Ok(37_500));
        assert_eq!(parse_micros(" 10 "), Ok(10_000_000));
        assert_eq!(parse_micros("0"), Ok(0));
    }

    #[test]
    fn refuses_what_is_not_a_price() {
        assert_eq!(parse_micros(""), Err(DecimalError::Empty));
        assert_eq!(parse_micros("-1"), Err(DecimalError::Negative));
        assert_eq!(parse_micros("abc"), Err(DecimalError::NotANumber));
        assert_eq!(parse_micros("."), Err(DecimalError::NotANumber));
        assert_eq!(parse_micros("1e-3"), Err(DecimalError::NotANumber));
        assert_eq!(parse_micros("1.2.3"), Err(DecimalError::NotANumber));
        assert_eq!(parse_micros("NaN"), Err(DecimalError::NotANumber));
        assert_eq!(parse_micros("0.0000001"), Err(DecimalError::TooPrecise));
        assert_eq!(
            parse_micros("99999999999999999999"),
            Err(DecimalError::TooLarge)
        );
        assert_eq!(parse_micros("18446744073710"), Err(DecimalError::TooLarge));
    }

    #[test]
    fn formats_round_trip() {
        for text in ["0.15", "3", "0.0375", "2.000001", "0"] {
            assert_eq!(format_micros(parse_micros(text).unwrap()), text);
        }
    }
}
