//! Tar.gz archives with whatever names and link targets a test wants, including the malicious
//! ones (`..`, absolute paths) that `tar::Header::set_path` refuses to write.

/// One archive entry.
pub enum Entry<'a> {
    File(&'a str, Vec<u8>),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
}

/// A gzip-compressed tar of `entries`, names and link targets written raw into the headers.
pub fn gz(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, kind, data, link): (&str, tar::EntryType, &[u8], Option<&str>) = match e {
            Entry::File(n, d) => (n, tar::EntryType::Regular, d, None),
            Entry::Dir(n) => (n, tar::EntryType::Directory, b"", None),
            Entry::Symlink(n, t) => (n, tar::EntryType::Symlink, b"", Some(t)),
            Entry::Hardlink(n, t) => (n, tar::EntryType::Link, b"", Some(t)),
            Entry::Fifo(n) => (n, tar::EntryType::Fifo, b"", None),
        };
        raw_field(&mut h.as_old_mut().name, name);
        if let Some(t) = link {
            raw_field(&mut h.as_old_mut().linkname, t);
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn raw_field(field: &mut [u8], value: &str) {
    assert!(
        value.len() <= field.len(),
        "{value:?} does not fit a tar header field"
    );
    field.fill(0);
    field[..value.len()].copy_from_slice(value.as_bytes());
}
