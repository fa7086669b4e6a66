//! How results are shown: aligned tables for people, JSON for scripts.
//!
//! JSON field names are part of the operator contract: add fields, never rename or drop one.

use comfy_table::{Table, presets};
use keyplane_proto::v1 as pb;
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};

pub struct Output {
    pub json: bool,
}

/// 6 decimal places: prices in micro-USD per million tokens, multipliers in ppm.
fn micros_f64(value: u64) -> f64 {
    value as f64 / 1e6
}

/// Exact decimal text of an integer with `places` implied decimal places.
fn decimal(value: u64, places: u32) -> String {
    let scale = 10u64.pow(places);
    let frac = value % scale;
    if frac == 0 {
        return (value / scale).to_string();
    }
    let digits = format!("{frac:0width$}", width = places as usize);
    format!("{}.{}", value / scale, digits.trim_end_matches('0'))
}

fn time(ms: i64) -> Value {
    if ms <= 0 {
        return Value::Null;
    }
    Value::String(time_text(ms))
}

fn time_text(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_string();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

/// What a logged request cost: nothing when it was not billed, else what the ledger bills (the
/// provider's reported cost when it gave one).
fn logged_cost(r: &pb::UsageRecord) -> u64 {
    if r.unbilled {
        0
    } else {
        r.reported_cost_nano_usd.unwrap_or(r.cost_nano_usd)
    }
}

fn print_json(value: &Value) {
    // Serializing a Value cannot fail.
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(header.iter().map(|h| h.to_uppercase()));
    for row in rows {
        table.add_row(row);
    }
    println!("{}", table.trim_fmt());
}

/// Which cost a usage row billed: the computed one, the provider's reported one, or some of each.
fn billed(r: &pb::UsageRow) -> &'static str {
    match r.reported_requests {
        0 => "computed",
        n if n >= r.requests => "reported",
        _ => "mixed",
    }
}

impl Output {
    /// `single`: the answer to an add/set/revoke, shown as one object in JSON.
    fn emit(&self, single: bool, values: Vec<Value>, header: &[&str], rows: Vec<Vec<String>>) {
        if self.json {
            match (single, values.len()) {
                (true, 1) => print_json(&values[0]),
                _ => print_json(&Value::Array(values)),
            }
        } else {
            print_table(header, rows);
        }
    }

    pub fn providers(&self, list: &[pb::Provider], single: bool) {
        let values = list
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "protocol": p.protocol,
                    "base_url": p.base_url,
                    "created_at": time(p.created_at_ms),
                    "catalog": if p.catalog.is_empty() { Value::Null } else { json!(p.catalog) },
                    "preset": if p.preset.is_empty() { Value::Null } else { json!(p.preset) },
                    "connect_timeout_ms": p.connect_timeout_ms,
                    "first_byte_timeout_ms": p.first_byte_timeout_ms,
                    "idle_timeout_ms": p.idle_timeout_ms,
                    "max_body_bytes": p.max_body_bytes,
                })
            })
            .collect();
        let rows = list
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.protocol.clone(),
                    p.base_url.clone(),
                    if p.catalog.is_empty() {
                        "-".to_string()
                    } else {
                        p.catalog.clone()
                    },
                ]
            })
            .collect();
        self.emit(
            single,
            values,
            &["name", "protocol", "base url", "catalog"],
            rows,
        );
    }

    pub fn credentials(&self, list: &[pb::Credential], single: bool) {
        let values = list
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "provider": c.provider,
                    "label": c.label,
                    "multiplier": micros_f64(c.multiplier_ppm),
                    "state": c.state,
                    "state_since": time(c.state_since_ms),
                    "created_at": time(c.created_at_ms),
                    "state_reason": c.state_reason,
                    "state_until": time(c.state_until_ms),
                    "quota_resets": c.quota_resets,
                })
            })
            .collect();
        let rows = list
            .iter()
            .map(|c| {
                vec![
                    c.id.clone(),
                    c.provider.clone(),
                    c.label.clone(),
                    decimal(c.multiplier_ppm, 6),
                    c.state.clone(),
                    time_text(c.state_since_ms),
                ]
            })
            .collect();
        self.emit(
            single,
            values,
            &["id", "provider", "label", "multiplier", "state", "since"],
            rows,
        );
    }

    /// `model list` rows: exactly `model, provider, upstream_model, input, output, currency,
    /// source, synced_at` in JSON (`model set`'s answer adds `cache_read`, `cache_write` and
    /// `updated_at`) (input / output in USD per million tokens, `null` when the
    /// price is unknown; `currency` is the price's own currency). The table also shows the price
    /// in that currency when it is not USD.
    pub fn offerings(&self, list: &[pb::ModelOffering], single: bool) {
        let usd = |o: &pb::ModelOffering, v: u64| {
            if o.price_unknown {
                Value::Null
            } else {
                json!(micros_f64(v))
            }
        };
        let values = list
            .iter()
            .map(|o| {
                let mut row = json!({
                    "model": o.model,
                    "provider": o.provider,
                    "upstream_model": o.upstream_model,
                    "input": usd(o, o.input_micro_usd_per_mtok),
                    "output": usd(o, o.output_micro_usd_per_mtok),
                    "currency": o.currency,
                    "source": o.source,
                    "synced_at": time(o.synced_at_ms),
                });
                // The answer to `model set` also shows the cached-input prices it was given.
                if single && let Some(obj) = row.as_object_mut() {
                    obj.insert(
                        "cache_read".into(),
                        json!(o.cache_read_micro_usd_per_mtok.map(micros_f64)),
                    );
                    obj.insert(
                        "cache_write".into(),
                        json!(o.cache_write_micro_usd_per_mtok.map(micros_f64)),
                    );
                    obj.insert("updated_at".into(), time(o.updated_at_ms));
                }
                row
            })
            .collect();
        let rows = list
            .iter()
            .map(|o| {
                let price = |v: u64| {
                    if o.price_unknown {
                        "?".to_string()
                    } else {
                        decimal(v, 6)
                    }
                };
                let native = if o.currency.is_empty() || o.currency == "USD" {
                    String::new()
                } else {
                    format!(
                        "{} {} / {}",
                        o.currency,
                        decimal(o.input_micro_per_mtok_native, 6),
                        decimal(o.output_micro_per_mtok_native, 6)
                    )
                };
                vec![
                    o.model.clone(),
                    o.provider.clone(),
                    o.upstream_model.clone(),
                    price(o.input_micro_usd_per_mtok),
                    price(o.output_micro_usd_per_mtok),
                    native,
                    o.source.clone(),
                    time_text(o.synced_at_ms),
                ]
            })
            .collect();
        self.emit(
            single,
            values,
            &[
                "model",
                "provider",
                "upstream model",
                "input $/Mtok",
                "output $/Mtok",
                "native price",
                "source",
                "synced",
            ],
            rows,
        );
    }

    pub fn aliases(&self, list: &[pb::ModelAlias], single: bool) {
        let values = list
            .iter()
            .map(|a| {
                json!({
                    "alias": a.alias,
                    "target": a.target,
                    "created_at": time(a.created_at_ms),
                })
            })
            .collect();
        let rows = list
            .iter()
            .map(|a| vec![a.alias.clone(), a.target.clone()])
            .collect();
        self.emit(single, values, &["alias", "target"], rows);
    }

    pub fn catalog_status(&self, list: &[pb::ProviderCatalogStatus]) {
        let values = list
            .iter()
            .map(|s| {
                json!({
                    "provider": s.provider,
                    "adapter": s.adapter,
                    "last_success": time(s.last_success_ms),
                    "last_attempt": time(s.last_attempt_ms),
                    "models": s.models,
                    "priced_models": s.priced_models,
                    "last_error": if s.last_error.is_empty() { Value::Null } else { json!(s.last_error) },
                    "consecutive_failures": s.consecutive_failures,
                    "next_sync": time(s.next_sync_ms),
                })
            })
            .collect();
        let rows = list
            .iter()
            .map(|s| {
                vec![
                    s.provider.clone(),
                    s.adapter.clone(),
                    time_text(s.last_success_ms),
                    format!("{} ({} priced)", s.models, s.priced_models),
                    if s.last_error.is_empty() {
                        "-".to_string()
                    } else {
                        s.last_error.clone()
                    },
                ]
            })
            .collect();
        self.emit(
            false,
            values,
            &[
                "provider",
                "adapter",
                "last success",
                "models",
                "last error",
            ],
            rows,
        );
    }

    pub fn imported(&self, r: &pb::ImportPricesResponse) {
        if self.json {
            print_json(&json!({
                "imported": r.imported,
                "skipped": r.skipped,
                "format": r.format,
                "source": r.source,
            }));
        } else {
            println!(
                "imported {} prices ({} format, source {:?}); {} entries skipped",
                r.imported, r.format, r.source, r.skipped
            );
        }
    }

    pub fn fx_rates(&self, list: &[pb::FxRate], single: bool) {
        let values = list
            .iter()
            .map(|r| {
                json!({
                    "currency": r.currency,
                    "usd_per_unit": micros_f64(r.usd_per_unit_micros),
                    "updated_at": time(r.updated_at_ms),
                })
            })
            .collect();
        let rows = list
            .iter()
            .map(|r| {
                vec![
                    r.currency.clone(),
                    decimal(r.usd_per_unit_micros, 6),
                    time_text(r.updated_at_ms),
                ]
            })
            .collect();
        self.emit(
            single,
            values,
            &["currency", "usd per unit", "updated"],
            rows,
        );
    }

    pub fn created_key(&self, created: &pb::CreateKeyResponse) {
        let name = created
            .key
            .as_ref()
            .map(|k| k.name.as_str())
            .unwrap_or_default();
        let id = created
            .key
            .as_ref()
            .map(|k| k.id.as_str())
            .unwrap_or_default();
        if self.json {
            print_json(&json!({ "name": name, "key": created.secret, "id": id }));
        } else {
            println!("{}", created.secret);
            eprintln!("created key {name:?}; store it now: it cannot be shown again");
        }
    }

    pub fn keys(&self, list: &[pb::ClientKey], single: bool) {
        let values = list
            .iter()
            .map(|k| {
                json!({
                    "name": k.name,
                    "id": k.id,
                    "revoked": k.revoked,
                    "created_at": time(k.created_at_ms),
                    "revoked_at": time(k.revoked_at_ms),
                    "policy": k.policy.as_ref().map(policy_json),
                })
            })
            .collect();
        let rows = list
            .iter()
            .map(|k| {
                vec![
                    k.name.clone(),
                    k.id.clone(),
                    if k.revoked { "revoked" } else { "active" }.to_string(),
                    time_text(k.created_at_ms),
                    k.policy.as_ref().map(policy_text).unwrap_or_default(),
                ]
            })
            .collect();
        self.emit(
            single,
            values,
            &["name", "id", "state", "created", "limits"],
            rows,
        );
    }

    pub fn usage(&self, rows: &[pb::UsageRow]) {
        let values = rows
            .iter()
            .map(|r| {
                json!({
                    "key": r.key,
                    "model": r.model,
                    "provider": r.provider,
                    "credential": r.credential,
                    "credential_label": r.credential_label,
                    "requests": r.requests,
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "cost_usd": r.cost_nano_usd as f64 / 1e9,
                    "computed_cost_usd": r.computed_cost_nano_usd as f64 / 1e9,
                    "reported_cost_usd": r.reported_cost_nano_usd as f64 / 1e9,
                    "reported_requests": r.reported_requests,
                    "billed": billed(r),
                    "group": r.group,
                })
            })
            .collect();
        let table = rows
            .iter()
            .map(|r| {
                vec![
                    r.key.clone(),
                    r.model.clone(),
                    r.provider.clone(),
                    if r.credential_label.is_empty() {
                        r.credential.clone()
                    } else {
                        r.credential_label.clone()
                    },
                    r.requests.to_string(),
                    r.input_tokens.to_string(),
                    r.output_tokens.to_string(),
                    format!("${}", decimal(r.cost_nano_usd, 9)),
                    billed(r).to_string(),
                ]
            })
            .collect();
        self.emit(
            false,
            values,
            &[
                "key",
                "model",
                "provider",
                "credential",
                "requests",
                "input",
                "output",
                "cost",
                "billed",
            ],
            table,
        );
    }

    /// `requests`: the request log, newest first. Keys by name only; credentials by id (an id,
    /// never a secret).
    pub fn requests(&self, list: &[pb::LoggedRequest]) {
        let empty = pb::UsageRecord::default();
        let text_or_null = |s: &str| {
            if s.is_empty() { Value::Null } else { json!(s) }
        };
        let values = list
            .iter()
            .map(|e| {
                let r = e.record.as_ref().unwrap_or(&empty);
                json!({
                    "request_id": r.request_id,
                    "time": time(r.started_at_ms),
                    "key": e.key,
                    "dialect": r.dialect,
                    "model": r.model,
                    "chain": text_or_null(&r.chain),
                    "provider": r.provider,
                    "credential": r.credential_id,
                    "status": r.status,
                    "error": text_or_null(&r.error),
                    "billed": !r.unbilled,
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "cache_read_tokens": r.cache_read_tokens,
                    "cache_write_tokens": r.cache_write_tokens,
                    "estimated": r.estimated,
                    "cost_usd": logged_cost(r) as f64 / 1e9,
                    "computed_cost_usd": r.cost_nano_usd as f64 / 1e9,
                    "reported_cost_usd": r.reported_cost_nano_usd.map(|c| c as f64 / 1e9),
                    "latency_ms": r.latency_ms,
                    "ttft_ms": if r.stream && !r.unbilled { json!(r.ttfb_ms) } else { Value::Null },
                    "stream": r.stream,
                    "attempts": r.attempts.iter().map(|a| json!({
                        "provider": a.provider,
                        "credential": a.credential_id,
                        "outcome": a.outcome,
                    })).collect::<Vec<_>>(),
                    "node_id": e.node_id,
                })
            })
            .collect();
        let table = list
            .iter()
            .map(|e| {
                let r = e.record.as_ref().unwrap_or(&empty);
                let dash = |s: &str| {
                    if s.is_empty() {
                        "-".to_string()
                    } else {
                        s.to_string()
                    }
                };
                vec![
                    time_text(r.started_at_ms),
                    r.request_id.clone(),
                    dash(&e.key),
                    dash(&r.model),
                    dash(&r.provider),
                    r.status.to_string(),
                    dash(&r.error),
                    format!("{}/{}", r.input_tokens, r.output_tokens),
                    format!("${}", decimal(logged_cost(r), 9)),
                    format!("{} ms", r.latency_ms),
                    r.attempts.len().to_string(),
                ]
            })
            .collect();
        self.emit(
            false,
            values,
            &[
                "time", "request", "key", "model", "provider", "status", "error", "tokens", "cost",
                "latency", "attempts",
            ],
            table,
        );
    }

    /// `backup FILE`: `{"file", "bytes"}` with `--json`.
    pub fn backup(&self, file: &std::path::Path, bytes: usize) {
        if self.json {
            print_json(&json!({ "file": file.display().to_string(), "bytes": bytes }));
        } else {
            println!("backup written to {} ({bytes} bytes)", file.display());
        }
    }

    /// `usage --by X`: one row per group.
    pub fn usage_by(&self, by: &str, rows: &[pb::UsageRow]) {
        if self.json {
            return self.usage(rows);
        }
        let table = rows
            .iter()
            .map(|r| {
                vec![
                    r.group.clone(),
                    r.requests.to_string(),
                    r.input_tokens.to_string(),
                    r.output_tokens.to_string(),
                    format!("${}", decimal(r.cost_nano_usd, 9)),
                ]
            })
            .collect();
        print_table(&[by, "requests", "input", "output", "cost"], table);
    }

    pub fn chains(&self, list: &[pb::Chain], single: bool) {
        let values = list
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "models": c.models,
                    "updated_at": time(c.updated_at_ms),
                })
            })
            .collect();
        let rows = list
            .iter()
            .map(|c| vec![c.name.clone(), c.models.join(", ")])
            .collect();
        self.emit(single, values, &["name", "models"], rows);
    }

    pub fn nodes(&self, nodes: &[pb::Node]) {
        let values = nodes
            .iter()
            .map(|n| {
                json!({
                    "node_id": n.node_id,
                    "route_version": n.route_version,
                    "connected": n.connected,
                    "last_seen": time(n.last_seen_ms),
                    "connected_since": time(n.connected_since_ms),
                    "serve_url": n.serve_url,
                    "backlog_records": n.backlog_records,
                    "backlog_oldest": time(n.backlog_oldest_ms),
                    "backlog_reported": time(n.backlog_reported_ms),
                })
            })
            .collect();
        let rows = nodes
            .iter()
            .map(|n| {
                vec![
                    n.node_id.clone(),
                    n.route_version.to_string(),
                    if n.connected { "yes" } else { "no" }.to_string(),
                    time_text(n.last_seen_ms),
                    backlog_text(n),
                ]
            })
            .collect();
        self.emit(
            false,
            values,
            &[
                "node",
                "route version",
                "connected",
                "last seen",
                "usage backlog",
            ],
            rows,
        );
    }
}

/// A node's usage backlog as of its last usage report: "-" before any report.
fn backlog_text(n: &pb::Node) -> String {
    match (n.backlog_reported_ms, n.backlog_records) {
        (0, _) => "-".to_string(),
        (_, 0) => "0".to_string(),
        (_, records) => format!("{records} since {}", time_text(n.backlog_oldest_ms)),
    }
}

fn policy_json(p: &pb::KeyPolicy) -> Value {
    let opt = |v: u64| if v == 0 { Value::Null } else { json!(v) };
    json!({
        "budget_usd": if p.budget_nano_usd == 0 { Value::Null } else { json!(p.budget_nano_usd as f64 / 1e9) },
        "budget_tokens": opt(p.budget_tokens),
        "period": p.period,
        "rpm": opt(u64::from(p.rpm)),
        "tpm": opt(p.tpm),
        "concurrency": opt(u64::from(p.concurrency)),
        "models": p.models,
        "expires_at": time(p.expires_at_ms),
        "capture_bodies": p.capture_bodies,
    })
}

fn policy_text(p: &pb::KeyPolicy) -> String {
    let mut parts = Vec::new();
    if p.budget_nano_usd > 0 {
        parts.push(format!("${} {}", decimal(p.budget_nano_usd, 9), p.period));
    }
    if p.budget_tokens > 0 {
        parts.push(format!("{} tok {}", p.budget_tokens, p.period));
    }
    if p.rpm > 0 {
        parts.push(format!("{} rpm", p.rpm));
    }
    if p.tpm > 0 {
        parts.push(format!("{} tpm", p.tpm));
    }
    if p.concurrency > 0 {
        parts.push(format!("{} concurrent", p.concurrency));
    }
    if !p.models.is_empty() {
        parts.push(format!("models {}", p.models.join(",")));
    }
    if p.expires_at_ms > 0 {
        parts.push(format!("expires {}", time_text(p.expires_at_ms)));
    }
    if p.capture_bodies {
        parts.push("captures bodies".to_string());
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal(150_000, 6), "0.15");
        assert_eq!(decimal(3_000_000, 6), "3");
        assert_eq!(decimal(123, 9), "0.000000123");
        assert_eq!(decimal(0, 9), "0");
    }
}
