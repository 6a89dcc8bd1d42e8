//! Conformance suite: the behaviour orchestra relies on, checked through the [`Bus`] trait only,
//! so every implementation (in-process or NATS) runs it unchanged.
//!
//! Each case is `pub async fn case(bus: Arc<dyn Bus>)` and panics with a message on failure.
//! Cases use real, short durations (no paused time), unique subjects and queue names, and
//! bounded waits, so they can run in parallel against one shared server. Run them all with
//! [`conformance_tests!`](crate::conformance_tests) or iterate over [`CASES`].

use crate::{Bus, BusError, Delivery, Message, QueueConfig, Subscription, WorkQueue};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The upper bound for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(3);
/// How long to listen to conclude that nothing (more) arrives.
const QUIET: Duration = Duration::from_millis(300);

/// One conformance case.
pub type Case = fn(Arc<dyn Bus>) -> BoxFuture<'static, ()>;

/// The one list of cases: calls `$mac!($($pre)* case, case, …)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_conformance_cases {
    ($mac:path; $($pre:tt)*) => {
        $mac!($($pre)*
            wildcard_star,
            wildcard_greater,
            invalid_subjects_rejected,
            queue_group_once_and_spread,
            plain_and_queue_group_both_receive,
            dropped_subscription_stops,
            request_reply_round_trip,
            no_responders_distinct_from_timeout,
            work_queue_ack_removes,
            work_queue_delivers_in_order,
            work_queue_nak_redelivers,
            work_queue_nak_delay,
            work_queue_progress_prevents_redelivery,
            work_queue_ack_wait_redelivers,
            work_queue_backoff,
            work_queue_term_removes,
            work_queue_max_deliver_exhausted,
            work_queue_dedup,
            work_queue_rejects_foreign_subject,
            work_queue_max_ack_pending,
            work_queue_concurrent_consumers,
            work_queue_pools_filtered,
            object_round_trip,
            object_overwrite,
            object_missing_is_none,
            object_buckets_independent,
            object_large,
            object_keys_with_slashes,
        );
    };
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name.
        pub const CASES: &[(&str, Case)] = &[$((stringify!($name), |bus| Box::pin($name(bus)))),*];
    };
}

__with_conformance_cases!(cases;);

/// Generates one `#[tokio::test]` per conformance case. The argument is an expression, evaluated
/// inside each async test, that yields something convertible to `Arc<dyn Bus>`:
/// `orchestra_bus::conformance_tests!(orchestra_bus::MemBus::new());`
/// The calling crate needs `tokio` (with `macros` and `rt-multi-thread`).
#[macro_export]
macro_rules! conformance_tests {
    ($make_bus:expr) => {
        $crate::__with_conformance_cases!($crate::conformance_tests; @cases $make_bus;);
    };
    (@cases $make_bus:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let bus: ::std::sync::Arc<dyn $crate::Bus> = $make_bus;
                $crate::conformance::$case(bus).await;
            }
        )*

        #[test]
        fn conformance_cases_all_generated() {
            let generated: &[&str] = &[$(stringify!($case)),*];
            let all: ::std::vec::Vec<&str> =
                $crate::conformance::CASES.iter().map(|(name, _)| *name).collect();
            assert_eq!(generated, all.as_slice(), "conformance_tests! is out of date");
        }
    };
}

// ---- helpers ----

/// A token unique to this process run and call, safe in subjects and stream names.
fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}{n}", rand::random::<u32>())
}

/// A subject prefix no other case (or earlier run) uses.
fn prefix(case: &str) -> String {
    format!("conf.{case}.{}", unique())
}

/// A queue capturing `<prefix>.>` with a unique stream name, `ack_wait` 30 s unless changed.
fn queue_config(case: &str) -> (QueueConfig, String) {
    let prefix = prefix(case);
    let name = format!("CONF_{}_{}", case.to_uppercase(), unique());
    (QueueConfig::new(name, vec![format!("{prefix}.>")], "workers"), prefix)
}

async fn open(bus: &Arc<dyn Bus>, config: QueueConfig) -> Arc<dyn WorkQueue> {
    let name = config.name.clone();
    match bus.work_queue(config).await {
        Ok(queue) => queue,
        Err(e) => panic!("opening work queue `{name}` failed: {e}"),
    }
}

async fn subscribe(bus: &Arc<dyn Bus>, pattern: &str, group: Option<&str>) -> Subscription {
    let sub = match group {
        None => bus.subscribe(pattern).await,
        Some(group) => bus.queue_subscribe(pattern, group).await,
    };
    let sub = sub.unwrap_or_else(|e| panic!("subscribing to `{pattern}` failed: {e}"));
    flush(bus).await;
    sub
}

async fn flush(bus: &Arc<dyn Bus>) {
    bus.flush().await.unwrap_or_else(|e| panic!("flush failed: {e}"));
}

async fn publish(bus: &Arc<dyn Bus>, subject: &str, payload: impl Into<Bytes>) {
    bus.publish(subject, payload.into())
        .await
        .unwrap_or_else(|e| panic!("publishing to `{subject}` failed: {e}"));
}

async fn enqueue(queue: &Arc<dyn WorkQueue>, subject: &str, msg_id: &str, payload: &str) -> u64 {
    let ack = queue
        .publish(subject, msg_id, Bytes::from(payload.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("work-queue publish to `{subject}` failed: {e}"));
    assert!(!ack.duplicate, "first publish of `{msg_id}` was reported as a duplicate");
    ack.sequence
}

/// Messages received until nothing arrives for [`QUIET`] (at most 1000).
async fn drain(sub: &mut Subscription) -> Vec<Message> {
    let mut got = Vec::new();
    while got.len() < 1000 {
        match tokio::time::timeout(QUIET, sub.next()).await {
            Ok(Some(message)) => got.push(message),
            Ok(None) | Err(_) => break,
        }
    }
    got
}

fn subjects(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.subject.as_str()).collect()
}

fn payloads(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect()
}

/// The next delivery, which must come within `wait`.
async fn take(queue: &Arc<dyn WorkQueue>, wait: Duration, what: &str) -> Delivery {
    match queue.next(wait).await {
        Ok(Some(delivery)) => delivery,
        Ok(None) => panic!("expected a delivery within {wait:?} ({what}), got none"),
        Err(e) => panic!("next failed ({what}): {e}"),
    }
}

/// Asserts that nothing is delivered within `wait`.
async fn none_within(queue: &Arc<dyn WorkQueue>, wait: Duration, what: &str) {
    match queue.next(wait).await {
        Ok(None) => {}
        Ok(Some(d)) => panic!(
            "expected no delivery within {wait:?} ({what}), got seq {} delivered {}",
            d.info.stream_sequence, d.info.delivered
        ),
        Err(e) => panic!("next failed ({what}): {e}"),
    }
}

async fn pending(queue: &Arc<dyn WorkQueue>) -> u64 {
    queue.pending().await.unwrap_or_else(|e| panic!("pending failed: {e}"))
}

/// Waits (bounded) until `pending()` equals `expect`; acks may take effect asynchronously.
async fn pending_becomes(queue: &Arc<dyn WorkQueue>, expect: u64, what: &str) {
    let start = Instant::now();
    loop {
        let now = pending(queue).await;
        if now == expect {
            return;
        }
        if start.elapsed() > SOON {
            panic!("pending stayed {now}, expected {expect} ({what})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ack(delivery: &Delivery) {
    delivery.acker.ack().await.unwrap_or_else(|e| panic!("ack failed: {e}"));
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.payload).into_owned()
}

// ---- core pub/sub ----

/// `*` matches exactly one token.
pub async fn wildcard_star(bus: Arc<dyn Bus>) {
    let p = prefix("star");
    let mut sub = subscribe(&bus, &format!("{p}.*.x"), None).await;
    for s in ["a.x", "a.b.x", "x", "b.x", "b.y", "b.x.y"] {
        publish(&bus, &format!("{p}.{s}"), "m").await;
    }
    let got = drain(&mut sub).await;
    let expect = [format!("{p}.a.x"), format!("{p}.b.x")];
    assert_eq!(subjects(&got), expect, "`{p}.*.x` must match exactly one token in the middle");
}

/// `>` matches one or more trailing tokens, never zero.
pub async fn wildcard_greater(bus: Arc<dyn Bus>) {
    let p = prefix("greater");
    let mut sub = subscribe(&bus, &format!("{p}.>"), None).await;
    let mut exact = subscribe(&bus, &format!("{p}.a"), None).await;
    publish(&bus, &p, "zero tokens").await;
    publish(&bus, &format!("{p}.a"), "one").await;
    publish(&bus, &format!("{p}.a.b.c"), "three").await;
    publish(&bus, &format!("{p}x.a"), "other prefix").await;
    let got = drain(&mut sub).await;
    assert_eq!(payloads(&got), ["one", "three"], "`{p}.>` must match one or more tokens");
    let got = drain(&mut exact).await;
    assert_eq!(payloads(&got), ["one"], "an exact subscription gets only its subject");
}

/// Bad subjects and patterns are refused with `InvalidSubject`.
pub async fn invalid_subjects_rejected(bus: Arc<dyn Bus>) {
    let p = prefix("invalid");
    for subject in
        [format!("{p}.*"), format!("{p}.>"), format!("{p}..a"), format!("{p}.a b"), String::new()]
    {
        let got = bus.publish(&subject, Bytes::from_static(b"x")).await;
        assert!(
            matches!(got, Err(BusError::InvalidSubject { .. })),
            "publish to `{subject}` must fail with InvalidSubject, got {got:?}"
        );
    }
    for pattern in [format!("{p}.>.a"), format!("{p}.a*"), format!("{p}."), String::new()] {
        let got = bus.subscribe(&pattern).await;
        assert!(
            matches!(got, Err(BusError::InvalidSubject { .. })),
            "subscribe to `{pattern}` must fail with InvalidSubject, got {:?}",
            got.map(|_| ())
        );
    }
}

/// Each message goes to exactly one member of a queue group, and members share the load.
pub async fn queue_group_once_and_spread(bus: Arc<dyn Bus>) {
    let p = prefix("qgroup");
    let pattern = format!("{p}.>");
    let mut a = subscribe(&bus, &pattern, Some("g")).await;
    let mut b = subscribe(&bus, &pattern, Some("g")).await;
    for i in 0..40 {
        publish(&bus, &format!("{p}.m"), i.to_string()).await;
    }
    let (got_a, got_b) = tokio::join!(drain(&mut a), drain(&mut b));
    let mut all: Vec<u32> = payloads(&got_a)
        .iter()
        .chain(&payloads(&got_b))
        .map(|s| s.parse().expect("numeric payload"))
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..40).collect::<Vec<_>>(), "each message must reach exactly one member");
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "load must spread over members: {} + {}",
        got_a.len(),
        got_b.len()
    );
}

/// A plain subscriber gets every message while a queue group shares the same ones.
pub async fn plain_and_queue_group_both_receive(bus: Arc<dyn Bus>) {
    let p = prefix("plainq");
    let mut plain = subscribe(&bus, &format!("{p}.*"), None).await;
    let mut a = subscribe(&bus, &format!("{p}.*"), Some("workers")).await;
    let mut b = subscribe(&bus, &format!("{p}.*"), Some("workers")).await;
    for i in 0..20 {
        publish(&bus, &format!("{p}.m"), i.to_string()).await;
    }
    let (got_plain, got_a, got_b) = tokio::join!(drain(&mut plain), drain(&mut a), drain(&mut b));
    let expect: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(payloads(&got_plain), expect, "the plain subscriber must get every message");
    let mut group: Vec<u32> = payloads(&got_a)
        .iter()
        .chain(&payloads(&got_b))
        .map(|s| s.parse().expect("numeric payload"))
        .collect();
    group.sort_unstable();
    assert_eq!(group, (0..20).collect::<Vec<_>>(), "the group must get each message once");
}

/// A dropped subscription receives nothing more; the others keep receiving.
pub async fn dropped_subscription_stops(bus: Arc<dyn Bus>) {
    let p = prefix("dropped");
    let subject = format!("{p}.m");
    let gone = subscribe(&bus, &subject, Some("g")).await;
    let mut kept = subscribe(&bus, &subject, Some("g")).await;
    drop(gone);
    flush(&bus).await;
    for i in 0..10 {
        publish(&bus, &subject, i.to_string()).await;
    }
    let got = drain(&mut kept).await;
    assert_eq!(got.len(), 10, "the remaining group member must get all messages");
}

// ---- request/reply ----

/// A request gets the responder's reply; the request carries a reply subject.
pub async fn request_reply_round_trip(bus: Arc<dyn Bus>) {
    let p = prefix("rr");
    let subject = format!("{p}.echo");
    let mut service = subscribe(&bus, &subject, Some("svc")).await;
    let responder = bus.clone();
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let Ok(Some(request)) = tokio::time::timeout(SOON, service.next()).await else {
                return;
            };
            let Some(reply) = request.reply else { panic!("a request must carry a reply subject") };
            let mut answer = b"re:".to_vec();
            answer.extend_from_slice(&request.payload);
            responder.publish(&reply, answer.into()).await.expect("reply publish");
        }
    });
    for word in ["ping", "pong"] {
        let got = bus.request(&subject, Bytes::from(word), SOON).await;
        assert_eq!(got, Ok(Bytes::from(format!("re:{word}"))), "request/reply round trip");
    }
    server.await.expect("responder task");
}

/// No subscriber: `NoResponders` at once. A silent subscriber: `Timeout` after the timeout.
pub async fn no_responders_distinct_from_timeout(bus: Arc<dyn Bus>) {
    let p = prefix("noresp");
    let start = Instant::now();
    let got = bus.request(&format!("{p}.nobody"), Bytes::from_static(b"?"), SOON).await;
    assert!(
        matches!(got, Err(BusError::NoResponders { .. })),
        "request without subscribers must fail with NoResponders, got {got:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(1), "NoResponders must be immediate");

    let silent_subject = format!("{p}.silent");
    let _silent = subscribe(&bus, &silent_subject, None).await;
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let got = bus.request(&silent_subject, Bytes::from_static(b"?"), timeout).await;
    assert!(
        matches!(got, Err(BusError::Timeout { .. })),
        "request to a silent subscriber must fail with Timeout, got {got:?}"
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < SOON,
        "timeout came after {waited:?}, expected about {timeout:?}"
    );
}

// ---- work queues ----

/// An acked message is removed and not delivered again.
pub async fn work_queue_ack_removes(bus: Arc<dyn Bus>) {
    let (config, p) = queue_config("ack");
    let queue = open(&bus, config).await;
    let subject = format!("{p}.t1");
    let seq = enqueue(&queue, &subject, "t1", "payload-1").await;
    pending_becomes(&queue, 1, "after publish").await;
    let d = take(&queue, SOON, "first delivery").await;
    assert_eq!((d.subject.as_str(), text(&d).as_str()), (subject.as_str(), "payload-1"));
    assert_eq!((d.info.stream_sequence, d.info.delivered), (seq, 1), "first delivery info");
    ack(&d).await;
    pending_becomes(&queue, 0, "after ack").await;
    none_within(&queue, QUIET, "after ack").await;
}

/// Messages are delivered in publish order.
pub async fn work_queue_delivers_in_order(bus: Arc<dyn Bus>) {
    let (config, p) = queue_config("order");
    let queue = open(&bus, config).await;
    for i in 0..5 {
        enqueue(&queue, &format!("{p}.t"), &format!("m{i}"), &i.to_string()).await;
    }
    let mut got = Vec::new();
    let mut last_seq = 0;
    for _ in 0..5 {
        let d = take(&queue, SOON, "ordered delivery").await;
        assert!(d.info.stream_sequence > last_seq, "sequences must increase");
        last_seq = d.info.stream_sequence;
        got.push(text(&d));
        ack(&d).await;
    }
    assert_eq!(got, ["0", "1", "2", "3", "4"], "delivery order");
    pending_becomes(&queue, 0, "after acking all").await;
}

/// `nak(None)` redelivers at once with `delivered` = 2.
pub async fn work_queue_nak_redelivers(bus: Arc<dyn Bus>) {
    let (config, p) = queue_config("nak");
    let queue = open(&bus, config).await;
    let seq = enqueue(&queue, &format!("{p}.t"), "t", "x").await;
    let d1 = take(&queue, SOON, "first delivery").await;
    d1.acker.nak(None).await.expect("nak");
    let d2 = take(&queue, SOON, "redelivery after nak").await;
    assert_eq!((d2.info.stream_sequence, d2.info.delivered), (seq, 2), "redelivery info");
    assert_eq!(text(&d2), "x");
    ack(&d2).await;
    pending_becomes(&queue, 0, "after ack").await;
}

/// `nak(Some(d))` holds the message back for `d`, then redelivers it.
pub async fn work_queue_nak_delay(bus: Arc<dyn Bus>) {
    let (config, p) = queue_config("nakdelay");
    let queue = open(&bus, config).await;
    let seq = enqueue(&queue, &format!("{p}.t"), "t", "x").await;
    let d1 = take(&queue, SOON, "first delivery").await;
    let delay = Duration::from_millis(700);
    let start = Instant::now();
    d1.acker.nak(Some(delay)).await.expect("nak with delay");
    none_within(&queue, Duration::from_millis(350), "before the nak delay").await;
    let d2 = take(&queue, SOON, "redelivery after the nak delay").await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(650), "redelivered after {waited:?}, delay {delay:?}");
    assert_eq!((d2.info.stream_sequence, d2.info.delivered), (seq, 2), "redelivery info");
    ack(&d2).await;
    pending_becomes(&queue, 0, "after ack").await;
}

/// `progress()` keeps a message held well past `ack_wait` from being redelivered.
pub async fn work_queue_progress_prevents_redelivery(bus: Arc<dyn Bus>) {
    let (mut config, p) = queue_config("progress");
    config.ack_wait = Duration::from_millis(400);
    let queue = open(&bus, config).await;
    enqueue(&queue, &format!("{p}.t"), "t", "x").await;
    let d = take(&queue, SOON, "first delivery").await;
    let heartbeat = async {
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            d.acker.progress().await.expect("progress");
        }
    };
    // 8 × 150 ms = 1.2 s = 3 × ack_wait.
    let other = async { queue.next(Duration::from_millis(1100)).await };
    let ((), other) = tokio::join!(heartbeat, other);
    match other {
        Ok(None) => {}
        Ok(Some(r)) => panic!(
            "message was redelivered (delivered {}) despite progress heartbeats",
            r.info.delivered
        ),
        Err(e) => panic!("next failed: {e}"),
    }
    ack(&d).await;
    pending_becomes(&queue, 0, "after ack").await;
}

/// A delivery neither acked nor heartbeated is redelivered after `ack_wait`.
pub async fn work_queue_ack_wait_redelivers(bus: Arc<dyn Bus>) {
    let (mut config, p) = queue_config("ackwait");
    config.ack_wait = Duration::from_millis(300);
    let queue = open(&bus, config).await;
    let seq = enqueue(&queue, &format!("{p}.t"), "t", "x").await;
    let _d1 = take(&queue, SOON, "first delivery").await;
    let start = Instant::now();
    let d2 = take(&queue, SOON, "redelivery after ack_wait").await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(250), "redelivered after {waited:?}, ack_wait 300ms");
    assert_eq!((d2.info.stream_sequence, d2.info.delivered), (seq, 2), "redelivery info");
    ack(&d2).await;
    pending_becomes(&queue, 0, "after ack").await;
}

/// With `backoff`, delivery `i` waits `backoff[i-1]` instead of `ack_wait`.
pub async fn work_queue_backoff(bus: Arc<dyn Bus>) {
    let (mut config, p) = queue_config("backoff");
    config.ack_wait = Duration::from_secs(10);
    config.backoff = vec![Duration::from_millis(200), Duration::from_millis(600)];
    config.max_deliver = Some(3);
    let queue = open(&bus, config).await;
    let seq = enqueue(&queue, &format!("{p}.t"), "t", "x").await;
    let _d1 = take(&queue, SOON, "first delivery").await;
    let start = Instant::now();
    let d2 = take(&queue, SOON, "second delivery").await;
    let t2 = start.elapsed();
    let d3 = take(&queue, SOON, "third delivery").await;
    let t3 = start.elapsed();
    assert_eq!((d2.info.stream_sequence, d2.info.delivered), (seq, 2));
    assert_eq!((d3.info.stream_sequence, d3.info.delivered), (seq, 3));
    assert!(
        t2 >= Duration::from_millis(150) && t2 < Duration::from_millis(1500),
        "second delivery after {t2:?}, expected about backoff[0] = 200ms"
    );
    let gap = t3 - t2;
    assert!(
        gap >= Duration::from_millis(550) && gap < Duration::from_secs(2),
        "third delivery {gap:?} after the second, expected about backoff[1] = 600ms"
    );
    ack(&d3).await;
    pending_becomes(&queue, 0, "after ack").await;
}

/// `term()` removes the message; it never comes back.
pub async fn work_queue_term_removes(bus: Arc<dyn Bus>) {
    let (mut config, p) = queue_config("term");
    config.ack_wait = Duration::from_millis(200);
    let queue = open(&bus, config).await;
    enqueue(&queue, &format!("{p}.t"), "t", "x").await;
    let d = take(&queue, SOON, "first delivery").await;
    d.acker.term().await.expect("term");
    pending_becomes(&queue, 0, "after term").await;
    none_within(&queue, Duration::from_millis(700), "after term, past ack_wait").await;
}

/// After `max_deliver` unacked deliveries the message is reported via `exhausted()`, never
/// delivered again, and stays pending until removed.
pub async fn work_queue_max_deliver_exhausted(bus: Arc<dyn Bus>) {
    let (mut config, p) = queue_config("exhaust");
    config.ack_wait = Duration::from_millis(200);
    config.max_deliver = Some(2);
    let queue = open(&bus, config).await;
    let mut exhausted = queue.exhausted().await.expect("exhausted receiver");
    let subject = format!("{p}.poison");
    let seq = enqueue(&queue, &subject, "poison", "bad").await;
    let d1 = take(&queue, SOON, "first delivery").await;
    let d2 = take(&queue, SOON, "second delivery").await;
    assert_eq!((d1.info.delivered, d2.info.delivered), (1, 2), "delivery counts");
    // Keep pulling while waiting: a server may only notice exhaustion when asked for more.
    let report = async {
        match tokio::time::timeout(SOON, exhausted.recv()).await {
            Ok(Some(report)) => report,
            Ok(None) => panic!("exhausted channel closed"),
            Err(_) => panic!("no exhaustion report within {SOON:?}"),
        }
    };
    let (report, ()) =
        tokio::join!(report, none_within(&queue, Duration::from_secs(1), "while exhausting"));
    assert_eq!(report.sequence, seq, "exhausted sequence");
    assert_eq!(report.deliveries, 2, "exhausted delivery count");
    assert_eq!(report.subject, subject, "exhausted subject");
    assert_eq!(report.payload, Bytes::from_static(b"bad"), "exhausted payload");
    none_within(&queue, Duration::from_millis(500), "after exhaustion").await;
    assert_eq!(pending(&queue).await, 1, "an exhausted message stays stored");
    queue.remove(seq).await.expect("remove exhausted message");
    pending_becomes(&queue, 0, "after remove").await;
}

/// A repeated message id inside the window is a duplicate: same sequence, nothing stored.
pub async fn work_queue_dedup(bus: Arc<dyn Bus>) {
    let (config, p) = queue_config("dedup");
    let queue = open(&bus, config).await;
    let subject = format!("{p}.t");
    let first = enqueue(&queue, &subject, "run1/t3/a0", "x").await;
    let again = queue.publish(&subject, "run1/t3/a0", Bytes::from_static(b"x")).await;
    assert_eq!(
        again.map(|a| (a.sequence, a.duplicate)),
        Ok((first, true)),
        "second publish with the same id"
    );
    let other = enqueue(&queue, &subject, "run1/t3/a1", "y").await;
    assert!(other > first, "a new id gets a new sequence");
    pending_becomes(&queue, 2, "two distinct messages").await;
    let d = take(&queue, SOON, "first").await;
    ack(&d).await;
    let d = take(&queue, SOON, "second").await;
    assert_eq!(text(&d), "y", "the duplicate was not stored");
    ack(&d).await;
    pending_becomes(&queue, 0, "after acks").await;
}

/// Publishing to a subject the stream does not capture fails.
pub async fn work_queue_rejects_foreign_subject(bus: Arc<dyn Bus>) {
    let (config, _) = queue_config("foreign");
    let queue = open(&bus, config).await;
    let other = format!("{}.t", prefix("foreign-other"));
    let got = queue.publish(&other, "id", Bytes::from_static(b"x")).await;
    assert!(got.is_err(), "publish to `{other}` outside the stream must fail, got {got:?}");
}

/// No more than `max_ack_pending` deliveries are outstanding at once.
pub async fn work_queue_max_ack_pending(bus: Arc<dyn Bus>) {
    let (mut config, p) = queue_config("maxpending");
    config.max_ack_pending = 2;
    let queue = open(&bus, config).await;
    for i in 0..4 {
        enqueue(&queue, &format!("{p}.t"), &format!("m{i}"), &i.to_string()).await;
    }
    let d0 = take(&queue, SOON, "1st of cap 2").await;
    let d1 = take(&queue, SOON, "2nd of cap 2").await;
    none_within(&queue, QUIET, "cap of 2 reached").await;
    ack(&d0).await;
    let d2 = take(&queue, SOON, "after one ack").await;
    none_within(&queue, QUIET, "cap of 2 reached again").await;
    ack(&d1).await;
    ack(&d2).await;
    let d3 = take(&queue, SOON, "last").await;
    let got = [&d0, &d1, &d2, &d3].map(text);
    assert_eq!(got, ["0", "1", "2", "3"], "all delivered in order");
    ack(&d3).await;
    pending_becomes(&queue, 0, "after acks").await;
}

/// Several consumers (each opening the queue itself) share the work: each gets some, the union
/// is everything published, and no message is acked twice.
pub async fn work_queue_concurrent_consumers(bus: Arc<dyn Bus>) {
    const MESSAGES: usize = 60;
    const CONSUMERS: usize = 3;
    let (config, p) = queue_config("concurrent");
    let producer = open(&bus, config.clone()).await;
    for i in 0..MESSAGES {
        enqueue(&producer, &format!("{p}.t{i}"), &format!("m{i}"), &i.to_string()).await;
    }
    let acked: Arc<Mutex<BTreeMap<u64, usize>>> = Arc::default();
    let mut handles = Vec::new();
    for consumer in 0..CONSUMERS {
        let queue = open(&bus, config.clone()).await;
        let acked = acked.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = BTreeSet::new();
            for _ in 0..MESSAGES * 2 {
                let Some(d) = queue.next(QUIET).await.expect("next") else { break };
                tokio::time::sleep(Duration::from_millis(2)).await;
                d.acker.ack().await.expect("ack");
                let previous = acked.lock().expect("lock").insert(d.info.stream_sequence, consumer);
                assert!(
                    previous.is_none(),
                    "seq {} acked by consumer {consumer} and by {previous:?}",
                    d.info.stream_sequence
                );
                mine.insert(text(&d).parse::<usize>().expect("numeric payload"));
            }
            mine
        }));
    }
    let mut union = BTreeSet::new();
    for (consumer, handle) in handles.into_iter().enumerate() {
        let mine = handle.await.expect("consumer task");
        assert!(!mine.is_empty(), "consumer {consumer} got no work");
        for m in mine {
            assert!(union.insert(m), "message {m} consumed twice");
        }
    }
    assert_eq!(union, (0..MESSAGES).collect(), "the union must be everything published");
    pending_becomes(&producer, 0, "after all acks").await;
}

/// Two pools share one stream through consumers filtered to their subjects: each consumer gets
/// only its pool's messages, and a consumer overlapping another one's filter is refused.
pub async fn work_queue_pools_filtered(bus: Arc<dyn Bus>) {
    let (config, p) = queue_config("pools");
    let pool = |name: &str| QueueConfig {
        consumer: name.to_owned(),
        filter: Some(format!("{p}.{name}")),
        ..config.clone()
    };
    let cpu = open(&bus, pool("cpu")).await;
    let gpu = open(&bus, pool("gpu")).await;
    for i in 0..3 {
        for name in ["cpu", "gpu"] {
            enqueue(&cpu, &format!("{p}.{name}"), &format!("{name}{i}"), &format!("{name}{i}"))
                .await;
        }
    }
    for (queue, name) in [(&cpu, "cpu"), (&gpu, "gpu")] {
        let mut got = Vec::new();
        for i in 0..3 {
            let d = take(queue, SOON, &format!("{name} message {i}")).await;
            assert_eq!(d.subject, format!("{p}.{name}"), "{name} got another pool's message");
            got.push(text(&d));
            ack(&d).await;
        }
        assert_eq!(got, [0, 1, 2].map(|i| format!("{name}{i}")), "{name}: its own, in order");
        none_within(queue, QUIET, &format!("{name} after its own messages")).await;
    }
    pending_becomes(&cpu, 0, "after both pools acked").await;
    let unfiltered = QueueConfig { consumer: "all".to_owned(), ..config.clone() };
    let got = bus.work_queue(unfiltered).await.err();
    assert!(got.is_some(), "an unfiltered consumer overlapping the pools must be refused");
    let wide = QueueConfig { filter: Some(format!("{p}.*")), ..pool("wide") };
    let got = bus.work_queue(wide).await.err();
    assert!(got.is_some(), "a filter overlapping the pools' must be refused");
}

// ---- object store ----

/// A bucket name no other case (or earlier run) uses.
fn bucket(case: &str) -> String {
    format!("conf-{case}-{}", unique())
}

async fn put(bus: &Arc<dyn Bus>, bucket: &str, key: &str, data: impl Into<Bytes>) {
    bus.object_put(bucket, key, data.into())
        .await
        .unwrap_or_else(|e| panic!("object_put `{key}` in `{bucket}` failed: {e}"));
}

async fn get(bus: &Arc<dyn Bus>, bucket: &str, key: &str) -> Option<Bytes> {
    bus.object_get(bucket, key)
        .await
        .unwrap_or_else(|e| panic!("object_get `{key}` in `{bucket}` failed: {e}"))
}

/// What is put comes back byte for byte: text, every byte value, and nothing at all.
pub async fn object_round_trip(bus: Arc<dyn Bus>) {
    let b = bucket("roundtrip");
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let cases: [(&str, Bytes); 3] = [
        ("text", Bytes::from_static(b"hello, object store")),
        ("binary", Bytes::from(every_byte)),
        ("empty", Bytes::new()),
    ];
    for (key, data) in &cases {
        put(&bus, &b, key, data.clone()).await;
    }
    for (key, data) in &cases {
        assert_eq!(get(&bus, &b, key).await.as_ref(), Some(data), "object `{key}` round trip");
    }
}

/// A second put under the same key replaces the object, longer or shorter.
pub async fn object_overwrite(bus: Arc<dyn Bus>) {
    let b = bucket("overwrite");
    put(&bus, &b, "k", "first version").await;
    put(&bus, &b, "k", vec![7u8; 300_000]).await;
    assert_eq!(get(&bus, &b, "k").await, Some(Bytes::from(vec![7u8; 300_000])), "after 2nd put");
    put(&bus, &b, "k", "third").await;
    assert_eq!(get(&bus, &b, "k").await, Some(Bytes::from_static(b"third")), "after 3rd put");
}

/// A key never put, in an existing or a never-used bucket, is `None`, not an error.
pub async fn object_missing_is_none(bus: Arc<dyn Bus>) {
    let b = bucket("missing");
    put(&bus, &b, "present", "x").await;
    assert_eq!(get(&bus, &b, "absent").await, None, "missing key in an existing bucket");
    assert_eq!(get(&bus, &b, "present/child").await, None, "a key below an existing key");
    let unused = bucket("never-used");
    assert_eq!(get(&bus, &unused, "present").await, None, "a key in a bucket never written");
}

/// Buckets are separate namespaces: the same key holds different objects in each.
pub async fn object_buckets_independent(bus: Arc<dyn Bus>) {
    let (a, b) = (bucket("indep-a"), bucket("indep-b"));
    put(&bus, &a, "same", "in a").await;
    put(&bus, &b, "same", "in b").await;
    put(&bus, &a, "only-a", "a").await;
    assert_eq!(get(&bus, &a, "same").await, Some(Bytes::from_static(b"in a")), "bucket a");
    assert_eq!(get(&bus, &b, "same").await, Some(Bytes::from_static(b"in b")), "bucket b");
    assert_eq!(get(&bus, &b, "only-a").await, None, "a key of bucket a is not in bucket b");
}

/// A 5 MiB object (many chunks on NATS) round-trips intact.
pub async fn object_large(bus: Arc<dyn Bus>) {
    const SIZE: usize = 5 * 1024 * 1024;
    let b = bucket("large");
    // A pattern that differs between chunks, so a reordered or repeated chunk is caught.
    let data: Vec<u8> =
        (0..SIZE).map(|i| u8::try_from((i / 1000 + i * 31) % 251).unwrap_or(0)).collect();
    let data = Bytes::from(data);
    put(&bus, &b, "big", data.clone()).await;
    let got = get(&bus, &b, "big").await.expect("the 5 MiB object is stored");
    assert_eq!(got.len(), SIZE, "size of the 5 MiB object");
    assert!(got == data, "the 5 MiB object came back with different bytes");
}

/// Keys may contain `/` and `.`; keys that are prefixes of each other stay distinct.
pub async fn object_keys_with_slashes(bus: Arc<dyn Bus>) {
    let b = bucket("slashes");
    let keys = [
        "run1/t1/1/stdout",
        "run1/t1/1/stderr",
        "run1/t1",
        "run1/t1/10/stdout",
        "dir.with.dots/file.tar.gz",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ];
    for key in keys {
        put(&bus, &b, key, format!("value of {key}")).await;
    }
    for key in keys {
        let expect = Bytes::from(format!("value of {key}"));
        assert_eq!(get(&bus, &b, key).await, Some(expect), "object `{key}`");
    }
    assert_eq!(get(&bus, &b, "run1").await, None, "a prefix of stored keys is not a key");
}
