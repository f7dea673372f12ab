//! `initfs/manifest.toml`: what goes into the boot image.
//!
//! Parsing is strict (unknown keys are errors) because a misspelt key in a
//! boot image description otherwise silently produces an image without the
//! thing you asked for, and you only find out when the guest fails to boot.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::archive::normalize;

/// The whole manifest file.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Empty directories to create (mount points and the like).
    #[serde(default)]
    pub dirs: Vec<String>,
    /// Our own binaries, taken from `--bins`.
    #[serde(default)]
    pub bin: Vec<Bin>,
    /// Debian's static busybox and its applet links.
    pub busybox: Option<Busybox>,
    /// Directories copied recursively from the source tree.
    #[serde(default)]
    pub tree: Vec<Tree>,
    /// Extra symbolic links.
    #[serde(default)]
    pub symlink: Vec<Symlink>,
    /// Kernel modules to include (with their dependencies).
    pub kernel: Option<KernelSection>,
}

/// `[[bin]] name = "init" dest = "/init"`
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Bin {
    /// File name in the `--bins` directory (the cargo binary name).
    pub name: String,
    /// Absolute path in the image.
    pub dest: String,
}

/// `[busybox] path = "/bin/busybox"`
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Busybox {
    /// Where the static busybox lives on the build host.
    pub path: PathBuf,
    /// Where it goes in the image; applet links point here.
    #[serde(default = "default_busybox_dest")]
    pub dest: String,
}

fn default_busybox_dest() -> String {
    "/bin/busybox".to_string()
}

/// `[[tree]] src = "etc" dest = "/etc"`
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    /// Relative to the manifest's own directory (absolute paths are allowed).
    pub src: PathBuf,
    pub dest: String,
}

/// `[[symlink]] path = "/usr/bin/env" target = "/bin/busybox"`
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    pub path: String,
    pub target: String,
}

/// `[kernel] modules = ["vfio-pci", "fuse"]`, `optional = ["virtio_blk"]`
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    /// Loaded by init at boot.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Shipped but never loaded at boot (Linux's own drivers, which the
    /// benchmarks load by hand on a device pcid leaves alone).
    #[serde(default)]
    pub optional: Vec<String>,
}

impl Manifest {
    /// Reads and validates a manifest file; errors name the file.
    pub fn load(path: &Path) -> Result<Manifest, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read manifest {}: {e}", path.display()))?;
        Manifest::parse(&text).map_err(|e| format!("manifest {}: {e}", path.display()))
    }

    /// Parses and validates manifest text (the caller adds the file name).
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks what serde cannot: that every image path is a clean absolute
    /// path, and names are plain file names. Catching these here gives an
    /// error pointing at the manifest instead of a confusing archive error.
    fn validate(&self) -> Result<(), String> {
        for d in &self.dirs {
            normalize(d).map_err(|e| format!("dirs: {e}"))?;
        }
        for b in &self.bin {
            if b.name.is_empty() || b.name.contains('/') || b.name == "." || b.name == ".." {
                return Err(format!(
                    "[[bin]] name {:?} must be a plain file name in --bins",
                    b.name
                ));
            }
            normalize(&b.dest).map_err(|e| format!("[[bin]] {}: dest: {e}", b.name))?;
        }
        if let Some(bb) = &self.busybox {
            normalize(&bb.dest).map_err(|e| format!("[busybox] dest: {e}"))?;
        }
        for t in &self.tree {
            normalize(&t.dest).map_err(|e| format!("[[tree]] {}: dest: {e}", t.src.display()))?;
        }
        for s in &self.symlink {
            normalize(&s.path).map_err(|e| format!("[[symlink]] path: {e}"))?;
            if s.target.is_empty() {
                return Err(format!("[[symlink]] {}: empty target", s.path));
            }
        }
        if let Some(k) = &self.kernel {
            for m in k.modules.iter().chain(&k.optional) {
                if m.is_empty() || m.contains('/') || m.ends_with(".ko") {
                    return Err(format!(
                        "[kernel] modules: {m:?} should be a module name like \"vfio-pci\""
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
dirs = ["/proc", "/tmp"]

[[bin]]
name = "init"
dest = "/init"

[busybox]
path = "/bin/busybox"

[[tree]]
src = "etc"
dest = "/etc"

[[symlink]]
path = "/usr/bin/env"
target = "/bin/busybox"

[kernel]
modules = ["vfio-pci", "fuse"]
"#;

    #[test]
    fn parses_good_manifest() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.dirs, vec!["/proc", "/tmp"]);
        assert_eq!(
            m.bin,
            vec![Bin {
                name: "init".into(),
                dest: "/init".into()
            }]
        );
        let bb = m.busybox.unwrap();
        assert_eq!(bb.path, PathBuf::from("/bin/busybox"));
        assert_eq!(bb.dest, "/bin/busybox");
        assert_eq!(m.tree[0].src, PathBuf::from("etc"));
        assert_eq!(m.symlink[0].target, "/bin/busybox");
        assert_eq!(m.kernel.unwrap().modules, vec!["vfio-pci", "fuse"]);
    }

    #[test]
    fn empty_manifest_is_valid() {
        let m = Manifest::parse("").unwrap();
        assert!(m.bin.is_empty() && m.busybox.is_none() && m.kernel.is_none());
    }

    #[test]
    fn rejects_unknown_top_level_key() {
        let e = Manifest::parse("dirz = [\"/proc\"]").unwrap_err();
        assert!(e.contains("dirz"), "{e}");
    }

    #[test]
    fn rejects_unknown_key_in_table() {
        let e = Manifest::parse("[[bin]]\nname = \"a\"\ndest = \"/a\"\nmode = 1\n").unwrap_err();
        assert!(e.contains("mode"), "{e}");
    }

    #[test]
    fn rejects_missing_field() {
        let e = Manifest::parse("[[bin]]\nname = \"a\"\n").unwrap_err();
        assert!(e.contains("dest"), "{e}");
    }

    #[test]
    fn rejects_relative_or_dotted_dest() {
        let e = Manifest::parse("[[bin]]\nname = \"a\"\ndest = \"bin/a\"\n").unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let e = Manifest::parse("[[bin]]\nname = \"a\"\ndest = \"/bin/../a\"\n").unwrap_err();
        assert!(e.contains(".."), "{e}");
        let e = Manifest::parse("dirs = [\"/\"]").unwrap_err();
        assert!(e.contains("dirs"), "{e}");
    }

    #[test]
    fn rejects_bad_names() {
        assert!(Manifest::parse("[[bin]]\nname = \"x/y\"\ndest = \"/a\"\n").is_err());
        assert!(Manifest::parse("[kernel]\nmodules = [\"fuse.ko\"]\n").is_err());
    }

    #[test]
    fn load_error_names_the_file() {
        let e = Manifest::load(Path::new("/nonexistent/manifest.toml")).unwrap_err();
        assert!(e.contains("/nonexistent/manifest.toml"), "{e}");
    }

    #[test]
    fn shipped_manifest_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifest.toml");
        let m = Manifest::load(&path).unwrap();
        assert!(m.bin.iter().any(|b| b.name == "init" && b.dest == "/init"));
        assert!(m.busybox.is_some());
        let k = m.kernel.unwrap();
        for want in ["vfio-pci", "vfio_iommu_type1", "fuse"] {
            assert!(k.modules.iter().any(|m| m == want), "{want}");
        }
    }
}
