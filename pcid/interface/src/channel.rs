//! The pcid <-> driver channel: one JSON message per `SOCK_SEQPACKET`
//! packet, at most [`MAX_MESSAGE`] bytes. Both sides use
//! [`send_message`] and [`recv_message`].

use std::io;
use std::os::fd::AsFd;

use rustix::net::{RecvFlags, SendFlags};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::FunctionInfo;

/// Largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Driver -> pcid.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ChannelRequest {
    /// What function is this? Answered with [`ChannelReply::Info`].
    Info,
    /// Config space bytes as pcid reads them (the driver normally reads
    /// its config through VFIO; this is pcid's view).
    ConfigRead { offset: u16, len: u16 },
}

/// pcid -> driver.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ChannelReply {
    Info(FunctionInfo),
    Config(Vec<u8>),
    Error(String),
}

/// Sends `msg` as one packet.
pub fn send_message<T: Serialize>(fd: impl AsFd, msg: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("encode: {e}")))?;
    if bytes.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {} bytes exceeds {MAX_MESSAGE}", bytes.len()),
        ));
    }
    // NOSIGNAL: a dead peer is an error to report, not a SIGPIPE.
    let sent = rustix::io::retry_on_intr(|| rustix::net::send(&fd, &bytes, SendFlags::NOSIGNAL))?;
    if sent != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", bytes.len()),
        ));
    }
    Ok(())
}

/// Receives one packet and decodes it. A closed peer is `UnexpectedEof`; a
/// packet over [`MAX_MESSAGE`] is `InvalidData` (and consumed).
pub fn recv_message<T: DeserializeOwned>(fd: impl AsFd) -> io::Result<T> {
    // One byte more than allowed, and TRUNC to learn the real size, so an
    // oversized packet is detected rather than silently cut.
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let (_, len) =
        rustix::io::retry_on_intr(|| rustix::net::recv(&fd, &mut buf[..], RecvFlags::TRUNC))?;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "pcid channel closed",
        ));
    }
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds {MAX_MESSAGE}"),
        ));
    }
    decode_message(&buf[..len])
}

/// Decodes one packet's bytes: a message, or `InvalidData` saying why not
/// (too long, not JSON, not this message type).
pub fn decode_message<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    if bytes.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {} bytes exceeds {MAX_MESSAGE}", bytes.len()),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BarInfo, BarKind};
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};

    fn pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    pub(crate) fn sample_info() -> FunctionInfo {
        FunctionInfo {
            name: "pci-0000-00-04.0".into(),
            address: "0000:00:04.0".into(),
            vendor: 0x1af4,
            device: 0x1042,
            class: 1,
            subclass: 0,
            interface: 0,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem_device: 0x1100,
            bars: vec![
                BarInfo {
                    index: 1,
                    kind: BarKind::Memory32,
                    address: 0xfebd_1000,
                    size: 0x1000,
                    prefetchable: false,
                },
                BarInfo {
                    index: 4,
                    kind: BarKind::Memory64,
                    address: 0xfe00_0000,
                    size: 0x4000,
                    prefetchable: true,
                },
            ],
            irq_pin: 1,
        }
    }

    #[test]
    fn request_and_reply_roundtrip() {
        let (a, b) = pair();
        send_message(&a, &ChannelRequest::Info).unwrap();
        send_message(
            &a,
            &ChannelRequest::ConfigRead {
                offset: 0x40,
                len: 16,
            },
        )
        .unwrap();
        assert_eq!(
            recv_message::<ChannelRequest>(&b).unwrap(),
            ChannelRequest::Info
        );
        assert_eq!(
            recv_message::<ChannelRequest>(&b).unwrap(),
            ChannelRequest::ConfigRead {
                offset: 0x40,
                len: 16
            }
        );
        let info = sample_info();
        send_message(&b, &ChannelReply::Info(info.clone())).unwrap();
        send_message(&b, &ChannelReply::Error("no".into())).unwrap();
        assert_eq!(
            recv_message::<ChannelReply>(&a).unwrap(),
            ChannelReply::Info(info)
        );
        assert_eq!(
            recv_message::<ChannelReply>(&a).unwrap(),
            ChannelReply::Error("no".into())
        );
    }

    #[test]
    fn wire_format_is_plain_json() {
        let (a, b) = pair();
        send_message(&a, &ChannelRequest::ConfigRead { offset: 6, len: 2 }).unwrap();
        let mut buf = [0u8; 256];
        let n = rustix::io::read(&b, &mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            r#"{"ConfigRead":{"offset":6,"len":2}}"#
        );
    }

    #[test]
    fn oversized_garbage_and_eof_are_errors() {
        let (a, b) = pair();
        let big = vec![b'x'; MAX_MESSAGE + 10];
        rustix::net::send(&a, &big, SendFlags::empty()).unwrap();
        let e = recv_message::<ChannelRequest>(&b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // The oversized packet was consumed: the next one is read cleanly.
        rustix::net::send(&a, b"{\"nonsense\":1}", SendFlags::empty()).unwrap();
        assert_eq!(
            recv_message::<ChannelRequest>(&b).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        send_message(&a, &ChannelRequest::Info).unwrap();
        assert_eq!(
            recv_message::<ChannelRequest>(&b).unwrap(),
            ChannelRequest::Info
        );

        let too_big = ChannelReply::Config(vec![0; MAX_MESSAGE]);
        assert!(send_message(&b, &too_big).is_err());

        drop(a);
        let e = recv_message::<ChannelRequest>(&b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            send_message(&b, &ChannelRequest::Info).is_err(),
            "peer gone, no SIGPIPE"
        );
    }

    mod hostile {
        //! What a hostile driver or a corrupt pcid could send: random and
        //! damaged JSON decodes as a message or as `InvalidData`, never a
        //! panic, over the socket as well; valid messages round-trip.
        //! Fixed seed, no failure files; `PROPTEST_RNG_SEED` explores
        //! others.

        use super::*;
        use proptest::prelude::*;

        fn request() -> impl Strategy<Value = ChannelRequest> {
            prop_oneof![
                Just(ChannelRequest::Info),
                (any::<u16>(), any::<u16>())
                    .prop_map(|(offset, len)| ChannelRequest::ConfigRead { offset, len }),
            ]
        }

        fn bar() -> impl Strategy<Value = BarInfo> {
            (
                any::<u8>(),
                prop::sample::select(vec![BarKind::Memory32, BarKind::Memory64, BarKind::Io]),
                any::<u64>(),
                any::<u64>(),
                any::<bool>(),
            )
                .prop_map(|(index, kind, address, size, prefetchable)| BarInfo {
                    index,
                    kind,
                    address,
                    size,
                    prefetchable,
                })
        }

        fn info() -> impl Strategy<Value = FunctionInfo> {
            (
                (".{0,24}", ".{0,16}"),
                any::<(u16, u16, u8, u8, u8, u8, u16, u16, u8)>(),
                prop::collection::vec(bar(), 0..6),
            )
                .prop_map(|((name, address), ids, bars)| FunctionInfo {
                    name,
                    address,
                    vendor: ids.0,
                    device: ids.1,
                    class: ids.2,
                    subclass: ids.3,
                    interface: ids.4,
                    revision: ids.5,
                    subsystem_vendor: ids.6,
                    subsystem_device: ids.7,
                    bars,
                    irq_pin: ids.8,
                })
        }

        fn reply() -> impl Strategy<Value = ChannelReply> {
            prop_oneof![
                info().prop_map(ChannelReply::Info),
                prop::collection::vec(any::<u8>(), 0..300).prop_map(ChannelReply::Config),
                ".{0,40}".prop_map(ChannelReply::Error),
            ]
        }

        /// Damage JSON: flip bytes, cut, or splice in JSON-looking pieces.
        fn damaged(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
            let pieces = vec![
                "{",
                "}",
                "[",
                "]",
                "\"",
                ":",
                ",",
                "-1",
                "65536",
                "1e999",
                "null",
                "\"Info\"",
                "\"ConfigRead\"",
                "\\u0000",
                "\\ud800",
                "[[[[[[[[",
                "0.5",
            ];
            prop::collection::vec(
                (
                    0..3u8,
                    any::<usize>(),
                    1..=255u8,
                    prop::sample::select(pieces),
                ),
                1..4,
            )
            .prop_map(move |edits| {
                let mut b = base.clone();
                for (kind, at, x, piece) in edits {
                    let i = at % (b.len() + 1);
                    match kind {
                        0 if i < b.len() => b[i] ^= x,
                        1 => b.truncate(i),
                        _ => {
                            b.splice(i..i, piece.bytes());
                        }
                    }
                }
                b
            })
        }

        fn must_be_invalid_data<T>(r: io::Result<T>) -> Result<Option<T>, TestCaseError> {
            match r {
                Ok(v) => Ok(Some(v)),
                Err(e) => {
                    prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{}", e);
                    Ok(None)
                }
            }
        }

        proptest! {
            #![proptest_config(seeded::config(256, 0x9c1d))]

            #[test]
            fn valid_messages_round_trip(r in request(), a in reply()) {
                let bytes = serde_json::to_vec(&r).unwrap();
                prop_assert_eq!(decode_message::<ChannelRequest>(&bytes).unwrap(), r);
                let bytes = serde_json::to_vec(&a).unwrap();
                prop_assert_eq!(decode_message::<ChannelReply>(&bytes).unwrap(), a);
            }

            #[test]
            fn damaged_requests_are_a_request_or_invalid_data(
                bytes in request().prop_flat_map(|r| damaged(serde_json::to_vec(&r).unwrap())),
            ) {
                if let Some(r) = must_be_invalid_data(decode_message::<ChannelRequest>(&bytes))? {
                    // What decodes is a request like any other: it encodes
                    // and decodes to itself.
                    let again = serde_json::to_vec(&r).unwrap();
                    prop_assert_eq!(decode_message::<ChannelRequest>(&again).unwrap(), r);
                }
                must_be_invalid_data(decode_message::<ChannelReply>(&bytes))?;
            }

            #[test]
            fn damaged_replies_are_a_reply_or_invalid_data(
                bytes in reply().prop_flat_map(|a| damaged(serde_json::to_vec(&a).unwrap())),
            ) {
                if let Some(a) = must_be_invalid_data(decode_message::<ChannelReply>(&bytes))? {
                    let again = serde_json::to_vec(&a).unwrap();
                    prop_assert_eq!(decode_message::<ChannelReply>(&again).unwrap(), a);
                }
            }

            #[test]
            fn random_bytes_are_invalid_data_or_a_message(
                bytes in prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..512),
                    "[\\[\\]{}\",:0-9a-zA-Z ]{0,64}".prop_map(String::into_bytes),
                    (1..2000usize).prop_map(|n| "[".repeat(n).into_bytes()),
                ],
            ) {
                must_be_invalid_data(decode_message::<ChannelRequest>(&bytes))?;
                must_be_invalid_data(decode_message::<ChannelReply>(&bytes))?;
            }

            /// The same over a real channel: each packet is one answer, a
            /// bad one does not spoil the next.
            #[test]
            fn packets_on_the_channel_are_decoded_one_by_one(
                junk in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..256), 1..6),
                r in request(),
            ) {
                let (a, b) = pair();
                for j in &junk {
                    rustix::net::send(&a, j, SendFlags::empty()).unwrap();
                    must_be_invalid_data(recv_message::<ChannelRequest>(&b))?;
                }
                send_message(&a, &r).unwrap();
                prop_assert_eq!(recv_message::<ChannelRequest>(&b).unwrap(), r);
            }
        }

        #[test]
        fn an_oversized_buffer_is_refused_before_parsing() {
            let big = vec![b' '; MAX_MESSAGE + 1];
            let e = decode_message::<ChannelRequest>(&big).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("exceeds"), "{e}");
        }
    }
}
