//! Errors on the wire.
//!
//! Inside, every module has its own `thiserror` enum with context. What crosses NATS is only an
//! [`ApiError`]: a stable snake_case [`ErrorCode`] and a message that is safe to show the caller
//! (house rule 4). Internal detail is logged, never sent.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Stable, machine-readable error codes. Clients match on these; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be parsed or is missing fields.
    BadRequest,
    /// The request is larger than the limit for its subject.
    TooLarge,
    /// The request's signature, signer or audience is not acceptable.
    Unauthenticated,
    /// The caller is known but may not do this.
    Forbidden,
    /// A signed request or credential has expired.
    Expired,
    /// The request id was already seen (replay).
    Replayed,
    /// A join token was already used.
    TokenUsed,
    /// A join token has expired.
    TokenExpired,
    /// A join token is unknown, forged or tampered with.
    TokenInvalid,
    /// The named thing does not exist.
    NotFound,
    /// The request conflicts with current state.
    Conflict,
    /// A limit of the estate was reached.
    LimitExceeded,
    /// The control plane failed; nothing was changed.
    Internal,
    /// The control plane is not ready (starting or shutting down).
    Unavailable,
}

impl ErrorCode {
    /// The wire spelling, e.g. `token_used`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Expired => "expired",
            ErrorCode::Replayed => "replayed",
            ErrorCode::TokenUsed => "token_used",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// An HTTP-like status for the NATS micro `Nats-Service-Error-Code` header.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::TooLarge => 413,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::Expired | ErrorCode::TokenExpired | ErrorCode::TokenInvalid => 401,
            ErrorCode::Replayed | ErrorCode::TokenUsed | ErrorCode::Conflict => 409,
            ErrorCode::NotFound => 404,
            ErrorCode::LimitExceeded => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error half of every reply: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// What went wrong, machine-readable: clients match on it.
    pub code: ErrorCode,
    /// What went wrong, for people: safe to show the caller, never internal detail.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into() }
    }
    /// A `bad_request` error: the request is malformed or missing fields.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    /// A `forbidden` error: the caller is known but may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    /// An `unauthenticated` error: the request's signature, signer or audience is not acceptable.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }
    /// An internal failure: the detail goes to the log, the caller sees a generic message.
    pub fn internal(detail: impl fmt::Display) -> Self {
        let id = uuid::Uuid::new_v4();
        tracing::error!(error_id = %id, "internal error: {detail}");
        Self::new(ErrorCode::Internal, format!("internal error (id {id}); nothing was changed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_spelling() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::TooLarge,
            ErrorCode::Unauthenticated,
            ErrorCode::Forbidden,
            ErrorCode::Expired,
            ErrorCode::Replayed,
            ErrorCode::TokenUsed,
            ErrorCode::TokenExpired,
            ErrorCode::TokenInvalid,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::LimitExceeded,
            ErrorCode::Internal,
            ErrorCode::Unavailable,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
    }

    #[test]
    fn internal_errors_do_not_leak_detail() {
        let e = ApiError::internal("sled: corrupted page at /secret/path");
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains("sled"));
        assert!(!e.message.contains("/secret/path"));
    }
}
