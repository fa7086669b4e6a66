//! Where an offering's price comes from, and the merge of every source into the offerings the
//! route table and `model list` show.
//!
//! Sources, weakest first: a price file (`prices import`), the provider's synced catalog, a
//! manual `model set` (which always wins for its (model, provider)). A price in another currency
//! than USD is kept in its currency and converted with the operator's rate (`fx set`); without a
//! rate it is unknown. An offering with no known price is listed and routed after every priced
//! one, never as free. Aliases (`model alias`) give a target's offerings a second name.

use crate::catalog_sync::{Price, Tier, presets};
use crate::error::{Error, Result, invalid};
use crate::money;
use crate::price_import;
use crate::store::{self, ALIASES, FX_RATES, PRICES, Store, composite, now_ms};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// An imported price for one (provider, model id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceRec {
    pub provider: String,
    pub model: String,
    pub price: Price,
    pub source: String,
    /// The date the file says its prices are from (`YYYY-MM-DD`).
    pub as_of: String,
    pub imported_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FxRec {
    pub currency: String,
    /// Millionths of a USD per unit of `currency`.
    pub usd_per_unit_micros: u64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRec {
    pub alias: String,
    pub target: String,
    pub created_at_ms: i64,
}

/// One offering as routing sees it, whatever its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub model: String,
    pub provider: String,
    pub upstream_model: String,
    /// The price in its own currency, if any is known.
    pub native: Option<Price>,
    /// The price in USD; `None`: unknown (no price, or no rate for its currency).
    pub usd: Option<Price>,
    /// `manual`, `sync:<adapter>` or `import:<source>`.
    pub source: String,
    /// When the catalog that gave the price was synced; 0 for other sources.
    pub synced_at_ms: i64,
    pub updated_at_ms: i64,
}

pub struct ImportOutcome {
    pub parsed: price_import::Parsed,
    pub imported: u64,
}

fn convert(price: &Price, rates: &HashMap<String, u64>) -> Option<Price> {
    if price.currency == "USD" {
        return Some(price.clone());
    }
    let rate = *rates.get(&price.currency)?;
    let c = |v: u64| money::convert_ppm(v, rate);
    Some(Price {
        currency: "USD".into(),
        input: c(price.input),
        output: c(price.output),
        cache_read: price.cache_read.map(c),
        cache_write: price.cache_write.map(c),
        tiers: price
            .tiers
            .iter()
            .map(|t| Tier {
                min_prompt_tokens: t.min_prompt_tokens,
                input: c(t.input),
                output: c(t.output),
                cache_read: t.cache_read.map(c),
                cache_write: t.cache_write.map(c),
            })
            .collect(),
    })
}

impl Store {
    pub fn set_fx_rate(&self, currency: &str, usd_per_unit: &str) -> Result<FxRec> {
        let code = currency.trim().to_ascii_uppercase();
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) || code == "USD" {
            return Err(invalid(format!(
                "currency {currency:?} is invalid: give a 3-letter code other than USD, e.g. CNY"
            )));
        }
        let micros = money::parse_micros(usd_per_unit).map_err(|e| {
            invalid(format!(
                "rate {usd_per_unit:?} {e}: give USD per unit, e.g. 0.14"
            ))
        })?;
        if micros == 0 {
            return Err(invalid("the rate must be greater than 0"));
        }
        let rec = FxRec {
            currency: code,
            usd_per_unit_micros: micros,
            updated_at_ms: now_ms(),
        };
        self.fx_rates
            .insert(rec.currency.as_bytes(), store::encode(&rec))?;
        Ok(rec)
    }

    pub fn fx_rates(&self) -> Result<Vec<FxRec>> {
        store::scan(&self.fx_rates, FX_RATES, b"")
    }

    pub fn set_alias(&self, alias: &str, target: &str) -> Result<AliasRec> {
        for (what, name) in [("alias", alias), ("target", target)] {
            if name.is_empty()
                || name.len() > 256
                || name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(format!(
                    "{what} {name:?} is invalid: use 1 to 256 characters without spaces"
                )));
            }
        }
        if alias == target {
            return Err(invalid("an alias cannot point at itself"));
        }
        let _guard = self.admin_guard();
        if store::get::<AliasRec>(&self.aliases, ALIASES, target)?.is_some() {
            return Err(invalid(format!(
                "{target:?} is itself an alias: point {alias:?} at a model name"
            )));
        }
        if self.aliases()?.iter().any(|a| a.target == alias) {
            return Err(invalid(format!(
                "{alias:?} is the target of another alias; aliases do not chain"
            )));
        }
        let rec = AliasRec {
            alias: alias.to_string(),
            target: target.to_string(),
            created_at_ms: now_ms(),
        };
        self.aliases.insert(alias.as_bytes(), store::encode(&rec))?;
        Ok(rec)
    }

    pub fn aliases(&self) -> Result<Vec<AliasRec>> {
        store::scan(&self.aliases, ALIASES, b"")
    }

    /// Imports a price file: all of it, or (on any error) nothing.
    pub fn import_prices(
        &self,
        content: &str,
        file_name: &str,
        provider: &str,
    ) -> Result<ImportOutcome> {
        let provider = provider.trim();
        if !provider.is_empty() {
            self.provider(provider)?
                .ok_or_else(|| Error::NotFound(format!("provider {provider:?} does not exist")))?;
        }
        let now = now_ms();
        let parsed = price_import::parse(content, file_name, provider, &price_import::date_of(now))
            .map_err(Error::InvalidArgument)?;
        let source = format!("import:{}", parsed.source);
        let mut batch = sled::Batch::default();
        for e in &parsed.entries {
            let rec = PriceRec {
                provider: e.provider.clone(),
                model: e.model.clone(),
                price: e.price.clone(),
                source: source.clone(),
                as_of: parsed.as_of.clone(),
                imported_at_ms: now,
            };
            batch.insert(composite(&[&e.provider, &e.model]), store::encode(&rec));
        }
        self.prices.apply_batch(batch)?;
        let imported = parsed.entries.len() as u64;
        Ok(ImportOutcome { parsed, imported })
    }

    pub fn imported_prices(&self) -> Result<Vec<PriceRec>> {
        store::scan(&self.prices, PRICES, b"")
    }

    /// Every offering from every source, merged, ordered by model then provider; or those of one
    /// model (aliases are not expanded here: see [`Store::aliases`]).
    pub fn effective_offerings(&self, only: Option<&str>) -> Result<Vec<Effective>> {
        let providers: HashMap<String, crate::catalog::ProviderRec> = self
            .providers()?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        let rates: HashMap<String, u64> = self
            .fx_rates()?
            .into_iter()
            .map(|r| (r.currency, r.usd_per_unit_micros))
            .collect();
        let imported: HashMap<(String, String), PriceRec> = self
            .imported_prices()?
            .into_iter()
            .map(|r| ((r.provider.clone(), r.model.clone()), r))
            .collect();
        let lookup = |provider: &crate::catalog::ProviderRec, ids: &[&str]| -> Option<&PriceRec> {
            let owners = [Some(provider.name.as_str()), provider.preset.as_deref()];
            owners.into_iter().flatten().find_map(|owner| {
                ids.iter()
                    .find_map(|id| imported.get(&(owner.to_string(), (*id).to_string())))
            })
        };
        let mut out: BTreeMap<(String, String), Effective> = BTreeMap::new();
        // Two ids of one provider can map to one canonical name (a "-Turbo" variant, say): the
        // priced one wins over an unknown price, then the cheaper one.
        let mut add = |e: Effective| {
            let key = (e.model.clone(), e.provider.clone());
            let better = |old: &Effective| match (&old.usd, &e.usd) {
                (None, Some(_)) => true,
                (Some(o), Some(n)) => {
                    n.input.saturating_add(n.output) < o.input.saturating_add(o.output)
                }
                _ => false,
            };
            if out.get(&key).is_none_or(better) {
                out.insert(key, e);
            }
        };

        // Synced catalogs, priced by the catalog or else by an imported price.
        let mut synced_providers = std::collections::HashSet::new();
        for cat in self.catalogs()? {
            let Some(p) = providers.get(&cat.provider) else {
                continue;
            };
            if p.catalog.is_none() {
                continue;
            }
            synced_providers.insert(p.name.clone());
            for m in &cat.models {
                let (native, source, synced_at_ms, updated_at_ms) = match &m.price {
                    Some(price) => (
                        Some(price.clone()),
                        format!("sync:{}", cat.adapter),
                        cat.last_success_ms,
                        cat.last_success_ms,
                    ),
                    None => match lookup(p, &[&m.id, &m.canonical]) {
                        Some(rec) => (
                            Some(rec.price.clone()),
                            rec.source.clone(),
                            0,
                            rec.imported_at_ms,
                        ),
                        None => (
                            None,
                            format!("sync:{}", cat.adapter),
                            cat.last_success_ms,
                            cat.last_success_ms,
                        ),
                    },
                };
                add(Effective {
                    model: m.canonical.clone(),
                    provider: p.name.clone(),
                    upstream_model: m.id.clone(),
                    usd: native.as_ref().and_then(|n| convert(n, &rates)),
                    native,
                    source,
                    synced_at_ms,
                    updated_at_ms,
                });
            }
        }

        // Imported prices of providers without a synced catalog create their offerings.
        let mut imported_sorted: Vec<&PriceRec> = imported.values().collect();
        imported_sorted.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
        for rec in imported_sorted {
            let Some(p) = providers.get(&rec.provider) else {
                continue;
            };
            if p.catalog.is_some() || synced_providers.contains(&p.name) {
                continue;
            }
            let table = p.preset.as_deref().unwrap_or(p.name.as_str());
            add(Effective {
                model: presets::canonical(table, &rec.model),
                provider: p.name.clone(),
                upstream_model: rec.model.clone(),
                usd: convert(&rec.price, &rates),
                native: Some(rec.price.clone()),
                source: rec.source.clone(),
                synced_at_ms: 0,
                updated_at_ms: rec.imported_at_ms,
            });
        }

        // Manual prices win. They come sorted by (model, provider) like `out` (the store's key
        // is `model \0 provider`, and `\0` sorts first), so a merge joins them without a map
        // insert per manual offering.
        let manual = self.offerings(only)?.into_iter().map(|o| {
            let price = Price {
                currency: "USD".into(),
                input: o.input_micro_usd_per_mtok,
                output: o.output_micro_usd_per_mtok,
                cache_read: o.cache_read_micro_usd_per_mtok,
                cache_write: o.cache_write_micro_usd_per_mtok,
                tiers: Vec::new(),
            };
            Effective {
                model: o.model,
                provider: o.provider,
                upstream_model: o.upstream_model,
                usd: Some(price.clone()),
                native: Some(price),
                source: o.source,
                synced_at_ms: 0,
                updated_at_ms: o.updated_at_ms,
            }
        });
        let mut merged = Vec::with_capacity(out.len());
        let mut auto = out
            .into_iter()
            .filter(|((model, _), _)| only.is_none_or(|m| model == m))
            .peekable();
        for m in manual {
            let key = (m.model.as_str(), m.provider.as_str());
            while let Some(((am, ap), _)) = auto.peek() {
                match (am.as_str(), ap.as_str()).cmp(&key) {
                    std::cmp::Ordering::Less => merged.extend(auto.next().map(|(_, e)| e)),
                    std::cmp::Ordering::Equal => {
                        auto.next();
                        break;
                    }
                    std::cmp::Ordering::Greater => break,
                }
            }
            merged.push(m);
        }
        merged.extend(auto.map(|(_, e)| e));
        Ok(merged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SetModel;
    use crate::catalog_sync::{CatalogRec, SyncedModel};
    use crate::store::testing::open_temp;

    #[test]
    fn sources_merge_manual_wins_and_currencies_convert() {
        let (_d, store) = open_temp();
        store
            .add_provider("or", "openai", "http://127.0.0.1:1/v1")
            .unwrap();
        store
            .add_provider_with(&crate::catalog::AddProvider {
                name: "ds",
                preset: "deepseek",
                base_url: "http://127.0.0.1:2/v1",
                ..Default::default()
            })
            .unwrap();
        let mut or = store.provider("or").unwrap().unwrap();
        or.catalog = Some("openrouter".into());
        store.providers.insert("or", store::encode(&or)).unwrap();
        store
            .put_catalog(&CatalogRec {
                provider: "or".into(),
                adapter: "openrouter".into(),
                models: vec![SyncedModel {
                    id: "deepseek/deepseek-chat".into(),
                    canonical: "deepseek/deepseek-chat".into(),
                    price: Some(Price::usd(300_000, 880_000)),
                }],
                last_success_ms: 5,
                ..Default::default()
            })
            .unwrap();
        store
            .put_catalog(&CatalogRec {
                provider: "ds".into(),
                adapter: "list".into(),
                models: vec![SyncedModel {
                    id: "deepseek-chat".into(),
                    canonical: "deepseek/deepseek-chat".into(),
                    price: None,
                }],
                last_success_ms: 6,
                ..Default::default()
            })
            .unwrap();
        let all = store
            .effective_offerings(Some("deepseek/deepseek-chat"))
            .unwrap();
        assert_eq!(all.len(), 2);
        let ds = all.iter().find(|e| e.provider == "ds").unwrap();
        assert!(ds.usd.is_none(), "listed without a price");

        let file = r#"{"currency":"CNY","prices":[{"provider":"deepseek","model":"deepseek-chat","input":"2","output":"3"}]}"#;
        let out = store.import_prices(file, "ds.json", "").unwrap();
        assert_eq!(out.imported, 1);
        let ds = store
            .effective_offerings(Some("deepseek/deepseek-chat"))
            .unwrap()
            .into_iter()
            .find(|e| e.provider == "ds")
            .unwrap();
        assert_eq!(ds.native.as_ref().unwrap().currency, "CNY");
        assert!(ds.usd.is_none(), "no CNY rate yet");
        assert_eq!(ds.source, "import:ds.json");
        store.set_fx_rate("cny", "0.14").unwrap();
        let ds = store
            .effective_offerings(Some("deepseek/deepseek-chat"))
            .unwrap()
            .into_iter()
            .find(|e| e.provider == "ds")
            .unwrap();
        // ¥2 and ¥3 per million at 0.14 = $0.28 and $0.42.
        let usd = ds.usd.unwrap();
        assert_eq!((usd.input, usd.output), (280_000, 420_000));

        store
            .set_model(&SetModel {
                model: "deepseek/deepseek-chat",
                provider: "or",
                upstream_model: "deepseek/deepseek-chat",
                input_usd_per_mtok: "0.1",
                output_usd_per_mtok: "0.2",
                cache_read_usd_per_mtok: "",
                cache_write_usd_per_mtok: "",
            })
            .unwrap();
        let or = store
            .effective_offerings(Some("deepseek/deepseek-chat"))
            .unwrap()
            .into_iter()
            .find(|e| e.provider == "or")
            .unwrap();
        assert_eq!(or.source, "manual");
        assert_eq!(or.usd.unwrap().input, 100_000);
        assert!(store.set_fx_rate("USD", "1").is_err());
        assert!(store.set_fx_rate("CNY", "0").is_err());
    }

    #[test]
    fn manual_offerings_merge_in_order() {
        let (_d, store) = open_temp();
        store
            .add_provider("p", "openai", "http://127.0.0.1:1/v1")
            .unwrap();
        let mut p = store.provider("p").unwrap().unwrap();
        p.catalog = Some("list".into());
        store.providers.insert("p", store::encode(&p)).unwrap();
        let synced = |id: &str| SyncedModel {
            id: id.into(),
            canonical: id.into(),
            price: Some(Price::usd(5, 5)),
        };
        store
            .put_catalog(&CatalogRec {
                provider: "p".into(),
                adapter: "list".into(),
                models: vec![synced("a/x"), synced("c/z"), synced("c/z-b")],
                ..Default::default()
            })
            .unwrap();
        for model in ["b/y", "c/z", "d/w"] {
            store
                .set_model(&SetModel {
                    model,
                    provider: "p",
                    upstream_model: "",
                    input_usd_per_mtok: "1",
                    output_usd_per_mtok: "1",
                    cache_read_usd_per_mtok: "",
                    cache_write_usd_per_mtok: "",
                })
                .unwrap();
        }
        let all = store.effective_offerings(None).unwrap();
        let seen: Vec<(&str, &str)> = all
            .iter()
            .map(|e| (e.model.as_str(), e.source.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("a/x", "sync:list"),
                ("b/y", "manual"),
                ("c/z", "manual"),
                ("c/z-b", "sync:list"),
                ("d/w", "manual"),
            ]
        );
        let one = store.effective_offerings(Some("c/z")).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].source, "manual");
    }

    #[test]
    fn aliases_do_not_chain() {
        let (_d, store) = open_temp();
        store
            .set_alias("gpt-4o-mini", "openai/gpt-4o-mini")
            .unwrap();
        assert!(store.set_alias("mini", "gpt-4o-mini").is_err());
        assert!(store.set_alias("openai/gpt-4o-mini", "x").is_err());
        assert!(store.set_alias("a b", "x").is_err());
        assert_eq!(store.aliases().unwrap().len(), 1);
    }
}
