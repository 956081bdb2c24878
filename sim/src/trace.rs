//! The typed trace of a run and its digest.
//!
//! Every event is encoded canonically (a tag byte and little-endian fields)
//! into a buffer that feeds an XXH3-64 hasher in large updates, so the
//! digest costs little time and no memory; the last events are kept in a ring for
//! failure reports, and formatted only when one is printed. The digest is
//! a function of the encoded byte stream alone, however it is split into
//! updates.

use std::cell::{Cell, OnceCell};
use std::fmt;
use std::hash::Hasher;

use twox_hash::XxHash3_64;

use blksnap_core::kernel::FilterVerdict;

/// How many recent events a failure report shows.
const RING: usize = 200;

/// Entries the ring holds: the power of two above `RING`, so an entry's
/// index is a mask (no bounds check, no compare to wrap) per event.
const SLOTS: usize = 256;

/// Encoded bytes of one hasher update: one call per 64 KiB, so the
/// hasher's per-call cost is nothing per event and its bulk loop (SIMD
/// stripes) runs over whole batches.
const BATCH: usize = 64 << 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    TaskSpawn {
        task: u64,
        name: String,
    },
    TaskExit {
        task: u64,
    },
    Poll {
        task: u64,
    },
    TimeAdvance {
        now: u64,
    },
    BioSubmit {
        id: u64,
        dev: u32,
        op: u8,
        sector: u64,
        sectors: u64,
    },
    BioEnd {
        id: u64,
        ok: bool,
    },
    Filter {
        dev: u32,
        sector: u64,
        verdict: FilterVerdict,
    },
    Ioctl {
        cmd: u32,
        result: i64,
    },
    Event {
        code: u32,
        time_label: i64,
    },
    Freeze {
        dev: u32,
        depth: u32,
    },
    Thaw {
        dev: u32,
        depth: u32,
    },
    Alloc {
        site: &'static str,
        ok: bool,
    },
    Step {
        index: u64,
        what: String,
    },
    Warn {
        msg: String,
    },
    Failure {
        checker: String,
        msg: String,
    },
}

/// Where an event's bytes go: a vector (tests, reference encodings) or
/// the trace's pending batch (no intermediate buffer).
trait Out {
    fn bytes(&mut self, b: &[u8]);
}

impl Out for Vec<u8> {
    fn bytes(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

fn num(out: &mut impl Out, v: u64) {
    out.bytes(&v.to_le_bytes());
}

fn text(out: &mut impl Out, s: &str) {
    num(out, s.len() as u64);
    out.bytes(s.as_bytes());
}

/// A filter verdict as its `Debug` text, which is what the digest has
/// always hashed. Pass (nearly every bio) is a constant (and takes the
/// fast path); an error is rare.
fn verdict_text(out: &mut impl Out, verdict: &FilterVerdict) {
    if *verdict == FilterVerdict::Pass {
        return text(out, "Pass");
    }
    text(out, &format!("{verdict:?}"));
}

/// Room for the longest encoding of an event the fast path writes, time
/// included: a bio submit (8 + 1 + 8 + 8 + 1 + 8 + 8 = 42), or an
/// allocation whose site name fits (8 + 1 + 8 + name + 1).
const FRAME: usize = 64;

/// `Pass` as `verdict_text` encodes it: its length, then its text.
const PASS: [u8; 12] = *b"\x04\0\0\0\0\0\0\0Pass";

/// Writes `v` at `at` and returns the offset after it. Inlined with a
/// constant `at`, the bounds check folds away.
#[inline(always)]
fn put(frame: &mut [u8; FRAME], at: usize, v: u64) -> usize {
    frame[at..at + 8].copy_from_slice(&v.to_le_bytes());
    at + 8
}

/// The tag and the bytes after the time of an event of fixed size,
/// written into `frame` from offset 8; the returned length counts the
/// time. `None` for events with strings, which take the general path
/// (`TraceEvent::encode`). Each arm writes its tag as a constant (what
/// `TraceEvent::tag` says, checked by `batching_does_not_change_the_digest`),
/// so the event's variant is matched once per event, not twice.
#[inline(always)]
fn fixed_body(event: &TraceEvent, frame: &mut [u8; FRAME]) -> Option<usize> {
    let end = match event {
        TraceEvent::Poll { task } => tagged(frame, 3, *task),
        TraceEvent::TaskExit { task } => tagged(frame, 2, *task),
        TraceEvent::TimeAdvance { now } => tagged(frame, 4, *now),
        TraceEvent::BioSubmit {
            id,
            dev,
            op,
            sector,
            sectors,
        } => {
            let at = tagged(frame, 5, *id);
            let at = put(frame, at, u64::from(*dev));
            frame[at] = *op;
            let at = put(frame, at + 1, *sector);
            put(frame, at, *sectors)
        }
        TraceEvent::BioEnd { id, ok } => {
            let at = tagged(frame, 6, *id);
            frame[at] = u8::from(*ok);
            at + 1
        }
        TraceEvent::Filter {
            dev,
            sector,
            verdict: FilterVerdict::Pass,
        } => {
            let at = tagged(frame, 7, u64::from(*dev));
            let at = put(frame, at, *sector);
            frame[at..at + PASS.len()].copy_from_slice(&PASS);
            at + PASS.len()
        }
        TraceEvent::Ioctl { cmd, result } => {
            let at = tagged(frame, 8, u64::from(*cmd));
            put(frame, at, *result as u64)
        }
        TraceEvent::Event { code, time_label } => {
            let at = tagged(frame, 9, u64::from(*code));
            put(frame, at, *time_label as u64)
        }
        TraceEvent::Freeze { dev, depth } => {
            let at = tagged(frame, 10, u64::from(*dev));
            put(frame, at, u64::from(*depth))
        }
        TraceEvent::Thaw { dev, depth } => {
            let at = tagged(frame, 11, u64::from(*dev));
            put(frame, at, u64::from(*depth))
        }
        // Site names are short constants; a longer one takes the general path.
        TraceEvent::Alloc { site, ok } if site.len() < FRAME - 18 => {
            let at = tagged(frame, 12, site.len() as u64);
            let end = at + site.len();
            frame[at..end].copy_from_slice(site.as_bytes());
            frame[end] = u8::from(*ok);
            end + 1
        }
        _ => return None,
    };
    Some(end)
}

/// Writes the tag at offset 8 and the event's first field after it.
#[inline(always)]
fn tagged(frame: &mut [u8; FRAME], tag: u8, first: u64) -> usize {
    frame[8] = tag;
    put(frame, 9, first)
}

impl TraceEvent {
    /// The tag byte that starts the event's encoding.
    fn tag(&self) -> u8 {
        match self {
            TraceEvent::TaskSpawn { .. } => 1,
            TraceEvent::TaskExit { .. } => 2,
            TraceEvent::Poll { .. } => 3,
            TraceEvent::TimeAdvance { .. } => 4,
            TraceEvent::BioSubmit { .. } => 5,
            TraceEvent::BioEnd { .. } => 6,
            TraceEvent::Filter { .. } => 7,
            TraceEvent::Ioctl { .. } => 8,
            TraceEvent::Event { .. } => 9,
            TraceEvent::Freeze { .. } => 10,
            TraceEvent::Thaw { .. } => 11,
            TraceEvent::Alloc { .. } => 12,
            TraceEvent::Step { .. } => 13,
            TraceEvent::Warn { .. } => 14,
            TraceEvent::Failure { .. } => 15,
        }
    }

    /// The canonical encoding, field by field: the reference the fast
    /// path (`fixed_body`) must match byte for byte, and the path of the
    /// rare events that carry strings.
    fn encode(&self, out: &mut impl Out) {
        out.bytes(&[self.tag()]);
        match self {
            TraceEvent::TaskSpawn { task, name } => {
                num(out, *task);
                text(out, name);
            }
            TraceEvent::TaskExit { task } | TraceEvent::Poll { task } => num(out, *task),
            TraceEvent::TimeAdvance { now } => num(out, *now),
            TraceEvent::BioSubmit {
                id,
                dev,
                op,
                sector,
                sectors,
            } => {
                num(out, *id);
                num(out, u64::from(*dev));
                out.bytes(&[*op]);
                num(out, *sector);
                num(out, *sectors);
            }
            TraceEvent::BioEnd { id, ok } => {
                num(out, *id);
                out.bytes(&[u8::from(*ok)]);
            }
            TraceEvent::Filter {
                dev,
                sector,
                verdict,
            } => {
                num(out, u64::from(*dev));
                num(out, *sector);
                verdict_text(out, verdict);
            }
            TraceEvent::Ioctl { cmd, result } => {
                num(out, u64::from(*cmd));
                num(out, *result as u64);
            }
            TraceEvent::Event { code, time_label } => {
                num(out, u64::from(*code));
                num(out, *time_label as u64);
            }
            TraceEvent::Freeze { dev, depth } | TraceEvent::Thaw { dev, depth } => {
                num(out, u64::from(*dev));
                num(out, u64::from(*depth));
            }
            TraceEvent::Alloc { site, ok } => {
                text(out, site);
                out.bytes(&[u8::from(*ok)]);
            }
            TraceEvent::Step { index, what } => {
                num(out, *index);
                text(out, what);
            }
            TraceEvent::Warn { msg } => text(out, msg),
            TraceEvent::Failure { checker, msg } => {
                text(out, checker);
                text(out, msg);
            }
        }
    }
}

/// The trace's pending batch as an `Out`.
struct Batch<'a>(&'a mut Trace);

impl Out for Batch<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.0.append(b);
    }
}

pub struct Trace {
    /// XXH3-64, not a cryptographic hash: the digest only tells runs
    /// apart (64 bits, compared, never attacked), and XXH3 is about a
    /// fifth of blake3's cost per byte (blake3 was 6.7 % of a non-COW
    /// run's instructions, issue 10).
    hasher: XxHash3_64,
    /// Bytes given to `hasher` so far.
    hashed: u64,
    count: u64,
    /// The last `SLOTS` events, a ring: event number `n` is at
    /// `n % SLOTS` (an entry overwrites the oldest in place, nothing
    /// shifts, nothing is dropped: entries are `Copy`). `recent()` reads
    /// the last `RING` of them.
    ring: Box<[Slot; SLOTS]>,
    /// The events that are not hot (`Kind::Cold`), whole, at their
    /// slot's index: a cold event replaces the one there in place. What a
    /// hot slot's index holds here is stale and never read.
    cold: Vec<Option<TraceEvent>>,
    /// `recent()`'s events, decoded once after the last event.
    decoded: OnceCell<Vec<(u64, TraceEvent)>>,
    /// Encoded events not yet hashed: `pending[..fill]` (`fill` is
    /// below `BATCH + FRAME`: it grows with wrapping adds, which never
    /// wrap and carry no overflow check per event; at `BATCH` or more the
    /// next event hashes the first `BATCH` bytes). Its length is
    /// fixed, so a fixed-size event is written at known offsets with one
    /// bounds check and no capacity checks.
    pending: Box<[u8]>,
    fill: usize,
    /// True once `count_only` was called: each event is counted and
    /// nothing more (no bytes, no ring entry), and there is no digest and
    /// no `recent()`. What the run does is the same: nothing in the sim
    /// reads its own trace.
    count_only: bool,
}

/// What a ring entry holds: a hot event (one with its own recorder), or
/// `Cold`, any event kept whole in `Trace::cold`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Kind {
    #[default]
    Cold,
    Poll,
    TimeAdvance,
    BioSubmit,
    BioEnd,
    /// A filter's `Pass` (every user bio on a tracked device has one).
    FilterPass,
}

/// A ring entry: the time and a hot event's fields as plain words
/// (written with a few stores, where a `TraceEvent` was matched, moved
/// and the one it replaced dropped), or `Cold`: the event is in `cold`.
/// Fields its kind does not read are left from an older event.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    now: u64,
    /// Poll: the task; TimeAdvance: the time; bios: the id.
    a: u64,
    /// BioSubmit, FilterPass: the sector.
    b: u64,
    /// BioSubmit: the sector count.
    c: u64,
    dev: u32,
    /// BioSubmit: the op; BioEnd: ok.
    small: u8,
    kind: Kind,
}

impl Slot {
    /// The event the slot stands for; `cold` holds a cold one.
    fn decode(&self, cold: &Option<TraceEvent>) -> TraceEvent {
        match self.kind {
            Kind::Poll => TraceEvent::Poll { task: self.a },
            Kind::TimeAdvance => TraceEvent::TimeAdvance { now: self.a },
            Kind::BioSubmit => TraceEvent::BioSubmit {
                id: self.a,
                dev: self.dev,
                op: self.small,
                sector: self.b,
                sectors: self.c,
            },
            Kind::BioEnd => TraceEvent::BioEnd {
                id: self.a,
                ok: self.small != 0,
            },
            Kind::FilterPass => TraceEvent::Filter {
                dev: self.dev,
                sector: self.b,
                verdict: FilterVerdict::Pass,
            },
            Kind::Cold => cold.clone().expect("a cold slot's event is kept"),
        }
    }
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            hasher: XxHash3_64::with_seed(0),
            hashed: 0,
            count: 0,
            ring: Box::new([Slot::default(); SLOTS]),
            cold: vec![None; SLOTS],
            decoded: OnceCell::new(),
            pending: spare_batch(),
            fill: 0,
            count_only: false,
        }
    }
}

thread_local! {
    /// The batch buffer of the last trace dropped on this thread: a run
    /// takes it over instead of zeroing a new one (the fuzz loop makes a
    /// trace per run; what the buffer held is never read, only what the
    /// run writes to it).
    static SPARE_BATCH: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
}

/// A batch buffer (`BATCH` bytes and room for the frame that fills it):
/// the spare one if there is one, else a zeroed one.
fn spare_batch() -> Box<[u8]> {
    SPARE_BATCH
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; BATCH + FRAME].into_boxed_slice())
}

impl Drop for Trace {
    fn drop(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        // Gone only while the thread exits: the buffer is then freed.
        let _ = SPARE_BATCH.try_with(|spare| spare.set(Some(batch)));
    }
}

impl Trace {
    /// Inlined into `Sim::record`: the event is moved once, into `cold`,
    /// instead of once more through a call. Events with recorders of
    /// their own (`record_poll` and the others below) take those.
    #[inline(always)]
    pub fn record(&mut self, now: u64, event: TraceEvent) {
        if self.count_only {
            return self.count_one();
        }
        self.encode(now, &event);
        self.cold[self.count as usize % SLOTS] = Some(event);
        let slot = self.entry();
        slot.now = now;
        slot.kind = Kind::Cold;
        self.counted();
    }

    /// A poll of `task`, as `record(now, TraceEvent::Poll { task })`, with
    /// no event built, matched or dropped.
    #[inline(always)]
    pub fn record_poll(&mut self, now: u64, task: u64) {
        if self.count_only {
            return self.count_one();
        }
        let end = tagged(self.frame(now), 3, task);
        self.fill = self.fill.wrapping_add(end);
        let slot = self.entry();
        (slot.now, slot.a, slot.kind) = (now, task, Kind::Poll);
        self.counted();
    }

    /// As `record(now, TraceEvent::TimeAdvance { now: to })`.
    #[inline(always)]
    pub fn record_time_advance(&mut self, now: u64, to: u64) {
        if self.count_only {
            return self.count_one();
        }
        let end = tagged(self.frame(now), 4, to);
        self.fill = self.fill.wrapping_add(end);
        let slot = self.entry();
        (slot.now, slot.a, slot.kind) = (now, to, Kind::TimeAdvance);
        self.counted();
    }

    /// As `record(now, TraceEvent::BioSubmit { .. })` with these fields.
    #[inline(always)]
    pub fn record_bio_submit(&mut self, now: u64, id: u64, dev: u32, op: u8, range: (u64, u64)) {
        if self.count_only {
            return self.count_one();
        }
        let (sector, sectors) = range;
        let frame = self.frame(now);
        let at = tagged(frame, 5, id);
        let at = put(frame, at, u64::from(dev));
        frame[at] = op;
        let at = put(frame, at + 1, sector);
        let end = put(frame, at, sectors);
        self.fill = self.fill.wrapping_add(end);
        *self.entry() = Slot {
            now,
            a: id,
            b: sector,
            c: sectors,
            dev,
            small: op,
            kind: Kind::BioSubmit,
        };
        self.counted();
    }

    /// As `record(now, TraceEvent::BioEnd { id, ok })`.
    #[inline(always)]
    pub fn record_bio_end(&mut self, now: u64, id: u64, ok: bool) {
        if self.count_only {
            return self.count_one();
        }
        let frame = self.frame(now);
        let at = tagged(frame, 6, id);
        frame[at] = u8::from(ok);
        self.fill = self.fill.wrapping_add(at + 1);
        let slot = self.entry();
        (slot.now, slot.a, slot.small) = (now, id, u8::from(ok));
        slot.kind = Kind::BioEnd;
        self.counted();
    }

    /// As `record(now, TraceEvent::Filter { dev, sector, verdict: Pass })`:
    /// where `record` took about 220 instructions per user bio (the
    /// match, the move into `cold` and the drop of the event it replaced).
    #[inline(always)]
    pub fn record_filter_pass(&mut self, now: u64, dev: u32, sector: u64) {
        if self.count_only {
            return self.count_one();
        }
        let frame = self.frame(now);
        let at = tagged(frame, 7, u64::from(dev));
        let at = put(frame, at, sector);
        frame[at..at + PASS.len()].copy_from_slice(&PASS);
        self.fill = self.fill.wrapping_add(at + PASS.len());
        let slot = self.entry();
        (slot.now, slot.b, slot.dev) = (now, sector, dev);
        slot.kind = Kind::FilterPass;
        self.counted();
    }

    /// The frame the next event is written to, its time written; a
    /// whole batch is hashed first if one is pending.
    #[inline(always)]
    fn frame(&mut self, now: u64) -> &mut [u8; FRAME] {
        // A constant bound: a field read here was 0.3 % of a non-COW run.
        if self.fill >= BATCH {
            self.flush();
        }
        let at = self.fill;
        let frame: &mut [u8; FRAME] = (&mut self.pending[at..at + FRAME]).try_into().unwrap();
        put(frame, 0, now);
        frame
    }

    /// The ring entry of the event being recorded. The caller writes the
    /// time, the kind and only the fields that kind's `Slot::decode`
    /// reads (the others keep an older event's values and are never
    /// read; a whole `Slot` written was five stores more per poll, for
    /// fields a poll does not have), then counts the event (`counted`).
    #[inline(always)]
    fn entry(&mut self) -> &mut Slot {
        &mut self.ring[self.count as usize % SLOTS]
    }

    /// Whether `count_only` was called.
    #[inline(always)]
    pub fn is_count_only(&self) -> bool {
        self.count_only
    }

    /// Counts an event of a count-only trace.
    #[inline(always)]
    pub(crate) fn count_one(&mut self) {
        // Cannot overflow: no run makes 2^64 events.
        self.count = self.count.wrapping_add(1);
    }

    /// Counts the event whose entry was just written.
    #[inline(always)]
    fn counted(&mut self) {
        // Cannot overflow: no run makes 2^64 events.
        self.count = self.count.wrapping_add(1);
        // Nearly always empty: `recent()` is read at the end of a run.
        if self.decoded.get().is_some() {
            self.forget_decoded();
        }
    }

    /// Drops `recent()`'s events (an event came after them). Out of line
    /// and cold: with the drop of a `Vec` of events inlined, every
    /// recorder saved and restored six registers more.
    #[cold]
    #[inline(never)]
    fn forget_decoded(&mut self) {
        self.decoded = OnceCell::new();
    }

    /// Appends the event's bytes to the pending batch, hashing the batch
    /// first when a whole frame might not fit. Inlined into `record`: no
    /// call, and the event is not copied for one.
    #[inline(always)]
    fn encode(&mut self, now: u64, event: &TraceEvent) {
        match fixed_body(event, self.frame(now)) {
            Some(len) => self.fill = self.fill.wrapping_add(len),
            None => self.encode_general(now, event),
        }
    }

    /// Rare (spawns, steps, errors): the fields go to the batch one by
    /// one, after the time.
    #[inline(never)]
    fn encode_general(&mut self, now: u64, event: &TraceEvent) {
        let mut batch = Batch(self);
        num(&mut batch, now);
        event.encode(&mut batch);
    }

    /// Hashes the first `BATCH` bytes and moves the rest, less than a
    /// frame, to the front.
    #[inline(never)]
    fn flush(&mut self) {
        debug_assert!(self.fill >= BATCH);
        self.hasher.write(&self.pending[..BATCH]);
        self.hashed += BATCH as u64;
        self.pending.copy_within(BATCH..self.fill, 0);
        self.fill -= BATCH;
    }

    /// A run that keeps only its verdict (`RunOptions::verdict_only`: the
    /// fuzz target, `judge_fast`) reads neither its digest nor its last
    /// events: a failing one is run again in full for its report. From
    /// here each event is only counted (encoding the events and writing
    /// the ring were 3 % of such a run's instructions). Call it before
    /// the first event.
    pub fn count_only(&mut self) {
        assert_eq!(
            self.count, 0,
            "a trace is count-only from its start or never"
        );
        self.count_only = true;
    }

    /// Appends bytes of any length to the pending batch, hashing each
    /// batch it fills.
    fn append(&mut self, mut bytes: &[u8]) {
        loop {
            if self.fill >= BATCH {
                self.flush();
            }
            let n = bytes.len().min(BATCH - self.fill);
            self.pending[self.fill..self.fill + n].copy_from_slice(&bytes[..n]);
            self.fill += n;
            bytes = &bytes[n..];
            if bytes.is_empty() {
                return;
            }
        }
    }

    /// The digest so far, as 16 hex digits (64 bits are plenty to compare).
    pub fn digest(&self) -> String {
        assert!(!self.count_only, "the digest of a count-only trace");
        let mut hasher = self.hasher.clone();
        hasher.write(&self.pending[..self.fill]);
        format!("{:016x}", hasher.finish())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The last events, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &(u64, TraceEvent)> {
        assert!(!self.count_only, "the events of a count-only trace");
        self.decoded
            .get_or_init(|| {
                let first = self.count.saturating_sub(RING as u64);
                (first..self.count)
                    .map(|n| {
                        let at = n as usize % SLOTS;
                        let slot = &self.ring[at];
                        (slot.now, slot.decode(&self.cold[at]))
                    })
                    .collect()
            })
            .iter()
    }
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_every_event_and_its_time() {
        let mut a = Trace::default();
        let mut b = Trace::default();
        let mut c = Trace::default();
        for t in [&mut a, &mut b, &mut c] {
            t.record(1, TraceEvent::Poll { task: 1 });
        }
        a.record(2, TraceEvent::Poll { task: 2 });
        b.record(2, TraceEvent::Poll { task: 2 });
        c.record(3, TraceEvent::Poll { task: 2 });
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
        assert_eq!(a.count(), 2);
    }

    /// A count-only trace counts every event, through every recorder and
    /// over many batches (big events included), as a full one; it hashes
    /// nothing, has no digest and no recent events, and a trace becomes
    /// count-only only before its first event.
    #[test]
    fn a_count_only_trace_counts_every_event() {
        let (mut hashed, mut lean) = (Trace::default(), Trace::default());
        lean.count_only();
        let big = "x".repeat(BATCH + 1);
        for i in 0..(3 * BATCH / FRAME) as u64 {
            let event = match i % 1000 {
                999 => TraceEvent::Warn { msg: big.clone() },
                _ => TraceEvent::Poll { task: i },
            };
            hashed.record(i, event.clone());
            lean.record(i, event);
        }
        for t in [&mut hashed, &mut lean] {
            t.record_poll(1, 2);
            t.record_time_advance(1, 2);
            t.record_bio_submit(2, 3, 4, 1, (5, 8));
            t.record_bio_end(3, 3, true);
            t.record_filter_pass(3, 4, 5);
        }
        assert_ne!(hashed.hashed, 0, "batches were hashed");
        assert_eq!((lean.hashed, lean.fill), (0, 0), "nothing was encoded");
        assert_eq!(lean.count(), hashed.count());
        assert_eq!(lean.count(), (3 * BATCH / FRAME) as u64 + 5);
        let digest = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lean.digest()));
        assert!(digest.is_err(), "a count-only trace has no digest");
        let recent =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lean.recent().count()));
        assert!(recent.is_err(), "a count-only trace has no recent events");
        let late =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || hashed.count_only()));
        assert!(late.is_err(), "a trace cannot become count-only half-way");
    }

    /// The ring keeps the last `RING` events, oldest first.
    #[test]
    fn recent_keeps_the_last_events_in_order() {
        let mut trace = Trace::default();
        for n in [0, 3, RING - 3, 2 * RING + 7] {
            let total = trace.count();
            let times: Vec<u64> = trace.recent().map(|(t, _)| *t).collect();
            let first = total.saturating_sub(RING as u64);
            assert_eq!(times, (first..total).collect::<Vec<u64>>());
            for i in 0..n as u64 {
                trace.record(total + i, TraceEvent::Poll { task: i });
            }
        }
    }

    /// Each hot recorder hashes the bytes and keeps the event `record`
    /// would: the same digest and the same `recent()`, read while the
    /// ring fills and after it wraps, mixed with cold events.
    #[test]
    fn hot_recorders_match_record() {
        let mut hot = Trace::default();
        let mut plain = Trace::default();
        for i in 0..3 * RING as u64 + 17 {
            let event = match i % 6 {
                0 => TraceEvent::Poll { task: i },
                1 => TraceEvent::TimeAdvance { now: i + 1 },
                2 => TraceEvent::BioSubmit {
                    id: i,
                    dev: 3,
                    op: (i % 7) as u8,
                    sector: i << 3,
                    sectors: i + 8,
                },
                3 => TraceEvent::BioEnd {
                    id: i,
                    ok: i % 2 == 0,
                },
                4 => TraceEvent::Filter {
                    dev: 3,
                    sector: i << 3,
                    verdict: FilterVerdict::Pass,
                },
                _ => TraceEvent::Warn {
                    msg: format!("w{i}"),
                },
            };
            match event.clone() {
                TraceEvent::Poll { task } => hot.record_poll(i, task),
                TraceEvent::TimeAdvance { now } => hot.record_time_advance(i, now),
                TraceEvent::BioSubmit {
                    id,
                    dev,
                    op,
                    sector,
                    sectors,
                } => hot.record_bio_submit(i, id, dev, op, (sector, sectors)),
                TraceEvent::BioEnd { id, ok } => hot.record_bio_end(i, id, ok),
                TraceEvent::Filter {
                    dev,
                    sector,
                    verdict: FilterVerdict::Pass,
                } => hot.record_filter_pass(i, dev, sector),
                other => hot.record(i, other),
            }
            plain.record(i, event);
            if i % 37 == 0 || i + 1 == RING as u64 {
                assert!(hot.recent().eq(plain.recent()), "after event {i}");
                assert_eq!(hot.digest(), plain.digest());
            }
        }
        assert!(hot.recent().eq(plain.recent()));
        assert_eq!(hot.recent().count(), RING);
        assert_eq!(hot.digest(), plain.digest());
    }

    /// A trace takes over the batch buffer a dropped one left, dirty with
    /// that one's bytes, and hashes only what it records itself.
    #[test]
    fn a_reused_batch_buffer_hashes_only_new_bytes() {
        let mut old = Trace::default();
        for i in 0..5_000u64 {
            old.record_bio_submit(i, i, 7, 1, (i << 3, 8));
        }
        drop(old);
        let mut trace = Trace::default();
        assert!(
            SPARE_BATCH.with(|spare| spare.take().is_none()),
            "the new trace took the spare buffer"
        );
        let mut plain = XxHash3_64::with_seed(0);
        for i in 0..3u64 {
            let event = TraceEvent::Poll { task: i };
            let mut bytes = (i + 1).to_le_bytes().to_vec();
            event.encode(&mut bytes);
            plain.write(&bytes);
            trace.record(i + 1, event);
        }
        assert_eq!(trace.digest(), format!("{:016x}", plain.finish()));
        // Run reports name the hash; a baseline of another is not compared
        // digest by digest (`blksnap_reports::compare`).
        assert_eq!(blksnap_reports::DIGEST_HASH, "xxh3-64");
    }

    /// The digest is XXH3-64 of the whole encoded stream, whatever the
    /// batches and whichever path encodes the event: the same as hashing
    /// each event's field-by-field bytes as it comes.
    #[test]
    fn batching_does_not_change_the_digest() {
        let mut trace = Trace::default();
        let mut plain = XxHash3_64::with_seed(0);
        let verdicts = [
            FilterVerdict::Pass,
            FilterVerdict::Complete(blksnap_core::kernel::Errno::EIO),
            FilterVerdict::CompletedTwice(blksnap_core::kernel::Errno::EAGAIN),
        ];
        for i in 0..20_000u64 {
            let event = match i % 13 {
                0 => TraceEvent::Poll { task: i },
                1..=3 => TraceEvent::Filter {
                    dev: 7,
                    sector: i,
                    verdict: verdicts[(i % 3) as usize],
                },
                // A site name too long for the fast path now and then.
                4 => TraceEvent::Alloc {
                    site: if i % 5 == 0 {
                        "a site name much longer than the frame has room for"
                    } else {
                        "chunk"
                    },
                    ok: i % 2 == 0,
                },
                10 if i % 2 == 0 => TraceEvent::TaskSpawn {
                    task: i,
                    name: format!("kworker/{i}"),
                },
                5 => TraceEvent::BioSubmit {
                    id: i,
                    dev: 3,
                    op: (i % 7) as u8,
                    sector: i << 3,
                    sectors: 8,
                },
                6 => TraceEvent::BioEnd {
                    id: i,
                    ok: i % 2 == 0,
                },
                7 => TraceEvent::TaskExit { task: i },
                8 => TraceEvent::TimeAdvance { now: i },
                9 => TraceEvent::Ioctl {
                    cmd: 9,
                    result: -(i as i64),
                },
                10 => TraceEvent::Event {
                    code: 2,
                    time_label: -1,
                },
                11 if i % 2 == 0 => TraceEvent::Freeze { dev: 1, depth: 2 },
                11 => TraceEvent::Thaw { dev: 1, depth: 1 },
                // A long text now and then crosses a batch boundary.
                _ => TraceEvent::Warn {
                    msg: "w".repeat(if i % 1000 < 13 { BATCH + 5 } else { 3 }),
                },
            };
            // The bytes the digest always hashed: Debug text for verdicts.
            let mut bytes = i.to_le_bytes().to_vec();
            match &event {
                TraceEvent::Filter {
                    dev,
                    sector,
                    verdict,
                } => {
                    bytes.push(7);
                    num(&mut bytes, u64::from(*dev));
                    num(&mut bytes, *sector);
                    text(&mut bytes, &format!("{verdict:?}"));
                }
                other => other.encode(&mut bytes),
            }
            plain.write(&bytes);
            trace.record(i, event);
            if i % 4999 == 0 {
                assert_eq!(trace.digest(), format!("{:016x}", plain.finish()));
            }
        }
        assert_eq!(trace.digest(), format!("{:016x}", plain.finish()));
    }
}
