//! The QEMU test lab: boots the image with a chosen device list and extra
//! files, captures the console, runs commands in the guest through
//! `lab-agent` on a second serial port, talks QMP, bounds every wait, and
//! always kills its own QEMU.
//!
//! The machine and its kernel command line come from the `vm` crate
//! (`tools/vm`), which `make run` boots too, so what a person boots is what
//! the tests boot; they are re-exported here for the scenarios.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

pub mod disks;
pub mod faults;
pub mod fuzz;
pub mod storage;

pub use vm::{
    ahci_args, e1000_args, image_dir, kernel_cmdline, machine_args, nic_pair_on_hub, nvme_args,
    nvme_args_with, root_port_args, virtio_blk_args, virtio_net_args, workspace_root,
    BUILTINS_KEPT_OFF, LINUX_VIRTIO_PCI,
};

pub type Result<T> = std::result::Result<T, String>;

/// Printed by init once every service is up (or failed).
pub const READY_BANNER: &str = "init: all services ready";

/// A file added to the guest's initramfs for one boot.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// One boot's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Scenario name: the console log goes to `target/lab/<name>.console.log`.
    pub name: String,
    /// Extra QEMU arguments (devices, drives, netdevs).
    pub qemu_args: Vec<String>,
    pub files: Vec<ExtraFile>,
    pub cmdline: Vec<String>,
    /// Built-in drivers of [`BUILTINS_KEPT_OFF`] allowed to start.
    pub builtins_allowed: Vec<&'static str>,
    pub memory_mb: u32,
    pub smp: u32,
    pub boot_timeout: Duration,
}

impl Config {
    pub fn new(name: &str) -> Config {
        Config {
            name: name.to_owned(),
            qemu_args: Vec::new(),
            files: Vec::new(),
            cmdline: Vec::new(),
            builtins_allowed: Vec::new(),
            memory_mb: 512,
            smp: 2,
            boot_timeout: Duration::from_secs(120),
        }
    }

    pub fn args(mut self, args: Vec<String>) -> Config {
        self.qemu_args.extend(args);
        self
    }

    pub fn arg(mut self, args: &[&str]) -> Config {
        self.qemu_args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Extra words for the kernel command line.
    pub fn cmdline(mut self, words: &[&str]) -> Config {
        self.cmdline.extend(words.iter().map(|s| s.to_string()));
        self
    }

    /// Lets a built-in driver of [`BUILTINS_KEPT_OFF`] start at boot.
    pub fn allow_builtin(mut self, initcall: &'static str) -> Config {
        self.builtins_allowed.push(initcall);
        self
    }

    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> Config {
        self.files.push(ExtraFile {
            path: path.to_owned(),
            data: data.to_vec(),
            mode,
        });
        self
    }
}

/// What a guest command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Console text captured so far, with a condition variable for waiters.
#[derive(Default)]
struct ConsoleBuf {
    text: Mutex<String>,
    grew: Condvar,
}

/// A running guest. Dropping it kills QEMU.
pub struct Vm {
    child: Child,
    console: Arc<ConsoleBuf>,
    agent: BufReader<UnixStream>,
    qmp: Option<BufReader<UnixStream>>,
    /// QMP events read while waiting for replies, oldest first.
    qmp_events: Vec<Value>,
    /// A QMP line cut by a read timeout, completed by the next read.
    qmp_partial: String,
    next_id: u64,
    pub dir: PathBuf,
    /// Seconds from QEMU's start to the ready banner, wall time.
    pub boot_wall: f64,
}

fn unique_dir(name: &str) -> Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Socket paths must stay short (108 bytes), so not under target/.
    let dir = std::env::temp_dir().join(format!("lab-{}-{}-{n}", name, std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Writes `base` followed by a newc archive of `files` to `out`: the kernel
/// unpacks concatenated archives in order, so these override the image's.
pub fn initrd_with(base: &Path, files: &[ExtraFile], out: &Path) -> Result<()> {
    let mut data = std::fs::read(base)
        .map_err(|e| format!("cannot read {}: {e} (run `make image`)", base.display()))?;
    while data.len() % 4 != 0 {
        data.push(0);
    }
    let mut archive = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let rel = f.path.trim_start_matches('/');
        let mut parent = Path::new(rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
    }
    let write_err = |e: std::io::Error| format!("cannot write archive: {e}");
    for d in &dirs {
        let w = cpio::newc::Builder::new(d)
            .mode(0o040755)
            .write(&mut archive, 0);
        w.finish().map_err(write_err)?;
    }
    for f in files {
        let rel = f.path.trim_start_matches('/');
        let mut w = cpio::newc::Builder::new(rel)
            .mode(0o100000 | (f.mode & 0o7777))
            .write(&mut archive, f.data.len() as u32);
        w.write_all(&f.data).map_err(write_err)?;
        w.finish().map_err(write_err)?;
    }
    cpio::newc::trailer(&mut archive).map_err(write_err)?;
    data.extend_from_slice(&archive);
    std::fs::write(out, data).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

fn connect(path: &Path, deadline: Instant, child: &mut Child) -> Result<UnixStream> {
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "QEMU exited ({status}) before {} was ready",
                        path.display()
                    ));
                }
                if Instant::now() >= deadline {
                    return Err(format!("cannot connect to {}: {e}", path.display()));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A boot whose console stays empty this long never reached the kernel's
/// console, let alone any of our code: QEMU or the firmware stuck at start
/// under TCG (seen once in many runs, with a busy host). Such a boot is
/// retried once, and the retry is reported; any later failure is not.
const SILENT_BOOT: Duration = Duration::from_secs(45);
const SILENT_MARK: &str = "QEMU's console stayed empty";
/// A boot whose kernel panicked before init wrote a line, so again before
/// any of our code ran. Seen under TCG with Debian 13's 6.12 kernel, once
/// in about 130 boots here, on a loaded host: `Oops: int3` in `sched_clock_cpu` at
/// a late initcall, the kernel hitting a breakpoint its own code patching
/// had already removed (TCG running a stale translation). The same oops
/// when the RNG becomes ready (`Vm::settle_rng`) counts too: both happen
/// before the scenario begins. Retried once, reported, like a silent boot.
const EARLY_PANIC_MARK: &str = "the kernel failed before the scenario began";

impl Vm {
    /// Boots a guest and waits (bounded) until init reports every service
    /// ready and the agent answers.
    pub fn boot(cfg: Config) -> Result<Vm> {
        match Vm::boot_once(cfg.clone(), true) {
            Err(e) if e.starts_with(SILENT_MARK) || e.starts_with(EARLY_PANIC_MARK) => {
                eprintln!("lab: {}: {e}; retrying the boot once", cfg.name);
                Vm::boot_once(cfg, false)
            }
            other => other,
        }
    }

    fn boot_once(cfg: Config, first_try: bool) -> Result<Vm> {
        let image = image_dir();
        let dir = unique_dir(&cfg.name)?;
        let initrd = if cfg.files.is_empty() {
            image.join("initfs.cpio.gz")
        } else {
            let out = dir.join("initrd");
            initrd_with(&image.join("initfs.cpio.gz"), &cfg.files, &out)?;
            out
        };
        let kernel = image.join("vmlinuz");
        if !kernel.exists() {
            return Err(format!(
                "{} is missing: run `make image` first",
                kernel.display()
            ));
        }
        let console_sock = dir.join("console.sock");
        let agent_sock = dir.join("agent.sock");
        let qmp_sock = dir.join("qmp.sock");
        let mut cmdline = cfg.cmdline.clone();
        cmdline.push("lab.agent=ttyS1".to_owned());

        let mut args = machine_args(cfg.memory_mb, cfg.smp);
        args.extend([
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            kernel_cmdline(&cmdline, &cfg.builtins_allowed),
            // wait=on: QEMU starts the guest only once we listen, so not a
            // byte of the console is lost.
            "-chardev".into(),
            format!(
                "socket,id=con0,path={},server=on,wait=on",
                console_sock.display()
            ),
            "-serial".into(),
            "chardev:con0".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent0,path={},server=on,wait=off",
                agent_sock.display()
            ),
            "-serial".into(),
            "chardev:agent0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp_sock.display()),
        ]);
        args.extend(cfg.qemu_args.iter().cloned());

        let qemu_log = std::fs::File::create(dir.join("qemu.stderr")).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(qemu_log))
            .spawn()
            .map_err(|e| format!("cannot start qemu-system-x86_64: {e} (run `make deps`)"))?;
        let deadline = started + cfg.boot_timeout;

        let console = Arc::new(ConsoleBuf::default());
        let con_stream = match connect(&console_sock, deadline, &mut child) {
            Ok(s) => s,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = std::fs::read_to_string(dir.join("qemu.stderr")).unwrap_or_default();
                return Err(format!("{e}\nQEMU said: {stderr}"));
            }
        };
        let log_path = workspace_root()
            .join("target/lab")
            .join(format!("{}.console.log", cfg.name));
        let _ = std::fs::create_dir_all(log_path.parent().unwrap_or(Path::new(".")));
        spawn_console_reader(con_stream, console.clone(), log_path);

        let mut vm = Vm {
            child,
            console,
            // Placeholder until the agent is up; replaced below.
            agent: BufReader::new(UnixStream::pair().map_err(|e| e.to_string())?.0),
            qmp: None,
            qmp_events: Vec::new(),
            qmp_partial: String::new(),
            next_id: 1,
            dir,
            boot_wall: 0.0,
        };
        if first_try {
            let first_line = vm.wait_console("\n", SILENT_BOOT);
            if first_line.is_err() && vm.console().is_empty() {
                return Err(format!("{SILENT_MARK} for {} s", SILENT_BOOT.as_secs()));
            }
        }
        let ready = vm.wait_console(
            READY_BANNER,
            deadline.saturating_duration_since(Instant::now()),
        );
        if let Err(e) = ready {
            let console = vm.console();
            let early_panic = console.contains("Kernel panic")
                && !console.lines().any(|l| l.starts_with("init: "));
            if !(first_try && early_panic) {
                return Err(e);
            }
            // The retry's console replaces this one's log: keep the panic.
            let kept = workspace_root()
                .join("target/lab")
                .join(format!("{}.panic.console.log", cfg.name));
            let _ = std::fs::write(&kept, &console);
            return Err(format!(
                "{EARLY_PANIC_MARK} (its console: {})",
                kept.display()
            ));
        }
        vm.boot_wall = started.elapsed().as_secs_f64();
        let agent = connect(&agent_sock, deadline, &mut vm.child)?;
        vm.agent = BufReader::new(agent);
        vm.wait_hello(deadline)?;
        let qmp = connect(&qmp_sock, deadline, &mut vm.child)?;
        vm.qmp = Some(BufReader::new(qmp));
        vm.qmp_handshake()?;
        vm.settle_rng(first_try)?;
        Ok(vm)
    }

    /// Makes the kernel's RNG ready before the scenario starts. With no
    /// RDRAND (QEMU's default CPU under TCG) it becomes ready only when a
    /// reader first asks, seconds into the run, and then flips a static
    /// key by live code patching; under TCG a CPU can then still execute
    /// the int3 the patching already removed, and the kernel oopses (seen
    /// in `urandom_read_iter`, under a scenario's `dd if=/dev/urandom`).
    /// Asked here, the flip happens while the guest is idle; an oops now
    /// is a boot failure like an early panic, retried once.
    fn settle_rng(&mut self, first_try: bool) -> Result<()> {
        let asked = self.sh_timeout(
            "dd if=/dev/random of=/dev/null bs=1 count=1 2>/dev/null",
            Duration::from_secs(60),
        );
        let oops = self.console().contains("Oops: int3");
        match asked {
            Ok(out) if out.success() && !oops => Ok(()),
            _ if oops && first_try => Err(format!(
                "{EARLY_PANIC_MARK} (an int3 oops while the RNG became ready)"
            )),
            Ok(out) => Err(format!(
                "the kernel's RNG did not become ready: {}{}",
                out.stdout_str(),
                out.stderr_str()
            )),
            Err(e) => Err(format!("the kernel's RNG did not become ready: {e}")),
        }
    }

    fn wait_hello(&mut self, deadline: Instant) -> Result<()> {
        // The agent announces itself; it may have done so before we
        // connected, so also ping it with a no-op until it answers.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the guest agent never answered\n{}",
                    self.console_tail()
                ));
            }
            match self.sh_timeout("true", Duration::from_secs(5).min(left)) {
                Ok(out) if out.success() => return Ok(()),
                _ => continue,
            }
        }
    }

    /// All console output so far.
    pub fn console(&self) -> String {
        self.console
            .text
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    fn console_tail(&self) -> String {
        let text = self.console();
        let start = text.len().saturating_sub(3000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        format!("--- console (tail) ---\n{}", &text[start..])
    }

    /// Waits until the console has printed `needle`, at most `timeout`.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_console_after(0, needle, timeout)
    }

    /// Like `wait_console`, but only looks at output after byte `from`
    /// (take it from `console().len()` before triggering the event).
    pub fn wait_console_after(
        &mut self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let Ok(mut text) = self.console.text.lock() else {
            return Err("console lock poisoned".into());
        };
        loop {
            if text.get(from..).is_some_and(|t| t.contains(needle)) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                drop(text);
                return Err(format!(
                    "console never printed {needle:?} within {timeout:?}\n{}",
                    self.console_tail()
                ));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                drop(text);
                return Err(format!(
                    "QEMU exited ({status}) waiting for {needle:?}\n{}",
                    self.console_tail()
                ));
            }
            // Wake at least every 200 ms to notice QEMU dying.
            let wait = (deadline - now).min(Duration::from_millis(200));
            text = match self.console.grew.wait_timeout(text, wait) {
                Ok((t, _)) => t,
                Err(_) => return Err("console lock poisoned".into()),
            };
        }
    }

    /// Runs a shell script in the guest as root (60 s bound).
    pub fn sh(&mut self, script: &str) -> Result<Output> {
        self.sh_timeout(script, Duration::from_secs(60))
    }

    /// Checks that guest process `pid` runs the way every driver must: uid
    /// and gid `id` (real, effective, saved, fs), no effective or permitted
    /// capabilities, `NO_NEW_PRIVS` and a seccomp filter.
    pub fn check_driver_privileges(&mut self, pid: &str, id: u32) -> Result<()> {
        let status = self.ok(&format!("cat /proc/{}/status", pid.trim()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        let ids = format!("{id} {id} {id} {id}");
        for (name, want) in [
            ("Uid:", ids.as_str()),
            ("Gid:", ids.as_str()),
            ("CapEff:", "0000000000000000"),
            ("CapPrm:", "0000000000000000"),
            ("NoNewPrivs:", "1"),
            ("Seccomp:", "2"),
        ] {
            if field(name) != want {
                return Err(format!(
                    "pid {pid}: {name} is {:?}, want {want:?}\n{status}",
                    field(name)
                ));
            }
        }
        Ok(())
    }

    /// Checks that PCI function `addr` (`0000:00:05.0`) is bound to
    /// `vfio-pci` and none of the Linux `modules` is loaded.
    pub fn check_vfio_bound(&mut self, addr: &str, modules: &[&str]) -> Result<()> {
        let driver = self.ok(&format!("readlink /sys/bus/pci/devices/{addr}/driver"))?;
        if !driver.trim().ends_with("/vfio-pci") {
            return Err(format!("{addr} is bound to {driver:?}, not vfio-pci"));
        }
        let loaded = self.ok("cut -d' ' -f1 /proc/modules")?;
        match modules.iter().find(|m| loaded.lines().any(|l| l == **m)) {
            Some(m) => Err(format!("Linux's {m} is loaded:\n{loaded}")),
            None => Ok(()),
        }
    }

    /// Runs a script and fails unless it exits 0; returns its stdout.
    pub fn ok(&mut self, script: &str) -> Result<String> {
        let out = self.sh(script)?;
        if !out.success() {
            return Err(format!(
                "guest command failed ({:?}, signal {:?}, timed out {}): {script}\nstdout: {}\nstderr: {}",
                out.code,
                out.signal,
                out.timed_out,
                out.stdout_str(),
                out.stderr_str()
            ));
        }
        Ok(out.stdout_str())
    }

    pub fn sh_timeout(&mut self, script: &str, timeout: Duration) -> Result<Output> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"id": id, "sh": script, "timeout_ms": timeout.as_millis() as u64});
        let mut line = req.to_string();
        line.push('\n');
        self.agent
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(|e| format!("agent write: {e}"))?;
        // The agent kills the script at `timeout`; allow for the transfer.
        let deadline = Instant::now() + timeout + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no answer from the agent for: {script}"));
            }
            self.agent
                .get_mut()
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            let mut reply = String::new();
            match self.agent.read_line(&mut reply) {
                Ok(0) => return Err("agent connection closed".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("agent read for {script:?}: {e}")),
            }
            let Ok(v) = serde_json::from_str::<Value>(reply.trim()) else {
                continue; // line noise from before the agent set raw mode
            };
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue; // hello, or an answer to an abandoned request
            }
            if let Some(err) = v.get("error").and_then(Value::as_str) {
                return Err(format!("agent: {err}"));
            }
            let b64 = base64::engine::general_purpose::STANDARD;
            let field = |k: &str| -> Vec<u8> {
                v.get(k)
                    .and_then(Value::as_str)
                    .and_then(|s| b64.decode(s).ok())
                    .unwrap_or_default()
            };
            return Ok(Output {
                code: v.get("code").and_then(Value::as_i64).map(|c| c as i32),
                signal: v.get("signal").and_then(Value::as_i64).map(|c| c as i32),
                timed_out: v.get("timed_out").and_then(Value::as_bool).unwrap_or(false),
                stdout: field("stdout"),
                stderr: field("stderr"),
            });
        }
    }

    /// Waits (bounded) for QMP event `name` whose `data` satisfies
    /// `matches`, and takes it (with every event before it) off the queue.
    pub fn wait_qmp_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.qmp_events.iter().position(|e| {
                e.get("event").and_then(Value::as_str) == Some(name)
                    && matches(e.get("data").unwrap_or(&Value::Null))
            });
            if let Some(at) = found {
                let event = self.qmp_events.remove(at);
                self.qmp_events.drain(..at);
                return Ok(event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no QMP event {name} within {timeout:?}"));
            }
            // Replies are not expected here; events are queued by it.
            let _ = self.qmp_next(left.min(Duration::from_secs(1)))?;
        }
    }

    fn qmp_handshake(&mut self) -> Result<()> {
        self.qmp_read_reply()?; // greeting
        self.qmp("qmp_capabilities", json!({}))?;
        Ok(())
    }

    fn qmp_read_reply(&mut self) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("QMP: no reply within 30 s".into());
            }
            if let Some(v) = self.qmp_next(left)? {
                return Ok(v);
            }
        }
    }

    /// Reads one QMP line, waiting at most `wait`: a reply is returned, an
    /// event queued (`None`), and a line cut by the timeout kept for the
    /// next read (`None`).
    fn qmp_next(&mut self, wait: Duration) -> Result<Option<Value>> {
        let Some(qmp) = self.qmp.as_mut() else {
            return Err("no QMP connection".into());
        };
        qmp.get_mut()
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        let mut line = std::mem::take(&mut self.qmp_partial);
        match qmp.read_line(&mut line) {
            Ok(0) => Err("QMP connection closed".into()),
            Ok(_) => {
                let v: Value =
                    serde_json::from_str(line.trim()).map_err(|e| format!("QMP: {e}: {line}"))?;
                if v.get("event").is_some() {
                    self.qmp_events.push(v);
                    return Ok(None);
                }
                Ok(Some(v))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                self.qmp_partial = line;
                Ok(None)
            }
            Err(e) => Err(format!("QMP read: {e}")),
        }
    }

    /// Runs a QMP command and returns its `return` value.
    pub fn qmp(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let Some(qmp) = self.qmp.as_mut() else {
            return Err("no QMP connection".into());
        };
        let mut line = json!({"execute": command, "arguments": arguments}).to_string();
        line.push('\n');
        qmp.get_mut()
            .write_all(line.as_bytes())
            .map_err(|e| format!("QMP write: {e}"))?;
        let v = self.qmp_read_reply()?;
        match v.get("return") {
            Some(r) => Ok(r.clone()),
            None => Err(format!("QMP {command} failed: {v}")),
        }
    }

    /// Asks the guest to power off (busybox `poweroff` → init → reboot(2))
    /// and waits, bounded, for QEMU to exit on its own.
    pub fn poweroff(mut self, timeout: Duration) -> Result<ExitStatus> {
        // The agent may be stopped before it can answer: do not wait for it.
        let line = json!({"id": 0, "sh": "poweroff", "timeout_ms": 10000}).to_string() + "\n";
        self.agent
            .get_mut()
            .write_all(line.as_bytes())
            .map_err(|e| format!("agent write: {e}"))?;
        self.wait_exit(timeout)
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "QEMU still running {timeout:?} after poweroff\n{}",
                    self.console_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_console_reader(mut stream: UnixStream, console: Arc<ConsoleBuf>, log_path: PathBuf) {
    std::thread::spawn(move || {
        let mut log = std::fs::File::create(&log_path).ok();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(f) = log.as_mut() {
                        let _ = f.write_all(&buf[..n]);
                    }
                    let chunk = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                    if let Ok(mut t) = console.text.lock() {
                        t.push_str(&chunk);
                    }
                    console.grew.notify_all();
                }
            }
        }
    });
}

/// `data`'s md5 as lowercase hex, as `md5sum` prints it.
pub fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `frames` tool's summary line `VERB N KEY VALUE …` (`sent 300 bytes
/// 60000 errors 0`, `received 300 bytes 60000 bad 0 lost 0 dup 0 …`) as
/// numbers: `VERB` → N and each key → its value. `None` if `out` has no
/// such line.
pub fn frames_summary(out: &str, verb: &str) -> Option<std::collections::BTreeMap<String, u64>> {
    let line = out.lines().find(|l| l.starts_with(&format!("{verb} ")))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut m = std::collections::BTreeMap::new();
    m.insert(verb.to_owned(), words.get(1)?.parse().ok()?);
    for kv in words.get(2..)?.chunks(2) {
        if let [k, v] = kv {
            if let Ok(n) = v.parse() {
                m.insert((*k).to_owned(), n);
            }
        }
    }
    Some(m)
}

/// A deterministic pseudo-random byte stream (xorshift), for test data that
/// the host and guest can both check.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The text of unit file `initfs/etc/init.d/<unit>.toml` with `vars` as its
/// environment, for a boot's extra files (the shipped units have no `env`
/// table of their own).
pub fn unit_with_env(unit: &str, vars: &[(&str, &str)]) -> Result<Vec<u8>> {
    let path = workspace_root().join(format!("initfs/etc/init.d/{unit}.toml"));
    let mut text =
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.lines().any(|l| l.starts_with("env")) {
        return Err(format!("{}: has an env table already", path.display()));
    }
    let pairs: Vec<String> = vars.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
    text.push_str(&format!("env = {{ {} }}\n", pairs.join(", ")));
    Ok(text.into_bytes())
}

/// One device access the IOMMU refused, as the guest kernel reports it:
/// `DMAR: [DMA Write NO_PASID] Request device [00:04.0] fault addr 0x1000
/// [fault reason 0x05] PTE Write access is not set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmaFault {
    /// `00:04.0`.
    pub function: String,
    /// As printed: `0x1000`.
    pub addr: String,
    pub write: bool,
    /// Byte offset of the line in the text it was found in.
    pub at: usize,
    pub line: String,
}

/// Every DMAR fault report in `console`, in order.
pub fn dma_faults(console: &str) -> Vec<DmaFault> {
    let mut at = 0;
    let mut found = Vec::new();
    for line in console.split_inclusive('\n') {
        if let Some(rest) = line.split("DMAR: [DMA ").nth(1) {
            let field = |key: &str, end: char| {
                rest.split(key)
                    .nth(1)
                    .and_then(|r| r.split(end).next())
                    .unwrap_or("?")
                    .to_owned()
            };
            found.push(DmaFault {
                function: field("Request device [", ']'),
                addr: field("fault addr ", ' '),
                write: rest.starts_with("Write"),
                at,
                line: line.trim_end().to_owned(),
            });
        }
        at += line.len();
    }
    found
}

/// `frames pair FROM TO` for `count` frames: all arrive, none damaged,
/// lost or repeated. Returns the tool's output.
pub fn frames_all_arrive(vm: &mut Vm, from: &str, to: &str, count: u64) -> Result<String> {
    let out = vm.sh_timeout(
        &format!(
            "frames pair {from} {to} --count {count} --size 300 --seed 5 --window 32 --timeout-ms 20000"
        ),
        Duration::from_secs(300),
    )?;
    let text = out.stdout_str();
    let r = frames_summary(&text, "received")
        .ok_or_else(|| format!("{from} -> {to}: {text}{}", out.stderr_str()))?;
    if r.get("received") != Some(&count) || !out.success() {
        return Err(format!(
            "{from} -> {to}: not all {count} frames arrived: {text}"
        ));
    }
    for k in ["bad", "lost", "dup"] {
        if r.get(k) != Some(&0) {
            return Err(format!("{from} -> {to}: {k} frames: {text}"));
        }
    }
    Ok(text)
}
