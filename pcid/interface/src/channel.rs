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
    serde_json::from_slice(&buf[..len])
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
}
