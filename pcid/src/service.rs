//! The pcid daemon: one event loop over the scheme and the drivers'
//! channels. It scans, matches rules, hands each matched function to
//! `vfio-pci`, opens a fresh VFIO container for it and asks init to start
//! its driver with the container, device and channel fds; then it answers
//! channel requests and releases a function when its driver's channel
//! hangs up. It follows the bus through the kernel's uevents: a function
//! that appears is matched and given its driver like one found at boot; one
//! that leaves has its driver stopped for good (init is told it is `gone`).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use common::event::EventLoop;
use common::vfio::{Container, Group};
use daemon::Notice;
use pci_types::PciAddress;
use pcid_interface::ChannelReply;
use rustix::event::{PollFd, PollFlags};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use scheme::{Server, Status};

use crate::addr::{function_name, sysfs_address};
use crate::channel;
use crate::pci_scheme::PciScheme;
use crate::rules::{find_rule, Rule};
use crate::sysfs::Sysfs;
use crate::table::Owner;

/// The privileged steps of a claim, behind a trait so the loop can be
/// tested on a machine without VFIO or init.
pub trait Platform {
    /// Binds `a` to `vfio-pci` and opens a fresh container with the
    /// function's IOMMU group attached.
    fn open_vfio(&self, sysfs: &Sysfs, a: PciAddress) -> io::Result<VfioFds>;

    /// Asks init to start `unit@instance` with `fds` at 4, 5, 6….
    fn spawn(
        &self,
        unit: &str,
        instance: &str,
        args: &[&str],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()>;

    /// init's control socket, for the event loop (none in tests).
    fn control_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// What init asked for since the last call (heartbeats are answered).
    fn notices(&self) -> io::Result<Vec<Notice>> {
        Ok(Vec::new())
    }

    /// Tells init the device of `unit@instance` left the bus.
    fn gone(&self, _unit: &str, _instance: &str) -> io::Result<()> {
        Ok(())
    }
}

/// What a driver gets from VFIO: its own container (IOMMU domain) and the
/// device. pcid closes its copies once init has them.
pub struct VfioFds {
    pub container: Box<dyn AsFd>,
    pub device: Box<dyn AsFd>,
}

/// The real platform: sysfs, `/dev/vfio` and init's control channel.
pub struct System {
    daemon: daemon::Daemon,
}

impl System {
    pub fn new(daemon: daemon::Daemon) -> System {
        System { daemon }
    }

    pub fn daemon(&self) -> &daemon::Daemon {
        &self.daemon
    }
}

impl Platform for System {
    fn open_vfio(&self, sysfs: &Sysfs, a: PciAddress) -> io::Result<VfioFds> {
        let step = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
        sysfs
            .bind_vfio(a)
            .map_err(|e| step("binding to vfio-pci", e))?;
        let n = sysfs.iommu_group(a)?;
        let container = Container::open().map_err(|e| step("opening a VFIO container", e))?;
        let group = Group::open(n).map_err(|e| step(&format!("opening /dev/vfio/{n}"), e))?;
        if !group.is_viable()? {
            return Err(io::Error::other(format!(
                "IOMMU group {n} is not viable (another function in it is bound to a host driver)"
            )));
        }
        group
            .set_container(&container)
            .map_err(|e| step(&format!("attaching group {n}"), e))?;
        container
            .set_iommu_type1v2()
            .map_err(|e| step("setting the type1v2 IOMMU", e))?;
        let device = group
            .device(&sysfs_address(a))
            .map_err(|e| step("getting the device fd", e))?;
        // The group fd may close now: the open device keeps the group (and
        // its container) attached.
        Ok(VfioFds {
            container: Box::new(container),
            device: Box::new(device),
        })
    }

    fn spawn(
        &self,
        unit: &str,
        instance: &str,
        args: &[&str],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        self.daemon.spawn(unit, instance, args, fds)
    }

    fn control_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.daemon.control_fd())
    }

    fn notices(&self) -> io::Result<Vec<Notice>> {
        self.daemon.serve_control()
    }

    fn gone(&self, unit: &str, instance: &str) -> io::Result<()> {
        self.daemon.gone(unit, instance)
    }
}

/// The scheme's token in the event loop; drivers' channels count from 1.
const SERVER: u64 = 0;
/// init's control socket.
const CONTROL: u64 = u64::MAX;
/// The kernel's uevents.
const UEVENTS: u64 = u64::MAX - 1;
/// `SIGHUP`: read the rules again.
const RELOAD: u64 = u64::MAX - 2;
/// A function the kernel has announced but not finished adding refuses
/// `vfio-pci` for a moment: tried again this often, this many times.
const BIND_RETRY: Duration = Duration::from_millis(100);
const BIND_TRIES: u32 = 30;

/// pcid's end of one driver's channel.
struct DriverChannel {
    address: PciAddress,
    socket: OwnedFd,
    unit: String,
    instance: String,
    /// Replies the driver did not take (its socket was full): logged at
    /// powers of two, so a driver that floods without reading cannot
    /// flood pcid's log.
    unsent: u64,
}

/// The daemon's state.
pub struct Pcid<P: Platform> {
    server: Server<PciScheme>,
    events: EventLoop,
    platform: P,
    rules: Vec<Rule>,
    ignore: BTreeSet<PciAddress>,
    drivers: BTreeMap<u64, DriverChannel>,
    next_token: u64,
    /// The driver each function was last given (`unit`, `instance`), so
    /// that init can be told when the function leaves, even if the driver
    /// has already let it go.
    started: BTreeMap<PciAddress, (String, String)>,
    uevents: Option<OwnedFd>,
    /// `SIGHUP`'s signalfd and the rules directory it reloads.
    reload: Option<(nix::sys::signalfd::SignalFd, std::path::PathBuf)>,
    /// Functions to claim again at a time (`vfio-pci` did not bind yet),
    /// with the tries so far.
    retries: BTreeMap<PciAddress, (Instant, u32)>,
}

impl<P: Platform> Pcid<P> {
    pub fn new(
        server: Server<PciScheme>,
        platform: P,
        rules: Vec<Rule>,
        ignore: BTreeSet<PciAddress>,
    ) -> io::Result<Pcid<P>> {
        let events = EventLoop::new()?;
        events.add(server.as_fd(), SERVER)?;
        if let Some(fd) = platform.control_fd() {
            events.add(fd, CONTROL)?;
        }
        Ok(Pcid {
            server,
            events,
            platform,
            rules,
            ignore,
            drivers: BTreeMap::new(),
            next_token: SERVER + 1,
            started: BTreeMap::new(),
            uevents: None,
            reload: None,
            retries: BTreeMap::new(),
        })
    }

    /// Reads the rules in `dir` again on each `SIGHUP` (`kill -HUP $(pidof
    /// pcid)`): functions no rule matched get their driver if one matches
    /// now; running drivers are left alone. The caller blocks `SIGHUP`.
    pub fn with_reload(
        mut self,
        signals: nix::sys::signalfd::SignalFd,
        dir: std::path::PathBuf,
    ) -> io::Result<Pcid<P>> {
        self.events.add(signals.as_fd(), RELOAD)?;
        self.reload = Some((signals, dir));
        Ok(self)
    }

    /// Reads the rules again and gives every unclaimed function the driver
    /// a rule now names.
    fn reload_rules(&mut self) {
        let Some((signals, dir)) = self.reload.as_ref() else {
            return;
        };
        // Drain the signalfd; one reload covers every signal queued.
        while let Ok(Some(_)) = signals.read_signal() {}
        let (rules, errors) = crate::rules::load_rules(dir);
        for e in &errors {
            log::error!("{e} (file skipped)");
        }
        log::info!(
            "{} driver rules from {} (reloaded)",
            rules.len(),
            dir.display()
        );
        self.rules = rules;
        let unclaimed: Vec<PciAddress> = self
            .server
            .scheme()
            .table()
            .iter()
            .filter(|f| f.owner.is_none() && !self.started.contains_key(&f.address))
            .map(|f| f.address)
            .collect();
        for a in unclaimed {
            self.consider(a);
        }
        self.server.wake();
    }

    /// Follows the bus: on each PCI add or remove uevent on `fd`, rescans.
    pub fn with_uevents(mut self, fd: OwnedFd) -> io::Result<Pcid<P>> {
        self.events.add(fd.as_fd(), UEVENTS)?;
        self.uevents = Some(fd);
        Ok(self)
    }

    pub fn platform(&self) -> &P {
        &self.platform
    }

    pub fn scheme(&self) -> &PciScheme {
        self.server.scheme()
    }

    /// Rescans the bus, logs what changed, and starts drivers for new
    /// functions that a rule matches. Failures are per function: logged,
    /// and the rest goes on.
    pub fn scan(&mut self) -> io::Result<()> {
        let scheme = self.server.scheme_mut();
        let sysfs = scheme.sysfs().clone();
        let diff = scheme.table_mut().rescan(&sysfs)?;
        for (a, e) in &diff.failed {
            log::error!("{}: {e}", function_name(*a));
        }
        for f in &diff.removed {
            log::info!("{}: removed (owner: {})", f.name, f.owner);
            // Its driver's channel, if still open, hangs up when the driver
            // exits; init must not start that driver again.
            if let Some((unit, instance)) = self.started.remove(&f.address) {
                log::info!("{}: {unit}@{instance} is stopped for good", f.name);
                if let Err(e) = self.platform.gone(&unit, &instance) {
                    log::error!(
                        "{}: cannot tell init {unit}@{instance} is gone: {e}",
                        f.name
                    );
                }
            }
        }
        for a in diff.added {
            self.consider(a);
        }
        Ok(())
    }

    /// Matches one new function against the rules and starts its driver.
    fn consider(&mut self, a: PciAddress) {
        let Some(f) = self.server.scheme().table().get(a) else {
            return;
        };
        let p = &f.parsed;
        let what = format!(
            "{}: {:04x}:{:04x} class {:02x}.{:02x}.{:02x}",
            f.name, p.vendor, p.device, p.class, p.subclass, p.interface
        );
        if self.ignore.contains(&a) {
            log::info!("{what}: ignored (pcid.ignore)");
            return;
        }
        let Some(rule) = find_rule(&self.rules, p).cloned() else {
            log::debug!("{what}: no driver rule");
            return;
        };
        if !f.owner.is_none() {
            log::warn!(
                "{what}: matches {} but is owned by {}",
                rule.driver.describe(),
                f.owner
            );
            return;
        }
        // VFIO gives a driver a whole IOMMU group: a function sharing its
        // group (q35's own AHCI at 00:1f.2 with the LPC bridge and SMBus)
        // cannot be given to one driver alone, and binding its peers to
        // vfio-pci would take them from the kernel.
        match self.server.scheme().sysfs().iommu_group_peers(a) {
            Ok(peers) if !peers.is_empty() => {
                let names: Vec<String> = peers.iter().map(|p| sysfs_address(*p)).collect();
                log::info!(
                    "{what}: matches {} but shares its IOMMU group with {}: not claimed \
                     (a driver must own its group alone); left to the kernel",
                    rule.driver.describe(),
                    names.join(", ")
                );
                return;
            }
            Ok(_) => {}
            Err(e) => {
                log::error!("{what}: cannot list its IOMMU group: {e}; not claimed");
                return;
            }
        }
        log::info!(
            "{what}: matches {}, starting {}",
            rule.driver.describe(),
            rule.driver.unit()
        );
        if let Err(e) = self.start_driver(a, &rule) {
            if e.kind() == io::ErrorKind::WouldBlock {
                // A function just hot-added may not take a driver yet.
                let tries = self.retries.get(&a).map_or(0, |r| r.1) + 1;
                if tries <= BIND_TRIES {
                    log::info!("{}: {e}; trying again", function_name(a));
                    self.retries.insert(a, (Instant::now() + BIND_RETRY, tries));
                    return;
                }
            }
            self.retries.remove(&a);
            log::error!(
                "{}: cannot start {}: {e}",
                function_name(a),
                rule.driver.unit()
            );
            return;
        }
        self.retries.remove(&a);
    }

    fn start_driver(&mut self, a: PciAddress, rule: &Rule) -> io::Result<()> {
        let instance = function_name(a);
        let vfio = self.platform.open_vfio(self.server.scheme().sysfs(), a)?;
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        // Only our end is non-blocking: the loop must never wait on a
        // driver; the driver's end keeps ordinary blocking semantics.
        let fl = rustix::fs::fcntl_getfl(&ours)?;
        rustix::fs::fcntl_setfl(&ours, fl | rustix::fs::OFlags::NONBLOCK)?;
        let token = self.next_token;
        self.next_token += 1;
        self.events.add(ours.as_fd(), token)?;
        let args: Vec<&str> = rule.driver.args().iter().map(String::as_str).collect();
        let fds = [vfio.container.as_fd(), vfio.device.as_fd(), theirs.as_fd()];
        if let Err(e) = self
            .platform
            .spawn(rule.driver.unit(), &instance, &args, &fds)
        {
            let _ = self.events.remove(ours.as_fd());
            return Err(io::Error::new(e.kind(), format!("asking init: {e}")));
        }
        // init holds its own copies now; ours (container, device, the
        // driver's end of the channel) close here.
        drop(vfio);
        drop(theirs);
        if let Some(f) = self.server.scheme_mut().table_mut().get_mut(a) {
            f.owner = Owner::Driver {
                unit: rule.driver.unit().to_owned(),
                instance: instance.clone(),
                channel: token,
            };
        }
        log::info!("{instance}: {}@{instance} started", rule.driver.unit());
        self.started
            .insert(a, (rule.driver.unit().to_owned(), instance.clone()));
        self.drivers.insert(
            token,
            DriverChannel {
                address: a,
                socket: ours,
                unit: rule.driver.unit().to_owned(),
                instance,
                unsent: 0,
            },
        );
        Ok(())
    }

    /// Serves whatever is ready, waiting at most `timeout` (`None`: until
    /// something happens).
    pub fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<Status> {
        let tokens = self.events.wait(timeout)?;
        let mut status = Status::Running;
        let mut channel_event = false;
        for t in tokens {
            if t == SERVER {
                status = self.server.process()?;
                if status == Status::Unmounted {
                    return Ok(status);
                }
            } else if t == CONTROL {
                for notice in self.platform.notices()? {
                    self.on_notice(notice);
                }
            } else if t == UEVENTS {
                self.on_uevents();
            } else if t == RELOAD {
                self.reload_rules();
            } else {
                self.on_channel(t);
                channel_event = true;
            }
        }
        if channel_event {
            self.server.wake();
        }
        Ok(status)
    }

    /// Serves until `/scheme/pci` is unmounted.
    pub fn run(&mut self) -> io::Result<()> {
        loop {
            let next = self.retries.values().map(|r| r.0).min();
            let timeout = next.map(|t| t.saturating_duration_since(Instant::now()));
            if self.poll_once(timeout)? != Status::Running {
                return Ok(());
            }
            self.retry_due();
        }
    }

    /// Claims again the functions whose retry time has come (still there,
    /// still unclaimed).
    fn retry_due(&mut self) {
        let now = Instant::now();
        let due: Vec<PciAddress> = self
            .retries
            .iter()
            .filter(|(_, r)| r.0 <= now)
            .map(|(a, _)| *a)
            .collect();
        if due.is_empty() {
            return;
        }
        // The table's view of a function read mid-add may be stale (BARs
        // not assigned yet): read sysfs again first.
        if let Err(e) = self.scan() {
            log::error!("rescan: {e}");
        }
        for a in due {
            let unclaimed = self
                .server
                .scheme()
                .table()
                .get(a)
                .is_some_and(|f| f.owner.is_none());
            if unclaimed {
                self.consider(a);
            } else {
                self.retries.remove(&a);
            }
        }
        self.server.wake();
    }

    /// What init asks of pcid: start a driver again (the supervisor's
    /// restart, or a start by hand) on a fresh claim of its function.
    fn on_notice(&mut self, notice: Notice) {
        let Notice::Respawn { unit, instance } = notice else {
            log::warn!("init sent {notice:?}, which pcid does not take");
            return;
        };
        if let Err(e) = self.respawn(&unit, &instance) {
            log::error!("{instance}: cannot start {unit} again: {e}");
            // It may be leaving the bus (a driver killed while its device
            // was being removed): a rescan finds out and tells init.
            if let Err(e) = self.scan() {
                log::error!("rescan: {e}");
            }
        }
    }

    /// The kernel's uevents: a PCI function came or went, so rescan.
    fn on_uevents(&mut self) {
        let Some(fd) = self.uevents.as_ref() else {
            return;
        };
        let events = match crate::uevent::drain(fd) {
            Ok(events) => events,
            Err(e) => {
                log::error!("uevent socket: {e}; no longer following the bus");
                if let Some(fd) = self.uevents.take() {
                    let _ = self.events.remove(fd.as_fd());
                }
                return;
            }
        };
        let mut changed = false;
        for e in events.iter().filter(|e| e.changes_the_bus()) {
            log::info!(
                "uevent: {} {}",
                e.action,
                e.slot.as_deref().unwrap_or("(no slot)")
            );
            changed = true;
        }
        if changed {
            if let Err(e) = self.scan() {
                log::error!("rescan: {e}");
            }
            self.server.wake();
        }
    }

    fn respawn(&mut self, unit: &str, instance: &str) -> io::Result<()> {
        let Some(a) = self
            .server
            .scheme()
            .table()
            .iter()
            .find(|f| f.name == instance)
            .map(|f| f.address)
        else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such function"));
        };
        // The dead driver's channel may not have been read yet: its end is
        // closed, so the claim is released now.
        let stale = self
            .drivers
            .iter()
            .find_map(|(t, ch)| (ch.address == a && hung_up(ch.socket.as_fd())).then_some(*t));
        if let Some(t) = stale {
            self.hang_up(t, None);
        }
        let f = self
            .server
            .scheme()
            .table()
            .get(a)
            .ok_or_else(|| io::Error::other("the function was removed"))?;
        if !f.owner.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("still owned by {}", f.owner),
            ));
        }
        let rule = find_rule(&self.rules, &f.parsed)
            .filter(|r| r.driver.unit() == unit)
            .cloned()
            .ok_or_else(|| io::Error::other(format!("no rule starts {unit} for it")))?;
        log::info!("{instance}: starting {unit} again, on a fresh claim");
        self.start_driver(a, &rule)
    }

    /// One driver's channel is readable: a request, or the hang-up.
    fn on_channel(&mut self, token: u64) {
        let Some(ch) = self.drivers.get(&token) else {
            return;
        };
        let mut buf = vec![0u8; channel::MAX_REQUEST + 1];
        let received = rustix::net::recv(
            &ch.socket,
            &mut buf[..],
            RecvFlags::DONTWAIT | RecvFlags::TRUNC,
        );
        let len = match received {
            Ok((_, 0)) if hung_up(ch.socket.as_fd()) => return self.hang_up(token, None),
            Ok((_, full)) => full,
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => return,
            Err(e) => return self.hang_up(token, Some(e.into())),
        };
        let scheme = self.server.scheme();
        let Some(ch) = self.drivers.get_mut(&token) else {
            return;
        };
        let reply = if len > channel::MAX_REQUEST {
            // The kernel cut it to our buffer; `len` is its real length.
            ChannelReply::Error(format!(
                "request of {len} bytes is longer than {}",
                channel::MAX_REQUEST
            ))
        } else {
            match scheme.table().get(ch.address) {
                Some(f) => channel::answer(f, scheme.sysfs(), &buf[..len]),
                None => ChannelReply::Error("the function was removed".into()),
            }
        };
        let reply = channel::encode(&reply);
        if let Err(e) = rustix::net::send(
            &ch.socket,
            &reply,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            ch.unsent += 1;
            if ch.unsent.is_power_of_two() {
                log::warn!(
                    "{}: reply to {}@{} not sent: {e} ({} so far)",
                    function_name(ch.address),
                    ch.unit,
                    ch.instance,
                    ch.unsent
                );
            }
        }
    }

    /// The driver closed its end (it exited): forget the channel and
    /// release the function.
    fn hang_up(&mut self, token: u64, error: Option<io::Error>) {
        let Some(ch) = self.drivers.remove(&token) else {
            return;
        };
        let _ = self.events.remove(ch.socket.as_fd());
        let why = error.map(|e| format!(" ({e})")).unwrap_or_default();
        log::warn!(
            "{}: {}@{} closed its channel{why}: driver exited; function released",
            function_name(ch.address),
            ch.unit,
            ch.instance
        );
        if let Some(f) = self.server.scheme_mut().table_mut().get_mut(ch.address) {
            // Only if it is still this driver's (not a later one's).
            if matches!(f.owner, Owner::Driver { channel, .. } if channel == token) {
                f.owner = Owner::None;
            }
        }
    }
}

/// Whether the peer of a socket that just read 0 bytes is gone (rather
/// than having sent an empty packet).
fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::RDHUP)];
    match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
        Err(_) => true,
    }
}
