//! `sluice hash-password`: an argon2id PHC string for `password_hash`,
//! with the same crate and defaults the proxy verifies with. The password
//! is read without echo from a terminal, or as one line from a pipe.

use std::{
    io::{BufRead, IsTerminal, Read, Write},
    os::fd::AsFd,
    process::ExitCode,
};

use argon2::{Argon2, PasswordHasher, password_hash::SaltString};

/// Longest password accepted, in bytes (one line of stdin is read up to it).
const MAX_LEN: usize = 1024;

pub fn main() -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        prompt()
    } else {
        read_line(&mut std::io::stdin().lock())
    };
    let password = match password {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match hash(&password) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The PHC string of `password` (argon2id v19, the crate's default cost).
fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(|e| format!("cannot read /dev/urandom for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| format!("salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash: {e}"))
}

/// One line (without its `\n` or `\r\n`), at most [`MAX_LEN`] bytes, not
/// empty.
fn read_line(input: &mut impl BufRead) -> Result<String, String> {
    let mut buf = Vec::new();
    input
        .take(MAX_LEN as u64 + 2)
        .read_until(b'\n', &mut buf)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    if buf.len() > MAX_LEN {
        return Err(format!("password longer than {MAX_LEN} bytes"));
    }
    let s = String::from_utf8(buf).map_err(|_| "the password is not UTF-8".to_owned())?;
    if s.is_empty() {
        return Err("empty password (give it on stdin or at the prompt)".into());
    }
    Ok(s)
}

/// Asks twice on the terminal with echo off, restoring the terminal after.
fn prompt() -> Result<String, String> {
    let first = ask("Password: ")?;
    let again = ask("Repeat password: ")?;
    if first != again {
        return Err("the passwords differ".into());
    }
    Ok(first)
}

fn ask(label: &str) -> Result<String, String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let saved = tcgetattr(fd).map_err(|e| format!("cannot read the terminal mode: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    eprint!("{label}");
    let _ = std::io::stderr().flush();
    tcsetattr(fd, OptionalActions::Now, &quiet)
        .map_err(|e| format!("cannot turn echo off: {e}"))?;
    let line = read_line(&mut stdin.lock());
    let restored = tcsetattr(fd, OptionalActions::Now, &saved);
    let line = line?;
    restored.map_err(|e| format!("cannot restore the terminal: {e}"))?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_line_without_its_end() {
        assert_eq!(read_line(&mut &b"s3cret\r\nmore"[..]).unwrap(), "s3cret");
        assert_eq!(read_line(&mut &b"no newline"[..]).unwrap(), "no newline");
        assert!(read_line(&mut &b"\n"[..]).is_err());
        assert!(read_line(&mut &[b'x'; 2000][..]).is_err());
        assert!(read_line(&mut &[0xff, b'\n'][..]).is_err());
    }
}
