//! rtcd: the CMOS real-time clock (ACPI `PNP0B00`), served as `/scheme/time`.
//!
//! acpid finds the clock in the ACPI namespace and asks init to start
//! `rtcd@acpi-PNP0B00-<uid>` with exactly the I/O ports of its `_CRS`
//! (0x70-0x77 on q35), which init grants with `ioperm` before dropping to
//! uid `rtcd`. rtcd reads the clock only through those ports: the first
//! granted port is the index register, the next the data register. Before
//! it locks itself down it reads the FADT (`/scheme/acpi/tables/FACP`) for
//! the century register; if that fails it uses 0x32, the PC convention.
//! Then it registers `/scheme/time`, enters the seccomp sandbox and serves:
//!
//! | file | content |
//! | --- | --- |
//! | `now` | `<unix seconds> <YYYY-MM-DDTHH:MM:SSZ>\n`: the clock as UTC |
//! | `cmos` | the raw registers as read, one `name 0xNN` per line |
//!
//! Each open reads the chip once (waiting out an update cycle, reading
//! twice until the values agree), so a file's content is consistent
//! however it is read. The clock must hold UTC (QEMU's `-rtc base=utc`, the
//! default); BCD or binary and 12 or 24 hour modes are all decoded. The
//! clock is read-only here: writing it is not supported.

use std::io;
use std::process::ExitCode;

use ::scheme::Server;
use common::port::PortGrant;
use log::{info, warn};

mod device;
mod scheme;

use device::{Clock, Cmos};
use scheme::TimeScheme;

/// Where acpid serves the FADT's raw bytes.
const FADT_PATH: &str = "/scheme/acpi/tables/FACP";

fn main() -> ExitCode {
    daemon::main_with(run)
}

fn run() -> io::Result<()> {
    let daemon = daemon::Daemon::from_env()?;
    common::sandbox::check_unprivileged()?;
    check_args(std::env::args().skip(1))?;
    let grant = PortGrant::from_env()?;
    let mut cmos = Cmos::new(grant, century_register())?;
    let (index, data) = cmos.ports();
    match cmos.read().and_then(|raw| raw.decode()) {
        Ok(t) => info!("CMOS clock at ports {index:#x}/{data:#x} reads {t}"),
        // Served anyway: each open reports the error as EIO and logs why.
        Err(e) => warn!("CMOS clock at ports {index:#x}/{data:#x} does not read well: {e}"),
    }
    let reg = daemon.register_scheme("time")?;
    common::sandbox::enter_sandbox(&common::sandbox::RTCD)?;
    daemon.ready()?;
    ::scheme::serve(
        Server::from_registration(reg, TimeScheme::new(cmos))?,
        &daemon,
    )
}

/// The only arguments rtcd may get are acpid's `--mem BASE+LEN` (for a
/// devicetree clock); the CMOS clock has no memory window to use.
fn check_args(mut args: impl Iterator<Item = String>) -> io::Result<()> {
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--mem", Some(w)) => warn!("memory window {w} ignored: rtcd drives the clock by port"),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unexpected argument {a:?}"),
                ))
            }
        }
    }
    Ok(())
}

/// The century register's CMOS index from the FADT, 0x32 if it cannot be
/// read, `None` if the FADT says the machine has none.
fn century_register() -> Option<u8> {
    match std::fs::read(FADT_PATH).map(|t| device::fadt_century(&t)) {
        Ok(Some(0)) => {
            info!("the FADT names no century register: years 70-99 are 19xx, 00-69 20xx");
            None
        }
        Ok(Some(r)) => {
            info!("century register {r:#04x} (from the FADT)");
            Some(r)
        }
        Ok(None) => {
            warn!(
                "{FADT_PATH} is not a FADT; century register {:#04x} assumed",
                device::DEFAULT_CENTURY_REG
            );
            Some(device::DEFAULT_CENTURY_REG)
        }
        Err(e) => {
            info!(
                "cannot read {FADT_PATH} ({e}); century register {:#04x} assumed",
                device::DEFAULT_CENTURY_REG
            );
            Some(device::DEFAULT_CENTURY_REG)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mem_arguments_are_accepted() {
        let args = |a: &[&str]| check_args(a.iter().map(|s| s.to_string()));
        assert!(args(&[]).is_ok());
        assert!(args(&["--mem", "0xfe000070+0x2"]).is_ok());
        assert!(args(&["--mem"]).is_err());
        assert!(args(&["-v"]).is_err());
    }
}
