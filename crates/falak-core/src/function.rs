//! Functions: capsules invoked over HTTP through the gateway on every node.
//!
//! A user writes a [`FunctionDocument`] (`kind: function`); `falak fn deploy` bundles its
//! `source` directory, stores the bundle as an artifact and sends the document with the
//! bundle's content id in `artifact`. The ledger stores the validated [`FunctionSpec`] with the
//! version it assigned.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ArtifactId;
use crate::capsule::{ContainerFields, ContainerSpec, Kind, NetworkMode, ResourcesDocument, parse_duration};
use crate::resources::Resources;
use crate::spec::{SpecError, validate_name};

/// How a function's instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// The Python runtime host shipped in the binary loads `handler` (`module.function`).
    Python,
    /// `command` serves HTTP on the Unix socket (`FALAK_SOCKET`) or port (`PORT`) it is given.
    Http,
    /// `command` runs once per request: body on stdin, response body on stdout.
    Exec,
    /// The `image`'s entrypoint (or `command`) serves HTTP on the Unix socket (`FALAK_SOCKET`)
    /// or, on the node's network, on `PORT`; run by the node's OCI runtime.
    Container,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Python => "python",
            Runtime::Http => "http",
            Runtime::Exec => "exec",
            Runtime::Container => "container",
        }
    }
}

/// The most instances of one function the mesh runs at once.
pub const MAX_INSTANCES: u32 = 1000;
/// The most requests one instance serves at once.
pub const MAX_CONCURRENCY: u32 = 1000;
/// Default request timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default idle time before an instance above `min_instances` is stopped.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Default number of observers that keep a function's snapshot ready.
pub const DEFAULT_OBSERVERS: u32 = 2;
/// The most observers a function may ask for.
pub const MAX_OBSERVERS: u32 = 16;

/// A function as a user writes it. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionDocument {
    pub name: String,
    pub kind: Kind,
    pub runtime: Runtime,
    /// Python: `module.function`, e.g. `main.handle`.
    #[serde(default)]
    pub handler: Option<String>,
    /// `http` and `exec`: the program and its arguments, run in the bundle directory.
    /// `container`: replaces the image's entrypoint (Kubernetes' rules, with `args`).
    #[serde(default)]
    pub command: Vec<String>,
    /// `container`: the image, `name[:tag]` or `name@sha256:…`; `falak fn deploy` pins a tag
    /// to the digest the node it talks to pulls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `container`: replaces the image's `cmd`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `container`: the working directory inside it (absolute); the image's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `container`: `uid[:gid]` or `name[:group]` of the image's own files; the image's user
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `container`: `host` (the default: instances may serve on `PORT`) or `none` (loopback
    /// only; instances serve on `FALAK_SOCKET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
    /// A directory or archive on the deployer's machine; `falak fn deploy` bundles it.
    #[serde(default)]
    pub source: Option<String>,
    /// The bundle's content id, set by `falak fn deploy` (or by hand after uploading it).
    #[serde(default)]
    pub artifact: Option<ArtifactId>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are secret: sealed before they are stored, never
    /// shown (`crate::secret`).
    #[serde(default)]
    pub secrets: crate::secret::DocumentSecrets,
    #[serde(default)]
    pub scaling: ScalingDocument,
    /// Request timeout, e.g. `30s`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Per instance.
    #[serde(default)]
    pub resources: ResourcesDocument,
    /// `zygote` (default for python): instances fork from a pre-initialized process; `none`.
    #[serde(default)]
    pub snapshot: Option<SnapshotPolicy>,
    /// How many nodes keep the function prepared (artifact, dependencies, snapshot).
    #[serde(default)]
    pub observers: Option<u32>,
    /// Labels a node must carry to run the function.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingDocument {
    #[serde(default)]
    pub min_instances: Option<u32>,
    #[serde(default)]
    pub max_instances: Option<u32>,
    #[serde(default)]
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

/// How instances start pre-initialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotPolicy {
    /// One pre-initialized process per deployment imports the code; instances fork from it.
    Zygote,
    /// Every instance starts from scratch.
    None,
}

/// Scaling limits of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scaling {
    pub min_instances: u32,
    pub max_instances: u32,
    pub concurrency: u32,
    pub idle_timeout_ms: u64,
}

/// A validated function, as stored in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    pub name: String,
    /// Assigned by the ledger on deploy.
    pub version: u32,
    pub runtime: Runtime,
    pub handler: Option<String>,
    pub command: Vec<String>,
    /// The bundle; every runtime but `container` has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactId>,
    /// `container`: the pinned image and what runs of it (no mounts). Part of the signed form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerSpec>>,
    /// `container`: the network its instances see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
    pub env: BTreeMap<String, String>,
    /// Secret environment variables: plain only on the way to the node that seals them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: crate::secret::Secrets,
    pub scaling: Scaling,
    pub timeout_ms: u64,
    pub resources: Resources,
    pub snapshot: SnapshotPolicy,
    pub observers: u32,
    pub labels: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
    /// `resources.disk` as written, in bytes, per instance; `None` means
    /// [`DEFAULT_DISK_BYTES`](crate::capsule::DEFAULT_DISK_BYTES)
    /// ([`FunctionSpec::disk_limit_bytes`]). Left out of the stored form when absent, so specs
    /// signed before the field existed still verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

impl FunctionSpec {
    /// `name@version`, the deployment's identity on every node (`name@new` before the ledger
    /// has assigned a version).
    pub fn deployment(&self) -> String {
        if self.version == 0 { format!("{}@new", self.name) } else { format!("{}@{}", self.name, self.version) }
    }
}

impl FunctionDocument {
    /// Parse a YAML (or JSON) function document. `source` is allowed here (the CLI bundles it);
    /// [`FunctionDocument::validate`] needs `artifact`.
    pub fn parse(text: &str) -> Result<FunctionDocument, SpecError> {
        let doc: FunctionDocument = crate::spec::from_yaml(text)?;
        doc.check()?;
        Ok(doc)
    }

    /// Every check that does not need the bundle.
    pub fn check(&self) -> Result<(), SpecError> {
        validate_name("name", &self.name)?;
        if self.kind != Kind::Function {
            return Err(SpecError::new(
                "kind",
                "a function document has `kind: function`; apply other kinds with `falak capsule apply`",
            ));
        }
        match self.runtime {
            Runtime::Python => {
                let Some(handler) = &self.handler else {
                    return Err(SpecError::new(
                        "handler",
                        "a python function needs a handler `module.function`, e.g. `main.handle`",
                    ));
                };
                validate_handler(handler)?;
                if !self.command.is_empty() {
                    return Err(SpecError::new("command", "a python function runs its handler; leave command out"));
                }
            }
            Runtime::Container => {
                if self.handler.is_some() {
                    return Err(SpecError::new("handler", "only python functions have a handler; use command"));
                }
                if self.command.len() > 4096 || self.command.iter().any(|a| a.contains('\0') || a.is_empty()) {
                    return Err(SpecError::new("command", "at most 4096 arguments, none empty or containing NUL"));
                }
                if self.image.is_none() {
                    return Err(SpecError::new(
                        "image",
                        "a container function needs an image, e.g. `image: registry.example/hello:1`",
                    ));
                }
            }
            Runtime::Http | Runtime::Exec => {
                if self.command.is_empty() {
                    return Err(SpecError::new(
                        "command",
                        format!(
                            "an {} function needs a command, e.g. [\"python3\", \"server.py\"]",
                            self.runtime.name()
                        ),
                    ));
                }
                if self.handler.is_some() {
                    return Err(SpecError::new("handler", "only python functions have a handler; use command"));
                }
                if self.command.len() > 4096 || self.command.iter().any(|a| a.contains('\0') || a.is_empty()) {
                    return Err(SpecError::new("command", "at most 4096 arguments, none empty or containing NUL"));
                }
            }
        }
        if self.runtime != Runtime::Container {
            for (field, set) in [
                ("image", self.image.is_some()),
                ("args", !self.args.is_empty()),
                ("workdir", self.workdir.is_some()),
                ("user", self.user.is_some()),
                ("network", self.network.is_some()),
            ] {
                if set {
                    return Err(SpecError::new(
                        field,
                        format!(
                            "only a `runtime: container` function has this field; this one is `{}`",
                            self.runtime.name()
                        ),
                    ));
                }
            }
        } else if self.source.is_some() || self.artifact.is_some() {
            return Err(SpecError::new(
                "source",
                "a container function's code is its image; leave `source` and `artifact` out",
            ));
        }
        if self.snapshot == Some(SnapshotPolicy::Zygote) && self.runtime != Runtime::Python {
            return Err(SpecError::new("snapshot", "zygote snapshots are for python functions; use `none`"));
        }
        crate::spec::validate_env(&self.env)?;
        crate::secret::validate_document(&self.env, &self.secrets)?;
        self.resources.disk()?;
        self.scaling()?;
        self.timeout_ms()?;
        if let Some(n) = self.observers
            && (n == 0 || n > MAX_OBSERVERS)
        {
            return Err(SpecError::new("observers", format!("must be between 1 and {MAX_OBSERVERS}, got {n}")));
        }
        Ok(())
    }

    fn scaling(&self) -> Result<Scaling, SpecError> {
        let s = &self.scaling;
        let max_instances = s.max_instances.unwrap_or(8);
        let min_instances = s.min_instances.unwrap_or(0);
        let concurrency = s.concurrency.unwrap_or(1);
        if max_instances == 0 || max_instances > MAX_INSTANCES {
            return Err(SpecError::new(
                "scaling.max_instances",
                format!("must be between 1 and {MAX_INSTANCES}, got {max_instances}"),
            ));
        }
        if min_instances > max_instances {
            return Err(SpecError::new(
                "scaling.min_instances",
                format!("{min_instances} is more than max_instances ({max_instances})"),
            ));
        }
        if concurrency == 0 || concurrency > MAX_CONCURRENCY {
            return Err(SpecError::new(
                "scaling.concurrency",
                format!("must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"),
            ));
        }
        let idle_timeout_ms = match &s.idle_timeout {
            None => DEFAULT_IDLE_TIMEOUT_MS,
            Some(t) => parse_duration("scaling.idle_timeout", t)?.as_millis() as u64,
        };
        Ok(Scaling { min_instances, max_instances, concurrency, idle_timeout_ms })
    }

    fn timeout_ms(&self) -> Result<u64, SpecError> {
        match &self.timeout {
            None => Ok(DEFAULT_TIMEOUT_MS),
            Some(t) => Ok(parse_duration("timeout", t)?.as_millis() as u64),
        }
    }

    /// The container fields of a `runtime: container` function, checked.
    fn container(&self) -> Result<ContainerSpec, SpecError> {
        let fields = ContainerFields {
            image: self.image.as_deref(),
            args: &self.args,
            workdir: self.workdir.as_deref(),
            user: self.user.as_deref(),
            has_bundle: self.source.is_some() || self.artifact.is_some(),
        };
        fields.validate("function", "falak fn deploy")
    }

    /// Produce the stored spec; `version` is the one the ledger assigns.
    pub fn validate(self, version: u32) -> Result<FunctionSpec, SpecError> {
        self.check()?;
        let container = match self.runtime {
            Runtime::Container => Some(Box::new(self.container()?)),
            Runtime::Python | Runtime::Http | Runtime::Exec => None,
        };
        let artifact = self.artifact;
        if artifact.is_none() && container.is_none() {
            return Err(SpecError::new(
                "artifact",
                "no bundle: deploy with `falak fn deploy -f FILE` (it bundles `source`), or upload the bundle \
                 to POST /api/v1/artifacts and set `artifact` to the id it returns",
            ));
        }
        let scaling = self.scaling()?;
        let timeout_ms = self.timeout_ms()?;
        let resources = self.resources.validate()?;
        let disk_bytes = self.resources.disk()?;
        let snapshot = self.snapshot.unwrap_or(match self.runtime {
            Runtime::Python => SnapshotPolicy::Zygote,
            Runtime::Http | Runtime::Exec | Runtime::Container => SnapshotPolicy::None,
        });
        let network = match self.runtime {
            Runtime::Container => Some(self.network.unwrap_or(NetworkMode::Host)),
            Runtime::Python | Runtime::Http | Runtime::Exec => None,
        };
        Ok(FunctionSpec {
            name: self.name,
            version,
            runtime: self.runtime,
            handler: self.handler,
            command: self.command,
            artifact,
            container,
            network,
            env: self.env,
            secrets: crate::secret::plain(self.secrets),
            scaling,
            timeout_ms,
            resources,
            snapshot,
            observers: self.observers.unwrap_or(DEFAULT_OBSERVERS),
            labels: self.labels,
            tags: self.tags,
            disk_bytes,
        })
    }
}

/// A function in the ledger: its current version and the instance slots the mesh holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionEntry {
    pub spec: FunctionSpec,
    pub deployed_at: crate::Millis,
    /// Running instances (any version), each claimed by its node before it started.
    pub instances: Vec<InstanceSlot>,
    /// The deployer's signature of `spec.signed_form()`.
    #[serde(default)]
    pub signature: Option<crate::signing::SpecSignature>,
    /// Earlier versions, oldest first, at most [`MAX_FUNCTION_HISTORY`]: what
    /// `falak fn rollback` brings back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<FunctionVersion>,
}

/// How many earlier versions of a function the ledger keeps.
pub const MAX_FUNCTION_HISTORY: usize = 10;

/// An earlier version of a function, as it was deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionVersion {
    pub spec: FunctionSpec,
    pub deployed_at: crate::Millis,
    #[serde(default)]
    pub signature: Option<crate::signing::SpecSignature>,
}

impl FunctionSpec {
    /// The spec as it is signed: without its version, which the ledger may assign, and with
    /// its secrets' names but not their values (the CLI signs them plain, the node seals them).
    pub fn signed_form(&self) -> FunctionSpec {
        FunctionSpec { version: 0, secrets: crate::secret::redacted(&self.secrets), ..self.clone() }
    }

    /// Who its secrets are sealed for: `function/NAME` (capsules use their bare name), so a
    /// sealed value cannot be moved between a capsule and a function of the same name.
    pub fn secrets_owner(&self) -> String {
        format!("function/{}", self.name)
    }

    /// The disk limit of each instance: `resources.disk`, else
    /// [`DEFAULT_DISK_BYTES`](crate::capsule::DEFAULT_DISK_BYTES).
    pub fn disk_limit_bytes(&self) -> u64 {
        self.disk_bytes.unwrap_or(crate::capsule::DEFAULT_DISK_BYTES)
    }
}

impl FunctionEntry {
    pub fn instances_on(&self, node: &crate::NodeId) -> impl Iterator<Item = &InstanceSlot> {
        self.instances.iter().filter(move |s| s.node == *node)
    }
}

/// One instance's claim on the function's `max_instances` budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSlot {
    pub node: crate::NodeId,
    /// Unique per node (the node's pool assigns it).
    pub instance: u64,
    pub version: u32,
    pub since: crate::Millis,
}

/// Identifies an asynchronous invocation.
pub type InvocationId = u64;

/// The largest request body an asynchronous invocation may carry (it is stored in the ledger).
pub const MAX_ASYNC_BODY_BYTES: usize = 256 << 10;
/// The largest response body kept for an asynchronous invocation; longer ones are cut.
pub const MAX_ASYNC_RESULT_BYTES: usize = 1 << 20;
/// The most attempts an asynchronous invocation may ask for.
pub const MAX_INVOCATION_ATTEMPTS: u32 = 10;

/// An HTTP request kept for later: what an asynchronous invocation replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRequest {
    pub method: String,
    /// Path after `/fn/{name}`, starting with `/`.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    #[serde(with = "base64_bytes")]
    pub body: Vec<u8>,
}

/// An HTTP response kept as the result of an asynchronous invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    #[serde(with = "base64_bytes")]
    pub body: Vec<u8>,
    /// The body was longer than [`MAX_ASYNC_RESULT_BYTES`] and was cut.
    #[serde(default)]
    pub truncated: bool,
}

/// Where an asynchronous invocation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InvocationState {
    Pending,
    Succeeded,
    Failed,
}

/// An asynchronous invocation in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    pub id: InvocationId,
    pub function: String,
    pub request: StoredRequest,
    /// POSTed the result when it is known.
    pub callback: Option<String>,
    pub max_attempts: u32,
    /// The node that runs it; reassigned when that node goes OFFLINE.
    pub owner: crate::NodeId,
    pub state: InvocationState,
    pub attempts: u32,
    pub submitted_at: crate::Millis,
    pub finished_at: Option<crate::Millis>,
    pub response: Option<StoredResponse>,
    /// Why the last attempt failed, when it did.
    pub error: Option<String>,
}

/// Serialize bytes as base64 text in human-readable formats.
pub mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.serialize_str(&STANDARD.encode(bytes)) } else { s.serialize_bytes(bytes) }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
        } else {
            Ok(serde_bytes_vec(d)?)
        }
    }

    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Vec::<u8>::deserialize(d)
    }
}

/// `module.function` with Python identifiers (the module may be dotted: `pkg.mod.handle`).
fn validate_handler(handler: &str) -> Result<(), SpecError> {
    let ident = |s: &str| {
        !s.is_empty() && !s.as_bytes()[0].is_ascii_digit() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let parts: Vec<&str> = handler.split('.').collect();
    if handler.len() > 200 || parts.len() < 2 || !parts.iter().all(|p| ident(p)) {
        return Err(SpecError::new(
            "handler",
            format!("{handler:?} is not `module.function` (Python identifiers), e.g. `main.handle`"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREET: &str = r#"
name: greet
kind: function
runtime: python
handler: main.handle        # main.py defines handle(request) -> response
source: ./greet             # bundled and stored by content id on deploy
scaling: { min_instances: 0, max_instances: 8, concurrency: 4, idle_timeout: 60s }
"#;

    fn error_of(text: &str) -> String {
        match FunctionDocument::parse(text) {
            Ok(doc) => doc.validate(1).unwrap_err().to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn readme_function_parses_and_needs_its_bundle() {
        let doc = FunctionDocument::parse(GREET).unwrap();
        assert_eq!(doc.source.as_deref(), Some("./greet"));
        assert!(error_of(GREET).starts_with("field `artifact`: no bundle"));
        let mut doc = doc;
        doc.artifact = Some(ArtifactId([1; 32]));
        let spec = doc.validate(3).unwrap();
        assert_eq!(spec.deployment(), "greet@3");
        assert_eq!(
            spec.scaling,
            Scaling { min_instances: 0, max_instances: 8, concurrency: 4, idle_timeout_ms: 60_000 }
        );
        assert_eq!(spec.snapshot, SnapshotPolicy::Zygote);
        assert_eq!(spec.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!((spec.disk_bytes, spec.disk_limit_bytes()), (None, crate::capsule::DEFAULT_DISK_BYTES));
    }

    #[test]
    fn disk_is_a_byte_quantity_per_instance() {
        let text = format!("{GREET}resources: {{ memory: 128Mi, disk: 256Mi }}\n");
        let mut doc = FunctionDocument::parse(&text).unwrap();
        doc.artifact = Some(ArtifactId([1; 32]));
        let spec = doc.validate(1).unwrap();
        assert_eq!((spec.disk_bytes, spec.disk_limit_bytes()), (Some(256 << 20), 256 << 20));
        // Refused before the CLI bundles anything.
        expect_test::expect![[
            r#"field `resources.disk`: "lots" is not a quantity; write e.g. `32Mi`, `1Gi` or `512M`"#
        ]]
        .assert_eq(&FunctionDocument::parse(&format!("{GREET}resources: {{ disk: lots }}\n")).unwrap_err().to_string());
    }

    #[test]
    fn a_container_function_runs_a_pinned_image_on_the_node_s_network_by_default() {
        const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let text = format!(
            "name: web\nkind: function\nruntime: container\nimage: reg:5000/web:1@{DIGEST}\nargs: [serve]\n\
             workdir: /srv\nuser: \"1000:1000\"\n"
        );
        let spec = FunctionDocument::parse(&text).unwrap().validate(2).unwrap();
        let container = spec.container.as_deref().unwrap();
        assert_eq!((container.digest(), container.args.as_slice()), (DIGEST, &["serve".to_owned()][..]));
        assert_eq!((container.workdir.as_deref(), container.user.as_deref()), (Some("/srv"), Some("1000:1000")));
        assert_eq!((spec.artifact, spec.network, spec.snapshot), (None, Some(NetworkMode::Host), SnapshotPolicy::None));
        // The image is part of what is signed; a spec without one serializes as before.
        assert_eq!(spec.signed_form().container, spec.container);
        let none = FunctionDocument::parse(&format!("{text}network: none\n")).unwrap().validate(1).unwrap();
        assert_eq!(none.network, Some(NetworkMode::None));
        let python = FunctionDocument::parse(GREET).unwrap();
        let python = FunctionDocument { artifact: Some(ArtifactId([1; 32])), ..python }.validate(1).unwrap();
        let json = serde_json::to_string(&python).unwrap();
        assert!(!json.contains("container") && !json.contains("network"), "{json}");

        expect_test::expect![[r#"field `image`: "web:1" names no digest; `falak fn deploy` pins it (it pulls the image on the node it talks to), or write `name@sha256:<digest>` (`falak image pull` prints the digest)"#]]
            .assert_eq(&error_of("name: f\nkind: function\nruntime: container\nimage: web:1"));
        expect_test::expect![
            "field `image`: a container function needs an image, e.g. `image: registry.example/hello:1`"
        ]
        .assert_eq(&error_of("name: f\nkind: function\nruntime: container"));
        expect_test::expect![
            "field `source`: a container function's code is its image; leave `source` and `artifact` out"
        ]
        .assert_eq(&error_of(&format!("{text}source: ./web\n")));
        expect_test::expect!["field `handler`: only python functions have a handler; use command"]
            .assert_eq(&error_of(&format!("{text}handler: m.h\n")));
        expect_test::expect![
            "field `network`: only a `runtime: container` function has this field; this one is `http`"
        ]
        .assert_eq(&error_of("name: f\nkind: function\nruntime: http\ncommand: [./s]\nnetwork: none"));
        expect_test::expect!["field `snapshot`: zygote snapshots are for python functions; use `none`"]
            .assert_eq(&error_of(&format!("{text}snapshot: zygote\n")));
    }

    #[test]
    fn errors_name_the_field() {
        expect_test::expect![
            "field `handler`: a python function needs a handler `module.function`, e.g. `main.handle`"
        ]
        .assert_eq(&error_of("name: f\nkind: function\nruntime: python"));
        expect_test::expect![[
            r#"field `handler`: "main" is not `module.function` (Python identifiers), e.g. `main.handle`"#
        ]]
        .assert_eq(&error_of("name: f\nkind: function\nruntime: python\nhandler: main"));
        expect_test::expect![[r#"field `command`: an http function needs a command, e.g. ["python3", "server.py"]"#]]
            .assert_eq(&error_of("name: f\nkind: function\nruntime: http"));
        expect_test::expect!["field `scaling.min_instances`: 5 is more than max_instances (4)"].assert_eq(&error_of(
            "name: f\nkind: function\nruntime: python\nhandler: m.h\nscaling: { min_instances: 5, max_instances: 4 }",
        ));
        expect_test::expect!["field `scaling.concurrency`: must be between 1 and 1000, got 0"].assert_eq(&error_of(
            "name: f\nkind: function\nruntime: python\nhandler: m.h\nscaling: { concurrency: 0 }",
        ));
        expect_test::expect!["field `snapshot`: zygote snapshots are for python functions; use `none`"]
            .assert_eq(&error_of("name: f\nkind: function\nruntime: exec\ncommand: [cat]\nsnapshot: zygote"));
        assert!(error_of("name: f\nkind: function\nruntime: ruby").starts_with("field `runtime`"));
        assert!(error_of("name: f\nkind: process\nruntime: python\nhandler: m.h").starts_with("field `kind`"));
        assert!(
            error_of("name: f\nkind: function\nruntime: python\nhandler: m.h\nartifact: xyz")
                .starts_with("field `artifact`")
        );
    }
}
