//! Fetching and unpacking Debian 13's generic kernel into a cache directory.
//!
//! The guest runs Debian 13 (trixie)'s 6.12 LTS kernel: it brings
//! `FUSE_NOTIFY_RESEND` (lossless driver restart) and parallel direct
//! writes. Our build machines run Debian 12, so the package comes through a
//! private apt state under the cache (`<cache>/apt`: its own source list,
//! package lists and caches), never through the host's apt configuration.
//! The source reuses the archive URI the host's own apt sources name for
//! its Debian release, so no mirror host is written into the project, and
//! the signatures are checked with the Debian archive keyring. The package
//! is downloaded with `apt-get download` and unpacked with `dpkg -x`, never
//! installed; the version is found through the `linux-image-amd64`
//! metapackage, so no ABI number is hard-coded here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

/// The metapackage that always depends on the current generic kernel.
const METAPACKAGE: &str = "linux-image-amd64";
/// The Debian release whose kernel the guest runs.
pub const SUITE: &str = "trixie";
/// Signs every Debian release's `InRelease`; bookworm's copy already holds
/// trixie's keys.
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The private package lists are refreshed when older than this, so a
/// rebuild needs no network but a new kernel is still picked up.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Written inside an unpacked kernel directory once unpacking succeeded;
/// a directory without it is a leftover from an interrupted run.
const MARKER: &str = ".initfs-unpacked";

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The `dpkg -x` root (holds `boot/` and `usr/lib/modules/`).
    pub root: PathBuf,
    /// `uname -r` of this kernel, e.g. `6.12.117+deb13-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `usr/lib/modules/<release>` (merged `/usr`, Debian 13) or
    /// `lib/modules/<release>` (Debian 12).
    pub modules_dir: PathBuf,
}

/// Where a package puts its modules: merged `/usr` first.
const MODULE_ROOTS: [&str; 2] = ["usr/lib/modules", "lib/modules"];

impl Kernel {
    /// Describes an unpacked kernel tree with a known release.
    pub fn at(root: &Path, release: &str) -> Result<Kernel, String> {
        let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
        if !vmlinuz.is_file() {
            return Err(format!("kernel image {} is missing", vmlinuz.display()));
        }
        let modules_dir = MODULE_ROOTS
            .iter()
            .map(|m| root.join(m).join(release))
            .find(|d| d.is_dir())
            .ok_or_else(|| {
                format!(
                    "no module directory {release} under {}/{{{}}}",
                    root.display(),
                    MODULE_ROOTS.join(",")
                )
            })?;
        Ok(Kernel {
            root: root.to_path_buf(),
            release: release.to_string(),
            vmlinuz,
            modules_dir,
        })
    }

    /// Describes an unpacked kernel tree, taking the release from its only
    /// `[usr/]lib/modules/<release>` directory (for trees unpacked by hand).
    pub fn from_dir(root: &Path) -> Result<Kernel, String> {
        let mut releases = Vec::new();
        for mods in MODULE_ROOTS.iter().map(|m| root.join(m)) {
            let Ok(rd) = std::fs::read_dir(&mods) else {
                continue;
            };
            for ent in rd {
                let ent = ent.map_err(|e| format!("cannot list {}: {e}", mods.display()))?;
                if ent.path().is_dir() {
                    releases.push(ent.file_name().to_string_lossy().into_owned());
                }
            }
        }
        releases.sort();
        releases.dedup();
        match releases.as_slice() {
            [one] => Kernel::at(root, one),
            [] => Err(format!(
                "{} is not an unpacked kernel: no release under {}",
                root.display(),
                MODULE_ROOTS.join(" or ")
            )),
            many => Err(format!(
                "several kernel releases under {}: {}",
                root.display(),
                many.join(", ")
            )),
        }
    }
}

/// One `deb` entry of the host's apt sources: a one-line `deb` line or a
/// deb822 stanza (only the fields we need).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
}

/// The `deb` lines of a one-line `sources.list` (`deb [opts] URI SUITE COMP…`).
pub fn parse_sources_list(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        // Options: `[a=b c=d]`, possibly with spaces inside the brackets.
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let Some(end) = rest.iter().position(|w| w.ends_with(']')) else {
                continue;
            };
            rest.drain(..=end);
        }
        if let [uri, suite, components @ ..] = rest.as_slice() {
            out.push(Source {
                uris: vec![uri.to_string()],
                suites: vec![suite.to_string()],
                components: components.iter().map(|c| c.to_string()).collect(),
            });
        }
    }
    out
}

/// The `Types: deb` stanzas of a deb822 `.sources` file that are not
/// `Enabled: no`.
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| -> Vec<String> {
            let mut values = Vec::new();
            let mut in_field = false;
            for line in stanza.lines() {
                if line.starts_with('#') {
                    continue;
                }
                if line.starts_with([' ', '\t']) {
                    if in_field {
                        values.extend(line.split_whitespace().map(str::to_string));
                    }
                    continue;
                }
                in_field = false;
                if let Some((k, v)) = line.split_once(':') {
                    if k.trim().eq_ignore_ascii_case(name) {
                        in_field = true;
                        values.extend(v.split_whitespace().map(str::to_string));
                    }
                }
            }
            values
        };
        let enabled = field("Enabled");
        if !field("Types").iter().any(|t| t == "deb") || enabled.iter().any(|v| v == "no") {
            continue;
        }
        out.push(Source {
            uris: field("URIs"),
            suites: field("Suites"),
            components: field("Components"),
        });
    }
    out
}

/// The host's Debian archive: the URI of the first source that carries the
/// host's own release (`codename`, e.g. `bookworm`) with `main`. Suites such
/// as `bookworm-security` or `bookworm-updates` are other archives.
pub fn archive_uri<'a>(sources: &'a [Source], codename: &str) -> Option<&'a str> {
    sources
        .iter()
        .filter(|s| s.suites.iter().any(|x| x == codename))
        .filter(|s| s.components.iter().any(|c| c == "main"))
        .find_map(|s| s.uris.first())
        .map(|u| u.trim_end_matches('/'))
}

/// `VERSION_CODENAME` from `/etc/os-release` text.
pub fn parse_codename(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// Every `deb` source the host's apt configuration names.
fn host_sources() -> Vec<Source> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut parts: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        parts.sort();
        files.extend(parts);
    }
    let mut sources = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => sources.extend(parse_deb822(&text)),
            Some("list") => sources.extend(parse_sources_list(&text)),
            _ => {}
        }
    }
    sources
}

/// A private apt state under `<cache>/apt` whose one source is the trixie
/// suite of the host's archive. The host's `apt.conf.d` (proxies,
/// transports) still applies; its sources, lists, caches, preferences and
/// dpkg status do not.
struct PrivateApt {
    dir: PathBuf,
    uri: String,
}

impl PrivateApt {
    fn new(cache: &Path) -> Result<PrivateApt, String> {
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let codename = parse_codename(&os_release).ok_or(
            "no VERSION_CODENAME in /etc/os-release: cannot tell the host's Debian release",
        )?;
        let uri = archive_uri(&host_sources(), &codename)
            .ok_or_else(|| {
                format!(
                    "no apt source for the host's Debian archive ({codename} main) in \
                     /etc/apt/sources.list or /etc/apt/sources.list.d"
                )
            })?
            .to_string();
        if !Path::new(ARCHIVE_KEYRING).is_file() {
            return Err(format!(
                "{ARCHIVE_KEYRING} is missing: install debian-archive-keyring"
            ));
        }
        // apt reads relative `Dir::Etc` paths as relative to /etc/apt.
        let dir = std::path::absolute(cache.join("apt"))
            .map_err(|e| format!("cannot resolve {}: {e}", cache.display()))?;
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let source = format!(
            "Types: deb\nURIs: {uri}\nSuites: {SUITE}\nComponents: main\n\
             Signed-By: {ARCHIVE_KEYRING}\nTargets: Packages\n"
        );
        for (name, text) in [
            ("sources.list.d/debian-kernel.sources", source.as_str()),
            ("status", ""),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        }
        Ok(PrivateApt { dir, uri })
    }

    fn command(&self, program: &str) -> Command {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        let mut cmd = Command::new(program);
        for (key, value) in [
            ("Dir::State::Lists", d("lists")),
            ("Dir::State::status", d("status")),
            ("Dir::Cache", d("cache")),
            // Named files that are never created: no other sources or pins.
            ("Dir::Etc::SourceList", d("sources.list")),
            ("Dir::Etc::SourceParts", d("sources.list.d")),
            ("Dir::Etc::Preferences", d("preferences")),
            ("Dir::Etc::PreferencesParts", d("preferences.d")),
            // Downloads land in our own directory, which `_apt` cannot write.
            ("APT::Sandbox::User", "root".to_string()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd
    }

    /// Whether apt holds a package list for our source.
    fn has_lists(&self) -> bool {
        std::fs::read_dir(self.dir.join("lists")).is_ok_and(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    /// Refreshes the package lists when they are missing, were fetched from
    /// another URI, or are older than [`LISTS_MAX_AGE`]. A failed refresh
    /// with usable old lists is a warning.
    fn refresh(&self) -> Result<(), String> {
        let stamp = self.dir.join("lists/.fetched-from");
        let same_source =
            std::fs::read_to_string(&stamp).is_ok_and(|u| u.trim() == self.uri) && self.has_lists();
        let young = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if same_source && young {
            return Ok(());
        }
        eprintln!(
            "initfs-build: fetching the {SUITE} package list from {}",
            self.uri
        );
        let result = run_capture(
            self.command("apt-get")
                .args(["-q", "--error-on=any", "update"]),
        )
        .and_then(|_| {
            if self.has_lists() {
                Ok(())
            } else {
                Err("apt-get update left no package list".to_string())
            }
        });
        match result {
            Ok(()) => std::fs::write(&stamp, format!("{}\n", self.uri))
                .map_err(|e| format!("cannot write {}: {e}", stamp.display())),
            Err(e) => {
                let e = format!(
                    "cannot fetch the {SUITE} package list from {}: {e}",
                    self.uri
                );
                if same_source {
                    eprintln!("initfs-build: warning: {e}; using the lists fetched before");
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// Runs a command and returns its stdout. A failure is one line: the
/// program and status, then apt's first `E:` line (or the last line of
/// stderr), which names the cause (no network, no such package).
fn run_capture(cmd: &mut Command) -> Result<String, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let cause = stderr
            .lines()
            .find(|l| l.starts_with("E:"))
            .or_else(|| stderr.lines().rfind(|l| !l.trim().is_empty()))
            .unwrap_or("")
            .trim();
        return Err(format!("{program} failed ({}): {cause}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Picks `linux-image-<ABI>-amd64` and, when pinned, its version from the
/// metapackage's record in `apt-cache show --no-all-versions linux-image-amd64`
/// (`Depends: linux-image-6.12.117+deb13-amd64 (= 6.12.117-1)`). Reading the
/// pin from the same record saves a second apt-cache call on every build.
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

/// Makes sure the current trixie generic kernel is unpacked under `cache`
/// and returns it. Needs no network if it is and the lists are fresh.
pub fn ensure(cache: &Path) -> Result<Kernel, String> {
    let apt = PrivateApt::new(cache)?;
    apt.refresh()?;
    let no_package =
        |e: String| format!("no package {METAPACKAGE} in {SUITE} at {} ({e})", apt.uri);
    let meta =
        run_capture(
            apt.command("apt-cache")
                .args(["show", "--no-all-versions", METAPACKAGE]),
        )
        .map_err(no_package)?;
    let (package, pinned) = parse_meta_depends(&meta)
        .ok_or_else(|| format!("{METAPACKAGE} in {SUITE} depends on no linux-image-<ABI>-amd64"))?;
    let version = match pinned {
        Some(v) => v,
        // Unpinned dependency: ask for the candidate version of the package.
        None => {
            let show = run_capture(apt.command("apt-cache").args([
                "show",
                "--no-all-versions",
                &package,
            ]))?;
            parse_version(&show)
                .ok_or_else(|| format!("apt-cache show {package} gave no Version"))?
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

    // Download and unpack into a staging directory, then rename: the final
    // directory either is complete (with marker) or does not exist.
    let staging = cache.join(format!(".staging-{dir_name}"));
    remove_if_exists(&staging)?;
    std::fs::create_dir_all(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    eprintln!("initfs-build: downloading {package} {version} ({SUITE})");
    // Pinning the version we looked up keeps the directory name truthful.
    run_capture(
        apt.command("apt-get")
            .args(["-q", "download", &format!("{package}={version}")])
            .current_dir(&staging),
    )?;
    let deb = find_deb(&staging, &package)?;
    let root = staging.join("root");
    eprintln!("initfs-build: unpacking {}", deb.display());
    run_capture(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    Kernel::at(&root, &release)
        .map_err(|e| format!("{} did not unpack as expected: {e}", deb.display()))?;
    std::fs::write(root.join(MARKER), format!("{package} {version}\n"))
        .map_err(|e| format!("cannot write marker in {}: {e}", root.display()))?;
    remove_if_exists(&dir)?;
    std::fs::rename(&root, &dir)
        .map_err(|e| format!("cannot move {} to {}: {e}", root.display(), dir.display()))?;
    // The .deb is 100 MB and no longer needed once unpacked.
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
        // Real trixie record (abridged).
        let out = "Package: linux-image-amd64\nSource: linux-signed-amd64 (6.12.117+1)\n\
                   Version: 6.12.117-1\nDepends: linux-image-6.12.117+deb13-amd64 (= 6.12.117-1)\n\
                   Description: Linux for 64-bit PCs (meta-package)\n";
        assert_eq!(
            parse_meta_depends(out),
            pair("linux-image-6.12.117+deb13-amd64", Some("6.12.117-1"))
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
        let out = "Package: linux-image-6.12.117+deb13-amd64\nVersion: 6.12.117-1\n";
        assert_eq!(parse_version(out).as_deref(), Some("6.12.117-1"));
        assert_eq!(parse_version("Package: x\n"), None);
    }

    #[test]
    fn the_host_archive_is_the_source_carrying_its_own_release() {
        // This machine's /etc/apt/sources.list.d/debian.sources, as shipped.
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
                      URIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                      Types: deb\nURIs: http://deb.example/debian-security\n\
                      Suites: bookworm-security\nComponents: main\n";
        let s = parse_deb822(deb822);
        assert_eq!(s.len(), 2);
        assert_eq!(
            archive_uri(&s, "bookworm"),
            Some("http://deb.example/debian")
        );
        // Security first in the list still does not win: it carries no `bookworm`.
        let s: Vec<Source> = s.into_iter().rev().collect();
        assert_eq!(
            archive_uri(&s, "bookworm"),
            Some("http://deb.example/debian")
        );
        assert_eq!(archive_uri(&s, "trixie"), None);

        let list = "# comment\ndeb-src http://src.example/debian bookworm main\n\
                    deb [ arch=amd64 signed-by=/k.gpg ] http://m.example/debian/ bookworm main contrib\n\
                    deb http://other.example/debian bookworm contrib\n";
        let s = parse_sources_list(list);
        assert_eq!(s.len(), 2);
        assert_eq!(archive_uri(&s, "bookworm"), Some("http://m.example/debian"));

        let disabled = "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\n\
                        Components: main\nEnabled: no\n";
        assert!(parse_deb822(disabled).is_empty());
        let multi =
            "Types: deb deb-src\nURIs:\n http://a.example/debian\n http://b.example/debian\n\
                     Suites: bookworm\nComponents: main\n";
        assert_eq!(
            archive_uri(&parse_deb822(multi), "bookworm"),
            Some("http://a.example/debian")
        );
    }

    #[test]
    fn codename_from_os_release() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(parse_codename(text).as_deref(), Some("bookworm"));
        assert_eq!(parse_codename("ID=debian\n"), None);
    }

    #[test]
    fn from_dir_finds_the_release_in_either_layout() {
        for modroot in ["usr/lib/modules", "lib/modules"] {
            let s = Scratch::new("kdir");
            std::fs::create_dir_all(s.0.join(modroot).join("6.12.1+deb13-amd64/kernel")).unwrap();
            std::fs::create_dir_all(s.0.join("boot")).unwrap();
            let e = Kernel::from_dir(&s.0).unwrap_err();
            assert!(e.contains("vmlinuz-6.12.1+deb13-amd64"), "{e}");
            std::fs::write(s.0.join("boot/vmlinuz-6.12.1+deb13-amd64"), b"k").unwrap();
            let k = Kernel::from_dir(&s.0).unwrap();
            assert_eq!(k.release, "6.12.1+deb13-amd64");
            assert_eq!(k.modules_dir, s.0.join(modroot).join("6.12.1+deb13-amd64"));
            std::fs::create_dir_all(s.0.join(modroot).join("6.12.2+deb13-amd64")).unwrap();
            assert!(Kernel::from_dir(&s.0).unwrap_err().contains("several"));
        }
    }
}
