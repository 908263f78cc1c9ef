//! `sluice ca init`: the CA that TLS interception signs leaf certificates
//! with (`inspect.ca`), written with its key 0600 and never over existing
//! files; and the reading of `inspect.ca` and `inspect.extra_roots` at
//! start and in `validate`, every problem named with the file, line and
//! column of the key that names the file.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use anyhow::{Result, bail};
use sluice_net::intercept::{self, Interceptor};
use sluice_policy::{Config, model::FileRef};

/// The certificate's file name in `--out`.
pub const CERT: &str = "sluice-ca.pem";
/// The key's file name in `--out`.
pub const KEY: &str = "sluice-ca.key";

/// `sluice ca init --out DIR`: 0 written, 1 refused or failed.
pub fn init(out: &Path, name: &str) -> ExitCode {
    match write_ca(out, name) {
        Ok((cert, key)) => {
            print!("{}", distribution(&cert, &key));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn write_ca(out: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (out.join(CERT), out.join(KEY));
    for p in [&cert, &key] {
        if p.symlink_metadata().is_ok() {
            bail!(
                "{} exists; not overwriting it (move it away, or choose another --out)",
                p.display()
            );
        }
    }
    std::fs::create_dir_all(out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    let (cert_pem, key_pem) = intercept::new_ca(name).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The key first, created 0600 (never world-readable for a moment).
    write_new(&key, key_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&cert, cert_pem.as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&key);
        return Err(e);
    }
    Ok((cert, key))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// What to do with a new CA.
fn distribution(cert: &Path, key: &Path) -> String {
    let (c, k) = (cert.display(), key.display());
    format!(
        "Wrote the interception CA:\n  certificate  {c}\n  private key  {k} (0600: keep it secret; anyone with it can impersonate every intercepted site)\n\n\
         Configure Sluice:\n  inspect:\n    ca:\n      cert_file: {c}\n      key_file: {k}\n  zones:\n    - name: ...\n      inspect:\n        tls: [\"*.example.com\"]   # only these destinations are intercepted\n\n\
         Make clients trust the certificate (never the key):\n  \
         Debian/Ubuntu:   cp {c} /usr/local/share/ca-certificates/sluice-ca.crt && update-ca-certificates\n  \
         RHEL/Fedora:     cp {c} /etc/pki/ca-trust/source/anchors/ && update-ca-trust\n  \
         Python requests: REQUESTS_CA_BUNDLE=/path/to/bundle-with-{CERT}, or requests.get(url, verify=\"{c}\")\n  \
         curl:            curl --cacert {c} ...  (or the system store above)\n  \
         Node.js:         NODE_EXTRA_CA_CERTS={c}\n  \
         Browsers:        import {c} as an authority (Chrome/Edge use the system store on Linux via NSS:\n                   certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n sluice -i {c}; Firefox: Settings > Certificates)\n\n\
         Clients that pin certificates will refuse interception; leave their destinations out of inspect.tls.\n"
    )
}

/// The interceptor `inspect.ca` describes, if any; `file` is the
/// configuration (relative paths start at its folder).
pub fn interceptor(config: &Config, path: Option<&Path>) -> Result<Option<Arc<Interceptor>>> {
    let ca = &config.inspect.ca;
    let (Some(cert), Some(key)) = (&ca.cert_file, &ca.key_file) else {
        return Ok(None);
    };
    let file = path.map_or_else(
        || "<embedded default>".to_owned(),
        |p| p.display().to_string(),
    );
    let base = path.and_then(Path::parent).unwrap_or(Path::new("."));
    let read = |f: &FileRef, key: &str| {
        let p = base.join(&f.path);
        std::fs::read(&p).map_err(|e| {
            anyhow::anyhow!(
                "{file}:{}:{}: {key} `{}`: cannot read {}: {e}",
                f.line,
                f.column,
                f.path.display(),
                p.display()
            )
        })
    };
    let at = |f: &FileRef, key: &str, why: String| {
        anyhow::anyhow!(
            "{file}:{}:{}: {key} `{}`: {why}",
            f.line,
            f.column,
            f.path.display()
        )
    };
    let mut roots = Vec::new();
    for f in &config.inspect.extra_roots {
        let text = read(f, "inspect.extra_roots")?;
        roots.extend(
            intercept::pem_certs(&text).map_err(|e| at(f, "inspect.extra_roots", e.to_string()))?,
        );
    }
    let cert_pem = read(cert, "inspect.ca.cert_file")?;
    let key_pem = read(key, "inspect.ca.key_file")?;
    match Interceptor::new(&cert_pem, &key_pem, roots) {
        Ok(ic) => Ok(Some(Arc::new(ic))),
        Err(e @ intercept::CaError::Key(_)) => Err(at(key, "inspect.ca.key_file", e.to_string())),
        Err(e) => Err(at(cert, "inspect.ca.cert_file", e.to_string())),
    }
}
