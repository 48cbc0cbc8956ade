//! A held-back stage of docs/integration.md as a user would copy it: its script exactly as the
//! docs print it, and the downward-API annotations file the kubelet keeps up to date.

use std::path::PathBuf;

pub struct HeldBackStage {
    dir: tempfile::TempDir,
    /// The script, written out.
    pub script: PathBuf,
    /// What `LEVEE_ANNOTATIONS` names.
    pub annotations: PathBuf,
}

impl HeldBackStage {
    /// The first Python block under `heading` in docs/integration.md.
    pub fn from_docs(heading: &str) -> Self {
        let docs = std::fs::read_to_string(super::repo_root().join("docs/integration.md")).unwrap();
        let section = &docs[docs
            .find(heading)
            .unwrap_or_else(|| panic!("no {heading:?} in the docs"))..];
        let start = section.find("```python\n").expect("a python block") + "```python\n".len();
        let script = &section[start..start + section[start..].find("```").expect("the block's end")];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stage.py");
        std::fs::write(&path, script).unwrap();
        Self {
            annotations: dir.path().join("annotations"),
            script: path,
            dir,
        }
    }

    /// Sets `levee.dev/accepting` as the kubelet does: a new file swapped in.
    pub fn accepting(&self, accepting: bool) {
        let next = self.dir.path().join("annotations.next");
        std::fs::write(
            &next,
            format!("levee.dev/accepting=\"{accepting}\"\nlevee.dev/policy=\"p\""),
        )
        .unwrap();
        std::fs::rename(&next, &self.annotations).unwrap();
    }

    /// The script under the test venv's Python with `args`, its stdout captured.
    pub fn spawn(&self, args: &[String]) -> std::process::Child {
        let python = super::repo_root().join(".cache/venv/bin/python");
        assert!(python.is_file(), "the test venv is missing: run `make deps`");
        std::process::Command::new(python)
            .arg(&self.script)
            .args(args)
            .env("LEVEE_ANNOTATIONS", &self.annotations)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}
