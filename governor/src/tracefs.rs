//! Tracepoint record layouts, read from
//! `<tracefs>/events/<category>/<name>/format` at start-up.
//!
//! The kernel programs never assume one kernel's layout: this module finds
//! the offset of every field they read and fails with the tracepoint and
//! field name when one is missing.

use std::{fs, io, path::Path};

use governor_common::{KernelConfig, Span, TP_RECORD_MAX, TpLayout};

/// The tracepoints governor attaches to, as `(category, name, program)`.
pub const TRACEPOINTS: [Tracepoint; 4] = [
    Tracepoint { hook: Hook::State, category: "sock", name: "inet_sock_set_state", program: "gov_state" },
    Tracepoint { hook: Hook::ResetSent, category: "tcp", name: "tcp_send_reset", program: "gov_rst_sent" },
    Tracepoint { hook: Hook::ResetReceived, category: "tcp", name: "tcp_receive_reset", program: "gov_rst_recv" },
    Tracepoint { hook: Hook::Retransmit, category: "tcp", name: "tcp_retransmit_skb", program: "gov_retrans" },
];

/// What a hook watches; decides which fields it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    State,
    ResetSent,
    ResetReceived,
    Retransmit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracepoint {
    pub hook: Hook,
    pub category: &'static str,
    pub name: &'static str,
    /// The kernel program attached to it.
    pub program: &'static str,
}

impl std::fmt::Display for Tracepoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.category, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "tracepoint {tracepoint} is not available (cannot read {path}: {source}): governor needs a kernel with \
         this tracepoint (Linux 5.15 or later) and tracefs at ebpf.tracefs"
    )]
    Unreadable { tracepoint: String, path: String, source: io::Error },
    #[error("tracepoint {tracepoint}: cannot parse format line {line}: {text:?}")]
    Malformed { tracepoint: String, line: usize, text: String },
    #[error("tracepoint {tracepoint} has no field `{field}` (this kernel's layout is not supported)")]
    MissingField { tracepoint: String, field: &'static str },
    #[error("tracepoint {tracepoint}: field `{field}` is {found} bytes, expected {expected}")]
    WrongSize { tracepoint: String, field: &'static str, expected: u32, found: u32 },
    #[error(
        "tracepoint {tracepoint}: the {what} fields span {len} bytes, more than the {TP_RECORD_MAX} governor copies at once"
    )]
    SpanTooLarge { tracepoint: String, what: &'static str, len: u32 },
    #[error("tracepoint {tracepoint}: field `{field}` at offset {offset} is beyond what governor can address")]
    OffsetTooLarge { tracepoint: String, field: &'static str, offset: u32 },
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub c_type: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses the text of a format file into its fields.
pub fn parse_format(tracepoint: &str, text: &str) -> Result<Vec<Field>, LayoutError> {
    let malformed = |line: usize, text: &str| LayoutError::Malformed {
        tracepoint: tracepoint.to_owned(),
        line: line + 1,
        text: text.to_owned(),
    };
    let mut fields = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("field:") else { continue };
        // "<decl>;\toffset:N;\tsize:N;\tsigned:N;"
        let mut parts = rest.split(';').map(str::trim);
        let decl = parts.next().filter(|d| !d.is_empty()).ok_or_else(|| malformed(number, line))?;
        let mut offset = None;
        let mut size = None;
        for part in parts {
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        let (Some(offset), Some(size)) = (offset, size) else { return Err(malformed(number, line)) };
        let (c_type, name) = split_declaration(decl).ok_or_else(|| malformed(number, line))?;
        fields.push(Field { name, c_type, offset, size });
    }
    Ok(fields)
}

/// `"const void * skaddr"` → (`"const void *"`, `"skaddr"`);
/// `"__u8 saddr[28]"` → (`"__u8 [28]"`, `"saddr"`).
fn split_declaration(decl: &str) -> Option<(String, String)> {
    let (head, array) = match decl.find('[') {
        Some(i) => (&decl[..i], &decl[i..]),
        None => (decl, ""),
    };
    let head = head.trim_end();
    let start = head.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
    let name = &head[start..];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let c_type = format!("{}{}{}", head[..start].trim_end(), if array.is_empty() { "" } else { " " }, array);
    Some((c_type, name.to_owned()))
}

/// Finds fields by name and checks their sizes.
struct Fields<'a> {
    tracepoint: &'a str,
    fields: &'a [Field],
}

impl Fields<'_> {
    fn find(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    fn has(&self, name: &str, size: u32) -> bool {
        self.find(name).is_some_and(|f| f.size == size)
    }

    fn offset(&self, field: &'static str, size: u32) -> Result<u16, LayoutError> {
        let f = self
            .find(field)
            .ok_or_else(|| LayoutError::MissingField { tracepoint: self.tracepoint.to_owned(), field })?;
        if f.size != size {
            return Err(LayoutError::WrongSize {
                tracepoint: self.tracepoint.to_owned(),
                field,
                expected: size,
                found: f.size,
            });
        }
        self.fit(field, f.offset, size)
    }

    fn fit(&self, field: &'static str, offset: u32, size: u32) -> Result<u16, LayoutError> {
        u16::try_from(offset + size)
            .ok()
            .filter(|&end| end < TpLayout::ABSENT)
            .map(|_| u16::try_from(offset).expect("smaller than offset + size"))
            .ok_or(LayoutError::OffsetTooLarge { tracepoint: self.tracepoint.to_owned(), field, offset })
    }

    /// The smallest run of bytes holding every `(offset, size)` given.
    fn span(&self, what: &'static str, parts: &[(u16, u16)]) -> Result<Span, LayoutError> {
        let parts = parts.iter().filter(|(offset, _)| *offset != TpLayout::ABSENT);
        let start = parts.clone().map(|(o, _)| *o).min().unwrap_or(0);
        let end = parts.map(|(o, s)| o + s).max().unwrap_or(0);
        let len = end - start;
        if usize::from(len) > TP_RECORD_MAX {
            return Err(LayoutError::SpanTooLarge { tracepoint: self.tracepoint.to_owned(), what, len: len.into() });
        }
        Ok(Span { start, len })
    }

    /// Family, ports and both addresses, in whichever of the two forms the
    /// kernel uses for this tracepoint.
    fn addresses(&self, layout: &mut TpLayout) -> Result<(), LayoutError> {
        // Since 6.10 some TCP tracepoints carry `struct sockaddr_in6`-sized
        // byte arrays: family at +0, big-endian port at +2, IPv4 address at
        // +4, IPv6 address at +8.
        const SOCKADDR_IN6: u32 = 28;
        if !self.has("sport", 2) && self.has("saddr", SOCKADDR_IN6) && self.has("daddr", SOCKADDR_IN6) {
            let s = self.offset("saddr", SOCKADDR_IN6)?;
            let d = self.offset("daddr", SOCKADDR_IN6)?;
            let at = |base: u16, plus: u32, size, field| self.fit(field, u32::from(base) + plus, size);
            layout.family = s;
            layout.sport = at(s, 2, 2, "saddr")?;
            layout.dport = at(d, 2, 2, "daddr")?;
            layout.saddr4 = at(s, 4, 4, "saddr")?;
            layout.daddr4 = at(d, 4, 4, "daddr")?;
            layout.saddr6 = at(s, 8, 16, "saddr")?;
            layout.daddr6 = at(d, 8, 16, "daddr")?;
            layout.ports_be = 1;
            return Ok(());
        }
        layout.family = self.offset("family", 2)?;
        layout.sport = self.offset("sport", 2)?;
        layout.dport = self.offset("dport", 2)?;
        layout.saddr4 = self.offset("saddr", 4)?;
        layout.daddr4 = self.offset("daddr", 4)?;
        layout.saddr6 = self.offset("saddr_v6", 16)?;
        layout.daddr6 = self.offset("daddr_v6", 16)?;
        layout.ports_be = 0;
        Ok(())
    }
}

/// The layout one program needs from its tracepoint's fields.
pub fn layout_for(tp: &Tracepoint, fields: &[Field]) -> Result<TpLayout, LayoutError> {
    let name = tp.to_string();
    let f = Fields { tracepoint: &name, fields };
    let mut layout = TpLayout::EMPTY;
    f.addresses(&mut layout)?;
    match tp.hook {
        Hook::State => {
            layout.oldstate = f.offset("oldstate", 4)?;
            layout.newstate = f.offset("newstate", 4)?;
            layout.protocol = f.offset("protocol", 2)?;
            layout.skaddr = f.offset("skaddr", 8)?;
        }
        Hook::ResetSent => {
            // Both are extras: older kernels lack the reason, and a missing
            // state only loses detail, never counts.
            if f.has("state", 4) {
                layout.state = f.offset("state", 4)?;
            }
            if f.has("reason", 4) {
                layout.reason = f.offset("reason", 4)?;
            }
        }
        Hook::ResetReceived | Hook::Retransmit => {}
    }
    let l = layout;
    let addr = [(l.family, 2), (l.sport, 2), (l.dport, 2), (l.saddr4, 4), (l.daddr4, 4)];
    layout.addr = f.span("address", &addr)?;
    layout.addr6 = f.span("IPv6 address", &[(l.saddr6, 16), (l.daddr6, 16)])?;
    layout.primary = match tp.hook {
        // The socket table needs the addresses on several transitions:
        // one copy of both costs less than a second copy.
        Hook::State => f.span(
            "state",
            &[addr.as_slice(), &[(l.skaddr, 8), (l.oldstate, 4), (l.newstate, 4), (l.protocol, 2)]].concat(),
        )?,
        Hook::ResetSent => f.span("reset", &[addr.as_slice(), &[(l.state, 4), (l.reason, 4)]].concat())?,
        Hook::ResetReceived | Hook::Retransmit => layout.addr,
    };
    Ok(layout)
}

/// Reads the format files under `tracefs` and builds the kernel
/// configuration's layouts. The ephemeral range is left for the caller.
pub fn read_layouts(tracefs: &Path) -> Result<KernelConfig, LayoutError> {
    let mut config = KernelConfig::EMPTY;
    for tp in &TRACEPOINTS {
        let path = tracefs.join("events").join(tp.category).join(tp.name).join("format");
        let text = fs::read_to_string(&path).map_err(|source| LayoutError::Unreadable {
            tracepoint: tp.to_string(),
            path: path.display().to_string(),
            source,
        })?;
        let layout = layout_for(tp, &parse_format(&tp.to_string(), &text)?)?;
        *slot(&mut config, tp) = layout;
    }
    Ok(config)
}

fn slot<'a>(config: &'a mut KernelConfig, tp: &Tracepoint) -> &'a mut TpLayout {
    match tp.hook {
        Hook::State => &mut config.inet_sock_set_state,
        Hook::ResetSent => &mut config.tcp_send_reset,
        Hook::ResetReceived => &mut config.tcp_receive_reset,
        Hook::Retransmit => &mut config.tcp_retransmit_skb,
    }
}

#[cfg(test)]
mod tests;
