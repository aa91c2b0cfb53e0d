//! Plain-text tables for the terminal: columns padded to their widest cell, two spaces
//! between them, no trailing blanks.

use std::fmt::Write;

/// `header` then `rows`, one line each, every column as wide as its widest cell (counted in
/// characters, so names with accents line up).
pub fn aligned<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header = header.map(str::to_string);
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_by_characters_without_trailing_blanks() {
        let rows = [
            ["é".to_string(), "1".to_string()],
            ["long".to_string(), String::new()],
        ];
        assert_eq!(aligned(["A", "BB"], &rows), "A     BB\né     1\nlong\n");
    }
}
