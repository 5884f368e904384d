//! `hpcs-node images`: the images the admin policy authorises on a node (like hocker/socker).

use std::path::Path;

use crate::policy::{Policy, PolicyError};

/// Render the images `policy_path` authorises on `node`, as text or JSON.
///
/// # Errors
///
/// The policy cannot be loaded.
pub fn list(policy_path: &Path, node: &str, json: bool) -> Result<String, PolicyError> {
    let policy = Policy::load(policy_path)?;
    let rules: Vec<_> = policy.images_for_node(node).collect();
    if json {
        let v = serde_json::json!({ "node": node, "images": rules });
        return Ok(format!("{v:#}\n"));
    }
    let mut out = format!(
        "authorised images on node {node} ({}):\n",
        policy.path().display()
    );
    if rules.is_empty() {
        out.push_str("  (none)\n");
    }
    for r in rules {
        out.push_str(&format!(
            "  [image:{}] name={} digest={}",
            r.rule,
            r.name.as_deref().unwrap_or("*"),
            r.digest.as_deref().unwrap_or("any")
        ));
        if !r.users.is_empty() || !r.groups.is_empty() {
            out.push_str(&format!(
                " users={} groups={}",
                r.users.join(","),
                r.groups.join(",")
            ));
        }
        out.push('\n');
    }
    Ok(out)
}

/// This host's name, the default node name.
#[must_use]
pub fn local_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
