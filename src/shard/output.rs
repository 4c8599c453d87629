//! The JSON Lines file of a (sharded) run, written atomically and resumably.
//!
//! Results go to `FILE.partial` as they come (flushed to the OS after each batch, so a killed
//! process leaves every finished line there). At the end the lines are copied, one per path,
//! into `FILE.tmp` beside `FILE`, synced, and renamed over `FILE`, and `FILE.partial` is
//! removed: `FILE` is always either the old file or the complete new one.
//!
//! Resuming reads the records already in `FILE` and `FILE.partial` (a last line without its
//! newline, cut by the kill, is dropped), keeps appending to `FILE.partial`, and at the end
//! writes `FILE`'s old lines, then the new ones. A record is a JSON object with a string
//! `"path"` (the input as shown) and either `"top"` or `"error"`.

use crate::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Writes `FILE`'s lines through `FILE.partial` (see the module docs); [`Write`] takes whole
/// JSON lines, [`Write::flush`] hands them to the OS.
pub struct JsonLinesFile {
    path: PathBuf,
    partial: PathBuf,
    writer: BufWriter<File>,
    /// Whether `FILE`'s old lines are kept.
    resumed: bool,
}

/// The records a resumed file already holds: path → whether it is an error.
pub type Recorded = HashMap<String, bool>;

impl JsonLinesFile {
    /// Starts `path` afresh: a `FILE.partial` left by an earlier run is emptied; `FILE` stays as
    /// it is until [`JsonLinesFile::finish`] replaces it.
    pub fn create(path: &Path) -> Result<JsonLinesFile> {
        let partial = check_target(path)?;
        let file = File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        Ok(JsonLinesFile::new(path, partial, file, false))
    }

    /// Resumes `path`: the records of `FILE` and `FILE.partial` (either may be missing), and
    /// the file, appending to `FILE.partial` after its last complete line.
    pub fn resume(path: &Path) -> Result<(JsonLinesFile, Recorded)> {
        let partial = check_target(path)?;
        let mut recorded = Recorded::new();
        let mut note = |_: &[u8], path: &str, failed: bool| {
            recorded.entry(path.to_string()).or_insert(failed);
            Ok(())
        };
        scan(path, &mut note)?;
        let complete = scan(&partial, &mut note)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .map_err(|e| Error::io(&partial, e))?;
        // Drop a torn last line.
        file.set_len(complete).map_err(|e| Error::io(&partial, e))?;
        Ok((JsonLinesFile::new(path, partial, file, true), recorded))
    }

    fn new(path: &Path, partial: PathBuf, file: File, resumed: bool) -> JsonLinesFile {
        JsonLinesFile {
            path: path.to_path_buf(),
            partial,
            writer: BufWriter::new(file),
            resumed,
        }
    }

    /// `FILE.partial`, where the lines go until [`JsonLinesFile::finish`].
    pub fn partial(&self) -> &Path {
        &self.partial
    }

    /// Writes `FILE` (its old lines first when resumed, then the new; the first line of each
    /// path only) through `FILE.tmp` and a rename, and removes `FILE.partial`. Returns the number
    /// of lines in `FILE`.
    pub fn finish(mut self) -> Result<usize> {
        self.writer
            .flush()
            .map_err(|e| Error::io(&self.partial, e))?;
        let tmp = beside(&self.path, ".tmp");
        let io = |e| Error::io(&tmp, e);
        let mut out = BufWriter::new(File::create(&tmp).map_err(io)?);
        let mut seen = HashSet::new();
        let mut copy = |line: &[u8], path: &str, _: bool| {
            if seen.insert(path.to_string()) {
                out.write_all(line).map_err(io)?;
            }
            Ok(())
        };
        if self.resumed {
            scan(&self.path, &mut copy)?;
        }
        scan(&self.partial, &mut copy)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        // The rename itself is durable once the folder is synced; best effort.
        let folder = self.path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Ok(dir) = File::open(folder.unwrap_or(Path::new("."))) {
            let _ = dir.sync_all();
        }
        std::fs::remove_file(&self.partial).map_err(|e| Error::io(&self.partial, e))?;
        Ok(seen.len())
    }
}

impl Write for JsonLinesFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

/// `FILE.partial` for `path`, after checking that `path` names a file that is not a folder.
fn check_target(path: &Path) -> Result<PathBuf> {
    if path.file_name().is_none() {
        return Err(Error::file(path, "not a file name"));
    }
    if path.is_dir() {
        return Err(Error::file(path, "is a folder; --output takes a file"));
    }
    Ok(beside(path, ".partial"))
}

/// `path` with `suffix` appended to its file name.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// What [`scan`] calls with each record: its line, path and whether it is an error.
type EachRecord<'a> = dyn FnMut(&[u8], &str, bool) -> Result<()> + 'a;

/// Calls `each(line, path, failed)` for every record line of `file` (`line` with its newline),
/// skipping blank lines and a last line without a newline (cut by a kill); returns the length of
/// the lines before that cut. A missing file has none; any other line that is not a record is
/// an error naming the file and line.
fn scan(file: &Path, each: &mut EachRecord) -> Result<u64> {
    let io = |e| Error::io(file, e);
    let mut reader = match File::open(file) {
        Ok(f) => BufReader::new(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let (mut line, mut complete, mut number) = (Vec::new(), 0u64, 0usize);
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(complete);
        }
        number += 1;
        complete += n as u64;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let (path, failed) = record(&line).ok_or_else(|| {
            let shown = String::from_utf8_lossy(&line[..line.len().min(200)]);
            Error::file(
                file,
                format!(
                    "line {number} is not a classify result (a JSON object with a \"path\"): {}",
                    shown.trim_end()
                ),
            )
        })?;
        each(&line, &path, failed)?;
    }
}

/// The path of a record line and whether it is an error.
fn record(line: &[u8]) -> Option<(String, bool)> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let object = value.as_object()?;
    let path = object.get("path")?.as_str()?.to_string();
    Some((path, object.contains_key("error")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mobilenet-shard-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn resume_keeps_old_lines_drops_torn_ones_and_duplicates() {
        let dir = scratch("resume");
        let file = dir.join("out.jsonl");
        let mut out = JsonLinesFile::create(&file).unwrap();
        out.write_all(b"{\"path\":\"a\",\"top\":[]}\n").unwrap();
        out.finish().unwrap();
        // A killed run: one line done, one cut.
        std::fs::write(
            beside(&file, ".partial"),
            "{\"path\":\"b\",\"error\":\"bad\"}\n{\"path\":\"c\",\"to",
        )
        .unwrap();
        let (mut out, recorded) = JsonLinesFile::resume(&file).unwrap();
        assert_eq!(
            recorded,
            Recorded::from([("a".into(), false), ("b".into(), true)])
        );
        out.write_all(b"{\"path\":\"c\",\"top\":[]}\n{\"path\":\"a\",\"top\":[1]}\n")
            .unwrap();
        assert_eq!(out.finish().unwrap(), 3);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "{\"path\":\"a\",\"top\":[]}\n{\"path\":\"b\",\"error\":\"bad\"}\n\
             {\"path\":\"c\",\"top\":[]}\n"
        );
        assert!(!beside(&file, ".partial").exists());
        assert!(!beside(&file, ".tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_lines_and_folders_are_errors() {
        let dir = scratch("bad");
        let file = dir.join("out.jsonl");
        std::fs::write(&file, "{\"path\":\"a\"}\nnot json\n").unwrap();
        let error = JsonLinesFile::resume(&file).err().unwrap().to_string();
        assert!(
            error.contains("out.jsonl: line 2 is not a classify result"),
            "{error}"
        );
        let error = JsonLinesFile::create(&dir).err().unwrap().to_string();
        assert!(error.contains("is a folder"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
