//! Group-commit throughput of the durable store: direct messages committed
//! per second when 1, 10, 100 or 1000 of them share one transaction, on a
//! temporary database opened by [`Store::open`] exactly as the server opens
//! it (WAL, `synchronous=FULL`), so every iteration pays a real fsync'd
//! commit. Run with `cargo bench --bench store` (add `-- --quick` for a
//! fast rough look).
//!
//! The temporary database lives under cargo's target tmp directory rather
//! than the system temp directory: `/tmp` is tmpfs on many machines, where
//! fsync costs nothing and the numbers would flatter the store.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use natter::store::{NewMessage, Store, StoreOutput, StoreRequest};

const BATCH_SIZES: &[usize] = &[1, 10, 100, 1000];

/// Distinct users the messages go between, so the sender and recipient
/// indexes grow as they would with real traffic rather than under one key.
const USERS: usize = 50;

/// One batch as the store thread sees it under load: `n` separate
/// `InsertMessages` requests of one message each. That is what `n` clients
/// each sending one `send` produce (commands.rs turns a `send` into a
/// one-message request), and `run_batch` gives each request its own
/// savepoint, so this counts the per-request overhead that group commit
/// really pays. One request carrying `n` messages would model a single
/// `broadcast user` to `n` people instead, and would hide that overhead.
fn batch(n: usize) -> Vec<StoreRequest> {
    (0..n)
        .map(|i| {
            StoreRequest::InsertMessages(vec![NewMessage {
                ts: 1_800_000_000 + i as i64,
                sender: format!("u{}", i % USERS).into(),
                recipient: format!("u{}", (i + 1) % USERS),
                body: format!("message {i}: are we still on for lunch at noon?").into(),
                unread: i % 4 == 0,
            }])
        })
        .collect()
}

fn group_commit(c: &mut Criterion) {
    let dir = tempfile::Builder::new()
        .prefix("natter-bench-store")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("cannot create a temporary data directory");
    let mut store = Store::open(dir.path()).expect("cannot open the bench database");
    // Messages refer to accounts: each insert looks its two names up.
    let accounts: Vec<StoreRequest> = (0..USERS)
        .map(|i| StoreRequest::CreateUser {
            name: format!("u{i}"),
            hash: "not a real hash".into(),
            created: 0,
        })
        .collect();
    for result in store.run_batch(&accounts) {
        result.expect("cannot create the bench accounts");
    }

    let mut group = c.benchmark_group("store_group_commit");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for &n in BATCH_SIZES {
        // The same requests are inserted again on every iteration: messages
        // have no uniqueness constraint, and building them is not what we
        // measure.
        let requests = batch(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("messages", n), &requests, |b, requests| {
            b.iter(|| {
                let results = store.run_batch(requests);
                assert_eq!(results.len(), requests.len(), "one result per request");
                for result in &results {
                    match result {
                        Ok(StoreOutput::Ids(ids)) if ids.len() == 1 => {}
                        other => panic!("insert failed or returned {other:?}"),
                    }
                }
                results
            })
        });
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
