//! A real browser for the status page's tests: Debian's headless Chromium loads the page, runs
//! its scripts and dumps the DOM (or takes a screenshot).

use std::path::Path;
use std::process::Command;

/// Debian's Chromium, or another on the PATH.
pub fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_owned)
}

/// Loads `url` in headless Chromium and returns the DOM once the page's scripts have run
/// (`--virtual-time-budget` lets its fetch and timers finish), or takes a screenshot.
pub fn headless(browser: &str, profile: &Path, url: &str, screenshot: Option<&Path>) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["60", browser, "--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--hide-scrollbars", "--window-size=1400,1600"])
        .arg("--virtual-time-budget=3000");
    match screenshot {
        Some(file) => cmd.arg(format!("--screenshot={}", file.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `data-field="field"` in a dumped DOM.
pub fn field(dom: &str, field: &str) -> String {
    let marker = format!("data-field=\"{field}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the page:\n{dom}"));
    let rest = &dom[at..];
    let text = &rest[rest.find('>').unwrap() + 1..];
    text[..text.find('<').unwrap()].to_owned()
}
