//! Kernel module lookup and dependency resolution.
//!
//! The Debian kernel package ships no `modules.dep` (depmod runs when the
//! package is installed, and we never install it), so dependencies are read
//! from each module's own `.modinfo` section: NUL-separated `key=value`
//! strings, of which `depends=a,b` lists the modules that must be loaded first.
//!
//! Debian 13 ships every module xz-compressed (`.ko.xz`), so reading
//! `.modinfo` means decompressing first. The decoder is `lzma-rs`, pure Rust:
//! the kernel compresses modules with plain LZMA2 and a CRC32 check
//! (`xz --check=crc32 --lzma2=dict=1MiB`), which it handles, and it needs no
//! C library in a build whose every binary is static. We decompress a few
//! dozen modules per image, so its speed does not matter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSection};

/// Module names treat '-' and '_' as the same character (the kernel does
/// too); we key everything by the '_' form.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Extensions a module file can have, longest first so `.ko.xz` is not
/// mistaken for something ending in `.ko`.
const MODULE_EXTS: [&str; 4] = [".ko.zst", ".ko.xz", ".ko.gz", ".ko"];

/// All module files of one kernel, by normalized name.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    files: BTreeMap<String, PathBuf>,
    /// Modules compiled into the kernel (`modules.builtin`): asking for one
    /// is satisfied without a file.
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    /// Indexes `lib/modules/<release>/` by file name alone; modinfo is only
    /// read for the modules actually resolved (there are ~4000 files).
    pub fn scan(modules_dir: &Path) -> Result<ModuleIndex, String> {
        let mut index = ModuleIndex::default();
        let mut stack = vec![modules_dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let rd = std::fs::read_dir(&dir)
                .map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            for ent in rd {
                let ent = ent.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
                let path = ent.path();
                let ft = ent
                    .file_type()
                    .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
                if ft.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Some(fname) = path.file_name().and_then(|f| f.to_str()) else {
                    continue;
                };
                if let Some(stem) = MODULE_EXTS.iter().find_map(|ext| fname.strip_suffix(ext)) {
                    index.add(stem, path.clone());
                }
            }
        }
        let builtin_list = modules_dir.join("modules.builtin");
        if let Ok(text) = std::fs::read_to_string(&builtin_list) {
            index.builtin = parse_builtin(&text);
        }
        if index.files.is_empty() {
            return Err(format!(
                "no kernel modules found under {}",
                modules_dir.display()
            ));
        }
        Ok(index)
    }

    fn add(&mut self, stem: &str, path: PathBuf) {
        let name = normalize_name(stem);
        // Keep the first by path order if a module appears twice (e.g. in
        // `updates/` and `kernel/`): sorted paths make the choice stable.
        match self.files.get(&name) {
            Some(existing) if *existing <= path => {}
            _ => {
                self.files.insert(name, path);
            }
        }
    }

    pub fn path(&self, name: &str) -> Option<&Path> {
        self.files.get(&normalize_name(name)).map(PathBuf::as_path)
    }

    /// Resolves `wanted` and everything they depend on into load order:
    /// dependencies first, each module once, the file paths to copy.
    pub fn resolve(&self, wanted: &[String]) -> Result<Vec<PathBuf>, String> {
        let order = resolve_order(wanted, |name| {
            if let Some(path) = self.files.get(name) {
                let info = read_modinfo(path)?;
                Ok(Some(depends(&info)))
            } else if self.builtin.contains(name) {
                Ok(None)
            } else {
                Err(format!(
                    "kernel module {name} not found in the kernel package"
                ))
            }
        })?;
        Ok(order
            .iter()
            .filter_map(|n| self.files.get(n).cloned())
            .collect())
    }
}

/// `modules.builtin` lists paths like `kernel/fs/ext4/ext4.ko`.
fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.rsplit('/').next())
        .filter_map(|f| f.strip_suffix(".ko"))
        .map(normalize_name)
        .collect()
}

/// Reads the `.modinfo` section of a module file, `.ko` or `.ko.xz`.
pub fn read_modinfo(path: &Path) -> Result<Vec<(String, String)>, String> {
    let data = read_module(path)?;
    modinfo_from_elf(&data).map_err(|e| format!("module {}: {e}", path.display()))
}

/// The ELF image of a module file: `.ko` as it is, `.ko.xz` decompressed.
/// Other compressions (`.ko.zst`, `.ko.gz`) are refused by name rather than
/// guessed at: no Debian kernel we use ships them.
pub fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    let data =
        std::fs::read(path).map_err(|e| format!("cannot read module {}: {e}", path.display()))?;
    let name = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
    if name.ends_with(".ko") {
        Ok(data)
    } else if name.ends_with(".ko.xz") {
        xz_decompress(&data).map_err(|e| format!("module {}: {e}", path.display()))
    } else {
        Err(format!(
            "module {} has a compression initfs-build does not read (only .ko and .ko.xz)",
            path.display()
        ))
    }
}

/// Decompresses an xz stream.
pub fn xz_decompress(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(data.len() * 4);
    lzma_rs::xz_decompress(&mut std::io::BufReader::new(data), &mut out)
        .map_err(|e| format!("bad xz data: {e}"))?;
    Ok(out)
}

/// Parses `.modinfo` out of an ELF image.
pub fn modinfo_from_elf(data: &[u8]) -> Result<Vec<(String, String)>, String> {
    let elf = ElfFile64::<Endianness>::parse(data).map_err(|e| format!("not a 64-bit ELF: {e}"))?;
    let section = elf
        .section_by_name(".modinfo")
        .ok_or_else(|| "no .modinfo section".to_string())?;
    let bytes = section
        .data()
        .map_err(|e| format!("cannot read .modinfo: {e}"))?;
    Ok(parse_modinfo(bytes))
}

/// The section is NUL-separated `key=value` strings, possibly with padding
/// NULs between them; non-UTF-8 values are decoded lossily because only the
/// ASCII `depends` key matters here.
pub fn parse_modinfo(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let s = String::from_utf8_lossy(s);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The normalized names in `depends=` (softdeps are deliberately not
/// followed: they are optional, and the manifest names what it wants).
pub fn depends(info: &[(String, String)]) -> Vec<String> {
    info.iter()
        .filter(|(k, _)| k == "depends")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(normalize_name)
        .collect()
}

/// Depth-first post-order over the dependency graph. `deps_of(name)` gets a
/// normalized name and returns its dependencies, `None` for a module that
/// needs no file (built in), or an error. Returns normalized names of
/// loadable modules, dependencies first, each once, in a stable order
/// (the order of `wanted`, then the order of each `depends=` list).
pub fn resolve_order<F>(wanted: &[String], mut deps_of: F) -> Result<Vec<String>, String>
where
    F: FnMut(&str) -> Result<Option<Vec<String>>, String>,
{
    #[derive(PartialEq)]
    enum State {
        Visiting,
        Done,
    }
    struct Walk<'a, F> {
        deps_of: &'a mut F,
        state: BTreeMap<String, State>,
        order: Vec<String>,
    }
    impl<F> Walk<'_, F>
    where
        F: FnMut(&str) -> Result<Option<Vec<String>>, String>,
    {
        fn visit(&mut self, name: &str, chain: &mut Vec<String>) -> Result<(), String> {
            match self.state.get(name) {
                Some(State::Done) => return Ok(()),
                Some(State::Visiting) => {
                    chain.push(name.to_string());
                    return Err(format!("module dependency cycle: {}", chain.join(" -> ")));
                }
                None => {}
            }
            self.state.insert(name.to_string(), State::Visiting);
            chain.push(name.to_string());
            let deps = (self.deps_of)(name).map_err(|e| {
                if chain.len() > 1 {
                    format!("{e} (needed by {})", chain[..chain.len() - 1].join(" -> "))
                } else {
                    e
                }
            })?;
            let loadable = deps.is_some();
            for dep in deps.unwrap_or_default() {
                self.visit(&dep, chain)?;
            }
            chain.pop();
            self.state.insert(name.to_string(), State::Done);
            if loadable {
                self.order.push(name.to_string());
            }
            Ok(())
        }
    }

    let mut walk = Walk {
        deps_of: &mut deps_of,
        state: BTreeMap::new(),
        order: Vec::new(),
    };
    for w in wanted {
        walk.visit(&normalize_name(w), &mut Vec::new())?;
    }
    Ok(walk.order)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn run(g: &BTreeMap<String, Vec<String>>, wanted: &[&str]) -> Result<Vec<String>, String> {
        resolve_order(&names(wanted), |n| {
            g.get(n)
                .cloned()
                .map(Some)
                .ok_or_else(|| format!("missing {n}"))
        })
    }

    #[test]
    fn vfio_like_graph_orders_dependencies_first_once() {
        // The real bookworm graph, as read from the modules' .modinfo.
        let g = graph(&[
            ("vfio_pci", &["vfio_pci_core", "vfio"]),
            ("vfio_pci_core", &["vfio", "vfio_virqfd", "irqbypass"]),
            ("vfio", &[]),
            ("vfio_virqfd", &[]),
            ("irqbypass", &[]),
            ("vfio_iommu_type1", &["vfio"]),
            ("fuse", &[]),
        ]);
        let order = run(&g, &["vfio-pci", "vfio_iommu_type1", "fuse"]).unwrap();
        assert_eq!(
            order,
            names(&[
                "vfio",
                "vfio_virqfd",
                "irqbypass",
                "vfio_pci_core",
                "vfio_pci",
                "vfio_iommu_type1",
                "fuse"
            ])
        );
    }

    #[test]
    fn every_module_after_its_dependencies() {
        let g = graph(&[
            ("a", &["b", "c"]),
            ("b", &["d"]),
            ("c", &["d", "b"]),
            ("d", &[]),
            ("e", &["a"]),
        ]);
        let order = run(&g, &["e", "c"]).unwrap();
        assert_eq!(order.len(), 5);
        for (m, deps) in &g {
            let pos = |x: &str| order.iter().position(|o| o == x).unwrap();
            for d in deps {
                assert!(pos(d) < pos(m), "{d} must precede {m}: {order:?}");
            }
        }
    }

    #[test]
    fn cycle_is_an_error() {
        let g = graph(&[("a", &["b"]), ("b", &["a"])]);
        let e = run(&g, &["a"]).unwrap_err();
        assert!(e.contains("a -> b -> a"), "{e}");
    }

    #[test]
    fn missing_dependency_names_the_chain() {
        let g = graph(&[("a", &["b"]), ("b", &["zzz"])]);
        let e = run(&g, &["a"]).unwrap_err();
        assert!(e.contains("missing zzz") && e.contains("a -> b"), "{e}");
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let order = resolve_order(&names(&["a"]), |n| match n {
            "a" => Ok(Some(names(&["b"]))),
            "b" => Ok(None),
            _ => Err(n.to_string()),
        })
        .unwrap();
        assert_eq!(order, names(&["a"]));
    }

    #[test]
    fn modinfo_parsing() {
        let raw = b"license=GPL\0\0\0depends=vfio-pci-core,vfio\0name=vfio_pci\0vermagic=6.1\0";
        let info = parse_modinfo(raw);
        assert_eq!(info[0], ("license".into(), "GPL".into()));
        assert_eq!(depends(&info), names(&["vfio_pci_core", "vfio"]));
        assert!(depends(&parse_modinfo(b"depends=\0")).is_empty());
    }

    #[test]
    fn builtin_list_parsing() {
        let b = parse_builtin("kernel/fs/ext4/ext4.ko\nkernel/drivers/foo-bar.ko\n");
        assert!(b.contains("ext4") && b.contains("foo_bar"));
    }

    /// Builds a minimal ELF64 relocatable file with a `.modinfo` section:
    /// enough for `object` to parse, like a real `.ko`. Written by hand so
    /// the tests need no ELF writer dependency.
    pub(crate) fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab: &[u8] = b"\0.modinfo\0.shstrtab\0";
        let data_off = 64usize;
        let shstr_off = data_off + modinfo.len();
        let mut sh_off = shstr_off + shstrtab.len();
        sh_off = (sh_off + 7) & !7;

        let mut f = Vec::new();
        // ELF header.
        f.extend_from_slice(b"\x7fELF");
        f.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, SysV
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&1u16.to_le_bytes()); // ET_REL
        f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
        f.extend_from_slice(&0u64.to_le_bytes()); // entry
        f.extend_from_slice(&0u64.to_le_bytes()); // phoff
        f.extend_from_slice(&(sh_off as u64).to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes()); // flags
        f.extend_from_slice(&64u16.to_le_bytes()); // ehsize
        f.extend_from_slice(&0u16.to_le_bytes()); // phentsize
        f.extend_from_slice(&0u16.to_le_bytes()); // phnum
        f.extend_from_slice(&64u16.to_le_bytes()); // shentsize
        f.extend_from_slice(&3u16.to_le_bytes()); // shnum
        f.extend_from_slice(&2u16.to_le_bytes()); // shstrndx
        assert_eq!(f.len(), 64);
        f.extend_from_slice(modinfo);
        f.extend_from_slice(shstrtab);
        f.resize(sh_off, 0);
        let section = |f: &mut Vec<u8>, name: u32, ty: u32, off: usize, size: usize| {
            f.extend_from_slice(&name.to_le_bytes());
            f.extend_from_slice(&ty.to_le_bytes());
            f.extend_from_slice(&0u64.to_le_bytes()); // flags
            f.extend_from_slice(&0u64.to_le_bytes()); // addr
            f.extend_from_slice(&(off as u64).to_le_bytes());
            f.extend_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&0u32.to_le_bytes()); // link
            f.extend_from_slice(&0u32.to_le_bytes()); // info
            f.extend_from_slice(&1u64.to_le_bytes()); // addralign
            f.extend_from_slice(&0u64.to_le_bytes()); // entsize
        };
        section(&mut f, 0, 0, 0, 0);
        section(&mut f, 1, 1, data_off, modinfo.len()); // .modinfo, PROGBITS
        section(&mut f, 10, 3, shstr_off, shstrtab.len()); // .shstrtab, STRTAB
        f
    }

    /// A unique scratch directory under the system temp dir, removed on drop.
    pub(crate) struct Scratch(pub PathBuf);
    impl Scratch {
        pub(crate) fn new(tag: &str) -> Scratch {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "initfs-test-{}-{tag}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Writes a fake kernel module tree; returns the `lib/modules/<rel>` dir.
    pub(crate) fn fake_module_tree(root: &Path, mods: &[(&str, &str)]) -> PathBuf {
        let dir = root.join("lib/modules/9.9.9-test-amd64");
        for (i, (file, deps)) in mods.iter().enumerate() {
            // Spread modules over subdirectories like the real tree.
            let sub = dir.join(format!("kernel/sub{}", i % 2));
            std::fs::create_dir_all(&sub).unwrap();
            let info = format!(
                "license=GPL\0depends={deps}\0name={}\0",
                normalize_name(file)
            );
            std::fs::write(sub.join(format!("{file}.ko")), fake_module(info.as_bytes())).unwrap();
        }
        std::fs::write(dir.join("modules.builtin"), "kernel/lib/crc32c.ko\n").unwrap();
        dir
    }

    #[test]
    fn reads_modinfo_from_synthetic_elf() {
        let elf = fake_module(b"depends=a-b,c\0name=x\0");
        let info = modinfo_from_elf(&elf).unwrap();
        assert_eq!(depends(&info), names(&["a_b", "c"]));
        assert!(modinfo_from_elf(b"not an elf").is_err());
    }

    #[test]
    fn index_resolves_real_files() {
        let s = Scratch::new("modidx");
        let dir = fake_module_tree(
            &s.0,
            &[
                ("vfio-pci", "vfio-pci-core,vfio"),
                ("vfio-pci-core", "vfio,irqbypass,crc32c"),
                ("vfio", ""),
                ("irqbypass", ""),
                ("unrelated", ""),
            ],
        );
        let idx = ModuleIndex::scan(&dir).unwrap();
        let files = idx.resolve(&names(&["vfio_pci"])).unwrap();
        let fnames: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        // crc32c is built in, so it needs no file and is skipped.
        assert_eq!(
            fnames,
            ["vfio.ko", "irqbypass.ko", "vfio-pci-core.ko", "vfio-pci.ko"]
        );
        let e = idx.resolve(&names(&["nope"])).unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }

    /// Compresses `path` in place to `path.xz` with the `xz` tool and the
    /// options of the kernel's `make modules_install`.
    pub(crate) fn xz_like_the_kernel(path: &Path) -> PathBuf {
        let status = std::process::Command::new("xz")
            .args(["--check=crc32", "--lzma2=dict=1MiB"])
            .arg(path)
            .status()
            .expect("xz (xz-utils) must be installed");
        assert!(status.success());
        let mut packed = path.as_os_str().to_owned();
        packed.push(".xz");
        PathBuf::from(packed)
    }

    /// A module compressed by the `xz` tool exactly as the kernel's
    /// `make modules_install` does it decompresses to the same bytes.
    #[test]
    fn ko_xz_as_the_kernel_compresses_it() {
        let s = Scratch::new("modxz");
        let dir = fake_module_tree(&s.0, &[("vfio-pci", "vfio-pci-core,vfio")]);
        let plain = dir.join("kernel/sub0/vfio-pci.ko");
        let elf = std::fs::read(&plain).unwrap();
        let packed = xz_like_the_kernel(&plain);
        assert!(packed.is_file() && !plain.exists());
        assert_eq!(read_module(&packed).unwrap(), elf);
        let idx = ModuleIndex::scan(&dir).unwrap();
        assert_eq!(idx.path("vfio_pci"), Some(packed.as_path()));
        assert_eq!(
            depends(&read_modinfo(&packed).unwrap()),
            names(&["vfio_pci_core", "vfio"])
        );
        // A flipped byte in the payload fails the CRC, not silently.
        let mut bad = std::fs::read(&packed).unwrap();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        assert!(xz_decompress(&bad).is_err());
    }

    #[test]
    fn unknown_compression_is_a_clear_error() {
        let s = Scratch::new("modzst");
        let dir = fake_module_tree(&s.0, &[("a", "")]);
        std::fs::write(dir.join("kernel/b.ko.zst"), b"zstd").unwrap();
        std::fs::write(dir.join("kernel/c.ko.xz"), b"not xz").unwrap();
        let idx = ModuleIndex::scan(&dir).unwrap();
        let e = idx.resolve(&names(&["b"])).unwrap_err();
        assert!(e.contains("only .ko and .ko.xz"), "{e}");
        let e = idx.resolve(&names(&["c"])).unwrap_err();
        assert!(e.contains("bad xz data"), "{e}");
    }
}

/// The same reading on a real Debian 13 module, from the kernel package
/// `make image` unpacked under `build/kernel` (ignored by plain `cargo
/// test`, which has no kernel; `make test` runs it).
#[cfg(test)]
mod real_kernel {
    use super::*;
    use crate::kernel::Kernel;

    /// Every unpacked kernel under `build/kernel` whose modules are `.ko.xz`.
    fn compressed_kernels() -> Vec<Kernel> {
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/kernel");
        let Ok(rd) = std::fs::read_dir(&cache) else {
            return Vec::new();
        };
        rd.filter_map(|e| Kernel::from_dir(&e.ok()?.path()).ok())
            .filter(|k| {
                ModuleIndex::scan(&k.modules_dir)
                    .ok()
                    .and_then(|i| i.path("vfio_pci").map(Path::to_path_buf))
                    .is_some_and(|p| p.to_string_lossy().ends_with(".ko.xz"))
            })
            .collect()
    }

    #[test]
    #[ignore = "needs the kernel package `make image` fetches into build/kernel"]
    fn a_real_ko_xz_module_decompresses_and_names_its_dependencies() {
        let kernels = compressed_kernels();
        assert!(
            !kernels.is_empty(),
            "no unpacked kernel with .ko.xz modules under build/kernel: run `make image`"
        );
        for k in kernels {
            let index = ModuleIndex::scan(&k.modules_dir).unwrap();
            let path = index.path("vfio_pci").unwrap();
            let compressed = std::fs::read(path).unwrap();
            let elf = read_module(path).unwrap();
            assert_eq!(&elf[..4], b"\x7fELF", "{}", path.display());
            assert!(elf.len() > compressed.len(), "{}", path.display());
            let info = read_modinfo(path).unwrap();
            let field = |key: &str| {
                info.iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            assert_eq!(field("name"), "vfio_pci", "{}", path.display());
            assert!(
                field("vermagic").starts_with(&format!("{} ", k.release)),
                "{}: vermagic {:?}",
                path.display(),
                field("vermagic")
            );
            let deps = depends(&info);
            assert!(
                deps.contains(&"vfio_pci_core".to_string()) && deps.contains(&"vfio".to_string()),
                "{}: depends {deps:?}",
                path.display()
            );
            // Resolution walks the compressed files, dependencies first;
            // fuse is built into Debian 13's kernel, so it needs no file.
            let files = index
                .resolve(&["vfio-pci".into(), "vfio_iommu_type1".into(), "fuse".into()])
                .unwrap();
            let stems: Vec<String> = files
                .iter()
                .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            let pos = |s: &str| stems.iter().position(|x| x == s);
            assert!(pos("vfio.ko.xz") < pos("vfio-pci-core.ko.xz"), "{stems:?}");
            assert!(
                pos("vfio-pci-core.ko.xz") < pos("vfio-pci.ko.xz"),
                "{stems:?}"
            );
            assert!(pos("fuse.ko.xz").is_none(), "{stems:?}");
        }
    }
}
