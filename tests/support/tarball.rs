//! Tar.gz archives with whatever names and link targets a test wants, including the malicious
//! ones (`..`, absolute paths, names too long or too deep) that `tar::Header::set_path` refuses
//! to write. A name or target longer than a header's field goes in a GNU long-name record
//! before the entry, as GNU tar writes it.

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
    gz_with(entries, flate2::Compression::fast())
}

/// As [`gz`], with the given compression (`none` for incompressible data, to save time).
pub fn gz_with(entries: &[Entry], level: flate2::Compression) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), level));
    for e in entries {
        append(&mut b, e);
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Appends one entry, raw, to a tar being built.
pub fn append<W: std::io::Write>(b: &mut tar::Builder<W>, e: &Entry) {
    let (name, kind, data, link): (&str, tar::EntryType, &[u8], Option<&str>) = match e {
        Entry::File(n, d) => (n, tar::EntryType::Regular, d, None),
        Entry::Dir(n) => (n, tar::EntryType::Directory, b"", None),
        Entry::Symlink(n, t) => (n, tar::EntryType::Symlink, b"", Some(t)),
        Entry::Hardlink(n, t) => (n, tar::EntryType::Link, b"", Some(t)),
        Entry::Fifo(n) => (n, tar::EntryType::Fifo, b"", None),
    };
    let mut h = tar::Header::new_gnu();
    long_record(b, tar::EntryType::GNULongName, name);
    raw_field(&mut h.as_old_mut().name, name);
    if let Some(t) = link {
        long_record(b, tar::EntryType::GNULongLink, t);
        raw_field(&mut h.as_old_mut().linkname, t);
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// The size of a tar header's name and link name fields.
const FIELD: usize = 100;

/// Writes `value` in a GNU long-name (`L`) or long-link (`K`) record if it does not fit a
/// header field.
fn long_record<W: std::io::Write>(b: &mut tar::Builder<W>, kind: tar::EntryType, value: &str) {
    if value.len() <= FIELD {
        return;
    }
    let mut data = value.as_bytes().to_vec();
    data.push(0);
    let mut h = tar::Header::new_gnu();
    raw_field(&mut h.as_old_mut().name, "././@LongLink");
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &data[..]).unwrap();
}

/// Writes as much of `value` as fits (all of it unless a long record carries it).
fn raw_field(field: &mut [u8], value: &str) {
    let n = value.len().min(field.len());
    field.fill(0);
    field[..n].copy_from_slice(&value.as_bytes()[..n]);
}
