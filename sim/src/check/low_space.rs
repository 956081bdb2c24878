//! Events rules 7 to 9: what a low-free-space event a WAIT_EVENT returns
//! may ask for, how many may come, and none after the overflow. Judged from
//! the ioctls (`ctl.rs`: each CREATE's window, each APPEND_STORAGE's window
//! and the sectors its ranges offer, each event a WAIT_EVENT returned), the
//! values the user gave `diff_storage_minimum` (`SetParam`), and, for rule
//! 9 alone, whether the kernel's allocator is reclaiming for an event or a
//! region descriptor (the kernel's state, as storage rule 3 reads it).
//!
//! 7. a low-free-space event asks for a value `diff_storage_minimum` held
//!    between the start of the CREATE that made the snapshot and the
//!    event's label. The creation's event and every later one ask for the
//!    parameter as read when the event was raised, never a running total
//!    (spec 1.4, 6.1, 6.3 step 5).
//! 8. after the creation's low-free-space event, the events labelled up to
//!    any time L number at most one more than the APPEND_STORAGE calls that
//!    could have re-armed the event by L. The engine raises one when its
//!    flag goes from 0 to 1; only the end of an APPEND clears the flag, and
//!    only if the capacity then reaches `requested` (spec 6.2 step 4, 6.3
//!    step 5). The k-th clear that matters follows the k-th raise, when
//!    `requested` is M·(k+1) (M grows it at every raise and was its start),
//!    so it needs that much capacity; the capacity is at most the sectors
//!    of the APPENDs that had begun. Each APPEND clears once, between its
//!    start and its return, and before the raise it allows (which comes
//!    before that event's label). The creation's event is the one labelled
//!    before the CREATE returned (a region, which raises the others, needs a
//!    TAKE of the id CREATE returns). If M changed since the CREATE, or is
//!    no positive sector count, any APPEND counts as a clear.
//! 9. once a WAIT_EVENT returned the snapshot's corrupted event with ENOSPC
//!    (only an overflow corrupts with ENOSPC, as storage rule 3 says), no
//!    low-free-space event of the snapshot is labelled after a time S from
//!    which none could still come. After the overflow every region request
//!    fails at once (spec 6.3 step 1, 6.5), but two legitimate windows
//!    remain, and S is the first look (a WAIT_EVENT that returns the
//!    corrupted event, or any later WAIT_EVENT's start) at which neither is
//!    open:
//!    - a region taken before the overflow may have raised the flag and be
//!      allocating its event (GFP_NOIO: it may sleep in reclaim), so it is
//!      queued after the overflow, after the user saw the corrupted event
//!      even (events are FIFO, and the corrupted one may be queued first);
//!    - a region request that passed the overflow check before the
//!      overflow and sleeps allocating its descriptor (GFP_NOIO) takes its
//!      region later, from a range appended after the overflow, and may
//!      raise the event then (the flag re-armed by that APPEND).
//!
//!    In the sim's kernel an allocation sleeps only in reclaim, and nothing
//!    else sleeps between the overflow check and the first fit, or between
//!    the raise and the queueing, so at a moment when no allocation of an
//!    event or a region descriptor is in reclaim neither window is open,
//!    and after the overflow none opens again. (On SMP hardware another CPU
//!    could also be between its first fit and its event's queueing without
//!    sleeping; the sim's one CPU has no such window.)

use std::collections::BTreeMap;

type Id = [u8; 16];

/// Rules 7 to 9's record.
#[derive(Default)]
pub struct Requests {
    /// `diff_storage_minimum` over time, oldest first: (since, value), seen
    /// at each CREATE's start or set by the user.
    minimum: Vec<(u64, u64)>,
    snapshots: BTreeMap<Id, Record>,
}

/// One snapshot, from its CREATE.
struct Record {
    /// When its CREATE began and returned.
    began: u64,
    ended: u64,
    appends: Vec<Append>,
    /// Labels of the low-free-space events WAIT_EVENTs returned after the
    /// creation's.
    labels: Vec<i64>,
    overflow: Overflow,
}

/// One APPEND_STORAGE of the snapshot.
struct Append {
    began: u64,
    ended: Option<u64>,
    /// The sectors its readable ranges offer: the most it can add.
    sectors: u64,
}

/// Rule 9's view of the overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overflow {
    /// No WAIT_EVENT returned the snapshot's corrupted(ENOSPC) event yet.
    Unseen,
    /// One did, but an allocation that may still raise an event was in
    /// reclaim at every look since.
    Open,
    /// No low-free-space event may be labelled after this time.
    Closed(u64),
}

/// An APPEND_STORAGE in flight, to hand back at its end.
pub struct AppendToken {
    id: Id,
    created: u64,
    index: usize,
}

impl Requests {
    /// `diff_storage_minimum` is `value` at `now` (a CREATE's start, or the
    /// user set it).
    pub fn minimum(&mut self, now: u64, value: u64) {
        if self.minimum.last().is_none_or(|&(_, v)| v != value) {
            self.minimum.push((now, value));
        }
    }

    /// A CREATE that began at `began` and returned at `ended` made `id`.
    pub fn created(&mut self, id: Id, began: u64, ended: u64) {
        let record = Record {
            began,
            ended,
            appends: Vec::new(),
            labels: Vec::new(),
            overflow: Overflow::Unseen,
        };
        self.snapshots.insert(id, record);
    }

    /// An APPEND_STORAGE of `id` begins at `now`, its ranges offering
    /// `sectors` in all.
    pub fn append_begins(&mut self, id: Id, now: u64, sectors: u64) -> Option<AppendToken> {
        let record = self.snapshots.get_mut(&id)?;
        record.appends.push(Append {
            began: now,
            ended: None,
            sectors,
        });
        Some(AppendToken {
            id,
            created: record.began,
            index: record.appends.len() - 1,
        })
    }

    /// The APPEND of `token` returned at `now`.
    pub fn append_ends(&mut self, token: AppendToken, now: u64) {
        // The id may have been made again since (a CREATE after a DESTROY).
        let append = self
            .snapshots
            .get_mut(&token.id)
            .filter(|r| r.began == token.created)
            .and_then(|r| r.appends.get_mut(token.index));
        if let Some(append) = append {
            append.ended = Some(now);
        }
    }

    /// A WAIT_EVENT returned `id`'s corrupted event with ENOSPC at `now`;
    /// `reclaiming`: whether an event or region descriptor allocation is in
    /// reclaim now.
    pub fn overflow_seen(&mut self, id: Id, now: u64, reclaiming: impl Fn() -> bool) {
        if let Some(record) = self.snapshots.get_mut(&id) {
            if record.overflow == Overflow::Unseen {
                record.overflow = Overflow::Open;
            }
        }
        self.look(id, now, reclaiming);
    }

    /// A look at `now` (a WAIT_EVENT of `id` begins): if the overflow is
    /// known and no allocation that may still raise an event is in reclaim,
    /// none may come after now.
    pub fn look(&mut self, id: Id, now: u64, reclaiming: impl Fn() -> bool) {
        let Some(record) = self.snapshots.get_mut(&id) else {
            return;
        };
        if record.overflow == Overflow::Open && !reclaiming() {
            record.overflow = Overflow::Closed(now);
        }
    }

    /// A WAIT_EVENT returned `id`'s low-free-space event labelled `label`
    /// asking for `requested` sectors: rules 7, 9 and 8 (a failure's
    /// message does not name the snapshot: `Events::low_space_event` does).
    pub fn low_space(&mut self, id: Id, label: i64, requested: u64) -> Result<(), String> {
        let Some(record) = self.snapshots.get_mut(&id) else {
            return Ok(());
        };
        let Ok(at) = u64::try_from(label) else {
            return Ok(());
        };
        let values = values_between(&self.minimum, record.began, at);
        asks_the_minimum(record, &values, label, requested)?;
        if at <= record.ended {
            return Ok(());
        }
        record.labels.push(label);
        none_after_overflow(record, label)?;
        let minimum = match values[..] {
            [m] if i64::try_from(m).is_ok_and(|m| m > 0) => Some(m),
            _ => None,
        };
        one_per_rearming(record, label, minimum)
    }
}

/// The values `diff_storage_minimum` held from `from` to `to`: the one it
/// had at `from` and every one set after, up to `to`.
fn values_between(history: &[(u64, u64)], from: u64, to: u64) -> Vec<u64> {
    let start = history.partition_point(|&(since, _)| since <= from);
    let first = start.checked_sub(1).map(|i| history[i].1);
    let later = history[start..]
        .iter()
        .take_while(|&&(since, _)| since <= to)
        .map(|&(_, v)| v);
    first.into_iter().chain(later).collect()
}

/// Rule 7.
fn asks_the_minimum(
    record: &Record,
    values: &[u64],
    label: i64,
    requested: u64,
) -> Result<(), String> {
    if values.is_empty() || values.contains(&requested) {
        return Ok(());
    }
    Err(format!(
        "a WAIT_EVENT returned a low-free-space event labelled {label} ns asking \
         for {requested} sectors, but diff_storage_minimum was {values:?} from the start of \
         the snapshot's CREATE ({} ns) to then: every low-free-space event asks for the \
         parameter's value, not a running total",
        record.began
    ))
}

/// Rule 9.
fn none_after_overflow(record: &Record, label: i64) -> Result<(), String> {
    let Overflow::Closed(closed) = record.overflow else {
        return Ok(());
    };
    if i128::from(label) <= i128::from(closed) {
        return Ok(());
    }
    Err(format!(
        "a WAIT_EVENT returned a low-free-space event labelled {label} ns, but a \
         WAIT_EVENT had returned the snapshot's corrupted event with ENOSPC, and at {closed} ns \
         no allocation of an event or a region descriptor was in reclaim: after an overflow \
         every region request fails at once, so no low-free-space event is raised later"
    ))
}

/// Rule 8.
fn one_per_rearming(record: &Record, label: i64, minimum: Option<u64>) -> Result<(), String> {
    let count = record.labels.iter().filter(|&&l| l <= label).count() as u64;
    let rearmed = rearmings_by(&record.appends, label, minimum);
    if count <= rearmed + 1 {
        return Ok(());
    }
    let why = match minimum {
        Some(m) => format!(
            "the k-th re-arming APPEND must bring the capacity up to what the engine then \
             requested, (k+1)·{m} sectors"
        ),
        None => "diff_storage_minimum changed, so any APPEND counted".to_string(),
    };
    Err(format!(
        "a WAIT_EVENT returned a low-free-space event labelled {label} ns, which \
         makes {count} after the creation's labelled by then, but at most {rearmed} \
         APPEND_STORAGE call(s) could have re-armed the event by then ({why}): the engine \
         raises one, then another only after an APPEND re-arms it"
    ))
}

/// The most clears of the flag the snapshot's APPENDs can have made by
/// `label`: each APPEND clears once, by its return, and the k-th clear
/// needs M·(k+1) sectors of capacity, which is at most what the APPENDs
/// begun by then offer. Latest clears first allow the most: take the
/// APPENDs by their last chance and count every one that can be the next.
fn rearmings_by(appends: &[Append], label: i64, minimum: Option<u64>) -> u64 {
    let by = |t: u64| i128::from(t) <= i128::from(label);
    let mut deadlines: Vec<u64> = appends
        .iter()
        .filter(|a| by(a.began))
        .map(|a| match a.ended.filter(|&e| by(e)) {
            Some(ended) => ended,
            None => u64::try_from(label).unwrap_or(0),
        })
        .collect();
    deadlines.sort_unstable();
    let mut clears = 0u64;
    for deadline in deadlines {
        let capacity: u64 = appends
            .iter()
            .filter(|a| a.began <= deadline)
            .fold(0, |sum, a| sum.saturating_add(a.sectors));
        let needed = minimum.map_or(0, |m| m.saturating_mul(clears + 2));
        if capacity >= needed {
            clears += 1;
        }
    }
    clears
}
