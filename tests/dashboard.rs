//! The dashboard in a real browser: headless Chromium, driven over WebDriver (`selenium` in the
//! test venv, Debian's `chromium` and `chromedriver`, all installed by `.ci/run`), opens the
//! page of `batchflow run --metrics` mid-run, and once the run has ended the numbers it shows
//! are those of `/api/run` and `/metrics`, read after it (the figures are final then, so
//! nothing depends on timing); its chart has points and its console no error. The page read
//! without JavaScript carries the same numbers, and `batchflow serve`'s batch list links each
//! batch to a run view of its counts, behind the server's key.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use batchflow::mock::MockConfig;
use batchflow::mock::faults::FaultRates;
use serde_json::{Value, json};

use crate::metrics::{NO_NVML, collect_stderr, logged_addr, sigterm};
use crate::serve::{Server, openai_lines};
use crate::support::{self, Mock, batchflow, chat_lines, run_python, wait_until, write_input};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Fails, rather than skips, on a machine without the browser.
fn require_browser() {
    for program in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(program).exists(),
            "{program} is missing: run .ci/run, which installs Debian's chromium and chromedriver (apt-get install chromium chromium-driver)"
        );
    }
    support::python();
}

/// Opens the page in headless Chromium, waits for a refresh and then for the run to end,
/// and prints what the page shows beside `/api/run`, `/metrics` and the page without
/// JavaScript, all read after the end.
const BROWSE: &str = r#"
import json, os, sys, time, urllib.request
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

given = json.load(sys.stdin)
base = given['url']
def get(path):
    with urllib.request.urlopen(base + path, timeout=30) as answer:
        return answer.read().decode()

# Opened once the run is under way, so the page starts with a history to draw.
deadline = time.time() + 60
while json.loads(get('/api/run'))['done'] < 2:
    assert time.time() < deadline, 'the run never started'
    time.sleep(0.1)

os.environ['SE_OFFLINE'] = 'true'
options = webdriver.ChromeOptions()
options.binary_location = given['chromium']
for flag in ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
             '--window-size=1200,1400', '--hide-scrollbars']:
    options.add_argument(flag)
options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
driver = webdriver.Chrome(options=options, service=Service(executable_path=given['chromedriver']))
try:
    driver.get(base + '/')
    text = lambda id: driver.find_element(By.ID, id).text
    refreshes = lambda: int(driver.find_element(By.TAG_NAME, 'body').get_attribute('data-refreshes'))
    first = {'state': text('state'), 'done': text('done')}
    WebDriverWait(driver, 30).until(lambda d: refreshes() >= 1)
    after_refresh = {'state': text('state'), 'done': text('done')}
    WebDriverWait(driver, 120, poll_frequency=0.2).until(lambda d: text('state') == 'finished')
    ids = ['done', 'total', 'succeeded', 'failed', 'invalid', 'retries', 'workers',
           'workers-mode', 'in-flight', 'eta']
    page = {id: text(id) for id in ids}
    page['errors_by_code'] = [
        [cell.text for cell in row.find_elements(By.TAG_NAME, 'td')]
        for row in driver.find_elements(By.CSS_SELECTOR, '#errors-by-code tr')]
    page['last_errors'] = len(driver.find_elements(By.CSS_SELECTOR, '#last-errors li'))
    page['backends'] = text('backends')
    page['points'] = len(driver.find_element(By.ID, 'rate-line').get_attribute('points').split())
    page['bars'] = len(driver.find_elements(By.CSS_SELECTOR, '#latency-histogram rect'))
    api = json.loads(get('/api/run'))
    metrics = get('/metrics')
    plain = get('/')
    # A phone's width: nothing runs off the side, and the figures are still shown.
    driver.set_window_size(390, 844)
    phone = {
        'overflow': driver.execute_script(
            'return document.documentElement.scrollWidth - window.innerWidth'),
        'done_visible': driver.find_element(By.ID, 'done').is_displayed(),
    }
    height = driver.execute_script('return document.documentElement.scrollHeight')
    driver.set_window_size(1200, max(800, height))
    assert driver.save_screenshot(given['screenshot'])
    log = [entry for entry in driver.get_log('browser') if entry['level'] == 'SEVERE']
finally:
    driver.quit()
print(json.dumps({'first': first, 'after_refresh': after_refresh, 'page': page, 'api': api,
                  'metrics': metrics, 'plain': plain, 'log': log, 'phone': phone}))
"#;

/// The value of the sample line `name` (labels included, as written) in a scrape.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in {metrics}"))
}

/// Where the screenshot goes: `docs/dashboard.png` when `BATCHFLOW_SCREENSHOT=docs` (to
/// refresh the committed one), else a temporary file, so a test run leaves the tree as it was.
fn screenshot_path(dir: &Path) -> PathBuf {
    match std::env::var("BATCHFLOW_SCREENSHOT").as_deref() {
        Ok("docs") => Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png"),
        _ => dir.join("dashboard.png"),
    }
}

#[test]
fn the_dashboard_in_a_browser_shows_the_figures_of_api_run_and_metrics() {
    require_browser();
    let mock = Mock::start(MockConfig {
        slots: 2,
        latency: Duration::from_millis(120),
        faults: FaultRates {
            server_error: 0.15,
            ..FaultRates::default()
        },
        seed: 11,
        ..MockConfig::default()
    });
    let dir = tempfile::tempdir().expect("dir");
    let mut input = chat_lines(90);
    input.push_str("not json\n");
    let input = write_input(dir.path(), &input);
    let mut child = batchflow()
        .arg(&input)
        .args(["--backend", &mock.url(), "--workers", "2"])
        .args(["--retries", "1", "--retry-base", "1ms"])
        .args(["--metrics", "127.0.0.1:0", "--metrics-linger", "10m"])
        .env(NO_NVML.0, NO_NVML.1)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = collect_stderr(&mut child);
    let addr = logged_addr(&stderr);
    let screenshot = screenshot_path(dir.path());
    let given = json!({
        "url": format!("http://{addr}"),
        "chromium": CHROMIUM,
        "chromedriver": CHROMEDRIVER,
        "screenshot": screenshot,
    });
    let output = run_python(BROWSE, given.to_string().as_bytes());
    sigterm(&child);
    wait_until("the linger ends at the signal", || {
        child.try_wait().expect("try_wait").is_some()
    });
    let seen: Value = serde_json::from_str(&output).expect("the script's JSON");
    let (page, api, metrics) = (&seen["page"], &seen["api"], seen["metrics"].as_str());
    let metrics = metrics.expect("the scrape");

    assert_eq!(seen["log"], json!([]), "no error in the browser's console");
    assert_eq!(
        seen["phone"],
        json!({"overflow": 0, "done_visible": true}),
        "at a phone's width nothing runs off the side"
    );
    assert_eq!(api["finished"], true);
    let number = |field: &str| api[field].as_u64().unwrap_or_else(|| panic!("{field}"));
    let shown = |id: &str| -> u64 {
        page[id]
            .as_str()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| panic!("#{id} shows a number: {page}"))
    };
    // The page once opened mid-run; whatever it showed then, it never showed more than the end.
    let first_done: u64 = seen["first"]["done"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("#done");
    assert!(first_done <= number("done"), "{seen}");
    assert_eq!(number("done"), 91);
    assert_eq!(number("total"), 91);
    for id in [
        "done",
        "total",
        "succeeded",
        "failed",
        "invalid",
        "retries",
        "workers",
    ] {
        assert_eq!(shown(id), number(id), "#{id} is /api/run's {id}");
    }
    assert_eq!(shown("in-flight"), number("in_flight"));
    assert_eq!(page["workers-mode"], "fixed");
    assert_eq!(page["eta"], "done");
    let requests = |outcome: &str| {
        sample(
            metrics,
            &format!("batchflow_requests_total{{outcome=\"{outcome}\"}}"),
        ) as u64
    };
    assert_eq!(
        requests("ok") + requests("failed") + requests("invalid"),
        shown("done"),
        "/metrics counts what the page shows"
    );
    assert_eq!(requests("failed"), shown("failed"));
    assert_eq!(
        sample(metrics, "batchflow_requests_expected") as u64,
        shown("total")
    );
    assert_eq!(
        sample(metrics, "batchflow_worker_limit") as u64,
        shown("workers")
    );
    let errors: Vec<Vec<String>> = api["errors_by_code"]
        .as_object()
        .expect("errors by code")
        .iter()
        .map(|(code, count)| vec![code.clone(), count.to_string()])
        .collect();
    assert!(
        errors.len() >= 2,
        "server errors and the invalid line: {errors:?}"
    );
    assert_eq!(page["errors_by_code"], json!(errors));
    assert!(page["last_errors"].as_u64() > Some(0));
    assert!(
        page["backends"]
            .as_str()
            .is_some_and(|text| text.contains(&mock.url())),
        "{page}"
    );
    assert!(
        page["points"].as_u64() > Some(1),
        "the rate chart has points: {page}"
    );
    assert_eq!(page["bars"], 18, "a bar per latency bucket");

    // Without JavaScript: the table the server filled in.
    let plain = seen["plain"].as_str().expect("the page");
    for (figure, label, value) in [
        ("done", "Done", number("done")),
        ("total", "Total", number("total")),
        ("failed", "Failed", number("failed")),
        ("retries", "Retries", number("retries")),
    ] {
        let row = format!("<tr data-figure=\"{figure}\"><th>{label}</th><td>{value}</td></tr>");
        assert!(plain.contains(&row), "{row} in the page's table");
    }

    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a PNG");
}

/// The batch list and a batch's run view, fetched as a browser without JavaScript would,
/// with and without the server's key.
const SERVE_PAGES: &str = r#"
import re, urllib.request, urllib.error
def get(path, key):
    request = urllib.request.Request(given['url'] + path)
    if key:
        request.add_header('Authorization', 'Bearer ' + key)
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
status, listing = get('/', given['key'])
links = re.findall(r'href="(/runs/[^"]+)"', listing)
run_status, run_page = get(links[0], given['key']) if links else (None, '')
api_path = re.search(r'data-api="([^"]+)"', run_page).group(1)
api_status, api = get(api_path, given['key'])
refused = [get(path, None)[0] for path in ['/', links[0], api_path]]
refused_body = get(links[0], None)[1]
print(json.dumps({'status': status, 'listing': listing, 'links': links, 'run_status': run_status,
                  'run_page': run_page, 'api_path': api_path, 'api_status': api_status,
                  'api': json.loads(api), 'refused': refused, 'refused_body': refused_body}))
"#;

const ONE_BATCH: &str = r#"
f = client.files.create(file=('requests.jsonl', args['content'].encode()), purpose='batch')
batch = client.batches.create(input_file_id=f.id, endpoint='/v1/chat/completions', completion_window='24h')
batch = wait(batch.id, lambda b: b.status in ('completed', 'failed'))
print(json.dumps(batch.model_dump()))
"#;

#[test]
fn serve_lists_its_batches_each_linking_to_a_run_view_behind_the_key() {
    support::python();
    let dir = tempfile::tempdir().expect("a temp dir");
    let mock = Mock::start(MockConfig::default());
    let key = "sk-dashboard-51c3";
    let mut server = Server::start_with(
        &dir.path().join("data"),
        &mock,
        &["--api-key-env", "SERVE_DASHBOARD_KEY"],
        &[("SERVE_DASHBOARD_KEY", key)],
    );
    server.key = key.into();
    let batch = server.python(ONE_BATCH, json!({"content": openai_lines(12)}));
    assert_eq!(batch["status"], "completed", "{}", server.log());
    let id = batch["id"].as_str().expect("an id");

    let seen = server.python(SERVE_PAGES, json!({}));
    assert_eq!(seen["status"], 200);
    assert_eq!(seen["links"], json!([format!("/runs/{id}")]));
    let listing = seen["listing"].as_str().expect("the list");
    assert!(
        listing.contains("<span data-figure=\"done\">12</span>"),
        "{listing}"
    );
    assert!(listing.contains(">completed<"), "{listing}");
    assert_eq!(seen["run_status"], 200);
    assert_eq!(seen["api_path"], format!("/api/runs/{id}"));
    let run_page = seen["run_page"].as_str().expect("the run view");
    assert!(
        run_page.contains("<tr data-figure=\"done\"><th>Done</th><td>12</td></tr>"),
        "the batch's final counts without JavaScript"
    );
    assert_eq!(seen["api_status"], 200);
    assert_eq!(seen["api"]["done"], 12);
    assert_eq!(seen["api"]["succeeded"], 12);
    assert_eq!(seen["api"]["total"], 12);
    assert_eq!(seen["api"]["finished"], true);
    assert_eq!(
        seen["refused"],
        json!([401, 401, 401]),
        "nothing without the key"
    );
    assert!(
        !seen["refused_body"]
            .as_str()
            .is_some_and(|body| body.contains(id))
    );
}
