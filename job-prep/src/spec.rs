//! The validated job specification, built once from the raw flags.
//!
//! `#SBATCH` lines are parsed by Slurm, not by a shell, and cannot be quoted, so every value that
//! lands there (job name, node count, partition, time, account, node list, work directory) is
//! held to a conservative grammar. Everything else reaches the batch script only through
//! [`hpcs_client::ssh::shell_quote`] (remote paths, the `hpcs-node` path, the recipient and the
//! application arguments), so it only has to be free of NUL (and, for paths, of control
//! characters, which [`RemotePath`] refuses).
//!
//! The env file and the hook directories are local: their contents are checked here and they
//! are uploaded next to the batch script, so the job never reads them from shared storage that
//! someone else could have edited.

use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hpcs_core::ids::RemotePath;
use hpcs_core::secret::AgeRecipient;

pub use hpcs_core::envfile::ENV_FILE_MAX_BYTES;
/// Largest hook file uploaded.
pub const HOOK_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Default `hpcs-node` command when neither the flag nor `[supercomputer] hpcs-node` is set.
pub const DEFAULT_HPCS_NODE: &str = "hpcs-node";
/// Default job name.
pub const DEFAULT_JOB_NAME: &str = "hpcs-job";

/// A value the job spec refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A value is not in its allowed form.
    #[error("invalid {what} {value:?}: expected {rule}")]
    Invalid {
        /// Which option.
        what: &'static str,
        /// The value (shortened if long).
        value: String,
        /// What is allowed.
        rule: &'static str,
    },
    /// An application argument contains NUL, which no argument vector can carry.
    #[error("application argument {index} contains a NUL byte")]
    NulArgument {
        /// Position (0-based).
        index: usize,
    },
    /// A local file or directory could not be read.
    #[error("failed to read {what} {path}")]
    Read {
        /// Which input.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The env file is unreadable or malformed.
    #[error(transparent)]
    EnvFile(#[from] hpcs_core::envfile::EnvFileError),
    /// A hook directory holds something that cannot be a hook.
    #[error("hook {path}: {reason}")]
    Hook {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

fn invalid(what: &'static str, value: &str, rule: &'static str) -> SpecError {
    SpecError::Invalid {
        what,
        value: value.chars().take(200).collect(),
        rule,
    }
}

fn plain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// A Slurm job name: 1-64 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobName(String);

impl FromStr for JobName {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        const RULE: &str = "1-64 characters of [A-Za-z0-9_.-]";
        if s.is_empty() || s.len() > 64 || !s.chars().all(plain_char) {
            return Err(invalid("job name", s, RULE));
        }
        Ok(Self(s.to_owned()))
    }
}

/// A partition or account name: 1-64 characters of `[A-Za-z0-9_.-]`, starting with a letter
/// or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmName(String);

impl SlurmName {
    fn parse(what: &'static str, s: &str) -> Result<Self, SpecError> {
        const RULE: &str = "1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit";
        if s.is_empty()
            || s.len() > 64
            || !s.chars().all(plain_char)
            || !s.starts_with(|c: char| c.is_ascii_alphanumeric())
        {
            return Err(invalid(what, s, RULE));
        }
        Ok(Self(s.to_owned()))
    }
}

/// `-N`: a node count `N` or a range `MIN-MAX`, from 1 to 100000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCount {
    min: u32,
    max: Option<u32>,
}

impl FromStr for NodeCount {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        const RULE: &str = "a node count N or a range MIN-MAX (1 to 100000)";
        let num = |t: &str| -> Option<u32> {
            if t.is_empty() || t.len() > 6 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            t.parse().ok().filter(|n| (1..=100_000).contains(n))
        };
        let parsed = match s.split_once('-') {
            None => num(s).map(|min| Self { min, max: None }),
            Some((a, b)) => match (num(a), num(b)) {
                (Some(min), Some(max)) if min <= max => Some(Self {
                    min,
                    max: Some(max),
                }),
                _ => None,
            },
        };
        parsed.ok_or_else(|| invalid("node count", s, RULE))
    }
}

impl fmt::Display for NodeCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.max {
            None => write!(f, "{}", self.min),
            Some(max) => write!(f, "{}-{max}", self.min),
        }
    }
}

/// `-t`: a Slurm time limit, in one of Slurm's forms: `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`,
/// `D-H:M:S`, or `UNLIMITED`/`INFINITE`. Seconds and minutes after the first field are below
/// 60, hours after a day count below 24.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeLimit(String);

impl FromStr for TimeLimit {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        const RULE: &str = "a Slurm time limit: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S or UNLIMITED";
        if matches!(s, "UNLIMITED" | "INFINITE") {
            return Ok(Self(s.to_owned()));
        }
        let field = |t: &str, below: Option<u32>| -> Option<u32> {
            if t.is_empty() || t.len() > 7 || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u32 = t.parse().ok()?;
            below.is_none_or(|b| n < b).then_some(n)
        };
        let ok = match s.split_once('-') {
            Some((days, rest)) => {
                let parts: Vec<&str> = rest.split(':').collect();
                field(days, None).is_some()
                    && parts.len() <= 3
                    && field(parts[0], Some(24)).is_some()
                    && parts[1..].iter().all(|p| field(p, Some(60)).is_some())
            }
            None => {
                let parts: Vec<&str> = s.split(':').collect();
                parts.len() <= 3
                    && field(parts[0], None).is_some()
                    && parts[1..].iter().all(|p| field(p, Some(60)).is_some())
            }
        };
        let nonzero = s.bytes().any(|b| b.is_ascii_digit() && b != b'0');
        if !ok || !nonzero {
            return Err(invalid("time limit", s, RULE));
        }
        Ok(Self(s.to_owned()))
    }
}

/// `-w`: a Slurm host list such as `nid001,gpu[01-04,08]`: comma-separated host names of
/// `[A-Za-z0-9_.-]`, each possibly with bracketed numeric ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeList(String);

impl FromStr for NodeList {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        const RULE: &str =
            "host names of [A-Za-z0-9_.-] separated by commas, with ranges like node[1-4,7]";
        let bad = || invalid("node list", s, RULE);
        if s.is_empty() || s.len() > 4096 {
            return Err(bad());
        }
        let mut in_bracket = false;
        let mut item_len = 0usize; // characters of the current host name outside brackets
        let mut range = String::new(); // current bracket content
        for c in s.chars() {
            match (in_bracket, c) {
                (false, ',') => {
                    if item_len == 0 {
                        return Err(bad());
                    }
                    item_len = 0;
                }
                (false, '[') => {
                    if item_len == 0 {
                        return Err(bad());
                    }
                    in_bracket = true;
                    range.clear();
                }
                (false, c) if plain_char(c) => item_len += 1,
                (true, ']') => {
                    if !valid_ranges(&range) {
                        return Err(bad());
                    }
                    in_bracket = false;
                }
                (true, c) if c.is_ascii_digit() || c == '-' || c == ',' => range.push(c),
                _ => return Err(bad()),
            }
        }
        if in_bracket || item_len == 0 && !s.ends_with(']') {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }
}

/// `1-4,7` inside brackets: comma-separated numbers or ascending ranges.
fn valid_ranges(r: &str) -> bool {
    !r.is_empty()
        && r.split(',').all(|part| {
            let num =
                |t: &str| !t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit());
            match part.split_once('-') {
                None => num(part),
                Some((a, b)) => num(a) && num(b) && a.parse::<u64>().ok() <= b.parse::<u64>().ok(),
            }
        })
}

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
display_inner!(JobName, SlurmName, TimeLimit, NodeList);

/// The job's working directory on the cluster: a [`RemotePath`] that can also appear in
/// `#SBATCH` lines, so only `[A-Za-z0-9_./+-]` (no spaces, no `%` patterns, no quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkDir(RemotePath);

impl FromStr for WorkDir {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        const RULE: &str =
            "an absolute path of [A-Za-z0-9_./+-] without empty, '.' or '..' components";
        let charset = s.chars().all(|c| plain_char(c) || matches!(c, '/' | '+'));
        match s.parse::<RemotePath>() {
            Ok(p) if charset && s.len() <= 1024 && s != "/" => Ok(Self(p)),
            _ => Err(invalid("work directory", s, RULE)),
        }
    }
}

impl WorkDir {
    /// The path.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// `<workdir>/<rest>`; `rest` is one of our own fixed-form names.
    #[must_use]
    pub fn join(&self, rest: &str) -> String {
        format!("{}/{rest}", self.0)
    }
}

impl fmt::Display for WorkDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The `hpcs-node` program on the compute nodes, by the rule of
/// [`hpcs_core::config::check_remote_command`] (the same as `[supercomputer] hpcs-node`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCommand(String);

impl FromStr for NodeCommand {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        hpcs_core::config::check_remote_command(s)
            .map_err(|rule| invalid("hpcs-node command", s, rule))?;
        Ok(Self(s.to_owned()))
    }
}

display_inner!(NodeCommand);

/// A validated env file: `NAME=value` pairs, in file order. The values may be secrets (tokens,
/// passwords for the application), so `Debug` shows only the names.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvFile {
    /// Where it was read.
    pub source: PathBuf,
    /// The variables.
    pub vars: Vec<(String, String)>,
}

impl fmt::Debug for EnvFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvFile")
            .field("source", &self.source)
            .field(
                "names",
                &self.vars.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl EnvFile {
    /// Reads and checks a local env file by the rules of [`hpcs_core::envfile`] (the node
    /// runtime reads the uploaded copy by the same rules).
    ///
    /// # Errors
    ///
    /// [`SpecError::EnvFile`] naming the file and line.
    pub fn read(path: &Path) -> Result<Self, SpecError> {
        Ok(Self {
            source: path.to_owned(),
            vars: hpcs_core::envfile::read(path)?,
        })
    }

    /// Parses env file text; `path` names it in errors.
    ///
    /// # Errors
    ///
    /// [`SpecError::EnvFile`] naming the line.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpecError> {
        Ok(Self {
            source: path.to_owned(),
            vars: hpcs_core::envfile::parse(text, path)?,
        })
    }

    /// The normalised file uploaded for the job: one `NAME=value` line per variable.
    #[must_use]
    pub fn render(&self) -> String {
        self.vars
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }
}

/// A local directory of hooks: its executable regular files, uploaded for the job and run by
/// `hpcs-node` in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookDir {
    /// The local directory.
    pub source: PathBuf,
    /// `(name, local path)` in byte order of the names.
    pub hooks: Vec<(String, PathBuf)>,
}

impl HookDir {
    /// Lists and checks a local hooks directory: every entry not starting with `.` must be an
    /// executable regular file (symlinks to one are followed) named `[A-Za-z0-9_.-]`, of at
    /// most [`HOOK_MAX_BYTES`].
    ///
    /// # Errors
    ///
    /// [`SpecError::Read`] or [`SpecError::Hook`] naming the file.
    pub fn read(dir: &Path) -> Result<Self, SpecError> {
        let read_err = |source| SpecError::Read {
            what: "hooks directory",
            path: dir.to_owned(),
            source,
        };
        let mut hooks = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let path = entry.path();
            let hook_err = |reason| SpecError::Hook {
                path: path.clone(),
                reason,
            };
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(hook_err("name is not UTF-8"));
            };
            if name.starts_with('.') {
                continue;
            }
            if !name.chars().all(plain_char) {
                return Err(hook_err("name must be of [A-Za-z0-9_.-]"));
            }
            let meta = std::fs::metadata(&path).map_err(|source| SpecError::Read {
                what: "hook",
                path: path.clone(),
                source,
            })?;
            if !meta.is_file() {
                return Err(hook_err("not a regular file"));
            }
            if meta.permissions().mode() & 0o100 == 0 {
                return Err(hook_err("not executable (chmod u+x it)"));
            }
            if meta.len() > HOOK_MAX_BYTES {
                return Err(hook_err("larger than 16 MiB"));
            }
            hooks.push((name, path));
        }
        hooks.sort();
        Ok(Self {
            source: dir.to_owned(),
            hooks,
        })
    }
}

/// The unvalidated flags that [`JobSpec::new`] checks.
#[derive(Debug, Clone, Default)]
pub struct RawJob {
    /// `-J`.
    pub name: Option<String>,
    /// `-N`.
    pub nodes: String,
    /// `-p`.
    pub partition: String,
    /// `-t`.
    pub time: String,
    /// `-A`.
    pub account: Option<String>,
    /// `-w`.
    pub nodelist: Option<String>,
    /// `-s`.
    pub workdir: String,
    /// `--application-info`.
    pub application_info: String,
    /// `--data-info`.
    pub data_info: Vec<String>,
    /// `-i` (local directory).
    pub input_hooks: Option<PathBuf>,
    /// `-o` (local directory).
    pub output_hooks: Option<PathBuf>,
    /// `--env-file` (local file).
    pub env_file: Option<PathBuf>,
    /// `--hpcs-node`, else `[supercomputer] hpcs-node`, else [`DEFAULT_HPCS_NODE`].
    pub hpcs_node: String,
    /// Everything after `--`.
    pub args: Vec<String>,
}

/// A validated job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// `--job-name`.
    pub name: JobName,
    /// `--nodes`.
    pub nodes: NodeCount,
    /// `--partition`.
    pub partition: SlurmName,
    /// `--time`.
    pub time: TimeLimit,
    /// `--account`.
    pub account: Option<SlurmName>,
    /// `--nodelist`.
    pub nodelist: Option<NodeList>,
    /// Working directory on the cluster (`--chdir`, logs, `output/`).
    pub workdir: WorkDir,
    /// Info file of the application image on the cluster.
    pub application_info: RemotePath,
    /// Info files of data sets on the cluster.
    pub data_info: Vec<RemotePath>,
    /// Input hooks to upload.
    pub input_hooks: Option<HookDir>,
    /// Output hooks to upload.
    pub output_hooks: Option<HookDir>,
    /// Environment for the container, uploaded as a file.
    pub env_file: Option<EnvFile>,
    /// `hpcs-node` on the compute nodes.
    pub hpcs_node: NodeCommand,
    /// The application's arguments, passed as a vector.
    pub args: Vec<String>,
}

fn remote(what: &'static str, value: &str) -> Result<RemotePath, SpecError> {
    value.parse().map_err(|_| {
        invalid(
            what,
            value,
            "an absolute path without control characters or empty, '.' or '..' components",
        )
    })
}

impl JobSpec {
    /// Validates every flag and reads the local env file and hook directories.
    ///
    /// # Errors
    ///
    /// [`SpecError`] naming the first bad value.
    pub fn new(raw: RawJob) -> Result<Self, SpecError> {
        if let Some(index) = raw.args.iter().position(|a| a.contains('\0')) {
            return Err(SpecError::NulArgument { index });
        }
        Ok(Self {
            name: raw.name.as_deref().unwrap_or(DEFAULT_JOB_NAME).parse()?,
            nodes: raw.nodes.parse()?,
            partition: SlurmName::parse("partition", &raw.partition)?,
            time: raw.time.parse()?,
            account: raw
                .account
                .as_deref()
                .map(|a| SlurmName::parse("account", a))
                .transpose()?,
            nodelist: raw.nodelist.as_deref().map(str::parse).transpose()?,
            workdir: raw.workdir.parse()?,
            application_info: remote("application info file", &raw.application_info)?,
            data_info: raw
                .data_info
                .iter()
                .map(|d| remote("data info file", d))
                .collect::<Result<_, _>>()?,
            input_hooks: raw.input_hooks.as_deref().map(HookDir::read).transpose()?,
            output_hooks: raw.output_hooks.as_deref().map(HookDir::read).transpose()?,
            env_file: raw.env_file.as_deref().map(EnvFile::read).transpose()?,
            hpcs_node: raw.hpcs_node.parse()?,
            args: raw.args,
        })
    }
}

/// Where one submission's files go on the cluster, and the recipient of its output.
///
/// Everything job-prep uploads for a submission lives in its own directory,
/// `<workdir>/hpcs-submit-<stamp>/`, created with mode 0700.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `<workdir>/hpcs-submit-<stamp>`.
    pub submit_dir: String,
    /// The batch script, `<submit_dir>/job.sh`.
    pub script: String,
    /// The env file, `<submit_dir>/env`, if any.
    pub env_file: Option<String>,
    /// `<submit_dir>/input-hooks`, if any.
    pub input_hooks: Option<String>,
    /// `<submit_dir>/output-hooks`, if any.
    pub output_hooks: Option<String>,
    /// The job's stdout, `<workdir>/hpcs-%j.out` (`%j`: the job id, expanded by Slurm).
    pub stdout_pattern: String,
    /// The job's stderr, `<workdir>/hpcs-%j.err`.
    pub stderr_pattern: String,
    /// The user's age recipient; `hpcs-node` encrypts the output to it.
    pub recipient: AgeRecipient,
}

/// `hpcs-<id>.out` under the workdir.
#[must_use]
pub fn stdout_path(workdir: &WorkDir, job: &str) -> String {
    workdir.join(&format!("hpcs-{job}.out"))
}

/// `hpcs-<id>.err` under the workdir.
#[must_use]
pub fn stderr_path(workdir: &WorkDir, job: &str) -> String {
    workdir.join(&format!("hpcs-{job}.err"))
}

/// Where `hpcs-node` seals the output: `<workdir>/output/<id>.tar.age`.
#[must_use]
pub fn output_path(workdir: &WorkDir, job: &str) -> String {
    workdir.join(&format!("output/{job}.tar.age"))
}

impl Layout {
    /// The layout of the submission `stamp` (of `[A-Za-z0-9_.-]`) of `spec`.
    ///
    /// # Errors
    ///
    /// [`SpecError::Invalid`] for a stamp outside `[A-Za-z0-9_.-]`.
    pub fn new(spec: &JobSpec, stamp: &str, recipient: AgeRecipient) -> Result<Self, SpecError> {
        if stamp.is_empty() || stamp.len() > 64 || !stamp.chars().all(plain_char) {
            return Err(invalid(
                "submission stamp",
                stamp,
                "1-64 characters of [A-Za-z0-9_.-]",
            ));
        }
        let submit_dir = spec.workdir.join(&format!("hpcs-submit-{stamp}"));
        Ok(Self {
            script: format!("{submit_dir}/job.sh"),
            env_file: spec.env_file.as_ref().map(|_| format!("{submit_dir}/env")),
            input_hooks: spec
                .input_hooks
                .as_ref()
                .map(|_| format!("{submit_dir}/input-hooks")),
            output_hooks: spec
                .output_hooks
                .as_ref()
                .map(|_| format!("{submit_dir}/output-hooks")),
            stdout_pattern: stdout_path(&spec.workdir, "%j"),
            stderr_pattern: stderr_path(&spec.workdir, "%j"),
            submit_dir,
            recipient,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rstest::rstest;

    pub(crate) const RECIPIENT: &str =
        "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq";

    pub(crate) fn raw() -> RawJob {
        RawJob {
            name: Some("demo".into()),
            nodes: "1".into(),
            partition: "debug".into(),
            time: "00:10:00".into(),
            account: Some("project_1".into()),
            nodelist: None,
            workdir: "/scratch/alice/job".into(),
            application_info: "/scratch/alice/app.info.yaml".into(),
            data_info: vec!["/scratch/alice/data.info.yaml".into()],
            input_hooks: None,
            output_hooks: None,
            env_file: None,
            hpcs_node: DEFAULT_HPCS_NODE.into(),
            args: vec![],
        }
    }

    #[test]
    fn accepts_sample() {
        let spec = JobSpec::new(raw()).unwrap();
        assert_eq!(spec.name.to_string(), "demo");
        let layout = Layout::new(&spec, "s1", RECIPIENT.parse().unwrap()).unwrap();
        assert_eq!(layout.script, "/scratch/alice/job/hpcs-submit-s1/job.sh");
        assert_eq!(layout.stdout_pattern, "/scratch/alice/job/hpcs-%j.out");
        assert_eq!(
            output_path(&spec.workdir, "42"),
            "/scratch/alice/job/output/42.tar.age"
        );
    }

    #[rstest]
    #[case("1")]
    #[case("90")]
    #[case("10:30")]
    #[case("1:00:00")]
    #[case("00:10:00")]
    #[case("2-0")]
    #[case("2-12:30")]
    #[case("2-12:30:59")]
    #[case("UNLIMITED")]
    fn time_limits(#[case] t: &str) {
        assert_eq!(t.parse::<TimeLimit>().unwrap().to_string(), t);
    }

    #[rstest]
    #[case("")]
    #[case("0")]
    #[case("00:00:00")]
    #[case("1h")]
    #[case("1:60")]
    #[case("1:00:60")]
    #[case("1:2:3:4")]
    #[case("1-24")]
    #[case("-1")]
    #[case("1-")]
    #[case("1 -2")]
    #[case("10\n#SBATCH --uid=0")]
    fn bad_time_limits(#[case] t: &str) {
        assert!(t.parse::<TimeLimit>().is_err(), "{t:?}");
    }

    #[rstest]
    #[case("1", true)]
    #[case("2-4", true)]
    #[case("100000", true)]
    #[case("0", false)]
    #[case("4-2", false)]
    #[case("100001", false)]
    #[case("1;id", false)]
    #[case("", false)]
    #[case("-1", false)]
    fn node_counts(#[case] s: &str, #[case] ok: bool) {
        assert_eq!(s.parse::<NodeCount>().is_ok(), ok, "{s:?}");
        if ok {
            assert_eq!(s.parse::<NodeCount>().unwrap().to_string(), s);
        }
    }

    #[rstest]
    #[case("localhost", true)]
    #[case("nid001,nid002", true)]
    #[case("gpu[01-04,08],cpu7", true)]
    #[case("a[1]b[2-3]", true)]
    #[case("node[1-2],gpu3", true)]
    #[case("", false)]
    #[case(",a", false)]
    #[case("a,,b", false)]
    #[case("a,", false)]
    #[case("[1-2]", false)]
    #[case("a[]", false)]
    #[case("a[1-2", false)]
    #[case("a[4-1]", false)]
    #[case("a[x]", false)]
    #[case("a b", false)]
    #[case("a\n#SBATCH --uid=0", false)]
    #[case("a;id", false)]
    fn node_lists(#[case] s: &str, #[case] ok: bool) {
        assert_eq!(s.parse::<NodeList>().is_ok(), ok, "{s:?}");
    }

    #[rstest]
    #[case("/scratch/alice/job", true)]
    #[case("/home/a.b/run+1_x-y", true)]
    #[case("/", false)]
    #[case("scratch", false)]
    #[case("/scratch/%u", false)]
    #[case("/scratch/a b", false)]
    #[case("/scratch/../etc", false)]
    #[case("/scratch//x", false)]
    #[case("/scratch/x/", false)]
    #[case("/scratch/$(id)", false)]
    #[case("/scratch/'x'", false)]
    fn work_dirs(#[case] s: &str, #[case] ok: bool) {
        assert_eq!(s.parse::<WorkDir>().is_ok(), ok, "{s:?}");
    }

    #[rstest]
    #[case("hpcs-node", true)]
    #[case("/usr/local/bin/hpcs-node", true)]
    #[case("bin/hpcs-node", false)]
    #[case("/opt/../hpcs-node", false)]
    #[case("/opt/hpcs node", false)]
    #[case("$(id)", false)]
    #[case("", false)]
    fn node_commands(#[case] s: &str, #[case] ok: bool) {
        assert_eq!(s.parse::<NodeCommand>().is_ok(), ok, "{s:?}");
    }

    #[rstest]
    #[case::partition_newline(|r: &mut RawJob| r.partition = "debug\n#SBATCH --uid=0".into())]
    #[case::partition_space(|r: &mut RawJob| r.partition = "a b".into())]
    #[case::partition_dash(|r: &mut RawJob| r.partition = "-x".into())]
    #[case::account(|r: &mut RawJob| r.account = Some("p;id".into()))]
    #[case::name(|r: &mut RawJob| r.name = Some("a'b".into()))]
    #[case::name_long(|r: &mut RawJob| r.name = Some("n".repeat(65)))]
    #[case::info_relative(|r: &mut RawJob| r.application_info = "app.info.yaml".into())]
    #[case::info_newline(|r: &mut RawJob| r.data_info = vec!["/a\nb".into()])]
    #[case::info_dotdot(|r: &mut RawJob| r.data_info = vec!["/a/../b".into()])]
    #[case::nul_arg(|r: &mut RawJob| r.args = vec!["ok".into(), "a\0b".into()])]
    #[case::node_command(|r: &mut RawJob| r.hpcs_node = "x;y".into())]
    #[case::missing_env(|r: &mut RawJob| r.env_file = Some("/nonexistent/env".into()))]
    #[case::missing_hooks(|r: &mut RawJob| r.input_hooks = Some("/nonexistent/hooks".into()))]
    fn refuses(#[case] edit: fn(&mut RawJob)) {
        let mut r = raw();
        edit(&mut r);
        assert!(JobSpec::new(r).is_err());
    }

    #[test]
    fn nul_argument_names_its_position() {
        let mut r = raw();
        r.args = vec!["ok".into(), "a\0b".into()];
        assert_eq!(
            JobSpec::new(r).unwrap_err().to_string(),
            "application argument 1 contains a NUL byte"
        );
    }

    #[test]
    fn env_files() {
        let p = Path::new("job.env");
        let env = EnvFile::parse(
            "# comment\n\nA=1\nexport B=x=y\n  D=\nE='$(not expanded)'\t\n",
            p,
        )
        .unwrap();
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "x=y"),
            ("D", ""),
            ("E", "'$(not expanded)'"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(env.vars, want);
        assert_eq!(env.render(), "A=1\nB=x=y\nD=\nE='$(not expanded)'\n");
        // Values may be secrets: Debug names the variables only.
        let debug = format!("{env:?}");
        assert!(
            debug.contains("\"E\"") && !debug.contains("not expanded"),
            "{debug}"
        );
    }

    #[rstest]
    #[case("1A=x\n", "env file job.env, line 1: invalid variable name \"1A\"")]
    #[case("A B=x\n", "invalid variable name \"A B\"")]
    #[case("A =x\n", "invalid variable name \"A \"")]
    #[case("ok=1\nnovalue\n", "env file job.env, line 2: expected NAME=value")]
    #[case("A=\u{1b}[31m\n", "control character")]
    #[case("A=x\0y\n", "control character")]
    fn bad_env_files(#[case] text: &str, #[case] msg: &str) {
        let err = EnvFile::parse(text, Path::new("job.env"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(msg), "{err:?} lacks {msg:?}");
    }

    #[test]
    fn hook_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("20-second", 0o755);
        write("10-first", 0o700);
        write(".hidden", 0o644);
        let hooks = HookDir::read(dir.path()).unwrap();
        let names: Vec<&str> = hooks.hooks.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["10-first", "20-second"]);

        write("not-exec", 0o644);
        let err = HookDir::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not-exec: not executable"), "{err}");
        std::fs::remove_file(dir.path().join("not-exec")).unwrap();
        write("bad name", 0o755);
        let err = HookDir::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("name must be"), "{err}");
        std::fs::remove_file(dir.path().join("bad name")).unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        let err = HookDir::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
