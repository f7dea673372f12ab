//! AML names from text: validated segments, absolute paths, children.

use acpi::aml::namespace::{AmlName, NameComponent, NameSeg};

/// A validated name segment from text: 1..4 characters, lead `A-Z` or `_`,
/// then `A-Z`, `0-9`, `_`; padded with `_` as AML does.
pub fn seg(text: &str) -> Option<NameSeg> {
    let b = text.as_bytes();
    if b.is_empty() || b.len() > 4 {
        return None;
    }
    let mut out = [b'_'; 4];
    out[..b.len()].copy_from_slice(b);
    NameSeg::from_bytes(out).ok()
}

/// The absolute name `\A.B.C` of these segments (`\` for none).
pub fn absolute(segs: &[NameSeg]) -> AmlName {
    let mut c = vec![NameComponent::Root];
    c.extend(segs.iter().map(|s| NameComponent::Segment(*s)));
    AmlName::from_components(c)
}

/// `path.CHILD` for a constant, valid child name such as `_HID`.
pub fn child(path: &AmlName, name: &str) -> AmlName {
    match (seg(name), path.clone().normalize()) {
        (Some(s), Ok(p)) => {
            let mut segs = segments(&p);
            segs.push(s);
            absolute(&segs)
        }
        _ => path.clone(),
    }
}

/// The segments of an absolute, normal name.
pub fn segments(path: &AmlName) -> Vec<NameSeg> {
    // AmlName keeps its components private; its text form is
    // `\SEG1.SEG2…`, each segment exactly four valid characters.
    path.as_string()
        .trim_start_matches('\\')
        .split('.')
        .filter_map(seg)
        .collect()
}

/// Parses `\_SB.PCI0` or `_SB_.PCI0` (always absolute) safely.
pub fn parse_path(text: &str) -> Option<AmlName> {
    let t = text.trim().trim_start_matches('\\');
    if t.is_empty() {
        return Some(AmlName::root());
    }
    let segs: Option<Vec<NameSeg>> = t.split('.').map(seg).collect();
    segs.map(|s| absolute(&s))
}

/// `AmlName::from_str` for constants in this crate (valid by construction).
pub fn name(text: &str) -> AmlName {
    parse_path(text).unwrap_or_else(AmlName::root)
}
