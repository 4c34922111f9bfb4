//! `stormlock migrate-config`: Python stormlock 0.4.1's INI file turned into
//! the TOML that replaces it, so that a migration starts from what the
//! fleet ran with rather than from a blank page.
//!
//! Two parts come out: this CLI's own config file (principal and TTL, the
//! only settings of Python's that still belong to a client) and the
//! daemon's `[defaults]`, `[backends.NAME]` and `[[resources]]` for the
//! backend sections found (the engines now live behind the daemon). What
//! the daemon cannot express is said in a TOML comment next to where it
//! would go. Secrets are never printed: a password becomes a `${VAR}`
//! placeholder, which the daemon fills from its environment, and a comment
//! names the variable to set.
//!
//! Python stormlock reads its backends' settings as keyword arguments of
//! each backend class (`_backend_config.py`): `redis` takes `url`;
//! `postgresql` takes `connection` (a libpq URL or `key=value` string) and
//! `table`; `mysql` takes `table` and passes every other key to
//! `mysql.connector.connect`; `etcd` takes `host`, `port`, `prefix`,
//! `ca_cert`, `cert_cert`, `cert_key`, `user`, `password`, `timeout`;
//! `dynamodb` takes `table`, `endpoint`, `region`, `profile`,
//! `access_key_id`, `secret_access_key`.

use std::path::Path;
use std::time::Duration;

use stormlock_api::duration::{format_duration, parse_duration};

use crate::python_config::PythonConfig;

/// The daemon's `[defaults] max_ttl` when it sets none.
const DAEMON_MAX_TTL: Duration = Duration::from_secs(30 * 86_400);
/// The daemon's SQL table when it sets none (`stormlock_locks`).
const DAEMON_SQL_TABLE: &str = "stormlock_locks";
/// Python stormlock's table default (PostgreSQL, MySQL, DynamoDB).
const PYTHON_TABLE: &str = "stormlock";
/// Width comments are wrapped to.
const WIDTH: usize = 96;

/// Python stormlock's `[default]` section (its fallback for resources).
const FALLBACK: &str = "default";

/// The converted file, in its two parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// This CLI's config file.
    pub cli: String,
    /// Tables for the daemon's config file.
    pub daemon: String,
}

/// TOML text under construction: settings, comments and blank lines.
#[derive(Default)]
struct Doc {
    text: String,
}

impl Doc {
    /// `text` as `#` lines wrapped to [`WIDTH`].
    fn comment(&mut self, text: &str) {
        let mut line = String::from("#");
        for word in text.split_whitespace() {
            if line.len() > 1 && line.len() + 1 + word.len() > WIDTH {
                self.text.push_str(&line);
                self.text.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        self.text.push_str(&line);
        self.text.push('\n');
    }

    /// `key = value`, the value already in TOML.
    fn set(&mut self, key: &str, value: &str) {
        self.text.push_str(&format!("{key} = {value}\n"));
    }

    /// A line as it is.
    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }

    fn blank(&mut self) {
        if !self.text.is_empty() && !self.text.ends_with("\n\n") {
            self.text.push('\n');
        }
    }
}

/// A TOML string.
fn toml_str(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// A TOML string for the daemon's file, where `${` starts a variable: a
/// literal one is written `$${`.
fn daemon_str(text: &str) -> String {
    toml_str(&literal(text))
}

/// `text` with `${` escaped for the daemon's file (see [`daemon_str`]); the
/// result may be combined with `${VAR}` placeholders before quoting.
fn literal(text: &str) -> String {
    text.replace("${", "$${")
}

/// A TTL from the file: Python's `parse_ttl` syntax, which this CLI's
/// duration parser reads too.
fn ttl(config: &PythonConfig, resource: Option<&str>) -> Result<Option<Duration>, String> {
    config
        .value(resource, "ttl")?
        .map(|text| parse_duration(&text).map_err(|e| format!("ttl {text:?}: {e}")))
        .transpose()
}

/// What Python stormlock gave one resource of its own section.
struct ResourceSection {
    name: String,
    backend: Option<String>,
    ttl: Option<Duration>,
    principal: Option<String>,
}

/// Converts `config` (read from `file`, named in the output).
pub fn migrate(config: &PythonConfig, file: &Path) -> Result<Migration, String> {
    let backend = config.value(None, "backend")?;
    let principal = config.value(None, "principal")?;
    let default_ttl = ttl(config, None)?;
    let mut resources = Vec::new();
    for name in config.sections() {
        if name == FALLBACK || name.starts_with("backend.") {
            continue;
        }
        resources.push(ResourceSection {
            name: name.to_string(),
            backend: config.value(Some(name), "backend")?,
            ttl: ttl(config, Some(name))?,
            principal: config.value(Some(name), "principal")?,
        });
    }
    let own_ttls: Vec<&ResourceSection> = resources
        .iter()
        .filter(|r| r.ttl != default_ttl && r.ttl.is_some())
        .collect();

    let cli = cli_part(
        principal.as_deref(),
        default_ttl,
        &resources,
        &own_ttls,
        file,
    );

    // Backends: the ones named, then the ones with a section of their own.
    let mut kinds: Vec<String> = Vec::new();
    for kind in backend
        .iter()
        .chain(resources.iter().filter_map(|r| r.backend.as_ref()))
    {
        if !kinds.contains(kind) {
            kinds.push(kind.clone());
        }
    }
    let mut nested = Vec::new();
    for section in config.sections() {
        if let Some(kind) = section.strip_prefix("backend.") {
            if kind.contains('.') {
                nested.push(section.to_string());
            } else if !kinds.iter().any(|k| k == kind) {
                kinds.push(kind.to_string());
            }
        }
    }

    let mut daemon = Doc::default();
    daemon.comment(&format!(
        "The daemon's config file (stormlockd --config FILE), from the backend settings of \
         Python stormlock's {}. Merge these tables into it, then run `stormlockd check-config \
         FILE`.",
        file.display()
    ));
    let mut tables = Vec::new();
    let mut variables = Vec::new();
    for kind in &kinds {
        let used = backend.as_deref() == Some(kind.as_str())
            || resources.iter().any(|r| r.backend.as_deref() == Some(kind));
        let table = backend_table(config, kind, used)?;
        variables.extend(table.variables.iter().cloned());
        tables.push(table.doc.text);
    }
    if !variables.is_empty() {
        daemon.comment(&format!(
            "Secrets are not copied: set {} in the daemon's environment (see the comments \
             below).",
            join_and(&variables)
        ));
    }
    for section in &nested {
        daemon.comment(&format!(
            "[{section}] is left out: Python stormlock's backends read no such section."
        ));
    }

    let all_ttls = default_ttl
        .into_iter()
        .chain(resources.iter().filter_map(|r| r.ttl));
    let longest = all_ttls.max().filter(|t| *t > DAEMON_MAX_TTL);
    let daemon_ttl = default_ttl.filter(|_| !own_ttls.is_empty());
    if backend.is_some() || daemon_ttl.is_some() || longest.is_some() {
        daemon.blank();
        daemon.line("[defaults]");
        if let Some(kind) = &backend {
            daemon.set("backend", &daemon_str(kind));
        }
        if let Some(ttl) = daemon_ttl {
            daemon.comment(
                "Python's [default] ttl, here rather than in the CLI's file, so that the \
                 resources below keep a TTL of their own:",
            );
            daemon.set("ttl", &toml_str(&format_duration(ttl)));
        }
        if let Some(longest) = longest {
            daemon.comment(&format!(
                "Python stormlock allowed any TTL; the daemon refuses longer ones than max_ttl \
                 ({} by default):",
                format_duration(DAEMON_MAX_TTL)
            ));
            daemon.set("max_ttl", &toml_str(&format_duration(longest)));
        }
    } else {
        daemon.comment(
            "Python's [default] names no backend: the daemon's [defaults] backend stays as it \
             is (\"main\" unless set).",
        );
    }
    for table in tables {
        daemon.blank();
        daemon.text.push_str(&table);
    }
    for resource in &resources {
        let other_backend = resource.backend != backend;
        let own_ttl = own_ttls.iter().any(|r| r.name == resource.name);
        if !other_backend && !own_ttl {
            continue;
        }
        daemon.blank();
        if resource.name.contains('*') {
            daemon.comment(&format!(
                "[{}]: a resource name with `*` cannot be matched exactly by [[resources]] \
                 (`*` is a wildcard there); give it a rule of its own by hand.",
                resource.name
            ));
            continue;
        }
        daemon.line("[[resources]]");
        daemon.set("match", &daemon_str(&resource.name));
        if other_backend && let Some(kind) = &resource.backend {
            daemon.set("backend", &daemon_str(kind));
        }
        if own_ttl && let Some(ttl) = resource.ttl {
            daemon.set("ttl", &toml_str(&format_duration(ttl)));
        }
    }
    Ok(Migration {
        cli,
        daemon: daemon.text,
    })
}

/// This CLI's config file.
fn cli_part(
    principal: Option<&str>,
    default_ttl: Option<Duration>,
    resources: &[ResourceSection],
    own_ttls: &[&ResourceSection],
    file: &Path,
) -> String {
    let mut cli = Doc::default();
    cli.comment(&format!(
        "This CLI's config file (~/.stormlock.toml, $XDG_CONFIG_HOME/stormlock/config.toml or -c \
         FILE), from Python stormlock's {}. The daemon's address and your credentials take the \
         place of the backend settings:",
        file.display()
    ));
    cli.line("# addr = \"locks.example.com:7466\"");
    cli.line("# ca = \"/etc/stormlock/ca.crt\"");
    cli.line("# cert = \"~/.stormlock/me.crt\"");
    cli.line("# key = \"~/.stormlock/me.key\"");
    if let Some(principal) = principal {
        // Set in this file, a principal is declared on every call, and a
        // daemon refuses one that differs from the certificate's or token's
        // identity; Python's was only ever declared.
        cli.comment(
            "Python's principal. Uncomment it only for a daemon that authenticates nobody: \
             with a client certificate or token the daemon names you, and refuses a principal \
             set here that differs.",
        );
        cli.line(&format!("# principal = {}", toml_str(principal)));
    }
    for r in resources {
        if let Some(own) = r.principal.as_deref().filter(|p| Some(*p) != principal) {
            cli.comment(&format!(
                "Python gave {} the principal {own:?}: this file has one principal for every \
                 resource (pass --principal where it matters).",
                r.name
            ));
        }
    }
    match default_ttl {
        Some(ttl) if own_ttls.is_empty() => cli.set("ttl", &toml_str(&format_duration(ttl))),
        Some(ttl) => {
            let list: Vec<String> = own_ttls
                .iter()
                .filter_map(|r| r.ttl.map(|t| format!("{} {}", r.name, format_duration(t))))
                .collect();
            cli.comment(&format!(
                "Python gave these resources a TTL of their own: {}. A ttl here would apply to \
                 every resource, so it is left to the daemon: its [defaults] ttl and [[resources]] \
                 (in the daemon's part) give each its own; -t still overrides. Python's [default] \
                 ttl was:",
                list.join(", ")
            ));
            cli.line(&format!("# ttl = {}", toml_str(&format_duration(ttl))));
        }
        None => {}
    }
    cli.text
}

/// "a", "a and b", "a, b and c".
fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// One `[backends.NAME]` table and the variables it needs set.
struct Table {
    doc: Doc,
    variables: Vec<String>,
}

impl Table {
    fn new(name: &str) -> Self {
        let mut doc = Doc::default();
        doc.line(&format!("[backends.{name}]"));
        Self {
            doc,
            variables: Vec::new(),
        }
    }

    /// Notes that `variable` must be set, and why.
    fn secret(&mut self, variable: &str, what: &str) {
        self.doc.comment(&format!(
            "Set {variable} in the daemon's environment to {what}; it is not copied here."
        ));
        if !self.variables.iter().any(|v| v == variable) {
            self.variables.push(variable.to_string());
        }
    }

    /// Turns the migration mode on, saying what it does with Python
    /// stormlock's locks, kept in `python_store`; `setting` is the key and
    /// value that names where they are, when the engine has one.
    fn migration_mode(&mut self, python_store: &str, setting: Option<(&str, &str)>) {
        self.doc.comment(&format!(
            "Python stormlock's locks ({python_store}) count as held, and each lease is written \
             in Python's format too, until no Python client is left (MIGRATING.md):"
        ));
        self.doc.set("python_stormlock", "true");
        if let Some((key, value)) = setting {
            self.doc.set(key, &daemon_str(value));
        }
    }
}

/// The daemon's table for Python backend `kind` (`used`: some section
/// names it).
fn backend_table(config: &PythonConfig, kind: &str, used: bool) -> Result<Table, String> {
    let section = format!("backend.{kind}");
    // Python reads a backend's parameters only from its own section (with
    // what that section inherits from [DEFAULT]); without one, every
    // parameter has its default.
    let get = |name: &str| -> Result<Option<String>, String> {
        if config.has_section(&section) {
            config.get(&section, name)
        } else {
            Ok(None)
        }
    };
    let mut table = match kind {
        "redis" => redis(&get)?,
        "postgresql" => postgres(&get)?,
        "mysql" => mysql(config, &section, &get)?,
        "etcd" => etcd(&get)?,
        "dynamodb" => dynamodb(&get)?,
        other => {
            let mut doc = Doc::default();
            doc.comment(&format!(
                "Backend {other:?} ([{section}]) is not one of Python stormlock's (redis, \
                 postgresql, mysql, etcd, dynamodb): the daemon has no such engine, and it is \
                 left out."
            ));
            return Ok(Table {
                doc,
                variables: Vec::new(),
            });
        }
    };
    let known: &[&str] = match kind {
        "redis" => &["url"],
        "postgresql" => &["connection", "table"],
        "etcd" => &[
            "prefix",
            "host",
            "port",
            "ca_cert",
            "cert_key",
            "cert_cert",
            "timeout",
            "user",
            "password",
        ],
        "dynamodb" => &[
            "table",
            "endpoint",
            "region",
            "profile",
            "access_key_id",
            "secret_access_key",
        ],
        // MySQL passes every key on to its driver.
        _ => &[],
    };
    let ignored: Vec<&str> = config
        .own_keys(&section)
        .into_iter()
        .filter(|k| !known.is_empty() && !known.contains(k))
        .collect();
    if !ignored.is_empty() {
        table.doc.comment(&format!(
            "Left out, as Python stormlock ignored them too: {}.",
            ignored.join(", ")
        ));
    }
    if !used {
        // Said first, under the table's header.
        let mut note = Doc::default();
        note.comment(&format!(
            "No section of Python's file uses [{section}]; route resources to it with \
             [[resources]] or [defaults] backend."
        ));
        if let Some((header, body)) = table.doc.text.split_once('\n') {
            table.doc.text = format!("{header}\n{}{body}", note.text);
        }
    }
    Ok(table)
}

/// `scheme://[user[:password]@]host[:port][/path][?query]`, split where
/// passwords hide. Nothing is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    host: String,
    path: String,
    query: Vec<(String, String)>,
}

impl Url {
    fn parse(text: &str) -> Option<Self> {
        let (scheme, rest) = text.split_once("://")?;
        let rest = rest.split('#').next().unwrap_or_default();
        let (before_query, query) = match rest.split_once('?') {
            Some((before, query)) => (before, query),
            None => (rest, ""),
        };
        let (authority, path) = match before_query.find('/') {
            Some(at) => before_query.split_at(at),
            None => (before_query, ""),
        };
        let (userinfo, host) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (Some(user.to_string()), Some(password.to_string())),
                None => (Some(info.to_string()), None),
            },
            None => (None, None),
        };
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (p.to_string(), String::new()),
            })
            .collect();
        Some(Self {
            scheme: scheme.to_ascii_lowercase(),
            user: user.filter(|u| !u.is_empty()),
            password: password.filter(|p| !p.is_empty()),
            host: host.to_string(),
            path: path.to_string(),
            query,
        })
    }

    /// Takes the query parameter `name` out, if present.
    fn take(&mut self, name: &str) -> Option<String> {
        let at = self.query.iter().position(|(k, _)| k == name)?;
        Some(self.query.remove(at).1)
    }

    /// The URL for the daemon's file, the password replaced by `${var}`
    /// when there is one.
    fn render(&self, var: &str) -> String {
        let mut out = format!("{}://", self.scheme);
        if self.user.is_some() || self.password.is_some() {
            out.push_str(&literal(self.user.as_deref().unwrap_or_default()));
            if self.password.is_some() {
                out.push_str(&format!(":${{{var}}}"));
            }
            out.push('@');
        }
        out.push_str(&literal(&self.host));
        out.push_str(&literal(&self.path));
        for (i, (k, v)) in self.query.iter().enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            out.push_str(&literal(k));
            out.push('=');
            out.push_str(&literal(v));
        }
        out
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (a file path in a query parameter).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Get<'a> = dyn Fn(&str) -> Result<Option<String>, String> + 'a;

/// `[backend.redis]`: `url` (default `redis://localhost:6379`).
fn redis(get: &Get<'_>) -> Result<Table, String> {
    const VAR: &str = "REDIS_PASSWORD";
    let mut table = Table::new("redis");
    table.doc.set("type", "\"redis\"");
    let text = get("url")?.unwrap_or_else(|| "redis://localhost:6379".to_string());
    match Url::parse(&text).filter(|u| matches!(u.scheme.as_str(), "redis" | "rediss")) {
        Some(mut url) => {
            if let Some(password) = url.take("password") {
                url.password = Some(password).filter(|p| !p.is_empty());
            }
            if let Some(user) = url.take("username") {
                url.user = Some(user).filter(|u| !u.is_empty());
            }
            if let Some(db) = url.take("db")
                && matches!(url.path.as_str(), "" | "/")
            {
                url.path = format!("/{db}");
            }
            let files = [
                ("ssl_ca_certs", "ca_file"),
                ("ssl_certfile", "cert_file"),
                ("ssl_keyfile", "key_file"),
            ];
            let mut settings = Vec::new();
            for (python, daemon) in files {
                if let Some(path) = url.take(python) {
                    settings.push((daemon, daemon_str(&decode(&path))));
                }
            }
            let rest: Vec<String> = url.query.drain(..).map(|(k, _)| k).collect();
            if url.password.is_some() {
                table.secret(
                    VAR,
                    "the password of the url in Python's file, percent-encoded as in the \
                     url (where ConfigParser's file wrote %% for %, write %)",
                );
            }
            table.doc.set("url", &toml_str(&url.render(VAR)));
            for (key, value) in settings {
                table.doc.set(key, &value);
            }
            if !rest.is_empty() {
                table.doc.comment(&format!(
                    "redis-py options of the url left out (no equivalent in the daemon): {}.",
                    rest.join(", ")
                ));
            }
        }
        None => {
            let scheme = text.split_once("://").map_or("", |(s, _)| s);
            table.doc.comment(&format!(
                "Python's url has the scheme {scheme:?}: the daemon connects with redis:// or \
                 rediss:// only (no Unix sockets). Write the TCP address of the same Redis \
                 database here:"
            ));
            table.doc.line("# url = \"redis://HOST:6379/0\"");
        }
    }
    table.migration_mode("a hash at the resource's name", None);
    Ok(table)
}

/// `[backend.postgresql]`: `connection` (a libpq URL or `key=value`
/// string, required) and `table` (default `stormlock`).
fn postgres(get: &Get<'_>) -> Result<Table, String> {
    const VAR: &str = "PGPASSWORD";
    let mut table = Table::new("postgresql");
    table.doc.set("type", "\"postgres\"");
    match get("connection")? {
        None => table.doc.comment(
            "Python's [backend.postgresql] has no connection (Python stormlock cannot have \
             used it): write the database's postgres:// URL as url.",
        ),
        Some(text) if text.contains("://") => match Url::parse(&text) {
            Some(mut url) => {
                if let Some(password) = url.take("password") {
                    url.password = Some(password).filter(|p| !p.is_empty());
                }
                if url.password.is_some() {
                    table.secret(
                        VAR,
                        "the password of Python's connection URL, percent-encoded as in the \
                         URL (where ConfigParser's file wrote %% for %, write %)",
                    );
                }
                table.doc.set("url", &toml_str(&url.render(VAR)));
            }
            None => table
                .doc
                .comment("Python's connection is no URL the daemon reads."),
        },
        Some(text) => match conninfo(&text) {
            Some(pairs) => {
                let mut url = Url {
                    scheme: "postgres".to_string(),
                    user: None,
                    password: None,
                    host: String::new(),
                    path: String::new(),
                    query: Vec::new(),
                };
                let mut port = None;
                for (key, value) in pairs {
                    match key.as_str() {
                        "user" => url.user = Some(encode(&value)),
                        "password" => url.password = Some(value).filter(|p| !p.is_empty()),
                        "host" if !value.starts_with('/') && !value.contains(',') => {
                            url.host = encode(&value);
                        }
                        "port" if !value.contains(',') => port = Some(encode(&value)),
                        "dbname" => url.path = format!("/{}", encode(&value)),
                        _ => url.query.push((key, encode(&value))),
                    }
                }
                if let Some(port) = port {
                    url.host = format!("{}:{port}", url.host);
                }
                if url.password.is_some() {
                    table.secret(
                        VAR,
                        "the password of Python's connection string, percent-encoded \
                         (characters other than letters, digits and -._~ as %XX)",
                    );
                }
                table.doc.set("url", &toml_str(&url.render(VAR)));
            }
            None => table.doc.comment(
                "Python's connection string could not be read as key=value pairs: write the \
                 same database's postgres:// URL as url.",
            ),
        },
    }
    let python_table = get("table")?.unwrap_or_else(|| PYTHON_TABLE.to_string());
    if python_table.to_ascii_lowercase() == DAEMON_SQL_TABLE {
        table.doc.comment(&format!(
            "The daemon's own table may not be Python's ({python_table}):"
        ));
        table.doc.set("table", "\"stormlockd_locks\"");
    }
    let folded = if python_table.chars().any(|c| c.is_ascii_uppercase()) {
        format!("; Python's table {python_table:?} in lower case, as PostgreSQL read it unquoted")
    } else {
        String::new()
    };
    table.migration_mode(
        &format!("rows of python_table, which must exist: see MIGRATING.md{folded}"),
        Some(("python_table", &python_table.to_ascii_lowercase())),
    );
    Ok(table)
}

/// libpq's `key=value` connection string: values bare or in single quotes,
/// with backslash escapes; `None` if it is not one.
fn conninfo(text: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        chars.next_if_eq(&'=')?;
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next()?);
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return None;
        }
        pairs.push((key, value));
    }
}

/// `[backend.mysql]`: `table` (default `stormlock`) and the keyword
/// arguments of `mysql.connector.connect`.
fn mysql(config: &PythonConfig, section: &str, get: &Get<'_>) -> Result<Table, String> {
    const VAR: &str = "MYSQL_PASSWORD";
    let mut table = Table::new("mysql");
    table.doc.set("type", "\"mysql\"");
    // Every other key of the section went to the driver (not those of
    // [DEFAULT], which are Python stormlock's own settings).
    let mut settings = Vec::new();
    for key in config.own_keys(section) {
        if key != "table"
            && let Some(value) = config.get(section, key)?
        {
            settings.push((key.to_string(), value));
        }
    }
    let value = |names: &[&str]| {
        settings
            .iter()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.clone())
    };
    let host = value(&["host", "server"]).unwrap_or_else(|| "127.0.0.1".to_string());
    let port = value(&["port"]).unwrap_or_else(|| "3306".to_string());
    let user = value(&["user", "username"]);
    let password = value(&["password", "passwd", "password1"]).filter(|p| !p.is_empty());
    let database = value(&["database", "db"]);
    let url = Url {
        scheme: "mysql".to_string(),
        user: user.map(|u| encode(&u)),
        password: password.clone(),
        host: format!("{}:{}", encode(&host), encode(&port)),
        path: database
            .map(|d| format!("/{}", encode(&d)))
            .unwrap_or_default(),
        query: Vec::new(),
    };
    if password.is_some() {
        table.secret(
            VAR,
            "the password of [backend.mysql], percent-encoded (characters other than letters, \
             digits and -._~ as %XX)",
        );
    }
    if value(&["unix_socket"]).is_some() {
        table.doc.comment(
            "Python connected through unix_socket: the daemon connects over TCP; check host \
             and port.",
        );
    }
    table.doc.set("url", &toml_str(&url.render(VAR)));
    let disabled = value(&["ssl_disabled"]).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let ca = value(&["ssl_ca"]);
    let cert = value(&["ssl_cert"]);
    let key = value(&["ssl_key"]);
    if disabled {
        table.doc.set("tls", "\"disable\"");
    } else if ca.is_some() {
        table.doc.set("tls", "\"verify-full\"");
        if let Some(ca) = &ca {
            table.doc.set("ca_file", &daemon_str(ca));
        }
    } else if cert.is_some() {
        table.doc.set("tls", "\"require\"");
    } else {
        table.doc.comment(
            "Python's driver used TLS whenever the server offered it; the daemon's default is \
             plain text: set tls = \"require\" (or \"verify-full\" with ca_file) to keep it \
             encrypted.",
        );
    }
    if !disabled && let (Some(cert), Some(key)) = (&cert, &key) {
        table.doc.set("cert_file", &daemon_str(cert));
        table.doc.set("key_file", &daemon_str(key));
    }
    if let Some(timeout) = value(&["connection_timeout", "connect_timeout"])
        && let Ok(seconds) = timeout.trim().parse::<u64>()
    {
        table
            .doc
            .set("connect_timeout", &toml_str(&format!("{seconds}s")));
    }
    let mapped = [
        "host",
        "server",
        "port",
        "user",
        "username",
        "password",
        "passwd",
        "password1",
        "database",
        "db",
        "unix_socket",
        "ssl_disabled",
        "ssl_ca",
        "ssl_cert",
        "ssl_key",
        "connection_timeout",
        "connect_timeout",
    ];
    let rest: Vec<&str> = settings
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !mapped.contains(k))
        .collect();
    if !rest.is_empty() {
        table.doc.comment(&format!(
            "Driver settings left out (no equivalent in the daemon): {}.",
            rest.join(", ")
        ));
    }
    let python_table = get("table")?.unwrap_or_else(|| PYTHON_TABLE.to_string());
    if python_table.eq_ignore_ascii_case(DAEMON_SQL_TABLE) {
        table.doc.set("table", "\"stormlockd_locks\"");
    }
    table.migration_mode(
        "rows of python_table, which must exist: see MIGRATING.md for its shape",
        Some(("python_table", &python_table)),
    );
    Ok(table)
}

/// `[backend.etcd]`.
fn etcd(get: &Get<'_>) -> Result<Table, String> {
    const VAR: &str = "ETCD_PASSWORD";
    let mut table = Table::new("etcd");
    table.doc.set("type", "\"etcd\"");
    let host = get("host")?.unwrap_or_else(|| "localhost".to_string());
    let port = get("port")?.unwrap_or_else(|| "2379".to_string());
    let ca = get("ca_cert")?;
    let scheme = if ca.is_some() { "https" } else { "http" };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    table.doc.set(
        "endpoints",
        &format!(
            "[{}]",
            daemon_str(&format!("{scheme}://{host}:{}", port.trim()))
        ),
    );
    if let Some(user) = get("user")? {
        table.doc.set("username", &daemon_str(&user));
    }
    if get("password")?.is_some() {
        table.secret(VAR, "the password of [backend.etcd]");
        table.doc.set("password", &toml_str(&format!("${{{VAR}}}")));
    }
    if let Some(ca) = ca {
        table.doc.set("ca_file", &daemon_str(&ca));
    }
    match (get("cert_cert")?, get("cert_key")?) {
        (Some(cert), Some(key)) => {
            table.doc.set("cert_file", &daemon_str(&cert));
            table.doc.set("key_file", &daemon_str(&key));
        }
        (None, None) => {}
        _ => table.doc.comment(
            "Python's file has only one of cert_cert and cert_key: the daemon needs both \
             (cert_file, key_file) for a client certificate.",
        ),
    }
    if let Some(timeout) = get("timeout")? {
        table.doc.comment(&format!(
            "Python's per-call timeout ({timeout} s) has no key here: [defaults] \
             backend_timeout bounds every backend call (2s by default)."
        ));
    }
    let prefix = get("prefix")?.unwrap_or_else(|| "/".to_string());
    table.migration_mode(
        &format!("keys {prefix}RESOURCE/id, /p and /c; python_prefix is Python's prefix"),
        Some(("python_prefix", &prefix)),
    );
    Ok(table)
}

/// `[backend.dynamodb]`.
fn dynamodb(get: &Get<'_>) -> Result<Table, String> {
    let mut table = Table::new("dynamodb");
    table.doc.set("type", "\"dynamodb\"");
    let python_table = get("table")?.unwrap_or_else(|| PYTHON_TABLE.to_string());
    // The daemon's default DynamoDB table is `stormlock`, Python's default
    // too: never left to default.
    let own = if python_table == DAEMON_SQL_TABLE {
        "stormlockd_locks"
    } else {
        DAEMON_SQL_TABLE
    };
    table.doc.comment(&format!(
        "The daemon's own table (partition key resource, sort key kind), never Python's \
         {python_table:?}, whose items have another layout:"
    ));
    table.doc.set("table", &toml_str(own));
    if let Some(region) = get("region")? {
        table.doc.set("region", &daemon_str(&region));
    }
    if let Some(endpoint) = get("endpoint")? {
        table.doc.set("endpoint", &daemon_str(&endpoint));
    }
    if get("profile")?.is_some() {
        table.doc.comment(
            "Python's profile: set AWS_PROFILE in the daemon's environment (credentials come \
             from the AWS chain).",
        );
    }
    if get("access_key_id")?.is_some() || get("secret_access_key")?.is_some() {
        table.secret(
            "AWS_ACCESS_KEY_ID",
            "Python's access_key_id (credentials come from the AWS chain)",
        );
        table.secret("AWS_SECRET_ACCESS_KEY", "Python's secret_access_key");
    }
    table.migration_mode(
        "items of python_table, Python's own table",
        Some(("python_table", &python_table)),
    );
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Migration {
        let config = PythonConfig::recognise(text).expect("a Python stormlock file");
        migrate(&config, Path::new("/home/a/.stormlock.cfg")).expect("migrates")
    }

    /// The comments of `text` as one line, as wrapping leaves them.
    fn said(text: &str) -> String {
        text.replace("\n# ", " ")
    }

    /// The settings of a TOML text, comments gone.
    fn settings(text: &str) -> toml::Table {
        text.parse::<toml::Table>()
            .unwrap_or_else(|e| panic!("not TOML: {e}\n{text}"))
    }

    #[test]
    fn redis_with_a_password() {
        let m = run("\
[default]
backend = redis
principal = alice@ops
ttl = 30 min

[backend.redis]
url = redis://:s3cr%%40t@redis.internal:6379/0
");
        assert!(
            !m.cli.contains("s3cr") && !m.daemon.contains("s3cr"),
            "{m:?}"
        );
        let cli = settings(&m.cli);
        assert_eq!(cli.get("principal"), None, "only where it applies");
        assert!(
            m.cli.contains("\n# principal = \"alice@ops\"\n"),
            "{}",
            m.cli
        );
        assert_eq!(cli["ttl"].as_str(), Some("30m"));
        assert!(
            crate::config::parse(&m.cli).is_ok(),
            "this CLI reads it: {}",
            m.cli
        );
        let daemon = settings(&m.daemon);
        assert_eq!(daemon["defaults"]["backend"].as_str(), Some("redis"));
        let redis = &daemon["backends"]["redis"];
        assert_eq!(redis["type"].as_str(), Some("redis"));
        assert_eq!(
            redis["url"].as_str(),
            Some("redis://:${REDIS_PASSWORD}@redis.internal:6379/0")
        );
        assert_eq!(redis["python_stormlock"].as_bool(), Some(true));
        assert!(
            m.daemon
                .contains("Set REDIS_PASSWORD in the daemon's environment")
        );
    }

    #[test]
    fn postgres_urls_and_connection_strings() {
        for (connection, url) in [
            (
                "postgresql://locker:pw@db.internal:5432/ops?sslmode=require",
                "postgresql://locker:${PGPASSWORD}@db.internal:5432/ops?sslmode=require",
            ),
            (
                "host=db.internal port=5433 dbname=ops user=locker password='it\\'s' \
                 sslmode=verify-full",
                "postgres://locker:${PGPASSWORD}@db.internal:5433/ops?sslmode=verify-full",
            ),
            (
                "postgresql://locker@db.internal/ops?password=pw",
                "postgresql://locker:${PGPASSWORD}@db.internal/ops",
            ),
            (
                "dbname = ops host=/var/run/postgresql",
                "postgres:///ops?host=%2Fvar%2Frun%2Fpostgresql",
            ),
        ] {
            let m = run(&format!(
                "[default]\nbackend = postgresql\nprincipal = p\nttl = 1 hours\n\
                 [backend.postgresql]\nconnection = {connection}\ntable = Locks\n"
            ));
            let daemon = settings(&m.daemon);
            let pg = &daemon["backends"]["postgresql"];
            assert_eq!(pg["type"].as_str(), Some("postgres"), "{}", m.daemon);
            assert_eq!(pg["url"].as_str(), Some(url), "{connection}");
            assert_eq!(pg["python_stormlock"].as_bool(), Some(true));
            assert_eq!(pg["python_table"].as_str(), Some("locks"));
            assert!(!m.daemon.contains("pw") && !m.daemon.contains("it's"));
        }
        // libpq's quoting: a backslash escapes, spaces inside quotes stay.
        assert_eq!(
            conninfo(r"password='a \' b' user=x\ y"),
            Some(vec![
                ("password".to_string(), "a ' b".to_string()),
                ("user".to_string(), "x y".to_string()),
            ])
        );
        assert_eq!(conninfo("user"), None);
    }

    #[test]
    fn mysql_etcd_and_dynamodb_in_migration_mode() {
        let m = run("\
[DEFAULT]
principal = ops
[default]
backend = mysql
ttl = 5 minutes
[jobs/nightly]
backend = etcd
ttl = 2 hours
[big]
ttl = 60 days
[backend.mysql]
host = db.internal
user = locker
password = hunter2
database = ops
ssl_ca = /etc/ssl/db-ca.pem
autocommit = true
[backend.etcd]
host = etcd.internal
ca_cert = /etc/etcd/ca.pem
user = root
password = hunter2
timeout = 5
[backend.dynamodb]
region = eu-west-1
secret_access_key = AKIAsecret
");
        assert!(!m.daemon.contains("hunter2") && !m.daemon.contains("AKIAsecret"));
        let daemon = settings(&m.daemon);
        let mysql = &daemon["backends"]["mysql"];
        assert_eq!(
            mysql["url"].as_str(),
            Some("mysql://locker:${MYSQL_PASSWORD}@db.internal:3306/ops")
        );
        assert_eq!(mysql["tls"].as_str(), Some("verify-full"));
        assert_eq!(mysql["ca_file"].as_str(), Some("/etc/ssl/db-ca.pem"));
        assert_eq!(mysql["python_stormlock"].as_bool(), Some(true));
        assert_eq!(mysql["python_table"].as_str(), Some("stormlock"));
        let etcd = &daemon["backends"]["etcd"];
        assert_eq!(
            etcd["endpoints"].as_array().map(Vec::len),
            Some(1),
            "{}",
            m.daemon
        );
        assert_eq!(
            etcd["endpoints"][0].as_str(),
            Some("https://etcd.internal:2379")
        );
        assert_eq!(etcd["password"].as_str(), Some("${ETCD_PASSWORD}"));
        assert_eq!(etcd["python_stormlock"].as_bool(), Some(true));
        assert_eq!(etcd["python_prefix"].as_str(), Some("/"));
        let dynamo = &daemon["backends"]["dynamodb"];
        assert_eq!(dynamo["table"].as_str(), Some("stormlock_locks"));
        assert_eq!(dynamo["python_stormlock"].as_bool(), Some(true));
        assert_eq!(dynamo["python_table"].as_str(), Some("stormlock"));
        for what in ["autocommit", "timeout (5 s)", "AWS_SECRET_ACCESS_KEY"] {
            assert!(said(&m.daemon).contains(what), "{what}: {}", m.daemon);
        }
        // Per-resource TTLs move to the daemon, and the longest one lifts
        // max_ttl; the CLI keeps its principal but no ttl.
        assert_eq!(daemon["defaults"]["ttl"].as_str(), Some("5m"));
        assert_eq!(daemon["defaults"]["max_ttl"].as_str(), Some("60d"));
        let rules = daemon["resources"].as_array().cloned().unwrap_or_default();
        assert_eq!(rules.len(), 2, "{}", m.daemon);
        assert_eq!(rules[0]["match"].as_str(), Some("big"));
        assert!(rules[0].get("backend").is_none());
        assert_eq!(rules[1]["match"].as_str(), Some("jobs/nightly"));
        assert_eq!(rules[1]["backend"].as_str(), Some("etcd"));
        assert_eq!(rules[1]["ttl"].as_str(), Some("2h"));
        let cli = settings(&m.cli);
        assert_eq!(cli.get("ttl"), None);
        assert!(m.cli.contains("\n# principal = \"ops\"\n"), "{}", m.cli);
        assert!(m.cli.contains("# ttl = \"5m\""), "{}", m.cli);
    }

    /// Python's own table and prefix settings become the daemon's
    /// `python_table` and `python_prefix`, as Python wrote them; the
    /// daemon's own table never takes Python's name.
    #[test]
    fn python_tables_and_prefixes_carry_over() {
        let m = run("\
[default]
backend = mysql
principal = ops
ttl = 5 minutes
[backend.mysql]
table = Ops_Locks
[backend.etcd]
prefix = /locks/
[backend.dynamodb]
table = stormlock_locks
");
        let daemon = settings(&m.daemon);
        let backends = &daemon["backends"];
        assert_eq!(
            backends["mysql"]["python_table"].as_str(),
            Some("Ops_Locks")
        );
        assert!(backends["mysql"].get("table").is_none(), "{}", m.daemon);
        assert_eq!(backends["etcd"]["python_prefix"].as_str(), Some("/locks/"));
        let dynamo = &backends["dynamodb"];
        assert_eq!(dynamo["python_table"].as_str(), Some("stormlock_locks"));
        assert_eq!(dynamo["table"].as_str(), Some("stormlockd_locks"));
        let m = run(
            "[default]\nbackend = mysql\nprincipal = p\n[backend.mysql]\ntable = stormlock_locks\n",
        );
        let mysql = &settings(&m.daemon)["backends"]["mysql"];
        assert_eq!(mysql["python_table"].as_str(), Some("stormlock_locks"));
        assert_eq!(mysql["table"].as_str(), Some("stormlockd_locks"));
    }

    #[test]
    fn redis_defaults_options_and_unix_sockets() {
        let m = run("[default]\nbackend = redis\nprincipal = p\nttl = 1 hours\n");
        let daemon = settings(&m.daemon);
        assert_eq!(
            daemon["backends"]["redis"]["url"].as_str(),
            Some("redis://localhost:6379")
        );
        let m = run("[default]\nbackend = redis\nprincipal = p\nttl = 1 hours\n\
             [backend.redis]\nurl = rediss://r:6380?db=2&ssl_ca_certs=%%2Fca.pem&password=x&health_check_interval=3\n");
        let daemon = settings(&m.daemon);
        let redis = &daemon["backends"]["redis"];
        assert_eq!(
            redis["url"].as_str(),
            Some("rediss://:${REDIS_PASSWORD}@r:6380/2")
        );
        assert_eq!(redis["ca_file"].as_str(), Some("/ca.pem"));
        assert!(
            said(&m.daemon).contains("health_check_interval"),
            "{}",
            m.daemon
        );
        let m = run("[default]\nbackend = redis\nprincipal = p\nttl = 1 hours\n\
             [backend.redis]\nurl = unix:///run/redis.sock\n");
        assert!(
            settings(&m.daemon)["backends"]["redis"]
                .get("url")
                .is_none()
        );
        assert!(said(&m.daemon).contains("no Unix sockets"), "{}", m.daemon);
    }

    #[test]
    fn literal_dollars_stay_literal_for_the_daemon() {
        let m = run(
            "[default]\nbackend = postgresql\nprincipal = p\nttl = 1 hours\n\
             [backend.postgresql]\nconnection = postgresql://u@h/db_${X}\n",
        );
        let daemon = settings(&m.daemon);
        assert_eq!(
            daemon["backends"]["postgresql"]["url"].as_str(),
            Some("postgresql://u@h/db_$${X}")
        );
    }
}
