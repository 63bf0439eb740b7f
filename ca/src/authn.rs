//! Caller authentication: a bearer token becomes a caller identity (and, for node agents, the node
//! they run on).
//!
//! [`Authenticator`] is the seam: local mode reads tokens from a file ([`StaticTokens`]); Kubernetes
//! mode asks the API server (TokenReview).

use std::collections::HashMap;
use std::path::Path;

use ring::digest::{SHA256, digest};
use serde::Deserialize;
use veil_mesh::identity::{BoxFuture, Identity};

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Who the token belongs to.
    pub identity: Identity,
    /// The node the caller runs on, when known (node agents).
    pub node: Option<String>,
}

/// Why a caller was not authenticated.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthnError {
    /// No `authorization` header.
    #[error("missing bearer token")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("malformed authorization header (expected `Bearer <token>`)")]
    Malformed,
    /// The token is unknown, expired or for another audience.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The authentication backend could not answer; the request is refused, never let through.
    #[error("authentication backend unavailable: {0}")]
    Unavailable(String),
}

/// Turns a bearer token into a caller.
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    /// Authenticates `token`.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthnError>>;
}

/// Extracts the token from an `authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthnError> {
    let value = header.ok_or(AuthnError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthnError::Malformed);
    }
    Ok(token)
}

/// Tokens shorter than this are refused when the file is loaded: they can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// Local mode: tokens from a file mapping each to a caller.
///
/// ```yaml
/// tokens:
///   - token: 3f9d1c0b5e8a47a2b6c4d0e1f2a3b4c5
///     identity: spiffe://cluster.local/ns/veil-system/sa/ztunnel
///     node: node-a
/// ```
///
/// Tokens are kept only as SHA-256 digests, and looked up by digest, so that the lookup reveals
/// nothing about a token through timing.
#[derive(Debug)]
pub struct StaticTokens {
    by_digest: HashMap<[u8; 32], Caller>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token: String,
    identity: Identity,
    #[serde(default)]
    node: Option<String>,
}

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not have the expected shape.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl StaticTokens {
    /// Reads and validates a tokens file.
    pub fn from_file(path: &Path) -> Result<Self, TokensFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|reason| TokensFileError::Invalid {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses and validates tokens YAML.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let file: TokensFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let mut by_digest = HashMap::new();
        for (i, entry) in file.tokens.into_iter().enumerate() {
            if entry.token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "tokens[{i}] ({}): tokens must be at least {MIN_TOKEN_LEN} characters",
                    entry.identity
                ));
            }
            if entry.node.as_deref().is_some_and(str::is_empty) {
                return Err(format!("tokens[{i}] ({}): empty node name", entry.identity));
            }
            let caller = Caller {
                identity: entry.identity,
                node: entry.node,
            };
            if by_digest
                .insert(token_digest(&entry.token), caller)
                .is_some()
            {
                return Err(format!("tokens[{i}]: the same token appears twice"));
            }
        }
        Ok(Self { by_digest })
    }
}

fn token_digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

impl Authenticator for StaticTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthnError>> {
        let result = self
            .by_digest
            .get(&token_digest(token))
            .cloned()
            .ok_or_else(|| AuthnError::Invalid("unknown token".into()));
        Box::pin(async move { result })
    }
}
