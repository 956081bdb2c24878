//! The typed trace of a run and its digest.
//!
//! Every event is encoded canonically (a tag byte and little-endian fields)
//! into a buffer that feeds a blake3 hasher in large updates, so the digest
//! costs little time and no memory; the last events are kept in a ring for
//! failure reports, and formatted only when one is printed. The digest is
//! a function of the encoded byte stream alone, however it is split into
//! updates.

use std::fmt;
use std::io::Write as _;

use blksnap_core::kernel::FilterVerdict;

/// How many recent events a failure report shows.
const RING: usize = 200;

/// Encoded bytes gathered before one hasher update: large updates let
/// blake3 hash whole chunks at a time.
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

fn num(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn text(out: &mut Vec<u8>, s: &str) {
    num(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A filter verdict as its `Debug` text, which is what the digest has
/// always hashed. Pass (nearly every bio) is a constant; an error is rare
/// and written in place, without an intermediate String.
fn verdict_text(out: &mut Vec<u8>, verdict: &FilterVerdict) {
    if *verdict == FilterVerdict::Pass {
        return text(out, "Pass");
    }
    let at = out.len();
    num(out, 0);
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{verdict:?}");
    let len = (out.len() - at - 8) as u64;
    out[at..at + 8].copy_from_slice(&len.to_le_bytes());
}

impl TraceEvent {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            TraceEvent::TaskSpawn { task, name } => {
                out.push(1);
                num(out, *task);
                text(out, name);
            }
            TraceEvent::TaskExit { task } => {
                out.push(2);
                num(out, *task);
            }
            TraceEvent::Poll { task } => {
                out.push(3);
                num(out, *task);
            }
            TraceEvent::TimeAdvance { now } => {
                out.push(4);
                num(out, *now);
            }
            TraceEvent::BioSubmit {
                id,
                dev,
                op,
                sector,
                sectors,
            } => {
                out.push(5);
                num(out, *id);
                num(out, u64::from(*dev));
                out.push(*op);
                num(out, *sector);
                num(out, *sectors);
            }
            TraceEvent::BioEnd { id, ok } => {
                out.push(6);
                num(out, *id);
                out.push(u8::from(*ok));
            }
            TraceEvent::Filter {
                dev,
                sector,
                verdict,
            } => {
                out.push(7);
                num(out, u64::from(*dev));
                num(out, *sector);
                verdict_text(out, verdict);
            }
            TraceEvent::Ioctl { cmd, result } => {
                out.push(8);
                num(out, u64::from(*cmd));
                num(out, *result as u64);
            }
            TraceEvent::Event { code, time_label } => {
                out.push(9);
                num(out, u64::from(*code));
                num(out, *time_label as u64);
            }
            TraceEvent::Freeze { dev, depth } | TraceEvent::Thaw { dev, depth } => {
                out.push(if matches!(self, TraceEvent::Freeze { .. }) {
                    10
                } else {
                    11
                });
                num(out, u64::from(*dev));
                num(out, u64::from(*depth));
            }
            TraceEvent::Alloc { site, ok } => {
                out.push(12);
                text(out, site);
                out.push(u8::from(*ok));
            }
            TraceEvent::Step { index, what } => {
                out.push(13);
                num(out, *index);
                text(out, what);
            }
            TraceEvent::Warn { msg } => {
                out.push(14);
                text(out, msg);
            }
            TraceEvent::Failure { checker, msg } => {
                out.push(15);
                text(out, checker);
                text(out, msg);
            }
        }
    }
}

pub struct Trace {
    hasher: blake3::Hasher,
    count: u64,
    /// The last `RING` events, a ring: `ring[next]` is the oldest once it
    /// is full (an event overwrites it in place, nothing shifts).
    ring: Vec<(u64, TraceEvent)>,
    next: usize,
    /// Encoded events not yet hashed.
    pending: Vec<u8>,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            hasher: blake3::Hasher::new(),
            count: 0,
            ring: Vec::with_capacity(RING),
            next: 0,
            pending: Vec::with_capacity(BATCH + 256),
        }
    }
}

impl Trace {
    pub fn record(&mut self, now: u64, event: TraceEvent) {
        self.pending.extend_from_slice(&now.to_le_bytes());
        event.encode(&mut self.pending);
        if self.pending.len() >= BATCH {
            self.hasher.update(&self.pending);
            self.pending.clear();
        }
        self.count += 1;
        if self.ring.len() < RING {
            self.ring.push((now, event));
        } else {
            self.ring[self.next] = (now, event);
        }
        // A compare, not a division per event.
        self.next += 1;
        if self.next == RING {
            self.next = 0;
        }
    }

    /// The digest so far, as 16 hex digits (64 bits are plenty to compare).
    pub fn digest(&self) -> String {
        let mut hasher = self.hasher.clone();
        hasher.update(&self.pending);
        hasher.finalize().to_hex()[..16].to_string()
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The last events, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &(u64, TraceEvent)> {
        let (newer, older) = self.ring.split_at(self.next);
        older.iter().chain(newer)
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

    /// The digest is blake3 of the whole encoded stream, whatever the
    /// batches: the same as hashing each event's bytes as it comes.
    #[test]
    fn batching_does_not_change_the_digest() {
        let mut trace = Trace::default();
        let mut plain = blake3::Hasher::new();
        let verdicts = [
            FilterVerdict::Pass,
            FilterVerdict::Complete(blksnap_core::kernel::Errno::EIO),
            FilterVerdict::CompletedTwice(blksnap_core::kernel::Errno::EAGAIN),
        ];
        for i in 0..20_000u64 {
            let event = match i % 3 {
                0 => TraceEvent::Poll { task: i },
                1 => TraceEvent::Filter {
                    dev: 7,
                    sector: i,
                    verdict: verdicts[(i / 3 % 3) as usize],
                },
                _ => TraceEvent::Alloc {
                    site: "chunk",
                    ok: i % 2 == 0,
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
            plain.update(&bytes);
            trace.record(i, event);
            if i % 4999 == 0 {
                assert_eq!(trace.digest(), plain.finalize().to_hex()[..16]);
            }
        }
        assert_eq!(trace.digest(), plain.finalize().to_hex()[..16]);
    }
}
