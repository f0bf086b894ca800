//! Tables for people: left-aligned columns two spaces apart, no trailing blanks.

/// Renders a header and rows as a table.
pub fn render(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let rows: Vec<Vec<String>> = std::iter::once(header).chain(rows).collect();
    let mut widths = vec![0; rows[0].len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
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

#[cfg(test)]
mod tests {
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
