//! Counters and a histogram through proxy-wasm's metric API, defined on first use. Envoy shows
//! them in `/stats/prometheus` under names that start with `meshguard_`. Counter increments are
//! summed in the VM and handed to Envoy on the root context's tick (every second): a call into
//! Envoy per request per counter would cost more than the work it counts.

use hashbrown::HashMap;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// The counters of fixed name, so that counting one per request hashes no name.
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    TokenCacheHits,
    TokenCacheMisses,
    RlsCalls,
    RlsErrors,
    JwksFetches,
    JwksFetchFailures,
}

impl Counter {
    const COUNT: usize = 6;

    fn name(self) -> &'static str {
        match self {
            Counter::TokenCacheHits => "meshguard_token_cache_hits_total",
            Counter::TokenCacheMisses => "meshguard_token_cache_misses_total",
            Counter::RlsCalls => "meshguard_rls_calls_total",
            Counter::RlsErrors => "meshguard_rls_errors_total",
            Counter::JwksFetches => "meshguard_jwks_fetches_total",
            Counter::JwksFetchFailures => "meshguard_jwks_fetch_failures_total",
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    ids: HashMap<String, u32>,
    /// Ids of the `Counter`s, by the enum's order, once defined.
    counter_ids: [Option<u32>; Counter::COUNT],
    /// `meshguard_requests_total` ids by rule (index 0 for no rule, rule `i` at `i + 1`) and
    /// decision, so counting a request builds and hashes no metric name.
    request_ids: Vec<Vec<(&'static str, u32)>>,
    /// Counter increments not yet handed to Envoy, by metric id.
    pending: HashMap<u32, u64>,
}

impl Metrics {
    fn id(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(kind, name).ok()?;
        self.ids.insert(name.to_owned(), id);
        Some(id)
    }

    pub fn add(&mut self, name: &str, count: u64) {
        if count == 0 {
            return;
        }
        if let Some(id) = self.id(MetricType::Counter, name) {
            self.add_to(id, count);
        }
    }

    /// Adds to a counter of fixed name, looking its id up by the enum.
    pub fn count(&mut self, counter: Counter, count: u64) {
        if count == 0 {
            return;
        }
        let known = self.counter_ids.get(counter as usize).copied().flatten();
        let id = match known {
            Some(id) => id,
            None => {
                let Some(id) = self.id(MetricType::Counter, counter.name()) else {
                    return;
                };
                if let Some(slot) = self.counter_ids.get_mut(counter as usize) {
                    *slot = Some(id);
                }
                id
            }
        };
        self.add_to(id, count);
    }

    /// Sums an increment for the next flush.
    fn add_to(&mut self, id: u32, count: u64) {
        let slot = self.pending.entry(id).or_insert(0);
        *slot = slot.saturating_add(count);
    }

    /// Hands the summed increments to Envoy.
    pub fn flush(&mut self) {
        for (id, count) in self.pending.drain() {
            let _ = hostcalls::increment_metric(id, i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Counts one request under `meshguard_requests_total{rule, decision}`; `rule` is the
    /// rule's index and name.
    pub fn count_request(&mut self, rule: Option<(usize, &str)>, decision: &'static str) {
        let slot = rule.map_or(0, |(index, _)| index + 1);
        let known = self
            .request_ids
            .get(slot)
            .and_then(|ids| ids.iter().find(|(d, _)| *d == decision))
            .map(|(_, id)| *id);
        let id = match known {
            Some(id) => id,
            None => {
                let name = rule.map(|(_, name)| name);
                let Some(id) = self.id(MetricType::Counter, &requests_metric(name, decision))
                else {
                    return;
                };
                if self.request_ids.len() <= slot {
                    self.request_ids.resize_with(slot + 1, Vec::new);
                }
                if let Some(ids) = self.request_ids.get_mut(slot) {
                    ids.push((decision, id));
                }
                id
            }
        };
        self.add_to(id, 1);
    }

    pub fn increment(&mut self, name: &str) {
        self.add(name, 1);
    }

    pub fn record(&mut self, name: &str, value: u64) {
        if let Some(id) = self.id(MetricType::Histogram, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }
}

/// `meshguard_requests_total` for one rule and decision. Rule names become part of the stat
/// name, with characters Prometheus does not allow replaced by `_`.
fn requests_metric(rule: Option<&str>, decision: &str) -> String {
    let rule = stat_name_part(rule.unwrap_or("none"));
    format!("meshguard_requests_total.rule.{rule}.decision.{decision}")
}

/// An authorization counter for one rule: `meshguard_authz_denied_total{rule}` and its kin.
pub fn rule_metric(counter: &str, rule: &str) -> String {
    format!("{counter}.rule.{}", stat_name_part(rule))
}

fn stat_name_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
