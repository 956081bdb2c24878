//! The block layer as user processes and the filesystem reach it: the
//! `bdev_filter` hook of patch 02/21 and the oracle's view of user IO.
//!
//! Bios the engine issues itself come through `Kernel::submit_bio` and
//! never pass here (they are `BIO_FILTERED`); every bio that passes here is
//! user IO, and the oracle records it.

use std::rc::Rc;

use blksnap_core::kernel::{completion, Bio, BioHeader, BioResult, Errno, FilterVerdict, Stamps};

use crate::check::point_in_time::Judged;
use crate::kernel::Sim;
use crate::trace::TraceEvent;

/// Submit a user bio and wait for its end.
pub async fn user_bio(sim: &Rc<Sim>, bio: Bio) -> BioResult {
    user_bio_judged(sim, bio).await.0
}

/// What the checkers noted of a user bio at its submission, for its end.
struct Submitted {
    op: u64,
    at: u64,
    durable: crate::check::durability::Token,
}

/// Submit a user bio, wait for its end, and say what the oracle judged of
/// it (a verifying step counts the sectors the oracle compared).
///
/// The bio's way down (the end-of-device check, the filter, the device)
/// is written in this one `async fn`, where it was two nested ones: every
/// poll of a user bio resumes one state machine, not three (issue 10).
pub async fn user_bio_judged(sim: &Rc<Sim>, bio: Bio) -> (BioResult, Judged) {
    let noted = submitted(sim, &bio);
    let result = 'route: {
        // submit_bio_noacct's bio_check_eod: a bio past the end of the
        // device fails before any filter sees it (Linux 6.1), reads and
        // writes alike.
        if past_end(sim, &bio) {
            break 'route Err(Errno::EIO);
        }
        if !bio.flags.filtered {
            // The filter callback, in the submitter's task.
            if let Some(filter) = sim.filter_of(bio.dev) {
                sim.filter_call_begin(bio.dev);
                let verdict = filter.submit_bio_cb(header(&bio)).await;
                sim.filter_call_end(bio.dev);
                if let Some(result) = filter_verdict(sim, &bio, verdict) {
                    break 'route result;
                }
            }
        }
        // The copy that goes down is made only now: the filter reads the
        // bio as submitted, whose fields were not just stored (the header
        // read back from a fresh copy stalled on its stores, about 4 % of
        // a non-COW write's time, issue 10).
        let mut down = bio.clone();
        down.flags.filtered = true;
        let (done, completer) = completion();
        sim.submit_to_device(down, completer);
        done.await
    };
    let judged = ended(sim, &bio, noted, &result);
    (result, judged)
}

/// The checkers' hooks at a user bio's submission.
#[inline(always)]
fn submitted(sim: &Sim, bio: &Bio) -> Submitted {
    let (op, at) = (sim.oracle.borrow_mut().submit(sim.now(), bio), sim.now());
    crate::check::fs_take::submitted(sim, bio);
    crate::check::cbt::user_bio_submitted(sim, bio, at);
    sim.storage
        .borrow_mut()
        .user_write(bio.dev, bio.sector, &bio.data);
    let durable = crate::check::durability::hooks::submitted(sim, bio);
    Submitted { op, at, durable }
}

/// The checkers' hooks at a user bio's end, and what the oracle judged.
#[inline(always)]
fn ended(sim: &Sim, bio: &Bio, noted: Submitted, result: &BioResult) -> Judged {
    crate::check::durability::hooks::ended(sim, bio, noted.durable, result);
    crate::check::fs_take::completed(sim, bio, result);
    let now = sim.now();
    crate::check::cbt::user_bio_ended(sim, bio, noted.at, now, result.is_ok());
    let verdict = sim.oracle.borrow_mut().complete(now, noted.op, bio, result);
    verdict.unwrap_or_else(|message| {
        sim.fail("point_in_time", message);
        Judged::default()
    })
}

/// The header the filter sees of a bio.
fn header(bio: &Bio) -> BioHeader {
    BioHeader {
        op: bio.op,
        sector: bio.sector,
        sectors: bio.sectors,
        flags: bio.flags,
    }
}

/// Does the bio reach past the device's current capacity?
fn past_end(sim: &Sim, bio: &Bio) -> bool {
    let capacity = sim
        .blk
        .devices
        .borrow()
        .get(&bio.dev)
        .map(|d| d.capacity)
        .or_else(|| sim.disk_capacity(bio.dev));
    let end = bio.sector.checked_add(bio.sectors);
    capacity.is_some_and(|capacity| end.is_none_or(|end| end > capacity))
}

/// The filter's verdict, recorded: Some(result) when the filter ended the
/// bio itself.
fn filter_verdict(sim: &Sim, bio: &Bio, verdict: FilterVerdict) -> Option<BioResult> {
    // Nearly every bio: recorded from its two fields, no event built.
    if verdict == FilterVerdict::Pass {
        sim.record_filter_pass(bio.dev.0, bio.sector);
        return None;
    }
    sim.record(TraceEvent::Filter {
        dev: bio.dev.0,
        sector: bio.sector,
        verdict,
    });
    match verdict {
        FilterVerdict::Pass => None,
        // Status 0 is BLK_STS_OK: the filter took the bio and ended it
        // well without sending it down (what a REQ_NOWAIT refusal is not).
        FilterVerdict::Complete(Errno(0)) => Some(Ok(Stamps::new())),
        FilterVerdict::Complete(e) => Some(Err(e)),
        FilterVerdict::CompletedTwice(e) => {
            sim.fail(
                "bio",
                format!(
                    "bio to {} at {} ended twice: first with {e}, then with OK by the block core",
                    bio.dev, bio.sector
                ),
            );
            Some(Err(Errno::EAGAIN))
        }
    }
}
