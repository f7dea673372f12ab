//! Service units: `/etc/init.d/*.toml`, one service per file, named after it.
//!
//! Keys (each documented on [`Unit`]; `docs/architecture.md` has the table):
//! `description`, `command`, `args`, `env`, `type`, `user`, `schemes`,
//! `requires`, `condition_cmdline`, `ready_timeout`, `memlock`, `template`,
//! `spawned_by`, `ioports` (I/O ports granted with `ioperm` before the
//! privileges are dropped, passed on in `INIT_IOPORTS`) and
//! `no_capabilities` (keep the uid, drop every capability), `restart`
//! (`always`, `on-failure`, `never`) and `heartbeat`. Unknown keys are
//! errors.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::path::Path;

use serde::Deserialize;

/// How init knows a service has finished starting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Ready when it sends `ready` on its control fd.
    Notify,
    /// Ready when every scheme it lists by exact name is registered (or it
    /// sends `ready`, for daemons whose scheme names are patterns).
    Scheme,
    /// Ready when it exits with status 0; a failure otherwise.
    Oneshot,
    /// Ready as soon as it is running.
    Simple,
}

/// What the supervisor does when a service ends by itself (it was not
/// stopped): the `restart` key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Start it again, whatever ended it.
    Always,
    /// Start it again after a failure: a non-zero exit, a signal, a hang.
    OnFailure,
    /// Mark it failed.
    #[default]
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    #[serde(skip)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Services that must be ready before this one starts.
    #[serde(default)]
    pub requires: Vec<String>,
    /// User to run as (from /etc/passwd); root when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// Scheme names this service may register; a trailing `*` matches any
    /// suffix (`disk.*`).
    #[serde(default)]
    pub schemes: Vec<String>,
    /// Start only when the kernel command line has this word (`lab.agent`
    /// matches `lab.agent` and `lab.agent=…`).
    #[serde(default)]
    pub condition_cmdline: Option<String>,
    /// Seconds to wait for readiness before declaring the start failed.
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout: u64,
    /// A template is never started at boot: an enumerator asks for instances
    /// of it (`spawn UNIT INSTANCE`), one per device, named `UNIT@INSTANCE`.
    /// `{instance}` in `args` and `schemes` is replaced by the instance name.
    #[serde(default)]
    pub template: bool,
    /// Services allowed to start instances of this template (`pcid`).
    #[serde(default)]
    pub spawned_by: Vec<String>,
    /// RLIMIT_MEMLOCK for the service, e.g. `"64M"`: VFIO pins a driver's DMA
    /// memory against it. Absent: the kernel default.
    #[serde(default)]
    pub memlock: Option<String>,
    #[serde(skip)]
    pub memlock_bytes: Option<u64>,
    /// I/O ports granted with `ioperm` before privileges are dropped:
    /// `["0x600-0x67f", "0xcf9"]` (hex, inclusive ranges or single ports).
    /// The service finds the grant in `INIT_IOPORTS`.
    #[serde(default)]
    pub ioports: Vec<String>,
    /// `ioports` parsed, plus what an enumerator granted an instance.
    #[serde(skip)]
    pub ioport_ranges: Vec<RangeInclusive<u16>>,
    /// For a template: the most an enumerator may grant an instance
    /// (`["0x70-0x77"]`), as MINIX's system.conf bounds each driver. A
    /// `spawn-io` asking for a port outside it is refused: the enumerator
    /// reports the device's resources, this line says what the driver may
    /// ever touch. Absent: no ports may be granted.
    #[serde(default)]
    pub grantable_ioports: Vec<String>,
    #[serde(skip)]
    pub grantable_ranges: Vec<RangeInclusive<u16>>,
    /// Keep the uid (root, for acpid) but drop every capability: bounding,
    /// permitted, effective, inheritable and ambient sets.
    #[serde(default)]
    pub no_capabilities: bool,
    /// `always`, `on-failure` or `never`; absent: `always` for templates
    /// (drivers), `never` otherwise.
    #[serde(default)]
    pub restart: Option<Restart>,
    #[serde(skip)]
    pub restart_policy: Restart,
    /// Whether init checks the service answers its heartbeat on the control
    /// channel (one that misses it is hung: killed, then restarted by its
    /// policy). Absent: on when the service is restarted at all and speaks
    /// the control protocol (`notify` and `scheme` units).
    #[serde(default)]
    pub heartbeat: Option<bool>,
    #[serde(skip)]
    pub heartbeats: bool,
}

fn default_ready_timeout() -> u64 {
    // Generous: under TCG a daemon's start-up runs 10-50x slower than native.
    60
}

impl Unit {
    /// Parses a unit file; an error is the 1-based line it is about (the
    /// key whose value is wrong; line 1 for the file as a whole) and why.
    pub fn parse(name: &str, text: &str) -> Result<Unit, (usize, String)> {
        let mut unit: Unit = toml::from_str(text).map_err(|e| {
            let (line, message) = daemon::config::toml_error(text, &e);
            (line.unwrap_or(1), message)
        })?;
        let at = |key: &str| key_line(text, key);
        unit.name = name.to_owned();
        if let Some(m) = &unit.memlock {
            unit.memlock_bytes = Some(
                parse_size(m).ok_or_else(|| (at("memlock"), format!("bad memlock size {m:?}")))?,
            );
        }
        unit.ioport_ranges = unit
            .ioports
            .iter()
            .map(|r| daemon::ports::parse_range(r))
            .collect::<Result<_, _>>()
            .map_err(|e| (at("ioports"), format!("bad ioports: {e}")))?;
        unit.grantable_ranges = unit
            .grantable_ioports
            .iter()
            .map(|r| daemon::ports::parse_range(r))
            .collect::<Result<_, _>>()
            .map_err(|e| {
                (
                    at("grantable_ioports"),
                    format!("bad grantable_ioports: {e}"),
                )
            })?;
        if !unit.template && !unit.grantable_ranges.is_empty() {
            return Err((
                at("grantable_ioports"),
                "grantable_ioports is only for template units".to_owned(),
            ));
        }
        if !unit.template && !unit.spawned_by.is_empty() {
            return Err((
                at("spawned_by"),
                "spawned_by is only for template units".to_owned(),
            ));
        }
        unit.restart_policy = unit.restart.unwrap_or(if unit.template {
            Restart::Always
        } else {
            Restart::Never
        });
        let talks = matches!(unit.kind, Kind::Notify | Kind::Scheme);
        unit.heartbeats = unit
            .heartbeat
            .unwrap_or(talks && unit.restart_policy != Restart::Never);
        if unit.heartbeats && !talks {
            return Err((
                at("heartbeat"),
                "heartbeat needs a notify or scheme unit (one that talks to init)".into(),
            ));
        }
        for pattern in &unit.schemes {
            let pattern = pattern.replace("{instance}", "x");
            let literal = pattern.strip_suffix('*').unwrap_or(&pattern);
            if literal.contains('*') || (!pattern.ends_with('*') && !valid_scheme_name(&pattern)) {
                return Err((at("schemes"), format!("bad scheme name {pattern:?}")));
            }
        }
        Ok(unit)
    }

    /// Whether every range of `ioports` lies inside one of the template's
    /// `grantable_ioports`.
    pub fn may_grant(&self, ioports: &[RangeInclusive<u16>]) -> bool {
        ioports.iter().all(|want| {
            self.grantable_ranges
                .iter()
                .any(|ok| ok.start() <= want.start() && want.end() <= ok.end())
        })
    }

    /// The concrete unit for one instance of this template: named
    /// `NAME@INSTANCE`, `{instance}` substituted, `extra_args` appended,
    /// `extra_ioports` added to the template's own port grant.
    pub fn instantiate(
        &self,
        instance: &str,
        extra_args: &[String],
        extra_ioports: &[RangeInclusive<u16>],
    ) -> Unit {
        let mut u = self.clone();
        u.ioport_ranges.extend(extra_ioports.iter().cloned());
        u.name = format!("{}@{instance}", self.name);
        u.template = false;
        u.spawned_by.clear();
        u.args = self
            .args
            .iter()
            .map(|a| a.replace("{instance}", instance))
            .chain(extra_args.iter().cloned())
            .collect();
        u.schemes = self
            .schemes
            .iter()
            .map(|p| p.replace("{instance}", instance))
            .collect();
        u
    }

    /// The template a unit was instantiated from (its own name otherwise).
    pub fn base_name(&self) -> &str {
        self.name.split('@').next().unwrap_or(&self.name)
    }

    /// Whether this unit may register `scheme`.
    pub fn allows_scheme(&self, scheme: &str) -> bool {
        valid_scheme_name(scheme)
            && self.schemes.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => scheme.starts_with(prefix),
                None => p == scheme,
            })
    }

    /// Scheme names listed exactly (not as patterns).
    pub fn literal_schemes(&self) -> impl Iterator<Item = &str> {
        self.schemes
            .iter()
            .filter(|p| !p.ends_with('*'))
            .map(String::as_str)
    }

    pub fn enabled_by(&self, cmdline: &str) -> bool {
        match &self.condition_cmdline {
            None => true,
            Some(word) => cmdline.split_whitespace().any(|w| {
                w == word
                    || w.strip_prefix(word.as_str())
                        .is_some_and(|r| r.starts_with('='))
            }),
        }
    }
}

/// The line of `key`'s value in a unit file that parsed (1 if it is absent).
fn key_line(text: &str, key: &str) -> usize {
    toml::from_str::<BTreeMap<String, toml::Spanned<toml::Value>>>(text)
        .ok()
        .and_then(|keys| {
            keys.get(key)
                .map(|v| daemon::config::line_of(text, v.span().start))
        })
        .unwrap_or(1)
}

/// `"64M"`, `"512K"`, `"1G"` or plain bytes.
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.as_bytes().last()? {
        b'K' | b'k' => (&t[..t.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&t[..t.len() - 1], 1 << 20),
        b'G' | b'g' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// A scheme name becomes one path component under `/scheme`.
pub fn valid_scheme_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Loads every `*.toml` in `dir`. A unit that does not parse is reported and
/// skipped; it never stops the others.
pub fn load_dir(dir: &Path) -> (Vec<Unit>, Vec<String>) {
    let (files, unreadable) = daemon::config::read_toml_dir(dir);
    let mut errors: Vec<String> = unreadable
        .into_iter()
        .map(|(file, message)| format!("{file}: {message}"))
        .collect();
    let mut units = Vec::new();
    for f in files {
        let name = f
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match Unit::parse(&name, &f.text) {
            Ok(u) => units.push(u),
            Err((line, e)) => errors.push(format!("{}:{line}: {e}", f.path.display())),
        }
    }
    (units, errors)
}

/// Orders units so each comes after what it requires. Units with a missing
/// dependency or in a cycle are returned as errors and left out.
pub fn order(units: Vec<Unit>) -> (Vec<Unit>, Vec<String>) {
    let mut by_name: HashMap<String, Unit> =
        units.into_iter().map(|u| (u.name.clone(), u)).collect();
    let mut names: Vec<String> = by_name.keys().cloned().collect();
    names.sort();
    let mut state: HashMap<String, u8> = HashMap::new(); // 1 visiting, 2 done, 3 bad
    let mut ordered = Vec::new();
    let mut errors = Vec::new();

    fn visit(
        name: &str,
        by_name: &HashMap<String, Unit>,
        state: &mut HashMap<String, u8>,
        ordered: &mut Vec<String>,
        errors: &mut Vec<String>,
    ) -> bool {
        match state.get(name) {
            Some(2) => return true,
            Some(1) => {
                errors.push(format!("{name}: dependency cycle"));
                return false;
            }
            Some(_) => return false,
            None => {}
        }
        let Some(unit) = by_name.get(name) else {
            return false;
        };
        state.insert(name.to_owned(), 1);
        let mut ok = true;
        for dep in &unit.requires {
            if !by_name.contains_key(dep) {
                errors.push(format!("{name}: requires unknown service {dep:?}"));
                ok = false;
            } else if !visit(dep, by_name, state, ordered, errors) {
                if ok {
                    errors.push(format!("{name}: not started, {dep} cannot start"));
                }
                ok = false;
            }
        }
        state.insert(name.to_owned(), if ok { 2 } else { 3 });
        if ok {
            ordered.push(name.to_owned());
        }
        ok
    }

    for name in &names {
        visit(name, &by_name, &mut state, &mut ordered, &mut errors);
    }
    let units = ordered.iter().filter_map(|n| by_name.remove(n)).collect();
    (units, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, requires: &[&str]) -> Unit {
        let deps: Vec<String> = requires.iter().map(|d| format!("{d:?}")).collect();
        Unit::parse(
            name,
            &format!(
                "command = \"/bin/x\"\ntype = \"notify\"\nrequires = [{}]\n",
                deps.join(",")
            ),
        )
        .unwrap()
    }

    #[test]
    fn parses_a_full_unit() {
        let u = Unit::parse(
            "fifod",
            r#"
description = "FIFO scheme"
command = "/bin/fifod"
args = ["-v"]
env = { RUST_LOG = "debug" }
type = "scheme"
user = "fifo"
schemes = ["fifo", "disk.*"]
condition_cmdline = "lab.agent"
ready_timeout = 5
"#,
        )
        .unwrap();
        assert_eq!(u.kind, Kind::Scheme);
        assert_eq!(u.user.as_deref(), Some("fifo"));
        assert!(u.allows_scheme("fifo"));
        assert!(u.allows_scheme("disk.pci-0000-00-04.0_virtio_blk"));
        assert!(!u.allows_scheme("fifo2"));
        assert!(!u.allows_scheme("disk./etc"));
        assert!(!u.allows_scheme("disk"));
        assert_eq!(u.literal_schemes().collect::<Vec<_>>(), ["fifo"]);
        assert_eq!(u.ready_timeout, 5);
    }

    #[test]
    fn restart_and_heartbeat_defaults() {
        let parse = |text: &str| Unit::parse("x", &format!("command = \"/bin/x\"\n{text}"));
        let driver = parse("type = \"notify\"\ntemplate = true\n").unwrap();
        assert_eq!(driver.restart_policy, Restart::Always);
        assert!(driver.heartbeats);
        let plain = parse("type = \"notify\"\n").unwrap();
        assert_eq!(plain.restart_policy, Restart::Never);
        assert!(
            !plain.heartbeats,
            "nothing restarts it, so a hang is not acted on"
        );
        let scheme = parse("type = \"scheme\"\nrestart = \"on-failure\"\n").unwrap();
        assert_eq!(scheme.restart_policy, Restart::OnFailure);
        assert!(scheme.heartbeats);
        let quiet = parse("type = \"scheme\"\nrestart = \"always\"\nheartbeat = false\n").unwrap();
        assert!(!quiet.heartbeats);
        let simple = parse("type = \"simple\"\nrestart = \"always\"\n").unwrap();
        assert_eq!(simple.restart_policy, Restart::Always);
        assert!(
            !simple.heartbeats,
            "a simple unit has no control channel to answer on"
        );
        assert!(parse("type = \"simple\"\nheartbeat = true\n").is_err());
        assert!(parse("type = \"notify\"\nrestart = \"sometimes\"\n").is_err());
    }

    #[test]
    fn rejects_unknown_keys_and_bad_types() {
        assert!(Unit::parse("x", "command = \"/bin/x\"\ntype = \"notify\"\nfoo = 1\n").is_err());
        assert!(Unit::parse("x", "command = \"/bin/x\"\ntype = \"daemon\"\n").is_err());
        assert!(Unit::parse("x", "type = \"notify\"\n").is_err());
        assert!(Unit::parse(
            "x",
            "command = \"/bin/x\"\ntype = \"notify\"\nschemes = [\"a/b\"]\n"
        )
        .is_err());
        assert!(Unit::parse(
            "x",
            "command = \"/bin/x\"\ntype = \"notify\"\nschemes = [\"a*b*\"]\n"
        )
        .is_err());
    }

    #[test]
    fn templates_instantiate_per_device() {
        let t = Unit::parse(
            "virtio-blkd",
            r#"
command = "/bin/virtio-blkd"
args = ["--name", "{instance}"]
type = "notify"
template = true
spawned_by = ["pcid"]
schemes = ["disk.{instance}_virtio_blk"]
memlock = "64M"
"#,
        )
        .unwrap();
        assert_eq!(t.memlock_bytes, Some(64 << 20));
        let u = t.instantiate("pci-0000-00-04.0", &["-v".to_owned()], &[]);
        assert_eq!(u.name, "virtio-blkd@pci-0000-00-04.0");
        assert_eq!(u.base_name(), "virtio-blkd");
        assert!(!u.template);
        assert_eq!(u.args, ["--name", "pci-0000-00-04.0", "-v"]);
        assert!(u.allows_scheme("disk.pci-0000-00-04.0_virtio_blk"));
        assert!(!u.allows_scheme("disk.pci-0000-00-05.0_virtio_blk"));
        assert!(u.ioport_ranges.is_empty());
        assert!(Unit::parse(
            "x",
            "command = \"/bin/x\"\ntype = \"notify\"\nspawned_by = [\"pcid\"]\n"
        )
        .is_err());
        assert!(Unit::parse(
            "x",
            "command = \"/bin/x\"\ntype = \"notify\"\nmemlock = \"lots\"\n"
        )
        .is_err());
    }

    #[test]
    fn port_grants_and_capabilities() {
        let u = Unit::parse(
            "acpid",
            "command = \"/bin/acpid\"\ntype = \"notify\"\n\
             ioports = [\"0x600-0x67f\", \"0xcf9\"]\nno_capabilities = true\n",
        )
        .unwrap();
        assert_eq!(u.ioport_ranges, [0x600..=0x67f, 0xcf9..=0xcf9]);
        assert!(u.no_capabilities);
        let plain = unit("x", &[]);
        assert!(plain.ioport_ranges.is_empty() && !plain.no_capabilities);
        for bad in [
            "\"0x70-\"",
            "\"0x71-0x70\"",
            "\"0x10000\"",
            "\"rtc\"",
            "0x70",
        ] {
            let e = Unit::parse(
                "x",
                &format!("command = \"/bin/x\"\ntype = \"notify\"\nioports = [{bad}]\n"),
            );
            assert!(e.is_err(), "{bad}");
        }
        // An instance gets the template's ports plus the enumerator's.
        let t = Unit::parse(
            "rtcd",
            "command = \"/bin/rtcd\"\ntype = \"notify\"\ntemplate = true\n\
             spawned_by = [\"acpid\"]\nioports = [\"0x80\"]\n",
        )
        .unwrap();
        let i = t.instantiate("acpi-PNP0B00-0", &[], &[0x70..=0x71]);
        assert_eq!(i.ioport_ranges, [0x80..=0x80, 0x70..=0x71]);
        assert_eq!(t.ioport_ranges, [0x80..=0x80], "the template is unchanged");
    }

    #[test]
    fn cmdline_conditions() {
        let mut u = unit("a", &[]);
        assert!(u.enabled_by(""));
        u.condition_cmdline = Some("lab.agent".into());
        assert!(u.enabled_by("console=ttyS0 lab.agent=ttyS1"));
        assert!(u.enabled_by("lab.agent"));
        assert!(!u.enabled_by("lab.agentx=1 console=ttyS0"));
    }

    #[test]
    fn orders_dependencies_first() {
        let (units, errors) = order(vec![unit("c", &["b"]), unit("b", &["a"]), unit("a", &[])]);
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<_> = units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn cycles_and_missing_dependencies_are_left_out() {
        let (units, errors) = order(vec![
            unit("a", &["b"]),
            unit("b", &["a"]),
            unit("c", &["nope"]),
            unit("d", &["c"]),
            unit("e", &[]),
        ]);
        let names: Vec<_> = units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["e"]);
        assert!(errors.iter().any(|e| e.contains("cycle")), "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("unknown service \"nope\"")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.starts_with("d:")), "{errors:?}");
    }

    /// Each error names the line of the key it is about.
    #[test]
    fn errors_name_the_line_of_their_key() {
        let cases: &[(&str, usize)] = &[
            (
                "command = \"/bin/x\"\ntype = \"notify\"\nmemlock = \"lots\"\n",
                3,
            ),
            (
                "command = \"/bin/x\"\ntype = \"notify\"\n\nioports = [\"zz\"]\n",
                4,
            ),
            (
                "type = \"simple\"\ncommand = \"/bin/x\"\nheartbeat = true\n",
                3,
            ),
            (
                "command = \"/bin/x\"\nspawned_by = [\"pcid\"]\ntype = \"notify\"\n",
                2,
            ),
            (
                "command = \"/bin/x\"\ntype = \"scheme\"\nschemes = [\"a/b\"]\n",
                3,
            ),
            ("command = \"/bin/x\"\ntype = \"notify\"\nfoo = 1\n", 3),
            ("command = \"/bin/x\"\ntype = = 1\n", 2),
        ];
        for (text, line) in cases {
            let (at, message) = Unit::parse("x", text).unwrap_err();
            assert_eq!(at, *line, "{text:?}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    mod hostile {
        //! Random and damaged unit files: parsing never panics, every
        //! error has a line within the file and a one-line message, and
        //! valid files give their keys back. Fixed seed, no failure
        //! files; `PROPTEST_RNG_SEED` explores others.

        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        struct Keys {
            command: String,
            kind: &'static str,
            args: Vec<String>,
            memlock_kib: Option<u32>,
            ioports: Vec<(u16, u16)>,
            ready_timeout: u64,
        }

        fn keys() -> impl Strategy<Value = Keys> {
            (
                "/[a-z/]{1,12}",
                prop::sample::select(vec!["notify", "scheme", "oneshot", "simple"]),
                prop::collection::vec("[ -~&&[^\"\\\\]]{0,8}", 0..3),
                prop::option::of(any::<u32>()),
                prop::collection::vec((any::<u16>(), any::<u16>()), 0..3),
                any::<u32>(),
            )
                .prop_map(|(command, kind, args, memlock_kib, ports, t)| Keys {
                    command,
                    kind,
                    args,
                    memlock_kib,
                    ioports: ports
                        .into_iter()
                        .map(|(a, b)| (a.min(b), a.max(b)))
                        .collect(),
                    ready_timeout: t.into(),
                })
        }

        fn text(k: &Keys) -> String {
            let q = |w: &String| format!("\"{w}\"");
            let mut t = format!("command = \"{}\"\ntype = \"{}\"\n", k.command, k.kind);
            t += &format!(
                "args = [{}]\n",
                k.args.iter().map(q).collect::<Vec<_>>().join(", ")
            );
            if let Some(m) = k.memlock_kib {
                t += &format!("memlock = \"{m}K\"\n");
            }
            let ports: Vec<String> = k
                .ioports
                .iter()
                .map(|(a, b)| format!("\"{a:#x}-{b:#x}\""))
                .collect();
            t += &format!(
                "ioports = [{}]\nready_timeout = {}\n",
                ports.join(", "),
                k.ready_timeout
            );
            t
        }

        fn check_error(text: &str, (line, message): &(usize, String)) -> Result<(), TestCaseError> {
            prop_assert!(
                *line >= 1 && *line <= text.lines().count().max(1) + 1,
                "line {} of {:?}",
                line,
                text
            );
            prop_assert!(
                !message.is_empty() && !message.contains('\n'),
                "{:?}",
                message
            );
            Ok(())
        }

        proptest! {
            #![proptest_config(seeded::config(256, 0x0417))]

            #[test]
            fn valid_units_give_their_keys(k in keys()) {
                let t = text(&k);
                let u = Unit::parse("x", &t).map_err(|e| TestCaseError::fail(format!("{e:?} in {t:?}")))?;
                prop_assert_eq!(&u.command, &k.command);
                prop_assert_eq!(&u.args, &k.args);
                prop_assert_eq!(u.memlock_bytes, k.memlock_kib.map(|m| u64::from(m) << 10));
                let ranges: Vec<_> = k.ioports.iter().map(|&(a, b)| a..=b).collect();
                prop_assert_eq!(u.ioport_ranges, ranges);
                prop_assert_eq!(u.ready_timeout, k.ready_timeout);
            }

            #[test]
            fn damaged_units_are_units_or_an_error_with_a_line(
                k in keys(),
                edits in prop::collection::vec(
                    (any::<usize>(), prop::sample::select(vec![
                        "", "\"", "[", "]", "=", "\n", "[x]\n", "memlock = \"9999999999G\"\n",
                        "heartbeat = true\n", "template = true\n", "spawned_by = [\"p\"]\n",
                        "schemes = [\"a*b\"]\n", "-", "0x", "'", "\\", "\u{e9}", "#", "{",
                    ]), 0..6usize),
                    1..5,
                ),
            ) {
                let mut t = text(&k);
                for (at, piece, cut) in edits {
                    let mut i = at % (t.len() + 1);
                    while !t.is_char_boundary(i) {
                        i -= 1;
                    }
                    let mut end = (i + cut).min(t.len());
                    while !t.is_char_boundary(end) {
                        end -= 1;
                    }
                    t.replace_range(i..end, piece);
                }
                if let Err(e) = Unit::parse("x", &t) {
                    check_error(&t, &e)?;
                }
            }

            #[test]
            fn random_text_is_a_unit_or_an_error_with_a_line(t in "(.|\n){0,200}") {
                if let Err(e) = Unit::parse("x", &t) {
                    check_error(&t, &e)?;
                }
            }
        }
    }
}
