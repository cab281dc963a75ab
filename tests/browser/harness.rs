//! What the browser scenarios stand on: the real `assessd` binary in development mode on a
//! temporary SQLite database (killable and restartable on the same port), chromedriver
//! driving headless Chromium, and helpers that wait for a condition in the page (never a
//! fixed sleep) and save a screenshot of each step under `target/browser-screenshots/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, MutexGuard};

/// How long a step waits for the page before the scenario fails.
pub const WAIT: Duration = Duration::from_secs(30);
/// How often a waiting step looks again.
const POLL: Duration = Duration::from_millis(100);

/// Debian's paths; `ASSESSD_CHROMEDRIVER` and `ASSESSD_CHROMIUM` name others.
fn chromedriver() -> String {
    std::env::var("ASSESSD_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

fn chromium() -> String {
    std::env::var("ASSESSD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// One scenario at a time: each runs its own server, chromedriver and Chromium, and two
/// cores do not take more than that at once.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A scenario's world: its server, its chromedriver, and its place for screenshots.
pub struct Stage {
    pub name: &'static str,
    pub server: Server,
    driver: Child,
    driver_url: String,
    profiles: Vec<tempfile::TempDir>,
    _serial: MutexGuard<'static, ()>,
}

impl Stage {
    /// The stage for scenario `name`, or `None` (with a loud line) when Chromium or
    /// chromedriver is not installed, unless `ASSESSD_REQUIRE_BROWSER=1`, which makes
    /// that a failure.
    pub async fn new(name: &'static str) -> Option<Stage> {
        Self::with_secret(name, None).await
    }

    /// Like [`Stage::new`], with the server's `ASSESSD_JWT_SECRET` set to `secret`: tokens
    /// then come from elsewhere, and the server mints none.
    pub async fn with_secret(name: &'static str, secret: Option<&'static str>) -> Option<Stage> {
        let missing: Vec<String> = [chromedriver(), chromium()]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            if std::env::var("ASSESSD_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
                panic!(
                    "ASSESSD_REQUIRE_BROWSER=1 but {} is missing: apt-get install chromium chromium-driver",
                    missing.join(" and ")
                );
            }
            eprintln!(
                "\n*** SKIPPED: browser test {name} ({} missing). \
                 To run it: apt-get install chromium chromium-driver ***\n",
                missing.join(" and ")
            );
            return None;
        }
        let serial = SERIAL.lock().await;
        let server = Server::start(secret).await;
        let port = free_port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        until("chromedriver to be ready", || async {
            let status = http.get(format!("{driver_url}/status")).send().await.ok()?;
            let body: Value = status.json().await.ok()?;
            body["value"]["ready"].as_bool().filter(|ready| *ready)
        })
        .await;
        std::fs::create_dir_all(screenshot_dir()).expect("screenshot directory");
        Some(Stage {
            name,
            server,
            driver,
            driver_url,
            profiles: Vec::new(),
            _serial: serial,
        })
    }

    /// A new browser: headless Chromium with a fresh profile of its own (its own
    /// sessionStorage, like another person's machine), at `path` on the server.
    pub async fn browser(&mut self, path: &str) -> Page {
        let profile = tempfile::tempdir().expect("profile directory");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium(),
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-dev-shm-usage",
                    "--window-size=1000,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        self.profiles.push(profile);
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.driver_url)
            .await
            .expect("a Chromium session");
        let page = Page {
            client,
            scenario: self.name,
            base: format!("http://{}", self.server.addr),
        };
        page.goto(path).await;
        page
    }

    /// Ends the scenario: closes each browser, then stops chromedriver and the server.
    pub async fn finish(mut self, pages: Vec<Page>) {
        for page in pages {
            let _ = page.client.close().await;
        }
        let _ = self.driver.kill().await;
        self.server.kill().await;
    }
}

impl Drop for Stage {
    /// A scenario that failed never reached [`Stage::finish`]: ask chromedriver to quit its
    /// browsers (its `/shutdown`) before it is killed, so no Chromium outlives the test.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Some(addr) = self.driver_url.strip_prefix("http://") else {
            return;
        };
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            return;
        };
        let Ok(mut stream) =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        else {
            return; // already stopped by finish()
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request =
            format!("GET /shutdown HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_ok() {
            let _ = stream.read_to_end(&mut Vec::new());
        }
        // It answers first and quits its browsers after; it exits once they are gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if !matches!(self.driver.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `target/browser-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("browser-screenshots")
}

/// Polls `check` until it gives `Some`, or fails the scenario after [`WAIT`].
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The real `assessd` binary in development mode: no `ASSESSD_JWT_SECRET`, so it keeps its
/// generated secret beside the database and mints tokens for the pages.
pub struct Server {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    secret: Option<&'static str>,
    child: Option<Child>,
}

impl Server {
    async fn start(secret: Option<&'static str>) -> Server {
        let dir = tempfile::tempdir().expect("server directory");
        let (child, addr) = spawn_server(dir.path(), "127.0.0.1:0", secret).await;
        Server {
            addr,
            dir,
            secret,
            child: Some(child),
        }
    }

    /// The server's database, for a test that writes history past the API.
    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("assessd.db").display())
    }

    /// SIGKILL: no shutdown, no close frames; the browser sees the sockets drop.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("SIGKILL");
            let _ = child.wait().await;
        }
    }

    /// Starts the server again on the same address and database.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let (child, addr) =
            spawn_server(self.dir.path(), &self.addr.to_string(), self.secret).await;
        assert_eq!(addr, self.addr);
        self.child = Some(child);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A token minted by the server's development sign-in.
    pub async fn token(&self, name: &str, role: &str) -> String {
        let reply: Value = reqwest::Client::new()
            .post(self.url("/api/dev/token"))
            .json(&json!({"name": name, "role": role}))
            .send()
            .await
            .expect("dev token")
            .json()
            .await
            .expect("JSON");
        reply["token"].as_str().expect("a token").to_string()
    }

    /// `POST path` with `token` and a JSON `body`: (status, body).
    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET path` with `token`: (status, body).
    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

async fn spawn_server(dir: &Path, bind: &str, secret: Option<&str>) -> (Child, SocketAddr) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("server log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_assessd"));
    command
        .arg("serve")
        .env("ASSESSD_BIND", bind)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("assessd.db").display()),
        )
        .env("ASSESSD_DATA_DIR", dir)
        .env_remove("ASSESSD_JWT_SECRET")
        .env_remove("ASSESSD_JWT_PUBLIC_KEY")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    if let Some(secret) = secret {
        command.env("ASSESSD_JWT_SECRET", secret);
    }
    let mut child = command.spawn().expect("assessd starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(addr) = line.strip_prefix("assessd listening on http://") {
                return addr.parse::<SocketAddr>().expect("an address");
            }
        }
        panic!(
            "assessd exited before listening; its log: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
    })
    .await
    .expect("assessd listens in time");
    (child, addr)
}

/// One browser, on one of the server's pages.
pub struct Page {
    pub client: Client,
    scenario: &'static str,
    base: String,
}

impl Page {
    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .expect("navigate");
    }

    pub async fn reload(&self) {
        self.client.refresh().await.expect("reload");
    }

    /// Runs `script` (a function body; `arguments[0]` is `arg`) in the page.
    pub async fn js(&self, script: &str, arg: Value) -> Value {
        self.client
            .execute(script, vec![arg])
            .await
            .unwrap_or(Value::Null)
    }

    /// The text of the first element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            json!(css),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Whether an element matching `css` is there and not inside anything hidden.
    pub async fn visible(&self, css: &str) -> bool {
        self.js(
            "const e = document.querySelector(arguments[0]); \
             return !!e && !e.closest('[hidden]') && e.getClientRects().length > 0;",
            json!(css),
        )
        .await
        .as_bool()
        .unwrap_or(false)
    }

    /// `document.querySelector(css).getAttribute(name)`.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.js(
            "const e = document.querySelector(arguments[0][0]); \
             return e ? e.getAttribute(arguments[0][1]) : null;",
            json!([css, name]),
        )
        .await
        .as_str()
        .map(String::from)
    }

    /// Waits until an element matching `css` is visible.
    pub async fn wait_visible(&self, css: &str) {
        until(
            &format!("{css} to be visible in {}", self.scenario),
            || async { self.visible(css).await.then_some(()) },
        )
        .await;
    }

    /// Waits until the text of `css` contains `needle`, and returns that text.
    pub async fn wait_text(&self, css: &str, needle: &str) -> String {
        until(
            &format!("{css} to say {needle:?} in {}", self.scenario),
            || async {
                let text = self.text(css).await;
                text.contains(needle).then_some(text)
            },
        )
        .await
    }

    /// Clicks the (visible) element matching `css`, as a person would.
    pub async fn click(&self, css: &str) {
        self.wait_visible(css).await;
        self.client
            .find(Locator::Css(css))
            .await
            .expect("the element")
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types `text` into the (visible) field matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.wait_visible(css).await;
        self.client
            .find(Locator::Css(css))
            .await
            .expect("the field")
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Presses `key` in whatever has the focus, as a keyboard user would.
    pub async fn press(&self, key: Key) {
        self.client
            .active_element()
            .await
            .expect("a focused element")
            .send_keys(&key)
            .await
            .unwrap_or_else(|e| panic!("press {key:?}: {e}"));
    }

    /// The id of the element that has the focus.
    pub async fn focused(&self) -> String {
        self.js("return document.activeElement.id;", Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves `target/browser-screenshots/<scenario>-<step>.png`.
    pub async fn screenshot(&self, step: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = screenshot_dir().join(format!("{}-{step}.png", self.scenario));
        std::fs::write(&path, png).expect("write the screenshot");
    }

    /// The socket state the page shows in `body[data-socket]`.
    pub async fn socket_state(&self) -> String {
        self.attr("body", "data-socket").await.unwrap_or_default()
    }

    // --- the test-taker's page ---------------------------------------------------------

    /// Signs in on the page in front of it with the development name field.
    pub async fn sign_in(&self, name: &str) {
        self.wait_visible("#mode").await;
        let mode = self.text("#mode").await;
        assert!(mode.contains("Development mode"), "{mode}");
        self.type_into("#name", name).await;
        self.click("#sign-in-button").await;
        self.wait_text("#who", name).await;
    }

    /// Waits until the socket is connected.
    pub async fn wait_connected(&self) {
        until(
            &format!("the socket to connect in {}", self.scenario),
            || async { (self.socket_state().await == "connected").then_some(()) },
        )
        .await;
    }

    /// Starts (or resumes) the demo test from the list and waits for its question.
    pub async fn start_demo(&self) {
        self.click("button[data-test-id=\"demo\"]").await;
        self.wait_visible("#question-form").await;
    }

    /// The id of the question on screen.
    pub async fn question_id(&self) -> String {
        self.wait_visible("#question-form").await;
        self.attr("#question-form", "data-question-id")
            .await
            .unwrap_or_default()
    }

    /// Gives the right answer to the question on screen, without submitting it.
    pub async fn fill_right_answer(&self) -> String {
        let question = self.question_id().await;
        match question.as_str() {
            "q1" => self.click("#q-choices input[value=\"b\"]").await,
            "q2" => {
                self.click("#q-choices input[value=\"a\"]").await;
                self.click("#q-choices input[value=\"c\"]").await;
            }
            "q3" => self.click("#q-choices input[value=\"a\"]").await,
            "q4" => {
                self.type_into("#q-text", "Ownership and borrow rules, through lifetimes")
                    .await
            }
            other => panic!("the demo test has no question {other:?}"),
        }
        question
    }

    /// Answers the question on screen rightly and waits for its feedback.
    pub async fn answer_rightly(&self) -> String {
        let question = self.fill_right_answer().await;
        self.click("#submit").await;
        self.wait_visible("#feedback").await;
        self.wait_text("#fb-verdict", "Correct").await;
        question
    }

    /// Leaves the feedback for what comes next.
    pub async fn next(&self) {
        self.click("#next").await;
    }
}

/// The number of `AnswerSubmitted` events for `question` in `user`'s stream, through the
/// audit API.
pub async fn answers_recorded(server: &Server, user: &str, question: &str) -> usize {
    let auditor = server.token("checker", "auditor").await;
    let (status, body) = server
        .get(
            &format!("/api/audit/users/{user}/events?event_type=AnswerSubmitted&limit=1000"),
            &auditor,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["payload"]["question_id"] == question)
        .count()
}
