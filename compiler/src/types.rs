//! The types the compiler reasons about: column types, literals and partition granularity.

use std::fmt;

/// The value types a column can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BaseType {
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// UTF-8 text.
    String,
    /// true / false.
    Bool,
    /// A calendar date.
    Date,
    /// A date and time without time zone (microsecond precision).
    Timestamp,
}

impl BaseType {
    /// The name used in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            BaseType::Int64 => "int64",
            BaseType::Float64 => "float64",
            BaseType::String => "string",
            BaseType::Bool => "bool",
            BaseType::Date => "date",
            BaseType::Timestamp => "timestamp",
        }
    }

    /// Whether arithmetic and numeric comparison apply.
    pub fn is_numeric(self) -> bool {
        matches!(self, BaseType::Int64 | BaseType::Float64)
    }

    /// Whether values of `self` and `other` can be compared with `<`, `==`, ...
    pub fn comparable_with(self, other: BaseType) -> bool {
        self == other || (self.is_numeric() && other.is_numeric())
    }

    fn from_name(name: &str) -> Option<BaseType> {
        Some(match name {
            "int64" => BaseType::Int64,
            "float64" => BaseType::Float64,
            "string" => BaseType::String,
            "bool" => BaseType::Bool,
            "date" => BaseType::Date,
            "timestamp" => BaseType::Timestamp,
            _ => return None,
        })
    }
}

/// A column type: a base type and whether nulls are allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ColumnType {
    /// The value type.
    pub base: BaseType,
    /// Whether the column may hold nulls.
    pub nullable: bool,
}

impl ColumnType {
    /// The type names accepted in pipeline files (without the `?` for nullable).
    pub const NAMES: [&'static str; 6] =
        ["int64", "float64", "string", "bool", "date", "timestamp"];

    /// Parses `int64`, `int64?`, `timestamp`, ...
    pub fn parse(text: &str) -> Option<ColumnType> {
        let text = text.trim();
        let (name, nullable) = match text.strip_suffix('?') {
            Some(name) => (name, true),
            None => (text, false),
        };
        BaseType::from_name(name).map(|base| ColumnType { base, nullable })
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            self.base.name(),
            if self.nullable { "?" } else { "" }
        )
    }
}

/// A literal value written in the pipeline file.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    String(String),
    /// A boolean.
    Bool(bool),
}

impl Literal {
    /// The type of the literal.
    pub fn base_type(&self) -> BaseType {
        match self {
            Literal::Int(_) => BaseType::Int64,
            Literal::Float(_) => BaseType::Float64,
            Literal::String(_) => BaseType::String,
            Literal::Bool(_) => BaseType::Bool,
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::String(s) => write!(f, "{s:?}"),
            Literal::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// How a pipeline's runs are partitioned in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// One partition per calendar month (`2021-01`).
    Monthly,
    /// One partition per day (`2021-01-15`).
    Daily,
    /// One partition per hour (`2021-01-15T07`).
    Hourly,
}

impl Granularity {
    /// Parses the name used in pipeline files.
    pub fn from_name(name: &str) -> Option<Granularity> {
        match name {
            "monthly" => Some(Granularity::Monthly),
            "daily" => Some(Granularity::Daily),
            "hourly" => Some(Granularity::Hourly),
            _ => None,
        }
    }

    /// The name used in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Monthly => "monthly",
            Granularity::Daily => "daily",
            Granularity::Hourly => "hourly",
        }
    }

    /// The partition key fields that are meaningful at this granularity.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Granularity::Monthly => &["year", "month"],
            Granularity::Daily => &["year", "month", "day"],
            Granularity::Hourly => &["year", "month", "day", "hour"],
        }
    }

    /// Checks a partition key such as `2019-01` against this granularity.
    pub fn is_valid_key(self, key: &str) -> bool {
        let parts: Vec<&str> = key.split(['-', 'T']).collect();
        let widths: &[usize] = match self {
            Granularity::Monthly => &[4, 2],
            Granularity::Daily => &[4, 2, 2],
            Granularity::Hourly => &[4, 2, 2, 2],
        };
        let separators_ok = match self {
            Granularity::Hourly => key.matches('T').count() == 1,
            _ => !key.contains('T'),
        };
        if !separators_ok || parts.len() != widths.len() {
            return false;
        }
        let numbers: Option<Vec<u32>> = parts
            .iter()
            .zip(widths)
            .map(|(part, width)| {
                (part.len() == *width && part.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| part.parse().ok())
                    .flatten()
            })
            .collect();
        let Some(numbers) = numbers else { return false };
        let month_ok = (1..=12).contains(&numbers[1]);
        let day_ok = numbers.get(2).is_none_or(|d| (1..=31).contains(d));
        let hour_ok = numbers.get(3).is_none_or(|h| *h < 24);
        month_ok && day_ok && hour_ok
    }
}
