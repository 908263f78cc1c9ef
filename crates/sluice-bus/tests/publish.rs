//! The publisher against a real `nats-server -js`: what the recorder
//! queues lands on its subject with the flow log's bytes, alerts on
//! `sluice.alerts`, and without a server nothing waits: the queue bounds
//! what is held and the rest is counted dropped.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::registry::Registry;
use sluice_bus::{BusMetrics, BusOptions, BusQueue, Publisher, flow_subject};
use sluice_observe::{Alert, AlertKind, FlowBus, FlowRecord, Listener, Protocol, Severity};
use sluice_testkit::NatsServer;

fn record(zone: Option<&str>, src: &str) -> Arc<FlowRecord> {
    let src: SocketAddr = src.parse().unwrap();
    let mut r = FlowRecord::new(Listener::Http, Protocol::Connect, src, SystemTime::now());
    r.zone = zone.map(str::to_owned);
    r.finish(SystemTime::now());
    Arc::new(r)
}

/// What the recorder does: the record with its JSON, serialized once.
fn send(queue: &impl FlowBus, r: &Arc<FlowRecord>) {
    queue.record(r, &r.json());
}

fn encoded(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in\n{text}"))
}

/// A publisher to `nats` on stream `SLUICE` in 4 partitions, holding up to
/// `queue` records; its metrics are in the registry returned.
fn start(nats: &NatsServer, queue: usize) -> (BusQueue, Publisher, Registry) {
    let mut registry = Registry::default();
    let (q, publisher) = Publisher::start(
        BusOptions {
            url: nats.url(),
            stream: "SLUICE".into(),
            partitions: 4,
            queue,
        },
        BusMetrics::register(&mut registry),
    );
    (q, publisher, registry)
}

/// Waits (10 ms .. `within`) until the sample `name` is `want`.
async fn wait_for(registry: &Registry, name: &str, want: f64, within: Duration) {
    let deadline = Instant::now() + within;
    while sample(&encoded(registry), name) != want {
        assert!(
            Instant::now() < deadline,
            "{name} is not {want}: {}",
            encoded(registry)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A JetStream context on `nats`, to read what was stored.
async fn jetstream(nats: &NatsServer) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_alerts_land_on_their_subjects_as_the_flow_log_writes_them() {
    let nats = NatsServer::start();
    let (queue, publisher, registry) = start(&nats, 100);
    let web = record(Some("web"), "10.0.1.7:40000");
    let nozone = record(None, "[2001:db8::9]:5000");
    let mut alert = Alert::new(
        AlertKind::Volume,
        Severity::Warning,
        SystemTime::now(),
        "10.0.1.7 sent 3 GiB to example.net".into(),
    );
    alert.src = Some("10.0.1.7".into());
    send(&queue, &web);
    send(&queue, &nozone);
    queue.alert(&alert);
    publisher.close(Duration::from_secs(10)).await;
    let text = encoded(&registry);
    assert_eq!(sample(&text, "sluice_bus_published_total"), 3.0, "{text}");
    assert_eq!(sample(&text, "sluice_bus_dropped_total"), 0.0, "{text}");

    let js = jetstream(&nats).await;
    let stream = js.get_stream("SLUICE").await.unwrap();
    for r in [&web, &nozone] {
        let subject = flow_subject(r, 4);
        let m = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap();
        let mut line = Vec::new();
        r.write_json(&mut line);
        assert_eq!(m.payload.as_ref(), line.as_slice(), "{subject}");
    }
    assert!(flow_subject(&nozone, 4).starts_with("sluice.flows.default."));
    let m = stream
        .get_last_raw_message_by_subject("sluice.alerts")
        .await
        .unwrap();
    assert_eq!(serde_json::from_slice::<Alert>(&m.payload).unwrap(), alert);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_server_the_queue_bounds_what_waits_and_the_rest_is_dropped() {
    // A server that is gone: its port, nobody listening.
    let mut nats = NatsServer::start();
    nats.kill();
    let (queue, publisher, registry) = start(&nats, 5);
    let t = Instant::now();
    for i in 0..1000 {
        send(
            &queue,
            &record(Some("web"), &format!("10.0.1.{}:1", i % 250)),
        );
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "1000 sends took {took:?}"
    );
    let text = encoded(&registry);
    assert_eq!(sample(&text, "sluice_bus_dropped_total"), 995.0, "{text}");
    assert_eq!(sample(&text, "sluice_bus_connected"), 0.0, "{text}");
    // At exit what waited is given up on within the bound, and counted.
    let t = Instant::now();
    publisher.close(Duration::from_millis(300)).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let text = encoded(&registry);
    assert_eq!(sample(&text, "sluice_bus_dropped_total"), 1000.0, "{text}");
    assert_eq!(sample(&text, "sluice_bus_published_total"), 0.0, "{text}");
}

/// How many messages the stream holds on `subject` (a filter subject).
async fn stored(js: &async_nats::jetstream::Context, subject: &str) -> u64 {
    let mut stream = js.get_stream("SLUICE").await.unwrap();
    let info = stream.info().await.unwrap().clone();
    if subject == ">" {
        return info.state.messages;
    }
    let mut c = stream
        .get_or_create_consumer::<async_nats::jetstream::consumer::pull::Config>(
            "count",
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("count".into()),
                filter_subject: subject.to_owned(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let pending = c.info().await.unwrap().num_pending;
    stream.delete_consumer("count").await.unwrap();
    pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_records_in_groups_are_each_stored_once() {
    let nats = NatsServer::start();
    let (queue, publisher, registry) = start(&nats, 10_000);
    // Sent in bursts so that both full groups and short ones go out.
    for i in 0..1000 {
        send(
            &queue,
            &record(Some("bulk"), &format!("10.0.{}.{}:1", i / 250, i % 250)),
        );
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(7)).await;
        }
    }
    publisher.close(Duration::from_secs(10)).await;
    let text = encoded(&registry);
    assert_eq!(
        sample(&text, "sluice_bus_published_total"),
        1000.0,
        "{text}"
    );
    assert_eq!(sample(&text, "sluice_bus_dropped_total"), 0.0, "{text}");
    let js = jetstream(&nats).await;
    assert_eq!(stored(&js, ">").await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_server_restarts_what_waited_and_what_comes_next_is_stored() {
    let mut nats = NatsServer::start();
    let (queue, publisher, registry) = start(&nats, 1000);
    for i in 0..10 {
        send(&queue, &record(Some("before"), &format!("10.0.1.{i}:1")));
    }
    let published = "sluice_bus_published_total";
    wait_for(&registry, published, 10.0, Duration::from_secs(10)).await;

    nats.kill();
    let connected = "sluice_bus_connected";
    wait_for(&registry, connected, 0.0, Duration::from_secs(10)).await;
    // During the outage sends never wait; the queue keeps these.
    let t = Instant::now();
    for i in 0..20 {
        send(&queue, &record(Some("during"), &format!("10.0.2.{i}:1")));
    }
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );

    nats.restart();
    wait_for(&registry, connected, 1.0, Duration::from_secs(15)).await;
    for i in 0..30 {
        send(&queue, &record(Some("after"), &format!("10.0.3.{i}:1")));
    }
    publisher.close(Duration::from_secs(15)).await;
    let text = encoded(&registry);
    assert_eq!(sample(&text, "sluice_bus_published_total"), 60.0, "{text}");
    assert_eq!(sample(&text, "sluice_bus_dropped_total"), 0.0, "{text}");

    let js = jetstream(&nats).await;
    assert_eq!(stored(&js, "sluice.flows.before.*").await, 10);
    assert_eq!(stored(&js, "sluice.flows.during.*").await, 20);
    assert_eq!(stored(&js, "sluice.flows.after.*").await, 30);
}

/// The stream's messages on `sluice.flows.>`, and how many distinct
/// record ids they hold.
async fn stored_ids(js: &async_nats::jetstream::Context) -> (usize, usize) {
    let stream = js.get_stream("SLUICE").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: "sluice.flows.>".into(),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut n = 0;
    let mut batch = consumer
        .fetch()
        .max_messages(1_000_000)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    use futures_util::StreamExt;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), batch.next()).await {
        let m = m.unwrap();
        let r: FlowRecord = serde_json::from_slice(&m.payload).unwrap();
        ids.insert(r.id().to_owned());
        n += 1;
    }
    (n, ids.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_stream_loses_no_record_counted_as_published() {
    let mut nats = NatsServer::start();
    let (queue, publisher, registry) = start(&nats, 100_000);
    let queue = Arc::new(queue);
    // A steady stream of records for about 3 s, in bursts of 50 so that
    // groups are in every state (being written, written and unacknowledged,
    // acknowledged) when the server dies.
    const TOTAL: usize = 15_000;
    let sender = {
        let queue = queue.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                send(
                    &*queue,
                    &record(
                        Some("kill"),
                        &format!("10.1.{}.{}:1", i / 250 % 250, i % 250),
                    ),
                );
                if i % 50 == 49 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        nats.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        nats.restart();
    }
    sender.await.unwrap();
    drop(queue);
    publisher.close(Duration::from_secs(30)).await;
    let text = encoded(&registry);
    let published = sample(&text, "sluice_bus_published_total") as usize;
    let dropped = sample(&text, "sluice_bus_dropped_total") as usize;
    // Every record is accounted for: published or counted dropped.
    assert_eq!(published + dropped, TOTAL, "{text}");
    let js = jetstream(&nats).await;
    let (messages, distinct) = stored_ids(&js).await;
    // A retry never doubles a record…
    assert_eq!(messages, distinct, "{text}");
    // …and what was counted published is there.
    assert!(
        distinct >= published,
        "{published} counted published, {distinct} stored, {dropped} dropped"
    );
    eprintln!("{published} published, {dropped} dropped, {distinct} stored of {TOTAL}");
}
