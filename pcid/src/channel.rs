//! pcid's side of the channel protocol (`pcid_interface`): one JSON
//! `ChannelRequest` in, one JSON `ChannelReply` out. Shared by the driver
//! sockets and `/scheme/pci/<fn>/channel`. Nothing a peer sends can make
//! pcid fail: anything malformed gets `ChannelReply::Error`.

use pcid_interface::{BarInfo, BarKind as IfBarKind, ChannelReply, ChannelRequest, FunctionInfo};

use crate::addr::sysfs_address;
use crate::config::BarKind;
use crate::sysfs::Sysfs;
use crate::table::Function;

/// Largest request pcid reads (a request is a few dozen bytes).
pub const MAX_REQUEST: usize = 4096;
/// Largest config read one request may ask for (all of PCIe config space).
pub const MAX_CONFIG_READ: u16 = 4096;

/// The function as drivers see it.
pub fn function_info(f: &Function) -> FunctionInfo {
    let p = &f.parsed;
    FunctionInfo {
        name: f.name.clone(),
        address: sysfs_address(f.address),
        vendor: p.vendor,
        device: p.device,
        class: p.class,
        subclass: p.subclass,
        interface: p.interface,
        revision: p.revision,
        subsystem_vendor: p.subsystem_vendor,
        subsystem_device: p.subsystem_device,
        bars: p
            .bars
            .iter()
            .map(|b| BarInfo {
                index: b.index,
                kind: match b.kind {
                    BarKind::Memory32 => IfBarKind::Memory32,
                    BarKind::Memory64 => IfBarKind::Memory64,
                    BarKind::Io => IfBarKind::Io,
                },
                address: b.address,
                size: b.size,
                prefetchable: b.prefetchable,
            })
            .collect(),
        irq_pin: p.irq_pin,
    }
}

/// Answers one request from `f`'s channel.
pub fn answer(f: &Function, sysfs: &Sysfs, request: &[u8]) -> ChannelReply {
    if request.len() > MAX_REQUEST {
        return ChannelReply::Error(format!(
            "request of {} bytes is longer than {MAX_REQUEST}",
            request.len()
        ));
    }
    let req: ChannelRequest = match serde_json::from_slice(request) {
        Ok(r) => r,
        Err(e) => return ChannelReply::Error(format!("malformed request: {e}")),
    };
    match req {
        ChannelRequest::Info => ChannelReply::Info(function_info(f)),
        ChannelRequest::ConfigRead { offset, len } => config_read(f, sysfs, offset, len),
    }
}

/// Config bytes read from sysfs now (not the scan's copy: the driver may
/// have changed registers since).
fn config_read(f: &Function, sysfs: &Sysfs, offset: u16, len: u16) -> ChannelReply {
    let size = f.config.len();
    let end = usize::from(offset) + usize::from(len);
    if len > MAX_CONFIG_READ || end > size {
        return ChannelReply::Error(format!(
            "config read of {len} bytes at {offset:#x} is outside the {size}-byte config space"
        ));
    }
    match sysfs.read_config_at(f.address, offset.into(), len.into()) {
        Ok(bytes) if bytes.len() == usize::from(len) => ChannelReply::Config(bytes),
        Ok(bytes) => ChannelReply::Error(format!(
            "config read at {offset:#x}: got {} of {len} bytes",
            bytes.len()
        )),
        Err(e) => ChannelReply::Error(format!("config read at {offset:#x}: {e}")),
    }
}

/// `answer` as JSON bytes, ready to send.
pub fn answer_bytes(f: &Function, sysfs: &Sysfs, request: &[u8]) -> Vec<u8> {
    encode(&answer(f, sysfs, request))
}

/// Serializes a reply. Serializing these plain types does not fail; if it
/// ever did, the peer still gets a well-formed error.
pub fn encode(reply: &ChannelReply) -> Vec<u8> {
    serde_json::to_vec(reply).unwrap_or_else(|e| {
        serde_json::json!({ "Error": e.to_string() })
            .to_string()
            .into_bytes()
    })
}
