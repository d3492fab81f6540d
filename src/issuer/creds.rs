//! The standard NATS `.creds` file: a user JWT and its nkey seed in armored blocks, as written by
//! `nsc` and read by every NATS client (async-nats, nats-py, nats.go, the `nats` CLI).

use crate::crypto::SecretString;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredsError {
    #[error("creds file has no {0} block")]
    Missing(&'static str),
    #[error("creds file seed is not a user seed (SU…)")]
    NotUserSeed,
}

/// Render a `.creds` file.
pub fn format(jwt: &str, seed: &SecretString) -> SecretString {
    SecretString::new(format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
************************* IMPORTANT *************************\n\
NKEY Seed printed below can be used to sign and prove identity.\n\
NKEYs are sensitive and should be treated as secrets.\n\n\
-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
*************************************************************\n",
        seed.expose()
    ))
}

fn block<'a>(text: &'a str, what: &'static str) -> Result<&'a str, CredsError> {
    // Blocks open with `-----BEGIN …-----` and close with `------END …------` (nsc's six dashes).
    let begin = format!("-----BEGIN {what}-----");
    let start = text.find(&begin).ok_or(CredsError::Missing(what))? + begin.len();
    let rest = &text[start..];
    let end = rest.find("-----END").ok_or(CredsError::Missing(what))?;
    let body = rest[..end].trim().trim_end_matches('-').trim();
    if body.is_empty() {
        return Err(CredsError::Missing(what));
    }
    Ok(body)
}

/// Parse a `.creds` file into (user JWT, user seed).
pub fn parse(text: &str) -> Result<(String, SecretString), CredsError> {
    let jwt = block(text, "NATS USER JWT")?.to_string();
    let seed = block(text, "USER NKEY SEED")?;
    if !seed.starts_with("SU") {
        return Err(CredsError::NotUserSeed);
    }
    Ok((jwt, SecretString::new(seed.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_accepted_by_async_nats_parser() {
        let kp = nkeys::KeyPair::new_user();
        let seed = SecretString::new(kp.seed().unwrap());
        let text = format("eyJhbGc.eyJqdGk.sig", &seed);
        let (jwt, s) = parse(text.expose()).unwrap();
        assert_eq!(jwt, "eyJhbGc.eyJqdGk.sig");
        assert_eq!(s, seed);
        // async-nats' own parser takes it too.
        async_nats::ConnectOptions::with_credentials(text.expose()).unwrap();
    }

    #[test]
    fn rejects_incomplete_files() {
        assert_eq!(parse("").unwrap_err(), CredsError::Missing("NATS USER JWT"));
        assert_eq!(
            parse("-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n").unwrap_err(),
            CredsError::Missing("USER NKEY SEED")
        );
        let acct_seed = SecretString::new(nkeys::KeyPair::new_account().seed().unwrap());
        assert_eq!(parse(format("a.b.c", &acct_seed).expose()).unwrap_err(), CredsError::NotUserSeed);
    }
}
