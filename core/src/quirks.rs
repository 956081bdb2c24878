//! Named reproductions of v2 bugs (spec section 10), all off by default.
//!
//! By default the engine behaves as v2 where v2 is right and as the later
//! fix (or a careful engineer) where it is wrong. Each quirk switches one
//! place back to the v2 behaviour, faithfully: memory-unsafe C shows as the
//! kernel would show it (an oops, a leak, a hang). Quirks are read only by
//! the engine; the sim's checkers never know which are on.
//!
//! What the default (fixed) engine does instead, per bug:
//!
//! | id | the default engine |
//! |---|---|
//! | B-SNAP-1 | appends to the list (v3) |
//! | B-SNAP-2 | skips empty image slots; no match is -ENODEV, also for an empty list (v2 scans every listed snapshot, also after a match: a later NULL slot oopses, the last match wins) |
//! | B-SNAP-3 | an empty CREATE succeeds at once (v3 creates empty snapshots) |
//! | B-SNAP-4 | a failed TAKE never touches the list (v3) |
//! | B-SNAP-5 | a failed image creation frees the images made, releases the trackers, and leaves the snapshot untaken |
//! | B-SNAP-6 | a device already in a snapshot is -EBUSY at CREATE (v4), claimed device by device |
//! | B-SNAP-7 | a failed CREATE drops only the references it took |
//! | B-SNAP-8 | COLLECT: a short array is -ENODATA with the required count; a copy fault is -ENODATA |
//! | B-SNAP-9 | TAKE is serialized per snapshot (v3 `rw_lock`); a TAKE after DESTROY is -ESRCH |
//! | B-SNAP-10 | a TAKE failing before the images releases the trackers and keeps the snapshot (v3) |
//! | B-SNAP-11 | a taken tracker without a diff_area passes writes without COW; TAKE fails with -EFAULT (v2 dereferences NULL: tracker.c submit_bio_cb and take_snapshot, snapshot.c corruption check, snapimage.c create) |
//! | B-TRK-2 | a would-block NOWAIT bio is ended once, with EAGAIN |
//! | B-TRK-3 | COW bios queued before an error are submitted, and waited for before the write passes |
//! | B-TRK-4 | a CBT marking failure does not skip COW; a write past the area corrupts it with an event |
//! | B-TRK-5 | TRACKER_REMOVE of a tracker owned by a listed snapshot is -EBUSY |
//! | B-TRK-6 | READ_CBT_MAP of an untracked device is -ENODEV |
//! | B-TRK-7 | TRACKER_COLLECT -ENOBUFS writes the required count; removal drops every list entry |
//! | B-TRK-8 | unload polls every second, logs each 10 s round, and at the 13th (where v2 WARNs once and loops for ever) warns and returns; the leak is then reported |
//! | B-TRK-9 | the bio set goes last at unload (6.15) |
//! | B-TRK-10 | TAKE thaws only what it froze (the sim's freeze is 6.1's: v2's exposure is a third party's freeze_bdev landing between its failed freeze and its thaw) |
//! | B-TRK-11 | the filter lookup and its reference are one step (no preemption point between) |
//! | B-TRK-12 | CREATE takes its reference before the filter is attached, and TRACKER_REMOVE of a tracker still being attached is -EBUSY |
//! | B-CBT-1 | the shift grows by one, capped at `tracking_block_maximum_shift` (v3) |
//! | B-CBT-2 | reads from the offset and stops at the end of the map |
//! | B-CBT-3 | the new tables are built before the old ones go (6.15); a failure keeps the old tables and geometry (v2 stores the new geometry first: COLLECT reports it, the next TAKE skips the reset and oopses in the switch) |
//! | B-CBT-5 | the map is copied under its lock, before any copy to user space |
//! | B-CBT-6 | every MARK_DIRTY range is checked (non-empty, inside the device, map not corrupted) before any is marked. Spec text wrong: spec 10.4 says both maps are marked; the C marks the write map first and the read map only if that walk got through; the quirk follows the C |
//! | B-DA-1 | the device and the struct are given back |
//! | B-DA-3 | a would-block allocation leaves the chunk as it was and returns -EAGAIN |
//! | B-DA-4 | the writer's COW waits are uninterruptible: a copy is never abandoned half-way (v2's -EINTR passes the write at once from the copy path and the wait path alike) |
//! | B-DA-5 | a failed image load gives the buffer back (v2 WARNs at the next load of the chunk, image or COW path, and leaks the buffer) |
//! | B-DA-7 | free waits for IO in flight however long it takes |
//! | B-DA-8 | eviction keeps trimming a corrupted area's caches |
//! | B-DA-9 | free waits for IO in flight again after flushing the eviction work (diff_area.c:86-100: v2 waits for `pending_io_count` first, then flushes `cache_release_work`, whose store started after that wait completes on freed memory) |
//! | B-IMG-1 | image IO of a corrupted area, or of a failed chunk, ends with EIO (v3); so does image IO in flight when the area is corrupted (v3 to 6.9 check only at entry: a chunk read after the corruption may return the original's new data, with status OK) |
//! | B-IMG-2 | a failed add_disk puts the references it took |
//! | B-IMG-3 | the idle worker sleeps until a bio arrives |
//! | B-IO-1 | chunk IO is split into bios of at most 256 pages (v3) |
//! | B-CTRL-1 | dispatch on the full command value; anything else is -ENOTTY (6.15) |
//! | B-CTRL-2 | WAIT_EVENT reads the id and the timeout (v3) |
//! | B-EVT-1 | the waiter takes the head only if one is there (v3); v2 re-checks the condition after each wake-up (inside the wait macro) but not between it and the lock: the window (SMP in C) is a scheduler tick here, so it shows with B-CTRL-2's timeout 0 too |
//! | B-EVT-2 | the timeout is milliseconds of virtual time |
//! | B-DS-1 | APPEND refuses empty, unaligned and out-of-range ranges with -EINVAL |
//! | B-INIT-1 | a failed init gives back what it allocated |
//! | B-PARAM-1 | parameters out of range are refused (-EINVAL at SetParam, a load error in a scenario). Either way the int parameters compare signed, as in C: -1 is "always evict / always free", and a negative `diff_storage_minimum` sign-extends the half-full threshold |
//!
//! Where the spec text is wrong, the port follows the C:
//! - B-CBT-6 (spec 10.4): only the write map is marked first; the read map
//!   is marked only if the write walk got through (cbt_map_set_both).
//! - 8.6 step 4: a slot without an image reports `{orig, 0:0}`, not
//!   `{0:0, 0:0}`: the original device is filled in from the tracker
//!   whether or not the image exists (snapshot_collect_images).
//!
//! B-DA-9 is not in the spec either (found by the bench in
//! `scenarios/bugs/snap-11.ron` on the fixed engine): `diff_area_free`
//! (diff_area.c:76-114) polls `pending_io_count` down to 0 (86-97), sets
//! the corrupt flag (99) and only then flushes the eviction work (100).
//! A work sleeping in a GFP_NOIO allocation of `chunk_schedule_storing`
//! (chunk.c:49, 240) at that moment wakes, counts its store as pending
//! (chunk.c:251) and submits it; the free then takes the chunk's lock
//! (chunk.c:218), frees the chunk and the area, and `chunk_notify_store`
//! decrements `pending_io_count` of the freed area (chunk.c:193).
//!
//! B-TRK-12 is not in the spec either (found by the lifecycle fuzzer with
//! no quirk on, finding f17 in `fuzz/findings/`): `tracker_new` (patch
//! 0009, tracker.c) attaches the filter with its one reference and then
//! sleeps in `thaw_bdev`; `tracker_create_or_get` takes the caller's
//! reference (`bdev_filter_get`, "a ref counter value of 2") only after
//! it returns. A TRACKER_REMOVE in between finds the filter through
//! `bd_filter`, detaches it and puts the last reference; CREATE then gets
//! a reference on a freed tracker.
//!
//! B-SNAP-11 is not in the spec: the id is the next free one of the family
//! (the review's finding 3, a (d) bug): a release of a snapshot sharing a
//! tracker (B-SNAP-6) NULLs `tracker->diff_area` while another snapshot
//! has taken it.
//!
//! Bugs of spec section 10 without a quirk, and why:
//! - behaviour of v2 and of every later version alike, so the default
//!   already reproduces it: B-CBT-4 (stale read map after 255 takes),
//!   B-DS-2 (low-space events follow `requested`), B-DS-3 (overflow is
//!   permanent), B-CTRL-4 (a failed copy-back of CREATE loses the id),
//!   B-CTRL-5 (inverted ioctl directions, see `uapi`);
//! - unreachable, as the spec says: B-DA-2, B-DA-6, B-CTRL-3 (event
//!   payloads are at most 12 bytes);
//! - not a correctness bug: B-IMG-4 (unbounded image queue);
//! - B-TRK-11 and B-CBT-5 are races that SMP or a page fault opens in C;
//!   their quirks add the preemption point where the C code can lose the
//!   CPU, so the scheduler can interleave the racing task there.

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
    snap_2 = "B-SNAP-2": "image MARK_DIRTY reads NULL image slots (oops); an empty list returns 0",
    snap_3 = "B-SNAP-3": "CREATE with count 0 spins through a wrapped loop and succeeds",
    snap_4 = "B-SNAP-4": "a failing TAKE unlists and puts the snapshot even if DESTROY already did",
    snap_5 = "B-SNAP-5": "a failed image creation leaves a half-taken snapshot with COW on",
    snap_6 = "B-SNAP-6": "a device may join a second snapshot, whose TAKE takes its tracker over",
    snap_7 = "B-SNAP-7": "releasing a snapshot clears COW on trackers another snapshot took",
    snap_8 = "B-SNAP-8": "SNAPSHOT_COLLECT returns 0 after a copy fault and the copied count",
    snap_9 = "B-SNAP-9": "two concurrent TAKEs of one snapshot both proceed",
    snap_10 = "B-SNAP-10": "a TAKE that fails before image creation destroys the snapshot",
    snap_11 = "B-SNAP-11": "a taken tracker whose diff_area a shared snapshot's release NULLed is dereferenced (oops)",
    trk_2 = "B-TRK-2": "a REQ_NOWAIT bio that would block is completed twice",
    trk_3 = "B-TRK-3": "COW bios queued before an error in a multi-chunk write are never submitted",
    trk_4 = "B-TRK-4": "a CBT marking failure lets the write pass without COW",
    trk_5 = "B-TRK-5": "TRACKER_REMOVE detaches a tracker of a created, untaken snapshot",
    trk_6 = "B-TRK-6": "READ_CBT_MAP of an untracked device returns 0",
    trk_7 = "B-TRK-7": "TRACKER_COLLECT leaves the count unwritten on -ENOBUFS",
    trk_8 = "B-TRK-8": "module unload waits for ever for trackers that are never freed",
    trk_9 = "B-TRK-9": "module exit destroys the bio set before the snapshots",
    trk_10 = "B-TRK-10": "TAKE thaws every device, also those whose freeze failed",
    trk_11 = "B-TRK-11": "the filter lookup takes its reference without a lock (use after free)",
    trk_12 = "B-TRK-12": "TRACKER_REMOVE during CREATE's thaw frees the tracker CREATE is attaching (use after free)",
    cbt_1 = "B-CBT-1": "the CBT block shift doubles instead of growing by one",
    cbt_2 = "B-CBT-2": "READ_CBT_MAP ignores the offset and reads past the map",
    cbt_3 = "B-CBT-3": "a failed CBT reset leaves the map without tables",
    cbt_5 = "B-CBT-5": "READ_CBT_MAP reads the table without the lock while a reset frees it",
    cbt_6 = "B-CBT-6": "MARK_DIRTY ranges are not validated; count 0 at sector 0 marks every block",
    da_1 = "B-DA-1": "diff_area_new with empty storage leaks the opened device and the struct",
    da_3 = "B-DA-3": "a NOWAIT allocation failure in COW corrupts the snapshot",
    da_4 = "B-DA-4": "a fatal signal while waiting for a chunk lets the write pass without COW",
    da_5 = "B-DA-5": "a failed image load leaves the buffer attached (WARN and leak next time)",
    da_7 = "B-DA-7": "diff_area_free gives up waiting for IO after 6 s and frees anyway",
    da_8 = "B-DA-8": "cache eviction stops once the diff_area is corrupted",
    da_9 = "B-DA-9": "diff_area_free frees under a store the eviction work it flushes started after its IO wait",
    img_1 = "B-IMG-1": "image IO errors are swallowed and corruption is not checked",
    img_2 = "B-IMG-2": "a failed add_disk leaks the diff_area and CBT references",
    img_3 = "B-IMG-3": "the idle image worker polls every 10 ms",
    io_1 = "B-IO-1": "one bio per chunk: chunks over 1 MiB hit BUG() in the bvec allocator",
    ctrl_1 = "B-CTRL-1": "ioctl dispatch looks only at the number and accepts 12",
    ctrl_2 = "B-CTRL-2": "WAIT_EVENT never reads the timeout: it is a non-blocking poll",
    evt_1 = "B-EVT-1": "two waiters can take the same event (the list is not re-checked)",
    evt_2 = "B-EVT-2": "the WAIT_EVENT timeout in ms is used as jiffies (HZ=250)",
    ds_1 = "B-DS-1": "diff storage ranges are not validated",
    param_1 = "B-PARAM-1": "module parameters are not validated",
    init_1 = "B-INIT-1": "a failed module init does not undo its earlier steps",
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn none_is_on_by_default() {
        assert!(Quirks::default().enabled().is_empty());
    }

    #[test]
    fn enable_by_spec_id() {
        let mut q = Quirks::default();
        q.enable("B-SNAP-1").unwrap();
        q.enable("B-CBT-1").unwrap();
        assert!(q.snap_1 && q.cbt_1);
        assert!(!q.snap_10);
        assert_eq!(q.enabled(), vec!["B-SNAP-1", "B-CBT-1"]);
        q.enable("B-SNAP-1").unwrap();
        assert_eq!(q.enabled().len(), 2, "enabling twice is harmless");
    }

    #[test]
    fn unknown_id_is_an_error_listing_the_known_ids() {
        let mut q = Quirks::default();
        let err = q.enable("B-SNAP-99").unwrap_err();
        assert_eq!(err, UnknownQuirk("B-SNAP-99".to_string()));
        let text = err.to_string();
        assert!(
            text.starts_with("unknown quirk 'B-SNAP-99'; known:"),
            "{text}"
        );
        for (id, _) in Quirks::ALL {
            assert!(text.contains(&format!(" {id}")), "{id} missing from {text}");
        }
        assert!(q.enable("b-snap-1").is_err(), "ids are case-sensitive");
        assert_eq!(q, Quirks::default());
    }

    #[test]
    fn all_ids_are_unique_and_each_switches_its_own_field() {
        let ids: BTreeSet<&str> = Quirks::ALL.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids.len(), Quirks::ALL.len());
        for (id, summary) in Quirks::ALL {
            assert!(id.starts_with("B-"), "{id}");
            assert!(!summary.is_empty(), "{id}");
            let mut q = Quirks::default();
            q.enable(id).unwrap();
            assert_eq!(q.enabled(), vec![*id]);
        }
        let mut all = Quirks::default();
        for (id, _) in Quirks::ALL {
            all.enable(id).unwrap();
        }
        let in_order: Vec<&str> = Quirks::ALL.iter().map(|(id, _)| *id).collect();
        assert_eq!(all.enabled(), in_order);
    }
}
