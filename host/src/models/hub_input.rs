//! Checks on every value that becomes part of a path in the cache: commit hashes, revisions,
//! file names inside a repository, etags.
//!
//! Why: these come from the hub (or any `HF_ENDPOINT` mirror: `X-Repo-Commit`, the
//! repository listing's `sha` and `siblings[].rfilename`), from `refs/` files on disk, or from
//! the user's spec, and each one is joined onto a cache folder. A hub answering
//! `X-Repo-Commit: ../../../../x` made a pull delete and replace a file outside the cache; a
//! revision `org/repo@../../x` wrote a ref file outside it. The rules are huggingface_hub's:
//! a commit is exactly 40 lowercase hex digits (`REGEX_COMMIT_HASH`), a repository file name
//! is a relative `/`-separated path without `..` (`_validate_relative_filename`), and a
//! pointer path must stay inside `snapshots/` (`_get_pointer_path`).

/// `Err(reason)` unless `commit` is a full commit hash: exactly 40 lowercase hex digits.
pub fn check_commit(commit: &str) -> Result<(), String> {
    let ok = commit.len() == 40
        && commit
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err("a commit hash is exactly 40 lowercase hex digits".into())
    }
}

/// `Err(reason)` unless `revision` (a branch, a tag such as `v1.0` or `refs/pr/1`, or a commit)
/// is safe as a path below `refs/` and `snapshots/`.
pub fn check_revision(revision: &str) -> Result<(), String> {
    check_relative(revision, "a revision")
}

/// `Err(reason)` unless `file` (a path inside a repository) is a relative `/`-separated path
/// that stays inside the snapshot folder.
pub fn check_repo_file(file: &str) -> Result<(), String> {
    check_relative(file, "a file name in a repository")
}

/// `Err(reason)` unless `etag` can name a blob: letters, digits and `-` only.
pub fn check_etag(etag: &str) -> Result<(), String> {
    let ok = !etag.is_empty()
        && etag.len() <= 128
        && etag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err("an etag is 1 to 128 letters, digits or `-`".into())
    }
}

/// The longest revision or file name accepted (the hub's own limits are far below this).
const MAX_LEN: usize = 1024;

fn check_relative(value: &str, what: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{what} {why}"));
    if value.is_empty() {
        return fail("cannot be empty");
    }
    if value.len() > MAX_LEN {
        return fail(&format!("cannot be longer than {MAX_LEN} bytes"));
    }
    if value.chars().any(char::is_control) {
        return fail("cannot contain control characters (NUL, newline, ...)");
    }
    if value.contains('\\') {
        return fail("cannot contain `\\`");
    }
    if value.starts_with('/') || has_drive_prefix(value) {
        return fail("must be a relative path");
    }
    for part in value.split('/') {
        match part {
            "" => return fail("cannot have an empty part (`//` or a trailing `/`)"),
            "." | ".." => return fail("cannot have a `.` or `..` part"),
            _ => {}
        }
    }
    Ok(())
}

/// `C:...`: a Windows drive path, absolute or drive-relative.
fn has_drive_prefix(value: &str) -> bool {
    let b = value.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_40_lowercase_hex() {
        assert!(check_commit("0123456789abcdef0123456789abcdef01234567").is_ok());
        for bad in [
            "",
            "../../../../x",
            "0123456789ABCDEF0123456789abcdef01234567",
            "0123456789abcdef0123456789abcdef0123456",
            "0123456789abcdef0123456789abcdef012345678",
            "0123456789abcdef0123456789abcdef0123456g",
            "main",
        ] {
            assert!(check_commit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn revisions_and_files_stay_relative() {
        for good in [
            "main",
            "v1.0",
            "refs/pr/1",
            "a/b.gguf",
            "model.Q4_K_M.gguf",
            ".gitattributes",
        ] {
            assert!(check_revision(good).is_ok(), "{good:?}");
            assert!(check_repo_file(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "..",
            "../x",
            "a/../../x",
            "a/..",
            "/etc/passwd",
            "a\\..\\b",
            "a//b",
            "a/",
            "./a",
            "a\0b",
            "a\nb",
            "C:x",
            "c:\\x",
        ] {
            assert!(check_revision(bad).is_err(), "{bad:?}");
            assert!(check_repo_file(bad).is_err(), "{bad:?}");
        }
        assert!(check_repo_file(&"a".repeat(MAX_LEN + 1)).is_err());
    }

    #[test]
    fn etags_name_a_blob() {
        assert!(check_etag("3b2f-abc").is_ok());
        for bad in ["", "..", "a/b", "a.b", &"a".repeat(129)] {
            assert!(check_etag(bad).is_err(), "{bad:?}");
        }
    }
}
