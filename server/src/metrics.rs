//! Prometheus metrics in the text exposition format (version 0.0.4).
//!
//! A small registry of labelled counters and histograms: the server exports a dozen series, so a
//! mutex-protected map is plenty and keeps the dependency list short.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counter and histogram families: name, help.
const FAMILIES: &[(&str, &str, Kind)] = &[
    (
        "hpcs_http_requests_total",
        "HTTP requests by method, route and status.",
        Kind::Counter,
    ),
    (
        "hpcs_http_request_duration_seconds",
        "HTTP request latency by method and route.",
        Kind::Histogram,
    ),
    (
        "hpcs_backend_duration_seconds",
        "Latency of SPIRE and Vault calls by backend and operation.",
        Kind::Histogram,
    ),
    (
        "hpcs_registrations_total",
        "Secret registrations by result (ok, denied, failed).",
        Kind::Counter,
    ),
    (
        "hpcs_updates_total",
        "Reader/node updates by result (ok, denied, failed).",
        Kind::Counter,
    ),
    (
        "hpcs_revocations_total",
        "Revocations by result (ok, denied, failed).",
        Kind::Counter,
    ),
    (
        "hpcs_auth_failures_total",
        "Refused credentials by reason.",
        Kind::Counter,
    ),
    (
        "hpcs_backend_failures_total",
        "Failed SPIRE and Vault calls by backend and operation.",
        Kind::Counter,
    ),
    (
        "hpcs_rollbacks_total",
        "Rollbacks after a failed change, by result (complete, incomplete).",
        Kind::Counter,
    ),
    (
        "hpcs_audit_failures_total",
        "Audit records that could not be written.",
        Kind::Counter,
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Histogram,
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Series {
    counters: BTreeMap<(&'static str, Labels), u64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<Series>,
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl Metrics {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds 1 to counter `name` with `pairs` as labels.
    pub fn inc(&self, name: &'static str, pairs: &[(&'static str, &str)]) {
        *self
            .lock()
            .counters
            .entry((name, labels(pairs)))
            .or_default() += 1;
    }

    /// Records one observation of histogram `name`.
    pub fn observe(&self, name: &'static str, pairs: &[(&'static str, &str)], value: Duration) {
        let secs = value.as_secs_f64();
        let mut s = self.lock();
        let h = s.histograms.entry((name, labels(pairs))).or_default();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The current value of a counter (tests and the load report).
    #[must_use]
    pub fn counter(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> u64 {
        self.lock()
            .counters
            .get(&(name, labels(pairs)))
            .copied()
            .unwrap_or(0)
    }

    /// Everything in the Prometheus text format.
    #[must_use]
    pub fn render(&self) -> String {
        let s = self.lock();
        let mut out = String::new();
        for (family, help, kind) in FAMILIES {
            let _ = writeln!(out, "# HELP {family} {help}");
            match kind {
                Kind::Counter => {
                    let _ = writeln!(out, "# TYPE {family} counter");
                    for ((name, l), v) in &s.counters {
                        if name == family {
                            let _ = writeln!(out, "{family}{} {v}", fmt_labels(l, None));
                        }
                    }
                }
                Kind::Histogram => {
                    let _ = writeln!(out, "# TYPE {family} histogram");
                    for ((name, l), h) in &s.histograms {
                        if name != family {
                            continue;
                        }
                        for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                            let le = bound.to_string();
                            let _ =
                                writeln!(out, "{family}_bucket{} {n}", fmt_labels(l, Some(&le)));
                        }
                        let _ = writeln!(
                            out,
                            "{family}_bucket{} {}",
                            fmt_labels(l, Some("+Inf")),
                            h.count
                        );
                        let _ = writeln!(out, "{family}_sum{} {}", fmt_labels(l, None), h.sum);
                        let _ = writeln!(out, "{family}_count{} {}", fmt_labels(l, None), h.count);
                    }
                }
            }
        }
        out
    }
}

fn fmt_labels(l: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        m.inc("hpcs_registrations_total", &[("result", "ok")]);
        m.inc("hpcs_registrations_total", &[("result", "ok")]);
        m.inc("hpcs_auth_failures_total", &[("reason", "exp\"ired")]);
        m.observe(
            "hpcs_http_request_duration_seconds",
            &[("method", "POST"), ("route", "/api/v1/secrets")],
            Duration::from_millis(30),
        );
        let text = m.render();
        assert!(
            text.contains("# TYPE hpcs_registrations_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("hpcs_registrations_total{result=\"ok\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("reason=\"exp\\\"ired\""), "{text}");
        assert!(text.contains(
            "hpcs_http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/v1/secrets\",le=\"0.025\"} 0\n"
        ), "{text}");
        assert!(text.contains(
            "hpcs_http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/v1/secrets\",le=\"0.05\"} 1\n"
        ), "{text}");
        assert!(text.contains(
            "hpcs_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/secrets\"} 1\n"
        ), "{text}");
        assert_eq!(
            m.counter("hpcs_registrations_total", &[("result", "ok")]),
            2
        );
    }
}
