//! `tcp-helper` processes: a pid and command of their own inside a test
//! namespace, holding sockets until told to close them.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use crate::Netns;

pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    /// Starts `bin` (the test's `env!("CARGO_BIN_EXE_tcp-helper")`) in
    /// `ns` and waits until its `count` sockets are in place. `serve`
    /// returns after the listener is up; call [`Helper::wait_ready`] once
    /// the clients connected.
    pub fn start(bin: &str, ns: &Netns, mode: &str, addr: &str, count: usize) -> Self {
        let mut child = Command::new(Path::new(bin))
            .args([ns.name(), mode, addr, &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut h = Self { child, stdin, stdout };
        h.expect(if mode == "serve" { "listening" } else { "ready" });
        h
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a server to have accepted all its connections.
    pub fn wait_ready(&mut self) {
        self.expect("ready");
    }

    /// Closes every socket and waits until it did.
    pub fn close_all(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(b"close\n").and_then(|()| stdin.flush()).expect("tell helper to close");
        self.expect("closed");
    }

    fn expect(&mut self, word: &str) {
        // Bounded: the helper exits (EOF) if anything fails.
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read helper output");
        assert_eq!(line.trim(), word, "tcp-helper said {line:?}, expected {word}");
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
