//! x86 port I/O for ports the process was granted.
//!
//! A platform driver never gains I/O privilege itself: init calls `ioperm`
//! for the unit's `ioports` (and for the ranges an enumerator such as acpid
//! asked for in `spawn`) in the child before it drops uid and capabilities.
//! The permission bitmap survives `execve`, so the driver starts able to
//! reach exactly those ports; an `in`/`out` on any other port is a general
//! protection fault, which the kernel delivers as `SIGSEGV`.
//!
//! init tells the process what it granted in `INIT_IOPORTS`, whose format
//! is init's protocol (`daemon::ports`). [`PortGrant`] checks every access
//! against the grant before touching the port; the raw [`inb`]/[`outb`]
//! family is `unsafe` because a port write can do anything to the machine.

use std::io;
use std::ops::RangeInclusive;

use crate::err;

/// Reads a byte from `port`.
///
/// # Safety
/// The process must hold I/O permission for `port` (else `SIGSEGV`), and
/// reading it must not break whatever else drives that device (some
/// registers have side effects on read).
#[cfg(target_arch = "x86_64")]
pub unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: the caller upholds the contract above. No `nomem`: the access
    // must stay ordered with the program's memory accesses.
    unsafe {
        core::arch::asm!("in al, dx", out("al") v, in("dx") port, options(nostack, preserves_flags))
    };
    v
}

/// Reads 16 bits from `port` (and `port + 1`).
///
/// # Safety
/// As for [`inb`], for both ports.
#[cfg(target_arch = "x86_64")]
pub unsafe fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: see `inb`.
    unsafe {
        core::arch::asm!("in ax, dx", out("ax") v, in("dx") port, options(nostack, preserves_flags))
    };
    v
}

/// Reads 32 bits from `port` .. `port + 3`.
///
/// # Safety
/// As for [`inb`], for all four ports.
#[cfg(target_arch = "x86_64")]
pub unsafe fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: see `inb`.
    unsafe {
        core::arch::asm!("in eax, dx", out("eax") v, in("dx") port, options(nostack, preserves_flags))
    };
    v
}

/// Writes a byte to `port`.
///
/// # Safety
/// The process must hold I/O permission for `port`, and the write must be
/// right for the device there: a port write can reset or power off the
/// machine, or make a device DMA anywhere.
#[cfg(target_arch = "x86_64")]
pub unsafe fn outb(port: u16, v: u8) {
    // SAFETY: the caller upholds the contract above.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nostack, preserves_flags))
    };
}

/// Writes 16 bits to `port` (and `port + 1`).
///
/// # Safety
/// As for [`outb`], for both ports.
#[cfg(target_arch = "x86_64")]
pub unsafe fn outw(port: u16, v: u16) {
    // SAFETY: see `outb`.
    unsafe {
        core::arch::asm!("out dx, ax", in("dx") port, in("ax") v, options(nostack, preserves_flags))
    };
}

/// Writes 32 bits to `port` .. `port + 3`.
///
/// # Safety
/// As for [`outb`], for all four ports.
#[cfg(target_arch = "x86_64")]
pub unsafe fn outl(port: u16, v: u32) {
    // SAFETY: see `outb`.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nostack, preserves_flags))
    };
}

/// The ports this process may touch, with checked accessors: an access
/// outside the grant fails with `PermissionDenied` and never reaches the
/// port (so it cannot fault either).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortGrant {
    ranges: Vec<RangeInclusive<u16>>,
}

impl PortGrant {
    /// A grant of `ranges`.
    ///
    /// # Safety
    /// The safe accessors trust the grant: the process must really hold I/O
    /// permission for `ranges`, and the ports must be ones this program may
    /// drive. [`PortGrant::from_env`] (what init granted) is the normal way.
    pub unsafe fn new(ranges: Vec<RangeInclusive<u16>>) -> PortGrant {
        PortGrant { ranges }
    }

    /// What init granted this process (`INIT_IOPORTS`); empty when unset.
    pub fn from_env() -> io::Result<PortGrant> {
        // init sets INIT_IOPORTS to exactly the ranges it called ioperm for
        // in this process before exec.
        Ok(PortGrant {
            ranges: daemon::ports::granted_from_env()?,
        })
    }

    pub fn ranges(&self) -> &[RangeInclusive<u16>] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether every byte of a `width`-byte access at `port` is granted.
    pub fn contains(&self, port: u16, width: u16) -> bool {
        if width == 0 {
            return false;
        }
        let Some(last) = port.checked_add(width - 1) else {
            return false;
        };
        (port..=last).all(|p| self.ranges.iter().any(|r| r.contains(&p)))
    }

    fn check(&self, port: u16, width: u16) -> io::Result<()> {
        if self.contains(port, width) {
            Ok(())
        } else {
            Err(err(
                io::ErrorKind::PermissionDenied,
                format!(
                    "port {port:#x} ({width} byte{}) is outside the grant [{}]",
                    if width == 1 { "" } else { "s" },
                    daemon::ports::format_grant(&self.ranges)
                ),
            ))
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl PortGrant {
    pub fn read8(&self, port: u16) -> io::Result<u8> {
        self.check(port, 1)?;
        // SAFETY: the port is in the grant init gave this process (checked
        // above), so the access cannot fault.
        Ok(unsafe { inb(port) })
    }

    pub fn read16(&self, port: u16) -> io::Result<u16> {
        self.check(port, 2)?;
        // SAFETY: both ports are granted (checked above).
        Ok(unsafe { inw(port) })
    }

    pub fn read32(&self, port: u16) -> io::Result<u32> {
        self.check(port, 4)?;
        // SAFETY: all four ports are granted (checked above).
        Ok(unsafe { inl(port) })
    }

    pub fn write8(&self, port: u16, v: u8) -> io::Result<()> {
        self.check(port, 1)?;
        // SAFETY: the port is granted (checked above); the grant is the
        // device the caller drives, so what it writes there is its business.
        unsafe { outb(port, v) };
        Ok(())
    }

    pub fn write16(&self, port: u16, v: u16) -> io::Result<()> {
        self.check(port, 2)?;
        // SAFETY: both ports are granted (checked above).
        unsafe { outw(port, v) };
        Ok(())
    }

    pub fn write32(&self, port: u16, v: u32) -> io::Result<()> {
        self.check(port, 4)?;
        // SAFETY: all four ports are granted (checked above).
        unsafe { outl(port, v) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_checks_every_byte_of_the_access() {
        // SAFETY: the test never reaches a port (every access is refused
        // or only `contains` is asked).
        let g = unsafe { PortGrant::new(vec![0x70..=0x71, 0x72..=0x73, 0xfffe..=0xffff]) };
        assert!(g.contains(0x70, 1));
        assert!(g.contains(0x71, 1));
        assert!(!g.contains(0x6f, 1));
        assert!(!g.contains(0x74, 1));
        // Adjacent ranges together cover a wider access.
        assert!(g.contains(0x70, 4));
        assert!(g.contains(0x71, 2));
        assert!(!g.contains(0x71, 4));
        assert!(!g.contains(0x70, 0));
        assert!(g.contains(0xfffe, 2));
        // Past the end of the port space never wraps to port 0.
        assert!(!g.contains(0xffff, 2));
        assert!(!PortGrant::default().contains(0x70, 1));
    }

    /// An access outside the grant must fail *before* the instruction: this
    /// test process holds no I/O permission at all, so reaching the port
    /// would kill it with SIGSEGV instead of returning an error.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn refused_accesses_never_touch_the_port() {
        // SAFETY: the test never reaches a port (every access is refused
        // or only `contains` is asked).
        let g = unsafe { PortGrant::new(vec![0x70..=0x71]) };
        for e in [
            g.read8(0x80).unwrap_err(),
            g.read16(0x71).unwrap_err(),
            g.read32(0x70).unwrap_err(),
            g.write8(0x64, 0xfe).unwrap_err(),
            g.write16(0x6f, 0).unwrap_err(),
            g.write32(0xcf8, 0).unwrap_err(),
        ] {
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            assert!(e.to_string().contains("outside the grant [70-71]"), "{e}");
        }
    }
}
