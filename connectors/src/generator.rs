//! Load generators: sources that need no other system, for demos and
//! benchmarks.
//!
//! `COUNTER` is one `bigint` column counting up from 1. `NEXMARK` is the
//! Nexmark benchmark's auction site (the `person`, `auction` and `bid`
//! tables in proportions 1:3:46, hot sellers, auctions and bidders), drawn
//! by the `nexmark` crate. Every event is a pure function of the
//! generator's [`Spec`] and the event's number, so a source restarted at
//! event `n` produces exactly what it would have produced had it never
//! stopped: the event count is the position made durable with the rows.
//!
//! This module turns event numbers into Arrow batches. Pacing, durability
//! and the catalog belong to the coordinator.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use nexmark::config::NexmarkConfig;
use nexmark::event::Event;

/// Which generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Nexmark,
}

/// Event times advance at this many events per second when the generator
/// runs as fast as it can (Nexmark's default rate).
const UNPACED_EVENT_TIME_RATE: u64 = 10_000;

/// Seeds select disjoint ranges of Nexmark's event ids (a multiple of its
/// 50-event proportion cycle, so the 1:3:46 pattern is kept).
const SEED_STRIDE: u64 = 1_000_000_000;

impl Kind {
    /// The generator called `name` (any case).
    pub fn from_name(name: &str) -> Option<Kind> {
        match name.to_ascii_uppercase().as_str() {
            "COUNTER" => Some(Kind::Counter),
            "NEXMARK" => Some(Kind::Nexmark),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "COUNTER",
            Kind::Nexmark => "NEXMARK",
        }
    }

    /// Indexes of every table in [`Kind::tables`]: what a source feeds
    /// unless `FOR TABLES` chose some.
    pub fn every_table(self) -> Vec<usize> {
        (0..self.tables().len()).collect()
    }

    /// The tables this generator feeds: a name (`None`: the source's own
    /// name) and the column list of its `CREATE TABLE`.
    pub fn tables(self) -> &'static [(Option<&'static str>, &'static str)] {
        match self {
            Kind::Counter => &[(None, "counter bigint NOT NULL")],
            Kind::Nexmark => &[
                (
                    Some("person"),
                    "id bigint NOT NULL, name text NOT NULL, email_address text NOT NULL, \
                     credit_card text NOT NULL, city text NOT NULL, state text NOT NULL, \
                     date_time timestamp NOT NULL, extra text NOT NULL",
                ),
                (
                    Some("auction"),
                    "id bigint NOT NULL, item_name text NOT NULL, description text NOT NULL, \
                     initial_bid bigint NOT NULL, reserve bigint NOT NULL, \
                     date_time timestamp NOT NULL, expires timestamp NOT NULL, \
                     seller bigint NOT NULL, category bigint NOT NULL, extra text NOT NULL",
                ),
                (
                    Some("bid"),
                    "auction bigint NOT NULL, bidder bigint NOT NULL, price bigint NOT NULL, \
                     channel text NOT NULL, url text NOT NULL, date_time timestamp NOT NULL, \
                     extra text NOT NULL",
                ),
            ],
        }
    }
}

/// Why a generator's options are wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown option {option} for LOAD GENERATOR {generator}")]
    UnknownOption { generator: &'static str, option: String },
    #[error("option {option} takes a non-negative integer, not {value}")]
    NotANumber { option: String, value: String },
    #[error("PREGENERATE needs MAX EVENTS: an unbounded stream cannot be generated ahead")]
    PregenerateUnbounded,
    #[error("LOAD GENERATOR {generator} has no table {table}; {known}")]
    UnknownTable {
        generator: &'static str,
        table: String,
        known: String,
    },
    #[error("table {0} is named twice in FOR TABLES")]
    TableTwice(String),
}

/// A generator and its options, as recorded durably for the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub kind: Kind,
    /// Events per second; 0: as fast as possible.
    pub rate: u64,
    /// Stop after this many events; `None`: never.
    pub max_events: Option<u64>,
    pub seed: u64,
    /// Generate every event before emitting the first, so producing them
    /// does not count in what a benchmark measures.
    pub pregenerate: bool,
    /// The event time of event 0, in ms since the epoch (fixed when the
    /// source is created, so a restart reproduces the same events).
    pub base_time_ms: u64,
    /// The tables fed, as indexes into [`Kind::tables`], ascending: all of
    /// them unless `FOR TABLES` chose some. Events of the others are drawn
    /// (numbering must not change) but never built into rows.
    pub tables: Vec<usize>,
}

impl Spec {
    /// `options` as written after `LOAD GENERATOR kind`: keys upper case,
    /// values as written (`None` for a bare flag).
    pub fn new(
        kind: Kind,
        options: &[(String, Option<String>)],
        base_time_ms: u64,
    ) -> Result<Spec, SpecError> {
        let mut spec = Spec {
            kind,
            rate: 0,
            max_events: None,
            seed: 0,
            pregenerate: false,
            base_time_ms,
            tables: kind.every_table(),
        };
        for (key, value) in options {
            let number = || -> Result<u64, SpecError> {
                let v = value.as_deref().unwrap_or("");
                v.parse().map_err(|_| SpecError::NotANumber {
                    option: key.clone(),
                    value: if v.is_empty() {
                        "nothing".into()
                    } else {
                        format!("'{v}'")
                    },
                })
            };
            match key.as_str() {
                "EVENTS PER SECOND" => spec.rate = number()?,
                "MAX EVENTS" => spec.max_events = Some(number()?),
                "SEED" => spec.seed = number()?,
                "PREGENERATE" if value.is_none() => spec.pregenerate = true,
                _ => {
                    return Err(SpecError::UnknownOption {
                        generator: kind.name(),
                        option: key.clone(),
                    });
                }
            }
        }
        if spec.pregenerate && spec.max_events.is_none() {
            return Err(SpecError::PregenerateUnbounded);
        }
        Ok(spec)
    }

    /// Feed only the tables named in `upstream` (as [`Kind::tables`] names
    /// them, any case), in the generator's order whatever order they are
    /// named in.
    pub fn choose(&mut self, upstream: &[&str]) -> Result<(), SpecError> {
        let all = self.kind.tables();
        let mut chosen = Vec::new();
        for name in upstream {
            let index = all
                .iter()
                .position(|(t, _)| t.is_some_and(|t| t.eq_ignore_ascii_case(name)))
                .ok_or_else(|| {
                    let names: Vec<&str> = all.iter().filter_map(|(t, _)| *t).collect();
                    SpecError::UnknownTable {
                        generator: self.kind.name(),
                        table: name.to_string(),
                        known: if names.is_empty() {
                            "it feeds one table, named after the source".into()
                        } else {
                            format!("it has {}", names.join(", "))
                        },
                    }
                })?;
            if chosen.contains(&index) {
                return Err(SpecError::TableTwice(name.to_string()));
            }
            chosen.push(index);
        }
        chosen.sort_unstable();
        self.tables = chosen;
        Ok(())
    }

    /// How many events are due `now_ms` (all of them when unpaced), never
    /// more than `max_events`.
    pub fn due(&self, now_ms: u64) -> u64 {
        let due = if self.rate == 0 {
            u64::MAX
        } else {
            let elapsed = now_ms.saturating_sub(self.base_time_ms) as u128;
            (elapsed * self.rate as u128 / 1000 + 1).min(u64::MAX as u128) as u64
        };
        self.max_events.map_or(due, |m| due.min(m))
    }

    /// When event `n` is due, in ms since the epoch (paced generators).
    pub fn due_at_ms(&self, n: u64) -> u64 {
        self.base_time_ms + n * 1000 / self.rate.max(1)
    }

    fn event_time_rate(&self) -> u64 {
        if self.rate == 0 {
            UNPACED_EVENT_TIME_RATE
        } else {
            self.rate
        }
    }

    fn nexmark_config(&self) -> NexmarkConfig {
        let rate = self.event_time_rate() as usize;
        NexmarkConfig {
            first_rate: rate,
            next_rate: rate,
            base_time: self.base_time_ms,
            first_event_id: (self.seed.wrapping_mul(SEED_STRIDE)) as usize,
            ..NexmarkConfig::default()
        }
    }

    /// Events `from..to` as one batch per table fed (`self.tables`), each
    /// with the schema in `schemas` at the same place.
    pub fn generate(
        &self,
        from: u64,
        to: u64,
        schemas: &[SchemaRef],
    ) -> Result<Vec<RecordBatch>, ArrowError> {
        match self.kind {
            Kind::Counter => {
                let values = arrow::array::Int64Array::from_iter_values((from..to).map(|n| n as i64 + 1));
                Ok(vec![RecordBatch::try_new(
                    schemas[0].clone(),
                    vec![Arc::new(values)],
                )?])
            }
            Kind::Nexmark => self.nexmark(from, to, schemas),
        }
    }

    fn nexmark(&self, from: u64, to: u64, schemas: &[SchemaRef]) -> Result<Vec<RecordBatch>, ArrowError> {
        let n = (to - from) as usize;
        // Only the tables fed get builders; events of the others are
        // drawn and dropped.
        let fed = |t: usize, order: &'static [u8], per_50: usize| {
            self.tables
                .contains(&t)
                .then(|| NexmarkColumns::new(order, n * per_50 / 50 + 1))
        };
        let mut person = fed(0, PERSON, 1);
        let mut auction = fed(1, AUCTION, 3);
        let mut bid = fed(2, BID, 46);
        let events = nexmark::EventGenerator::new(self.nexmark_config())
            .with_offset(from)
            .take(n);
        for event in events {
            match event {
                Event::Person(p) => {
                    let Some(c) = &mut person else { continue };
                    c.int(p.id as i64);
                    for s in [&p.name, &p.email_address, &p.credit_card, &p.city, &p.state] {
                        c.text(s);
                    }
                    c.time(p.date_time);
                    c.text(&p.extra);
                    c.row();
                }
                Event::Auction(a) => {
                    let Some(c) = &mut auction else { continue };
                    c.int(a.id as i64);
                    c.text(&a.item_name);
                    c.text(&a.description);
                    c.int(a.initial_bid as i64);
                    c.int(a.reserve as i64);
                    c.time(a.date_time);
                    c.time(a.expires);
                    c.int(a.seller as i64);
                    c.int(a.category as i64);
                    c.text(&a.extra);
                    c.row();
                }
                Event::Bid(b) => {
                    let Some(c) = &mut bid else { continue };
                    c.int(b.auction as i64);
                    c.int(b.bidder as i64);
                    c.int(b.price as i64);
                    c.text(&b.channel);
                    c.text(&b.url);
                    c.time(b.date_time);
                    c.text(&b.extra);
                    c.row();
                }
            }
        }
        [person, auction, bid]
            .into_iter()
            .flatten()
            .zip(schemas)
            .map(|(c, schema)| c.finish(schema))
            .collect()
    }
}

/// A column's kind in [`NexmarkColumns`].
const INT: u8 = 0;
const TEXT: u8 = 1;
const TIME: u8 = 2;

const PERSON: &[u8] = &[INT, TEXT, TEXT, TEXT, TEXT, TEXT, TIME, TEXT];
const AUCTION: &[u8] = &[INT, TEXT, TEXT, INT, INT, TIME, TIME, INT, INT, TEXT];
const BID: &[u8] = &[INT, INT, INT, TEXT, TEXT, TIME, TEXT];

/// One Nexmark table's columns under construction, filled a row at a time
/// in table order; `order` gives each column's kind.
struct NexmarkColumns {
    ints: Vec<Int64Builder>,
    texts: Vec<StringBuilder>,
    times: Vec<TimestampMicrosecondBuilder>,
    order: &'static [u8],
    /// The next column of each kind in the current row.
    next: [usize; 3],
}

impl NexmarkColumns {
    fn new(order: &'static [u8], capacity: usize) -> NexmarkColumns {
        let count = |k: u8| order.iter().filter(|&&o| o == k).count();
        NexmarkColumns {
            ints: (0..count(INT))
                .map(|_| Int64Builder::with_capacity(capacity))
                .collect(),
            texts: (0..count(TEXT))
                .map(|_| StringBuilder::with_capacity(capacity, capacity * 16))
                .collect(),
            times: (0..count(TIME))
                .map(|_| TimestampMicrosecondBuilder::with_capacity(capacity))
                .collect(),
            order,
            next: [0; 3],
        }
    }

    fn take(&mut self, kind: u8) -> usize {
        let i = self.next[kind as usize];
        self.next[kind as usize] += 1;
        i
    }

    fn int(&mut self, v: i64) {
        let i = self.take(INT);
        self.ints[i].append_value(v);
    }

    fn text(&mut self, v: &str) {
        let i = self.take(TEXT);
        self.texts[i].append_value(v);
    }

    /// A Nexmark time (ms since the epoch) as a `timestamp` (µs).
    fn time(&mut self, ms: u64) {
        let i = self.take(TIME);
        self.times[i].append_value(ms as i64 * 1000);
    }

    fn row(&mut self) {
        self.next = [0; 3];
    }

    fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        let mut ints = self.ints.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef);
        let mut texts = self.texts.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef);
        let mut times = self.times.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef);
        let columns: Vec<ArrayRef> = self
            .order
            .iter()
            .map(|&k| match k {
                INT => ints.next(),
                TEXT => texts.next(),
                _ => times.next(),
            })
            .collect::<Option<_>>()
            .ok_or_else(|| ArrowError::SchemaError("nexmark column layout".into()))?;
        RecordBatch::try_new(schema.clone(), columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    /// A schema for each of a generator's tables, read off their column
    /// kinds (names do not matter here).
    fn schema(order: &[u8]) -> SchemaRef {
        Arc::new(Schema::new(
            order
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let ty = match *k {
                        INT => DataType::Int64,
                        TEXT => DataType::Utf8,
                        _ => DataType::Timestamp(TimeUnit::Microsecond, None),
                    };
                    Field::new(format!("c{i}"), ty, false)
                })
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn chosen_tables_hold_the_same_rows_as_all() {
        let all = Spec::new(Kind::Nexmark, &[], 0).unwrap();
        let every = all
            .generate(100, 1100, &[schema(PERSON), schema(AUCTION), schema(BID)])
            .unwrap();
        let mut some = all.clone();
        // Named in any order and case; fed in the generator's order.
        some.choose(&["BID", "person"]).unwrap();
        assert_eq!(some.tables, [0, 2]);
        let chosen = some.generate(100, 1100, &[schema(PERSON), schema(BID)]).unwrap();
        assert_eq!(chosen, [every[0].clone(), every[2].clone()]);
        assert_eq!((every[0].num_rows(), every[2].num_rows()), (20, 920));

        assert_eq!(
            some.choose(&["bid", "bid"]),
            Err(SpecError::TableTwice("bid".into()))
        );
        let err = some.choose(&["bids"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "LOAD GENERATOR NEXMARK has no table bids; it has person, auction, bid"
        );
        let mut counter = Spec::new(Kind::Counter, &[], 0).unwrap();
        assert!(counter.choose(&["counter"]).is_err());
    }
}
