//! The results table of `cargo xtask test-plugins`.

/// One row: a plugin with one model (or the loader probe of a broken plugin).
pub struct Row {
    pub plugin: String,
    pub version: String,
    pub model: String,
    /// passed / failed / skipped, when the suite wrote a report.
    pub counts: Option<(usize, usize, usize)>,
    /// Time the checks took.
    pub seconds: Option<f64>,
    /// ok, FAIL, CRASHED (...), refused: ..., expected failures, ...
    pub result: String,
    /// Whether this row is what we want.
    pub ok: bool,
}

pub fn print(rows: &[Row]) {
    let headers = [
        "plugin", "version", "model", "pass", "fail", "skip", "time", "result",
    ];
    let cells: Vec<[String; 8]> = rows.iter().map(cells).collect();
    let mut widths = headers.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count()).min(60);
        }
    }
    let line = |values: [&str; 8]| {
        let parts: Vec<String> = values
            .iter()
            .zip(widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    println!();
    line(headers);
    line(widths.map(|w| "-".repeat(w)).each_ref().map(String::as_str));
    for row in &cells {
        line(row.each_ref().map(String::as_str));
    }
    println!();
}

fn cells(row: &Row) -> [String; 8] {
    let (p, f, s) = match row.counts {
        Some((p, f, s)) => (p.to_string(), f.to_string(), s.to_string()),
        None => ("-".into(), "-".into(), "-".into()),
    };
    [
        row.plugin.clone(),
        row.version.clone(),
        row.model.clone(),
        p,
        f,
        s,
        row.seconds.map_or("-".into(), |t| format!("{t:.1}s")),
        row.result.clone(),
    ]
}
