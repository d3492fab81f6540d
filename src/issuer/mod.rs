//! Pure minting and parsing of trust material: NATS JWTs ([`jwt`]), X.509 certificates ([`x509`]),
//! `.creds` files ([`creds`]). Nothing here reads the clock, the network or the disk.

pub mod creds;
pub mod jwt;
pub mod x509;
