//! The `scenario_parse` target: the scenario loader on arbitrary text.
//!
//! `scenario::parse` must never panic, and every error it returns must
//! name the file first (`fuzz.ron:LINE:COL: ...`), as the CLI prints it.

use std::path::Path;

use blksnap_sim::scenario;

/// The file name the errors must start with.
pub const FILE: &str = "fuzz.ron";

/// The body of the `scenario_parse` fuzz target.
pub fn scenario_parse(data: &[u8]) {
    if let Err(report) = check(data) {
        panic!("{report}");
    }
}

/// Parse `data` (if it is UTF-8); `Err` says what was wrong with the error.
pub fn check(data: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    match scenario::parse(Path::new(FILE), text) {
        Ok(_) => Ok(()),
        Err(error) => {
            let shown = error.to_string();
            if shown.starts_with(&format!("{FILE}:")) {
                Ok(())
            } else {
                Err(format!(
                    "scenario_parse: error does not start with \"{FILE}:\": {shown:?}\ninput: {text:?}"
                ))
            }
        }
    }
}
