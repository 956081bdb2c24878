//! Whose panic is it? A panic while the executor polls a task is an oops
//! only if engine code (`core/`) panicked; a panic anywhere else (the
//! runner, a checker, the simulated kernel) is the bench's own fault and
//! must never be reported as the engine's.
//!
//! The panic hook is process-global and tests run on many threads, so the
//! hook records where the panic happened in a thread-local that the
//! executor of the same thread reads right after `catch_unwind`. Panics
//! outside a poll go to the previous hook unchanged.

use std::cell::{Cell, RefCell};
use std::sync::Once;

/// Where a caught panic happened, as `file:line:col`; plus the first frame
/// in our own code when the panic is in the standard library.
#[derive(Clone, Debug, Default)]
pub struct PanicSite {
    pub location: String,
    /// The first frame of a workspace crate, when `location` is not one
    /// (a panic inside std, e.g. a capacity overflow, called from us).
    pub caller: Option<String>,
}

/// Who is to blame for a panic in a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blame {
    /// Engine code panicked: a kernel oops.
    Engine,
    /// The bench panicked, at this location.
    Bench(String),
}

thread_local! {
    static LAST_PANIC: RefCell<Option<PanicSite>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

thread_local! {
    /// Set while a task is polled: a panic there is a failure the sim
    /// reports (an oops, or a bench error), so the hook stays quiet.
    static IN_POLL: Cell<bool> = const { Cell::new(false) };
}

/// True while the executor polls a task (for a panic hook that stays quiet
/// about oopses but reports panics of the simulator itself).
pub fn in_task_poll() -> bool {
    IN_POLL.with(Cell::get)
}

/// The executor marks the span of one poll.
pub(crate) fn set_in_poll(on: bool) {
    IN_POLL.with(|p| p.set(on));
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        return (*s).to_string();
    }
    if let Some(s) = payload.downcast_ref::<String>() {
        return s.clone();
    }
    "panic".to_string()
}

/// Install the hook (once per process; later calls do nothing). It wraps
/// whatever hook was there, so a hook set before (the CLI's) still sees
/// every panic outside a task poll.
pub fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_poll = in_task_poll();
            let location = info.location().map_or("<unknown>".to_string(), |l| {
                format!("{}:{}:{}", l.file(), l.line(), l.column())
            });
            let caller = if workspace_path(&location).is_none() {
                first_workspace_frame()
            } else {
                None
            };
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(PanicSite { location, caller }));
            // In a poll it is quiet: the executor reports it as a failure
            // of the run. Elsewhere the previous hook prints it as usual.
            if !in_poll {
                previous(info);
            }
        }));
    });
}

/// Run `f`; a panic in it (outside any task: the sim's setup, a timer,
/// a checker after the run) is the bench's, returned with its location.
pub fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let site = take_site();
        let message = panic_message(&*payload);
        format!(
            "bench error: panic at {} outside any task: {message}",
            site.location
        )
    })
}

/// The site the hook recorded for this thread's last caught panic.
pub fn take_site() -> PanicSite {
    LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .unwrap_or_default()
}

/// An oops is a panic in `core/`; anything else is the bench's.
pub fn blame(site: &PanicSite) -> Blame {
    let ours =
        workspace_path(&site.location).or_else(|| site.caller.as_deref().and_then(workspace_path));
    match ours {
        Some(path) if path.starts_with("core/") => Blame::Engine,
        Some(path) => Blame::Bench(path),
        // Not attributable to engine code: by the rule, not an oops.
        None => Blame::Bench(site.location.clone()),
    }
}

/// The crates of this workspace, by their directory.
const CRATES: [&str; 4] = ["core/", "sim/", "reports/", "fuzz/"];

/// `location` relative to the workspace root if it is a file of ours.
/// Cargo names workspace files relative to the root; an absolute path
/// under the root (another build setup) counts too.
fn workspace_path(location: &str) -> Option<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../");
    let root = std::path::Path::new(root)
        .canonicalize()
        .map(|p| format!("{}/", p.display()))
        .unwrap_or_default();
    // A backtrace shows a file under the working directory as `./...`.
    let location = match location.strip_prefix("./") {
        Some(rest) => std::env::current_dir()
            .map(|cwd| format!("{}/{rest}", cwd.display()))
            .unwrap_or_else(|_| rest.to_string()),
        None => location.to_string(),
    };
    let relative = location
        .strip_prefix(root.as_str())
        .filter(|_| !root.is_empty())
        .unwrap_or(&location);
    CRATES
        .iter()
        .any(|c| relative.starts_with(c))
        .then(|| relative.to_string())
}

/// The first backtrace frame in a workspace crate (`path:line:col`), for
/// a panic located in the standard library. Needs line tables (the
/// release profile keeps them); without them the panic is not an oops.
fn first_workspace_frame() -> Option<String> {
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    trace
        .lines()
        .filter_map(|line| line.trim().strip_prefix("at "))
        .filter_map(workspace_path)
        // The hook's own frame comes first.
        .find(|path| !path.starts_with("sim/src/panics.rs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(location: &str) -> PanicSite {
        PanicSite {
            location: location.into(),
            caller: None,
        }
    }

    #[test]
    fn core_is_the_engine_and_everything_else_the_bench() {
        assert_eq!(blame(&site("core/src/snapshot.rs:10:5")), Blame::Engine);
        assert_eq!(
            blame(&site("sim/src/scenario/runner.rs:596:38")),
            Blame::Bench("sim/src/scenario/runner.rs:596:38".into())
        );
        // A file named like core elsewhere is not the engine.
        let fake = "/home/x/.cargo/registry/src/core/src/lib.rs:1:1";
        assert_eq!(blame(&site(fake)), Blame::Bench(fake.into()));
        // Unknown location: never an oops.
        assert_eq!(blame(&PanicSite::default()), Blame::Bench(String::new()));
    }

    #[test]
    fn a_std_panic_is_blamed_on_its_caller() {
        let mut s = site("/rustc/abc/library/alloc/src/raw_vec.rs:25:5");
        s.caller = Some("core/src/diff_buffer.rs:40:9".into());
        assert_eq!(blame(&s), Blame::Engine);
        s.caller = Some("sim/src/user.rs:40:9".into());
        assert_eq!(blame(&s), Blame::Bench("sim/src/user.rs:40:9".into()));
    }

    #[test]
    fn a_panic_outside_any_task_is_returned_with_its_location() {
        let line = line!() + 1;
        let result = guard(|| -> u32 { panic!("setup broke") });
        let message = result.expect_err("panicked");
        let at = format!("sim/src/panics.rs:{line}:");
        assert!(message.contains(&at), "{message} lacks {at}");
        assert!(
            message.contains("outside any task: setup broke"),
            "{message}"
        );
        assert_eq!(guard(|| 7), Ok(7));
    }

    #[test]
    fn absolute_paths_under_the_workspace_count() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .canonicalize()
            .expect("root");
        let location = format!("{}/core/src/chunk.rs:3:4", root.display());
        assert_eq!(blame(&site(&location)), Blame::Engine);
    }
}
