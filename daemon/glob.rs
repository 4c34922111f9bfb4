//! Name patterns, compiled once, when the configuration is parsed: routing
//! rules (`[[resources]] match`) and access rules (`[[auth.rules]]`) use
//! these types, so a pattern means the same everywhere and a bad one is
//! refused with its line by `check-config`.
//!
//! Resource patterns: `*` matches within one `/` level, `**` across levels
//! (`prod/*` matches `prod/db` but not `prod/db/main`), `?` one character,
//! `[…]` a class, `\` escapes. Principal patterns have no levels: `*`
//! matches anything (`team-a-*`).

use std::fmt;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Deserializer};

/// Whether `*` stops at `/`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Resource,
    Principal,
}

fn compile(pattern: &str, kind: Kind) -> Result<Glob, String> {
    if pattern.is_empty() {
        return Err("a pattern may not be empty".to_string());
    }
    GlobBuilder::new(pattern)
        .literal_separator(matches!(kind, Kind::Resource))
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("{pattern:?}: {}", e.kind()))
}

/// One resource pattern (a routing rule's `match`).
#[derive(Clone)]
pub struct ResourcePattern {
    text: String,
    matcher: GlobMatcher,
}

impl ResourcePattern {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Self, String> {
        Ok(Self {
            text: pattern.to_string(),
            matcher: compile(pattern, Kind::Resource)?.compile_matcher(),
        })
    }

    /// Whether `resource` matches.
    pub fn is_match(&self, resource: &str) -> bool {
        self.matcher.is_match(resource)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl<'de> Deserialize<'de> for ResourcePattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

/// Several patterns, any of which may match (an access rule's
/// `resources` or `principals`).
#[derive(Clone)]
pub struct PatternSet {
    texts: Vec<String>,
    set: GlobSet,
}

impl PatternSet {
    fn new(patterns: Vec<String>, kind: Kind) -> Result<Self, String> {
        if patterns.is_empty() {
            return Err("needs at least one pattern".to_string());
        }
        let mut set = GlobSetBuilder::new();
        for pattern in &patterns {
            set.add(compile(pattern, kind)?);
        }
        Ok(Self {
            set: set.build().map_err(|e| e.to_string())?,
            texts: patterns,
        })
    }

    /// Resource patterns.
    pub fn resources(patterns: Vec<String>) -> Result<Self, String> {
        Self::new(patterns, Kind::Resource)
    }

    /// Principal patterns.
    pub fn principals(patterns: Vec<String>) -> Result<Self, String> {
        Self::new(patterns, Kind::Principal)
    }

    /// Whether any pattern matches `name`.
    pub fn is_match(&self, name: &str) -> bool {
        self.set.is_match(name)
    }

    /// The patterns as written.
    pub fn patterns(&self) -> &[String] {
        &self.texts
    }
}

impl fmt::Debug for PatternSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.texts).finish()
    }
}

/// Deserializes a list of resource patterns into a [`PatternSet`].
pub fn deserialize_resources<'de, D: Deserializer<'de>>(d: D) -> Result<PatternSet, D::Error> {
    PatternSet::resources(Vec::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// Deserializes a list of principal patterns into a [`PatternSet`].
pub fn deserialize_principals<'de, D: Deserializer<'de>>(d: D) -> Result<PatternSet, D::Error> {
    PatternSet::principals(Vec::deserialize(d)?).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_star_stays_within_a_level_of_a_resource() {
        let p = ResourcePattern::new("prod/*").expect("valid");
        assert!(p.is_match("prod/db"));
        assert!(!p.is_match("prod/db/main"));
        assert!(!p.is_match("prod"));
        let p = ResourcePattern::new("prod/**").expect("valid");
        assert!(p.is_match("prod/db/main"));
        let set = PatternSet::resources(vec!["team-a/*".into()]).expect("valid");
        assert!(set.is_match("team-a/x"));
        assert!(!set.is_match("team-a/x/y"));
    }

    #[test]
    fn a_star_matches_any_principal() {
        let set = PatternSet::principals(vec!["team-a-*".into()]).expect("valid");
        assert!(set.is_match("team-a-ci"));
        assert!(set.is_match("team-a-x/y"));
        assert!(!set.is_match("team-b-ci"));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_pattern() {
        let err = ResourcePattern::new("a/[").expect_err("unclosed class");
        assert!(err.contains("a/["), "{err}");
        let err = ResourcePattern::new("").expect_err("empty");
        assert!(err.contains("may not be empty"), "{err}");
        let err = PatternSet::resources(Vec::new()).expect_err("no pattern");
        assert!(err.contains("at least one pattern"), "{err}");
        let err = PatternSet::principals(vec!["ok".into(), "[".into()]).expect_err("bad");
        assert!(err.contains("\"[\""), "{err}");
    }

    #[test]
    fn levels_hold_for_every_wildcard_of_a_resource_pattern() {
        let set = PatternSet::resources(vec!["team-*/deploy/*".into()]).expect("valid");
        assert!(set.is_match("team-a/deploy/web"));
        assert!(!set.is_match("team-a/b/deploy/web"), "* crosses no '/'");
        assert!(!set.is_match("team-a/deploy/web/1"));
        let p = ResourcePattern::new("a?b").expect("valid");
        assert!(p.is_match("axb"));
        assert!(!p.is_match("a/b"), "? is no '/' either");
        let p = ResourcePattern::new("**").expect("valid");
        assert!(p.is_match("a") && p.is_match("a/b/c"));
        let p = ResourcePattern::new("prod/**/db").expect("valid");
        assert!(p.is_match("prod/db") && p.is_match("prod/eu/west/db"));
        assert!(!p.is_match("prod/db/x"));
        // A principal has no levels.
        let set = PatternSet::principals(vec!["ops".into(), "ci-?".into()]).expect("valid");
        assert!(set.is_match("ops") && set.is_match("ci-/"));
        assert!(!set.is_match("ops2") && !set.is_match("ci-ab"));
        assert_eq!(set.patterns(), ["ops", "ci-?"]);
        assert_eq!(p.as_str(), "prod/**/db");
    }

    #[test]
    fn patterns_show_as_written() {
        let p = ResourcePattern::new("prod/*").expect("valid");
        assert_eq!(format!("{p:?}"), "\"prod/*\"");
        let set = PatternSet::resources(vec!["a/**".into(), "b".into()]).expect("valid");
        assert_eq!(format!("{set:?}"), "[\"a/**\", \"b\"]");
        #[derive(Deserialize)]
        struct Rule {
            #[serde(rename = "match")]
            pattern: ResourcePattern,
            #[serde(deserialize_with = "deserialize_resources")]
            resources: PatternSet,
            #[serde(deserialize_with = "deserialize_principals")]
            principals: PatternSet,
        }
        let rule: Rule =
            toml::from_str("match = \"prod/*\"\nresources = [\"team/*\"]\nprincipals = [\"ci-*\"]")
                .expect("rule");
        assert!(rule.pattern.is_match("prod/db") && !rule.pattern.is_match("prod/db/x"));
        assert!(rule.resources.is_match("team/a") && !rule.resources.is_match("team/a/b"));
        assert!(rule.principals.is_match("ci-a/b"));
        let bad =
            toml::from_str::<Rule>("match = \"prod/[\"\nresources = [\"x\"]\nprincipals = [\"y\"]");
        assert!(bad.err().is_some_and(|e| e.to_string().contains("prod/[")));
    }

    #[test]
    fn backslash_escapes_a_star() {
        let p = ResourcePattern::new(r"a/\*").expect("valid");
        assert!(p.is_match("a/*"));
        assert!(!p.is_match("a/b"));
    }
}
