//! `orchestra-bus`: how the layers talk.
//!
//! [`Bus`] is the one transport interface: core pub/sub with NATS subject wildcards, queue
//! groups, request/reply, and JetStream-like work queues ([`WorkQueue`]). [`MemBus`] implements it
//! in-process for the embedded mode; [`NatsBus`] implements it over a nats-server (JetStream for
//! work queues) for the distributed mode. Messages always cross a bus as bytes, exactly as they
//! would on NATS.
//!
//! [`conformance`] is a test suite any `Bus` implementation runs unchanged.
//!
//! Architecture invariant: this crate is the only place that knows how bytes move between
//! processes; the layers see only this trait.

#![forbid(unsafe_code)]

pub mod conformance;
mod mem;
mod nats;
pub mod subject;

pub use mem::MemBus;
pub use nats::{NatsBus, NatsOptions};

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Errors a bus can report. Timeouts and missing responders are distinct on purpose: the
/// first means "someone may be slow", the second "nobody is listening".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("no responders on `{subject}`")]
    NoResponders { subject: String },
    #[error("request on `{subject}` timed out after {timeout:?}")]
    Timeout { subject: String, timeout: Duration },
    #[error("invalid subject `{subject}`: {reason}")]
    InvalidSubject { subject: String, reason: String },
    #[error("the bus is closed")]
    Closed,
    #[error("work queue `{queue}`: {reason}")]
    Queue { queue: String, reason: String },
    #[error("transport error: {0}")]
    Transport(String),
}

/// A core message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    /// Where to send a reply, for requests.
    pub reply: Option<String>,
    pub payload: Bytes,
}

/// A stream of core messages for one subscription. Dropping it unsubscribes.
pub struct Subscription {
    rx: tokio::sync::mpsc::UnboundedReceiver<Message>,
    _guard: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// Builds a subscription from a channel; `guard` is dropped (unsubscribing) with it.
    pub fn new(
        rx: tokio::sync::mpsc::UnboundedReceiver<Message>,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        Self { rx, _guard: guard }
    }

    /// The next message, or `None` once the bus is closed.
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// A message if one is already waiting.
    pub fn try_next(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }
}

/// The transport between layers.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Fire-and-forget publish to every matching subscriber (one per queue group).
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError>;

    /// Subscribes to a subject pattern (`*` one token, `>` one or more trailing tokens).
    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError>;

    /// Subscribes as a member of a queue group: each message goes to one member of the group.
    async fn queue_subscribe(&self, pattern: &str, group: &str) -> Result<Subscription, BusError>;

    /// Sends a request and waits for the first reply.
    ///
    /// Fails with [`BusError::NoResponders`] at once when nobody subscribes to `subject`, and
    /// with [`BusError::Timeout`] when nobody answered in time.
    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError>;

    /// Opens (creating if needed) a durable work queue.
    async fn work_queue(&self, config: QueueConfig) -> Result<Arc<dyn WorkQueue>, BusError>;

    /// Waits until everything published so far has been handed to the transport.
    async fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Stores `data` under `key` in the object store `bucket` (created if needed), replacing
    /// what was there. Results of remote workers travel this way (a JetStream object store
    /// on NATS).
    async fn object_put(&self, bucket: &str, key: &str, data: Bytes) -> Result<(), BusError>;

    /// The object stored under `key` in `bucket`; `None` when there is none.
    async fn object_get(&self, bucket: &str, key: &str) -> Result<Option<Bytes>, BusError>;
}

/// A work queue: the JetStream work-queue stream + one durable pull consumer (of possibly
/// several on the stream, one per worker pool, told apart by their filters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Stream name (`ORCHESTRA_TASKS`).
    pub name: String,
    /// Subjects the stream captures (may use wildcards).
    pub subjects: Vec<String>,
    /// Durable consumer name shared by every worker of a pool.
    pub consumer: String,
    /// The subjects this consumer takes (`None`: all the stream's). On a work-queue stream the
    /// consumers' filters must not overlap, and at most one consumer may go unfiltered.
    pub filter: Option<String>,
    /// Redeliver a message not acked (nor heartbeated) within this time.
    pub ack_wait: Duration,
    /// Deliveries before a message is given up (`None` = unlimited).
    pub max_deliver: Option<u32>,
    /// Redelivery delays after a timeout, per delivery; overrides `ack_wait` like JetStream.
    pub backoff: Vec<Duration>,
    /// Most deliveries outstanding (not acked) at once.
    pub max_ack_pending: usize,
    /// Window for message-id de-duplication.
    pub duplicate_window: Duration,
}

impl QueueConfig {
    pub fn new(
        name: impl Into<String>,
        subjects: Vec<String>,
        consumer: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            subjects,
            consumer: consumer.into(),
            filter: None,
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            backoff: Vec::new(),
            max_ack_pending: 1000,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// What the queue answered to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    pub sequence: u64,
    /// True when the message id was seen inside the duplicate window; nothing was stored.
    pub duplicate: bool,
}

#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Stores a message; `msg_id` de-duplicates within the window.
    async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<PublishAck, BusError>;

    /// Waits for the next delivery (up to `max_ack_pending` outstanding across all callers).
    /// Returns `Ok(None)` if nothing arrived within `wait`.
    async fn next(&self, wait: Duration) -> Result<Option<Delivery>, BusError>;

    /// Messages stored in the stream (for every consumer) and not yet acked or terminated.
    async fn pending(&self) -> Result<u64, BusError>;

    /// Deliveries that exhausted `max_deliver` (JetStream's MAX_DELIVERIES advisory). Each one is
    /// reported once to every receiver taken before it happened. An exhausted message stays
    /// stored until it is removed by sequence, as on JetStream.
    async fn exhausted(&self) -> Result<tokio::sync::mpsc::UnboundedReceiver<Exhausted>, BusError>;

    /// Removes a stored message by sequence (the DLQ handler's `Term`).
    async fn remove(&self, sequence: u64) -> Result<(), BusError>;
}

/// A message that was delivered `max_deliver` times without being acked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    pub sequence: u64,
    pub subject: String,
    pub payload: Bytes,
    pub deliveries: u32,
}

/// Delivery metadata, as JetStream reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryInfo {
    pub stream_sequence: u64,
    /// How many times this message has been delivered, this one included (1-based).
    pub delivered: u32,
}

/// Acknowledges one delivery. Every method consumes or borrows so that the handle can move
/// into the task that supervises the work.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Done: the message is removed.
    async fn ack(&self) -> Result<(), BusError>;
    /// Redeliver, after `delay` if given.
    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError>;
    /// Still working: resets the ack-wait timer.
    async fn progress(&self) -> Result<(), BusError>;
    /// Never redeliver: the message is removed.
    async fn term(&self) -> Result<(), BusError>;
}

pub struct Delivery {
    pub subject: String,
    pub payload: Bytes,
    pub info: DeliveryInfo,
    pub acker: Arc<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.subject)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}
