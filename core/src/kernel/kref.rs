//! `struct kref`: a reference count whose last put frees the object.
//!
//! An underflow is what the kernel reports with `refcount_t: underflow`: a
//! WARN (which the host turns into a failed run), and nothing is freed a
//! second time. A get after the last put is a use after free in C; here
//! it is an assert, so the engine can never revive a freed object.

use std::cell::Cell;

use super::Kernel;

pub struct Kref {
    refs: Cell<u64>,
    /// The object's kind, for messages.
    what: &'static str,
}

impl Kref {
    /// One reference, owned by the creator.
    pub fn new(what: &'static str) -> Kref {
        Kref {
            refs: Cell::new(1),
            what,
        }
    }

    pub fn get(&self) {
        assert!(self.refs.get() > 0, "{}: get after the last put", self.what);
        self.refs.set(self.refs.get() + 1);
    }

    /// Drop a reference; true if it was the last (the caller frees).
    pub fn put(&self, kernel: &dyn Kernel) -> bool {
        let refs = self.refs.get();
        if refs == 0 {
            kernel.warn(&format!(
                "refcount_t: underflow; use-after-free ({})",
                self.what
            ));
            return false;
        }
        self.refs.set(refs - 1);
        refs == 1
    }

    pub fn count(&self) -> u64 {
        self.refs.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::testing::TestKernel;

    #[test]
    fn the_last_put_reports_it_and_an_underflow_warns() {
        let k = TestKernel::new();
        let kref = Kref::new("thing");
        kref.get();
        assert_eq!(kref.count(), 2);
        assert!(!kref.put(&*k));
        assert!(kref.put(&*k));
        assert!(k.warns().is_empty());
        assert!(!kref.put(&*k));
        assert_eq!(k.warns().len(), 1);
        assert!(k.warns()[0].contains("underflow"));
    }

    #[test]
    #[should_panic(expected = "get after the last put")]
    fn a_get_after_the_last_put_is_refused() {
        let k = TestKernel::new();
        let kref = Kref::new("thing");
        assert!(kref.put(&*k));
        kref.get();
    }
}
