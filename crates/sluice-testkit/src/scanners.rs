//! Real content scanners for the inspection tests, started as child
//! processes in a temporary directory: `clamd` (Debian `clamav-daemon`)
//! with a one-signature database the test writes (no freshclam), and
//! `c-icap` (Debian `c-icap` with `libc-icap-mod-virus-scan`) whose
//! `avscan` service asks that clamd. A missing tool fails the test naming
//! what to install; nothing here passes silently.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{KillOnDrop, TempDir, poll_until};

/// Fails, naming the package, when `program` is not installed.
pub fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(program).is_file());
    assert!(
        found,
        "`{program}` is not installed: install the Debian package `{package}` (see .ci/run)"
    );
}

/// A clamd on a unix socket whose database is one signature: the bytes
/// of [`Clamd::MARKER`] anywhere in an object.
pub struct Clamd {
    /// Its socket.
    pub socket: PathBuf,
    proc: Option<KillOnDrop>,
    _dir: TempDir,
}

impl Clamd {
    /// What the test signature matches.
    pub const MARKER: &'static str = "SLUICE-TEST-MALWARE-7f3a9c";
    /// The signature's name, as clamd reports it.
    pub const SIGNATURE: &'static str = "Sluice.Test.Sig.UNOFFICIAL";

    /// Starts clamd and waits (bounded) until it answers PING.
    pub fn start() -> Clamd {
        require("clamd", "clamav-daemon");
        let dir = TempDir::new("clamd");
        let db = dir.path("db");
        std::fs::create_dir_all(&db).unwrap();
        let hex: String = Self::MARKER.bytes().map(|b| format!("{b:02x}")).collect();
        std::fs::write(
            db.join("sluice.ndb"),
            format!("Sluice.Test.Sig:0:*:{hex}\n"),
        )
        .unwrap();
        let socket = dir.path("clamd.sock");
        let conf = dir.path("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "LocalSocket {}\nDatabaseDirectory {}\nForeground yes\nLogFile {}\nPidFile {}\nStreamMaxLength 64M\n",
                socket.display(),
                db.display(),
                dir.path("clamd.log").display(),
                dir.path("clamd.pid").display()
            ),
        )
        .unwrap();
        let child = Command::new("clamd")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clamd");
        let proc = KillOnDrop(child);
        let up = poll_until(Duration::from_secs(30), || ping(&socket));
        assert!(
            up,
            "clamd did not answer PING within 30 s; log: {}",
            std::fs::read_to_string(dir.path("clamd.log")).unwrap_or_default()
        );
        Clamd {
            socket,
            proc: Some(proc),
            _dir: dir,
        }
    }

    /// `unix:<socket>`, as `inspect.clamd.address` takes it.
    pub fn address(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Stops clamd (the socket stays, refusing connections).
    pub fn stop(&mut self) {
        drop(self.proc.take());
        let gone = poll_until(Duration::from_secs(10), || !ping(&self.socket));
        assert!(gone, "clamd still answers after it was killed");
    }
}

fn ping(socket: &std::path::Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 16];
    s.write_all(b"zPING\0").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"PONG"))
}

/// A c-icap server on 127.0.0.1 with `avscan` (virus_scan over `clamd`,
/// in `mode=simple`: the verdict before any byte goes back) and `echo`.
pub struct CIcap {
    /// Its port.
    pub port: u16,
    proc: Option<std::process::Child>,
    _dir: TempDir,
}

impl CIcap {
    /// Starts c-icap asking `clamd`; waits (bounded) until it accepts.
    pub fn start(clamd: &Clamd) -> CIcap {
        require("c-icap", "c-icap");
        let modules = "/usr/lib/x86_64-linux-gnu/c_icap";
        assert!(
            std::path::Path::new(modules)
                .join("virus_scan.so")
                .is_file(),
            "c-icap's virus_scan module is missing: install the Debian package `libc-icap-mod-virus-scan` (see .ci/run)"
        );
        let dir = TempDir::new("c-icap");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path("c-icap.conf");
        let d = dir.0.display();
        std::fs::write(
            &conf,
            format!(
                "PidFile {d}/c-icap.pid\nCommandsSocket {d}/c-icap.ctl\nTimeout 30\nStartServers 1\nMaxServers 2\nThreadsPerChild 8\n\
                 Port 127.0.0.1:{port}\nTmpDir {d}\nServerLog {d}/server.log\nAccessLog {d}/access.log\n\
                 ModulesDir {modules}\nServicesDir {modules}\nTemplateDir /usr/share/c_icap/templates/\n\
                 LoadMagicFile /etc/c-icap/c-icap.magic\nDebugLevel 1\n\
                 Module common clamd_mod.so\nclamd_mod.ClamdSocket {}\n\
                 Service echo srv_echo.so\nService antivirus_module virus_scan.so\n\
                 ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=simple\n\
                 virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE\nvirus_scan.MaxObjectSize 5M\nvirus_scan.DefaultEngine clamd\n",
                clamd.socket.display()
            ),
        )
        .unwrap();
        let child = Command::new("c-icap")
            .args(["-N", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start c-icap");
        let proc = child;
        let up = poll_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            up,
            "c-icap did not listen within 20 s; log: {}",
            std::fs::read_to_string(dir.path("server.log")).unwrap_or_default()
        );
        CIcap {
            port,
            proc: Some(proc),
            _dir: dir,
        }
    }

    /// `icap://127.0.0.1:PORT/<service>`.
    pub fn url(&self, service: &str) -> String {
        format!("icap://127.0.0.1:{}/{service}", self.port)
    }

    /// Stops c-icap: SIGTERM, so that its worker processes go too.
    pub fn stop(&mut self) {
        self.terminate();
        let port = self.port;
        let gone = poll_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        });
        assert!(gone, "c-icap still accepts after it was stopped");
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.proc.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let done = poll_until(Duration::from_secs(5), || {
                matches!(c.try_wait(), Ok(Some(_)))
            });
            if !done {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for CIcap {
    fn drop(&mut self) {
        self.terminate();
    }
}
