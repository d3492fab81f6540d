//! The estate as code: the document `tillit export` writes and `tillit apply` reads
//! (`estate.toml`), and the verbs behind them.

use serde::{Deserialize, Serialize};

endpoint! {
    /// `tillit.v1.admin.estate.export`: The live estate as a document (services' grants, secrets' readers, sites), with its revision. A tenant-confined admin gets its tenants.
    EstateExport: "tillit.v1.admin.estate.export", Admin, EstateExportRequest => EstateExportReply, "estate-export-request.json" => "estate-export-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.secret.readers`: Replace who may read a secret (values untouched).
    SecretReaders: "tillit.v1.admin.secret.readers", Admin, SecretReadersRequest => super::SecretReply, "secret-readers-request.json" => "secret-reply.json"
}
endpoint! {
    /// `tillit.v1.admin.dashboard.session`: A one-time URL that opens the read-only dashboard as the calling admin.
    DashboardSession: "tillit.v1.admin.dashboard.session", Admin, DashboardSessionRequest => DashboardSessionReply, "dashboard-session-request.json" => "dashboard-session-reply.json"
}

/// The version of the estate document this tillit reads and writes.
pub const ESTATE_DOC_VERSION: u32 = 1;

/// The estate as code (`estate.toml`). What it does not name in its tenants is left alone.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EstateDoc {
    /// The document format (1).
    pub version: u32,
    /// The tenants this document manages: their services' grants and their secrets' readers are
    /// exactly what it says (a service of these tenants it does not name has no grants).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Whether it manages sites: then the estate has exactly its sites (others are removed).
    #[serde(default)]
    pub manage_sites: bool,
    /// Services and what was granted to them on top of their defaults.
    #[serde(default, rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceDoc>,
    /// Secrets and who may read them (values never appear here).
    #[serde(default, rename = "secret", skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretDoc>,
    /// Sites.
    #[serde(default, rename = "site", skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<SiteDoc>,
}

/// One service's grants.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct ServiceDoc {
    /// `tenant/project/env/service`.
    pub id: String,
    /// Subjects granted for publishing, on top of the defaults.
    #[serde(default, rename = "pub")]
    pub publish: Vec<String>,
    /// Subjects granted for subscribing, on top of the defaults.
    #[serde(default, rename = "sub")]
    pub subscribe: Vec<String>,
}

/// One secret's readers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct SecretDoc {
    /// `tenant/project/env/name`.
    pub path: String,
    /// `tenant/project/env/service`, `tenant/project/env/*` or `site:NAME`.
    pub readers: Vec<String>,
}

/// One site.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct SiteDoc {
    /// The site's name.
    pub name: String,
    /// `host:port` its leaf server listens on for clients.
    pub listen: String,
    /// Extra names on its server certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// `tillit.v1.admin.estate.export` request body (empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstateExportRequest {}

/// `tillit.v1.admin.estate.export` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EstateExportReply {
    /// `sha256:<hex>` of the document: a plan made against another revision is stale.
    pub revision: String,
    /// The tenants the caller is confined to (empty: the whole estate).
    #[serde(default)]
    pub confined_to: Vec<String>,
    /// The live estate, as the caller may see it.
    pub document: EstateDoc,
}

/// `tillit.v1.admin.secret.readers` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretReadersRequest {
    /// The secret, `tenant/project/env/name`.
    pub path: crate::secrets::SecretPath,
    /// Who may read it from now on (1 to 64), under the rules of `secret.put`.
    pub readers: Vec<String>,
}

/// `tillit.v1.admin.dashboard.session` request body (empty).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardSessionRequest {}

/// `tillit.v1.admin.dashboard.session` reply.
#[derive(Clone, Serialize, Deserialize)]
pub struct DashboardSessionReply {
    /// Open this once, within a minute: it signs the browser in as the calling admin (a secret; `Debug` hides it).
    pub url: String,
    /// When the URL stops working (RFC 3339).
    pub expires_at: String,
}

impl std::fmt::Debug for DashboardSessionReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardSessionReply").field("url", &"<redacted>").field("expires_at", &self.expires_at).finish()
    }
}
