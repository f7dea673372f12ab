//! What the NVM Express Base Specification (1.4) fixes: controller
//! registers (section 3.1), the 64-byte submission and 16-byte completion
//! queue entries (4.2, 4.6), status codes (4.6.1.2), opcodes (5, 6) and
//! the Identify data fields the driver reads (5.15.2).

use std::fmt;

use syscall::error::{Error, EINVAL, EIO, ENXIO, EOPNOTSUPP, EROFS};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The memory page size we program (CC.MPS = 0): 4 KiB.
pub const PAGE: usize = 4096;

/// Controller register offsets in BAR0 (3.1).
pub mod reg {
    /// Capabilities (64-bit).
    pub const CAP: usize = 0x00;
    pub const VS: usize = 0x08;
    pub const CC: usize = 0x14;
    pub const CSTS: usize = 0x1c;
    pub const AQA: usize = 0x24;
    /// Admin submission / completion queue base (64-bit each).
    pub const ASQ: usize = 0x28;
    pub const ACQ: usize = 0x30;
    /// The first doorbell (admin SQ tail).
    pub const DOORBELLS: usize = 0x1000;
}

/// CAP fields (3.1.1).
pub mod cap {
    /// Maximum queue entries supported, 0's based.
    pub fn mqes(cap: u64) -> u16 {
        cap as u16
    }
    /// Contiguous queues required.
    pub fn cqr(cap: u64) -> bool {
        cap >> 16 & 1 == 1
    }
    /// Worst-case time for CSTS.RDY to change, in 500 ms units.
    pub fn timeout_500ms(cap: u64) -> u8 {
        (cap >> 24) as u8
    }
    /// Doorbell stride: 4 << DSTRD bytes.
    pub fn dstrd(cap: u64) -> u8 {
        (cap >> 32 & 0xf) as u8
    }
    /// Command sets: bit 0 the NVM command set.
    pub fn css(cap: u64) -> u8 {
        (cap >> 37) as u8
    }
    /// Minimum memory page size: 2 ^ (12 + MPSMIN).
    pub fn mpsmin(cap: u64) -> u8 {
        (cap >> 48 & 0xf) as u8
    }
}

/// CC bits (3.1.5).
pub mod cc {
    pub const EN: u32 = 1;
    /// I/O submission and completion queue entry sizes, log2 (64, 16).
    pub const IOSQES_64: u32 = 6 << 16;
    pub const IOCQES_16: u32 = 4 << 20;
}

/// CSTS bits (3.1.6).
pub mod csts {
    pub const RDY: u32 = 1;
    /// Controller fatal status.
    pub const CFS: u32 = 1 << 1;
}

/// Admin opcodes (5).
pub mod admin {
    pub const CREATE_SQ: u8 = 0x01;
    pub const GET_LOG_PAGE: u8 = 0x02;
    pub const CREATE_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const SET_FEATURES: u8 = 0x09;
    /// Identify CNS values.
    pub const CNS_NAMESPACE: u32 = 0x00;
    pub const CNS_CONTROLLER: u32 = 0x01;
    pub const CNS_ACTIVE_NSIDS: u32 = 0x02;
    /// Feature: number of queues.
    pub const FEAT_NUM_QUEUES: u32 = 0x07;
    /// Log page: SMART / Health Information (512 bytes).
    pub const LOG_SMART: u32 = 0x02;
    /// The namespace id meaning "the controller as a whole".
    pub const NSID_ALL: u32 = 0xffff_ffff;
}

/// NVM command set opcodes (6).
pub mod io {
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    /// Dataset Management (6.7): CDW10 bits 7:0 the number of ranges,
    /// 0's based; CDW11 the attributes; PRP1/PRP2 the range list.
    pub const DSM: u8 = 0x09;
    /// CDW11 bit 2: Attribute – Deallocate.
    pub const DSM_AD: u32 = 1 << 2;
    /// Ranges one Dataset Management command may carry (a 4 KiB list).
    pub const DSM_MAX_RANGES: usize = 256;
}

/// One Dataset Management range (figure 363): context attributes, length
/// in logical blocks, starting LBA.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DsmRange {
    pub cattr: U32,
    pub nlb: U32,
    pub slba: U64,
}

const _: () = assert!(std::mem::size_of::<DsmRange>() == 16);

/// The ranges covering `blocks` at `lba`, each at most `per_range` blocks
/// (at least 1, at most `u32::MAX`); `None` if they would be more than
/// [`io::DSM_MAX_RANGES`] or `blocks` is 0.
pub fn dsm_ranges(lba: u64, blocks: u64, per_range: u32) -> Option<Vec<DsmRange>> {
    let per = u64::from(per_range.max(1));
    if blocks == 0 || blocks.div_ceil(per) > io::DSM_MAX_RANGES as u64 {
        return None;
    }
    let end = lba.checked_add(blocks)?;
    let mut out = Vec::new();
    let mut at = lba;
    while at < end {
        let n = (end - at).min(per);
        out.push(DsmRange {
            cattr: U32::new(0),
            nlb: U32::new(n as u32),
            slba: U64::new(at),
        });
        at += n;
    }
    Some(out)
}

/// A submission queue entry (4.2): dwords 0-15.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Command {
    /// Opcode (7:0), fused and PSDT (15:8, zero: PRPs), command id (31:16).
    pub cdw0: U32,
    pub nsid: U32,
    pub cdw2: U32,
    pub cdw3: U32,
    pub mptr: U64,
    pub prp1: U64,
    pub prp2: U64,
    pub cdw10: U32,
    pub cdw11: U32,
    pub cdw12: U32,
    pub cdw13: U32,
    pub cdw14: U32,
    pub cdw15: U32,
}

impl Command {
    pub fn new(opcode: u8, nsid: u32) -> Command {
        Command {
            cdw0: U32::new(u32::from(opcode)),
            nsid: U32::new(nsid),
            ..Command::default()
        }
    }

    pub fn opcode(&self) -> u8 {
        self.cdw0.get() as u8
    }

    #[cfg(test)]
    pub fn cid(&self) -> u16 {
        (self.cdw0.get() >> 16) as u16
    }

    pub fn set_cid(&mut self, cid: u16) {
        self.cdw0 = U32::new(self.cdw0.get() & 0xffff | u32::from(cid) << 16);
    }

    /// A Read or Write of `blocks` (at least 1) at `lba`.
    pub fn rw(opcode: u8, nsid: u32, lba: u64, blocks: u32) -> Command {
        let mut c = Command::new(opcode, nsid);
        c.cdw10 = U32::new(lba as u32);
        c.cdw11 = U32::new((lba >> 32) as u32);
        c.cdw12 = U32::new(blocks.saturating_sub(1) & 0xffff);
        c
    }
}

/// A completion queue entry (4.6).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct CqEntry {
    /// Command specific.
    pub dw0: U32,
    pub dw1: U32,
    /// The controller's SQ head, and which SQ.
    pub sq_head: U16,
    pub sq_id: U16,
    pub cid: U16,
    /// Phase tag (bit 0) and status field (15:1).
    pub status: U16,
}

impl CqEntry {
    pub fn status(&self) -> Status {
        Status::from_field(self.status.get())
    }
}

const _: () = assert!(size_of::<Command>() == 64);
const _: () = assert!(size_of::<CqEntry>() == 16);

/// A completion's status (4.6.1.2): type and code; success is (0, 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub sct: u8,
    pub sc: u8,
    /// Do not retry: the same command will fail again.
    pub dnr: bool,
}

impl Status {
    /// From CQE dword 3 bits 31:16 (phase in bit 0).
    pub fn from_field(field: u16) -> Status {
        Status {
            sc: (field >> 1) as u8,
            sct: (field >> 9 & 0x7) as u8,
            dnr: field >> 15 & 1 == 1,
        }
    }

    /// The error an application sees. Most failures are `EIO`; the few
    /// that say the request itself was wrong get a more precise code.
    pub fn error(&self) -> Option<Error> {
        let errno = match (self.sct, self.sc) {
            (0, 0) => return None,
            // Invalid opcode: the controller does not do this.
            (0, 0x01) => EOPNOTSUPP,
            // Invalid field, LBA out of range.
            (0, 0x02) | (0, 0x80) => EINVAL,
            // Invalid namespace or format.
            (0, 0x0b) => ENXIO,
            // Namespace write protected; write to a read-only range.
            (0, 0x20) | (2, 0x82) => EROFS,
            _ => EIO,
        };
        Some(Error::new(errno))
    }

    fn name(&self) -> &'static str {
        match (self.sct, self.sc) {
            (0, 0x00) => "successful completion",
            (0, 0x01) => "invalid command opcode",
            (0, 0x02) => "invalid field in command",
            (0, 0x03) => "command id conflict",
            (0, 0x04) => "data transfer error",
            (0, 0x06) => "internal error",
            (0, 0x07) => "command abort requested",
            (0, 0x08) => "command aborted due to SQ deletion",
            (0, 0x0b) => "invalid namespace or format",
            (0, 0x0d) => "invalid SGL segment descriptor",
            (0, 0x13) => "PRP offset invalid",
            (0, 0x20) => "namespace is write protected",
            (0, 0x80) => "LBA out of range",
            (0, 0x81) => "capacity exceeded",
            (0, 0x82) => "namespace not ready",
            (1, 0x01) => "invalid completion queue",
            (1, 0x02) => "invalid queue identifier",
            (1, 0x03) => "invalid queue size",
            (1, 0x08) => "invalid interrupt vector",
            (1, 0x09) => "invalid log page",
            (2, 0x80) => "write fault",
            (2, 0x81) => "unrecovered read error",
            (2, 0x82) => "access denied",
            (2, 0x86) => "compare failure",
            _ => "unknown status",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (status code type {:#x}, status code {:#04x}{})",
            self.name(),
            self.sct,
            self.sc,
            if self.dnr { ", do not retry" } else { "" }
        )
    }
}

/// The Identify Controller fields we use (figure 247).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerId {
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// Maximum data transfer size, 2^MDTS minimum pages; 0: no limit.
    pub mdts: u8,
    /// Number of namespaces (highest valid id).
    pub nn: u32,
    /// Optional NVM commands: bit 2 Dataset Management.
    pub oncs: u16,
    /// Volatile write cache present (bit 0).
    pub vwc: u8,
}

impl ControllerId {
    pub fn parse(data: &[u8]) -> Option<ControllerId> {
        if data.len() < 4096 {
            return None;
        }
        let text = |r: std::ops::Range<usize>| {
            String::from_utf8_lossy(&data[r])
                .trim_end_matches(['\0', ' '])
                .trim()
                .to_owned()
        };
        Some(ControllerId {
            serial: text(4..24),
            model: text(24..64),
            firmware: text(64..72),
            mdts: data[77],
            nn: u32::from_le_bytes(data[516..520].try_into().ok()?),
            oncs: u16::from_le_bytes(data[520..522].try_into().ok()?),
            vwc: data[525],
        })
    }

    pub fn has_write_cache(&self) -> bool {
        self.vwc & 1 == 1
    }

    pub fn has_dsm(&self) -> bool {
        self.oncs & (1 << 2) != 0
    }

    /// Largest transfer in bytes at the minimum page size of 4 KiB
    /// (`None`: unlimited).
    pub fn max_transfer(&self) -> Option<usize> {
        match self.mdts {
            0 => None,
            m => PAGE.checked_shl(u32::from(m)),
        }
    }
}

/// The Identify Namespace fields we use (figure 249).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceId {
    /// Size in logical blocks.
    pub nsze: u64,
    /// log2 of the block size of the format in use.
    pub lbads: u8,
    /// Metadata bytes per block in that format.
    pub ms: u16,
    /// DLFEAT (byte 33): bits 2:0 say what deallocated blocks read back
    /// (001b: zeros, 010b: ones, 000b: not reported).
    pub dlfeat: u8,
}

impl NamespaceId {
    /// What reading a deallocated block returns, as DLFEAT says.
    pub fn deallocated_reads(&self) -> &'static str {
        match self.dlfeat & 0x7 {
            1 => "zeros",
            2 => "ones (0xff)",
            _ => "not reported",
        }
    }
}

impl NamespaceId {
    pub fn parse(data: &[u8]) -> Option<NamespaceId> {
        if data.len() < 4096 {
            return None;
        }
        let nsze = u64::from_le_bytes(data[0..8].try_into().ok()?);
        let nlbaf = usize::from(data[25]);
        let flbas = data[26];
        // Bits 3:0 index the format, bits 6:5 extend it past 16 (2.0).
        let index = usize::from(flbas & 0xf) | usize::from(flbas >> 5 & 0x3) << 4;
        if index > nlbaf {
            return None;
        }
        let at = 128 + 4 * index;
        let lbaf = u32::from_le_bytes(data[at..at + 4].try_into().ok()?);
        Some(NamespaceId {
            nsze,
            lbads: (lbaf >> 16) as u8,
            ms: lbaf as u16,
            dlfeat: data[33],
        })
    }
}

/// The active namespace list (CNS 0x02): ids until the first zero.
pub fn parse_nsids(data: &[u8]) -> Vec<u32> {
    data.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&id| id != 0)
        .collect()
}

/// The SMART / Health Information log page (figure 207), its fields in
/// the order and under the names `nvme smart-log` prints them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmartLog {
    pub critical_warning: u8,
    /// Composite temperature, kelvin.
    pub temperature_k: u16,
    pub available_spare: u8,
    pub available_spare_threshold: u8,
    pub percentage_used: u8,
    /// In thousands of 512-byte units, rounded up.
    pub data_units_read: u128,
    pub data_units_written: u128,
    pub host_read_commands: u128,
    pub host_write_commands: u128,
    pub controller_busy_time: u128,
    pub power_cycles: u128,
    pub power_on_hours: u128,
    pub unsafe_shutdowns: u128,
    pub media_errors: u128,
    pub num_err_log_entries: u128,
}

impl SmartLog {
    pub fn parse(data: &[u8]) -> Option<SmartLog> {
        if data.len() < 512 {
            return None;
        }
        let u128_at = |at: usize| -> Option<u128> {
            Some(u128::from_le_bytes(data[at..at + 16].try_into().ok()?))
        };
        Some(SmartLog {
            critical_warning: data[0],
            temperature_k: u16::from_le_bytes([data[1], data[2]]),
            available_spare: data[3],
            available_spare_threshold: data[4],
            percentage_used: data[5],
            data_units_read: u128_at(32)?,
            data_units_written: u128_at(48)?,
            host_read_commands: u128_at(64)?,
            host_write_commands: u128_at(80)?,
            controller_busy_time: u128_at(96)?,
            power_cycles: u128_at(112)?,
            power_on_hours: u128_at(128)?,
            unsafe_shutdowns: u128_at(144)?,
            media_errors: u128_at(160)?,
            num_err_log_entries: u128_at(176)?,
        })
    }

    /// As text, one `name : value` line each.
    pub fn render(&self) -> String {
        let celsius = i32::from(self.temperature_k) - 273;
        let mut out = String::new();
        let mut line = |name: &str, value: String| {
            out.push_str(&format!("{name:<40}: {value}\n"));
        };
        line("critical_warning", self.critical_warning.to_string());
        line(
            "temperature",
            format!("{celsius} C ({} K)", self.temperature_k),
        );
        line("available_spare", format!("{}%", self.available_spare));
        line(
            "available_spare_threshold",
            format!("{}%", self.available_spare_threshold),
        );
        line("percentage_used", format!("{}%", self.percentage_used));
        for (name, v) in [
            ("data_units_read", self.data_units_read),
            ("data_units_written", self.data_units_written),
            ("host_read_commands", self.host_read_commands),
            ("host_write_commands", self.host_write_commands),
            ("controller_busy_time", self.controller_busy_time),
            ("power_cycles", self.power_cycles),
            ("power_on_hours", self.power_on_hours),
            ("unsafe_shutdowns", self.unsafe_shutdowns),
            ("media_errors", self.media_errors),
            ("num_err_log_entries", self.num_err_log_entries),
        ] {
            line(name, v.to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_log_fields_are_where_the_spec_puts_them() {
        let mut page = [0u8; 512];
        page[0] = 0x04;
        page[1..3].copy_from_slice(&323u16.to_le_bytes());
        page[3] = 100;
        page[4] = 10;
        page[5] = 3;
        page[32] = 17;
        page[48..50].copy_from_slice(&300u16.to_le_bytes());
        page[160] = 2;
        let log = SmartLog::parse(&page).unwrap();
        assert_eq!(log.data_units_read, 17);
        assert_eq!(log.data_units_written, 300);
        assert_eq!(log.media_errors, 2);
        let text = log.render();
        assert!(
            text.contains("temperature                             : 50 C (323 K)\n"),
            "{text}"
        );
        assert!(
            text.contains("data_units_read                         : 17\n"),
            "{text}"
        );
        assert!(
            text.contains("critical_warning                        : 4\n"),
            "{text}"
        );
        assert!(
            text.contains("percentage_used                         : 3%\n"),
            "{text}"
        );
        assert!(SmartLog::parse(&page[..100]).is_none());
    }

    #[test]
    fn dsm_ranges_cover_the_span_in_at_most_256_entries() {
        let r = dsm_ranges(10, 25, 10).unwrap();
        let got: Vec<(u32, u32, u64)> = r
            .iter()
            .map(|e| (e.cattr.get(), e.nlb.get(), e.slba.get()))
            .collect();
        assert_eq!(got, [(0, 10, 10), (0, 10, 20), (0, 5, 30)]);
        assert_eq!(r[1].as_bytes()[4..8], 10u32.to_le_bytes());
        assert_eq!(r[1].as_bytes()[8..16], 20u64.to_le_bytes());
        assert_eq!(dsm_ranges(0, 256 * 7, 7).unwrap().len(), 256);
        assert!(dsm_ranges(0, 256 * 7 + 1, 7).is_none());
        assert!(dsm_ranges(0, 0, 7).is_none());
        assert!(dsm_ranges(u64::MAX, 2, 7).is_none());
    }

    #[test]
    fn identify_namespace_uses_the_format_in_use() {
        let mut page = vec![0u8; 4096];
        page[0..8].copy_from_slice(&1000u64.to_le_bytes());
        page[25] = 1; // two formats
        page[26] = 1; // the second in use
        page[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        page[132..136].copy_from_slice(&(12u32 << 16 | 8).to_le_bytes());
        let ns = NamespaceId::parse(&page).unwrap();
        assert_eq!((ns.nsze, ns.lbads, ns.ms), (1000, 12, 8));
        assert_eq!(ns.deallocated_reads(), "not reported");
        page[33] = 0x9; // QEMU with discard=unmap: zeros, and Write Zeroes may deallocate
        assert_eq!(
            NamespaceId::parse(&page).unwrap().deallocated_reads(),
            "zeros"
        );
        page[26] = 5; // beyond NLBAF
        assert!(NamespaceId::parse(&page).is_none());
    }
}
