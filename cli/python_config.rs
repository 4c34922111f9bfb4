//! Python stormlock 0.4.1's config file (`.stormlock.cfg`), recognised so
//! that a `STORMLOCK_CONFIG` (or `-c`) left pointing at one keeps working
//! during a migration instead of failing every command with a TOML error.
//!
//! Python stormlock reads it with `configparser.ConfigParser`
//! (`stormlock/lock.py`, `load_lock`): `backend`, `principal` and `ttl` come
//! from the section named after the resource, else from the section
//! `[default]` (each also inheriting `[DEFAULT]`), and the backend's
//! settings from `[backend.TYPE]` (and `[backend.TYPE.PARAM]`). Of these,
//! `principal` and `ttl` mean here what they meant there; the backend is
//! the daemon's business, so its sections are ignored.
//!
//! The INI reading follows `ConfigParser`'s defaults: `=` or `:` between
//! key and value, keys folded to lower case, `#` and `;` comment lines,
//! indented continuation lines, `%(name)s` and `%%` interpolation, and
//! duplicate sections or keys refused.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// `ConfigParser`'s section of defaults, inherited by every other section.
const DEFAULTS: &str = "DEFAULT";
/// The section Python stormlock falls back to when the resource has none.
const FALLBACK: &str = "default";
/// How deep `%(name)s` may nest, as `configparser.MAX_INTERPOLATION_DEPTH`.
const MAX_INTERPOLATION_DEPTH: usize = 10;

/// A file in Python stormlock's format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonConfig {
    /// `[DEFAULT]`'s keys.
    defaults: HashMap<String, String>,
    /// Every other section's own keys.
    sections: HashMap<String, HashMap<String, String>>,
}

/// The settings this CLI takes from a Python stormlock file for one
/// resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PythonSettings {
    /// Who Python stormlock said we are.
    pub principal: Option<String>,
    /// The default TTL.
    pub ttl: Option<Duration>,
}

impl PythonConfig {
    /// `text` as Python stormlock's config, when it is one: not TOML, INI
    /// that `ConfigParser` reads, and `backend` set in a section Python
    /// stormlock looks in (every file it can use sets it there).
    pub fn recognise(text: &str) -> Option<Self> {
        if text.parse::<toml::Table>().is_ok() {
            return None;
        }
        let config = parse_ini(text)?;
        let sets_backend = config.defaults.contains_key("backend")
            || config
                .sections
                .iter()
                .any(|(name, keys)| !name.starts_with("backend.") && keys.contains_key("backend"));
        sets_backend.then_some(config)
    }

    /// Python stormlock's `_get_cfg_value`: `name` from the resource's
    /// section, else from `[default]`; an empty value counts as unset.
    /// Without a resource (`list`, `watch`), `[default]` alone.
    pub fn value(&self, resource: Option<&str>, name: &str) -> Result<Option<String>, String> {
        for section in resource.into_iter().chain([FALLBACK]) {
            if let Some(value) = self.get(section, name)?.filter(|v| !v.is_empty()) {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// The principal and TTL for `resource`; `file` names the file in
    /// messages.
    pub fn settings(&self, resource: Option<&str>, file: &Path) -> Result<PythonSettings, String> {
        let bad = |key: &str, why: String| {
            format!(
                "invalid {key} in the Python stormlock config file {}: {why}",
                file.display()
            )
        };
        let principal = self
            .value(resource, "principal")
            .map_err(|e| bad("principal", e))?;
        let ttl = match self.value(resource, "ttl").map_err(|e| bad("ttl", e))? {
            Some(text) => Some(
                stormlock_api::duration::parse_duration(&text)
                    .map_err(|e| bad("ttl", e.to_string()))?,
            ),
            None => None,
        };
        Ok(PythonSettings { principal, ttl })
    }

    /// The sections other than `[DEFAULT]`, sorted by name.
    pub fn sections(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.sections.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The keys `section` sets itself (not those it inherits from
    /// `[DEFAULT]`), sorted.
    pub fn own_keys(&self, section: &str) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .sections
            .get(section)
            .map(|keys| keys.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        keys
    }

    /// Whether the file has `section`.
    pub fn has_section(&self, section: &str) -> bool {
        self.sections.contains_key(section)
    }

    /// `ConfigParser.get(section, name, fallback=None)`: the section's own
    /// value, else `[DEFAULT]`'s; nothing when the section does not exist.
    pub fn get(&self, section: &str, name: &str) -> Result<Option<String>, String> {
        let keys = if section == DEFAULTS {
            &self.defaults
        } else {
            match self.sections.get(section) {
                Some(keys) => keys,
                None => return Ok(None),
            }
        };
        match keys.get(name).or_else(|| self.defaults.get(name)) {
            Some(raw) => self.interpolate(keys, raw, 1).map(Some),
            None => Ok(None),
        }
    }

    /// `BasicInterpolation`: `%%` is `%`, `%(key)s` the value of `key` in the
    /// same section (or `[DEFAULT]`).
    fn interpolate(
        &self,
        keys: &HashMap<String, String>,
        raw: &str,
        depth: usize,
    ) -> Result<String, String> {
        if depth > MAX_INTERPOLATION_DEPTH {
            return Err(format!("%(…)s nests too deep in {raw:?}"));
        }
        let mut out = String::new();
        let mut rest = raw;
        while let Some(at) = rest.find('%') {
            out.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('%') {
                out.push('%');
                rest = after;
            } else if let Some((name, after)) =
                rest.strip_prefix('(').and_then(|r| r.split_once(")s"))
            {
                let name = name.to_lowercase();
                let value = keys
                    .get(&name)
                    .or_else(|| self.defaults.get(&name))
                    .ok_or_else(|| format!("%({name})s names no key"))?;
                out.push_str(&self.interpolate(keys, value, depth + 1)?);
                rest = after;
            } else {
                return Err(format!("'%' must be followed by '%' or '(' in {raw:?}"));
            }
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The keys of `section` in `config`, made when new.
fn keys<'a>(config: &'a mut PythonConfig, section: &str) -> &'a mut HashMap<String, String> {
    if section == DEFAULTS {
        &mut config.defaults
    } else {
        config.sections.entry(section.to_string()).or_default()
    }
}

/// Reads INI text as `ConfigParser` does with its defaults; `None` where
/// it would raise (a line that is no section, key or continuation, a key
/// before any section, a section or key given twice).
fn parse_ini(text: &str) -> Option<PythonConfig> {
    let mut config = PythonConfig::default();
    // The current section, and the key whose value continuation lines extend
    // with the indentation of its line.
    let mut section: Option<String> = None;
    let mut key: Option<(String, usize)> = None;
    // Blank lines inside a value stay only if a continuation line follows.
    let mut blanks = 0;
    for line in text.lines() {
        let stripped = line.trim();
        if stripped.starts_with('#') || stripped.starts_with(';') {
            // Comments end nothing, and are never part of a value.
            continue;
        }
        if stripped.is_empty() {
            blanks += 1;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if let (Some(name), Some((current, level))) = (&section, &key)
            && indent > *level
        {
            if let Some(value) = keys(&mut config, name).get_mut(current) {
                for _ in 0..blanks {
                    value.push('\n');
                }
                value.push('\n');
                value.push_str(stripped);
            }
            blanks = 0;
            continue;
        }
        blanks = 0;
        if let Some(header) = stripped
            .strip_prefix('[')
            .and_then(|h| h.rfind(']').map(|end| &h[..end]))
            .filter(|h| !h.is_empty())
        {
            if header != DEFAULTS && config.sections.contains_key(header) {
                return None;
            }
            keys(&mut config, header);
            section = Some(header.to_string());
            key = None;
            continue;
        }
        let name = section.as_ref()?;
        let split = stripped.find(['=', ':'])?;
        let option = stripped[..split].trim_end().to_lowercase();
        if option.is_empty() {
            return None;
        }
        let value = stripped[split + 1..].trim().to_string();
        if keys(&mut config, name)
            .insert(option.clone(), value)
            .is_some()
        {
            return None;
        }
        key = Some((option, indent));
    }
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file Python stormlock's own test suite and MIGRATING.md's cut-over
    /// start from.
    const PYTHON: &str = "\
# ~/.stormlock.cfg
[default]
backend = redis
principal = alice@ops
ttl = 30 min

[deploy/prod]
ttl = 2 hours

[backend.redis]
url = redis://redis.internal:6379/0
";

    fn settings(text: &str, resource: Option<&str>) -> Result<PythonSettings, String> {
        PythonConfig::recognise(text)
            .ok_or("not recognised")?
            .settings(resource, Path::new("x.cfg"))
    }

    #[test]
    fn principal_and_ttl_per_resource_else_default() {
        assert_eq!(
            settings(PYTHON, Some("other")),
            Ok(PythonSettings {
                principal: Some("alice@ops".into()),
                ttl: Some(Duration::from_secs(1800)),
            })
        );
        assert_eq!(
            settings(PYTHON, Some("deploy/prod")),
            Ok(PythonSettings {
                principal: Some("alice@ops".into()),
                ttl: Some(Duration::from_secs(7200)),
            })
        );
        // Commands without a resource take [default].
        assert_eq!(
            settings(PYTHON, None).map(|s| s.ttl),
            Ok(Some(Duration::from_secs(1800)))
        );
    }

    #[test]
    fn what_configparser_reads() {
        let text = "\
[DEFAULT]
who = bob
[default]
Backend: etcd
PRINCIPAL = %(who)s@100%%
; a comment
ttl = 1
  days
[r]
principal =
[backend.etcd]
host = localhost
";
        // Keys are case-insensitive, `:` separates too, continuation lines
        // join with a newline, interpolation, and an empty value falls back
        // to [default] (values checked against Python's ConfigParser).
        let config = PythonConfig::recognise(text).expect("recognised");
        assert_eq!(
            config.value(Some("r"), "principal"),
            Ok(Some("bob@100%".into()))
        );
        assert_eq!(config.value(None, "backend"), Ok(Some("etcd".into())));
        assert_eq!(config.value(Some("r"), "ttl"), Ok(Some("1\ndays".into())));
        // A section that does not exist gives nothing; [default] then
        // does, with what it inherits from [DEFAULT].
        assert_eq!(config.get("nothing", "who"), Ok(None));
        assert_eq!(config.get("r", "who"), Ok(Some("bob".into())));
        assert_eq!(config.value(Some("nothing"), "who"), Ok(Some("bob".into())));
        // [DEFAULT] alone is reached through no section.
        let only_defaults = "[DEFAULT]\nbackend = redis\nprincipal = p\n";
        let config = PythonConfig::recognise(only_defaults).expect("recognised");
        assert_eq!(config.value(Some("r"), "principal"), Ok(None));
    }

    #[test]
    fn only_python_stormlocks_files() {
        for not_python in [
            // TOML, even with sections of those names.
            "principal = 'alice'\nttl = '1h'\n",
            "[default]\nbackend = \"redis\"\n",
            // INI without a backend where Python stormlock reads it.
            "[backend.redis]\nurl = redis://x\n",
            "[server]\nhost = x:1\n",
            // What ConfigParser refuses.
            "backend = redis\n[default]\nttl = 1h\n",
            "[default]\nbackend = redis\nbackend = etcd\n",
            "[default]\nbackend = redis\n[default]\nttl = 1h\n",
            "[default]\nbackend = redis\njust words\n",
            "[default]\nbackend = redis\n= value\n",
            // A TOML file with a mistake.
            "addr = locks:7466\n",
        ] {
            assert_eq!(PythonConfig::recognise(not_python), None, "{not_python}");
        }
    }

    #[test]
    fn bad_values_name_the_key_and_file() {
        let err = settings("[default]\nbackend = redis\nttl = 4 weeks\n", None);
        let err = err.expect_err("weeks are not a unit");
        assert!(err.contains("ttl"), "{err}");
        assert!(err.contains("x.cfg"), "{err}");
        let err = settings("[default]\nbackend = redis\nprincipal = 50%\n", None);
        assert!(err.is_err_and(|e| e.contains("principal")));
    }
}
