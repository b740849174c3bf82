//! Arrangement sizes: what each arrangement this worker maintains holds,
//! in batches, updates and bytes, measured when asked.
//!
//! Arrangements register here as they are rendered ([`measured`]); each
//! registration lives exactly as long as its dataflow (a named sink
//! operator owns it), so dropping a dataflow forgets its arrangements. The
//! registry is per worker thread, as the arrangements themselves are. This
//! module only reads traces; it never holds back their compaction.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::Layout;
use differential_dataflow::trace::implementations::OffsetList;
use differential_dataflow::trace::implementations::ord_neu::{OrdKeyBatch, OrdValBatch};
use differential_dataflow::trace::{Trace, TraceReader};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::progress::Antichain;

use crate::row::{Row, RowContainer};

/// What one arrangement holds on this worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    pub batches: usize,
    /// Updates: (key, value, time, diff) tuples, as the batches count them.
    pub records: usize,
    /// Bytes the batches' contents occupy.
    pub bytes: usize,
    /// Bytes allocated for them.
    pub capacity: usize,
}

/// One registered arrangement.
struct Registered {
    /// The timely dataflow holding it.
    dataflow: usize,
    operator: String,
    measure: Box<dyn Fn() -> Size>,
}

thread_local! {
    static REGISTRY: RefCell<(u64, BTreeMap<u64, Registered>)> = const { RefCell::new((0, BTreeMap::new())) };
}

/// Removes its registration when the dataflow drops it.
pub(crate) struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        // A worker thread tearing down may have dropped the registry first.
        let _ = REGISTRY.try_with(|r| r.borrow_mut().1.remove(&self.0));
    }
}

/// Register `arranged` as `operator`, to be measured on request for as long
/// as its dataflow lives. Returns it unchanged.
pub(crate) fn measured<'s, Tr>(
    arranged: Arranged<'s, TraceAgent<Tr>>,
    operator: &str,
) -> Arranged<'s, TraceAgent<Tr>>
where
    Tr: Trace + 'static,
    Tr::Batch: Measure,
{
    let mut trace = arranged.trace.clone();
    // A reader that never reads history: it holds back no compaction.
    trace.set_logical_compaction(Antichain::new().borrow());
    trace.set_physical_compaction(Antichain::new().borrow());
    let measure = move || {
        let mut size = Size::default();
        trace.map_spans(|span| {
            if let Some(batch) = &span.inner {
                size.batches += 1;
                batch.measure(&mut size);
            }
        });
        size
    };
    let registration = register(arranged.stream.scope().addr()[0], operator, measure);
    arranged
        .stream
        .clone()
        .sink(Pipeline, &format!("Measure: {operator}"), move |(input, _)| {
            let _owned = &registration;
            input.for_each(|_, _| {});
        });
    arranged
}

/// Register `measure` as what `operator` of `dataflow` holds, for as
/// long as the returned registration lives (an operator of the dataflow
/// owns it).
pub(crate) fn register(
    dataflow: usize,
    operator: &str,
    measure: impl Fn() -> Size + 'static,
) -> Registration {
    let measure = Box::new(measure);
    let id = REGISTRY.with(|r| {
        let (next, entries) = &mut *r.borrow_mut();
        *next += 1;
        entries.insert(
            *next,
            Registered {
                dataflow,
                operator: operator.to_string(),
                measure,
            },
        );
        *next
    });
    Registration(id)
}

/// What a [`SlotMap`] of keyed states holds: one batch, a record per key.
pub(crate) fn slots_size<K, S>(map: &crate::slots::SlotMap<K, S>) -> Size
where
    K: Element + std::hash::Hash + Eq,
    S: Element,
{
    let width = std::mem::size_of::<(K, S)>();
    let index = std::mem::size_of::<(u32, u32)>();
    let (entries, records) = map.capacity();
    let mut size = Size {
        batches: 1,
        records: map.len(),
        bytes: map.len() * (width + index),
        capacity: entries * width + records * index,
    };
    for (k, s) in map.iter() {
        for (b, c) in [k.heap(), s.heap()] {
            size.bytes += b;
            size.capacity += c;
        }
    }
    size
}

/// Every registered arrangement of this worker: its dataflow, operator
/// name and size now.
pub fn all() -> Vec<(usize, String, Size)> {
    REGISTRY.with(|r| {
        r.borrow()
            .1
            .values()
            .map(|e| (e.dataflow, e.operator.clone(), (e.measure)()))
            .collect()
    })
}

/// A batch whose updates and contents can be measured.
pub trait Measure {
    fn measure(&self, size: &mut Size);
}

impl<B: Measure> Measure for Rc<B> {
    fn measure(&self, size: &mut Size) {
        (**self).measure(size)
    }
}

impl<L: Layout> Measure for OrdValBatch<L>
where
    L::KeyContainer: HeapSize,
    L::ValContainer: HeapSize,
    L::TimeContainer: HeapSize,
    L::DiffContainer: HeapSize,
    L::OffsetContainer: HeapSize,
{
    fn measure(&self, size: &mut Size) {
        size.records += self.updates;
        let s = &self.storage;
        s.keys.heap_size(size);
        s.vals.offs.heap_size(size);
        s.vals.vals.heap_size(size);
        upds_size::<L>(&s.upds, size);
    }
}

impl<L: Layout> Measure for OrdKeyBatch<L>
where
    L::KeyContainer: HeapSize,
    L::TimeContainer: HeapSize,
    L::DiffContainer: HeapSize,
    L::OffsetContainer: HeapSize,
{
    fn measure(&self, size: &mut Size) {
        size.records += self.updates;
        let s = &self.storage;
        s.keys.heap_size(size);
        upds_size::<L>(&s.upds, size);
    }
}

/// The (time, diff) lists of a batch and their offsets.
fn upds_size<L: Layout>(
    upds: &differential_dataflow::trace::implementations::ord_neu::layers::Upds<
        L::OffsetContainer,
        L::TimeContainer,
        L::DiffContainer,
    >,
    size: &mut Size,
) where
    L::TimeContainer: HeapSize,
    L::DiffContainer: HeapSize,
    L::OffsetContainer: HeapSize,
{
    upds.offs.heap_size(size);
    upds.times.heap_size(size);
    upds.diffs.heap_size(size);
}

/// A batch container's bytes in use and allocated, added to `size`.
pub trait HeapSize {
    fn heap_size(&self, size: &mut Size);
}

impl HeapSize for RowContainer {
    fn heap_size(&self, size: &mut Size) {
        let (bytes, capacity) = self.bytes_in_use();
        size.bytes += bytes;
        size.capacity += capacity;
        self.ends().heap_size(size);
    }
}

impl HeapSize for OffsetList {
    fn heap_size(&self, size: &mut Size) {
        size.bytes += self.smol.len() * 4 + self.chonk.len() * 8;
        size.capacity += self.smol.capacity() * 4 + self.chonk.capacity() * 8;
    }
}

impl<E: Element> HeapSize for Vec<E> {
    fn heap_size(&self, size: &mut Size) {
        let width = std::mem::size_of::<E>();
        size.bytes += self.len() * width;
        size.capacity += self.capacity() * width;
        if E::OWNS_HEAP {
            for e in self {
                let (bytes, capacity) = e.heap();
                size.bytes += bytes;
                size.capacity += capacity;
            }
        }
    }
}

/// An element of a `Vec` container, and the heap it owns beyond its width.
pub trait Element {
    const OWNS_HEAP: bool;
    fn heap(&self) -> (usize, usize) {
        (0, 0)
    }
}

macro_rules! plain {
    ($($t:ty),*) => { $(impl Element for $t { const OWNS_HEAP: bool = false; })* };
}
plain!(
    (),
    u64,
    isize,
    timely::order::Product<u64, u64>,
    crate::distinct_count::FilterCounts
);

impl Element for crate::reduce::Accums {
    const OWNS_HEAP: bool = true;
    fn heap(&self) -> (usize, usize) {
        let width = std::mem::size_of::<crate::reduce::Acc>();
        (self.accs.len() * width, self.accs.capacity() * width)
    }
}

impl Element for crate::minmax::Running {
    const OWNS_HEAP: bool = true;
    fn heap(&self) -> (usize, usize) {
        let (mut bytes, mut capacity) = self.accums.heap();
        let width = std::mem::size_of::<crate::minmax::Extreme>();
        bytes += self.extremes.len() * width;
        capacity += self.extremes.capacity() * width;
        for v in self.extremes.iter().filter_map(|e| e.value.as_ref()) {
            let (b, c) = v.heap();
            bytes += b;
            capacity += c;
        }
        (bytes, capacity)
    }
}

/// The heap of a vector holding its first entry inline (none until it
/// spills), and of the rows each entry owns.
fn inline_rows_heap<'a, T, const N: usize>(
    entries: &'a smallvec::SmallVec<[T; N]>,
    rows: impl Iterator<Item = &'a Row>,
) -> (usize, usize) {
    let width = std::mem::size_of::<T>();
    let (mut bytes, mut capacity) = if entries.spilled() {
        (entries.len() * width, entries.capacity() * width)
    } else {
        (0, 0)
    };
    for (b, c) in rows.map(Row::heap) {
        bytes += b;
        capacity += c;
    }
    (bytes, capacity)
}

impl Element for crate::leaders::Tied {
    const OWNS_HEAP: bool = true;
    fn heap(&self) -> (usize, usize) {
        let rows = self.rows.iter().map(|(r, _)| r);
        inline_rows_heap(&self.rows, std::iter::once(&self.value).chain(rows))
    }
}

impl Element for crate::sessions::Sessions {
    const OWNS_HEAP: bool = true;
    fn heap(&self) -> (usize, usize) {
        inline_rows_heap(&self.spans, std::iter::empty())
    }
}

impl Element for crate::rank::Leaders {
    const OWNS_HEAP: bool = true;
    fn heap(&self) -> (usize, usize) {
        let rows = self.rows.iter().flat_map(|(sort, row, _)| [sort, row]);
        inline_rows_heap(&self.rows, rows)
    }
}

impl Element for Row {
    const OWNS_HEAP: bool = true;
    fn heap(&self) -> (usize, usize) {
        let capacity = self.heap_capacity();
        (if capacity > 0 { self.len() } else { 0 }, capacity)
    }
}

impl Element for (Row, Row) {
    const OWNS_HEAP: bool = true;
    fn heap(&self) -> (usize, usize) {
        let ((b0, c0), (b1, c1)) = (self.0.heap(), self.1.heap());
        (b0 + b1, c0 + c1)
    }
}

impl Element for String {
    const OWNS_HEAP: bool = true;
    fn heap(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
}

impl Element for Result<Row, String> {
    const OWNS_HEAP: bool = true;
    fn heap(&self) -> (usize, usize) {
        match self {
            Ok(r) => r.heap(),
            Err(e) => (e.len(), e.capacity()),
        }
    }
}
