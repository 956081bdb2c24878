//! The record of every fault the sim injected, so the oracle can excuse
//! exactly what a fault explains and nothing more.
//!
//! Rule: a fault is recorded where the sim decides it (the allocation that
//! the fault plan fails, the device bio that ends with an injected or
//! bad-sector EIO, a device removal, a resize), with its virtual time. The
//! record is plain data: it knows nothing of the engine, only what the sim
//! did to it. Queries answer "did a fault of this kind, on this device,
//! over this sector range, happen in this window", never "did any fault
//! happen in the run".

use blksnap_core::kernel::{BioOp, DevT, Gfp};

/// What the sim did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// An allocation the fault plan refused (or one too large to grant).
    Alloc { site: String, gfp: Gfp },
    /// A device bio that ended with EIO because of the fault plan or a bad
    /// sector range.
    BioError {
        dev: DevT,
        op: BioOp,
        sector: u64,
        sectors: u64,
    },
    /// The device was removed (hot unplug).
    Removal { dev: DevT },
    /// The device's capacity changed.
    Resize { dev: DevT, old: u64, new: u64 },
    /// Power was cut: the device lost its volatile cache, which held
    /// `cached` writes (each kept, dropped or torn).
    PowerLoss { dev: DevT, cached: u64 },
    /// At power loss only sectors `kept` (start, count) of a cached write
    /// reached the media.
    TornWrite {
        dev: DevT,
        sector: u64,
        sectors: u64,
        kept: (u64, u64),
    },
    /// A bio took `extra_ns` longer (dm-delay).
    LatencySpike {
        dev: DevT,
        sector: u64,
        extra_ns: u64,
    },
    /// A read failed with EIO on sectors that heal on a later retry.
    TransientReadError {
        dev: DevT,
        sector: u64,
        sectors: u64,
    },
    /// A write the device acknowledged and never stored
    /// (`data_faults.rs`).
    LostWrite {
        dev: DevT,
        sector: u64,
        sectors: u64,
    },
    /// A write stored with garbage in these sectors.
    CorruptedWrite {
        dev: DevT,
        sector: u64,
        sectors: u64,
    },
    /// A write meant for `sector` and stored at `actual`.
    MisdirectedWrite {
        dev: DevT,
        sector: u64,
        actual: u64,
        sectors: u64,
    },
    /// The device was removed with `bios` of its bios in flight.
    RemovalInFlight { dev: DevT, bios: u64 },
}

impl FaultKind {
    /// A read that ended with an injected EIO: (device, sector, sectors).
    pub fn read_error(&self) -> Option<(DevT, u64, u64)> {
        match *self {
            FaultKind::BioError {
                dev,
                op: BioOp::Read,
                sector,
                sectors,
            }
            | FaultKind::TransientReadError {
                dev,
                sector,
                sectors,
            } => Some((dev, sector, sectors)),
            _ => None,
        }
    }

    /// The device the fault hit, if it hit one.
    pub fn device(&self) -> Option<DevT> {
        match self {
            FaultKind::Alloc { .. } => None,
            FaultKind::BioError { dev, .. }
            | FaultKind::Removal { dev }
            | FaultKind::Resize { dev, .. }
            | FaultKind::PowerLoss { dev, .. }
            | FaultKind::TornWrite { dev, .. }
            | FaultKind::LatencySpike { dev, .. }
            | FaultKind::TransientReadError { dev, .. }
            | FaultKind::RemovalInFlight { dev, .. }
            | FaultKind::LostWrite { dev, .. }
            | FaultKind::CorruptedWrite { dev, .. }
            | FaultKind::MisdirectedWrite { dev, .. } => Some(*dev),
        }
    }
}

/// One fault and when it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injected {
    pub at: u64,
    pub kind: FaultKind,
}

#[derive(Default)]
pub struct InjectedFaults {
    list: Vec<Injected>,
}

impl InjectedFaults {
    pub fn record(&mut self, at: u64, kind: FaultKind) {
        self.list.push(Injected { at, kind });
    }

    pub fn all(&self) -> &[Injected] {
        &self.list
    }

    /// How many faults of any kind were injected (a metric).
    pub fn count(&self) -> usize {
        self.list.len()
    }

    /// An allocation at `site` failed in [from, to] (any site if `site` is
    /// None).
    pub fn alloc_failed(&self, site: Option<&str>, from: u64, to: u64) -> bool {
        self.list.iter().any(|f| {
            f.at >= from
                && f.at <= to
                && matches!(&f.kind, FaultKind::Alloc { site: s, .. } if site.is_none_or(|want| s == want))
        })
    }

    /// The first failed allocation at `site` in [from, to].
    pub fn first_alloc_failure(&self, site: &str, from: u64, to: u64) -> Option<u64> {
        self.list
            .iter()
            .filter(|f| f.at >= from && f.at <= to)
            .find(|f| matches!(&f.kind, FaultKind::Alloc { site: s, .. } if s == site))
            .map(|f| f.at)
    }

    /// A bio of kind `op` (reads when `writes` is false, writes otherwise)
    /// on one of `devs` failed in [from, to].
    pub fn bio_failed(&self, devs: &[DevT], writes: bool, from: u64, to: u64) -> bool {
        self.list.iter().any(|f| {
            f.at >= from
                && f.at <= to
                && (matches!(f.kind, FaultKind::BioError { dev, op, .. }
                    if devs.contains(&dev) && op.is_write() == writes)
                    || matches!(f.kind, FaultKind::TransientReadError { dev, .. }
                    if devs.contains(&dev) && !writes))
        })
    }

    /// Power was cut on `dev` in [from, to].
    pub fn power_lost(&self, dev: DevT, from: u64, to: u64) -> bool {
        self.list.iter().any(|f| {
            f.at >= from
                && f.at <= to
                && matches!(f.kind, FaultKind::PowerLoss { dev: d, .. } if d == dev)
        })
    }

    /// A fault on `dev` in [from, to] that can change what it reads or
    /// holds (a latency spike changes only timing; allocation faults name
    /// no device).
    pub fn data_fault_on(&self, dev: DevT, from: u64, to: u64) -> bool {
        self.list.iter().any(|f| {
            f.at >= from
                && f.at <= to
                && f.kind.device() == Some(dev)
                && !matches!(f.kind, FaultKind::LatencySpike { .. })
        })
    }

    /// Silent data faults (lost, corrupted, misdirected writes) on one of
    /// `devs` in [from, to].
    pub fn data_faults(&self, devs: &[DevT], from: u64, to: u64) -> usize {
        self.list
            .iter()
            .filter(|f| f.at >= from && f.at <= to)
            .filter(|f| match f.kind {
                FaultKind::LostWrite { dev, .. }
                | FaultKind::CorruptedWrite { dev, .. }
                | FaultKind::MisdirectedWrite { dev, .. } => devs.contains(&dev),
                _ => false,
            })
            .count()
    }

    /// When `dev` was removed, if it was.
    pub fn removed_at(&self, dev: DevT) -> Option<u64> {
        self.list.iter().find_map(|f| match f.kind {
            FaultKind::Removal { dev: d } if d == dev => Some(f.at),
            _ => None,
        })
    }

    /// Whether `dev` was resized within [from, to].
    pub fn resized_within(&self, dev: DevT, (from, to): (u64, u64)) -> bool {
        self.list.iter().any(|f| {
            matches!(f.kind, FaultKind::Resize { dev: d, .. } if d == dev)
                && (from..=to).contains(&f.at)
        })
    }

    /// The first shrink of `dev` at or before `to`: (time, new capacity).
    pub fn shrunk_by(&self, dev: DevT, to: u64) -> Option<(u64, u64)> {
        self.list
            .iter()
            .filter(|f| f.at <= to)
            .find_map(|f| match f.kind {
                FaultKind::Resize { dev: d, old, new } if d == dev && new < old => {
                    Some((f.at, new))
                }
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: DevT = DevT(7 << 20);
    const B: DevT = DevT(7 << 20 | 1);

    #[test]
    fn queries_are_bounded_by_device_kind_and_time() {
        let mut f = InjectedFaults::default();
        f.record(
            10,
            FaultKind::Alloc {
                site: "event".into(),
                gfp: Gfp::Noio,
            },
        );
        f.record(
            20,
            FaultKind::BioError {
                dev: A,
                op: BioOp::Read,
                sector: 0,
                sectors: 8,
            },
        );
        f.record(30, FaultKind::Removal { dev: B });
        f.record(
            40,
            FaultKind::Resize {
                dev: A,
                old: 100,
                new: 50,
            },
        );
        assert!(f.alloc_failed(Some("event"), 0, 10));
        assert!(!f.alloc_failed(Some("event"), 11, 99));
        assert!(!f.alloc_failed(Some("chunk"), 0, 99));
        assert!(f.alloc_failed(None, 5, 15));
        assert!(f.bio_failed(&[A], false, 20, 20));
        assert!(!f.bio_failed(&[A], true, 0, 99));
        assert!(!f.bio_failed(&[B], false, 0, 99));
        assert!(!f.bio_failed(&[A], false, 21, 99));
        assert_eq!(f.removed_at(B), Some(30));
        assert_eq!(f.removed_at(A), None);
        assert_eq!(f.shrunk_by(A, 39), None);
        assert_eq!(f.shrunk_by(A, 40), Some((40, 50)));
        assert_eq!(f.count(), 4);
        // A silent data fault is not an IO error, and counts as its own.
        f.record(
            50,
            FaultKind::LostWrite {
                dev: B,
                sector: 0,
                sectors: 8,
            },
        );
        assert!(!f.bio_failed(&[B], true, 0, 99));
        assert_eq!(f.data_faults(&[B], 0, 99), 1);
        assert_eq!(f.data_faults(&[A], 0, 99), 0);
        assert_eq!(f.data_faults(&[B], 51, 99), 0);
    }
}
