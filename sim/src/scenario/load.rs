//! Reading scenario files: parse, then check every reference, and report
//! problems as `FILE:LINE:COL: what was expected`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use blksnap_core::kernel::Errno;
use blksnap_core::Quirks;

use super::model::{EventExpect, Expect, Scenario, Step, Target};

/// A scenario that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

impl std::error::Error for LoadError {}

/// Read and check one scenario file.
pub fn load(path: &Path) -> Result<Scenario, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError {
        path: path.to_path_buf(),
        line: 0,
        col: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Parse and check scenario text; `path` is only for messages.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, LoadError> {
    // Optional fields may be written without `Some(..)`.
    let implicit_some = ron::extensions::Extensions::IMPLICIT_SOME;
    let scenario: Scenario = ron::Options::default()
        .with_default_extension(implicit_some)
        .from_str(text)
        .map_err(|e| LoadError {
            path: path.to_path_buf(),
            line: e.position.line,
            col: e.position.col,
            message: e.code.to_string(),
        })?;
    Checker { path, text }.check(&scenario)?;
    Ok(scenario)
}

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    /// An error placed at the first place `needle` appears in the file.
    fn error(&self, needle: &str, message: String) -> LoadError {
        let (line, col) = locate(self.text, needle);
        LoadError {
            path: self.path.to_path_buf(),
            line,
            col,
            message,
        }
    }

    fn check(&self, s: &Scenario) -> Result<(), LoadError> {
        let mut quirks = Quirks::default();
        for id in &s.quirks {
            quirks
                .enable(id)
                .map_err(|e| self.error(&format!("\"{id}\""), e.to_string()))?;
        }
        if !quirks.param_1 {
            s.params
                .validate()
                .map_err(|e| self.error("params", format!("{e} (B-PARAM-1 lets v2 take it)")))?;
        }
        let names = self.devices(s)?;
        self.faults(s)?;
        let snapshots = created_snapshots(&s.steps);
        self.steps(&s.steps, &names, &snapshots)?;
        limits::check_steps(&s.steps).map_err(|(needle, message)| self.error(needle, message))?;
        check_kills(&s.steps, None).map_err(|message| self.error("Kill", message))
    }

    /// Names and numbers unique, sizes and latencies the sim can model.
    fn devices<'s>(&self, s: &'s Scenario) -> Result<BTreeSet<&'s str>, LoadError> {
        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        for (index, device) in s.devices.iter().enumerate() {
            let needle = format!("\"{}\"", device.name);
            let number = (
                device.major.unwrap_or(7),
                device.minor.unwrap_or(index as u32),
            );
            let problem = if !names.insert(device.name.as_str()) {
                Some(format!("device '{}' declared twice", device.name))
            } else if !numbers.insert(number) {
                Some(format!(
                    "device number {}:{} used twice",
                    number.0, number.1
                ))
            } else if number.0 == crate::kernel::IMAGE_MAJOR {
                Some(format!("major {} is the image disks' major", number.0))
            } else {
                limits::device(device).err()
            };
            if let Some(problem) = problem {
                return Err(self.error(&needle, problem));
            }
        }
        Ok(names)
    }

    /// Fault sites and checker names must exist: a typo would switch a
    /// test off without a word.
    fn faults(&self, s: &Scenario) -> Result<(), LoadError> {
        let sites = blksnap_core::module::ALLOC_SITES;
        for (site, _) in &s.faults.alloc {
            let base = site.strip_suffix("/nowait").unwrap_or(site);
            if !sites.contains(&base) {
                let message = format!("unknown allocation site '{site}': expected one of {sites:?} (optionally with /nowait)");
                return Err(self.error(&format!("\"{site}\""), message));
            }
        }
        if s.faults.bio_error_ppm > 1_000_000 {
            return Err(self.error("bio_error_ppm", "bio_error_ppm is at most 1000000".into()));
        }
        if let Some(expected) = &s.expect_failure {
            let checkers = crate::check::CHECKERS;
            if !checkers.contains(&expected.checker.as_str()) {
                let message = format!(
                    "unknown checker '{}': expected one of {checkers:?}",
                    expected.checker
                );
                return Err(self.error(&format!("\"{}\"", expected.checker), message));
            }
        }
        Ok(())
    }

    fn steps(
        &self,
        steps: &[Step],
        devices: &BTreeSet<&str>,
        snapshots: &BTreeSet<String>,
    ) -> Result<(), LoadError> {
        for step in steps {
            self.step(step, devices, snapshots)?;
        }
        Ok(())
    }

    fn step(
        &self,
        step: &Step,
        devices: &BTreeSet<&str>,
        snapshots: &BTreeSet<String>,
    ) -> Result<(), LoadError> {
        let device = |name: &str| self.device(name, devices);
        let snapshot = |name: &str| self.snapshot(name, snapshots);
        match step {
            Step::Version { expect, .. }
            | Step::Collect { expect, .. }
            | Step::Ioctl { expect, .. } => self.expect(expect),
            Step::TrackerCollect {
                expect,
                expect_entries,
                ..
            } => {
                for entry in expect_entries.iter().flatten() {
                    device(&entry.device)?;
                }
                self.expect(expect)
            }
            Step::Create {
                devices: list,
                expect,
                ..
            } => {
                list.iter().try_for_each(|d| device(d))?;
                self.expect(expect)
            }
            Step::Append {
                snapshot: s,
                device: d,
                expect,
                ..
            } => {
                snapshot(s)?;
                device(d)?;
                self.expect(expect)
            }
            Step::Take {
                snapshot: s,
                expect,
                ..
            }
            | Step::Destroy {
                snapshot: s,
                expect,
                ..
            }
            | Step::CollectImages {
                snapshot: s,
                expect,
                ..
            } => {
                snapshot(s)?;
                self.expect(expect)
            }
            Step::WaitEvent {
                snapshot: s,
                expect,
                ..
            } => {
                snapshot(s)?;
                self.event_expect(expect, devices)
            }
            Step::Write { target, expect, .. }
            | Step::Read { target, expect, .. }
            | Step::MarkDirty { target, expect, .. } => {
                self.target(target, devices, snapshots)?;
                self.expect(expect)
            }
            Step::TrackerRemove {
                device: d, expect, ..
            }
            | Step::ReadCbtMap {
                device: d, expect, ..
            } => {
                device(d)?;
                self.expect(expect)
            }
            Step::SetParam { name, expect, .. } => {
                self.param(name)?;
                self.expect(expect)
            }
            Step::VerifyImage {
                snapshot: s,
                device: d,
                expect,
            } => {
                snapshot(s)?;
                device(d)?;
                self.verify_expect(expect)
            }
            Step::VerifyOriginal { device: d }
            | Step::Sync { device: d }
            | Step::Freeze { device: d }
            | Step::Thaw { device: d }
            | Step::Resize { device: d, .. }
            | Step::RemoveDevice { device: d } => device(d),
            Step::Workload(w) => self.target(&w.target, devices, snapshots),
            Step::Concurrent(branches) => branches
                .iter()
                .try_for_each(|b| self.steps(b, devices, snapshots)),
            Step::Repeat { steps, .. } | Step::Timed { steps, .. } => {
                self.steps(steps, devices, snapshots)
            }
            Step::Kill { .. } => Ok(()),
            Step::ExpectMedia {
                device: d, content, ..
            } => {
                device(d)?;
                self.media(content, devices)
            }
            Step::Stretch {
                snapshot: s,
                device: d,
                ..
            } => {
                snapshot(s)?;
                device(d)
            }
            Step::Sleep { .. } | Step::Unload | Step::Load => Ok(()),
        }
    }

    fn media(
        &self,
        media: &super::model::Media,
        devices: &BTreeSet<&str>,
    ) -> Result<(), LoadError> {
        use super::model::Media;
        match media {
            Media::Zero => Ok(()),
            Media::Pattern(d, _) => self.device(d, devices),
            Media::OneOf(list) => list.iter().try_for_each(|m| self.media(m, devices)),
        }
    }

    fn param(&self, name: &str) -> Result<(), LoadError> {
        let names = blksnap_core::Params::NAMES;
        if names.contains(&name) {
            return Ok(());
        }
        let message = format!("unknown parameter '{name}': expected one of {names:?}");
        Err(self.error(&format!("\"{name}\""), message))
    }

    fn device(&self, name: &str, devices: &BTreeSet<&str>) -> Result<(), LoadError> {
        if devices.contains(name) || parse_dev_number(name).is_some() {
            return Ok(());
        }
        let known: Vec<&str> = devices.iter().copied().collect();
        Err(self.error(
            &format!("\"{name}\""),
            format!("unknown device '{name}': expected one of {known:?} or \"major:minor\""),
        ))
    }

    fn snapshot(&self, name: &str, snapshots: &BTreeSet<String>) -> Result<(), LoadError> {
        if snapshots.contains(name) {
            return Ok(());
        }
        Err(self.error(
            &format!("\"{name}\""),
            format!("snapshot '{name}' is never created: expected a Create step naming it"),
        ))
    }

    fn target(
        &self,
        target: &Target,
        devices: &BTreeSet<&str>,
        snapshots: &BTreeSet<String>,
    ) -> Result<(), LoadError> {
        match target {
            Target::Original(d) => self.device(d, devices),
            Target::Image(s, d) => {
                self.snapshot(s, snapshots)?;
                self.device(d, devices)
            }
        }
    }

    fn errno(&self, name: &str) -> Result<(), LoadError> {
        if Errno::from_name(name).is_some() {
            return Ok(());
        }
        Err(self.error(
            &format!("\"{name}\""),
            format!("unknown errno '{name}': expected a name such as \"ENOENT\" or \"ESRCH\""),
        ))
    }

    fn expect(&self, expect: &Expect) -> Result<(), LoadError> {
        match expect {
            Expect::Err(name) => self.errno(name),
            Expect::Ok | Expect::Any => Ok(()),
        }
    }

    /// VerifyImage judges data or expects an unreadable image; `Any`
    /// would let it check nothing.
    fn verify_expect(&self, expect: &Expect) -> Result<(), LoadError> {
        match expect {
            Expect::Ok => Ok(()),
            Expect::Err(name) if name == "EIO" => Ok(()),
            Expect::Err(name) => Err(self.error(
                &format!("\"{name}\""),
                format!("VerifyImage expects Ok or Err(\"EIO\"), not Err(\"{name}\")"),
            )),
            Expect::Any => Err(self.error(
                "Any",
                "VerifyImage expects Ok or Err(\"EIO\"); Any would check nothing".into(),
            )),
        }
    }

    fn event_expect(
        &self,
        expect: &EventExpect,
        devices: &BTreeSet<&str>,
    ) -> Result<(), LoadError> {
        match expect {
            EventExpect::Corrupted(device, errno) => {
                self.device(device, devices)?;
                self.errno(errno)
            }
            EventExpect::Err(errno) => self.errno(errno),
            _ => Ok(()),
        }
    }
}

/// Bounds on numbers, so a file cannot overflow the sim's arithmetic or
/// ask for more than a test bench should run.
mod limits {
    use super::super::model::{DeviceSpec, Step, Workload};

    /// Sectors a pattern stamp can address (2^48, 128 PiB).
    const MAX_SECTORS: u64 = 1 << 48;
    const MAX_IO_SECTORS: u64 = 1 << 16;
    const MAX_MS: u64 = 3_600_000;
    const MAX_REPEAT: u64 = 1_000_000;

    pub fn device(d: &DeviceSpec) -> Result<(), String> {
        if d.sectors == 0 || d.sectors > MAX_SECTORS {
            return Err(format!("a device has 1 to {MAX_SECTORS} sectors"));
        }
        if d.io_min == 0 || !d.io_min.is_multiple_of(512) {
            return Err("io_min is a positive multiple of 512".into());
        }
        let l = d.latency;
        if l.min_ns > l.max_ns || l.max_ns > MAX_MS * 1_000_000 || l.per_sector_ns > 1_000_000_000 {
            return Err("latency needs min_ns <= max_ns <= 1 hour, per_sector_ns <= 1 s".into());
        }
        Ok(())
    }

    /// `Err((needle, message))`: the needle places the error in the file.
    pub fn check_steps(steps: &[Step]) -> Result<(), (&'static str, String)> {
        steps.iter().try_for_each(check_step)
    }

    fn check_step(step: &Step) -> Result<(), (&'static str, String)> {
        match step {
            Step::Sleep { ms } if *ms > MAX_MS => {
                Err(("Sleep", format!("Sleep is at most {MAX_MS} ms")))
            }
            Step::Timed { max_ms, steps } => {
                if *max_ms > MAX_MS {
                    return Err(("Timed", format!("Timed is at most {MAX_MS} ms")));
                }
                check_steps(steps)
            }
            Step::Write {
                sector,
                sectors,
                repeat,
                stride,
                ..
            } => io(*sector, *sectors, *repeat, stride.unwrap_or(*sectors)),
            Step::Read {
                sector, sectors, ..
            } => io(*sector, *sectors, 1, 0),
            Step::Workload(w) => workload(w),
            Step::Repeat { times, steps } => {
                if u64::from(*times) > MAX_REPEAT {
                    return Err(("Repeat", format!("Repeat is at most {MAX_REPEAT} times")));
                }
                check_steps(steps)
            }
            Step::Concurrent(branches) => branches.iter().try_for_each(|b| check_steps(b)),
            _ => Ok(()),
        }
    }

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
        if sectors == 0
            || sectors > MAX_IO_SECTORS
            || repeat == 0
            || repeat > MAX_REPEAT
            || last.is_none()
        {
            let message = format!(
                "an IO has 1 to {MAX_IO_SECTORS} sectors, 1 to {MAX_REPEAT} repeats, and must end below 2^64"
            );
            return Err(("sectors", message));
        }
        Ok(())
    }

    fn workload(w: &Workload) -> Result<(), (&'static str, String)> {
        if u64::from(w.ops) > MAX_REPEAT
            || w.max_sectors == 0
            || w.max_sectors > MAX_IO_SECTORS
            || w.align == 0
        {
            let message = format!("a Workload has at most {MAX_REPEAT} ops of 1 to {MAX_IO_SECTORS} sectors, align > 0");
            return Err(("Workload", message));
        }
        Ok(())
    }
}

/// `Kill(sibling: n)` only directly inside a Concurrent branch, naming a
/// branch of that Concurrent.
fn check_kills(steps: &[Step], branches: Option<usize>) -> Result<(), String> {
    for step in steps {
        match step {
            Step::Kill { sibling } => match branches {
                Some(n) if *sibling < n => {}
                Some(n) => {
                    return Err(format!(
                        "Kill(sibling: {sibling}) but the Concurrent has {n} branches"
                    ))
                }
                None => return Err("Kill must be inside a Concurrent branch".into()),
            },
            Step::Concurrent(list) => {
                for branch in list {
                    check_kills(branch, Some(list.len()))?;
                }
            }
            // A Kill finds its sibling by its own step path: it must stand
            // directly in the branch, not inside a group within it.
            Step::Repeat { steps, .. } | Step::Timed { steps, .. } => check_kills(steps, None)?,
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
            _ => {}
        }
    }
    names
}

/// "major:minor" as a device number.
pub fn parse_dev_number(name: &str) -> Option<(u32, u32)> {
    let (major, minor) = name.split_once(':')?;
    Some((major.trim().parse().ok()?, minor.trim().parse().ok()?))
}

/// 1-based line and column of the first occurrence of `needle`.
fn locate(text: &str, needle: &str) -> (usize, usize) {
    let Some(offset) = text.find(needle) else {
        return (1, 1);
    };
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
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
                "Sleep is at most",
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

    #[test]
    fn raw_device_numbers_are_accepted() {
        let s = GOOD.replace("devices: [\"a\"]", "devices: [\"a\", \"9:9\"]");
        assert!(parse(Path::new("x.ron"), &s).is_ok());
        assert_eq!(parse_dev_number("9:9"), Some((9, 9)));
    }
}
