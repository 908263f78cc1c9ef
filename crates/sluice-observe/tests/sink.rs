//! The flow sink against real files in a temporary directory.

// A test binary: its helpers may panic too, not only its `#[test]`s.
#![allow(clippy::unwrap_used)]

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use sluice_observe::{FlowRecord, FlowSink, FlowTarget, Listener, Metrics, Protocol};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "sluice-observe-{name}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn record(n: u16) -> FlowRecord {
    let src = "192.0.2.10:50000".parse().unwrap();
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut r = FlowRecord::new(Listener::Http, Protocol::Connect, src, start);
    r.dst_port = Some(n);
    r.finish(start + Duration::from_millis(u64::from(n)));
    r
}

fn read(path: &Path) -> Vec<FlowRecord> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn writes_records_in_order_and_close_flushes_them_all() {
    let dir = TempDir::new("order");
    let path = dir.0.join("flows.jsonl");
    let metrics = Metrics::new();
    let (sink, writer) = FlowSink::start(FlowTarget::File(path.clone()), 20_000, &metrics).unwrap();
    let sent: Vec<FlowRecord> = (0..10_000).map(record).collect();
    for r in &sent {
        sink.clone().send(r);
    }
    writer.close().await.unwrap();
    assert_eq!(read(&path), sent);
    assert!(
        metrics
            .encode()
            .contains("\nsluice_flow_records_dropped_total 0\n")
    );
}

#[tokio::test]
async fn reopen_after_rename_writes_to_a_new_file_and_loses_nothing() {
    let dir = TempDir::new("reopen");
    let path = dir.0.join("flows.jsonl");
    let rotated = dir.0.join("flows.jsonl.1");
    let metrics = Metrics::new();
    let (sink, writer) = FlowSink::start(FlowTarget::File(path.clone()), 1024, &metrics).unwrap();

    let before: Vec<FlowRecord> = (0..100).map(record).collect();
    for r in &before {
        sink.send(r);
    }
    // What logrotate does: rename, then signal.
    fs::rename(&path, &rotated).unwrap();
    writer.reopen().await.unwrap();
    let after: Vec<FlowRecord> = (100..200).map(record).collect();
    for r in &after {
        sink.send(r);
    }
    writer.close().await.unwrap();

    assert_eq!(read(&rotated), before);
    assert_eq!(read(&path), after);
}

#[tokio::test]
async fn reopen_of_stdout_is_a_no_op() {
    let metrics = Metrics::new();
    let (_sink, writer) = FlowSink::start(FlowTarget::Stdout, 4, &metrics).unwrap();
    writer.reopen().await.unwrap();
    writer.close().await.unwrap();
}

#[test]
fn a_file_that_cannot_be_opened_is_an_error() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("no-such-dir").join("flows.jsonl");
    let err = FlowSink::start(FlowTarget::File(path), 4, &Metrics::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}
