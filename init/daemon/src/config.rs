//! Configuration directories: init's units, pcid's and acpid's driver rules
//! are all `*.toml` files in one directory, read in name order, where one
//! bad file is reported with its line and never stops the others.
//!
//! Driver rules are parsed here once for both enumerators ([`parse_rules`],
//! [`load_rules`]): the `[[drivers]]` tables, their `name` and `command`,
//! and the errors. What a rule matches is each enumerator's own
//! ([`RuleKeys`]: PCI ids and classes in `pcid/src/rules.rs`, ACPI ids in
//! `acpid/src/platform.rs`).

use std::fmt;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::value::{MapAccessDeserializer, StringDeserializer};
use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// One readable configuration file.
pub struct ConfigFile {
    pub path: PathBuf,
    pub text: String,
}

/// Reads every `*.toml` in `dir`, sorted by name. Files that cannot be read
/// are returned as `(path, message)` errors; a missing directory is empty
/// and no error.
pub fn read_toml_dir(dir: &Path) -> (Vec<ConfigFile>, Vec<(String, String)>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (files, errors),
        Err(e) => {
            errors.push((dir.display().to_string(), e.to_string()));
            return (files, errors);
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push(ConfigFile { path, text }),
            Err(e) => errors.push((path.display().to_string(), e.to_string())),
        }
    }
    (files, errors)
}

/// The 1-based line of byte `pos` in `text` (for `file:line:` errors).
pub fn line_of(text: &str, pos: usize) -> usize {
    let pos = pos.min(text.len());
    text.as_bytes()[..pos]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A `toml` parse error as `(line, message)`, the message on one line
/// (toml's own may span several; logs want one).
pub fn toml_error(text: &str, e: &toml::de::Error) -> (Option<usize>, String) {
    let mut message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    if message.is_empty() {
        // toml gives no words for some bytes (a lone carriage return):
        // name the character rather than print an error without a reason.
        message = match e.span().and_then(|s| text.get(s.start..)?.chars().next()) {
            Some(c) => format!("unexpected character {c:?}"),
            None => "not valid TOML".to_owned(),
        };
    }
    (e.span().map(|s| line_of(text, s.start)), message)
}

/// What a driver rule of pcid's or acpid's says besides what it matches:
/// where it is written, its name, and the driver to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCommand {
    /// The file it came from and the line of its table (for logs).
    pub file: String,
    pub line: usize,
    pub name: Option<String>,
    /// Never empty (checked when parsed): the driver's init template
    /// unit, then its arguments.
    pub command: Vec<String>,
}

impl RuleCommand {
    /// The init template unit that runs the driver.
    pub fn unit(&self) -> &str {
        self.command.first().map_or("", String::as_str)
    }

    /// Arguments after the unit name.
    pub fn args(&self) -> &[String] {
        self.command.get(1..).unwrap_or(&[])
    }

    /// How logs name the rule: `"rtc" (rtc.toml:3)`, or `rtc.toml:3`.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(n) => format!("{n:?} ({}:{})", self.file, self.line),
            None => format!("{}:{}", self.file, self.line),
        }
    }
}

/// The keys of one enumerator's rules besides `name` and `command`: what
/// says which devices the rule is for.
pub trait RuleKeys: Sized {
    /// The keys as TOML gives them; derive it with
    /// `#[serde(deny_unknown_fields)]` and `Option` fields.
    type Raw: DeserializeOwned;
    /// Every key a rule may have, `name` and `command` included, in the
    /// order an unknown-key error lists them.
    const KEYS: &'static [&'static str];
    /// Checks the keys of the rule whose table starts at byte `rule`; an
    /// error names the byte it is about (for its line).
    fn from_raw(raw: Self::Raw, rule: usize) -> Result<Self, (usize, String)>;
}

/// One `[[drivers]]` entry: the driver it starts and what it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule<K> {
    /// Where it is written, its name, the driver to start.
    pub driver: RuleCommand,
    pub keys: K,
}

/// A rule file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The file's name (its path when it could not be read).
    pub file: String,
    /// 1-based, when the error has a place.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for RuleError {}

/// A command word or an id: printable ASCII without spaces, because it
/// travels as one word on init's control channel.
pub fn valid_word(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_graphic())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "R: Deserialize<'de>"))]
struct RawFile<R> {
    #[serde(default)]
    drivers: Vec<Spanned<R>>,
}

/// One rule table: the shared keys read here, the rest by `K::Raw`.
struct RawRule<K: RuleKeys> {
    name: Option<String>,
    command: Option<Spanned<Vec<String>>>,
    keys: K::Raw,
}

impl<'de, K: RuleKeys> Deserialize<'de> for RawRule<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RuleVisitor::<K>(PhantomData))
    }
}

struct RuleVisitor<K>(PhantomData<K>);

impl<'de, K: RuleKeys> Visitor<'de> for RuleVisitor<K> {
    type Value = RawRule<K>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a rule table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRule<K>, A::Error> {
        let mut name = None;
        let mut command = None;
        // One pass over the table, so every error keeps toml's position:
        // `K::Raw` sees the table without `name` and `command`.
        let keys = K::Raw::deserialize(MapAccessDeserializer::new(SharedKeys {
            map: &mut map,
            known: K::KEYS,
            name: &mut name,
            command: &mut command,
        }))?;
        Ok(RawRule {
            name,
            command,
            keys,
        })
    }
}

/// A rule table as `K::Raw` sees it: `name` and `command` taken out on the
/// way into the caller's slots, unknown keys refused at the key.
struct SharedKeys<'a, A> {
    map: &'a mut A,
    known: &'static [&'static str],
    name: &'a mut Option<String>,
    command: &'a mut Option<Spanned<Vec<String>>>,
}

enum Key<V> {
    Name,
    Command,
    Other(V),
}

/// Reads a key inside toml's own key deserializer, so an unknown key's
/// error carries that key's line.
struct KeySeed<'s, S> {
    inner: &'s mut Option<S>,
    known: &'static [&'static str],
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, S> {
    type Value = Key<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        use serde::de::Error;
        let key = String::deserialize(d)?;
        match key.as_str() {
            "name" => Ok(Key::Name),
            "command" => Ok(Key::Command),
            k if !self.known.contains(&k) => Err(D::Error::unknown_field(k, self.known)),
            _ => match self.inner.take() {
                Some(seed) => seed
                    .deserialize(StringDeserializer::<D::Error>::new(key))
                    .map(Key::Other),
                // Not reached: the first other key ends `next_key_seed`.
                None => Err(D::Error::custom("a rule key was read twice")),
            },
        }
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SharedKeys<'_, A> {
    type Error = A::Error;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, A::Error> {
        let mut seed = Some(seed);
        loop {
            let key = self.map.next_key_seed(KeySeed {
                inner: &mut seed,
                known: self.known,
            })?;
            match key {
                None => return Ok(None),
                Some(Key::Name) => *self.name = self.map.next_value()?,
                Some(Key::Command) => *self.command = self.map.next_value()?,
                Some(Key::Other(k)) => return Ok(Some(k)),
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// Parses one rule file; `file` names it in rules and errors. Every
/// command word must be a [`valid_word`]; the first names the unit.
pub fn parse_rules<K: RuleKeys>(file: &str, text: &str) -> Result<Vec<Rule<K>>, RuleError> {
    let err = |pos: usize, message: String| RuleError {
        file: file.to_owned(),
        line: Some(line_of(text, pos)),
        message,
    };
    let raw: RawFile<RawRule<K>> = toml::from_str(text).map_err(|e| {
        let (line, message) = toml_error(text, &e);
        RuleError {
            file: file.to_owned(),
            line,
            message,
        }
    })?;
    let mut rules = Vec::new();
    for spanned in raw.drivers {
        let pos = spanned.span().start;
        let r = spanned.into_inner();
        let command = match r.command {
            None => return Err(err(pos, "rule has no `command`".into())),
            Some(c) if c.get_ref().first().is_none_or(|u| !valid_word(u)) => {
                return Err(err(
                    c.span().start,
                    "`command` must start with the driver's unit name".into(),
                ))
            }
            Some(c) if !c.get_ref().iter().all(|w| valid_word(w)) => {
                return Err(err(
                    c.span().start,
                    "`command` words must be non-empty, without spaces or control characters"
                        .into(),
                ))
            }
            Some(c) => c.into_inner(),
        };
        let keys = K::from_raw(r.keys, pos).map_err(|(at, message)| err(at, message))?;
        rules.push(Rule {
            driver: RuleCommand {
                file: file.to_owned(),
                line: line_of(text, pos),
                name: r.name,
                command,
            },
            keys,
        });
    }
    Ok(rules)
}

/// Reads every `*.toml` in `dir` in name order, each named by its file
/// name. Returns the usable rules and one error per file that could not be
/// used (those files give no rules). A missing directory means no rules
/// and no error.
pub fn load_rules<K: RuleKeys>(dir: &Path) -> (Vec<Rule<K>>, Vec<RuleError>) {
    let (files, unreadable) = read_toml_dir(dir);
    let mut errors: Vec<RuleError> = unreadable
        .into_iter()
        .map(|(file, message)| RuleError {
            file,
            line: None,
            message,
        })
        .collect();
    let mut rules = Vec::new();
    for f in files {
        let name = f
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match parse_rules(&name, &f.text) {
            Ok(r) => rules.extend(r),
            Err(e) => errors.push(e),
        }
    }
    (rules, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_toml_errors() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
        let text = "x = 1\ny = [\n";
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        let (line, msg) = toml_error(text, &e);
        assert!(line.is_some_and(|l| l >= 2), "{line:?}");
        assert!(!msg.contains('\n'), "{msg}");
        // toml's own message for a stray carriage return is empty.
        let text = "a = 1\n\r x\n";
        let e = toml::from_str::<toml::Table>(text).unwrap_err();
        assert_eq!(
            toml_error(text, &e),
            (Some(2), "unexpected character '\\r'".into())
        );
    }

    #[test]
    fn directory_in_name_order_missing_is_empty() {
        let dir = std::env::temp_dir().join(format!("daemon-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.toml"), "b").unwrap();
        std::fs::write(dir.join("a.toml"), "a").unwrap();
        std::fs::write(dir.join("README"), "not toml").unwrap();
        let (files, errors) = read_toml_dir(&dir);
        let texts: Vec<&str> = files.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(texts, ["a", "b"]);
        assert!(errors.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read_toml_dir(&dir).0.is_empty() && read_toml_dir(&dir).1.is_empty());
    }

    /// A stand-in enumerator: rules match on one optional `class`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Class(Option<u8>);

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawClass {
        class: Option<u8>,
    }

    impl RuleKeys for Class {
        type Raw = RawClass;
        const KEYS: &'static [&'static str] = &["name", "class", "command"];
        fn from_raw(raw: RawClass, _rule: usize) -> Result<Class, (usize, String)> {
            Ok(Class(raw.class))
        }
    }

    fn parse(text: &str) -> Result<Vec<Rule<Class>>, RuleError> {
        parse_rules("x.toml", text)
    }

    #[test]
    fn rules_name_their_file_line_and_command() {
        let r = parse(
            "# comment\n[[drivers]]\nname = \"rtc\"\nclass = 1\ncommand = [\"rtcd\", \"-v\"]\n\n\
             [[drivers]]\ncommand = [\"uartd\"]\n",
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].driver.file.as_str(), r[0].driver.line), ("x.toml", 2));
        assert_eq!(r[0].driver.name.as_deref(), Some("rtc"));
        assert_eq!(r[0].keys, Class(Some(1)));
        assert_eq!(
            (r[0].driver.unit(), r[0].driver.args()),
            ("rtcd", &["-v".to_owned()][..])
        );
        assert_eq!(r[0].driver.describe(), "\"rtc\" (x.toml:2)");
        assert_eq!(r[1].driver.describe(), "x.toml:7");
        assert_eq!(r[1].keys, Class(None));
    }

    #[test]
    fn empty_file_has_no_rules() {
        assert_eq!(
            parse_rules::<Class>("e.toml", "# nothing\n"),
            Ok(Vec::new())
        );
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            // syntax errors
            ("[[drivers]]\nclass = = 1\ncommand = [\"x\"]\n", 2, ""),
            (
                "[[drivers]]\nclass = 1\ncommand = [\"x\"\n",
                4,
                "expected `]`",
            ),
            // a key the enumerator does not know, listed with the known ones
            (
                "[[drivers]]\ncommand = [\"x\"]\nclas = 1\n",
                3,
                "unknown field `clas`, expected one of `name`, `class`, `command`",
            ),
            // a match key of the wrong type or range
            ("[[drivers]]\ncommand = [\"x\"]\n\n\nclass = 300\n", 5, ""),
            ("[[drivers]]\nname = 1\ncommand = [\"x\"]\n", 2, ""),
            // unknown top-level table
            ("[driver]\nclass = 1\n", 1, "driver"),
            // missing command: the rule's own line
            (
                "[[drivers]]\ncommand = [\"x\"]\n\n[[drivers]]\nclass = 1\n",
                4,
                "command",
            ),
            // empty command
            ("[[drivers]]\nclass = 1\ncommand = []\n", 3, "unit name"),
            ("[[drivers]]\ncommand = [\"\"]\n", 2, "unit name"),
        ];
        for (text, line, needle) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, Some(*line), "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
            assert!(
                e.to_string().starts_with(&format!("x.toml:{line}: ")),
                "{e}"
            );
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    /// Each word goes to init as one word of its control channel, so a
    /// space or control character would split or corrupt the request.
    #[test]
    fn command_words_with_spaces_are_refused() {
        for (command, needle) in [
            ("[\"x\", \"a b\"]", "spaces"),
            ("[\"x\", \"\"]", "non-empty"),
            ("[\"x\", \"a\\tb\"]", "control"),
            ("[\"virtio blkd\"]", "unit name"),
        ] {
            let text = format!("[[drivers]]\ncommand = {command}\n");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.line, Some(2), "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
        assert!(parse("[[drivers]]\ncommand = [\"x\", \"--mem\", \"0x70+0x8\"]\n").is_ok());
    }

    #[test]
    fn a_bad_file_is_reported_and_skipped() {
        let dir = std::env::temp_dir().join(format!("daemon-rules-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.toml"),
            "[[drivers]]\ncommand = [\"a\"]\nclass = \n",
        )
        .unwrap();
        std::fs::write(dir.join("b.toml"), "[[drivers]]\ncommand = [\"b\"]\n").unwrap();
        std::fs::write(dir.join("c.toml"), "[[drivers]]\ncommand = [\"c\"]\n").unwrap();
        std::fs::write(dir.join("README"), "not a rule file").unwrap();
        let (rules, errors) = load_rules::<Class>(&dir);
        assert_eq!(
            rules.iter().map(|r| r.driver.unit()).collect::<Vec<_>>(),
            ["b", "c"],
            "name order"
        );
        assert_eq!(rules[0].driver.file, "b.toml");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, "a.toml", "{}", errors[0]);
        assert_eq!(errors[0].line, Some(3), "{}", errors[0]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(load_rules::<Class>(&dir), (Vec::new(), Vec::new()));
    }

    mod hostile {
        //! Random and damaged rule files: parsing never panics, and every
        //! error names `file:line` on one line. Valid files give their
        //! rules back. Fixed seed, no failure files; `PROPTEST_RNG_SEED`
        //! explores others.

        use super::*;
        use proptest::prelude::*;

        /// What one generated rule says: its name, class and command.
        type RuleSpec = (Option<String>, Option<u8>, Vec<String>);

        /// A valid rule file with `n` rules and what it says.
        fn rule_file() -> impl Strategy<Value = (String, Vec<RuleSpec>)> {
            prop::collection::vec(
                (
                    prop::option::of("[a-z ]{0,8}"),
                    prop::option::of(any::<u8>()),
                    prop::collection::vec("[!-~&&[^\"\\\\]]{1,8}", 1..4),
                ),
                0..4,
            )
            .prop_map(|rules| {
                let mut text = String::from("# rules\n");
                for (name, class, command) in &rules {
                    text += "\n[[drivers]]\n";
                    if let Some(n) = name {
                        text += &format!("name = \"{n}\"\n");
                    }
                    if let Some(c) = class {
                        text += &format!("class = {c}\n");
                    }
                    let words: Vec<String> = command.iter().map(|w| format!("\"{w}\"")).collect();
                    text += &format!("command = [{}]\n", words.join(", "));
                }
                (text, rules)
            })
        }

        fn check_error(text: &str, e: &RuleError) -> Result<(), TestCaseError> {
            let line = e
                .line
                .ok_or_else(|| TestCaseError::fail(format!("no line: {e} for {text:?}")))?;
            prop_assert!(
                line >= 1 && line <= text.lines().count().max(1) + 1,
                "line {} of {:?}",
                line,
                text
            );
            prop_assert!(!e.message.is_empty(), "no reason given for {:?}", text);
            let shown = e.to_string();
            prop_assert!(shown.starts_with(&format!("x.toml:{line}: ")), "{}", shown);
            prop_assert!(!shown.contains('\n'), "{}", shown);
            Ok(())
        }

        proptest! {
            #![proptest_config(seeded::config(256, 0xc0f1))]

            #[test]
            fn valid_rule_files_give_their_rules(file in rule_file()) {
                let (text, rules) = file;
                let got = parse(&text).map_err(|e| TestCaseError::fail(format!("{e} in {text:?}")))?;
                prop_assert_eq!(got.len(), rules.len());
                for (r, (name, class, command)) in got.iter().zip(&rules) {
                    prop_assert_eq!(&r.driver.name, name);
                    prop_assert_eq!(&r.keys, &Class(*class));
                    prop_assert_eq!(&r.driver.command, command);
                }
            }

            #[test]
            fn damaged_rule_files_are_rules_or_an_error_with_a_line(
                file in rule_file(),
                edits in prop::collection::vec(
                    (any::<usize>(), prop::sample::select(vec![
                        "", "\"", "[", "]", "=", "\n", "[[drivers]]\n", "clas", "300", "-1",
                        "[\"a b\"]", "{", "}", ",", "'", "\\", "\u{e9}", "\t", "#",
                    ]), 0..6usize),
                    1..5,
                ),
            ) {
                let (mut text, _) = file;
                for (at, piece, cut) in edits {
                    let mut i = at % (text.len() + 1);
                    while !text.is_char_boundary(i) {
                        i -= 1;
                    }
                    let mut end = (i + cut).min(text.len());
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.replace_range(i..end, piece);
                }
                if let Err(e) = parse(&text) {
                    check_error(&text, &e)?;
                }
            }

            #[test]
            fn random_text_is_rules_or_an_error_with_a_line(text in "(.|\n){0,200}") {
                if let Err(e) = parse(&text) {
                    check_error(&text, &e)?;
                }
            }
        }
    }
}
