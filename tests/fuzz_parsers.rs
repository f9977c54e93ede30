//! The fuzz harnesses of `fuzz/` (issue 7), at volume, on stable, in CI: the checked-in corpus
//! and proptest mutations of it (byte flips, inserts, cuts, splices, and JSON-aware edits that
//! swap, drop or add fields) go through exactly the functions `cargo fuzz` runs, which assert
//! no panic and precise errors. Each property runs 20 000 cases or until its time budget is
//! spent, whichever comes first. Longer, coverage-guided runs: `fuzz/README.md`.

#[path = "../fuzz/harness.rs"]
mod harness;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CASES: u32 = 20_000;
/// Per property, so a slow machine shortens the run instead of failing it.
const BUDGET: Duration = Duration::from_secs(8);

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

#[test]
fn the_envelope_seeds_hold_and_cover_every_type() {
    let mut kinds = std::collections::BTreeSet::new();
    for (name, data) in corpus("envelope") {
        // Other seeds (regressions found by fuzzing) only have to pass the harness.
        match harness::envelope(&data) {
            Ok(envelope) => {
                kinds.insert(envelope.kind.as_str());
            }
            Err(e) if name.starts_with("valid-") => panic!("seed {name} does not parse: {e}"),
            Err(_) => {}
        }
    }
    let all: std::collections::BTreeSet<_> = cio_gateway::domain::MessageType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect();
    assert_eq!(kinds, all, "a seed for every message type");
}

#[test]
fn the_webhook_seeds_hold_and_the_valid_ones_are_accepted() {
    for (name, data) in corpus("webhook") {
        let outcome = harness::webhook(&data);
        if name.starts_with("valid-") {
            assert!(outcome.accepted(), "seed {name}: {outcome:?}");
        }
    }
}

/// One edit of an input.
#[derive(Debug, Clone)]
enum Edit {
    /// XOR the byte at `at` (modulo the length) with `with`.
    Flip { at: usize, with: u8 },
    /// Insert bytes at `at`.
    Insert { at: usize, bytes: Vec<u8> },
    /// Remove up to `len` bytes from `at`.
    Cut { at: usize, len: usize },
    /// Copy `len` bytes of seed `from` (at `src`) over position `at`.
    Splice {
        from: usize,
        src: usize,
        len: usize,
        at: usize,
    },
    /// In the JSON that starts at the first `{`: replace the `node`-th value.
    Replace { node: usize, with: Value },
    /// ... remove the `node`-th object member.
    Remove { node: usize },
    /// ... add `key: with` to the `node`-th object.
    Add {
        node: usize,
        key: String,
        with: Value,
    },
}

/// Byte values that matter to JSON, UTF-8 and the webhook layout.
fn interesting_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..8),
        proptest::sample::select(vec![
            b"\"".to_vec(),
            b"\\".to_vec(),
            b"{".to_vec(),
            b"}".to_vec(),
            b"[".to_vec(),
            b"]".to_vec(),
            b",".to_vec(),
            b":".to_vec(),
            b"\n".to_vec(),
            b"\\u0000".to_vec(),
            b"\\ud800".to_vec(),
            vec![0xc3],
            vec![0xff],
            b"1e999".to_vec(),
            b"-0".to_vec(),
            b"null".to_vec(),
            b"9223372036854775808".to_vec(),
        ]),
    ]
}

/// Field names both parsers know, so JSON edits reach the interesting branches.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "type",
            "userId",
            "payload",
            "timestamp",
            "correlationId",
            "name",
            "data",
            "path",
            "deviceId",
            "platform",
            "primary",
            "secondary",
            "id",
            "email",
            "cio_id",
            "template",
            "transactional_message_id",
            "to",
            "identifiers",
            "channel",
            "message_data",
            "event_id",
            "object_type",
            "metric",
            "events",
            "customer_id",
            "recipient",
            "email_address",
            "campaign_id",
        ])
        .prop_map(str::to_string),
        ".{0,12}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1_700_000_000),
            Just(253_402_300_799),
            Just(253_402_300_800),
            Just(1_764_115_200_000),
        ]
        .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        "[a-z_-]{0,70}".prop_map(Value::from),
        proptest::sample::select(vec![
            "identify",
            "track",
            "transactional",
            "page",
            "delete",
            "suppress",
            "unsuppress",
            "addDevice",
            "deleteDevice",
            "merge",
            "email",
            "push",
            "sms",
            "bounced",
            "01JDZ5X3Q8W2V6T9N4M7K1P0RA",
        ])
        .prop_map(Value::from),
        (1usize..2000).prop_map(|n| Value::from("x".repeat(n))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(field_name(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn edit(seeds: usize) -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        3 => (at, 1u8..=255).prop_map(|(at, with)| Edit::Flip { at, with }),
        2 => (at, interesting_bytes()).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        2 => (at, 1usize..64).prop_map(|(at, len)| Edit::Cut { at, len }),
        1 => (0..seeds, any::<usize>(), 1usize..128, at)
            .prop_map(|(from, src, len, at)| Edit::Splice { from, src, len, at }),
        4 => (any::<usize>(), arb_json()).prop_map(|(node, with)| Edit::Replace { node, with }),
        2 => any::<usize>().prop_map(|node| Edit::Remove { node }),
        3 => (any::<usize>(), field_name(), arb_json())
            .prop_map(|(node, key, with)| Edit::Add { node, key, with }),
    ]
}

/// Every value in `v`, as JSON pointers, parents before children.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let key = k.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Applies a JSON edit to the JSON document starting at the first `{`, if there is one.
fn edit_json(data: &mut Vec<u8>, apply: impl FnOnce(&mut Value)) {
    let Some(start) = data.iter().position(|b| *b == b'{') else {
        return;
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&data[start..]) else {
        return;
    };
    apply(&mut value);
    data.truncate(start);
    data.extend(serde_json::to_vec(&value).unwrap());
}

fn nth_pointer(value: &Value, node: usize) -> String {
    let mut all = Vec::new();
    pointers(value, String::new(), &mut all);
    all[node % all.len()].clone()
}

fn apply(seeds: &[(String, Vec<u8>)], seed: usize, edits: &[Edit]) -> Vec<u8> {
    let mut data = seeds[seed].1.clone();
    for e in edits {
        let len = data.len();
        match e {
            Edit::Flip { at, with } if len > 0 => data[at % len] ^= with,
            Edit::Flip { .. } => {}
            Edit::Insert { at, bytes } => {
                let at = at % (len + 1);
                data.splice(at..at, bytes.iter().copied());
            }
            Edit::Cut { at, len: n } if len > 0 => {
                let at = at % len;
                data.drain(at..(at + n).min(len));
            }
            Edit::Cut { .. } => {}
            Edit::Splice {
                from,
                src,
                len: n,
                at,
            } => {
                let other = &seeds[from % seeds.len()].1;
                if !other.is_empty() {
                    let src = src % other.len();
                    let piece = other[src..(src + n).min(other.len())].to_vec();
                    let at = at % (len + 1);
                    let end = (at + piece.len()).min(len);
                    data.splice(at..end, piece);
                }
            }
            Edit::Replace { node, with } => edit_json(&mut data, |v| {
                let ptr = nth_pointer(v, *node);
                if let Some(slot) = v.pointer_mut(&ptr) {
                    *slot = with.clone();
                }
            }),
            Edit::Remove { node } => edit_json(&mut data, |v| {
                let ptr = nth_pointer(v, *node);
                if let Some((parent, key)) = ptr.rsplit_once('/')
                    && let Some(Value::Object(map)) = v.pointer_mut(parent)
                {
                    map.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
            }),
            Edit::Add { node, key, with } => edit_json(&mut data, |v| {
                let ptr = nth_pointer(v, *node);
                if let Some(Value::Object(map)) = v.pointer_mut(&ptr) {
                    map.insert(key.clone(), with.clone());
                }
            }),
        }
    }
    data
}

/// A seed with a few edits, or (one case in ten) bytes from nowhere.
fn inputs(seeds: Vec<(String, Vec<u8>)>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    prop_oneof![
        9 => (0..n, proptest::collection::vec(edit(n), 1..6))
            .prop_map(move |(seed, edits)| apply(&seeds, seed, &edits)),
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Runs `check` over CASES inputs (or until BUDGET is spent); a panic fails with the input,
/// shrunk. `check` says whether the input was accepted. Returns how many cases ran.
fn run(target: &str, check: impl Fn(&[u8]) -> bool) -> u32 {
    let config = Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_time: 60_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let deadline = Instant::now() + BUDGET;
    let ran = std::cell::Cell::new(0u32);
    let accepted = std::cell::Cell::new(0u32);
    let result = runner.run(&inputs(corpus(target)), |data| {
        if Instant::now() < deadline {
            ran.set(ran.get() + 1);
            if check(&data) {
                accepted.set(accepted.get() + 1);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{target}: {e}");
    }
    eprintln!(
        "{target}: {} mutated inputs, {} of them accepted",
        ran.get(),
        accepted.get()
    );
    // Mutations that never produce a valid input would only test the error paths.
    assert!(
        accepted.get() > ran.get() / 50,
        "{target}: too few valid inputs"
    );
    ran.get()
}

#[test]
fn envelope_parsing_holds_on_mutated_seeds() {
    let ran = run("envelope", |data| harness::envelope(data).is_ok());
    assert!(ran >= 1000, "only {ran} cases in {BUDGET:?}");
}

#[test]
fn webhook_verification_and_parsing_hold_on_mutated_seeds() {
    let ran = run("webhook", |data| harness::webhook(data).accepted());
    assert!(ran >= 1000, "only {ran} cases in {BUDGET:?}");
}
