//! The open-handle table every scheme keeps: ids for `openat` to return,
//! `EBADF` for ids that are not open.

use std::collections::BTreeMap;

use syscall::error::{Error, Result, EBADF};

/// Open handles of a scheme, each with its per-handle state `T`.
#[derive(Debug)]
pub struct Handles<T> {
    open: BTreeMap<usize, T>,
    next_id: usize,
}

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Handles {
            open: BTreeMap::new(),
            next_id: 0,
        }
    }
}

impl<T> Handles<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `state` under a fresh id (ids are never reused while the
    /// scheme runs, so a stale id cannot reach a newer handle).
    pub fn insert(&mut self, state: T) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(id, state);
        id
    }

    pub fn get(&self, id: usize) -> Result<&T> {
        self.open.get(&id).ok_or(Error::new(EBADF))
    }

    pub fn get_mut(&mut self, id: usize) -> Result<&mut T> {
        self.open.get_mut(&id).ok_or(Error::new(EBADF))
    }

    pub fn remove(&mut self, id: usize) -> Option<T> {
        self.open.remove(&id)
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.open.values()
    }

    /// Every open handle's state, in id order (a NIC delivering a frame to
    /// each reader).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.open.values_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_and_closed_ids_fail() {
        let mut h = Handles::new();
        let a = h.insert("a");
        let b = h.insert("b");
        assert_ne!(a, b);
        assert_eq!(h.get(a), Ok(&"a"));
        assert_eq!(h.remove(a), Some("a"));
        assert_eq!(h.get(a).unwrap_err().errno, EBADF);
        let c = h.insert("c");
        assert_ne!(c, a, "ids are not reused");
        assert_eq!(h.len(), 2);
        for v in h.values_mut() {
            *v = "x";
        }
        assert!(h.values().all(|v| *v == "x"));
    }
}
