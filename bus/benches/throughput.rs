//! Bus throughput: publishes N messages with confirms (C in flight) and consumes them with
//! manual acks, on the in-process bus and, when reachable, RabbitMQ. Prints messages/second.
//!
//! `cargo bench -p bus --bench throughput` (env: FERRIC_TEST_AMQP_URL, BUS_BENCH_MESSAGES,
//! BUS_BENCH_IN_FLIGHT).
#![expect(clippy::print_stdout, reason = "a benchmark prints its numbers")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::{DynBus, InProcessBus, OutgoingMessage, QueueSpec, RabbitBus};
use futures::StreamExt as _;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn run(
    name: &str,
    bus: DynBus,
    queue: &str,
    total: usize,
    in_flight: usize,
) -> anyhow::Result<()> {
    let spec = QueueSpec { prefetch: 256, ..QueueSpec::new(queue, &["bench.#"]) };
    let mut consumer = bus.consume(spec).await?;
    let payload = vec![0u8; 512];

    let start = Instant::now();
    let results: Vec<Result<(), bus::BusError>> = futures::stream::iter(0..total)
        .map(|i| {
            let bus = Arc::clone(&bus);
            let payload = payload.clone();
            async move {
                let msg =
                    OutgoingMessage { message_id: i.to_string(), ..OutgoingMessage::new(payload) };
                bus.publish("bench.msg", msg).await
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    let published = start.elapsed();
    anyhow::ensure!(results.iter().all(Result::is_ok), "some publishes failed");

    let start_consume = Instant::now();
    let mut received = 0;
    while received < total {
        let d = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))?;
        d.ack().await?;
        received += 1;
    }
    let consumed = start_consume.elapsed();
    println!(
        "{name:>10}: publish+confirm {total} x 512 B, {in_flight} in flight: {:>9.0} msg/s ({published:.2?}); \
         consume+ack: {:>9.0} msg/s ({consumed:.2?})",
        total as f64 / published.as_secs_f64(),
        total as f64 / consumed.as_secs_f64(),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = env_usize("BUS_BENCH_MESSAGES", 20_000);
    let in_flight = env_usize("BUS_BENCH_IN_FLIGHT", 64);
    run("in-process", Arc::new(InProcessBus::new()), "bench", total, in_flight).await?;

    let url = std::env::var("FERRIC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("ferric-bench-{suffix}");
    match RabbitBus::connect(&url, &exchange).await {
        Ok(rabbit) => {
            let queue = format!("ferric-bench-{suffix}");
            run("rabbitmq", Arc::new(rabbit), &queue, total, in_flight).await?;
            // Leave nothing behind.
            let conn =
                lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
            let ch = conn.create_channel().await?;
            for q in [queue.clone(), bus::dead_letter_queue(&queue)] {
                ch.queue_delete(q.into(), lapin::options::QueueDeleteOptions::default()).await?;
            }
            ch.exchange_delete(exchange.into(), lapin::options::ExchangeDeleteOptions::default())
                .await?;
        }
        Err(e) => println!("rabbitmq: skipped, cannot connect: {e}"),
    }
    Ok(())
}
