//! The RabbitMQ bus (lapin): a durable topic exchange, durable queues, persistent messages,
//! publisher confirms, prefetch, and a supervisor task that reconnects with backoff when the
//! connection or the broker goes away.
//!
//! The supervisor owns the connection and publishes it on a `watch` channel as a [`Link`] with
//! a generation number. Publishers wait (up to the publish timeout) for a live link, and retry
//! on the next generation when a publish fails or its confirm is lost with the connection, so
//! a message is never lost, only possibly duplicated. Consumer tasks re-declare their topology
//! and resume consuming on every new generation.

mod consumer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::message::{ATTEMPT_HEADER, ROUTING_KEY_HEADER};
use crate::routing::{check_pattern, check_routing_key};
use crate::{Bus, BusError, Consumer, OutgoingMessage, QueueSpec};

/// Timeouts and backoff of a [`RabbitBus`].
#[derive(Debug, Clone)]
pub struct RabbitOptions {
    /// One connection attempt, handshake and topology declaration included.
    pub connect_timeout: Duration,
    /// A publish from call to confirm, including waiting for a reconnect.
    pub publish_timeout: Duration,
    /// Declarations, binds and acks.
    pub operation_timeout: Duration,
    /// First delay between reconnect attempts; doubled up to `backoff_max`. Each delay is
    /// drawn at random from the upper half of its step, so the first lies in
    /// `[backoff_min / 2, backoff_min)`.
    pub backoff_min: Duration,
    /// Bound on every delay between reconnect attempts.
    pub backoff_max: Duration,
    /// How often the supervisor checks the connection (it also checks at once when an
    /// operation fails).
    pub health_interval: Duration,
    /// Shown in the RabbitMQ management UI.
    pub connection_name: String,
}

impl Default for RabbitOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(30),
            operation_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            health_interval: Duration::from_millis(250),
            connection_name: "ferric".to_owned(),
        }
    }
}

/// A [`Bus`] on RabbitMQ. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct RabbitBus {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    exchange: String,
    /// `host:port/vhost`, for messages; the URL holds the password and is never logged.
    endpoint: String,
    opts: RabbitOptions,
    link: watch::Receiver<Link>,
    /// Asks the supervisor to check the connection now.
    poke: Arc<Notify>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The supervisor holds only the watch sender and the live connection; stopping it
        // drops the connection, which closes it.
        self.supervisor.abort();
    }
}

/// The connection as the supervisor last saw it.
#[derive(Clone, Default)]
pub(crate) struct Link {
    /// Raised on every successful (re)connect.
    generation: u64,
    live: Option<Arc<Live>>,
}

pub(crate) struct Live {
    conn: Connection,
    /// The channel publishes go through, in confirm mode.
    publish: lapin::Channel,
}

impl Live {
    fn healthy(&self) -> bool {
        self.conn.status().connected() && self.publish.status().connected()
    }
}

/// Heartbeat asked for when the URL names none, so that a broker that vanished without
/// closing the TCP connection is noticed within about two intervals.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// Parses the URL; returns it with a heartbeat set, and `host:port/vhost` for messages.
fn parse_url(url: &str) -> Result<(AMQPUri, String), BusError> {
    let mut uri: AMQPUri = url.parse().map_err(|e: String| {
        // Some parser messages quote the URL, password included.
        BusError::InvalidArgument(format!("malformed AMQP url: {}", e.replace(url, "<url>")))
    })?;
    uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
    let endpoint = format!("{}:{}/{}", uri.authority.host, uri.authority.port, uri.vhost);
    Ok((uri, endpoint))
}

impl RabbitBus {
    /// Connects to the broker at `url` (`amqp://user:pass@host:port/vhost`) and declares the
    /// durable topic exchange `exchange`, with [`RabbitOptions::default`].
    ///
    /// # Errors
    /// [`BusError::InvalidArgument`] for a malformed url or exchange name, and
    /// [`BusError::Connect`] / [`BusError::Timeout`] when the first connection fails; later
    /// losses of the connection are repaired in the background.
    pub async fn connect(url: &str, exchange: &str) -> Result<Self, BusError> {
        Self::connect_with(url, exchange, RabbitOptions::default()).await
    }

    /// As [`connect`](Self::connect), with explicit options.
    ///
    /// # Errors
    /// As for [`connect`](Self::connect).
    pub async fn connect_with(
        url: &str,
        exchange: &str,
        opts: RabbitOptions,
    ) -> Result<Self, BusError> {
        let (uri, endpoint) = parse_url(url)?;
        if exchange.is_empty() || exchange.len() > crate::routing::MAX_SHORT_STRING {
            return Err(BusError::InvalidArgument(format!(
                "exchange name must be 1 to 255 bytes long (got {exchange:?})"
            )));
        }
        let first = connect_once(&uri, exchange, &endpoint, &opts).await?;
        tracing::info!(%endpoint, exchange, "connected to the message broker");
        let (tx, rx) = watch::channel(Link { generation: 1, live: Some(Arc::new(first)) });
        let poke = Arc::new(Notify::new());
        let supervisor = tokio::spawn(supervise(
            uri,
            exchange.to_owned(),
            endpoint.clone(),
            opts.clone(),
            tx,
            Arc::clone(&poke),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                exchange: exchange.to_owned(),
                endpoint,
                opts,
                link: rx,
                poke,
                supervisor,
            }),
        })
    }

    /// The generation of the current connection: 1 for the first, raised on every reconnect.
    pub fn connection_generation(&self) -> u64 {
        self.inner.link.borrow().generation
    }
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("endpoint", &self.inner.endpoint)
            .field("exchange", &self.inner.exchange)
            .finish_non_exhaustive()
    }
}

/// One connection attempt: connect, declare the exchange, open the confirm-mode channel.
async fn connect_once(
    uri: &AMQPUri,
    exchange: &str,
    endpoint: &str,
    opts: &RabbitOptions,
) -> Result<Live, BusError> {
    let attempt = async {
        let props = ConnectionProperties::default()
            .with_connection_name(opts.connection_name.clone().into());
        let conn = Connection::connect_uri(uri.clone(), props).await?;
        let publish = conn.create_channel().await?;
        declare_exchange(&publish, exchange).await?;
        publish.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok::<_, lapin::Error>(Live { conn, publish })
    };
    match tokio::time::timeout(opts.connect_timeout, attempt).await {
        Ok(Ok(live)) => Ok(live),
        Ok(Err(source)) => Err(BusError::Connect { endpoint: endpoint.to_owned(), source }),
        Err(_) => Err(BusError::Timeout { operation: "connect", timeout: opts.connect_timeout }),
    }
}

pub(crate) async fn declare_exchange(ch: &lapin::Channel, exchange: &str) -> lapin::Result<()> {
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
        FieldTable::default(),
    )
    .await
}

impl RabbitOptions {
    /// Delays between reconnect attempts: `backoff_min` doubling up to `backoff_max`, each
    /// drawn from the upper half of its step so that reconnecting clients spread out. They
    /// never run out: reconnecting is a reconciler's job, given up only when the bus is
    /// dropped.
    pub(crate) fn reconnect_backoff(&self) -> Backoff {
        // backon adds up to 100 % jitter on top of each step; halving both ends keeps every
        // delay within `[step / 2, step)` and below `backoff_max`.
        let delays = ExponentialBuilder::new()
            .with_min_delay(self.backoff_min / 2)
            .with_max_delay(self.backoff_max / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        Backoff { delays, max: self.backoff_max }
    }
}

/// An endless series of reconnect delays (see [`RabbitOptions::reconnect_backoff`]).
pub(crate) struct Backoff {
    delays: <ExponentialBuilder as BackoffBuilder>::Backoff,
    max: Duration,
}

impl Backoff {
    /// The pause before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        // Built without a limit on attempts, so `delays` never ends.
        self.delays.next().unwrap_or(self.max)
    }
}

/// Keeps the connection up: waits for it to fail, then reconnects with backoff.
async fn supervise(
    uri: AMQPUri,
    exchange: String,
    endpoint: String,
    opts: RabbitOptions,
    tx: watch::Sender<Link>,
    poke: Arc<Notify>,
) {
    let mut generation = tx.borrow().generation;
    loop {
        let Some(live) = tx.borrow().live.clone() else { return };
        // Wait until the connection or the publish channel is no longer usable.
        while live.healthy() {
            tokio::select! {
                // Both arms only wake the loop; nothing is lost by cancelling either.
                () = poke.notified() => {}
                () = tokio::time::sleep(opts.health_interval) => {}
                () = tx.closed() => return,
            }
        }
        tracing::warn!(%endpoint, generation, "message broker connection lost; reconnecting");
        tx.send_modify(|l| l.live = None);
        // Closing a half-dead connection may hang; don't wait for it long.
        let _ = tokio::time::timeout(
            opts.operation_timeout,
            live.conn.close(200, "ferric reconnecting".into()),
        )
        .await;
        drop(live);
        let mut backoff = opts.reconnect_backoff();
        let live = loop {
            if tx.is_closed() {
                return;
            }
            match connect_once(&uri, &exchange, &endpoint, &opts).await {
                Ok(live) => break live,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        %endpoint,
                        error = %crate::error::chain(&error),
                        retry_in = ?delay,
                        "reconnecting to the message broker failed"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        };
        generation += 1;
        tracing::info!(%endpoint, generation, "reconnected to the message broker");
        tx.send_replace(Link { generation, live: Some(Arc::new(live)) });
    }
}

impl Inner {
    /// Waits for a live connection until `deadline`.
    async fn wait_live(
        &self,
        deadline: Instant,
        operation: &'static str,
        timeout: Duration,
    ) -> Result<(u64, Arc<Live>), BusError> {
        let mut rx = self.link.clone();
        let waited = tokio::time::timeout_at(deadline, async {
            let link =
                rx.wait_for(|l| l.live.is_some()).await.map_err(|_| BusError::Disconnected)?;
            let live = link.live.clone().ok_or(BusError::Disconnected)?;
            Ok((link.generation, live))
        })
        .await;
        waited.unwrap_or(Err(BusError::Timeout { operation, timeout }))
    }

    /// Resolves once the link has moved past `generation` (or lost it), or `max` has passed.
    async fn wait_past(&self, generation: u64, max: Duration) {
        let mut rx = self.link.clone();
        let _ = tokio::time::timeout(
            max,
            rx.wait_for(|l| l.generation != generation || l.live.is_none()),
        )
        .await;
    }

    /// Publishes and waits for the confirm, across reconnects, until the publish timeout.
    pub(crate) async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        msg: &OutgoingMessage,
        internal: &[(&str, String)],
    ) -> Result<(), BusError> {
        let timeout = self.opts.publish_timeout;
        let deadline = Instant::now() + timeout;
        let props = properties(msg, internal);
        loop {
            let (generation, live) = self.wait_live(deadline, "publish", timeout).await?;
            let confirmed = async {
                live.publish
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions::default(),
                        &msg.payload,
                        props.clone(),
                    )
                    .await?
                    .await
            };
            let mut rx = self.link.clone();
            let lost = rx.wait_for(|l| l.generation != generation || l.live.is_none());
            let outcome = tokio::select! {
                // A confirm that never comes because the connection died is abandoned and the
                // message published again on the next connection.
                r = confirmed => Some(r),
                _ = lost => None,
                () = tokio::time::sleep_until(deadline) => {
                    return Err(BusError::Timeout { operation: "publish", timeout });
                }
            };
            match outcome {
                Some(Ok(Confirmation::Ack(_) | Confirmation::NotRequested)) => return Ok(()),
                Some(Ok(Confirmation::Nack(_))) => {
                    return Err(BusError::Rejected { routing_key: routing_key.to_owned() });
                }
                Some(Err(error)) => {
                    tracing::debug!(
                        routing_key,
                        message_id = %msg.message_id,
                        error = %error,
                        "publish failed; retrying on the next connection"
                    );
                    self.poke.notify_one();
                    self.wait_past(generation, Duration::from_secs(1)).await;
                }
                None => {
                    tracing::debug!(
                        routing_key,
                        message_id = %msg.message_id,
                        "connection lost before the confirm; publishing again"
                    );
                }
            }
        }
    }
}

fn properties(msg: &OutgoingMessage, internal: &[(&str, String)]) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in msg
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain(internal.iter().map(|(k, v)| (*k, v)))
    {
        headers.insert(ShortString::from(k), AMQPValue::LongString(LongString::from(v.as_bytes())));
    }
    BasicProperties::default()
        .with_message_id(msg.message_id.as_str().into())
        .with_delivery_mode(2) // persistent
        .with_headers(headers)
}

/// Reads the headers of a delivery: (application headers, attempt, original routing key).
pub(crate) fn read_headers(
    props: &BasicProperties,
) -> (BTreeMap<String, String>, u32, Option<String>) {
    let mut headers = BTreeMap::new();
    let mut attempt = 1;
    let mut routing_key = None;
    if let Some(table) = props.headers() {
        for (k, v) in table.inner() {
            let value = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.as_str().to_owned(),
                AMQPValue::Boolean(b) => b.to_string(),
                AMQPValue::LongLongInt(i) => i.to_string(),
                AMQPValue::LongInt(i) => i.to_string(),
                AMQPValue::LongUInt(i) => i.to_string(),
                AMQPValue::ShortInt(i) => i.to_string(),
                AMQPValue::ShortUInt(i) => i.to_string(),
                // Other types are not written by Ferric; leave them out.
                _ => continue,
            };
            match k.as_str() {
                ATTEMPT_HEADER => attempt = value.parse().unwrap_or(1),
                ROUTING_KEY_HEADER => routing_key = Some(value),
                name => {
                    headers.insert(name.to_owned(), value);
                }
            }
        }
    }
    (headers, attempt, routing_key)
}

#[async_trait]
impl Bus for RabbitBus {
    async fn publish(&self, routing_key: &str, msg: OutgoingMessage) -> Result<(), BusError> {
        check_routing_key(routing_key)?;
        msg.check()?;
        self.inner.publish_raw(&self.inner.exchange, routing_key, &msg, &[]).await
    }

    async fn consume(&self, spec: QueueSpec) -> Result<Consumer, BusError> {
        spec.check()?;
        consumer::start(Arc::clone(&self.inner), consumer::Kind::Durable(spec)).await
    }

    async fn subscribe(&self, patterns: &[&str]) -> Result<Consumer, BusError> {
        patterns.iter().try_for_each(|p| check_pattern(p))?;
        let patterns = patterns.iter().map(|p| (*p).to_owned()).collect();
        consumer::start(Arc::clone(&self.inner), consumer::Kind::Transient(patterns)).await
    }

    async fn health(&self) -> Result<(), BusError> {
        let live = self.inner.link.borrow().live.clone();
        match live {
            Some(live) if live.healthy() => Ok(()),
            _ => {
                self.inner.poke.notify_one();
                Err(BusError::Disconnected)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint_of(url: &str) -> Result<String, BusError> {
        parse_url(url).map(|(_, endpoint)| endpoint)
    }

    #[test]
    fn test_endpoint_hides_credentials() {
        let e = endpoint_of("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(e, "127.0.0.1:5672//");
        assert!(!e.contains("secret"));
        assert!(endpoint_of("http://nope").is_err());
        let err = endpoint_of("amqp:guest:hunter2").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        let (uri, _) = parse_url("amqp://127.0.0.1/%2f").unwrap();
        assert_eq!(uri.query.heartbeat, Some(DEFAULT_HEARTBEAT_SECS));
        let (uri, _) = parse_url("amqp://127.0.0.1/%2f?heartbeat=3").unwrap();
        assert_eq!(uri.query.heartbeat, Some(3));
    }

    #[test]
    fn test_headers_round_trip_through_properties() {
        let msg = OutgoingMessage::new(b"x".to_vec()).with_header("traceparent", "00-abc");
        let props = properties(
            &msg,
            &[(ATTEMPT_HEADER, "3".into()), (ROUTING_KEY_HEADER, "node.power".into())],
        );
        let (headers, attempt, key) = read_headers(&props);
        assert_eq!(headers.get("traceparent").map(String::as_str), Some("00-abc"));
        assert_eq!(headers.len(), 1);
        assert_eq!(attempt, 3);
        assert_eq!(key.as_deref(), Some("node.power"));
    }

    #[test]
    fn test_backoff_grows_and_is_capped() {
        let opts = RabbitOptions::default();
        for _ in 0..100 {
            let mut backoff = opts.reconnect_backoff();
            let delays: Vec<Duration> = (0..40).map(|_| backoff.next_delay()).collect();
            assert!(delays[0] >= Duration::from_millis(50), "{delays:?}");
            assert!(delays[0] < Duration::from_millis(100), "{delays:?}");
            // 100 ms doubled: 800 ms at the fourth step.
            assert!(delays[3] >= Duration::from_millis(400), "{delays:?}");
            assert!(delays[3] < Duration::from_millis(800), "{delays:?}");
            // Capped, and still going after many failures.
            for d in &delays[10..] {
                assert!(*d >= Duration::from_millis(2500) && *d < Duration::from_secs(5), "{d:?}");
            }
        }
    }
}
