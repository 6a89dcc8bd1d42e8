//! [`NatsBus`]: the [`Bus`] over a real nats-server, with async-nats.
//!
//! Core publish/subscribe/queue groups/request map to core NATS. A [`WorkQueue`] is a JetStream
//! stream with `WorkQueue` retention and file storage plus one durable pull consumer with
//! explicit acks; every opener of the same queue shares that consumer. An object-store bucket is
//! a JetStream object store (stream `OBJ_<bucket>`, file storage), created by the first put and
//! cached per bus. Subjects are checked with [`crate::subject`] before they reach the client, so
//! errors match [`crate::MemBus`].
//!
//! Invariants: dropping a [`Subscription`] queues its UNSUB before the drop returns (async-nats
//! sends it with `try_send`), so a later [`Bus::flush`] is ordered after the unsubscribe.
//! `next(wait)` is one pull request for one message that the server itself expires after
//! `wait`, so a message is not handed to a caller that already stopped waiting (only if the
//! server's expiry reply is lost for 2 s more does `next` give up on its own). Connecting fails
//! at once when the first attempt fails; once connected, the client reconnects forever.

use crate::subject;
use crate::{
    Acker, Bus, BusError, Delivery, DeliveryInfo, Exhausted, Message, PublishAck, QueueConfig,
    Subscription, WorkQueue,
};
use async_nats::jetstream::{
    self, AckKind, ErrorCode,
    consumer::{AckPolicy, PullConsumer, pull},
    context::PublishErrorKind,
    context::{GetStreamError, GetStreamErrorKind, ObjectStoreError, ObjectStoreErrorKind},
    message::PublishMessage,
    object_store::{self, GetErrorKind, ObjectStore},
    stream::{self, DeleteMessageErrorKind},
};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::collections::HashMap;
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// The shortest pull-request expiry sent to the server.
const MIN_EXPIRES: Duration = Duration::from_millis(10);
/// Extra time `next` gives the server to answer an expired pull request before giving up.
const PULL_GRACE: Duration = Duration::from_secs(2);
/// Longest wait for the next chunk of an object being read.
const OBJECT_IDLE: Duration = Duration::from_secs(10);
/// Client name sent to the server when [`NatsOptions::name`] is empty.
const DEFAULT_NAME: &str = "orchestra";

/// How to connect and authenticate to a nats-server. Every field is optional; the default is
/// an anonymous plain-text connection named `orchestra`. `Debug` hides the password and token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsOptions {
    /// Client name shown by the server (`orchestra` when empty).
    pub name: String,
    /// User name; needs `password`.
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// A file holding an nkey seed (`SU…`), e.g. as written by `nk -gen user`.
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// PEM file with the CA certificates that sign the server's certificate. Implies TLS.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, with `tls_key`, for servers that verify clients. Implies TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse a connection without TLS.
    pub tls_required: bool,
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |secret: &Option<String>| secret.as_ref().map(|_| "<hidden>");
        f.debug_struct("NatsOptions")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("nkey_file", &self.nkey_file)
            .field("creds_file", &self.creds_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

impl NatsOptions {
    /// The async-nats options these stand for; `Err` names the option that is unusable.
    async fn connect_options(&self) -> Result<async_nats::ConnectOptions, String> {
        let name = if self.name.is_empty() { DEFAULT_NAME } else { self.name.as_str() };
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .ping_interval(Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!(%event, "nats connection"),
                    _ => tracing::warn!(%event, "nats connection"),
                }
            });
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                options = options.user_and_password(user.clone(), password.clone());
            }
            (None, None) => {}
            (Some(_), None) => return Err("a user needs a password".to_owned()),
            (None, Some(_)) => return Err("a password needs a user".to_owned()),
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &self.nkey_file {
            options = options.nkey(read_nkey_seed(path)?);
        }
        if let Some(path) = &self.creds_file {
            check_file("credentials file", path)?;
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| format!("credentials file `{}`: {e}", path.display()))?;
        }
        if let Some(path) = &self.tls_ca {
            check_file("TLS CA file", path)?;
            options = options.add_root_certificates(path.clone());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                check_file("TLS certificate", cert)?;
                check_file("TLS key", key)?;
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            (Some(_), None) => return Err("a TLS client certificate needs a key".to_owned()),
            (None, Some(_)) => return Err("a TLS key needs a client certificate".to_owned()),
        }
        let tls = self.tls_required || self.tls_ca.is_some() || self.tls_cert.is_some();
        Ok(options.require_tls(tls))
    }
}

/// The seed in an nkey file (see [`nkey_seed`]).
fn read_nkey_seed(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading nkey file `{}`: {e}", path.display()))?;
    nkey_seed(&text).map(str::to_owned).ok_or_else(|| {
        format!("nkey file `{}` holds no seed (a line starting with `S`)", path.display())
    })
}

/// The first line that looks like an nkey seed (`S` and letters or digits only), trimmed;
/// comments, blank lines and `-----BEGIN …` decoration are skipped.
fn nkey_seed(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|line| line.starts_with('S') && line.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn check_file(what: &str, path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(format!("{what} `{}` is not a file", path.display())),
        Err(e) => Err(format!("{what} `{}`: {e}", path.display())),
    }
}

/// [`Bus`] over a nats-server (JetStream enabled for work queues).
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    /// Object-store buckets known to exist, by name.
    stores: Mutex<HashMap<String, ObjectStore>>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus").finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`) anonymously; see
    /// [`NatsBus::connect_with`].
    pub async fn connect(url: &str) -> Result<Arc<Self>, BusError> {
        Self::connect_with(url, &NatsOptions::default()).await.map(Arc::new)
    }

    /// Connects to `url` with `opts`. Fails at once (`cannot connect to …`) when the server
    /// cannot be reached or refuses the credentials; once connected, reconnects without limit,
    /// and commands wait for the connection.
    pub async fn connect_with(url: &str, opts: &NatsOptions) -> Result<NatsBus, BusError> {
        let fail =
            |reason: String| BusError::Transport(format!("cannot connect to {url}: {reason}"));
        let options = opts.connect_options().await.map_err(fail)?;
        let client = options.connect(url).await.map_err(|e| {
            fail(match e.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation => {
                    "authorization violation (the server refused the credentials)".to_owned()
                }
                _ => e.to_string(),
            })
        })?;
        Ok(Self::new(client))
    }

    /// Wraps an already configured client.
    pub fn from_client(client: async_nats::Client) -> Arc<Self> {
        Arc::new(Self::new(client))
    }

    fn new(client: async_nats::Client) -> Self {
        let js = jetstream::new(client.clone());
        Self { client, js, stores: Mutex::new(HashMap::new()) }
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

    /// Creates the stream and the durable consumer (filtered by `config.filter`) if they do not
    /// exist; an existing stream or consumer is used as it is, whatever `config` says. The
    /// server refuses a consumer whose filter overlaps another's on the stream.
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
        if let Some(filter) = &config.filter {
            subject::validate_pattern(filter)?;
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
            filter_subject: config.filter.clone().unwrap_or_default(),
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

    /// Puts the object in chunks, each bounded by the JetStream publish timeout; a new
    /// version replaces the old one, whose chunks are purged.
    async fn object_put(&self, bucket: &str, key: &str, data: Bytes) -> Result<(), BusError> {
        crate::subject::validate_object(bucket, key)?;
        let store = self.object_store(bucket, true).await?.ok_or_else(|| {
            object_error(bucket, key, "the bucket vanished while it was created".to_owned())
        })?;
        let mut reader: &[u8] = &data;
        if let Err(e) = store.put(key, &mut reader).await {
            self.forget_store(bucket);
            return Err(object_error(bucket, key, format!("put: {e}")));
        }
        Ok(())
    }

    /// Reads the object; each chunk must arrive within 10 s. The client checks the object's
    /// SHA-256 digest as it reads.
    async fn object_get(&self, bucket: &str, key: &str) -> Result<Option<Bytes>, BusError> {
        crate::subject::validate_object(bucket, key)?;
        let Some(store) = self.object_store(bucket, false).await? else { return Ok(None) };
        let mut object = match store.get(key).await {
            Ok(object) => object,
            Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(None),
            Err(e) => {
                self.forget_store(bucket);
                return Err(object_error(bucket, key, format!("get: {e}")));
            }
        };
        let size = object.info().size;
        let mut data = BytesMut::with_capacity(size);
        loop {
            let read = tokio::time::timeout(OBJECT_IDLE, object.read_buf(&mut data))
                .await
                .map_err(|_| {
                    object_error(bucket, key, format!("no data for {OBJECT_IDLE:?} while reading"))
                })?
                .map_err(|e| object_error(bucket, key, format!("reading: {e}")))?;
            if read == 0 {
                break;
            }
        }
        if data.len() != size {
            return Err(object_error(
                bucket,
                key,
                format!("read {} bytes, the object has {size}", data.len()),
            ));
        }
        Ok(Some(data.freeze()))
    }
}

impl NatsBus {
    /// The bucket `bucket`, from the cache or the server; created when missing and `create`,
    /// otherwise `None` when missing.
    async fn object_store(
        &self,
        bucket: &str,
        create: bool,
    ) -> Result<Option<ObjectStore>, BusError> {
        if let Some(store) = lock(&self.stores).get(bucket) {
            return Ok(Some(store.clone()));
        }
        let bucket_error =
            |reason: String| BusError::Transport(format!("object store `{bucket}`: {reason}"));
        let store = match self.js.get_object_store(bucket).await {
            Ok(store) => store,
            Err(e) if is_stream_not_found(&e) => {
                if !create {
                    return Ok(None);
                }
                let config = object_store::Config {
                    bucket: bucket.to_owned(),
                    storage: stream::StorageType::File,
                    ..Default::default()
                };
                match self.js.create_object_store(config).await {
                    Ok(store) => store,
                    // Another client may have created it concurrently.
                    Err(create) => self
                        .js
                        .get_object_store(bucket)
                        .await
                        .map_err(|_| bucket_error(format!("creating the bucket: {create}")))?,
                }
            }
            Err(e) => return Err(bucket_error(format!("opening the bucket: {e}"))),
        };
        lock(&self.stores).insert(bucket.to_owned(), store.clone());
        Ok(Some(store))
    }

    /// Drops a cached bucket after an error, in case it was deleted behind our back.
    fn forget_store(&self, bucket: &str) {
        lock(&self.stores).remove(bucket);
    }
}

/// True when opening a bucket failed only because its stream does not exist.
fn is_stream_not_found(e: &ObjectStoreError) -> bool {
    use std::error::Error as _;
    e.kind() == ObjectStoreErrorKind::GetStore
        && e.source().and_then(|s| s.downcast_ref::<GetStreamError>()).is_some_and(|s| {
            matches!(s.kind(), GetStreamErrorKind::JetStream(js)
                if js.error_code() == ErrorCode::STREAM_NOT_FOUND)
        })
}

fn object_error(bucket: &str, key: &str, reason: String) -> BusError {
    BusError::Transport(format!("object `{key}` in bucket `{bucket}`: {reason}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        fn check(bucket: &str, key: &str, ok: bool) {
            let got = crate::subject::validate_object(bucket, key);
            assert_eq!(got.is_ok(), ok, "bucket `{bucket}`, key `{key}`: {got:?}");
        }
        check("orchestra-artifacts", "e3b0c442", true);
        check("orchestra_logs", "run1/t1/1/stdout", true);
        check("A-z_09", "dir.with.dots/file.tar.gz", true);
        check("b", "key with spaces and ünïcode", true);
        check("", "k", false);
        check("orchestra.artifacts", "k", false);
        check("with space", "k", false);
        check("a/b", "k", false);
        check("a*", "k", false);
        check("ünï", "k", false);
        check("b", "", false);
    }

    #[test]
    fn debug_hides_secrets() {
        let opts = NatsOptions {
            user: Some("alice".into()),
            password: Some("pw-123".into()),
            token: Some("tok-456".into()),
            ..Default::default()
        };
        let shown = format!("{opts:?}");
        assert!(shown.contains("alice") && shown.contains("<hidden>"), "{shown}");
        assert!(!shown.contains("pw-123") && !shown.contains("tok-456"), "{shown}");
    }

    #[test]
    fn nkey_seeds() {
        fn check(text: &str, expect: Option<&str>) {
            assert_eq!(nkey_seed(text), expect, "seed in {text:?}");
        }
        check("SUABC123\n", Some("SUABC123"));
        check("  SUABC123  ", Some("SUABC123"));
        check("# user\n\nSUABC123\n", Some("SUABC123"));
        check(
            "-----BEGIN USER NKEY SEED-----\nSUABC123\n------END USER NKEY SEED------\n",
            Some("SUABC123"),
        );
        check("UABC123\nSUSEED\n", Some("SUSEED"));
        check("Some words here\n", None);
        check("", None);
        check("not a seed", None);
    }
}
