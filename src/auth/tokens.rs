//! Callers and their bearer tokens. The tokens file holds, per caller, the SHA-256 of its token
//! (never the token itself):
//!
//! ```text
//! # caller-id   sha256-hex-of-token
//! billing       9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```
//!
//! Blank lines and lines starting with `#` are ignored. A caller may be listed on several lines
//! with different tokens: an old and a new token overlap while callers rotate. `todo-server
//! hash-token` prints the hash of a token read from standard input. The server re-reads the
//! file while it runs ([`CurrentTokens`], `reload.rs`).

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::{AuthError, bearer_token};
use crate::domain::Caller;

/// The configured callers. Empty means "no authentication": every caller is anonymous.
#[derive(Clone, Default)]
pub struct CallerTokens {
    entries: Vec<(Caller, [u8; 32])>,
}

impl std::fmt::Debug for CallerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerTokens")
            .field("callers", &self.entries.len())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("cannot read the tokens file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tokens file line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error(
        "the tokens file {path} lists no callers: nobody could call the server (remove \
         --tokens-file to serve anonymous callers on loopback)"
    )]
    NoCallers { path: String },
}

/// SHA-256 of a token, as the tokens file stores it.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl CallerTokens {
    /// The callers of a tokens file; a file that names none is refused.
    pub fn load(path: &Path) -> Result<Self, TokensFileError> {
        let text = std::fs::read(path).map_err(|source| TokensFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_file_contents(&text, path)
    }

    /// The callers of the tokens file `path` whose contents are `bytes`; a file that is not
    /// UTF-8, does not parse or names no caller is refused.
    pub fn from_file_contents(bytes: &[u8], path: &Path) -> Result<Self, TokensFileError> {
        let text = std::str::from_utf8(bytes).map_err(|err| TokensFileError::Read {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, err),
        })?;
        let tokens = Self::parse(text)?;
        if tokens.is_empty() {
            return Err(TokensFileError::NoCallers {
                path: path.display().to_string(),
            });
        }
        Ok(tokens)
    }

    pub fn parse(text: &str) -> Result<Self, TokensFileError> {
        let mut entries: Vec<(Caller, [u8; 32])> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |reason: String| TokensFileError::Line {
                line: index + 1,
                reason,
            };
            let mut fields = line.split_whitespace();
            let (Some(caller), Some(hash), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(error("expected `<caller-id> <sha256-hex>`".to_owned()));
            };
            let caller = Caller::parse(caller).map_err(|why| error(format!("caller id {why}")))?;
            if caller == Caller::anonymous() {
                return Err(error(format!(
                    "`{}` is the caller of unauthenticated servers; name the caller otherwise",
                    caller.as_str()
                )));
            }
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hash, &mut digest).map_err(|_| {
                error("the hash must be 64 hex digits (SHA-256 of the token)".to_owned())
            })?;
            match entries.iter().find(|(_, known)| known == &digest) {
                Some((owner, _)) if owner == &caller => {
                    return Err(error(format!(
                        "the same token is listed twice for caller {}",
                        caller.as_str()
                    )));
                }
                Some(_) => return Err(error("two callers share one token".to_owned())),
                None => {}
            }
            entries.push((caller, digest));
        }
        Ok(Self { entries })
    }

    /// Whether the file names `caller` (for keeping callers of other sources apart).
    pub fn names(&self, caller: &Caller) -> bool {
        self.entries.iter().any(|(named, _)| named == caller)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many callers the file names (a caller with several tokens counts once).
    pub fn callers(&self) -> usize {
        let mut callers: Vec<&Caller> = self.entries.iter().map(|(caller, _)| caller).collect();
        callers.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        callers.dedup();
        callers.len()
    }

    /// The caller of a request, from its `authorization` metadata value (if any; the guard
    /// refuses a request with several). Without configured tokens everyone is anonymous. The token's hash is compared with every entry
    /// in constant time, so timing reveals neither which entry nor how much of it matched.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        if self.entries.is_empty() {
            return Ok(Caller::anonymous());
        }
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = bearer_token(header).ok_or(AuthError::Malformed)?;
        self.caller_of_token(token)
    }

    /// The caller that holds `token` (compared as [`Self::authenticate`] does).
    pub fn caller_of_token(&self, token: &[u8]) -> Result<Caller, AuthError> {
        let presented: [u8; 32] = Sha256::digest(token).into();
        let mut found: Option<&Caller> = None;
        for (caller, digest) in &self.entries {
            if bool::from(digest.ct_eq(&presented)) {
                found = Some(caller);
            }
        }
        found.cloned().ok_or(AuthError::Unknown)
    }
}

/// The tokens in force: replaced whole when the tokens file is re-read. A call authenticates
/// against the set that was in force when it arrived.
#[derive(Debug, Clone, Default)]
pub struct CurrentTokens(Arc<RwLock<Arc<CallerTokens>>>);

impl CurrentTokens {
    pub fn new(tokens: CallerTokens) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(tokens))))
    }

    /// The set in force now.
    pub fn get(&self) -> Arc<CallerTokens> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts `tokens` in force for every call that arrives from now on.
    pub fn replace(&self, tokens: CallerTokens) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_file_without_callers_is_refused() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, b"# only a comment\n\n").unwrap();
        let err = CallerTokens::load(file.path()).unwrap_err();
        assert!(matches!(err, TokensFileError::NoCallers { .. }), "{err}");
        assert!(err.to_string().contains("no callers"), "{err}");
    }

    #[test]
    fn a_caller_named_anonymous_is_refused() {
        let err = CallerTokens::parse(&format!("anonymous {}", hash_token("t"))).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(err.to_string().contains("anonymous"), "{err}");
    }

    fn tokens() -> CallerTokens {
        CallerTokens::parse(&format!(
            "# comment\n\nalice {}\n  bob   {}  \n",
            hash_token("alice-token"),
            hash_token("bob-token")
        ))
        .unwrap()
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_token("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn known_tokens_name_their_caller() {
        let tokens = tokens();
        assert_eq!(
            tokens.authenticate(Some(b"Bearer alice-token")).unwrap(),
            Caller::parse("alice").unwrap()
        );
        assert_eq!(
            tokens.authenticate(Some(b"bearer bob-token")).unwrap(),
            Caller::parse("bob").unwrap()
        );
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_refused() {
        let tokens = tokens();
        assert_eq!(tokens.authenticate(None), Err(AuthError::Missing));
        for malformed in [
            &b"alice-token"[..],
            b"Basic YWxpY2U=",
            b"Bearer ",
            b"Bearer a b",
        ] {
            assert_eq!(
                tokens.authenticate(Some(malformed)),
                Err(AuthError::Malformed)
            );
        }
        assert_eq!(
            tokens.authenticate(Some(b"Bearer mallory-token")),
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn without_tokens_everyone_is_anonymous() {
        let tokens = CallerTokens::default();
        assert_eq!(tokens.authenticate(None).unwrap(), Caller::anonymous());
        assert_eq!(
            tokens.authenticate(Some(b"Bearer whatever")).unwrap(),
            Caller::anonymous()
        );
    }

    #[test]
    fn a_caller_may_hold_an_old_and_a_new_token_at_once() {
        let tokens = CallerTokens::parse(&format!(
            "alice {}\nalice {}\nbob {}",
            hash_token("old"),
            hash_token("new"),
            hash_token("bob's")
        ))
        .unwrap();
        let alice = Caller::parse("alice").unwrap();
        assert_eq!(tokens.authenticate(Some(b"Bearer old")).unwrap(), alice);
        assert_eq!(tokens.authenticate(Some(b"Bearer new")).unwrap(), alice);
        assert_eq!(tokens.callers(), 2);
    }

    #[test]
    fn a_replaced_set_is_in_force_for_the_next_call() {
        let current = CurrentTokens::new(tokens());
        let before = current.get();
        current.replace(CallerTokens::parse(&format!("carol {}", hash_token("c"))).unwrap());
        assert!(
            before.authenticate(Some(b"Bearer alice-token")).is_ok(),
            "kept by its holder"
        );
        assert_eq!(
            current.get().authenticate(Some(b"Bearer alice-token")),
            Err(AuthError::Unknown)
        );
        assert!(current.get().authenticate(Some(b"Bearer c")).is_ok());
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        for bad in [
            "alice",
            "alice 1234",
            &format!("alice {} extra", hash_token("x")),
            &format!("al ice{}", hash_token("x")),
            &format!("alice {}\nalice {}", hash_token("x"), hash_token("x")),
            &format!("alice {}\nbob {}", hash_token("x"), hash_token("x")),
        ] {
            assert!(CallerTokens::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
