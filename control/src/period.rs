//! Budget periods in UTC: calendar day, ISO week (from Monday), calendar month, or all time.

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day number.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// `YYYY-MM-DD` of a day number.
pub fn day_text(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The first day (number) of the period holding `now_ms`.
pub fn period_start_day(period: &str, now_ms: i64) -> i64 {
    let day = day_of(now_ms);
    match period {
        "daily" => day,
        // 1970-01-01 was a Thursday: Monday is 3 days earlier in the week.
        "weekly" => day - (day + 3).rem_euclid(7),
        "monthly" => {
            let (y, m, _) = civil_from_days(day);
            days_from_civil(y, m, 1)
        }
        _ => i64::MIN / DAY_MS,
    }
}

pub fn period_start_ms(period: &str, now_ms: i64) -> i64 {
    match period {
        "daily" | "weekly" | "monthly" => period_start_day(period, now_ms) * DAY_MS,
        _ => 0,
    }
}

pub fn check_period(period: &str) -> Result<(), String> {
    match period {
        "daily" | "weekly" | "monthly" | "total" => Ok(()),
        other => Err(format!(
            "period {other:?} is not one of daily, weekly, monthly, total"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(day_text(days_from_civil(2026, 11, 23)), "2026-11-23");
        // 2026-11-23 is a Monday; 2026-11-26 a Thursday.
        let thu = days_from_civil(2026, 11, 26) * DAY_MS + 5;
        assert_eq!(
            period_start_day("weekly", thu),
            days_from_civil(2026, 11, 23)
        );
        assert_eq!(
            period_start_day("monthly", thu),
            days_from_civil(2026, 11, 1)
        );
        assert_eq!(period_start_ms("total", thu), 0);
    }
}
