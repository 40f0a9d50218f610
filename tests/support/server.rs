//! A `devreg serve` child process for the tests that talk to a live server
//! (tests/server.rs, tests/remote.rs, tests/sync.rs): started on a free
//! loopback port, its URL read from its `listening on URL` line, stopped
//! with SIGTERM (or killed when dropped).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// Starts `devreg --db DB serve --listen 127.0.0.1:0 ARGS` and waits
    /// for its `listening on URL` line.
    pub fn start(db: &Path, token: Option<&str>, args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_devreg"));
        cmd.arg("--db")
            .arg(db)
            .args(["serve", "--listen", "127.0.0.1:0"]);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped());
        cmd.stderr(Stdio::piped()).env_remove("DEVREG_API_TOKEN");
        if let Some(t) = token {
            cmd.env("DEVREG_API_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let out = child.wait_with_output().unwrap();
            panic!(
                "no address: {line:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        Server {
            url: url.to_owned(),
            child,
        }
    }

    /// SIGTERM, then the exit status and stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        use std::io::Read;
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
