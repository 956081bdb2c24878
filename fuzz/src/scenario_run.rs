//! The `scenario_run` target: scenario files with hostile numbers, loaded
//! *and run* under a small work budget (issue 7).
//!
//! An input that starts with `Scenario(` is a scenario file as it is (the
//! regression files of `corpus/scenario_run/` are readable RON); any other
//! input drives a generator that writes scenario text whose numbers come
//! from a hostile set (0, 1, 2^16, 2^32 - 1, 2^48, 2^63, 2^64 - 1, ...)
//! or from the input's bytes. Properties:
//! - loading never panics, and an error names its place (`fuzz.ron:L:C:`);
//! - a loaded scenario runs to a verdict: no panic escapes, no `oops` (the
//!   run has no quirk on, so neither the fixed engine nor the runner may
//!   panic: a runner overflow shows as an oops of the scenario process);
//! - the run stays within its budget: steps and waits at most the budget
//!   (plus the one step in progress), polls at most the budget's bound.

use std::path::Path;

use blksnap_sim::scenario::runner::WorkBudget;
use blksnap_sim::scenario::{self, Outcome, RunOptions};

/// The file name load errors must start with.
pub const FILE: &str = "fuzz.ron";

/// Small enough for thousands of runs a minute, large enough to run every
/// step kind a few times.
pub const BUDGET: WorkBudget = WorkBudget {
    steps: 400,
    written_sectors: 1 << 16,
    read_sectors: 1 << 18,
    polls: 200_000,
    mapped_bytes: 1 << 26,
};

/// The body of the `scenario_run` fuzz target.
pub fn scenario_run(data: &[u8]) {
    if let Err(report) = check(data) {
        panic!("{report}");
    }
}

/// Load and run the scenario `data` gives; `Err` says which property broke.
pub fn check(data: &[u8]) -> Result<(), String> {
    let text = text_of(data);
    let loaded = match scenario::parse(Path::new(FILE), &text) {
        Ok(s) => s,
        Err(e) if e.to_string().starts_with(&format!("{FILE}:")) => return Ok(()),
        Err(e) => return Err(format!("load error without a place: {e}\ninput: {text}")),
    };
    let options = RunOptions {
        without_quirks: true,
        budget: Some(BUDGET),
        ..RunOptions::default()
    };
    let outcome = std::panic::catch_unwind(|| scenario::run(&loaded, &options))
        .map_err(|_| format!("scenario_run: the run panicked\ninput: {text}"))?;
    judge(&outcome).map_err(|why| format!("scenario_run: {why}\ninput: {text}"))
}

fn judge(outcome: &Outcome) -> Result<(), String> {
    if let Some(oops) = outcome.failures.iter().find(|f| f.checker == "oops") {
        return Err(format!("a panic during the run: {}", oops.message));
    }
    if outcome.steps > BUDGET.steps + 1 {
        return Err(format!(
            "{} steps, over the budget of {}",
            outcome.steps, BUDGET.steps
        ));
    }
    let polls = outcome.metrics.get("polls").copied().unwrap_or(0.0);
    // The executor checks its bound between polls; settling after the
    // teardown adds a little.
    if polls > (BUDGET.polls * 2) as f64 {
        return Err(format!("{polls} polls, over the bound of {}", BUDGET.polls));
    }
    Ok(())
}

/// The scenario text: the input itself, or one generated from it.
pub fn text_of(data: &[u8]) -> String {
    if data.starts_with(b"Scenario(") {
        return String::from_utf8_lossy(data).into_owned();
    }
    generate(data)
}

/// Numbers that broke the bench before (issue 7), and their neighbours.
const HOSTILE: [u64; 16] = [
    0,
    1,
    2,
    7,
    512,
    65_535,
    65_536,
    65_537,
    1_000_000,
    4_294_967_295,
    4_294_967_296,
    100_000_000_000,
    1 << 48,
    (1 << 48) + 1,
    1 << 63,
    u64::MAX,
];

/// Step templates: `#` is a u64 hole, `%` a u32 hole, `&` a group's steps.
const STEPS: [&str; 22] = [
    "Write(target: Original(\"a\"), sector: #, sectors: #, repeat: #, pause_us: #)",
    "Write(target: Image(\"s\", \"a\"), sector: #, sectors: #, stride: #)",
    "Read(target: Original(\"a\"), sector: #, sectors: #)",
    "ExpectMedia(device: \"a\", sector: #, sectors: #, content: OneOf([Zero, Pattern(\"a\", #)]))",
    "Stretch(snapshot: \"s\", device: \"store\", from: #, limit: #, timeout_ms: %)",
    "Workload((target: Original(\"a\"), ops: %, max_sectors: #, align: #, region: (#, #)))",
    "Ioctl(cmd: %, arg: Zeroed(#), expect: Any)",
    "Collect(fault: Count(%), expect: Any)",
    "CollectImages(snapshot: \"s\", fault: Count(%), expect: Any)",
    "TrackerCollect(fault: Count(%), expect: Any)",
    "ReadCbtMap(device: \"a\", offset: %, length: %, expect: Any)",
    "ReadCbtMap(device: \"a\", length: 64, fault: ArrayShort(%), expect: Any)",
    "WaitEvent(snapshot: \"s\", timeout_ms: %, expect: Any)",
    "Sleep(ms: #)",
    "SetParam(name: \"chunk_maximum_count\", value: %, expect: Any)",
    "Resize(device: \"a\", sectors: #)",
    "MarkDirty(target: Original(\"a\"), ranges: [(#, #)], expect: Any)",
    "Append(snapshot: \"s\", device: \"store\", ranges: [(#, #)], expect: Any)",
    "Repeat(times: %, steps: [&])",
    "Timed(max_ms: #, steps: [&])",
    "Concurrent([[&], [&]])",
    "VerifyImage(snapshot: \"s\", device: \"a\")",
];

/// Reads the input as a stream of choices; zeros once it runs out.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        first
    }

    /// A hostile number a quarter of the time, raw bytes an eighth, else
    /// small (so that most scenarios load and run).
    fn number(&mut self, max: u64) -> u64 {
        let pick = self.byte();
        let n = match pick % 8 {
            0 | 1 => HOSTILE[usize::from(pick >> 3) % HOSTILE.len()],
            2 => (0..8).fold(0u64, |n, _| n << 8 | u64::from(self.byte())),
            _ => u64::from(self.byte()),
        };
        n.min(max)
    }

    fn steps(&mut self, depth: usize) -> String {
        let count = 1 + usize::from(self.byte() % 3);
        let steps: Vec<String> = (0..count).map(|_| self.step(depth)).collect();
        steps.join(", ")
    }

    fn step(&mut self, depth: usize) -> String {
        let mut template = STEPS[usize::from(self.byte()) % STEPS.len()];
        if depth >= 3 && template.contains('&') {
            template = "Sleep(ms: #)";
        }
        let mut out = String::new();
        for c in template.chars() {
            match c {
                '#' => out.push_str(&self.number(u64::MAX).to_string()),
                '%' => out.push_str(&self.number(u64::from(u32::MAX)).to_string()),
                '&' => out.push_str(&self.steps(depth + 1)),
                c => out.push(c),
            }
        }
        out
    }

    fn faults(&mut self) -> String {
        let site = ["event", "diff_buffer", "chunk", "nope"][usize::from(self.byte() % 4)];
        let rule = ["Nth", "From", "PerMillion"][usize::from(self.byte() % 3)];
        let n = self.number(u64::MAX);
        format!("faults: (alloc: [(\"{site}\", {rule}({n}))]),")
    }
}

/// A scenario with a taken snapshot, then generated steps.
pub fn generate(data: &[u8]) -> String {
    let mut c = Choices(data);
    let faults = if c.byte() % 4 == 0 {
        c.faults()
    } else {
        String::new()
    };
    let scheduler = match c.byte() % 4 {
        0 => format!("scheduler: Priority({}),", c.number(u64::from(u32::MAX))),
        _ => String::new(),
    };
    let steps = c.steps(0);
    format!(
        "Scenario(\n    name: \"fuzz\",\n    {faults}\n    {scheduler}\n    devices: [(name: \"a\", sectors: 65536, fill: Pattern), (name: \"store\", sectors: 262144)],\n    steps: [\n        Create(snapshot: \"s\", devices: [\"a\"]),\n        Append(snapshot: \"s\", device: \"store\", ranges: [(0, 262144)]),\n        Take(snapshot: \"s\"),\n        {steps},\n    ],\n)\n"
    )
}
