//! A job's output on its way into the log. The server's own lines start with `==> `; a line
//! of the job's that starts the same way is shown indented by one space, so that a reader of
//! the log can tell the two apart. (The verdict itself never comes from the log: clients read
//! it from the job's record.)

/// What marks the server's own lines in a log ([`crate::logs::LiveLog::note`]).
pub const SERVER_MARK: &[u8] = b"==> ";

/// Escapes one stream of output (one container's), chunk by chunk.
#[derive(Debug)]
pub struct Relay {
    /// The next byte starts a line (after `\n` or `\r`, or at the very start).
    at_line_start: bool,
    /// The start of a line that may turn out to be the mark, held until it is known.
    pending: Vec<u8>,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            at_line_start: true,
            pending: Vec::new(),
        }
    }
}

impl Relay {
    /// The bytes to log for `chunk`. A line start that is a prefix of the mark is held back
    /// until the next chunk (or [`Relay::finish`]) tells what it is.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let held = std::mem::take(&mut self.pending);
        let data: std::borrow::Cow<[u8]> = if held.is_empty() {
            chunk.into()
        } else {
            [held.as_slice(), chunk].concat().into()
        };
        let mut out = Vec::with_capacity(data.len() + 8);
        let mut i = 0;
        while i < data.len() {
            if self.at_line_start {
                let rest = &data[i..];
                let n = rest.len().min(SERVER_MARK.len());
                if rest[..n] == SERVER_MARK[..n] {
                    if n < SERVER_MARK.len() {
                        self.pending = rest.to_vec();
                        return out;
                    }
                    out.push(b' ');
                }
                self.at_line_start = false;
            }
            match data[i..].iter().position(|b| matches!(b, b'\n' | b'\r')) {
                Some(p) => {
                    out.extend_from_slice(&data[i..=i + p]);
                    i += p + 1;
                    self.at_line_start = true;
                }
                None => {
                    out.extend_from_slice(&data[i..]);
                    i = data.len();
                }
            }
        }
        out
    }

    /// What is still held back, at the end of the stream.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(chunks: &[&[u8]]) -> String {
        let mut r = Relay::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(r.push(c));
        }
        out.extend(r.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn job_lines_that_look_like_the_servers_are_indented() {
        assert_eq!(
            relay(&[b"==> result: passed (0.1s)\nok ==> x\n"]),
            " ==> result: passed (0.1s)\nok ==> x\n"
        );
        assert_eq!(
            relay(&[b"a\r==> result: passed\n"]),
            "a\r ==> result: passed\n"
        );
        assert_eq!(relay(&[b"==>x\n=> y\n"]), "==>x\n=> y\n");
    }

    #[test]
    fn a_mark_split_across_chunks_is_still_caught() {
        assert_eq!(relay(&[b"ok\n=", b"=", b"> fake\n"]), "ok\n ==> fake\n");
        assert_eq!(relay(&[b"ok\n==", b"x\n"]), "ok\n==x\n");
        // What is held back at the end is not lost.
        assert_eq!(relay(&[b"ok\n=="]), "ok\n==");
    }

    #[test]
    fn other_output_passes_unchanged() {
        let text: &[u8] = b"tests/test_a.py::test_x PASSED [ 50%]\n\x1b[32m1 passed\x1b[0m\n";
        assert_eq!(relay(&[text]).as_bytes(), text);
        assert_eq!(relay(&[b""]), "");
    }
}
