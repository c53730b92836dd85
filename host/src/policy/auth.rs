//! Bearer-token auth: the token read from an env var or a file, kept only
//! as its digest, compared in constant time.

use super::Rejection;
use crate::manifest::AuthSpec;
use anyhow::{Context, Result, bail};
use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A bearer token, kept only as its digest and compared in constant time.
pub struct BearerAuth {
    digest: [u8; 32],
}

impl BearerAuth {
    /// Reads the token from where `spec` says.
    pub fn load(spec: &AuthSpec) -> Result<Self> {
        let token = match spec {
            AuthSpec::BearerTokenEnv(var) => std::env::var(var)
                .with_context(|| format!("auth: environment variable {var} (bearer_token_env) is not set"))?,
            AuthSpec::BearerTokenFile(path) => std::fs::read_to_string(path)
                .with_context(|| format!("auth: cannot read bearer_token_file {}", path.display()))?,
        };
        let token = token.trim();
        if token.is_empty() {
            bail!("auth: the bearer token is empty");
        }
        Ok(Self { digest: Sha256::digest(token.as_bytes()).into() })
    }

    /// Accepts `Authorization: Bearer <token>` with the right token.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(Rejection::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(&self.digest)) { Ok(()) } else { Err(Rejection::Unauthorized) }
    }
}
