//! The firmware's ACPI tables, as the kernel copied them into
//! `/sys/firmware/acpi/tables` (and `dynamic/` for tables AML loaded at run
//! time). acpid never maps physical memory: these bytes are all it reads.
//!
//! Every table is validated before anything parses it: at least a header,
//! a length field equal to the file's size, and a byte sum of zero (FACS has
//! no checksum: signature and length only). A table that fails is still
//! served raw (it is what the firmware gave) but is never decoded or loaded
//! into the interpreter; its error is logged and shown in `index.txt`.
//!
//! File names (see `docs/acpi.md`): a signature that occurs once is served
//! under the signature (`DSDT`, `APIC`, …). Where several tables share one,
//! each is `SIG-<OEM table id>` when those ids are distinct, printable and
//! non-empty, otherwise `SIG-1`, `SIG-2`, … in the kernel's order.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::Path;

use acpi::sdt::SdtHeader;

/// Where the kernel exposes the tables.
pub const SYSFS_TABLES: &str = "/sys/firmware/acpi/tables";

/// Size of the standard description header (ACPI 5.2.6).
pub const HEADER_LEN: usize = std::mem::size_of::<SdtHeader>();

/// Why a table was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// Not even a header (or, for FACS, its 64 bytes).
    TooShort { len: usize, need: usize },
    /// The length field promises more bytes than the file has.
    Truncated { length_field: u32, len: usize },
    /// The length field is smaller than the file.
    LengthMismatch { length_field: u32, len: usize },
    /// The bytes do not sum to zero (mod 256).
    BadChecksum { sum: u8, checksum_field: u8 },
    /// The signature is not four printable characters.
    BadSignature([u8; 4]),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::TooShort { len, need } => {
                write!(f, "too short: {len} bytes, a table needs at least {need}")
            }
            TableError::Truncated { length_field, len } => write!(
                f,
                "truncated: the length field says {length_field} bytes but there are only {len}"
            ),
            TableError::LengthMismatch { length_field, len } => write!(
                f,
                "wrong length field: it says {length_field} bytes but the table has {len}"
            ),
            TableError::BadChecksum {
                sum,
                checksum_field,
            } => write!(
                f,
                "bad checksum: the bytes sum to {sum:#04x}, not 0 (checksum field {checksum_field:#04x})"
            ),
            TableError::BadSignature(s) => write!(f, "bad signature {s:02x?}"),
        }
    }
}

impl std::error::Error for TableError {}

/// The header fields we show and name files by (a copy of the crate's
/// `SdtHeader`, whose fields are packed and so awkward to borrow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub signature: [u8; 4],
    pub length: u32,
    pub revision: u8,
    pub checksum: u8,
    pub oem_id: [u8; 6],
    pub oem_table_id: [u8; 8],
    pub oem_revision: u32,
    pub creator_id: [u8; 4],
    pub creator_revision: u32,
}

impl Header {
    /// Reads the header from the first bytes of a table (`None` if too
    /// short). Uses the `acpi` crate's `SdtHeader` layout.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        if bytes.len() < HEADER_LEN {
            return None;
        }
        // SAFETY: `SdtHeader` is `repr(C, packed)` plain data (integers and
        // byte arrays, any bit pattern valid), the slice holds at least
        // `size_of::<SdtHeader>()` bytes, and `read_unaligned` needs no
        // alignment.
        let h: SdtHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Some(Header {
            // The crate's `Signature::as_str` unwraps UTF-8; take the raw
            // bytes instead.
            signature: [bytes[0], bytes[1], bytes[2], bytes[3]],
            length: h.length,
            revision: h.revision,
            checksum: h.checksum,
            oem_id: h.oem_id,
            oem_table_id: h.oem_table_id,
            oem_revision: h.oem_revision,
            creator_id: h.creator_id,
            creator_revision: h.creator_revision,
        })
    }

    pub fn signature_str(&self) -> String {
        printable(&self.signature)
    }
}

/// Bytes as text, non-printable bytes as `.`, trailing spaces/NULs cut.
pub fn printable(bytes: &[u8]) -> String {
    let s: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    s.trim_end_matches([' ', '.']).to_owned()
}

/// Checks a table's framing and checksum; `Ok` with its header.
pub fn validate(bytes: &[u8]) -> Result<Header, TableError> {
    if bytes.len() >= 4 && &bytes[..4] == b"FACS" {
        return validate_facs(bytes);
    }
    let header = Header::parse(bytes).ok_or(TableError::TooShort {
        len: bytes.len(),
        need: HEADER_LEN,
    })?;
    if !header.signature.iter().all(|b| b.is_ascii_graphic()) {
        return Err(TableError::BadSignature(header.signature));
    }
    let len = bytes.len();
    let field = header.length as usize;
    if field > len {
        return Err(TableError::Truncated {
            length_field: header.length,
            len,
        });
    }
    if field < len {
        return Err(TableError::LengthMismatch {
            length_field: header.length,
            len,
        });
    }
    let sum = bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    if sum != 0 {
        return Err(TableError::BadChecksum {
            sum,
            checksum_field: header.checksum,
        });
    }
    Ok(header)
}

/// FACS (ACPI 5.2.10): signature, 32-bit length, no checksum; at least 64
/// bytes.
fn validate_facs(bytes: &[u8]) -> Result<Header, TableError> {
    const FACS_MIN: usize = 64;
    let len = bytes.len();
    if len < 8 {
        return Err(TableError::TooShort {
            len,
            need: FACS_MIN,
        });
    }
    let length = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if length as usize > len {
        return Err(TableError::Truncated {
            length_field: length,
            len,
        });
    }
    if (length as usize) < len {
        return Err(TableError::LengthMismatch {
            length_field: length,
            len,
        });
    }
    if len < FACS_MIN {
        return Err(TableError::TooShort {
            len,
            need: FACS_MIN,
        });
    }
    Ok(Header {
        signature: *b"FACS",
        length,
        revision: bytes[32],
        checksum: 0,
        oem_id: [0; 6],
        oem_table_id: [0; 8],
        oem_revision: 0,
        creator_id: [0; 4],
        creator_revision: 0,
    })
}

/// One table as acpid serves it.
#[derive(Debug, Clone)]
pub struct Table {
    /// acpid's file name under /scheme/acpi/tables (see the module docs).
    pub name: String,
    /// The kernel's name, relative to /sys/firmware/acpi/tables
    /// (`DSDT`, `SSDT2`, `dynamic/SSDT3`).
    pub kernel_name: String,
    /// The signature from the bytes (or, if they are too short, the
    /// kernel's name up to its first digit).
    pub signature: String,
    pub bytes: Vec<u8>,
    /// The validated header, or why the table was rejected.
    pub header: Result<Header, TableError>,
}

impl Table {
    pub fn is_valid(&self) -> bool {
        self.header.is_ok()
    }

    /// The table's bytes if it passed validation.
    pub fn valid_bytes(&self) -> Option<&[u8]> {
        self.header.as_ref().ok().map(|_| self.bytes.as_slice())
    }
}

/// All tables, in the kernel's order (static ones, then `dynamic/`).
#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub tables: Vec<Table>,
}

impl Tables {
    /// Builds the set from `(kernel name, bytes)` pairs, validating each
    /// and naming them by the rule in the module docs.
    pub fn from_files(files: Vec<(String, Vec<u8>)>) -> Tables {
        let mut tables: Vec<Table> = files
            .into_iter()
            .map(|(kernel_name, bytes)| {
                let header = validate(&bytes);
                let signature = if bytes.len() >= 4 {
                    printable(&bytes[..4])
                } else {
                    let base = kernel_name.rsplit('/').next().unwrap_or(&kernel_name);
                    base.trim_end_matches(|c: char| c.is_ascii_digit())
                        .to_owned()
                };
                Table {
                    name: String::new(),
                    kernel_name,
                    signature,
                    bytes,
                    header,
                }
            })
            .collect();
        assign_names(&mut tables);
        Tables { tables }
    }

    /// Reads every regular file in `dir` and `dir/dynamic`. Unreadable
    /// files are reported in the second list and left out.
    pub fn read_dir(dir: &Path) -> io::Result<(Tables, Vec<String>)> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for (sub, prefix) in [(dir.to_path_buf(), ""), (dir.join("dynamic"), "dynamic/")] {
            let entries = match std::fs::read_dir(&sub) {
                Ok(e) => e,
                Err(e) if prefix.is_empty() => return Err(e),
                Err(_) => continue, // no dynamic tables
            };
            let mut names: Vec<_> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            names.sort_by_key(|n| kernel_order(n));
            for name in names {
                match std::fs::read(sub.join(&name)) {
                    Ok(bytes) => files.push((format!("{prefix}{name}"), bytes)),
                    Err(e) => errors.push(format!("{prefix}{name}: {e}")),
                }
            }
        }
        Ok((Tables::from_files(files), errors))
    }

    pub fn get(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The first valid table with this signature.
    pub fn find(&self, signature: &str) -> Option<&Table> {
        self.tables
            .iter()
            .find(|t| t.signature == signature && t.is_valid())
    }

    /// The AML tables to load, DSDT first, then every valid SSDT (static,
    /// then dynamic). Invalid ones are left out (their error is logged at
    /// start).
    pub fn aml_tables(&self) -> Vec<&Table> {
        let mut out: Vec<&Table> = self.find("DSDT").into_iter().collect();
        out.extend(
            self.tables
                .iter()
                .filter(|t| t.signature == "SSDT" && t.is_valid()),
        );
        out
    }

    /// Every rejected table, as log lines.
    pub fn errors(&self) -> Vec<String> {
        self.tables
            .iter()
            .filter_map(|t| {
                t.header
                    .as_ref()
                    .err()
                    .map(|e| format!("table {} ({}): {e}", t.name, t.kernel_name))
            })
            .collect()
    }

    /// `index.txt`: one line per table.
    pub fn index_text(&self) -> String {
        let mut s =
            String::from("# name  kernel-file  length  revision  oem-id  oem-table-id  status\n");
        for t in &self.tables {
            let (rev, oem, oem_table) = match Header::parse(&t.bytes) {
                Some(h) if t.signature != "FACS" => (
                    h.revision.to_string(),
                    printable(&h.oem_id),
                    printable(&h.oem_table_id),
                ),
                _ => ("-".into(), "-".into(), "-".into()),
            };
            let status = match &t.header {
                Ok(_) => "ok".to_owned(),
                Err(e) => format!("invalid: {e}"),
            };
            s.push_str(&format!(
                "{}  {}  {}  {}  {:?}  {:?}  {}\n",
                t.name,
                t.kernel_name,
                t.bytes.len(),
                rev,
                oem,
                oem_table,
                status
            ));
        }
        s
    }
}

/// Sorts the kernel's names so `SSDT2` comes before `SSDT10`.
fn kernel_order(name: &str) -> (String, u64) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (base, num) = name.split_at(name.len() - digits);
    (base.to_owned(), num.parse().unwrap_or(0))
}

/// A file-name-safe form of an OEM table id: letters, digits, `_`, `-`.
fn safe_id(raw: &[u8]) -> String {
    printable(raw)
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn assign_names(tables: &mut [Table]) {
    let mut by_sig: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, t) in tables.iter().enumerate() {
        by_sig.entry(t.signature.clone()).or_default().push(i);
    }
    for (sig, idx) in by_sig {
        // A signature must itself be a usable file name.
        let sig = if sig.is_empty() || sig.contains(['/', '.']) {
            "UNKNOWN".to_owned()
        } else {
            sig
        };
        if idx.len() == 1 {
            tables[idx[0]].name = sig;
            continue;
        }
        let ids: Vec<String> = idx
            .iter()
            .map(|&i| match Header::parse(&tables[i].bytes) {
                Some(h) if tables[i].signature != "FACS" => safe_id(&h.oem_table_id),
                _ => String::new(),
            })
            .collect();
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        let use_ids = distinct.len() == ids.len() && ids.iter().all(|s| !s.is_empty());
        for (n, &i) in idx.iter().enumerate() {
            tables[i].name = if use_ids {
                format!("{sig}-{}", ids[n])
            } else {
                format!("{sig}-{}", n + 1)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid table with this signature, OEM table id and body.
    pub(crate) fn table(sig: &[u8; 4], oem_table_id: &[u8; 8], body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
        t.push(2); // revision
        t.push(0); // checksum, fixed below
        t.extend_from_slice(b"TESTOE");
        t.extend_from_slice(oem_table_id);
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"TEST");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(body);
        let sum = t.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    #[test]
    fn a_valid_table_passes_and_each_corruption_has_its_error() {
        let good = table(b"SSDT", b"CPUTABLE", &[1, 2, 3, 4]);
        assert_eq!(validate(&good).map(|h| h.length), Ok(40));

        let mut bad_sum = good.clone();
        bad_sum[37] ^= 0x10;
        assert!(matches!(
            validate(&bad_sum),
            Err(TableError::BadChecksum { .. })
        ));

        assert_eq!(
            validate(&good[..38]),
            Err(TableError::Truncated {
                length_field: 40,
                len: 38
            })
        );
        assert_eq!(
            validate(&good[..10]),
            Err(TableError::TooShort { len: 10, need: 36 })
        );

        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            validate(&long),
            Err(TableError::LengthMismatch {
                length_field: 40,
                len: 41
            })
        );
        assert!(matches!(validate(&[]), Err(TableError::TooShort { .. })));
    }

    #[test]
    fn duplicate_signatures_are_named_by_oem_table_id_or_number() {
        let t = Tables::from_files(vec![
            ("DSDT".into(), table(b"DSDT", b"BXPC    ", &[])),
            ("SSDT1".into(), table(b"SSDT", b"CpuSsdt ", &[])),
            ("SSDT2".into(), table(b"SSDT", b"NVDIMM  ", &[])),
            ("dynamic/SSDT3".into(), table(b"SSDT", b"Cpu0Ist ", &[])),
            ("TEST1".into(), table(b"TEST", b"SAME    ", &[])),
            ("TEST2".into(), table(b"TEST", b"SAME    ", &[])),
        ]);
        let names: Vec<&str> = t.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "DSDT",
                "SSDT-CpuSsdt",
                "SSDT-NVDIMM",
                "SSDT-Cpu0Ist",
                "TEST-1",
                "TEST-2"
            ]
        );
        let aml: Vec<&str> = t.aml_tables().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(aml, ["DSDT", "SSDT-CpuSsdt", "SSDT-NVDIMM", "SSDT-Cpu0Ist"]);
    }

    #[test]
    fn kernel_numbering_sorts_numerically() {
        let mut v = vec!["SSDT10", "SSDT2", "SSDT1", "APIC"];
        v.sort_by_key(|n| kernel_order(n));
        assert_eq!(v, ["APIC", "SSDT1", "SSDT2", "SSDT10"]);
    }
}
