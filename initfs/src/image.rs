//! Assembling the boot image (`vmlinuz` + `initfs.cpio.gz`) from a manifest.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::{Compression, GzBuilder};
use object::read::elf::{ElfFile64, ProgramHeader};
use object::Endianness;

use crate::archive::{Archive, Data, Stats};
use crate::kernel::Kernel;
use crate::manifest::Manifest;
use crate::modules::ModuleIndex;

/// Where modules go in the image (flat, so init needs no directory walk).
const MODULE_DIR: &str = "/lib/modules";
/// The load list init reads: file names, dependencies first.
const MODULE_LIST: &str = "/etc/modules.load";
/// Load order of the optional modules not already loaded at boot.
const OPTIONAL_LIST: &str = "/etc/modules.optional";

/// Busybox applets never linked: PID 1 is ours, and a busybox `init`
/// reachable at these paths could be started by the kernel instead of it
/// (the kernel falls back to /sbin/init and /linuxrc).
const SKIPPED_APPLETS: [&str; 3] = ["/init", "/sbin/init", "/linuxrc"];

/// Everything `image` needs, already parsed from the command line.
pub struct ImageInputs<'a> {
    pub manifest: &'a Manifest,
    /// The manifest's directory; `[[tree]] src` is relative to it.
    pub manifest_dir: &'a Path,
    pub bins: &'a Path,
    pub kernel: &'a Kernel,
}

/// What was built, for the summary line.
#[derive(Debug)]
pub struct ImageSummary {
    pub stats: Stats,
    pub modules: usize,
    pub gz_bytes: u64,
    pub vmlinuz_bytes: u64,
    pub initfs: PathBuf,
    pub vmlinuz: PathBuf,
}

/// Builds the in-memory tree: everything except writing it out.
pub fn assemble(inp: &ImageInputs) -> Result<(Archive, usize), String> {
    let m = inp.manifest;
    let mut a = Archive::new();

    for d in &m.dirs {
        a.add_dir(d, dir_mode(d), "dirs")?;
    }

    // The kernel opens /dev/console for PID 1's stdio before anything can
    // mount devtmpfs; without the node init starts with no console at all.
    a.add_char_dev("/dev/console", 5, 1, 0o600, "built-in console node")?;
    a.add_char_dev("/dev/null", 1, 3, 0o666, "built-in null node")?;

    for b in &m.bin {
        let src = inp.bins.join(&b.name);
        if !src.is_file() {
            return Err(format!(
                "binary {:?} not found at {} (build it first: `make image`)",
                b.name,
                src.display()
            ));
        }
        check_static(
            &src,
            "run `make image` so it is built for the static target",
        )?;
        a.add_file(
            &b.dest,
            Data::Path(src),
            0o755,
            &format!("[[bin]] {}", b.name),
        )?;
    }

    // Trees before busybox so applet links never shadow a config file.
    for t in &m.tree {
        let src = inp.manifest_dir.join(&t.src);
        add_tree(
            &mut a,
            &src,
            &t.dest,
            &format!("[[tree]] {}", t.src.display()),
        )?;
    }

    for s in &m.symlink {
        a.add_symlink(&s.path, &s.target, "[[symlink]]")?;
    }

    let mut module_count = 0;
    if let Some(k) = &m.kernel {
        if !k.modules.is_empty() || !k.optional.is_empty() {
            let index = ModuleIndex::scan(&inp.kernel.modules_dir)?;
            let boot = index.resolve(&k.modules)?;
            let optional: Vec<PathBuf> = index
                .resolve(&k.optional)?
                .into_iter()
                .filter(|f| !boot.contains(f))
                .collect();
            for (files, list_path) in [(&boot, MODULE_LIST), (&optional, OPTIONAL_LIST)] {
                let mut list = String::new();
                for f in files {
                    let name = f
                        .file_name()
                        .and_then(|n| n.to_str())
                        .ok_or_else(|| format!("odd module file name {}", f.display()))?;
                    // Shipped decompressed: the kernel could take `.ko.xz` as it
                    // is (finit_module's MODULE_INIT_COMPRESSED_FILE), but
                    // busybox's insmod, the image's loader for hand and bench
                    // use, cannot; boot time is the same either way and the
                    // image 1 % larger (docs/architecture.md, The image).
                    let (name, data) = match name.strip_suffix(".xz") {
                        Some(plain) => (plain, Data::Bytes(crate::modules::read_module(f)?)),
                        None => (name, Data::Path(f.clone())),
                    };
                    a.add_file(
                        &format!("{MODULE_DIR}/{name}"),
                        data,
                        0o644,
                        "[kernel] modules",
                    )?;
                    list.push_str(name);
                    list.push('\n');
                }
                a.add_file(
                    list_path,
                    Data::Bytes(list.into_bytes()),
                    0o644,
                    "[kernel] modules",
                )?;
                module_count += files.len();
            }
        }
    }

    // Busybox last: its links fill in whatever paths are still free.
    if let Some(bb) = &m.busybox {
        add_busybox(&mut a, &bb.path, &bb.dest)?;
    }
    Ok((a, module_count))
}

/// /tmp must be world-writable and sticky, /root private; others 0755.
fn dir_mode(path: &str) -> u32 {
    match path.trim_end_matches('/') {
        "/tmp" => 0o1777,
        "/root" => 0o700,
        _ => 0o755,
    }
}

/// Fails if `path` is an ELF with a program interpreter: the image has no
/// libc or dynamic loader, so such a binary dies with a baffling ENOENT at
/// exec time in the guest. Non-ELF files (scripts) pass.
fn check_static(path: &Path, hint: &str) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !data.starts_with(b"\x7fELF") {
        return Ok(());
    }
    let elf = ElfFile64::<Endianness>::parse(data.as_slice())
        .map_err(|e| format!("{} is not a 64-bit ELF: {e}", path.display()))?;
    let endian = elf.endian();
    let dynamic = elf
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP);
    if dynamic {
        return Err(format!(
            "{} is dynamically linked but the image has no libc; {hint}",
            path.display()
        ));
    }
    Ok(())
}

/// Copies a host directory recursively; file modes are reduced to 0755 or
/// 0644 (by the owner's execute bit) so the image does not depend on the
/// umask of whoever checked out the tree.
fn add_tree(a: &mut Archive, src: &Path, dest: &str, origin: &str) -> Result<(), String> {
    let meta = std::fs::metadata(src)
        .map_err(|e| format!("{origin}: cannot read {}: {e}", src.display()))?;
    if !meta.is_dir() {
        return Err(format!("{origin}: {} is not a directory", src.display()));
    }
    a.add_dir(dest, 0o755, origin)?;
    let mut ents: Vec<_> = std::fs::read_dir(src)
        .map_err(|e| format!("{origin}: cannot list {}: {e}", src.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{origin}: cannot list {}: {e}", src.display()))?;
    ents.sort_by_key(|e| e.file_name());
    for ent in ents {
        let path = ent.path();
        let name = ent
            .file_name()
            .into_string()
            .map_err(|n| format!("{origin}: non-UTF-8 file name {n:?}"))?;
        let target = format!("{}/{name}", dest.trim_end_matches('/'));
        let meta = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("{origin}: cannot stat {}: {e}", path.display()))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            add_tree(a, &path, &target, origin)?;
        } else if ft.is_symlink() {
            let link = std::fs::read_link(&path)
                .map_err(|e| format!("{origin}: cannot read link {}: {e}", path.display()))?;
            let link = link
                .to_str()
                .ok_or_else(|| format!("{origin}: non-UTF-8 link {}", path.display()))?;
            a.add_symlink(&target, link, origin)?;
        } else if ft.is_file() {
            use std::os::unix::fs::PermissionsExt;
            let perm = if meta.permissions().mode() & 0o100 != 0 {
                0o755
            } else {
                0o644
            };
            a.add_file(&target, Data::Path(path), perm, origin)?;
        } else {
            return Err(format!(
                "{origin}: {} is neither a file, directory nor symlink",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Installs busybox and a link for each applet it lists, except where the
/// image already has a file and the PID-1 paths in `SKIPPED_APPLETS`.
fn add_busybox(a: &mut Archive, host: &Path, dest: &str) -> Result<(), String> {
    const HINT: &str = "install Debian's static build: `apt-get install busybox-static`";
    if !host.is_file() {
        return Err(format!("busybox not found at {}; {HINT}", host.display()));
    }
    check_static(host, HINT)?;
    let out = Command::new(host)
        .arg("--list-full")
        .output()
        .map_err(|e| format!("cannot run {} --list-full: {e}", host.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --list-full failed ({})",
            host.display(),
            out.status
        ));
    }
    let list = String::from_utf8_lossy(&out.stdout);
    let applets = applet_paths(&list);
    if applets.is_empty() {
        return Err(format!("{} --list-full listed no applets", host.display()));
    }
    a.add_file(dest, Data::Path(host.to_path_buf()), 0o755, "[busybox]")?;
    for path in applets {
        if path == dest || SKIPPED_APPLETS.contains(&path.as_str()) || a.contains(&path) {
            continue;
        }
        a.add_symlink(&path, dest, "[busybox] applet")?;
    }
    Ok(())
}

/// `busybox --list-full` prints `usr/bin/dd`-style relative paths.
fn applet_paths(list: &str) -> Vec<String> {
    let mut v: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains(".."))
        .map(|l| format!("/{}", l.trim_start_matches('/')))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Assembles and writes `out/vmlinuz` and `out/initfs.cpio.gz`.
pub fn build(inp: &ImageInputs, out: &Path) -> Result<ImageSummary, String> {
    let (archive, modules) = assemble(inp)?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;

    let initfs = out.join("initfs.cpio.gz");
    let tmp = out.join(".initfs.cpio.gz.tmp");
    let file =
        std::fs::File::create(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    // mtime 0 and no file name in the gzip header keep the output
    // byte-identical across rebuilds.
    let gz = GzBuilder::new()
        .mtime(0)
        .write(std::io::BufWriter::new(file), Compression::default());
    let (gz, stats) = archive.write(gz)?;
    let mut buf = gz
        .finish()
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    buf.flush()
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    drop(buf);
    // Rename last so an interrupted build never leaves a truncated image
    // under the real name.
    std::fs::rename(&tmp, &initfs).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            tmp.display(),
            initfs.display()
        )
    })?;

    let vmlinuz = out.join("vmlinuz");
    let vtmp = out.join(".vmlinuz.tmp");
    let vmlinuz_bytes = std::fs::copy(&inp.kernel.vmlinuz, &vtmp).map_err(|e| {
        format!(
            "cannot copy {} to {}: {e}",
            inp.kernel.vmlinuz.display(),
            vtmp.display()
        )
    })?;
    std::fs::rename(&vtmp, &vmlinuz).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            vtmp.display(),
            vmlinuz.display()
        )
    })?;

    let gz_bytes = std::fs::metadata(&initfs)
        .map_err(|e| format!("cannot stat {}: {e}", initfs.display()))?
        .len();
    Ok(ImageSummary {
        stats,
        modules,
        gz_bytes,
        vmlinuz_bytes,
        initfs,
        vmlinuz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::read_back;
    use crate::modules::tests::{fake_module_tree, xz_like_the_kernel, Scratch};

    /// A fake busybox: a shell script answering `--list-full` (a script
    /// passes the static check since it is not ELF).
    fn fake_busybox(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("busybox");
        std::fs::write(
            &p,
            "#!/bin/sh\nprintf 'bin/sh\\nsbin/init\\nlinuxrc\\nsbin/poweroff\\nusr/bin/dd\\nbin/probe\\n'\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn fixture(s: &Scratch, busybox: &Path) -> (Manifest, Kernel) {
        let bins = s.0.join("bins");
        std::fs::create_dir_all(&bins).unwrap();
        for b in ["init", "probe"] {
            std::fs::write(bins.join(b), format!("#!/bin/sh\necho {b}\n")).unwrap();
        }
        let etc = s.0.join("etc/init.d");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("10-pcid.toml"), "x = 1\n").unwrap();
        std::os::unix::fs::symlink("init.d/10-pcid.toml", s.0.join("etc/link")).unwrap();

        let kroot = s.0.join("kernel");
        let mods = fake_module_tree(
            &kroot,
            &[
                ("vfio-pci", "vfio"),
                ("vfio", ""),
                ("vfio_iommu_type1", "vfio"),
                ("fuse", ""),
                ("virtio_blk", "virtio"),
                ("virtio", ""),
            ],
        );
        // Debian 13 ships modules as .ko.xz.
        xz_like_the_kernel(&mods.join("kernel/sub0/vfio-pci.ko"));
        std::fs::create_dir_all(kroot.join("boot")).unwrap();
        std::fs::write(kroot.join("boot/vmlinuz-9.9.9-test-amd64"), b"KERNEL").unwrap();
        let kernel = Kernel::from_dir(&kroot).unwrap();

        let text = format!(
            r#"
dirs = ["/proc", "/tmp", "/root", "/dev"]
[[bin]]
name = "init"
dest = "/init"
[[bin]]
name = "probe"
dest = "/bin/probe"
[busybox]
path = "{}"
[[tree]]
src = "etc"
dest = "/etc"
[[symlink]]
path = "/usr/sbin/x"
target = "/bin/busybox"
[kernel]
modules = ["vfio-pci", "vfio_iommu_type1", "fuse"]
optional = ["virtio_blk", "vfio"]
"#,
            busybox.display()
        );
        (Manifest::parse(&text).unwrap(), kernel)
    }

    #[test]
    fn builds_image_and_reads_it_back() {
        let s = Scratch::new("image");
        let bb = fake_busybox(&s.0);
        let (m, kernel) = fixture(&s, &bb);
        let bins = s.0.join("bins");
        let inp = ImageInputs {
            manifest: &m,
            manifest_dir: &s.0,
            bins: &bins,
            kernel: &kernel,
        };
        let out = s.0.join("out");
        let sum = build(&inp, &out).unwrap();
        assert_eq!(std::fs::read(out.join("vmlinuz")).unwrap(), b"KERNEL");
        assert_eq!(sum.modules, 6);

        let gz = std::fs::read(out.join("initfs.cpio.gz")).unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut raw)
            .unwrap();
        assert_eq!(raw.len() as u64, sum.stats.bytes);
        let entries = read_back(&raw);
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        let absent = |n: &str| !entries.iter().any(|e| e.0 == n);

        assert_eq!(get("dev/console").1, 0o20600);
        assert_eq!(get("dev/console").2, (5, 1));
        assert_eq!(get("dev/null").2, (1, 3));
        assert_eq!(get("tmp").1, 0o41777);
        assert_eq!(get("root").1, 0o40700);
        assert_eq!(get("init").1, 0o100755);
        assert_eq!(get("init").3, b"#!/bin/sh\necho init\n");
        // Ours wins over the busybox applet of the same name.
        assert_eq!(get("bin/probe").1, 0o100755);
        assert_eq!(get("bin/busybox").1, 0o100755);
        assert_eq!(get("bin/sh").1, 0o120777);
        assert_eq!(get("bin/sh").3, b"/bin/busybox");
        assert_eq!(get("usr/bin/dd").3, b"/bin/busybox");
        assert_eq!(get("sbin/poweroff").3, b"/bin/busybox");
        assert!(absent("sbin/init") && absent("linuxrc"));
        assert_eq!(get("etc/init.d/10-pcid.toml").3, b"x = 1\n");
        assert_eq!(get("etc/init.d/10-pcid.toml").1, 0o100644);
        assert_eq!(get("etc/link").3, b"init.d/10-pcid.toml");
        assert_eq!(get("usr/sbin/x").1, 0o120777);
        assert_eq!(
            String::from_utf8(get("etc/modules.load").3.clone()).unwrap(),
            "vfio.ko\nvfio-pci.ko\nvfio_iommu_type1.ko\nfuse.ko\n"
        );
        assert_eq!(get("lib/modules/vfio-pci.ko").1, 0o100644);
        // The .ko.xz went in decompressed, under the plain name.
        let vfio_pci = &get("lib/modules/vfio-pci.ko").3;
        assert_eq!(&vfio_pci[..4], b"\x7fELF");
        assert!(String::from_utf8_lossy(vfio_pci).contains("depends=vfio\0name=vfio_pci"));
        assert!(absent("lib/modules/vfio-pci.ko.xz"));
        // Optional modules ship (with their dependencies) but are not in the
        // boot list; one already loaded at boot is not listed again.
        assert_eq!(
            String::from_utf8(get("etc/modules.optional").3.clone()).unwrap(),
            "virtio.ko\nvirtio_blk.ko\n"
        );
        assert_eq!(get("lib/modules/virtio_blk.ko").1, 0o100644);

        // Every entry's parent comes before it.
        for (i, e) in entries.iter().enumerate() {
            if let Some((parent, _)) = e.0.rsplit_once('/') {
                let p = entries.iter().position(|x| x.0 == parent).unwrap();
                assert!(p < i, "{} before its parent", e.0);
                assert_eq!(entries[p].1 & 0o170000, 0o040000);
            }
        }

        // Deterministic: a second build is byte-identical.
        build(&inp, &out).unwrap();
        assert_eq!(std::fs::read(out.join("initfs.cpio.gz")).unwrap(), gz);
    }

    #[test]
    fn missing_binary_names_it_and_suggests_make_image() {
        let s = Scratch::new("nobin");
        let bb = fake_busybox(&s.0);
        let (mut m, kernel) = fixture(&s, &bb);
        m.bin.push(crate::manifest::Bin {
            name: "nulld".into(),
            dest: "/bin/nulld".into(),
        });
        let bins = s.0.join("bins");
        let inp = ImageInputs {
            manifest: &m,
            manifest_dir: &s.0,
            bins: &bins,
            kernel: &kernel,
        };
        let e = assemble(&inp).unwrap_err();
        assert!(e.contains("nulld") && e.contains("make image"), "{e}");
    }

    #[test]
    fn missing_busybox_suggests_package() {
        let s = Scratch::new("nobb");
        let (m, kernel) = fixture(&s, &s.0.join("no-busybox"));
        let bins = s.0.join("bins");
        let inp = ImageInputs {
            manifest: &m,
            manifest_dir: &s.0,
            bins: &bins,
            kernel: &kernel,
        };
        let e = assemble(&inp).unwrap_err();
        assert!(e.contains("apt-get install busybox-static"), "{e}");
    }

    #[test]
    fn dynamic_binaries_are_rejected() {
        // /bin/sh on the build host is dynamically linked in any normal distro.
        let sh = Path::new("/bin/sh");
        let Ok(real) = std::fs::canonicalize(sh) else {
            return;
        };
        let data = std::fs::read(&real).unwrap();
        let Ok(elf) = ElfFile64::<Endianness>::parse(data.as_slice()) else {
            return;
        };
        let has_interp = elf
            .elf_program_headers()
            .iter()
            .any(|ph| ph.p_type(elf.endian()) == object::elf::PT_INTERP);
        let r = check_static(&real, "hint");
        assert_eq!(r.is_err(), has_interp);
    }

    #[test]
    fn applet_list_parsing() {
        assert_eq!(
            applet_paths("usr/bin/dd\nbin/sh\n\nbin/sh\n../etc/passwd\n"),
            ["/bin/sh", "/usr/bin/dd"]
        );
    }
}
