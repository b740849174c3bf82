//! Where each column's bytes lie in an encoded row, found without decoding.
//!
//! `arrow-row` encodes a row as its columns' encodings one after another: a
//! fixed-width value is a null byte and its bytes, a string a sentinel byte
//! and length-marked blocks. Walking those marks finds every column's span,
//! so an operator that only moves columns (a projection that drops or
//! reorders them, a key that is a column of the row) copies bytes instead of
//! decoding the row to Arrow and encoding it again, and an evaluation that
//! reads a few columns decodes only those. This module owns that walk and
//! nothing else: it never interprets a value, and it must agree with
//! `arrow-row`'s encoding exactly (its tests check it against the encoder).

use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Schema};

/// The block sizes and continuation mark of `arrow-row`'s variable-length
/// encoding (`arrow_row::variable`).
const BLOCK_SIZE: usize = 32;
const MINI_BLOCK_SIZE: usize = 8;
const MINI_BLOCK_COUNT: usize = 4;
const NON_EMPTY: u8 = 2;
const CONTINUATION: u8 = 0xFF;

/// How one column is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Width {
    /// A null byte and this many value bytes.
    Fixed(usize),
    /// A sentinel byte, then (for a non-empty value) blocks, each ended by
    /// a mark; `descending` flips every byte.
    Variable { descending: bool },
}

/// The layout of the rows of one schema: how to find each column's bytes.
#[derive(Clone, Debug)]
pub struct Layout {
    widths: Vec<Width>,
    options: Vec<SortOptions>,
}

impl Layout {
    /// The layout of rows of `schema` encoded with `options` (one per
    /// column); `None` when a column's type has an encoding this module
    /// does not walk (lists, structs, dictionaries, `NULL`).
    pub fn of(schema: &Schema, options: &[SortOptions]) -> Option<Layout> {
        let widths = schema
            .fields()
            .iter()
            .zip(options)
            .map(|(f, o)| width(f.data_type(), *o))
            .collect::<Option<Vec<_>>>()?;
        Some(Layout {
            widths,
            options: options.to_vec(),
        })
    }

    pub fn columns(&self) -> usize {
        self.widths.len()
    }

    /// Whether column `i` has a variable-length encoding (a string), whose
    /// decoding costs a copy and, for text, a UTF-8 check.
    pub fn is_variable(&self, i: usize) -> bool {
        matches!(self.widths[i], Width::Variable { .. })
    }

    /// Fill `ends` with the end offset of each of the first `count`
    /// columns of `row` (column `i` is `row[ends[i - 1]..ends[i]]`, from 0
    /// for the first). `None` for a row too short for its marks: not a row
    /// of this layout.
    pub fn ends(&self, row: &[u8], count: usize, ends: &mut Vec<usize>) -> Option<()> {
        ends.clear();
        let mut at = 0;
        for w in &self.widths[..count] {
            at += match *w {
                Width::Fixed(n) => 1 + n,
                Width::Variable { descending } => variable_len(row.get(at..)?, descending)?,
            };
            if at > row.len() {
                return None;
            }
            ends.push(at);
        }
        Some(())
    }

    /// Whether a column's bytes (as [`Layout::ends`] delimits them) hold
    /// NULL: its first byte is the null sentinel of its sort options.
    pub fn is_null(&self, column: usize, bytes: &[u8]) -> bool {
        let o = self.options[column];
        let sentinel = if o.nulls_first { 0 } else { 0xFF };
        bytes.first() == Some(&sentinel)
    }
}

/// Rows made of some columns of another layout's rows, in a chosen order,
/// by copying their bytes: the encoding of those columns in that order
/// under the same sort options, as the encoder would make it.
#[derive(Clone, Debug)]
pub struct Picker {
    layout: Layout,
    picks: Vec<usize>,
    /// How many leading columns a row is walked through.
    walk: usize,
    /// For each pick, the sort options it is re-encoded under where they
    /// differ from the layout's (fixed-width columns only).
    recode: Vec<Option<SortOptions>>,
}

impl Picker {
    /// Picks `picks` (columns of `layout`, in output order).
    pub fn new(layout: Layout, picks: Vec<usize>) -> Picker {
        let walk = picks.iter().map(|c| c + 1).max().unwrap_or(0);
        let recode = vec![None; picks.len()];
        Picker {
            layout,
            picks,
            walk,
            recode,
        }
    }

    /// Picks `picks` encoded under `options` (one per pick), as the
    /// encoder would encode them (a sort key `ORDER BY a DESC` out of a row
    /// that holds `a` ascending): a fixed-width value's bytes flip where
    /// the direction differs, and a NULL takes the other sentinel where
    /// NULLs sort the other way. `None` where the options of a string
    /// (whose blocks this does not re-encode) or of a value wider than 16
    /// bytes differ.
    pub fn recoded(layout: Layout, picks: Vec<usize>, options: &[SortOptions]) -> Option<Picker> {
        let recode = picks
            .iter()
            .zip(options)
            .map(|(&c, &o)| match (layout.options[c] == o, layout.widths[c]) {
                (true, _) => Some(None),
                (false, Width::Fixed(n)) if n <= MAX_FIXED => Some(Some(o)),
                (false, _) => None,
            })
            .collect::<Option<Vec<_>>>()?;
        (recode.len() == picks.len()).then(|| Picker {
            recode,
            ..Picker::new(layout, picks)
        })
    }

    /// The picked columns of `row`, appended to `out`; `None` when `row` is
    /// not a row of the layout. Consecutive picks are copied at once;
    /// `ends` is scratch space, left holding the row's column ends.
    pub fn pick(&self, row: &[u8], ends: &mut Vec<usize>, out: &mut crate::row::Row) -> Option<()> {
        self.layout.ends(row, self.walk, ends)?;
        if self.recode.iter().any(Option::is_some) {
            for (&c, to) in self.picks.iter().zip(&self.recode) {
                let bytes = &row[span(ends, c)];
                match to {
                    None => out.extend_from_slice(bytes),
                    Some(to) => self.recode_fixed(c, bytes, *to, out),
                }
            }
            return Some(());
        }
        let mut run: Option<std::ops::Range<usize>> = None;
        for &c in &self.picks {
            let s = span(ends, c);
            run = match run {
                Some(r) if r.end == s.start => Some(r.start..s.end),
                Some(r) => {
                    out.extend_from_slice(&row[r]);
                    Some(s)
                }
                None => Some(s),
            };
        }
        if let Some(r) = run {
            out.extend_from_slice(&row[r]);
        }
        Some(())
    }

    /// Fixed-width column `c`'s `bytes` as the encoder writes them under
    /// `to`: the valid byte 1 and the value, flipped where the direction
    /// differs, or the NULL sentinel and zeros.
    fn recode_fixed(&self, c: usize, bytes: &[u8], to: SortOptions, out: &mut crate::row::Row) {
        let from = self.layout.options[c];
        if self.layout.is_null(c, bytes) {
            out.extend_from_slice(&[if to.nulls_first { 0 } else { 0xFF }]);
            out.extend_from_slice(&ZEROS[..bytes.len() - 1]);
        } else if from.descending == to.descending {
            out.extend_from_slice(bytes);
        } else {
            let mut flipped = [0u8; 1 + MAX_FIXED];
            flipped[0] = bytes[0];
            for (f, b) in flipped[1..].iter_mut().zip(&bytes[1..]) {
                *f = !*b;
            }
            out.extend_from_slice(&flipped[..bytes.len()]);
        }
    }

    /// Whether any picked column of `row` is NULL, given the `ends` that
    /// [`Picker::pick`] left.
    pub fn any_null(&self, row: &[u8], ends: &[usize]) -> bool {
        self.picks
            .iter()
            .any(|&c| self.layout.is_null(c, &row[span(ends, c)]))
    }
}

/// The widest fixed-width value re-encoded (`Decimal128`, intervals; the
/// tests check each against the encoder), and that many zeros (a NULL's
/// value bytes).
const MAX_FIXED: usize = 16;
const ZEROS: [u8; MAX_FIXED] = [0; MAX_FIXED];

/// The span of column `i` given the `ends` of its row.
pub fn span(ends: &[usize], i: usize) -> std::ops::Range<usize> {
    let start = if i == 0 { 0 } else { ends[i - 1] };
    start..ends[i]
}

fn width(t: &DataType, o: SortOptions) -> Option<Width> {
    use DataType::*;
    let fixed = match t {
        Boolean | Int8 | UInt8 => 1,
        Int16 | UInt16 | Float16 => 2,
        Int32 | UInt32 | Float32 | Date32 | Time32(_) | Decimal32(..) => 4,
        Int64 | UInt64 | Float64 | Date64 | Time64(_) | Timestamp(..) | Duration(_) | Decimal64(..) => 8,
        Interval(arrow::datatypes::IntervalUnit::YearMonth) => 4,
        Interval(arrow::datatypes::IntervalUnit::DayTime) => 8,
        Interval(arrow::datatypes::IntervalUnit::MonthDayNano) | Decimal128(..) => 16,
        Decimal256(..) => 32,
        FixedSizeBinary(n) => usize::try_from(*n).ok()?,
        Utf8 | LargeUtf8 | Utf8View | Binary | LargeBinary | BinaryView => {
            return Some(Width::Variable {
                descending: o.descending,
            });
        }
        _ => return None,
    };
    Some(Width::Fixed(fixed))
}

/// The encoded length of the variable-length value at the start of `row`
/// (`arrow_row::variable::decode_blocks`, counting instead of copying).
fn variable_len(row: &[u8], descending: bool) -> Option<usize> {
    let flip = if descending { 0xFF } else { 0 };
    if *row.first()? != NON_EMPTY ^ flip {
        return Some(1); // NULL or empty
    }
    let mut at = 1;
    for _ in 0..MINI_BLOCK_COUNT {
        at += MINI_BLOCK_SIZE + 1;
        if *row.get(at - 1)? != CONTINUATION ^ flip {
            return Some(at);
        }
    }
    loop {
        at += BLOCK_SIZE + 1;
        if *row.get(at - 1)? != CONTINUATION ^ flip {
            return Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{
        Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int8Array,
        Int32Array, Int64Array, IntervalMonthDayNanoArray, StringArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, IntervalMonthDayNano};
    use arrow::row::{RowConverter, SortField};

    /// Strings of every length around the block boundaries, NULL and empty.
    fn strings(n: usize) -> Vec<Option<String>> {
        (0..n)
            .map(|i| match i % 7 {
                0 => None,
                1 => Some(String::new()),
                _ => Some("x".repeat((i * 5) % 90)),
            })
            .collect()
    }

    /// Columns of every walked type, and their schema.
    fn columns(n: usize) -> (Vec<ArrayRef>, Schema) {
        let s = strings(n);
        let opt = |i: usize| (!i.is_multiple_of(5)).then_some(i);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(s.clone())),
            Arc::new(Int64Array::from_iter(
                (0..n).map(|i| opt(i).map(|v| v as i64 - 7)),
            )),
            Arc::new(BooleanArray::from_iter(
                (0..n).map(|i| opt(i).map(|v| v % 2 == 0)),
            )),
            Arc::new(BinaryArray::from_iter(
                s.iter().rev().map(|v| v.as_ref().map(|v| v.as_bytes())),
            )),
            Arc::new(Int8Array::from_iter((0..n).map(|i| opt(i).map(|v| v as i8)))),
            Arc::new(Int32Array::from_iter((0..n).map(|i| opt(i).map(|v| v as i32)))),
            Arc::new(Float64Array::from_iter(
                (0..n).map(|i| opt(i).map(|v| v as f64 / 3.0)),
            )),
            Arc::new(Date32Array::from_iter((0..n).map(|i| opt(i).map(|v| v as i32)))),
            Arc::new(TimestampMicrosecondArray::from_iter(
                (0..n).map(|i| opt(i).map(|v| v as i64)),
            )),
            Arc::new(
                Decimal128Array::from_iter((0..n).map(|i| opt(i).map(|v| v as i128)))
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
            ),
            Arc::new(IntervalMonthDayNanoArray::from_iter(
                (0..n).map(|i| opt(i).map(|v| IntervalMonthDayNano::new(v as i32, 1, 2))),
            )),
            Arc::new(StringArray::from(s)),
        ];
        let fields: Vec<Field> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
            .collect();
        (cols, Schema::new(fields))
    }

    /// Each column's span, as the walk finds it, is exactly that column
    /// encoded alone, under every sort option.
    #[test]
    fn spans_match_the_encoder() {
        let n = 64;
        let (cols, schema) = columns(n);
        for (descending, nulls_first) in [(false, true), (true, true), (false, false), (true, false)] {
            let o = SortOptions {
                descending,
                nulls_first,
            };
            let options = vec![o; cols.len()];
            let layout = Layout::of(&schema, &options).expect("every column walks");
            let fields = |cs: &[ArrayRef]| {
                cs.iter()
                    .map(|c| SortField::new_with_options(c.data_type().clone(), o))
                    .collect::<Vec<_>>()
            };
            let whole = RowConverter::new(fields(&cols))
                .unwrap()
                .convert_columns(&cols)
                .unwrap();
            let alone: Vec<_> = cols
                .iter()
                .map(|c| {
                    let one = std::slice::from_ref(c);
                    RowConverter::new(fields(one))
                        .unwrap()
                        .convert_columns(one)
                        .unwrap()
                })
                .collect();
            let mut ends = Vec::new();
            for r in 0..n {
                let row = whole.row(r);
                layout
                    .ends(row.as_ref(), layout.columns(), &mut ends)
                    .expect("a row of this layout");
                assert_eq!(*ends.last().unwrap(), row.as_ref().len());
                for (c, a) in alone.iter().enumerate() {
                    let bytes = &row.as_ref()[span(&ends, c)];
                    assert_eq!(bytes, a.row(r).as_ref(), "row {r} column {c} under {o:?}");
                    assert_eq!(layout.is_null(c, bytes), cols[c].is_null(r), "row {r} column {c}");
                }
            }
        }
    }

    /// Picking columns in any order makes the row the encoder makes of
    /// those columns in that order.
    #[test]
    fn picked_rows_match_the_encoder() {
        let n = 64;
        let (cols, schema) = columns(n);
        let encode = |cs: &[ArrayRef]| {
            let fields = cs.iter().map(|c| SortField::new(c.data_type().clone())).collect();
            RowConverter::new(fields).unwrap().convert_columns(cs).unwrap()
        };
        let whole = encode(&cols);
        let layout = Layout::of(&schema, &vec![SortOptions::default(); cols.len()]).unwrap();
        for picks in [
            vec![1],
            vec![0, 1, 2],
            vec![11, 3, 0],
            vec![2, 2, 5, 6, 7],
            vec![],
        ] {
            let picked: Vec<ArrayRef> = picks.iter().map(|&c| cols[c].clone()).collect();
            let expected = (!picks.is_empty()).then(|| encode(&picked));
            let picker = Picker::new(layout.clone(), picks.clone());
            let mut ends = Vec::new();
            for r in 0..n {
                let mut out = crate::row::Row::new();
                picker.pick(whole.row(r).as_ref(), &mut ends, &mut out).unwrap();
                let want: Vec<u8> = expected.as_ref().map_or(vec![], |e| e.row(r).as_ref().to_vec());
                assert_eq!(out.as_slice(), &want[..], "row {r} picks {picks:?}");
                let null = picks.iter().any(|&c| cols[c].is_null(r));
                assert_eq!(
                    picker.any_null(whole.row(r).as_ref(), &ends),
                    null,
                    "row {r} picks {picks:?}"
                );
            }
        }
    }

    /// Fixed-width columns picked under other sort options (a descending
    /// sort key out of an ascending row) match the encoder under those
    /// options; a string under other options is not picked.
    #[test]
    fn recoded_picks_match_the_encoder() {
        let n = 64;
        let (cols, schema) = columns(n);
        let whole = {
            let fields = cols
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect();
            RowConverter::new(fields).unwrap().convert_columns(&cols).unwrap()
        };
        let layout = Layout::of(&schema, &vec![SortOptions::default(); cols.len()]).unwrap();
        // Every fixed-width column, a string first under default options.
        let picks: Vec<usize> = vec![0, 1, 2, 4, 5, 6, 7, 8, 9, 10];
        for (descending, nulls_first) in [(true, true), (false, false), (true, false)] {
            let o = SortOptions {
                descending,
                nulls_first,
            };
            let mut options = vec![o; picks.len()];
            options[0] = SortOptions::default();
            let picked: Vec<ArrayRef> = picks.iter().map(|&c| cols[c].clone()).collect();
            let fields = picked
                .iter()
                .zip(&options)
                .map(|(c, o)| SortField::new_with_options(c.data_type().clone(), *o))
                .collect();
            let expected = RowConverter::new(fields)
                .unwrap()
                .convert_columns(&picked)
                .unwrap();
            let picker =
                Picker::recoded(layout.clone(), picks.clone(), &options).expect("fixed-width columns recode");
            let mut ends = Vec::new();
            for r in 0..n {
                let mut out = crate::row::Row::new();
                picker.pick(whole.row(r).as_ref(), &mut ends, &mut out).unwrap();
                assert_eq!(out.as_slice(), expected.row(r).as_ref(), "row {r} under {o:?}");
            }
            let string_too = vec![o; picks.len()];
            assert!(Picker::recoded(layout.clone(), picks.clone(), &string_too).is_none());
        }
    }

    #[test]
    fn a_truncated_row_is_not_walked() {
        let schema = Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Int64, true),
        ]);
        let layout = Layout::of(&schema, &[SortOptions::default(); 2]).unwrap();
        let mut ends = Vec::new();
        assert!(layout.ends(&[2, b'a', 0, 0], 2, &mut ends).is_none());
        assert!(layout.ends(&[1, 1, 0, 0, 0], 2, &mut ends).is_none());
        assert!(
            layout
                .ends(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0], 2, &mut ends)
                .is_some()
        );
    }

    #[test]
    fn lists_are_not_walked() {
        let list = DataType::List(Arc::new(Field::new("item", DataType::Int64, true)));
        let schema = Schema::new(vec![Field::new("l", list, true)]);
        assert!(Layout::of(&schema, &[SortOptions::default()]).is_none());
    }
}
