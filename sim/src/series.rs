//! Counters sampled over virtual time for the report's plots (`blksnap_reports::TimeSeries`).
//!
//! Fault model: none. This layer only observes; it draws no random numbers, records nothing
//! in the trace and changes no state anyone else reads, so sampling never moves a digest.
//!
//! What it sees is what crosses the kernel boundary, like the checkers: the ranges users
//! appended (APPEND_STORAGE arguments), the writes the engine issues to the diff storage, the
//! bios submitted to the image disks, freezes and thaws of the block devices, the TAKE ioctls
//! and the events WAIT_EVENT returned (with the time the engine generated each, its time
//! label, and a low-space event's `requested_nr_sect`). "Chunks in the caches" is not sampled: the engine keeps
//! that count internally and reports it through no kernel interface (no stats or trace hook
//! in `blksnap_core::kernel::Kernel`), and reading engine state would break the black box.
//!
//! Cost: one map lookup per sample (none when the counter's last device is sampled again); each line keeps at most `MAX_POINTS` points and the run at
//! most `MAX_SPANS` windows and marks, however long it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Unbounded};

use blksnap_core::kernel::DevT;
use blksnap_reports::{Line, Mark, Plot, TimeSeries, Window};

/// Names the runner knows for devices and snapshots, to label the plots.
#[derive(Default)]
pub struct Names {
    pub devices: BTreeMap<DevT, String>,
    pub snapshots: BTreeMap<[u8; 16], String>,
}

impl Names {
    fn device(&self, dev: DevT) -> String {
        self.devices
            .get(&dev)
            .cloned()
            .unwrap_or_else(|| dev.to_string())
    }

    fn snapshot(&self, id: &[u8; 16]) -> String {
        self.snapshots.get(id).cloned().unwrap_or_else(|| {
            let hex: String = id[..4].iter().map(|b| format!("{b:02x}")).collect();
            format!("snapshot {hex}…")
        })
    }
}

/// What a series counts; each is one line per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Counter {
    /// Sectors users appended to the diff storage on this device.
    Appended,
    /// Distinct appended sectors the engine has written (a region rewritten counts once).
    Filled,
    /// Writes the engine issued to this storage device.
    CowWrites,
    /// Reads submitted to this image disk.
    ImageReads,
    /// Writes submitted to this image disk.
    ImageWrites,
}

impl Counter {
    fn plot(self) -> Plot {
        match self {
            Counter::Appended | Counter::Filled => Plot::Storage,
            Counter::CowWrites => Plot::Cow,
            Counter::ImageReads | Counter::ImageWrites => Plot::ImageIo,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Counter::Appended => "appended",
            Counter::Filled => "filled",
            Counter::CowWrites => "writes",
            Counter::ImageReads => "reads",
            Counter::ImageWrites => "writes",
        }
    }
}

/// How many counters there are (`Counter as usize` indexes arrays of this length).
const COUNTERS: usize = Counter::ImageWrites as usize + 1;

/// A sampled count and its line.
struct Count {
    value: u64,
    line: Line,
}

/// One event WAIT_EVENT returned.
struct EventMark {
    kind: String,
    snapshot: [u8; 16],
    /// When the engine generated it (its time label).
    generated_ns: u64,
    /// When WAIT_EVENT returned it.
    received_ns: u64,
}

/// What the low-space events of one snapshot asked for so far.
struct Requested {
    sectors: u64,
    /// (generated at, sectors requested by then), one point per event.
    steps: Vec<(u64, u64)>,
}

/// Who is a window's or mark's subject until names are known at the end.
#[derive(Clone, Copy)]
enum Subject {
    Device(DevT),
    Snapshot([u8; 16]),
}

struct Span {
    kind: &'static str,
    subject: Subject,
    start_ns: u64,
    end_ns: Option<u64>,
}

#[derive(Default)]
pub struct Sampler {
    /// Where each count is in `lines`, in the order `finish` takes them.
    counts: BTreeMap<(Counter, DevT), usize>,
    lines: Vec<Count>,
    /// Per counter, the device it last counted and where: a run samples one storage
    /// device bio after bio, so most samples find their count with no map search (issue 10).
    recent: [Option<(DevT, usize)>; COUNTERS],
    /// Storage sectors the engine wrote, per device, as disjoint [start, end) runs: where
    /// each device's are in `covers`, and the device written last (like `recent`).
    written: BTreeMap<DevT, usize>,
    covers: Vec<Covered>,
    last_written: Option<(DevT, usize)>,
    /// Open and closed windows, in the order they began (bounded).
    windows: Vec<Span>,
    /// Events, in the order WAIT_EVENT returned them (bounded).
    marks: Vec<EventMark>,
    /// The storage devices each snapshot appended.
    storage_of: BTreeMap<[u8; 16], BTreeSet<DevT>>,
    /// Per snapshot, the sectors its low-space events requested (bounded like the marks).
    requested: BTreeMap<[u8; 16], Requested>,
    /// Windows and marks past the bound.
    dropped: u64,
}

impl Sampler {
    /// Inlined: an engine write samples twice, and the call's frame cost
    /// about as much as the sample itself (issue 10).
    #[inline(always)]
    fn add(&mut self, now: u64, counter: Counter, dev: DevT, n: u64) {
        let at = match self.recent[counter as usize] {
            Some((last, at)) if last == dev => at,
            _ => self.find(counter, dev),
        };
        let count = &mut self.lines[at];
        // Saturating: hostile ioctl arguments append ranges up to u64::MAX sectors.
        count.value = count.value.saturating_add(n);
        count.line.sample(now, count.value as f64);
    }

    /// Where the count of `counter` on `dev` is (a new one if none), remembered as recent.
    #[inline(never)]
    fn find(&mut self, counter: Counter, dev: DevT) -> usize {
        let lines = &mut self.lines;
        let at = *self.counts.entry((counter, dev)).or_insert_with(|| {
            lines.push(Count {
                value: 0,
                line: Line::new(counter.plot(), counter.name(), dev.to_string()),
            });
            lines.len() - 1
        });
        self.recent[counter as usize] = Some((dev, at));
        at
    }

    /// APPEND_STORAGE offered `count` sectors of `dev` to snapshot `id`.
    pub fn appended(&mut self, now: u64, id: [u8; 16], dev: DevT, count: u64) {
        self.add(now, Counter::Appended, dev, count);
        self.storage_of.entry(id).or_default().insert(dev);
    }

    /// The engine wrote `sectors` at `sector` of storage device `dev`.
    pub fn engine_write(&mut self, now: u64, dev: DevT, sector: u64, sectors: u64) {
        self.add(now, Counter::CowWrites, dev, 1);
        let new = self
            .covered(dev)
            .cover(sector, sector.saturating_add(sectors));
        if new > 0 {
            self.add(now, Counter::Filled, dev, new);
        }
    }

    /// What the engine wrote on storage device `dev` (nothing yet if new), with no map
    /// search when it is the device written last.
    fn covered(&mut self, dev: DevT) -> &mut Covered {
        let at = match self.last_written {
            Some((last, at)) if last == dev => at,
            _ => {
                let covers = &mut self.covers;
                let at = *self.written.entry(dev).or_insert_with(|| {
                    covers.push(Covered::default());
                    covers.len() - 1
                });
                self.last_written = Some((dev, at));
                at
            }
        };
        &mut self.covers[at]
    }

    /// A bio reached image disk `dev`.
    pub fn image_io(&mut self, now: u64, dev: DevT, write: bool) {
        let counter = if write {
            Counter::ImageWrites
        } else {
            Counter::ImageReads
        };
        self.add(now, counter, dev, 1);
    }

    /// A freeze of `dev` took its count to `depth`: the first opens a window.
    pub fn freeze(&mut self, now: u64, dev: DevT, depth: u32) {
        if depth == 1 {
            self.open("freeze", Subject::Device(dev), now);
        }
    }

    /// A thaw of `dev` took its count to `depth`: the last closes the window.
    pub fn thaw(&mut self, now: u64, dev: DevT, depth: u32) {
        if depth == 0 {
            self.close(
                "freeze",
                |s| matches!(s, Subject::Device(d) if d == dev),
                now,
            );
        }
    }

    /// A TAKE ioctl of snapshot `id` began.
    pub fn take_begin(&mut self, now: u64, id: [u8; 16]) {
        self.open("take", Subject::Snapshot(id), now);
    }

    /// The TAKE ioctl of snapshot `id` returned.
    pub fn take_end(&mut self, now: u64, id: [u8; 16]) {
        self.close(
            "take",
            |s| matches!(s, Subject::Snapshot(i) if i == id),
            now,
        );
    }

    /// WAIT_EVENT returned, at `now`, event `code` of snapshot `id`, which the engine says it
    /// generated at `time_label`; a low-space event asked for `requested_nr_sect` more
    /// sectors. A time label that is not a time of this run (negative, or later than now)
    /// is drawn at `now`.
    pub fn event(
        &mut self,
        now: u64,
        id: [u8; 16],
        code: u32,
        time_label: i64,
        requested_nr_sect: Option<u64>,
    ) {
        if self.marks.len() >= blksnap_reports::series::MAX_SPANS {
            self.dropped += 1;
            return;
        }
        let generated_ns = u64::try_from(time_label).map_or(now, |t| t.min(now));
        let kind = match code {
            blksnap_core::uapi::EVENT_LOW_FREE_SPACE => "low_space".to_string(),
            blksnap_core::uapi::EVENT_CORRUPTED => "corrupted".to_string(),
            other => format!("event {other}"),
        };
        if let Some(sectors) = requested_nr_sect.filter(|_| kind == "low_space") {
            let asked = self.requested.entry(id).or_insert(Requested {
                sectors: 0,
                steps: Vec::new(),
            });
            asked.sectors = asked.sectors.saturating_add(sectors);
            // One queue per snapshot returns its events in the order they were generated;
            // a label out of that order is drawn at the last one's time.
            let at = asked
                .steps
                .last()
                .map_or(generated_ns, |p| p.0.max(generated_ns));
            asked.steps.push((at, asked.sectors));
        }
        self.marks.push(EventMark {
            kind,
            snapshot: id,
            generated_ns,
            received_ns: now,
        });
    }

    fn open(&mut self, kind: &'static str, subject: Subject, now: u64) {
        if self.windows.len() >= blksnap_reports::series::MAX_SPANS {
            self.dropped += 1;
            return;
        }
        self.windows.push(Span {
            kind,
            subject,
            start_ns: now,
            end_ns: None,
        });
    }

    fn close(&mut self, kind: &str, subject: impl Fn(Subject) -> bool, now: u64) {
        let open = self
            .windows
            .iter_mut()
            .rev()
            .find(|w| w.kind == kind && w.end_ns.is_none() && subject(w.subject));
        if let Some(w) = open {
            w.end_ns = Some(now);
        }
    }

    /// The series of the run that ended at `end_ns`, labelled with `names`. The low-space
    /// level of a snapshot is what its low-space events requested so far (the sum of their
    /// `requested_nr_sect`, the creation event's included) less the engine's public
    /// `low_space_threshold` parameter: the engine raises the next event when
    /// "requested minus filled <= threshold", i.e. when the filled line reaches the level.
    /// It is drawn against the devices the snapshot appended (exact when it used one).
    pub fn finish(&self, end_ns: u64, names: &Names, low_space_threshold: u64) -> TimeSeries {
        let mut series = TimeSeries {
            end_ns,
            dropped: self.dropped,
            ..TimeSeries::default()
        };
        for (&(_, dev), &at) in &self.counts {
            let mut line = self.lines[at].line.clone();
            line.finish();
            line.device = names.device(dev);
            series.lines.push(line);
        }
        for (id, asked) in &self.requested {
            let device = self.storage_label(id, names);
            series
                .lines
                .push(low_space_level(asked, device, low_space_threshold));
        }
        series
            .lines
            .sort_by(|a, b| (a.plot, &a.device, &a.name).cmp(&(b.plot, &b.device, &b.name)));
        let label = |s: &Subject| match s {
            Subject::Device(dev) => names.device(*dev),
            Subject::Snapshot(id) => names.snapshot(id),
        };
        for w in &self.windows {
            series.push_window(Window {
                kind: w.kind.to_string(),
                device: label(&w.subject),
                start_ns: w.start_ns,
                end_ns: w.end_ns.unwrap_or(end_ns),
            });
        }
        // Marks stand at the time the engine generated the event: in time order.
        let mut marks: Vec<&EventMark> = self.marks.iter().collect();
        marks.sort_by_key(|m| m.generated_ns);
        for m in marks {
            series.push_mark(Mark {
                kind: m.kind.clone(),
                device: label(&Subject::Snapshot(m.snapshot)),
                at_ns: m.generated_ns,
                received_ns: Some(m.received_ns),
            });
        }
        series
    }

    /// The storage devices snapshot `id` appended, as the plot names them ("a+b"), with the
    /// snapshot's name when it appended none or another snapshot shares one of them.
    fn storage_label(&self, id: &[u8; 16], names: &Names) -> String {
        let devs = self.storage_of.get(id);
        let shared = devs.is_some_and(|devs| {
            self.storage_of
                .iter()
                .any(|(other, d)| other != id && !d.is_disjoint(devs))
        });
        let joined = devs.map_or(String::new(), |devs| {
            devs.iter()
                .map(|d| names.device(*d))
                .collect::<Vec<_>>()
                .join("+")
        });
        match (joined.is_empty(), shared) {
            (true, _) => names.snapshot(id),
            (false, true) => format!("{joined} ({})", names.snapshot(id)),
            (false, false) => joined,
        }
    }
}

/// Requested sectors less the threshold (not below zero), a step at each low-space event.
fn low_space_level(asked: &Requested, device: String, threshold: u64) -> Line {
    let mut level = Line::new(Plot::Storage, "low-space level", device);
    for &(t, sectors) in &asked.steps {
        level.sample(t, sectors.saturating_sub(threshold) as f64);
    }
    level.finish();
    level
}

/// Storage sectors the engine wrote on one device, as disjoint runs that never touch
/// (touching runs merge). The run being written, bio after bio, is held open outside the
/// map: a bio that continues it, short of the next run, costs no search (issue 10).
#[derive(Default)]
struct Covered {
    /// First sector -> end.
    runs: BTreeMap<u64, u64>,
    /// The open run (start, end) and where the next run in `runs` starts (`u64::MAX` if
    /// none): it may grow up to, not onto, that start. Nothing else changes `runs` while
    /// it is open, so that bound stays true.
    open: Option<(u64, u64, u64)>,
}

impl Covered {
    /// Adds [start, end); returns how many sectors were not covered before.
    fn cover(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        if let Some((s, e, limit)) = self.open.as_mut() {
            if *s <= start && start <= *e && end < *limit {
                let new = end.saturating_sub(*e);
                *e = (*e).max(end);
                return new;
            }
        }
        if let Some((s, e, _)) = self.open.take() {
            self.runs.insert(s, e);
        }
        cover(&mut self.runs, start, end, &mut self.open)
    }

    /// Every run, the open one included, in order.
    #[cfg(test)]
    fn all(&self) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = self.runs.iter().map(|(s, e)| (*s, *e)).collect();
        all.extend(self.open.map(|(s, e, _)| (s, e)));
        all.sort_unstable();
        all
    }
}

/// Adds [start, end) to the disjoint runs; returns how many sectors were not covered before.
/// Runs never touch (touching runs merge), so only the last run starting at or before `end`
/// can meet [start, end) unless it starts after `start`: the usual write (into a fresh area,
/// or continuing the run before it) costs one search and no allocation. A write that meets
/// no run opens a new one (`open`, with the start of the next run) instead of joining the map.
fn cover(
    runs: &mut BTreeMap<u64, u64>,
    start: u64,
    end: u64,
    open: &mut Option<(u64, u64, u64)>,
) -> u64 {
    match runs.range_mut(..=end).next_back() {
        Some((s, e)) if *e >= start && *s <= start => {
            let already = (*e).min(end) - start;
            *e = (*e).max(end);
            return (end - start) - already;
        }
        Some((_, e)) if *e >= start => {}
        _ => {
            // No run starting at or before `end` reaches `start`: the next one starts
            // after `end`.
            let next = runs.range((Excluded(end), Unbounded)).next();
            *open = Some((start, end, next.map_or(u64::MAX, |(s, _)| *s)));
            return end - start;
        }
    }
    // It meets several runs, or starts before the one it meets: merge them
    // from the last down, one search each.
    let (mut lo, mut hi) = (start, end);
    let mut already = 0;
    while let Some((s, e)) = runs
        .range(..=end)
        .next_back()
        .filter(|(_, e)| **e >= start)
        .map(|(s, e)| (*s, *e))
    {
        already += e.min(end).saturating_sub(s.max(start));
        lo = lo.min(s);
        hi = hi.max(e);
        runs.remove(&s);
    }
    runs.insert(lo, hi);
    (end - start) - already
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_counts_new_sectors_once() {
        let mut runs = Covered::default();
        assert_eq!(runs.cover(0, 8), 8);
        assert_eq!(runs.cover(0, 8), 0, "rewrite of a region");
        assert_eq!(runs.cover(16, 24), 8);
        assert_eq!(runs.cover(4, 20), 8, "fills the gap only");
        assert_eq!(runs.all(), [(0, 24)]);
        let mut runs = Covered::default();
        assert_eq!(runs.cover(8, 16), 8);
        assert_eq!(runs.cover(16, 24), 8, "adjacent");
        assert_eq!(runs.cover(0, 8), 8);
        assert_eq!(runs.all(), [(0, 24)]);
    }

    /// `cover` (the open run and the one-search paths) against a plain set of sectors, on
    /// random writes that start inside, before, after and across the runs already covered;
    /// one in three continues the last write, as a region stored bio after bio.
    #[test]
    fn cover_agrees_with_a_set_of_sectors() {
        let mut rng = crate::rng::SimRng::new(6);
        let mut grown = 0;
        for _ in 0..200 {
            let mut runs = Covered::default();
            let mut set = BTreeSet::new();
            let mut last_end = 0;
            for _ in 0..60 {
                let start = match rng.below(3) {
                    0 => last_end,
                    _ => rng.below(200),
                };
                let end = start + rng.below(24);
                last_end = end;
                let new = (start..end).filter(|s| !set.contains(s)).count() as u64;
                set.extend(start..end);
                let was_open = runs.open;
                assert_eq!(runs.cover(start, end), new, "[{start}, {end})");
                grown += u64::from(
                    was_open.is_some() && runs.open.is_some_and(|o| o.0 == was_open.unwrap().0),
                );
                let all = runs.all();
                let held: BTreeSet<u64> = all.iter().flat_map(|(s, e)| *s..*e).collect();
                assert_eq!(held, set);
                let gaps = all.iter().zip(all.iter().skip(1));
                assert!(gaps.clone().all(|((_, e), (s, _))| e < s), "runs touch");
            }
        }
        assert!(grown > 500, "the open run grew {grown} times");
    }

    #[test]
    fn windows_pair_up_and_labels_come_from_names() {
        let (a, b) = (DevT(1 << 20), DevT(2 << 20));
        let mut s = Sampler::default();
        s.freeze(10, a, 1);
        s.freeze(11, a, 2);
        s.thaw(12, a, 1);
        s.freeze(13, b, 1);
        s.thaw(20, a, 0);
        s.take_begin(5, [7; 16]);
        s.take_end(30, [7; 16]);
        s.event(
            40,
            [7; 16],
            blksnap_core::uapi::EVENT_LOW_FREE_SPACE,
            3,
            Some(100),
        );
        s.appended(1, [7; 16], b, 300);
        s.engine_write(2, b, 0, 8);
        let mut names = Names::default();
        names.devices.insert(a, "sda".into());
        names.snapshots.insert([7; 16], "snap".into());
        let series = s.finish(50, &names, 40);
        let w: Vec<_> = series
            .windows
            .iter()
            .map(|w| (w.kind.as_str(), w.device.as_str(), w.start_ns, w.end_ns))
            .collect();
        assert_eq!(
            w,
            [
                ("freeze", "sda", 10, 20),
                ("freeze", b.to_string().as_str(), 13, 50),
                ("take", "snap", 5, 30)
            ]
        );
        assert_eq!(series.marks[0].kind, "low_space");
        assert_eq!(
            (series.marks[0].at_ns, series.marks[0].received_ns),
            (3, Some(40)),
            "at the time generated, returned later"
        );
        let level = series
            .lines
            .iter()
            .find(|l| l.name == "low-space level")
            .expect("level line");
        // Requested (100) less the threshold (40), not appended (300) less it.
        assert_eq!(level.points, [(3, 60.0)]);
        assert_eq!(level.device, b.to_string());
        let names: Vec<_> = series.lines.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["appended", "filled", "low-space level", "writes"]);
    }
}
