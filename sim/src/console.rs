//! Console output of every `blksnap-sim` command: escaped lines on stdout
//! and stderr, load errors, written files and replay commands.
//!
//! Its own module (not `cli`) so that the command modules (`swarm`,
//! `bench`) and `cli`, which dispatches to them, all depend on it and
//! none on each other.

use std::path::Path;

use crate::scenario;

/// A control character (a newline, ESC, a bidi override) as `\n`,
/// `\u{1b}`, ...; other text unchanged.
pub fn console_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_bidi_control(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that reorder the text around them on a terminal.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// Write a line to stdout, escaped; see [`write_stdout`] for errors.
pub fn say_line(line: &str) {
    let mut text = console_escape(line);
    text.push('\n');
    write_stdout(&text);
}

/// Write trusted text (the ABI table) as it is. A reader that went away
/// (`| head`) ends the process quietly, as SIGPIPE ends a C tool; any
/// other write error (a full disk) ends it with a message and exit 2.
pub fn write_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let result = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        warn(&format!("error: cannot write to stdout: {e}"));
        std::process::exit(2);
    }
}

/// A line on stderr, escaped; nothing more can be done if that fails.
pub fn warn(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{}", console_escape(line));
}

/// A load error: its `FILE:LINE:COL: message` line, then the source line
/// and caret, each line escaped on its own.
pub fn say_load_error(e: &scenario::LoadError) {
    let shown = format!("{e:#}");
    let mut lines = shown.lines();
    say_line(&format!("ERROR {}", lines.next().unwrap_or_default()));
    for line in lines {
        say_line(line);
    }
}

/// The one command that replays a run, for where the user is: this binary
/// (by name when it is the one on PATH, else by its full path) and the
/// scenario path exactly as the user gave it, both quoted for a POSIX shell.
pub fn replay_command(path: &Path, seed: u64) -> String {
    format!(
        "{} run {} --seed {seed}",
        shell_quote(&this_program()),
        shell_quote(&path.display().to_string())
    )
}

/// `blksnap-sim` when PATH finds this very binary under that name (an
/// installed one); otherwise the running binary's path.
fn this_program() -> String {
    let Ok(exe) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "blksnap-sim".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .filter_map(|dir| std::fs::canonicalize(dir.join("blksnap-sim")).ok())
            .next()
            .is_some_and(|found| found == exe)
    });
    if on_path {
        "blksnap-sim".into()
    } else {
        exe.display().to_string()
    }
}

/// A word the shell reads back unchanged: bare when it is plain, else in
/// single quotes (a quote inside written as '\'').
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=@%+-,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Write a whole file; on error say so on stderr and return false.
pub fn write_file(path: &Path, text: &str) -> bool {
    match std::fs::write(path, text) {
        Ok(()) => true,
        Err(e) => {
            warn(&format!("error: cannot write {}: {e}", path.display()));
            false
        }
    }
}
