//! [`NatsBus`]: the [`Bus`] over a real nats-server, with async-nats.
//!
//! Core publish/subscribe/queue groups/request map to core NATS. A [`WorkQueue`] is a JetStream
//! stream with `WorkQueue` retention and file storage plus one durable pull consumer with
//! explicit acks; every opener of the same queue shares that consumer. Subjects are checked with
//! [`crate::subject`] before they reach the client, so errors match [`crate::MemBus`].
//!
//! Invariants: dropping a [`Subscription`] queues its UNSUB before the drop returns (async-nats
//! sends it with `try_send`), so a later [`Bus::flush`] is ordered after the unsubscribe.
//! `next(wait)` is one pull request for one message that the server itself expires after
//! `wait`, so a message is not handed to a caller that already stopped waiting (only if the
//! server's expiry reply is lost for 2 s more does `next` give up on its own).

use crate::subject;
use crate::{
    Acker, Bus, BusError, Delivery, DeliveryInfo, Exhausted, Message, PublishAck, QueueConfig,
    Subscription, WorkQueue,
};
use async_nats::jetstream::{
    self, AckKind, ErrorCode,
    consumer::{AckPolicy, PullConsumer, pull},
    context::PublishErrorKind,
    message::PublishMessage,
    stream::{self, DeleteMessageErrorKind},
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::mpsc;

/// The shortest pull-request expiry sent to the server.
const MIN_EXPIRES: Duration = Duration::from_millis(10);
/// Extra time `next` gives the server to answer an expired pull request before giving up.
const PULL_GRACE: Duration = Duration::from_secs(2);

/// [`Bus`] over a nats-server (JetStream enabled for work queues).
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus").finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`). Returns at once: connecting and
    /// reconnecting go on in the background, and commands wait for the connection.
    pub async fn connect(url: &str) -> Result<Arc<Self>, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("orchestra")
            .retry_on_initial_connect()
            .ping_interval(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| BusError::Transport(format!("connecting to `{url}`: {e}")))?;
        Ok(Self::from_client(client))
    }

    /// Wraps an already configured client.
    pub fn from_client(client: async_nats::Client) -> Arc<Self> {
        let js = jetstream::new(client.clone());
        Arc::new(Self { client, js })
    }

    /// The underlying client (for connection state and events).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn forward(subscriber: async_nats::Subscriber) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let cell = Arc::new(Mutex::new(Some(subscriber)));
        let polled = cell.clone();
        let task = tokio::spawn(async move {
            loop {
                let next = poll_fn(|cx| match lock(&polled).as_mut() {
                    Some(subscriber) => subscriber.poll_next_unpin(cx),
                    None => Poll::Ready(None),
                })
                .await;
                let Some(message) = next else { break };
                let message = Message {
                    subject: message.subject.to_string(),
                    reply: message.reply.map(|r| r.to_string()),
                    payload: message.payload,
                };
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
        let guard = Unsubscribe { subscriber: cell, task: task.abort_handle() };
        Subscription::new(rx, Some(Box::new(guard)))
    }
}

/// Dropped with a [`Subscription`]: drops the async-nats subscriber (which sends UNSUB at once)
/// and stops the forwarding task.
struct Unsubscribe {
    subscriber: Arc<Mutex<Option<async_nats::Subscriber>>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        drop(lock(&self.subscriber).take());
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn transport(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Transport(format!("{what}: {e}"))
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        subject::validate_subject(subject)?;
        self.client
            .publish(subject.to_owned(), payload)
            .await
            .map_err(|e| transport(&format!("publishing to `{subject}`"), e))
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        subject::validate_pattern(pattern)?;
        let subscriber = self
            .client
            .subscribe(pattern.to_owned())
            .await
            .map_err(|e| transport(&format!("subscribing to `{pattern}`"), e))?;
        Ok(Self::forward(subscriber))
    }

    async fn queue_subscribe(&self, pattern: &str, group: &str) -> Result<Subscription, BusError> {
        subject::validate_pattern(pattern)?;
        if group.is_empty() || group.chars().any(char::is_whitespace) {
            return Err(BusError::InvalidSubject {
                subject: pattern.to_owned(),
                reason: format!("invalid queue group `{group}`"),
            });
        }
        let subscriber = self
            .client
            .queue_subscribe(pattern.to_owned(), group.to_owned())
            .await
            .map_err(|e| transport(&format!("subscribing to `{pattern}` in `{group}`"), e))?;
        Ok(Self::forward(subscriber))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        use async_nats::RequestErrorKind;
        subject::validate_subject(subject)?;
        let request = async_nats::Request::new().payload(payload).timeout(Some(timeout));
        match self.client.send_request(subject.to_owned(), request).await {
            Ok(reply) => Ok(reply.payload),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => {
                    BusError::NoResponders { subject: subject.to_owned() }
                }
                RequestErrorKind::TimedOut => {
                    BusError::Timeout { subject: subject.to_owned(), timeout }
                }
                _ => transport(&format!("request on `{subject}`"), e),
            }),
        }
    }

    /// Creates the stream and the durable consumer if they do not exist; an existing stream or
    /// consumer is used as it is, whatever `config` says.
    async fn work_queue(&self, config: QueueConfig) -> Result<Arc<dyn WorkQueue>, BusError> {
        let queue_error = |reason: String| BusError::Queue { queue: config.name.clone(), reason };
        validate_name(&config.name)
            .map_err(|r| queue_error(format!("invalid stream name: {r}")))?;
        validate_name(&config.consumer).map_err(|r| {
            queue_error(format!("invalid consumer name `{}`: {r}", config.consumer))
        })?;
        if config.subjects.is_empty() {
            return Err(queue_error("no subjects".to_owned()));
        }
        for pattern in &config.subjects {
            subject::validate_pattern(pattern)?;
        }
        let stream_config = stream::Config {
            name: config.name.clone(),
            subjects: config.subjects.clone(),
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: config.duplicate_window,
            ..Default::default()
        };
        let stream = match self.js.get_or_create_stream(stream_config).await {
            Ok(stream) => stream,
            // Another opener may have created it concurrently.
            Err(create) => self
                .js
                .get_stream(&config.name)
                .await
                .map_err(|_| queue_error(format!("creating the stream: {create}")))?,
        };
        let consumer_config = pull::Config {
            durable_name: Some(config.consumer.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver.map_or(-1, i64::from),
            backoff: config.backoff.clone(),
            max_ack_pending: match config.max_ack_pending {
                0 => -1,
                n => i64::try_from(n).unwrap_or(i64::MAX),
            },
            ..Default::default()
        };
        let consumer: PullConsumer =
            match stream.get_or_create_consumer(&config.consumer, consumer_config).await {
                Ok(consumer) => consumer,
                Err(create) => stream
                    .get_consumer(&config.consumer)
                    .await
                    .map_err(|_| queue_error(format!("creating the consumer: {create}")))?,
            };
        Ok(Arc::new(NatsQueue {
            client: self.client.clone(),
            js: self.js.clone(),
            stream,
            consumer,
            config,
        }))
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.client.flush().await.map_err(|e| transport("flush", e))
    }
}

/// JetStream stream and consumer names: non-empty, no whitespace, `.`, `*`, `>`, `/` or `\`.
fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.chars().any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\')) {
        return Err("must not contain whitespace, `.`, `*`, `>`, `/` or `\\`");
    }
    Ok(())
}

/// One opener's handle on a work-queue stream and its durable pull consumer.
struct NatsQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    consumer: PullConsumer,
    config: QueueConfig,
}

impl NatsQueue {
    fn error(&self, reason: String) -> BusError {
        BusError::Queue { queue: self.config.name.clone(), reason }
    }
}

/// The fields of a MAX_DELIVERIES advisory that orchestra uses.
#[derive(serde::Deserialize)]
struct MaxDeliveriesAdvisory {
    stream_seq: u64,
    deliveries: u32,
}

#[async_trait]
impl WorkQueue for NatsQueue {
    async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: Bytes,
    ) -> Result<PublishAck, BusError> {
        subject::validate_subject(subject)?;
        if !self.config.subjects.iter().any(|pattern| subject::matches(pattern, subject)) {
            return Err(self.error(format!("subject `{subject}` is not captured by the stream")));
        }
        let mut message =
            PublishMessage::build().payload(payload).expected_stream(&self.config.name);
        if !msg_id.is_empty() {
            message = message.message_id(msg_id);
        }
        let ack = self
            .js
            .send_publish(subject.to_owned(), message)
            .await
            .map_err(|e| self.error(format!("publishing to `{subject}`: {e}")))?
            .await
            .map_err(|e| match e.kind() {
                PublishErrorKind::StreamNotFound => {
                    self.error(format!("no stream captures `{subject}`"))
                }
                _ => self.error(format!("publishing to `{subject}`: {e}")),
            })?;
        Ok(PublishAck { sequence: ack.sequence, duplicate: ack.duplicate })
    }

    async fn next(&self, wait: Duration) -> Result<Option<Delivery>, BusError> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(1)
            .expires(wait.max(MIN_EXPIRES))
            .messages()
            .await
            .map_err(|e| self.error(format!("pull request: {e}")))?;
        // The server ends the request after `wait`; the grace only guards against a lost reply.
        let message = match tokio::time::timeout(wait + PULL_GRACE, batch.next()).await {
            Err(_) | Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(self.error(format!("pull request: {e}"))),
            Ok(Some(Ok(message))) => message,
        };
        let info = message.info().map_err(|e| self.error(format!("delivery metadata: {e}")))?;
        let info = DeliveryInfo {
            stream_sequence: info.stream_sequence,
            delivered: u32::try_from(info.delivered).unwrap_or(u32::MAX),
        };
        let (message, acker) = message.split();
        Ok(Some(Delivery {
            subject: message.subject.to_string(),
            payload: message.payload,
            info,
            acker: Arc::new(NatsAcker { acker, queue: self.config.name.clone() }),
        }))
    }

    async fn pending(&self) -> Result<u64, BusError> {
        let info =
            self.stream.get_info().await.map_err(|e| self.error(format!("stream info: {e}")))?;
        Ok(info.state.messages)
    }

    async fn exhausted(&self) -> Result<mpsc::UnboundedReceiver<Exhausted>, BusError> {
        let advisory = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
            self.config.name, self.config.consumer
        );
        let mut subscriber = self
            .client
            .subscribe(advisory.clone())
            .await
            .map_err(|e| self.error(format!("subscribing to `{advisory}`: {e}")))?;
        self.client.flush().await.map_err(|e| self.error(format!("flush: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = self.stream.clone();
        let queue = self.config.name.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = tx.closed() => break,
                    message = subscriber.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                };
                let advisory: MaxDeliveriesAdvisory = match serde_json::from_slice(&message.payload)
                {
                    Ok(advisory) => advisory,
                    Err(e) => {
                        tracing::warn!(%queue, error = %e, "unreadable MAX_DELIVERIES advisory");
                        continue;
                    }
                };
                let stored = match stream.get_raw_message(advisory.stream_seq).await {
                    Ok(stored) => stored,
                    Err(e) => {
                        tracing::warn!(
                            %queue, sequence = advisory.stream_seq, error = %e,
                            "exhausted message could not be read"
                        );
                        continue;
                    }
                };
                let report = Exhausted {
                    sequence: advisory.stream_seq,
                    subject: stored.subject.to_string(),
                    payload: stored.payload,
                    deliveries: advisory.deliveries,
                };
                if tx.send(report).is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    /// Removing a sequence that is not stored (any more) succeeds, as on the in-process bus.
    async fn remove(&self, sequence: u64) -> Result<(), BusError> {
        match self.stream.delete_message(sequence).await {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                DeleteMessageErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
                {
                    Ok(())
                }
                _ => Err(self.error(format!("removing sequence {sequence}: {e}"))),
            },
        }
    }
}

struct NatsAcker {
    acker: jetstream::message::Acker,
    queue: String,
}

impl NatsAcker {
    fn error(&self, what: &str, e: impl std::fmt::Display) -> BusError {
        BusError::Queue { queue: self.queue.clone(), reason: format!("{what}: {e}") }
    }
}

#[async_trait]
impl Acker for NatsAcker {
    /// Waits for the server to confirm the ack.
    async fn ack(&self) -> Result<(), BusError> {
        self.acker.double_ack().await.map_err(|e| self.error("ack", e))
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.acker.ack_with(AckKind::Nak(delay)).await.map_err(|e| self.error("nak", e))
    }

    async fn progress(&self) -> Result<(), BusError> {
        self.acker.ack_with(AckKind::Progress).await.map_err(|e| self.error("progress", e))
    }

    /// Waits for the server to confirm the term.
    async fn term(&self) -> Result<(), BusError> {
        self.acker.double_ack_with(AckKind::Term).await.map_err(|e| self.error("term", e))
    }
}
