//! A directory of Markdown documents read safely: the checklists and processes
//! behind `list_checklists`, `get_checklist`, `list_processes`, `get_process` and
//! `search_processes` (`CHECKLIST_DIR`, `PROCESS_DIR`).
//!
//! What it owns: turning a caller-supplied document name into a file strictly
//! inside the configured root, and reading it with bounded size as UTF-8.
//! Documents are the `*.md` files directly in the root; subdirectories are not
//! searched. A symlink is followed only when its target stays inside the root.
//!
//! What it must never do: open anything outside the root, read an unbounded
//! amount, block on a special file, or put a server path in an error message
//! (messages go back to MCP clients as they are).
//!
//! Synchronous `std::fs`: async callers run it under `tokio::task::spawn_blocking`.

use std::{
    fs::{self, File},
    io::{self, Read as _},
    path::{Path, PathBuf},
};

/// The largest document served, in bytes.
pub(crate) const MAX_DOC_BYTES: u64 = 256 * 1024;
/// The longest accepted document name, in bytes (without the `.md` suffix).
pub(crate) const MAX_NAME_LEN: usize = 100;
/// The longest accepted search query, in characters.
pub(crate) const MAX_QUERY_CHARS: usize = 200;
/// At most this many documents are listed or searched; the rest are ignored.
pub(crate) const MAX_DOCS: usize = 500;
/// Search snippets are cut to about this many characters.
pub(crate) const SNIPPET_CHARS: usize = 200;
/// Titles are cut to this many characters.
const TITLE_CHARS: usize = 200;
const SUFFIX: &str = ".md";

#[derive(Debug, thiserror::Error)]
pub(crate) enum DocError {
    #[error("the document directory is not available")]
    RootUnavailable(#[source] io::Error),
    #[error("the document directory could not be read")]
    RootUnreadable(#[source] io::Error),
    #[error("invalid document name: use up to {MAX_NAME_LEN} letters, digits, '.', '_' or '-', not starting with '.'")]
    InvalidName,
    #[error("document '{0}' not found")]
    NotFound(String),
    #[error("document '{0}' points outside the document directory")]
    OutsideRoot(String),
    #[error("document '{0}' is larger than {MAX_DOC_BYTES} bytes")]
    TooLarge(String),
    #[error("document '{0}' is not valid UTF-8 text")]
    NotUtf8(String),
    #[error("document '{name}' could not be read")]
    Unreadable {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("the search query is empty")]
    EmptyQuery,
    #[error("the search query is longer than {MAX_QUERY_CHARS} characters")]
    QueryTooLong,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DocSummary {
    /// The file stem: what [`DocDir::get`] takes.
    pub(crate) name: String,
    /// The first `# ` heading, or the name.
    pub(crate) title: String,
    /// Size of the file in bytes.
    pub(crate) size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Doc {
    pub(crate) name: String,
    pub(crate) title: String,
    /// The whole document (a leading byte-order mark removed).
    pub(crate) text: String,
    /// Size of the file in bytes.
    pub(crate) size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SearchHit {
    pub(crate) name: String,
    pub(crate) title: String,
    /// The first matching line, trimmed, cut to about [`SNIPPET_CHARS`] around the match.
    pub(crate) snippet: String,
    /// 1-based number of that line; `None` when only the title (the name) matched.
    pub(crate) line: Option<usize>,
}

#[derive(Debug, Clone)]
pub(crate) struct DocDir {
    root: PathBuf,
}

impl DocDir {
    /// Opens `root`, which must be a readable directory; it is canonicalised now,
    /// so later renames of a symlinked root do not move it.
    pub(crate) fn open(root: &Path) -> Result<Self, DocError> {
        let root = fs::canonicalize(root).map_err(DocError::RootUnavailable)?;
        let meta = fs::metadata(&root).map_err(DocError::RootUnavailable)?;
        if !meta.is_dir() {
            return Err(DocError::RootUnavailable(io::Error::other("not a directory")));
        }
        Ok(DocDir { root })
    }

    /// Every readable document directly in the root, sorted by name. Files that
    /// [`DocDir::get`] would refuse are skipped (and logged), never fatal.
    pub(crate) fn list(&self) -> Result<Vec<DocSummary>, DocError> {
        Ok(self
            .docs()?
            .into_iter()
            .map(|doc| DocSummary {
                name: doc.name,
                title: doc.title,
                size: doc.size,
            })
            .collect())
    }

    /// The document `name` (with or without `.md`).
    pub(crate) fn get(&self, name: &str) -> Result<Doc, DocError> {
        let name = name.strip_suffix(SUFFIX).unwrap_or(name);
        validate_name(name)?;
        let (text, size) = self.read(name)?;
        Ok(Doc {
            name: name.to_owned(),
            title: title_of(&text, name),
            text,
            size,
        })
    }

    /// Up to `limit` documents whose title or text contains `query`, ignoring
    /// case: title matches first, then by name. The query is trimmed.
    pub(crate) fn search(&self, query: &str, limit: usize) -> Result<Vec<SearchHit>, DocError> {
        let query = query.trim();
        if query.is_empty() {
            return Err(DocError::EmptyQuery);
        }
        if query.chars().count() > MAX_QUERY_CHARS {
            return Err(DocError::QueryTooLong);
        }
        let needle = query.to_lowercase();
        let mut hits: Vec<(bool, SearchHit)> = Vec::new();
        for doc in self.docs()? {
            let in_title = doc.title.to_lowercase().contains(&needle);
            let found = doc.text.lines().enumerate().find_map(|(i, line)| {
                let lower = line.to_lowercase();
                lower
                    .find(&needle)
                    .map(|at| (i + 1, snippet(line, lower[..at].chars().count())))
            });
            let (line, snippet) = match found {
                Some((line, snippet)) => (Some(line), snippet),
                None if in_title => (None, cut(&doc.title)),
                None => continue,
            };
            hits.push((
                in_title,
                SearchHit {
                    name: doc.name,
                    title: doc.title,
                    snippet,
                    line,
                },
            ));
        }
        // Stable: within each group the order stays by name.
        hits.sort_by_key(|(in_title, _)| !in_title);
        Ok(hits.into_iter().take(limit).map(|(_, hit)| hit).collect())
    }

    /// The readable documents, sorted by name, at most [`MAX_DOCS`].
    fn docs(&self) -> Result<Vec<Doc>, DocError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(DocError::RootUnreadable)? {
            let Ok(entry) = entry else { continue };
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue;
            };
            if validate_name(name).is_ok() {
                names.push(name.to_owned());
            }
        }
        names.sort_unstable();
        let mut docs = Vec::new();
        for name in names {
            if docs.len() == MAX_DOCS {
                tracing::warn!(
                    limit = MAX_DOCS,
                    "document directory holds too many documents, ignoring the rest"
                );
                break;
            }
            match self.get(&name) {
                Ok(doc) => docs.push(doc),
                Err(error) => tracing::warn!(%name, %error, "skipping document"),
            }
        }
        Ok(docs)
    }

    /// Reads `<root>/<name>.md` for a validated `name`: its text and byte size.
    fn read(&self, name: &str) -> Result<(String, u64), DocError> {
        let not_found = || DocError::NotFound(name.to_owned());
        let unreadable = |source| DocError::Unreadable {
            name: name.to_owned(),
            source,
        };
        let path = match fs::canonicalize(self.root.join(format!("{name}{SUFFIX}"))) {
            Ok(path) => path,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(unreadable(e)),
        };
        if !path.starts_with(&self.root) {
            return Err(DocError::OutsideRoot(name.to_owned()));
        }
        // Check the type before opening: opening a FIFO would block.
        let meta = fs::metadata(&path).map_err(unreadable)?;
        if !meta.is_file() {
            return Err(not_found());
        }
        if meta.len() > MAX_DOC_BYTES {
            return Err(DocError::TooLarge(name.to_owned()));
        }
        let file = File::open(&path).map_err(unreadable)?;
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // Bounded: the file may have grown since the metadata was read.
        file.take(MAX_DOC_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > MAX_DOC_BYTES {
            return Err(DocError::TooLarge(name.to_owned()));
        }
        let size = bytes.len() as u64;
        let text = String::from_utf8(bytes).map_err(|_| DocError::NotUtf8(name.to_owned()))?;
        Ok(match text.strip_prefix('\u{feff}') {
            Some(rest) => (rest.to_owned(), size),
            None => (text, size),
        })
    }
}

/// A name is `[A-Za-z0-9_.-]+`, at most [`MAX_NAME_LEN`] bytes, not starting with
/// `.` and without `..`.
fn validate_name(name: &str) -> Result<(), DocError> {
    let charset = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !charset || name.starts_with('.') || name.contains("..") {
        return Err(DocError::InvalidName);
    }
    Ok(())
}

/// The first `# ` heading outside fenced code blocks, or `name`.
fn title_of(text: &str, name: &str) -> String {
    let mut fenced = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("```") || line.starts_with("~~~") {
            fenced = !fenced;
        } else if let Some(title) = line.strip_prefix("# ").filter(|_| !fenced).map(str::trim)
            && !title.is_empty()
        {
            return cut(title);
        }
    }
    name.to_owned()
}

/// `line` trimmed and, when long, cut to [`SNIPPET_CHARS`] characters around
/// the character position `at`, with `…` marking each cut.
fn snippet(line: &str, at: usize) -> String {
    let trimmed_start = line.chars().count() - line.trim_start().chars().count();
    let line = line.trim();
    let len = line.chars().count();
    if len <= SNIPPET_CHARS {
        return line.to_owned();
    }
    let start = at
        .saturating_sub(trimmed_start)
        .saturating_sub(SNIPPET_CHARS / 4)
        .min(len - SNIPPET_CHARS);
    let mut out: String = line.chars().skip(start).take(SNIPPET_CHARS).collect();
    if start + SNIPPET_CHARS < len {
        out.push('…');
    }
    if start > 0 {
        out.insert(0, '…');
    }
    out
}

/// `text` cut to [`TITLE_CHARS`] characters.
fn cut(text: &str) -> String {
    text.chars().take(TITLE_CHARS).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = format!(
                "docdir-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(unique);
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn write(&self, name: &str, content: impl AsRef<[u8]>) -> &Self {
            fs::write(self.0.join(name), content).unwrap();
            self
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names(docs: &[DocSummary]) -> Vec<&str> {
        docs.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn lists_documents_sorted_with_titles_and_sizes() {
        let tmp = TempDir::new();
        tmp.write("release.md", "# Release checklist\n\n- [ ] tag\n")
            .write("Alpha.md", "intro\n```sh\n# not a title\n```\n#   Alpha process  \n")
            .write("no-title.md", "just text\n")
            .write("bom.md", "\u{feff}# With BOM\n")
            .write("notes.txt", "# not markdown\n")
            .write(".hidden.md", "# hidden\n")
            .write("bad name.md", "# space\n")
            .write("latin1.md", b"# caf\xe9\n")
            .write("big.md", vec![b'a'; MAX_DOC_BYTES as usize + 1]);
        fs::create_dir(tmp.0.join("folder.md")).unwrap();
        fs::create_dir(tmp.0.join("sub")).unwrap();
        tmp.write("sub/nested.md", "# nested\n");
        let docs = DocDir::open(&tmp.0).unwrap().list().unwrap();
        assert_eq!(names(&docs), ["Alpha", "bom", "no-title", "release"]);
        assert_eq!(docs[0].title, "Alpha process");
        assert_eq!((docs[1].title.as_str(), docs[1].size), ("With BOM", 14));
        assert_eq!(docs[2].title, "no-title");
        assert_eq!(
            docs[3],
            DocSummary {
                name: "release".into(),
                title: "Release checklist".into(),
                size: 31
            }
        );
    }

    #[test]
    fn get_with_or_without_suffix() {
        let tmp = TempDir::new();
        tmp.write("deploy.v2.md", "# Deploy\nsteps\n");
        let dir = DocDir::open(&tmp.0).unwrap();
        let doc = dir.get("deploy.v2").unwrap();
        assert_eq!(
            (doc.name.as_str(), doc.title.as_str(), doc.text.as_str()),
            ("deploy.v2", "Deploy", "# Deploy\nsteps\n")
        );
        assert_eq!(dir.get("deploy.v2.md").unwrap(), doc);
        assert!(matches!(dir.get("deploy"), Err(DocError::NotFound(_))));
    }

    #[test]
    fn invalid_names_are_refused() {
        let tmp = TempDir::new();
        tmp.write("ok.md", "# ok\n");
        let dir = DocDir::open(&tmp.0).unwrap();
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for name in [
            "",
            ".md",
            "../ok",
            "../../etc/passwd",
            ".hidden",
            "a/b",
            "a\\b",
            "a..b",
            "a b",
            "é",
            "ok\0",
            &long,
        ] {
            assert!(matches!(dir.get(name), Err(DocError::InvalidName)), "{name:?}");
        }
        assert!(
            dir.get(&"a".repeat(MAX_NAME_LEN))
                .is_err_and(|e| matches!(e, DocError::NotFound(_)))
        );
        assert_eq!(dir.get("ok.md").unwrap().name, "ok");
    }

    #[test]
    fn missing_directories_and_special_files_are_not_found() {
        let tmp = TempDir::new();
        fs::create_dir(tmp.0.join("folder.md")).unwrap();
        let dir = DocDir::open(&tmp.0).unwrap();
        assert!(matches!(dir.get("missing"), Err(DocError::NotFound(_))));
        assert!(matches!(dir.get("folder"), Err(DocError::NotFound(_))));
        #[cfg(unix)]
        {
            let _socket = std::os::unix::net::UnixListener::bind(tmp.0.join("socket.md")).unwrap();
            assert!(matches!(dir.get("socket"), Err(DocError::NotFound(_))));
            assert!(dir.list().unwrap().is_empty());
        }
    }

    #[test]
    fn size_limit() {
        let tmp = TempDir::new();
        tmp.write("max.md", vec![b'a'; MAX_DOC_BYTES as usize])
            .write("over.md", vec![b'a'; MAX_DOC_BYTES as usize + 1]);
        let dir = DocDir::open(&tmp.0).unwrap();
        assert_eq!(dir.get("max").unwrap().text.len() as u64, MAX_DOC_BYTES);
        assert!(matches!(dir.get("over"), Err(DocError::TooLarge(_))));
    }

    #[test]
    fn non_utf8_is_refused() {
        let tmp = TempDir::new();
        tmp.write("latin1.md", b"# caf\xe9\n");
        let dir = DocDir::open(&tmp.0).unwrap();
        assert!(matches!(dir.get("latin1"), Err(DocError::NotUtf8(_))));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_must_stay_inside_the_root() {
        use std::os::unix::fs::symlink;
        let outside = TempDir::new();
        outside.write("secret.md", "# secret\n");
        // A sibling whose path shares the root's prefix is still outside.
        let root = TempDir::new();
        let sibling = TempDir(PathBuf::from(format!("{}-evil", root.0.display())));
        fs::create_dir_all(&sibling.0).unwrap();
        sibling.write("x.md", "# evil\n");
        root.write("real.md", "# Real\n");
        fs::create_dir(root.0.join("sub")).unwrap();
        root.write("sub/deep.md", "# Deep\n");
        symlink(root.0.join("real.md"), root.0.join("alias.md")).unwrap();
        symlink("sub/deep.md", root.0.join("deep.md")).unwrap();
        symlink(outside.0.join("secret.md"), root.0.join("escape.md")).unwrap();
        symlink("../../../../../../../../etc/passwd", root.0.join("passwd.md")).unwrap();
        symlink(sibling.0.join("x.md"), root.0.join("sibling.md")).unwrap();
        symlink(&outside.0, root.0.join("outdir")).unwrap();
        symlink(root.0.join("nowhere.md"), root.0.join("dangling.md")).unwrap();
        let dir = DocDir::open(&root.0).unwrap();
        assert_eq!(dir.get("alias").unwrap().title, "Real");
        assert_eq!(dir.get("deep").unwrap().title, "Deep");
        for name in ["escape", "passwd", "sibling"] {
            assert!(matches!(dir.get(name), Err(DocError::OutsideRoot(_))), "{name}");
        }
        assert!(matches!(dir.get("dangling"), Err(DocError::NotFound(_))));
        assert!(matches!(dir.get("outdir/secret"), Err(DocError::InvalidName)));
        assert_eq!(names(&dir.list().unwrap()), ["alias", "deep", "real"]);
        // A root reached through a symlink works the same.
        let link = TempDir(PathBuf::from(format!("{}-link", root.0.display())));
        symlink(&root.0, &link.0).unwrap();
        let dir = DocDir::open(&link.0).unwrap();
        assert_eq!(names(&dir.list().unwrap()), ["alias", "deep", "real"]);
        assert!(matches!(dir.get("escape"), Err(DocError::OutsideRoot(_))));
    }

    #[test]
    fn open_needs_a_directory() {
        let tmp = TempDir::new();
        tmp.write("file.md", "# f\n");
        assert!(matches!(
            DocDir::open(&tmp.0.join("missing")),
            Err(DocError::RootUnavailable(_))
        ));
        assert!(matches!(
            DocDir::open(&tmp.0.join("file.md")),
            Err(DocError::RootUnavailable(_))
        ));
    }

    #[test]
    fn search_is_case_insensitive_with_snippets() {
        let tmp = TempDir::new();
        let long_line = format!("{}Rollback NOW{}", "é".repeat(300), "ü".repeat(300));
        tmp.write(
            "a-deploy.md",
            format!("# Deploy\n\n  - Check the ROLLBACK plan.  \n{long_line}\n"),
        )
        .write("b-rollback.md", "# Rollback procedure\nRevert the release.\n")
        .write("c-other.md", "# Other\nnothing here\n")
        .write("d-plain.md", "rollbacks mentioned in the body only\n");
        let dir = DocDir::open(&tmp.0).unwrap();
        let hits = dir.search("  rollBack ", 10).unwrap();
        let found: Vec<_> = hits
            .iter()
            .map(|h| (h.name.as_str(), h.line, h.snippet.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("b-rollback", Some(1), "# Rollback procedure"),
                ("a-deploy", Some(3), "- Check the ROLLBACK plan."),
                ("d-plain", Some(1), "rollbacks mentioned in the body only"),
            ]
        );
        assert_eq!(dir.search("rollback", 2).unwrap().len(), 2);
        assert!(dir.search("rollback", 0).unwrap().is_empty());
        // A long line is cut on a character boundary around the match.
        let hit = &dir.search("rollback now", 10).unwrap()[0];
        assert_eq!(hit.line, Some(4));
        assert!(hit.snippet.contains("Rollback NOW"), "{}", hit.snippet);
        assert!(hit.snippet.starts_with('…') && hit.snippet.ends_with('…'));
        assert_eq!(hit.snippet.chars().count(), SNIPPET_CHARS + 2);
        // A title that is only the name matches too.
        let hit = &dir.search("D-PLAIN", 10).unwrap()[0];
        assert_eq!(
            (hit.name.as_str(), hit.line, hit.snippet.as_str()),
            ("d-plain", None, "d-plain")
        );
        assert!(dir.search("absent", 10).unwrap().is_empty());
    }

    #[test]
    fn search_query_limits() {
        let tmp = TempDir::new();
        let dir = DocDir::open(&tmp.0).unwrap();
        assert!(matches!(dir.search("", 5), Err(DocError::EmptyQuery)));
        assert!(matches!(dir.search(" \t\n", 5), Err(DocError::EmptyQuery)));
        assert!(matches!(
            dir.search(&"x".repeat(MAX_QUERY_CHARS + 1), 5),
            Err(DocError::QueryTooLong)
        ));
        assert!(dir.search(&"é".repeat(MAX_QUERY_CHARS), 5).unwrap().is_empty());
    }

    #[test]
    fn errors_never_show_the_server_path() {
        let tmp = TempDir::new();
        tmp.write("big.md", vec![b'a'; MAX_DOC_BYTES as usize + 1])
            .write("latin1.md", b"\xff");
        let dir = DocDir::open(&tmp.0).unwrap();
        let mut errors = vec![
            DocDir::open(&tmp.0.join("missing")).unwrap_err(),
            dir.get("../x").unwrap_err(),
            dir.get("missing").unwrap_err(),
            dir.get("big").unwrap_err(),
            dir.get("latin1").unwrap_err(),
            dir.search("", 1).unwrap_err(),
        ];
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/etc/hostname", tmp.0.join("out.md")).unwrap();
            errors.push(dir.get("out").unwrap_err());
        }
        let root = dir.root.display().to_string();
        for error in errors {
            let message = error.to_string();
            assert!(
                !message.contains(&root) && !message.contains(&*std::env::temp_dir().to_string_lossy()),
                "{message}"
            );
        }
    }
}
