//! Configuration that changes without a restart. SIGHUP or `POST /v1/admin/reload` reads the
//! config file again (with the same `WAIMAI__*` environment overrides), applies the keys that
//! can change while the node runs, and refuses every other changed key with a log line, keeping
//! its old value: the listen address, the store URL or the shard count cannot move under a
//! running node.
//!
//! The current configuration is a `tokio::sync::watch` value: components that honour a live key
//! either read it when they use it or are told by the node's reconfigure task (`Node::start`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{Config, ConfigError};

/// The keys that change live, as dotted paths; a key ending in `.` names a whole section.
/// Every one of them is honoured by something that reads it again (see ARCHITECTURE.md).
pub const LIVE_KEYS: &[&str] = &[
    // rate-limit quotas (`enabled` and `backend` are not live: they decide what is built)
    "gateway.limits.write.",
    "gateway.limits.read.",
    "gateway.limits.ws.",
    // the log filter (the installed subscriber's filter is swapped)
    "telemetry.log_level",
    // deadlines armed from now on (the timer actor is told)
    "timers.payment_timeout_ms",
    "timers.accept_timeout_ms",
    "timers.auto_complete_ms",
    // how long `/pay` waits for the provider's callback (read per request)
    "payments.pay_wait_ms",
    // the dispatcher (each zone takes them at its next round; `dispatch.zones` and
    // `dispatch.enabled` are not live: they decide which actors exist)
    "dispatch.policy",
    "dispatch.batch_ms",
    "dispatch.offer_ttl_ms",
    "dispatch.retry_ms",
    "dispatch.offload_at",
    "dispatch.prep_ms",
    "dispatch.promise_ms",
    "dispatch.max_radius_m",
    "dispatch.k_nearest",
    "dispatch.max_candidates",
    "dispatch.speed_mps",
    "dispatch.cost",
    "dispatch.solver",
    "dispatch.age_weight",
    "dispatch.service_ms",
    "dispatch.max_detour_m",
    "dispatch.max_stack",
    "dispatch.promise_margin_ms",
];

/// Whether `key` may change while the node runs.
pub fn is_live(key: &str) -> bool {
    LIVE_KEYS
        .iter()
        .any(|k| key == *k || (k.ends_with('.') && key.starts_with(k)))
}

/// One changed key.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Dotted path, such as `timers.payment_timeout_ms`.
    pub key: String,
    /// The value the node had.
    pub from: Value,
    /// The value in the file.
    pub to: Value,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// Keys now in effect.
    pub applied: Vec<Change>,
    /// Keys that cannot change live: the node keeps their old value.
    pub refused: Vec<Change>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is missing, not YAML, or not a valid configuration.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The merged configuration does not fit the typed one (a bug, or a bad value).
    #[error("config: {0}")]
    Invalid(String),
    /// The new log filter does not parse.
    #[error("{0}")]
    LogLevel(String),
}

/// The node's current configuration and where it came from.
pub struct Live {
    source: Option<PathBuf>,
    tx: watch::Sender<Arc<Config>>,
    /// The configuration as the file (with defaults and environment) said at start or at the
    /// last reload, for the keys in effect: a reload reports what the file changed since, not
    /// what a command-line flag or the embedding program set on top.
    baseline: Mutex<Value>,
}

impl Live {
    /// Starts from `cfg`; reloads read `cfg.source` (embedded defaults when `None`).
    pub fn new(cfg: Config) -> Self {
        let source = cfg.source.clone();
        let baseline = Config::load(source.as_deref())
            .ok()
            .and_then(|c| serde_json::to_value(c).ok())
            .or_else(|| serde_json::to_value(&cfg).ok())
            .unwrap_or(Value::Null);
        let (tx, _) = watch::channel(Arc::new(cfg));
        Live {
            source,
            tx,
            baseline: Mutex::new(baseline),
        }
    }

    /// The configuration in effect.
    pub fn current(&self) -> Arc<Config> {
        self.tx.borrow().clone()
    }

    /// Follows every applied reload.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.tx.subscribe()
    }

    /// Reads the file again and applies what may change.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let next = Config::load(self.source.as_deref())?;
        self.apply(next)
    }

    /// Applies the live keys in which `next` differs from what the file said before; refuses
    /// (and logs) its other changes, which are reported again on every reload until undone.
    pub fn apply(&self, next: Config) -> Result<ReloadReport, ReloadError> {
        // One reload at a time (SIGHUP and the admin route may race).
        let mut baseline = self.baseline.lock().unwrap_or_else(|p| p.into_inner());
        let invalid = |e: serde_json::Error| ReloadError::Invalid(e.to_string());
        let current = self.current();
        let new = serde_json::to_value(&next).map_err(invalid)?;
        let mut merged = serde_json::to_value(&*current).map_err(invalid)?;
        let mut changes = Vec::new();
        diff(&baseline, &new, "", &mut changes);
        let mut report = ReloadReport::default();
        let mut applied_keys = Vec::new();
        for (key, from, to) in changes {
            if is_live(&key) {
                set(&mut merged, &key, to.clone());
                applied_keys.push((key.clone(), to.clone()));
                report.applied.push(redacted(key, from, to));
            } else {
                report.refused.push(redacted(key, from, to));
            }
        }
        let mut cfg: Config = serde_json::from_value(merged).map_err(invalid)?;
        cfg.source = current.source.clone();
        if applied_keys.iter().any(|(k, _)| k == "telemetry.log_level") {
            crate::telemetry::set_log_level(&cfg.telemetry.log_level)
                .map_err(|e| ReloadError::LogLevel(e.to_string()))?;
        }
        for (key, to) in applied_keys {
            set(&mut baseline, &key, to);
        }
        for c in &report.refused {
            tracing::warn!(
                key = %c.key, kept = %c.from, wanted = %c.to,
                "config reload: {} cannot change while the node runs; keeping the old value", c.key
            );
        }
        for c in &report.applied {
            tracing::info!(key = %c.key, from = %c.from, to = %c.to, "config reload: applied {}", c.key);
        }
        if !report.applied.is_empty() {
            self.tx.send_replace(Arc::new(cfg));
        }
        Ok(report)
    }
}

/// A change as reported and logged: secrets and URLs (which may hold passwords) are not shown.
fn redacted(key: String, from: Value, to: Value) -> Change {
    let hidden = ["secret", "url", "password", "token"]
        .iter()
        .any(|w| key.to_ascii_lowercase().contains(w));
    if hidden {
        let h = Value::String("(hidden)".into());
        return Change {
            key,
            from: h.clone(),
            to: h,
        };
    }
    Change { key, from, to }
}

/// Collects the leaves that differ between `a` and `b`, as dotted paths.
fn diff(a: &Value, b: &Value, at: &str, out: &mut Vec<(String, Value, Value)>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                diff(va, vb, &path, out);
            }
        }
        _ if a != b => out.push((at.to_string(), a.clone(), b.clone())),
        _ => {}
    }
}

/// Sets the leaf at dotted `path` in `v`.
fn set(v: &mut Value, path: &str, to: Value) {
    let mut at = v;
    for part in path.split('.') {
        if !at.is_object() {
            *at = Value::Object(Default::default());
        }
        let Value::Object(map) = at else { return };
        at = map.entry(part.to_string()).or_insert(Value::Null);
    }
    *at = to;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_changes_apply_and_the_rest_is_refused() {
        let cfg = Config::defaults().expect("defaults");
        let live = Live::new(cfg.clone());
        let mut next = cfg.clone();
        next.timers.payment_timeout_ms = 1234;
        next.server.listen = "0.0.0.0:9".into();
        next.auth.jwt_secret = "new-secret".into();
        let r = live.apply(next.clone()).expect("reload");
        let applied: Vec<&str> = r.applied.iter().map(|c| c.key.as_str()).collect();
        let refused: Vec<&str> = r.refused.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(applied, ["timers.payment_timeout_ms"]);
        assert_eq!(refused, ["auth.jwt_secret", "server.listen"]);
        let now = live.current();
        assert_eq!(now.timers.payment_timeout_ms, 1234);
        assert_eq!(now.server.listen, cfg.server.listen, "kept");
        assert_eq!(now.auth.jwt_secret, cfg.auth.jwt_secret, "kept");
        assert_eq!(r.refused[0].to, Value::String("(hidden)".into()));
        // Refused keys are reported again until the file is put back; applied ones are not.
        let again = live.apply(next).expect("reload");
        assert!(again.applied.is_empty());
        assert_eq!(again.refused.len(), 2);
    }

    #[test]
    fn what_the_embedder_set_on_top_of_the_file_is_not_a_change() {
        let mut cfg = Config::defaults().expect("defaults");
        cfg.server.listen = "127.0.0.1:0".into(); // as `serve --listen` does
        let live = Live::new(cfg);
        let r = live.reload().expect("reload");
        assert!(r.refused.is_empty(), "{:?}", r.refused);
        assert_eq!(live.current().server.listen, "127.0.0.1:0");
    }

    #[test]
    fn nothing_changed_sends_nothing() {
        let cfg = Config::defaults().expect("defaults");
        let live = Live::new(cfg.clone());
        let rx = live.subscribe();
        let r = live.apply(cfg).expect("reload");
        assert!(r.applied.is_empty() && r.refused.is_empty());
        assert!(!rx.has_changed().expect("open"));
    }

    #[test]
    fn section_prefixes_match_whole_sections_only() {
        assert!(is_live("timers.payment_timeout_ms"));
        assert!(!is_live("timers.tick_ms"));
        assert!(!is_live("store.url"));
    }
}
