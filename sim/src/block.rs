//! The block layer as user processes and the filesystem reach it: the
//! `bdev_filter` hook of patch 02/21 and the oracle's view of user IO.
//!
//! Bios the engine issues itself come through `Kernel::submit_bio` and
//! never pass here (they are `BIO_FILTERED`); every bio that passes here is
//! user IO, and the oracle records it.

use std::rc::Rc;

use blksnap_core::kernel::{completion, Bio, BioHeader, BioResult, Errno, FilterVerdict};

use crate::kernel::Sim;
use crate::trace::TraceEvent;

/// Submit a user bio and wait for its end.
pub async fn user_bio(sim: &Rc<Sim>, bio: Bio) -> BioResult {
    let op = sim.oracle.borrow_mut().submit(sim.now(), &bio);
    sim.storage
        .borrow_mut()
        .user_write(bio.dev, bio.sector, &bio.data);
    let result = route(sim, bio.clone()).await;
    let now = sim.now();
    let verdict = sim.oracle.borrow_mut().complete(now, op, &bio, &result);
    if let Err(message) = verdict {
        sim.fail("point_in_time", message);
    }
    result
}

async fn route(sim: &Rc<Sim>, mut bio: Bio) -> BioResult {
    if !bio.flags.filtered {
        if let Some(verdict) = run_filter(sim, &bio).await {
            return verdict;
        }
        bio.flags.filtered = true;
    }
    let (done, completer) = completion();
    sim.submit_to_device(bio, completer);
    done.await
}

/// The filter callback, in the submitter's task. Some(result) when the
/// filter ended the bio itself.
async fn run_filter(sim: &Rc<Sim>, bio: &Bio) -> Option<BioResult> {
    let filter = sim.filter_of(bio.dev)?;
    let header = BioHeader {
        op: bio.op,
        sector: bio.sector,
        sectors: bio.sectors,
        flags: bio.flags,
    };
    sim.filter_call_begin(bio.dev);
    let verdict = filter.submit_bio_cb(header).await;
    sim.filter_call_end(bio.dev);
    sim.record(TraceEvent::Filter {
        dev: bio.dev.0,
        sector: bio.sector,
        verdict: format!("{verdict:?}"),
    });
    match verdict {
        FilterVerdict::Pass => None,
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
