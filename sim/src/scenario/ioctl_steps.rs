//! Ioctl steps: each builds the v2 argument struct in simulated user
//! memory (with the fault the step asks for), calls the engine through its
//! ioctl number, and reads back what the engine wrote.

use blksnap_core::kernel::{DevT, Errno};
use blksnap_core::uapi::*;

use super::load::limits::{MAX_ARG_BYTES, MAX_ARRAY_ITEMS, MAX_CBT_MAP_BYTES};
use super::model::{ArgFault, CbtExpect, EventExpect, Expect, RawArg, Step, Target};
use super::runner::{check_expect, Run};
use super::{Cause, StepError};
use crate::trace::TraceEvent;
use crate::user::UNMAPPED;

/// The engine's allocation site of an event (`event_gen`'s kzalloc).
const EVENT_SITE: &str = "event";

pub(super) fn blk_dev(dev: DevT) -> BlkSnapDev {
    BlkSnapDev {
        mj: dev.major(),
        mn: dev.minor(),
    }
}

pub(super) fn dev_t(dev: BlkSnapDev) -> DevT {
    DevT::new(dev.mj, dev.mn)
}

impl Run {
    // --- user memory -----------------------------------------------------------------

    /// Map an argument struct, honouring a struct fault.
    fn map_struct<T: UapiStruct>(&self, arg: &T, fault: Option<&ArgFault>) -> u64 {
        let bytes = arg.encode();
        match fault {
            Some(ArgFault::StructUnmapped) => UNMAPPED,
            Some(ArgFault::StructShort(n)) => {
                self.map_user(bytes[..(*n).min(bytes.len())].to_vec())
            }
            Some(ArgFault::StructReadOnly) => self.map_user_read_only(bytes),
            _ => self.map_user(bytes),
        }
    }

    /// Map an array, honouring an array fault.
    pub(super) fn map_array<T: UapiStruct>(&self, items: &[T], fault: Option<&ArgFault>) -> u64 {
        let bytes: Vec<u8> = items.iter().flat_map(UapiStruct::encode).collect();
        match fault {
            Some(ArgFault::ArrayNull) => 0,
            Some(ArgFault::ArrayUnmapped) => UNMAPPED,
            Some(ArgFault::ArrayShort(n)) => {
                let len = (*n as usize * T::SIZE).min(bytes.len()).max(1);
                self.user
                    .map(bytes.get(..len).map_or(vec![0], <[u8]>::to_vec))
            }
            Some(ArgFault::ArrayReadOnly) => self.map_user_read_only(bytes),
            // A zero-length array still needs an address that is not NULL.
            _ if bytes.is_empty() => self.map_user(vec![0]),
            _ => self.map_user(bytes),
        }
    }

    /// The count field: the real one, unless the fault overrides it.
    fn count(real: usize, fault: Option<&ArgFault>) -> u32 {
        match fault {
            Some(ArgFault::Count(n)) => *n,
            _ => real as u32,
        }
    }

    /// Call an ioctl on a mapped argument and trace the result.
    pub(super) async fn ioctl_at(&self, cmd: u32, addr: u64) -> Result<i64, Errno> {
        let Some(module) = self.module() else {
            // No module, no control device: open("/dev/blksnap") fails.
            return Err(Errno::ENODEV);
        };
        crate::ctl::ioctl(&self.sim, &module, cmd, addr, &self.user).await
    }

    /// Map `arg`, call, and return the result with the struct's address.
    async fn ioctl<T: UapiStruct>(
        &self,
        cmd: u32,
        arg: &T,
        fault: Option<&ArgFault>,
    ) -> (Result<i64, Errno>, u64) {
        let addr = self.map_struct(arg, fault);
        (self.ioctl_at(cmd, addr).await, addr)
    }

    /// The count for an ioctl called twice, as user space does: first with
    /// no array to learn the count. A `Count` fault gives it instead, and a
    /// broken struct skips the query (the real call fails on its own).
    async fn count_first<T: UapiStruct>(
        &self,
        cmd: u32,
        query: T,
        fault: Option<&ArgFault>,
        count_of: impl Fn(&T) -> u32,
    ) -> Result<u32, Errno> {
        match fault {
            Some(ArgFault::Count(n)) => return Ok(*n),
            Some(
                ArgFault::StructUnmapped | ArgFault::StructShort(_) | ArgFault::StructReadOnly,
            ) => return Ok(0),
            _ => {}
        }
        let (result, addr) = self.ioctl(cmd, &query, None).await;
        result?;
        Ok(self.read_back::<T>(addr).map_or(0, |c| count_of(&c)))
    }

    fn read_back<T: UapiStruct>(&self, addr: u64) -> Option<T> {
        T::decode(&self.user.read(addr, T::SIZE)?)
    }

    fn uuid(&self, snapshot: &str) -> BlkSnapUuid {
        BlkSnapUuid {
            b: self.record(snapshot).id,
        }
    }

    // --- steps ---------------------------------------------------------------------------

    pub(super) async fn raw_ioctl(
        &self,
        cmd: u32,
        arg: &RawArg,
        expect: &Expect,
    ) -> Result<(), StepError> {
        let addr = match arg {
            RawArg::Null => 0,
            RawArg::Unmapped => UNMAPPED,
            RawArg::Bytes(bytes) => self.map_user(bytes.clone()),
            // The loader bounds the size; capped again before allocating.
            RawArg::Zeroed(n) => self.map_user(vec![0; (*n).min(MAX_ARG_BYTES as usize)]),
        };
        check_expect(expect, self.ioctl_at(cmd, addr).await)
    }

    pub(super) async fn version(
        &self,
        fault: Option<&ArgFault>,
        expect: &Expect,
    ) -> Result<(), StepError> {
        let (result, addr) = self
            .ioctl(IOCTL_BLK_SNAP_VERSION, &BlkSnapVersion::default(), fault)
            .await;
        check_expect(expect, result)?;
        if result.is_ok() {
            let got: Option<BlkSnapVersion> = self.read_back(addr);
            if got != Some(MODULE_VERSION) {
                return Err(format!("VERSION returned {got:?}").into());
            }
        }
        Ok(())
    }

    pub(super) async fn create(
        &self,
        snapshot: &str,
        devices: &[String],
        fault: Option<&ArgFault>,
        expect: &Expect,
    ) -> Result<(), StepError> {
        let devs: Vec<BlkSnapDev> = devices.iter().map(|d| blk_dev(self.dev(d))).collect();
        let arg = BlkSnapSnapshotCreate {
            count: Self::count(devs.len(), fault),
            dev_id_array: self.map_array(&devs, fault),
            ..Default::default()
        };
        let (result, addr) = self
            .ioctl(IOCTL_BLK_SNAP_SNAPSHOT_CREATE, &arg, fault)
            .await;
        if result.is_ok() {
            let out: BlkSnapSnapshotCreate =
                self.read_back(addr).ok_or("CREATE: struct unreadable")?;
            self.created(snapshot, out.id.b);
        }
        check_expect(expect, result)
    }

    pub(super) async fn append(
        &self,
        snapshot: &str,
        device: &str,
        ranges: &[(u64, u64)],
        fault: Option<&ArgFault>,
        expect: &Expect,
    ) -> Result<(), StepError> {
        let ranges: Vec<BlkSnapBlockRange> = ranges
            .iter()
            .map(|&(sector_offset, sector_count)| BlkSnapBlockRange {
                sector_offset,
                sector_count,
            })
            .collect();
        let arg = BlkSnapSnapshotAppendStorage {
            id: self.uuid(snapshot),
            dev_id: blk_dev(self.dev(device)),
            count: Self::count(ranges.len(), fault),
            ranges: self.map_array(&ranges, fault),
        };
        let (result, _) = self
            .ioctl(IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE, &arg, fault)
            .await;
        check_expect(expect, result)
    }

    pub(super) async fn take(
        &self,
        snapshot: &str,
        fault: Option<&ArgFault>,
        expect: &Expect,
    ) -> Result<(), StepError> {
        let arg = BlkSnapSnapshotTake {
            id: self.uuid(snapshot),
        };
        let start = self.sim.now();
        // The oracle keeps the history this TAKE's window needs until bound.
        let _hold = crate::check::point_in_time::HistoryHold::new(&self.sim, start);
        let (result, _) = self.ioctl(IOCTL_BLK_SNAP_SNAPSHOT_TAKE, &arg, fault).await;
        let end = self.sim.now();
        check_expect(expect, result)?;
        if result.is_ok() {
            // The runner's own COLLECT_IMAGES, to learn the images. A DESTROY
            // that overlapped the TAKE may have removed the snapshot since:
            // nothing is left to bind then (it is not the TAKE's result).
            let Some(pairs) = self.collect_taken_images(arg.id).await? else {
                return Ok(());
            };
            crate::check::fs_take::taken(&self.sim, &pairs, start, end);
            self.bind_images(arg.id.b, pairs, start, end);
        }
        Ok(())
    }

    /// The runner's own COLLECT_IMAGES after a TAKE, as a backup tool calls
    /// it: an ENOMEM that the sim caused by failing an allocation inside the
    /// call is retried (v2 allocates the image array with GFP_KERNEL, and a
    /// tool retries ENOMEM). `None`: nothing to bind, because a DESTROY
    /// removed the snapshot or every attempt hit an injected allocation
    /// failure (then a failure caused by a declared fault is recorded).
    /// It asks for `id`, the snapshot the TAKE took, never for the name
    /// again: a CREATE of the same name that returns meanwhile gives the
    /// name to a new, untaken snapshot (ENODEV), and moves the taken one to
    /// a hidden name whose images stay its own (finding f16).
    async fn collect_taken_images(
        &self,
        id: BlkSnapUuid,
    ) -> Result<Option<Vec<(DevT, DevT)>>, StepError> {
        const ATTEMPTS: u32 = 4;
        const WHAT: &str = "COLLECT_IMAGES after a successful TAKE: expected success";
        let mut ended = self.sim.now();
        for _ in 0..ATTEMPTS {
            let images = self.images_call_of(id, None).await;
            let errno = match images.result {
                Ok(_) => return Ok(Some(images.pairs)),
                Err(_) if self.destroying_id(id.b) => return Ok(None),
                Err(errno) => errno,
            };
            let (began, end) = images.window;
            ended = end;
            if !crate::ctl::enomem_injected(&self.sim, Err(errno), began, end) {
                let cause = Cause::CollectAfterTake { got: errno };
                return Err(StepError::new(cause, format!("{WHAT}, got {errno}")));
            }
        }
        let enomem = Errno::ENOMEM;
        let message = format!("{WHAT}, got {enomem} ({ATTEMPTS} attempts, each failed by the sim)");
        self.sim.fail_by_fault("expect", message, ended);
        Ok(None)
    }

    pub(super) async fn destroy(
        &self,
        snapshot: &str,
        fault: Option<&ArgFault>,
        expect: &Expect,
    ) -> Result<(), StepError> {
        self.drain_events(snapshot).await;
        // From here the images may go away: their IO may fail. (A snapshot
        // destroyed before keeps its images marked gone.) The marks go to
        // the snapshot this DESTROY names, by id: a concurrent CREATE may
        // give the name to a new snapshot while the ioctl runs.
        let record = self.record(snapshot);
        let id = record.id;
        self.destroying(id, true);
        let live_images: Vec<DevT> = if record.destroyed {
            Vec::new()
        } else {
            record.images.values().copied().collect()
        };
        let now = self.sim.now();
        for image in &live_images {
            self.sim.oracle.borrow_mut().image_going(*image, now);
        }
        let arg = BlkSnapSnapshotDestroy {
            id: self.uuid(snapshot),
        };
        let (result, _) = self
            .ioctl(IOCTL_BLK_SNAP_SNAPSHOT_DESTROY, &arg, fault)
            .await;
        if result.is_ok() {
            self.destroyed(id);
        } else if result != Err(Errno::ENODEV) {
            // Nothing went away after all (-ENODEV: it is gone, or going
            // under a concurrent DESTROY).
            self.destroying(id, false);
            for image in &live_images {
                self.sim.oracle.borrow_mut().image_staying(*image);
            }
        }
        check_expect(expect, result)
    }

    /// Read every queued event, as a watcher would, so the oracle learns of
    /// corruption before the snapshot (and its queue) goes.
    ///
    /// An empty queue is read again once an event allocation that was in
    /// reclaim has returned: v2 raises the corrupt flag, then allocates
    /// the corrupted event (GFP_NOIO, which may sleep) and queues it only
    /// then, so a failed image read can come before its event is in the
    /// queue (finding f13d). A careful user looks once more.
    ///
    /// WAIT_EVENT allocates its copy of the event before it dequeues, so
    /// ENOMEM (an injected allocation failure) says nothing of the queue:
    /// the watcher asks again. If it keeps failing, the events are as lost
    /// to the user as if the module had gone (`Oracle::events_lost`).
    pub(super) async fn drain_events(&self, snapshot: &str) {
        /// WAIT_EVENTs failed with ENOMEM in a row after which the queue
        /// counts as unreadable.
        const NOMEM_TRIES: u32 = 16;
        let id = self.record(snapshot).id;
        let mut nomem = 0;
        for _ in 0..1024 {
            match self.wait_event_raw(id, 0, None).await {
                Ok(_) => nomem = 0,
                Err(Errno::ENOENT) if self.event_allocation_returned().await => {}
                Err(Errno::ENOMEM) if nomem < NOMEM_TRIES => nomem += 1,
                Err(Errno::ENOMEM) => {
                    let now = self.sim.now();
                    self.sim.oracle.borrow_mut().events_lost([id], now);
                    return;
                }
                Err(_) => return,
            }
        }
    }

    /// Wait while an `event` allocation is in reclaim. True if one was and
    /// has returned; false if none was, or it has not returned within the
    /// bound (its task died: power loss).
    async fn event_allocation_returned(&self) -> bool {
        /// How often to look, and for how long at most (GFP_NOIO reclaim
        /// sleeps up to 200 us in the sim; GFP_KERNEL up to 2 ms).
        const LOOK_NS: u64 = 10_000;
        const LOOKS: u32 = 1_000;
        if !self.sim.reclaiming(EVENT_SITE) {
            return false;
        }
        for _ in 0..LOOKS {
            self.sim.sleep(LOOK_NS).await;
            if !self.sim.reclaiming(EVENT_SITE) {
                return true;
            }
        }
        false
    }

    pub(super) async fn collect(
        &self,
        expect_snapshots: Option<&[String]>,
        expect_count: Option<u32>,
        fault: Option<&ArgFault>,
        expect: &Expect,
    ) -> Result<(), StepError> {
        let query = BlkSnapSnapshotCollect::default();
        // The count query is part of the step: its error is judged by the
        // step's `expect` as the call's own would be (no module: ENODEV).
        let count = match self
            .count_first(IOCTL_BLK_SNAP_SNAPSHOT_COLLECT, query, fault, |c| c.count)
            .await
        {
            Ok(count) => count,
            Err(e) => {
                return check_expect(expect, Err(e))
                    .map_err(|m| m.prefixed(format_args!("COLLECT (count): ")))
            }
        };
        let ids = vec![BlkSnapUuid::default(); array_items(count)];
        let arg = BlkSnapSnapshotCollect {
            count,
            ids: self.map_array(&ids, fault),
        };
        let (result, addr) = self
            .ioctl(IOCTL_BLK_SNAP_SNAPSHOT_COLLECT, &arg, fault)
            .await;
        check_expect(expect, result)?;
        let written = self
            .read_back::<BlkSnapSnapshotCollect>(addr)
            .map(|c| c.count);
        check_count("COLLECT", written, expect_count)?;
        let Some(expected) = expect_snapshots else {
            return Ok(());
        };
        let got: Vec<String> = (0..array_items(written.unwrap_or(0)) as u64)
            .filter_map(|i| self.user.read(arg.ids + i * 16, 16))
            .map(|b| self.snapshot_name(&b))
            .collect();
        if got != expected {
            return Err(format!("COLLECT listed {got:?}, expected {expected:?}").into());
        }
        Ok(())
    }

    /// COLLECT_IMAGES twice, as the library does: count, then the array.
    pub(super) async fn collect_images(
        &self,
        snapshot: &str,
        expect_count: Option<u32>,
        fault: Option<&ArgFault>,
        expect: &Expect,
    ) -> Result<Vec<(DevT, DevT)>, StepError> {
        let images = self.images_call(snapshot, fault).await;
        check_expect(expect, images.result)?;
        if let Some(written) = images.written {
            check_count("COLLECT_IMAGES", Some(written), expect_count)?;
        }
        Ok(images.pairs)
    }

    /// COLLECT_IMAGES as user space calls it: the count query, then the
    /// array. The errno stays typed, for the callers that judge it.
    async fn images_call(&self, snapshot: &str, fault: Option<&ArgFault>) -> ImagesCall {
        self.images_call_of(self.uuid(snapshot), fault).await
    }

    /// [`images_call`](Self::images_call) of the snapshot with this id.
    async fn images_call_of(&self, id: BlkSnapUuid, fault: Option<&ArgFault>) -> ImagesCall {
        let query = BlkSnapSnapshotCollectImages {
            id,
            ..Default::default()
        };
        let cmd = IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES;
        let began = self.sim.now();
        let count = match self.count_first(cmd, query, fault, |c| c.count).await {
            Ok(count) => count,
            Err(e) => return ImagesCall::failed(Err(e), None, (began, self.sim.now())),
        };
        let infos = vec![BlkSnapImageInfo::default(); array_items(count)];
        let arg = BlkSnapSnapshotCollectImages {
            id,
            count,
            image_info_array: self.map_array(&infos, fault),
        };
        let began = self.sim.now();
        let (result, addr) = self.ioctl(cmd, &arg, fault).await;
        let window = (began, self.sim.now());
        let written = self
            .read_back::<BlkSnapSnapshotCollectImages>(addr)
            .map_or(0, |c| c.count);
        if result.is_err() {
            return ImagesCall::failed(result, Some(written), window);
        }
        let size = BlkSnapImageInfo::SIZE as u64;
        let pairs = (0..array_items(count.min(written)) as u64)
            .filter_map(|i| self.read_back::<BlkSnapImageInfo>(arg.image_info_array + i * size))
            .map(|info| (dev_t(info.orig_dev_id), dev_t(info.image_dev_id)))
            .collect();
        ImagesCall {
            result,
            written: Some(written),
            pairs,
            window,
        }
    }

    pub(super) async fn wait_event_raw(
        &self,
        id: [u8; 16],
        timeout_ms: u32,
        fault: Option<&ArgFault>,
    ) -> Result<BlkSnapSnapshotEvent, Errno> {
        // The 4 KiB argument is mapped and dropped before the call sleeps,
        // so that it is no part of the future of every step that may wait
        // (issue 10: those futures are boxed and moved per branch).
        let addr = self.map_struct(
            &BlkSnapSnapshotEvent {
                id: BlkSnapUuid { b: id },
                timeout_ms,
                ..Default::default()
            },
            fault,
        );
        let from = self.sim.now();
        let result = self
            .ioctl_at(IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT, addr)
            .await;
        // The oracle learns which WAIT_EVENT came last, and whether it
        // could read the queue (an unread corrupted event excuses failed
        // image reads only when the sim kept the user from reading it).
        self.sim
            .oracle
            .borrow_mut()
            .wait_event_result(id, from, self.sim.now(), result.err());
        result?;
        let event: BlkSnapSnapshotEvent = self.read_back(addr).ok_or(Errno::EFAULT)?;
        self.sim.record(TraceEvent::Event {
            code: event.code,
            time_label: event.time_label,
        });
        let requested = low_space_request(&event);
        self.sim.series.borrow_mut().event(
            self.sim.now(),
            id,
            event.code,
            event.time_label,
            requested,
        );
        if event.code == EVENT_CORRUPTED {
            if let Some(payload) = BlkSnapEventCorrupted::decode(&event.data) {
                let orig = dev_t(payload.orig_dev_id);
                self.sim
                    .oracle
                    .borrow_mut()
                    .corrupted_event(id, orig, event.time_label as u64);
            }
        }
        Ok(event)
    }

    pub(super) async fn wait_event(
        &self,
        snapshot: &str,
        timeout_ms: u32,
        fault: Option<&ArgFault>,
        expect: &EventExpect,
    ) -> Result<(), StepError> {
        let result = self
            .wait_event_raw(self.record(snapshot).id, timeout_ms, fault)
            .await;
        let ok = match (expect, &result) {
            (EventExpect::Any, _) => true,
            (EventExpect::None, Err(e)) => *e == Errno::ENOENT,
            (EventExpect::Err(name), Err(e)) => e.name() == name,
            (EventExpect::LowFreeSpace(want), Ok(event)) => low_space_request(event) == Some(*want),
            (EventExpect::Corrupted(device, errno), Ok(event)) => {
                let payload = BlkSnapEventCorrupted::decode(&event.data);
                event.code == EVENT_CORRUPTED
                    && payload.is_some_and(|p| {
                        dev_t(p.orig_dev_id) == self.dev(device)
                            && Errno::from_name(errno).is_some_and(|e| e.0 == p.err_code)
                    })
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected event {expect:?}, got {}", describe_event(&result)).into())
        }
    }

    pub(super) async fn tracker_remove(
        &self,
        device: &str,
        fault: Option<&ArgFault>,
        expect: &Expect,
    ) -> Result<(), StepError> {
        let arg = BlkSnapTrackerRemove {
            dev_id: blk_dev(self.dev(device)),
        };
        let (result, _) = self.ioctl(IOCTL_BLK_SNAP_TRACKER_REMOVE, &arg, fault).await;
        check_expect(expect, result)
    }

    pub(super) async fn tracker_collect(
        &self,
        expect_count: Option<u32>,
        expect_entries: Option<&[CbtExpect]>,
        fault: Option<&ArgFault>,
        expect: &Expect,
    ) -> Result<(), StepError> {
        let query = BlkSnapTrackerCollect::default();
        // The count query is part of the step: its error is judged by the
        // step's `expect` as the call's own would be (no module: ENODEV).
        let count = match self
            .count_first(IOCTL_BLK_SNAP_TRACKER_COLLECT, query, fault, |c| c.count)
            .await
        {
            Ok(count) => count,
            Err(e) => {
                return check_expect(expect, Err(e))
                    .map_err(|m| m.prefixed(format_args!("TRACKER_COLLECT (count): ")))
            }
        };
        let infos = vec![BlkSnapCbtInfo::default(); array_items(count)];
        let arg = BlkSnapTrackerCollect {
            count,
            cbt_info_array: self.map_array(&infos, fault),
        };
        let (result, addr) = self
            .ioctl(IOCTL_BLK_SNAP_TRACKER_COLLECT, &arg, fault)
            .await;
        check_expect(expect, result)?;
        let written = self
            .read_back::<BlkSnapTrackerCollect>(addr)
            .map(|c| c.count);
        check_count("TRACKER_COLLECT", written, expect_count)?;
        let Some(entries) = expect_entries else {
            return Ok(());
        };
        let size = BlkSnapCbtInfo::SIZE as u64;
        let got: Vec<BlkSnapCbtInfo> = (0..array_items(count) as u64)
            .filter_map(|i| self.read_back(arg.cbt_info_array + i * size))
            .collect();
        if got.len() != entries.len() {
            return Err(format!(
                "TRACKER_COLLECT gave {} entries, expected {}",
                got.len(),
                entries.len()
            )
            .into());
        }
        got.iter()
            .zip(entries)
            .try_for_each(|(info, want)| self.check_cbt_info(info, want))
    }

    fn check_cbt_info(&self, info: &BlkSnapCbtInfo, want: &CbtExpect) -> Result<(), StepError> {
        let dev = dev_t(info.dev_id);
        let mismatch = |what: &str, got: String, exp: String| {
            Err(format!("cbt_info of {dev}: {what} is {got}, expected {exp}").into())
        };
        if dev != self.dev(&want.device) {
            return mismatch("device", dev.to_string(), want.device.clone());
        }
        let checks = [
            (
                "blk_size",
                want.blk_size.map(u64::from),
                u64::from(info.blk_size),
            ),
            (
                "blk_count",
                want.blk_count.map(u64::from),
                u64::from(info.blk_count),
            ),
            (
                "device_capacity",
                want.device_capacity,
                info.device_capacity,
            ),
            (
                "snap_number",
                want.snap_number.map(u64::from),
                u64::from(info.snap_number),
            ),
        ];
        for (what, expected, got) in checks {
            if let Some(expected) = expected.filter(|e| *e != got) {
                return mismatch(what, got.to_string(), expected.to_string());
            }
        }
        match &want.generation {
            Some(name) => self.check_generation(name, info.generation_id.b),
            None => Ok(()),
        }
    }

    /// Name generations: the first use of a name records the id; `new:NAME`
    /// requires an id different from every generation named so far.
    fn check_generation(&self, name: &str, id: [u8; 16]) -> Result<(), StepError> {
        let mut generations = self.generations.borrow_mut();
        if let Some(name) = name.strip_prefix("new:") {
            if generations.values().any(|g| *g == id) {
                return Err(format!("generation '{name}' is not new").into());
            }
            generations.insert(name.to_string(), id);
            return Ok(());
        }
        match generations.get(name) {
            Some(known) if *known != id => Err(format!("generation changed from '{name}'").into()),
            Some(_) => Ok(()),
            None => {
                generations.insert(name.to_string(), id);
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn read_cbt_map(
        &self,
        device: &str,
        offset: u32,
        length: u32,
        save: Option<&str>,
        same_as: Option<&str>,
        expect_bytes: &[(u32, u8)],
        expect_len: Option<i64>,
        fault: Option<&ArgFault>,
        expect: &Expect,
    ) -> Result<(), StepError> {
        let buff = match fault {
            Some(ArgFault::ArrayNull) => 0,
            Some(ArgFault::ArrayUnmapped) => UNMAPPED,
            Some(ArgFault::ArrayShort(n)) => self.map_user(vec![0; cbt_buffer_bytes(*n)]),
            _ => self.map_user(vec![0; cbt_buffer_bytes(length)]),
        };
        let arg = BlkSnapTrackerReadCbtBitmap {
            dev_id: blk_dev(self.dev(device)),
            offset,
            length,
            buff,
        };
        let (result, _) = self
            .ioctl(IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP, &arg, fault)
            .await;
        check_expect(expect, result)?;
        let Ok(copied) = result else { return Ok(()) };
        if let Some(want) = expect_len.filter(|w| *w != copied) {
            return Err(format!("READ_CBT_MAP returned {copied}, expected {want}").into());
        }
        let bytes = self.user.read(buff, copied as usize).unwrap_or_default();
        self.check_cbt_bytes(&bytes, save, same_as, expect_bytes)
    }

    fn check_cbt_bytes(
        &self,
        bytes: &[u8],
        save: Option<&str>,
        same_as: Option<&str>,
        expect_bytes: &[(u32, u8)],
    ) -> Result<(), StepError> {
        for &(index, value) in expect_bytes {
            let got = bytes.get(index as usize).copied();
            if got != Some(value) {
                return Err(format!("CBT byte {index} is {got:?}, expected {value}").into());
            }
        }
        if let Some(name) = same_as {
            let maps = self.cbt_maps.borrow();
            let saved = maps
                .get(name)
                .ok_or(format!("no CBT map saved as '{name}'"))?;
            if let Some(i) =
                (0..saved.len().max(bytes.len())).find(|&i| saved.get(i) != bytes.get(i))
            {
                return Err(format!(
                    "CBT map differs from '{name}' at byte {i}: {:?} vs {:?} (lengths {} and {})",
                    bytes.get(i),
                    saved.get(i),
                    bytes.len(),
                    saved.len()
                )
                .into());
            }
        }
        if let Some(name) = save {
            self.cbt_maps
                .borrow_mut()
                .insert(name.to_string(), bytes.to_vec());
        }
        Ok(())
    }

    pub(super) async fn mark_dirty(
        &self,
        target: &Target,
        ranges: &[(u64, u64)],
        fault: Option<&ArgFault>,
        expect: &Expect,
    ) -> Result<(), StepError> {
        let dev = match target {
            Target::Original(device) => self.dev(device),
            // An image that does not exist: any minor of the image major.
            Target::Image(..) => self
                .target_dev(target)
                .unwrap_or(DevT::new(crate::kernel::IMAGE_MAJOR, 0xfffff)),
        };
        let ranges: Vec<BlkSnapBlockRange> = ranges
            .iter()
            .map(|&(sector_offset, sector_count)| BlkSnapBlockRange {
                sector_offset,
                sector_count,
            })
            .collect();
        let arg = BlkSnapTrackerMarkDirtyBlocks {
            dev_id: blk_dev(dev),
            count: Self::count(ranges.len(), fault),
            dirty_blocks_array: self.map_array(&ranges, fault),
        };
        let (result, _) = self
            .ioctl(IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS, &arg, fault)
            .await;
        check_expect(expect, result)
    }
}

/// Where the stretch loop takes its storage from.
pub(super) struct StretchPlan {
    pub device: String,
    pub from: u64,
    pub limit: u64,
    pub timeout_ms: u32,
}

impl Run {
    /// A `Stretch` step, taken apart here so that the runner's dispatch
    /// does not import this module (the runner and its step modules in one
    /// direction: steps -> runner).
    pub(super) async fn stretch_step(&self, step: &Step) -> Result<(), StepError> {
        let Step::Stretch {
            snapshot,
            device,
            from,
            limit,
            timeout_ms,
            expect_portions,
            expect_corrupted,
        } = step
        else {
            return Err(format!("bench error: stretch_step given {step:?}").into());
        };
        let plan = StretchPlan {
            device: device.clone(),
            from: *from,
            limit: *limit,
            timeout_ms: *timeout_ms,
        };
        self.stretch(snapshot, &plan, *expect_portions, *expect_corrupted)
            .await
    }

    /// The event loop of the upstream library and stretch tool (spec 11.0).
    pub(super) async fn stretch(
        &self,
        snapshot: &str,
        plan: &StretchPlan,
        expect_portions: Option<u64>,
        expect_corrupted: Option<bool>,
    ) -> Result<(), StepError> {
        let id = self.record(snapshot).id;
        let (mut next, mut appended, mut portions, mut corrupted) = (plan.from, 0u64, 0u64, false);
        let mut stopped_by = String::from("the loop bound");
        // Bounded: a stretch loop that never ends is a hang, not a test.
        for _ in 0..1_000_000 {
            // Each wait is charged to the run's work budget; the loop may
            // not outlive it, and drops each round's argument memory.
            self.unmap_step_memory();
            if self.out_of_budget() {
                stopped_by = "the work budget".into();
                break;
            }
            self.charge_wait();
            // Only the code and the request outlive the wait: a 4 KiB
            // event held across the APPEND below would grow this future.
            let waited = self
                .wait_event_raw(id, plan.timeout_ms, None)
                .await
                .map(|event| (event.code, low_space_request(&event).unwrap_or(0)));
            match waited {
                Ok((code, requested)) if code == EVENT_LOW_FREE_SPACE => {
                    if appended >= plan.limit {
                        continue;
                    }
                    let range = [(next, requested)];
                    self.append(snapshot, &plan.device, &range, None, &Expect::Any)
                        .await?;
                    next = next.saturating_add(requested);
                    appended = appended.saturating_add(requested);
                    portions += 1;
                }
                Ok((code, _)) if code == EVENT_CORRUPTED => {
                    corrupted = true;
                    stopped_by = "a corrupted event".into();
                    break;
                }
                Ok(_) | Err(Errno::ENOENT) | Err(Errno::EINTR) => {}
                Err(e) => {
                    stopped_by = format!("WAIT_EVENT {e}");
                    break;
                }
            }
        }
        if let Some(want) = expect_portions.filter(|w| *w != portions) {
            return Err(format!(
                "stretch appended {portions} portions, expected {want} (stopped by {stopped_by})"
            )
            .into());
        }
        if let Some(want) = expect_corrupted.filter(|w| *w != corrupted) {
            return Err(format!(
                "stretch saw corrupted: {corrupted}, expected {want} (stopped by {stopped_by})"
            )
            .into());
        }
        Ok(())
    }
}

/// The sectors a low free space event asks for (None for another event).
fn low_space_request(event: &BlkSnapSnapshotEvent) -> Option<u64> {
    (event.code == EVENT_LOW_FREE_SPACE)
        .then(|| BlkSnapEventLowFreeSpace::decode(&event.data))
        .flatten()
        .map(|p| p.requested_nr_sect)
}

/// Elements mapped for an array whose count field says `count`: a lying
/// count (a `Count` fault) must not size a buffer the host cannot hold; a
/// shorter array only makes copies past its end fault.
pub(super) fn array_items(count: u32) -> usize {
    u64::from(count).min(MAX_ARRAY_ITEMS) as usize
}

/// Bytes mapped for a CBT map buffer of `length` bytes (at least one).
pub(super) fn cbt_buffer_bytes(length: u32) -> usize {
    u64::from(length).clamp(1, MAX_CBT_MAP_BYTES) as usize
}

/// What one COLLECT_IMAGES (count query and array call) returned.
struct ImagesCall {
    /// The last ioctl's result.
    result: Result<i64, Errno>,
    /// The count the array call wrote back (None: the query failed first).
    written: Option<u32>,
    /// The images read back (none on an error).
    pairs: Vec<(DevT, DevT)>,
    /// When the last ioctl began and ended, to tell an injected ENOMEM.
    window: (u64, u64),
}

impl ImagesCall {
    fn failed(result: Result<i64, Errno>, written: Option<u32>, window: (u64, u64)) -> Self {
        Self {
            result,
            written,
            pairs: Vec::new(),
            window,
        }
    }
}

/// The count an ioctl wrote back, against the step's expectation.
fn check_count(name: &str, written: Option<u32>, expected: Option<u32>) -> Result<(), StepError> {
    match expected {
        Some(want) if written != Some(want) => {
            Err(format!("{name} wrote count {written:?}, expected {want}").into())
        }
        _ => Ok(()),
    }
}

fn describe_event(result: &Result<BlkSnapSnapshotEvent, Errno>) -> String {
    match result {
        Err(e) => format!("error {e}"),
        Ok(event) if event.code == EVENT_LOW_FREE_SPACE => {
            let payload = BlkSnapEventLowFreeSpace::decode(&event.data);
            format!("low_free_space({:?})", payload.map(|p| p.requested_nr_sect))
        }
        Ok(event) if event.code == EVENT_CORRUPTED => {
            let payload = BlkSnapEventCorrupted::decode(&event.data);
            format!(
                "corrupted({:?})",
                payload.map(|p| (dev_t(p.orig_dev_id).to_string(), p.err_code))
            )
        }
        Ok(event) => format!("event code {}", event.code),
    }
}
