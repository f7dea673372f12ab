//! Partition table parsing against images made by sgdisk and by hand, and
//! corrupt copies of them: every bad input is a clean error, never a panic.

mod common;

use block::partition::{
    parse_gpt_entries, parse_gpt_header, parse_mbr, read_table, MbrKind, PartError, Partition,
};
use block::testing::next_random;
use common::{pattern, sgdisk_image, with_mbr};
use syscall::error::{Error, EIO};

const BS: usize = 512;

/// Reads whole blocks out of `img`; a disk of `blocks` blocks whose bytes
/// past `img` cannot be read.
fn table(img: &[u8], blocks: u64) -> Result<Vec<Partition>, PartError> {
    read_table(BS as u32, blocks, &mut |lba, n| {
        let start = lba as usize * BS;
        let end = start + n as usize * BS;
        img.get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or(Error::new(EIO))
    })
}

fn blocks(img: &[u8]) -> u64 {
    (img.len() / BS) as u64
}

fn u64_at(img: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(img[off..off + 8].try_into().unwrap())
}

fn u32_at(img: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(img[off..off + 4].try_into().unwrap())
}

/// Recomputes the entry-array and header CRCs of the GPT header at `lba`
/// (after a test edited entries on purpose).
fn fix_crcs(img: &mut [u8], lba: u64) {
    let h = lba as usize * BS;
    let entries = u64_at(img, h + 72) as usize * BS;
    let len = u32_at(img, h + 80) as usize * u32_at(img, h + 84) as usize;
    let crc = crc32fast::hash(&img[entries..entries + len]);
    img[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
    let size = u32_at(img, h + 12) as usize;
    img[h + 16..h + 20].fill(0);
    let crc = crc32fast::hash(&img[h..h + size]);
    img[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
}

fn sgdisk_parts() -> Vec<Partition> {
    vec![
        Partition {
            number: 1,
            start_lba: 2048,
            blocks: 2048,
        },
        Partition {
            number: 3,
            start_lba: 4096,
            blocks: 4096,
        },
    ]
}

#[test]
fn sgdisk_gpt_is_read_with_linux_numbering() {
    let img = sgdisk_image();
    assert_eq!(parse_mbr(&img[..BS], blocks(&img)), Ok(MbrKind::Protective));
    assert_eq!(table(&img, blocks(&img)), Ok(sgdisk_parts()));
}

#[test]
fn a_bad_primary_header_falls_back_to_the_backup() {
    let mut img = sgdisk_image();
    img[BS + 40] ^= 0xff; // first usable LBA: header CRC no longer matches
    assert!(matches!(
        parse_gpt_header(&img[BS..2 * BS], 1, BS as u32, blocks(&img)),
        Err(PartError::BadGptHeader("header CRC"))
    ));
    assert_eq!(table(&img, blocks(&img)), Ok(sgdisk_parts()));
    // A missing signature too.
    let mut img = sgdisk_image();
    img[BS..BS + 8].fill(0);
    assert_eq!(table(&img, blocks(&img)), Ok(sgdisk_parts()));
}

#[test]
fn bad_primary_entries_fall_back_to_the_backup() {
    let mut img = sgdisk_image();
    img[2 * BS + 32] ^= 1; // entry 1's first LBA: array CRC mismatch
    assert_eq!(table(&img, blocks(&img)), Ok(sgdisk_parts()));
}

#[test]
fn both_copies_bad_is_an_error() {
    let mut img = sgdisk_image();
    let last = img.len() - BS;
    img[BS + 16] ^= 1;
    img[last + 16] ^= 1;
    assert!(matches!(
        table(&img, blocks(&img)),
        Err(PartError::BadGptHeader(_))
    ));
    let mut img = sgdisk_image();
    let backup_entries = u64_at(&img, last + 72) as usize * BS;
    img[2 * BS] ^= 1;
    img[backup_entries] ^= 1;
    assert_eq!(table(&img, blocks(&img)), Err(PartError::BadEntriesCrc));
}

#[test]
fn entries_out_of_range_are_refused_even_with_good_crcs() {
    for (field, value) in [
        (40usize, 1u64 << 40), // last LBA far beyond the disk
        (32, 10),              // first LBA inside the GPT itself
        (40, 100),             // last before first (first is 2048)
    ] {
        let mut img = sgdisk_image();
        let last = blocks(&img) - 1;
        let backup_entries = u64_at(&img, last as usize * BS + 72) as usize * BS;
        for base in [2 * BS, backup_entries] {
            img[base + field..base + field + 8].copy_from_slice(&value.to_le_bytes());
        }
        fix_crcs(&mut img, 1);
        fix_crcs(&mut img, last);
        assert_eq!(
            table(&img, blocks(&img)),
            Err(PartError::EntryOutOfRange { number: 1 }),
            "field {field} = {value}"
        );
    }
}

#[test]
fn headers_pointing_outside_the_disk_are_refused() {
    // The same image on a "disk" that is smaller than the header says.
    let img = sgdisk_image();
    let small = blocks(&img) / 2;
    assert!(matches!(
        parse_gpt_header(&img[BS..2 * BS], 1, BS as u32, small),
        Err(PartError::BadGptHeader("usable range"))
    ));
    assert!(table(&img, small).is_err());
    // A header read from the wrong place.
    assert!(matches!(
        parse_gpt_header(&img[BS..2 * BS], 2, BS as u32, blocks(&img)),
        Err(PartError::BadGptHeader("header LBA"))
    ));
    // A huge entry array (with its CRC fixed) is refused before reading.
    let mut img = sgdisk_image();
    img[BS + 80..BS + 84].copy_from_slice(&1_000_000u32.to_le_bytes());
    fix_crcs_header_only(&mut img, 1);
    assert!(matches!(
        parse_gpt_header(&img[BS..2 * BS], 1, BS as u32, blocks(&img)),
        Err(PartError::BadGptHeader(_))
    ));
}

fn fix_crcs_header_only(img: &mut [u8], lba: u64) {
    let h = lba as usize * BS;
    img[h + 16..h + 20].fill(0);
    let crc = crc32fast::hash(&img[h..h + 92]);
    img[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn truncated_inputs_are_clean_errors() {
    let img = sgdisk_image();
    // Slices too short for the structures.
    assert_eq!(
        parse_mbr(&img[..300], blocks(&img)),
        Err(PartError::Truncated)
    );
    assert_eq!(
        parse_gpt_header(&img[BS..BS + 50], 1, BS as u32, blocks(&img)).unwrap_err(),
        PartError::Truncated
    );
    let h = parse_gpt_header(&img[BS..2 * BS], 1, BS as u32, blocks(&img)).unwrap();
    assert_eq!(
        parse_gpt_entries(&h, &img[2 * BS..2 * BS + 1000]),
        Err(PartError::Truncated)
    );
    // A disk whose blocks past the first few cannot be read.
    assert!(matches!(
        table(&img[..2 * BS], blocks(&img)),
        Err(PartError::Io(_))
    ));
    // Tiny disks.
    assert_eq!(table(&img[..BS], 1), Err(PartError::NoTable));
    assert_eq!(table(&[], 0), Err(PartError::NoTable));
}

#[test]
fn hand_built_mbr() {
    let img = with_mbr(pattern(256 * BS, 11));
    let want = vec![
        Partition {
            number: 1,
            start_lba: 64,
            blocks: 100,
        },
        Partition {
            number: 3,
            start_lba: 200,
            blocks: 50,
        },
    ];
    assert_eq!(table(&img, 256), Ok(want));
    // No signature: no table.
    let mut blank = img.clone();
    blank[510] = 0;
    assert_eq!(table(&blank, 256), Err(PartError::NoTable));
    // An entry past the end of the disk.
    assert_eq!(
        table(&img, 240),
        Err(PartError::EntryOutOfRange { number: 3 })
    );
    // An extended container is skipped, not served.
    let mut ext = img.clone();
    ext[446 + 16 + 4] = 0x05;
    ext[446 + 16 + 8] = 10;
    ext[446 + 16 + 12] = 20;
    assert_eq!(table(&ext, 256).unwrap().len(), 2);
    // A protective entry in any slot means GPT (absent here: an error).
    let mut prot = img;
    prot[446 + 48 + 4] = 0xee;
    assert_eq!(parse_mbr(&prot[..BS], 256), Ok(MbrKind::Protective));
    assert!(table(&prot, 256).is_err());
}

#[test]
fn random_garbage_never_panics() {
    let good = sgdisk_image();
    let mut r = 99u64;
    for i in 0..2000 {
        let mut img = good[..40 * BS].to_vec();
        // Scribble over the MBR, header and the first entries.
        for _ in 0..(1 + i % 20) {
            r = next_random(r);
            let at = (r as usize) % (6 * BS);
            r = next_random(r);
            img[at] = r as u8;
        }
        // Half the time, make the header CRC valid so deeper checks run.
        if i % 2 == 0 {
            let size = (u32_at(&img, BS + 12) as usize).clamp(92, BS);
            img[BS + 16..BS + 20].fill(0);
            let crc = crc32fast::hash(&img[BS..BS + size]);
            img[BS + 16..BS + 20].copy_from_slice(&crc.to_le_bytes());
        }
        let n = blocks(&good);
        let _ = table(&img, n);
        let _ = table(&img, (r % 100) + 2);
        let _ = parse_mbr(&img[..BS], n);
    }
}
