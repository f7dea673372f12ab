//! Builds the boot image: fetches Debian's generic kernel into a cache and
//! packs our static binaries, busybox, configuration and the kernel modules
//! we need into a deterministic initramfs (`initfs.cpio.gz`).

pub mod archive;
pub mod image;
pub mod kernel;
pub mod manifest;
pub mod modules;
