//! The client commands, `governor status`, `governor top` and
//! `governor registry`: they talk to the running daemon's JSON API
//! (`/api/v1/...`) and print what it says for people.

pub mod client;
pub mod registry;
pub mod status;
pub mod top;

use std::{
    fmt::Write as _,
    io::{self, Write as _},
    time::Duration,
};

/// How long a one-shot command waits for the daemon to connect and answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A duration in its two largest units: `12s`, `3m5s`, `2h1m`, `1d4h`. A
/// zero second unit is left out (`3m`, `1h`).
pub fn human_duration(seconds: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    for pair in UNITS.windows(2) {
        let [(size, unit), (next_size, next_unit)] = [pair[0], pair[1]];
        if seconds >= size {
            let minor = seconds % size / next_size;
            return match minor {
                0 => format!("{}{unit}", seconds / size),
                _ => format!("{}{unit}{minor}{next_unit}", seconds / size),
            };
        }
    }
    format!("{seconds}s")
}

/// Lays out `header` and `rows` in columns as wide as their widest cell,
/// two spaces apart, without trailing spaces. One string per line.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        debug_assert_eq!(row.len(), header.len(), "every row has a cell per column");
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (cell, width) in cells.zip(&widths) {
            let _ = write!(out, "{cell:<width$}  ");
        }
        out.trim_end().to_owned()
    };
    let mut lines = vec![line(&mut header.iter().copied())];
    lines.extend(rows.iter().map(|row| line(&mut row.iter().map(String::as_str))));
    lines
}

/// Writes `text` to stdout. A closed pipe (`governor status | head -1`) is
/// not an error.
pub fn print_stdout(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_duration_keeps_two_units() {
        let cases = [
            (0, "0s"),
            (12, "12s"),
            (59, "59s"),
            (60, "1m"),
            (185, "3m5s"),
            (3_600, "1h"),
            (7_260, "2h1m"),
            (7_299, "2h1m"),
            (86_400, "1d"),
            (100_000, "1d3h"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(human_duration(seconds), expected, "{seconds} s");
        }
    }

    #[test]
    fn table_pads_columns_to_the_widest_cell() {
        let rows = vec![
            vec!["a".to_owned(), "long cell".to_owned(), "x".to_owned()],
            vec!["wider".to_owned(), "b".to_owned(), String::new()],
        ];
        assert_eq!(table(&["H1", "H2", "H3"], &rows), ["H1     H2         H3", "a      long cell  x", "wider  b"]);
    }

    #[test]
    fn table_without_rows_is_the_header() {
        assert_eq!(table(&["ONE", "TWO"], &[]), ["ONE  TWO"]);
    }
}
