//! Constructors for the scenario steps the generators use, with every
//! expectation `Any` and every optional field at its default.
//!
//! The step model grows while the simulator does; keeping each struct
//! literal in one place means a new field is one edit here.

use crate::scenario::model::{EventExpect, Expect, Step, Target};

pub fn version() -> Step {
    Step::Version {
        fault: None,
        expect: Expect::Any,
    }
}

pub fn create(snapshot: String, devices: Vec<String>) -> Step {
    Step::Create {
        snapshot,
        devices,
        fault: None,
        expect: Expect::Any,
    }
}

pub fn append(snapshot: String, device: String, ranges: Vec<(u64, u64)>) -> Step {
    Step::Append {
        snapshot,
        device,
        ranges,
        fault: None,
        expect: Expect::Any,
    }
}

pub fn take(snapshot: String) -> Step {
    Step::Take {
        snapshot,
        fault: None,
        expect: Expect::Any,
    }
}

pub fn destroy(snapshot: String) -> Step {
    Step::Destroy {
        snapshot,
        fault: None,
        expect: Expect::Any,
    }
}

pub fn collect() -> Step {
    Step::Collect {
        expect_snapshots: None,
        expect_count: None,
        fault: None,
        expect: Expect::Any,
    }
}

pub fn collect_images(snapshot: String) -> Step {
    Step::CollectImages {
        snapshot,
        expect_count: None,
        fault: None,
        expect: Expect::Any,
    }
}

pub fn wait_event(snapshot: String, timeout_ms: u32) -> Step {
    Step::WaitEvent {
        snapshot,
        timeout_ms,
        fault: None,
        expect: EventExpect::Any,
    }
}

pub fn write(target: Target, sector: u64, sectors: u64, nowait: bool) -> Step {
    Step::Write {
        target,
        sector,
        sectors,
        repeat: 1,
        stride: None,
        pause_us: 0,
        nowait,
        expect: Expect::Any,
    }
}

pub fn read(target: Target, sector: u64, sectors: u64) -> Step {
    Step::Read {
        target,
        sector,
        sectors,
        expect: Expect::Any,
    }
}

pub fn tracker_remove(device: String) -> Step {
    Step::TrackerRemove {
        device,
        fault: None,
        expect: Expect::Any,
    }
}

pub fn tracker_collect() -> Step {
    Step::TrackerCollect {
        expect_count: None,
        expect_entries: None,
        fault: None,
        expect: Expect::Any,
    }
}

/// READ_CBT_MAP of `length` bytes from `offset`; the cbt checker judges
/// the bytes it copies.
pub fn read_cbt_map(device: String, offset: u32, length: u32) -> Step {
    Step::ReadCbtMap {
        device,
        offset,
        length,
        save: None,
        same_as: None,
        expect_bytes: Vec::new(),
        expect_len: None,
        fault: None,
        expect: Expect::Any,
    }
}

pub fn mark_dirty(device: String, ranges: Vec<(u64, u64)>) -> Step {
    Step::MarkDirty {
        target: Target::Original(device),
        ranges,
        fault: None,
        expect: Expect::Any,
    }
}

/// `repeat` writes of `sectors` each, `stride` apart (a COW of each chunk
/// the stride reaches).
pub fn write_strided(target: Target, sector: u64, sectors: u64, repeat: u64, stride: u64) -> Step {
    Step::Write {
        target,
        sector,
        sectors,
        repeat,
        stride: Some(stride),
        pause_us: 0,
        nowait: false,
        expect: Expect::Any,
    }
}

pub fn flush(device: String) -> Step {
    Step::Flush {
        device,
        expect: Expect::Any,
    }
}

/// Every step of `steps` and of the groups, repeats and power cuts in
/// them (the generators' tests look for what a seed drew).
#[cfg(test)]
pub fn all_steps(steps: &[Step]) -> Vec<&Step> {
    let mut out = Vec::new();
    for step in steps {
        out.push(step);
        match step {
            Step::Concurrent(branches)
            | Step::PowerLoss {
                during: branches, ..
            } => {
                out.extend(branches.iter().flat_map(|b| all_steps(b)));
            }
            Step::Repeat { steps, .. } => out.extend(all_steps(steps)),
            _ => {}
        }
    }
    out
}
