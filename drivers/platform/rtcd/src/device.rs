//! The MC146818-compatible CMOS clock of a PC (ACPI `PNP0B00`), reached
//! through two I/O ports: an index register (which CMOS byte) and a data
//! register (that byte).
//!
//! Registers used (MC146818 data sheet, and the PC CMOS map):
//! - 0x00 seconds, 0x02 minutes, 0x04 hours, 0x06 day of week, 0x07 day of
//!   month, 0x08 month, 0x09 year (two digits);
//! - 0x0a status A: bit 7 UIP, set while the chip updates its time
//!   registers (reading then may give a torn value);
//! - 0x0b status B: bit 2 DM (1 = binary, 0 = BCD), bit 1 24/12 (1 = 24 h;
//!   in 12 h mode bit 7 of the hour is PM);
//! - the century byte, at the index the FADT gives (`CENTURY`, byte 108);
//!   0x32 by PC convention when it cannot be read.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use common::port::PortGrant;

pub const REG_SECONDS: u8 = 0x00;
pub const REG_MINUTES: u8 = 0x02;
pub const REG_HOURS: u8 = 0x04;
pub const REG_WEEKDAY: u8 = 0x06;
pub const REG_DAY: u8 = 0x07;
pub const REG_MONTH: u8 = 0x08;
pub const REG_YEAR: u8 = 0x09;
pub const REG_STATUS_A: u8 = 0x0a;
pub const REG_STATUS_B: u8 = 0x0b;
/// The usual century register when the FADT names none we can read.
pub const DEFAULT_CENTURY_REG: u8 = 0x32;

const STATUS_A_UIP: u8 = 1 << 7;
const STATUS_B_BINARY: u8 = 1 << 2;
const STATUS_B_24H: u8 = 1 << 1;
const HOUR_PM: u8 = 1 << 7;

/// The time registers exactly as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawTime {
    pub seconds: u8,
    pub minutes: u8,
    pub hours: u8,
    pub weekday: u8,
    pub day: u8,
    pub month: u8,
    pub year: u8,
    /// The century byte, or `None` when the machine has no century
    /// register (FADT `CENTURY` = 0).
    pub century: Option<u8>,
    pub status_a: u8,
    pub status_b: u8,
}

/// A calendar time in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl fmt::Display for DateTime {
    /// ISO 8601, UTC: `2024-11-22T03:12:03Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Decodes a register value in the chip's number format.
fn number(v: u8, binary: bool, what: &str) -> io::Result<u8> {
    if binary {
        return Ok(v);
    }
    let (hi, lo) = (v >> 4, v & 0x0f);
    if hi > 9 || lo > 9 {
        return Err(bad(format!("{what} {v:#04x} is not BCD")));
    }
    Ok(hi * 10 + lo)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u8) -> u8 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl RawTime {
    /// The calendar time these registers hold, checked for range. Without
    /// a century register, years 70-99 are 19xx and 00-69 are 20xx.
    pub fn decode(&self) -> io::Result<DateTime> {
        let binary = self.status_b & STATUS_B_BINARY != 0;
        let h24 = self.status_b & STATUS_B_24H != 0;
        let second = number(self.seconds, binary, "seconds")?;
        let minute = number(self.minutes, binary, "minutes")?;
        let hour = if h24 {
            number(self.hours, binary, "hours")?
        } else {
            // 12 h mode: 12 AM is midnight, 12 PM noon.
            let h = number(self.hours & !HOUR_PM, binary, "hours")?;
            if !(1..=12).contains(&h) {
                return Err(bad(format!("12-hour clock hour {h}")));
            }
            (h % 12) + if self.hours & HOUR_PM != 0 { 12 } else { 0 }
        };
        let day = number(self.day, binary, "day")?;
        let month = number(self.month, binary, "month")?;
        let yy = i64::from(number(self.year, binary, "year")?);
        let year = match self.century {
            Some(c) => i64::from(number(c, binary, "century")?) * 100 + yy,
            None if yy >= 70 => 1900 + yy,
            None => 2000 + yy,
        };
        if second > 59 || minute > 59 || hour > 23 || yy > 99 {
            return Err(bad(format!(
                "time {hour}:{minute}:{second} (year {yy}) is out of range"
            )));
        }
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err(bad(format!("date {year}-{month}-{day} does not exist")));
        }
        Ok(DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
    }

    /// The registers as `name 0xNN` lines (what `/scheme/time/cmos` shows).
    pub fn describe(&self, century_reg: Option<u8>) -> String {
        let mut s = String::new();
        for (name, v) in [
            ("seconds", self.seconds),
            ("minutes", self.minutes),
            ("hours", self.hours),
            ("weekday", self.weekday),
            ("day", self.day),
            ("month", self.month),
            ("year", self.year),
        ] {
            s.push_str(&format!("{name} {v:#04x}\n"));
        }
        match (self.century, century_reg) {
            (Some(c), Some(r)) => s.push_str(&format!("century {c:#04x} (register {r:#04x})\n")),
            _ => s.push_str("century none\n"),
        }
        s.push_str(&format!("status_a {:#04x}\n", self.status_a));
        s.push_str(&format!(
            "status_b {:#04x} ({}, {})\n",
            self.status_b,
            if self.status_b & STATUS_B_BINARY != 0 {
                "binary"
            } else {
                "bcd"
            },
            if self.status_b & STATUS_B_24H != 0 {
                "24h"
            } else {
                "12h"
            }
        ));
        s
    }
}

impl DateTime {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub fn unix_seconds(&self) -> i64 {
        // Days from the civil date (proleptic Gregorian), counting years
        // from March so the leap day is the last day of the "year".
        let (y, m) = if self.month <= 2 {
            (self.year - 1, i64::from(self.month) + 9)
        } else {
            (self.year, i64::from(self.month) - 3)
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * m + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

/// Where the time comes from: the CMOS chip, or a test double.
pub trait Clock {
    fn read(&mut self) -> io::Result<RawTime>;
    /// The CMOS index of the century byte, if any.
    fn century_register(&self) -> Option<u8>;
}

/// The chip, through the ports init granted: index port = the first
/// granted port, data port = the next.
pub struct Cmos {
    ports: PortGrant,
    index: u16,
    data: u16,
    century_reg: Option<u8>,
}

/// How long to wait for an update cycle to end (at most ~2 ms on real
/// chips; generous because TCG is slow).
const UIP_TIMEOUT: Duration = Duration::from_millis(100);
/// Reads until two in a row agree; an update between them changes one.
const READ_ATTEMPTS: usize = 10;

impl Cmos {
    /// Takes the grant (`INIT_IOPORTS`): its first port is the index
    /// register, the next the data register. Touches no port.
    pub fn new(ports: PortGrant, century_reg: Option<u8>) -> io::Result<Cmos> {
        let index = *ports
            .ranges()
            .first()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "no I/O ports were granted (INIT_IOPORTS is empty)",
                )
            })?
            .start();
        let data = index.checked_add(1).unwrap_or(index);
        if data == index || !ports.contains(data, 1) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the grant has index port {index:#x} but not the data port after it"),
            ));
        }
        Ok(Cmos {
            ports,
            index,
            data,
            century_reg,
        })
    }

    pub fn ports(&self) -> (u16, u16) {
        (self.index, self.data)
    }

    fn reg(&self, r: u8) -> io::Result<u8> {
        // Bit 7 of the index is the chipset's NMI mask: keep NMIs enabled.
        self.ports.write8(self.index, r & 0x7f)?;
        self.ports.read8(self.data)
    }

    fn wait_no_update(&self) -> io::Result<()> {
        let deadline = Instant::now() + UIP_TIMEOUT;
        while self.reg(REG_STATUS_A)? & STATUS_A_UIP != 0 {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the clock stayed in its update cycle",
                ));
            }
            std::hint::spin_loop();
        }
        Ok(())
    }

    fn read_once(&self) -> io::Result<RawTime> {
        self.wait_no_update()?;
        Ok(RawTime {
            seconds: self.reg(REG_SECONDS)?,
            minutes: self.reg(REG_MINUTES)?,
            hours: self.reg(REG_HOURS)?,
            weekday: self.reg(REG_WEEKDAY)?,
            day: self.reg(REG_DAY)?,
            month: self.reg(REG_MONTH)?,
            year: self.reg(REG_YEAR)?,
            century: self.century_reg.map(|r| self.reg(r)).transpose()?,
            status_a: self.reg(REG_STATUS_A)?,
            status_b: self.reg(REG_STATUS_B)?,
        })
    }
}

impl Clock for Cmos {
    /// A consistent set of time registers: read after any update cycle, and
    /// again until two reads agree (ignoring status A, whose UIP bit may
    /// rise in between).
    fn read(&mut self) -> io::Result<RawTime> {
        let mut last = self.read_once()?;
        for _ in 0..READ_ATTEMPTS {
            let now = self.read_once()?;
            let same = RawTime {
                status_a: last.status_a,
                ..now
            } == last;
            if same {
                return Ok(now);
            }
            last = now;
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the clock never read the same twice",
        ))
    }

    fn century_register(&self) -> Option<u8> {
        self.century_reg
    }
}

/// The century register the FADT names (byte 108, `CENTURY`), from the
/// table's raw bytes: `Some(0)` means the machine has none.
pub fn fadt_century(facp: &[u8]) -> Option<u8> {
    if facp.get(0..4)? != b"FACP" {
        return None;
    }
    let len = u32::from_le_bytes(facp.get(4..8)?.try_into().ok()?) as usize;
    if len <= 108 || facp.len() < len {
        return None;
    }
    facp.get(108).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status_b: u8) -> RawTime {
        RawTime {
            status_b,
            century: Some(0x20),
            ..Default::default()
        }
    }

    #[test]
    fn bcd_24h_with_century() {
        let t = RawTime {
            seconds: 0x59,
            minutes: 0x08,
            hours: 0x23,
            day: 0x29,
            month: 0x02,
            year: 0x24,
            ..raw(STATUS_B_24H)
        };
        let d = t.decode().unwrap();
        assert_eq!(d.to_string(), "2024-02-29T23:08:59Z");
        assert_eq!(d.unix_seconds(), 1_709_248_139);
    }

    #[test]
    fn binary_and_12h() {
        let base = RawTime {
            minutes: 30,
            day: 1,
            month: 1,
            year: 70,
            century: Some(19),
            ..raw(STATUS_B_BINARY)
        };
        // 12 AM is midnight, 12 PM noon, 1 PM 13:00.
        for (hours, want) in [(12, 0), (12 | HOUR_PM, 12), (1 | HOUR_PM, 13), (11, 11)] {
            let d = RawTime { hours, ..base }.decode().unwrap();
            assert_eq!(d.hour, want, "hours {hours:#x}");
        }
        let d = RawTime { hours: 0, ..base }.decode();
        assert!(d.is_err(), "hour 0 does not exist on a 12-hour clock");
        let d = RawTime {
            hours: 1 | HOUR_PM,
            ..base
        }
        .decode()
        .unwrap();
        assert_eq!(d.unix_seconds(), 13 * 3600 + 30 * 60);
        // 24 h binary.
        let d = RawTime {
            hours: 23,
            status_b: STATUS_B_BINARY | STATUS_B_24H,
            ..base
        }
        .decode()
        .unwrap();
        assert_eq!(d.to_string(), "1970-01-01T23:30:00Z");
    }

    #[test]
    fn without_a_century_register_the_year_is_windowed() {
        let t = RawTime {
            day: 1,
            month: 1,
            year: 0x69,
            century: None,
            status_b: STATUS_B_24H,
            ..Default::default()
        };
        assert_eq!(t.decode().unwrap().year, 2069);
        assert_eq!(RawTime { year: 0x70, ..t }.decode().unwrap().year, 1970);
    }

    #[test]
    fn garbage_is_an_error_not_a_date() {
        let ok = RawTime {
            day: 0x15,
            month: 0x06,
            year: 0x25,
            ..raw(STATUS_B_24H)
        };
        ok.decode().unwrap();
        for t in [
            RawTime {
                seconds: 0x60,
                ..ok
            },
            RawTime {
                seconds: 0x5a,
                ..ok
            },
            RawTime {
                minutes: 0xff,
                ..ok
            },
            RawTime { hours: 0x24, ..ok },
            RawTime { day: 0x00, ..ok },
            RawTime { day: 0x31, ..ok }, // June has 30 days
            RawTime { month: 0x13, ..ok },
            RawTime { month: 0x00, ..ok },
            RawTime {
                day: 0x29,
                month: 0x02,
                year: 0x25,
                ..ok
            },
            RawTime {
                century: Some(0xaa),
                ..ok
            },
        ] {
            assert!(t.decode().is_err(), "{t:?}");
        }
    }

    #[test]
    fn unix_seconds_match_known_dates() {
        let d = |year, month, day, hour, minute, second| DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        };
        assert_eq!(d(1970, 1, 1, 0, 0, 0).unix_seconds(), 0);
        assert_eq!(d(2000, 3, 1, 0, 0, 0).unix_seconds(), 951_868_800);
        assert_eq!(d(2038, 1, 19, 3, 14, 8).unix_seconds(), 1 << 31);
        assert_eq!(d(2100, 3, 1, 0, 0, 0).unix_seconds(), 4_107_542_400);
        assert_eq!(d(1969, 12, 31, 23, 59, 59).unix_seconds(), -1);
    }

    #[test]
    fn registers_are_described_raw() {
        let t = RawTime {
            seconds: 0x07,
            hours: 0x92,
            status_a: 0x26,
            ..raw(0x02)
        };
        let s = t.describe(Some(0x32));
        assert!(s.contains("seconds 0x07\n"), "{s}");
        assert!(s.contains("hours 0x92\n"), "{s}");
        assert!(s.contains("century 0x20 (register 0x32)\n"), "{s}");
        assert!(s.contains("status_b 0x02 (bcd, 24h)\n"), "{s}");
        let none = RawTime { century: None, ..t };
        assert!(none.describe(None).contains("century none\n"));
    }

    #[test]
    fn the_grant_names_the_ports() {
        /// A grant this test never uses to touch a port: `Cmos::new` only
        /// records the ports.
        fn grant(ranges: Vec<std::ops::RangeInclusive<u16>>) -> PortGrant {
            // SAFETY: no access is made through it (see above).
            unsafe { PortGrant::new(ranges) }
        }
        let c = Cmos::new(grant(vec![0x70..=0x71]), Some(0x32)).unwrap();
        assert_eq!(c.ports(), (0x70, 0x71));
        let c = Cmos::new(grant(vec![0x70..=0x70, 0x71..=0x71]), None).unwrap();
        assert_eq!(c.ports(), (0x70, 0x71));
        assert!(Cmos::new(PortGrant::default(), None).is_err());
        assert!(Cmos::new(grant(vec![0x70..=0x70]), None).is_err());
        assert!(Cmos::new(grant(vec![0xffff..=0xffff]), None).is_err());
    }

    #[test]
    fn fadt_century_field() {
        let mut t = vec![0u8; 244];
        t[0..4].copy_from_slice(b"FACP");
        t[4..8].copy_from_slice(&244u32.to_le_bytes());
        t[108] = 0x32;
        assert_eq!(fadt_century(&t), Some(0x32));
        t[108] = 0;
        assert_eq!(fadt_century(&t), Some(0));
        assert_eq!(fadt_century(&t[..100]), None, "truncated");
        t[0] = b'X';
        assert_eq!(fadt_century(&t), None, "not a FADT");
    }
}
