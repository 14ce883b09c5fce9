//! The number syntax of system descriptions.
//!
//! Most numeric attributes take decimal or `0x` hexadecimal with `_`
//! anywhere as a separator (`0x4000_0000`), as Microkit's
//! `sdf_parse_number` does. Interrupt numbers and channel, IRQ and vCPU ids
//! are plain decimal, as Microkit reads them. Unlike Rust's
//! `from_str_radix`, a leading `+` is refused: the digits are the whole
//! value.

use std::fmt;

/// Why a string is not a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberError {
    /// No digits at all (`""`, `"0x"`, `"_"`).
    Empty,
    /// A character that is not a digit of the radix.
    InvalidDigit,
    /// The value does not fit in 64 bits.
    Overflow,
}

impl fmt::Display for NumberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NumberError::Empty => "no digits",
            NumberError::InvalidDigit => "invalid digit",
            NumberError::Overflow => "too large for 64 bits",
        })
    }
}

/// Parses decimal or `0x` hexadecimal, ignoring every `_`.
pub fn parse_number(text: &str) -> Result<u64, NumberError> {
    let digits: String = text.chars().filter(|&c| c != '_').collect();
    match digits.strip_prefix("0x") {
        Some(hex) => parse_radix(hex, 16),
        None => parse_radix(&digits, 10),
    }
}

/// Parses plain decimal: digits only, no `_`, no `0x`.
pub fn parse_decimal(text: &str) -> Result<u64, NumberError> {
    parse_radix(text, 10)
}

fn parse_radix(digits: &str, radix: u32) -> Result<u64, NumberError> {
    if digits.is_empty() {
        return Err(NumberError::Empty);
    }
    digits.chars().try_fold(0u64, |value, c| {
        let digit = c.to_digit(radix).ok_or(NumberError::InvalidDigit)?;
        value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or(NumberError::Overflow)
    })
}

/// Parses `true` or `false`, the only spellings Microkit takes.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{NumberError, parse_bool, parse_decimal, parse_number};

    #[test]
    fn decimal_and_hex() {
        assert_eq!(parse_number("0"), Ok(0));
        assert_eq!(parse_number("4096"), Ok(4096));
        assert_eq!(parse_number("0x1000"), Ok(0x1000));
        assert_eq!(parse_number("0xdeadBEEF"), Ok(0xdead_beef));
        assert_eq!(parse_number("0x4000_0000"), Ok(0x4000_0000));
        assert_eq!(parse_number("1_000_000"), Ok(1_000_000));
        assert_eq!(parse_number("0xffff_ffff_ffff_ffff"), Ok(u64::MAX));
        assert_eq!(parse_number("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        assert_eq!(parse_number(""), Err(NumberError::Empty));
        assert_eq!(parse_number("0x"), Err(NumberError::Empty));
        assert_eq!(parse_number("_"), Err(NumberError::Empty));
        assert_eq!(parse_number("+5"), Err(NumberError::InvalidDigit));
        assert_eq!(parse_number("-5"), Err(NumberError::InvalidDigit));
        assert_eq!(parse_number("12a"), Err(NumberError::InvalidDigit));
        assert_eq!(parse_number("0X10"), Err(NumberError::InvalidDigit));
        assert_eq!(parse_number("0xg"), Err(NumberError::InvalidDigit));
        assert_eq!(parse_number(" 1"), Err(NumberError::InvalidDigit));
        assert_eq!(parse_number("0x1_0000_0000_0000_0000"), Err(NumberError::Overflow));
        assert_eq!(parse_number("18446744073709551616"), Err(NumberError::Overflow));
    }

    #[test]
    fn plain_decimal_takes_no_hex_and_no_separators() {
        assert_eq!(parse_decimal("61"), Ok(61));
        assert_eq!(parse_decimal("007"), Ok(7));
        assert_eq!(parse_decimal("0x20"), Err(NumberError::InvalidDigit));
        assert_eq!(parse_decimal("1_0"), Err(NumberError::InvalidDigit));
        assert_eq!(parse_decimal(""), Err(NumberError::Empty));
    }

    #[test]
    fn booleans() {
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool("false"), Some(false));
        assert_eq!(parse_bool("True"), None);
        assert_eq!(parse_bool("1"), None);
    }
}
