//! The two output files of a capture, committed together. A capture writes
//! into a hidden staging directory beside `--out`; [`Staged::commit`] moves
//! the tokens file and then the load file into place once both are
//! complete. Dropped without commit (any error, any check that fails after
//! the data was read), the staging directory and everything in it goes, so
//! a failed capture leaves nothing behind.

use super::CaptureError;
use crate::trace::tokens_path_for;
use std::path::{Path, PathBuf};

pub struct Staged {
    dest: PathBuf,
    dir: PathBuf,
    staged: PathBuf,
}

impl Staged {
    /// Refuse destinations that cannot be written (a directory in the way
    /// of the load file, or of the tokens file when `tokens` is true)
    /// before any input is read, and make the staging directory.
    pub fn new(dest: &Path, tokens: bool) -> Result<Self, CaptureError> {
        let name = dest
            .file_name()
            .ok_or_else(|| CaptureError::input(dest, "--out names no file"))?;
        let mut targets = vec![dest.to_path_buf()];
        if tokens {
            targets.push(tokens_path_for(dest));
        }
        for t in &targets {
            if t.is_dir() {
                return Err(CaptureError::input(
                    t,
                    "is a directory: cannot write the trace there",
                ));
            }
        }
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| CaptureError::input(parent, format!("cannot create: {e}")))?;
        let dir = parent.join(format!(
            ".{}.capture{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        // a directory left by a killed run of the same pid is ours to reuse
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)
            .map_err(|e| CaptureError::input(&dir, format!("cannot create: {e}")))?;
        Ok(Self {
            dest: dest.to_path_buf(),
            staged: dir.join(name),
            dir,
        })
    }

    /// Where the capture writes its load file (the tokens file goes beside
    /// it, as always).
    pub fn path(&self) -> &Path {
        &self.staged
    }

    /// The staged tokens file, present once a token-level capture finished.
    pub fn tokens_path(&self) -> PathBuf {
        tokens_path_for(&self.staged)
    }

    /// Move the files into place: the tokens file first, the load file last
    /// (a reader finds the tokens through the load file). If the load file
    /// cannot be moved, the tokens file just moved is taken back out.
    pub fn commit(self) -> Result<(), CaptureError> {
        if !self.staged.is_file() {
            return Err(CaptureError::input(
                &self.dest,
                "the capture wrote no trace file",
            ));
        }
        let staged_tokens = self.tokens_path();
        let dest_tokens = tokens_path_for(&self.dest);
        let moved_tokens = staged_tokens.is_file();
        if moved_tokens {
            std::fs::rename(&staged_tokens, &dest_tokens)
                .map_err(|e| CaptureError::input(&dest_tokens, format!("cannot write: {e}")))?;
        }
        if let Err(e) = std::fs::rename(&self.staged, &self.dest) {
            if moved_tokens {
                let _ = std::fs::remove_file(&dest_tokens);
            }
            return Err(CaptureError::input(
                &self.dest,
                format!("cannot write: {e}"),
            ));
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("llep-staged-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn both_files_appear_together_or_not_at_all() {
        let d = tmp("ok");
        let s = Staged::new(&d.join("p.parquet"), true).unwrap();
        std::fs::write(s.path(), "loads").unwrap();
        std::fs::write(s.tokens_path(), "tokens").unwrap();
        assert_eq!(names(&d).len(), 1, "only the staging directory so far");
        s.commit().unwrap();
        assert_eq!(names(&d), ["p.parquet", "p.tokens.parquet"]);

        // dropped without commit: nothing at all
        let s = Staged::new(&d.join("q.parquet"), true).unwrap();
        std::fs::write(s.path(), "loads").unwrap();
        drop(s);
        assert_eq!(names(&d), ["p.parquet", "p.tokens.parquet"]);
    }

    #[test]
    fn a_directory_in_the_way_is_refused_up_front_or_undone_at_commit() {
        let d = tmp("dir");
        std::fs::create_dir(d.join("p.tokens.parquet")).unwrap();
        let e = Staged::new(&d.join("p.parquet"), true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("p.tokens.parquet: is a directory"), "{e}");
        // a load-level capture writes no tokens file: no conflict
        Staged::new(&d.join("p.parquet"), false).unwrap();

        // the load file's place taken after the capture started: the tokens
        // file moved first is taken back, and the staging directory goes
        let s = Staged::new(&d.join("q.parquet"), true).unwrap();
        std::fs::write(s.path(), "loads").unwrap();
        std::fs::write(s.tokens_path(), "tokens").unwrap();
        std::fs::create_dir(d.join("q.parquet")).unwrap();
        std::fs::write(d.join("q.parquet/x"), "x").unwrap();
        let e = s.commit().unwrap_err().to_string();
        assert!(e.contains("q.parquet: cannot write"), "{e}");
        assert_eq!(names(&d), ["p.tokens.parquet", "q.parquet"]);
    }
}
