//! The in-process bus: core pub/sub, queue groups, request/reply and JetStream-like work
//! queues, all in memory.
//!
//! Behaviour copies NATS where orchestra relies on it (see `nats-jetstream.md`):
//! - a core publish to a subject a work queue captures is stored in that queue, and a work-queue
//!   publish is also seen by core subscribers, as on NATS;
//! - a stream may have several durable consumers with non-overlapping filters (at most one
//!   unfiltered): each message goes to the consumer whose filter matches it, and waits in the
//!   stream until such a consumer exists;
//! - a work queue counts a message towards `max_ack_pending` from its first delivery until it is
//!   acked, terminated or exhausted, redeliveries included (JetStream's `num_ack_pending`);
//! - an ack, nak, progress or term from a delivery that was already superseded by a redelivery is
//!   ignored; an exhausted message only leaves through [`WorkQueue::remove`].
//!
//! Time is tokio time, so everything works with paused time. Each work queue has one timer task
//! that holds only a weak reference to it and ends when the queue is dropped.

use crate::subject;
use crate::{
    Acker, Bus, BusError, Delivery, DeliveryInfo, Exhausted, Message, PublishAck, QueueConfig,
    Subscription, WorkQueue,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

/// In-process implementation of [`Bus`]. Cheap: per-message cost is a lock and a channel send.
pub struct MemBus {
    core: Arc<Core>,
    /// Work-queue streams by name.
    streams: Mutex<HashMap<String, Arc<MemStream>>>,
    /// Object stores: (bucket, key) → bytes.
    objects: Mutex<HashMap<(String, String), Bytes>>,
    inbox_prefix: String,
    next_inbox: AtomicU64,
}

impl std::fmt::Debug for MemBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemBus").field("inbox_prefix", &self.inbox_prefix).finish_non_exhaustive()
    }
}

impl Default for MemBus {
    fn default() -> Self {
        Self {
            core: Arc::new(Core { subs: Mutex::new(Subs::default()) }),
            streams: Mutex::new(HashMap::new()),
            objects: Mutex::new(HashMap::new()),
            inbox_prefix: format!("{:016x}", rand::random::<u64>()),
            next_inbox: AtomicU64::new(0),
        }
    }
}

impl MemBus {
    /// A new, empty bus, ready to be shared as `Arc<dyn Bus>`.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Live core subscriptions (requests' reply inboxes included).
    pub fn subscription_count(&self) -> usize {
        self.core.count()
    }

    fn streams_capturing(&self, subject: &str) -> Vec<Arc<MemStream>> {
        lock(&self.streams).values().filter(|s| s.captures(subject)).cloned().collect()
    }
}

#[async_trait]
impl Bus for MemBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        subject::validate_subject(subject)?;
        for stream in self.streams_capturing(subject) {
            stream.store(subject, "", payload.clone());
        }
        self.core.deliver(&Message { subject: subject.to_owned(), reply: None, payload });
        Ok(())
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        self.core.subscribe(pattern, None)
    }

    async fn queue_subscribe(&self, pattern: &str, group: &str) -> Result<Subscription, BusError> {
        if group.is_empty() || group.chars().any(char::is_whitespace) {
            return Err(BusError::InvalidSubject {
                subject: pattern.to_owned(),
                reason: format!("invalid queue group `{group}`"),
            });
        }
        self.core.subscribe(pattern, Some(group.to_owned()))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        subject::validate_subject(subject)?;
        let n = self.next_inbox.fetch_add(1, Ordering::Relaxed);
        let inbox = format!("_INBOX.{}.{n}", self.inbox_prefix);
        let mut replies = self.core.subscribe(&inbox, None)?;
        let message = Message { subject: subject.to_owned(), reply: Some(inbox), payload };
        if self.core.deliver(&message) == 0 {
            return Err(BusError::NoResponders { subject: subject.to_owned() });
        }
        match tokio::time::timeout(timeout, replies.next()).await {
            Ok(Some(reply)) => Ok(reply.payload),
            Ok(None) => Err(BusError::Closed),
            Err(_) => Err(BusError::Timeout { subject: subject.to_owned(), timeout }),
        }
    }

    async fn object_put(&self, bucket: &str, key: &str, data: Bytes) -> Result<(), BusError> {
        subject::validate_object(bucket, key)?;
        let mut objects = self.objects.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        objects.insert((bucket.to_owned(), key.to_owned()), data);
        Ok(())
    }

    async fn object_get(&self, bucket: &str, key: &str) -> Result<Option<Bytes>, BusError> {
        subject::validate_object(bucket, key)?;
        let objects = self.objects.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(objects.get(&(bucket.to_owned(), key.to_owned())).cloned())
    }

    /// Every caller opening the same stream `name` and `consumer` shares one consumer; a later
    /// open with another config gets the existing stream and consumer unchanged. A new consumer
    /// whose filter overlaps another's on the stream is refused, as on JetStream.
    /// `max_ack_pending` 0 means no limit.
    async fn work_queue(&self, config: QueueConfig) -> Result<Arc<dyn WorkQueue>, BusError> {
        let queue_error = |reason: String| BusError::Queue { queue: config.name.clone(), reason };
        for pattern in &config.subjects {
            subject::validate_pattern(pattern)?;
        }
        if config.subjects.is_empty() {
            return Err(queue_error("no subjects".to_owned()));
        }
        if let Some(filter) = &config.filter {
            subject::validate_pattern(filter)?;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(queue_error(
                "work queues need a tokio runtime for their timers".to_owned(),
            ));
        };
        let stream = lock(&self.streams)
            .entry(config.name.clone())
            .or_insert_with(|| {
                Arc::new(MemStream {
                    name: config.name.clone(),
                    subjects: config.subjects.clone(),
                    duplicate_window: config.duplicate_window,
                    core: Arc::downgrade(&self.core),
                    state: Mutex::new(StreamState::default()),
                })
            })
            .clone();
        let queue = stream.consumer(config, &runtime)?;
        Ok(Arc::new(MemHandle { stream, queue }))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- core pub/sub ----

struct Core {
    subs: Mutex<Subs>,
}

#[derive(Default)]
struct Subs {
    next_id: u64,
    entries: Vec<Sub>,
    /// Round-robin position per queue group.
    turns: HashMap<String, usize>,
}

struct Sub {
    id: u64,
    pattern: String,
    group: Option<String>,
    tx: mpsc::UnboundedSender<Message>,
}

/// Removes a subscription when its [`Subscription`] is dropped.
struct Unsubscribe {
    core: Weak<Core>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            lock(&core.subs).entries.retain(|s| s.id != self.id);
        }
    }
}

impl Core {
    fn subscribe(
        self: &Arc<Self>,
        pattern: &str,
        group: Option<String>,
    ) -> Result<Subscription, BusError> {
        subject::validate_pattern(pattern)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subs = lock(&self.subs);
        subs.next_id += 1;
        let id = subs.next_id;
        subs.entries.push(Sub { id, pattern: pattern.to_owned(), group, tx });
        let guard = Unsubscribe { core: Arc::downgrade(self), id };
        Ok(Subscription::new(rx, Some(Box::new(guard))))
    }

    fn count(&self) -> usize {
        lock(&self.subs).entries.iter().filter(|s| !s.tx.is_closed()).count()
    }

    /// Hands `message` to every matching plain subscriber and to one member of each matching
    /// queue group. Returns how many subscribers received it.
    fn deliver(&self, message: &Message) -> usize {
        let mut subs = lock(&self.subs);
        let Subs { entries, turns, .. } = &mut *subs;
        entries.retain(|s| !s.tx.is_closed());
        let mut received = 0;
        let mut groups: Vec<(&str, Vec<&Sub>)> = Vec::new();
        for sub in entries.iter().filter(|s| subject::matches(&s.pattern, &message.subject)) {
            match &sub.group {
                None => received += usize::from(sub.tx.send(message.clone()).is_ok()),
                Some(group) => match groups.iter_mut().find(|(g, _)| g == group) {
                    Some((_, members)) => members.push(sub),
                    None => groups.push((group, vec![sub])),
                },
            }
        }
        for (group, members) in groups {
            let turn = turns.entry(group.to_owned()).or_default();
            // Start at this group's turn; skip members that went away meanwhile.
            for i in 0..members.len() {
                let member = members[(*turn + i) % members.len()];
                if member.tx.send(message.clone()).is_ok() {
                    received += 1;
                    break;
                }
            }
            *turn = turn.wrapping_add(1);
        }
        received
    }
}

// ---- work queues ----

/// A work-queue stream: sequence numbers, de-duplication, its consumers, and the messages none
/// of them takes yet. Lock order: a stream's state before a consumer's.
struct MemStream {
    name: String,
    subjects: Vec<String>,
    duplicate_window: Duration,
    core: Weak<Core>,
    state: Mutex<StreamState>,
}

#[derive(Default)]
struct StreamState {
    last_seq: u64,
    dedup: HashMap<String, u64>,
    dedup_order: VecDeque<(Instant, String)>,
    consumers: Vec<Arc<MemQueue>>,
    /// Stored messages no consumer's filter matches (yet): (subject, payload) by sequence.
    unclaimed: BTreeMap<u64, (String, Bytes)>,
}

impl MemStream {
    fn captures(&self, subject: &str) -> bool {
        self.subjects.iter().any(|p| subject::matches(p, subject))
    }

    fn error(&self, reason: String) -> BusError {
        BusError::Queue { queue: self.name.clone(), reason }
    }

    /// The consumer `config.consumer`, created (with its timer task on `runtime`) when missing.
    fn consumer(
        &self,
        config: QueueConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Arc<MemQueue>, BusError> {
        let mut st = lock(&self.state);
        if let Some(queue) = st.consumers.iter().find(|q| q.config.consumer == config.consumer) {
            return Ok(queue.clone());
        }
        if let Some(filter) = &config.filter
            && !self.subjects.iter().any(|p| subject::overlaps(p, filter))
        {
            return Err(self.error(format!(
                "the filter `{filter}` of consumer `{}` takes nothing the stream captures",
                config.consumer
            )));
        }
        let overlapping = |other: &Option<String>| match (other, &config.filter) {
            (Some(a), Some(b)) => subject::overlaps(a, b),
            _ => true,
        };
        if let Some(other) = st.consumers.iter().find(|q| overlapping(&q.config.filter)) {
            return Err(self.error(format!(
                "the filter of consumer `{}` overlaps that of consumer `{}` on a work-queue stream",
                config.consumer, other.config.consumer
            )));
        }
        let queue = MemQueue::new(config);
        runtime.spawn(timer_loop(Arc::downgrade(&queue), queue.wake_timer.clone()));
        let now = Instant::now();
        let claimed: Vec<u64> =
            st.unclaimed.iter().filter(|(_, (s, _))| queue.takes(s)).map(|(&seq, _)| seq).collect();
        for seq in claimed {
            if let Some((subject, payload)) = st.unclaimed.remove(&seq) {
                queue.insert(seq, subject, payload, now);
            }
        }
        st.consumers.push(queue.clone());
        Ok(queue)
    }

    /// Stores a message (unless its id is a duplicate) with the consumer that takes it.
    fn store(&self, subject: &str, msg_id: &str, payload: Bytes) -> PublishAck {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let window = self.duplicate_window;
        while let Some((at, _)) = st.dedup_order.front() {
            if now.duration_since(*at) < window {
                break;
            }
            if let Some((_, id)) = st.dedup_order.pop_front() {
                st.dedup.remove(&id);
            }
        }
        if let Some(&sequence) = st.dedup.get(msg_id) {
            return PublishAck { sequence, duplicate: true };
        }
        st.last_seq += 1;
        let sequence = st.last_seq;
        if !msg_id.is_empty() && !window.is_zero() {
            st.dedup.insert(msg_id.to_owned(), sequence);
            st.dedup_order.push_back((now, msg_id.to_owned()));
        }
        match st.consumers.iter().find(|q| q.takes(subject)) {
            Some(queue) => queue.insert(sequence, subject.to_owned(), payload, now),
            None => {
                st.unclaimed.insert(sequence, (subject.to_owned(), payload));
            }
        }
        PublishAck { sequence, duplicate: false }
    }

    fn pending(&self) -> u64 {
        let st = lock(&self.state);
        let taken: usize = st.consumers.iter().map(|q| lock(&q.state).messages.len()).sum();
        (st.unclaimed.len() + taken) as u64
    }

    fn remove(&self, sequence: u64) {
        let mut st = lock(&self.state);
        if st.unclaimed.remove(&sequence).is_none() {
            for queue in &st.consumers {
                if queue.remove(sequence) {
                    break;
                }
            }
        }
    }
}

/// What [`MemBus::work_queue`] hands out: a stream and one of its consumers.
struct MemHandle {
    stream: Arc<MemStream>,
    queue: Arc<MemQueue>,
}

#[async_trait]
impl WorkQueue for MemHandle {
    /// An empty `msg_id` disables de-duplication for this message.
    async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<PublishAck, BusError> {
        subject::validate_subject(subject)?;
        if !self.stream.captures(subject) {
            return Err(self
                .stream
                .error(format!("subject `{subject}` is not captured by the stream")));
        }
        let ack = self.stream.store(subject, msg_id, payload.clone());
        if let Some(core) = self.stream.core.upgrade() {
            core.deliver(&Message { subject: subject.to_owned(), reply: None, payload });
        }
        Ok(ack)
    }

    async fn next(&self, wait: Duration) -> Result<Option<Delivery>, BusError> {
        self.queue.next(wait).await
    }

    async fn pending(&self) -> Result<u64, BusError> {
        Ok(self.stream.pending())
    }

    async fn exhausted(&self) -> Result<mpsc::UnboundedReceiver<Exhausted>, BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.queue.state).exhausted.push(tx);
        Ok(rx)
    }

    /// Removes any stored message; removing an unknown sequence is not an error.
    async fn remove(&self, sequence: u64) -> Result<(), BusError> {
        self.stream.remove(sequence);
        Ok(())
    }
}

/// One durable consumer: delivery state of the messages its filter takes.
struct MemQueue {
    config: QueueConfig,
    me: Weak<MemQueue>,
    state: Mutex<QueueState>,
    wake_timer: Arc<Notify>,
}

impl Drop for MemQueue {
    fn drop(&mut self) {
        // Lets the timer task see that the queue is gone.
        self.wake_timer.notify_one();
    }
}

#[derive(Default)]
struct QueueState {
    last_token: u64,
    messages: BTreeMap<u64, Stored>,
    /// Never delivered, in order.
    fresh: BTreeSet<u64>,
    /// Delivered before and due for redelivery now.
    redeliver: BTreeSet<u64>,
    /// Ack deadlines and nak delays, exactly one entry per `InFlight`/`Delayed` message.
    timers: BTreeSet<(Instant, u64)>,
    /// What the timer task is sleeping until.
    timer_armed: Option<Instant>,
    /// Messages delivered and not yet acked, terminated or exhausted.
    ack_pending: usize,
    waiters: VecDeque<oneshot::Sender<Delivery>>,
    exhausted: Vec<mpsc::UnboundedSender<Exhausted>>,
}

impl QueueState {
    /// One message stopped counting towards `max_ack_pending`.
    fn release_slot(&mut self) {
        debug_assert!(self.ack_pending > 0, "ack_pending accounting");
        self.ack_pending = self.ack_pending.saturating_sub(1);
    }
}

struct Stored {
    subject: String,
    payload: Bytes,
    delivered: u32,
    /// Identifies the current delivery; ackers holding another token are stale.
    token: u64,
    slot: Slot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Fresh,
    Redeliver,
    InFlight { deadline: Instant },
    Delayed { until: Instant },
    Exhausted,
}

impl MemQueue {
    fn new(config: QueueConfig) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            config,
            me: me.clone(),
            state: Mutex::new(QueueState::default()),
            wake_timer: Arc::new(Notify::new()),
        })
    }

    /// True when this consumer's filter takes `subject`.
    fn takes(&self, subject: &str) -> bool {
        self.config.filter.as_deref().is_none_or(|f| subject::matches(f, subject))
    }

    /// The ack deadline of delivery number `delivered`: `backoff[delivered - 1]` (the last entry
    /// repeats) when backoff is set, else `ack_wait`.
    fn ack_timeout(&self, delivered: u32) -> Duration {
        let backoff = &self.config.backoff;
        match backoff.len() {
            0 => self.config.ack_wait,
            n => backoff[(delivered.max(1) as usize - 1).min(n - 1)],
        }
    }

    /// Takes a newly stored message.
    fn insert(&self, seq: u64, subject: String, payload: Bytes, now: Instant) {
        let mut st = lock(&self.state);
        st.messages
            .insert(seq, Stored { subject, payload, delivered: 0, token: 0, slot: Slot::Fresh });
        st.fresh.insert(seq);
        self.pump(&mut st, now);
    }

    /// Delivers the next due message, redeliveries first, if `max_ack_pending` allows.
    fn deliver_one(&self, st: &mut QueueState, now: Instant) -> Option<Delivery> {
        let seq = match st.redeliver.pop_first() {
            Some(seq) => seq,
            None => {
                let cap = self.config.max_ack_pending;
                if cap != 0 && st.ack_pending >= cap {
                    return None;
                }
                let seq = st.fresh.pop_first()?;
                st.ack_pending += 1;
                seq
            }
        };
        st.last_token += 1;
        let token = st.last_token;
        let msg = st.messages.get_mut(&seq)?;
        msg.delivered += 1;
        msg.token = token;
        let deadline = after(now, self.ack_timeout(msg.delivered));
        msg.slot = Slot::InFlight { deadline };
        let delivery = Delivery {
            subject: msg.subject.clone(),
            payload: msg.payload.clone(),
            info: DeliveryInfo { stream_sequence: seq, delivered: msg.delivered },
            acker: Arc::new(MemAcker { queue: self.me.clone(), seq, token }),
        };
        self.add_timer(st, deadline, seq);
        Some(delivery)
    }

    /// Hands due messages to waiting `next` callers.
    fn pump(&self, st: &mut QueueState, now: Instant) {
        loop {
            while st.waiters.front().is_some_and(oneshot::Sender::is_closed) {
                st.waiters.pop_front();
            }
            if st.waiters.is_empty() {
                return;
            }
            let Some(delivery) = self.deliver_one(st, now) else { return };
            if let Some(waiter) = st.waiters.pop_front()
                && let Err(delivery) = waiter.send(delivery)
            {
                self.undeliver(st, &delivery);
            }
        }
    }

    /// Takes back a delivery its caller never saw (the `next` future was dropped).
    fn undeliver(&self, st: &mut QueueState, delivery: &Delivery) {
        let seq = delivery.info.stream_sequence;
        let Some(msg) = st.messages.get_mut(&seq) else { return };
        let Slot::InFlight { deadline } = msg.slot else { return };
        if msg.delivered != delivery.info.delivered {
            return;
        }
        msg.delivered -= 1;
        if msg.delivered == 0 {
            msg.slot = Slot::Fresh;
            st.fresh.insert(seq);
            st.release_slot();
        } else {
            msg.slot = Slot::Redeliver;
            st.redeliver.insert(seq);
        }
        st.timers.remove(&(deadline, seq));
    }

    fn add_timer(&self, st: &mut QueueState, at: Instant, seq: u64) {
        st.timers.insert((at, seq));
        if st.timer_armed.is_none_or(|armed| at < armed) {
            st.timer_armed = Some(at);
            self.wake_timer.notify_one();
        }
    }

    /// A delivery ended without an ack: redeliver, or give up after `max_deliver`.
    fn due_again(&self, st: &mut QueueState, seq: u64) {
        let Some(msg) = st.messages.get_mut(&seq) else { return };
        if self.config.max_deliver.is_some_and(|max| msg.delivered >= max) {
            msg.slot = Slot::Exhausted;
            let exhausted = Exhausted {
                sequence: seq,
                subject: msg.subject.clone(),
                payload: msg.payload.clone(),
                deliveries: msg.delivered,
            };
            st.release_slot();
            tracing::debug!(queue = %self.config.name, seq, "message exhausted max_deliver");
            st.exhausted.retain(|tx| tx.send(exhausted.clone()).is_ok());
        } else {
            msg.slot = Slot::Redeliver;
            st.redeliver.insert(seq);
        }
    }

    /// Handles every timer due at `now`; returns the next deadline.
    fn fire_timers(&self, now: Instant) -> Option<Instant> {
        let mut st = lock(&self.state);
        while let Some(&(at, seq)) = st.timers.first() {
            if at > now {
                break;
            }
            st.timers.pop_first();
            match st.messages.get(&seq).map(|m| m.slot) {
                Some(Slot::InFlight { deadline }) | Some(Slot::Delayed { until: deadline })
                    if deadline == at =>
                {
                    self.due_again(&mut st, seq);
                }
                _ => {}
            }
        }
        self.pump(&mut st, now);
        let next = st.timers.first().map(|&(at, _)| at);
        st.timer_armed = next;
        next
    }

    /// Applies an acker call if `token` names the current delivery of `seq`.
    fn settle(&self, seq: u64, token: u64, op: Settle) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let Some(msg) = st.messages.get_mut(&seq) else { return };
        if msg.token != token {
            return; // stale: the message was redelivered since
        }
        let slot = msg.slot;
        let delivered = msg.delivered;
        let timer = match slot {
            Slot::InFlight { deadline } => Some(deadline),
            Slot::Delayed { until } => Some(until),
            _ => None,
        };
        match (op, slot) {
            (Settle::Ack, Slot::InFlight { .. } | Slot::Delayed { .. } | Slot::Redeliver) => {
                if let Some(at) = timer {
                    st.timers.remove(&(at, seq));
                }
                st.messages.remove(&seq);
                st.redeliver.remove(&seq);
                st.release_slot();
            }
            (Settle::Nak(delay), Slot::InFlight { deadline }) => {
                st.timers.remove(&(deadline, seq));
                match delay.filter(|d| !d.is_zero()) {
                    None => self.due_again(&mut st, seq),
                    Some(delay) => {
                        let until = after(now, delay);
                        if let Some(msg) = st.messages.get_mut(&seq) {
                            msg.slot = Slot::Delayed { until };
                        }
                        self.add_timer(&mut st, until, seq);
                    }
                }
            }
            (Settle::Progress, Slot::InFlight { deadline }) => {
                st.timers.remove(&(deadline, seq));
                let deadline = after(now, self.ack_timeout(delivered));
                msg_slot(&mut st, seq, Slot::InFlight { deadline });
                self.add_timer(&mut st, deadline, seq);
            }
            _ => return,
        }
        self.pump(&mut st, now);
    }
}

/// `now + d`, saturating far in the future instead of overflowing.
fn after(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

fn msg_slot(st: &mut QueueState, seq: u64, slot: Slot) {
    if let Some(msg) = st.messages.get_mut(&seq) {
        msg.slot = slot;
    }
}

#[derive(Debug, Clone, Copy)]
enum Settle {
    /// Ack and term are the same on a work queue: the message is removed.
    Ack,
    Nak(Option<Duration>),
    Progress,
}

/// Sleeps until the queue's next deadline; ends when the queue is dropped.
async fn timer_loop(queue: Weak<MemQueue>, wake: Arc<Notify>) {
    loop {
        let next = match queue.upgrade() {
            Some(queue) => queue.fire_timers(Instant::now()),
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// A pending `next` call; if it is dropped after a delivery was handed to it, the delivery goes
/// back to the queue, so `next` is cancel-safe.
struct Waiter<'a> {
    queue: &'a MemQueue,
    rx: oneshot::Receiver<Delivery>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(delivery) = self.rx.try_recv() {
            let mut st = lock(&self.queue.state);
            self.queue.undeliver(&mut st, &delivery);
            self.queue.pump(&mut st, Instant::now());
        }
    }
}

impl MemQueue {
    /// Waits for the next delivery (cancel-safe).
    async fn next(&self, wait: Duration) -> Result<Option<Delivery>, BusError> {
        let rx = {
            let mut st = lock(&self.state);
            if let Some(delivery) = self.deliver_one(&mut st, Instant::now()) {
                return Ok(Some(delivery));
            }
            st.waiters.retain(|w| !w.is_closed());
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(tx);
            rx
        };
        let mut waiter = Waiter { queue: self, rx };
        match tokio::time::timeout(wait, &mut waiter.rx).await {
            Ok(Ok(delivery)) => Ok(Some(delivery)),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => {
                // A delivery may have raced the deadline: keep it rather than bounce it.
                waiter.rx.close();
                Ok(waiter.rx.try_recv().ok())
            }
        }
    }

    /// Removes the message if this consumer holds it; true when it did.
    fn remove(&self, sequence: u64) -> bool {
        let mut st = lock(&self.state);
        let Some(msg) = st.messages.remove(&sequence) else { return false };
        match msg.slot {
            Slot::Fresh => {
                st.fresh.remove(&sequence);
            }
            Slot::Redeliver => {
                st.redeliver.remove(&sequence);
                st.release_slot();
            }
            Slot::InFlight { deadline: at } | Slot::Delayed { until: at } => {
                st.timers.remove(&(at, sequence));
                st.release_slot();
            }
            Slot::Exhausted => {}
        }
        self.pump(&mut st, Instant::now());
        true
    }
}

struct MemAcker {
    queue: Weak<MemQueue>,
    seq: u64,
    token: u64,
}

impl MemAcker {
    fn settle(&self, op: Settle) -> Result<(), BusError> {
        let queue = self.queue.upgrade().ok_or(BusError::Closed)?;
        queue.settle(self.seq, self.token, op);
        Ok(())
    }
}

#[async_trait]
impl Acker for MemAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.settle(Settle::Ack)
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.settle(Settle::Nak(delay))
    }

    async fn progress(&self) -> Result<(), BusError> {
        self.settle(Settle::Progress)
    }

    async fn term(&self) -> Result<(), BusError> {
        self.settle(Settle::Ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn config(name: &str) -> QueueConfig {
        QueueConfig::new(name, vec!["t.>".into()], "workers")
    }

    async fn queue(bus: &Arc<MemBus>, config: QueueConfig) -> Arc<dyn WorkQueue> {
        bus.work_queue(config).await.unwrap()
    }

    async fn take(q: &Arc<dyn WorkQueue>) -> Delivery {
        q.next(Duration::from_secs(3600)).await.unwrap().expect("a delivery")
    }

    fn seen(d: &Delivery) -> (u64, u32) {
        (d.info.stream_sequence, d.info.delivered)
    }

    #[tokio::test(start_paused = true)]
    async fn stale_acks_are_ignored() {
        let bus = MemBus::new();
        let q = queue(&bus, QueueConfig { ack_wait: SEC, ..config("Q") }).await;
        q.publish("t.a", "a", Bytes::new()).await.unwrap();
        let d1 = take(&q).await;
        let d2 = take(&q).await; // after ack_wait
        assert_eq!((seen(&d1), seen(&d2)), ((1, 1), (1, 2)));
        d1.acker.ack().await.unwrap();
        d1.acker.term().await.unwrap();
        d1.acker.nak(None).await.unwrap();
        assert_eq!(q.pending().await.unwrap(), 1, "stale ack/term must not remove");
        assert!(q.next(Duration::from_millis(500)).await.unwrap().is_none(), "stale nak ignored");
        d2.acker.ack().await.unwrap();
        assert_eq!(q.pending().await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn ack_after_timeout_before_redelivery_counts() {
        let bus = MemBus::new();
        let q = queue(&bus, QueueConfig { ack_wait: SEC, ..config("Q") }).await;
        q.publish("t.a", "a", Bytes::new()).await.unwrap();
        let d1 = take(&q).await;
        tokio::time::sleep(2 * SEC).await;
        d1.acker.ack().await.unwrap();
        assert_eq!(q.pending().await.unwrap(), 0);
        assert!(q.next(SEC).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn next_is_cancel_safe() {
        let bus = MemBus::new();
        let q = queue(&bus, QueueConfig { max_ack_pending: 1, ..config("Q") }).await;
        let mut waiting = Box::pin(q.next(SEC * 10));
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        q.publish("t.a", "a", Bytes::new()).await.unwrap();
        drop(waiting); // the delivery was handed over but never seen
        let d = take(&q).await;
        assert_eq!(seen(&d), (1, 1), "the delivery comes back as if never made");
    }

    #[tokio::test(start_paused = true)]
    async fn next_times_out_with_none() {
        let bus = MemBus::new();
        let q = queue(&bus, config("Q")).await;
        let start = Instant::now();
        assert!(q.next(SEC).await.unwrap().is_none());
        assert_eq!(start.elapsed(), SEC);
    }

    #[tokio::test(start_paused = true)]
    async fn redeliveries_go_first_and_need_no_capacity() {
        let bus = MemBus::new();
        let q = queue(&bus, QueueConfig { max_ack_pending: 1, ..config("Q") }).await;
        for id in ["a", "b"] {
            q.publish("t.x", id, Bytes::from(id)).await.unwrap();
        }
        let d = take(&q).await;
        d.acker.nak(None).await.unwrap();
        let d = take(&q).await;
        assert_eq!(seen(&d), (1, 2));
        assert!(q.next(SEC).await.unwrap().is_none(), "cap 1 still held by seq 1");
        d.acker.ack().await.unwrap();
        assert_eq!(seen(&take(&q).await), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_max_ack_pending_means_no_limit() {
        let bus = MemBus::new();
        let q = queue(&bus, QueueConfig { max_ack_pending: 0, ..config("Q") }).await;
        for i in 0..5 {
            q.publish("t.x", &i.to_string(), Bytes::new()).await.unwrap();
        }
        for _ in 0..5 {
            take(&q).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_repeats_its_last_entry_and_drives_progress() {
        let bus = MemBus::new();
        let cfg = QueueConfig {
            ack_wait: SEC * 100,
            backoff: vec![SEC, SEC * 3],
            max_deliver: Some(4),
            ..config("Q")
        };
        let q = queue(&bus, cfg).await;
        q.publish("t.a", "a", Bytes::new()).await.unwrap();
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..4 {
            let d = take(&q).await;
            at.push((d.info.delivered, start.elapsed().as_secs()));
        }
        assert_eq!(at, [(1, 0), (2, 1), (3, 4), (4, 7)]);
        assert!(q.next(SEC * 10).await.unwrap().is_none(), "max_deliver reached");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_resets_to_the_delivery_timeout() {
        let bus = MemBus::new();
        let q = queue(&bus, QueueConfig { ack_wait: SEC * 2, ..config("Q") }).await;
        q.publish("t.a", "a", Bytes::new()).await.unwrap();
        let start = Instant::now();
        let d = take(&q).await;
        tokio::time::sleep(SEC).await;
        d.acker.progress().await.unwrap();
        let again = take(&q).await;
        assert_eq!((seen(&again), start.elapsed()), ((1, 2), SEC * 3));
        d.acker.progress().await.unwrap(); // stale: ignored
        let third = take(&q).await;
        assert_eq!((seen(&third), start.elapsed()), ((1, 3), SEC * 5));
    }

    #[tokio::test(start_paused = true)]
    async fn nak_on_last_delivery_exhausts_and_reports_to_every_receiver() {
        let bus = MemBus::new();
        let q = queue(&bus, QueueConfig { max_deliver: Some(1), ..config("Q") }).await;
        let mut early_a = q.exhausted().await.unwrap();
        let mut early_b = q.exhausted().await.unwrap();
        q.publish("t.a", "a", Bytes::from_static(b"p")).await.unwrap();
        take(&q).await.acker.nak(None).await.unwrap();
        let mut late = q.exhausted().await.unwrap();
        let expect = Exhausted {
            sequence: 1,
            subject: "t.a".into(),
            payload: Bytes::from_static(b"p"),
            deliveries: 1,
        };
        assert_eq!(early_a.try_recv().ok(), Some(expect.clone()));
        assert_eq!(early_b.try_recv().ok(), Some(expect));
        assert!(late.try_recv().is_err(), "a receiver taken afterwards gets nothing");
        assert_eq!(q.pending().await.unwrap(), 1);
        // An exhausted message frees its max_ack_pending slot and ignores its acker.
        q.remove(1).await.unwrap();
        q.remove(1).await.unwrap();
        assert_eq!(q.pending().await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_frees_capacity() {
        let bus = MemBus::new();
        let cfg =
            QueueConfig { max_deliver: Some(1), max_ack_pending: 1, ack_wait: SEC, ..config("Q") };
        let q = queue(&bus, cfg).await;
        q.publish("t.a", "a", Bytes::new()).await.unwrap();
        q.publish("t.b", "b", Bytes::new()).await.unwrap();
        let _poison = take(&q).await;
        let d = take(&q).await; // after seq 1 timed out and was exhausted
        assert_eq!(seen(&d), (2, 1));
        assert_eq!(q.pending().await.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dedup_forgets_ids_after_the_window() {
        let bus = MemBus::new();
        let q = queue(&bus, QueueConfig { duplicate_window: SEC * 10, ..config("Q") }).await;
        let check = |ack: PublishAck| (ack.sequence, ack.duplicate);
        assert_eq!(check(q.publish("t.a", "id", Bytes::new()).await.unwrap()), (1, false));
        tokio::time::sleep(SEC * 9).await;
        assert_eq!(check(q.publish("t.a", "id", Bytes::new()).await.unwrap()), (1, true));
        tokio::time::sleep(SEC * 2).await;
        assert_eq!(check(q.publish("t.a", "id", Bytes::new()).await.unwrap()), (2, false));
        // No id, no de-duplication.
        assert_eq!(check(q.publish("t.a", "", Bytes::new()).await.unwrap()), (3, false));
        assert_eq!(check(q.publish("t.a", "", Bytes::new()).await.unwrap()), (4, false));
    }

    #[tokio::test(start_paused = true)]
    async fn huge_durations_do_not_overflow() {
        let bus = MemBus::new();
        let cfg =
            QueueConfig { ack_wait: Duration::MAX, duplicate_window: Duration::MAX, ..config("Q") };
        let q = queue(&bus, cfg).await;
        q.publish("t.a", "a", Bytes::new()).await.unwrap();
        let d = take(&q).await;
        d.acker.progress().await.unwrap();
        d.acker.nak(Some(Duration::MAX)).await.unwrap();
        assert!(q.next(SEC).await.unwrap().is_none());
        assert!(q.publish("t.a", "a", Bytes::new()).await.unwrap().duplicate);
    }

    #[tokio::test(start_paused = true)]
    async fn same_name_opens_the_same_queue() {
        let bus = MemBus::new();
        let a = queue(&bus, config("Q")).await;
        let b = queue(&bus, QueueConfig { ack_wait: SEC, ..config("Q") }).await;
        let c = queue(&bus, QueueConfig::new("R", vec!["u.>".into()], "w")).await;
        a.publish("t.a", "a", Bytes::new()).await.unwrap();
        assert_eq!((b.pending().await.unwrap(), c.pending().await.unwrap()), (1, 0));
        let d = take(&b).await;
        assert!(q_next_none(&a).await, "one consumer: a sees b's delivery as taken");
        tokio::time::sleep(SEC * 2).await;
        assert!(q_next_none(&a).await, "ack_wait is a's 30 s, not b's 1 s");
        d.acker.ack().await.unwrap();
        assert_eq!(a.pending().await.unwrap(), 0);
    }

    async fn q_next_none(q: &Arc<dyn WorkQueue>) -> bool {
        q.next(Duration::from_millis(10)).await.unwrap().is_none()
    }

    fn pool(pool: &str) -> QueueConfig {
        QueueConfig {
            filter: Some(format!("t.{pool}")),
            ..QueueConfig::new("S", vec!["t.>".into()], pool)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn filtered_consumers_split_a_stream() {
        let bus = MemBus::new();
        let cpu = queue(&bus, pool("cpu")).await;
        cpu.publish("t.gpu", "g1", Bytes::from_static(b"g1")).await.unwrap();
        cpu.publish("t.cpu", "c1", Bytes::from_static(b"c1")).await.unwrap();
        bus.publish("t.gpu", Bytes::from_static(b"g2")).await.unwrap();
        assert_eq!(cpu.pending().await.unwrap(), 3, "the stream holds every pool's messages");
        let d = take(&cpu).await;
        assert_eq!((seen(&d), d.payload.as_ref()), ((2, 1), &b"c1"[..]));
        assert!(q_next_none(&cpu).await, "gpu messages are not cpu's");
        // A consumer opened later takes what waited for it, in order.
        let gpu = queue(&bus, pool("gpu")).await;
        let got: Vec<_> = [take(&gpu).await, take(&gpu).await].iter().map(seen).collect();
        assert_eq!(got, [(1, 1), (3, 1)]);
        // Overlapping filters are refused, as on JetStream (10100 and 10099).
        let refuse = |cfg: QueueConfig| {
            let bus = bus.clone();
            async move { bus.work_queue(cfg).await.err() }
        };
        let all = QueueConfig::new("S", vec!["t.>".into()], "all");
        assert!(refuse(all).await.is_some(), "an unfiltered consumer overlaps every filter");
        let star = QueueConfig { filter: Some("t.*".into()), ..pool("star") };
        assert!(refuse(star).await.is_some(), "`t.*` overlaps `t.cpu`");
        let foreign = QueueConfig { filter: Some("u.x".into()), ..pool("u") };
        assert!(refuse(foreign).await.is_some(), "a filter outside the stream takes nothing");
        let other = QueueConfig { filter: Some("t.io".into()), ..pool("io") };
        assert!(refuse(other).await.is_none(), "a disjoint filter is fine");
        d.acker.ack().await.unwrap();
        remove_all(&gpu, &[1, 3]).await;
        assert_eq!(cpu.pending().await.unwrap(), 0);
    }

    async fn remove_all(q: &Arc<dyn WorkQueue>, seqs: &[u64]) {
        for &seq in seqs {
            q.remove(seq).await.unwrap();
        }
    }

    #[tokio::test]
    async fn core_and_queue_see_each_other_like_nats() {
        let bus = MemBus::new();
        let q = queue(&bus, config("Q")).await;
        let mut watch = bus.subscribe("t.>").await.unwrap();
        bus.publish("t.core", Bytes::from_static(b"c")).await.unwrap();
        q.publish("t.js", "id", Bytes::from_static(b"j")).await.unwrap();
        let d = take(&q).await;
        assert_eq!((d.subject.as_str(), d.payload.as_ref()), ("t.core", &b"c"[..]));
        assert_eq!(watch.try_next().map(|m| m.subject), Some("t.core".into()));
        assert_eq!(watch.try_next().map(|m| m.subject), Some("t.js".into()));
        assert_eq!(q.pending().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn queue_groups_round_robin_exactly() {
        let bus = MemBus::new();
        let mut a = bus.queue_subscribe("s.*", "g").await.unwrap();
        let mut b = bus.queue_subscribe("s.>", "g").await.unwrap();
        for _ in 0..10 {
            bus.publish("s.x", Bytes::new()).await.unwrap();
        }
        let count = |sub: &mut Subscription| std::iter::from_fn(|| sub.try_next()).count();
        assert_eq!((count(&mut a), count(&mut b)), (5, 5));
    }

    #[tokio::test]
    async fn dropped_subscriptions_are_removed() {
        let bus = MemBus::new();
        let a = bus.subscribe("x").await.unwrap();
        let _b = bus.queue_subscribe("x", "g").await.unwrap();
        assert_eq!(bus.subscription_count(), 2);
        drop(a);
        assert_eq!(bus.subscription_count(), 1);
        let mut replies = bus.subscribe("_INBOX.>").await.unwrap();
        let got = bus.request("x", Bytes::new(), Duration::from_millis(10)).await;
        assert!(matches!(got, Err(BusError::Timeout { .. })), "{got:?}");
        assert!(replies.try_next().is_none(), "the request went to `x`, not to the inbox");
        assert_eq!(bus.subscription_count(), 2, "the request's inbox is gone");
    }

    #[tokio::test]
    async fn subscriptions_end_when_the_bus_is_dropped() {
        let bus = MemBus::new();
        let mut sub = bus.subscribe("x").await.unwrap();
        drop(bus);
        assert!(sub.next().await.is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_timer_task_ends_with_the_queue() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let bus = MemBus::new();
        let q = queue(&bus, QueueConfig { ack_wait: SEC * 3600, ..config("Q") }).await;
        q.publish("t.a", "a", Bytes::new()).await.unwrap();
        let d = take(&q).await; // arms a one-hour timer
        assert_eq!(metrics.num_alive_tasks(), before + 1);
        drop((bus, q));
        assert!(matches!(d.acker.ack().await, Err(BusError::Closed)));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), before, "timer task leaked");
    }

    #[tokio::test]
    async fn thousands_of_tasks_flow_quickly() {
        let bus = MemBus::new();
        let q = queue(&bus, QueueConfig { max_ack_pending: 64, ..config("Q") }).await;
        let start = std::time::Instant::now();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    while let Some(d) = q.next(Duration::from_millis(200)).await.unwrap() {
                        d.acker.ack().await.unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for i in 0..5000 {
            q.publish("t.x", &i.to_string(), Bytes::new()).await.unwrap();
        }
        let mut total = 0;
        for w in workers {
            total += w.await.unwrap();
        }
        assert_eq!(total, 5000);
        assert_eq!(q.pending().await.unwrap(), 0);
        // Generous: 5000 round trips take milliseconds; only polling would make this slow.
        assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    }
}
