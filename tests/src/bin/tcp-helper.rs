//! A process of its own for the integration tests, so that governor's
//! attribution has a pid and command to find: it enters a network
//! namespace, then serves or connects and holds its sockets until told.
//!
//! ```text
//! tcp-helper NETNS serve ADDR COUNT    accept COUNT connections
//! tcp-helper NETNS connect ADDR COUNT  make COUNT connections
//! ```
//! It prints `ready` when its sockets are in place, closes them all when a
//! line arrives on stdin (printing `closed`), and exits at end of input.

use std::{
    fs::File,
    io::{BufRead as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
};

use nix::sched::{CloneFlags, setns};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, netns, mode, addr, count] = args.as_slice() else {
        eprintln!("usage: tcp-helper NETNS serve|connect ADDR COUNT");
        std::process::exit(2);
    };
    let path = format!("/run/netns/{netns}");
    setns(File::open(&path).expect("open netns"), CloneFlags::CLONE_NEWNET).expect("setns");
    let addr: SocketAddr = addr.parse().expect("ADDR");
    let count: usize = count.parse().expect("COUNT");
    let sockets: Vec<TcpStream> = match mode.as_str() {
        "serve" => {
            let listener = TcpListener::bind(addr).expect("bind");
            say("listening");
            let accepted = (0..count).map(|_| listener.accept().expect("accept").0).collect();
            // The listener stays open as long as the connections.
            std::mem::forget(listener);
            accepted
        }
        "connect" => (0..count).map(|_| TcpStream::connect(addr).expect("connect")).collect(),
        other => panic!("unknown mode {other}"),
    };
    say("ready");
    let mut lines = std::io::stdin().lock().lines();
    let _ = lines.next();
    drop(sockets);
    say("closed");
    for _ in lines {}
}

fn say(word: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{word}").expect("stdout");
    out.flush().expect("stdout");
}
