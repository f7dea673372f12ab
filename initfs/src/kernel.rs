//! Fetching and unpacking Debian's generic kernel into a cache directory.
//!
//! The package is downloaded with `apt-get download` and unpacked with
//! `dpkg -x`, never installed on the host. The version is found through the
//! `linux-image-amd64` metapackage so no ABI number is hard-coded here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The metapackage that always depends on the current generic kernel.
const METAPACKAGE: &str = "linux-image-amd64";
/// Written inside an unpacked kernel directory once unpacking succeeded;
/// a directory without it is a leftover from an interrupted run.
const MARKER: &str = ".initfs-unpacked";

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The `dpkg -x` root (holds `boot/` and `lib/`).
    pub root: PathBuf,
    /// `uname -r` of this kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

impl Kernel {
    /// Describes an unpacked kernel tree with a known release.
    pub fn at(root: &Path, release: &str) -> Result<Kernel, String> {
        let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
        let modules_dir = root.join("lib/modules").join(release);
        if !vmlinuz.is_file() {
            return Err(format!("kernel image {} is missing", vmlinuz.display()));
        }
        if !modules_dir.is_dir() {
            return Err(format!(
                "module directory {} is missing",
                modules_dir.display()
            ));
        }
        Ok(Kernel {
            root: root.to_path_buf(),
            release: release.to_string(),
            vmlinuz,
            modules_dir,
        })
    }

    /// Describes an unpacked kernel tree, taking the release from its only
    /// `lib/modules/<release>` directory (for trees unpacked by hand).
    pub fn from_dir(root: &Path) -> Result<Kernel, String> {
        let mods = root.join("lib/modules");
        let rd = std::fs::read_dir(&mods)
            .map_err(|e| format!("{} is not an unpacked kernel: {e}", mods.display()))?;
        let mut releases = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| format!("cannot list {}: {e}", mods.display()))?;
            if ent.path().is_dir() {
                releases.push(ent.file_name().to_string_lossy().into_owned());
            }
        }
        releases.sort();
        match releases.as_slice() {
            [one] => Kernel::at(root, one),
            [] => Err(format!("no kernel release under {}", mods.display())),
            many => Err(format!(
                "several kernel releases under {}: {}",
                mods.display(),
                many.join(", ")
            )),
        }
    }
}

/// Runs a command and returns its stdout, with an error naming the command.
fn run_capture(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with its output shown on our stderr (so stdout stays
/// clean for the one line callers capture).
fn run_shown(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{cmd:?} failed ({status})"));
    }
    Ok(())
}

const NO_APT_DATA: &str = "apt knows no package linux-image-amd64; run `apt-get update` first";

/// Picks `linux-image-<ABI>-amd64` and, when pinned, its version from the
/// metapackage's record in `apt-cache show --no-all-versions linux-image-amd64`
/// (`Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)`). Reading the pin
/// from the same record saves a second ~1 s apt-cache call on every build.
pub fn parse_meta_depends(text: &str) -> Option<(String, Option<String>)> {
    let field = text.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    field.split([',', '|']).map(str::trim).find_map(|dep| {
        let (name, rest) = match dep.split_once('(') {
            Some((n, r)) => (n.trim(), Some(r)),
            None => (dep, None),
        };
        let is_kernel =
            name.starts_with("linux-image-") && name.ends_with("-amd64") && name != METAPACKAGE;
        if !is_kernel {
            return None;
        }
        let version = rest
            .and_then(|r| r.trim().strip_prefix('='))
            .and_then(|r| r.split(')').next())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        Some((name.to_string(), version))
    })
}

/// The `Version:` field of `apt-cache show --no-all-versions` output.
pub fn parse_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Makes sure the current generic kernel is unpacked under `cache` and
/// returns it. Does nothing (and needs no network) if it already is.
pub fn ensure(cache: &Path) -> Result<Kernel, String> {
    let meta =
        run_capture(Command::new("apt-cache").args(["show", "--no-all-versions", METAPACKAGE]))
            .map_err(|e| format!("{NO_APT_DATA}\n({e})"))?;
    let (package, pinned) = parse_meta_depends(&meta).ok_or_else(|| {
        format!("{METAPACKAGE} depends on no linux-image-<ABI>-amd64; run `apt-get update`")
    })?;
    let version = match pinned {
        Some(v) => v,
        // Unpinned dependency: ask for the candidate version of the package.
        None => {
            let show = run_capture(Command::new("apt-cache").args([
                "show",
                "--no-all-versions",
                &package,
            ]))?;
            parse_version(&show).ok_or_else(|| {
                format!("apt-cache show {package} gave no Version; run `apt-get update`")
            })?
        }
    };
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_string();

    // Epochs contain ':', which is awkward in paths and make rules.
    let dir_name = format!("{package}_{}", version.replace(':', "%3a"));
    let dir = cache.join(&dir_name);
    if dir.join(MARKER).is_file() {
        return Kernel::at(&dir, &release);
    }

    std::fs::create_dir_all(cache)
        .map_err(|e| format!("cannot create cache {}: {e}", cache.display()))?;
    // Download and unpack into a staging directory, then rename: the final
    // directory either is complete (with marker) or does not exist.
    let staging = cache.join(format!(".staging-{dir_name}"));
    remove_if_exists(&staging)?;
    std::fs::create_dir_all(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    eprintln!("initfs-build: downloading {package} {version}");
    // Pinning the version we looked up keeps the directory name truthful.
    run_shown(
        Command::new("apt-get")
            .args(["download", &format!("{package}={version}")])
            .current_dir(&staging),
    )?;
    let deb = find_deb(&staging, &package)?;
    let root = staging.join("root");
    eprintln!("initfs-build: unpacking {}", deb.display());
    run_shown(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    Kernel::at(&root, &release)
        .map_err(|e| format!("{} did not unpack as expected: {e}", deb.display()))?;
    std::fs::write(root.join(MARKER), format!("{package} {version}\n"))
        .map_err(|e| format!("cannot write marker in {}: {e}", root.display()))?;
    remove_if_exists(&dir)?;
    std::fs::rename(&root, &dir)
        .map_err(|e| format!("cannot move {} to {}: {e}", root.display(), dir.display()))?;
    // The .deb is 70 MB and no longer needed once unpacked.
    remove_if_exists(&staging)?;
    Kernel::at(&dir, &release)
}

fn find_deb(dir: &Path, package: &str) -> Result<PathBuf, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for ent in rd {
        let ent = ent.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{package}_")) && name.ends_with(".deb") {
            return Ok(ent.path());
        }
    }
    Err(format!(
        "apt-get download left no {package}_*.deb in {}",
        dir.display()
    ))
}

fn remove_if_exists(path: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::tests::Scratch;

    #[test]
    fn meta_depends_parsing() {
        let pair = |p: &str, v: Option<&str>| Some((p.to_string(), v.map(str::to_string)));
        // Real bookworm record (abridged).
        let out = "Package: linux-image-amd64\nSource: linux-signed-amd64 (6.1.192+2)\n\
                   Version: 6.1.192-2\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n\
                   Description: Linux for 64-bit PCs (meta-package)\n";
        assert_eq!(
            parse_meta_depends(out),
            pair("linux-image-6.1.0-56-amd64", Some("6.1.192-2"))
        );
        let out = "Depends: foo (>= 1), linux-image-6.12.9-amd64 | bar\n";
        assert_eq!(
            parse_meta_depends(out),
            pair("linux-image-6.12.9-amd64", None)
        );
        let out = "Depends: linux-image-6.1.0-1-amd64 (>= 6.1)\n";
        assert_eq!(
            parse_meta_depends(out),
            pair("linux-image-6.1.0-1-amd64", None)
        );
        assert_eq!(parse_meta_depends("Depends: foo\n"), None);
        assert_eq!(parse_meta_depends(""), None);
    }

    #[test]
    fn version_parsing() {
        let out = "Package: linux-image-6.1.0-56-amd64\nSource: linux-signed-amd64 (6.1.192+2)\nVersion: 6.1.192-2\n";
        assert_eq!(parse_version(out).as_deref(), Some("6.1.192-2"));
        assert_eq!(parse_version("Package: x\n"), None);
    }

    #[test]
    fn from_dir_finds_the_release() {
        let s = Scratch::new("kdir");
        std::fs::create_dir_all(s.0.join("lib/modules/6.1.0-1-amd64/kernel")).unwrap();
        std::fs::create_dir_all(s.0.join("boot")).unwrap();
        let e = Kernel::from_dir(&s.0).unwrap_err();
        assert!(e.contains("vmlinuz-6.1.0-1-amd64"), "{e}");
        std::fs::write(s.0.join("boot/vmlinuz-6.1.0-1-amd64"), b"k").unwrap();
        let k = Kernel::from_dir(&s.0).unwrap();
        assert_eq!(k.release, "6.1.0-1-amd64");
        std::fs::create_dir_all(s.0.join("lib/modules/6.1.0-2-amd64")).unwrap();
        assert!(Kernel::from_dir(&s.0).unwrap_err().contains("several"));
    }
}
