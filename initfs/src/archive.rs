//! An in-memory file tree written out as a deterministic newc cpio archive.
//!
//! Entries are collected first and written at the end so that order, inode
//! numbers and timestamps depend only on the contents: the same inputs give a
//! byte-identical image, which keeps rebuilds and cache keys honest.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

use cpio::newc::{Builder, ModeFileType};

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Read from the build host when the archive is written.
    Path(PathBuf),
    /// Generated content (e.g. `/etc/modules.load`).
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Dir,
    File(Data),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits only (including sticky/setuid); the type comes from `kind`.
    pub perm: u32,
    /// What put this entry here, for error messages about collisions.
    pub origin: String,
}

/// Counts for the one-line summary.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Stats {
    pub dirs: usize,
    pub files: usize,
    pub symlinks: usize,
    pub nodes: usize,
    /// Uncompressed archive size in bytes.
    pub bytes: u64,
}

/// Checks that `path` is absolute and clean and returns it without the
/// leading slash, which is how the kernel's initramfs unpacker wants names.
pub fn normalize(path: &str) -> Result<String, String> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("{path:?} is not an absolute path"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(format!("{path:?} names the root directory"));
    }
    for comp in rest.split('/') {
        match comp {
            "" => return Err(format!("{path:?} has an empty component")),
            "." | ".." => return Err(format!("{path:?} contains {comp:?}")),
            _ => {}
        }
    }
    Ok(rest.to_string())
}

#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalize(path).ok().and_then(|p| self.entries.get(&p))
    }

    pub fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// Adds a directory; adding the same directory twice is fine (a tree and
    /// the `dirs` list may both name `/etc`), and an explicit mode wins over
    /// the default one given to implicitly created parents.
    pub fn add_dir(&mut self, path: &str, perm: u32, origin: &str) -> Result<(), String> {
        let key = normalize(path)?;
        self.add_parents(&key, origin)?;
        match self.entries.get_mut(&key) {
            Some(e) if e.kind == Kind::Dir => {
                e.perm = perm;
                Ok(())
            }
            Some(e) => Err(format!(
                "{origin}: /{key} is already a non-directory (from {})",
                e.origin
            )),
            None => {
                self.entries.insert(
                    key,
                    Entry {
                        kind: Kind::Dir,
                        perm,
                        origin: origin.to_string(),
                    },
                );
                Ok(())
            }
        }
    }

    pub fn add_file(
        &mut self,
        path: &str,
        data: Data,
        perm: u32,
        origin: &str,
    ) -> Result<(), String> {
        self.add_leaf(path, Kind::File(data), perm, origin)
    }

    pub fn add_symlink(&mut self, path: &str, target: &str, origin: &str) -> Result<(), String> {
        self.add_leaf(path, Kind::Symlink(target.to_string()), 0o777, origin)
    }

    pub fn add_char_dev(
        &mut self,
        path: &str,
        major: u32,
        minor: u32,
        perm: u32,
        origin: &str,
    ) -> Result<(), String> {
        self.add_leaf(path, Kind::CharDev { major, minor }, perm, origin)
    }

    /// Adds a non-directory; two sources claiming one path is an error
    /// rather than last-wins, so a manifest mistake cannot silently replace
    /// e.g. our `/init` with something else.
    fn add_leaf(&mut self, path: &str, kind: Kind, perm: u32, origin: &str) -> Result<(), String> {
        let key = normalize(path)?;
        self.add_parents(&key, origin)?;
        if let Some(e) = self.entries.get(&key) {
            return Err(format!(
                "{origin}: /{key} already exists (from {})",
                e.origin
            ));
        }
        self.entries.insert(
            key,
            Entry {
                kind,
                perm,
                origin: origin.to_string(),
            },
        );
        Ok(())
    }

    /// Creates missing ancestors as 0755 directories: the kernel's unpacker
    /// does not create parents, so every one must be in the archive.
    fn add_parents(&mut self, key: &str, origin: &str) -> Result<(), String> {
        let mut end = 0;
        while let Some(i) = key[end..].find('/') {
            let parent = &key[..end + i];
            match self.entries.get(parent) {
                Some(e) if e.kind == Kind::Dir => {}
                Some(e) => {
                    return Err(format!(
                    "{origin}: /{parent} must be a directory for /{key} but is a file (from {})",
                    e.origin
                ))
                }
                None => {
                    self.entries.insert(
                        parent.to_string(),
                        Entry {
                            kind: Kind::Dir,
                            perm: 0o755,
                            origin: format!("parent of /{key}"),
                        },
                    );
                }
            }
            end += i + 1;
        }
        Ok(())
    }

    /// Writes the archive (newc, uid/gid 0, mtime 0, inodes numbered in
    /// order). Order is by path components so each directory comes right
    /// before its contents, which the unpacker requires.
    pub fn write<W: Write>(&self, out: W) -> Result<(W, Stats), String> {
        let mut keys: Vec<&String> = self.entries.keys().collect();
        keys.sort_by(|a, b| a.split('/').cmp(b.split('/')));
        let mut out = CountingWriter {
            inner: out,
            count: 0,
        };
        let mut stats = Stats::default();
        for (n, key) in keys.into_iter().enumerate() {
            let entry = &self.entries[key];
            let ino = u32::try_from(n + 1).map_err(|_| "too many archive entries".to_string())?;
            let base = Builder::new(key).ino(ino).uid(0).gid(0).mtime(0);
            let io_err = |e: io::Error| format!("writing /{key} to the archive: {e}");
            out = match &entry.kind {
                Kind::Dir => {
                    stats.dirs += 1;
                    let b = base
                        .mode(u32::from(ModeFileType::Directory) | entry.perm)
                        .nlink(2);
                    b.write(out, 0).finish().map_err(io_err)?
                }
                Kind::File(data) => {
                    stats.files += 1;
                    let bytes = match data {
                        Data::Bytes(b) => std::borrow::Cow::Borrowed(b.as_slice()),
                        Data::Path(p) => {
                            std::borrow::Cow::Owned(std::fs::read(p).map_err(|e| {
                                format!(
                                    "reading {} for /{key} ({}): {e}",
                                    p.display(),
                                    entry.origin
                                )
                            })?)
                        }
                    };
                    let size = u32::try_from(bytes.len())
                        .map_err(|_| format!("/{key} is too large for a newc archive"))?;
                    let b = base.mode(u32::from(ModeFileType::Regular) | entry.perm);
                    let mut w = b.write(out, size);
                    w.write_all(&bytes).map_err(io_err)?;
                    w.finish().map_err(io_err)?
                }
                Kind::Symlink(target) => {
                    stats.symlinks += 1;
                    let size = u32::try_from(target.len())
                        .map_err(|_| format!("/{key}: symlink target too long"))?;
                    let b = base.mode(u32::from(ModeFileType::Symlink) | entry.perm);
                    let mut w = b.write(out, size);
                    w.write_all(target.as_bytes()).map_err(io_err)?;
                    w.finish().map_err(io_err)?
                }
                Kind::CharDev { major, minor } => {
                    stats.nodes += 1;
                    let b = base
                        .mode(u32::from(ModeFileType::Char) | entry.perm)
                        .rdev_major(*major)
                        .rdev_minor(*minor);
                    b.write(out, 0).finish().map_err(io_err)?
                }
            };
        }
        let out = cpio::newc::trailer(out).map_err(|e| format!("writing archive trailer: {e}"))?;
        stats.bytes = out.count;
        Ok((out.inner, stats))
    }
}

/// Counts bytes so the summary can report the uncompressed size without a
/// second pass.
struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One archive entry as read back in tests: (name, mode, rdev, contents).
#[cfg(test)]
pub(crate) type ReadEntry = (String, u32, (u32, u32), Vec<u8>);

/// Test helper shared with the image tests: reads an archive back using the
/// `cpio` crate's reader.
#[cfg(test)]
pub(crate) fn read_back(mut data: &[u8]) -> Vec<ReadEntry> {
    use std::io::Read;
    let mut out = Vec::new();
    loop {
        let mut r = cpio::newc::Reader::new(data).unwrap();
        if r.entry().is_trailer() {
            break;
        }
        let e = r.entry().clone();
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).unwrap();
        out.push((
            e.name().to_string(),
            e.mode(),
            (e.rdev_major(), e.rdev_minor()),
            buf,
        ));
        data = r.finish().unwrap();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("/a/b").unwrap(), "a/b");
        assert_eq!(normalize("/a/b/").unwrap(), "a/b");
        assert!(normalize("a/b").is_err());
        assert!(normalize("/").is_err());
        assert!(normalize("/a//b").is_err());
        assert!(normalize("/a/./b").is_err());
        assert!(normalize("/a/../b").is_err());
    }

    #[test]
    fn write_and_read_back() {
        let mut a = Archive::new();
        a.add_dir("/tmp", 0o1777, "test").unwrap();
        a.add_file("/bin/x", Data::Bytes(b"hello".to_vec()), 0o755, "test")
            .unwrap();
        a.add_symlink("/usr/bin/y", "/bin/x", "test").unwrap();
        a.add_char_dev("/dev/console", 5, 1, 0o600, "test").unwrap();
        a.add_file("/init", Data::Bytes(vec![1, 2, 3]), 0o755, "test")
            .unwrap();
        let (bytes, stats) = a.write(Vec::new()).unwrap();
        assert_eq!(stats.bytes, bytes.len() as u64);
        assert_eq!(
            (stats.dirs, stats.files, stats.symlinks, stats.nodes),
            (5, 2, 1, 1)
        );

        let entries = read_back(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        // Parents precede children; order is by components.
        assert_eq!(
            names,
            [
                "bin",
                "bin/x",
                "dev",
                "dev/console",
                "init",
                "tmp",
                "usr",
                "usr/bin",
                "usr/bin/y"
            ]
        );
        let find = |n: &str| entries.iter().find(|e| e.0 == n).unwrap();
        assert_eq!(find("bin/x").1, 0o100755);
        assert_eq!(find("bin/x").3, b"hello");
        assert_eq!(find("tmp").1, 0o41777);
        assert_eq!(find("usr").1, 0o40755);
        assert_eq!(find("usr/bin/y").1, 0o120777);
        assert_eq!(find("usr/bin/y").3, b"/bin/x");
        assert_eq!(find("dev/console").1, 0o20600);
        assert_eq!(find("dev/console").2, (5, 1));
    }

    #[test]
    fn output_is_deterministic() {
        let build = |order: &[&str]| {
            let mut a = Archive::new();
            for p in order {
                a.add_file(p, Data::Bytes(p.as_bytes().to_vec()), 0o644, "t")
                    .unwrap();
            }
            a.write(Vec::new()).unwrap().0
        };
        assert_eq!(
            build(&["/a/b", "/c", "/a-b"]),
            build(&["/a-b", "/c", "/a/b"])
        );
    }

    #[test]
    fn collisions_are_errors() {
        let mut a = Archive::new();
        a.add_file("/init", Data::Bytes(vec![]), 0o755, "[[bin]] init")
            .unwrap();
        let e = a
            .add_symlink("/init", "/bin/busybox", "busybox")
            .unwrap_err();
        assert!(e.contains("[[bin]] init"), "{e}");
        let e = a
            .add_file("/init/x", Data::Bytes(vec![]), 0o644, "t")
            .unwrap_err();
        assert!(e.contains("must be a directory"), "{e}");
        let e = a.add_dir("/init", 0o755, "t").unwrap_err();
        assert!(e.contains("non-directory"), "{e}");
        // Re-adding a directory is allowed and updates its mode.
        a.add_dir("/etc", 0o755, "t").unwrap();
        a.add_dir("/etc", 0o700, "t").unwrap();
        assert_eq!(a.get("/etc").unwrap().perm, 0o700);
    }

    #[test]
    fn missing_source_file_is_reported_with_path() {
        let mut a = Archive::new();
        a.add_file("/x", Data::Path("/nonexistent/file".into()), 0o644, "t")
            .unwrap();
        let e = a.write(Vec::new()).unwrap_err();
        assert!(e.contains("/nonexistent/file"), "{e}");
    }
}
