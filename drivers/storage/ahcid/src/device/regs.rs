//! AHCI register map, grouped as the AHCI 1.3.1 specification groups it
//! (section 3: HBA memory registers in ABAR, BAR 5).

/// Generic host control (section 3.1), offsets in ABAR.
pub mod hba {
    pub const CAP: usize = 0x00;
    pub const GHC: usize = 0x04;
    pub const IS: usize = 0x08;
    pub const PI: usize = 0x0c;
    pub const VS: usize = 0x10;
    /// Port `p`'s registers start here (section 3.3).
    pub const fn port(p: usize) -> usize {
        0x100 + 0x80 * p
    }
    /// Ports an HBA may have.
    pub const MAX_PORTS: usize = 32;
}

/// HBA capabilities (3.1.1).
pub mod cap {
    /// Number of ports minus one, bits 4:0.
    pub const NP_MASK: u32 = 0x1f;
    /// Number of command slots minus one, bits 12:8.
    pub const NCS_SHIFT: u32 = 8;
    pub const NCS_MASK: u32 = 0x1f;
    pub const SNCQ: u32 = 1 << 30;
    pub const S64A: u32 = 1 << 31;
}

/// Global HBA control (3.1.2).
pub mod ghc {
    pub const HR: u32 = 1 << 0;
    pub const IE: u32 = 1 << 1;
    pub const AE: u32 = 1 << 31;
}

/// Port registers (3.3), offsets within the port's 0x80-byte block.
pub mod port {
    pub const CLB: usize = 0x00;
    pub const CLBU: usize = 0x04;
    pub const FB: usize = 0x08;
    pub const FBU: usize = 0x0c;
    pub const IS: usize = 0x10;
    pub const IE: usize = 0x14;
    pub const CMD: usize = 0x18;
    pub const TFD: usize = 0x20;
    pub const SIG: usize = 0x24;
    pub const SSTS: usize = 0x28;
    pub const SCTL: usize = 0x2c;
    pub const SERR: usize = 0x30;
    pub const SACT: usize = 0x34;
    pub const CI: usize = 0x38;
}

/// Port command and status (3.3.7).
pub mod cmd {
    pub const ST: u32 = 1 << 0;
    pub const SUD: u32 = 1 << 1;
    pub const POD: u32 = 1 << 2;
    pub const FRE: u32 = 1 << 4;
    pub const FR: u32 = 1 << 14;
    pub const CR: u32 = 1 << 15;
}

/// Port interrupt status, the same bits in PxIE (3.3.5, 3.3.6).
pub mod is {
    pub const DHRS: u32 = 1 << 0;
    pub const PSS: u32 = 1 << 1;
    pub const DSS: u32 = 1 << 2;
    pub const SDBS: u32 = 1 << 3;
    pub const UFS: u32 = 1 << 4;
    pub const DPS: u32 = 1 << 5;
    pub const PCS: u32 = 1 << 6;
    pub const PRCS: u32 = 1 << 22;
    pub const OFS: u32 = 1 << 24;
    pub const INFS: u32 = 1 << 26;
    pub const IFS: u32 = 1 << 27;
    pub const HBDS: u32 = 1 << 28;
    pub const HBFS: u32 = 1 << 29;
    pub const TFES: u32 = 1 << 30;
    /// Completions: a D2H register FIS (non-queued), PIO setup, DMA
    /// setup, Set Device Bits (NCQ), descriptor processed.
    pub const DONE: u32 = DHRS | PSS | DSS | SDBS | DPS;
    /// Errors that stop the port and need recovery (section 6.2.2).
    pub const ERRORS: u32 = TFES | HBFS | HBDS | IFS | OFS | UFS;
    /// Logged, no recovery: interface non-fatal, link changes.
    pub const NOTES: u32 = INFS | PCS | PRCS;
    /// What PxIE enables.
    pub const WANTED: u32 = DONE | ERRORS | NOTES;
}

/// Port task file data (3.3.8): the ATA status in 7:0, error in 15:8.
pub mod tfd {
    pub const ERR: u32 = 1 << 0;
    pub const DRQ: u32 = 1 << 3;
    pub const BSY: u32 = 1 << 7;
}

/// SATA status (3.3.10) and control (3.3.11).
pub mod sata {
    pub const DET_MASK: u32 = 0xf;
    /// Device present and PHY communication established.
    pub const DET_PRESENT: u32 = 3;
    pub const IPM_SHIFT: u32 = 8;
    pub const IPM_MASK: u32 = 0xf;
    /// Interface in active state.
    pub const IPM_ACTIVE: u32 = 1;
    /// PxSCTL.DET = 1: COMRESET on the link.
    pub const DET_COMRESET: u32 = 1;
    /// PxSCTL.IPM = 3: no transitions to partial or slumber.
    pub const IPM_NO_SLEEP: u32 = 3 << 8;
}

/// Port signatures (3.3.9): what the device sent in its first D2H FIS.
pub mod sig {
    pub const ATA: u32 = 0x0000_0101;
    pub const ATAPI: u32 = 0xeb14_0101;
}
