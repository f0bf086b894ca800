//! Tables for people: left-aligned columns two spaces apart, no trailing blanks.

/// Renders a header and rows as a table.
pub fn render(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    render_fit(header, rows, None, &[])
}

/// [`render`], within `width` columns when given: the widest of the `shrink` columns (free
/// text, unpainted) gives up room first, its cells cut with `…`, none below
/// [`MIN_SHRUNK`] characters (a table that cannot fit then still wraps, rather than lose
/// them whole). Cells may be painted: their width is what a terminal shows.
pub fn render_fit(
    header: &[&str],
    rows: impl Iterator<Item = Vec<String>>,
    width: Option<usize>,
    shrink: &[usize],
) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut rows: Vec<Vec<String>> = std::iter::once(header).chain(rows).collect();
    let mut widths = vec![0; rows[0].len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(crate::style::width(cell));
        }
    }
    if let Some(width) = width {
        let total = |widths: &[usize]| widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        while total(&widths) > width {
            let Some(&widest) = shrink
                .iter()
                .filter(|&&c| c < widths.len() && widths[c] > MIN_SHRUNK)
                .max_by_key(|&&c| (widths[c], std::cmp::Reverse(c)))
            else {
                break;
            };
            widths[widest] -= 1;
        }
        for row in &mut rows {
            for &c in shrink {
                if let Some(cell) = row.get_mut(c) {
                    *cell = cut(cell, widths[c]);
                }
            }
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| {
                format!(
                    "{c}{}",
                    " ".repeat(w.saturating_sub(crate::style::width(c)))
                )
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The narrowest a shrunk column gets.
pub const MIN_SHRUNK: usize = 8;

/// `text` in at most `width` characters, the last one `…` when cut.
pub fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The width `ci list` fits its table to: `COLUMNS`, else the terminal's, when stdout is a
/// terminal; none (full rows) when it is not.
pub fn stdout_width() -> Option<usize> {
    use std::io::IsTerminal;
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c: &usize| c > 0)
        .or_else(|| terminal_size::terminal_size_of(&stdout).map(|(w, _)| usize::from(w.0)))
}

/// `2026-11-21T10:50:54.123Z` -> `2026-11-21 10:50:54`; `-` for none.
pub fn short_time(t: Option<&str>) -> String {
    t.map_or("-".into(), |t| t.get(..19).unwrap_or(t).replace('T', " "))
}

/// [`short_time`], only the time of day (`10:50:54`) when `t` is on the day of `since`.
pub fn clock_after(t: Option<&str>, since: &str) -> String {
    let full = short_time(t);
    match (
        full.split_once(' '),
        short_time(Some(since)).split_once(' '),
    ) {
        (Some((day, clock)), Some((since_day, _))) if day == since_day => clock.to_string(),
        _ => full,
    }
}

/// `512 B`, `1.5 KiB`, `3.0 MiB`, ... (artifacts fetched, an image pull's progress).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut size = bytes as f64 / 1024.0;
    let mut unit = 0;
    while size >= 1024.0 && unit < UNITS.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    format!("{size:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    #[test]
    fn fits_by_cutting_the_widest_free_text() {
        let rows = || {
            vec![
                vec![
                    "a".to_string(),
                    "a rather long project".into(),
                    "x".into(),
                    "why it ended".into(),
                ],
                vec!["b".into(), "p".into(), "y".into(), "-".into()],
            ]
            .into_iter()
        };
        let header = ["ID", "PROJECT", "S", "RESULT"];
        let full = super::render(&header, rows());
        assert_eq!(super::render_fit(&header, rows(), None, &[1, 3]), full);
        assert_eq!(super::render_fit(&header, rows(), Some(200), &[1, 3]), full);
        let fit = super::render_fit(&header, rows(), Some(32), &[1, 3]);
        assert_eq!(
            fit,
            "ID  PROJECT      S  RESULT\n\
             a   a rather l…  x  why it ended\n\
             b   p            y  -\n"
        );
        assert!(fit.lines().all(|l| l.chars().count() <= 32), "{fit}");
        // Never below the least width: the table wraps rather than lose the column.
        let narrow = super::render_fit(&header, rows(), Some(5), &[1, 3]);
        assert!(narrow.contains("a rathe…"), "{narrow}");
        // Painted cells are as wide as they show.
        let painted = vec![vec!["\x1b[1mab\x1b[0m".to_string(), "c".into()]];
        assert_eq!(
            super::render(&["X", "Y"], painted.into_iter()),
            "X   Y\n\x1b[1mab\x1b[0m  c\n"
        );
    }

    #[test]
    fn aligns_columns() {
        let rows = vec![
            vec!["a".to_string(), "long cell".to_string()],
            vec!["bbb".into(), "".into()],
        ];
        assert_eq!(
            super::render(&["X", "Y"], rows.into_iter()),
            "X    Y\na    long cell\nbbb\n"
        );
        assert_eq!(
            super::short_time(Some("2026-11-21T10:50:54.123Z")),
            "2026-11-21 10:50:54"
        );
        assert_eq!(super::short_time(None), "-");
        let created = "2026-11-21T10:50:54Z";
        assert_eq!(
            super::clock_after(Some("2026-11-21T10:51:02.5Z"), created),
            "10:51:02"
        );
        assert_eq!(
            super::clock_after(Some("2026-11-22T00:00:01Z"), created),
            "2026-11-22 00:00:01"
        );
        assert_eq!(super::clock_after(None, created), "-");
    }
}
