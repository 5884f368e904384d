//! docs/configuration.md documents every key the code reads, in the right section of the right
//! file, and documents no key the code does not read.

use std::collections::{BTreeMap, BTreeSet};

use hpcs_core::config::{RawClientConfig, RawNodeConfig, RawServerConfig, known_keys};

const DOC: &str = include_str!("../../docs/configuration.md");

/// `(file heading, section) -> keys` as the doc's tables list them: a `## ` heading names the file,
/// a `### [section]` heading the section, and each table row starts with a backticked key.
fn documented() -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let (mut file, mut section) = (String::new(), String::new());
    for line in DOC.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            file = h.split(':').next().unwrap_or_default().trim().to_owned();
            section.clear();
        } else if let Some(h) = line.strip_prefix("### ") {
            section = h
                .split('`')
                .nth(1)
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned();
            out.entry((file.clone(), section.clone())).or_default();
        } else if let Some(rest) = line.strip_prefix("| `")
            && !section.is_empty()
        {
            let key = rest.split('`').next().unwrap_or_default().to_owned();
            out.entry((file.clone(), section.clone()))
                .or_default()
                .insert(key);
        }
    }
    out
}

fn check(file: &str, code: &BTreeMap<&'static str, String>) {
    let docs = documented();
    let mut problems = Vec::new();
    for (section, keys) in code {
        let Some(doc_keys) = docs.get(&(file.to_owned(), (*section).to_owned())) else {
            problems.push(format!("{file}: section [{section}] is not documented"));
            continue;
        };
        if keys == "<any>" {
            continue;
        }
        let code_keys: BTreeSet<String> = keys.split(", ").map(str::to_owned).collect();
        for k in code_keys.difference(doc_keys) {
            problems.push(format!(
                "{file}: [{section}] {k} is read by the code but not documented"
            ));
        }
        for k in doc_keys.difference(&code_keys) {
            problems.push(format!(
                "{file}: [{section}] {k} is documented but not read by the code"
            ));
        }
    }
    for (f, section) in docs.keys() {
        if f == file && !code.contains_key(section.as_str()) {
            problems.push(format!(
                "{file}: documented section [{section}] does not exist"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md is out of date:\n{}",
        problems.join("\n")
    );
}

#[test]
fn client_keys_are_documented() {
    check("Client", &known_keys::<RawClientConfig>());
}

#[test]
fn server_keys_are_documented() {
    check("Server", &known_keys::<RawServerConfig>());
}

#[test]
fn node_keys_are_documented() {
    check("Node", &known_keys::<RawNodeConfig>());
}
