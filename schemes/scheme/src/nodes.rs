//! The runtime's map between FUSE node ids and scheme paths.

use std::collections::HashMap;

use crate::abi::ROOT_ID;

struct Node {
    path: String,
    /// Lookups the kernel holds (FORGET gives them back).
    lookups: u64,
}

/// Node ids the kernel knows, each for one path. The root (`""`) is id 1 and
/// never forgotten; other ids are handed out on LOOKUP/CREATE and dropped
/// when the kernel forgets every lookup of them.
pub(crate) struct Nodes {
    by_id: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next: u64,
}

impl Nodes {
    pub(crate) fn new() -> Nodes {
        let mut nodes = Nodes {
            by_id: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT_ID + 1,
        };
        nodes.by_id.insert(
            ROOT_ID,
            Node {
                path: String::new(),
                lookups: 1,
            },
        );
        nodes.by_path.insert(String::new(), ROOT_ID);
        nodes
    }

    /// The map an earlier instance recorded (`store`). The kernel's
    /// lookup counts were not recorded, so each node counts as looked up
    /// many times: a FORGET then never drops a node the kernel may still
    /// use (a few stale entries cost nothing).
    pub(crate) fn restore(recorded: &std::collections::BTreeMap<u64, String>) -> Nodes {
        let mut nodes = Nodes::new();
        for (&id, path) in recorded {
            if id == ROOT_ID {
                continue;
            }
            nodes.by_id.insert(
                id,
                Node {
                    path: path.clone(),
                    lookups: u64::MAX / 2,
                },
            );
            nodes.by_path.insert(path.clone(), id);
            nodes.next = nodes.next.max(id + 1);
        }
        nodes
    }

    pub(crate) fn path(&self, id: u64) -> Option<&str> {
        self.by_id.get(&id).map(|n| n.path.as_str())
    }

    /// The id for `path` if the kernel currently knows one.
    pub(crate) fn id_of(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// Counts one more kernel lookup of `path`, creating its id if needed.
    /// Returns the id and whether it is new.
    pub(crate) fn lookup(&mut self, path: &str) -> (u64, bool) {
        if let Some(&id) = self.by_path.get(path) {
            if let Some(node) = self.by_id.get_mut(&id) {
                node.lookups = node.lookups.saturating_add(1);
            }
            return (id, false);
        }
        let id = self.next;
        self.next += 1;
        self.by_id.insert(
            id,
            Node {
                path: path.to_owned(),
                lookups: 1,
            },
        );
        self.by_path.insert(path.to_owned(), id);
        (id, true)
    }

    /// Gives back `n` lookups of `id`; true when that was the last.
    pub(crate) fn forget(&mut self, id: u64, n: u64) -> bool {
        if id == ROOT_ID {
            return false;
        }
        let gone = match self.by_id.get_mut(&id) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(node) = self.by_id.remove(&id) {
                self.by_path.remove(&node.path);
            }
        }
        gone
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// `parent/name` as a scheme path, or `None` for names that are not one
/// path component.
pub(crate) fn join(parent: &str, name: &str) -> Option<String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return None;
    }
    Some(if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_forget() {
        let mut n = Nodes::new();
        assert_eq!(n.path(ROOT_ID), Some(""));
        let (a, new) = n.lookup("a");
        assert!(new);
        assert_eq!(n.lookup("a"), (a, false));
        assert_eq!(n.path(a), Some("a"));
        n.forget(a, 1);
        assert_eq!(n.path(a), Some("a"));
        n.forget(a, 1);
        assert_eq!(n.path(a), None);
        assert_ne!(n.lookup("a").0, a, "ids are not reused");
        n.forget(ROOT_ID, 100);
        assert_eq!(n.path(ROOT_ID), Some(""));
        n.forget(999, 1);
        assert_eq!(n.len(), 2);
    }

    #[test]
    fn joins() {
        assert_eq!(join("", "x").as_deref(), Some("x"));
        assert_eq!(join("d", "x").as_deref(), Some("d/x"));
        assert_eq!(join("", ".."), None);
        assert_eq!(join("", "a/b"), None);
        assert_eq!(join("", ""), None);
    }
}
