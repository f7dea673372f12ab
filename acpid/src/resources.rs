//! Resource templates (`_CRS` buffers, ACPI 6.4 §6.4) decoded into I/O
//! ranges, memory ranges and IRQs.
//!
//! Our own decoder rather than the `acpi` crate's
//! `resource_descriptor_list`: that one panics (`unimplemented!`) on several
//! descriptor types we must handle (32-bit memory ranges among them) and
//! indexes past the end of truncated buffers. This one is bounds-checked and
//! returns an error instead.

use std::fmt;
use std::ops::RangeInclusive;

/// What an address space descriptor describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Memory,
    Io,
    BusNumber,
    Other(u8),
}

/// Interrupt trigger and polarity, as the descriptor gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqFlags {
    pub edge: bool,
    pub active_low: bool,
    pub shared: bool,
    pub wake: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// IRQ (small) or Extended Interrupt (large) descriptor.
    Irq {
        irqs: Vec<u32>,
        flags: IrqFlags,
        extended: bool,
    },
    Dma {
        channels: Vec<u8>,
    },
    /// I/O port descriptor: the device decodes `len` ports from `min`
    /// (`min == max` in a `_CRS`, the current setting).
    Io {
        min: u16,
        max: u16,
        align: u8,
        len: u8,
    },
    FixedIo {
        base: u16,
        len: u8,
    },
    /// 24-bit, 32-bit or fixed 32-bit memory range descriptor.
    Memory {
        base: u64,
        len: u64,
        writable: bool,
        kind: &'static str,
    },
    /// Word, DWord, QWord or Extended address space descriptor.
    Address {
        space: Space,
        /// The device produces (bridges) this range rather than
        /// consuming it (general flags bit 0 clear).
        producer: bool,
        min: u64,
        max: u64,
        translation: u64,
        len: u64,
        writable: bool,
        kind: &'static str,
    },
    /// Anything else we do not decode (vendor, GPIO, serial bus, …).
    Other {
        tag: u8,
        len: usize,
    },
}

/// A template that could not be decoded completely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "resource template: {} at offset {:#x}",
            self.message, self.offset
        )
    }
}

impl std::error::Error for ResourceError {}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

fn mask_bits(mask: u32) -> impl Iterator<Item = u32> {
    (0..32).filter(move |b| mask & (1 << b) != 0)
}

/// Decodes a whole template up to its end tag (or the end of the buffer).
pub fn decode(buf: &[u8]) -> Result<Vec<Resource>, ResourceError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let tag = buf[at];
        let err = |message: String| ResourceError {
            offset: at,
            message,
        };
        if tag & 0x80 == 0 {
            // Small item: name in bits 6:3, length in bits 2:0.
            let name = (tag >> 3) & 0x0f;
            let len = usize::from(tag & 7);
            let body = buf
                .get(at + 1..at + 1 + len)
                .ok_or_else(|| err(format!("small item {tag:#04x} runs past the end")))?;
            let need = |n: usize| {
                if len < n {
                    Err(err(format!(
                        "small item {tag:#04x} has length {len}, needs {n}"
                    )))
                } else {
                    Ok(())
                }
            };
            match name {
                0x04 => {
                    need(2)?;
                    let mask = u32::from(u16_at(body, 0));
                    // Without the flags byte: edge-triggered, active high.
                    let f = body.get(2).copied().unwrap_or(1);
                    out.push(Resource::Irq {
                        irqs: mask_bits(mask).collect(),
                        flags: IrqFlags {
                            edge: f & 1 != 0,
                            active_low: f & 8 != 0,
                            shared: f & 0x10 != 0,
                            wake: f & 0x20 != 0,
                        },
                        extended: false,
                    });
                }
                0x05 => {
                    need(2)?;
                    out.push(Resource::Dma {
                        channels: (0..8).filter(|b| body[0] & (1 << b) != 0).collect(),
                    });
                }
                0x08 => {
                    need(7)?;
                    out.push(Resource::Io {
                        min: u16_at(body, 1),
                        max: u16_at(body, 3),
                        align: body[5],
                        len: body[6],
                    });
                }
                0x09 => {
                    need(3)?;
                    out.push(Resource::FixedIo {
                        // Fixed I/O decodes 10 address bits.
                        base: u16_at(body, 0) & 0x3ff,
                        len: body[2],
                    });
                }
                0x0f => break, // end tag
                _ => out.push(Resource::Other { tag, len }),
            }
            at += 1 + len;
        } else {
            // Large item: name in bits 6:0, 16-bit length.
            let len = buf
                .get(at + 1..at + 3)
                .map(|b| usize::from(u16_at(b, 0)))
                .ok_or_else(|| err(format!("large item {tag:#04x} is cut off")))?;
            let body = buf
                .get(at + 3..at + 3 + len)
                .ok_or_else(|| err(format!("large item {tag:#04x} runs past the end")))?;
            let need = |n: usize| {
                if len < n {
                    Err(err(format!(
                        "large item {tag:#04x} has length {len}, needs {n}"
                    )))
                } else {
                    Ok(())
                }
            };
            match tag & 0x7f {
                0x01 => {
                    need(9)?;
                    // 24-bit memory: addresses and length in 256-byte units.
                    out.push(Resource::Memory {
                        base: u64::from(u16_at(body, 1)) << 8,
                        len: u64::from(u16_at(body, 7)) << 8,
                        writable: body[0] & 1 != 0,
                        kind: "memory24",
                    });
                }
                0x05 => {
                    need(17)?;
                    out.push(Resource::Memory {
                        base: u32_at(body, 1).into(),
                        len: u32_at(body, 13).into(),
                        writable: body[0] & 1 != 0,
                        kind: "memory32",
                    });
                }
                0x06 => {
                    need(9)?;
                    out.push(Resource::Memory {
                        base: u32_at(body, 1).into(),
                        len: u32_at(body, 5).into(),
                        writable: body[0] & 1 != 0,
                        kind: "fixed-memory32",
                    });
                }
                0x07 | 0x08 | 0x0a | 0x0b => {
                    let (width, fields_at, kind) = match tag & 0x7f {
                        0x08 => (2, 3, "word"),
                        0x07 => (4, 3, "dword"),
                        0x0a => (8, 3, "qword"),
                        // Extended: revision and a reserved byte first.
                        _ => (8, 5, "extended"),
                    };
                    need(fields_at + 5 * width)?;
                    let field = |i: usize| {
                        let at = fields_at + i * width;
                        match width {
                            2 => u64::from(u16_at(body, at)),
                            4 => u64::from(u32_at(body, at)),
                            _ => u64_at(body, at),
                        }
                    };
                    let space = match body[0] {
                        0 => Space::Memory,
                        1 => Space::Io,
                        2 => Space::BusNumber,
                        n => Space::Other(n),
                    };
                    out.push(Resource::Address {
                        space,
                        producer: body[1] & 1 == 0,
                        min: field(1),
                        max: field(2),
                        translation: field(3),
                        len: field(4),
                        // Memory type-specific flags bit 0: read/write.
                        writable: space != Space::Memory || body[2] & 1 != 0,
                        kind,
                    });
                }
                0x09 => {
                    need(2)?;
                    let count = usize::from(body[1]);
                    need(2 + 4 * count)?;
                    let f = body[0];
                    out.push(Resource::Irq {
                        irqs: (0..count).map(|i| u32_at(body, 2 + 4 * i)).collect(),
                        flags: IrqFlags {
                            edge: f & 2 != 0,
                            active_low: f & 4 != 0,
                            shared: f & 8 != 0,
                            wake: f & 0x10 != 0,
                        },
                        extended: true,
                    });
                }
                _ => out.push(Resource::Other { tag, len }),
            }
            at += 3 + len;
        }
    }
    Ok(out)
}

/// What a device consumes, in `PlatformDevice` terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consumed {
    pub io: Vec<RangeInclusive<u16>>,
    /// (base, length, writable)
    pub memory: Vec<(u64, u64, bool)>,
    pub irqs: Vec<u32>,
}

/// The ranges and IRQs a device consumes. Address space descriptors that
/// the device *produces* (a bridge's windows) are left out: they are not the
/// device's own registers and must never become a driver's grant.
pub fn consumed(resources: &[Resource]) -> Consumed {
    let mut c = Consumed::default();
    let mut io = |base: u64, len: u64| {
        if len == 0 || base > 0xffff {
            return;
        }
        let last = (base + len - 1).min(0xffff);
        c.io.push(base as u16..=last as u16);
    };
    for r in resources {
        match r {
            Resource::Io { min, len, .. } => io((*min).into(), (*len).into()),
            Resource::FixedIo { base, len } => io((*base).into(), (*len).into()),
            Resource::Address {
                space: Space::Io,
                producer: false,
                min,
                len,
                ..
            } => io(*min, *len),
            _ => {}
        }
    }
    for r in resources {
        match r {
            Resource::Memory {
                base,
                len,
                writable,
                ..
            } if *len > 0 => c.memory.push((*base, *len, *writable)),
            Resource::Address {
                space: Space::Memory,
                producer: false,
                min,
                len,
                writable,
                ..
            } if *len > 0 => c.memory.push((*min, *len, *writable)),
            Resource::Irq { irqs, .. } => c.irqs.extend(irqs),
            _ => {}
        }
    }
    c
}

/// One line per resource, for the device files and symbol views.
pub fn describe(r: &Resource) -> String {
    match r {
        Resource::Irq {
            irqs,
            flags,
            extended,
        } => {
            let list: Vec<String> = irqs.iter().map(u32::to_string).collect();
            format!(
                "{} {}  {} {}{}{}",
                if *extended { "extended-irq" } else { "irq" },
                list.join(","),
                if flags.edge { "edge" } else { "level" },
                if flags.active_low {
                    "active-low"
                } else {
                    "active-high"
                },
                if flags.shared { " shared" } else { "" },
                if flags.wake { " wake" } else { "" }
            )
        }
        Resource::Dma { channels } => format!("dma {channels:?}"),
        Resource::Io {
            min,
            max,
            align,
            len,
        } => format!("io {min:#x}-{max:#x} align {align:#x} length {len:#x}"),
        Resource::FixedIo { base, len } => format!("fixed-io {base:#x} length {len:#x}"),
        Resource::Memory {
            base,
            len,
            writable,
            kind,
        } => format!(
            "{kind} {base:#x} length {len:#x} {}",
            if *writable { "rw" } else { "ro" }
        ),
        Resource::Address {
            space,
            producer,
            min,
            max,
            translation,
            len,
            writable,
            kind,
        } => format!(
            "{kind}-{} {min:#x}-{max:#x} length {len:#x} translation {translation:#x} {}{}",
            match space {
                Space::Memory => "memory".to_owned(),
                Space::Io => "io".to_owned(),
                Space::BusNumber => "bus".to_owned(),
                Space::Other(n) => format!("space{n}"),
            },
            if *producer { "producer" } else { "consumer" },
            if *space == Space::Memory && !*writable {
                " ro"
            } else {
                ""
            }
        ),
        Resource::Other { tag, len } => format!("other tag {tag:#04x} length {len}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_serial_template_decodes() {
        // IO(Decode16, 0x3f8, 0x3f8, 0, 8), IRQNoFlags(){4}, end tag.
        let t = [
            0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00,
        ];
        let r = decode(&t).unwrap();
        let c = consumed(&r);
        assert_eq!(c.io, [0x3f8..=0x3ff]);
        assert_eq!(c.irqs, [4]);
        assert!(c.memory.is_empty());
    }

    #[test]
    fn memory_and_extended_descriptors_decode() {
        let mut t = vec![0x86, 9, 0, 0]; // fixed memory32, read-only
        t.extend_from_slice(&0xfed0_0000u32.to_le_bytes());
        t.extend_from_slice(&0x400u32.to_le_bytes());
        t.extend_from_slice(&[0x85, 17, 0, 1]); // memory32, rw
        for v in [0xfe00_0000u32, 0xfe00_0000, 0x1000, 0x2000] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        t.extend_from_slice(&[0x89, 10, 0, 0x07, 2]); // ext irq, consumer, edge, low
        t.extend_from_slice(&20u32.to_le_bytes());
        t.extend_from_slice(&21u32.to_le_bytes());
        // QWord memory, consumer, rw.
        t.extend_from_slice(&[0x8a, 43, 0, 0, 0x01, 0x01]);
        for v in [0u64, 0x1_0000_0000, 0x1_0000_ffff, 0, 0x1_0000] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        // Word I/O, producer (a bridge window): never a consumed range.
        t.extend_from_slice(&[0x88, 13, 0, 1, 0x0c, 0x03]);
        for v in [0u16, 0x0d00, 0xffff, 0, 0xf300] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        t.extend_from_slice(&[0x79, 0]);
        let r = decode(&t).unwrap();
        assert_eq!(r.len(), 5, "{r:?}");
        let c = consumed(&r);
        assert_eq!(
            c.memory,
            [
                (0xfed0_0000, 0x400, false),
                (0xfe00_0000, 0x2000, true),
                (0x1_0000_0000, 0x1_0000, true)
            ]
        );
        assert_eq!(c.irqs, [20, 21]);
        assert!(c.io.is_empty());
        assert!(matches!(
            r[2],
            Resource::Irq {
                flags: IrqFlags {
                    edge: true,
                    active_low: true,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn truncated_templates_are_errors_not_panics() {
        let t = [
            0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00,
        ];
        for cut in 1..8 {
            assert!(decode(&t[..cut]).is_err(), "cut at {cut}");
        }
        // A large item that claims more than there is.
        assert!(decode(&[0x86, 0xff, 0xff, 0]).is_err());
        assert!(decode(&[0x89, 2, 0, 0, 5]).is_err());
        // Every prefix of every byte pattern: never a panic.
        for a in 0..=255u8 {
            for b in [0u8, 1, 2, 9, 0xff] {
                let _ = decode(&[a, b, 0, 0, 0]);
                let _ = decode(&[a]);
            }
        }
    }
}
