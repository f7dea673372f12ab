//! Configuration directories: init's units, pcid's and acpid's driver rules
//! are all `*.toml` files in one directory, read in name order, where one
//! bad file is reported with its line and never stops the others.

use std::path::{Path, PathBuf};

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
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
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
}
