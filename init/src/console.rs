//! Where init's own messages and every service's output go: the console and
//! a log file per service under /var/log, readable by any user.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;

pub const LOG_DIR: &str = "/var/log";

static INIT_LOG: Mutex<Option<File>> = Mutex::new(None);

/// Opens `/var/log/<name>.log` for appending.
pub fn open_log(name: &str) -> Option<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{LOG_DIR}/{name}.log"))
        .ok()
}

/// Starts keeping init's own messages in /var/log/init.log.
pub fn open_init_log() {
    if let Ok(mut guard) = INIT_LOG.lock() {
        *guard = open_log("init");
    }
}

/// An init message: on the console and in init's log.
pub fn say(msg: &str) {
    let line = format!("init: {msg}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Ok(mut guard) = INIT_LOG.lock() {
        if let Some(f) = guard.as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Splits a service's output stream into lines, each forwarded to the
/// console with the service's name and kept in its log.
pub struct OutputSink {
    name: String,
    partial: Vec<u8>,
    log: Option<File>,
}

/// A line longer than this is cut and forwarded in pieces, so a daemon that
/// never writes a newline cannot make init buffer without bound.
const MAX_LINE: usize = 4096;

impl OutputSink {
    pub fn new(name: &str) -> OutputSink {
        OutputSink {
            name: name.to_owned(),
            partial: Vec::new(),
            log: open_log(name),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            self.emit(&line[..line.len() - 1]);
        }
        while self.partial.len() > MAX_LINE {
            let line: Vec<u8> = self.partial.drain(..MAX_LINE).collect();
            self.emit(&line);
        }
    }

    /// Forwards what is left of an unterminated last line.
    pub fn finish(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
        }
    }

    fn emit(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let _ = std::io::stderr().write_all(format!("[{}] {text}\n", self.name).as_bytes());
        if let Some(f) = self.log.as_mut() {
            let _ = f.write_all(format!("{text}\n").as_bytes());
        }
    }
}
