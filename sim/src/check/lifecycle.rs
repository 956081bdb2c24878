//! The lifecycle checker: a reference model of which snapshots exist and
//! which are taken, kept from the ioctls users made and their results.
//!
//! It judges only "quiet" calls, ones that no other ioctl overlapped, so
//! concurrency never makes it guess. Rules: a snapshot created is listed by
//! COLLECT until a DESTROY of it succeeds; calls on a destroyed or unknown
//! id fail; a listed snapshot is never reported unknown; COLLECT_IMAGES
//! succeeds exactly on taken snapshots; an APPEND_STORAGE of a listed
//! snapshot whose ranges are all valid (readable, non-empty, page-aligned,
//! inside an existing device) fails only with ENOMEM. Other failures of
//! other calls (allocation, devices, storage) are not the model's business.
//!
//! Two rules judge what TAKEs do, from the kernel's record (image disks
//! added, the engine's freezes and thaws; `Effects`):
//! - image disks: only a TAKE adds an image disk (spec 8.3 step 5), and
//!   never a TAKE that must have failed. TAKEs of one snapshot are
//!   serialized by its lock, and one that gets the lock after a DESTROY
//!   unlisted the snapshot fails (ESRCH): the fix of B-SNAP-9 (v2 has no
//!   such lock, spec 10.2, so both TAKEs go on). So once DESTROY(S) has
//!   returned and after it a TAKE of S that held the lock has returned
//!   (any result but ESRCH and ENODATA, which come before the lock), no
//!   TAKE of S may add an image disk any more: the one that adds it holds
//!   the lock, so it took the lock after that TAKE let it go, which that
//!   TAKE does with no sleeping point before it returns (its reference is
//!   not the last while another TAKE holds one), so after the unlist. A
//!   TAKE that got the lock before the unlist may still add its images
//!   after DESTROY returned: v2 delays the release until it returns (spec
//!   8.4), so DESTROY's return alone forbids nothing
//!   (`races/destroy-vs-image-creation.ron` adds images after it on the
//!   fixed engine).
//! - a TAKE that returns 0 had no corrupted diff area when it checked
//!   (spec 8.3 step 4). The check runs right after the last thaw of
//!   `snapshot_take_trackers`, in the same step, and COW starts at the
//!   switch, after the first freeze. So for a TAKE that no other ioctl
//!   overlapped, a corrupted event of its snapshot stamped after the
//!   TAKE's first freeze and before its last thaw fails the rule; one
//!   stamped later (a COW failing while the images are made) is allowed.
//!   `ctl.rs` hands it each corrupted event a WAIT_EVENT returned
//!   (`corrupted_reported`).

use std::collections::{BTreeMap, BTreeSet};

use blksnap_core::kernel::{DevT, Errno};
use blksnap_core::uapi::IoctlNr;

use super::events::Events;

type Id = [u8; 16];

#[derive(Default)]
pub struct Lifecycle {
    /// Listed snapshots: id -> taken.
    live: BTreeMap<Id, bool>,
    /// ioctls started, and in flight, for the quiet test.
    started: u64,
    in_flight: u64,
    /// The events checker's record (`check::events`): it lives here
    /// because the sim keeps one record for the control device's checkers.
    pub events: Events,
    /// What TAKEs did, from the kernel's record.
    effects: Effects,
    /// Snapshots whose TAKE returned 0 with no other ioctl overlapping
    /// it: the TAKE's first freeze and last thaw, in ns.
    take_windows: BTreeMap<Id, (u64, u64)>,
    /// A CREATE failed its copy-back (-ENODATA): a snapshot may exist whose
    /// id nobody knows (B-CTRL-4), so the list can no longer be compared.
    unknown_ids: bool,
    /// Calls the model judged (quiet ones): its coverage.
    pub judged: u64,
}

/// One call as the checker sees it: which ioctl, the snapshot id it names
/// (if it names one), and what came back.
pub struct Call {
    pub nr: IoctlNr,
    pub id: Option<Id>,
    pub result: Result<i64, Errno>,
    /// For COLLECT with an array: the ids listed.
    pub listed: Option<Vec<Id>>,
    /// For CREATE that succeeded: the new id.
    pub created: Option<Id>,
    /// The sim failed an allocation on purpose while the call ran. v2 allocates
    /// before it looks the snapshot up (ctrl.c: WAIT_EVENT's and APPEND's
    /// kzalloc/kcalloc of the argument), so ENOMEM for an unknown id is then the
    /// injected fault's doing, not a wrong errno.
    pub alloc_fault: bool,
    /// APPEND_STORAGE only: every range was readable, non-empty,
    /// page-aligned and inside an existing device (as the sim saw the
    /// argument at the call's start and end).
    pub append_valid: bool,
}

impl Lifecycle {
    /// An ioctl starts; the token tells at the end whether it was quiet.
    pub fn begin(&mut self) -> (u64, bool) {
        let alone = self.in_flight == 0;
        self.started += 1;
        self.in_flight += 1;
        self.effects.begin(self.started, alone);
        (self.started, alone)
    }

    /// The module went away with every snapshot (unload).
    pub fn unloaded(&mut self) {
        self.live.clear();
        self.unknown_ids = false;
        self.events.unloaded();
        self.effects = Effects::default();
        self.take_windows.clear();
    }

    /// A WAIT_EVENT returned a corrupted event of `id` labelled `label`
    /// (ns): judged against the TAKE of `id` that returned 0 (module doc).
    pub fn corrupted_reported(&self, id: Id, label: i64) -> Result<(), String> {
        let Some(&(freeze, thaw)) = self.take_windows.get(&id) else {
            return Ok(());
        };
        match u64::try_from(label) {
            Ok(at) if freeze < at && at < thaw => Err(format!(
                "SNAPSHOT_TAKE returned 0, but its snapshot was reported corrupted at {at} ns, \
                 after the TAKE's first freeze ({freeze} ns) and before its last thaw \
                 ({thaw} ns): TAKE checks its diff areas after the thaw and fails on a \
                 corrupted one (spec 8.3 step 4)"
            )),
            _ => Ok(()),
        }
    }

    /// The engine added an image disk (`add_disk` succeeded) at `now` ns.
    pub fn image_added(&mut self, dev: DevT, now: u64) -> Result<(), String> {
        self.effects.image_added(dev, now)
    }

    /// The engine called `freeze_bdev` (`thaw` false) or `thaw_bdev`.
    pub fn engine_freeze(&mut self, thaw: bool, now: u64) {
        self.effects.freeze(thaw, now, self.in_flight);
    }

    /// An ioctl ended: update the model; judge it if nothing overlapped.
    pub fn end(&mut self, token: (u64, bool), call: &Call) -> Result<(), String> {
        self.in_flight -= 1;
        let quiet = token.1 && self.started == token.0 && self.in_flight == 0;
        self.judged += u64::from(quiet);
        let verdict = if quiet { self.judge(call) } else { Ok(()) };
        self.apply(call);
        if let Some(window) = self.effects.ended(token.0, call) {
            let id = call.id.filter(|_| quiet);
            if let Some(id) = id {
                self.take_windows.insert(id, window);
            }
        }
        verdict.and(self.effects.resolve(token.0, call))
    }

    fn apply(&mut self, call: &Call) {
        if let Some(id) = call.created {
            self.live.insert(id, false);
        }
        if call.nr == IoctlNr::SnapshotCreate && call.result == Err(Errno::ENODATA) {
            self.unknown_ids = true;
        }
        let (Some(id), Ok(_)) = (call.id, call.result) else {
            return;
        };
        match call.nr {
            IoctlNr::SnapshotDestroy => {
                self.live.remove(&id);
            }
            IoctlNr::SnapshotTake => {
                if let Some(taken) = self.live.get_mut(&id) {
                    *taken = true;
                }
            }
            _ => {}
        }
    }

    fn judge(&self, call: &Call) -> Result<(), String> {
        let name = call.nr.name();
        if let Some(listed) = &call.listed {
            return self.judge_collect(listed);
        }
        let Some(id) = call.id else { return Ok(()) };
        let unknown_errno = match call.nr {
            IoctlNr::SnapshotDestroy => Errno::ENODEV,
            IoctlNr::SnapshotTake
            | IoctlNr::SnapshotAppendStorage
            | IoctlNr::SnapshotCollectImages
            | IoctlNr::SnapshotWaitEvent => Errno::ESRCH,
            _ => return Ok(()),
        };
        match (self.live.get(&id), call.result) {
            (None, Err(Errno::ENOMEM)) if call.alloc_fault => Ok(()),
            (None, Ok(_)) => Err(format!(
                "{name} succeeded on a snapshot that does not exist"
            )),
            (None, Err(e)) if e != unknown_errno && e != Errno::ENODATA && e != Errno::EINVAL => {
                Err(format!(
                    "{name} of a snapshot that does not exist gave {e}, not {unknown_errno}"
                ))
            }
            (Some(_), Err(e))
                if e == unknown_errno && call.nr != IoctlNr::SnapshotCollectImages =>
            {
                Err(format!(
                    "{name} said {e}: the snapshot was created and never destroyed"
                ))
            }
            (Some(taken), result) if call.nr == IoctlNr::SnapshotCollectImages => {
                judge_images(*taken, result)
            }
            (Some(_), Err(e))
                if call.nr == IoctlNr::SnapshotAppendStorage
                    && call.append_valid
                    && e != Errno::ENOMEM =>
            {
                Err(format!(
                    "{name} failed with {e}, but every range was readable, non-empty, \
                     page-aligned and inside an existing device: only an allocation may fail"
                ))
            }
            _ => Ok(()),
        }
    }

    fn judge_collect(&self, listed: &[Id]) -> Result<(), String> {
        if self.unknown_ids {
            return Ok(());
        }
        let mut listed = listed.to_vec();
        listed.sort_unstable();
        let live: Vec<Id> = self.live.keys().copied().collect();
        if listed != live {
            return Err(format!(
                "SNAPSHOT_COLLECT listed {} snapshot(s); {} were created and not destroyed",
                listed.len(),
                live.len()
            ));
        }
        Ok(())
    }
}

/// The kernel's record of what TAKEs did, for the two TAKE rules (module
/// doc). The ioctls reach the checker without a time, so begins, ends and
/// image disks are ordered by `step`.
#[derive(Default)]
struct Effects {
    step: u64,
    /// Ioctls in flight, by token.
    flight: BTreeSet<u64>,
    /// The step at which a DESTROY of the snapshot returned 0.
    destroyed: BTreeMap<Id, u64>,
    /// After that, the step at which a TAKE of it that held its lock
    /// returned, and what it returned.
    sealed: BTreeMap<Id, (u64, Result<i64, Errno>)>,
    /// Image disks whose TAKE is not known yet: some ioctl in flight when
    /// it appeared has not returned.
    disks: Vec<Disk>,
    /// The engine's freezes and thaws while one ioctl runs alone.
    window: Option<Window>,
}

struct Disk {
    dev: DevT,
    at: u64,
    step: u64,
    /// The ioctls in flight when it appeared that have not returned.
    waiting: BTreeSet<u64>,
    /// A TAKE in flight when it appeared was of a snapshot sealed before:
    /// what the sealing TAKE returned.
    sealed_take: Option<Result<i64, Errno>>,
}

struct Window {
    token: u64,
    first_freeze: Option<u64>,
    last_thaw: Option<u64>,
}

impl Effects {
    fn begin(&mut self, token: u64, alone: bool) {
        self.step += 1;
        self.flight.insert(token);
        self.window = alone.then_some(Window {
            token,
            first_freeze: None,
            last_thaw: None,
        });
    }

    fn freeze(&mut self, thaw: bool, now: u64, in_flight: u64) {
        let Some(window) = self.window.as_mut().filter(|_| in_flight == 1) else {
            return;
        };
        if thaw {
            window.last_thaw = Some(now);
        } else {
            window.first_freeze.get_or_insert(now);
        }
    }

    fn image_added(&mut self, dev: DevT, at: u64) -> Result<(), String> {
        self.step += 1;
        if self.flight.is_empty() {
            return Err(no_take(dev, at));
        }
        self.disks.push(Disk {
            dev,
            at,
            step: self.step,
            waiting: self.flight.clone(),
            sealed_take: None,
        });
        Ok(())
    }

    /// A call returned: the destroyed and sealed snapshots; for a TAKE that
    /// returned 0 alone, its first freeze and last thaw.
    fn ended(&mut self, token: u64, call: &Call) -> Option<(u64, u64)> {
        self.step += 1;
        self.flight.remove(&token);
        match (call.nr, call.id, call.result) {
            (IoctlNr::SnapshotDestroy, Some(id), Ok(_)) => {
                self.destroyed.insert(id, self.step);
            }
            (IoctlNr::SnapshotTake, Some(id), result)
                if held_the_lock(result) && self.destroyed.contains_key(&id) =>
            {
                self.sealed.entry(id).or_insert((self.step, result));
            }
            _ => {}
        }
        let window = self.window.take_if(|w| w.token == token)?;
        let take_ok = call.nr == IoctlNr::SnapshotTake && call.result.is_ok();
        window
            .first_freeze
            .zip(window.last_thaw)
            .filter(|_| take_ok)
    }

    /// The image disks this call may have made are judged once every call
    /// in flight when they appeared has returned.
    fn resolve(&mut self, token: u64, call: &Call) -> Result<(), String> {
        let mut verdict = Ok(());
        let sealed = self.sealed_at(call);
        self.disks.retain_mut(|disk| {
            if !disk.waiting.remove(&token) {
                return true;
            }
            match sealed {
                Some(None) => return false,
                Some(Some((step, result))) if step < disk.step => {
                    disk.sealed_take = Some(result);
                }
                Some(Some(_)) => return false,
                None => {}
            }
            if disk.waiting.is_empty() && verdict.is_ok() {
                verdict = Err(match disk.sealed_take {
                    Some(result) => after_destroy(disk, result),
                    None => no_take(disk.dev, disk.at),
                });
            }
            !disk.waiting.is_empty()
        });
        if self.flight.is_empty() {
            // A TAKE that begins now finds no destroyed snapshot.
            self.destroyed.clear();
            self.sealed.clear();
        }
        verdict
    }

    /// None: the call is no TAKE; Some(None): a TAKE whose snapshot is not
    /// sealed (or unknown); else when it was sealed.
    fn sealed_at(&self, call: &Call) -> Option<Option<(u64, Result<i64, Errno>)>> {
        (call.nr == IoctlNr::SnapshotTake)
            .then(|| call.id.and_then(|id| self.sealed.get(&id).copied()))
    }
}

/// ESRCH (lookup) and ENODATA (the argument's copy) come before a TAKE
/// takes its snapshot's lock; every other result comes after.
fn held_the_lock(result: Result<i64, Errno>) -> bool {
    !matches!(result, Err(Errno::ESRCH) | Err(Errno::ENODATA))
}

fn no_take(dev: DevT, at: u64) -> String {
    format!(
        "image disk {dev} was added at {at} ns while no SNAPSHOT_TAKE was in flight: \
         only TAKE adds image disks (spec 8.3)"
    )
}

fn after_destroy(disk: &Disk, sealer: Result<i64, Errno>) -> String {
    let sealer = match sealer {
        Ok(v) => v.to_string(),
        Err(e) => e.to_string(),
    };
    format!(
        "image disk {} was added at {} ns by a TAKE of a snapshot whose DESTROY had returned, \
         after which another TAKE of it that held its lock returned ({sealer}): TAKEs of a \
         snapshot are serialized, so this one got the lock after DESTROY unlisted the \
         snapshot and must fail (ESRCH) without images",
        disk.dev, disk.at
    )
}

/// COLLECT_IMAGES: -ENODEV exactly when the snapshot is not taken.
fn judge_images(taken: bool, result: Result<i64, Errno>) -> Result<(), String> {
    match (taken, result) {
        (false, Ok(_)) => Err("COLLECT_IMAGES succeeded on a snapshot that is not taken".into()),
        (true, Err(Errno::ENODEV)) => Err("COLLECT_IMAGES said ENODEV on a taken snapshot".into()),
        (_, Err(Errno::ESRCH)) => Err("COLLECT_IMAGES said ESRCH on a listed snapshot".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(nr: IoctlNr, id: Id, result: Result<i64, Errno>) -> Call {
        Call {
            nr,
            id: Some(id),
            result,
            listed: None,
            created: None,
            alloc_fault: false,
            append_valid: false,
        }
    }

    fn quiet(l: &mut Lifecycle, c: &Call) -> Result<(), String> {
        let token = l.begin();
        l.end(token, c)
    }

    /// An APPEND of valid ranges to a listed snapshot fails only with
    /// ENOMEM; invalid ranges, an unknown snapshot and an overlapped call
    /// are not this rule's business.
    #[test]
    fn a_valid_append_fails_only_for_memory() {
        let mut l = Lifecycle::default();
        let created = Call {
            created: Some([1; 16]),
            ..call(IoctlNr::SnapshotCreate, [0; 16], Ok(0))
        };
        quiet(
            &mut l,
            &Call {
                id: None,
                ..created
            },
        )
        .unwrap();
        let append = |result, append_valid| Call {
            append_valid,
            ..call(IoctlNr::SnapshotAppendStorage, [1; 16], result)
        };
        let err = quiet(&mut l, &append(Err(Errno::EINVAL), true)).unwrap_err();
        assert!(
            err.contains("failed with EINVAL, but every range was readable"),
            "{err}"
        );
        assert!(quiet(&mut l, &append(Err(Errno::ENODEV), true)).is_err());
        assert!(quiet(&mut l, &append(Err(Errno::ENOMEM), true)).is_ok());
        assert!(quiet(&mut l, &append(Err(Errno::EINVAL), false)).is_ok());
        assert!(quiet(&mut l, &append(Ok(0), true)).is_ok());
        let overlapped = l.begin();
        let other = l.begin();
        assert!(l.end(overlapped, &append(Err(Errno::EINVAL), true)).is_ok());
        l.end(other, &append(Ok(0), true)).unwrap();
        let unknown = Call {
            append_valid: true,
            ..call(IoctlNr::SnapshotAppendStorage, [9; 16], Err(Errno::ESRCH))
        };
        assert!(quiet(&mut l, &unknown).is_ok());
    }

    #[test]
    fn a_lost_snapshot_is_caught() {
        let mut l = Lifecycle::default();
        let created = |id: Id| Call {
            nr: IoctlNr::SnapshotCreate,
            id: None,
            result: Ok(0),
            listed: None,
            created: Some(id),
            alloc_fault: false,
            append_valid: false,
        };
        quiet(&mut l, &created([1; 16])).unwrap();
        quiet(&mut l, &created([2; 16])).unwrap();
        let take = call(IoctlNr::SnapshotTake, [1; 16], Err(Errno::ESRCH));
        assert!(quiet(&mut l, &take).is_err());
        let collect = Call {
            nr: IoctlNr::SnapshotCollect,
            id: None,
            result: Ok(0),
            listed: Some(vec![[2; 16]]),
            created: None,
            alloc_fault: false,
            append_valid: false,
        };
        assert!(quiet(&mut l, &collect).is_err());
    }

    #[test]
    fn destroyed_ids_must_fail_and_images_follow_take() {
        let mut l = Lifecycle::default();
        l.live.insert([1; 16], false);
        assert!(quiet(
            &mut l,
            &call(IoctlNr::SnapshotCollectImages, [1; 16], Err(Errno::ENODEV))
        )
        .is_ok());
        assert!(quiet(
            &mut l,
            &call(IoctlNr::SnapshotCollectImages, [1; 16], Ok(0))
        )
        .is_err());
        quiet(&mut l, &call(IoctlNr::SnapshotTake, [1; 16], Ok(0))).unwrap();
        assert!(quiet(
            &mut l,
            &call(IoctlNr::SnapshotCollectImages, [1; 16], Ok(0))
        )
        .is_ok());
        quiet(&mut l, &call(IoctlNr::SnapshotDestroy, [1; 16], Ok(0))).unwrap();
        assert!(quiet(&mut l, &call(IoctlNr::SnapshotTake, [1; 16], Ok(0))).is_err());
        assert!(quiet(
            &mut l,
            &call(IoctlNr::SnapshotDestroy, [1; 16], Err(Errno::ENODEV))
        )
        .is_ok());
    }

    #[test]
    fn overlapping_calls_are_not_judged() {
        let mut l = Lifecycle::default();
        let a = l.begin();
        let b = l.begin();
        assert!(l
            .end(b, &call(IoctlNr::SnapshotTake, [9; 16], Ok(0)))
            .is_ok());
        assert!(l
            .end(a, &call(IoctlNr::SnapshotTake, [9; 16], Ok(0)))
            .is_ok());
        assert_eq!(l.judged, 0);
        quiet(&mut l, &call(IoctlNr::SnapshotTake, [9; 16], Ok(0))).unwrap_err();
        assert_eq!(l.judged, 1);
    }

    #[test]
    fn enomem_for_an_unknown_id_is_excused_only_by_an_injected_allocation_fault() {
        let mut l = Lifecycle::default();
        let mut wait = call(IoctlNr::SnapshotWaitEvent, [7; 16], Err(Errno::ENOMEM));
        let e = quiet(&mut l, &wait).unwrap_err();
        assert!(e.contains("gave ENOMEM, not ESRCH"), "{e}");
        wait.alloc_fault = true;
        quiet(&mut l, &wait).unwrap();
        // Only ENOMEM: an injected fault does not excuse another wrong errno.
        let wrong = Call {
            result: Err(Errno::EBUSY),
            ..wait
        };
        assert!(quiet(&mut l, &wrong).is_err());
    }
}
