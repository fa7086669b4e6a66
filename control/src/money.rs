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

/// The text of a decimal without surrounding spaces and an optional `+`; refuses empty and
/// negative ones.
fn unsigned(text: &str) -> Result<&str, DecimalError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DecimalError::Empty);
    }
    if text.starts_with('-') {
        return Err(DecimalError::Negative);
    }
    Ok(text.strip_prefix('+').unwrap_or(text))
}

/// Parses a non-negative decimal such as `0.15`, `3`, `.5` or `2.000001` into millionths.
pub fn parse_micros(text: &str) -> Result<u64, DecimalError> {
    let text = unsigned(text)?;
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

/// Parses a non-negative decimal as providers write it (`"0.00000015"`, `1.5e-7`, `22.5`) and
/// returns it times 10^`shift`, rounded half up to an integer: `parse_scaled("0.00000015", 12)`
/// is USD per token turned into micro-USD per million tokens (150,000). The text is read as
/// digits, never through a binary float, so `"0.0000003"` gives exactly 300,000.
pub fn parse_scaled(text: &str, shift: i32) -> Result<u64, DecimalError> {
    let text = unsigned(text)?;
    let (number, exponent) = match text.find(['e', 'E']) {
        Some(at) => {
            let exp: i32 = text[at + 1..]
                .parse()
                .map_err(|_| DecimalError::NotANumber)?;
            (&text[..at], exp)
        }
        None => (text, 0),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(DecimalError::NotANumber);
    }
    let frac = frac.trim_end_matches('0');
    let whole = whole.trim_start_matches('0');
    let digits = format!("{whole}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 36 {
        return Err(DecimalError::TooLarge);
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| DecimalError::NotANumber)?
    };
    let power = i64::from(shift) + i64::from(exponent) - frac.len() as i64;
    let value = if power >= 0 {
        let factor = u32::try_from(power)
            .ok()
            .and_then(|p| 10u128.checked_pow(p))
            .ok_or(DecimalError::TooLarge)?;
        mantissa.checked_mul(factor).ok_or(DecimalError::TooLarge)?
    } else {
        match u32::try_from(-power)
            .ok()
            .and_then(|p| 10u128.checked_pow(p))
        {
            Some(divisor) => (mantissa + divisor / 2) / divisor,
            None => 0,
        }
    };
    u64::try_from(value).map_err(|_| DecimalError::TooLarge)
}

/// `amount * ppm / 10^6`, rounded half up, saturating: a price in one currency converted with
/// a rate in millionths of a USD per unit.
pub fn convert_ppm(amount: u64, ppm: u64) -> u64 {
    let scaled = (u128::from(amount) * u128::from(ppm) + u128::from(SCALE / 2)) / u128::from(SCALE);
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_decimals_are_exact() {
        assert_eq!(parse_scaled("0.00000015", 12), Ok(150_000));
        assert_eq!(parse_scaled("0.0000003", 12), Ok(300_000));
        assert_eq!(parse_scaled("0.000075", 12), Ok(75_000_000));
        assert_eq!(parse_scaled("0.00000007", 12), Ok(70_000));
        assert_eq!(parse_scaled("1.5e-07", 12), Ok(150_000));
        assert_eq!(parse_scaled("1.25E-6", 12), Ok(1_250_000));
        assert_eq!(parse_scaled("22.5", 6), Ok(22_500_000));
        assert_eq!(parse_scaled("0", 12), Ok(0));
        assert_eq!(parse_scaled("0.00435825", 9), Ok(4_358_250));
        assert_eq!(parse_scaled("4.25e-06", 9), Ok(4_250));
        // Below the unit: rounded half up.
        assert_eq!(parse_scaled("0.0000000000005", 12), Ok(1));
        assert_eq!(parse_scaled("0.0000000000004", 12), Ok(0));
        assert_eq!(parse_scaled("-1", 12), Err(DecimalError::Negative));
        assert_eq!(parse_scaled("abc", 12), Err(DecimalError::NotANumber));
        assert_eq!(parse_scaled("1e", 12), Err(DecimalError::NotANumber));
        assert_eq!(parse_scaled("", 12), Err(DecimalError::Empty));
        assert_eq!(parse_scaled("1e30", 12), Err(DecimalError::TooLarge));
        assert_eq!(parse_scaled("1e-400", 12), Ok(0));
        assert_eq!(convert_ppm(1_000_000, 140_000), 140_000);
        assert_eq!(convert_ppm(3, 500_000), 2);
    }

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
