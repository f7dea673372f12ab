//! Driver rules: `/etc/pcid.d/*.toml` in Redox's format.
//!
//! ```toml
//! [[drivers]]
//! name = "virtio-blk"           # optional, for logs
//! class = 1                     # every key present must match
//! subclass = 0
//! interface = 0
//! vendor = 0x1af4
//! device = 0x1042
//! ids = { 0x1af4 = [0x1001, 0x1042] }   # vendor → device ids ("1af4" works too)
//! command = ["virtio-blkd", "--flag"]   # init unit, then its arguments
//! ```
//!
//! Files are read in name order and rules in file order; the first rule
//! that matches a function wins. Unknown keys are errors (a misspelt key
//! would otherwise make a rule match more than intended). A file with any
//! error is skipped whole, with a message naming the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use daemon::config::RuleError;
use daemon::config::{self, RuleKeys};
use pci_types::PciAddress;
use serde::Deserialize;
use toml::Spanned;

use crate::addr::parse_address;
use crate::config::ParsedConfig;

/// One `[[drivers]]` entry (parsed by `daemon::config`, which reads its
/// `name` and `command`).
pub type Rule = config::Rule<PciMatch>;

/// The keys of a rule that say which functions it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciMatch {
    pub class: Option<u8>,
    pub subclass: Option<u8>,
    pub interface: Option<u8>,
    pub vendor: Option<u16>,
    pub device: Option<u16>,
    /// vendor → accepted device ids.
    pub ids: Option<BTreeMap<u16, BTreeSet<u16>>>,
}

impl PciMatch {
    /// Whether every key this rule has matches the function.
    pub fn matches(&self, f: &ParsedConfig) -> bool {
        fn eq<T: PartialEq>(want: Option<T>, have: T) -> bool {
            want.is_none_or(|w| w == have)
        }
        eq(self.class, f.class)
            && eq(self.subclass, f.subclass)
            && eq(self.interface, f.interface)
            && eq(self.vendor, f.vendor)
            && eq(self.device, f.device)
            && self.ids.as_ref().is_none_or(|ids| {
                ids.get(&f.vendor)
                    .is_some_and(|devices| devices.contains(&f.device))
            })
    }
}

/// [`PciMatch`] as TOML gives it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPciMatch {
    class: Option<u8>,
    subclass: Option<u8>,
    interface: Option<u8>,
    vendor: Option<u16>,
    device: Option<u16>,
    ids: Option<BTreeMap<Spanned<String>, Vec<u16>>>,
}

impl RuleKeys for PciMatch {
    type Raw = RawPciMatch;
    const KEYS: &'static [&'static str] = &[
        "name",
        "class",
        "subclass",
        "interface",
        "vendor",
        "device",
        "ids",
        "command",
    ];

    fn from_raw(r: RawPciMatch, _rule: usize) -> Result<PciMatch, (usize, String)> {
        let ids = match r.ids {
            None => None,
            Some(map) => {
                let mut ids: BTreeMap<u16, BTreeSet<u16>> = BTreeMap::new();
                for (key, devices) in map {
                    let vendor = parse_vendor_key(key.get_ref()).ok_or_else(|| {
                        (
                            key.span().start,
                            format!(
                                "`ids` key {:?} is not a vendor id (hex, e.g. \"1af4\" or \"0x1af4\")",
                                key.get_ref()
                            ),
                        )
                    })?;
                    ids.entry(vendor).or_default().extend(devices);
                }
                Some(ids)
            }
        };
        Ok(PciMatch {
            class: r.class,
            subclass: r.subclass,
            interface: r.interface,
            vendor: r.vendor,
            device: r.device,
            ids,
        })
    }
}

/// A vendor key of `ids`: hex, with or without `0x`.
fn parse_vendor_key(key: &str) -> Option<u16> {
    let hex = key
        .strip_prefix("0x")
        .or_else(|| key.strip_prefix("0X"))
        .unwrap_or(key);
    if hex.is_empty() || hex.len() > 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// Parses one rule file; `file` names it in rules and errors.
pub fn parse_rules(file: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    config::parse_rules(file, text)
}

/// Reads every `*.toml` in `dir`, in name order (see
/// [`daemon::config::load_rules`]).
pub fn load_rules(dir: &Path) -> (Vec<Rule>, Vec<RuleError>) {
    config::load_rules(dir)
}

/// The first rule matching `f`.
pub fn find_rule<'a>(rules: &'a [Rule], f: &ParsedConfig) -> Option<&'a Rule> {
    rules.iter().find(|r| r.keys.matches(f))
}

/// The functions the kernel command line tells pcid to leave alone:
/// `pcid.ignore=0000:00:05.0[,…]` (the word may repeat). Returns them and
/// the entries that are not addresses.
pub fn parse_ignore(cmdline: &str) -> (BTreeSet<PciAddress>, Vec<String>) {
    let mut set = BTreeSet::new();
    let mut bad = Vec::new();
    for word in cmdline.split_whitespace() {
        let Some(list) = word.strip_prefix("pcid.ignore=") else {
            continue;
        };
        for entry in list.split(',').filter(|e| !e.is_empty()) {
            match parse_address(entry) {
                Some(a) => {
                    set.insert(a);
                }
                None => bad.push(entry.to_owned()),
            }
        }
    }
    (set, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(vendor: u16, device: u16, class: u8, subclass: u8, interface: u8) -> ParsedConfig {
        ParsedConfig {
            vendor,
            device,
            revision: 0,
            class,
            subclass,
            interface,
            header_type: 0,
            multifunction: false,
            subsystem_vendor: 0,
            subsystem_device: 0,
            bars: Vec::new(),
            irq_pin: 0,
            irq_line: 0,
            capabilities: Vec::new(),
            ext_capabilities: Vec::new(),
        }
    }

    fn one(text: &str) -> Rule {
        let mut r = parse_rules("t.toml", text).unwrap();
        assert_eq!(r.len(), 1);
        r.remove(0)
    }

    #[test]
    fn every_key_parses() {
        let r = one("# comment\n\
             [[drivers]]\n\
             name = \"virtio-blk\"\n\
             class = 1\n\
             subclass = 0\n\
             interface = 0\n\
             vendor = 0x1af4\n\
             device = 0x1042\n\
             ids = { 0x1af4 = [0x1001, 0x1042], \"8086\" = [0x100e], 0X10ec = [] }\n\
             command = [\"virtio-blkd\", \"--queue\", \"2\"]\n");
        assert_eq!(r.driver.file, "t.toml");
        assert_eq!(r.driver.line, 2);
        assert_eq!(r.driver.name.as_deref(), Some("virtio-blk"));
        assert_eq!(
            (r.keys.class, r.keys.subclass, r.keys.interface),
            (Some(1), Some(0), Some(0))
        );
        assert_eq!((r.keys.vendor, r.keys.device), (Some(0x1af4), Some(0x1042)));
        let ids = r.keys.ids.as_ref().unwrap();
        assert_eq!(ids[&0x1af4], BTreeSet::from([0x1001, 0x1042]));
        assert_eq!(ids[&0x8086], BTreeSet::from([0x100e]));
        assert!(ids[&0x10ec].is_empty());
        assert_eq!(r.driver.unit(), "virtio-blkd");
        assert_eq!(r.driver.args(), ["--queue", "2"]);
    }

    #[test]
    fn each_key_must_match() {
        let f = function(0x1af4, 0x1042, 1, 0, 0);
        let base = "[[drivers]]\ncommand = [\"d\"]\n";
        assert!(
            one(base).keys.matches(&f),
            "a rule with no keys matches anything"
        );
        for (key, good, bad) in [
            ("class", "1", "2"),
            ("subclass", "0", "1"),
            ("interface", "0", "1"),
            ("vendor", "0x1af4", "0x8086"),
            ("device", "0x1042", "0x1041"),
            ("ids", "{ 1af4 = [0x1042] }", "{ 1af4 = [0x1001] }"),
        ] {
            let good_rule = one(&format!("{base}{key} = {good}\n"));
            let bad_rule = one(&format!("{base}{key} = {bad}\n"));
            assert!(good_rule.keys.matches(&f), "{key} = {good}");
            assert!(!bad_rule.keys.matches(&f), "{key} = {bad}");
        }
        // ids: the vendor must be a key, and an empty list matches nothing.
        assert!(!one(&format!("{base}ids = {{ 8086 = [0x1042] }}\n"))
            .keys
            .matches(&f));
        assert!(!one(&format!("{base}ids = {{ 1af4 = [] }}\n"))
            .keys
            .matches(&f));
        // All keys together: one mismatch is enough to fail.
        let all = "[[drivers]]\nclass = 1\nsubclass = 0\nvendor = 0x1af4\ncommand = [\"d\"]\n";
        assert!(one(all).keys.matches(&f));
        assert!(!one(all).keys.matches(&function(0x1af4, 0x1042, 1, 1, 0)));
    }

    #[test]
    fn first_match_wins_across_rules_and_files() {
        let dir = std::env::temp_dir().join(format!("pcid-rules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // b.toml sorts after a.toml whatever the creation order.
        std::fs::write(
            dir.join("b.toml"),
            "[[drivers]]\nclass = 1\ncommand = [\"generic-storage\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("a.toml"),
            "[[drivers]]\nvendor = 0x8086\ncommand = [\"intel\"]\n\n\
             [[drivers]]\nids = { 1af4 = [0x1042] }\ncommand = [\"virtio-blkd\"]\n\n\
             [[drivers]]\nvendor = 0x1af4\ncommand = [\"never-reached\"]\n",
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not a rule file").unwrap();
        let (rules, errors) = load_rules(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rules.len(), 4);
        let pick = |f: &ParsedConfig| find_rule(&rules, f).map(|r| r.driver.unit().to_owned());
        assert_eq!(
            pick(&function(0x1af4, 0x1042, 1, 0, 0)).as_deref(),
            Some("virtio-blkd")
        );
        assert_eq!(
            pick(&function(0x1af4, 0x1001, 1, 0, 0)).as_deref(),
            Some("never-reached")
        );
        assert_eq!(
            pick(&function(0x1234, 0x1111, 1, 0, 0)).as_deref(),
            Some("generic-storage")
        );
        assert_eq!(pick(&function(0x1234, 0x1111, 2, 0, 0)), None);
        assert_eq!(rules[1].driver.line, 5);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_match_keys_are_errors_at_their_line() {
        // Syntax, `command` and unknown tables: daemon::config's tests.
        let cases: &[(&str, usize, &str)] = &[
            // value out of range for a u8
            ("[[drivers]]\ncommand = [\"x\"]\n\n\nclass = 300\n", 5, ""),
            // wrong type
            ("[[drivers]]\nvendor = \"1af4\"\ncommand = [\"x\"]\n", 2, ""),
            // misspelt key
            (
                "[[drivers]]\ncommand = [\"x\"]\nsubclas = 1\n",
                3,
                "subclas",
            ),
            // a vendor key that is not hex
            (
                "[[drivers]]\ncommand = [\"x\"]\n[drivers.ids]\n1af4 = [1]\nvirtio = [2]\n",
                5,
                "virtio",
            ),
            (
                "[[drivers]]\ncommand = [\"x\"]\nids = { 0x12345 = [1] }\n",
                3,
                "0x12345",
            ),
            // device id out of range
            (
                "[[drivers]]\ncommand = [\"x\"]\nids = { 1af4 = [0x10000] }\n",
                3,
                "",
            ),
        ];
        for (text, line, needle) in cases {
            let e = parse_rules("x.toml", text).unwrap_err();
            assert_eq!(e.line, Some(*line), "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
            assert!(
                e.to_string().starts_with(&format!("x.toml:{line}: ")),
                "{e}"
            );
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn ignore_list_from_the_command_line() {
        let (set, bad) = parse_ignore(
            "console=ttyS0 pcid.ignore=0000:00:05.0,00:06.0 quiet pcid.ignore=0000:01:00.1,bogus, pcid.ignored=0000:00:07.0",
        );
        assert_eq!(
            set,
            BTreeSet::from([
                PciAddress::new(0, 0, 5, 0),
                PciAddress::new(0, 0, 6, 0),
                PciAddress::new(0, 1, 0, 1),
            ])
        );
        assert_eq!(bad, ["bogus"]);
        assert!(parse_ignore("quiet").0.is_empty());
    }
}
