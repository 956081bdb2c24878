//! The PowerLoss and Reboot steps (`power.rs` does the machine's part).
//!
//! PowerLoss starts its `during` branches as processes, waits `after_us`
//! plus a part of `jitter_us` drawn from the step's own stream, and cuts
//! the power: the branches die where they stand (inside an ioctl, a COW, a
//! bio), the module and every snapshot are gone. Reboot is the clean
//! comparison: filesystems synced, the module unloaded, caches flushed.
//! Either way the scenario goes on with the same devices; `Load` brings
//! the module back. A cut that judged no sector checked nothing: it fails.

use std::rc::Rc;

use blksnap_core::kernel::{Bio, BioOp, DevT};

use super::model::{Expect, Step};
use super::runner::{check_expect, Run};
use crate::rng::SimRng;
use crate::scenario::StepError;

impl Run {
    pub(super) async fn power_loss(
        self: &Rc<Self>,
        during: &[Vec<Step>],
        after_us: u64,
        jitter_us: u64,
        at: &str,
        path: &[usize],
    ) {
        for (b, branch) in during.iter().enumerate() {
            let run = self.clone();
            let steps = branch.clone();
            let prefix = format!("{at}.{b}.");
            let parent = [path, &[b]].concat();
            self.sim.spawn_process(
                format!("powered {at}.{b}"),
                Box::pin(async move { run.steps(&steps, &prefix, &parent).await }),
            );
        }
        let jitter = match jitter_us {
            0 => 0,
            j => SimRng::child(self.sim.seed, &format!("power/{at}")).below(j + 1),
        };
        self.sim
            .sleep((after_us + jitter).saturating_mul(1000))
            .await;
        let judged = crate::power::power_loss(&self.sim);
        self.forget_module();
        self.judged_something("PowerLoss", at, judged);
    }

    pub(super) async fn reboot(self: &Rc<Self>) {
        let filesystems: Vec<DevT> = self.sim.fs.borrow().keys().copied().collect();
        for dev in filesystems {
            crate::fs::writeback(&self.sim, dev).await;
        }
        // The unload forgets the module and its snapshots (`forget_module`).
        self.unload().await;
        let judged = crate::power::clean_reboot(&self.sim);
        self.judged_something("Reboot", "", judged);
    }

    /// An empty REQ_PREFLUSH write, through the block layer (and the filter).
    pub(super) async fn flush(&self, device: &str, expect: &Expect) -> Result<(), StepError> {
        let mut bio = Bio::write(self.dev(device), 0, Vec::new());
        bio.op = BioOp::Flush;
        bio.flags.preflush = true;
        let result = crate::block::user_bio(&self.sim, bio).await;
        check_expect(expect, result.map(|_| 0)).map_err(|e| e.prefixed(format_args!("flush: ")))
    }

    fn judged_something(&self, what: &str, at: &str, judged: u64) {
        if judged == 0 {
            self.sim.fail(
                "durability",
                format!(
                    "{what} {at}: no sector of any device was judged (nothing written since the \
                     last cut): the step checks nothing"
                ),
            );
        }
    }
}
