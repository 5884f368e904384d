//! Log set-up shared by the laptop tools (container-prep, data-prep, job-prep).
//!
//! Warnings only by default; `-v` raises the tool's own and the HPCS libraries' level to debug,
//! `-vv` to trace; `HPCS_LOG` (an `EnvFilter` directive such as `debug,ssh2=trace`) replaces
//! both. Logs always go to stderr, so stdout stays the tool's parseable output (`--json`).

/// Installs the global subscriber. `tool` is the tool's crate name as a tracing target
/// (`job_prep`). Call once, first thing in `main`.
pub fn init(tool: &str, verbose: u8) {
    let ours = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HPCS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "warn,{tool}={ours},hpcs_client={ours},hpcs_core={ours}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
