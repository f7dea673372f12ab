//! `initfs-build`: the command-line front end. See `usage()`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use initfs::image::{self, ImageInputs};
use initfs::kernel::{self, Kernel};
use initfs::manifest::Manifest;

fn usage() -> &'static str {
    "usage:
  initfs-build kernel --cache DIR
      make sure Debian's generic kernel is unpacked under DIR; print its directory
  initfs-build image --manifest FILE --bins DIR (--kernel-cache DIR | --kernel-dir DIR) --out DIR
      write DIR/vmlinuz and DIR/initfs.cpio.gz
      --kernel-cache fetches into a cache like `kernel`; --kernel-dir uses an
      already unpacked kernel (the root holding boot/ and lib/modules/)"
}

/// Parses `--flag value` pairs, rejecting unknown or repeated flags so a
/// typo fails loudly instead of being ignored.
fn parse_flags(args: &[String], allowed: &[&str]) -> Result<BTreeMap<String, String>, String> {
    let mut flags = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let name = a
            .strip_prefix("--")
            .filter(|n| allowed.contains(n))
            .ok_or_else(|| format!("unexpected argument {a:?}"))?;
        let value = it.next().ok_or_else(|| format!("{a} needs a value"))?;
        if flags.insert(name.to_string(), value.clone()).is_some() {
            return Err(format!("{a} given twice"));
        }
    }
    Ok(flags)
}

fn required<'a>(flags: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, String> {
    flags
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| format!("--{name} is required"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn cmd_kernel(args: &[String]) -> Result<(), String> {
    let flags = parse_flags(args, &["cache"])?;
    let k = kernel::ensure(Path::new(required(&flags, "cache")?))?;
    println!("{}", k.root.display());
    Ok(())
}

fn cmd_image(args: &[String]) -> Result<(), String> {
    let start = Instant::now();
    let flags = parse_flags(
        args,
        &["manifest", "bins", "kernel-cache", "kernel-dir", "out"],
    )?;
    let manifest_path = PathBuf::from(required(&flags, "manifest")?);
    let bins = PathBuf::from(required(&flags, "bins")?);
    let out = PathBuf::from(required(&flags, "out")?);
    let kernel = match (flags.get("kernel-cache"), flags.get("kernel-dir")) {
        (Some(cache), None) => kernel::ensure(Path::new(cache))?,
        (None, Some(dir)) => Kernel::from_dir(Path::new(dir))?,
        _ => return Err("give exactly one of --kernel-cache and --kernel-dir".into()),
    };
    let manifest = Manifest::load(&manifest_path)?;
    let manifest_dir = manifest_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let inputs = ImageInputs {
        manifest: &manifest,
        manifest_dir,
        bins: &bins,
        kernel: &kernel,
    };
    let s = image::build(&inputs, &out)?;
    println!(
        "initfs-build: {} {} ({} entries: {} files, {} links, {} dirs, {} nodes; {} modules; \
         cpio {}) + {} ({}, kernel {}) in {:.1} s",
        s.initfs.display(),
        mib(s.gz_bytes),
        s.stats.files + s.stats.symlinks + s.stats.dirs + s.stats.nodes,
        s.stats.files,
        s.stats.symlinks,
        s.stats.dirs,
        s.stats.nodes,
        s.modules,
        mib(s.stats.bytes),
        s.vmlinuz.display(),
        mib(s.vmlinuz_bytes),
        kernel.release,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("kernel") => cmd_kernel(&args[1..]),
        Some("image") => cmd_image(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        _ => Err(usage().to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("initfs-build: {e}");
            ExitCode::FAILURE
        }
    }
}
