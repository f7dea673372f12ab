//! lab-agent: the guest half of the test lab. It owns a serial port (given as
//! its argument, e.g. /dev/ttyS1), reads one JSON request per line, runs it
//! with /bin/sh and answers one JSON line. Requests run one at a time; a
//! script may start background jobs with `&` itself.
//!
//! Request:  {"id": 7, "sh": "ls /scheme", "timeout_ms": 30000}
//! Reply:    {"id": 7, "code": 0, "signal": null, "timed_out": false,
//!            "stdout": "<base64>", "stderr": "<base64>"}
//! On start it prints {"hello": "lab-agent"} so the host knows it is there.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Request {
    id: u64,
    sh: String,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
}

fn default_timeout() -> u64 {
    60_000
}

#[derive(Serialize)]
struct Reply {
    id: u64,
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
    error: Option<String>,
}

fn main() {
    let Some(port) = std::env::args().nth(1) else {
        eprintln!("usage: lab-agent /dev/ttySN");
        std::process::exit(2);
    };
    let tty = match OpenOptions::new().read(true).write(true).open(&port) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("lab-agent: cannot open {port}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = make_raw(&tty) {
        eprintln!("lab-agent: cannot set {port} raw: {e}");
        std::process::exit(1);
    }
    let mut out = match tty.try_clone() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("lab-agent: {e}");
            std::process::exit(1);
        }
    };
    let _ = out.write_all(b"{\"hello\":\"lab-agent\"}\n");
    eprintln!("lab-agent: listening on {port}");
    let reader = BufReader::new(tty);
    for line in reader.lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("lab-agent: read error: {e}");
                continue;
            }
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(line) {
            Ok(req) => run(req),
            Err(e) => Reply {
                id: 0,
                code: None,
                signal: None,
                timed_out: false,
                stdout: String::new(),
                stderr: String::new(),
                error: Some(format!("bad request: {e}")),
            },
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".to_owned());
        text.push('\n');
        if let Err(e) = out.write_all(text.as_bytes()) {
            eprintln!("lab-agent: write error: {e}");
        }
    }
}

fn run(req: Request) -> Reply {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut reply = Reply {
        id: req.id,
        code: None,
        signal: None,
        timed_out: false,
        stdout: String::new(),
        stderr: String::new(),
        error: None,
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&req.sh)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            reply.error = Some(format!("spawn: {e}"));
            return reply;
        }
    };
    // Drain both pipes on threads so a chatty command cannot fill one and
    // deadlock against us.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err_t = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + Duration::from_millis(req.timeout_ms);
    let pgid = child.id() as i32;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                reply.timed_out = true;
                kill_group(pgid);
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                reply.error = Some(format!("wait: {e}"));
                break None;
            }
        }
    };
    // Background jobs the script left behind could hold the pipes open
    // forever; once the shell is gone, give them a moment, then read no more.
    if let Some(s) = status {
        reply.code = s.code();
        reply.signal = s.signal();
    }
    let join = |t: std::thread::JoinHandle<Vec<u8>>| {
        let until = Instant::now() + Duration::from_secs(2);
        while !t.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            t.join().unwrap_or_default()
        } else {
            b"<output still open by a background job>".to_vec()
        }
    };
    reply.stdout = b64.encode(join(out_t));
    reply.stderr = b64.encode(join(err_t));
    reply
}

fn kill_group(pgid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

fn make_raw(tty: &std::fs::File) -> std::io::Result<()> {
    use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
    let mut t = tcgetattr(tty)?;
    t.make_raw();
    tcsetattr(tty, OptionalActions::Now, &t)?;
    Ok(())
}
