//! Where init's own messages and every service's output go: the console and
//! a log file per service under /var/log, readable by any user.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
/// console with the service's name and kept in its log. A service cannot
/// use this to hurt the rest of the system: the console shows at most
/// [`CONSOLE_LINES_PER_SEC`] of its lines a second (the rest are counted and
/// the count shown), and its log is bounded (two generations of
/// [`LOG_LIMIT`] bytes: `NAME.log` and `NAME.log.1`) so a chatty or hostile
/// daemon can neither stall init on a slow console nor fill memory (the
/// log directory is in RAM).
pub struct OutputSink {
    name: String,
    partial: Vec<u8>,
    log: Option<File>,
    logged: u64,
    console: RateLimit,
}

/// A line longer than this is cut and forwarded in pieces, so a daemon that
/// never writes a newline cannot make init buffer without bound.
const MAX_LINE: usize = 4096;

/// A service's lines on the console per second; the log keeps them all.
pub const CONSOLE_LINES_PER_SEC: u32 = 200;

/// Bytes of one log generation.
pub const LOG_LIMIT: u64 = 1 << 20;

impl OutputSink {
    pub fn new(name: &str) -> OutputSink {
        let log = open_log(name);
        let logged = log
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        OutputSink {
            name: name.to_owned(),
            partial: Vec::new(),
            log,
            logged,
            console: RateLimit::new(CONSOLE_LINES_PER_SEC, Duration::from_secs(1)),
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

    /// Forwards what is left of an unterminated last line, and says how
    /// many lines the console did not show.
    pub fn finish(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
        }
        let hidden = self.console.take_hidden();
        if hidden > 0 {
            self.console_line(&self.hidden_note(hidden));
        }
    }

    /// Says how many lines a burst that is over kept off the console.
    pub fn flush_hidden(&mut self, now: Instant) {
        let hidden = self.console.hidden_due(now);
        if hidden > 0 {
            self.console_line(&self.hidden_note(hidden));
        }
    }

    fn hidden_note(&self, hidden: u64) -> String {
        format!(
            "[{}] ({hidden} more lines not shown on the console: see {LOG_DIR}/{}.log)",
            self.name, self.name
        )
    }

    fn console_line(&self, text: &str) {
        let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
    }

    fn emit(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let admit = self.console.admit(Instant::now());
        if admit.hidden > 0 {
            self.console_line(&self.hidden_note(admit.hidden));
        }
        if admit.show {
            self.console_line(&format!("[{}] {text}", self.name));
        }
        self.log_line(&text);
    }

    fn log_line(&mut self, text: &str) {
        if self.logged + text.len() as u64 + 1 > LOG_LIMIT {
            // Rotate: the full generation becomes NAME.log.1 (replacing the
            // one before), and a fresh NAME.log starts.
            let path = format!("{LOG_DIR}/{}.log", self.name);
            let _ = std::fs::rename(&path, format!("{path}.1"));
            self.log = open_log(&self.name);
            self.logged = 0;
        }
        if let Some(f) = self.log.as_mut() {
            if f.write_all(format!("{text}\n").as_bytes()).is_ok() {
                self.logged += text.len() as u64 + 1;
            }
        }
    }
}

/// At most `per_window` events admitted per `window`; the others are
/// counted, and the count handed back when the next window opens, so the
/// reader learns how many it missed.
#[derive(Debug)]
pub struct RateLimit {
    per_window: u32,
    window: Duration,
    opened: Option<Instant>,
    admitted: u32,
    hidden: u64,
}

/// [`RateLimit::admit`]'s verdict.
#[derive(Debug, PartialEq, Eq)]
pub struct Admit {
    /// Whether to show this event.
    pub show: bool,
    /// Events hidden in the window that just closed (say so first).
    pub hidden: u64,
}

impl RateLimit {
    pub const fn new(per_window: u32, window: Duration) -> RateLimit {
        RateLimit {
            per_window,
            window,
            opened: None,
            admitted: 0,
            hidden: 0,
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        let mut closed_hidden = 0;
        let fresh = self
            .opened
            .is_none_or(|t| now.saturating_duration_since(t) >= self.window);
        if fresh {
            closed_hidden = std::mem::take(&mut self.hidden);
            self.opened = Some(now);
            self.admitted = 0;
        }
        let show = self.admitted < self.per_window;
        if show {
            self.admitted += 1;
        } else {
            self.hidden += 1;
        }
        Admit {
            show,
            hidden: closed_hidden,
        }
    }

    /// The events hidden so far in the open window (now reported).
    pub fn take_hidden(&mut self) -> u64 {
        std::mem::take(&mut self.hidden)
    }

    /// The events hidden in a window that is over by `now` (now reported),
    /// so a burst's count is said even if nothing follows it.
    pub fn hidden_due(&mut self, now: Instant) -> u64 {
        match self.opened {
            Some(t) if now.saturating_duration_since(t) >= self.window => self.take_hidden(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_admits_its_quota_and_counts_the_rest() {
        let mut r = RateLimit::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        let shown: Vec<bool> = (0..10).map(|_| r.admit(t0).show).collect();
        assert_eq!(
            shown,
            [true, true, true, false, false, false, false, false, false, false]
        );
        // Still the same window: nothing reported yet.
        assert_eq!(r.admit(t0 + Duration::from_millis(999)).hidden, 0);
        // The next window reports the 8 hidden ones and admits again.
        assert_eq!(
            r.admit(t0 + Duration::from_secs(1)),
            Admit {
                show: true,
                hidden: 8
            }
        );
        assert!(r.admit(t0 + Duration::from_secs(1)).show);
        assert_eq!(r.take_hidden(), 0);
        r.admit(t0 + Duration::from_secs(1));
        assert!(!r.admit(t0 + Duration::from_secs(1)).show);
        assert_eq!(r.take_hidden(), 1);
        assert_eq!(r.take_hidden(), 0);
        // A burst with nothing after it: its count is due once its window
        // is over, and only then.
        let t1 = t0 + Duration::from_secs(5);
        for _ in 0..5 {
            r.admit(t1);
        }
        assert_eq!(r.hidden_due(t1 + Duration::from_millis(500)), 0);
        assert_eq!(r.hidden_due(t1 + Duration::from_secs(1)), 2);
        assert_eq!(r.hidden_due(t1 + Duration::from_secs(2)), 0);
    }
}
