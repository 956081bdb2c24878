//! Power loss and reboot of the simulated machine.
//!
//! Fault model: power loss is a cut at one instant of virtual time. Every
//! task but the one that cuts dies where it stands (engine kthreads and
//! workers, user processes, bios in flight: they never end); all volatile
//! state is lost: the page caches of the filesystem models, every device's
//! write cache (each cached write kept, dropped or torn by the seed, see
//! `cache.rs`), and the whole module with every snapshot, since blksnap v2
//! keeps nothing on disk. The media stays, and the scenario goes on with
//! the same devices as after a reboot. A clean reboot first syncs the
//! filesystems, unloads the module and flushes the caches, so it loses
//! nothing: the comparison case.
//!
//! Each device's loss is recorded in `injected.rs` (`PowerLoss`, and each
//! `TornWrite`); the durability checker judges the media at the cut and
//! the oracle starts each original's history again from what it holds.

use std::rc::Rc;

use blksnap_core::kernel::DevT;

use crate::cache::{self, LossOutcome};
use crate::check::injected::FaultKind;
use crate::kernel::Sim;
use crate::trace::TraceEvent;

/// Every task but the running one dies where it stands, every timer (bio
/// ends, sleeps) is gone, and nothing of the engine stays attached: no
/// filter, image disk, open handle or allocation. The futures are dropped
/// with no task current, so what their guards do on the way out (unlock,
/// noio restore) reaches no one; lockdep starts over, as at boot.
fn cut(sim: &Sim) {
    let (tasks, timers) = sim.sched.remove_all_but_current();
    sim.sched.without_current(|| {
        drop(tasks);
        drop(timers);
    });
    sim.blk.power_cut();
    sim.mm.forget_all();
    *sim.lockdep.borrow_mut() = crate::lockdep::Lockdep::default();
}

/// Cut the power now. Returns the sectors the durability checker judged.
pub fn power_loss(sim: &Rc<Sim>) -> u64 {
    sim.record(TraceEvent::Warn {
        msg: "power loss".to_string(),
    });
    cut(sim);
    crate::fs::power_lost(sim);
    let devs: Vec<DevT> = sim.blk.devices.borrow().keys().copied().collect();
    let mut judged = 0;
    for dev in devs {
        lose_cache(sim, dev);
        judged += restart_history(sim, dev, false);
    }
    forget_engine(sim, sim.now());
    judged
}

/// A clean reboot after the caller synced and unloaded: caches are written
/// back in full, then the machine restarts. Returns the sectors judged.
pub fn clean_reboot(sim: &Rc<Sim>) -> u64 {
    sim.record(TraceEvent::Warn {
        msg: "reboot".to_string(),
    });
    for device in sim.blk.devices.borrow_mut().values_mut() {
        cache::flush(device);
    }
    cut(sim);
    crate::fs::power_lost(sim);
    let devs: Vec<DevT> = sim.blk.devices.borrow().keys().copied().collect();
    let judged = devs
        .into_iter()
        .map(|dev| restart_history(sim, dev, true))
        .sum();
    forget_engine(sim, sim.now());
    judged
}

/// The device's write cache is lost: record what happened to each write.
fn lose_cache(sim: &Sim, dev: DevT) {
    let lost = {
        let mut devices = sim.blk.devices.borrow_mut();
        let Some(device) = devices.get_mut(&dev) else {
            return;
        };
        let mut policy = std::mem::take(&mut device.disk_faults);
        let lost = cache::power_loss(device, &mut policy);
        device.disk_faults = policy;
        lost
    };
    sim.record_fault(FaultKind::PowerLoss {
        dev,
        cached: lost.len() as u64,
    });
    for write in lost {
        if let LossOutcome::Torn { from, len } = write.outcome {
            sim.record_fault(FaultKind::TornWrite {
                dev,
                sector: write.sector,
                sectors: write.sectors,
                kept: (write.sector + from, len),
            });
        }
    }
}

/// Judge the media after the cut, then restart the checkers' history of
/// the device from it. `clean`: nothing may have been lost.
fn restart_history(sim: &Sim, dev: DevT, clean: bool) -> u64 {
    let now = sim.now();
    let devices = sim.blk.devices.borrow();
    let Some(device) = devices.get(&dev) else {
        return 0;
    };
    let media = |s: u64| device.read(s, 1).get(0);
    let (judged, verdict) = sim
        .durability
        .borrow_mut()
        .power_loss(dev, now, clean, &media);
    sim.oracle.borrow_mut().power_cycled(dev, now, &media);
    drop(devices);
    sim.cbt.borrow_mut().tracker_removed(dev);
    if let Err(message) = verdict {
        sim.fail("durability", message);
    }
    judged
}

/// The module and its snapshots are gone: no image stays, no snapshot lives.
fn forget_engine(sim: &Sim, now: u64) {
    sim.oracle.borrow_mut().all_images_going(now);
    sim.lifecycle.borrow_mut().unloaded();
}
