//! Capsules: immutable, versioned specs of something runnable.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::placement::Strategy;
use crate::resources::{Quantity, Resources, parse_cpu, parse_memory};
use crate::spec::{SpecError, validate_name};

/// The most attempts a task may be given.
pub const MAX_ATTEMPTS: u32 = 100;
/// The longest per-task timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a capsule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Process,
    Container,
    Function,
}

/// Which network a workload sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Its own network namespace with only loopback: no way out, and the node's API, transport
    /// and gossip ports are out of reach. The default, as in Bacalhau.
    #[default]
    None,
    /// The node's network, for workloads that must reach or serve other hosts.
    Host,
}

/// A capsule as a user writes it (YAML or JSON). Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapsuleDocument {
    pub name: String,
    pub kind: Kind,
    /// An explicit version; when absent the ledger assigns the next one.
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: ResourcesDocument,
    #[serde(default)]
    pub placement: PlacementDocument,
    /// Per-task timeout, e.g. `30s` or `5m`.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// `none` (default: loopback only) or `host`.
    #[serde(default)]
    pub network: Option<NetworkMode>,
    /// Environment variables whose values are secret: sealed before they are stored, never
    /// shown (`crate::secret`).
    #[serde(default)]
    pub secrets: crate::secret::DocumentSecrets,
    /// A directory or archive on the deployer's machine holding the capsule's code;
    /// `falak capsule apply` bundles it, stores it as an artifact and sets `artifact`. Each
    /// task attempt starts in a working directory holding a copy of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The code bundle's content id, set by `falak capsule apply` (or by hand after uploading
    /// the bundle to `POST /api/v1/artifacts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<crate::ArtifactId>,
    /// `kind: container`: the image, `name[:tag]` or `name@sha256:…`. `falak capsule apply`
    /// pulls a tag on the node it talks to and pins the digest it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `kind: container`: the arguments; with `command`, Kubernetes' rules: `command` replaces
    /// the image's entrypoint, `args` its `cmd`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `kind: container`: the working directory inside the container (absolute); the image's
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `kind: container`: `uid[:gid]` or `name[:group]` of the image's `/etc/passwd` and
    /// `/etc/group`; the image's user when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `kind: container`: directories mounted read-only into the container, each a bundle:
    /// `{ source: ./data, path: /data }` (bundled and uploaded by `falak capsule apply`) or
    /// `{ artifact: <id>, path: /data }`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountDocument>,
}

/// One read-only mount of a container capsule, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountDocument {
    /// A directory or archive beside the document; `falak capsule apply` bundles it and sets
    /// `artifact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<crate::ArtifactId>,
    /// Where it appears in the container (absolute).
    pub path: String,
}

/// A bundle mounted read-only into a container at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactMount {
    pub artifact: crate::ArtifactId,
    pub path: String,
}

/// The most read-only mounts a container capsule may have.
pub const MAX_MOUNTS: usize = 16;

/// What a container capsule runs, beside the capsule's `command`, `env` and `network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// `name@sha256:<hex>`: pinned, so every node runs the same bytes.
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Bundles mounted read-only, part of the signed form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ArtifactMount>,
}

impl ContainerSpec {
    /// The image's digest, `sha256:<hex>`.
    pub fn digest(&self) -> &str {
        self.image.rsplit_once('@').map_or("", |(_, digest)| digest)
    }
}

/// How many hex digits of a bundle id or image digest name a capsule's code in gossip
/// ([`CapsuleSpec::code_id`]): short enough that many fit a datagram.
pub const CODE_ID_HEX: usize = 16;

/// Whether `image` names a digest: `…@sha256:` and 64 lowercase hex digits.
pub fn image_is_pinned(image: &str) -> bool {
    image.rsplit_once('@').and_then(|(name, digest)| Some((name, digest.strip_prefix("sha256:")?))).is_some_and(
        |(name, hex)| {
            !name.is_empty() && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        },
    )
}

/// The container fields of a capsule or function document, as written, to be checked
/// ([`ContainerFields::validate`]) the same way for both.
pub(crate) struct ContainerFields<'a> {
    pub image: Option<&'a str>,
    pub args: &'a [String],
    pub workdir: Option<&'a str>,
    pub user: Option<&'a str>,
    /// The document also names a bundle (`source` or `artifact`).
    pub has_bundle: bool,
}

impl ContainerFields<'_> {
    /// Check the fields of a container `what` (`capsule`, `function`), whose image `pinner`
    /// (the CLI command that deploys it) pins; the spec has no mounts.
    pub(crate) fn validate(&self, what: &str, pinner: &str) -> Result<ContainerSpec, SpecError> {
        let Some(image) = self.image else {
            return Err(SpecError::new(
                "image",
                format!("a container {what} needs an image, e.g. `image: alpine:3.20`"),
            ));
        };
        if image.is_empty() || image.len() > 1024 || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SpecError::new("image", format!("{image:?} is not an image reference")));
        }
        if !image_is_pinned(image) {
            return Err(SpecError::new(
                "image",
                format!(
                    "{image:?} names no digest; `{pinner}` pins it (it pulls the image on the node it talks to), \
                     or write `name@sha256:<digest>` (`falak image pull` prints the digest)"
                ),
            ));
        }
        if self.has_bundle {
            return Err(SpecError::new(
                "source",
                format!("a container {what}'s code is its image; leave `source` and `artifact` out"),
            ));
        }
        if self.args.len() > 4096 || self.args.iter().any(|a| a.contains('\0')) {
            return Err(SpecError::new("args", "at most 4096 arguments, none containing NUL"));
        }
        if let Some(workdir) = self.workdir
            && (!workdir.starts_with('/') || workdir.contains('\0'))
        {
            return Err(SpecError::new("workdir", format!("{workdir:?} is not an absolute path inside the container")));
        }
        if let Some(user) = self.user
            && (user.is_empty() || user.split(':').count() > 2 || user.chars().any(|c| c.is_whitespace() || c == '\0'))
        {
            return Err(SpecError::new("user", format!("{user:?} is not `uid[:gid]` or `name[:group]`")));
        }
        Ok(ContainerSpec {
            image: image.to_owned(),
            args: self.args.to_vec(),
            workdir: self.workdir.map(str::to_owned),
            user: self.user.map(str::to_owned),
            mounts: Vec::new(),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesDocument {
    #[serde(default)]
    pub cpu: Option<Quantity>,
    #[serde(default)]
    pub memory: Option<Quantity>,
    #[serde(default)]
    pub gpus: Option<u32>,
    /// The most disk a task attempt's working directory (or a function instance's files) may
    /// use, its logs included, e.g. `512Mi`; [`DEFAULT_DISK_BYTES`] when absent.
    #[serde(default)]
    pub disk: Option<Quantity>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementDocument {
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// Labels a node must carry (hard constraint).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Labels a node should carry (raises gravity, not required).
    #[serde(default)]
    pub prefer: BTreeMap<String, String>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// A validated capsule spec, as stored in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapsuleSpec {
    pub name: String,
    pub kind: Kind,
    pub version: Option<u32>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub placement: PlacementPolicy,
    pub timeout_ms: Option<u64>,
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub network: NetworkMode,
    /// Secret environment variables: plain only on the way to the node that seals them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, crate::secret::SecretValue>,
    /// `resources.disk` as written, in bytes; `None` when the document left it out, which
    /// means [`DEFAULT_DISK_BYTES`] ([`CapsuleSpec::disk_limit_bytes`]). Left out of the stored
    /// form when absent, so specs signed before the field existed still verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// The code bundle every attempt's working directory starts with a copy of; part of the
    /// signed form, so a signature covers the code too. Left out of the stored form when
    /// absent, so specs signed before the field existed still verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<crate::ArtifactId>,
    /// `kind: container`: the pinned image and what runs of it; part of the signed form. Left
    /// out of the stored form when absent, so specs signed before the field existed still
    /// verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerSpec>>,
}

/// Where and how hard to try placing a capsule's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementPolicy {
    pub strategy: Strategy,
    pub labels: BTreeMap<String, String>,
    pub prefer: BTreeMap<String, String>,
    pub max_attempts: u32,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        PlacementPolicy {
            strategy: Strategy::Balanced,
            labels: BTreeMap::new(),
            prefer: BTreeMap::new(),
            max_attempts: 3,
        }
    }
}

/// Default requests when a capsule names none: small enough to pack many tasks per core.
pub const DEFAULT_CPU_MILLIS: u64 = 100;
pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;
/// The disk limit of a task attempt's working directory (logs included), or of a function
/// instance's files, when the spec names none: 1 GiB.
pub const DEFAULT_DISK_BYTES: u64 = 1 << 30;
/// The smallest disk limit accepted: below this a task's own logs would stop it.
pub const MIN_DISK_BYTES: u64 = 1 << 20;

impl CapsuleDocument {
    /// Read a YAML (or JSON) capsule document without validating it (the CLI bundles its
    /// `source` first); [`CapsuleDocument::validate`] checks it.
    pub fn read(text: &str) -> Result<CapsuleDocument, SpecError> {
        crate::spec::from_yaml(text)
    }

    /// Parse and validate a YAML (or JSON) capsule document.
    pub fn parse(text: &str) -> Result<CapsuleSpec, SpecError> {
        let doc: CapsuleDocument = crate::spec::from_yaml(text)?;
        doc.validate()
    }

    /// Check every field and produce the stored spec.
    pub fn validate(self) -> Result<CapsuleSpec, SpecError> {
        validate_name("name", &self.name)?;
        let container = match self.kind {
            Kind::Process => {
                for (field, set) in [
                    ("image", self.image.is_some()),
                    ("mounts", !self.mounts.is_empty()),
                    ("args", !self.args.is_empty()),
                    ("workdir", self.workdir.is_some()),
                    ("user", self.user.is_some()),
                ] {
                    if set {
                        return Err(SpecError::new(
                            field,
                            "only a `kind: container` capsule has this field; a process capsule puts its \
                             arguments in `command`",
                        ));
                    }
                }
                if self.command.is_empty() {
                    return Err(SpecError::new(
                        "command",
                        "a process capsule needs a command, e.g. [\"/bin/echo\", \"hi\"]",
                    ));
                }
                None
            }
            Kind::Function => {
                return Err(SpecError::new(
                    "kind",
                    "functions are deployed with `falak fn deploy -f FILE` (POST /api/v1/functions), not as capsules",
                ));
            }
            Kind::Container => Some(Box::new(self.container()?)),
        };
        if self.version == Some(0) {
            return Err(SpecError::new("version", "versions start at 1"));
        }
        if self.command.len() > 4096 || self.command.iter().any(|a| a.contains('\0')) {
            return Err(SpecError::new("command", "at most 4096 arguments, none containing NUL"));
        }
        crate::spec::validate_env(&self.env)?;
        crate::secret::validate_document(&self.env, &self.secrets)?;
        if self.source.is_some() && self.artifact.is_none() {
            return Err(SpecError::new(
                "source",
                "the code is not uploaded yet: apply with `falak capsule apply -f FILE` (it bundles `source`), \
                 or upload the bundle to POST /api/v1/artifacts and set `artifact` to the id it returns",
            ));
        }
        let resources = self.resources.validate()?;
        let disk_bytes = self.resources.disk()?;
        let placement = self.placement.validate()?;
        let timeout_ms = match &self.timeout {
            None => None,
            Some(t) => Some(parse_duration("timeout", t)?.as_millis() as u64),
        };
        Ok(CapsuleSpec {
            name: self.name,
            kind: self.kind,
            version: self.version,
            command: self.command,
            env: self.env,
            resources,
            placement,
            timeout_ms,
            tags: self.tags,
            network: self.network.unwrap_or_default(),
            secrets: crate::secret::plain(self.secrets),
            disk_bytes,
            artifact: self.artifact,
            container,
        })
    }

    /// The container fields of a `kind: container` capsule, checked.
    fn container(&self) -> Result<ContainerSpec, SpecError> {
        let fields = ContainerFields {
            image: self.image.as_deref(),
            args: &self.args,
            workdir: self.workdir.as_deref(),
            user: self.user.as_deref(),
            has_bundle: self.source.is_some() || self.artifact.is_some(),
        };
        let mut spec = fields.validate("capsule", "falak capsule apply")?;
        spec.mounts = self.container_mounts()?;
        Ok(spec)
    }

    fn container_mounts(&self) -> Result<Vec<ArtifactMount>, SpecError> {
        if self.mounts.len() > MAX_MOUNTS {
            return Err(SpecError::new("mounts", format!("at most {MAX_MOUNTS} mounts")));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut mounts = Vec::with_capacity(self.mounts.len());
        for (i, m) in self.mounts.iter().enumerate() {
            let field = format!("mounts[{i}]");
            let path = &m.path;
            let parts: Vec<&str> = path.split('/').skip(1).collect();
            if !path.starts_with('/')
                || path == "/"
                || path.len() > 1024
                || path.contains('\0')
                || parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..")
            {
                return Err(SpecError::new(
                    format!("{field}.path"),
                    format!("{path:?} is not an absolute path below `/` without `.`, `..` or empty parts"),
                ));
            }
            if !seen.insert(path.clone()) {
                return Err(SpecError::new(format!("{field}.path"), format!("{path:?} is mounted twice")));
            }
            let Some(artifact) = m.artifact else {
                return Err(SpecError::new(
                    format!("{field}.source"),
                    "the mount's bundle is not uploaded yet: apply with `falak capsule apply -f FILE` (it bundles \
                     `source`), or upload it to POST /api/v1/artifacts and set `artifact`",
                ));
            };
            mounts.push(ArtifactMount { artifact, path: path.clone() });
        }
        Ok(mounts)
    }
}

impl ResourcesDocument {
    pub(crate) fn validate(&self) -> Result<Resources, SpecError> {
        let cpu_millis = match &self.cpu {
            None => DEFAULT_CPU_MILLIS,
            Some(q) => parse_cpu(&q.as_text()).map_err(|e| SpecError::new("resources.cpu", e.to_string()))?,
        };
        let memory_bytes = match &self.memory {
            None => DEFAULT_MEMORY_BYTES,
            Some(q) => parse_memory(&q.as_text()).map_err(|e| SpecError::new("resources.memory", e.to_string()))?,
        };
        let gpus = self.gpus.unwrap_or(0);
        if gpus > crate::resources::MAX_GPUS {
            return Err(SpecError::new(
                "resources.gpus",
                format!("{gpus} is more than {}", crate::resources::MAX_GPUS),
            ));
        }
        Ok(Resources { cpu_millis, memory_bytes, gpus })
    }

    /// `resources.disk` in bytes, `None` when absent. Not part of [`Resources`]: placement
    /// does not weigh disk; the node enforces it on each attempt or instance (and keeps its
    /// own reserve, `docs/design/executor.md`).
    pub(crate) fn disk(&self) -> Result<Option<u64>, SpecError> {
        let Some(q) = &self.disk else { return Ok(None) };
        let bytes = parse_memory(&q.as_text()).map_err(|e| SpecError::new("resources.disk", e.to_string()))?;
        if bytes < MIN_DISK_BYTES {
            return Err(SpecError::new(
                "resources.disk",
                format!(
                    "{:?} is less than the minimum of 1Mi (the logs count against it); write e.g. `512Mi` or `2Gi`, \
                     or leave it out for the default of 1Gi",
                    q.as_text()
                ),
            ));
        }
        Ok(Some(bytes))
    }
}

impl PlacementDocument {
    fn validate(&self) -> Result<PlacementPolicy, SpecError> {
        let max_attempts = self.max_attempts.unwrap_or(3);
        if max_attempts == 0 || max_attempts > MAX_ATTEMPTS {
            return Err(SpecError::new(
                "placement.max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS}, got {max_attempts}"),
            ));
        }
        Ok(PlacementPolicy {
            strategy: self.strategy.unwrap_or(Strategy::Balanced),
            labels: self.labels.clone(),
            prefer: self.prefer.clone(),
            max_attempts,
        })
    }
}

/// Parse a human duration (`30s`, `5m`, `1h 30m`) bounded by [`MAX_TIMEOUT`].
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, SpecError> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| SpecError::new(field, format!("{text:?} is not a duration ({e}); write e.g. `30s` or `5m`")))?;
    if d.is_zero() {
        return Err(SpecError::new(field, "must be more than zero"));
    }
    if d > MAX_TIMEOUT {
        return Err(SpecError::new(field, format!("{text:?} is longer than the maximum of 7 days")));
    }
    Ok(d)
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Process => "process",
        Kind::Container => "container",
        Kind::Function => "function",
    }
}

/// One stored version of a capsule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapsuleVersion {
    pub version: u32,
    pub spec: CapsuleSpec,
    pub created_at: crate::Millis,
    /// The deployer's signature of `spec.signed_form()`.
    #[serde(default)]
    pub signature: Option<crate::signing::SpecSignature>,
}

impl CapsuleSpec {
    /// The short id of the code every task of this version needs on its node: its bundle's id
    /// or its image's digest, the first [`CODE_ID_HEX`] hex digits; `None` for a process
    /// capsule that runs what the node has.
    /// Every bundle this version needs on the node that runs it: its code and its mounts'.
    pub fn artifacts(&self) -> Vec<crate::ArtifactId> {
        let mounts = self.container.iter().flat_map(|c| c.mounts.iter().map(|m| m.artifact));
        self.artifact.into_iter().chain(mounts).collect()
    }

    pub fn code_id(&self) -> Option<String> {
        let hex = match (&self.artifact, &self.container) {
            (Some(artifact), _) => artifact.to_string(),
            (None, Some(container)) => container.digest().trim_start_matches("sha256:").to_owned(),
            (None, None) => return None,
        };
        Some(hex.chars().take(CODE_ID_HEX).collect())
    }

    /// The spec as it is signed: without its version, which the ledger may assign, and with
    /// its secrets' names but not their values (the CLI signs them plain, the node seals them).
    pub fn signed_form(&self) -> CapsuleSpec {
        CapsuleSpec { version: None, secrets: crate::secret::redacted(&self.secrets), ..self.clone() }
    }

    /// The spec as API answers show it: secret values replaced by `Redacted`.
    pub fn redacted(&self) -> CapsuleSpec {
        CapsuleSpec { secrets: crate::secret::redacted(&self.secrets), ..self.clone() }
    }

    /// Whether every secret is sealed (what the ledger accepts).
    pub fn secrets_sealed(&self) -> bool {
        crate::secret::all_sealed(&self.secrets)
    }

    /// The disk limit of each task attempt: `resources.disk`, else [`DEFAULT_DISK_BYTES`].
    pub fn disk_limit_bytes(&self) -> u64 {
        self.disk_bytes.unwrap_or(DEFAULT_DISK_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_container_capsule_needs_a_pinned_image_and_keeps_its_fields_in_the_signed_form() {
        let text = format!(
            "name: web\nkind: container\nimage: reg:5000/box:1@{DIGEST}\nargs: [\"-c\", \"echo hi\"]\n\
             workdir: /srv\nuser: \"1000:1000\"\n"
        );
        let spec = CapsuleDocument::parse(&text).unwrap();
        let container = spec.container.clone().unwrap();
        assert_eq!(container.digest(), DIGEST);
        assert_eq!(container.args, ["-c", "echo hi"]);
        assert!(spec.command.is_empty(), "the image's entrypoint runs");
        assert_eq!(spec.signed_form().container, spec.container);

        let unpinned = CapsuleDocument::parse("name: web\nkind: container\nimage: box:1\n").unwrap_err().to_string();
        assert!(unpinned.contains("names no digest") && unpinned.contains("falak capsule apply"), "{unpinned}");
        let missing = CapsuleDocument::parse("name: web\nkind: container\n").unwrap_err().to_string();
        assert!(missing.contains("needs an image"), "{missing}");
        let relative = CapsuleDocument::parse(&format!("name: w\nkind: container\nimage: b@{DIGEST}\nworkdir: srv\n"));
        assert!(relative.unwrap_err().to_string().contains("not an absolute path"));
        let artifact = "ab".repeat(32);
        let mounted = CapsuleDocument::parse(&format!(
            "name: w\nkind: container\nimage: b@{DIGEST}\nmounts: [{{ artifact: \"{artifact}\", path: /data }}]\n"
        ))
        .unwrap();
        assert_eq!(mounted.artifacts().len(), 1, "the mount's bundle is one the node needs");
        for (mounts, wanted) in [
            ("[{ source: ./d, path: /data }]", "not uploaded yet"),
            (&format!("[{{ artifact: \"{artifact}\", path: data }}]") as &str, "not an absolute path"),
            (&format!("[{{ artifact: \"{artifact}\", path: /a/../b }}]"), "not an absolute path"),
            (
                &format!("[{{ artifact: \"{artifact}\", path: /d }}, {{ artifact: \"{artifact}\", path: /d }}]"),
                "mounted twice",
            ),
        ] {
            let text = format!("name: w\nkind: container\nimage: b@{DIGEST}\nmounts: {mounts}\n");
            let error = CapsuleDocument::parse(&text).unwrap_err().to_string();
            assert!(error.contains(wanted), "{mounts}: {error}");
        }
        let on_process = CapsuleDocument::parse("name: p\nkind: process\ncommand: [x]\nimage: box\n").unwrap_err();
        assert!(on_process.to_string().contains("only a `kind: container` capsule"), "{on_process}");
        // A process capsule's stored form is unchanged by the new fields.
        let process = CapsuleDocument::parse("name: p\nkind: process\ncommand: [x]\n").unwrap();
        assert!(!serde_json::to_string(&process).unwrap().contains("container"));
    }

    const HELLO: &str = r#"
name: hello
kind: process
command: ["/bin/sh", "-c", "echo task $FALAK_TASK_INDEX of $FALAK_TASK_COUNT"]
resources: { cpu: 100m, memory: 32Mi }
placement: { strategy: balanced, labels: {}, max_attempts: 3 }
"#;

    fn error_of(text: &str) -> String {
        CapsuleDocument::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn readme_capsule_parses() {
        let spec = CapsuleDocument::parse(HELLO).unwrap();
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.resources, Resources::new(100, 32 << 20));
        assert_eq!(spec.placement.max_attempts, 3);
        assert_eq!(spec.placement.strategy, Strategy::Balanced);
    }

    #[test]
    fn errors_name_the_field() {
        expect_test::expect![[r#"field `resources.cpu`: "-1" is negative; quantities must be zero or more"#]]
            .assert_eq(&error_of("name: a\nkind: process\ncommand: [x]\nresources: { cpu: '-1' }"));
        expect_test::expect![[
            r#"field `resources.memory`: "99999Pi" is not a quantity; write e.g. `32Mi`, `1Gi` or `512M`"#
        ]]
        .assert_eq(&error_of("name: a\nkind: process\ncommand: [x]\nresources: { memory: 99999Pi }"));
        expect_test::expect!["field `placement.color`: unknown field `color`, expected one of `strategy`, `labels`, `prefer`, `max_attempts` at line 4 column 14"]
            .assert_eq(&error_of("name: a\nkind: process\ncommand: [x]\nplacement: { color: red }"));
        expect_test::expect!["field `name`: \"Hello World\" is not a valid name: use 1-63 lowercase letters, digits and '-', not starting with '-'"]
            .assert_eq(&error_of("name: Hello World\nkind: process\ncommand: [x]"));
        expect_test::expect!["field `command`: a process capsule needs a command, e.g. [\"/bin/echo\", \"hi\"]"]
            .assert_eq(&error_of("name: a\nkind: process"));
        expect_test::expect!["field `placement.max_attempts`: must be between 1 and 100, got 0"]
            .assert_eq(&error_of("name: a\nkind: process\ncommand: [x]\nplacement: { max_attempts: 0 }"));
        expect_test::expect![[
            r#"field `timeout`: "forever" is not a duration (expected number at 0); write e.g. `30s` or `5m`"#
        ]]
        .assert_eq(&error_of("name: a\nkind: process\ncommand: [x]\ntimeout: forever"));
    }

    #[test]
    fn source_needs_an_uploaded_bundle_whose_id_the_signature_covers() {
        let text = "name: a\nkind: process\ncommand: [./run.sh]\nsource: ./app\n";
        expect_test::expect!["field `source`: the code is not uploaded yet: apply with `falak capsule apply -f FILE` (it bundles `source`), or upload the bundle to POST /api/v1/artifacts and set `artifact` to the id it returns"]
            .assert_eq(&error_of(text));
        let mut doc: CapsuleDocument = crate::spec::from_yaml(text).unwrap();
        doc.artifact = Some(crate::ArtifactId([7; 32]));
        let spec = doc.clone().validate().unwrap();
        assert_eq!(spec.artifact, Some(crate::ArtifactId([7; 32])));
        assert_eq!(spec.signed_form().artifact, spec.artifact, "the signature covers the code");
        // The CLI sends the document on with `source` taken out; a hand-made one may keep it.
        doc.source = None;
        assert_eq!(doc.validate().unwrap(), spec);
        // A spec without code is stored as before, so older signatures still verify.
        let plain = CapsuleDocument::parse(HELLO).unwrap();
        assert!(!serde_json::to_string(&plain).unwrap().contains("artifact"));
    }

    #[test]
    fn disk_is_a_byte_quantity_with_a_default() {
        let spec = CapsuleDocument::parse(HELLO).unwrap();
        assert_eq!((spec.disk_bytes, spec.disk_limit_bytes()), (None, DEFAULT_DISK_BYTES));
        for (written, bytes) in [("512Mi", 512 << 20), ("2G", 2_000_000_000), ("1048576", 1 << 20)] {
            let spec = CapsuleDocument::parse(&format!(
                "name: a\nkind: process\ncommand: [x]\nresources: {{ disk: {written} }}"
            ))
            .unwrap();
            assert_eq!((spec.disk_bytes, spec.disk_limit_bytes()), (Some(bytes), bytes), "{written}");
        }
        let disk = |written: &str| {
            error_of(&format!("name: a\nkind: process\ncommand: [x]\nresources: {{ disk: {written} }}"))
        };
        expect_test::expect![[
            r#"field `resources.disk`: "lots" is not a quantity; write e.g. `32Mi`, `1Gi` or `512M`"#
        ]]
        .assert_eq(&disk("lots"));
        expect_test::expect![[r#"field `resources.disk`: "-1Gi" is negative; quantities must be zero or more"#]]
            .assert_eq(&disk("'-1Gi'"));
        expect_test::expect![[r#"field `resources.disk`: "64Ki" is less than the minimum of 1Mi (the logs count against it); write e.g. `512Mi` or `2Gi`, or leave it out for the default of 1Gi"#]]
            .assert_eq(&disk("64Ki"));
        expect_test::expect![[r#"field `resources.disk`: "2000Ti" is more than the allowed maximum of 1Pi"#]]
            .assert_eq(&disk("2000Ti"));
    }

    #[test]
    fn a_spec_without_disk_stores_and_signs_as_before() {
        // Specs signed before `resources.disk` existed have no `disk_bytes`: their stored form
        // must serialize exactly as it did, or their signatures would no longer verify.
        let spec = CapsuleDocument::parse(HELLO).unwrap();
        let json = serde_json::to_string(&spec.signed_form()).unwrap();
        assert!(!json.contains("disk"), "{json}");
        let back: CapsuleSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back.disk_bytes, None);
        let with = CapsuleDocument::parse(
            &format!("{HELLO}\nresources: {{ disk: 8Mi }}").replace("resources: { cpu: 100m, memory: 32Mi }\n", ""),
        )
        .unwrap();
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.contains(r#""disk_bytes":8388608"#), "{json}");
    }

    #[test]
    fn malformed_yaml_is_an_error_not_a_panic() {
        assert!(!error_of("name: [unclosed").is_empty());
        assert!(!error_of("").is_empty());
        assert!(!error_of(":::").is_empty());
        assert!(error_of("name: a\nkind: spaceship\ncommand: [x]").starts_with("field `kind`"));
    }
}
