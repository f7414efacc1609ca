//! Heap allocations per cached hot-path request, natively (issue 15 asks for ≤ 10 per request).
//! Not a timing: a counting global allocator around `System` counts the allocations (and
//! reallocations, which are allocations too) and bytes of each step the VM runs per request,
//! after warm-up, so the figures are exact and do not move with the machine.
//!
//! `cargo bench --bench allocs --no-default-features --features testkeys` prints one table (the
//! CLI is not needed); each step also lists the size of every allocation it made, in order, so
//! that reading the code names its source.
//! Host-side work that cannot run natively (the SDK's `Box` of the stream's context, the buffers
//! Envoy's answers are copied into) is not here; `gather_request`'s work on the header map is
//! (row g, as `src/host/facts.rs` does it), and row w runs the whole request as the VM does.

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use meshguard::accesslog;
use meshguard::auth::cache::TokenCache;
use meshguard::auth::extract::extract;
use meshguard::auth::remote::KeyStore;
use meshguard::auth::testkeys::{self, claims};
use meshguard::config::{self, Config, Limit, RateLimitPolicy, TokenBucket};
use meshguard::flow::{Flow, StreamId};
use meshguard::headermap;
use meshguard::names::Names;
use meshguard::pipeline::{self, Decision};
use meshguard::ratelimit::bucket::TakeMode;
use meshguard::ratelimit::key::{build_key, KeyFacts};
use meshguard::ratelimit::{slots, BucketStore, MemoryBuckets};
use meshguard::request::{text_of, Request};
use serde_json::json;

mod support;
use support::{config_json, env, exchange, request, BenchVm, NOW_MS};

/// How many allocation sizes one step keeps for its listing.
const SIZES_KEPT: usize = 64;
/// Runs before the measured one: caches filled, buckets and hash maps grown to their size.
const WARM_UP_RUNS: usize = 16;
/// Measured runs; a step's figure is their mean (every run of a step is alike: checked).
const MEASURED_RUNS: usize = 64;

struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);
static SIZES: [AtomicUsize; SIZES_KEPT] = [const { AtomicUsize::new(0) }; SIZES_KEPT];

fn note(size: usize) {
    if ON.load(Ordering::Relaxed) {
        let index = COUNT.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size, Ordering::Relaxed);
        if let Some(slot) = SIZES.get(index) {
            slot.store(size, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is handed to `System` unchanged; counting only reads the layout.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What one run of a step allocated.
#[derive(Debug, PartialEq)]
struct Count {
    allocations: usize,
    bytes: usize,
    sizes: Vec<usize>,
}

/// Counts what `run` allocates (what it returns is dropped outside the count, as the caller
/// would keep it).
fn count<T>(mut run: impl FnMut() -> T) -> Count {
    for _ in 0..WARM_UP_RUNS {
        black_box(run());
    }
    let mut first = None;
    for _ in 0..MEASURED_RUNS {
        COUNT.store(0, Ordering::Relaxed);
        BYTES.store(0, Ordering::Relaxed);
        ON.store(true, Ordering::Relaxed);
        let kept = black_box(run());
        ON.store(false, Ordering::Relaxed);
        drop(kept);
        let allocations = COUNT.load(Ordering::Relaxed);
        let sizes = SIZES
            .iter()
            .take(allocations.min(SIZES_KEPT))
            .map(|size| size.load(Ordering::Relaxed))
            .collect();
        let this = Count {
            allocations,
            bytes: BYTES.load(Ordering::Relaxed),
            sizes,
        };
        match &first {
            None => first = Some(this),
            Some(first) => assert_eq!(first, &this, "a step allocates alike on every run"),
        }
    }
    first.unwrap_or(Count {
        allocations: 0,
        bytes: 0,
        sizes: Vec::new(),
    })
}

/// Runs `step` without counting what it allocates (set-up inside a counted run).
fn uncounted(step: impl FnOnce()) {
    let on = ON.swap(false, Ordering::Relaxed);
    step();
    ON.store(on, Ordering::Relaxed);
}

/// Makes sure `key` has a lease with tokens left, so that a counted run is served from it as
/// most requests of a busy key are (one in `lease::MAX_BATCH` takes the next batch: row b4').
fn keep_leased(
    buckets: &mut MemoryBuckets,
    policy: &RateLimitPolicy,
    bucket: &TokenBucket,
    key: &str,
) {
    if buckets.leased(&policy.name, key, NOW_MS) == 0 {
        buckets.take(policy, bucket, key, NOW_MS, TakeMode::Reject);
    }
}

/// A request header map as Envoy hands it to a filter: pseudo-headers, what a browser-like
/// client sends, what Envoy adds, and a bearer token.
fn header_map(token: &str) -> Vec<u8> {
    let bearer = format!("Bearer {token}");
    let headers: [(&str, &str); 12] = [
        (":authority", "api.example.com"),
        (":path", "/api/orders?page=2"),
        (":method", "GET"),
        (":scheme", "https"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("authorization", &bearer),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "8d4a6b2c-1f0e-4c1a-9d57-0b3f2e6a7c91"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ];
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect();
    headermap::encode(&pairs)
}

/// The first `n` headers of `header_map`, as wrk's request reaches the filter in `make bench`
/// (`:authority`, `:path`, `:method`, `:scheme`, `authorization`, `x-forwarded-proto`,
/// `x-request-id`, and one more).
fn short_header_map(token: &str) -> Vec<u8> {
    let bearer = format!("Bearer {token}");
    let headers: [(&[u8], &[u8]); 8] = [
        (b":authority", b"localhost:10000"),
        (b":path", b"/"),
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b"authorization", bearer.as_bytes()),
        (b"x-forwarded-proto", b"http"),
        (b"x-request-id", b"8d4a6b2c-1f0e-4c1a-9d57-0b3f2e6a7c91"),
        (b"host", b"localhost:10000"),
    ];
    headermap::encode(&headers)
}

/// What `host::facts::gather_request` makes of a serialized header map for this configuration
/// (which reads `:path`, the `authorization` values, and the names of headers it writes): the
/// same lookups over `headermap::pairs`, borrowed (the host's `Headers::Map`; it cannot run
/// natively, as it also asks Envoy for properties the configuration does not need here).
fn gather<'a>(config: &'a Config, map: &'a [u8]) -> Request<'a> {
    let value = |name: &str| {
        headermap::pairs(map)
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    };
    let path = value(":path").map(text_of).unwrap_or_default();
    let headers = config
        .reads
        .headers
        .iter()
        .flat_map(|name| {
            headermap::pairs(map)
                .filter(move |(n, _)| *n == name.as_bytes())
                .map(move |(_, v)| (Cow::Borrowed(name.as_str()), text_of(v)))
        })
        .collect();
    let twins = headermap::pairs(map).any(|(name, _)| name.contains(&b'_'));
    assert!(!twins, "the benchmark's request has no underscore twins");
    Request {
        path,
        headers,
        ..Request::default()
    }
}

fn main() {
    let config = config::parse(config_json().as_bytes()).expect("the benchmark's config is valid");
    let keys = KeyStore::new(&config);
    let names = Names::of(&config);
    let token = testkeys::rs256_token("rsa", claims(json!({}), 10 * 365 * 86_400));
    let request = request(&token);
    let env = env(&config, &names, &keys);
    let mut cache = TokenCache::default();
    let mut buckets = MemoryBuckets::default();
    let decision = pipeline::decide(&env, &mut cache, &mut buckets, &request);
    assert!(matches!(decision, Decision::Allow(_)));
    let verdict = pipeline::summarize(&names, &decision).expect("an allowed request is settled");

    let policy = config.rate_limits.first().expect("one rate limit");
    let Limit::Local(bucket) = &policy.limit else {
        unreachable!("the benchmark's limit is local")
    };
    let Decision::Allow(allowed) = &decision else {
        unreachable!("checked above")
    };
    let facts = KeyFacts {
        request: &request,
        rule: "api",
        claims: allowed.identities.iter().map(|t| &t.claims).collect(),
    };
    let key = build_key(&policy.key, &facts);

    let mut rows: Vec<(&str, Count)> = Vec::new();
    let map = header_map(&token);
    rows.push((
        "a. headermap::decode, 12 headers",
        count(|| headermap::decode(black_box(&map))),
    ));
    rows.push((
        "a*. headermap::pairs, 12 headers, as the host reads them now (borrowed; :path, the token and two more looked up)",
        count(|| {
            let map = black_box(&map);
            [":path", "authorization", "x-request-id", "user-agent"]
                .iter()
                .filter_map(|name| headermap::pairs(map).find(|(n, _)| *n == name.as_bytes()))
                .count()
        }),
    ));
    let short = short_header_map(&token);
    rows.push((
        "a'. headermap::decode, 8 headers (make bench's wrk request)",
        count(|| headermap::decode(black_box(&short))),
    ));
    rows.push((
        "b. pipeline::decide, cached RS256 token + one local rate limit (served from a lease)",
        count(|| {
            uncounted(|| keep_leased(&mut buckets, policy, bucket, &key));
            pipeline::decide(&env, &mut cache, &mut buckets, black_box(&request))
        }),
    ));
    let provider = config.providers.first().expect("one provider");
    rows.push((
        "b1. of which: auth::extract (the bearer token)",
        count(|| extract(&provider.locations, black_box(&request))),
    ));
    rows.push((
        "b2. of which: token cache hit",
        count(|| cache.get(0, black_box(&token), NOW_MS / 1000, 0)),
    ));
    rows.push((
        "b3. of which: rate-limit key (claim:sub)",
        count(|| build_key(&policy.key, black_box(&facts))),
    ));
    rows.push((
        "b4. of which: bucket take served from this worker's lease (no shared data)",
        count(|| {
            uncounted(|| keep_leased(&mut buckets, policy, bucket, &key));
            buckets.take(policy, bucket, black_box(&key), NOW_MS, TakeMode::Reject)
        }),
    ));
    let no_lease = TakeMode::Delay { max_delay_ms: 0 };
    rows.push((
        "b4'. bucket take from the shared slot (delay, shadow and small buckets; a leased key's batch): locate, slot read, take in place, store",
        count(|| buckets.take(policy, bucket, black_box("bob"), NOW_MS, no_lease)),
    ));
    let seed = slots::SlotSeed::new([0; slots::SEED_BYTES]);
    rows.push((
        "b5. of which: slots::locate (slot name + stored key)",
        count(|| slots::locate(&seed, &policy.name, black_box("alice"))),
    ));
    rows.push((
        "c1. pipeline::summarize (the verdict)",
        count(|| pipeline::summarize(&names, black_box(&decision))),
    ));
    rows.push((
        "c2. serde_json::to_string(&verdict) (the filter-state export)",
        count(|| serde_json::to_string(black_box(&verdict))),
    ));
    let exchange = exchange();
    rows.push((
        "d. accesslog::render (one JSON line, log on only)",
        count(|| accesslog::render(black_box(&exchange), &verdict)),
    ));
    let mut vm = BenchVm {
        env: support::env(&config, &names, &keys),
        cache: TokenCache::default(),
        buckets: MemoryBuckets::default(),
    };
    let mut flow = Flow::new(NOW_MS);
    let mut id = 0;
    rows.push((
        "e. flow: request decided at once + stream gone (request.clone(), 1 of them, + decide + verdict + effects + entry)",
        count(|| {
            id += 1;
            uncounted(|| keep_leased(&mut vm.buckets, policy, bucket, &key));
            let effects = flow.request(&mut vm, StreamId(id), request.clone(), NOW_MS);
            flow.stream_gone(&mut vm, StreamId(id));
            effects
        }),
    ));
    rows.push((
        "g. gather: the Request from the header map (12 headers), as host/facts.rs reads it",
        count(|| gather(&config, black_box(&map))),
    ));
    let mut vm = BenchVm {
        env: support::env(&config, &names, &keys),
        cache: TokenCache::default(),
        buckets: MemoryBuckets::default(),
    };
    rows.push((
        "w. the whole request: gather + flow.request (decide, record) + stream_gone (served from a lease, as most requests of a busy key)",
        count(|| {
            id += 1;
            uncounted(|| keep_leased(&mut vm.buckets, policy, bucket, &key));
            let request = gather(&config, black_box(&map));
            let effects = flow.request(&mut vm, StreamId(id), request, NOW_MS);
            flow.stream_gone(&mut vm, StreamId(id));
            effects
        }),
    ));

    println!("| step | allocations | bytes | sizes, in order |");
    println!("|---|---:|---:|---|");
    for (step, count) in &rows {
        let sizes: Vec<String> = count.sizes.iter().map(usize::to_string).collect();
        println!(
            "| {step} | {} | {} | {} |",
            count.allocations,
            count.bytes,
            sizes.join(" ")
        );
    }
}
