//! How leases are printed: Python stormlock 0.4.1's formats with exactly
//! its fields (`rows`, `lines`, `oneline`, `cols`, `id`); the fields it did
//! not have (expires, fence, reason, resource) only in `json`, after
//! Python's keys, and in the `long` format of this CLI.
//!
//! Timestamps are ISO-8601 in UTC with milliseconds, as Python's
//! `isoformat(timespec="milliseconds")` writes an aware datetime:
//! `2026-11-26T13:28:46.123+00:00`. JSON is written as Python's `json.dump`
//! writes it (`", "` and `": "` separators, non-ASCII escaped), followed by a
//! newline. A lease id the caller may not see arrives empty and prints as `-`
//! (`null` in JSON); so does a missing timestamp.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use stormlock_api::pb;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::args::LeaseFormat;

/// Stands for a value that is hidden or missing in text formats.
pub const HIDDEN: &str = "-";

/// Formats a protobuf timestamp like Python's
/// `datetime.isoformat(timespec="milliseconds")` in UTC; `None` if it is
/// missing or out of range.
pub fn format_timestamp(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    at.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+00:00"
    ))
    .ok()
}

/// A protobuf timestamp as a `SystemTime`, for relative times.
pub fn system_time(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    ts.and_then(|ts| SystemTime::try_from(*ts).ok())
}

/// A lease as the output formats see it: display strings for every field.
#[derive(Debug, Serialize)]
pub struct LeaseRecord {
    /// Lease id; `None` when hidden from the caller.
    pub id: Option<String>,
    /// Acquired at (ISO-8601).
    pub created: Option<String>,
    /// Holder.
    pub principal: String,
    /// Expires at (ISO-8601).
    pub expires: Option<String>,
    /// Fencing token.
    pub fence: u64,
    /// Why it was taken.
    pub reason: String,
    /// The resource.
    pub resource: String,
}

impl From<&pb::Lease> for LeaseRecord {
    fn from(lease: &pb::Lease) -> Self {
        Self {
            id: Some(lease.lease_id.clone()).filter(|id| !id.is_empty()),
            created: format_timestamp(lease.acquired_at.as_ref()),
            principal: lease.principal.clone(),
            expires: format_timestamp(lease.expires_at.as_ref()),
            fence: lease.fence,
            reason: lease.reason.clone(),
            resource: lease.resource.clone(),
        }
    }
}

impl LeaseRecord {
    fn text(value: &Option<String>) -> &str {
        value.as_deref().unwrap_or(HIDDEN)
    }

    /// Python stormlock 0.4.1's fields, in its order, with its labels: the
    /// only ones of `rows`, `lines`, `oneline` and `cols`, so that scripts
    /// written for Python's CLI read the same output.
    fn python_fields(&self) -> [(&'static str, String); 3] {
        [
            ("Principal", self.principal.clone()),
            ("Created", Self::text(&self.created).to_string()),
            ("Id", Self::text(&self.id).to_string()),
        ]
    }

    /// Every field, Python's first: the `long` format.
    fn all_fields(&self) -> [(&'static str, String); 7] {
        let [principal, created, id] = self.python_fields();
        [
            principal,
            created,
            id,
            ("Expires", Self::text(&self.expires).to_string()),
            ("Fence", self.fence.to_string()),
            ("Reason", self.reason.clone()),
            ("Resource", self.resource.clone()),
        ]
    }

    /// Renders the lease in `format`, newline-terminated.
    pub fn render(&self, format: LeaseFormat) -> String {
        let labelled = |fields: &[(&str, String)]| -> String {
            fields
                .iter()
                .map(|(label, value)| format!("{label}: {value}\n"))
                .collect()
        };
        match format {
            LeaseFormat::Id => format!("{}\n", Self::text(&self.id)),
            LeaseFormat::Rows => labelled(&self.python_fields()),
            LeaseFormat::Long => labelled(&self.all_fields()),
            LeaseFormat::Lines => self
                .python_fields()
                .iter()
                .map(|(_, value)| format!("{value}\n"))
                .collect(),
            // `read principal created id` would put any extra field into `id`.
            LeaseFormat::Oneline => {
                let [(_, principal), (_, created), (_, id)] = self.python_fields();
                format!("{principal}\t{created}\t{id}\n")
            }
            LeaseFormat::Json => {
                let mut out = python_json(self);
                out.push('\n');
                out
            }
            LeaseFormat::Cols => {
                let fields = self.python_fields();
                // Python pads every column, the last one too, to the longest
                // value plus four (`len`: characters, not display width).
                let width = fields
                    .iter()
                    .map(|(_, value)| value.chars().count())
                    .max()
                    .unwrap_or(0)
                    + 4;
                let pad = |text: &str| format!("{text:width$}");
                let header: String = fields
                    .iter()
                    .map(|(label, _)| pad(&label.to_ascii_uppercase()))
                    .collect();
                let values: String = fields.iter().map(|(_, value)| pad(value)).collect();
                format!("{header}\n{values}\n")
            }
        }
    }
}

/// Serializes like Python's `json.dumps` with its defaults.
pub fn python_json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, PythonFormatter);
    // Serializing our own plain structs into memory cannot fail.
    if value.serialize(&mut ser).is_err() {
        return "null".to_string();
    }
    // The formatter writes ASCII only.
    String::from_utf8_lossy(&buf).into_owned()
}

/// `json.dumps` defaults: `", "` and `": "` separators, `ensure_ascii=True`.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if (' '..='~').contains(&c) {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// A duration between two instants for people, never negative: `1h5m`, `0s`.
pub fn since(earlier: Option<SystemTime>, later: Option<SystemTime>) -> String {
    match (earlier, later) {
        (Some(a), Some(b)) => stormlock_api::duration::format_duration(Duration::from_secs(
            b.duration_since(a).map(|d| d.as_secs()).unwrap_or(0),
        )),
        _ => HIDDEN.to_string(),
    }
}

/// Cuts `text` to `width` display columns, marking the cut with "…".
pub fn truncate(text: &str, width: usize) -> String {
    use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};
    if text.width() <= width {
        return text.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    if width > 0 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos })
    }

    fn lease() -> pb::Lease {
        pb::Lease {
            resource: "deploy/prod".into(),
            lease_id: "0123456789abcdef0123456789abcdef".into(),
            principal: "alice@host".into(),
            reason: "release 1.2".into(),
            // 2026-11-26T13:28:46.123456789Z
            acquired_at: ts(1_795_699_726, 123_456_789),
            expires_at: ts(1_795_703_326, 123_000_000),
            fence: 42,
        }
    }

    #[test]
    fn timestamps_like_python_isoformat() {
        assert_eq!(
            format_timestamp(ts(1_795_699_726, 123_456_789).as_ref()).as_deref(),
            Some("2026-11-26T13:28:46.123+00:00")
        );
        assert_eq!(
            format_timestamp(ts(0, 0).as_ref()).as_deref(),
            Some("1970-01-01T00:00:00.000+00:00")
        );
        assert_eq!(
            format_timestamp(ts(1_795_699_726, 999_999_999).as_ref()).as_deref(),
            Some("2026-11-26T13:28:46.999+00:00"),
            "truncated like Python, not rounded"
        );
        assert_eq!(format_timestamp(None), None);
        assert_eq!(format_timestamp(ts(i64::MAX, 0).as_ref()), None);
    }

    #[test]
    fn python_formats() {
        let r = LeaseRecord::from(&lease());
        let id = "0123456789abcdef0123456789abcdef";
        let created = "2026-11-26T13:28:46.123+00:00";
        let expires = "2026-11-26T14:28:46.123+00:00";
        assert_eq!(r.render(LeaseFormat::Id), format!("{id}\n"));
        assert_eq!(
            r.render(LeaseFormat::Oneline),
            format!("alice@host\t{created}\t{id}\n")
        );
        // print_lease's rows and lines: Python's three fields only.
        assert_eq!(
            r.render(LeaseFormat::Rows),
            format!("Principal: alice@host\nCreated: {created}\nId: {id}\n")
        );
        assert_eq!(
            r.render(LeaseFormat::Lines),
            format!("alice@host\n{created}\n{id}\n")
        );
        assert_eq!(
            r.render(LeaseFormat::Json),
            format!(
                "{{\"id\": \"{id}\", \"created\": \"{created}\", \"principal\": \"alice@host\", \
                 \"expires\": \"{expires}\", \"fence\": 42, \"reason\": \"release 1.2\", \
                 \"resource\": \"deploy/prod\"}}\n"
            )
        );
        assert_eq!(
            r.render(LeaseFormat::Long),
            format!(
                "Principal: alice@host\nCreated: {created}\nId: {id}\n\
                 Expires: {expires}\nFence: 42\nReason: release 1.2\nResource: deploy/prod\n"
            )
        );
    }

    #[test]
    fn cols_pad_every_column_to_the_longest_value_plus_four() {
        let r = LeaseRecord::from(&lease());
        let out = r.render(LeaseFormat::Cols);
        let w = 32 + 4; // the id is the longest value
        let pad = |s: &str| format!("{s:w$}");
        let expected = format!(
            "{}{}{}\n{}{}{}\n",
            pad("PRINCIPAL"),
            pad("CREATED"),
            pad("ID"),
            pad("alice@host"),
            pad("2026-11-26T13:28:46.123+00:00"),
            pad("0123456789abcdef0123456789abcdef"),
        );
        assert_eq!(out, expected);
        // Python sizes by the values alone: a label longer than every value
        // is not padded (`'{:{w}}'.format('PRINCIPAL', w=7)`).
        let mut short = lease();
        short.principal = "a".into();
        short.lease_id = "b".into();
        short.acquired_at = None;
        let out = LeaseRecord::from(&short).render(LeaseFormat::Cols);
        assert_eq!(out, "PRINCIPALCREATEDID   \na    -    b    \n");
    }

    #[test]
    fn hidden_id_and_missing_times() {
        let mut l = lease();
        l.lease_id.clear();
        l.expires_at = None;
        let r = LeaseRecord::from(&l);
        assert_eq!(r.render(LeaseFormat::Id), "-\n");
        assert_eq!(
            r.render(LeaseFormat::Oneline),
            "alice@host\t2026-11-26T13:28:46.123+00:00\t-\n"
        );
        assert!(r.render(LeaseFormat::Rows).ends_with("Id: -\n"));
        assert!(r.render(LeaseFormat::Long).contains("Id: -\nExpires: -\n"));
        let json = r.render(LeaseFormat::Json);
        assert!(json.starts_with("{\"id\": null, "), "{json}");
        assert!(json.contains("\"expires\": null"), "{json}");
    }

    #[test]
    fn json_escapes_like_python() {
        // json.dumps({"a": "é\u{1F512}\"\\\n\x7f", "b": [1, 2]})
        #[derive(Serialize)]
        struct T {
            a: &'static str,
            b: [u8; 2],
        }
        let out = python_json(&T {
            a: "é\u{1F512}\"\\\n\x7f\x01",
            b: [1, 2],
        });
        assert_eq!(
            out,
            r#"{"a": "\u00e9\ud83d\udd12\"\\\n\u007f\u0001", "b": [1, 2]}"#
        );
    }

    #[test]
    fn truncation_respects_display_width() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        assert_eq!(truncate("日本語テキスト", 5), "日本…");
        assert_eq!(truncate("abc", 0), "");
    }

    #[test]
    fn relative_durations() {
        let t0 = system_time(ts(1000, 0).as_ref());
        let t1 = system_time(ts(1000 + 3725, 0).as_ref());
        assert_eq!(since(t0, t1), "1h2m5s");
        assert_eq!(since(t1, t0), "0s");
        assert_eq!(since(None, t0), "-");
    }
}
