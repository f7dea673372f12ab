//! What the fuzzer aims at: the paths found under `/scheme`, sorted by
//! scheme, and the rules that keep root's calls from doing on purpose what
//! would end the run (writing the disk the check reads, stopping services,
//! powering off, setting the clock, filling `/scheme` with files).

use std::collections::VecDeque;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::OFlag;

/// The scheme a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Zero,
    Rand,
    Fifo,
    Disk,
    Network,
    Pci,
    Acpi,
    Time,
    Init,
    /// Not a scheme: a name under `/scheme` that nothing serves.
    Other,
}

pub const KINDS: [Kind; 11] = [
    Kind::Null,
    Kind::Zero,
    Kind::Rand,
    Kind::Fifo,
    Kind::Disk,
    Kind::Network,
    Kind::Pci,
    Kind::Acpi,
    Kind::Time,
    Kind::Init,
    Kind::Other,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Zero => "zero",
            Kind::Rand => "rand",
            Kind::Fifo => "fifo",
            Kind::Disk => "disk",
            Kind::Network => "network",
            Kind::Pci => "pci",
            Kind::Acpi => "acpi",
            Kind::Time => "time",
            Kind::Init => "init",
            Kind::Other => "other",
        }
    }

    /// The scheme of `path`, a normalised path (see [`normalize`]) under
    /// `root`.
    pub fn of(root: &Path, path: &Path) -> Kind {
        let Some(first) = path
            .strip_prefix(root)
            .ok()
            .and_then(|rel| rel.components().next())
        else {
            return Kind::Other;
        };
        let name = first.as_os_str().to_string_lossy();
        match name.as_ref() {
            "null" => Kind::Null,
            "zero" => Kind::Zero,
            "rand" => Kind::Rand,
            "fifo" => Kind::Fifo,
            "pci" => Kind::Pci,
            "acpi" => Kind::Acpi,
            "time" => Kind::Time,
            "init" => Kind::Init,
            n if n.starts_with("disk.") => Kind::Disk,
            n if n.starts_with("network.") => Kind::Network,
            _ => Kind::Other,
        }
    }
}

/// `path` with `.` and `..` resolved by its text, as the kernel resolves
/// them under `/scheme` (nothing there is a symbolic link).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct Target {
    pub path: PathBuf,
    pub kind: Kind,
}

/// The FIFOs the workers use: a few names, so that they meet on them.
/// (Other names come up as garbage paths.)
pub const FIFOS: [&str; 4] = ["fuzz0", "fuzz1", "fuzz2", "fuzz3"];

/// Every scheme under `root` and up to `per_scheme` paths in each, found
/// breadth first down to `depth` levels, in a stable order. FIFOs are not
/// listed (earlier runs leave theirs): [`FIFOS`] stand for them.
pub fn discover(root: &Path, per_scheme: usize, depth: usize) -> Vec<Target> {
    let mut out = Vec::new();
    for top in sorted_entries(root) {
        let kind = Kind::of(root, &top);
        out.push(Target {
            path: top.clone(),
            kind,
        });
        if kind == Kind::Fifo {
            out.extend(FIFOS.iter().map(|n| Target {
                path: top.join(n),
                kind,
            }));
            continue;
        }
        let mut found = 1;
        let mut queue = VecDeque::from([(top, 1)]);
        while let Some((dir, level)) = queue.pop_front() {
            if level > depth || !dir.is_dir() {
                continue;
            }
            for p in sorted_entries(&dir) {
                if found >= per_scheme {
                    break;
                }
                found += 1;
                queue.push_back((p.clone(), level + 1));
                out.push(Target { path: p, kind });
            }
        }
    }
    out
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// How root treats the files of a path (an ordinary user is never held
/// back: what it may not do, the schemes must refuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    Free,
    /// Opened read-only, never truncated or created: the disk the check
    /// reads (unless named writable) and `/scheme/time` (root sets the
    /// clock through it).
    ReadOnly,
    /// Written only with the control words broken ([`scrub`]):
    /// `/scheme/init` (`restart`/`stop`/`start` NAME) and `/scheme/acpi`
    /// (`poweroff`, `reboot` on `power`).
    NoControlWords,
    /// Never created: a name under `/scheme` that no scheme serves would
    /// become a file in the `/scheme` tmpfs.
    NoCreate,
}

/// Which of root's calls are held back.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Disks root may write (scratch disks), as path prefixes.
    pub writable_disks: Vec<PathBuf>,
}

impl Rules {
    pub fn guard(&self, kind: Kind, path: &Path, as_root: bool) -> Guard {
        if !as_root {
            return Guard::Free;
        }
        match kind {
            Kind::Disk if !self.writable_disks.iter().any(|d| path.starts_with(d)) => {
                Guard::ReadOnly
            }
            Kind::Time => Guard::ReadOnly,
            Kind::Init | Kind::Acpi => Guard::NoControlWords,
            Kind::Other => Guard::NoCreate,
            _ => Guard::Free,
        }
    }
}

/// `O_TMPFILE` without its `O_DIRECTORY` half: the bit that creates.
const TMPFILE_BIT: OFlag = OFlag::from_bits_retain(libc::O_TMPFILE & !libc::O_DIRECTORY);

/// Open flags as `guard` allows them.
pub fn allowed_flags(guard: Guard, flags: OFlag) -> OFlag {
    let creating = OFlag::O_CREAT | TMPFILE_BIT;
    match guard {
        Guard::ReadOnly => {
            (flags & !(OFlag::O_ACCMODE | OFlag::O_TRUNC | OFlag::O_APPEND | creating))
                | OFlag::O_RDONLY
        }
        Guard::NoCreate => flags & !creating,
        Guard::Free | Guard::NoControlWords => flags,
    }
}

/// The words that would stop or start a service or end the machine.
const CONTROL_WORDS: [&[u8]; 4] = [b"start", b"stop", b"poweroff", b"reboot"];

/// Breaks every control word in `data` (any case; `restart` holds
/// `start`) by overwriting its first byte, so random bytes stay random
/// but never ask for a restart, a stop, a power-off or a reboot.
pub fn scrub(data: &mut [u8]) {
    for word in CONTROL_WORDS {
        for i in 0..data.len().saturating_sub(word.len() - 1) {
            if data[i..i + word.len()].eq_ignore_ascii_case(word) {
                data[i] = b'#';
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_first_component_under_the_root() {
        let root = Path::new("/scheme");
        let kind = |p: &str| Kind::of(root, Path::new(p));
        assert_eq!(
            kind("/scheme/disk.pci-0000-00-04.0_virtio_blk/0"),
            Kind::Disk
        );
        assert_eq!(kind("/scheme/network.x/frames"), Kind::Network);
        assert_eq!(kind("/scheme/init/control"), Kind::Init);
        assert_eq!(kind("/scheme/nosuch"), Kind::Other);
        assert_eq!(kind("/scheme"), Kind::Other);
        assert_eq!(kind("/tmp/x"), Kind::Other);
    }

    #[test]
    fn dot_dot_is_resolved_before_the_scheme_is_known() {
        let p = normalize(Path::new(
            "/scheme/fifo/../disk.pci-0000-00-04.0_virtio_blk//./0",
        ));
        assert_eq!(p, Path::new("/scheme/disk.pci-0000-00-04.0_virtio_blk/0"));
        assert_eq!(Kind::of(Path::new("/scheme"), &p), Kind::Disk);
        assert_eq!(normalize(Path::new("/scheme/../../..")), Path::new("/"));
    }

    #[test]
    fn root_reads_the_checked_disk_and_writes_the_scratch_one() {
        let rules = Rules {
            writable_disks: vec![PathBuf::from("/scheme/disk.b")],
        };
        let checked = Path::new("/scheme/disk.a/0");
        assert_eq!(rules.guard(Kind::Disk, checked, true), Guard::ReadOnly);
        assert_eq!(rules.guard(Kind::Disk, checked, false), Guard::Free);
        let scratch = Path::new("/scheme/disk.b/0");
        assert_eq!(rules.guard(Kind::Disk, scratch, true), Guard::Free);
        let f = allowed_flags(
            Guard::ReadOnly,
            OFlag::O_RDWR | OFlag::O_TRUNC | OFlag::O_CREAT | OFlag::O_NONBLOCK,
        );
        assert_eq!(f, OFlag::O_RDONLY | OFlag::O_NONBLOCK);
        let t = allowed_flags(Guard::ReadOnly, OFlag::from_bits_retain(libc::O_TMPFILE));
        assert_eq!(t, OFlag::O_DIRECTORY);
        assert_eq!(
            allowed_flags(Guard::NoCreate, OFlag::O_WRONLY | OFlag::O_CREAT),
            OFlag::O_WRONLY
        );
    }

    #[test]
    fn scrubbed_bytes_hold_no_control_word() {
        let mut d = b"restart fifo\nSTOP x poweroffreboot Start".to_vec();
        scrub(&mut d);
        let text = String::from_utf8_lossy(&d).to_lowercase();
        for w in ["start", "stop", "poweroff", "reboot"] {
            assert!(!text.contains(w), "{text}");
        }
        let mut short = b"st".to_vec();
        scrub(&mut short);
        assert_eq!(short, b"st");
    }
}
