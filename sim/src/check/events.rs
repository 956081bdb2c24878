//! The events checker: what WAIT_EVENT hands out, judged from the ioctls
//! alone (`ctl.rs` tells it when each CREATE and WAIT_EVENT began and ended,
//! and what the event said).
//!
//! Rules, per snapshot id:
//! 1. a corrupted event comes at most once per device;
//! 2. an event's `time_label` is no earlier than the start of the CREATE
//!    that made the id (the queue is born inside it) and no later than the
//!    return of the WAIT_EVENT that took it;
//! 3. labels never go back: the queue is FIFO (spec 7), and the engine
//!    reads the clock and queues the event with no sleeping point between
//!    (`event_gen`: `ktime_get`, then `list_add_tail` under the spinlock;
//!    the allocation that may sleep comes before both), so on the sim's one
//!    CPU the queue is in label order. A WAIT_EVENT that began after another
//!    one of the same snapshot returned took its event later, so its label
//!    is not older. Two waits that overlapped may have returned in either
//!    order and are not compared. (On SMP hardware two CPUs could read the
//!    clock and then race for the spinlock, a few ns out of order; the sim
//!    has no such window.)

use std::collections::BTreeMap;

type Id = [u8; 16];

#[derive(Default)]
pub struct Events {
    snapshots: BTreeMap<Id, Snapshot>,
}

#[derive(Default)]
struct Snapshot {
    /// When the CREATE that made this id began.
    created: Option<u64>,
    /// The newest event a finished WAIT_EVENT returned.
    newest: Option<Returned>,
    /// Devices reported corrupted (dev_t packed as the engine packs it).
    corrupted: Vec<u32>,
}

/// An event a WAIT_EVENT returned: its label and when the call returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Returned {
    label: i64,
    at: u64,
}

/// What a WAIT_EVENT's start fixed: the bounds its event must respect.
pub struct Wait {
    id: Id,
    began: u64,
    created: Option<u64>,
    floor: Option<Returned>,
}

impl Wait {
    /// The snapshot the WAIT_EVENT named.
    pub fn id(&self) -> Id {
        self.id
    }
}

impl Events {
    /// A CREATE that began at `began` made `id`.
    pub fn created(&mut self, id: Id, began: u64) {
        self.snapshots.insert(
            id,
            Snapshot {
                created: Some(began),
                ..Snapshot::default()
            },
        );
    }

    /// A WAIT_EVENT of `id` begins at `now`.
    pub fn wait_begins(&self, id: Id, now: u64) -> Wait {
        let snapshot = self.snapshots.get(&id);
        Wait {
            id,
            began: now,
            created: snapshot.and_then(|s| s.created),
            floor: snapshot.and_then(|s| s.newest),
        }
    }

    /// The WAIT_EVENT `wait` returned, at `now`, an event labelled `label`
    /// (rules 2 and 3).
    pub fn returned(&mut self, wait: &Wait, now: u64, label: i64) -> Result<(), String> {
        let verdict = judge(wait, now, label);
        let snapshot = self.snapshots.entry(wait.id).or_default();
        if snapshot.newest.is_none_or(|n| n.label <= label) {
            snapshot.newest = Some(Returned { label, at: now });
        }
        verdict
    }

    /// A corrupted event for device `dev` (mj << 32 | mn, packed) of
    /// snapshot `id`: the engine reports each device at most once (rule 1).
    pub fn corrupted(&mut self, id: Id, dev: u32) -> Result<(), String> {
        let seen = &mut self.snapshots.entry(id).or_default().corrupted;
        if seen.contains(&dev) {
            return Err(format!(
                "a second corrupted event for device {:#x} of one snapshot",
                dev
            ));
        }
        seen.push(dev);
        Ok(())
    }
}

fn judge(wait: &Wait, now: u64, label: i64) -> Result<(), String> {
    let name = snapshot_name(&wait.id);
    let when = format!(
        "a WAIT_EVENT that began at {} ns and returned at {now} ns",
        wait.began
    );
    if i128::from(label) > i128::from(now) {
        return Err(format!(
            "{name}: {when} returned an event labelled {label} ns, later than its return"
        ));
    }
    if let Some(created) = wait.created.filter(|&c| i128::from(label) < i128::from(c)) {
        return Err(format!(
            "{name}: {when} returned an event labelled {label} ns, before the CREATE \
             that made the snapshot began ({created} ns)"
        ));
    }
    if let Some(floor) = wait.floor.filter(|f| label < f.label) {
        return Err(format!(
            "{name}: {when} returned an event labelled {label} ns, older than the one \
             labelled {} ns that a WAIT_EVENT returned at {} ns, before this one began: \
             events came out of the order they were queued",
            floor.label, floor.at
        ));
    }
    Ok(())
}

/// How messages name a snapshot: its id's first four bytes.
fn snapshot_name(id: &Id) -> String {
    let hex: String = id[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("snapshot {hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Id = [0xa1; 16];

    /// One WAIT_EVENT of `id` over [began, ended] that returned `label`.
    fn wait(e: &mut Events, id: Id, began: u64, ended: u64, label: i64) -> Result<(), String> {
        let w = e.wait_begins(id, began);
        e.returned(&w, ended, label)
    }

    /// Events taken newest first (a LIFO queue) fail, with the snapshot,
    /// both labels and when; FIFO passes, equal labels too.
    #[test]
    fn labels_that_go_back_fail() {
        let mut e = Events::default();
        e.created(A, 100);
        wait(&mut e, A, 1_000, 1_200, 900).unwrap();
        wait(&mut e, A, 1_300, 1_400, 900).unwrap();
        wait(&mut e, A, 1_500, 1_600, 1_000).unwrap();
        let err = wait(&mut e, A, 1_700, 1_800, 950).unwrap_err();
        assert_eq!(
            err,
            "snapshot a1a1a1a1: a WAIT_EVENT that began at 1700 ns and returned at 1800 ns \
             returned an event labelled 950 ns, older than the one labelled 1000 ns that a \
             WAIT_EVENT returned at 1600 ns, before this one began: events came out of the \
             order they were queued"
        );
        // The newest label stays the floor: a later one older than it fails too.
        assert!(wait(&mut e, A, 1_900, 2_000, 990).is_err());
        assert!(wait(&mut e, A, 2_100, 2_200, 1_000).is_ok());
    }

    /// Two waits that overlapped may return in either order: the one that
    /// returned first may hold the newer event.
    #[test]
    fn overlapping_waits_are_not_compared() {
        let mut e = Events::default();
        e.created(A, 0);
        let first = e.wait_begins(A, 1_000);
        let second = e.wait_begins(A, 1_100);
        e.returned(&second, 1_500, 1_050).unwrap();
        e.returned(&first, 1_600, 1_020).unwrap();
        // A wait that began after both returned sees the newest of them.
        assert!(wait(&mut e, A, 1_700, 1_800, 1_040).is_err());
    }

    #[test]
    fn a_label_lies_between_its_create_and_its_return() {
        let mut e = Events::default();
        e.created(A, 500);
        let late = wait(&mut e, A, 1_000, 1_200, 1_201).unwrap_err();
        assert!(
            late.contains("labelled 1201 ns, later than its return"),
            "{late}"
        );
        let early = wait(&mut e, A, 1_300, 1_400, 499).unwrap_err();
        assert!(
            early.contains(
                "labelled 499 ns, before the CREATE that made the snapshot began (500 ns)"
            ),
            "{early}"
        );
        assert!(wait(&mut e, A, 1_500, 1_600, -1).is_err());
        // A new CREATE of the id starts over.
        e.created(A, 2_000);
        assert!(wait(&mut e, A, 2_100, 2_200, 2_000).is_ok());
        assert!(wait(&mut e, A, 2_300, 2_400, 1_999).is_err());
        // An id no CREATE was seen for has no lower bound.
        assert!(wait(&mut e, [7; 16], 100, 200, 0).is_ok());
    }

    #[test]
    fn one_corrupted_event_per_device() {
        let mut e = Events::default();
        assert!(e.corrupted(A, 7).is_ok());
        assert!(e.corrupted(A, 8).is_ok());
        assert!(e.corrupted([2; 16], 7).is_ok());
        assert!(e.corrupted(A, 7).is_err());
    }
}
