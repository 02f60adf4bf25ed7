//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): enough
//! to look up enum names, so that labels use the running kernel's own names
//! rather than a table compiled for one kernel, and the offsets of struct
//! members the kernel programs read, so that they never use offsets compiled
//! for one kernel.
//!
//! aya parses BTF too, but keeps the types crate-private; the format is
//! small and stable (include/uapi/linux/btf.h), so this reads just the parts
//! it needs and skips the rest by size.

use std::{fs, io, path::Path};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_ENUM64: u32 = 19;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC_PROTO: u32 = 13;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("not BTF data: {0}")]
    Format(&'static str),
    #[error("unknown BTF kind {kind} at type {id}")]
    UnknownKind { kind: u32, id: u32 },
    #[error("BTF has no enum named {0}")]
    NoEnum(String),
    #[error("BTF has no struct named {0}")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member} in this kernel's BTF")]
    NoMember { strukt: String, member: String },
    #[error("this kernel's BTF has no tracepoint {0} (no btf_trace_{0} prototype)")]
    NoTracepoint(String),
    #[error("struct {strukt} member {member} is a bit field")]
    BitField { strukt: String, member: String },
}

/// The parsed type and string sections.
pub struct Btf {
    bytes: Vec<u8>,
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
    little_endian: bool,
}

impl Btf {
    pub fn read(path: &Path) -> Result<Self, BtfError> {
        let bytes = fs::read(path).map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Self::parse(bytes)
    }

    pub fn parse(bytes: Vec<u8>) -> Result<Self, BtfError> {
        let little_endian = match bytes.get(..2) {
            Some(m) if u16::from_le_bytes([m[0], m[1]]) == MAGIC => true,
            Some(m) if u16::from_be_bytes([m[0], m[1]]) == MAGIC => false,
            _ => return Err(BtfError::Format("bad magic")),
        };
        let mut btf = Self { bytes, types: 0..0, strings: 0..0, little_endian };
        let header_len = btf.u32(4).ok_or(BtfError::Format("short header"))? as usize;
        let field = |i: usize| btf.u32(8 + 4 * i).map(|v| v as usize).ok_or(BtfError::Format("short header"));
        let (type_off, type_len, str_off, str_len) = (field(0)?, field(1)?, field(2)?, field(3)?);
        let types = header_len + type_off..header_len + type_off + type_len;
        let strings = header_len + str_off..header_len + str_off + str_len;
        if types.end > btf.bytes.len() || strings.end > btf.bytes.len() {
            return Err(BtfError::Format("sections beyond the end of the data"));
        }
        btf.types = types;
        btf.strings = strings;
        Ok(btf)
    }

    fn u32(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if self.little_endian { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    }

    fn name(&self, offset: u32) -> &str {
        let start = self.strings.start + offset as usize;
        let Some(rest) = self.bytes.get(start..self.strings.end) else { return "" };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// The values and names of the enum called `name` (`ENUM` or `ENUM64`).
    pub fn enum_values(&self, name: &str) -> Result<Vec<(i64, String)>, BtfError> {
        let mut at = self.types.start;
        let mut id = 1;
        while at + 12 <= self.types.end {
            let (name_off, info) = (self.u32(at).unwrap_or(0), self.u32(at + 4).unwrap_or(0));
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let body = at + 12;
            if (kind == KIND_ENUM || kind == KIND_ENUM64) && self.name(name_off) == name {
                return Ok(self.variants(kind, body, vlen, info >> 31 == 1));
            }
            at = body + extra_bytes(kind, vlen).ok_or(BtfError::UnknownKind { kind, id })?;
            id += 1;
        }
        Err(BtfError::NoEnum(name.to_owned()))
    }

    /// Start of every type in the type section; type id `n` is at `[n - 1]`.
    fn index(&self) -> Result<Vec<usize>, BtfError> {
        let mut starts = Vec::new();
        let mut at = self.types.start;
        while at + 12 <= self.types.end {
            let info = self.u32(at + 4).unwrap_or(0);
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            starts.push(at);
            let id = u32::try_from(starts.len()).unwrap_or(u32::MAX);
            at += 12 + extra_bytes(kind, vlen).ok_or(BtfError::UnknownKind { kind, id })?;
        }
        Ok(starts)
    }

    /// Byte offset of `member` inside `struct strukt`, looking through
    /// anonymous structs and unions (the kernel groups many `struct sock`
    /// members in them).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let index = self.index()?;
        let top = index
            .iter()
            .copied()
            .find(|&at| {
                let info = self.u32(at + 4).unwrap_or(0);
                (info >> 24) & 0x1f == KIND_STRUCT
                    && info & 0xffff > 0
                    && self.name(self.u32(at).unwrap_or(0)) == strukt
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let no_member = || BtfError::NoMember { strukt: strukt.to_owned(), member: member.to_owned() };
        let bits = self.find_member(&index, top, member, 0).ok_or_else(no_member)?;
        if bits % 8 != 0 {
            return Err(BtfError::BitField { strukt: strukt.to_owned(), member: member.to_owned() });
        }
        Ok(bits / 8)
    }

    /// Bit offset of `member` in the struct or union at `at`, plus `base`.
    fn find_member(&self, index: &[usize], at: usize, member: &str, base: u32) -> Option<u32> {
        let info = self.u32(at + 4)?;
        let (vlen, kind_flag) = ((info & 0xffff) as usize, info >> 31 == 1);
        let members = (0..vlen).map(|i| at + 12 + 12 * i);
        // Named members first: a name found at this level wins over one
        // inside an anonymous member.
        for m in members.clone() {
            if self.name(self.u32(m)?) == member {
                return Some(base + bit_offset(self.u32(m + 8)?, kind_flag));
            }
        }
        for m in members {
            if self.u32(m)? != 0 {
                continue;
            }
            let inner = self.resolve(index, self.u32(m + 4)?)?;
            let kind = (self.u32(inner + 4)? >> 24) & 0x1f;
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let offset = base + bit_offset(self.u32(m + 8)?, kind_flag);
                if let Some(found) = self.find_member(index, inner, member, offset) {
                    return Some(found);
                }
            }
        }
        None
    }

    /// The type id of the tracepoint `name`'s `btf_trace_<name>` typedef:
    /// what a `tp_btf` program names as the tracepoint it attaches to.
    pub fn tracepoint_type_id(&self, name: &str) -> Result<u32, BtfError> {
        let index = self.index()?;
        let position = self.tracepoint_typedef(&index, name)?;
        // Type ids count from 1 (0 is void).
        u32::try_from(position + 1).map_err(|_| BtfError::NoTracepoint(name.to_owned()))
    }

    /// Where in `index` the `btf_trace_<name>` typedef is.
    fn tracepoint_typedef(&self, index: &[usize], name: &str) -> Result<usize, BtfError> {
        let typedef = format!("btf_trace_{name}");
        index
            .iter()
            .position(|&at| {
                (self.u32(at + 4).unwrap_or(0) >> 24) & 0x1f == KIND_TYPEDEF
                    && self.name(self.u32(at).unwrap_or(0)) == typedef
            })
            .ok_or_else(|| BtfError::NoTracepoint(name.to_owned()))
    }

    /// The arguments a `tp_btf` program gets from the tracepoint
    /// `name`, as C types (`struct sock *`, `int`, `enum sk_rst_reason`,
    /// qualifiers left out), from its `btf_trace_<name>` prototype (whose
    /// first parameter, the tracepoint's private data, is not passed).
    pub fn tracepoint_args(&self, name: &str) -> Result<Vec<String>, BtfError> {
        let index = self.index()?;
        let missing = || BtfError::NoTracepoint(name.to_owned());
        let at = index[self.tracepoint_typedef(&index, name)?];
        let ptr = self.resolve(&index, self.u32(at + 8).ok_or_else(missing)?).ok_or_else(missing)?;
        if (self.u32(ptr + 4).unwrap_or(0) >> 24) & 0x1f != KIND_PTR {
            return Err(missing());
        }
        let proto = self.resolve(&index, self.u32(ptr + 8).ok_or_else(missing)?).ok_or_else(missing)?;
        let info = self.u32(proto + 4).unwrap_or(0);
        if (info >> 24) & 0x1f != KIND_FUNC_PROTO {
            return Err(missing());
        }
        let params = (info & 0xffff) as usize;
        Ok((1..params).map(|i| self.describe(&index, self.u32(proto + 12 + 8 * i + 4).unwrap_or(0), 0)).collect())
    }

    /// A type as C spells it, without qualifiers.
    fn describe(&self, index: &[usize], id: u32, depth: usize) -> String {
        if id == 0 {
            return "void".to_owned();
        }
        let Some(at) = self.resolve(index, id) else { return "?".to_owned() };
        let (name, info) = (self.name(self.u32(at).unwrap_or(0)), self.u32(at + 4).unwrap_or(0));
        match (info >> 24) & 0x1f {
            KIND_PTR if depth < 4 => format!("{} *", self.describe(index, self.u32(at + 8).unwrap_or(0), depth + 1)),
            KIND_STRUCT => format!("struct {name}"),
            KIND_UNION => format!("union {name}"),
            KIND_ENUM | KIND_ENUM64 => format!("enum {name}"),
            KIND_INT => name.to_owned(),
            _ => "?".to_owned(),
        }
    }

    /// The type a chain of typedefs and qualifiers ends at.
    fn resolve(&self, index: &[usize], mut id: u32) -> Option<usize> {
        for _ in 0..32 {
            let at = *index.get(usize::try_from(id).ok()?.checked_sub(1)?)?;
            let kind = (self.u32(at + 4)? >> 24) & 0x1f;
            // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
            if matches!(kind, 8 | 9 | 10 | 11 | 18) {
                id = self.u32(at + 8)?;
            } else {
                return Some(at);
            }
        }
        None
    }

    fn variants(&self, kind: u32, body: usize, vlen: usize, signed: bool) -> Vec<(i64, String)> {
        (0..vlen)
            .map(|i| {
                if kind == KIND_ENUM {
                    let at = body + 8 * i;
                    let raw = self.u32(at + 4).unwrap_or(0);
                    let value = if signed { i64::from(raw.cast_signed()) } else { i64::from(raw) };
                    (value, self.name(self.u32(at).unwrap_or(0)).to_owned())
                } else {
                    let at = body + 12 * i;
                    let (lo, hi) = (u64::from(self.u32(at + 4).unwrap_or(0)), u64::from(self.u32(at + 8).unwrap_or(0)));
                    ((hi << 32 | lo).cast_signed(), self.name(self.u32(at).unwrap_or(0)).to_owned())
                }
            })
            .collect()
    }
}

/// A member's offset in bits; with `kind_flag` the top byte holds the bit
/// field size.
fn bit_offset(raw: u32, kind_flag: bool) -> u32 {
    if kind_flag { raw & 0x00ff_ffff } else { raw }
}

/// Bytes that follow the 12-byte common part of a type of `kind`.
fn extra_bytes(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        // INT, VAR, DECL_TAG
        1 | 14 | 17 => 4,
        // ARRAY
        3 => 12,
        // STRUCT, UNION, DATASEC, ENUM64
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM, FUNC_PROTO
        6 | 13 => 8 * vlen,
        _ => return None,
    })
}

/// Names of `enum sk_rst_reason` by value, without the `SK_RST_REASON_`
/// prefix, as `tcp:tcp_send_reset` prints them.
pub fn reset_reason_names(btf: &Btf) -> Result<Vec<(u32, String)>, BtfError> {
    Ok(btf
        .enum_values("sk_rst_reason")?
        .into_iter()
        .filter_map(|(value, name)| {
            let value = u32::try_from(value).ok()?;
            Some((value, name.strip_prefix("SK_RST_REASON_").unwrap_or(&name).to_owned()))
        })
        .collect())
}

/// Offsets of further socket and packet fields the kernel programs read; a
/// field this kernel lacks is `SockOffsets::ABSENT` (the program then goes
/// without it).
pub fn sock_offsets(btf: &Btf) -> governor_common::SockOffsets {
    let absent = governor_common::SockOffsets::ABSENT;
    governor_common::SockOffsets {
        sk_err: btf.member_offset("sock", "sk_err").unwrap_or(absent),
        srtt_us: btf.member_offset("tcp_sock", "srtt_us").unwrap_or(absent),
        skb_head: btf.member_offset("sk_buff", "head").unwrap_or(absent),
        skb_network_header: btf.member_offset("sk_buff", "network_header").unwrap_or(absent),
        skb_transport_header: btf.member_offset("sk_buff", "transport_header").unwrap_or(absent),
        bytes_sent: btf.member_offset("tcp_sock", "bytes_sent").unwrap_or(absent),
        bytes_retrans: btf.member_offset("tcp_sock", "bytes_retrans").unwrap_or(absent),
        bytes_received: btf.member_offset("tcp_sock", "bytes_received").unwrap_or(absent),
        data_segs_out: btf.member_offset("tcp_sock", "data_segs_out").unwrap_or(absent),
        data_segs_in: btf.member_offset("tcp_sock", "data_segs_in").unwrap_or(absent),
        sk_shutdown: btf.member_offset("sock", "sk_shutdown").unwrap_or(absent),
        skc_net: btf.member_offset("sock_common", "skc_net").unwrap_or(absent),
        net_inum: btf
            .member_offset("net", "ns")
            .and_then(|ns| Ok(ns + btf.member_offset("ns_common", "inum")?))
            .unwrap_or(absent),
        sk_socket: btf.member_offset("sock", "sk_socket").unwrap_or(absent),
        socket_ino: btf
            .member_offset("socket_alloc", "vfs_inode")
            .and_then(|inode| Ok(inode + btf.member_offset("inode", "i_ino")?))
            .unwrap_or(absent),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("struct sock does not start with struct sock_common in this kernel's BTF")]
    NotSockCommon,
    #[error("struct sock field at offset {0} is beyond what governor can address")]
    OffsetTooLarge(u32),
}

/// Where addresses, ports, state and protocol sit in `struct sock`. The
/// IPv6 addresses are optional (a kernel without IPv6 lacks them, and has
/// no IPv6 sockets; their offsets are then 0, which the programs take as
/// absent).
pub fn sock_layout(btf: &Btf) -> Result<governor_common::SockLayout, LayoutError> {
    use governor_common::SockLayout;
    if btf.member_offset("sock", "__sk_common")? != 0 {
        return Err(LayoutError::NotSockCommon);
    }
    let common = |member: &str| btf.member_offset("sock_common", member);
    let (family, sport, dport) = (common("skc_family")?, common("skc_num")?, common("skc_dport")?);
    let (saddr4, daddr4, state) = (common("skc_rcv_saddr")?, common("skc_daddr")?, common("skc_state")?);
    let protocol = btf.member_offset("sock", "sk_protocol")?;
    let (saddr6, daddr6) = match (common("skc_v6_rcv_saddr"), common("skc_v6_daddr")) {
        (Ok(s), Ok(d)) => (s, d),
        _ => (0, 0),
    };
    Ok(SockLayout {
        family: narrow(family)?,
        sport: narrow(sport)?,
        dport: narrow(dport)?,
        saddr4: narrow(saddr4)?,
        daddr4: narrow(daddr4)?,
        saddr6: narrow(saddr6)?,
        daddr6: narrow(daddr6)?,
        ports_be: SockLayout::DPORT_BE,
        state: narrow(state)?,
        protocol: narrow(protocol)?,
    })
}

/// The layout holds 16-bit offsets; `struct sock` is far smaller.
fn narrow(v: u32) -> Result<u16, LayoutError> {
    u16::try_from(v).map_err(|_| LayoutError::OffsetTooLarge(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a little-endian BTF blob: an INT, a STRUCT with one member,
    /// then the enum under test, then an ENUM64.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0s\0m\0sk_rst_reason\0SK_RST_REASON_NOT_SPECIFIED\0SK_RST_REASON_NO_SOCKET\0e64\0BIG\0outer\0a\0u\0td\0";
        let at = |s: &str| -> u32 {
            let needle = format!("\0{s}\0");
            u32::try_from(strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() + 1).unwrap()
        };
        let mut t: Vec<u32> = Vec::new();
        // [1] int: name, info(kind 1), size 4, encoding
        t.extend([at("int"), 1 << 24, 4, 32]);
        // [2] struct s { int m; }
        t.extend([at("s"), 4 << 24 | 1, 4, at("m"), 1, 0]);
        // [3] enum sk_rst_reason (2 values)
        t.extend([
            at("sk_rst_reason"),
            6 << 24 | 2,
            4,
            at("SK_RST_REASON_NOT_SPECIFIED"),
            0,
            at("SK_RST_REASON_NO_SOCKET"),
            1,
        ]);
        // [4] enum64 e64 { BIG = 1 << 40 }
        t.extend([at("e64"), 19 << 24 | 1, 8, at("BIG"), 0, 1 << 8]);
        // [5] union { int u; }  (anonymous)
        t.extend([0, 5 << 24 | 1, 4, at("u"), 1, 0]);
        // [6] typedef td = [5]
        t.extend([at("td"), 8 << 24, 5]);
        // [7] struct outer { int a; td; } with kind_flag: member offsets
        // carry bit field sizes in the top byte.
        t.extend([at("outer"), 1 << 31 | 4 << 24 | 2, 12, at("a"), 1, 0, 0, 6, 64]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend(MAGIC.to_le_bytes());
        out.extend([1u8, 0]);
        let lens = [
            24u32,
            0,
            u32::try_from(types.len()).unwrap(),
            u32::try_from(types.len()).unwrap(),
            u32::try_from(strings.len()).unwrap(),
        ];
        for v in lens {
            out.extend(v.to_le_bytes());
        }
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_enums_after_other_kinds() {
        let btf = Btf::parse(blob()).unwrap();
        assert_eq!(reset_reason_names(&btf).unwrap(), [(0, "NOT_SPECIFIED".to_owned()), (1, "NO_SOCKET".to_owned())]);
        assert_eq!(btf.enum_values("e64").unwrap(), [(1 << 40, "BIG".to_owned())]);
        assert!(matches!(btf.enum_values("nope"), Err(BtfError::NoEnum(_))));
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(blob()).unwrap();
        assert_eq!(btf.member_offset("s", "m").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "u").unwrap(), 8);
        assert!(matches!(btf.member_offset("outer", "zz"), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.member_offset("nope", "a"), Err(BtfError::NoStruct(_))));
    }

    #[test]
    fn finds_the_socket_fields_of_the_running_kernel() {
        // Every kernel governor supports has BTF (checked at start-up).
        let btf = Btf::read(Path::new(VMLINUX)).unwrap();
        let err = btf.member_offset("sock", "sk_err").unwrap();
        let srtt = btf.member_offset("tcp_sock", "srtt_us").unwrap();
        // struct sock starts with struct sock_common; tcp_sock embeds sock.
        assert!(err > btf.member_offset("sock", "__sk_common").unwrap());
        assert!(srtt > err);
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(matches!(Btf::parse(vec![1, 2, 3]), Err(BtfError::Format(_))));
        let mut b = blob();
        b.truncate(30);
        assert!(matches!(Btf::parse(b), Err(BtfError::Format(_))));
        let mut b = blob();
        // Kind 31 does not exist: the walk stops with an error, not garbage.
        b[24 + 7] = 31;
        assert!(matches!(
            Btf::parse(b).unwrap().enum_values("sk_rst_reason"),
            Err(BtfError::UnknownKind { kind: 31, id: 1 })
        ));
    }
}
