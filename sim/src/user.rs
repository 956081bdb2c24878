//! A simulated user address space for ioctl arguments.
//!
//! Mappings are byte vectors at chosen addresses; everything else faults.
//! Scenarios use it to hand the engine good pointers, bad pointers and
//! arrays that end early, exactly as a buggy or hostile caller would.

use std::cell::RefCell;
use std::collections::BTreeMap;

use blksnap_core::kernel::{Errno, UserMemory};

/// Where the first mapping goes; low addresses stay unmapped, like NULL.
const BASE: u64 = 0x7f00_0000_0000;
/// Space left between mappings so that running off the end faults.
const GUARD: u64 = 0x1000;

/// An address that is never mapped (a wild pointer).
pub const UNMAPPED: u64 = 0x0000_dead_0000_0000;

#[derive(Default)]
pub struct UserSpace {
    maps: RefCell<BTreeMap<u64, Vec<u8>>>,
    /// Mappings that fault on write (start addresses).
    read_only: RefCell<std::collections::BTreeSet<u64>>,
    /// Mappings made for one step of a process (start -> task): unmapped
    /// when its step ends, so a long run does not keep every argument.
    owned: RefCell<BTreeMap<u64, u64>>,
    /// Bytes mapped now, and the most ever mapped at once.
    mapped: std::cell::Cell<usize>,
    peak: std::cell::Cell<usize>,
    /// Bytes ever mapped (a run's work budget counts them).
    total: std::cell::Cell<u64>,
}

impl UserSpace {
    /// Map `bytes` at a fresh address and return it.
    pub fn map(&self, bytes: Vec<u8>) -> u64 {
        let mut maps = self.maps.borrow_mut();
        let addr = maps.iter().next_back().map_or(BASE, |(a, b)| {
            (a + b.len() as u64 + GUARD).next_multiple_of(GUARD)
        });
        self.mapped.set(self.mapped.get() + bytes.len());
        self.total
            .set(self.total.get().saturating_add(bytes.len() as u64));
        self.peak.set(self.peak.get().max(self.mapped.get()));
        maps.insert(addr, bytes);
        addr
    }

    /// Map `bytes` read-only: copy_to_user into them faults.
    pub fn map_read_only(&self, bytes: Vec<u8>) -> u64 {
        let addr = self.map(bytes);
        self.read_only.borrow_mut().insert(addr);
        addr
    }

    /// Map `bytes` for task `owner` (read-only if asked); `unmap_owned_by`
    /// takes them back.
    pub fn map_owned(&self, owner: u64, bytes: Vec<u8>, read_only: bool) -> u64 {
        let addr = if read_only {
            self.map_read_only(bytes)
        } else {
            self.map(bytes)
        };
        self.owned.borrow_mut().insert(addr, owner);
        addr
    }

    /// Unmap every mapping task `owner` made: its pointers now fault.
    /// One pass over the owned mappings, with no list of them built first
    /// (every step of a process ends here, issue 10).
    pub fn unmap_owned_by(&self, owner: u64) {
        let mut maps = self.maps.borrow_mut();
        let mut read_only = self.read_only.borrow_mut();
        self.owned.borrow_mut().retain(|addr, o| {
            if *o != owner {
                return true;
            }
            read_only.remove(addr);
            if let Some(bytes) = maps.remove(addr) {
                self.mapped.set(self.mapped.get() - bytes.len());
            }
            false
        });
    }

    /// Bytes mapped now.
    pub fn mapped_bytes(&self) -> usize {
        self.mapped.get()
    }

    /// Bytes mapped over the whole run, unmapped or not.
    pub fn total_bytes(&self) -> u64 {
        self.total.get()
    }

    /// The most bytes ever mapped at once (a run's user memory).
    pub fn peak_bytes(&self) -> usize {
        self.peak.get()
    }

    /// The mapping's bytes (after the engine wrote to it).
    pub fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        self.copy_from_user(addr, len).ok()
    }

    pub fn unmap_all(&self) {
        self.maps.borrow_mut().clear();
        self.owned.borrow_mut().clear();
        self.mapped.set(0);
    }
}

/// The mapping holding `addr` in `maps`: its start and bytes. One walk of
/// the map per copy (a copy looked the mapping up three times, issue 10).
fn holding(maps: &BTreeMap<u64, Vec<u8>>, addr: u64) -> Option<(u64, &Vec<u8>)> {
    let (start, bytes) = maps.range(..=addr).next_back()?;
    (addr < start + bytes.len() as u64).then_some((*start, bytes))
}

impl UserMemory for UserSpace {
    fn copy_from_user(&self, addr: u64, len: usize) -> Result<Vec<u8>, Errno> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let maps = self.maps.borrow();
        let (start, bytes) = holding(&maps, addr).ok_or(Errno::EFAULT)?;
        let offset = (addr - start) as usize;
        // `len` comes from the engine: a huge one faults, it does not wrap.
        let end = offset.checked_add(len).ok_or(Errno::EFAULT)?;
        bytes
            .get(offset..end)
            .map(<[u8]>::to_vec)
            .ok_or(Errno::EFAULT)
    }

    fn copy_to_user(&self, addr: u64, data: &[u8]) -> Result<(), usize> {
        if data.is_empty() {
            return Ok(());
        }
        let mut maps = self.maps.borrow_mut();
        let read_only = self.read_only.borrow();
        let n = match maps.range_mut(..=addr).next_back() {
            Some((start, bytes))
                if addr < start + bytes.len() as u64 && !read_only.contains(start) =>
            {
                let offset = (addr - start) as usize;
                let n = (bytes.len() - offset).min(data.len());
                bytes[offset..offset + n].copy_from_slice(&data[..n]);
                n
            }
            _ => 0,
        };
        if n < data.len() {
            return Err(n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_outside_mappings_and_partial_copies() {
        let user = UserSpace::default();
        let a = user.map(vec![1, 2, 3, 4]);
        assert_eq!(user.copy_from_user(a + 1, 2).unwrap(), vec![2, 3]);
        assert_eq!(user.copy_from_user(a + 2, 4), Err(Errno::EFAULT));
        assert_eq!(user.copy_from_user(0, 1), Err(Errno::EFAULT));
        assert_eq!(user.copy_to_user(a + 2, &[9, 9, 9]), Err(2));
        assert_eq!(user.read(a, 4).unwrap(), vec![1, 2, 9, 9]);
        let b = user.map(vec![0; 8]);
        assert!(b >= a + 4 + GUARD);
        let c = user.map_read_only(vec![5; 4]);
        assert_eq!(user.copy_to_user(c, &[1]), Err(0));
        assert_eq!(user.copy_from_user(c, 4).unwrap(), vec![5; 4]);
        assert_eq!(user.copy_from_user(UNMAPPED, 1), Err(Errno::EFAULT));
        // A length that would wrap faults; the guard gap is unmapped.
        assert_eq!(user.copy_from_user(a + 1, usize::MAX), Err(Errno::EFAULT));
        assert_eq!(user.copy_to_user(a + 4, &[1]), Err(0));
        assert_eq!(user.copy_from_user(a + 4, 1), Err(Errno::EFAULT));
    }

    #[test]
    fn a_task_s_mappings_go_with_it() {
        let user = UserSpace::default();
        let kept = user.map(vec![1; 4]);
        let a = user.map_owned(1, vec![2; 8], false);
        let b = user.map_owned(2, vec![3; 8], true);
        user.unmap_owned_by(1);
        assert_eq!(user.copy_from_user(a, 1), Err(Errno::EFAULT));
        assert_eq!(user.copy_from_user(b, 8).unwrap(), vec![3; 8]);
        assert_eq!(user.copy_from_user(kept, 4).unwrap(), vec![1; 4]);
        user.unmap_owned_by(2);
        assert_eq!(user.mapped_bytes(), 4);
    }
}
