//! A validated job specification: every value that reaches the batch script is checked here.
//!
//! `#SBATCH` lines are parsed by Slurm, not a shell, so they cannot be quoted: their values are
//! restricted to conservative character sets. Everything else reaches the script only through
//! [`hpcs_client::ssh::shell_quote`].

use hpcs_core::ids::RemotePath;

/// A value the job spec refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A Slurm option value has characters outside its allowed set.
    #[error("invalid {what} {value:?}: {rule}")]
    Invalid {
        /// Which option.
        what: &'static str,
        /// The value.
        value: String,
        /// What is allowed.
        rule: &'static str,
    },
    /// An application argument contains NUL.
    #[error("application argument {index} contains a NUL byte")]
    NulArgument {
        /// Position.
        index: usize,
    },
}

fn check(
    what: &'static str,
    value: &str,
    rule: &'static str,
    ok: impl Fn(char) -> bool,
    max: usize,
) -> Result<String, SpecError> {
    if value.is_empty() || value.len() > max || !value.chars().all(ok) {
        return Err(SpecError::Invalid {
            what,
            value: value.to_owned(),
            rule,
        });
    }
    Ok(value.to_owned())
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// A validated job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// `--job-name`.
    pub name: String,
    /// `--nodes`.
    pub nodes: String,
    /// `--partition`.
    pub partition: String,
    /// `--time`.
    pub time: String,
    /// `--account`.
    pub account: Option<String>,
    /// `--nodelist`.
    pub nodelist: Option<String>,
    /// Remote working directory (also `--chdir`, and the stdout/stderr location).
    pub workdir: String,
    /// Application info file on the cluster.
    pub application_info: RemotePath,
    /// Data info files on the cluster.
    pub data_info: Vec<RemotePath>,
    /// Input hooks directory on the cluster.
    pub input_hooks: Option<RemotePath>,
    /// Output hooks directory on the cluster.
    pub output_hooks: Option<RemotePath>,
    /// Environment file on the cluster.
    pub env_file: Option<RemotePath>,
    /// The user's age recipient for the output.
    pub output_recipient: String,
    /// Path of `hpcs-node` on the compute nodes.
    pub hpcs_node: String,
    /// Application arguments, passed as a vector.
    pub args: Vec<String>,
}

/// Unvalidated inputs of [`JobSpec::new`].
#[derive(Debug, Clone, Default)]
pub struct RawJob {
    /// Job name.
    pub name: Option<String>,
    /// Nodes.
    pub nodes: String,
    /// Partition.
    pub partition: String,
    /// Time limit.
    pub time: String,
    /// Account.
    pub account: Option<String>,
    /// Node list.
    pub nodelist: Option<String>,
    /// Workdir.
    pub workdir: String,
    /// Application info.
    pub application_info: String,
    /// Data info files.
    pub data_info: Vec<String>,
    /// Input hooks.
    pub input_hooks: Option<String>,
    /// Output hooks.
    pub output_hooks: Option<String>,
    /// Env file.
    pub env_file: Option<String>,
    /// Output recipient.
    pub output_recipient: String,
    /// hpcs-node path.
    pub hpcs_node: String,
    /// Application arguments.
    pub args: Vec<String>,
}

fn remote(what: &'static str, value: &str) -> Result<RemotePath, SpecError> {
    value.parse().map_err(|_| SpecError::Invalid {
        what,
        value: value.to_owned(),
        rule: "an absolute path without control characters, '.' or '..' components",
    })
}

impl JobSpec {
    /// Validates every field.
    ///
    /// # Errors
    ///
    /// [`SpecError`] naming the first bad value.
    pub fn new(raw: RawJob) -> Result<Self, SpecError> {
        let name = check(
            "job name",
            raw.name.as_deref().unwrap_or("hpcs"),
            "1-64 characters of [A-Za-z0-9_.-]",
            name_char,
            64,
        )?;
        let nodes = check(
            "node count",
            &raw.nodes,
            "a number or a range like 1-4",
            |c| c.is_ascii_digit() || c == '-',
            16,
        )?;
        let partition = check(
            "partition",
            &raw.partition,
            "characters of [A-Za-z0-9_.-]",
            name_char,
            128,
        )?;
        let time = check(
            "time limit",
            &raw.time,
            "a Slurm time like 10, 1:00:00 or 1-00:00:00",
            |c| c.is_ascii_digit() || c == ':' || c == '-',
            32,
        )?;
        let account = raw
            .account
            .as_deref()
            .map(|a| check("account", a, "characters of [A-Za-z0-9_.-]", name_char, 128))
            .transpose()?;
        let nodelist = raw
            .nodelist
            .as_deref()
            .map(|n| {
                check(
                    "node list",
                    n,
                    "characters of [A-Za-z0-9_.,[]-]",
                    |c| name_char(c) || matches!(c, ',' | '[' | ']'),
                    4096,
                )
            })
            .transpose()?;
        // The workdir appears in #SBATCH lines (unquotable, and '%' is a Slurm pattern).
        let workdir = check(
            "workdir",
            &raw.workdir,
            "an absolute path of [A-Za-z0-9_./+-] without '.' or '..' components",
            |c| name_char(c) || matches!(c, '/' | '+'),
            1024,
        )?;
        remote("workdir", &workdir)?;
        if !workdir.starts_with('/') {
            return Err(SpecError::Invalid {
                what: "workdir",
                value: workdir,
                rule: "an absolute path",
            });
        }
        let output_recipient = check(
            "output recipient",
            &raw.output_recipient,
            "an age recipient (age1...)",
            |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
            128,
        )?;
        if !output_recipient.starts_with("age1") {
            return Err(SpecError::Invalid {
                what: "output recipient",
                value: output_recipient,
                rule: "an age recipient (age1...)",
            });
        }
        let hpcs_node = check(
            "hpcs-node path",
            &raw.hpcs_node,
            "a command name or path of [A-Za-z0-9_./+-]",
            |c| name_char(c) || matches!(c, '/' | '+'),
            1024,
        )?;
        if let Some(index) = raw.args.iter().position(|a| a.contains('\0')) {
            return Err(SpecError::NulArgument { index });
        }
        Ok(Self {
            name,
            nodes,
            partition,
            time,
            account,
            nodelist,
            workdir,
            application_info: remote("application info", &raw.application_info)?,
            data_info: raw
                .data_info
                .iter()
                .map(|d| remote("data info", d))
                .collect::<Result<_, _>>()?,
            input_hooks: raw
                .input_hooks
                .as_deref()
                .map(|p| remote("input hooks", p))
                .transpose()?,
            output_hooks: raw
                .output_hooks
                .as_deref()
                .map(|p| remote("output hooks", p))
                .transpose()?,
            env_file: raw
                .env_file
                .as_deref()
                .map(|p| remote("env file", p))
                .transpose()?,
            output_recipient,
            hpcs_node,
            args: raw.args,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rstest::rstest;

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
            output_recipient: "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq"
                .into(),
            hpcs_node: "hpcs-node".into(),
            args: vec![],
        }
    }

    #[test]
    fn accepts_sample() {
        JobSpec::new(raw()).unwrap();
    }

    #[rstest]
    #[case::partition_newline(|r: &mut RawJob| r.partition = "debug\n#SBATCH --uid=0".into())]
    #[case::partition_space(|r: &mut RawJob| r.partition = "a b".into())]
    #[case::time_letters(|r: &mut RawJob| r.time = "1h".into())]
    #[case::nodes(|r: &mut RawJob| r.nodes = "1;id".into())]
    #[case::workdir_relative(|r: &mut RawJob| r.workdir = "scratch".into())]
    #[case::workdir_percent(|r: &mut RawJob| r.workdir = "/scratch/%u".into())]
    #[case::workdir_dotdot(|r: &mut RawJob| r.workdir = "/scratch/../etc".into())]
    #[case::name(|r: &mut RawJob| r.name = Some("a'b".into()))]
    #[case::info_relative(|r: &mut RawJob| r.application_info = "app.info.yaml".into())]
    #[case::info_newline(|r: &mut RawJob| r.data_info = vec!["/a\nb".into()])]
    #[case::recipient(|r: &mut RawJob| r.output_recipient = "AGE-SECRET-KEY-1".into())]
    #[case::nul_arg(|r: &mut RawJob| r.args = vec!["a\0b".into()])]
    fn refuses(#[case] edit: fn(&mut RawJob)) {
        let mut r = raw();
        edit(&mut r);
        assert!(JobSpec::new(r).is_err());
    }
}
