//! Keeps `docs/cli.md` honest: every long flag, visible alias and environment variable a binary's
//! `--help` shows must appear in that command's section of the page, and every subcommand must
//! have a section.
//!
//! Each binary crate has a `tests/cli_docs.rs` that calls [`check_binary`] with
//! `env!("CARGO_BIN_EXE_<name>")`. The help text is taken from the built binary itself, so what is
//! checked is exactly what users see.
//!
//! Sections of `docs/cli.md`: a heading (`## ` or deeper) whose text, without backticks, is a
//! command path (`job-prep`, `job-prep status`, `devspire entry create`) starts the section of
//! that command. It ends at the next heading of the same or a higher level, or at the next
//! heading that names another command of the same binary. Other headings inside (`### Examples`)
//! belong to the enclosing section. A subcommand's flag that its parent's help also lists (a
//! global flag) may be documented in the parent's section instead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags that every clap command has and that the page documents once, not per command.
const GENERIC_FLAGS: [&str; 2] = ["--help", "--version"];

/// What one `--help` output exposes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Help {
    /// Long flags and visible long aliases, with their dashes (`--config`, `--ai`).
    pub long_flags: BTreeSet<String>,
    /// Subcommand names, without clap's generated `help`.
    pub subcommands: BTreeSet<String>,
    /// Environment variables that set a flag (`[env: HPCS_CLIENT_CONFIG=]`).
    pub env_vars: BTreeSet<String>,
}

/// Path of `docs/cli.md` in this workspace.
#[must_use]
pub fn doc_path() -> PathBuf {
    crate::workspace_root().join("docs").join("cli.md")
}

/// Runs `bin <path...> --help` and returns its stdout.
///
/// # Panics
///
/// If the binary cannot be run, exits unsuccessfully or prints something that is not UTF-8.
#[must_use]
pub fn help_text(bin: &Path, path: &[String]) -> String {
    let out = Command::new(bin)
        .args(path)
        .arg("--help")
        .env_remove("HPCS_CLIENT_CONFIG")
        .env_remove("HPCS_NODE_CONFIG")
        .env_remove("HPCS_NODE_POLICY")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} {path:?} --help: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {path:?} --help failed ({}): {}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("--help prints UTF-8")
}

/// Parses clap's help output: option lines (`  -b, --base-oci-image <IMAGE>`), their
/// `[aliases: --ai]` notes, and the `Commands:` list.
#[must_use]
pub fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut in_commands = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_commands = line.trim_end() == "Commands:";
            continue;
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if in_commands {
            if indent == 2
                && let Some(name) = trimmed.split_whitespace().next()
                && name != "help"
            {
                help.subcommands.insert(name.to_owned());
            }
            continue;
        }
        // `  -b, --long` with a short flag, `      --long` without; descriptions are indented more.
        if (indent == 2 || indent == 6) && trimmed.starts_with('-') {
            // The option's spelling ends where its one-line description starts (two spaces).
            let spec = trimmed.split("  ").next().unwrap_or_default();
            help.long_flags.extend(long_flags_in(spec));
        }
        if let Some(at) = line.find("[aliases: ").or_else(|| line.find("[alias: ")) {
            let rest = &line[at..];
            let list = &rest[..rest.find(']').unwrap_or(rest.len())];
            help.long_flags.extend(long_flags_in(list));
        }
        if let Some(at) = line.find("[env: ") {
            let rest = &line[at + "[env: ".len()..];
            let name = &rest[..rest.find(['=', ']']).unwrap_or(rest.len())];
            help.env_vars.insert(name.to_owned());
        }
    }
    for generic in GENERIC_FLAGS {
        help.long_flags.remove(generic);
    }
    help
}

/// Every `--name` token in `s`.
fn long_flags_in(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find("--") {
        let after = &rest[at + 2..];
        let len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(after.len());
        let name = &after[..len];
        let starts_word = at == 0 || !rest[..at].ends_with(|c: char| c.is_ascii_alphanumeric());
        if starts_word && name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            out.push(format!("--{name}"));
        }
        rest = &after[len..];
    }
    out
}

/// A heading of the page: its level (number of `#`) and its text without backticks.
fn heading(line: &str) -> Option<(usize, String)> {
    let level = line.chars().take_while(|c| *c == '#').count();
    if level < 2 || !line[level..].starts_with(' ') {
        return None;
    }
    Some((level, line[level..].replace('`', "").trim().to_owned()))
}

/// The text of the section of `command` (e.g. `job-prep status`) in `doc`, or `None` if no
/// heading names it. See the module documentation for where a section ends.
#[must_use]
pub fn section<'a>(doc: &'a str, command: &str) -> Option<&'a str> {
    let binary = command.split(' ').next().unwrap_or(command);
    let mut start: Option<(usize, usize)> = None; // (byte offset of the body, level)
    let mut offset = 0;
    for line in doc.split_inclusive('\n') {
        let here = offset;
        offset += line.len();
        let Some((level, text)) = heading(line.trim_end()) else {
            continue;
        };
        match start {
            None if text == command => start = Some((offset, level)),
            Some((body, start_level))
                if level <= start_level
                    || text == binary
                    || text.starts_with(&format!("{binary} ")) =>
            {
                return Some(&doc[body..here]);
            }
            _ => {}
        }
    }
    start.map(|(body, _)| &doc[body..])
}

/// Whether `flag` occurs in `text` as a whole word (`--work` does not match `--workdir`).
#[must_use]
pub fn mentions(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + flag.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-');
        !word(before) && !word(after)
    })
}

/// Checks `bin` (named `name` in the page) and all its subcommands, recursively, against the page
/// at `doc`; collects every problem, then panics listing them all.
///
/// # Panics
///
/// If the page cannot be read, a help output cannot be obtained, or anything is undocumented.
pub fn check_binary(bin: &Path, name: &str, doc: &Path) {
    let text = std::fs::read_to_string(doc)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", doc.display()));
    let mut problems = Vec::new();
    check_command(bin, name, &[], None, &text, &mut problems);
    assert!(
        problems.is_empty(),
        "{} is out of date with `{name} --help`:\n  {}",
        doc.display(),
        problems.join("\n  ")
    );
}

/// Checks the command at `path` and its subcommands; `parent` is the parent command's help and
/// the text of its section, where a flag the parent also lists (a global one) may be documented.
fn check_command(
    bin: &Path,
    name: &str,
    path: &[String],
    parent: Option<(&Help, &str)>,
    doc: &str,
    problems: &mut Vec<String>,
) {
    let command = std::iter::once(name)
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let help = parse_help(&help_text(bin, path));
    let Some(own) = section(doc, &command) else {
        problems.push(format!("no section (heading) for `{command}`"));
        return;
    };
    let kinds: [fn(&Help) -> &BTreeSet<String>; 2] = [|h| &h.long_flags, |h| &h.env_vars];
    for of in kinds {
        for item in of(&help) {
            let in_parent = parent.is_some_and(|(parent_help, parent_section)| {
                of(parent_help).contains(item) && mentions(parent_section, item)
            });
            if !mentions(own, item) && !in_parent {
                problems.push(format!(
                    "`{command}`: {item} is not documented in its section"
                ));
            }
        }
    }
    for sub in &help.subcommands {
        let mut sub_path = path.to_vec();
        sub_path.push(sub.clone());
        check_command(bin, name, &sub_path, Some((&help, own)), doc, problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: &str = "\
Submit a job.

Usage: job-prep [OPTIONS] --partition <PARTITION> [-- <APP_ARGS>...]
       job-prep [OPTIONS] <COMMAND>

Commands:
  status        Print a job's state
  fetch-output  Download a job's output
  help          Print this message or the help of the given subcommand(s)

Arguments:
  [APP_ARGS]...
          Arguments of the application, after `--` (HPCS -args)

Options:
      --config <FILE>
          Client config [env: HPCS_CLIENT_CONFIG=]

  -p, --partition <PARTITION>  Slurm partition, see --not-a-flag
      --application-info <REMOTE_INFO>
          Info file (HPCS -ai)

          [aliases: --ai]
  -v, --verbose...
          More log output
  -h, --help
          Print help
  -V, --version
          Print version
";

    #[test]
    fn parses_flags_aliases_and_commands() {
        let help = parse_help(HELP);
        let flags: Vec<&str> = help.long_flags.iter().map(String::as_str).collect();
        assert_eq!(
            flags,
            [
                "--ai",
                "--application-info",
                "--config",
                "--partition",
                "--verbose"
            ]
        );
        let subs: Vec<&str> = help.subcommands.iter().map(String::as_str).collect();
        assert_eq!(subs, ["fetch-output", "status"]);
        let vars: Vec<&str> = help.env_vars.iter().map(String::as_str).collect();
        assert_eq!(vars, ["HPCS_CLIENT_CONFIG"]);
    }

    const DOC: &str = "\
# CLI

## job-prep

Flags: `--config`, `-p/--partition`.

### Examples

`job-prep --follow`

### `job-prep status`

`status JOBID`: `--json`

## data-prep

`--input-data`
";

    #[test]
    fn sections_end_at_the_next_command_or_a_higher_heading() {
        let top = section(DOC, "job-prep").unwrap();
        assert!(mentions(top, "--config") && mentions(top, "--follow"));
        assert!(
            !mentions(top, "--json"),
            "the status section is not the parent's"
        );
        let status = section(DOC, "job-prep status").unwrap();
        assert!(mentions(status, "--json") && !mentions(status, "--input-data"));
        assert!(mentions(section(DOC, "data-prep").unwrap(), "--input-data"));
        assert!(section(DOC, "job-prep cancel").is_none());
    }

    #[test]
    fn mentions_whole_words_only() {
        assert!(mentions("use `-s/--workdir DIR`", "--workdir"));
        assert!(!mentions("use `--workdir-x`", "--workdir"));
        assert!(!mentions("use `--data-info`", "--data"));
        assert!(!mentions("x--ai", "--ai"));
    }
}
