//! The node's admin policy: which images may run where, and with which container settings.
//!
//! One INI file, layered like userdocker's configuration but declarative: `[defaults]` applies to
//! everybody, `[group:NAME]` sections override it for members of group `NAME` (applied in name
//! order), and `[user:NAME]` overrides both for one user. Image authorisation lives in
//! `[image:RULE]` sections, each naming the nodes it applies to:
//!
//! ```ini
//! [defaults]
//! network = none              ; none | host: the most a job may ask for
//! pids-limit = 512
//! read-only-rootfs = true     ; false lets jobs ask for a writable root filesystem
//! gpus = none                 ; none | all
//! mounts = /apps:/apps:ro     ; admin-defined host:container:mode mounts a job may request
//! extra-args = workdir        ; which optional run arguments a job may pass (workdir, shm-size)
//! require-job-cgroup = true   ; daemon: refuse callers that are not inside a Slurm job cgroup
//!
//! [group:gpu-users]
//! gpus = all
//!
//! [image:team-tools]
//! nodes = node*               ; glob list, default *
//! name = registry.example/team/*:*
//! digest = sha256:0123...     ; optional pin on the image ID
//! users = alice               ; optional: only these users
//! groups = hpcs-users         ; optional: or members of these groups
//! ```
//!
//! Image names are claimed by the job (its info file, the tarball's tags); they are only as
//! trustworthy as the submitting user. A `digest` pin is checked against the image ID the engine
//! computes after loading, so it is the rule to use when the admin must control what code runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Default pids limit when the policy names none.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

/// Errors of loading or applying the policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("failed to read policy file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The policy file is malformed.
    #[error("invalid policy {path} line {line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The request asks for something the policy does not allow.
    #[error("denied by policy: {what} ({rule})")]
    Denied {
        /// What was asked for.
        what: String,
        /// The rule that decided, e.g. `[defaults] network = none at policy.ini:3`.
        rule: String,
    },
}

/// Network mode of a container. Ordered: `None < Host`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Only a loopback interface.
    None,
    /// The node's network namespace.
    Host,
}

impl NetworkMode {
    /// The Docker API spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Host => "host",
        }
    }
}

impl std::str::FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "host" => Ok(Self::Host),
            other => Err(format!("expected none or host, got {other:?}")),
        }
    }
}

/// GPU access. Ordered: `None < All`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Gpus {
    /// No GPU devices.
    None,
    /// All GPUs of the node (through the engine's GPU device request).
    All,
}

impl std::str::FromStr for Gpus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "all" => Ok(Self::All),
            other => Err(format!("expected none or all, got {other:?}")),
        }
    }
}

/// An optional run argument that the policy may allow.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ExtraArg {
    /// `--workdir PATH` inside the container.
    Workdir,
    /// `--shm-size BYTES` for `/dev/shm`.
    ShmSize,
}

impl ExtraArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Workdir => "workdir",
            Self::ShmSize => "shm-size",
        }
    }
}

impl std::str::FromStr for ExtraArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "workdir" => Ok(Self::Workdir),
            "shm-size" => Ok(Self::ShmSize),
            other => Err(format!(
                "unknown extra argument {other:?} (known: workdir, shm-size)"
            )),
        }
    }
}

/// An admin-defined bind mount that jobs may request by its container path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountRule {
    /// Absolute host path.
    pub host: PathBuf,
    /// Absolute container path.
    pub container: String,
    /// Read-only?
    pub read_only: bool,
}

impl std::str::FromStr for MountRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let (host, container, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, "ro"),
            [h, c, m] => (*h, *c, *m),
            _ => return Err(format!("mount {s:?} is not host:container[:ro|rw]")),
        };
        let read_only = match mode {
            "ro" => true,
            "rw" => false,
            other => return Err(format!("mount mode {other:?} is not ro or rw")),
        };
        for p in [host, container] {
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                return Err(format!("mount path {p:?} must be absolute without '..'"));
            }
        }
        if RESERVED_CONTAINER_PATHS
            .iter()
            .any(|r| container == *r || container.starts_with(&format!("{r}/")))
        {
            return Err(format!(
                "mount target {container:?} is reserved for the runtime"
            ));
        }
        Ok(Self {
            host: PathBuf::from(host),
            container: container.to_owned(),
            read_only,
        })
    }
}

/// Container paths the runtime mounts itself; admin mounts may not shadow them.
pub const RESERVED_CONTAINER_PATHS: [&str; 6] = [
    "/data",
    "/output",
    "/hooks",
    "/etc/passwd",
    "/etc/group",
    "/tmp",
];

/// Where a value came from, for denial messages.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    section: String,
    key: String,
    line: usize,
}

#[derive(Debug, Clone)]
struct Setting<T> {
    value: T,
    origin: Origin,
}

#[derive(Debug, Clone, Default)]
struct Layer {
    network: Option<Setting<NetworkMode>>,
    pids_limit: Option<Setting<i64>>,
    read_only_rootfs: Option<Setting<bool>>,
    gpus: Option<Setting<Gpus>>,
    mounts: Option<Setting<Vec<MountRule>>>,
    extra_args: Option<Setting<BTreeSet<ExtraArg>>>,
    require_job_cgroup: Option<Setting<bool>>,
}

impl Layer {
    fn overlay(&mut self, other: &Layer) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f.clone_from(&other.$f); } )* };
        }
        take!(
            network,
            pids_limit,
            read_only_rootfs,
            gpus,
            mounts,
            extra_args,
            require_job_cgroup
        );
    }
}

/// One `[image:RULE]` section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageRule {
    /// The rule's name (the part after `image:`).
    pub rule: String,
    /// Node name globs; empty means every node.
    pub nodes: Vec<String>,
    /// Image name glob, if the rule restricts names.
    pub name: Option<String>,
    /// Required image ID (`sha256:<64 hex>`), if pinned.
    pub digest: Option<String>,
    /// Users allowed; with `groups` both empty, everybody.
    pub users: Vec<String>,
    /// Groups allowed.
    pub groups: Vec<String>,
    #[serde(skip)]
    line: usize,
}

impl ImageRule {
    /// Does this rule apply on `node`?
    #[must_use]
    pub fn applies_to_node(&self, node: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|g| glob_match(g, node))
    }

    fn applies_to(&self, who: &Subject) -> bool {
        (self.users.is_empty() && self.groups.is_empty())
            || self.users.contains(&who.user)
            || self.groups.iter().any(|g| who.groups.contains(g))
    }
}

/// Daemon-wide and per-user settings after layering.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Effective {
    /// Most permissive network mode the user may ask for.
    pub network: NetworkMode,
    /// Pids limit applied to every container.
    pub pids_limit: i64,
    /// Whether the root filesystem must be read-only.
    pub read_only_rootfs: bool,
    /// GPU access the user may ask for.
    pub gpus: Gpus,
    /// Mounts the user may request.
    pub mounts: Vec<MountRule>,
    /// Optional run arguments the user may pass.
    pub extra_args: BTreeSet<ExtraArg>,
    /// Whether the daemon refuses callers outside a Slurm job cgroup.
    pub require_job_cgroup: bool,
}

/// Who asks: the job user and their groups (names), as established by the runtime or daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// User name.
    pub user: String,
    /// Names of the primary and supplementary groups.
    pub groups: BTreeSet<String>,
}

/// What a job asks for, besides the image.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// Network mode wanted.
    pub network: Option<NetworkMode>,
    /// GPUs wanted.
    pub gpus: Option<Gpus>,
    /// Container paths of admin mounts wanted.
    #[serde(default)]
    pub mounts: Vec<String>,
    /// Working directory inside the container.
    pub workdir: Option<String>,
    /// Size of `/dev/shm` in bytes.
    pub shm_size: Option<i64>,
    /// Ask for a writable root filesystem.
    #[serde(default)]
    pub writable_rootfs: bool,
}

/// The validated outcome of a request: exactly what the container gets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Granted {
    /// Network mode.
    pub network: NetworkMode,
    /// GPUs.
    pub gpus: Gpus,
    /// Admin mounts.
    pub mounts: Vec<MountRule>,
    /// Pids limit.
    pub pids_limit: i64,
    /// Read-only root filesystem.
    pub read_only_rootfs: bool,
    /// Working directory.
    pub workdir: Option<String>,
    /// `/dev/shm` size.
    pub shm_size: Option<i64>,
}

/// The image rules that may authorise a claimed image; the loaded image must satisfy one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageGrant {
    /// Candidate rules, in file order.
    pub candidates: Vec<ImageRule>,
    claimed: String,
}

impl ImageGrant {
    /// Check the image the engine actually loaded: its ID and the names in its tarball.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Denied`] when no candidate rule accepts the loaded image.
    pub fn verify_loaded(
        &self,
        image_id: &str,
        tags: &[String],
    ) -> Result<&ImageRule, PolicyError> {
        self.candidates
            .iter()
            .find(|r| {
                r.digest.as_deref().is_none_or(|d| d == image_id)
                    // The archive's own tags, if any, must satisfy the rule's name pattern as
                    // well as the claim did.
                    && r.name.as_deref().is_none_or(|p| tags.iter().all(|t| glob_match(p, t)))
            })
            .ok_or_else(|| PolicyError::Denied {
                what: format!(
                    "loaded image {image_id} (tags {tags:?}) for claimed image {:?}",
                    self.claimed
                ),
                rule: format!(
                    "no candidate rule matches the loaded image: {}",
                    self.candidates
                        .iter()
                        .map(|r| format!("[image:{}]", r.rule))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }
}

/// A parsed policy file.
#[derive(Debug, Clone)]
pub struct Policy {
    path: PathBuf,
    defaults: Layer,
    groups: BTreeMap<String, Layer>,
    users: BTreeMap<String, Layer>,
    images: Vec<ImageRule>,
}

impl Policy {
    /// Read and parse a policy file.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Read`] or [`PolicyError::Syntax`] naming the line.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parse policy text; `path` is only used in messages.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Syntax`] naming the line and the problem.
    pub fn parse(path: &Path, text: &str) -> Result<Self, PolicyError> {
        let syntax = |line: usize, message: String| PolicyError::Syntax {
            path: path.to_owned(),
            line,
            message,
        };
        let mut policy = Self {
            path: path.to_owned(),
            defaults: Layer::default(),
            groups: BTreeMap::new(),
            users: BTreeMap::new(),
            images: Vec::new(),
        };
        enum Current {
            None,
            Layer(String),
            Image(usize),
        }
        let mut current = Current::None;
        let mut seen_sections = BTreeSet::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            // serde_ini's item parser does not trim indentation; policies are hand-written.
            let trimmed = raw.trim();
            let item = serde_ini::Parser::from_str(trimmed)
                .next()
                .transpose()
                .map_err(|e| syntax(line, e.to_string()))?;
            match item {
                None | Some(serde_ini::Item::Empty | serde_ini::Item::Comment { .. }) => {}
                Some(serde_ini::Item::Section { name }) => {
                    let name = name.trim().to_owned();
                    if !seen_sections.insert(name.clone()) {
                        return Err(syntax(line, format!("section [{name}] appears twice")));
                    }
                    current = if name == "defaults" {
                        Current::Layer(name)
                    } else if let Some(rest) = name
                        .strip_prefix("group:")
                        .or_else(|| name.strip_prefix("user:"))
                    {
                        if !valid_name(rest) {
                            return Err(syntax(line, format!("invalid name in section [{name}]")));
                        }
                        Current::Layer(name)
                    } else if let Some(rule) = name.strip_prefix("image:") {
                        if !valid_name(rule) {
                            return Err(syntax(line, format!("invalid rule name in [{name}]")));
                        }
                        policy.images.push(ImageRule {
                            rule: rule.to_owned(),
                            nodes: Vec::new(),
                            name: None,
                            digest: None,
                            users: Vec::new(),
                            groups: Vec::new(),
                            line,
                        });
                        Current::Image(policy.images.len() - 1)
                    } else {
                        return Err(syntax(
                            line,
                            format!(
                                "unknown section [{name}] (expected [defaults], [group:NAME], \
                                 [user:NAME] or [image:RULE])"
                            ),
                        ));
                    };
                }
                Some(serde_ini::Item::Value { key, value }) => {
                    let value = strip_comment_and_quotes(&value);
                    match &current {
                        Current::None => {
                            return Err(syntax(line, format!("key {key:?} outside any section")));
                        }
                        Current::Layer(section) => {
                            let origin = Origin {
                                section: section.clone(),
                                key: key.clone(),
                                line,
                            };
                            let layer = if section == "defaults" {
                                &mut policy.defaults
                            } else if let Some(g) = section.strip_prefix("group:") {
                                policy.groups.entry(g.to_owned()).or_default()
                            } else if let Some(u) = section.strip_prefix("user:") {
                                policy.users.entry(u.to_owned()).or_default()
                            } else {
                                return Err(syntax(line, format!("unexpected section {section}")));
                            };
                            set_layer_key(layer, &key, value, origin)
                                .map_err(|m| syntax(line, m))?;
                        }
                        Current::Image(i) => {
                            set_image_key(&mut policy.images[*i], &key, value)
                                .map_err(|m| syntax(line, m))?;
                        }
                    }
                }
            }
        }
        if let Some(r) = policy
            .images
            .iter()
            .find(|r| r.name.is_none() && r.digest.is_none())
        {
            return Err(syntax(
                r.line,
                format!("[image:{}] needs a name or a digest", r.rule),
            ));
        }
        Ok(policy)
    }

    /// The policy file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Image rules that apply on `node`, in file order.
    pub fn images_for_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a ImageRule> {
        self.images.iter().filter(move |r| r.applies_to_node(node))
    }

    fn layered(&self, who: &Subject) -> Layer {
        let mut layer = self.defaults.clone();
        for (group, overrides) in &self.groups {
            if who.groups.contains(group) {
                layer.overlay(overrides);
            }
        }
        if let Some(overrides) = self.users.get(&who.user) {
            layer.overlay(overrides);
        }
        layer
    }

    /// The settings that apply to `who` after layering defaults, groups and user.
    #[must_use]
    pub fn effective(&self, who: &Subject) -> Effective {
        let l = self.layered(who);
        Effective {
            network: l.network.map_or(NetworkMode::None, |s| s.value),
            pids_limit: l.pids_limit.map_or(DEFAULT_PIDS_LIMIT, |s| s.value),
            read_only_rootfs: l.read_only_rootfs.is_none_or(|s| s.value),
            gpus: l.gpus.map_or(Gpus::None, |s| s.value),
            mounts: l.mounts.map(|s| s.value).unwrap_or_default(),
            extra_args: l.extra_args.map(|s| s.value).unwrap_or_default(),
            require_job_cgroup: l.require_job_cgroup.is_none_or(|s| s.value),
        }
    }

    fn describe<T: fmt::Debug>(&self, setting: Option<&Setting<T>>, key: &str) -> String {
        let file = self.path.display();
        match setting {
            Some(s) => format!(
                "[{}] {} = {:?} at {file}:{}",
                s.origin.section, s.origin.key, s.value, s.origin.line
            ),
            None => format!("{key} is not set in {file}; the default denies it"),
        }
    }

    /// Check a job's run request against the layered settings.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Denied`] naming the rule that refused.
    pub fn check_request(&self, who: &Subject, req: &Request) -> Result<Granted, PolicyError> {
        let layer = self.layered(who);
        let eff = self.effective(who);
        let network = req.network.unwrap_or(NetworkMode::None);
        if network > eff.network {
            return Err(PolicyError::Denied {
                what: format!("network {} for user {}", network.as_str(), who.user),
                rule: self.describe(layer.network.as_ref(), "network"),
            });
        }
        let gpus = req.gpus.unwrap_or(Gpus::None);
        if gpus > eff.gpus {
            return Err(PolicyError::Denied {
                what: format!("gpus {gpus:?} for user {}", who.user).to_lowercase(),
                rule: self.describe(layer.gpus.as_ref(), "gpus"),
            });
        }
        if req.writable_rootfs && eff.read_only_rootfs {
            return Err(PolicyError::Denied {
                what: format!("writable root filesystem for user {}", who.user),
                rule: match &layer.read_only_rootfs {
                    Some(s) => self.describe(Some(s), "read-only-rootfs"),
                    None => format!(
                        "read-only-rootfs defaults to true; not overridden in {}",
                        self.path.display()
                    ),
                },
            });
        }
        let mut mounts = Vec::new();
        for wanted in &req.mounts {
            match eff.mounts.iter().find(|m| m.container == *wanted) {
                Some(m) => mounts.push(m.clone()),
                None => {
                    return Err(PolicyError::Denied {
                        what: format!("mount {wanted:?} for user {}", who.user),
                        rule: self.describe(layer.mounts.as_ref(), "mounts"),
                    });
                }
            }
        }
        for (given, arg) in [
            (req.workdir.is_some(), ExtraArg::Workdir),
            (req.shm_size.is_some(), ExtraArg::ShmSize),
        ] {
            if given && !eff.extra_args.contains(&arg) {
                return Err(PolicyError::Denied {
                    what: format!("extra argument {} for user {}", arg.as_str(), who.user),
                    rule: self.describe(layer.extra_args.as_ref(), "extra-args"),
                });
            }
        }
        if let Some(w) = &req.workdir
            && (!w.starts_with('/') || w.split('/').any(|c| c == ".."))
        {
            return Err(PolicyError::Denied {
                what: format!("workdir {w:?}"),
                rule: "workdir must be an absolute path without '..'".to_owned(),
            });
        }
        if let Some(s) = req.shm_size
            && s <= 0
        {
            return Err(PolicyError::Denied {
                what: format!("shm-size {s}"),
                rule: "shm-size must be positive".to_owned(),
            });
        }
        Ok(Granted {
            network,
            gpus,
            mounts,
            pids_limit: eff.pids_limit,
            read_only_rootfs: !req.writable_rootfs,
            workdir: req.workdir.clone(),
            shm_size: req.shm_size,
        })
    }

    /// Which image rules could authorise `claimed` (and `claimed_digest`, if the job names one)
    /// for `who` on `node`. Called before any key is fetched.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Denied`] naming the rules considered.
    pub fn authorise_image(
        &self,
        node: &str,
        who: &Subject,
        claimed: &str,
        claimed_digest: Option<&str>,
    ) -> Result<ImageGrant, PolicyError> {
        let candidates: Vec<ImageRule> = self
            .images_for_node(node)
            .filter(|r| r.applies_to(who))
            .filter(|r| r.name.as_deref().is_none_or(|p| glob_match(p, claimed)))
            .filter(|r| match (r.digest.as_deref(), claimed_digest) {
                (Some(d), Some(c)) => d == c,
                _ => true,
            })
            .cloned()
            .collect();
        if candidates.is_empty() {
            let considered: Vec<String> = self
                .images_for_node(node)
                .map(|r| format!("[image:{}]", r.rule))
                .collect();
            return Err(PolicyError::Denied {
                what: format!("image {claimed:?} on node {node} for user {}", who.user),
                rule: if considered.is_empty() {
                    format!(
                        "no [image:*] rule in {} applies to node {node}",
                        self.path.display()
                    )
                } else {
                    format!(
                        "none of {} in {} matches",
                        considered.join(", "),
                        self.path.display()
                    )
                },
            });
        }
        Ok(ImageGrant {
            candidates,
            claimed: claimed.to_owned(),
        })
    }
}

fn set_layer_key(layer: &mut Layer, key: &str, value: &str, origin: Origin) -> Result<(), String> {
    fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String>
    where
        T::Err: fmt::Display,
    {
        value.parse::<T>().map_err(|e| format!("{key}: {e}"))
    }
    fn list(value: &str) -> impl Iterator<Item = &str> {
        value.split(',').map(str::trim).filter(|s| !s.is_empty())
    }
    fn boolean(key: &str, value: &str) -> Result<bool, String> {
        match value {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" => Ok(false),
            other => Err(format!("{key}: expected true or false, got {other:?}")),
        }
    }
    match key {
        "network" => {
            layer.network = Some(Setting {
                value: parse(key, value)?,
                origin,
            });
        }
        "pids-limit" => {
            let value: i64 = parse(key, value)?;
            if value <= 0 {
                return Err(format!("{key}: must be positive"));
            }
            layer.pids_limit = Some(Setting { value, origin });
        }
        "read-only-rootfs" => {
            layer.read_only_rootfs = Some(Setting {
                value: boolean(key, value)?,
                origin,
            });
        }
        "gpus" => {
            layer.gpus = Some(Setting {
                value: parse(key, value)?,
                origin,
            });
        }
        "mounts" => {
            let value = list(value)
                .map(|m| parse(key, m))
                .collect::<Result<Vec<MountRule>, _>>()?;
            layer.mounts = Some(Setting { value, origin });
        }
        "extra-args" => {
            let value = list(value)
                .map(|a| parse(key, a))
                .collect::<Result<_, _>>()?;
            layer.extra_args = Some(Setting { value, origin });
        }
        "require-job-cgroup" => {
            if origin.section != "defaults" {
                return Err(format!("{key} may only be set in [defaults]"));
            }
            layer.require_job_cgroup = Some(Setting {
                value: boolean(key, value)?,
                origin,
            });
        }
        other => return Err(format!("unknown key {other:?}")),
    }
    Ok(())
}

fn set_image_key(rule: &mut ImageRule, key: &str, value: &str) -> Result<(), String> {
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match key {
        "nodes" => rule.nodes = list(value),
        "name" => {
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("name: invalid pattern {value:?}"));
            }
            rule.name = Some(value.to_owned());
        }
        "digest" => {
            if !is_image_id(value) {
                return Err(format!(
                    "digest: expected sha256:<64 lowercase hex>, got {value:?}"
                ));
            }
            rule.digest = Some(value.to_owned());
        }
        "users" => rule.users = list(value),
        "groups" => rule.groups = list(value),
        other => return Err(format!("unknown key {other:?} in [image:{}]", rule.rule)),
    }
    Ok(())
}

fn strip_comment_and_quotes(value: &str) -> &str {
    // Inline comments start at " ;" or " #"; values never contain them.
    let value = match value.find(" ;").into_iter().chain(value.find(" #")).min() {
        Some(i) => value[..i].trim(),
        None => value.trim(),
    };
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Is `s` a Docker image ID in the form `sha256:<64 lowercase hex>`?
#[must_use]
pub fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Shell-style glob: `*` matches any run of characters, `?` one character; nothing else is special.
#[must_use]
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with single backtrack point: linear in practice, no recursion blow-up.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const POLICY: &str = "\
; site policy
[defaults]
network = none
pids-limit = 256
mounts = /apps:/apps:ro
extra-args = workdir

[group:gpu-users]
gpus = all

[group:net]
network = host

[user:bob]
network = none
read-only-rootfs = false

[image:busybox]
nodes = node1, node2
name = hpcs-test:*

[image:pinned]
nodes = node3
name = app:*
digest = sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa

[image:bob-only]
name = bob/*
users = bob
";

    fn policy() -> Policy {
        Policy::parse(Path::new("policy.ini"), POLICY).expect("parse")
    }

    fn who(user: &str, groups: &[&str]) -> Subject {
        Subject {
            user: user.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    #[rstest]
    #[case("*", "anything", true)]
    #[case("node*", "node12", true)]
    #[case("node?", "node12", false)]
    #[case("hpcs-test:*", "hpcs-test:busybox", true)]
    #[case("hpcs-test:*", "hpcs-testing:busybox", false)]
    #[case("a*b*c", "axxbyyc", true)]
    #[case("a*b*c", "axxbyy", false)]
    #[case("", "", true)]
    #[case("exact", "exact", true)]
    fn globs(#[case] p: &str, #[case] t: &str, #[case] want: bool) {
        assert_eq!(glob_match(p, t), want);
    }

    #[rstest]
    #[case(&["hpcs-users"], NetworkMode::None, Gpus::None)]
    #[case(&["gpu-users"], NetworkMode::None, Gpus::All)]
    #[case(&["gpu-users", "net"], NetworkMode::Host, Gpus::All)]
    fn layering_by_group(#[case] groups: &[&str], #[case] net: NetworkMode, #[case] gpus: Gpus) {
        let eff = policy().effective(&who("alice", groups));
        assert_eq!((eff.network, eff.gpus, eff.pids_limit), (net, gpus, 256));
        assert!(eff.read_only_rootfs);
        assert!(eff.require_job_cgroup);
    }

    #[test]
    fn user_overrides_groups() {
        let eff = policy().effective(&who("bob", &["net"]));
        assert_eq!(eff.network, NetworkMode::None);
        assert!(!eff.read_only_rootfs);
    }

    #[rstest]
    #[case(Request { network: Some(NetworkMode::Host), ..Request::default() },
           "denied by policy: network host for user alice ([defaults] network = None at policy.ini:3)")]
    #[case(Request { gpus: Some(Gpus::All), ..Request::default() },
           "denied by policy: gpus all for user alice (gpus is not set in policy.ini; the default denies it)")]
    #[case(Request { mounts: vec!["/etc".into()], ..Request::default() },
           "denied by policy: mount \"/etc\" for user alice ([defaults] mounts = [MountRule { host: \"/apps\", container: \"/apps\", read_only: true }] at policy.ini:5)")]
    #[case(Request { shm_size: Some(1), ..Request::default() },
           "denied by policy: extra argument shm-size for user alice ([defaults] extra-args = {Workdir} at policy.ini:6)")]
    #[case(Request { writable_rootfs: true, ..Request::default() },
           "denied by policy: writable root filesystem for user alice (read-only-rootfs defaults to true; not overridden in policy.ini)")]
    fn denials_name_the_rule(#[case] req: Request, #[case] msg: &str) {
        let err = policy()
            .check_request(&who("alice", &["hpcs-users"]), &req)
            .unwrap_err();
        assert_eq!(err.to_string(), msg);
    }

    #[test]
    fn granted_request() {
        let req = Request {
            mounts: vec!["/apps".into()],
            workdir: Some("/data".into()),
            ..Request::default()
        };
        let g = policy()
            .check_request(&who("alice", &[]), &req)
            .expect("allowed");
        assert_eq!(g.network, NetworkMode::None);
        assert_eq!(g.mounts.len(), 1);
        assert!(g.read_only_rootfs);
        assert_eq!(g.pids_limit, 256);
    }

    #[rstest]
    #[case("node1", "alice", "hpcs-test:busybox", true)]
    #[case("node2", "alice", "hpcs-test:busybox", true)]
    #[case("node3", "alice", "hpcs-test:busybox", false)]
    #[case("node1", "alice", "evil:latest", false)]
    #[case("node3", "alice", "app:1", true)]
    #[case("node9", "bob", "bob/tool:1", true)]
    #[case("node9", "alice", "bob/tool:1", false)]
    fn image_authorisation(
        #[case] node: &str,
        #[case] user: &str,
        #[case] image: &str,
        #[case] ok: bool,
    ) {
        assert_eq!(
            policy()
                .authorise_image(node, &who(user, &[]), image, None)
                .is_ok(),
            ok
        );
    }

    #[test]
    fn image_denial_names_rules() {
        let err = policy()
            .authorise_image("node1", &who("alice", &[]), "evil:1", None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "denied by policy: image \"evil:1\" on node node1 for user alice \
             (none of [image:busybox], [image:bob-only] in policy.ini matches)"
        );
        let err = Policy::parse(Path::new("p.ini"), "[defaults]\n")
            .expect("parse")
            .authorise_image("n", &who("alice", &[]), "x", None)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no [image:*] rule in p.ini applies to node n")
        );
    }

    #[test]
    fn digest_pin_checked_after_load() {
        let p = policy();
        let grant = p
            .authorise_image("node3", &who("alice", &[]), "app:1", None)
            .expect("ok");
        let good = format!("sha256:{}", "a".repeat(64));
        let bad = format!("sha256:{}", "b".repeat(64));
        assert!(grant.verify_loaded(&good, &["app:1".into()]).is_ok());
        assert!(grant.verify_loaded(&bad, &["app:1".into()]).is_err());
        // The archive's own tags must satisfy the rule too.
        assert!(grant.verify_loaded(&good, &["other:1".into()]).is_err());
        assert!(grant.verify_loaded(&good, &[]).is_ok());
    }

    #[rstest]
    #[case("[bogus]\n", "line 1: unknown section [bogus]")]
    #[case("network = none\n", "line 1: key \"network\" outside any section")]
    #[case(
        "[defaults]\nnetwork = bridge\n",
        "line 2: network: expected none or host"
    )]
    #[case(
        "[defaults]\npids-limit = -1\n",
        "line 2: pids-limit: must be positive"
    )]
    #[case("[defaults]\nmounts = /a:/data\n", "reserved for the runtime")]
    #[case("[defaults]\nmounts = a:/x\n", "must be absolute")]
    #[case(
        "[defaults]\nextra-args = privileged\n",
        "unknown extra argument \"privileged\""
    )]
    #[case(
        "[user:bob]\nrequire-job-cgroup = false\n",
        "may only be set in [defaults]"
    )]
    #[case("[image:x]\nnodes = *\n", "line 1: [image:x] needs a name or a digest")]
    #[case("[image:x]\ndigest = sha256:abc\n", "digest: expected sha256")]
    #[case("[defaults]\n[defaults]\n", "appears twice")]
    #[case("[defaults]\nnetwork\n", "line 2: INI syntax error")]
    #[case("[user:../x]\n", "invalid name")]
    fn syntax_errors(#[case] text: &str, #[case] want: &str) {
        let err = Policy::parse(Path::new("p.ini"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err} does not contain {want}");
    }

    #[test]
    fn quotes_and_inline_comments() {
        let p = Policy::parse(
            Path::new("p.ini"),
            "[defaults]\n  network = \"host\" ; allowed on this partition\n",
        )
        .expect("parse");
        assert_eq!(p.effective(&who("a", &[])).network, NetworkMode::Host);
    }

    proptest::proptest! {
        #[test]
        fn star_matches_everything(s in ".*") {
            proptest::prop_assert!(glob_match("*", &s));
            proptest::prop_assert!(glob_match(&s.replace(['*', '?'], ""), &s.replace(['*', '?'], "")));
        }
    }
}
