//! The pipeline config loader against arbitrary and mangled files: it never panics, and every
//! broken file gives an error or a list of problems. Plus the bad pipeline files a user writes.

use std::path::Path;

use batchflow::config;
use proptest::prelude::*;

const SCREEN: &str = include_str!("../pipelines/screen.toml");

fn load_and_resolve(dir: &Path, text: &str) -> Result<(), String> {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).map_err(|error| error.to_string())?;
    let file =
        config::load(&path, &[], |_| Some("value".into())).map_err(|error| error.to_string())?;
    config::resolve(&file, dir)
        .map(drop)
        .map_err(|problems| problems.join("; "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let dir = tempfile::tempdir().expect("dir");
        let _ = load_and_resolve(dir.path(), &text);
    }

    #[test]
    fn mangled_examples_never_panic(cut in 0..SCREEN.len(), insert in "[\\[\\]{}=\"'#.,a-z0-9 \\n]{0,12}") {
        let dir = tempfile::tempdir().expect("dir");
        let mut text = SCREEN.to_owned();
        let at = (0..=cut).rev().find(|index| text.is_char_boundary(*index)).unwrap_or(0);
        text.insert_str(at, &insert);
        let _ = load_and_resolve(dir.path(), &text);
    }

    #[test]
    fn set_overrides_never_panic(key in "[a-z_.]{0,24}", value in "\\PC{0,24}") {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, SCREEN).expect("write");
        let _ = config::load(&path, &[format!("{key}={value}")], |_| None);
    }
}

#[test]
fn bad_pipeline_files_name_their_problem() {
    let dir = tempfile::tempdir().expect("dir");
    let cases = [
        (SCREEN.replace("[backend]", "[backend"), "line"),
        (
            SCREEN.replace("workers = 8", "workers = \"eight\""),
            "backend.workers",
        ),
        (
            SCREEN.replace(
                "type = \"integer\", description",
                "type = \"object\", description",
            ),
            "output field \"score\"",
        ),
        (
            SCREEN.replace("checkpoint_rows = 500", "checkpoint_rows = -5"),
            "checkpoint_rows",
        ),
        (
            SCREEN.replace("endpoint = \"/api/chat\"", "endpoint = \"/api/pull\""),
            "request.endpoint",
        ),
    ];
    for (text, expected) in cases {
        let error = load_and_resolve(dir.path(), &text).expect_err(expected);
        assert!(error.contains(expected), "{expected}: {error}");
    }
}
