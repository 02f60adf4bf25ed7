//! The daemon's view of live connections, built from the kernel's
//! connection events: who owns which socket, which are in `CLOSE_WAIT` and
//! since when, which processes listen where. Pure: events and the time come
//! in, outcomes and views go out.
//!
//! The kernel's per-socket table is the source of truth; this mirror follows
//! it through events. The kernel tells of a connection only if it is still
//! open at a sweep of the table (`OPENED`, `CLOSE_WAIT`), and then reports
//! its close: so the mirror holds the connections that have been open for
//! a sweep interval (the kernel counts every connection itself). When the
//! ring buffer loses events the mirror can be rebuilt from the table with
//! [`Tracker::replace`].

use std::collections::{HashMap, hash_map::Entry};

use governor_common::{ConnEvent, EndpointKey, FlowAddrs, Owner, SockInfo, announce, direction, event_kind};
use slab::Slab;

use crate::labels;

/// `errno` values the kernel leaves in `sk_err`.
pub mod errno {
    pub const EPIPE: u32 = 32;
    pub const ECONNRESET: u32 = 104;
    pub const ETIMEDOUT: u32 = 110;
    pub const ECONNREFUSED: u32 = 111;
}

/// Why a connect failed, as `governor_tcp_connect_failures_total` labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The peer answered the SYN with a reset.
    Refused,
    /// The SYN retries ran out.
    Timeout,
    /// Established, then reset by the peer.
    Reset,
    /// Unreachable, abandoned by the caller, anything else.
    Other,
}

impl FailureReason {
    pub const ALL: [Self; 4] = [Self::Refused, Self::Timeout, Self::Reset, Self::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Other => "other",
        }
    }

    /// The reason of a connect that never completed, from `sk_err`.
    pub fn of_connect(error: u32) -> Self {
        match error {
            errno::ECONNREFUSED => Self::Refused,
            errno::ETIMEDOUT => Self::Timeout,
            _ => Self::Other,
        }
    }
}

/// A live connection or listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    pub owner: Owner,
    pub addrs: FlowAddrs,
    pub direction: u8,
    pub state: u8,
    /// Kernel monotonic nanoseconds.
    pub established_ns: u64,
    /// 0 when not in `CLOSE_WAIT`.
    pub close_wait_ns: u64,
}

impl Conn {
    fn from_info(info: &SockInfo) -> Self {
        Self {
            owner: info.owner,
            addrs: info.addrs,
            direction: info.direction,
            state: info.state,
            established_ns: info.established_ns,
            close_wait_ns: info.close_wait_ns,
        }
    }

    /// The service endpoint of a connection: the remote side of an active
    /// open, the local side (the listener's address) of a passive one.
    pub fn endpoint(&self) -> String {
        endpoint_of(self.direction, &self.addrs)
    }

    pub fn local(&self) -> String {
        labels::endpoint_of(self.addrs.family, &self.addrs.saddr, self.addrs.sport)
    }

    pub fn remote(&self) -> String {
        labels::endpoint_of(self.addrs.family, &self.addrs.daddr, self.addrs.dport)
    }
}

pub fn endpoint_of(direction: u8, a: &FlowAddrs) -> String {
    labels::endpoint(&endpoint_key(direction, a))
}

/// The service side of a connection (the local listener for an accepted
/// one, the peer for an outgoing one), unformatted: events are counted by
/// key and turned into `ip:port` strings once per reading.
pub fn endpoint_key(direction: u8, a: &FlowAddrs) -> EndpointKey {
    let (addr, port) = if direction == direction::PASSIVE { (a.saddr, a.sport) } else { (a.daddr, a.dport) };
    EndpointKey { addr, port, family: a.family, pad: 0 }
}

/// What one event means for the health engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    ConnectFailed {
        endpoint: EndpointKey,
        reason: FailureReason,
    },
    /// `reset`: an outgoing connection reset by its peer.
    Closed {
        reset: Option<EndpointKey>,
    },
    None,
}

/// Live sockets by kernel address.
///
/// Connections sit in a slab indexed by a small map: with 100,000s of
/// connections, growing a map of whole entries would briefly need the old
/// and the new table at once, while a slab grows in place. The sockets in
/// `CLOSE_WAIT` are indexed apart, so the per-second work does not walk
/// every connection.
#[derive(Debug, Default)]
pub struct Tracker {
    // Hashed with foldhash: these are touched for every event, and the
    // keys (kernel addresses) come from the kernel, not from a peer.
    index: foldhash::HashMap<u64, usize>,
    conns: Slab<Conn>,
    close_wait: foldhash::HashSet<u64>,
    listeners: foldhash::HashMap<u64, Conn>,
    /// Listeners that were open before the programs attached, by socket
    /// inode: their kernel addresses are not known.
    preexisting: foldhash::HashMap<u64, Conn>,
    /// Connections the kernel knows no owner of (open before the programs
    /// attached), with their sockets' inode numbers: their owners are
    /// looked up in `/proc` ([`Tracker::unowned`], [`Tracker::adopt`]).
    unowned: foldhash::HashMap<u64, u32>,
    /// Connections found in `CLOSE_WAIT` at start-up, by socket inode.
    found_at_start: foldhash::HashSet<u64>,
}

impl Tracker {
    pub fn apply(&mut self, ev: &ConnEvent) -> Outcome {
        let ConnEvent { kind, error, skaddr, info, inode, .. } = *ev;
        if inode != 0 && info.owner.tgid == 0 && matches!(kind, event_kind::OPENED | event_kind::CLOSE_WAIT) {
            self.unowned.insert(skaddr, inode);
        }
        if inode != 0 && matches!(kind, event_kind::CLOSE_WAIT_LEFT | event_kind::CLOSED) {
            // A socket the kernel's table never held left `CLOSE_WAIT`: one
            // found there at start-up, known by its inode.
            if self.found_at_start.contains(&u64::from(inode)) {
                self.remove(u64::from(inode));
            }
            return Outcome::None;
        }
        match kind {
            event_kind::OPENED => {
                self.put(skaddr, Conn::from_info(&info));
                Outcome::None
            }
            event_kind::CONNECT_FAILED => {
                self.remove(skaddr);
                Outcome::ConnectFailed {
                    endpoint: endpoint_key(direction::ACTIVE, &info.addrs),
                    reason: FailureReason::of_connect(error),
                }
            }
            event_kind::CLOSE_WAIT | event_kind::CLOSE_WAIT_LEFT => {
                let close_wait_ns = if kind == event_kind::CLOSE_WAIT { info.close_wait_ns } else { 0 };
                let conn = match self.index.get(&skaddr) {
                    Some(&i) => Conn { state: info.state, close_wait_ns, ..self.conns[i] },
                    // The first the mirror hears of the connection, or a
                    // socket opened while events were lost.
                    None => Conn { close_wait_ns, ..Conn::from_info(&info) },
                };
                self.put(skaddr, conn);
                Outcome::None
            }
            event_kind::CLOSED => {
                self.remove(skaddr);
                let reset = info.direction == direction::ACTIVE && matches!(error, errno::ECONNRESET | errno::EPIPE);
                Outcome::Closed { reset: reset.then(|| endpoint_key(direction::ACTIVE, &info.addrs)) }
            }
            event_kind::LISTEN => {
                self.listeners.insert(skaddr, Conn::from_info(&info));
                Outcome::None
            }
            event_kind::LISTEN_CLOSED => {
                if self.listeners.remove(&skaddr).is_none() {
                    // One opened before the programs attached: the kernel
                    // names its owner, and the address tells which it was.
                    let closed = Conn::from_info(&info);
                    self.preexisting.retain(|_, l| {
                        (l.owner.tgid, l.addrs.family, l.addrs.saddr, l.addrs.sport)
                            != (closed.owner.tgid, closed.addrs.family, closed.addrs.saddr, closed.addrs.sport)
                    });
                }
                Outcome::None
            }
            _ => Outcome::None,
        }
    }

    /// Adds the listeners that were open before the programs attached (read
    /// from `/proc`): the kernel tells only of those opened since.
    pub fn add_preexisting(&mut self, listeners: &[crate::listening::Listener]) {
        for l in listeners {
            let addrs =
                FlowAddrs { saddr: l.key.addr, family: l.key.family, sport: l.key.port, ..FlowAddrs::default() };
            let conn = Conn {
                owner: l.owner,
                addrs,
                // As the kernel's `LISTEN` events have them.
                direction: 0,
                state: crate::listening::TCP_LISTEN,
                established_ns: 0,
                close_wait_ns: 0,
            };
            self.preexisting.insert(l.inode, conn);
        }
    }

    /// Adds or replaces the connection at `skaddr`.
    fn put(&mut self, skaddr: u64, conn: Conn) {
        if conn.close_wait_ns == 0 {
            self.close_wait.remove(&skaddr);
        } else {
            self.close_wait.insert(skaddr);
        }
        match self.index.entry(skaddr) {
            Entry::Occupied(e) => self.conns[*e.get()] = conn,
            Entry::Vacant(e) => {
                e.insert(self.conns.insert(conn));
            }
        }
    }

    /// Adds the connections found in `CLOSE_WAIT` at start-up (read from
    /// `/proc`), keyed by their sockets' inode numbers (no kernel address
    /// is that small): the kernel's table does not hold them, and tells of
    /// their leaving `CLOSE_WAIT` by inode. They count as in `CLOSE_WAIT`
    /// since `at` (kernel monotonic ns): the time they entered it is not
    /// known.
    pub fn add_close_waiting(&mut self, held: &[crate::listening::Held], at: u64) {
        for h in held {
            let conn = Conn {
                owner: h.owner,
                addrs: h.addrs,
                direction: h.direction,
                state: crate::listening::TCP_CLOSE_WAIT,
                established_ns: at,
                close_wait_ns: at,
            };
            self.put(h.inode, conn);
            self.found_at_start.insert(h.inode);
        }
    }

    /// The connections without an owner whose sockets' inode numbers are
    /// known: `(kernel address, inode)`.
    pub fn unowned(&self) -> Vec<(u64, u32)> {
        self.unowned.iter().map(|(&skaddr, &inode)| (skaddr, inode)).collect()
    }

    /// Gives the connection at `skaddr` the owner found holding its socket
    /// `inode`, if it is still that socket and still without one. A socket
    /// whose holder was not found (`None`) is not looked for again.
    pub fn adopt(&mut self, skaddr: u64, inode: u32, owner: Option<Owner>) {
        if self.unowned.get(&skaddr) != Some(&inode) {
            return;
        }
        self.unowned.remove(&skaddr);
        if let (Some(owner), Some(&i)) = (owner, self.index.get(&skaddr))
            && self.conns[i].owner.tgid == 0
        {
            self.conns[i].owner = owner;
        }
    }

    fn remove(&mut self, skaddr: u64) {
        if let Some(i) = self.index.remove(&skaddr) {
            self.conns.remove(i);
        }
        self.close_wait.remove(&skaddr);
        self.unowned.remove(&skaddr);
        self.found_at_start.remove(&skaddr);
    }

    /// Replaces the mirror with a reading of the kernel's table (after lost
    /// events): the connections the kernel has told of, which it will
    /// report closing; the rest are told by later sweeps. Listeners are
    /// kept: the table does not hold them.
    pub fn replace(&mut self, table: impl IntoIterator<Item = (u64, SockInfo)>) {
        // Owners found in /proc are the mirror's alone: they stay with
        // their connections (the same socket: the same start).
        let adopted: foldhash::HashMap<u64, (u64, Owner)> = self
            .index
            .iter()
            .map(|(&skaddr, &i)| (skaddr, &self.conns[i]))
            .filter(|(_, c)| c.owner.tgid != 0)
            .map(|(skaddr, c)| (skaddr, (c.established_ns, c.owner)))
            .collect();
        // Those found in CLOSE_WAIT at start-up are not in the table: they
        // stay.
        let found: Vec<(u64, Conn)> =
            self.found_at_start.iter().filter_map(|key| self.index.get(key).map(|&i| (*key, self.conns[i]))).collect();
        self.index.clear();
        self.conns.clear();
        self.close_wait.clear();
        for (key, conn) in found {
            self.put(key, conn);
        }
        let unowned = std::mem::take(&mut self.unowned);
        for (skaddr, info) in table {
            let told = info.announce & (announce::OPEN | announce::CLOSING) == announce::OPEN;
            if told && info.established_ns != 0 {
                let close_wait_ns = if info.announce & announce::CLOSE_WAIT == 0 { 0 } else { info.close_wait_ns };
                let mut conn = Conn { close_wait_ns, ..Conn::from_info(&info) };
                match adopted.get(&skaddr) {
                    Some(&(established_ns, owner)) if conn.owner.tgid == 0 && established_ns == conn.established_ns => {
                        conn.owner = owner;
                    }
                    _ => {}
                }
                if let Some(&inode) = unowned.get(&skaddr).filter(|_| conn.owner.tgid == 0) {
                    self.unowned.insert(skaddr, inode);
                }
                self.put(skaddr, conn);
            }
        }
    }

    /// The owner of the connection at `skaddr` as the mirror has it: the
    /// kernel's, or the one found in `/proc` for a connection opened before
    /// governor started.
    pub fn owner_of(&self, skaddr: u64) -> Option<Owner> {
        self.index.get(&skaddr).map(|&i| self.conns[i].owner).filter(|o| o.tgid != 0)
    }

    pub fn connections(&self) -> impl Iterator<Item = (&u64, &Conn)> {
        self.index.iter().map(|(skaddr, &i)| (skaddr, &self.conns[i]))
    }

    /// The connections in `CLOSE_WAIT`.
    fn in_close_wait(&self) -> impl Iterator<Item = &Conn> {
        self.close_wait.iter().filter_map(|skaddr| self.index.get(skaddr).map(|&i| &self.conns[i]))
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// Live sockets of one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessSockets {
    pub owner: Owner,
    pub connections: u64,
    pub close_wait: u64,
    /// Kernel monotonic ns of the oldest `CLOSE_WAIT` entry; 0 when none.
    pub oldest_close_wait_ns: u64,
    pub listeners: Vec<String>,
}

impl ProcessSockets {
    /// The entry of `conn`'s owner in `by_pid`, created when missing.
    fn of<'a>(by_pid: &'a mut HashMap<u32, Self>, conn: &Conn) -> &'a mut Self {
        by_pid.entry(conn.owner.tgid).or_insert_with(|| Self { owner: conn.owner, ..Default::default() })
    }

    /// Counts one connection of this process.
    fn count(&mut self, conn: &Conn) {
        self.connections += 1;
        if conn.close_wait_ns != 0 {
            self.close_wait += 1;
            if self.oldest_close_wait_ns == 0 || conn.close_wait_ns < self.oldest_close_wait_ns {
                self.oldest_close_wait_ns = conn.close_wait_ns;
            }
        }
    }

    /// Age of the oldest `CLOSE_WAIT` socket at `now_ns`.
    pub fn close_wait_age_seconds(&self, now_ns: u64) -> u64 {
        if self.close_wait == 0 { 0 } else { now_ns.saturating_sub(self.oldest_close_wait_ns) / 1_000_000_000 }
    }
}

/// Sockets per owning process (thread group id; 0 for sockets without a
/// known owner), sorted by pid.
pub fn by_process(t: &Tracker) -> Vec<ProcessSockets> {
    let mut out: HashMap<u32, ProcessSockets> = HashMap::new();
    for (_, conn) in &t.conns {
        ProcessSockets::of(&mut out, conn).count(conn);
    }
    for l in t.listeners.values().chain(t.preexisting.values()) {
        ProcessSockets::of(&mut out, l).listeners.push(l.local());
    }
    let mut v: Vec<_> = out.into_values().collect();
    for p in &mut v {
        p.listeners.sort();
        p.listeners.dedup();
    }
    v.sort_by_key(|p| p.owner.tgid);
    v
}

/// Processes holding sockets in `CLOSE_WAIT`, as [`by_process`] counts
/// them but without walking every connection: `connections` counts only
/// the `CLOSE_WAIT` ones and `listeners` is left empty.
pub fn close_wait_by_process(t: &Tracker) -> Vec<ProcessSockets> {
    let mut out: HashMap<u32, ProcessSockets> = HashMap::new();
    for conn in t.in_close_wait() {
        ProcessSockets::of(&mut out, conn).count(conn);
    }
    let mut v: Vec<_> = out.into_values().collect();
    v.sort_by_key(|p| p.owner.tgid);
    v
}

/// Live connections and `CLOSE_WAIT` sockets per service endpoint:
/// `(connections, close_wait, oldest close_wait ns)`.
pub fn by_endpoint(t: &Tracker) -> HashMap<String, (u64, u64, u64)> {
    tally(t.conns.iter().map(|(_, c)| c))
}

/// [`by_endpoint`] for the endpoints with sockets in `CLOSE_WAIT` only (the
/// connection counts then are the `CLOSE_WAIT` ones).
pub fn close_wait_by_endpoint(t: &Tracker) -> HashMap<String, (u64, u64, u64)> {
    tally(t.in_close_wait())
}

fn tally<'a>(conns: impl Iterator<Item = &'a Conn>) -> HashMap<String, (u64, u64, u64)> {
    let mut out: HashMap<String, (u64, u64, u64)> = HashMap::new();
    for conn in conns {
        let e = out.entry(conn.endpoint()).or_default();
        e.0 += 1;
        if conn.close_wait_ns != 0 {
            e.1 += 1;
            if e.2 == 0 || conn.close_wait_ns < e.2 {
                e.2 = conn.close_wait_ns;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
