//! Consumer tasks: one per [`Consumer`], each on its own channel. A task declares its
//! topology, forwards deliveries, and after a lost connection re-declares and resumes on the
//! next one. It closes its channel (so the broker redelivers whatever was unsettled) when the
//! [`Consumer`] is dropped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, Channel};
use tokio::sync::mpsc;

use super::{Inner, Live, declare_exchange, read_headers};
use crate::message::{
    ATTEMPT_HEADER, DEAD_LETTER_REASON_HEADER, Parts, ROUTING_KEY_HEADER, Settle, Settlement,
};
use crate::{BusError, Consumer, Delivery, OutgoingMessage, QueueSpec};

/// Deliveries a transient subscriber may have buffered.
const SUBSCRIBER_BUFFER: usize = 1024;

pub(crate) enum Kind {
    Durable(QueueSpec),
    Transient(Vec<String>),
}

/// A channel consuming one queue.
struct Attached {
    generation: u64,
    channel: Channel,
    stream: lapin::Consumer,
}

/// Declares the topology and starts the consumer task. The first declaration happens here so
/// that its errors reach the caller.
pub(crate) async fn start(inner: Arc<Inner>, kind: Kind) -> Result<Consumer, BusError> {
    let timeout = inner.opts.operation_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let (generation, live) = inner.wait_live(deadline, "consume", timeout).await?;
    let attached = attach(&inner, &kind, generation, &live).await?;
    let capacity = match &kind {
        Kind::Durable(spec) => usize::from(spec.prefetch.max(1)),
        Kind::Transient(_) => SUBSCRIBER_BUFFER,
    };
    let (tx, rx) = mpsc::channel(capacity);
    let task = tokio::spawn(run(inner, kind, attached, tx));
    Ok(Consumer::from_channel(rx, Some(task)))
}

async fn attach(
    inner: &Inner,
    kind: &Kind,
    generation: u64,
    live: &Live,
) -> Result<Attached, BusError> {
    let timeout = inner.opts.operation_timeout;
    match tokio::time::timeout(timeout, declare_and_consume(inner, kind, live)).await {
        Ok(Ok((channel, stream))) => Ok(Attached { generation, channel, stream }),
        Ok(Err(source)) => {
            inner.poke.notify_one();
            Err(BusError::Amqp { operation: "declare and consume", source })
        }
        Err(_) => Err(BusError::Timeout { operation: "declare and consume", timeout }),
    }
}

async fn declare_and_consume(
    inner: &Inner,
    kind: &Kind,
    live: &Live,
) -> lapin::Result<(Channel, lapin::Consumer)> {
    let channel = live.conn.create_channel().await?;
    declare_exchange(&channel, &inner.exchange).await?;
    let (queue, patterns, prefetch, no_ack) = match kind {
        Kind::Durable(spec) => {
            let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
            let mut args = FieldTable::default();
            if let Some(e) = spec.expires {
                // `check` bounds it to u32 milliseconds.
                let ms = u32::try_from(e.as_millis()).unwrap_or(u32::MAX);
                args.insert("x-expires".into(), AMQPValue::LongLongInt(i64::from(ms)));
            }
            channel.queue_declare(spec.queue.as_str().into(), durable, args).await?;
            channel
                .queue_declare(
                    spec.dead_letter_queue().as_str().into(),
                    durable,
                    FieldTable::default(),
                )
                .await?;
            (spec.queue.clone(), &spec.patterns, spec.prefetch, false)
        }
        Kind::Transient(patterns) => {
            let transient = QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            };
            let q = channel.queue_declare("".into(), transient, FieldTable::default()).await?;
            (q.name().as_str().to_owned(), patterns, 0, true)
        }
    };
    for pattern in patterns {
        channel
            .queue_bind(
                queue.as_str().into(),
                inner.exchange.as_str().into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    if prefetch > 0 {
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
    }
    let tag = format!("ferric-{}", uuid::Uuid::new_v4());
    let stream = channel
        .basic_consume(
            queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions { no_ack, ..BasicConsumeOptions::default() },
            FieldTable::default(),
        )
        .await?;
    Ok((channel, stream))
}

/// Forwards deliveries until the [`Consumer`] is dropped, re-attaching after connection loss.
async fn run(inner: Arc<Inner>, kind: Kind, first: Attached, tx: mpsc::Sender<Delivery>) {
    let (abandon_tx, mut abandon_rx) = mpsc::unbounded_channel::<Acker>();
    let mut attached = Some(first);
    let mut backoff = inner.opts.reconnect_backoff();
    let name = match &kind {
        Kind::Durable(spec) => spec.queue.clone(),
        Kind::Transient(_) => "(subscription)".to_owned(),
    };
    loop {
        let Some(current) = attached.as_mut() else {
            // Re-attach on the current (or next) connection.
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            let result = tokio::select! {
                () = tx.closed() => return,
                r = inner.wait_live(far, "consume", Duration::from_secs(3600)) => r,
            };
            let attach_result = match result {
                Ok((generation, live)) => attach(&inner, &kind, generation, &live).await,
                Err(e) => Err(e),
            };
            match attach_result {
                Ok(a) => {
                    tracing::info!(queue = %name, generation = a.generation, "consumer resumed");
                    attached = Some(a);
                    backoff = inner.opts.reconnect_backoff();
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        queue = %name,
                        error = %crate::error::chain(&error),
                        retry_in = ?delay,
                        "re-attaching consumer failed"
                    );
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
            continue;
        };
        tokio::select! {
            biased;
            // The consumer is gone: close the channel so the broker requeues what is unacked.
            () = tx.closed() => {
                let _ = tokio::time::timeout(
                    inner.opts.operation_timeout,
                    current.channel.close(200, "consumer dropped".into()),
                ).await;
                return;
            }
            // A delivery dropped unsettled goes back to the queue now rather than when the
            // channel closes.
            Some(acker) = abandon_rx.recv() => {
                let opts = BasicNackOptions { requeue: true, multiple: false };
                let _ = tokio::time::timeout(inner.opts.operation_timeout, acker.nack(opts)).await;
            }
            item = current.stream.next() => match item {
                Some(Ok(d)) => {
                    let delivery = to_delivery(&inner, &kind, d, &abandon_tx);
                    if matches!(kind, Kind::Transient(_)) {
                        // Auto-acked fan-out: a subscriber that does not keep up loses
                        // messages rather than growing memory without bound (as in memory).
                        if let Err(mpsc::error::TrySendError::Full(d)) = tx.try_send(delivery) {
                            tracing::warn!(
                                routing_key = %d.routing_key,
                                message_id = %d.message_id,
                                "subscriber is not keeping up; message dropped for it"
                            );
                        }
                    } else {
                        // A delivery that cannot be handed over (receiver gone) is requeued
                        // when its settle handle drops; the next turn sees `tx.closed()`.
                        let _ = tx.send(delivery).await;
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(queue = %name, error = %error, "consumer stream failed; re-attaching");
                    detach(&inner, &mut attached).await;
                }
                None => {
                    tracing::warn!(queue = %name, "consumer cancelled by the broker; re-attaching");
                    detach(&inner, &mut attached).await;
                }
            },
        }
    }
}

/// Drops the current attachment, closing its channel if the connection still stands (a
/// cancelled consumer on a live connection), and gives the supervisor a moment to notice a
/// lost connection.
async fn detach(inner: &Inner, attached: &mut Option<Attached>) {
    let Some(old) = attached.take() else { return };
    inner.poke.notify_one();
    if old.channel.status().connected() {
        let _ = tokio::time::timeout(
            inner.opts.operation_timeout,
            old.channel.close(200, "re-attaching".into()),
        )
        .await;
    }
    inner.wait_past(old.generation, Duration::from_secs(1)).await;
}

fn to_delivery(
    inner: &Arc<Inner>,
    kind: &Kind,
    d: lapin::message::Delivery,
    abandon_tx: &mpsc::UnboundedSender<Acker>,
) -> Delivery {
    let (headers, attempt, original_key) = read_headers(&d.properties);
    let message_id =
        d.properties.message_id().as_ref().map(|s| s.as_str().to_owned()).unwrap_or_default();
    let routing_key = original_key.unwrap_or_else(|| d.routing_key.as_str().to_owned());
    let (max_attempts, settle): (u32, Option<Box<dyn Settle>>) = match kind {
        Kind::Durable(spec) => (
            spec.max_attempts,
            Some(Box::new(RabbitSettle {
                inner: Arc::clone(inner),
                queue: spec.queue.clone(),
                dead_letters: spec.dead_letter_queue(),
                acker: Some(d.acker),
                abandon: abandon_tx.clone(),
            })),
        ),
        Kind::Transient(_) => (1, None),
    };
    Delivery {
        message_id,
        headers,
        payload: d.data,
        routing_key,
        attempt,
        redelivered: d.redelivered,
        max_attempts,
        settle,
    }
}

/// Settles a RabbitMQ delivery; nacks it back to the queue when dropped unsettled.
struct RabbitSettle {
    inner: Arc<Inner>,
    queue: String,
    dead_letters: String,
    /// `None` once settled.
    acker: Option<Acker>,
    abandon: mpsc::UnboundedSender<Acker>,
}

impl RabbitSettle {
    async fn ack(&mut self) -> Result<(), BusError> {
        let Some(acker) = self.acker.take() else { return Ok(()) };
        let timeout = self.inner.opts.operation_timeout;
        match tokio::time::timeout(timeout, acker.ack(BasicAckOptions::default())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => {
                tracing::debug!(queue = %self.queue, error = %error, "ack failed");
                Err(BusError::ChannelClosed)
            }
            Err(_) => Err(BusError::Timeout { operation: "basic.ack", timeout }),
        }
    }
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn settle(mut self: Box<Self>, how: Settlement, parts: Parts) -> Result<(), BusError> {
        let Parts { message_id, mut headers, payload, routing_key, attempt } = parts;
        let (target, next_attempt) = match how {
            Settlement::Ack => return self.ack().await,
            Settlement::Requeue => (self.queue.clone(), attempt.saturating_add(1)),
            Settlement::DeadLetter(reason) => {
                headers.insert(DEAD_LETTER_REASON_HEADER.to_owned(), reason.to_owned());
                tracing::info!(
                    queue = %self.queue,
                    %message_id,
                    attempt,
                    reason,
                    "message dead-lettered"
                );
                (self.dead_letters.clone(), attempt)
            }
        };
        let copy = OutgoingMessage { message_id, headers, payload };
        let internal =
            [(ATTEMPT_HEADER, next_attempt.to_string()), (ROUTING_KEY_HEADER, routing_key)];
        // The copy goes straight to its queue through the default exchange, so other queues
        // bound to the same key don't see it again. The original is acked only once the copy
        // is confirmed; if that fails, dropping `self` hands the original back.
        self.inner.publish_raw("", &target, &copy, &internal).await?;
        self.ack().await
    }
}

impl Drop for RabbitSettle {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            // If the consumer task is gone its channel is closed, which requeues anyway.
            let _ = self.abandon.send(acker);
        }
    }
}
