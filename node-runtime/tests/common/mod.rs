//! Shared helpers of the hpcs-node integration tests: the test stack and test images.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::io::Read;

use futures::StreamExt;
use hpcs_node::container::DockerEngine;
use sha2::{Digest, Sha256};

/// The test stack's environment (see `scripts/test-stack`).
pub struct Env(pub HashMap<String, String>);

impl Env {
    /// Load the stack env file through the shared test support (which names `scripts/test-stack
    /// up` when it is missing); `None` (it prints "skipped") when the developer opted out.
    pub fn load() -> Option<Self> {
        hpcs_test_support::Stack::load_or_skip()?;
        let path = hpcs_test_support::env_file();
        let text = std::fs::read_to_string(&path).unwrap();
        Some(Self(hpcs_test_support::parse_env(&text)))
    }

    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).unwrap_or_else(|| {
            panic!("{key} missing from the stack env: run `scripts/test-stack up`")
        })
    }

    pub fn opt(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

pub async fn engine(env: &Env) -> DockerEngine {
    DockerEngine::connect(env.get("HPCS_DOCKER_HOST"))
        .await
        .expect("connect to dockerd")
}

/// A large image `<name>:1`: the stack's test image plus a layer with `mib` MiB of incompressible
/// bytes (stream `seed`), so nothing along the way can shortcut it. Returns the `docker save`
/// archive and the image id.
pub async fn large_image_archive(
    engine: &DockerEngine,
    env: &Env,
    name: &str,
    mib: usize,
    seed: u64,
) -> (Vec<u8>, String) {
    let filler = hpcs_test_support::incompressible(mib << 20, seed);
    unique_image_archive(
        engine,
        env.get("HPCS_TEST_IMAGE"),
        &format!("{name}:1"),
        &[("filler.bin", &filler)],
    )
    .await
}

/// A `docker save` archive of a new, unique image: the stack's test image plus one layer holding
/// `files`, tagged `tag`. Returns the archive and the image id the engine will compute.
pub async fn unique_image_archive(
    engine: &DockerEngine,
    base: &str,
    tag: &str,
    files: &[(&str, &[u8])],
) -> (Vec<u8>, String) {
    let mut saved = Vec::new();
    let mut s = engine.docker().export_image(base);
    while let Some(chunk) = s.next().await {
        saved.extend_from_slice(&chunk.expect("docker save"));
    }
    let mut entries: Vec<(tar::Header, String, Vec<u8>)> = Vec::new();
    let mut archive = tar::Archive::new(saved.as_slice());
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        entries.push((e.header().clone(), name, data));
    }
    let manifest_idx = entries
        .iter()
        .position(|(_, n, _)| n == "manifest.json")
        .unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&entries[manifest_idx].2).unwrap();
    let config_name = manifest[0]["Config"].as_str().unwrap().to_owned();
    let config_idx = entries
        .iter()
        .position(|(_, n, _)| *n == config_name)
        .unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&entries[config_idx].2).unwrap();

    // The extra layer.
    let mut layer = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(0);
        layer.append_data(&mut h, path, *data).unwrap();
    }
    let layer = layer.into_inner().unwrap();
    let layer_hex = hex::encode(Sha256::digest(&layer));
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(format!("sha256:{layer_hex}").into());
    config["config"]["Labels"] = serde_json::json!({ "io.hpcs.test": tag });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_hex = hex::encode(Sha256::digest(&config_bytes));
    manifest[0]["Config"] = format!("{config_hex}.json").into();
    manifest[0]["RepoTags"] = serde_json::json!([tag]);
    manifest[0]["Layers"]
        .as_array_mut()
        .unwrap()
        .push(format!("{layer_hex}/layer.tar").into());

    let mut out = tar::Builder::new(Vec::new());
    for (i, (mut h, name, data)) in entries.into_iter().enumerate() {
        if i == manifest_idx || i == config_idx || name == "repositories" {
            continue;
        }
        out.append_data(&mut h, &name, data.as_slice()).unwrap();
    }
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        out.append_data(&mut h, name, data).unwrap();
    };
    add(&format!("{layer_hex}/layer.tar"), &layer);
    add(&format!("{config_hex}.json"), &config_bytes);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    (out.into_inner().unwrap(), format!("sha256:{config_hex}"))
}

/// Collects container output.
#[derive(Default)]
pub struct Collect {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl hpcs_node::container::OutputSink for Collect {
    fn write(
        &mut self,
        kind: hpcs_node::container::OutputKind,
        data: &[u8],
    ) -> std::io::Result<()> {
        match kind {
            hpcs_node::container::OutputKind::Stdout => self.stdout.extend_from_slice(data),
            hpcs_node::container::OutputKind::Stderr => self.stderr.extend_from_slice(data),
        }
        Ok(())
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub mod e2e;
