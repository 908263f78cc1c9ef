//! The transparent listener end to end, in network namespaces this test
//! creates: a client namespace whose default route goes through a gateway
//! namespace, where the real `sluice` binary runs behind the ruleset of
//! `deploy/transparent/sluice.nft`, and an origin namespace with TLS, HTTP,
//! TCP echo, UDP and DNS servers (`tests/netns/origin.py`). Clients run in
//! the client namespace (`tests/netns/client.py`) and never name a proxy.
//!
//! Addresses are documentation ranges, private to the namespaces: the LAN
//! is 192.0.2.0/24 (client .2, gateway .1), the outside 198.51.100.0/24
//! (gateway .1, origin .10 and .20). A `cidr` allow inside special space
//! lifts the guard for the origin, as an operator would for an internal
//! service.
//!
//! Needs root, `ip` (iproute2), `nft` (nftables), `python3` and `openssl`;
//! when namespaces cannot be created at all the tests say so and skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use serde_json::Value;
use sluice_testkit::{Certs, KillOnDrop, Sluice, TempDir, make_certs, output_within};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const MARK: &str = "0x5c";

const CLIENT_IP: &str = "192.0.2.2";
const GW_LAN: &str = "192.0.2.1";
const ORIGIN: &str = "198.51.100.10";
const ELSEWHERE: &str = "198.51.100.20";

fn netns_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netns")
}

fn ruleset_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/transparent/sluice.nft")
}

/// Runs a command (bounded) and returns (success, stdout + stderr).
fn run(args: &[&str]) -> (bool, String) {
    let out = output_within(Command::new(args[0]).args(&args[1..]), CMD_TIMEOUT);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must(args: &[&str]) {
    let (ok, text) = run(args);
    assert!(ok, "{args:?} failed: {text}");
}

/// Network namespaces named for this run, deleted on drop (even when a test
/// fails), with what runs inside them stopped first.
struct Netns {
    client: String,
    gw: String,
    origin: String,
}

impl Netns {
    /// Creates the three namespaces, or says why it cannot.
    fn create() -> Result<Netns, String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        if let Err(e) = Command::new("ip").arg("-V").output() {
            return Err(format!("cannot run `ip` (iproute2): {e}"));
        }
        let ns = Netns {
            client: format!("slc-{tag}"),
            gw: format!("slg-{tag}"),
            origin: format!("slo-{tag}"),
        };
        for n in [&ns.client, &ns.gw, &ns.origin] {
            let (ok, text) = run(&["ip", "netns", "add", n]);
            if !ok {
                return Err(format!("`ip netns add {n}` failed: {}", text.trim()));
            }
        }
        Ok(ns)
    }

    fn exec<'a>(&'a self, ns: &'a str) -> Vec<&'a str> {
        vec!["ip", "netns", "exec", ns]
    }

    /// Two veth links, addresses, routes; the gateway forwards.
    fn wire(&self) {
        let (c, g, o) = (&self.client, &self.gw, &self.origin);
        must(&[
            "ip", "-n", g, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns",
            c,
        ]);
        must(&[
            "ip", "-n", g, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns",
            o,
        ]);
        for (ns, dev, addrs) in [
            (c, "eth0", vec!["192.0.2.2/24", "2001:db8:1::2/64"]),
            (g, "lan0", vec!["192.0.2.1/24", "2001:db8:1::1/64"]),
            (g, "wan0", vec!["198.51.100.1/24", "2001:db8:2::1/64"]),
            (
                o,
                "eth0",
                vec!["198.51.100.10/24", "198.51.100.20/24", "2001:db8:2::10/64"],
            ),
        ] {
            for a in addrs {
                let mut cmd = vec!["ip", "-n", ns, "addr", "add", a, "dev", dev];
                if a.contains(':') {
                    // No duplicate address detection: usable at once.
                    cmd.push("nodad");
                }
                must(&cmd);
            }
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        must(&["ip", "-n", c, "route", "add", "default", "via", GW_LAN]);
        must(&[
            "ip",
            "-n",
            o,
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
        ]);
        must(&[
            "ip",
            "-n",
            c,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:1::1",
        ]);
        must(&[
            "ip",
            "-n",
            o,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:2::1",
        ]);
        for knob in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            let mut fwd = self.exec(g);
            fwd.extend(["sysctl", "-qw", knob]);
            must(&fwd);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in [&self.client, &self.gw, &self.origin] {
            // Processes still inside are ours (children killed by their own
            // guards); deleting the name is enough to free the interfaces.
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The whole set-up. Fields drop in order: processes before namespaces.
struct Lab {
    sluice: Sluice,
    _origin: KillOnDrop,
    origin_log: PathBuf,
    certs: Certs,
    dir: TempDir,
    ns: Netns,
}

/// The policy every test uses.
const POLICY: &str = "
dns:
  upstreams: [198.51.100.10:53]
limits:
  connect_timeout: 3s
  header_timeout: 3s
mode: enforce
zones:
  - name: lan
    sources: [192.0.2.0/24, \"2001:db8:1::/64\"]
    allow:
      - host: allowed.test
        ports: [443, 80]
        id: allowed-name
      - cidr: 198.51.100.10/32
        ports: any
        id: origin-lift
      - cidr: \"2001:db8:2::10/128\"
        ports: any
        id: origin6-lift
    deny:
      - host: denied.test
        id: denied-name
      - cidr: 198.51.100.10/32
        ports: [7001]
        id: no-7001
";

/// Builds the namespaces and starts the origin and Sluice (with `extra`
/// lines under `listen:`); None (after saying why) where namespaces
/// cannot be made. The ruleset is not loaded yet.
fn lab(extra_listen: &str) -> Option<Lab> {
    lab_with(extra_listen, &format!("{GW_LAN}:0"))
}

/// `lab` with the transparent listener bound to `transparent`.
fn lab_with(extra_listen: &str, transparent: &str) -> Option<Lab> {
    lab_policy(extra_listen, transparent, |_, _| POLICY.to_owned())
}

/// `lab_with` with the policy `policy` writes, given the origin's test CA
/// and the lab's directory.
fn lab_policy(
    extra_listen: &str,
    transparent: &str,
    policy: impl FnOnce(&Certs, &TempDir) -> String,
) -> Option<Lab> {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED: network namespaces are not available here: {why}");
            return None;
        }
    };
    ns.wire();
    let dir = TempDir::new("transparent");
    let certs = make_certs(&dir, "DNS:allowed.test,DNS:denied.test,DNS:other.test");
    let origin_log = dir.path("origin.jsonl");
    std::fs::write(&origin_log, "").unwrap();
    let names = r#"{"allowed.test": ["198.51.100.10"], "denied.test": ["198.51.100.10"]}"#;
    let script = netns_dir().join("origin.py");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.origin, "python3"])
        .arg(&script)
        .arg(&origin_log)
        .arg(&certs.cert)
        .arg(&certs.key)
        .arg(names)
        .args([
            "tls:198.51.100.10:443",
            "tls:198.51.100.20:443",
            "http:198.51.100.10:80",
            "echo:198.51.100.10:7000",
            "echo:198.51.100.10:7001",
            "echo:198.51.100.10:853",
            "udp:198.51.100.10:443",
            "dns:198.51.100.10:53",
            "echo:2001:db8:2::10:7000",
            "udp:2001:db8:2::10:443",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("start origin.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let origin = KillOnDrop(child);
    assert_eq!(line.trim(), "ready", "origin did not start");

    // `Sluice::start_in` adds `log.flows` (to its own directory).
    let policy = policy(&certs, &dir);
    let yaml = format!(
        "listen:\n  http: {GW_LAN}:0\n  transparent: \"{transparent}\"\n  transparent_mark: {MARK}\n\
         {extra_listen}{policy}"
    );
    let sluice = Sluice::start_in(&ns.exec(&ns.gw), BIN, &yaml);
    assert!(sluice.transparent.is_some(), "no transparent listener line");
    Some(Lab {
        sluice,
        _origin: origin,
        origin_log,
        certs,
        dir,
        ns,
    })
}

impl Lab {
    /// Loads deploy/transparent/sluice.nft into the gateway, with its
    /// defines pointed at this run's listener.
    fn load_ruleset(&self) {
        let port = self.sluice.transparent.unwrap().port();
        let dns_port = self.sluice.dns.map_or(53, |a| a.port());
        let text = std::fs::read_to_string(ruleset_path()).unwrap();
        let mut replaced = 0;
        let text: String = text
            .lines()
            .map(|l| {
                let l = if l.starts_with("define SLUICE_PORT ") {
                    replaced += 1;
                    format!("define SLUICE_PORT = {port}")
                } else if l.starts_with("define LAN_IF ") {
                    replaced += 1;
                    "define LAN_IF = \"lan0\"".to_owned()
                } else if l.starts_with("define SLUICE_MARK ") {
                    replaced += 1;
                    format!("define SLUICE_MARK = {MARK}")
                } else if l.starts_with("define SLUICE_DNS_PORT ") {
                    replaced += 1;
                    format!("define SLUICE_DNS_PORT = {dns_port}")
                } else {
                    l.to_owned()
                };
                l + "\n"
            })
            .collect();
        assert_eq!(replaced, 4, "the ruleset's defines changed");
        let path = self.dir.path("sluice.nft");
        std::fs::write(&path, text).unwrap();
        let mut cmd = self.ns.exec(&self.ns.gw);
        let p = path.display().to_string();
        cmd.extend(["nft", "-f", &p]);
        must(&cmd);
    }

    /// Runs client.py in the client namespace and returns its JSON.
    fn client(&self, args: &[&str]) -> Value {
        self.client_trusting(args, &self.certs.ca)
    }

    /// `client`, trusting the CA in `ca` for TLS.
    fn client_trusting(&self, args: &[&str], ca: &Path) -> Value {
        let ca = ca.display().to_string();
        let script = netns_dir().join("client.py").display().to_string();
        let mut cmd = self.ns.exec(&self.ns.client);
        cmd.extend(["python3", &script]);
        cmd.extend(args);
        cmd.extend(["--ca", &ca, "--timeout", "3"]);
        let out = output_within(Command::new(cmd[0]).args(&cmd[1..]), CMD_TIMEOUT);
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "client.py {args:?} printed no JSON ({e}): {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Runs a client exchange and returns what it saw and the one flow
    /// record it left.
    fn exchange(&self, args: &[&str]) -> (Value, Value) {
        let before = self.sluice.records().len();
        let seen = self.client(args);
        let records = self.sluice.wait_records(before + 1);
        assert_eq!(
            records.len(),
            before + 1,
            "expected one new record for {args:?} (client saw {seen}); stderr: {:?}",
            self.sluice.stderr.lock().unwrap()
        );
        (seen, records[before].clone())
    }

    /// Contacts logged by the origin's servers.
    fn contacts(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.origin_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn contacted(&self, kind: &str, local: &str) -> usize {
        self.contacts()
            .iter()
            .filter(|c| c["kind"] == kind && c["local"] == local && c["error"].is_null())
            .count()
    }

    /// Packets counted by the rule of the gateway's ruleset that carries
    /// `needle`.
    fn rule_packets(&self, chain: &str, needle: &str) -> u64 {
        let mut cmd = self.ns.exec(&self.ns.gw);
        cmd.extend(["nft", "list", "chain", "inet", "sluice", chain]);
        let (ok, text) = run(&cmd);
        assert!(ok, "{text}");
        text.lines()
            .find(|l| l.contains(needle))
            .and_then(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let i = w.iter().position(|x| *x == "packets")?;
                w.get(i + 1)?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no counter on `{needle}` in {text}"))
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

// === the transparent listener behind the ruleset ===

#[test]
fn redirected_flows_are_judged_by_sni_host_and_original_destination() {
    let Some(lab) = lab("") else { return };
    lab.load_ruleset();
    let tls_to = |ip: &str| format!("{ip}:443");

    // Allowed SNI: reaches the origin, recorded by name.
    let (seen, rec) = lab.exchange(&["tls", &tls_to(ORIGIN), "--sni", "allowed.test"]);
    assert_eq!(seen["body"]["origin"], "198.51.100.10:443", "{seen}");
    assert_eq!(seen["body"]["sni"], "allowed.test");
    for (k, v) in [
        ("listener", "transparent"),
        ("protocol", "tls"),
        ("zone", "lan"),
        ("verdict", "allow"),
        ("rule", "allowed-name"),
        ("dst_host", "allowed.test"),
        ("dst_ip", ORIGIN),
        ("sni", "allowed.test"),
        ("original_dst", "198.51.100.10:443"),
    ] {
        assert_eq!(s(&rec[k]), v, "{k} in {rec}");
    }
    assert_eq!(rec["dst_port"], 443);
    assert!(
        s(&rec["src"]).starts_with(&format!("{CLIENT_IP}:")),
        "{rec}"
    );
    assert!(rec["bytes_in"].as_u64().unwrap() > 100, "{rec}");
    assert!(!s(&rec["reason"]).contains("not among"), "{rec}");

    // Denied SNI: closed before anything reaches the origin.
    let hits = lab.contacted("tls", "198.51.100.10:443");
    let (seen, rec) = lab.exchange(&["tls", &tls_to(ORIGIN), "--sni", "denied.test"]);
    assert_eq!(seen["ok"], false, "{seen}");
    assert_eq!(rec["verdict"], "deny");
    assert_eq!(rec["enforced"], true);
    assert_eq!(rec["rule"], "denied-name");
    assert_eq!(rec["dst_host"], "denied.test");
    assert_eq!(rec["dst_ip"], Value::Null);
    assert_eq!(lab.contacted("tls", "198.51.100.10:443"), hits);

    // SNI spoofed to another address: Sluice dials the name's own address.
    let (seen, rec) = lab.exchange(&["tls", &tls_to(ELSEWHERE), "--sni", "allowed.test"]);
    assert_eq!(seen["body"]["origin"], "198.51.100.10:443", "{seen}");
    assert_eq!(lab.contacted("tls", "198.51.100.20:443"), 0);
    assert_eq!(rec["original_dst"], "198.51.100.20:443");
    assert_eq!(rec["dst_ip"], ORIGIN);
    assert_eq!(rec["rule"], "allowed-name");
    assert!(
        s(&rec["reason"]).contains("198.51.100.20 is not among the addresses of allowed.test"),
        "{rec}"
    );

    // Split ClientHello (two writes, 0.5 s apart): still read whole.
    let (seen, rec) = lab.exchange(&["tls", &tls_to(ORIGIN), "--sni", "allowed.test", "--split"]);
    assert_eq!(seen["body"]["sni"], "allowed.test", "{seen}");
    assert_eq!(rec["sni"], "allowed.test");
    assert_eq!(rec["rule"], "allowed-name");

    // No SNI: judged as the original destination by cidr rules.
    let (seen, rec) = lab.exchange(&["tls", &tls_to(ORIGIN)]);
    assert_eq!(seen["body"]["origin"], "198.51.100.10:443", "{seen}");
    assert_eq!(rec["protocol"], "tls");
    assert_eq!(rec["rule"], "origin-lift");
    assert_eq!(rec["dst_host"], Value::Null);

    // Plain HTTP: judged by Host; a denied Host gets a 403 naming the rule.
    let (seen, rec) = lab.exchange(&["http", "198.51.100.10:80", "--host", "allowed.test"]);
    assert_eq!(seen["status"], 200, "{seen}");
    assert_eq!(seen["body"]["host"], "allowed.test");
    assert_eq!(rec["protocol"], "http-transparent");
    assert_eq!(rec["method"], "GET");
    assert_eq!(rec["rule"], "allowed-name");
    assert_eq!(rec["dst_host"], "allowed.test");
    let (seen, rec) = lab.exchange(&["http", "198.51.100.10:80", "--host", "denied.test"]);
    assert_eq!(seen["status"], 403, "{seen}");
    assert_eq!(seen["sluice_rule"], "denied-name");
    assert_eq!(rec["rule"], "denied-name");
    assert_eq!(rec["status"], 403);

    // Raw TCP: judged by the original destination against cidr rules.
    let (seen, rec) = lab.exchange(&["tcp", "198.51.100.10:7000", "--payload", "ping"]);
    assert_eq!(seen["body"], "echo 198.51.100.10:7000 ping", "{seen}");
    assert_eq!(rec["protocol"], "tcp");
    assert_eq!(rec["rule"], "origin-lift");
    assert_eq!(rec["dst_ip"], ORIGIN);
    assert_eq!(rec["dst_port"], 7000);
    assert_eq!(rec["bytes_out"], 4);
    let (seen, rec) = lab.exchange(&["tcp", "198.51.100.10:7001", "--payload", "ping"]);
    assert_eq!(seen["ok"], false, "{seen}");
    assert_eq!(rec["rule"], "no-7001");
    assert_eq!(lab.contacted("echo", "198.51.100.10:7001"), 0);
    let (_, rec) = lab.exchange(&["tcp", "198.51.100.20:7000", "--payload", "ping"]);
    assert_eq!(rec["rule"], "guard/special-address", "{rec}");

    // Loop protection: Sluice's own connections carried the mark.
    assert!(lab.rule_packets("output", "meta mark") > 0);
}

/// A slow upload through the redirect: interim records every
/// `log.interim` while the flow runs, their bytes and the closing record's
/// summing to what the client sent and received.
#[test]
fn a_long_redirected_flow_writes_interim_records_that_sum_to_its_bytes() {
    let Some(lab) = lab("log:\n  interim: 200ms\n") else {
        return;
    };
    lab.load_ruleset();
    let payload = "x".repeat(1000);
    let seen = lab.client(&[
        "tcp",
        &format!("{ORIGIN}:7000"),
        "--payload",
        &payload,
        "--chunks",
        "8",
        "--pause",
        "0.15",
    ]);
    assert_eq!(seen["ok"], true, "{seen}");
    let closing = lab.sluice.wait_record("the closing record", |r| {
        r["listener"] == "transparent" && r["interim"] == false
    });
    let records: Vec<Value> = lab
        .sluice
        .records()
        .into_iter()
        .filter(|r| r["id"] == closing["id"])
        .collect();
    let interims = records.iter().filter(|r| r["interim"] == true).count();
    assert!(interims >= 2, "{records:#?}");
    assert_eq!(interims + 1, records.len(), "{records:#?}");
    let sum = |f: &str| -> u64 { records.iter().map(|r| r[f].as_u64().unwrap()).sum() };
    assert_eq!(
        sum("bytes_out"),
        seen["sent"].as_u64().unwrap(),
        "{records:#?}"
    );
    assert_eq!(
        sum("bytes_in"),
        seen["received"].as_u64().unwrap(),
        "{records:#?}"
    );
    for r in &records {
        assert_eq!(s(&r["original_dst"]), "198.51.100.10:7000", "{r}");
        assert_eq!(s(&r["rule"]), "origin-lift", "{r}");
    }
}

#[test]
fn a_listed_sni_is_intercepted_on_the_transparent_listener() {
    let ca = std::cell::RefCell::new(PathBuf::new());
    let lab = lab_policy("", &format!("{GW_LAN}:0"), |certs, dir| {
        let out = dir.path("sluice-ca");
        let o = output_within(
            Command::new(BIN).args(["ca", "init", "--out"]).arg(&out),
            CMD_TIMEOUT,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        *ca.borrow_mut() = out.join("sluice-ca.pem");
        let zone = "    sources: [192.0.2.0/24, \"2001:db8:1::/64\"]\n";
        format!(
            "inspect:\n  ca:\n    cert_file: {}\n    key_file: {}\n  extra_roots: [{}]\n",
            out.join("sluice-ca.pem").display(),
            out.join("sluice-ca.key").display(),
            certs.ca.display()
        ) + &POLICY.replace(
            zone,
            &format!(
                "{zone}    inspect:\n      tls: [allowed.test]\n      dlp: {{github: block}}\n"
            ),
        )
    });
    let Some(lab) = lab else { return };
    lab.load_ruleset();
    let ca = ca.into_inner();
    // curl in the client namespace, trusting only Sluice's CA: the leaf
    // it saw is Sluice's. It never names a proxy.
    let before = lab.sluice.records().len();
    let mut cmd = lab.ns.exec(&lab.ns.client);
    let ca_arg = ca.display().to_string();
    let resolve = format!("allowed.test:443:{ORIGIN}");
    cmd.extend([
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        &ca_arg,
        "--resolve",
        &resolve,
        "https://allowed.test/",
    ]);
    let out = output_within(Command::new(cmd[0]).args(&cmd[1..]), CMD_TIMEOUT);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(body.trim()).unwrap();
    let rec = lab.sluice.wait_records(before + 1)[before].clone();
    assert_eq!(seen["sni"], "allowed.test", "{seen}");
    assert_eq!(seen["host"], "allowed.test", "{seen}");
    for (k, v) in [
        ("listener", "transparent"),
        ("protocol", "tls"),
        ("verdict", "allow"),
        ("sni", "allowed.test"),
        ("method", "GET"),
    ] {
        assert_eq!(s(&rec[k]), v, "{k} in {rec}");
    }
    assert_eq!(rec["intercepted"], true, "{rec}");
    assert_eq!(rec["tls"], true, "{rec}");
    assert_eq!(rec["status"], 200, "{rec}");
    // The decrypted requests go through the zone's content inspection: a
    // token in a header is refused with the DLP rule, recorded as a
    // finding of the intercepted flow, and never written anywhere.
    let token = "ghp_Zq8xW3vR1tY6uI0oP9aS2dF5gH7jK4lM3nB8";
    let before = lab.sluice.records().len();
    let auth = format!("Authorization: token {token}");
    let mut cmd = lab.ns.exec(&lab.ns.client);
    cmd.extend([
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        &ca_arg,
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-H",
        &auth,
        "https://allowed.test/",
    ]);
    let out = output_within(Command::new(cmd[0]).args(&cmd[1..]), CMD_TIMEOUT);
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(head.contains("sluice-rule: inspect/dlp/github"), "{head}");
    let rec = lab.sluice.wait_records(before + 1)[before].clone();
    assert_eq!(rec["intercepted"], true, "{rec}");
    assert_eq!(s(&rec["rule"]), "inspect/dlp/github", "{rec}");
    assert_eq!(rec["findings"][0]["type"], "github", "{rec}");
    let flows = std::fs::read_to_string(&lab.sluice.flows).unwrap();
    assert!(!flows.contains(token), "the flow log holds the token");
    let err = lab.sluice.stderr.lock().unwrap().join("\n");
    assert!(!err.contains(token), "stderr holds the token");
    // Plain HTTP on the same listener says tls: false, not intercepted; in
    // this zone (it asks for DLP) it is served request by request.
    let (seen, rec) = lab.exchange(&["http", &format!("{ORIGIN}:80"), "--host", "allowed.test"]);
    assert_eq!(rec["tls"], false, "{rec}");
    assert!(rec["intercepted"].is_null(), "{rec}");
    assert_eq!(s(&rec["protocol"]), "http-transparent", "{rec}");
    assert_eq!(rec["status"], 200, "{rec} {seen}");
    assert!(
        s(&rec["reason"]).contains("inspected: 1 HTTP request"),
        "{rec}"
    );
    // ... so its content is inspected too: the token in a header is
    // refused before the request reaches the origin.
    let before = lab.sluice.records().len();
    let resolve80 = format!("allowed.test:80:{ORIGIN}");
    let mut cmd = lab.ns.exec(&lab.ns.client);
    cmd.extend([
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--resolve",
        &resolve80,
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-H",
        &auth,
        "http://allowed.test/plain",
    ]);
    let out = output_within(Command::new(cmd[0]).args(&cmd[1..]), CMD_TIMEOUT);
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(head.contains("sluice-rule: inspect/dlp/github"), "{head}");
    let rec = lab.sluice.wait_records(before + 1)[before].clone();
    assert_eq!(s(&rec["protocol"]), "http-transparent", "{rec}");
    assert_eq!(s(&rec["rule"]), "inspect/dlp/github", "{rec}");
    assert_eq!(rec["findings"][0]["type"], "github", "{rec}");
    assert_eq!(rec["status"], 403, "{rec}");
    let flows = std::fs::read_to_string(&lab.sluice.flows).unwrap();
    assert!(!flows.contains(token), "the flow log holds the token");
}

#[test]
fn the_ruleset_stops_every_other_way_out() {
    let Some(lab) = lab("") else { return };
    // Without the ruleset the gateway forwards: these are real ways out.
    let udp = lab.client(&["udp", "198.51.100.10:443"]);
    assert_eq!(udp["body"], "pong", "control: UDP 443 should pass: {udp}");
    let dns = lab.client(&["dns", "198.51.100.10:53", "--name", "allowed.test"]);
    assert_eq!(dns["ok"], true, "control: direct DNS should pass: {dns}");
    let dot = lab.client(&["tcp", "198.51.100.10:853", "--payload", "x"]);
    assert_eq!(dot["ok"], true, "control: TCP 853 should pass: {dot}");
    let from_client = |kind: &str| {
        lab.contacts()
            .iter()
            .filter(|c| c["kind"] == kind && s(&c["peer"]).starts_with("192.0.2."))
            .count()
    };
    let before = (from_client("udp"), from_client("dns"), from_client("echo"));

    lab.load_ruleset();
    let udp = lab.client(&["udp", "198.51.100.10:443"]);
    assert_eq!(udp["ok"], false, "QUIC (UDP 443) left: {udp}");
    let dns = lab.client(&["dns", "198.51.100.10:53", "--name", "allowed.test"]);
    assert_eq!(dns["ok"], false, "DNS to another resolver left: {dns}");
    let dot = lab.client(&["tcp", "198.51.100.10:853", "--payload", "x"]);
    assert_eq!(dot["ok"], false, "DNS over TLS (853) left: {dot}");
    assert_eq!(
        (from_client("udp"), from_client("dns"), from_client("echo")),
        before,
        "the origin heard from the client directly"
    );
    assert!(lab.rule_packets("forward", "QUIC") > 0);
    assert!(lab.rule_packets("forward", "DNS over TLS") > 0);
    assert!(lab.rule_packets("forward", "DNS to a resolver") > 0);
    // None of them became a flow through Sluice either.
    assert!(
        lab.sluice
            .records()
            .iter()
            .all(|r| !s(&r["original_dst"]).ends_with(":853")),
        "853 was redirected instead of dropped"
    );
}

#[test]
fn ipv6_is_redirected_too_and_one_dual_stack_listener_serves_both_families() {
    let Some(lab) = lab_with("", "[::]:0") else {
        return;
    };
    let udp = lab.client(&["udp", "2001:db8:2::10:443"]);
    assert_eq!(udp["body"], "pong", "control: IPv6 UDP should pass: {udp}");
    lab.load_ruleset();

    // IPv6: IP6T_SO_ORIGINAL_DST.
    let (seen, rec) = lab.exchange(&["tcp", "2001:db8:2::10:7000", "--payload", "ping"]);
    assert_eq!(seen["body"], "echo [2001:db8:2::10]:7000 ping", "{seen}");
    assert_eq!(rec["original_dst"], "[2001:db8:2::10]:7000");
    assert_eq!(rec["dst_ip"], "2001:db8:2::10");
    assert_eq!(rec["rule"], "origin6-lift");
    assert_eq!(rec["zone"], "lan");
    // IPv4 on the same dual-stack socket (an IPv4-mapped peer).
    let (seen, rec) = lab.exchange(&["tcp", "198.51.100.10:7000", "--payload", "ping"]);
    assert_eq!(seen["body"], "echo 198.51.100.10:7000 ping", "{seen}");
    assert_eq!(rec["original_dst"], "198.51.100.10:7000");
    assert_eq!(rec["rule"], "origin-lift");
    assert_eq!(rec["zone"], "lan");
    // Everything else over IPv6 is dropped.
    let udp = lab.client(&["udp", "2001:db8:2::10:443"]);
    assert_eq!(udp["ok"], false, "IPv6 UDP left: {udp}");
}

#[test]
fn a_dns_grant_names_a_nameless_flow() {
    let Some(lab) = lab(&format!("  dns: {GW_LAN}:0\n")) else {
        return;
    };
    lab.load_ruleset();
    let dns = lab.sluice.dns.expect("DNS listener address").to_string();
    let target = "198.51.100.10:443";
    // Before any answer: a raw (not TLS) flow is judged by its address.
    let (_, rec) = lab.exchange(&["tcp", target, "--payload", "ping"]);
    assert_eq!(rec["protocol"], "tcp");
    assert_eq!(rec["rule"], "origin-lift", "{rec}");
    assert_eq!(rec["grant"], Value::Null);
    // The client asks Sluice's resolver (allowed through the ruleset).
    let before = lab.sluice.records().len();
    let answer = lab.client(&["dns", &dns, "--name", "allowed.test"]);
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(
        s(&answer["body"]).ends_with("c633640a"),
        "198.51.100.10 in {answer}"
    );
    lab.sluice.wait_records(before + 1);
    // Now the same flow is judged by the name the answer granted.
    let (_, rec) = lab.exchange(&["tcp", target, "--payload", "ping"]);
    assert_eq!(rec["grant"], "allowed.test", "{rec}");
    assert_eq!(rec["dst_host"], "allowed.test");
    assert_eq!(rec["dst_ip"], ORIGIN);
    assert_eq!(rec["rule"], "allowed-name");
    assert_eq!(rec["original_dst"], target);
}

// === one table, every listener ===

/// One request, written for every listener.
struct Case {
    name: &'static str,
    /// client.py protocol and, for the proxies, the `host:port` asked for.
    proto: &'static str,
    proxy_target: &'static str,
    /// Where a transparent client connects (the name's address), and the
    /// name it puts on the wire (SNI or Host).
    direct: &'static str,
    name_on_wire: Option<&'static str>,
    allowed: bool,
    rule: &'static str,
    dst_host: Option<&'static str>,
    dst_ip: Option<&'static str>,
    port: u16,
}

const CASES: &[Case] = &[
    Case {
        name: "allowed name over TLS",
        proto: "tls",
        proxy_target: "allowed.test:443",
        direct: "198.51.100.10:443",
        name_on_wire: Some("allowed.test"),
        allowed: true,
        rule: "allowed-name",
        dst_host: Some("allowed.test"),
        dst_ip: Some(ORIGIN),
        port: 443,
    },
    Case {
        name: "denied name over TLS",
        proto: "tls",
        proxy_target: "denied.test:443",
        direct: "198.51.100.10:443",
        name_on_wire: Some("denied.test"),
        allowed: false,
        rule: "denied-name",
        dst_host: Some("denied.test"),
        dst_ip: None,
        port: 443,
    },
    Case {
        name: "allowed name over plain HTTP",
        proto: "http",
        proxy_target: "allowed.test:80",
        direct: "198.51.100.10:80",
        name_on_wire: Some("allowed.test"),
        allowed: true,
        rule: "allowed-name",
        dst_host: Some("allowed.test"),
        dst_ip: Some(ORIGIN),
        port: 80,
    },
    Case {
        name: "address allowed by cidr",
        proto: "tcp",
        proxy_target: "198.51.100.10:7000",
        direct: "198.51.100.10:7000",
        name_on_wire: None,
        allowed: true,
        rule: "origin-lift",
        dst_host: None,
        dst_ip: Some(ORIGIN),
        port: 7000,
    },
    Case {
        name: "address denied by cidr",
        proto: "tcp",
        proxy_target: "198.51.100.10:7001",
        direct: "198.51.100.10:7001",
        name_on_wire: None,
        allowed: false,
        rule: "no-7001",
        dst_host: None,
        dst_ip: Some(ORIGIN),
        port: 7001,
    },
    Case {
        name: "special address",
        proto: "tcp",
        proxy_target: "198.51.100.20:7000",
        direct: "198.51.100.20:7000",
        name_on_wire: None,
        allowed: false,
        rule: "guard/special-address",
        dst_host: None,
        dst_ip: Some(ELSEWHERE),
        port: 7000,
    },
];

/// Whether this build accepts `listen.socks5` (the SOCKS5 listener).
fn socks5_supported(dir: &TempDir) -> bool {
    let p = dir.path("socks5-probe.yaml");
    std::fs::write(&p, "listen:\n  socks5: 127.0.0.1:0\n").unwrap();
    let out = output_within(
        Command::new(BIN).args(["validate", "-c"]).arg(&p),
        CMD_TIMEOUT,
    );
    out.status.success()
}

#[test]
fn every_listener_gives_the_same_decision_and_record() {
    let probe = TempDir::new("socks5-probe");
    let socks5 = socks5_supported(&probe);
    if !socks5 {
        eprintln!(
            "note: listen.socks5 is not supported by this build; comparing HTTP and transparent only"
        );
    }
    let extra = if socks5 {
        format!("  socks5: {GW_LAN}:0\n")
    } else {
        String::new()
    };
    let Some(lab) = lab(&extra) else { return };
    lab.load_ruleset();
    let http = format!("connect:{}", lab.sluice.http);
    // Read from the announcement, so that this test does not depend on the
    // SOCKS5 listener's own helpers.
    let socks = lab
        .sluice
        .stderr
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.strip_prefix("sluice: SOCKS5 proxy listening on "))
        .map(|a| format!("socks5:{a}"));
    assert_eq!(socks.is_some(), socks5, "SOCKS5 listener announcement");
    let fields = [
        "zone", "verdict", "enforced", "rule", "dst_host", "dst_ip", "dst_port",
    ];
    let mut problems = Vec::new();
    for c in CASES {
        let mut runs: Vec<(&str, Vec<String>)> = Vec::new();
        let mut proxied = vec![c.proto.to_owned(), c.proxy_target.to_owned()];
        let mut direct = vec![c.proto.to_owned(), c.direct.to_owned()];
        for args in [&mut proxied, &mut direct] {
            match (c.proto, c.name_on_wire) {
                ("tls", Some(n)) => args.extend(["--sni".into(), n.into()]),
                ("http", Some(n)) => args.extend(["--host".into(), n.into()]),
                _ => args.extend(["--payload".into(), "ping".into()]),
            }
        }
        let via = |v: &str| {
            let mut a = proxied.clone();
            a.extend(["--via".into(), v.to_owned()]);
            a
        };
        runs.push(("http", via(&http)));
        if let Some(sv) = &socks {
            runs.push(("socks5", via(sv)));
        }
        runs.push(("transparent", direct.clone()));
        let mut first: Option<(String, Value)> = None;
        for (listener, args) in runs {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (seen, rec) = lab.exchange(&args);
            assert_eq!(s(&rec["listener"]), listener, "{rec}");
            if seen["ok"].as_bool() != Some(c.allowed) {
                problems.push(format!(
                    "{} via {listener}: client saw {seen}, expected allowed={}",
                    c.name, c.allowed
                ));
            }
            let expect = [
                ("zone", Value::from("lan")),
                (
                    "verdict",
                    Value::from(if c.allowed { "allow" } else { "deny" }),
                ),
                ("enforced", Value::from(true)),
                ("rule", Value::from(c.rule)),
                ("dst_host", c.dst_host.map_or(Value::Null, Value::from)),
                ("dst_ip", c.dst_ip.map_or(Value::Null, Value::from)),
                ("dst_port", Value::from(c.port)),
            ];
            for (k, v) in &expect {
                if &rec[*k] != v {
                    problems.push(format!(
                        "{} via {listener}: {k} is {} (expected {v})",
                        c.name, rec[*k]
                    ));
                }
            }
            let picked: Value = fields
                .iter()
                .map(|f| (f.to_string(), rec[*f].clone()))
                .collect();
            match &first {
                None => first = Some((listener.to_owned(), picked)),
                Some((l0, p0)) if *p0 != picked => problems.push(format!(
                    "{}: {listener} recorded {picked}, {l0} recorded {p0}",
                    c.name
                )),
                Some(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!(
        "compared {} cases through http{} and transparent",
        CASES.len(),
        if socks5 { ", socks5" } else { "" }
    );
}

// === connections that did not come through a redirect ===

/// A client that connects to the transparent port itself (no redirect, so
/// no original destination) is reset at once, not left waiting on a
/// connection that will never carry anything, and the attempt is recorded.
#[test]
fn a_connection_that_was_not_redirected_is_reset_and_recorded() {
    use std::io::{ErrorKind, Read};
    let sluice = Sluice::start(
        BIN,
        "listen:\n  http: 127.0.0.1:0\n  transparent: 127.0.0.1:0\nmode: enforce\n\
         zones:\n  - name: local\n    sources: [127.0.0.0/8]\n    allow:\n      - host: allowed.test\n        ports: [80]\n",
    );
    let port = sluice.transparent.expect("transparent listener").port();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    // Nothing is sent first: unread bytes would make any close a reset
    // (a client waiting for the server to speak first must see it too).
    let mut buf = [0u8; 64];
    let got = c.read(&mut buf);
    let waited = started.elapsed();
    match got {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} bytes (0 = a plain close)"),
    }
    assert!(waited < Duration::from_secs(2), "reset took {waited:?}");
    let rec = sluice.wait_record("the not-redirected connection", |r| {
        r["listener"] == "transparent"
    });
    assert_eq!(rec["rule"], "default/not-redirected", "{rec}");
    assert_eq!(rec["verdict"], "deny", "{rec}");
    assert!(s(&rec["src"]).starts_with("127.0.0.1:"), "{rec}");
}

/// A namespace of this test's own beside the lab's (a container network on
/// the gateway host), deleted on drop.
struct ExtraNs(String);

impl Drop for ExtraNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The ruleset is scoped to the LAN interface: a second interface on the
/// gateway (a Docker bridge, a pod network) keeps forwarding under it,
/// while everything forwarded from the LAN is still dropped; redirected
/// TCP needs no forwarding at all; and a LAN client that connects to the
/// listener itself is reset at once (and recorded), not left hanging.
#[test]
fn the_ruleset_is_scoped_to_the_lan_and_needs_no_forwarding() {
    let Some(lab) = lab("") else { return };
    // A "container" namespace behind a second interface of the gateway.
    let ctr = ExtraNs(format!("slx-{}", lab.ns.gw.trim_start_matches("slg-")));
    must(&["ip", "netns", "add", &ctr.0]);
    let g = lab.ns.gw.as_str();
    must(&[
        "ip", "-n", g, "link", "add", "ctr0", "type", "veth", "peer", "name", "eth0", "netns",
        &ctr.0,
    ]);
    must(&[
        "ip",
        "-n",
        g,
        "addr",
        "add",
        "203.0.113.1/24",
        "dev",
        "ctr0",
    ]);
    must(&[
        "ip",
        "-n",
        &ctr.0,
        "addr",
        "add",
        "203.0.113.2/24",
        "dev",
        "eth0",
    ]);
    for (ns, dev) in [
        (g, "ctr0"),
        (ctr.0.as_str(), "eth0"),
        (ctr.0.as_str(), "lo"),
    ] {
        must(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    must(&[
        "ip",
        "-n",
        &ctr.0,
        "route",
        "add",
        "default",
        "via",
        "203.0.113.1",
    ]);
    must(&[
        "ip",
        "-n",
        &lab.ns.origin,
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "198.51.100.1",
    ]);
    lab.load_ruleset();

    // The container's forwarded traffic passes (TCP and UDP alike) ...
    let script = netns_dir().join("client.py").display().to_string();
    let ca = lab.certs.ca.display().to_string();
    let from_ctr = |args: &[&str]| -> Value {
        let mut cmd = vec!["ip", "netns", "exec", &ctr.0, "python3", &script];
        cmd.extend(args);
        cmd.extend(["--ca", &ca, "--timeout", "3"]);
        let out = output_within(Command::new(cmd[0]).args(&cmd[1..]), CMD_TIMEOUT);
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
    };
    let before = lab.sluice.records().len();
    let tcp = from_ctr(&["tcp", "198.51.100.10:7000", "--payload", "ping"]);
    assert_eq!(
        tcp["body"], "echo 198.51.100.10:7000 ping",
        "the ruleset broke forwarding for a second interface: {tcp}"
    );
    let udp = from_ctr(&["udp", "198.51.100.10:443"]);
    assert_eq!(udp["body"], "pong", "{udp}");
    assert_eq!(
        lab.sluice.records().len(),
        before,
        "container traffic was redirected"
    );
    // ... while the LAN's is still dropped.
    let udp = lab.client(&["udp", "198.51.100.10:443"]);
    assert_eq!(udp["ok"], false, "UDP from the LAN was forwarded: {udp}");

    // With forwarding off, redirected TCP still goes through Sluice.
    for knob in ["net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"] {
        let mut cmd = lab.ns.exec(g);
        cmd.extend(["sysctl", "-qw", knob]);
        must(&cmd);
    }
    let (seen, rec) = lab.exchange(&["tcp", "198.51.100.10:7000", "--payload", "ping"]);
    assert_eq!(seen["body"], "echo 198.51.100.10:7000 ping", "{seen}");
    assert_eq!(rec["rule"], "origin-lift", "{rec}");
    let (seen, rec) = lab.exchange(&["tls", "198.51.100.10:443", "--sni", "allowed.test"]);
    assert_eq!(seen["body"]["sni"], "allowed.test", "{seen}");
    assert_eq!(rec["verdict"], "allow", "{rec}");

    // A LAN client that connects to the listener itself is reset at once.
    let port = lab.sluice.transparent.unwrap().port().to_string();
    let started = std::time::Instant::now();
    let (seen, rec) = lab.exchange(&["tcp", &format!("{GW_LAN}:{port}"), "--payload", "x"]);
    let waited = started.elapsed();
    let err = format!("{} {}", s(&seen["error"]), s(&seen["recv_error"]));
    assert!(err.to_lowercase().contains("reset"), "not a reset: {seen}");
    assert!(waited < Duration::from_secs(3), "took {waited:?}: {seen}");
    assert_eq!(rec["rule"], "default/not-redirected", "{rec}");
    assert!(lab.rule_packets("input", "not redirected") > 0);
}
