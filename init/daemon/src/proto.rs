//! Messages on init's control channel: one UTF-8 line per packet.
//!
//! daemon → init: `register NAME dir|file`, `ready`, and (from an
//! enumerator such as pcid) `spawn UNIT INSTANCE [ARG…]` with the new
//! driver's capability fds attached. An enumerator of platform devices
//! (acpid) also grants I/O ports: `spawn-io UNIT INSTANCE PORTS [ARG…]`,
//! PORTS being inclusive hex ranges joined by commas (`70-71,cf9-cf9`).
//! init → daemon, in answer to `register` and `spawn`: `ok` (for `register`
//! with the FUSE fd and the scheme's state memfd attached), `ok resumed`
//! (the same, for a scheme whose mount outlived its last daemon: the new one
//! takes over the connection), or `err ERRNO MESSAGE`.
//!
//! A driver whose device the kernel is taking away says `removed` before it
//! exits (init then does not restart it); an enumerator that saw one of
//! its functions go says `gone UNIT INSTANCE` (init stops that instance,
//! killing it if it still runs, and does not restart it).
//!
//! init → daemon, unprompted ([`Notice`]): `ping N`, the supervisor's
//! heartbeat, which the daemon's event loop answers with `pong N`
//! (daemon → init); and, to an enumerator, `respawn UNIT INSTANCE`: start
//! that driver instance again on a freshly claimed device.

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
    /// The answer to `ping N`.
    Pong(u64),
    /// The daemon's device is being removed: it exits next, for good.
    Removed,
    /// From an enumerator: the device of `UNIT@INSTANCE` is gone.
    Gone {
        unit: String,
        instance: String,
    },
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
    /// `register` of a scheme whose mount survived its daemon.
    Resumed,
    Err(i32, String),
}

/// What init sends a daemon without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The heartbeat: answer `Pong(n)` from the event loop.
    Ping(u64),
    /// To an enumerator: claim the device again and `spawn` the instance
    /// (the supervisor restarting a driver, or a start by hand).
    Respawn { unit: String, instance: String },
}

/// Anything init sends: an answer or a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromInit {
    Reply(Reply),
    Notice(Notice),
}

impl Notice {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Notice::Ping(n) => format!("ping {n}").into_bytes(),
            Notice::Respawn { unit, instance } => format!("respawn {unit} {instance}").into_bytes(),
        }
    }
}

impl FromInit {
    pub fn decode(bytes: &[u8]) -> Result<FromInit, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "message is not UTF-8".to_owned())?;
        let words: Vec<&str> = text.split(' ').collect();
        match words.as_slice() {
            ["ping", n] => n
                .parse()
                .map(|n| FromInit::Notice(Notice::Ping(n)))
                .map_err(|_| format!("bad ping {text:?}")),
            ["respawn", unit, instance] if valid_word(unit) && valid_word(instance) => {
                Ok(FromInit::Notice(Notice::Respawn {
                    unit: (*unit).to_owned(),
                    instance: (*instance).to_owned(),
                }))
            }
            _ => Reply::decode(bytes).map(FromInit::Reply),
        }
    }
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
            Request::Pong(n) => format!("pong {n}").into_bytes(),
            Request::Removed => b"removed".to_vec(),
            Request::Gone { unit, instance } => format!("gone {unit} {instance}").into_bytes(),
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
            ["removed"] => Ok(Request::Removed),
            ["gone", unit, instance] if valid_word(unit) && valid_word(instance) => {
                Ok(Request::Gone {
                    unit: (*unit).to_owned(),
                    instance: (*instance).to_owned(),
                })
            }
            ["pong", n] => n
                .parse()
                .map(Request::Pong)
                .map_err(|_| format!("bad pong {text:?}")),
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
            Reply::Resumed => b"ok resumed".to_vec(),
            Reply::Err(errno, msg) => format!("err {errno} {msg}").into_bytes(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "reply is not UTF-8".to_owned())?;
        match text {
            "ok" => return Ok(Reply::Ok),
            "ok resumed" => return Ok(Reply::Resumed),
            _ => {}
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
            Request::Removed,
            Request::Gone {
                unit: "virtio-blkd".into(),
                instance: "pci-0000-01-00.0".into(),
            },
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
        for r in [
            Reply::Ok,
            Reply::Resumed,
            Reply::Err(13, "name not allowed".into()),
        ] {
            assert_eq!(Reply::decode(&r.encode()), Ok(r.clone()));
            assert_eq!(FromInit::decode(&r.encode()), Ok(FromInit::Reply(r)));
        }
    }

    #[test]
    fn notices_and_pongs_round_trip() {
        for n in [
            Notice::Ping(0),
            Notice::Ping(u64::MAX),
            Notice::Respawn {
                unit: "virtio-blkd".into(),
                instance: "pci-0000-00-04.0".into(),
            },
        ] {
            assert_eq!(FromInit::decode(&n.encode()), Ok(FromInit::Notice(n)));
        }
        assert_eq!(
            Request::decode(&Request::Pong(7).encode()),
            Ok(Request::Pong(7))
        );
        assert!(FromInit::decode(b"ping x").is_err());
        assert!(FromInit::decode(b"ping").is_err());
        assert!(FromInit::decode(b"respawn a").is_err());
        assert!(FromInit::decode(b"respawn a b c").is_err());
        assert!(Request::decode(b"pong -1").is_err());
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

    mod hostile {
        //! Random and damaged messages on the control channel: decoding
        //! never panics, a bad message is an error that quotes it, and
        //! valid messages round-trip. Deterministic (fixed seed, no failure
        //! files); `PROPTEST_RNG_SEED` explores others.

        use super::*;
        use proptest::prelude::*;

        /// A word as the protocol allows one: printable ASCII, no space.
        fn word() -> impl Strategy<Value = String> {
            "[!-~]{1,12}"
        }

        fn ports() -> impl Strategy<Value = Vec<RangeInclusive<u16>>> {
            prop::collection::vec(
                (any::<u16>(), any::<u16>()).prop_map(|(a, b)| a.min(b)..=a.max(b)),
                0..4,
            )
        }

        fn request() -> impl Strategy<Value = Request> {
            prop_oneof![
                Just(Request::Ready),
                any::<u64>().prop_map(Request::Pong),
                (word(), any::<bool>()).prop_map(|(n, dir)| Request::Register(
                    n,
                    if dir { RootKind::Dir } else { RootKind::File }
                )),
                (word(), word(), prop::collection::vec(word(), 0..4), ports()).prop_map(
                    |(unit, instance, args, ioports)| Request::Spawn {
                        unit,
                        instance,
                        args,
                        ioports,
                    }
                ),
            ]
        }

        fn from_init() -> impl Strategy<Value = FromInit> {
            prop_oneof![
                Just(FromInit::Reply(Reply::Ok)),
                Just(FromInit::Reply(Reply::Resumed)),
                (any::<i32>(), ".{0,40}").prop_map(|(e, m)| FromInit::Reply(Reply::Err(e, m))),
                any::<u64>().prop_map(|n| FromInit::Notice(Notice::Ping(n))),
                (word(), word()).prop_map(|(unit, instance)| {
                    FromInit::Notice(Notice::Respawn { unit, instance })
                }),
            ]
        }

        fn encode(m: &FromInit) -> Vec<u8> {
            match m {
                FromInit::Reply(r) => r.encode(),
                FromInit::Notice(n) => n.encode(),
            }
        }

        /// Damage: flip bits, cut, or splice in protocol-looking bytes.
        fn damaged(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
            let edits = prop::collection::vec(
                (
                    0..4u8,
                    any::<usize>(),
                    any::<u8>(),
                    prop::sample::select(vec![" ", "  ", "-", ",", "0x", "\n", "\u{e9}", "\0"]),
                ),
                1..4,
            );
            edits.prop_map(move |edits| {
                let mut b = base.clone();
                for (kind, at, x, piece) in edits {
                    let i = at % (b.len() + 1);
                    match kind {
                        0 if i < b.len() => b[i] ^= x | 1,
                        1 => b.truncate(i),
                        2 => {
                            b.splice(i..i, piece.bytes());
                        }
                        _ => b.insert(i, x),
                    }
                }
                b
            })
        }

        proptest! {
            #![proptest_config(seeded::config(512, 0xc0_47_01))]

            #[test]
            fn requests_round_trip(r in request()) {
                prop_assert_eq!(Request::decode(&r.encode()), Ok(r));
            }

            #[test]
            fn init_messages_round_trip(m in from_init()) {
                prop_assert_eq!(FromInit::decode(&encode(&m)), Ok(m.clone()));
                if let FromInit::Reply(r) = &m {
                    prop_assert_eq!(Reply::decode(&r.encode()), Ok(r.clone()));
                }
            }

            /// Whatever bytes arrive: an error naming the problem, or a
            /// message that encodes to something decoding the same again.
            #[test]
            fn random_bytes_decode_to_an_error_or_a_stable_message(
                bytes in prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..MAX_MESSAGE),
                    ".{0,64}".prop_map(String::into_bytes),
                ],
            ) {
                match Request::decode(&bytes) {
                    Ok(r) => prop_assert_eq!(Request::decode(&r.encode()), Ok(r)),
                    Err(e) => prop_assert!(!e.is_empty()),
                }
                match FromInit::decode(&bytes) {
                    Ok(m) => prop_assert_eq!(FromInit::decode(&encode(&m)), Ok(m)),
                    Err(e) => prop_assert!(!e.is_empty()),
                }
            }

            #[test]
            fn damaged_requests_decode_to_an_error_or_a_stable_message(
                bytes in request().prop_flat_map(|r| damaged(r.encode())),
            ) {
                match Request::decode(&bytes) {
                    Ok(r) => prop_assert_eq!(Request::decode(&r.encode()), Ok(r)),
                    Err(e) => prop_assert!(!e.is_empty()),
                }
            }

            #[test]
            fn damaged_init_messages_decode_to_an_error_or_a_stable_message(
                bytes in from_init().prop_flat_map(|m| damaged(encode(&m))),
            ) {
                match FromInit::decode(&bytes) {
                    Ok(m) => prop_assert_eq!(FromInit::decode(&encode(&m)), Ok(m)),
                    Err(e) => prop_assert!(!e.is_empty()),
                }
            }

            /// The port grant format, on its own: ranges round-trip, any
            /// text is a range, a grant, or an error.
            #[test]
            fn port_grants_round_trip_and_garbage_is_an_error(
                g in ports(),
                text in "[0-9a-fA-Fx, -]{0,24}",
            ) {
                let formatted = crate::ports::format_grant(&g);
                prop_assert_eq!(crate::ports::parse_grant(&formatted), Ok(g));
                if let Ok(r) = crate::ports::parse_range(&text) {
                    prop_assert!(r.start() <= r.end());
                }
                let _ = crate::ports::parse_grant(&text);
            }
        }
    }
}
