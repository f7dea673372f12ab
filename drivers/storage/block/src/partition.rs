//! Partition tables: MBR (four primary entries) and GPT (UEFI spec, chapter
//! 5), parsed from byte slices with zerocopy structs. Pure functions, so the
//! parsing is tested on the host; [`read_table`] drives them through a
//! caller-supplied block reader.
//!
//! Partitions are numbered like Linux does: MBR by slot (1..=4, empty slots
//! leave gaps), GPT by entry index + 1. Logical partitions inside an MBR
//! extended partition are not read (the container itself is skipped).

use std::fmt;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// One partition: `blocks` logical blocks from `start_lba`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// The `M` in `/NpM` (1-based, may have gaps).
    pub number: u32,
    pub start_lba: u64,
    pub blocks: u64,
}

/// Why no partition list came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartError {
    /// No MBR signature: a blank or whole-disk-formatted device.
    NoTable,
    /// Fewer bytes than the structure needs.
    Truncated,
    /// A GPT header is missing or fails its checks (signature, size, CRC,
    /// LBAs); the string says which.
    BadGptHeader(&'static str),
    /// The GPT entry array does not match its CRC.
    BadEntriesCrc,
    /// An entry lies outside the disk or the usable area, or ends before
    /// it starts.
    EntryOutOfRange { number: u32 },
    /// Reading the disk failed.
    Io(syscall::Error),
}

impl fmt::Display for PartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartError::NoTable => write!(f, "no partition table"),
            PartError::Truncated => write!(f, "truncated table"),
            PartError::BadGptHeader(why) => write!(f, "bad GPT header: {why}"),
            PartError::BadEntriesCrc => write!(f, "GPT entry array CRC mismatch"),
            PartError::EntryOutOfRange { number } => {
                write!(f, "partition {number} lies outside the disk")
            }
            PartError::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

pub const MBR_SIGNATURE: [u8; 2] = [0x55, 0xaa];
/// Partition type of a GPT protective MBR entry.
pub const MBR_TYPE_PROTECTIVE: u8 = 0xee;
/// Extended-partition container types (their logical partitions are not read).
const MBR_TYPES_EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];
pub const GPT_SIGNATURE: [u8; 8] = *b"EFI PART";
/// Size of the GPT header fields we know (revision 1.0).
pub const GPT_HEADER_MIN: usize = 92;
/// Size of a GPT entry with the fields we know.
pub const GPT_ENTRY_MIN: usize = 128;
/// Largest entry array we read (8192 entries of 128 bytes); garbage with a
/// valid-looking CRC cannot make us allocate more.
pub const GPT_ENTRIES_MAX_BYTES: usize = 1 << 20;

/// One MBR slot (16 bytes at 446 + 16 * i).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MbrEntry {
    pub status: u8,
    pub chs_first: [u8; 3],
    pub kind: u8,
    pub chs_last: [u8; 3],
    pub start_lba: U32,
    pub sectors: U32,
}

/// Sector 0: boot code, four slots, signature.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Mbr {
    pub boot: [u8; 446],
    pub entries: [MbrEntry; 4],
    pub signature: [u8; 2],
}

/// The GPT header fields of revision 1.0 (the on-disk header may be longer;
/// `header_size` says how much the CRC covers).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GptHeader {
    pub signature: [u8; 8],
    pub revision: U32,
    pub header_size: U32,
    pub header_crc32: U32,
    pub reserved: U32,
    pub my_lba: U64,
    pub alternate_lba: U64,
    pub first_usable_lba: U64,
    pub last_usable_lba: U64,
    pub disk_guid: [u8; 16],
    pub partition_entry_lba: U64,
    pub num_entries: U32,
    pub entry_size: U32,
    pub entries_crc32: U32,
}

/// The known part of a GPT entry (`entry_size` may be larger).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GptEntry {
    pub type_guid: [u8; 16],
    pub unique_guid: [u8; 16],
    pub first_lba: U64,
    /// Inclusive.
    pub last_lba: U64,
    pub attributes: U64,
    pub name: [u8; 72],
}

/// What sector 0 says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MbrKind {
    /// A classic MBR with these primary partitions.
    Partitions(Vec<Partition>),
    /// A protective (or hybrid) MBR: the real table is GPT.
    Protective,
}

/// Parses sector 0 of a disk of `disk_blocks` blocks.
pub fn parse_mbr(sector0: &[u8], disk_blocks: u64) -> Result<MbrKind, PartError> {
    let (mbr, _) = Mbr::read_from_prefix(sector0).map_err(|_| PartError::Truncated)?;
    if mbr.signature != MBR_SIGNATURE {
        return Err(PartError::NoTable);
    }
    if mbr.entries.iter().any(|e| e.kind == MBR_TYPE_PROTECTIVE) {
        return Ok(MbrKind::Protective);
    }
    let mut parts = Vec::new();
    for (i, e) in mbr.entries.iter().enumerate() {
        let number = i as u32 + 1;
        if e.kind == 0 || e.sectors.get() == 0 {
            continue;
        }
        if MBR_TYPES_EXTENDED.contains(&e.kind) {
            log::info!("MBR slot {number}: extended partition, logical partitions not read");
            continue;
        }
        let start = u64::from(e.start_lba.get());
        let blocks = u64::from(e.sectors.get());
        // start 0 would overlap the MBR itself.
        if start == 0 || start + blocks > disk_blocks {
            return Err(PartError::EntryOutOfRange { number });
        }
        parts.push(Partition {
            number,
            start_lba: start,
            blocks,
        });
    }
    Ok(MbrKind::Partitions(parts))
}

/// Checks a GPT header block read from `lba` of a disk of `disk_blocks`
/// blocks of `block_size` bytes: signature, size, CRC and LBAs.
pub fn parse_gpt_header(
    block: &[u8],
    lba: u64,
    block_size: u32,
    disk_blocks: u64,
) -> Result<GptHeader, PartError> {
    let (h, _) = GptHeader::read_from_prefix(block).map_err(|_| PartError::Truncated)?;
    if h.signature != GPT_SIGNATURE {
        return Err(PartError::BadGptHeader("no signature"));
    }
    let size = h.header_size.get() as usize;
    if size < GPT_HEADER_MIN || size > block_size as usize || size > block.len() {
        return Err(PartError::BadGptHeader("header size"));
    }
    let mut copy = block[..size].to_vec();
    // The CRC is computed with its own field zeroed (bytes 16..20).
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != h.header_crc32.get() {
        return Err(PartError::BadGptHeader("header CRC"));
    }
    if h.my_lba.get() != lba {
        return Err(PartError::BadGptHeader("header LBA"));
    }
    let (first, last) = (h.first_usable_lba.get(), h.last_usable_lba.get());
    if first > last || last >= disk_blocks {
        return Err(PartError::BadGptHeader("usable range"));
    }
    let entry_size = h.entry_size.get() as usize;
    if entry_size < GPT_ENTRY_MIN || !entry_size.is_multiple_of(8) {
        return Err(PartError::BadGptHeader("entry size"));
    }
    let bytes = entries_bytes(&h).ok_or(PartError::BadGptHeader("entry array size"))?;
    let array_blocks = (bytes as u64).div_ceil(u64::from(block_size.max(1)));
    let start = h.partition_entry_lba.get();
    if start < 2 || start.saturating_add(array_blocks) > disk_blocks {
        return Err(PartError::BadGptHeader("entry array location"));
    }
    Ok(h)
}

/// Bytes of the header's entry array, if within [`GPT_ENTRIES_MAX_BYTES`].
pub fn entries_bytes(h: &GptHeader) -> Option<usize> {
    let n = (h.num_entries.get() as usize).checked_mul(h.entry_size.get() as usize)?;
    (n <= GPT_ENTRIES_MAX_BYTES).then_some(n)
}

/// Checks the entry array's CRC and returns the used entries, each within
/// the header's usable range.
pub fn parse_gpt_entries(h: &GptHeader, array: &[u8]) -> Result<Vec<Partition>, PartError> {
    let bytes = entries_bytes(h).ok_or(PartError::BadGptHeader("entry array size"))?;
    let array = array.get(..bytes).ok_or(PartError::Truncated)?;
    if crc32fast::hash(array) != h.entries_crc32.get() {
        return Err(PartError::BadEntriesCrc);
    }
    let entry_size = h.entry_size.get() as usize;
    if entry_size < GPT_ENTRY_MIN {
        return Err(PartError::BadGptHeader("entry size"));
    }
    let mut parts = Vec::new();
    for (i, raw) in array.chunks_exact(entry_size).enumerate() {
        let (e, _) = GptEntry::read_from_prefix(raw).map_err(|_| PartError::Truncated)?;
        if e.type_guid == [0; 16] {
            continue; // unused slot
        }
        let number = u32::try_from(i + 1).map_err(|_| PartError::Truncated)?;
        let (first, last) = (e.first_lba.get(), e.last_lba.get());
        if first > last || first < h.first_usable_lba.get() || last > h.last_usable_lba.get() {
            return Err(PartError::EntryOutOfRange { number });
        }
        parts.push(Partition {
            number,
            start_lba: first,
            blocks: last - first + 1,
        });
    }
    Ok(parts)
}

/// Reads and parses the partition table of a disk through `read(lba,
/// blocks)`, which returns exactly `blocks * block_size` bytes. MBR first;
/// a protective MBR leads to GPT, primary header (LBA 1) then backup (last
/// LBA) when the primary or its entries are bad.
pub fn read_table(
    block_size: u32,
    disk_blocks: u64,
    read: &mut dyn FnMut(u64, u32) -> syscall::Result<Vec<u8>>,
) -> Result<Vec<Partition>, PartError> {
    if block_size < 512 || disk_blocks < 2 {
        return Err(PartError::NoTable);
    }
    let sector0 = read(0, 1).map_err(PartError::Io)?;
    match parse_mbr(&sector0, disk_blocks)? {
        MbrKind::Partitions(p) => Ok(p),
        MbrKind::Protective => match read_gpt_at(1, block_size, disk_blocks, read) {
            Ok(p) => Ok(p),
            Err(primary) => {
                log::warn!("primary GPT: {primary}; trying the backup header");
                read_gpt_at(disk_blocks - 1, block_size, disk_blocks, read).map_err(|_| primary)
            }
        },
    }
}

fn read_gpt_at(
    lba: u64,
    block_size: u32,
    disk_blocks: u64,
    read: &mut dyn FnMut(u64, u32) -> syscall::Result<Vec<u8>>,
) -> Result<Vec<Partition>, PartError> {
    let block = read(lba, 1).map_err(PartError::Io)?;
    let h = parse_gpt_header(&block, lba, block_size, disk_blocks)?;
    let bytes = entries_bytes(&h).ok_or(PartError::BadGptHeader("entry array size"))?;
    let blocks = (bytes as u64).div_ceil(u64::from(block_size));
    let blocks = u32::try_from(blocks).map_err(|_| PartError::BadGptHeader("entry array size"))?;
    let array = read(h.partition_entry_lba.get(), blocks).map_err(PartError::Io)?;
    parse_gpt_entries(&h, &array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_specs() {
        assert_eq!(std::mem::size_of::<MbrEntry>(), 16);
        assert_eq!(std::mem::size_of::<Mbr>(), 512);
        assert_eq!(std::mem::size_of::<GptHeader>(), GPT_HEADER_MIN);
        assert_eq!(std::mem::size_of::<GptEntry>(), GPT_ENTRY_MIN);
    }

    #[test]
    fn short_inputs_are_clean_errors() {
        assert_eq!(parse_mbr(&[0u8; 100], 100), Err(PartError::Truncated));
        assert_eq!(
            parse_gpt_header(&[0u8; 50], 1, 512, 100).unwrap_err(),
            PartError::Truncated
        );
        assert_eq!(parse_mbr(&[0u8; 512], 100), Err(PartError::NoTable));
    }
}
