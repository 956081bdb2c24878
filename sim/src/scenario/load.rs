//! Reading scenario files: parse, then check every reference, and report
//! problems as `FILE:LINE:COL: what was expected`, placed at the offending
//! occurrence (see `spans`).

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use blksnap_core::kernel::Errno;
use blksnap_core::Quirks;

use super::model::{EventExpect, Expect, Scenario, Step, Target};
use super::spans::{self, At};
use crate::fault_select::Select;

/// The largest scenario file read, in bytes (4 MiB): a scenario is a
/// page or two of text, and a bigger file is a mistake, not a test.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// A scenario that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub path: PathBuf,
    /// 1-based; 0 when the problem is the file itself, not a place in it.
    pub line: usize,
    pub col: usize,
    pub message: String,
    /// The source line with a caret under the offending token; empty when
    /// the error has no place. Shown only by the alternate form (`{:#}`),
    /// so the plain form stays the one `FILE:LINE:COL: message` line.
    pub snippet: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        if self.line == 0 {
            return write!(f, "{path}: {}", self.message);
        }
        write!(f, "{path}:{}:{}: {}", self.line, self.col, self.message)?;
        if f.alternate() && !self.snippet.is_empty() {
            write!(f, "\n{}", self.snippet)?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    fn whole_file(path: &Path, message: String) -> LoadError {
        LoadError {
            path: path.to_path_buf(),
            line: 0,
            col: 0,
            message,
            snippet: String::new(),
        }
    }

    fn at_offset(path: &Path, text: &str, offset: usize, message: String) -> LoadError {
        let (line, col) = spans::line_col(text, offset);
        LoadError {
            path: path.to_path_buf(),
            line,
            col,
            message,
            snippet: spans::snippet(text, offset, line),
        }
    }
}

/// Read and check one scenario file.
pub fn load(path: &Path) -> Result<Scenario, LoadError> {
    let bytes = read_file(path)?;
    let text = decode(path, &bytes)?;
    parse(path, text)
}

/// The bytes of a regular file of at most `MAX_FILE_BYTES`. Anything else
/// is refused before it is opened: reading a FIFO would block the run.
pub fn read_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    let cannot = |e: std::io::Error| LoadError::whole_file(path, format!("cannot read: {e}"));
    let meta = std::fs::metadata(path).map_err(cannot)?;
    check_kind_and_size(path, &meta)?;
    let file = std::fs::File::open(path).map_err(cannot)?;
    // The file may have been swapped or grown since: check what was opened.
    check_kind_and_size(path, &file.metadata().map_err(cannot)?)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(path, bytes.len() as u64));
    }
    Ok(bytes)
}

fn check_kind_and_size(path: &Path, meta: &std::fs::Metadata) -> Result<(), LoadError> {
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "a FIFO, socket or device"
        };
        let message = format!("not a regular file ({kind}): refused");
        return Err(LoadError::whole_file(path, message));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big(path, meta.len()));
    }
    Ok(())
}

fn too_big(path: &Path, len: u64) -> LoadError {
    let message = format!(
        "the file has {len} bytes or more; a scenario file has at most {MAX_FILE_BYTES} bytes (4 MiB)"
    );
    LoadError::whole_file(path, message)
}

/// The text of the file, or where its encoding goes wrong.
fn decode<'b>(path: &Path, bytes: &'b [u8]) -> Result<&'b str, LoadError> {
    if bytes.starts_with(&[0xfe, 0xff]) || bytes.starts_with(&[0xff, 0xfe]) {
        let message = "a UTF-16 byte order mark: a scenario file is UTF-8".to_string();
        return Err(LoadError::at_offset(path, "", 0, message));
    }
    std::str::from_utf8(bytes).map_err(|e| {
        let good = e.valid_up_to();
        let valid = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let message = format!(
            "invalid UTF-8 (byte 0x{:02x} at byte offset {good}): a scenario file is UTF-8",
            bytes[good]
        );
        LoadError::at_offset(path, valid, good, message)
    })
}

/// The error for a scenario whose name an earlier file of the run has,
/// placed at its `name` (reports and baselines know scenarios by name).
pub fn duplicate_name(path: &Path, name: &str, first: &Path) -> LoadError {
    let message = format!(
        "scenario name '{name}' is also the name of {}: a run needs unique names",
        first.display()
    );
    let text = read_file(path).map(String::from_utf8);
    match text {
        Ok(Ok(text)) => {
            let offset = spans::offset_of(&text, &At::default().field("name"));
            LoadError::at_offset(path, &text, offset, message)
        }
        _ => LoadError::whole_file(path, message),
    }
}

/// Parse and check scenario text; `path` is only for messages.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, LoadError> {
    if text.starts_with('\u{feff}') {
        let message = "a byte order mark (U+FEFF) starts the file: save it as UTF-8 without one";
        return Err(LoadError::at_offset(path, text, 0, message.into()));
    }
    // Optional fields may be written without `Some(..)`.
    let implicit_some = ron::extensions::Extensions::IMPLICIT_SOME;
    let scenario: Scenario = ron::Options::default()
        .with_default_extension(implicit_some)
        .from_str(text)
        .map_err(|e| ron_error(path, text, e))?;
    Checker { path, text }.check(&scenario)?;
    Ok(scenario)
}

/// A syntax or field error from ron, moved onto the name it is about:
/// ron reports an unknown field where it stopped, after the name.
fn ron_error(path: &Path, text: &str, e: ron::error::SpannedError) -> LoadError {
    use ron::error::Error;
    let offset = spans::offset_of_ron(text, e.span.end.line, e.span.end.col);
    let within = |outer: &Option<String>| {
        outer
            .as_ref()
            .map_or(String::new(), |o| format!(" in `{o}`"))
    };
    let (offset, message) = match &e.code {
        Error::NoSuchStructField {
            expected,
            found,
            outer,
        } => (
            name_start(text, offset, found),
            format!(
                "unknown field `{found}`{}: {}",
                within(outer),
                one_of(expected, "fields")
            ),
        ),
        Error::DuplicateStructField { field, outer } => (
            name_start(text, offset, field),
            format!("field `{field}` given twice{}", within(outer)),
        ),
        Error::NoSuchEnumVariant {
            expected,
            found,
            outer,
        } => (
            name_start(text, offset, found),
            format!(
                "unknown variant `{found}`{}: {}",
                within(outer),
                one_of(expected, "variants")
            ),
        ),
        code => (offset, code.to_string()),
    };
    LoadError::at_offset(path, text, offset, message)
}

fn one_of(names: &[&str], what: &str) -> String {
    if names.is_empty() {
        return format!("it takes no {what}");
    }
    let list: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    format!("valid {what}: {}", list.join(", "))
}

/// Where the identifier `name` that ron just read (ending at or before
/// `offset`, maybe as a raw `r#name`) starts; `offset` if it is not there.
fn name_start(text: &str, offset: usize, name: &str) -> usize {
    let before = text[..offset].trim_end();
    let Some(start) = before.strip_suffix(name).map(str::len) else {
        return offset;
    };
    let starts_word = !text[..start]
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphanumeric() || c == '_');
    if text[..start].ends_with("r#") {
        return start - 2;
    }
    if starts_word {
        start
    } else {
        offset
    }
}

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    /// An error placed at the value the path leads to.
    fn error(&self, at: &At, message: String) -> LoadError {
        let offset = spans::offset_of(self.text, at);
        LoadError::at_offset(self.path, self.text, offset, message)
    }

    fn check(&self, s: &Scenario) -> Result<(), LoadError> {
        let top = At::default();
        let mut quirks = Quirks::default();
        for (i, id) in s.quirks.iter().enumerate() {
            quirks
                .enable(id)
                .map_err(|e| self.error(&top.field("quirks").index(i), e.to_string()))?;
        }
        if !quirks.param_1 {
            s.params.validate().map_err(|e| {
                let at = top.field("params");
                let name = blksnap_core::Params::NAMES
                    .iter()
                    .find(|n| e.contains(&format!("parameter {n} ")));
                let at = name.map_or(at.clone(), |n| at.field(n));
                self.error(&at, format!("{e} (B-PARAM-1 lets v2 take it)"))
            })?;
        }
        let names = self.devices(s)?;
        self.faults(s)?;
        let snapshots = created_snapshots(&s.steps);
        let steps = top.field("steps");
        self.steps(&s.steps, &steps, &names, &snapshots)?;
        limits::scenario(s).map_err(|(at, message)| self.error(&at, message))?;
        check_power(&s.steps, &steps, true).map_err(|(at, message)| self.error(&at, message))?;
        check_kills(&s.steps, &steps, None).map_err(|(at, message)| self.error(&at, message))
    }

    /// Names and numbers unique, sizes and latencies the sim can model.
    fn devices<'s>(&self, s: &'s Scenario) -> Result<BTreeSet<&'s str>, LoadError> {
        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        for (index, device) in s.devices.iter().enumerate() {
            let at = At::default().field("devices").index(index);
            let number = (
                device.major.unwrap_or(7),
                device.minor.unwrap_or(index as u32),
            );
            let number_at = if device.minor.is_some() || device.major.is_none() {
                at.field("minor")
            } else {
                at.field("major")
            };
            let problem = if !names.insert(device.name.as_str()) {
                Some((
                    at.field("name"),
                    format!("device '{}' declared twice", device.name),
                ))
            } else if !numbers.insert(number) {
                let message = format!("device number {}:{} used twice", number.0, number.1);
                Some((number_at, message))
            } else if number.0 == crate::kernel::IMAGE_MAJOR {
                let message = format!("major {} is the image disks' major", number.0);
                Some((at.field("major"), message))
            } else if let Some(problem) = disk_problem(device, &at) {
                Some(problem)
            } else {
                limits::device(device)
                    .err()
                    .map(|(field, message)| (at.field(field), message))
            };
            if let Some((at, problem)) = problem {
                return Err(self.error(&at, problem));
            }
        }
        Ok(names)
    }

    /// Fault sites and checker names must exist: a typo would switch a
    /// test off without a word.
    fn faults(&self, s: &Scenario) -> Result<(), LoadError> {
        let faults = At::default().field("faults");
        let sites = blksnap_core::module::ALLOC_SITES;
        for (i, (site, _)) in s.faults.alloc.iter().enumerate() {
            let base = site.strip_suffix("/nowait").unwrap_or(site);
            if !sites.contains(&base) {
                let message = format!("unknown allocation site '{site}': expected one of {sites:?} (optionally with /nowait)");
                let at = faults.field("alloc").index(i).index(0);
                return Err(self.error(&at, message));
            }
        }
        if s.faults.bio_error_ppm > 1_000_000 {
            let message = "bio_error_ppm is at most 1000000".to_string();
            return Err(self.error(&faults.field("bio_error_ppm"), message));
        }
        if let Some(expected) = &s.expect_failure {
            let checkers = crate::check::CHECKERS;
            if !checkers.contains(&expected.checker.as_str()) {
                let message = format!(
                    "unknown checker '{}': expected one of {checkers:?}",
                    expected.checker
                );
                let at = At::default().field("expect_failure").field("checker");
                return Err(self.error(&at, message));
            }
        }
        Ok(())
    }

    fn steps(
        &self,
        steps: &[Step],
        at: &At,
        devices: &BTreeSet<&str>,
        snapshots: &BTreeSet<String>,
    ) -> Result<(), LoadError> {
        for (i, step) in steps.iter().enumerate() {
            self.step(step, &at.index(i), devices, snapshots)?;
        }
        Ok(())
    }

    fn step(
        &self,
        step: &Step,
        at: &At,
        devices: &BTreeSet<&str>,
        snapshots: &BTreeSet<String>,
    ) -> Result<(), LoadError> {
        let device = |name: &str, field: &'static str| self.device(name, &at.field(field), devices);
        let snapshot = |name: &str| self.snapshot(name, &at.field("snapshot"), snapshots);
        let expect = |e: &Expect| self.expect(e, &at.field("expect"));
        match step {
            Step::Version { expect: e, .. }
            | Step::Collect { expect: e, .. }
            | Step::Ioctl { expect: e, .. } => expect(e),
            Step::TrackerCollect {
                expect: e,
                expect_entries,
                ..
            } => {
                let entries = at.field("expect_entries");
                for (i, entry) in expect_entries.iter().flatten().enumerate() {
                    self.device(&entry.device, &entries.index(i).field("device"), devices)?;
                }
                expect(e)
            }
            Step::Create {
                devices: list,
                expect: e,
                ..
            } => {
                let list_at = at.field("devices");
                for (i, d) in list.iter().enumerate() {
                    self.device(d, &list_at.index(i), devices)?;
                }
                expect(e)
            }
            Step::Append {
                snapshot: s,
                device: d,
                expect: e,
                ..
            } => {
                snapshot(s)?;
                device(d, "device")?;
                expect(e)
            }
            Step::Take {
                snapshot: s,
                expect: e,
                ..
            }
            | Step::Destroy {
                snapshot: s,
                expect: e,
                ..
            }
            | Step::CollectImages {
                snapshot: s,
                expect: e,
                ..
            } => {
                snapshot(s)?;
                expect(e)
            }
            Step::WaitEvent {
                snapshot: s,
                expect: e,
                ..
            } => {
                snapshot(s)?;
                self.event_expect(e, &at.field("expect"), devices)
            }
            Step::Write {
                target, expect: e, ..
            }
            | Step::Read {
                target, expect: e, ..
            }
            | Step::MarkDirty {
                target, expect: e, ..
            } => {
                self.target(target, &at.field("target"), devices, snapshots)?;
                expect(e)
            }
            Step::TrackerRemove {
                device: d,
                expect: e,
                ..
            }
            | Step::Flush {
                device: d,
                expect: e,
            }
            | Step::ReadCbtMap {
                device: d,
                expect: e,
                ..
            } => {
                device(d, "device")?;
                expect(e)
            }
            Step::SetParam {
                name, expect: e, ..
            } => {
                self.param(name, &at.field("name"))?;
                expect(e)
            }
            Step::VerifyImage {
                snapshot: s,
                device: d,
                expect,
            } => {
                snapshot(s)?;
                device(d, "device")?;
                self.verify_expect(expect, &at.field("expect"))
            }
            Step::VerifyOriginal { device: d }
            | Step::Sync { device: d }
            | Step::Freeze { device: d }
            | Step::Thaw { device: d }
            | Step::Resize { device: d, .. }
            | Step::RemoveDevice { device: d } => device(d, "device"),
            Step::Workload(w) => {
                let target = at.index(0).field("target");
                self.target(&w.target, &target, devices, snapshots)
            }
            Step::Concurrent(branches) => {
                let list = at.index(0);
                for (i, branch) in branches.iter().enumerate() {
                    self.steps(branch, &list.index(i), devices, snapshots)?;
                }
                Ok(())
            }
            Step::Repeat { steps, .. } | Step::Timed { steps, .. } => {
                self.steps(steps, &at.field("steps"), devices, snapshots)
            }
            Step::Kill { .. } => Ok(()),
            Step::ExpectMedia {
                device: d, content, ..
            } => {
                device(d, "device")?;
                self.media(content, &at.field("content"), devices)
            }
            Step::Stretch {
                snapshot: s,
                device: d,
                ..
            } => {
                snapshot(s)?;
                device(d, "device")
            }
            Step::Sleep { .. } | Step::Unload | Step::Load | Step::Reboot => Ok(()),
            Step::PowerLoss { during, .. } => {
                let list = at.field("during");
                for (i, branch) in during.iter().enumerate() {
                    self.steps(branch, &list.index(i), devices, snapshots)?;
                }
                Ok(())
            }
            Step::FullBackup {
                snapshot: s,
                device: d,
                backup: b,
            }
            | Step::IncrementalBackup {
                snapshot: s,
                device: d,
                backup: b,
                ..
            }
            | Step::CompareBackup {
                snapshot: s,
                device: d,
                backup: b,
            } => {
                snapshot(s)?;
                device(d, "device")?;
                device(b, "backup")
            }
        }
    }

    fn media(
        &self,
        media: &super::model::Media,
        at: &At,
        devices: &BTreeSet<&str>,
    ) -> Result<(), LoadError> {
        use super::model::Media;
        match media {
            Media::Zero => Ok(()),
            Media::Pattern(d, _) => self.device(d, &at.index(0), devices),
            Media::OneOf(list) => {
                let list_at = at.index(0);
                for (i, m) in list.iter().enumerate() {
                    self.media(m, &list_at.index(i), devices)?;
                }
                Ok(())
            }
        }
    }

    fn param(&self, name: &str, at: &At) -> Result<(), LoadError> {
        let names = blksnap_core::Params::NAMES;
        if names.contains(&name) {
            return Ok(());
        }
        let message = format!("unknown parameter '{name}': expected one of {names:?}");
        Err(self.error(at, message))
    }

    fn device(&self, name: &str, at: &At, devices: &BTreeSet<&str>) -> Result<(), LoadError> {
        if devices.contains(name) || parse_dev_number(name).is_some() {
            return Ok(());
        }
        let known: Vec<&str> = devices.iter().copied().collect();
        Err(self.error(
            at,
            format!("unknown device '{name}': expected one of {known:?} or \"major:minor\""),
        ))
    }

    fn snapshot(&self, name: &str, at: &At, snapshots: &BTreeSet<String>) -> Result<(), LoadError> {
        if snapshots.contains(name) {
            return Ok(());
        }
        Err(self.error(
            at,
            format!("snapshot '{name}' is never created: expected a Create step naming it"),
        ))
    }

    fn target(
        &self,
        target: &Target,
        at: &At,
        devices: &BTreeSet<&str>,
        snapshots: &BTreeSet<String>,
    ) -> Result<(), LoadError> {
        match target {
            Target::Original(d) => self.device(d, &at.index(0), devices),
            Target::Image(s, d) => {
                self.snapshot(s, &at.index(0), snapshots)?;
                self.device(d, &at.index(1), devices)
            }
        }
    }

    fn errno(&self, name: &str, at: &At) -> Result<(), LoadError> {
        if Errno::from_name(name).is_some() {
            return Ok(());
        }
        Err(self.error(
            at,
            format!("unknown errno '{name}': expected a name such as \"ENOENT\" or \"ESRCH\""),
        ))
    }

    fn expect(&self, expect: &Expect, at: &At) -> Result<(), LoadError> {
        match expect {
            Expect::Err(name) => self.errno(name, &at.index(0)),
            Expect::Ok | Expect::Any => Ok(()),
        }
    }

    /// VerifyImage judges data or expects an unreadable image; `Any`
    /// would let it check nothing.
    fn verify_expect(&self, expect: &Expect, at: &At) -> Result<(), LoadError> {
        match expect {
            Expect::Ok => Ok(()),
            Expect::Err(name) if name == "EIO" => Ok(()),
            Expect::Err(name) => Err(self.error(
                &at.index(0),
                format!("VerifyImage expects Ok or Err(\"EIO\"), not Err(\"{name}\")"),
            )),
            Expect::Any => Err(self.error(
                at,
                "VerifyImage expects Ok or Err(\"EIO\"); Any would check nothing".into(),
            )),
        }
    }

    fn event_expect(
        &self,
        expect: &EventExpect,
        at: &At,
        devices: &BTreeSet<&str>,
    ) -> Result<(), LoadError> {
        match expect {
            EventExpect::Corrupted(device, errno) => {
                self.device(device, &at.index(0), devices)?;
                self.errno(errno, &at.index(1))
            }
            EventExpect::Err(errno) => self.errno(errno, &at.index(0)),
            _ => Ok(()),
        }
    }
}

/// Bounds on numbers, so a file cannot overflow the sim's arithmetic, size
/// a buffer the host cannot hold, or ask for more work than a test bench
/// should run. Every bound is named in its message and listed in
/// `scenarios/README.md` (Bounds).
pub mod limits {
    use super::super::model::{
        ArgFault, DeviceSpec, Faults, Media, RawArg, Scenario, Step, Workload,
    };
    use super::At;
    use crate::faults::AllocFault;

    /// Sectors a pattern stamp can address (2^48, 128 PiB).
    pub const MAX_SECTORS: u64 = 1 << 48;
    pub const MAX_IO_SECTORS: u64 = 1 << 16;
    /// `Timed`: one hour, the liveness bound on virtual time.
    pub const MAX_MS: u64 = 3_600_000;
    /// One wait (Sleep, a pause, a WAIT_EVENT timeout): 10 minutes, well
    /// below the liveness bound, so a single wait cannot fail the run.
    pub const MAX_WAIT_MS: u64 = 600_000;
    pub const MAX_REPEAT: u64 = 1_000_000;
    /// Steps a run may take, counted with every Repeat multiplied out; the
    /// runner stops a run past it ("liveness", work budget).
    pub const MAX_STEPS: u64 = 1_000_000;
    /// Sectors of user IO a run may move (2M sectors, 1 GiB of data): the
    /// sim keeps a stamp per written sector, in the device and the oracle.
    pub const MAX_WORK_SECTORS: u64 = 1 << 21;
    /// Groups (Repeat, Timed, Concurrent) inside groups.
    pub const MAX_DEPTH: usize = 16;
    /// Each branch is a task: 10^5 of them run in about two seconds.
    pub const MAX_BRANCHES: usize = 100_000;
    /// Bytes of user memory one argument buffer may map (1 MiB).
    pub const MAX_ARG_BYTES: u64 = 1 << 20;
    /// Bytes a READ_CBT_MAP buffer may map (16 MiB).
    pub const MAX_CBT_MAP_BYTES: u64 = 1 << 24;
    /// Elements of an array argument the runner maps, whatever the count
    /// field says (a lying `Count` tests the engine, not the host).
    pub const MAX_ARRAY_ITEMS: u64 = 4096;
    pub const MAX_CHANGE_POINTS: u32 = 10_000;

    /// `Err((at, message))`: `at` is the offending value.
    pub type Bound = Result<(), (At, String)>;

    /// `Err((field, message))`: the field of the device that is wrong.
    pub fn device(d: &DeviceSpec) -> Result<(), (&'static str, String)> {
        if d.sectors == 0 || d.sectors > MAX_SECTORS {
            return Err((
                "sectors",
                format!("a device has 1 to {MAX_SECTORS} sectors"),
            ));
        }
        if d.io_min == 0 || !d.io_min.is_multiple_of(512) {
            return Err(("io_min", "io_min is a positive multiple of 512".into()));
        }
        let l = d.latency;
        if l.min_ns > l.max_ns || l.max_ns > MAX_MS * 1_000_000 || l.per_sector_ns > 1_000_000_000 {
            let message = "latency needs min_ns <= max_ns <= 1 hour, per_sector_ns <= 1 s";
            return Err(("latency", message.into()));
        }
        if d.bad_sectors
            .iter()
            .any(|&(start, count)| start.checked_add(count).is_none_or(|end| end > MAX_SECTORS))
        {
            let message =
                format!("a bad_sectors range (start, count) ends at most at {MAX_SECTORS}");
            return Err(("bad_sectors", message));
        }
        Ok(())
    }

    /// The scenario as a whole: scheduler, faults, parameters, and the
    /// work its steps add up to.
    pub fn scenario(s: &Scenario) -> Bound {
        let top = At::default();
        if let super::super::model::Scheduler::Priority(n) = s.scheduler {
            if n > MAX_CHANGE_POINTS {
                let message = format!("Priority has at most {MAX_CHANGE_POINTS} change points");
                return Err((top.field("scheduler").index(0), message));
            }
        }
        faults(&s.faults, &top.field("faults"))?;
        params(&s.params, &top.field("params"))?;
        let steps = top.field("steps");
        check_steps(&s.steps, &steps, 0)?;
        work(&s.steps, &steps)
    }

    /// One rule per site: a second entry would silently replace the first.
    fn faults(f: &Faults, at: &At) -> Bound {
        let alloc = at.field("alloc");
        for (i, (site, how)) in f.alloc.iter().enumerate() {
            if f.alloc[..i].iter().any(|(earlier, _)| earlier == site) {
                let message = format!("allocation site '{site}' has a fault already: one per site");
                return Err((alloc.index(i).index(0), message));
            }
            let message = match how {
                AllocFault::Nth(0) => "Nth counts calls from 1: Nth(0) would never fail".into(),
                AllocFault::PerMillion(p) if *p > 1_000_000 => {
                    format!("PerMillion is at most 1000000, not {p}")
                }
                _ => continue,
            };
            return Err((alloc.index(i).index(1).index(0), message));
        }
        Ok(())
    }

    /// Values that make the engine spin inside one step, where neither
    /// the poll bound nor the step budget can stop it (the chunk and CBT
    /// size rules grow a shift until a count fits under the maximum, or
    /// double a shift of 0). v2 takes them (B-PARAM-1); the bench cannot.
    fn params(p: &blksnap_core::Params, at: &At) -> Bound {
        let values = [
            ("chunk_maximum_count", p.chunk_maximum_count),
            (
                "tracking_block_maximum_count",
                p.tracking_block_maximum_count,
            ),
            (
                "tracking_block_minimum_shift",
                u64::from(p.tracking_block_minimum_shift),
            ),
        ];
        for (name, value) in values {
            if value == 0 {
                return Err((at.field(name), spin_message(name)));
            }
        }
        Ok(())
    }

    fn spin_message(name: &str) -> String {
        format!(
            "{name} = 0 makes the engine's size rule loop for ever inside one step, \
             beyond any bound the bench can enforce: at least 1"
        )
    }

    /// A SetParam value as the engine stores it (a C int, as unsigned).
    fn set_param(name: &str, value: i64, at: &At) -> Bound {
        let spins = [
            "chunk_maximum_count",
            "tracking_block_maximum_count",
            "tracking_block_minimum_shift",
        ];
        if spins.contains(&name) && value as i32 == 0 {
            return Err((at.field("value"), spin_message(name)));
        }
        Ok(())
    }

    pub fn check_steps(steps: &[Step], at: &At, depth: usize) -> Bound {
        for (i, step) in steps.iter().enumerate() {
            check_step(step, &at.index(i), depth)?;
        }
        Ok(())
    }

    fn field((field, message): (&'static str, String), at: &At) -> (At, String) {
        (at.field(field), message)
    }

    fn check_step(step: &Step, at: &At, depth: usize) -> Bound {
        match step {
            Step::Sleep { ms } => wait(*ms, "Sleep ms").map_err(|m| (at.field("ms"), m)),
            Step::WaitEvent {
                timeout_ms, fault, ..
            } => {
                wait(u64::from(*timeout_ms), "WaitEvent timeout_ms")
                    .map_err(|m| (at.field("timeout_ms"), m))?;
                arg_fault(fault.as_ref(), at)
            }
            Step::Write {
                sector,
                sectors,
                repeat,
                stride,
                pause_us,
                ..
            } => {
                io(*sector, *sectors, *repeat, stride.unwrap_or(*sectors))
                    .map_err(|e| field(e, at))?;
                if *pause_us > MAX_WAIT_MS * 1000 {
                    let message = format!("pause_us is at most {} us", MAX_WAIT_MS * 1000);
                    return Err((at.field("pause_us"), message));
                }
                Ok(())
            }
            Step::Read {
                sector, sectors, ..
            } => io(*sector, *sectors, 1, 0).map_err(|e| field(e, at)),
            Step::Workload(w) => workload(w).map_err(|e| field(e, &at.index(0))),
            Step::ExpectMedia {
                sector,
                sectors,
                content,
                ..
            } => {
                io(*sector, *sectors, 1, 0).map_err(|e| field(e, at))?;
                media(content, &at.field("content"))
            }
            Step::Stretch {
                from,
                limit,
                timeout_ms,
                ..
            } => stretch(*from, *limit, *timeout_ms).map_err(|e| field(e, at)),
            Step::Ioctl {
                arg: RawArg::Zeroed(n),
                ..
            } if *n as u64 > MAX_ARG_BYTES => {
                let message = format!("Zeroed maps at most {MAX_ARG_BYTES} bytes (1 MiB)");
                Err((at.field("arg").index(0), message))
            }
            Step::ReadCbtMap { length, fault, .. } => {
                if u64::from(*length) > MAX_CBT_MAP_BYTES {
                    let message = format!("length is at most {MAX_CBT_MAP_BYTES} bytes (16 MiB)");
                    return Err((at.field("length"), message));
                }
                arg_fault(fault.as_ref(), at)
            }
            Step::Resize { sectors, .. } if *sectors > MAX_SECTORS => {
                let message = format!("Resize to at most {MAX_SECTORS} sectors");
                Err((at.field("sectors"), message))
            }
            Step::SetParam { name, value, .. } => set_param(name, *value, at),
            Step::Version { fault, .. }
            | Step::Create { fault, .. }
            | Step::Append { fault, .. }
            | Step::Take { fault, .. }
            | Step::Destroy { fault, .. }
            | Step::Collect { fault, .. }
            | Step::CollectImages { fault, .. }
            | Step::TrackerRemove { fault, .. }
            | Step::TrackerCollect { fault, .. }
            | Step::MarkDirty { fault, .. } => arg_fault(fault.as_ref(), at),
            _ => group(step, at, depth),
        }
    }

    /// Repeat, Timed and Concurrent: their own numbers, then their steps
    /// one level deeper.
    fn group(step: &Step, at: &At, depth: usize) -> Bound {
        let deeper = || {
            if depth >= MAX_DEPTH {
                let message =
                    format!("groups (Repeat, Timed, Concurrent) nest at most {MAX_DEPTH} deep");
                return Err((at.clone(), message));
            }
            Ok(depth + 1)
        };
        match step {
            Step::Timed { max_ms, steps } => {
                if *max_ms > MAX_MS {
                    let message = format!("Timed is at most {MAX_MS} ms");
                    return Err((at.field("max_ms"), message));
                }
                check_steps(steps, &at.field("steps"), deeper()?)
            }
            Step::Repeat { times, steps } => {
                if u64::from(*times) > MAX_REPEAT {
                    let message = format!("Repeat is at most {MAX_REPEAT} times");
                    return Err((at.field("times"), message));
                }
                check_steps(steps, &at.field("steps"), deeper()?)
            }
            Step::PowerLoss {
                during,
                after_us,
                jitter_us,
            } => {
                for (value, name) in [(after_us, "after_us"), (jitter_us, "jitter_us")] {
                    if *value > MAX_WAIT_MS * 1000 {
                        let message = format!("{name} is at most {} us", MAX_WAIT_MS * 1000);
                        return Err((at.field(name), message));
                    }
                }
                let list = at.field("during");
                let depth = deeper()?;
                for (i, branch) in during.iter().enumerate() {
                    check_steps(branch, &list.index(i), depth)?;
                }
                Ok(())
            }
            Step::Concurrent(branches) => {
                let list = at.index(0);
                if branches.len() > MAX_BRANCHES {
                    let message = format!("a Concurrent has at most {MAX_BRANCHES} branches");
                    return Err((list.index(MAX_BRANCHES), message));
                }
                let depth = deeper()?;
                for (i, branch) in branches.iter().enumerate() {
                    check_steps(branch, &list.index(i), depth)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn wait(ms: u64, what: &str) -> Result<(), String> {
        if ms > MAX_WAIT_MS {
            return Err(format!(
                "{what} is at most {MAX_WAIT_MS} ms (below the liveness bound of one hour)"
            ));
        }
        Ok(())
    }

    /// Faults whose numbers size a buffer.
    fn arg_fault(fault: Option<&ArgFault>, at: &At) -> Bound {
        match fault {
            Some(ArgFault::ArrayShort(n)) if u64::from(*n) > MAX_ARRAY_ITEMS => {
                let message = format!("ArrayShort maps at most {MAX_ARRAY_ITEMS} elements");
                Err((at.field("fault").index(0), message))
            }
            Some(ArgFault::StructShort(n)) if *n as u64 > MAX_ARG_BYTES => {
                let message = format!("StructShort is at most {MAX_ARG_BYTES} bytes");
                Err((at.field("fault").index(0), message))
            }
            _ => Ok(()),
        }
    }

    /// `Err((field, message))`: the field that breaks the bound.
    fn io(
        sector: u64,
        sectors: u64,
        repeat: u64,
        stride: u64,
    ) -> Result<(), (&'static str, String)> {
        let last = repeat
            .checked_sub(1)
            .and_then(|r| r.checked_mul(stride))
            .and_then(|offset| sector.checked_add(offset))
            .and_then(|start| start.checked_add(sectors));
        let field = if sectors == 0 || sectors > MAX_IO_SECTORS {
            "sectors"
        } else if repeat == 0 || repeat > MAX_REPEAT {
            "repeat"
        } else if last.is_none_or(|end| end > MAX_SECTORS) {
            "sector"
        } else {
            return Ok(());
        };
        let message = format!(
            "`{field}`: an IO has 1 to {MAX_IO_SECTORS} sectors, 1 to {MAX_REPEAT} repeats, and must \
             end below 2^64 (at most at sector {MAX_SECTORS})"
        );
        Err((field, message))
    }

    fn workload(w: &Workload) -> Result<(), (&'static str, String)> {
        let sizes = format!(
            "a Workload has at most {MAX_REPEAT} ops of 1 to {MAX_IO_SECTORS} sectors, \
             align 1 to {MAX_IO_SECTORS}, a region (start, count) of at least align sectors \
             ending at most at sector {MAX_SECTORS}"
        );
        let field = if u64::from(w.ops) > MAX_REPEAT {
            "ops"
        } else if w.max_sectors == 0 || w.max_sectors > MAX_IO_SECTORS {
            "max_sectors"
        } else if w.align == 0 || w.align > MAX_IO_SECTORS {
            "align"
        } else if w.region.is_some_and(|(start, count)| {
            count < w.align || start.checked_add(count).is_none_or(|end| end > MAX_SECTORS)
        }) {
            "region"
        } else if w.read_percent > 100 {
            return Err(("read_percent", "read_percent is 0 to 100".into()));
        } else {
            return Ok(());
        };
        Err((field, format!("`{field}`: {sizes}")))
    }

    fn stretch(from: u64, limit: u64, timeout_ms: u32) -> Result<(), (&'static str, String)> {
        if timeout_ms == 0 || u64::from(timeout_ms) > MAX_WAIT_MS {
            let message = format!(
                "Stretch timeout_ms is 1 to {MAX_WAIT_MS} ms (0 would poll without waiting)"
            );
            return Err(("timeout_ms", message));
        }
        let message = format!("Stretch from and limit are at most {MAX_SECTORS} sectors");
        if from > MAX_SECTORS {
            return Err(("from", message));
        }
        if limit > MAX_SECTORS {
            return Err(("limit", message));
        }
        Ok(())
    }

    fn media(content: &Media, at: &At) -> Bound {
        match content {
            Media::Pattern(_, from) if *from > MAX_SECTORS => {
                let message = format!("a Pattern starts at most at sector {MAX_SECTORS}");
                Err((at.index(1), message))
            }
            Media::OneOf(list) => {
                let list_at = at.index(0);
                for (i, m) in list.iter().enumerate() {
                    media(m, &list_at.index(i))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// What a run of these steps costs: steps taken (every Repeat
    /// multiplied out, a Concurrent branch counting as one) and sectors of
    /// user IO moved. Saturating: a product past u64 is past every bound.
    #[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
    pub struct Cost {
        pub steps: u64,
        pub sectors: u64,
    }

    impl Cost {
        fn add(self, other: Cost) -> Cost {
            Cost {
                steps: self.steps.saturating_add(other.steps),
                sectors: self.sectors.saturating_add(other.sectors),
            }
        }

        fn times(self, n: u64) -> Cost {
            Cost {
                steps: self.steps.saturating_mul(n),
                sectors: self.sectors.saturating_mul(n),
            }
        }
    }

    pub fn cost(steps: &[Step]) -> Cost {
        steps
            .iter()
            .fold(Cost::default(), |sum, step| sum.add(step_cost(step)))
    }

    fn step_cost(step: &Step) -> Cost {
        let one = |sectors: u64| Cost { steps: 1, sectors };
        match step {
            Step::Write {
                sectors, repeat, ..
            } => one(sectors.saturating_mul(*repeat)),
            Step::Read { sectors, .. } => one(*sectors),
            Step::Workload(w) => one(u64::from(w.ops).saturating_mul(w.max_sectors)),
            Step::Repeat { times, steps } => one(0).add(cost(steps).times(u64::from(*times))),
            Step::Timed { steps, .. } => one(0).add(cost(steps)),
            Step::Concurrent(branches)
            | Step::PowerLoss {
                during: branches, ..
            } => branches
                .iter()
                .fold(one(0), |sum, b| sum.add(one(0)).add(cost(b))),
            _ => one(0),
        }
    }

    /// The whole run's estimated work against the budget, reported at the
    /// first top-level step where the running sum goes over.
    fn work(steps: &[Step], at: &At) -> Bound {
        let mut sum = Cost::default();
        for (i, step) in steps.iter().enumerate() {
            sum = sum.add(step_cost(step));
            if sum.steps > MAX_STEPS || sum.sectors > MAX_WORK_SECTORS {
                let message = format!(
                    "the run would take {} steps and move {} sectors by here (Repeat multiplied \
                     out); the work budget is {MAX_STEPS} steps and {MAX_WORK_SECTORS} sectors",
                    sum.steps, sum.sectors
                );
                return Err((at.index(i), message));
            }
        }
        Ok(())
    }
}

/// `Kill(sibling: n)` only directly inside a Concurrent branch, naming a
/// branch of that Concurrent.
fn check_kills(steps: &[Step], at: &At, branches: Option<usize>) -> Result<(), (At, String)> {
    for (i, step) in steps.iter().enumerate() {
        let at = at.index(i);
        match step {
            Step::Kill { sibling } => match branches {
                Some(n) if *sibling < n => {}
                Some(n) => {
                    let message =
                        format!("Kill(sibling: {sibling}) but the Concurrent has {n} branches");
                    return Err((at.field("sibling"), message));
                }
                None => return Err((at, "Kill must be inside a Concurrent branch".into())),
            },
            Step::Concurrent(list) => {
                for (b, branch) in list.iter().enumerate() {
                    check_kills(branch, &at.index(0).index(b), Some(list.len()))?;
                }
            }
            // A Kill finds its sibling by its own step path: it must stand
            // directly in the branch, not inside a group within it.
            Step::Repeat { steps, .. } | Step::Timed { steps, .. } => {
                check_kills(steps, &at.field("steps"), None)?
            }
            Step::PowerLoss { during, .. } => {
                for (b, branch) in during.iter().enumerate() {
                    check_kills(branch, &at.field("during").index(b), None)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Snapshot names that some Create step (at any depth) introduces.
fn created_snapshots(steps: &[Step]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for step in steps {
        match step {
            Step::Create { snapshot, .. } => {
                names.insert(snapshot.clone());
            }
            Step::Concurrent(branches) => {
                for branch in branches {
                    names.extend(created_snapshots(branch));
                }
            }
            Step::Repeat { steps, .. } | Step::Timed { steps, .. } => {
                names.extend(created_snapshots(steps))
            }
            Step::PowerLoss { during, .. } => {
                for branch in during {
                    names.extend(created_snapshots(branch));
                }
            }
            _ => {}
        }
    }
    names
}

/// PowerLoss and Reboot end every process but the one that runs them:
/// they stand in the scenario's own process (the top level, or a Repeat
/// or Timed there), never in a Concurrent branch or a `during` list.
fn check_power(steps: &[Step], at: &At, top: bool) -> Result<(), (At, String)> {
    for (i, step) in steps.iter().enumerate() {
        let at = at.index(i);
        match step {
            Step::PowerLoss { .. } | Step::Reboot if !top => {
                let message = format!(
                    "{} must be a top-level step (or in a top-level Repeat or Timed), not in a \
                     Concurrent branch or a PowerLoss `during` list: it ends every other process",
                    step.kind()
                );
                return Err((at, message));
            }
            Step::PowerLoss { during, .. } => {
                for (b, branch) in during.iter().enumerate() {
                    check_power(branch, &at.field("during").index(b), false)?;
                }
            }
            Step::Concurrent(list) => {
                for (b, branch) in list.iter().enumerate() {
                    check_power(branch, &at.index(0).index(b), false)?;
                }
            }
            Step::Repeat { steps, .. } | Step::Timed { steps, .. } => {
                check_power(steps, &at.field("steps"), top)?
            }
            _ => {}
        }
    }
    Ok(())
}

/// A fault rule or journal a device cannot have: (where, what).
fn disk_problem(device: &super::model::DeviceSpec, at: &At) -> Option<(At, String)> {
    if let Some(problem) = fault_problem(device, at) {
        return Some(problem);
    }
    let (start, len) = device.journal?;
    if !device.fs {
        return Some((at.field("journal"), "a journal needs `fs: true`".into()));
    }
    if len == 0
        || start
            .checked_add(len)
            .is_none_or(|end| end > device.sectors)
    {
        let message = format!(
            "journal ({start}, {len}) must be a non-empty range inside the device's {} sectors",
            device.sectors
        );
        return Some((at.field("journal"), message));
    }
    None
}

/// A rule of a device's three fault lists that cannot be: its selector's
/// fields (one validator for every list, `fault_select.rs`) or its kind's
/// own fields. Placed at the field, the message prefixed by the list's name.
fn fault_problem(device: &super::model::DeviceSpec, at: &At) -> Option<(At, String)> {
    type Rule = (Select, Result<(), (&'static str, String)>);
    let disk = device
        .faults
        .iter()
        .map(|f| (f.select(), f.validate_kind()));
    let data = device.data_faults.iter().map(|f| {
        let kind = f.validate_kind().map_err(|message| ("kind", message));
        (f.select(), kind)
    });
    let io = device.io_errors.iter().map(|f| (f.select(), Ok(())));
    let lists: [(&'static str, Vec<Rule>); 3] = [
        ("faults", disk.collect()),
        ("data_faults", data.collect()),
        ("io_errors", io.collect()),
    ];
    for (list, rules) in lists {
        for (i, (select, kind)) in rules.into_iter().enumerate() {
            if let Err((field, message)) = select.validate().and(kind) {
                return Some((
                    at.field(list).index(i).field(field),
                    format!("{list}: {message}"),
                ));
            }
        }
    }
    None
}

/// "major:minor" as a device number.
pub fn parse_dev_number(name: &str) -> Option<(u32, u32)> {
    let (major, minor) = name.split_once(':')?;
    Some((major.trim().parse().ok()?, minor.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"Scenario(
    name: "t",
    devices: [(name: "a", sectors: 1024)],
    steps: [
        Create(snapshot: "s", devices: ["a"]),
        Take(snapshot: "s", expect: Err("EFAULT")),
    ],
)"#;

    #[test]
    fn good_file_loads() {
        let s = parse(Path::new("x.ron"), GOOD).unwrap();
        assert_eq!(s.steps.len(), 2);
        assert!(s.teardown);
    }

    #[test]
    fn misspelled_step_names_line_and_column() {
        let bad = GOOD.replace("Take(", "Takee(");
        let e = parse(Path::new("x.ron"), &bad).unwrap_err();
        assert_eq!((e.line, e.col > 0), (6, true), "{e}");
        assert!(e.to_string().starts_with("x.ron:6:"), "{e}");
        assert!(e.message.contains("Takee"), "{e}");
    }

    #[test]
    fn unknown_field_is_an_error() {
        let bad = GOOD.replace("sectors: 1024", "sectors: 1024, colour: 3");
        let e = parse(Path::new("x.ron"), &bad).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("colour"), "{e}");
    }

    #[test]
    fn semantic_errors_point_at_the_name() {
        let bad = GOOD.replace("devices: [\"a\"]", "devices: [\"b\"]");
        let e = parse(Path::new("x.ron"), &bad).unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("unknown device 'b'"), "{e}");
        let bad = GOOD.replace("EFAULT", "EFAULTY");
        let e = parse(Path::new("x.ron"), &bad).unwrap_err();
        assert!(e.message.contains("unknown errno"), "{e}");
        let bad = GOOD.replace("name: \"t\",", "name: \"t\", quirks: [\"B-NOPE\"],");
        let e = parse(Path::new("x.ron"), &bad).unwrap_err();
        assert!(e.message.contains("unknown quirk"), "{e}");
    }

    #[test]
    fn typos_and_absurd_numbers_are_load_errors() {
        let bad = [
            (
                GOOD.replace(
                    "name: \"t\",",
                    "name: \"t\", faults: (alloc: [(\"diff_bufer\", From(1))]),",
                ),
                "unknown allocation site",
            ),
            (
                GOOD.replace(
                    "name: \"t\",",
                    "name: \"t\", expect_failure: (checker: \"nope\"),",
                ),
                "unknown checker",
            ),
            (
                GOOD.replace("sectors: 1024", "sectors: 1024, major: 252"),
                "image disks' major",
            ),
            (
                GOOD.replace(
                    "(name: \"a\", sectors: 1024)",
                    "(name: \"a\", sectors: 1024), (name: \"b\", sectors: 8, minor: 0)",
                ),
                "used twice",
            ),
            (
                GOOD.replace(
                    "Take(snapshot: \"s\", expect: Err(\"EFAULT\")),",
                    "Sleep(ms: 18446744073709551615),",
                ),
                "Sleep ms is at most",
            ),
            (
                GOOD.replace(
                    "Take(snapshot: \"s\", expect: Err(\"EFAULT\")),",
                    "Write(target: Original(\"a\"), sector: 18446744073709551615, sectors: 8),",
                ),
                "must end below",
            ),
            (
                GOOD.replace("sectors: 1024", "sectors: 1152921504606846976"),
                "sectors",
            ),
        ];
        for (text, want) in bad {
            let e = parse(Path::new("x.ron"), &text).unwrap_err();
            assert!(e.message.contains(want), "{want}: {e}");
            assert!(e.line > 0, "{e}");
        }
    }

    /// The alternate form adds the source line and a caret under the whole
    /// offending token; the first line stays `FILE:LINE:COL: message`.
    #[test]
    fn a_load_error_shows_the_line_with_a_caret_under_the_token() {
        let text = GOOD.replace("sectors: 1024", "sectorz: 1024");
        let e = parse(Path::new("x.ron"), &text).unwrap_err();
        let shown = format!("{e:#}");
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines[0], e.to_string(), "{shown}");
        assert!(
            lines[0].starts_with("x.ron:3:27: unknown field `sectorz`"),
            "{shown}"
        );
        assert_eq!(lines[2], "3 |     devices: [(name: \"a\", sectorz: 1024)],");
        assert_eq!(lines[3], "  |                           ^^^^^^^", "{shown}");
        assert_eq!(lines.len(), 4, "{shown}");
    }

    #[test]
    fn raw_device_numbers_are_accepted() {
        let s = GOOD.replace("devices: [\"a\"]", "devices: [\"a\", \"9:9\"]");
        assert!(parse(Path::new("x.ron"), &s).is_ok());
        assert_eq!(parse_dev_number("9:9"), Some((9, 9)));
    }

    /// Line and column of the first `marker` in `text`, for expectations
    /// (the tests know where they put things; the loader never searches).
    fn where_is(text: &str, marker: &str) -> (usize, usize) {
        spans::line_col(text, text.find(marker).expect("marker in the text"))
    }

    #[test]
    fn a_duplicate_device_is_reported_at_the_second_declaration() {
        let text = GOOD.replace(
            "(name: \"a\", sectors: 1024)",
            "(name: \"a\", sectors: 1024),\n    (name: \"b\", sectors: 8), (name: \"a\" , sectors: 8)",
        );
        let e = parse(Path::new("x.ron"), &text).unwrap_err();
        assert!(e.message.contains("declared twice"), "{e}");
        assert_eq!((e.line, e.col), where_is(&text, "\"a\" ,"), "{e}");
    }

    #[test]
    fn an_unknown_name_in_a_comment_is_not_its_use() {
        let text = GOOD
            .replace("name: \"t\",", "name: \"t\", // not \"b\" nor \"q\"")
            .replace("devices: [\"a\"]", "devices: [\"a\", /* \"b\" */ \"b\"]")
            .replace("Take(snapshot: \"s\"", "Take(snapshot: \"q\"");
        let e = parse(Path::new("x.ron"), &text).unwrap_err();
        assert!(e.message.contains("unknown device 'b'"), "{e}");
        assert_eq!((e.line, e.col), where_is(&text, "\"b\"]"), "{e}");
        let text = text.replace("/* \"b\" */ \"b\"", "\"a\"");
        let e = parse(Path::new("x.ron"), &text).unwrap_err();
        assert!(e.message.contains("snapshot 'q'"), "{e}");
        assert_eq!((e.line, e.col), where_is(&text, "\"q\", expect"), "{e}");
    }

    #[test]
    fn errors_inside_groups_point_at_the_value() {
        let steps = "Concurrent([[Sleep(ms: 1)], [Repeat(times: 2, steps: [\n  Write(target: Image(\"s\", \"zz\"), sector: 0, sectors: 8)])]]),";
        let text = GOOD.replace("Take(snapshot: \"s\", expect: Err(\"EFAULT\")),", steps);
        let e = parse(Path::new("x.ron"), &text).unwrap_err();
        assert!(e.message.contains("unknown device 'zz'"), "{e}");
        assert_eq!((e.line, e.col), where_is(&text, "\"zz\""), "{e}");
    }

    #[test]
    fn unknown_and_duplicate_fields_point_at_the_name() {
        let text = GOOD.replace(
            "Take(snapshot: \"s\",",
            "Take(snapshot: \"s\",\n      r#expct: Ok,",
        );
        let e = parse(Path::new("x.ron"), &text).unwrap_err();
        assert_eq!((e.line, e.col), where_is(&text, "r#expct"), "{e}");
        assert!(e.message.contains("`expct` in `Take`"), "{e}");
        assert!(e.message.contains("`snapshot`, `fault`, `expect`"), "{e}");
        let text = GOOD.replace(
            "Take(snapshot: \"s\",",
            "Take(snapshot: \"s\", snapshot : \"s\",",
        );
        let e = parse(Path::new("x.ron"), &text).unwrap_err();
        assert_eq!((e.line, e.col), where_is(&text, "snapshot :"), "{e}");
        assert!(e.message.contains("given twice"), "{e}");
    }

    #[test]
    fn encoding_errors_have_a_position() {
        let mut bytes = GOOD
            .replace("name: \"t\"", "name: \"t\u{e9}\"")
            .into_bytes();
        let at = bytes.iter().position(|&b| b == 0xc3).unwrap();
        bytes[at] = 0xff;
        let e = decode(Path::new("x.ron"), &bytes).unwrap_err();
        assert_eq!((e.line, e.col), where_is(GOOD, "\","), "{e}");
        assert!(e.message.contains("invalid UTF-8 (byte 0xff"), "{e}");
        let e = parse(Path::new("x.ron"), &format!("\u{feff}{GOOD}")).unwrap_err();
        assert_eq!((e.line, e.col), (1, 1), "{e}");
        assert!(e.message.contains("byte order mark"), "{e}");
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // ron counts bytes; "διάκ" is 8 bytes but 4 columns.
        let text = GOOD.replace(
            "(name: \"a\", sectors: 1024)",
            "(name: \"a\", sectors: 1024), (name: \"διάκ\", sectorz: 8)",
        );
        let e = parse(Path::new("x.ron"), &text).unwrap_err();
        let line = text.lines().nth(2).unwrap();
        let col = line[..line.find("sectorz").unwrap()].chars().count() + 1;
        assert_eq!((e.line, e.col), (3, col), "{e}");
    }

    #[test]
    fn bounds_point_at_the_field_that_breaks_them() {
        let cases = [
            ("Sleep(ms: 1),\n        Sleep(ms: 99999999999),", "ms: 99"),
            (
                "Concurrent([[Sleep(ms: 1)], [Kill(sibling: 7)]]),",
                "sibling: 7",
            ),
            (
                "Write(target: Original(\"a\"), sector: 0, sectors: 8, repeat: 0),",
                "repeat: 0",
            ),
        ];
        for (step, marker) in cases {
            let text = GOOD.replace("Take(snapshot: \"s\", expect: Err(\"EFAULT\")),", step);
            let e = parse(Path::new("x.ron"), &text).unwrap_err();
            let want = where_is(&text, marker);
            // The value, after `name: `.
            let want = (want.0, want.1 + marker.find(' ').unwrap() + 1);
            assert_eq!((e.line, e.col), want, "{e}");
        }
    }
}
