//! Forwarding a service's output: each line it writes goes to the console
//! as `[name] line` and to `/var/log/<name>.log` (`console::OutputSink`).

use rustix::event::epoll;

use super::Services;
use crate::console::say;

impl Services {
    pub(super) fn on_output(&mut self, i: usize) {
        let mut buf = [0u8; 4096];
        // A bounded share per wake-up (64 KiB), as for control packets:
        // a service that writes without pause cannot hold init here.
        for _ in 0..16 {
            let Some(fd) = self.list[i].output.as_ref() else {
                return;
            };
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => {
                    self.close_output(i);
                    return;
                }
                Ok(n) => self.list[i].sink.feed(&buf[..n]),
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    say(&format!(
                        "reading output of {}: {e}",
                        self.list[i].unit.name
                    ));
                    self.close_output(i);
                    return;
                }
            }
        }
    }

    pub(super) fn close_output(&mut self, i: usize) {
        if let Some(fd) = self.list[i].output.take() {
            let _ = epoll::delete(&self.epoll, &fd);
        }
        self.list[i].sink.finish();
    }
}
