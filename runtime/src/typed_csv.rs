//! A CSV parser for the plain layout of a declared schema: unquoted fields, numbers written as
//! plain decimals, timestamps as `2021-01-01 00:15:56`, dates as `2021-01-01`.
//!
//! polars' reader is general: it finds the record boundaries for its threads, keeps a builder
//! per column that accepts any layout, and (as `source::read_csv` uses it) reads timestamps as
//! text to parse them again afterwards. A source's columns are compiled into the pipeline, so
//! the usual file needs none of that: each field goes straight into a typed array. Whatever this
//! parser does not recognise (a quote anywhere, a ragged row, `1e5`, a timestamp in another
//! layout, text that is not UTF-8) makes it give up on the whole text, and the caller parses it
//! with polars as before; so it either returns exactly what polars would or nothing.

use chrono::Datelike;
use polars::prelude::*;
use polars_arrow::array::{BooleanArray, MutableBinaryViewArray};
use polars_arrow::bitmap::MutableBitmap;
use polars_arrow::datatypes::ArrowDataType;
use polars_core::runtime::THREAD_POOL;

use crate::pipeline::{BaseType, Column};

/// Texts shorter than this are parsed on one thread: starting threads costs more than it saves.
const MIN_BYTES_PER_THREAD: usize = 1 << 20;

/// Parses `text` (a header row, then records) into a frame of `columns` in their order, or
/// `None` when the text is not in the plain layout and polars must parse it. `header` is the
/// text's header row, split.
pub(crate) fn parse(text: &[u8], header: &[String], columns: &[Column]) -> Option<DataFrame> {
    // A quote can put a comma or a newline inside a field; such files take the general path.
    if memchr::memchr(b'"', text).is_some() {
        return None;
    }
    let slots = field_slots(header, columns)?;
    let body = match memchr::memchr(b'\n', text) {
        Some(end) => &text[end + 1..],
        None => &[],
    };
    let parts = split_at_records(body, threads_for(body.len()));
    let parsed = parse_parts(&parts, &slots, columns);
    let mut frame: Option<DataFrame> = None;
    for part in parsed {
        let (rows, builders) = part?;
        let part = DataFrame::new(
            rows,
            builders
                .into_iter()
                .zip(columns)
                .map(|(builder, column)| builder.finish(column.name).into_column())
                .collect(),
        )
        .ok()?;
        match &mut frame {
            None => frame = Some(part),
            Some(frame) => {
                frame.vstack_mut_owned(part).ok()?;
            }
        }
    }
    frame
}

/// For each field of the header, the index of the declared column it fills, if any. `None` when
/// a declared column is missing or named twice (the general path reports or resolves those).
fn field_slots(header: &[String], columns: &[Column]) -> Option<Vec<Option<usize>>> {
    let slots: Vec<Option<usize>> = header
        .iter()
        .map(|name| columns.iter().position(|c| c.name == name.as_str()))
        .collect();
    let every_column_once = (0..columns.len())
        .all(|index| slots.iter().filter(|slot| **slot == Some(index)).count() == 1);
    every_column_once.then_some(slots)
}

/// How many threads parse `bytes` of records: one per thread of polars' pool, each given at
/// least `MIN_BYTES_PER_THREAD`.
fn threads_for(bytes: usize) -> usize {
    (bytes / MIN_BYTES_PER_THREAD).clamp(1, THREAD_POOL.current_num_threads())
}

/// Parses the pieces of text side by side on polars' pool, whose threads already have their
/// allocator arenas (threads made for each parse would each grow new ones).
fn parse_parts(
    parts: &[&[u8]],
    slots: &[Option<usize>],
    columns: &[Column],
) -> Vec<Option<(usize, Vec<ColumnBuilder>)>> {
    match parts {
        [] => Vec::new(),
        [part] => vec![parse_records(part, slots, columns)],
        _ => {
            let (left, right) = parts.split_at(parts.len() / 2);
            let (mut parsed, rest) = THREAD_POOL.join(
                || parse_parts(left, slots, columns),
                || parse_parts(right, slots, columns),
            );
            parsed.extend(rest);
            parsed
        }
    }
}

/// Cuts records (without quotes) into at most `parts` pieces of about equal size, each ending
/// at the end of a record.
fn split_at_records(body: &[u8], parts: usize) -> Vec<&[u8]> {
    let mut pieces = Vec::with_capacity(parts);
    let mut rest = body;
    for remaining in (2..=parts).rev() {
        let target = rest.len() / remaining;
        match memchr::memchr(b'\n', &rest[target..]) {
            Some(offset) => {
                let (piece, after) = rest.split_at(target + offset + 1);
                pieces.push(piece);
                rest = after;
            }
            None => break,
        }
    }
    pieces.push(rest);
    pieces
}

/// Parses records into one builder per declared column, with the number of records, or `None`
/// at the first field or record this parser does not take.
fn parse_records(
    records: &[u8],
    slots: &[Option<usize>],
    columns: &[Column],
) -> Option<(usize, Vec<ColumnBuilder>)> {
    // Counting the records first (a vectorised search) sizes every column's array exactly:
    // grown as rows arrive, each would be copied several times over.
    let expected_rows = memchr::memchr_iter(b'\n', records).count() + 1;
    let mut builders: Vec<ColumnBuilder> = columns
        .iter()
        .map(|c| ColumnBuilder::new(c.ty, expected_rows))
        .collect();
    let last = slots.len().checked_sub(1)?;
    let mut rows = 0;
    let mut at = 0;
    // One pass over the text: each field ends at the next comma or newline, and the record
    // must end exactly at its last field.
    while at < records.len() {
        // polars and this parser might read a blank line differently; leave it to polars.
        if matches!(records[at..], [b'\n', ..] | [b'\r', b'\n', ..]) {
            return None;
        }
        for (position, slot) in slots.iter().enumerate() {
            let rest = &records[at..];
            let length = rest
                .iter()
                .position(|byte| *byte == b',' || *byte == b'\n')
                .unwrap_or(rest.len());
            let mut field = &rest[..length];
            let ends_record = rest.get(length) != Some(&b',');
            if ends_record != (position == last) {
                return None;
            }
            if ends_record && let [value @ .., b'\r'] = field {
                field = value;
            }
            at += length + 1;
            if let Some(index) = slot {
                builders[*index].push(field)?;
            }
        }
        rows += 1;
    }
    Some((rows, builders))
}

/// The values of one column of one piece of text, and which of them are null (made only once a
/// null is met: most columns of most files have none).
struct ColumnBuilder {
    values: Values,
    validity: Option<MutableBitmap>,
    len: usize,
}

enum Values {
    Int64(Vec<i64>),
    Float64(Vec<f64>),
    Bool(MutableBitmap),
    Date(Vec<i32>),
    Timestamp(Vec<i64>, LastDay),
    Text(MutableBinaryViewArray<str>),
}

impl ColumnBuilder {
    fn new(ty: BaseType, rows: usize) -> ColumnBuilder {
        let values = match ty {
            BaseType::Int64 => Values::Int64(Vec::with_capacity(rows)),
            BaseType::Float64 => Values::Float64(Vec::with_capacity(rows)),
            BaseType::Bool => Values::Bool(MutableBitmap::with_capacity(rows)),
            BaseType::Date => Values::Date(Vec::with_capacity(rows)),
            BaseType::Timestamp => Values::Timestamp(Vec::with_capacity(rows), LastDay::default()),
            BaseType::String => Values::Text(MutableBinaryViewArray::with_capacity(rows)),
        };
        ColumnBuilder {
            values,
            validity: None,
            len: 0,
        }
    }

    /// Adds one field's value: an empty field is null, as polars reads it. `None` when the
    /// field is not in the plain layout of the column's type.
    fn push(&mut self, field: &[u8]) -> Option<()> {
        if field.is_empty() {
            self.push_null();
        } else {
            match &mut self.values {
                Values::Int64(values) => values.push(parse_int(field)?),
                Values::Float64(values) => values.push(parse_float(field)?),
                Values::Bool(values) => values.push(parse_bool(field)?),
                Values::Date(values) => values.push(parse_date(field)?),
                Values::Timestamp(values, last_day) => {
                    values.push(parse_timestamp(field, last_day)?)
                }
                Values::Text(values) => values.push_value(std::str::from_utf8(field).ok()?),
            }
            if let Some(validity) = &mut self.validity {
                validity.push(true);
            }
        }
        self.len += 1;
        Some(())
    }

    fn push_null(&mut self) {
        match &mut self.values {
            Values::Int64(values) | Values::Timestamp(values, _) => values.push(0),
            Values::Float64(values) => values.push(0.0),
            Values::Bool(values) => values.push(false),
            Values::Date(values) => values.push(0),
            // The text array keeps its own validity.
            Values::Text(values) => {
                values.push_null();
                return;
            }
        }
        self.validity
            .get_or_insert_with(|| {
                let mut validity = MutableBitmap::with_capacity(self.len + 1);
                validity.extend_constant(self.len, true);
                validity
            })
            .push(false);
    }

    fn finish(self, name: &str) -> Series {
        let name = PlSmallStr::from_str(name);
        let validity = self.validity.map(Into::into);
        match self.values {
            Values::Int64(values) => {
                Int64Chunked::from_vec_validity(name, values, validity).into_series()
            }
            Values::Float64(values) => {
                Float64Chunked::from_vec_validity(name, values, validity).into_series()
            }
            Values::Bool(values) => BooleanChunked::with_chunk(
                name,
                BooleanArray::new(ArrowDataType::Boolean, values.into(), validity),
            )
            .into_series(),
            Values::Date(values) => Int32Chunked::from_vec_validity(name, values, validity)
                .into_date()
                .into_series(),
            Values::Timestamp(values, _) => Int64Chunked::from_vec_validity(name, values, validity)
                .into_datetime(TimeUnit::Microseconds, None)
                .into_series(),
            Values::Text(values) => StringChunked::with_chunk(name, values.freeze()).into_series(),
        }
    }
}

/// `-?[0-9]{1,18}`: every such integer fits an `i64`; longer ones are left to polars.
fn parse_int(field: &[u8]) -> Option<i64> {
    let (negative, digits) = match field {
        [b'-', digits @ ..] => (true, digits),
        digits => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut value: i64 = 0;
    for byte in digits {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value * 10 + i64::from(digit);
    }
    Some(if negative { -value } else { value })
}

/// `-?[0-9]*(\.[0-9]*)?` with at least one digit, as the nearest `f64`.
fn parse_float(field: &[u8]) -> Option<f64> {
    let (negative, unsigned) = match field {
        [b'-', unsigned @ ..] => (true, unsigned),
        unsigned => (false, unsigned),
    };
    let mut mantissa: u64 = 0;
    let mut digits = 0u32;
    let mut decimals: Option<u32> = None;
    for &byte in unsigned {
        match byte {
            b'0'..=b'9' => {
                // Wraps only past 19 digits, and then the exact path below is not taken.
                mantissa = mantissa
                    .wrapping_mul(10)
                    .wrapping_add(u64::from(byte - b'0'));
                digits += 1;
                if let Some(decimals) = &mut decimals {
                    *decimals += 1;
                }
            }
            b'.' if decimals.is_none() => decimals = Some(0),
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    if digits > 15 {
        // Too many digits for one exact division: the parser polars' reader uses.
        return fast_float2::parse(field).ok();
    }
    // Clinger's fast path: the digits (under 10^15) and the power of ten are both exact
    // doubles, so one correctly rounded division gives the nearest double to the decimal, as
    // any correct parser does. It is the common case and skips a second pass over the text.
    // At most 15 digits, so at most 15 decimals.
    let value = mantissa as f64 / EXACT_POWERS_OF_TEN[decimals.unwrap_or(0) as usize];
    Some(if negative { -value } else { value })
}

/// The powers of ten a decimal of the fast path divides by: up to 10^15, as many as its
/// digits, all held exactly by a double.
const EXACT_POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

fn parse_bool(field: &[u8]) -> Option<bool> {
    match field {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}

/// `YYYY-MM-DD` as days since 1970-01-01, polars' date representation.
fn parse_date(field: &[u8]) -> Option<i32> {
    let [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = *field else {
        return None;
    };
    let date = chrono::NaiveDate::from_ymd_opt(
        i32::try_from(digits(&[y0, y1, y2, y3])?).ok()?,
        digits(&[m0, m1])?,
        digits(&[d0, d1])?,
    )?;
    // 1970-01-01 is day 719,163 of the common era.
    Some(date.num_days_from_ce() - 719_163)
}

/// The date of the last timestamp a column parsed, and its day number: a file's rows are
/// mostly in time order, so most timestamps share the date of the one before and skip the
/// calendar arithmetic.
#[derive(Default)]
struct LastDay(Option<([u8; 10], i64)>);

/// `YYYY-MM-DD HH:MM:SS` as microseconds since 1970-01-01 00:00:00.
fn parse_timestamp(field: &[u8], last_day: &mut LastDay) -> Option<i64> {
    let (date, time) = field.split_at_checked(10)?;
    let [b' ', h0, h1, b':', n0, n1, b':', s0, s1] = *time else {
        return None;
    };
    let (hours, minutes, seconds) = (digits(&[h0, h1])?, digits(&[n0, n1])?, digits(&[s0, s1])?);
    if hours > 23 || minutes > 59 || seconds > 59 {
        return None;
    }
    let day = match last_day.0 {
        Some((last, day)) if last == date => day,
        _ => {
            let day = i64::from(parse_date(date)?);
            last_day.0 = Some((date.try_into().ok()?, day));
            day
        }
    };
    let seconds = day * 86_400 + i64::from((hours * 60 + minutes) * 60 + seconds);
    Some(seconds * 1_000_000)
}

/// ASCII digits as a number.
fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |value, byte| {
        let digit = byte.wrapping_sub(b'0');
        (digit <= 9).then(|| value * 10 + u32::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::source::read_csv_with_polars;

    /// One column of each type, every one nullable, and a column the pipeline does not declare.
    const COLUMNS: &[Column] = &[
        Column::nullable("i", BaseType::Int64),
        Column::nullable("f", BaseType::Float64),
        Column::nullable("b", BaseType::Bool),
        Column::nullable("d", BaseType::Date),
        Column::nullable("t", BaseType::Timestamp),
        Column::nullable("s", BaseType::String),
    ];
    const HEADER: [&str; 7] = ["t", "i", "undeclared", "f", "b", "d", "s"];

    fn header() -> Vec<String> {
        HEADER.iter().map(|name| name.to_string()).collect()
    }

    fn text(rows: &[Vec<String>], line_end: &str, final_line_end: bool) -> Vec<u8> {
        let mut text = HEADER.join(",");
        for row in rows {
            text.push_str(line_end);
            text.push_str(&row.join(","));
        }
        if final_line_end {
            text.push_str(line_end);
        }
        text.into_bytes()
    }

    fn date() -> impl Strategy<Value = String> {
        (1900..2100u32, 1..=12u32, 1..=28u32).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}"))
    }

    fn timestamp() -> impl Strategy<Value = String> {
        (date(), 0..24u32, 0..60u32, 0..60u32)
            .prop_map(|(date, h, m, s)| format!("{date} {h:02}:{m:02}:{s:02}"))
    }

    /// A row in the plain layout, fields in `HEADER`'s order; an empty field is a null.
    fn plain_row() -> impl Strategy<Value = Vec<String>> {
        let or_null = |value: BoxedStrategy<String>| {
            prop_oneof![1 => Just(String::new()), 4 => value].boxed()
        };
        (
            or_null(timestamp().boxed()),
            or_null(any::<i64>().prop_map(|v| (v / 1_000).to_string()).boxed()),
            "[a-z]{0,3}",
            or_null(
                (-1e6..1e6f64, 0..6usize)
                    .prop_map(|(v, places)| format!("{v:.places$}"))
                    .boxed(),
            ),
            or_null(any::<bool>().prop_map(|v| v.to_string()).boxed()),
            or_null(date().boxed()),
            or_null("[a-zA-Z0-9 é_-]{1,8}".boxed()),
        )
            .prop_map(|(t, i, undeclared, f, b, d, s)| vec![t, i, undeclared, f, b, d, s])
    }

    /// Fields this parser leaves to polars, each put in the column where it is odd.
    fn odd_row() -> impl Strategy<Value = Vec<String>> {
        let odd = prop_oneof![
            (0..7usize, Just("007")),
            (1..2usize, Just("+5")),
            (1..2usize, Just("1.0")),
            (1..2usize, Just("99999999999999999999")),
            (1..2usize, Just(" 7")),
            (3..4usize, Just("1e5")),
            (3..4usize, Just("5.")),
            (3..4usize, Just(".5")),
            (3..4usize, Just("NaN")),
            (3..4usize, Just("-inf")),
            (4..5usize, Just("True")),
            (4..5usize, Just("1")),
            (5..6usize, Just("2021-02-30")),
            (5..6usize, Just("2021-1-5")),
            (0..1usize, Just("2021-01-01T00:15:56")),
            (0..1usize, Just("2021-01-01 00:15:56.5")),
            (0..1usize, Just("2021-01-01 24:00:00")),
            (6..7usize, Just("\"quoted, with a comma\"")),
            (6..7usize, Just("\"\"")),
        ];
        (plain_row(), odd).prop_map(|(mut row, (column, value))| {
            row[column] = value.to_string();
            row
        })
    }

    /// The typed parse, when it takes the text, equals polars' parse of it.
    fn agrees_with_polars(text: &[u8]) -> Result<bool, TestCaseError> {
        let Some(typed) = parse(text, &header(), COLUMNS) else {
            return Ok(false);
        };
        let general = read_csv_with_polars(text, &header(), COLUMNS)
            .map_err(|e| TestCaseError::fail(format!("polars rejects what was taken: {e}")))?;
        prop_assert_eq!(typed.schema(), general.schema());
        prop_assert!(
            typed.equals_missing(&general),
            "typed:\n{typed}\npolars:\n{general}"
        );
        Ok(true)
    }

    proptest! {
        /// Text in the plain layout is taken, and read as polars reads it.
        #[test]
        fn plain_text_is_read_as_polars_reads_it(
            rows in proptest::collection::vec(plain_row(), 1..40),
            crlf in any::<bool>(),
            final_line_end in any::<bool>(),
        ) {
            let text = text(&rows, if crlf { "\r\n" } else { "\n" }, final_line_end);
            prop_assert!(agrees_with_polars(&text)?, "the plain layout was not taken");
        }

        /// Text with odd fields is either left to polars or read as polars reads it.
        #[test]
        fn odd_text_is_left_to_polars_or_read_alike(
            rows in proptest::collection::vec(prop_oneof![plain_row(), odd_row()], 1..20),
        ) {
            agrees_with_polars(&text(&rows, "\n", true))?;
        }
    }

    proptest! {
        /// Every plain decimal parses to the same double, bit for bit, as with the parser
        /// polars' reader uses: on the exact path (up to 15 digits) and past it.
        #[test]
        fn decimals_parse_as_polars_parses_them(
            negative in any::<bool>(),
            integer in "[0-9]{0,12}",
            fraction in proptest::option::of("[0-9]{0,24}"),
        ) {
            let mut text = String::new();
            if negative {
                text.push('-');
            }
            text.push_str(&integer);
            if let Some(fraction) = &fraction {
                text.push('.');
                text.push_str(fraction);
            }
            let expected: Option<f64> = fast_float2::parse(text.as_bytes()).ok();
            let digits = integer.len() + fraction.as_ref().map_or(0, String::len);
            if digits == 0 {
                prop_assert_eq!(parse_float(text.as_bytes()), None);
            } else {
                let parsed = parse_float(text.as_bytes()).map(f64::to_bits);
                prop_assert_eq!(parsed, expected.map(f64::to_bits), "{}", text);
            }
        }
    }

    #[test]
    fn text_of_several_megabytes_is_read_on_several_threads_as_polars_reads_it() {
        let rows: Vec<Vec<String>> = (0..60_000)
            .map(|n| {
                let null = |text: String| if n % 7 == 3 { String::new() } else { text };
                vec![
                    format!(
                        "2021-01-{:02} {:02}:{:02}:17",
                        n / 2_500 + 1,
                        n % 24,
                        n % 60
                    ),
                    null(n.to_string()),
                    "x".to_string(),
                    null(format!("{}.{:02}", n / 3, n % 100)),
                    null((n % 2 == 0).to_string()),
                    format!("2021-02-{:02}", n % 28 + 1),
                    null(format!("text {n}")),
                ]
            })
            .collect();
        let text = text(&rows, "\n", true);
        assert!(text.len() > 3 * MIN_BYTES_PER_THREAD);
        assert!(agrees_with_polars(&text).unwrap());
        let typed = parse(&text, &header(), COLUMNS).unwrap();
        assert_eq!(typed.height(), 60_000);
        let nulls = (0..60_000).filter(|n| n % 7 == 3).count();
        assert_eq!(typed.column("i").unwrap().null_count(), nulls);
        if THREAD_POOL.current_num_threads() > 1 {
            assert!(typed.first_col_n_chunks() > 1, "one thread parsed it all");
        }
    }

    /// The green-taxi source's declared columns (pipelines/green_taxi_etl.toml), named by the
    /// file's header: the two timestamps required, the flag text, ids, types and counts
    /// integers, amounts and distances floats.
    fn green_columns(header: &[String]) -> Vec<Column> {
        header
            .iter()
            .map(|name| {
                let name: &'static str = Box::leak(name.clone().into_boxed_str());
                if name.ends_with("_datetime") {
                    return Column::required(name, BaseType::Timestamp);
                }
                let ty = if name == "store_and_fwd_flag" {
                    BaseType::String
                } else if name.ends_with("ID")
                    || name.ends_with("_type")
                    || name == "passenger_count"
                {
                    BaseType::Int64
                } else {
                    BaseType::Float64
                };
                Column::nullable(name, ty)
            })
            .collect()
    }

    /// Needs the real NYC TLC files in ../shared/data/tlc/green; fails saying so when absent.
    #[test]
    fn the_real_green_taxi_months_are_taken_and_read_as_polars_reads_them() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tlc/green");
        for month in ["2021-01", "2021-02", "2021-03"] {
            let path = dir.join(format!("green_tripdata_{month}.csv.gz"));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "this test needs the real NYC TLC files in {} (the project's shared data folder): {e}",
                    dir.display()
                )
            });
            let mut text = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::MultiGzDecoder::new(&bytes[..]),
                &mut text,
            )
            .unwrap();
            let header: Vec<String> =
                std::str::from_utf8(&text[..memchr::memchr(b'\n', &text).unwrap()])
                    .unwrap()
                    .trim_end()
                    .split(',')
                    .map(str::to_string)
                    .collect();
            let green = green_columns(&header);
            assert_eq!(green.len(), 20);
            let typed = parse(&text, &header, &green).expect("the plain layout is taken");
            let general = read_csv_with_polars(&text, &header, &green).unwrap();
            assert!(typed.height() > 60_000, "{month}: {} rows", typed.height());
            assert_eq!(typed.schema(), general.schema());
            assert!(typed.equals_missing(&general), "{month} differs");
        }
    }

    #[test]
    fn ragged_rows_blank_lines_and_missing_columns_are_left_to_polars() {
        let plain = "t,i,undeclared,f,b,d,s\n2021-01-01 00:00:00,1,x,1.5,true,2021-01-01,a\n";
        assert!(parse(plain.as_bytes(), &header(), COLUMNS).is_some());
        for odd in [
            "t,i,undeclared,f,b,d,s\n2021-01-01 00:00:00,1,x,1.5,true,2021-01-01\n",
            "t,i,undeclared,f,b,d,s\n2021-01-01 00:00:00,1,x,1.5,true,2021-01-01,a,extra\n",
            "t,i,undeclared,f,b,d,s\n\n2021-01-01 00:00:00,1,x,1.5,true,2021-01-01,a\n",
        ] {
            assert!(parse(odd.as_bytes(), &header(), COLUMNS).is_none(), "{odd}");
        }
        let without_s: Vec<String> = header().into_iter().filter(|h| h != "s").collect();
        assert!(parse(plain.as_bytes(), &without_s, COLUMNS).is_none());
        let twice: Vec<String> = header().into_iter().chain(["s".to_string()]).collect();
        assert!(parse(plain.as_bytes(), &twice, COLUMNS).is_none());
    }
}
