//! Named reproductions of v2 bugs (spec section 10), all off by default.
//!
//! By default the engine behaves as v2 where v2 is right and as the later
//! fix (or a careful engineer) where it is wrong. Each quirk switches one
//! place back to the v2 behaviour, faithfully: memory-unsafe C shows as the
//! kernel would show it (an oops, a leak, a hang). Quirks are read only by
//! the engine; the sim's checkers never know which are on.

use std::fmt;

macro_rules! quirks {
    ($($field:ident = $id:literal : $what:literal,)*) => {
        /// The set of quirks switched on.
        #[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
        pub struct Quirks {
            $(#[doc = $what] pub $field: bool,)*
        }

        impl Quirks {
            /// Every quirk as `(spec id, summary)`, in spec order.
            pub const ALL: &'static [(&'static str, &'static str)] = &[$(($id, $what),)*];

            /// Switch a quirk on by its spec id (e.g. `B-SNAP-1`).
            pub fn enable(&mut self, id: &str) -> Result<(), UnknownQuirk> {
                match id {
                    $($id => self.$field = true,)*
                    _ => return Err(UnknownQuirk(id.to_string())),
                }
                Ok(())
            }

            /// The ids of the quirks that are on.
            pub fn enabled(&self) -> Vec<&'static str> {
                let mut ids = Vec::new();
                $(if self.$field { ids.push($id); })*
                ids
            }
        }
    };
}

quirks! {
    snap_1 = "B-SNAP-1": "swapped list_add_tail: each CREATE loses the snapshots listed before it",
    snap_10 = "B-SNAP-10": "a TAKE that fails before image creation destroys the snapshot",
    trk_2 = "B-TRK-2": "a REQ_NOWAIT bio that would block is completed twice",
    trk_3 = "B-TRK-3": "COW bios queued before an error in a multi-chunk write are never submitted",
    trk_4 = "B-TRK-4": "a CBT marking failure lets the write pass without COW",
    cbt_1 = "B-CBT-1": "the CBT block shift doubles instead of growing by one",
    cbt_2 = "B-CBT-2": "READ_CBT_MAP ignores the offset and copies from the start of the map",
    da_1 = "B-DA-1": "diff_area_new with empty storage leaks the opened device and the struct",
    img_1 = "B-IMG-1": "image IO errors are swallowed and corruption is not checked",
    img_3 = "B-IMG-3": "the idle image worker polls every 10 ms",
    io_1 = "B-IO-1": "one bio per chunk: chunks over 1 MiB hit BUG() in the bvec allocator",
    ctrl_2 = "B-CTRL-2": "WAIT_EVENT never reads the timeout: it is a non-blocking poll",
    ds_1 = "B-DS-1": "diff storage ranges are not validated",
    param_1 = "B-PARAM-1": "module parameters are not validated",
}

/// A quirk name that is not in the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownQuirk(pub String);

impl fmt::Display for UnknownQuirk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown quirk '{}'; known:", self.0)?;
        for (id, _) in Quirks::ALL {
            write!(f, " {id}")?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownQuirk {}
