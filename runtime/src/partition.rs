//! Time partitions: a run processes one month, day or hour.

use std::fmt;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, Timelike};
use polars::prelude::{DataType, Expr, TimeUnit, lit};

/// How a pipeline's runs are partitioned in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One partition per month, keyed `2021-01`.
    Monthly,
    /// One partition per day, keyed `2021-01-15`.
    Daily,
    /// One partition per hour, keyed `2021-01-15T07`.
    Hourly,
}

impl Granularity {
    /// The name used in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Monthly => "monthly",
            Granularity::Daily => "daily",
            Granularity::Hourly => "hourly",
        }
    }

    fn example(self) -> &'static str {
        match self {
            Granularity::Monthly => "2021-01",
            Granularity::Daily => "2021-01-15",
            Granularity::Hourly => "2021-01-15T07",
        }
    }
}

/// One partition: a granularity and the first instant it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition {
    start: NaiveDateTime,
    granularity_rank: u8,
}

impl Partition {
    /// Parses a partition key (`2021-01`, `2021-01-15`, `2021-01-15T07`) at a granularity.
    pub fn parse(granularity: Granularity, key: &str) -> Result<Partition, String> {
        let bad = || {
            format!(
                "`{key}` is not a {} partition; write it like `{}`",
                granularity.name(),
                granularity.example()
            )
        };
        let start = match granularity {
            Granularity::Monthly => NaiveDate::parse_from_str(&format!("{key}-01"), "%Y-%m-%d")
                .ok()
                .filter(|_| key.len() == 7),
            Granularity::Daily => NaiveDate::parse_from_str(key, "%Y-%m-%d")
                .ok()
                .filter(|_| key.len() == 10),
            Granularity::Hourly => {
                NaiveDateTime::parse_from_str(&format!("{key}:00:00"), "%Y-%m-%dT%H:%M:%S")
                    .ok()
                    .filter(|_| key.len() == 13)
                    .map(|t| t.date())
            }
        }
        .ok_or_else(bad)?;
        let hour = match granularity {
            Granularity::Hourly => key[11..13].parse::<u32>().map_err(|_| bad())?,
            _ => 0,
        };
        let start = start.and_hms_opt(hour, 0, 0).ok_or_else(bad)?;
        Ok(Partition {
            start,
            granularity_rank: rank(granularity),
        })
    }

    /// The partition containing `instant`.
    pub fn containing(granularity: Granularity, instant: NaiveDateTime) -> Partition {
        let date = instant.date();
        let start = match granularity {
            Granularity::Monthly => NaiveDate::from_ymd_opt(date.year(), date.month(), 1)
                .expect("day 1 exists")
                .and_hms_opt(0, 0, 0),
            Granularity::Daily => date.and_hms_opt(0, 0, 0),
            Granularity::Hourly => date.and_hms_opt(instant.hour(), 0, 0),
        }
        .expect("midnight and whole hours exist");
        Partition {
            start,
            granularity_rank: rank(granularity),
        }
    }

    /// The granularity.
    pub fn granularity(&self) -> Granularity {
        match self.granularity_rank {
            0 => Granularity::Monthly,
            1 => Granularity::Daily,
            _ => Granularity::Hourly,
        }
    }

    /// The next partition.
    pub fn next(&self) -> Partition {
        let start = match self.granularity() {
            Granularity::Monthly => {
                let (year, month) = if self.start.month() == 12 {
                    (self.start.year() + 1, 1)
                } else {
                    (self.start.year(), self.start.month() + 1)
                };
                NaiveDate::from_ymd_opt(year, month, 1)
                    .expect("day 1 exists")
                    .and_hms_opt(0, 0, 0)
                    .expect("midnight exists")
            }
            Granularity::Daily => self.start + Duration::days(1),
            Granularity::Hourly => self.start + Duration::hours(1),
        };
        Partition {
            start,
            granularity_rank: self.granularity_rank,
        }
    }

    /// Every partition from `self` to `last`, both included.
    pub fn range_to(&self, last: &Partition) -> Vec<Partition> {
        let mut out = Vec::new();
        let mut at = *self;
        while at <= *last {
            out.push(at);
            at = at.next();
        }
        out
    }

    /// The key, e.g. `2021-01`.
    pub fn key(&self) -> String {
        match self.granularity() {
            Granularity::Monthly => self.start.format("%Y-%m").to_string(),
            Granularity::Daily => self.start.format("%Y-%m-%d").to_string(),
            Granularity::Hourly => self.start.format("%Y-%m-%dT%H").to_string(),
        }
    }

    /// The year.
    pub fn year(&self) -> i64 {
        i64::from(self.start.year())
    }

    /// The month, 1 to 12.
    pub fn month(&self) -> i64 {
        i64::from(self.start.month())
    }

    /// The day of month.
    pub fn day(&self) -> i64 {
        i64::from(self.start.day())
    }

    /// The hour.
    pub fn hour(&self) -> i64 {
        i64::from(self.start.hour())
    }

    /// The first instant of the partition.
    pub fn start_time(&self) -> NaiveDateTime {
        self.start
    }

    /// The first instant after the partition.
    pub fn end_time(&self) -> NaiveDateTime {
        self.next().start
    }

    /// `partition.start` as a polars literal: a date, or a timestamp for hourly partitions.
    pub fn start(&self) -> Expr {
        self.instant_lit(self.start)
    }

    /// `partition.end` as a polars literal.
    pub fn end(&self) -> Expr {
        self.instant_lit(self.end_time())
    }

    fn instant_lit(&self, instant: NaiveDateTime) -> Expr {
        match self.granularity() {
            Granularity::Hourly => {
                lit(instant).cast(DataType::Datetime(TimeUnit::Microseconds, None))
            }
            // polars turns a chrono date literal into a datetime; the pipeline's type is a date.
            _ => lit(instant.date()).cast(DataType::Date),
        }
    }
}

fn rank(granularity: Granularity) -> u8 {
    match granularity {
        Granularity::Monthly => 0,
        Granularity::Daily => 1,
        Granularity::Hourly => 2,
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monthly_keys_round_trip_and_step() {
        let jan = Partition::parse(Granularity::Monthly, "2021-01").unwrap();
        assert_eq!(jan.key(), "2021-01");
        assert_eq!(jan.next().key(), "2021-02");
        let dec = Partition::parse(Granularity::Monthly, "2020-12").unwrap();
        assert_eq!(dec.next().key(), "2021-01");
        let keys: Vec<String> = jan
            .range_to(&Partition::parse(Granularity::Monthly, "2021-03").unwrap())
            .iter()
            .map(Partition::key)
            .collect();
        assert_eq!(keys, ["2021-01", "2021-02", "2021-03"]);
        assert!(Partition::parse(Granularity::Monthly, "2021-13").is_err());
        assert!(Partition::parse(Granularity::Monthly, "2021-01-01").is_err());
    }

    #[test]
    fn daily_and_hourly_keys() {
        let day = Partition::parse(Granularity::Daily, "2021-02-28").unwrap();
        assert_eq!(day.next().key(), "2021-03-01");
        let hour = Partition::parse(Granularity::Hourly, "2021-02-28T23").unwrap();
        assert_eq!(hour.next().key(), "2021-03-01T00");
        assert_eq!(hour.hour(), 23);
    }
}
