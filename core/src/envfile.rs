//! Env files (`--env-file`): the container's environment as `NAME=value` lines.
//!
//! One parser for both ends: job-prep checks the researcher's file before uploading it, and
//! hpcs-node reads the uploaded copy on the node, where it sits on shared storage and is
//! untrusted. Format: `NAME=value` lines (an optional `export ` prefix is dropped), `#` comments
//! and blank lines; names `[A-Za-z_][A-Za-z0-9_]*`; the value is the rest of the line, taken
//! literally (no quotes, no expansion), with surrounding whitespace trimmed; UTF-8 without NUL or
//! control characters other than tab; at most [`ENV_FILE_MAX_BYTES`].

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Largest env file accepted.
pub const ENV_FILE_MAX_BYTES: u64 = 64 * 1024;

/// Errors of [`read`] and [`parse`]. Values never appear in them (they may be secrets).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvFileError {
    /// The file could not be read.
    #[error("cannot read env file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file as a whole is unacceptable (size, encoding).
    #[error("env file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A line is malformed.
    #[error("env file {path}, line {line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Reads and parses an env file (at most [`ENV_FILE_MAX_BYTES`]).
///
/// # Errors
///
/// [`EnvFileError`] naming the file and, for a bad line, its number.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let read_err = |source| EnvFileError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(ENV_FILE_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    let whole = |reason: String| EnvFileError::File {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() as u64 > ENV_FILE_MAX_BYTES {
        return Err(whole(format!("larger than {ENV_FILE_MAX_BYTES} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| whole("not UTF-8 text".into()))?;
    parse(&text, path)
}

/// Parses env file text into `(name, value)` pairs in file order; `path` names it in errors.
///
/// # Errors
///
/// [`EnvFileError::Line`] for the first bad line.
pub fn parse(text: &str, path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut vars = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let bad = |reason: String| EnvFileError::Line {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        if let Some(c) = raw
            .chars()
            .find(|c| c.is_control() && *c != '\t' && *c != '\r')
        {
            return Err(bad(format!("control character {c:?}")));
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(bad("expected NAME=value".into()));
        };
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(bad(format!(
                "invalid variable name {name:?}: expected [A-Za-z_][A-Za-z0-9_]*"
            )));
        }
        vars.push((name.to_owned(), value.to_owned()));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pairs_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        std::fs::write(&p, "# c\n\nA=1\nexport B=x=y\n  D=\n").unwrap();
        let got = read(&p).unwrap();
        let want: Vec<(String, String)> = [("A", "1"), ("B", "x=y"), ("D", "")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn refuses_large_and_binary_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        std::fs::write(&p, vec![b'#'; ENV_FILE_MAX_BYTES as usize + 1]).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("larger than"));
        std::fs::write(&p, b"A=\xff\n").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("not UTF-8"));
        let err = read(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("cannot read env file"), "{err}");
    }

    #[test]
    fn errors_name_the_line_but_not_the_value() {
        let err = parse("A=1\nB=secret-value\u{7}\n", Path::new("job.env")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("env file job.env, line 2: control character"),
            "{msg}"
        );
        assert!(!msg.contains("secret-value"), "{msg}");
    }
}
