//! Messages on init's control channel: one UTF-8 line per packet.
//!
//! daemon → init: `register NAME dir|file`, `ready`, and (from an
//! enumerator such as pcid) `spawn UNIT INSTANCE [ARG…]` with the new
//! driver's capability fds attached. An enumerator of platform devices
//! (acpid) also grants I/O ports: `spawn-io UNIT INSTANCE PORTS [ARG…]`,
//! PORTS being inclusive hex ranges joined by commas (`70-71,cf9-cf9`).
//! init → daemon (only in answer to `register` and `spawn`): `ok` (with the
//! FUSE fd attached, for `register`), or `err ERRNO MESSAGE`.

use std::ops::RangeInclusive;

/// Largest packet either side sends.
pub const MAX_MESSAGE: usize = 512;

/// What the root of a scheme's mount is: a directory (`/scheme/fifo/x`) or
/// a single file (`/scheme/null`). The mount point must be of the same type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    Dir,
    File,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Register(String, RootKind),
    Ready,
    /// Start instance `INSTANCE` of template unit `UNIT` with extra args;
    /// the fds attached to the packet become fds 4, 5, … in the child, and
    /// init grants it `ioports` (ioperm) before dropping its privileges.
    /// Encoded as `spawn` when `ioports` is empty, `spawn-io` otherwise.
    Spawn {
        unit: String,
        instance: String,
        args: Vec<String>,
        ioports: Vec<RangeInclusive<u16>>,
    },
}

/// Most fds one `spawn` may pass (container, device, channel, one spare).
pub const MAX_PASSED_FDS: usize = 4;

/// Unit, instance and argument words: no spaces, nothing unprintable.
fn valid_word(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_graphic())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Err(i32, String),
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Register(name, kind) => {
                let kind = match kind {
                    RootKind::Dir => "dir",
                    RootKind::File => "file",
                };
                format!("register {name} {kind}").into_bytes()
            }
            Request::Ready => b"ready".to_vec(),
            Request::Spawn {
                unit,
                instance,
                args,
                ioports,
            } => {
                let mut line = if ioports.is_empty() {
                    format!("spawn {unit} {instance}")
                } else {
                    let ports = crate::ports::format_grant(ioports).replace(' ', ",");
                    format!("spawn-io {unit} {instance} {ports}")
                };
                for a in args {
                    line.push(' ');
                    line.push_str(a);
                }
                line.into_bytes()
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "message is not UTF-8".to_owned())?;
        let words: Vec<&str> = text.trim_end().split(' ').collect();
        match words.as_slice() {
            ["ready"] => Ok(Request::Ready),
            ["register", name, "dir"] => Ok(Request::Register((*name).to_owned(), RootKind::Dir)),
            ["register", name, "file"] => Ok(Request::Register((*name).to_owned(), RootKind::File)),
            ["spawn", unit, instance, args @ ..]
                if valid_word(unit)
                    && valid_word(instance)
                    && args.iter().all(|a| valid_word(a)) =>
            {
                Ok(Request::Spawn {
                    unit: (*unit).to_owned(),
                    instance: (*instance).to_owned(),
                    args: args.iter().map(|a| (*a).to_owned()).collect(),
                    ioports: Vec::new(),
                })
            }
            ["spawn-io", unit, instance, ports, args @ ..]
                if valid_word(unit)
                    && valid_word(instance)
                    && valid_word(ports)
                    && args.iter().all(|a| valid_word(a)) =>
            {
                let ioports = ports
                    .split(',')
                    .map(crate::ports::parse_range)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("bad port list in {text:?}: {e}"))?;
                Ok(Request::Spawn {
                    unit: (*unit).to_owned(),
                    instance: (*instance).to_owned(),
                    args: args.iter().map(|a| (*a).to_owned()).collect(),
                    ioports,
                })
            }
            _ => Err(format!("unknown request {text:?}")),
        }
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Ok => b"ok".to_vec(),
            Reply::Err(errno, msg) => format!("err {errno} {msg}").into_bytes(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "reply is not UTF-8".to_owned())?;
        if text == "ok" {
            return Ok(Reply::Ok);
        }
        let mut words = text.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("err"), Some(errno), msg) => {
                let errno = errno
                    .parse()
                    .map_err(|_| format!("bad errno in reply {text:?}"))?;
                Ok(Reply::Err(errno, msg.unwrap_or("").to_owned()))
            }
            _ => Err(format!("unknown reply {text:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Ready,
            Request::Register("disk.pci-0000-00-04.0_virtio_blk".into(), RootKind::Dir),
            Request::Register("null".into(), RootKind::File),
            Request::Spawn {
                unit: "virtio-blkd".into(),
                instance: "pci-0000-00-04.0".into(),
                args: vec![],
                ioports: vec![],
            },
            Request::Spawn {
                unit: "e1000d".into(),
                instance: "pci-0000-00-05.0".into(),
                args: vec!["--verbose".into(), "x=1".into()],
                ioports: vec![],
            },
            Request::Spawn {
                unit: "rtcd".into(),
                instance: "acpi-PNP0B00-0".into(),
                args: vec![],
                ioports: vec![0x70..=0x71],
            },
            Request::Spawn {
                unit: "uartd".into(),
                instance: "acpi-PNP0501-1".into(),
                args: vec!["--mem".into(), "0xfed00000+0x400".into()],
                ioports: vec![0x3f8..=0x3ff, 0x80..=0x80, 0..=0xffff],
            },
        ] {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn port_grants_have_a_fixed_wire_form() {
        let r = Request::Spawn {
            unit: "rtcd".into(),
            instance: "acpi-PNP0B00-0".into(),
            args: vec!["-v".into()],
            ioports: vec![0x70..=0x71, 0xcf9..=0xcf9],
        };
        assert_eq!(r.encode(), b"spawn-io rtcd acpi-PNP0B00-0 70-71,cf9-cf9 -v");
        // Without ports the message is the plain `spawn` older init speaks.
        let plain = Request::Spawn {
            unit: "rtcd".into(),
            instance: "acpi-PNP0B00-0".into(),
            args: vec!["-v".into()],
            ioports: vec![],
        };
        assert_eq!(plain.encode(), b"spawn rtcd acpi-PNP0B00-0 -v");
        // `0x` and single ports are accepted on the wire too.
        assert_eq!(
            Request::decode(b"spawn-io rtcd acpi-PNP0B00-0 0x70-0x71,cf9 -v"),
            Ok(r)
        );
    }

    #[test]
    fn replies_round_trip() {
        for r in [Reply::Ok, Reply::Err(13, "name not allowed".into())] {
            assert_eq!(Reply::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Request::decode(b"hello").is_err());
        assert!(Request::decode(b"register").is_err());
        assert!(Request::decode(b"register x y").is_err());
        assert!(Request::decode(b"spawn").is_err());
        assert!(Request::decode(b"spawn unit").is_err());
        assert!(Request::decode(b"spawn unit  inst").is_err());
        assert!(Request::decode(b"spawn unit inst \x01").is_err());
        assert!(Request::decode(b"spawn-io unit inst").is_err());
        assert!(Request::decode(b"spawn-io unit inst 71-70").is_err());
        assert!(Request::decode(b"spawn-io unit inst 70-71,,80").is_err());
        assert!(Request::decode(b"spawn-io unit inst 10000").is_err());
        assert!(Request::decode(b"spawn-io unit inst , x").is_err());
        assert!(Request::decode(&[0xff, 0xfe]).is_err());
        assert!(Reply::decode(b"err x y").is_err());
    }
}
