//! Reboot windows as locksmith has them: a start (`Sun 04:00` or `Sun,04:00`, or `04:00`
//! for every day, in UTC) and a length (`3h`); the manager takes a slot only inside one.

use std::time::Duration;

use time::OffsetDateTime;

const DAY_MINUTES: i64 = 24 * 60;
const WEEK_MINUTES: i64 = 7 * DAY_MINUTES;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Why a reboot window given on the command line is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// The start is not `Sun 04:00`, `Sun,04:00` or `04:00` (`0`: the start, cut short).
    #[error("reboot window '{0}' is not 'Sun 04:00' or '04:00'")]
    Start(String),
    /// The length is not a duration (`shown`: the length, cut short).
    #[error("reboot window length '{shown}': {reason}")]
    Length { shown: String, reason: String },
    /// The length is below a minute or above a day (a week with a day given).
    #[error("reboot window length must be between 1m and {max}")]
    LengthRange { max: &'static str },
}

/// A recurring window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RebootWindow {
    /// Day of the week (0 = Monday), or every day.
    day: Option<i64>,
    /// Minutes after midnight UTC.
    start: i64,
    /// Length in minutes (at most a week).
    length: i64,
}

impl RebootWindow {
    /// Parses `start` (`Sun 04:00` or `04:00`) and `length` (`3h`, `90m`).
    pub(crate) fn parse(start: &str, length: &str) -> Result<RebootWindow, WindowError> {
        let bad = || WindowError::Start(super::semaphore::cut(start, 32));
        let (day, clock) = match start.trim().split_once([' ', ',']) {
            Some((d, c)) => {
                let d = d.trim().to_ascii_lowercase();
                let i = DAYS
                    .iter()
                    .position(|x| d.len() >= 3 && x.starts_with(&d[..3]) && is_day(&d))
                    .ok_or_else(bad)?;
                (i64::try_from(i).ok(), c.trim())
            }
            None => (None, start.trim()),
        };
        let (h, m) = clock.split_once(':').ok_or_else(bad)?;
        let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if !(0..24).contains(&h) || !(0..60).contains(&m) || clock.len() > 5 {
            return Err(bad());
        }
        let length: Duration =
            humantime::parse_duration(length.trim()).map_err(|e| WindowError::Length {
                shown: super::semaphore::cut(length, 32),
                reason: e.to_string(),
            })?;
        let minutes = i64::try_from(length.as_secs() / 60).unwrap_or(i64::MAX);
        let limit = if day.is_some() {
            WEEK_MINUTES
        } else {
            DAY_MINUTES
        };
        if minutes < 1 || minutes > limit {
            return Err(WindowError::LengthRange {
                max: if day.is_some() { "7d" } else { "24h" },
            });
        }
        Ok(RebootWindow {
            day,
            start: h * 60 + m,
            length: minutes,
        })
    }

    /// Whether `now` falls inside the window.
    pub(crate) fn contains(&self, now: OffsetDateTime) -> bool {
        let now = now.to_offset(time::UtcOffset::UTC);
        let minute_of_day = i64::from(now.hour()) * 60 + i64::from(now.minute());
        match self.day {
            None => (minute_of_day - self.start).rem_euclid(DAY_MINUTES) < self.length,
            Some(day) => {
                let weekday = i64::from(now.weekday().number_days_from_monday());
                let minute_of_week = weekday * DAY_MINUTES + minute_of_day;
                (minute_of_week - (day * DAY_MINUTES + self.start)).rem_euclid(WEEK_MINUTES)
                    < self.length
            }
        }
    }
}

fn is_day(d: &str) -> bool {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    d.len() == 3 || FULL.contains(&d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_weekly_window_wraps_around_the_week() {
        let w = RebootWindow::parse("Sun 23:00", "3h").unwrap();
        assert!(w.contains(datetime!(2026-11-29 23:30 UTC))); // a Sunday
        assert!(w.contains(datetime!(2026-11-30 01:59 UTC))); // Monday
        assert!(!w.contains(datetime!(2026-11-30 02:00 UTC)));
        assert!(!w.contains(datetime!(2026-11-29 22:59 UTC)));
        assert!(!w.contains(datetime!(2026-11-28 23:30 UTC))); // Saturday
    }

    #[test]
    fn a_daily_window_and_bad_input() {
        let w = RebootWindow::parse("04:00", "90m").unwrap();
        assert!(w.contains(datetime!(2026-11-25 05:29 UTC)));
        assert!(!w.contains(datetime!(2026-11-25 05:30 UTC)));
        assert_eq!(
            RebootWindow::parse("sunday 04:00", "1h").unwrap(),
            RebootWindow::parse("Sun 04:00", "1h").unwrap()
        );
        assert_eq!(
            RebootWindow::parse("Sun,04:00", "1h").unwrap(),
            RebootWindow::parse("Sun 04:00", "1h").unwrap()
        );
        for (start, len) in [
            ("Sun 25:00", "1h"),
            ("Sunny 04:00", "1h"),
            ("Sun", "1h"),
            ("04:00", "2d"),
            ("04:00", "0s"),
            ("04:00", "soon"),
        ] {
            assert!(RebootWindow::parse(start, len).is_err(), "{start} {len}");
        }
    }
}
