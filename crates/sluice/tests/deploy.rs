//! The deployment files under `deploy/`: the Kubernetes base's ConfigMap
//! holds a `sluice.yaml` that `sluice validate` accepts, every manifest
//! passes `kubernetes-validate` against a current Kubernetes, the
//! kustomization lists every file of the base, the JetStream stream covers
//! the bus subjects, the systemd unit passes `systemd-analyze verify`, and
//! the ConfigMap's configuration run for real opens only the probes while
//! keepalived's check script follows `/readyz`.
//! Tools that are not installed are skipped with a line saying so.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod util;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use sluice_testkit::{Sluice, TempDir};
use util::{code, sluice, stderr, stdout, workspace_root};

/// The Kubernetes version the manifests are checked against.
const KUBERNETES_VERSION: &str = "1.37.0";

fn kube_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// File names in the Kubernetes base, sorted.
fn kube_files() -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(kube_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// Whether `cmd` runs at all (`cmd --version` or `--help`).
fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--help")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The block scalar `sluice.yaml: |` of the ConfigMap, dedented.
fn configmap_sluice_yaml() -> String {
    let text = read(&kube_dir().join("configmap.yaml"));
    let mut lines = text.lines().skip_while(|l| l.trim() != "sluice.yaml: |");
    let head = lines
        .next()
        .expect("configmap.yaml has a `sluice.yaml: |` key");
    let key_indent = head.len() - head.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .expect("sluice.yaml is not empty");
    body.iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn configmap_sluice_yaml_validates_with_probes_open_and_admin_reachable() {
    let yaml = configmap_sluice_yaml();
    assert!(yaml.contains("admin: 0.0.0.0:9901"), "{yaml}");
    assert!(yaml.contains("open_paths: [/healthz, /readyz]"), "{yaml}");
    let deployment = read(&kube_dir().join("deployment.yaml"));
    for needle in [
        "args: [run, -c, /etc/sluice/sluice.yaml]",
        "mountPath: /etc/sluice,",
        "path: /readyz",
        "path: /healthz",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "drop: [ALL]",
        "type: RuntimeDefault",
        "topologySpreadConstraints:",
        "replicas: 3",
    ] {
        assert!(deployment.contains(needle), "{needle} in deployment.yaml");
    }
    assert!(
        !deployment.contains("subPath"),
        "a subPath mount never reloads"
    );

    let token_path = "/etc/sluice-token/token";
    assert!(yaml.contains(token_path), "{yaml}");
    let dir = TempDir::new("deploy-configmap");
    let token = dir.path("token");
    fs::write(&token, "a-token-for-the-test\n").unwrap();
    let config = dir.path("sluice.yaml");
    fs::write(&config, yaml.replace(token_path, token.to_str().unwrap())).unwrap();
    let out = sluice(["validate", "-c", config.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains(": ok"), "{}", stdout(&out));
}

#[test]
fn kustomization_lists_every_file_of_the_base() {
    let kustomization = read(&kube_dir().join("kustomization.yaml"));
    let listed: Vec<&str> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|x| x.ends_with(".yaml") || x.ends_with(".json"))
        .collect();
    let files: Vec<String> = kube_files()
        .into_iter()
        .filter(|f| f != "kustomization.yaml")
        .collect();
    for f in &files {
        assert!(
            listed.contains(&f.as_str()),
            "{f} not in kustomization.yaml"
        );
    }
    for l in &listed {
        assert!(files.iter().any(|f| f == l), "{l} listed but missing");
    }
    if have("kubectl") {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(kube_dir())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for kind in [
            "kind: ConfigMap",
            "kind: Deployment",
            "kind: Service",
            "kind: PodDisruptionBudget",
            "kind: HorizontalPodAutoscaler",
            "kind: NetworkPolicy",
            "kind: Job",
        ] {
            assert!(text.contains(kind), "{kind} in kubectl kustomize output");
        }
    } else {
        eprintln!("SKIPPED kubectl kustomize: kubectl is not installed");
    }
}

#[test]
fn manifests_pass_kubernetes_validate() {
    if !have("kubernetes-validate") {
        eprintln!(
            "SKIPPED manifests_pass_kubernetes_validate: kubernetes-validate is not installed \
             (pip install kubernetes-validate)"
        );
        return;
    }
    let manifests: Vec<PathBuf> = kube_files()
        .into_iter()
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .map(|f| kube_dir().join(f))
        .collect();
    assert!(manifests.len() >= 7, "{manifests:?}");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(&manifests)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for m in &manifests {
        let name = m.file_name().unwrap().to_string_lossy();
        assert!(
            text.lines()
                .any(|l| l.contains(&*name) && l.contains("passed")),
            "{name} not validated: {text}"
        );
    }
}

#[test]
fn jetstream_stream_takes_the_bus_subjects() {
    let stream: Value =
        serde_json::from_str(&read(&kube_dir().join("jetstream-stream.json"))).unwrap();
    assert_eq!(
        stream["subjects"],
        serde_json::json!(["sluice.flows.>", "sluice.alerts"])
    );
    // The subjects the replicas publish on and create a missing stream with.
    assert_eq!(
        stream["subjects"],
        serde_json::json!(sluice_bus::STREAM_SUBJECTS)
    );
    assert_eq!(stream["name"], "SLUICE", "bus.stream's default");
    let job = read(&kube_dir().join("jetstream-job.yaml"));
    assert!(
        job.contains("nats stream add --config /stream/jetstream-stream.json"),
        "{job}"
    );
}

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit = read(&workspace_root().join("deploy/systemd/sluice.service"));
    for needle in [
        "ExecStart=/usr/local/bin/sluice run -c /etc/sluice/sluice.yaml",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_ADMIN\n",
    ] {
        assert!(unit.contains(needle), "{needle} in sluice.service");
    }
    if !have("systemd-analyze") {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    // verify wants ExecStart's binary to exist: point it at the built one.
    let dir = TempDir::new("deploy-systemd");
    let copy = dir.path("sluice.service");
    fs::write(
        &copy,
        unit.replace("/usr/local/bin/sluice", env!("CARGO_BIN_EXE_sluice")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // verify only warns about bad values; any line about this unit is one.
    let about_unit: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("sluice.service"))
        .collect();
    assert!(about_unit.is_empty(), "{err}");
}

/// Runs keepalived's check script against `admin`; its exit code.
fn keepalived_check(admin: &str) -> i32 {
    let script = workspace_root().join("deploy/keepalived/sluice-check.sh");
    let out = Command::new("sh")
        .arg(script)
        .env("SLUICE_ADMIN", admin)
        .output()
        .unwrap();
    out.status.code().unwrap_or(-1)
}

/// The ConfigMap's configuration run for real (listeners moved to loopback
/// port 0): the probe paths answer without the token, the API does not,
/// and keepalived's check script holds the address only while `/readyz`
/// says ready.
#[test]
fn configmap_config_serves_probes_without_token_and_check_script_follows_readyz() {
    let conf = read(&workspace_root().join("deploy/keepalived/keepalived.conf"));
    assert!(conf.contains("/etc/keepalived/sluice-check.sh"), "{conf}");
    let dir = TempDir::new("deploy-live");
    let token = dir.path("token");
    fs::write(&token, "a-token-for-the-test\n").unwrap();
    let mut yaml =
        configmap_sluice_yaml().replace("/etc/sluice-token/token", token.to_str().unwrap());
    for port in ["3128", "1080", "5353", "9901"] {
        yaml = yaml.replace(&format!("0.0.0.0:{port}"), "127.0.0.1:0");
    }
    let mut s = Sluice::start(env!("CARGO_BIN_EXE_sluice"), &yaml);
    assert_eq!(s.admin_get("/healthz").status, Some(200));
    assert_eq!(s.readyz().0, Some(200));
    assert_eq!(s.admin_get("/api/v1/rules").status, Some(401));
    let admin = s.admin.unwrap().to_string();
    if !have("curl") {
        eprintln!("SKIPPED keepalived check script: curl is not installed");
        return;
    }
    assert_eq!(
        keepalived_check(&admin),
        0,
        "ready gateway keeps the address"
    );
    s.signal("TERM");
    assert!(s.wait_exit(std::time::Duration::from_secs(10)).is_some());
    assert_ne!(keepalived_check(&admin), 0, "stopped gateway gives it up");
}
