//! Who is calling and what they may do.
//!
//! Identity, in order: the client certificate (mutual TLS), else a bearer
//! token (`authorization: Bearer …`, stored in the config as its SHA-256),
//! else — only on a daemon that requires no credentials — the principal the
//! request declares. A declared principal that differs from an authenticated
//! identity is refused, never silently replaced.
//!
//! Authorization: administrators may do everything. Everyone else is judged
//! by `[[auth.rules]]`, tried in order, **the first matching rule wins**; when
//! none matches, `[auth] default` applies to every action except
//! force-release, which stays with administrators.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};
use tonic::Request;

use crate::config::{AclRule, Action, AuthConfig, Effect};
use crate::error::Error;
use crate::tls::{IdentityCache, IdentitySource};
use crate::validate;

/// The caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The principal the request acts as.
    pub principal: String,
    /// Whether a client certificate or a token proved the principal; else
    /// the caller only declared it (a daemon that authenticates nobody).
    pub authenticated: bool,
    /// May do everything and see every lease id: an authenticated principal
    /// listed in `[auth] admins`, never a declared one.
    pub admin: bool,
}

impl Caller {
    /// Whether this caller may see the id of a lease held by `holder`: its
    /// authenticated holder and administrators. A declared name proves
    /// nothing, so it never sees an id (it gets its own in the grant).
    pub fn may_see_lease_of(&self, holder: &str) -> bool {
        self.admin || (self.authenticated && self.principal == holder)
    }
}

/// Principal used when a daemon that requires no credentials gets a request
/// that declares none.
pub const ANONYMOUS: &str = "anonymous";

/// How callers are identified and authorized.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Which certificate field names the principal.
    pub identity: IdentitySource,
    /// Principals with every right.
    pub admins: HashSet<String>,
    /// SHA-256 (hex) of each bearer token → its principal.
    pub tokens: HashMap<String, String>,
    /// Refuse requests that carry neither a certificate nor a token.
    pub require_credentials: bool,
    /// The access rules.
    pub acl: Acl,
    /// Identities of the client certificates seen.
    pub certificates: IdentityCache,
}

/// The SHA-256 of a bearer token, as stored in `[[auth.tokens]] sha256`.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Auth {
    /// Builds the authenticator of `config` (already validated).
    /// `require_credentials` is true when the daemon authenticates callers
    /// (mutual TLS or tokens configured).
    pub fn from_config(config: &AuthConfig, require_credentials: bool) -> Result<Self, String> {
        Ok(Self {
            identity: config.identity,
            admins: config.admins.iter().cloned().collect(),
            tokens: config
                .tokens
                .iter()
                .map(|t| (t.sha256.clone(), t.principal.clone()))
                .collect(),
            require_credentials,
            acl: Acl {
                rules: config.rules.clone(),
                default: config.default,
            },
            certificates: IdentityCache::default(),
        })
    }

    /// Identifies the caller of `request`, which declared `declared` (may be
    /// empty).
    pub fn caller<T>(&self, request: &Request<T>, declared: &str) -> Result<Caller, Error> {
        let declared = validate::principal(declared)?;
        let authenticated = match request.peer_certs() {
            Some(certs) => {
                let identity = certs
                    .first()
                    .ok_or_else(|| "no client certificate in the chain".to_string())
                    .and_then(|c| self.certificates.identity(c.as_ref(), self.identity))
                    .map_err(Error::Unauthenticated)?;
                // Held to the rules of a declared name: a CA that signs
                // anything must not slip control or bidirectional
                // characters into logs and audit lines.
                validate::principal(&identity).map_err(|e| {
                    Error::Unauthenticated(format!("the client certificate's identity: {e}"))
                })?;
                Some(identity)
            }
            None => self.token_principal(request)?,
        };
        let proven = authenticated.is_some();
        let principal = match authenticated {
            Some(identity) => {
                if !declared.is_empty() && declared != identity {
                    return Err(Error::PermissionDenied(format!(
                        "declared principal {declared:?} differs from the authenticated identity {identity:?}"
                    )));
                }
                identity
            }
            None if self.require_credentials => {
                return Err(Error::Unauthenticated(
                    "no client certificate or bearer token".to_string(),
                ));
            }
            None if declared.is_empty() => ANONYMOUS.to_string(),
            None => declared.to_string(),
        };
        Ok(Caller {
            admin: proven && self.admins.contains(&principal),
            authenticated: proven,
            principal,
        })
    }

    fn token_principal<T>(&self, request: &Request<T>) -> Result<Option<String>, Error> {
        let Some(value) = request.metadata().get("authorization") else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Unauthenticated(
                    "malformed authorization header: expected \"Bearer TOKEN\"".to_string(),
                )
            })?;
        self.tokens
            .get(&hash_token(token))
            .cloned()
            .map(Some)
            .ok_or_else(|| Error::Unauthenticated("invalid or revoked bearer token".to_string()))
    }

    /// Whether `caller` may do `action` on `resource` (for List and Watch,
    /// the prefix); a refusal names both.
    pub fn authorize(&self, caller: &Caller, action: Action, resource: &str) -> Result<(), Error> {
        if caller.admin || self.acl.allows(&caller.principal, action, resource) {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "{} may not {} {resource:?}",
            caller.principal,
            action.as_str()
        )))
    }
}

/// The access rules, compiled when the configuration was parsed.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<AclRule>,
    default: Effect,
}

impl Acl {
    /// Whether the rules let `principal` do `action` on `resource`.
    pub fn allows(&self, principal: &str, action: Action, resource: &str) -> bool {
        let decided = self.rules.iter().find(|r| {
            r.actions.contains(action)
                && r.principals.is_match(principal)
                && r.resources.is_match(resource)
        });
        match decided {
            Some(rule) => rule.effect == Effect::Allow,
            None => action != Action::ForceRelease && self.default == Effect::Allow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> Acl {
        let config = crate::config::Config::parse(text, "test").expect("config");
        Auth::from_config(&config.auth, true).expect("auth").acl
    }

    #[test]
    fn first_matching_rule_wins() {
        let acl = acl(r#"
            [auth]
            default = "deny"
            [[auth.rules]]
            principals = ["team-a-*"]
            resources = ["team-a/prod/**"]
            actions = ["release", "renew"]
            [[auth.rules]]
            principals = ["team-a-*"]
            resources = ["team-a/prod/**"]
            actions = ["acquire"]
            effect = "deny"
            [[auth.rules]]
            principals = ["team-a-*"]
            resources = ["team-a/**"]
            actions = ["*"]
            "#);
        assert!(acl.allows("team-a-bob", Action::Acquire, "team-a/dev/db"));
        assert!(
            !acl.allows("team-a-bob", Action::Acquire, "team-a/prod/db"),
            "deny before the broad allow"
        );
        assert!(acl.allows("team-a-bob", Action::Release, "team-a/prod/db"));
        assert!(
            !acl.allows("team-b-eve", Action::Acquire, "team-a/dev/db"),
            "default deny"
        );
        assert!(
            !acl.allows("team-a-bob", Action::ForceRelease, "team-a/dev/db"),
            "* never grants force-release: it is granted by name only"
        );
    }

    #[test]
    fn default_allows_everything_but_force_release() {
        let acl = acl("");
        for action in [
            Action::Acquire,
            Action::Release,
            Action::Renew,
            Action::Read,
            Action::List,
            Action::Watch,
        ] {
            assert!(acl.allows("anyone", action, "x"), "{action:?}");
        }
        assert!(!acl.allows("anyone", Action::ForceRelease, "x"));
    }

    #[test]
    fn bad_rules_name_the_field() {
        for (text, field) in [
            (
                "[[auth.rules]]\nprincipals = []\nresources = [\"a\"]\nactions = [\"*\"]\n",
                "principals",
            ),
            (
                "[[auth.rules]]\nprincipals = [\"a\"]\nresources = [\"a/[\"]\nactions = [\"*\"]\n",
                "resources",
            ),
            (
                "[[auth.rules]]\nprincipals = [\"a\"]\nresources = [\"a\"]\nactions = [\"destroy\"]\n",
                "actions",
            ),
        ] {
            let err = crate::config::Config::parse(text, "t")
                .expect_err(field)
                .to_string();
            // Refused while parsing: the message shows the line and its key.
            assert!(err.contains("line "), "{err}");
            assert!(err.contains(field), "{err}");
        }
        let err = crate::config::Config::parse(
            "[[auth.tokens]]\nprincipal = \"ci\"\nsha256 = \"abc\"\n",
            "t",
        )
        .expect_err("short hash")
        .to_string();
        assert!(err.contains("auth.tokens[0].sha256"), "{err}");
    }

    /// A daemon that authenticates nobody takes the name a caller declares,
    /// and names one that declares none "anonymous": never an empty
    /// principal, and nobody is an administrator.
    #[test]
    fn without_authentication_the_declared_name_or_anonymous() {
        let config =
            crate::config::Config::parse("[auth]\nadmins = [\"root\"]\n", "t").expect("config");
        let auth = Auth::from_config(&config.auth, false).expect("auth");
        let caller = |declared: &str| {
            auth.caller(&Request::new(()), declared)
                .map(|c| (c.principal, c.authenticated, c.admin))
                .ok()
        };
        assert_eq!(caller(""), Some((ANONYMOUS.to_string(), false, false)));
        assert_eq!(caller("alice"), Some(("alice".to_string(), false, false)));
        assert_eq!(caller("root"), Some(("root".to_string(), false, false)));
    }

    #[test]
    fn tokens_are_stored_hashed() {
        let token = "s3cret-token";
        let config = crate::config::Config::parse(
            &format!(
                "[[auth.tokens]]\nprincipal = \"ci\"\nsha256 = \"{}\"\n",
                hash_token(token)
            ),
            "t",
        )
        .expect("config");
        let auth = Auth::from_config(&config.auth, true).expect("auth");
        let mut request = Request::new(());
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        assert_eq!(
            auth.caller(&request, "")
                .map(|c| c.principal)
                .ok()
                .as_deref(),
            Some("ci")
        );
        let mut wrong = Request::new(());
        wrong
            .metadata_mut()
            .insert("authorization", "Bearer nope".parse().expect("header"));
        assert!(matches!(
            auth.caller(&wrong, ""),
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.caller(&Request::new(()), ""),
            Err(Error::Unauthenticated(_))
        ));
        let mut impostor = Request::new(());
        impostor.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        assert!(matches!(
            auth.caller(&impostor, "admin"),
            Err(Error::PermissionDenied(_))
        ));
    }
}
