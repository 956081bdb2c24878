//! Verdict categories: who is to blame for a failure.
//!
//! Every failure a run reports carries one, so a reader (and a report)
//! tells an engine bug from the consequence of a fault the scenario
//! declared, and from the bug a `scenarios/bugs/` file exists to show.

use serde::{Deserialize, Serialize};

/// Who a failure is blamed on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Category {
    /// The engine did something wrong (the default: a checker that cannot
    /// explain a failure blames the engine).
    #[default]
    Engine,
    /// A checker failed because of a fault the scenario declared and the
    /// sim injected (e.g. undetected corruption caused by a lost write on
    /// the diff storage: v2 keeps no checksums).
    DeclaredFault,
    /// The failure a bug scenario expects: the quirk was caught.
    Expected,
}

impl Category {
    /// How reports name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Engine => "engine failure",
            Category::DeclaredFault => "caused by a declared fault",
            Category::Expected => "expected outcome",
        }
    }
}
