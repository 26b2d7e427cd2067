//! A stand-in for `nvidia-cuda-mps-control`, for tests on machines without a GPU. It speaks the
//! same command line and stdin protocol as far as gpushare uses them, and records what it was
//! told in `$CUDA_MPS_LOG_DIRECTORY/control.log`:
//! - `-d [-M]`: become a daemon serving a `control` socket in `$CUDA_MPS_PIPE_DIRECTORY`, with
//!   its pid in `nvidia-cuda-mps-control.pid` there;
//! - no arguments: read commands on stdin and send each to the daemon, printing its answers.
//!   `quit` stops the daemon.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

fn dirs() -> (PathBuf, PathBuf) {
    let env = |k: &str, d: &str| PathBuf::from(std::env::var_os(k).unwrap_or_else(|| d.into()));
    (
        env("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"),
        env("CUDA_MPS_LOG_DIRECTORY", "/var/log/nvidia-mps"),
    )
}

fn log(log_dir: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("control.log"))
    {
        let _ = writeln!(f, "{line}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (pipe, logs) = dirs();
    if args.iter().any(|a| a == "-d") {
        daemon(&pipe, &logs, &args);
    } else {
        std::process::exit(client(&pipe));
    }
}

fn daemon(pipe: &Path, logs: &Path, args: &[String]) {
    let _ = std::fs::create_dir_all(pipe);
    let _ = std::fs::create_dir_all(logs);
    let socket = pipe.join("control");
    // SAFETY: fork in a single-threaded process, as the real daemon detaches on `-d`.
    match unsafe { libc::fork() } {
        -1 => std::process::exit(1),
        0 => {}
        _ => std::process::exit(0),
    }
    // SAFETY: setsid detaches the daemon from the caller's session.
    unsafe { libc::setsid() };
    let pid = std::process::id();
    let _ = std::fs::write(pipe.join("nvidia-cuda-mps-control.pid"), format!("{pid}\n"));
    // Bound and listening under a private name first, then renamed into place: a client that
    // sees `control` must find it listening (a bind() before listen() refuses a connect).
    let fresh = pipe.join(format!(".control.{pid}"));
    let _ = std::fs::remove_file(&fresh);
    let listener = match UnixListener::bind(&fresh).and_then(|l| {
        std::fs::rename(&fresh, &socket)?;
        Ok(l)
    }) {
        Ok(l) => l,
        Err(e) => {
            log(logs, &format!("cannot bind {}: {e}", socket.display()));
            std::process::exit(1);
        }
    };
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default();
    log(
        logs,
        &format!("start pid={pid} args={} visible={visible}", args.join(" ")),
    );
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        let cmd = line.trim().to_string();
        log(logs, &format!("cmd {cmd}"));
        let answer = match cmd.split_whitespace().next() {
            Some("get_server_list") => String::new(),
            Some("quit") => {
                let _ = conn.write_all(b"\n");
                let _ = std::fs::remove_file(&socket);
                let _ = std::fs::remove_file(pipe.join("nvidia-cuda-mps-control.pid"));
                log(logs, &format!("exit pid={pid}"));
                std::process::exit(0);
            }
            _ => String::new(),
        };
        let _ = writeln!(conn, "{answer}");
    }
}

fn client(pipe: &Path) -> i32 {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let mut conn = match UnixStream::connect(pipe.join("control")) {
            Ok(c) => c,
            Err(_) => {
                eprintln!("Cannot find MPS control daemon process");
                return 1;
            }
        };
        let _ = writeln!(conn, "{}", line.trim());
        let mut answer = String::new();
        let _ = BufReader::new(&conn).read_line(&mut answer);
        print!("{answer}");
    }
    0
}
