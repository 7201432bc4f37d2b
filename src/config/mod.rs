//! The daemon's configuration: `switchyard.toml` parsed into typed sections.
//!
//! Every key of CONTRACT.md has a field here; unknown keys are errors. Loading never panics:
//! each problem becomes a [`ConfigError`] that prints as `file:line:col: message`, so
//! `switchyard check` can point the operator at the exact spot. Syntax and type errors come
//! from the TOML deserializer (one per file); cross-references (a pool naming a missing
//! source, a tenant naming a missing pool, an unreadable certificate) are checked afterwards
//! and all of them are reported at once.

pub mod values;

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;
pub use values::{ByteSize, Cidr, CountPer, HumanDuration, List, Rate};

/// The embedded default config, compiled into the binary.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/switchyard.toml");
/// The name under which errors in the embedded default are reported.
pub const EMBEDDED_NAME: &str = "<embedded>/config/switchyard.toml";

/// One problem in a config or shaping file, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the operator named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// What is wrong, and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// A TOML source text with its name, for turning byte spans into `line:col`.
pub struct SourceText<'a> {
    /// File name for messages.
    pub name: &'a str,
    /// The whole text.
    pub text: &'a str,
}

impl SourceText<'_> {
    /// An error at the start of `span` (or at 1:1 when there is none).
    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let offset = span.map(|s| s.start).unwrap_or(0).min(self.text.len());
        let before = &self.text[..self.text.floor_char_boundary(offset)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = before[line_start..].chars().count() + 1;
        ConfigError {
            file: self.name.to_string(),
            line,
            col,
            message: message.into(),
        }
    }

    /// Parse the text as `T`, turning a TOML error into a positioned [`ConfigError`].
    pub fn parse<T: for<'de> Deserialize<'de>>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| self.error(e.span(), e.message().trim().to_string()))
    }
}

/// The whole `switchyard.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Banner and EHLO name.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Spool and logs; relative to the working directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// SMTP ingress.
    #[serde(default)]
    pub smtp: SmtpConfig,
    /// Admin HTTP API and metrics.
    #[serde(default)]
    pub http: HttpConfig,
    /// How tenant and campaign are identified.
    #[serde(default)]
    pub tenancy: TenancyConfig,
    /// Retry schedule and expiry.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Resolver settings.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Spool settings.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Domain → "host:port" smart-host routes that skip MX lookup.
    #[serde(default)]
    pub routes: BTreeMap<String, Spanned<String>>,
    /// Egress sources ("virtual MTAs").
    #[serde(default)]
    pub source: Vec<SourceConfig>,
    /// Weighted groups of sources.
    #[serde(default)]
    pub pool: Vec<PoolConfig>,
    /// Declared tenants (optional).
    #[serde(default)]
    pub tenant: BTreeMap<String, TenantConfig>,
    /// Metric label options.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Event log segments.
    #[serde(default)]
    pub logs: LogsConfig,
    /// Bounce classification rule files.
    #[serde(default)]
    pub bounce_classifier: BounceClassifierConfig,
    /// Shaping files.
    #[serde(default)]
    pub shaping: ShapingConfig,
    /// `[tls]`.
    #[serde(default)]
    pub tls: TlsConfig,
    /// `[[dkim]]`: signing keys.
    #[serde(default)]
    pub dkim: Vec<DkimConfig>,
    /// `[[webhook]]`: endpoints the event log is pushed to.
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
    /// `[cluster]`: several nodes through one Redis (absent: a single node).
    pub cluster: Option<ClusterConfig>,
}

/// `[smtp]`: the injection listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Listening sockets.
    pub listen: List<SocketAddr>,
    /// Largest accepted message (SIZE and DATA).
    pub max_message_size: ByteSize,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// Networks that may relay without AUTH.
    pub relay_hosts: List<Cidr>,
    /// PEM certificate chain; enables STARTTLS together with the key.
    pub tls_certificate: Option<Spanned<PathBuf>>,
    /// PEM private key.
    pub tls_private_key: Option<Spanned<PathBuf>>,
    /// Offer AUTH without TLS (only for trusted networks).
    pub allow_plaintext_auth: bool,
    /// A command line must arrive whole within this (a silent client, or one trickling a
    /// byte at a time, gets `421` and is dropped); each read of DATA within it too.
    pub idle_timeout: HumanDuration,
    /// Concurrent client sessions; more get `421` at connect.
    pub max_connections: usize,
    /// Concurrent sessions from one client IP (`relay_hosts` exempt); more get `421 4.7.0`.
    pub max_connections_per_ip: usize,
    /// New connections from one client IP (`relay_hosts` exempt); faster ones get
    /// `421 4.7.0`. KumoMTA's rate syntax; the burst defaults to the count.
    pub max_connection_rate_per_ip: Rate,
    /// AUTH failures from one client IP within a window before its AUTH is locked out.
    pub auth_failure_limit: CountPer,
    /// How long a client IP's AUTH stays locked out.
    pub auth_lockout: HumanDuration,
    /// SIGTERM waits at most this long for sessions and deliveries to finish.
    pub shutdown_timeout: HumanDuration,
    /// AUTH users.
    pub user: Vec<SmtpUser>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))].into(),
            max_message_size: ByteSize(25 << 20),
            max_recipients: 1000,
            relay_hosts: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect::<Vec<_>>()
                .into(),
            tls_certificate: None,
            tls_private_key: None,
            allow_plaintext_auth: false,
            idle_timeout: HumanDuration(std::time::Duration::from_secs(300)),
            max_connections: 2000,
            max_connections_per_ip: 100,
            max_connection_rate_per_ip: Rate::new(300, std::time::Duration::from_secs(60)),
            auth_failure_limit: CountPer {
                count: 5,
                window: std::time::Duration::from_secs(600),
            },
            auth_lockout: HumanDuration(std::time::Duration::from_secs(900)),
            shutdown_timeout: HumanDuration(std::time::Duration::from_secs(10)),
            user: Vec::new(),
        }
    }
}

/// `[[smtp.user]]`: an AUTH identity bound to a tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpUser {
    /// Login name.
    pub name: String,
    /// argon2 PHC string (`$argon2id$...`).
    pub password_hash: Spanned<String>,
    /// The tenant all of this user's mail belongs to.
    pub tenant: Spanned<String>,
}

/// `[http]`: admin API and `/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listening socket.
    pub listen: SocketAddr,
    /// Bearer token for `/api/v1` routes other than health.
    pub token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8025)),
            token: None,
        }
    }
}

/// `[tenancy]`: where tenant and campaign come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenancyConfig {
    /// Header naming the tenant (removed before delivery).
    pub tenant_header: String,
    /// Header naming the campaign (removed before delivery).
    pub campaign_header: String,
    /// Tenant of mail with neither AUTH nor header.
    pub default_tenant: String,
}

impl Default for TenancyConfig {
    fn default() -> Self {
        TenancyConfig {
            tenant_header: "X-Tenant".into(),
            campaign_header: "X-Campaign".into(),
            default_tenant: "default".into(),
        }
    }
}

/// `[queue]`: retry schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// First retry delay; doubles each attempt.
    pub retry_interval: HumanDuration,
    /// Cap on the retry delay.
    pub max_retry_interval: HumanDuration,
    /// Age at which a message expires.
    pub max_age: HumanDuration,
    /// An empty scheduled or ready queue is reaped after this long.
    pub reap_after: HumanDuration,
    /// `[queue.domain."D"]`: policy for mail to one destination domain.
    pub domain: BTreeMap<String, QueueScope>,
    /// `[queue.tenant."T"]`: policy for one tenant's mail.
    pub tenant: BTreeMap<String, QueueScope>,
    /// `[queue.campaign."C:T"]`: policy for one campaign of a tenant.
    pub campaign: BTreeMap<Spanned<String>, QueueScope>,
}

/// One scope's queue policy: each key optional, the scope below applies where unset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueScope {
    /// First retry delay.
    pub retry_interval: Option<HumanDuration>,
    /// Cap on the retry delay.
    pub max_retry_interval: Option<HumanDuration>,
    /// Age at which mail expires.
    pub max_age: Option<HumanDuration>,
    /// Egress pool (domain and tenant scopes only).
    pub egress_pool: Option<Spanned<String>>,
    /// Pace of each scheduled queue of the scope.
    pub max_message_rate: Option<Rate>,
}

impl QueueScope {
    /// As a layer of the actors' queue policy.
    pub fn layer(&self) -> switchyard_actors::queue_policy::PolicyLayer {
        switchyard_actors::queue_policy::PolicyLayer {
            retry_interval: self.retry_interval.map(|d| d.0),
            max_retry_interval: self.max_retry_interval.map(|d| d.0),
            max_age: self.max_age.map(|d| d.0),
            egress_pool: self.egress_pool.as_ref().map(|p| p.get_ref().clone()),
            max_message_rate: self.max_message_rate,
        }
    }
}

impl QueueConfig {
    /// The queue policies of every scope.
    pub fn policies(&self) -> switchyard_actors::queue_policy::QueuePolicies {
        use switchyard_actors::queue_policy::{QueuePolicies, RetryPolicy};
        let mut p = QueuePolicies::uniform(RetryPolicy {
            retry_interval: self.retry_interval.0,
            max_retry_interval: self.max_retry_interval.0,
            max_age: self.max_age.0,
        });
        p.domains = self
            .domain
            .iter()
            .map(|(d, s)| (d.to_ascii_lowercase(), s.layer()))
            .collect();
        p.tenants = self
            .tenant
            .iter()
            .map(|(t, s)| (t.clone(), s.layer()))
            .collect();
        p.campaigns = self
            .campaign
            .iter()
            .filter_map(|(key, s)| {
                let (campaign, tenant) = key.get_ref().split_once(':')?;
                Some(((tenant.to_string(), campaign.to_string()), s.layer()))
            })
            .collect();
        p
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        use std::time::Duration;
        QueueConfig {
            retry_interval: HumanDuration(Duration::from_secs(20 * 60)),
            max_retry_interval: HumanDuration(Duration::from_secs(4 * 3600)),
            max_age: HumanDuration(Duration::from_secs(3 * 86_400)),
            reap_after: HumanDuration(Duration::from_secs(300)),
            domain: BTreeMap::new(),
            tenant: BTreeMap::new(),
            campaign: BTreeMap::new(),
        }
    }
}

/// `[dns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers ("ip:port"); empty = the system resolver.
    pub nameservers: List<SocketAddr>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new().into(),
        }
    }
}

/// `[spool]`: durability guard rails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Refuse new mail (`452 4.3.1`) when the spool's filesystem has less free space than this,
    /// so a full disk never half-writes a message.
    pub min_free_space: ByteSize,
    /// A spool batch of only a few messages waits this long for more before its fsync
    /// (group commit; 0 turns it off).
    pub commit_delay: HumanDuration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            min_free_space: ByteSize(64 << 20),
            commit_delay: HumanDuration(std::time::Duration::from_micros(300)),
        }
    }
}

/// `[[source]]`: an egress IP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique name used by pools, shaping and metrics.
    pub name: Spanned<String>,
    /// Local address outbound connections bind to.
    pub address: IpAddr,
    /// EHLO name for this source (default: `hostname`).
    pub ehlo: Option<String>,
}

/// `[[pool]]`: weighted sources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique name used by tenants.
    pub name: Spanned<String>,
    /// Member sources.
    pub sources: Vec<PoolMember>,
}

/// One member of a pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolMember {
    /// A `[[source]]` name.
    pub source: Spanned<String>,
    /// Relative share of connections.
    #[serde(default = "one")]
    pub weight: u32,
}

/// `[tenant."name"]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Egress pool (default: "default").
    pub pool: Option<Spanned<String>>,
    /// Tenant-wide pacing across all its queues.
    pub max_message_rate: Option<Rate>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Keep the campaign label on per-campaign series.
    pub campaign_labels: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            campaign_labels: true,
        }
    }
}

/// `[logs]`: event log segments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// A segment is closed past this size (and at every UTC hour).
    pub max_segment_size: ByteSize,
    /// zstd-compress closed segments.
    pub compress: bool,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_segment_size: ByteSize(256 << 20),
            compress: true,
        }
    }
}

/// `[bounce_classifier]`: KumoMTA-format rule files, highest priority first.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BounceClassifierConfig {
    /// Rule files relative to the config file; empty = the rules shipped with switchyard.
    pub files: Vec<Spanned<String>>,
}

/// `[[dkim]]`: one DKIM key and the mail it signs (see `crate::dkim`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// The d= domain; by default signs mail whose From: domain is this.
    pub domain: Spanned<String>,
    /// Also sign mail whose From: domain is under `domain`.
    #[serde(default)]
    pub subdomains: bool,
    /// "from" (the From: domain decides) or "all" (every message, of `tenant` if set).
    #[serde(default)]
    pub sign: DkimSign,
    /// The s= selector.
    pub selector: String,
    /// PEM private key: RSA 2048–4096 bits (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8).
    pub key_file: Spanned<PathBuf>,
    /// Only this tenant's mail.
    pub tenant: Option<String>,
    /// Headers to sign.
    #[serde(default = "default_dkim_headers")]
    pub headers: Vec<String>,
    /// Sign each header once more than present, so none can be added later.
    #[serde(default)]
    pub over_sign: bool,
    /// x= after this long.
    pub expiration: Option<HumanDuration>,
}

/// What a `[[dkim]]` entry signs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimSign {
    /// Mail whose From: domain is the entry's.
    #[default]
    From,
    /// Every message (of the entry's tenant, if it has one).
    All,
}

fn default_dkim_headers() -> Vec<String> {
    [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
    ]
    .map(String::from)
    .to_vec()
}

/// `[cluster]`: this node's place in a cluster (see `crate::cluster`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port/db` (or `rediss://`).
    pub redis: Spanned<String>,
    /// This node's name (default: the host name); unique among live nodes.
    pub node: Option<Spanned<String>>,
    /// Prefix of every Redis key, so several clusters can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Connection leases live this long unless renewed.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: Spanned<HumanDuration>,
}

fn default_key_prefix() -> String {
    "switchyard".into()
}

fn default_lease_ttl() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration(std::time::Duration::from_secs(15)))
}

/// `[[webhook]]`: one HTTP endpoint the event log's records are pushed to (see
/// `crate::webhooks`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the endpoint in metrics, logs, `ctl webhooks` and its cursor.
    pub name: Spanned<String>,
    /// `https://host[:port]/path` or `http://...`.
    pub url: Spanned<String>,
    /// Only this tenant's records (absent: every tenant's, and records of no tenant).
    pub tenant: Option<String>,
    /// Record types sent (absent: every type).
    pub records: Option<Spanned<Vec<String>>>,
    /// Standard Webhooks keys, `whsec_` + base64, one per line: each batch is signed with
    /// each.
    pub secret_file: Spanned<PathBuf>,
    /// Records per POST, at most.
    #[serde(default = "default_webhook_batch_size")]
    pub batch_size: usize,
    /// A batch goes when full or when its first record has waited this long.
    #[serde(default = "default_webhook_batch_wait")]
    pub batch_wait: HumanDuration,
    /// Per request.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: HumanDuration,
    /// Records older than this are given up for this endpoint.
    #[serde(default = "default_webhook_max_age")]
    pub max_age: HumanDuration,
}

fn default_webhook_batch_size() -> usize {
    100
}

fn default_webhook_batch_wait() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}

fn default_webhook_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

fn default_webhook_max_age() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(3 * 86_400))
}

/// `[tls]`: trust for outbound TLS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM files of CA certificates trusted besides the web PKI roots (private CAs, tests).
    pub trust_roots: Vec<Spanned<PathBuf>>,
}

/// `[shaping]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapingConfig {
    /// Shaping files, relative to the config file, layered in order.
    pub files: Vec<Spanned<String>>,
}

fn default_hostname() -> String {
    "localhost".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn one() -> u32 {
    1
}

/// A loaded config together with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The parsed config.
    pub config: Config,
    /// Name used in messages (the path as given, or the embedded name).
    pub name: String,
    /// Directory that relative shaping and TLS paths are resolved against.
    pub base_dir: PathBuf,
}

impl LoadedConfig {
    /// Resolve a path named in the config relative to the config file.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The CA certificates of one `[tls] trust_roots` file (at least one).
    pub fn trust_root(
        &self,
        p: &Path,
    ) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
        use rustls_pki_types::pem::PemObject;
        let path = self.resolve(p);
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(&path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
        Ok(certs)
    }

    /// Every `[tls] trust_roots` certificate.
    pub fn trust_roots(&self) -> anyhow::Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
        let mut all = Vec::new();
        for f in &self.config.tls.trust_roots {
            all.extend(
                self.trust_root(f.get_ref())
                    .map_err(|e| anyhow::anyhow!(e))?,
            );
        }
        Ok(all)
    }

    /// The shaping files, resolved, with their spans in the config file.
    pub fn shaping_files(&self) -> Vec<PathBuf> {
        self.config
            .shaping
            .files
            .iter()
            .map(|f| self.resolve(Path::new(f.get_ref())))
            .collect()
    }
}

/// Load the config from `path`, or the embedded default when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<LoadedConfig, Vec<ConfigError>> {
    match path {
        None => load_str(EMBEDDED_DEFAULT, EMBEDDED_NAME, Path::new(".")),
        Some(p) => {
            let name = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| {
                vec![ConfigError {
                    file: name.clone(),
                    line: 1,
                    col: 1,
                    message: format!("cannot read config file: {e}"),
                }]
            })?;
            let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
            let base = if base.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                base
            };
            load_str(&text, &name, &base)
        }
    }
}

/// Parse and validate a config text.
pub fn load_str(text: &str, name: &str, base_dir: &Path) -> Result<LoadedConfig, Vec<ConfigError>> {
    let src = SourceText { name, text };
    let config: Config = src.parse().map_err(|e| vec![e])?;
    let loaded = LoadedConfig {
        config,
        name: name.to_string(),
        base_dir: base_dir.to_path_buf(),
    };
    let errors = validate(&loaded, &src);
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors)
    }
}

/// Names are used in queue names (`campaign:tenant@domain`) and metric labels.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The error for a `what` name (source, tenant, node, webhook) that is not
/// [`is_valid_name`].
fn bad_name(what: &str, name: &Spanned<String>) -> Option<(Range<usize>, String)> {
    (!is_valid_name(name.get_ref())).then(|| {
        (
            name.span(),
            format!(
                "invalid {what} name {:?}: use letters, digits, '-', '_', '.'",
                name.get_ref()
            ),
        )
    })
}

fn validate(loaded: &LoadedConfig, src: &SourceText) -> Vec<ConfigError> {
    let c = &loaded.config;
    let mut errors = Vec::new();
    let mut err = |span: Range<usize>, msg: String| errors.push(src.error(Some(span), msg));

    let lists = [
        c.smtp.listen.problems(),
        c.smtp.relay_hosts.problems(),
        c.dns.nameservers.problems(),
    ];
    for (span, msg) in lists.into_iter().flatten() {
        err(span.clone(), msg.clone());
    }
    let mut sources = HashSet::new();
    for s in &c.source {
        if let Some((span, msg)) = bad_name("source", &s.name) {
            err(span, msg);
        } else if !sources.insert(s.name.get_ref().as_str()) {
            err(
                s.name.span(),
                format!("duplicate source name {:?}", s.name.get_ref()),
            );
        }
    }
    let mut pools = HashSet::new();
    for p in &c.pool {
        if !pools.insert(p.name.get_ref().as_str()) {
            err(
                p.name.span(),
                format!("duplicate pool name {:?}", p.name.get_ref()),
            );
        }
        if p.sources.is_empty() {
            err(
                p.name.span(),
                format!("pool {:?} has no sources", p.name.get_ref()),
            );
        }
        for m in &p.sources {
            if !sources.contains(m.source.get_ref().as_str()) {
                err(
                    m.source.span(),
                    format!(
                        "pool {:?} names source {:?}, which no [[source]] defines",
                        p.name.get_ref(),
                        m.source.get_ref()
                    ),
                );
            }
            if m.weight == 0 {
                err(
                    m.source.span(),
                    format!(
                        "source {:?} in pool {:?} has weight 0",
                        m.source.get_ref(),
                        p.name.get_ref()
                    ),
                );
            }
        }
    }
    if let Some(first) = c.pool.first() {
        if !pools.contains("default") {
            err(
                first.name.span(),
                "pools are configured but none is named \"default\"; tenants without a pool use pool \"default\"".into(),
            );
        }
    }
    for (name, t) in &c.tenant {
        if let Some(pool) = &t.pool {
            let implicit_default = c.pool.is_empty() && pool.get_ref() == "default";
            if !implicit_default && !pools.contains(pool.get_ref().as_str()) {
                err(
                    pool.span(),
                    format!(
                        "tenant {name:?} names pool {:?}, which no [[pool]] defines",
                        pool.get_ref()
                    ),
                );
            }
        }
    }
    let pool_exists = |name: &str| pools.contains(name) || (c.pool.is_empty() && name == "default");
    for (scope, scopes) in [("domain", &c.queue.domain), ("tenant", &c.queue.tenant)] {
        for (name, q) in scopes {
            if let Some(pool) = &q.egress_pool {
                if !pool_exists(pool.get_ref()) {
                    err(
                        pool.span(),
                        format!(
                            "[queue.{scope}.{name:?}] names egress_pool {:?}, which no [[pool]] defines",
                            pool.get_ref()
                        ),
                    );
                }
            }
        }
    }
    for (key, q) in &c.queue.campaign {
        if !key
            .get_ref()
            .split_once(':')
            .is_some_and(|(c, t)| !c.is_empty() && !t.is_empty())
        {
            err(
                key.span(),
                format!(
                    "[queue.campaign.{:?}]: name the campaign as \"campaign:tenant\", e.g. \"spring:acme\"",
                    key.get_ref()
                ),
            );
        }
        if let Some(pool) = &q.egress_pool {
            err(
                pool.span(),
                "egress_pool is set per tenant or domain ([queue.tenant.\"T\"], [queue.domain.\"D\"]), not per campaign".into(),
            );
        }
    }
    for u in &c.smtp.user {
        if argon2::PasswordHash::new(u.password_hash.get_ref()).is_err() {
            err(u.password_hash.span(), format!("password_hash of user {:?} is not an argon2 PHC string (\"$argon2id$v=19$...\")", u.name));
        }
        if let Some((span, msg)) = bad_name("tenant", &u.tenant) {
            err(span, msg);
        }
    }
    match (&c.smtp.tls_certificate, &c.smtp.tls_private_key) {
        (Some(_), None) | (None, Some(_)) => {
            let span = c
                .smtp
                .tls_certificate
                .as_ref()
                .or(c.smtp.tls_private_key.as_ref())
                .map(|s| s.span())
                .unwrap_or(0..0);
            err(
                span,
                "tls_certificate and tls_private_key must be set together".into(),
            );
        }
        (Some(cert), Some(key)) => {
            for f in [cert, key] {
                let path = loaded.resolve(f.get_ref());
                if let Err(e) = std::fs::metadata(&path) {
                    err(f.span(), format!("cannot read {}: {e}", path.display()));
                }
            }
        }
        (None, None) => {}
    }
    if !c.http.listen.ip().is_loopback() && c.http.token.as_deref().is_none_or(str::is_empty) {
        err(
            0..0,
            format!(
                "[http] listen = \"{}\" is not a loopback address, but [http] token is not set: \
                 anyone who reaches it could inject mail and steer the daemon; set [http] token \
                 (clients send it as \"Authorization: Bearer TOKEN\") or listen on 127.0.0.1",
                c.http.listen
            ),
        );
    }
    for d in &c.dkim {
        if let Err(e) = crate::dkim::check_key(&loaded.resolve(d.key_file.get_ref()), d) {
            err(d.key_file.span(), e);
        }
        if d.selector.is_empty() || d.domain.get_ref().is_empty() {
            err(
                d.domain.span(),
                "a [[dkim]] entry needs a domain and a selector".into(),
            );
        }
        if !d.headers.iter().any(|h| h.eq_ignore_ascii_case("From")) {
            err(
                d.domain.span(),
                "a [[dkim]] entry's headers must include From (RFC 6376 §5.4)".into(),
            );
        }
    }
    if let Some(cluster) = &c.cluster {
        if let Err(e) = redis::Client::open(cluster.redis.get_ref().as_str()) {
            err(cluster.redis.span(), format!("[cluster] redis: {e}"));
        }
        if cluster.lease_ttl.get_ref().0 < std::time::Duration::from_secs(1) {
            err(
                cluster.lease_ttl.span(),
                "[cluster] lease_ttl must be at least 1s (leases are renewed every third of it)"
                    .into(),
            );
        }
        if let Some((span, msg)) = cluster.node.as_ref().and_then(|n| bad_name("node", n)) {
            err(span, msg);
        }
    }
    let mut webhooks = HashSet::new();
    for w in &c.webhook {
        let name = w.name.get_ref();
        if let Some((span, msg)) = bad_name("webhook", &w.name) {
            err(span, msg);
        } else if !webhooks.insert(name.as_str()) {
            err(w.name.span(), format!("duplicate webhook name {name:?}"));
        }
        if let Err(e) = crate::https::Url::parse(w.url.get_ref()) {
            err(w.url.span(), e);
        }
        if let Some(records) = &w.records {
            for r in records.get_ref() {
                if !switchyard_actors::record::RECORD_KINDS.contains(&r.as_str()) {
                    err(
                        records.span(),
                        format!(
                            "unknown record type {r:?}; one of {}",
                            switchyard_actors::record::RECORD_KINDS.join(", ")
                        ),
                    );
                }
            }
        }
        if let Err(e) = crate::webhooks::read_secrets(&loaded.resolve(w.secret_file.get_ref())) {
            err(w.secret_file.span(), e);
        }
        if !(1..=10_000).contains(&w.batch_size) {
            err(
                w.name.span(),
                format!("webhook {name:?}: batch_size must be 1 to 10000"),
            );
        }
    }
    for f in &c.tls.trust_roots {
        if let Err(e) = loaded.trust_root(f.get_ref()) {
            err(f.span(), e);
        }
    }
    for (domain, target) in &c.routes {
        if split_host_port(target.get_ref()).is_none() {
            err(
                target.span(),
                format!(
                    "route for {domain:?} must be \"host:port\", got {:?}",
                    target.get_ref()
                ),
            );
        }
    }
    if !is_valid_name(&c.tenancy.default_tenant) {
        err(
            0..0,
            format!("invalid default_tenant {:?}", c.tenancy.default_tenant),
        );
    }
    if c.smtp.listen.values.is_empty() && c.smtp.listen.problems().is_empty() {
        err(
            0..0,
            "[smtp] listen is empty: switchyard needs at least one SMTP listener".into(),
        );
    }
    if c.queue.retry_interval.0.is_zero() {
        err(0..0, "[queue] retry_interval must be more than 0".into());
    }
    let mut shaping_errors = Vec::new();
    let mut shaping_texts = Vec::new();
    for f in &c.shaping.files {
        let path = loaded.resolve(Path::new(f.get_ref()));
        match std::fs::read_to_string(&path) {
            Err(e) => err(
                f.span(),
                format!("cannot read shaping file {}: {e}", path.display()),
            ),
            Ok(text) => shaping_texts.push((path.display().to_string(), text)),
        }
    }
    if let Err(e) = crate::shaping::load_texts(&shaping_texts) {
        shaping_errors.extend(e);
    }
    for f in &c.bounce_classifier.files {
        let path = loaded.resolve(Path::new(f.get_ref()));
        match std::fs::read_to_string(&path) {
            Err(e) => err(
                f.span(),
                format!("cannot read bounce rules {}: {e}", path.display()),
            ),
            Ok(text) => {
                let name = path.display().to_string();
                if let Err(e) = crate::shaping::bounce_rules(&SourceText {
                    name: &name,
                    text: &text,
                }) {
                    shaping_errors.push(e);
                }
            }
        }
    }
    errors.extend(shaping_errors);
    errors
}

/// Split "host:port" (or "[v6]:port") into its parts.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
    host_ok.then(|| (host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        load_str(text, "t.toml", Path::new("."))
            .err()
            .unwrap_or_default()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn embedded_default_loads() {
        let c = load(None).expect("embedded default loads").config;
        assert_eq!(
            c.smtp.listen.values,
            vec![SocketAddr::from(([127, 0, 0, 1], 2525))]
        );
        assert_eq!(c.http.listen, SocketAddr::from(([127, 0, 0, 1], 8025)));
        assert_eq!(c.data_dir, PathBuf::from("data"));
    }

    #[test]
    fn unknown_key_has_position() {
        let e = errs(
            "hostname = \"a\"\n[smtp]\nlisten = [\"127.0.0.1:25\"]\nmax_mesage_size = \"1MiB\"\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:4:1: unknown field `max_mesage_size`"),
            "{e:?}"
        );
    }

    #[test]
    fn bad_value_has_position() {
        let e = errs("[queue]\nmax_age = \"forever\"\n");
        assert!(e[0].starts_with("t.toml:2:11: invalid duration"), "{e:?}");
    }

    #[test]
    fn missing_references_are_all_reported() {
        let e = errs(
            "[[source]]\nname = \"ip-1\"\naddress = \"127.0.0.1\"\n\n[[pool]]\nname = \"default\"\nsources = [{ source = \"ip-2\" }]\n\n[tenant.acme]\npool = \"nope\"\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:7:23: pool \"default\" names source \"ip-2\""),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("t.toml:10:8: tenant \"acme\" names pool \"nope\""),
            "{e:?}"
        );
    }

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("127.0.0.1:2626"),
            Some(("127.0.0.1".into(), 2626))
        );
        assert_eq!(
            split_host_port("mx.example:25"),
            Some(("mx.example".into(), 25))
        );
        assert_eq!(split_host_port("[::1]:25"), Some(("::1".into(), 25)));
        assert_eq!(split_host_port("mx.example"), None);
    }
}
