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
use sluice_bus::{BusMetrics, BusOptions, Publisher, flow_subject};
use sluice_observe::{Alert, AlertKind, FlowBus, FlowRecord, Listener, Protocol, Severity};
use sluice_testkit::NatsServer;

fn record(zone: Option<&str>, src: &str) -> Arc<FlowRecord> {
    let src: SocketAddr = src.parse().unwrap();
    let mut r = FlowRecord::new(Listener::Http, Protocol::Connect, src, SystemTime::now());
    r.zone = zone.map(str::to_owned);
    r.finish(SystemTime::now());
    Arc::new(r)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_alerts_land_on_their_subjects_as_the_flow_log_writes_them() {
    let nats = NatsServer::start();
    let mut registry = Registry::default();
    let metrics = BusMetrics::register(&mut registry);
    let (queue, publisher) = Publisher::start(
        BusOptions {
            url: nats.url(),
            stream: "SLUICE".into(),
            partitions: 4,
            queue: 100,
        },
        metrics,
    );
    let web = record(Some("web"), "10.0.1.7:40000");
    let nozone = record(None, "[2001:db8::9]:5000");
    let mut alert = Alert::new(
        AlertKind::Volume,
        Severity::Warning,
        SystemTime::now(),
        "10.0.1.7 sent 3 GiB to example.net".into(),
    );
    alert.src = Some("10.0.1.7".into());
    queue.record(&web);
    queue.record(&nozone);
    queue.alert(&alert);
    publisher.close(Duration::from_secs(10)).await;
    let text = encoded(&registry);
    assert_eq!(sample(&text, "sluice_bus_published_total"), 3.0, "{text}");
    assert_eq!(sample(&text, "sluice_bus_dropped_total"), 0.0, "{text}");

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
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
    let mut registry = Registry::default();
    let (queue, publisher) = Publisher::start(
        BusOptions {
            url: nats.url(),
            stream: "SLUICE".into(),
            partitions: 4,
            queue: 5,
        },
        BusMetrics::register(&mut registry),
    );
    let t = Instant::now();
    for i in 0..1000 {
        queue.record(&record(Some("web"), &format!("10.0.1.{}:1", i % 250)));
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
    let mut registry = Registry::default();
    let (queue, publisher) = Publisher::start(
        BusOptions {
            url: nats.url(),
            stream: "SLUICE".into(),
            partitions: 4,
            queue: 10_000,
        },
        BusMetrics::register(&mut registry),
    );
    // Sent in bursts so that both full groups and short ones go out.
    for i in 0..1000 {
        queue.record(&record(
            Some("bulk"),
            &format!("10.0.{}.{}:1", i / 250, i % 250),
        ));
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
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    assert_eq!(stored(&js, ">").await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_server_restarts_what_waited_and_what_comes_next_is_stored() {
    let mut nats = NatsServer::start();
    let mut registry = Registry::default();
    let (queue, publisher) = Publisher::start(
        BusOptions {
            url: nats.url(),
            stream: "SLUICE".into(),
            partitions: 4,
            queue: 1000,
        },
        BusMetrics::register(&mut registry),
    );
    let published = |registry: &Registry| sample(&encoded(registry), "sluice_bus_published_total");
    for i in 0..10 {
        queue.record(&record(Some("before"), &format!("10.0.1.{i}:1")));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while published(&registry) < 10.0 {
        assert!(Instant::now() < deadline, "{}", encoded(&registry));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    nats.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(&encoded(&registry), "sluice_bus_connected") != 0.0 {
        assert!(Instant::now() < deadline, "{}", encoded(&registry));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // During the outage sends never wait; the queue keeps these.
    let t = Instant::now();
    for i in 0..20 {
        queue.record(&record(Some("during"), &format!("10.0.2.{i}:1")));
    }
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );

    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while sample(&encoded(&registry), "sluice_bus_connected") != 1.0 {
        assert!(
            Instant::now() < deadline,
            "no reconnect: {}",
            encoded(&registry)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..30 {
        queue.record(&record(Some("after"), &format!("10.0.3.{i}:1")));
    }
    publisher.close(Duration::from_secs(15)).await;
    let text = encoded(&registry);
    assert_eq!(sample(&text, "sluice_bus_published_total"), 60.0, "{text}");
    assert_eq!(sample(&text, "sluice_bus_dropped_total"), 0.0, "{text}");

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    assert_eq!(stored(&js, "sluice.flows.before.*").await, 10);
    assert_eq!(stored(&js, "sluice.flows.during.*").await, 20);
    assert_eq!(stored(&js, "sluice.flows.after.*").await, 30);
}
