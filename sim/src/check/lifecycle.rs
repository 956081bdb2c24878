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

use std::collections::BTreeMap;

use blksnap_core::kernel::Errno;
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
        (self.started, alone)
    }

    /// The module went away with every snapshot (unload).
    pub fn unloaded(&mut self) {
        self.live.clear();
        self.unknown_ids = false;
        self.events.unloaded();
    }

    /// An ioctl ended: update the model; judge it if nothing overlapped.
    pub fn end(&mut self, token: (u64, bool), call: &Call) -> Result<(), String> {
        self.in_flight -= 1;
        let quiet = token.1 && self.started == token.0 && self.in_flight == 0;
        self.judged += u64::from(quiet);
        let verdict = if quiet { self.judge(call) } else { Ok(()) };
        self.apply(call);
        verdict
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
