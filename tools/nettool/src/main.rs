//! `nettool`: DHCP, ping and HTTP fetch over a `/scheme/network.*` frame
//! handle with smoltcp. See `usage()` and docs/nettool.md.

use std::io::{BufWriter, Write};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use nettool::fetch::FetchOptions;
use nettool::http::Url;
use nettool::phy::FrameDevice;
use nettool::ping::PingOptions;
use nettool::stack::Stack;
use nettool::{dhcp, Error, Result};
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

const USAGE: &str = "\
usage: nettool dhcp SCHEME [--timeout SECS]
       nettool ping SCHEME [ADDR] [-c COUNT] [-i MS] [-W MS] [-s SIZE] [NET] [--timeout SECS]
       nettool fetch SCHEME URL [-o FILE] [NET] [--timeout SECS]
  SCHEME  network.pci-0000-00-05.0_e1000 (under /scheme) or the scheme's path
  NET     --addr CIDR [--gw ADDR]: a fixed address instead of DHCP
  ping    ADDR defaults to --gw, else the DHCP router, else the DHCP server
  fetch   URL is http://IPV4[:PORT]/PATH; the body goes to FILE or stdout,
          the summary to stderr
  --timeout  DHCP, TCP connect and TCP idle bound in seconds (default 30)
  -v, -vv    debug / trace logging on stderr";

#[derive(Debug, Default)]
struct Args {
    command: String,
    scheme: String,
    target: Option<String>,
    count: Option<u16>,
    interval_ms: Option<u64>,
    wait_ms: Option<u64>,
    size: Option<usize>,
    addr: Option<Ipv4Cidr>,
    gw: Option<Ipv4Address>,
    output: Option<String>,
    timeout: Duration,
    verbose: u8,
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

fn parse_num<T: std::str::FromStr>(opt: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| usage(format!("{opt}: bad number {v:?}")))
}

/// Longest time any option may ask for: one day (keeps deadline arithmetic
/// far from overflow).
const MAX_SECS: u64 = 86_400;

fn parse_ms(opt: &str, v: &str) -> Result<u64> {
    let ms: u64 = parse_num(opt, v)?;
    if ms > MAX_SECS * 1000 {
        return Err(usage(format!("{opt}: at most {} ms", MAX_SECS * 1000)));
    }
    Ok(ms)
}

fn parse_args(argv: &[String]) -> Result<Args> {
    let mut args = Args {
        timeout: Duration::from_secs(30),
        ..Args::default()
    };
    let mut positional = Vec::new();
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| usage(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "-h" | "--help" => return Err(usage("")),
            "-v" => args.verbose = args.verbose.max(1),
            "-vv" => args.verbose = 2,
            "-c" => args.count = Some(parse_num("-c", &value("-c")?)?),
            "-i" => args.interval_ms = Some(parse_ms("-i", &value("-i")?)?),
            "-W" => args.wait_ms = Some(parse_ms("-W", &value("-W")?)?),
            "-s" => args.size = Some(parse_num("-s", &value("-s")?)?),
            "-o" => args.output = Some(value("-o")?),
            "--timeout" => {
                let secs: u64 = parse_num("--timeout", &value("--timeout")?)?;
                if secs == 0 || secs > MAX_SECS {
                    return Err(usage(format!("--timeout must be 1..={MAX_SECS}")));
                }
                args.timeout = Duration::from_secs(secs);
            }
            "--addr" => {
                let v = value("--addr")?;
                let cidr: Ipv4Cidr = v
                    .parse()
                    .map_err(|_| usage(format!("--addr: bad CIDR {v:?} (e.g. 10.0.2.15/24)")))?;
                args.addr = Some(cidr);
            }
            "--gw" => {
                let v = value("--gw")?;
                args.gw = Some(
                    v.parse::<Ipv4Addr>()
                        .map_err(|_| usage(format!("--gw: bad address {v:?}")))?,
                );
            }
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(usage(format!("unknown option {s}")))
            }
            _ => positional.push(arg.clone()),
        }
    }
    let mut positional = positional.into_iter();
    args.command = positional.next().ok_or_else(|| usage("no command"))?;
    args.scheme = positional.next().ok_or_else(|| usage("no SCHEME"))?;
    args.target = positional.next();
    if let Some(extra) = positional.next() {
        return Err(usage(format!("unexpected argument {extra:?}")));
    }
    match args.command.as_str() {
        "dhcp" if args.target.is_some() => return Err(usage("dhcp takes only SCHEME")),
        "dhcp" | "ping" => {}
        "fetch" if args.target.is_none() => return Err(usage("fetch needs a URL")),
        "fetch" => {}
        other => return Err(usage(format!("unknown command {other:?}"))),
    }
    if args.gw.is_some() && args.addr.is_none() {
        return Err(usage("--gw needs --addr"));
    }
    Ok(args)
}

/// A tiny `log` backend: `nettool: LEVEL message` on stderr.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("nettool: {} {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

/// Opens the scheme and configures the interface (DHCP or `--addr`).
fn bring_up(args: &Args) -> Result<(Stack, Option<dhcp::Lease>)> {
    let paths = nettool::scheme_paths(&args.scheme);
    let mac = nettool::read_mac(&paths.mac)?;
    let device = FrameDevice::open(&paths.frames)
        .map_err(|e| Error::Io(format!("cannot open {}: {e}", paths.frames.display())))?;
    let mut stack = Stack::new(device, mac)?;
    match args.addr {
        Some(cidr) => {
            stack.set_address(cidr, args.gw)?;
            Ok((stack, None))
        }
        None => {
            let lease = dhcp::acquire(&mut stack, args.timeout)?;
            Ok((stack, Some(lease)))
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let (mut stack, lease) = bring_up(args)?;
    let stdout = std::io::stdout();
    let io_err = |e: std::io::Error| Error::Io(format!("cannot write output: {e}"));
    match args.command.as_str() {
        "dhcp" => {
            let Some(lease) = lease else {
                return Err(usage("dhcp with --addr makes no sense"));
            };
            write!(stdout.lock(), "{lease}").map_err(io_err)?;
            Ok(())
        }
        "ping" => {
            if let Some(l) = &lease {
                eprintln!(
                    "nettool: address {} from DHCP server {}",
                    l.address, l.server
                );
            }
            let target: Ipv4Address = match &args.target {
                Some(t) => t.parse().map_err(|_| usage(format!("bad address {t:?}")))?,
                None => args
                    .gw
                    .or(lease.as_ref().and_then(|l| l.router))
                    .or(lease.as_ref().map(|l| l.server))
                    .ok_or_else(|| usage("no ADDR and no gateway to ping"))?,
            };
            let defaults = PingOptions::default();
            let opts = PingOptions {
                count: args.count.unwrap_or(defaults.count),
                interval: args
                    .interval_ms
                    .map_or(defaults.interval, Duration::from_millis),
                timeout: args.wait_ms.map_or(defaults.timeout, Duration::from_millis),
                size: args.size.unwrap_or(defaults.size),
            };
            if opts.count == 0 {
                return Err(usage("-c must be at least 1"));
            }
            let summary = nettool::ping::ping(&mut stack, target, &opts, &mut stdout.lock())?;
            if summary.received == 0 {
                return Err(Error::Protocol(format!("no reply from {target}")));
            }
            if summary.corrupt > 0 {
                return Err(Error::Protocol(format!(
                    "{} corrupt replies from {target}",
                    summary.corrupt
                )));
            }
            Ok(())
        }
        "fetch" => {
            let url = Url::parse(args.target.as_deref().unwrap_or(""))?;
            let opts = FetchOptions {
                connect_timeout: args.timeout,
                idle_timeout: args.timeout,
            };
            let mut sink: Box<dyn Write> = match args.output.as_deref() {
                None | Some("-") => Box::new(BufWriter::with_capacity(1 << 20, stdout.lock())),
                Some(path) => Box::new(BufWriter::with_capacity(
                    1 << 20,
                    std::fs::File::create(path)
                        .map_err(|e| Error::Io(format!("cannot create {path}: {e}")))?,
                )),
            };
            let summary = nettool::fetch::fetch(&mut stack, &url, &opts, &mut sink)?;
            drop(sink);
            eprintln!(
                "nettool: fetched {} bytes in {:.3} s ({:.3} MB/s), HTTP {} {}",
                summary.bytes,
                summary.elapsed.as_secs_f64(),
                summary.mb_per_s(),
                summary.status,
                summary.reason
            );
            Ok(())
        }
        _ => Err(usage("unknown command")),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            if let Error::Usage(m) = &e {
                if !m.is_empty() {
                    eprintln!("nettool: {m}");
                }
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(match args.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    });
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Error::Usage(_)) => {
            eprintln!("nettool: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("nettool: {} failed: {e}", args.command);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse_args(&v)
    }

    #[test]
    fn command_lines() {
        let a = parse("dhcp network.x").unwrap();
        assert_eq!(
            (a.command.as_str(), a.scheme.as_str()),
            ("dhcp", "network.x")
        );
        assert_eq!(a.timeout, Duration::from_secs(30));
        let a = parse("ping network.x 10.0.2.2 -c 3 -i 200 -W 5000 --timeout 9").unwrap();
        assert_eq!(a.target.as_deref(), Some("10.0.2.2"));
        assert_eq!(
            (a.count, a.interval_ms, a.wait_ms),
            (Some(3), Some(200), Some(5000))
        );
        assert_eq!(a.timeout, Duration::from_secs(9));
        let a = parse("fetch /scheme/network.x http://10.0.2.100/f -o /tmp/f --addr 10.0.2.15/24 --gw 10.0.2.2").unwrap();
        assert_eq!(a.output.as_deref(), Some("/tmp/f"));
        assert_eq!(a.addr.unwrap().to_string(), "10.0.2.15/24");
        assert_eq!(a.gw.unwrap(), Ipv4Addr::new(10, 0, 2, 2));
        for bad in [
            "",
            "dhcp",
            "dhcp n extra",
            "fetch n",
            "frob n",
            "ping n -c",
            "ping n -c x",
            "ping n --bogus",
            "ping n --gw 1.2.3.4",
            "ping n --addr 10.0.2.15",
            "ping n a b",
            "dhcp n --timeout 0",
            "dhcp n --timeout 18446744073709551615",
            "ping n -i 99999999999",
            "ping n -W 99999999999",
        ] {
            assert!(
                matches!(parse(bad), Err(Error::Usage(_))),
                "{bad:?} accepted"
            );
        }
    }
}
