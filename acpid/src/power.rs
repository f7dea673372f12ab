//! Soft power off (S5) and reset, the way the firmware describes them.
//!
//! S5 (ACPI 7.4.2, 16.1.7): evaluate `\_S5` for the SLP_TYPa/SLP_TYPb
//! values, run `\_PTS(5)` if the firmware has one, then write SLP_TYPx into
//! bits 10..12 of PM1a_CNT (and PM1b_CNT when present), and again with
//! SLP_EN (bit 13) set; other bits keep their value (SCI_EN must stay).
//! Reset (ACPI 4.8.3.6): write RESET_VALUE to the FADT's RESET_REG. Both go
//! through acpid's hardware handler, so only granted ports are touched.

use acpi::address::{AddressSpace, GenericAddress};
use acpi::aml::object::Object;

use crate::aml::{name, Aml, Hardware};
use crate::facts::FadtInfo;

const SLP_TYP_SHIFT: u32 = 10;
const SLP_TYP_MASK: u32 = 7 << SLP_TYP_SHIFT;
const SLP_EN: u32 = 1 << 13;

/// The `\_S5` package's first two values (SLP_TYPa, SLP_TYPb).
pub fn s5_values(aml: &mut Aml) -> Result<(u8, u8), String> {
    let obj = aml
        .evaluate(&name("\\_S5"), Vec::new())
        .map_err(|e| format!("\\_S5: {e}"))?;
    let Object::Package(items) = &*obj else {
        return Err(format!("\\_S5 is not a package but {:?}", obj.typ()));
    };
    let get = |i: usize| -> Result<u8, String> {
        let item = items
            .get(i)
            .ok_or_else(|| format!("\\_S5 has {} elements", items.len()))?;
        let v = item
            .as_integer()
            .map_err(|e| format!("\\_S5 element {i}: {e:?}"))?;
        Ok((v & 7) as u8)
    };
    let a = get(0)?;
    // Some firmware gives only SLP_TYPa; then b is the same.
    let b = get(1).unwrap_or(a);
    Ok((a, b))
}

/// Access width in bytes of a PM1 control register: from `bit_width`, or
/// from `access_size` where firmware leaves the bit width 0. PM1 control is
/// 16 bits wide (ACPI 4.8.3.2.1); anything narrower would drop SLP_TYP and
/// SLP_EN, so it is refused rather than written.
fn pm1_width(g: &GenericAddress, what: &str) -> Result<u8, String> {
    let w = match (g.bit_width, g.access_size) {
        (0, 3) => 4,
        (0, 2) => 2,
        (0, _) => 1,
        (1..=8, _) => 1,
        (9..=16, _) => 2,
        _ => 4,
    };
    if w < 2 {
        return Err(format!(
            "{what} is {} bits wide (access size {}); SLP_TYP and SLP_EN need 16",
            g.bit_width, g.access_size
        ));
    }
    Ok(w)
}

fn io_port(g: &GenericAddress, what: &str) -> Result<u16, String> {
    if g.address_space != AddressSpace::SystemIo {
        return Err(format!(
            "{what} is in {:?}, acpid reaches only I/O ports",
            g.address_space
        ));
    }
    u16::try_from(g.address).map_err(|_| format!("{what} port {:#x} is out of range", g.address))
}

/// One PM1 control block, ready to be written: its port, width and the
/// value with SLP_TYP set and SLP_EN clear (other bits, SCI_EN among
/// them, as read).
struct Pm1 {
    port: u16,
    width: u8,
    value: u32,
    what: &'static str,
}

impl Pm1 {
    fn read(
        hw: &dyn Hardware,
        g: &GenericAddress,
        typ: u8,
        what: &'static str,
    ) -> Result<Pm1, String> {
        let port = io_port(g, what)?;
        let width = pm1_width(g, what)?;
        let old = hw
            .port_read(port, width)
            .map_err(|e| format!("{what}: reading port {port:#x}: {e}"))?;
        let value = (old & !(SLP_TYP_MASK | SLP_EN)) | (u32::from(typ) << SLP_TYP_SHIFT);
        Ok(Pm1 {
            port,
            width,
            value,
            what,
        })
    }

    fn write(&self, hw: &dyn Hardware, value: u32) -> Result<(), String> {
        hw.port_write(self.port, self.width, value)
            .map_err(|e| format!("{}: writing port {:#x}: {e}", self.what, self.port))
    }
}

/// Enters S5. On a working machine this does not come back for long: the
/// platform turns off. An `Err` says why it could not be done.
pub fn poweroff(aml: &mut Aml, fadt: &FadtInfo) -> Result<(), String> {
    let (a, b) = s5_values(aml)?;
    let pm1a = fadt
        .pm1a_control
        .ok_or("the FADT has no PM1a control block")?;
    // Check the ports before telling the firmware we are going down.
    let hw = aml.handler().hardware().clone();
    io_port(&pm1a, "PM1a_CNT")?;
    pm1_width(&pm1a, "PM1a_CNT")?;
    if let Some(pm1b) = &fadt.pm1b_control {
        io_port(pm1b, "PM1b_CNT")?;
        pm1_width(pm1b, "PM1b_CNT")?;
    }
    // \_PTS(5): "prepare to sleep", where the firmware has one.
    if aml.get(&name("\\_PTS")).is_some() {
        if let Err(e) = aml.evaluate(&name("\\_PTS"), vec![Object::Integer(5).wrap()]) {
            log::warn!("\\_PTS(5): {e} (going on)");
        }
    }
    log::info!("entering S5: SLP_TYPa {a} SLP_TYPb {b}");
    let mut blocks = vec![Pm1::read(hw.as_ref(), &pm1a, a, "PM1a_CNT")?];
    if let Some(pm1b) = &fadt.pm1b_control {
        blocks.push(Pm1::read(hw.as_ref(), pm1b, b, "PM1b_CNT")?);
    }
    // SLP_TYP into both blocks first, then SLP_EN into both: with a
    // separate PM1b, SLP_EN on PM1a must not act before PM1b has its type.
    for pm1 in &blocks {
        pm1.write(hw.as_ref(), pm1.value)?;
    }
    for pm1 in &blocks {
        pm1.write(hw.as_ref(), pm1.value | SLP_EN)?;
    }
    Ok(())
}

/// Resets the machine through the FADT's reset register.
pub fn reboot(aml: &Aml, fadt: &FadtInfo) -> Result<(), String> {
    let (reg, value) = fadt
        .reset
        .ok_or("the FADT offers no reset register (RESET_REG_SUP clear)")?;
    let port = io_port(&reg, "RESET_REG")?;
    log::info!("resetting: {value:#x} to port {port:#x}");
    aml.handler()
        .hardware()
        .port_write(port, 1, value.into())
        .map_err(|e| format!("RESET_REG: writing port {port:#x}: {e}"))
}
