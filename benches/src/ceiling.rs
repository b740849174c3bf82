//! The ceiling: Nexmark q0, q1, q2, q4 and q7 as hand-written
//! differential-dataflow programs, with no SQL, no Arrow, no durability
//! and no arranged inputs or outputs (results go to a probe, like Flink's
//! blackhole sink). They read the same events Weir's load generator draws
//! (the `nexmark` crate, default configuration, event times from a fixed
//! base), generated in memory before the clock starts, in steps of the
//! same size as Weir's generator, at most four steps in flight.
//!
//! What Weir's figure is short of these measures the cost of its SQL
//! layer, its durable sources and its arrangements over the raw engine.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Result, bail};
use differential_dataflow::input::InputSession;
use nexmark::config::NexmarkConfig;
use nexmark::event::Event;
use timely::dataflow::operators::probe::Handle;

/// The queries written here.
pub const QUERIES: &[&str] = &["q0", "q1", "q2", "q4", "q7"];

/// Events per input step (Weir's generator's step).
const STEP: usize = 100_000;

/// Steps in flight before a worker waits for the output to catch up.
const IN_FLIGHT: u64 = 4;

type Time = u64;
/// auction, bidder, price, channel, url, date_time (ms), extra
type Bid = (u64, u64, u64, String, String, u64, String);
/// id, seller, category, date_time, expires
type Auction = (u64, u64, u64, u64, u64);

/// `events` Nexmark events, as Weir's unpaced generator with seed 0 draws
/// them (apart from the base of event time).
pub fn generate(events: usize) -> Vec<Event> {
    let config = NexmarkConfig {
        base_time: 1_700_000_000_000,
        ..NexmarkConfig::default()
    };
    nexmark::EventGenerator::new(config).take(events).collect()
}

/// Run `query` over `events` on `workers` threads: seconds from the first
/// input to the output's frontier passing the last, and the output's row
/// count (its diffs summed).
pub fn run(query: &str, events: Arc<Vec<Event>>, workers: usize) -> Result<(f64, i64)> {
    if !QUERIES.contains(&query) {
        bail!("no hand-written {query}");
    }
    let query = query.to_string();
    let result = Arc::new(Mutex::new((0.0f64, 0i64)));
    let shared = result.clone();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mut bids: InputSession<Time, Bid, isize> = InputSession::new();
        let mut auctions: InputSession<Time, Auction, isize> = InputSession::new();
        let probe = Handle::new();
        let rows = Rc::new(Cell::new(0i64));
        let counted = rows.clone();
        worker.dataflow::<Time, _, _>(|scope| {
            let bids = bids.to_collection(scope);
            let auctions = auctions.to_collection(scope);
            let count = move |d: isize| counted.set(counted.get() + d as i64);
            match query.as_str() {
                "q0" => {
                    bids.map(|(auction, bidder, price, _, _, time, extra)| {
                        (auction, bidder, price, time, extra)
                    })
                    .inspect(move |x| count(x.2))
                    .probe_with(&probe);
                }
                "q1" => {
                    // 0.908 * price, in thousandths: exact, as SQL's numeric.
                    bids.map(|(auction, bidder, price, _, _, time, extra)| {
                        (auction, bidder, price * 908, time, extra)
                    })
                    .inspect(move |x| count(x.2))
                    .probe_with(&probe);
                }
                "q2" => {
                    bids.filter(|b| b.0 % 123 == 0)
                        .map(|b| (b.0, b.2))
                        .inspect(move |x| count(x.2))
                        .probe_with(&probe);
                }
                "q4" => {
                    let open =
                        auctions.map(|(id, _, category, start, expires)| (id, (category, start, expires)));
                    let offers = bids.map(|b| (b.0, (b.2, b.5)));
                    open.join(offers)
                        .filter(|(_, ((_, start, expires), (_, time)))| start <= time && time <= expires)
                        .map(|(id, ((category, _, _), (price, _)))| ((id, category), price))
                        // Values arrive sorted: the last is the max.
                        .reduce(|_, input, output| output.push((*input[input.len() - 1].0, 1isize)))
                        .map(|((_, category), closing)| (category, closing))
                        .reduce(|_, input, output| {
                            let n: isize = input.iter().map(|(_, c)| *c).sum();
                            let sum: u64 = input.iter().map(|(p, c)| **p * *c as u64).sum();
                            // avg as (sum, count): exact, and ordered.
                            output.push(((sum, n as u64), 1isize))
                        })
                        .inspect(move |x| count(x.2))
                        .probe_with(&probe);
                }
                _ => {
                    // q7: the highest bid of each 10 s tumbling window.
                    let highest = bids
                        .clone()
                        .map(|b| (b.5 / 10_000, b.2))
                        .reduce(|_, input, output| output.push((*input[input.len() - 1].0, 1isize)))
                        .map(|(window, price)| (price, window));
                    bids.map(|(auction, bidder, price, _, _, time, extra)| {
                        (price, (auction, bidder, time, extra))
                    })
                    .join(highest)
                    .filter(|(_, ((_, _, time, _), window))| {
                        let end = (window + 1) * 10_000;
                        end - 10_000 <= *time && *time <= end
                    })
                    .map(|(price, ((auction, bidder, time, extra), _))| (auction, price, bidder, time, extra))
                    .inspect(move |x| count(x.2))
                    .probe_with(&probe);
                }
            }
        });
        let started = Instant::now();
        let mut step: Time = 0;
        for chunk in events.chunks(STEP) {
            for (i, event) in chunk.iter().enumerate() {
                if i % peers != index {
                    continue;
                }
                match event {
                    Event::Bid(b) => bids.insert((
                        b.auction as u64,
                        b.bidder as u64,
                        b.price as u64,
                        b.channel.clone(),
                        b.url.clone(),
                        b.date_time,
                        b.extra.clone(),
                    )),
                    Event::Auction(a) => auctions.insert((
                        a.id as u64,
                        a.seller as u64,
                        a.category as u64,
                        a.date_time,
                        a.expires,
                    )),
                    Event::Person(_) => {}
                }
            }
            step += 1;
            bids.advance_to(step);
            auctions.advance_to(step);
            bids.flush();
            auctions.flush();
            while probe.less_than(&step.saturating_sub(IN_FLIGHT)) {
                worker.step();
            }
        }
        bids.close();
        auctions.close();
        while !probe.done() {
            worker.step();
        }
        let seconds = started.elapsed().as_secs_f64();
        let mut out = shared.lock().expect("result");
        out.0 = out.0.max(seconds);
        out.1 += rows.get();
    })
    .map_err(|e| anyhow::anyhow!("timely: {e}"))?;
    drop(guards);
    let r = *result.lock().expect("result");
    Ok(r)
}
