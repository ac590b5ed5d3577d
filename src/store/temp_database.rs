//! A SQLite file in a temporary directory of its own, removed when dropped (for unit tests).

/// A SQLite file in a directory of its own, removed at the end.
pub struct TempDatabase(std::path::PathBuf);

impl TempDatabase {
    /// A fresh directory named after `name`, the process and the time; the file is not created.
    pub fn new(name: &str) -> TempDatabase {
        let directory =
            std::env::temp_dir().join(format!("octopus-{name}-{}-{}", std::process::id(), crate::util::unix_millis()));
        std::fs::create_dir_all(&directory).unwrap();
        TempDatabase(directory)
    }

    /// The database file's path.
    pub fn path(&self) -> String {
        self.0.join("octopus.db").to_string_lossy().into_owned()
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
