//! Resource checks after the module is unloaded: nothing may be left.
//!
//! No allocation, no open device, no filter, no image disk, no bio in
//! flight, no lock held, no engine task still alive.

use std::rc::Rc;

use crate::kernel::Sim;

pub fn check_after_unload(sim: &Rc<Sim>) {
    for (site, (count, bytes)) in sim.live_allocations() {
        sim.fail(
            "resources",
            format!("leak: {count} allocation(s) of {bytes} bytes at {site}"),
        );
    }
    for dev in sim.open_bdevs() {
        sim.fail(
            "resources",
            format!("leak: block device {dev} still opened by the engine"),
        );
    }
    for dev in sim.attached_filters() {
        sim.fail("resources", format!("leak: filter still attached to {dev}"));
    }
    for dev in sim.disks() {
        sim.fail("resources", format!("leak: image disk {dev} still exists"));
    }
    if sim.blk.bios_in_flight.get() > 0 {
        sim.fail(
            "resources",
            format!("{} bio(s) never completed", sim.blk.bios_in_flight.get()),
        );
    }
    for (task, class) in sim.lockdep.borrow().held_report() {
        sim.fail(
            "resources",
            format!("task '{}' still holds {class}", sim.task_name(task)),
        );
    }
    for name in sim.live_tasks() {
        sim.fail(
            "resources",
            format!("task '{name}' still alive after unload"),
        );
    }
}
