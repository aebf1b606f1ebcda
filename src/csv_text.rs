//! The one way tomex reads and writes CSV: the `csv` crate (RFC 4180), for prompt
//! files, the store's manifest, report tables and the FID and paired-metric caches.
//!
//! Written files quote a field only where RFC 4180 needs it (a `,`, `"` or line
//! break) and end lines in `\n`. Numbers are written by the caller as text (Rust's
//! shortest round-trip `Display`), so `0.5` stays `0.5` and `0` stays `0`.

use serde::de::DeserializeOwned;

/// A CSV text that cannot be read, at its 1-based line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct CsvError {
    pub line: u64,
    pub message: String,
}

impl CsvError {
    fn of(e: &csv::Error, lines: &mut LineCounter) -> CsvError {
        let line = lines.at(e.position().map_or(0, |p| p.byte() as usize));
        let message = match e.kind() {
            csv::ErrorKind::Deserialize { err, .. } => match err.field() {
                Some(f) => format!("field {}: {}", f + 1, err.kind()),
                None => err.kind().to_string(),
            },
            csv::ErrorKind::Utf8 { err, .. } => format!("not UTF-8 ({err})"),
            _ => e.to_string(),
        };
        CsvError { line, message }
    }
}

/// `header` and `rows` as CSV text.
pub fn to_string<H, R, F>(header: &[H], rows: impl IntoIterator<Item = R>) -> String
where
    H: AsRef<str>,
    R: IntoIterator<Item = F>,
    F: AsRef<str>,
{
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .flexible(true)
        .from_writer(Vec::new());
    // Writing into a Vec cannot fail.
    w.write_record(header.iter().map(AsRef::as_ref))
        .expect("CSV into memory");
    for row in rows {
        let fields: Vec<F> = row.into_iter().collect();
        w.write_record(fields.iter().map(AsRef::as_ref))
            .expect("CSV into memory");
    }
    let bytes = w.into_inner().expect("CSV into memory");
    String::from_utf8(bytes).expect("CSV of UTF-8 fields")
}

/// The records of `text` (the header included), each with the line it starts on, as
/// pandas' `read_csv` sees them: a UTF-8 byte-order mark is dropped, blank and
/// whitespace-only lines are skipped, records may have any number of fields, and a
/// quoted field left open at the end is an error (pandas: "EOF inside string").
pub fn records(text: &str) -> Result<Vec<(u64, Vec<String>)>, CsvError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    let mut lines = LineCounter::new(text);
    let mut last_start = None;
    for record in reader.records() {
        let record = record.map_err(|e| CsvError::of(&e, &mut lines))?;
        let byte = record.position().map_or(0, |p| p.byte() as usize);
        let line = lines.at(byte);
        last_start = Some(byte);
        let whitespace_only = record.len() == 1 && record[0].trim().is_empty();
        // The record's own line: its position is before the blank lines the crate skips.
        let raw = text[byte..].trim_start_matches(['\r', '\n']);
        if whitespace_only && !raw.lines().next().unwrap_or("").contains('"') {
            continue;
        }
        out.push((line, record.iter().map(str::to_string).collect()));
    }
    if let Some(start) = last_start {
        if let Some(open) = open_quote_line(&text[start..]) {
            let line = text[..start].matches('\n').count() as u64 + open;
            return Err(CsvError {
                line,
                message: "a quoted field is never closed".into(),
            });
        }
    }
    Ok(out)
}

/// The rows of `text` under its header, each deserialised by column name, with the
/// line it starts on.
pub fn rows<T: DeserializeOwned>(text: &str) -> Result<Vec<(u64, T)>, CsvError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| CsvError::of(&e, &mut LineCounter::new(text)))?
        .clone();
    let mut out = Vec::new();
    let mut lines = LineCounter::new(text);
    for record in reader.records() {
        let record = record.map_err(|e| CsvError::of(&e, &mut lines))?;
        let line = lines.at(record.position().map_or(0, |p| p.byte() as usize));
        if record.iter().all(str::is_empty) {
            continue;
        }
        let row = record
            .deserialize(Some(&headers))
            .map_err(|e| CsvError::of(&e, &mut lines))?;
        out.push((line, row));
    }
    Ok(out)
}

/// Physical 1-based lines of byte offsets, asked in increasing order: the `csv`
/// crate's own line count skips blank lines and the breaks inside quoted fields.
struct LineCounter<'t> {
    text: &'t [u8],
    byte: usize,
    line: u64,
}

impl<'t> LineCounter<'t> {
    fn new(text: &'t str) -> Self {
        LineCounter {
            text: text.as_bytes(),
            byte: 0,
            line: 1,
        }
    }

    /// The line of the record the `csv` crate says starts at `byte`: its position is
    /// where it began reading, before the blank lines it skips.
    fn at(&mut self, byte: usize) -> u64 {
        let mut byte = byte.min(self.text.len());
        while byte < self.text.len() && matches!(self.text[byte], b'\r' | b'\n') {
            byte += 1;
        }
        if byte < self.byte {
            *self = LineCounter {
                line: 1,
                byte: 0,
                text: self.text,
            };
        }
        self.line += self.text[self.byte..byte]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        self.byte = byte;
        self.line
    }
}

/// Within the last record's text: the 1-based line (relative to it) of a quoted field
/// that never closes, which the `csv` crate reads to the end of the text silently.
fn open_quote_line(record: &str) -> Option<u64> {
    let (mut quoted, mut field_start, mut just_closed) = (false, true, false);
    let (mut line, mut opened_at) = (1, 1);
    for c in record.chars() {
        if quoted {
            if c == '"' {
                quoted = false;
                just_closed = true;
            }
        } else if c == '"' && (field_start || just_closed) {
            // An opening quote, or the second of a doubled one inside a quoted field.
            if field_start {
                opened_at = line;
            }
            quoted = true;
            just_closed = false;
        } else {
            just_closed = false;
        }
        field_start = !quoted && (c == ',' || c == '\n');
        if c == '\n' {
            line += 1;
        }
    }
    quoted.then_some(opened_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_where_needed() {
        let text = to_string(
            &["a", "b"],
            [
                vec!["1", "b, c"],
                vec!["say \"hi\"", "two\nlines"],
                vec![" x", ""],
            ],
        );
        assert_eq!(
            text,
            "a,b\n1,\"b, c\"\n\"say \"\"hi\"\"\",\"two\nlines\"\n x,\n"
        );
        let back = records(&text).unwrap();
        assert_eq!(back[2].1, vec!["say \"hi\"", "two\nlines"]);
        assert_eq!(back[3], (5, vec![" x".to_string(), String::new()]));
    }

    #[test]
    fn records_skip_bom_and_blank_lines_and_find_open_quotes() {
        let r = records("\u{feff}prompt\n\n  \n\"\"\nlast").unwrap();
        assert_eq!(
            r,
            vec![
                (1, vec!["prompt".to_string()]),
                (4, vec![String::new()]),
                (5, vec!["last".to_string()]),
            ]
        );
        // A quoted empty field after a blank line is a record, not a blank line.
        assert_eq!(records("p\n\n\"\"\n").unwrap()[1], (3, vec![String::new()]));
        let e = records("prompt\nok\n\"open\nstill open\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(records("p\n\"closed \"\" twice\"\"\"\n").is_ok());
        assert!(records("p\nmid\"field\n").is_ok());
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Row {
        name: String,
        value: f64,
    }

    #[test]
    fn rows_by_column_name_with_lines() {
        let read: Vec<(u64, Row)> = rows("value,name\n0.5, a\n\n1,b\n").unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(
            read[1],
            (
                4,
                Row {
                    name: "b".into(),
                    value: 1.0
                }
            )
        );
        let e = rows::<Row>("value,name\nx,a\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("field 1"), "{e}");
    }
}
