//! nettool end to end: smoltcp in a guest process over each NIC driver's
//! `/scheme/network.*/frames`, against QEMU's user network.
//!
//! Both NICs (e1000 at 05.0, virtio-net at 06.0) each get their own
//! `-netdev user,restrict=on` (the default 10.0.2.0/24: DHCP and the
//! gateway at 10.0.2.2, the lease 10.0.2.15). Through each driver:
//! `nettool dhcp` gets 10.0.2.15 from 10.0.2.2, `nettool ping` gets replies
//! from 10.0.2.2, and `nettool fetch` downloads 8 MiB over TCP from an HTTP
//! server this test runs on the host's loopback, reached through guestfwd;
//! the guest's md5 must equal the host's. restrict=on must keep the host
//! itself unreachable.
//!
//! guestfwd in QEMU 7.2: `guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:PORT`
//! makes a client socket *chardev* that connects once, when QEMU starts
//! (so the server must already listen), and carries the bytes of the
//! guest's connection to that address and port; the chardev's own close
//! never reaches the guest as a FIN. So the server answers one request per
//! chardev with a `Content-Length` (nettool stops there) and keeps its end
//! open. The chardev is named `guestfwd.tcp.<guest port>`, so two netdevs
//! need two guest ports (80 and 81). The `cmd:` form would fork a host
//! command per connection instead; a TCP chardev keeps the server a plain
//! `TcpListener` in this test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use lab::md5_hex;
use lab::{pattern, Config, Vm};

const E1000: &str = "network.pci-0000-00-05.0_e1000";
const VIRTIO: &str = "network.pci-0000-00-06.0_virtio_net";
const SIZE: usize = 8 << 20;
/// A guest address that guestfwd serves (in the user net, outside DHCP's
/// range 10.0.2.15..).
const FWD_ADDR: &str = "10.0.2.100";

/// What the server saw on one connection.
struct Served {
    request_line: String,
    /// Held open until the test ends (see the module comment).
    _stream: TcpStream,
}

/// Serves `conns` connections, each one GET answered with `body`; reports
/// each through the channel. Accepting happens when QEMU starts (guestfwd
/// chardevs connect then); requests come when the guest asks.
fn serve(
    listener: TcpListener,
    body: Arc<Vec<u8>>,
    conns: usize,
) -> mpsc::Receiver<Result<Served, String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..conns {
            let (stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(format!("accept: {e}")));
                    return;
                }
            };
            let tx = tx.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                let _ = tx.send(answer(stream, &body));
            });
        }
    });
    rx
}

fn answer(mut stream: TcpStream, body: &[u8]) -> Result<Served, String> {
    // Bounded: the whole scenario fits well inside this.
    stream
        .set_read_timeout(Some(Duration::from_secs(900)))
        .map_err(|e| e.to_string())?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("read request: {e}"))?;
        if n == 0 {
            return Err(format!(
                "connection closed before a request: {:?}",
                String::from_utf8_lossy(&req)
            ));
        }
        req.extend_from_slice(&buf[..n]);
        if req.len() > 64 * 1024 {
            return Err("request too long".into());
        }
    }
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body))
        .and_then(|_| stream.flush())
        .map_err(|e| format!("write response: {e}"))?;
    let text = String::from_utf8_lossy(&req);
    Ok(Served {
        request_line: text.lines().next().unwrap_or("").to_owned(),
        _stream: stream,
    })
}

fn netdev(id: &str, fwd_port: u16, host_port: u16) -> String {
    format!("user,id={id},restrict=on,guestfwd=tcp:{FWD_ADDR}:{fwd_port}-tcp:127.0.0.1:{host_port}")
}

/// `nettool: fetched N bytes in T s (R MB/s), ...` → (N, R).
fn fetched(stderr: &str) -> Option<(u64, f64)> {
    let line = stderr.lines().find(|l| l.contains("fetched "))?;
    let mut words = line.split_whitespace();
    words.find(|w| *w == "fetched")?;
    let bytes = words.next()?.parse().ok()?;
    let rate = line
        .split('(')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((bytes, rate))
}

#[test]
#[ignore = "boots QEMU: run through `make test`"]
fn dhcp_ping_and_fetch_through_both_drivers() -> lab::Result<()> {
    let body = Arc::new(pattern(45, SIZE));
    let host_md5 = md5_hex(&body);
    let server = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = server.local_addr().map_err(|e| e.to_string())?.port();
    // A host port the guest must NOT reach (restrict=on): if it did, the
    // connection would show up here.
    let forbidden = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let forbidden_port = forbidden.local_addr().map_err(|e| e.to_string())?.port();
    forbidden.set_nonblocking(true).map_err(|e| e.to_string())?;
    let served = serve(server, body.clone(), 2);

    let cfg = Config::new("nettool")
        .arg(&["-netdev", &netdev("n0", 80, port)])
        .arg(&["-netdev", &netdev("n1", 81, port)])
        .args(lab::e1000_args("nic0", "n0", "05.0", "52:54:00:12:34:05"))
        .args(lab::virtio_net_args(
            "nic1",
            "n1",
            "06.0",
            "52:54:00:12:34:06",
        ));
    let mut vm = Vm::boot(cfg)?;

    // The drivers are started by pcid; wait (bounded) for both schemes.
    vm.ok(&format!(
        "for i in $(seq 150); do [ -e /scheme/{E1000}/frames ] && [ -e /scheme/{VIRTIO}/frames ] \
         && exit 0; sleep 0.2; done; ls /scheme; exit 1"
    ))?;

    let mut report = Vec::new();
    for (scheme, fwd_port) in [(E1000, 80u16), (VIRTIO, 81)] {
        let mac = vm.ok(&format!("cat /scheme/{scheme}/mac"))?;
        let lease = vm.ok(&format!("nettool dhcp {scheme} --timeout 60"))?;
        assert!(
            lease.contains("address 10.0.2.15/24\n"),
            "{scheme}: {lease}"
        );
        assert!(lease.contains("server 10.0.2.2\n"), "{scheme}: {lease}");
        // restrict=on: QEMU's DHCP server names no router and no DNS.
        assert!(lease.contains("router none\n"), "{scheme}: {lease}");

        // ADDR defaults to the DHCP server when there is no router.
        let out = vm.sh_timeout(
            &format!("nettool ping {scheme} -c 3 -i 300 -W 5000 --timeout 60"),
            Duration::from_secs(120),
        )?;
        let text = out.stdout_str();
        assert!(out.success(), "{scheme}: {text}\n{}", out.stderr_str());
        assert!(
            text.contains("3 packets transmitted, 3 received"),
            "{scheme}: {text}"
        );
        for seq in 0..3 {
            assert!(
                text.contains(&format!("64 bytes from 10.0.2.2: icmp_seq={seq} ")),
                "{scheme}: {text}"
            );
        }

        let file = format!("/tmp/{fwd_port}.bin");
        let out = vm.sh_timeout(
            &format!(
                "nettool fetch {scheme} http://{FWD_ADDR}:{fwd_port}/pattern.bin -o {file} \
                 --timeout 60 && md5sum {file} && stat -c %s {file}"
            ),
            Duration::from_secs(600),
        )?;
        let text = out.stdout_str();
        let err = out.stderr_str();
        assert!(out.success(), "{scheme}: fetch failed:\n{text}\n{err}");
        assert!(
            text.starts_with(&format!("{host_md5} ")),
            "{scheme}: md5 differs: {text} (host {host_md5})"
        );
        assert!(text.contains(&format!("\n{SIZE}\n")), "{scheme}: {text}");
        let (bytes, rate) = fetched(&err).ok_or_else(|| format!("no summary: {err}"))?;
        assert_eq!(bytes, SIZE as u64, "{err}");
        let stats = vm.ok(&format!("cat /scheme/{scheme}/stats"))?;
        report.push(format!(
            "{scheme} (MAC {}): fetched {bytes} bytes at {rate:.2} MB/s; stats: {}",
            mac.trim(),
            stats.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
        vm.ok(&format!("rm {file}"))?;
    }

    // Both connections served one GET each, for their own guest port.
    let mut lines: Vec<String> = (0..2)
        .map(|_| {
            served
                .recv_timeout(Duration::from_secs(30))
                .map_err(|e| format!("server: {e}"))?
                .map(|s| s.request_line)
        })
        .collect::<lab::Result<_>>()?;
    lines.sort();
    assert_eq!(
        lines,
        ["GET /pattern.bin HTTP/1.1", "GET /pattern.bin HTTP/1.1"]
    );

    // restrict=on: 10.0.2.2 would be the host's loopback without it.
    let out = vm.sh_timeout(
        &format!("nettool fetch {E1000} http://10.0.2.2:{forbidden_port}/ -o /tmp/x --timeout 20"),
        Duration::from_secs(120),
    )?;
    assert!(
        !out.success(),
        "the host was reachable: {}",
        out.stderr_str()
    );
    assert!(out.stderr_str().contains("refused"), "{}", out.stderr_str());
    match forbidden.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the guest reached a host port: {other:?}"),
    }

    // Bad input: a scheme that does not exist, a URL with a host name.
    let out = vm.sh("nettool dhcp network.nonexistent")?;
    assert_eq!(out.code, Some(1), "{}", out.stderr_str());
    let out = vm.sh(&format!("nettool fetch {E1000} http://example.com/"))?;
    assert_eq!(out.code, Some(2), "{}", out.stderr_str());

    let console = vm.console();
    assert!(!console.contains("exited unexpectedly"), "{console}");
    for line in &report {
        eprintln!("{line}");
    }
    let status = vm.poweroff(Duration::from_secs(60))?;
    assert!(status.success(), "qemu: {status}");
    Ok(())
}
