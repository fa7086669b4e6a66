//! Ordered upgrades of `keyplane-control`'s sled store layout.
//!
//! The store records its layout version under `meta/schema_version` (a big-endian `u32`). On
//! start, [`migrate`] applies every step above that version, in order, and stamps the new version
//! after each step, flushing to disk, so a crash between steps resumes at the right one. A store
//! stamped with a version newer than this binary knows is refused: an old binary must never write
//! into a layout it does not understand.
//!
//! # Layout version 1
//!
//! Every record is a JSON object (unknown fields are ignored on read, missing ones take their
//! defaults, so adding an optional field needs no migration; renaming, removing or re-keying does).
//!
//! | tree               | key                                          | value                      |
//! |--------------------|----------------------------------------------|----------------------------|
//! | `meta`             | `schema_version`                             | `u32` BE                   |
//! | `meta`             | `route_version`                              | `u64` BE                   |
//! | `meta`             | `key_check`                                  | sealed known plaintext     |
//! | `providers`        | provider name                                | provider record            |
//! | `credentials`      | credential id                                | credential record (sealed secret) |
//! | `offerings`        | model `\0` provider                          | offering record            |
//! | `client_keys`      | client key id                                | key record (SHA-256 only)  |
//! | `client_key_names` | client key name                              | client key id              |
//! | `usage`            | request id                                   | usage record               |
//! | `usage_totals`     | key id `\0` model `\0` provider `\0` credential id | 6 x `u64` BE: requests, input, output, cost nano-USD, cache read, cache write |
//! | `nodes`            | node id                                      | node record                |
//!
//! Added without a layout change (new trees, and fields that older records read with defaults):
//!
//! | tree               | key                                          | value                      |
//! |--------------------|----------------------------------------------|----------------------------|
//! | `catalogs`         | provider name                                | last good synced catalog + sync status |
//! | `prices`           | provider `\0` model id                       | imported price record      |
//! | `fx_rates`         | currency code                                | exchange rate record       |
//! | `aliases`          | alias                                        | alias record               |
//! | `request_log`      | start time (Unix ms, `u64` BE) ‖ request id   | `LoggedRequest` protobuf   |
//! | `request_log_index` | kind (`k` key id, `m` model, `s` status) ‖ value length (`u16` BE) ‖ value ‖ start of a second (`u64` BE ms); written before: the whole `request_log` key | empty |
//! | `rollups`          | resolution (`m`/`h`/`d`) ‖ scope (`a`, or `k` ‖ key id length `u16` BE ‖ key id) ‖ row (`s` sums, `b` breakdown) ‖ bucket (`u32` BE) | binary sums; `keyplane-control`'s `rollup.rs` |
//! | `meta`             | `probe_key`                                  | the route probe's key id and its key sealed under the master key (associated data `meta/probe_key/<key id>`) |
//! | `request_bodies`   | the entry's `request_log` key                 | `CapturedBodies` protobuf  |
//!
//! `rollups` is derived: `keyplane-control` builds it from `usage`, `usage_ms` and `request_log`
//! on the first start without `meta/rollups_built`, and keeps it up to date from then on.
//!
//! `usage_totals` values may be 9 x `u64` BE: the six above, then requests billed at a reported
//! cost, their reported cost and their computed cost (nano-USD). A six-column row reads with
//! zeros there, which is its exact meaning; readers take the first six of a longer row.
//!
//! # Layout version 2
//!
//! `usage` values may be binary: `0x01` followed by the protobuf encoding of the record without
//! its request id (the key); field tags in `keyplane-control`'s `ledger/codec.rs`, frozen. New
//! records are written so (about a third of the JSON's size, and sled's cost per insert grows
//! with the bytes it moves); version 1 JSON records (starting with `{`) are left as they are and
//! still read, so the step itself rewrites nothing. The version is stamped so that a version 1
//! binary, which cannot read binary records, refuses the store instead of failing on them.
//!
//! # Layout version 3
//!
//! A usage record whose request id is a UUIDv7 in canonical form (lowercase, hyphenated: every
//! id a data plane makes) is stored in `usage_ms` instead of `usage`, many to an entry:
//!
//! | tree       | key                                   | value                                 |
//! |------------|---------------------------------------|---------------------------------------|
//! | `usage_ms` | the id's first 6 bytes (its Unix millisecond, BE) | `0x01`, then per record ascending by the id's other 10 bytes, without repeats: those 10 bytes, the record's length as a protobuf varint, the record as `usage` stores it (version 1 or 2 form) |
//!
//! One sled insert per record was most of the control plane's work under load; the records of
//! a millisecond now share one. Other ids stay under their id in `usage`, as do the UUIDv7
//! records written before this version: the step rewrites nothing, and `keyplane-control`
//! looks a re-sent id up in `usage` as well when its millisecond is not after the latest
//! UUIDv7 id there. Format details in `keyplane-control`'s `ledger/bucket.rs`.
//!
//! A sealed value is base64 of `nonce (12 bytes) || AES-256-GCM ciphertext`, with the record's id
//! as associated data.

use thiserror::Error;

/// The layout version this build writes.
pub const CURRENT: u32 = 3;

/// Tree holding the schema version.
pub const META_TREE: &str = "meta";
/// Key of the schema version in [`META_TREE`].
pub const SCHEMA_VERSION_KEY: &[u8] = b"schema_version";

/// Trees of layout version 1, as written by that version. Frozen: a later layout lists its own.
pub const V1_TREES: &[&str] = &[
    "meta",
    "providers",
    "credentials",
    "offerings",
    "client_keys",
    "client_key_names",
    "usage",
    "usage_totals",
    "nodes",
];

/// One upgrade step, from `to - 1` to `to`.
#[derive(Clone, Copy)]
pub struct Migration {
    /// The version the store has after this step.
    pub to: u32,
    /// What the step does, for the log.
    pub name: &'static str,
    /// The step itself. It must be safe to run again after a crash midway: the version is only
    /// stamped once it returns.
    pub apply: fn(&sled::Db) -> Result<(), sled::Error>,
}

/// Every step, in order.
pub const STEPS: &[Migration] = &[
    Migration {
        to: 1,
        name: "create the version 1 trees",
        apply: create_v1_trees,
    },
    Migration {
        to: 2,
        name: "usage records may be binary (version 1 records stay as they are)",
        apply: allow_binary_usage,
    },
    Migration {
        to: 3,
        name: "usage records with UUIDv7 ids are grouped by millisecond (older records stay)",
        apply: create_usage_ms,
    },
];

/// Why a store could not be brought to the current layout.
#[derive(Debug, Error)]
pub enum MigrationError {
    /// The store was written by a newer keyplane-control.
    #[error(
        "the data dir has store layout version {found}, newer than this binary's {supported}: \
         run a keyplane-control at least as new as the one that wrote it"
    )]
    TooNew {
        /// Version stamped in the store.
        found: u32,
        /// Highest version these steps reach.
        supported: u32,
    },
    /// Data without a version stamp: not a Keyplane store, or one damaged.
    #[error("the data dir holds data but no schema version: not a keyplane-control store")]
    Unversioned,
    /// The version stamp is not 4 bytes.
    #[error("the data dir's schema version is malformed")]
    MalformedVersion,
    /// The steps are not consecutive (a programming error caught by the tests).
    #[error("migration steps are not consecutive at version {0}")]
    Gap(u32),
    /// sled failed.
    #[error("store error during migration: {0}")]
    Store(#[from] sled::Error),
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Version before.
    pub from: u32,
    /// Version after.
    pub to: u32,
}

/// Reads the store's layout version; 0 for a store that has never been stamped and holds nothing.
pub fn schema_version(db: &sled::Db) -> Result<u32, MigrationError> {
    let meta = db.open_tree(META_TREE)?;
    match meta.get(SCHEMA_VERSION_KEY)? {
        Some(raw) => {
            let bytes: [u8; 4] = raw
                .as_ref()
                .try_into()
                .map_err(|_| MigrationError::MalformedVersion)?;
            Ok(u32::from_be_bytes(bytes))
        }
        None => {
            let holds_data = db
                .tree_names()
                .iter()
                .map(|name| db.open_tree(name))
                .collect::<Result<Vec<_>, _>>()?
                .iter()
                .any(|tree| !tree.is_empty());
            if holds_data || !db.is_empty() {
                Err(MigrationError::Unversioned)
            } else {
                Ok(0)
            }
        }
    }
}

/// Brings the store to [`CURRENT`] with [`STEPS`].
pub fn migrate(db: &sled::Db) -> Result<Outcome, MigrationError> {
    run(db, STEPS)
}

/// Brings the store to the last version of `steps`. Exposed so that tests can drive made-up steps.
pub fn run(db: &sled::Db, steps: &[Migration]) -> Result<Outcome, MigrationError> {
    for (i, step) in steps.iter().enumerate() {
        if step.to != i as u32 + 1 {
            return Err(MigrationError::Gap(step.to));
        }
    }
    let supported = steps.last().map_or(0, |s| s.to);
    let from = schema_version(db)?;
    if from > supported {
        return Err(MigrationError::TooNew {
            found: from,
            supported,
        });
    }
    let meta = db.open_tree(META_TREE)?;
    for step in steps.iter().filter(|s| s.to > from) {
        tracing::info!(to = step.to, step = step.name, "migrating store layout");
        (step.apply)(db)?;
        meta.insert(SCHEMA_VERSION_KEY, &step.to.to_be_bytes())?;
        db.flush()?;
    }
    Ok(Outcome {
        from,
        to: supported,
    })
}

fn create_v1_trees(db: &sled::Db) -> Result<(), sled::Error> {
    for name in V1_TREES {
        db.open_tree(name)?;
    }
    Ok(())
}

/// Nothing to rewrite: readers take both forms (see "Layout version 2").
fn allow_binary_usage(db: &sled::Db) -> Result<(), sled::Error> {
    db.open_tree("usage")?;
    Ok(())
}

/// Nothing to rewrite: records stored under their id stay readable (see "Layout version 3").
fn create_usage_ms(db: &sled::Db) -> Result<(), sled::Error> {
    db.open_tree("usage_ms")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("store")).unwrap();
        (dir, db)
    }

    #[test]
    fn fresh_store_is_stamped_current() {
        let (_dir, db) = open();
        assert_eq!(
            migrate(&db).unwrap(),
            Outcome {
                from: 0,
                to: CURRENT
            }
        );
        assert_eq!(schema_version(&db).unwrap(), CURRENT);
        // Running again is a no-op.
        assert_eq!(
            migrate(&db).unwrap(),
            Outcome {
                from: CURRENT,
                to: CURRENT
            }
        );
    }

    fn add_marker(db: &sled::Db) -> Result<(), sled::Error> {
        db.open_tree("providers")?.insert("marker", "v2")?;
        Ok(())
    }

    fn fail(_: &sled::Db) -> Result<(), sled::Error> {
        Err(sled::Error::Unsupported("boom".into()))
    }

    /// The real steps followed by `extra` as the next version.
    fn with_next(extra: fn(&sled::Db) -> Result<(), sled::Error>) -> Vec<Migration> {
        let mut steps = STEPS.to_vec();
        steps.push(Migration {
            to: CURRENT + 1,
            name: "next",
            apply: extra,
        });
        steps
    }

    #[test]
    fn later_steps_run_in_order_once() {
        let (_dir, db) = open();
        migrate(&db).unwrap();
        let steps = with_next(add_marker);
        assert_eq!(
            run(&db, &steps).unwrap(),
            Outcome {
                from: CURRENT,
                to: CURRENT + 1
            }
        );
        assert_eq!(
            db.open_tree("providers")
                .unwrap()
                .get("marker")
                .unwrap()
                .unwrap(),
            "v2".as_bytes()
        );
        // The current binary now refuses the newer store.
        let err = migrate(&db).unwrap_err();
        assert!(
            matches!(err, MigrationError::TooNew { found, supported } if found == CURRENT + 1 && supported == CURRENT),
            "{err}"
        );
    }

    #[test]
    fn failed_step_leaves_version_unchanged() {
        let (_dir, db) = open();
        migrate(&db).unwrap();
        assert!(run(&db, &with_next(fail)).is_err());
        assert_eq!(schema_version(&db).unwrap(), CURRENT);
    }

    #[test]
    fn a_version_1_store_upgrades_to_2_without_touching_usage() {
        let (_dir, db) = open();
        run(&db, &STEPS[..1]).unwrap();
        let usage = db.open_tree("usage").unwrap();
        usage.insert("r1", r#"{"request_id":"r1"}"#).unwrap();
        assert_eq!(run(&db, &STEPS[..2]).unwrap(), Outcome { from: 1, to: 2 });
        assert_eq!(schema_version(&db).unwrap(), 2);
        assert_eq!(
            usage.get("r1").unwrap().unwrap(),
            r#"{"request_id":"r1"}"#.as_bytes()
        );
    }

    #[test]
    fn a_version_2_store_upgrades_to_3_without_touching_usage() {
        let (_dir, db) = open();
        run(&db, &STEPS[..2]).unwrap();
        let usage = db.open_tree("usage").unwrap();
        let id = "019ab5a1-2c3d-7e4f-8a9b-0c1d2e3f4a5b";
        usage.insert(id, &[0x01, 0x0a, 0x01, b'n'][..]).unwrap();
        assert_eq!(migrate(&db).unwrap(), Outcome { from: 2, to: 3 });
        assert_eq!(schema_version(&db).unwrap(), 3);
        assert_eq!(usage.len(), 1);
        assert!(usage.contains_key(id).unwrap());
        assert!(db.open_tree("usage_ms").unwrap().is_empty());
    }

    #[test]
    fn gaps_and_unversioned_data_are_refused() {
        let (_dir, db) = open();
        let gap = [Migration {
            to: 2,
            name: "gap",
            apply: add_marker,
        }];
        assert!(matches!(run(&db, &gap), Err(MigrationError::Gap(2))));
        db.open_tree("providers").unwrap().insert("x", "y").unwrap();
        assert!(matches!(migrate(&db), Err(MigrationError::Unversioned)));
    }
}
