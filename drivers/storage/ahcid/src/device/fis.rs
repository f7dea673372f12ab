//! What the driver writes into DMA memory for the HBA and what it reads
//! back: the Register Host-to-Device FIS (SATA 3.x section 10.5.5), ATA
//! commands in it (ACS-3), command headers and the PRDT (AHCI 1.3.1
//! sections 4.2.2, 4.2.3) and the IDENTIFY DEVICE data (ACS-3 7.12.7).
//! Pure byte layouts, host-tested at the foot of this file.

/// ATA commands we send (ACS-3 table 206).
pub mod ata {
    pub const READ_DMA_EXT: u8 = 0x25;
    pub const WRITE_DMA_EXT: u8 = 0x35;
    pub const READ_FPDMA_QUEUED: u8 = 0x60;
    pub const WRITE_FPDMA_QUEUED: u8 = 0x61;
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
    pub const IDENTIFY_DEVICE: u8 = 0xec;
}

/// FIS type of a Register Host-to-Device FIS.
pub const FIS_TYPE_H2D: u8 = 0x27;
/// Its length, in bytes and in the command header's dwords.
pub const H2D_LEN: usize = 20;
/// Byte 1 bit 7: the FIS carries a command (not a device control update).
const H2D_COMMAND: u8 = 1 << 7;
/// Device register: LBA addressing (bit 6, as ACS-3 wants for 48-bit and
/// queued commands).
const DEVICE_LBA: u8 = 1 << 6;

/// Largest sector count one 48-bit or queued command carries (a count of
/// 0 means 65536; we never send 0).
pub const MAX_SECTORS: u32 = 0xffff;
/// Largest LBA a 48-bit command addresses, plus one.
pub const LBA48_LIMIT: u64 = 1 << 48;

/// A Register H2D FIS for a command without data or LBA (FLUSH CACHE EXT,
/// IDENTIFY DEVICE).
pub fn h2d_plain(command: u8) -> [u8; H2D_LEN] {
    let mut f = [0u8; H2D_LEN];
    f[0] = FIS_TYPE_H2D;
    f[1] = H2D_COMMAND;
    f[2] = command;
    f
}

/// A command FIS addressing `lba` (48 bits, bytes 4-6 and 8-10) in LBA
/// mode; the caller adds the count.
fn h2d_lba(command: u8, lba: u64) -> [u8; H2D_LEN] {
    let mut f = h2d_plain(command);
    let b = lba.to_le_bytes();
    f[4..7].copy_from_slice(&b[0..3]);
    f[8..11].copy_from_slice(&b[3..6]);
    f[7] = DEVICE_LBA;
    f
}

/// READ/WRITE DMA EXT of `count` (1..=65535) sectors at `lba`: the count
/// in the Count field (bytes 12, 13).
pub fn h2d_dma_ext(write: bool, lba: u64, count: u16) -> [u8; H2D_LEN] {
    let command = if write {
        ata::WRITE_DMA_EXT
    } else {
        ata::READ_DMA_EXT
    };
    let mut f = h2d_lba(command, lba);
    f[12..14].copy_from_slice(&count.to_le_bytes());
    f
}

/// READ/WRITE FPDMA QUEUED of `count` sectors at `lba` with NCQ tag `tag`
/// (0..32): the count goes in the Feature field (bytes 3, 11), the tag in
/// Count bits 7:3 (byte 12), priority 0, no FUA (ACS-3 13.6.4, 13.6.7).
pub fn h2d_fpdma(write: bool, lba: u64, count: u16, tag: u8) -> [u8; H2D_LEN] {
    let command = if write {
        ata::WRITE_FPDMA_QUEUED
    } else {
        ata::READ_FPDMA_QUEUED
    };
    let mut f = h2d_lba(command, lba);
    let c = count.to_le_bytes();
    f[3] = c[0];
    f[11] = c[1];
    f[12] = (tag & 0x1f) << 3;
    f
}

/// One command header (AHCI 4.2.2): 32 bytes in the command list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandHeader {
    /// The command FIS's length in dwords (bits 4:0).
    pub fis_dwords: u8,
    /// The device is written to (bit 6).
    pub write: bool,
    /// PRDT entries (bits 31:16).
    pub prdt_len: u16,
    /// The command table's IOVA (128-byte aligned).
    pub table: u64,
}

/// Header DW0 bit 6: write (host to device).
const HDR_WRITE: u32 = 1 << 6;
pub const HEADER_LEN: usize = 32;

impl CommandHeader {
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        let mut dw0 = u32::from(self.fis_dwords & 0x1f) | (u32::from(self.prdt_len) << 16);
        if self.write {
            dw0 |= HDR_WRITE;
        }
        b[0..4].copy_from_slice(&dw0.to_le_bytes());
        // DW1 (PRDBC, bytes transferred) starts at 0; the HBA counts up.
        b[8..16].copy_from_slice(&self.table.to_le_bytes());
        b
    }
}

/// One PRD entry (AHCI 4.2.3.3): 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prd {
    pub iova: u64,
    pub bytes: u32,
}

pub const PRD_LEN: usize = 16;
/// Most bytes one entry describes (DBC is 22 bits of count minus one).
pub const PRD_MAX_BYTES: u64 = 4 << 20;
/// Offset of the PRDT in a command table (after CFIS, ACMD, reserved).
pub const PRDT_OFFSET: usize = 0x80;

impl Prd {
    /// DBA, DBAU, reserved, DBC (byte count minus one); no per-entry
    /// interrupt (completions are signalled by the FIS that ends the
    /// command).
    pub fn to_bytes(self) -> [u8; PRD_LEN] {
        let mut b = [0u8; PRD_LEN];
        b[0..8].copy_from_slice(&self.iova.to_le_bytes());
        b[12..16].copy_from_slice(&(self.bytes.saturating_sub(1) & 0x3f_ffff).to_le_bytes());
        b
    }
}

/// Why a scatter list cannot be a PRDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrdtError {
    /// A segment's address or length is odd (DBA bit 0 is reserved, DBC
    /// must describe an even count).
    Odd {
        iova: u64,
        len: u64,
    },
    Empty,
    /// More entries than the command table has room for.
    TooMany(usize),
}

/// The PRDT for `segments` (IOVA, length): adjacent segments merged, each
/// entry at most 4 MiB, at most `max_entries` entries.
pub fn build_prdt(segments: &[(u64, u64)], max_entries: usize) -> Result<Vec<Prd>, PrdtError> {
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for &(iova, len) in segments {
        if len == 0 {
            continue;
        }
        if !iova.is_multiple_of(2) || !len.is_multiple_of(2) {
            return Err(PrdtError::Odd { iova, len });
        }
        match merged.last_mut() {
            Some((start, l)) if *start + *l == iova => *l += len,
            _ => merged.push((iova, len)),
        }
    }
    if merged.is_empty() {
        return Err(PrdtError::Empty);
    }
    let mut out = Vec::new();
    for (mut iova, mut len) in merged {
        while len > 0 {
            let n = len.min(PRD_MAX_BYTES);
            out.push(Prd {
                iova,
                bytes: n as u32,
            });
            iova += n;
            len -= n;
        }
    }
    if out.len() > max_entries {
        return Err(PrdtError::TooMany(out.len()));
    }
    Ok(out)
}

/// What IDENTIFY DEVICE tells us (ACS-3 table 45, words as noted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identify {
    pub model: String,
    pub serial: String,
    pub firmware: String,
    /// Logical sectors.
    pub sectors: u64,
    pub lba48: bool,
    pub sector_size: u32,
    /// NCQ supported, with this queue depth (1..=32).
    pub ncq_depth: Option<u32>,
    pub write_cache: bool,
    pub flush_ext: bool,
}

/// IDENTIFY's ATA strings: two characters per word, the first in the high
/// byte (ACS-3 3.4.9), padded with spaces.
fn ata_string(words: &[u16]) -> String {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    String::from_utf8_lossy(&bytes)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_owned()
}

/// Parses the 256 words (512 bytes) of IDENTIFY DEVICE data. `None` if it
/// is not ATA device data: word 0 bit 15 (set for ATAPI) or no LBA.
pub fn parse_identify(raw: &[u8]) -> Option<Identify> {
    if raw.len() < 512 {
        return None;
    }
    let w: Vec<u16> = raw[..512]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let bit = |word: usize, b: u32| w[word] & (1 << b) != 0;
    // Word 0 bit 15: 0 for ATA devices. Word 49 bit 9: LBA supported.
    if bit(0, 15) || !bit(49, 9) {
        return None;
    }
    // Words 83 and 86 are valid when bits 15:14 of 83 read 01b.
    let w83_valid = w[83] & 0xc000 == 0x4000;
    let lba48 = w83_valid && bit(83, 10) && bit(86, 10);
    let sectors = if lba48 {
        u64::from(w[100])
            | u64::from(w[101]) << 16
            | u64::from(w[102]) << 32
            | u64::from(w[103]) << 48
    } else {
        u64::from(w[60]) | u64::from(w[61]) << 16
    };
    // Word 106: valid if 15:14 = 01b; bit 12: logical sectors longer than
    // 256 words, their length in words 117-118.
    let mut sector_size = 512;
    if w[106] & 0xc000 == 0x4000 && bit(106, 12) {
        let words = u32::from(w[117]) | u32::from(w[118]) << 16;
        sector_size = words.saturating_mul(2);
    }
    // Word 76 bit 8: NCQ; word 75 bits 4:0: queue depth minus one.
    let ncq_depth = (w[76] != 0xffff && bit(76, 8)).then(|| u32::from(w[75] & 0x1f) + 1);
    // Word 82 bit 5 / 85 bit 5: write cache supported / enabled.
    let w85_valid = w[87] & 0xc000 == 0x4000;
    let write_cache = bit(82, 5) && (!w85_valid || bit(85, 5));
    let flush_ext = w83_valid && bit(83, 13);
    Some(Identify {
        model: ata_string(&w[27..47]),
        serial: ata_string(&w[10..20]),
        firmware: ata_string(&w[23..27]),
        sectors,
        lba48,
        sector_size,
        ncq_depth,
        write_cache,
        flush_ext,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::tests::identify_words;

    #[test]
    fn a_dma_ext_fis_puts_lba_and_count_where_sata_says() {
        let f = h2d_dma_ext(false, 0x0605_0403_0201, 0x1234);
        assert_eq!(f[0], 0x27);
        assert_eq!(f[1], 0x80, "command bit, PMP 0");
        assert_eq!(f[2], ata::READ_DMA_EXT);
        assert_eq!(f[3], 0, "no features");
        assert_eq!([f[4], f[5], f[6]], [0x01, 0x02, 0x03]);
        assert_eq!(f[7], 0x40, "LBA mode");
        assert_eq!([f[8], f[9], f[10]], [0x04, 0x05, 0x06]);
        assert_eq!([f[12], f[13]], [0x34, 0x12]);
        assert_eq!(f[11], 0);
        assert_eq!(h2d_dma_ext(true, 0, 1)[2], ata::WRITE_DMA_EXT);
    }

    #[test]
    fn an_ncq_fis_carries_count_in_features_and_tag_in_count() {
        let f = h2d_fpdma(true, 0x0000_0a0b_0c0d, 0x0180, 31);
        assert_eq!(f[2], ata::WRITE_FPDMA_QUEUED);
        assert_eq!([f[3], f[11]], [0x80, 0x01], "sector count in FEATURE 15:0");
        assert_eq!(f[12], 31 << 3, "tag in COUNT 7:3");
        assert_eq!(f[13], 0, "priority 0");
        assert_eq!(
            [f[4], f[5], f[6], f[8], f[9], f[10]],
            [0x0d, 0x0c, 0x0b, 0x0a, 0, 0]
        );
        assert_eq!(f[7], 0x40, "LBA, no FUA");
        assert_eq!(h2d_fpdma(false, 0, 8, 5)[2], ata::READ_FPDMA_QUEUED);
        assert_eq!(h2d_fpdma(false, 0, 8, 5)[12], 5 << 3);
    }

    #[test]
    fn a_command_header_has_length_direction_entries_and_table() {
        let h = CommandHeader {
            fis_dwords: 5,
            write: true,
            prdt_len: 3,
            table: 0x1_2345_6780,
        };
        let b = h.to_bytes();
        assert_eq!(
            u32::from_le_bytes(b[0..4].try_into().unwrap()),
            5 | 1 << 6 | 3 << 16
        );
        assert_eq!(&b[4..8], &[0; 4], "PRDBC starts at 0");
        assert_eq!(
            u64::from_le_bytes(b[8..16].try_into().unwrap()),
            0x1_2345_6780
        );
        let r = CommandHeader { write: false, ..h }.to_bytes();
        assert_eq!(r[0] & 0x40, 0);
    }

    #[test]
    fn prdt_merges_adjacent_segments_and_splits_at_4_mib() {
        // Two runs: 16 KiB + 16 KiB adjacent, then a distant 6 MiB one.
        let segs = [
            (0x10_0000, 0x4000),
            (0x10_4000, 0x4000),
            (0x80_0000, 6 << 20),
        ];
        let p = build_prdt(&segs, 8).unwrap();
        assert_eq!(
            p,
            [
                Prd {
                    iova: 0x10_0000,
                    bytes: 0x8000
                },
                Prd {
                    iova: 0x80_0000,
                    bytes: 4 << 20
                },
                Prd {
                    iova: 0x80_0000 + (4 << 20),
                    bytes: 2 << 20
                },
            ]
        );
        let b = p[1].to_bytes();
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 0x3f_ffff);
        assert_eq!(
            u32::from_le_bytes(p[0].to_bytes()[12..16].try_into().unwrap()),
            0x7fff
        );
    }

    #[test]
    fn prdt_takes_unaligned_even_segments_and_refuses_odd_ones() {
        let p = build_prdt(&[(0x1002, 0x1fe), (0x3000, 2)], 4).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0],
            Prd {
                iova: 0x1002,
                bytes: 0x1fe
            }
        );
        assert_eq!(
            build_prdt(&[(0x1001, 2)], 4),
            Err(PrdtError::Odd {
                iova: 0x1001,
                len: 2
            })
        );
        assert_eq!(
            build_prdt(&[(0x1000, 511)], 4),
            Err(PrdtError::Odd {
                iova: 0x1000,
                len: 511
            })
        );
        assert_eq!(build_prdt(&[], 4), Err(PrdtError::Empty));
        let many: Vec<(u64, u64)> = (0..5).map(|i| (0x10000 * (i + 1) * 2, 512)).collect();
        assert_eq!(build_prdt(&many, 4), Err(PrdtError::TooMany(5)));
    }

    #[test]
    fn identify_gives_model_serial_capacity_ncq_and_cache() {
        let id = parse_identify(&identify_words(0x1_0000_2000, true)).unwrap();
        assert_eq!(id.model, "QEMU HARDDISK");
        assert_eq!(id.serial, "QM00001");
        assert_eq!(id.firmware, "2.5+");
        assert!(id.lba48);
        assert_eq!(id.sectors, 0x1_0000_2000, "LBA48 count, not the 28-bit one");
        assert_eq!(id.sector_size, 512);
        assert_eq!(id.ncq_depth, Some(32));
        assert!(id.write_cache && id.flush_ext);
    }

    #[test]
    fn identify_without_lba48_uses_the_28_bit_count_and_refuses_atapi() {
        let mut raw = identify_words(1 << 20, true);
        raw[83 * 2 + 1] &= !(1 << 2); // word 83 bit 10
        raw[76 * 2 + 1] = 0; // no NCQ
        let id = parse_identify(&raw).unwrap();
        assert!(!id.lba48);
        assert_eq!(id.sectors, 0x0fff_ffff);
        assert_eq!(id.ncq_depth, None);
        let mut atapi = identify_words(1, true);
        atapi[1] |= 0x80;
        assert_eq!(parse_identify(&atapi), None);
        assert_eq!(parse_identify(&[0; 100]), None);
    }
}
