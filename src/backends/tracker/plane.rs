//! A client for Plane's REST API v1, the remote tracker: read a work item,
//! move it between board states, and comment on it exactly once.
//!
//! Plane identifies states by per-project UUIDs, so orch maps the board's
//! state *names* to logical keys (`confirm_deploy`, `approved`, …) once per
//! project through `GET …/states/` and caches the result ([`States`]). The
//! mapping fails closed (docs/integrations.md): there are no hard-coded default
//! UUIDs, an API error is returned to the caller, and a state missing from a
//! board is simply absent, so a board without "Confirm Deploy" can never
//! confirm a deploy.
//!
//! Plane does not deduplicate comments, so [`PlaneClient::comment`] looks for
//! one with the same `external_id` (and `external_source = "orch"`) before it
//! posts: a retried outbox row never comments twice.
//!
//! All requests carry `X-API-Key: <token>` and go to
//! `<plane_url>/api/v1/workspaces/<slug>/…` (pipeline-anchors §4.1).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::backends::http::{HttpClient, encode_segment, trim_base};
use crate::backends::tracker::key_for_name;
use crate::config::Config;
use crate::names;

/// The `external_source` orch writes on its comments.
pub const EXTERNAL_SOURCE: &str = "orch";

/// The name of the secret holding the API token (`ORCH_PLANE_API_TOKEN`).
pub const TOKEN_SECRET: &str = "plane_api_token";

/// Page size asked for in list requests (Plane's maximum is 100).
const PER_PAGE: u32 = 100;

/// A guard against a server whose cursor never ends.
const MAX_PAGES: usize = 1000;

/// The board of one project: logical state key → state UUID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct States {
    by_key: BTreeMap<String, String>,
}

impl States {
    /// Map a board's `(name, id)` pairs to logical keys. Unknown names, empty
    /// ids and later duplicates of a name are ignored.
    pub fn from_board<'a>(board: impl IntoIterator<Item = (&'a str, &'a str)>) -> States {
        let mut by_key = BTreeMap::new();
        for (name, id) in board {
            let Some(key) = key_for_name(name) else {
                continue;
            };
            if id.is_empty() {
                continue;
            }
            if by_key.contains_key(key) {
                log::warn!("Plane board has more than one state named {name:?}; using the first");
                continue;
            }
            by_key.insert(key.to_owned(), id.to_owned());
        }
        States { by_key }
    }

    /// The state UUID of a logical key; `None` when the board lacks it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    /// Whether `state_id` is the state of `key`. False when the board lacks
    /// the key or `state_id` is empty (fail closed).
    pub fn is(&self, key: &str, state_id: &str) -> bool {
        !state_id.is_empty() && self.get(key) == Some(state_id)
    }

    /// The logical key of a state UUID, if it is one orch knows.
    pub fn key_of(&self, state_id: &str) -> Option<&str> {
        self.by_key
            .iter()
            .find(|(_, id)| id.as_str() == state_id)
            .map(|(k, _)| k.as_str())
    }

    /// Every resolved key and its UUID, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_key.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many keys resolved.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no key resolved.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// A Plane work item, the fields orch uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The work item's UUID.
    pub id: String,
    /// Its title.
    pub name: String,
    /// The UUID of its state (empty if Plane sent none).
    pub state_id: String,
    /// Its number within the project (`ORCH-<sequence_id>`).
    pub sequence_id: Option<u64>,
    /// The UUID of its project.
    pub project_id: String,
    /// Its description as plain text: `description_stripped` where Plane
    /// sends it (webhooks), else the text of `description_html` (the REST
    /// API's `IssueSerializer` excludes `description_stripped`).
    pub description: String,
}

/// A Plane REST v1 client for one workspace.
#[derive(Debug)]
pub struct PlaneClient {
    http: HttpClient,
    base: String,
    cache: Mutex<HashMap<String, States>>,
    /// Where boards are shared between processes (`with_board_cache`).
    board_cache: Option<std::path::PathBuf>,
}

/// How long a board read by one process serves the next ones: every routed
/// delivery would otherwise cost a `GET …/states/` first. A state id the
/// cached board does not know is looked up again at once, so a state added
/// to the board is seen by the next delivery that uses it.
pub const BOARD_MAX_AGE_S: u64 = 300;

impl PlaneClient {
    /// A client for `<plane_url>/api/v1/workspaces/<workspace>/`.
    pub fn new(
        plane_url: &str,
        workspace: &str,
        api_token: &str,
        timeout: Duration,
    ) -> anyhow::Result<PlaneClient> {
        let url = trim_base(plane_url);
        if url.is_empty() {
            bail!("the Plane URL (plane_url) is not set");
        }
        names::validate_repo_name(workspace).context("plane_workspace")?;
        if api_token.trim().is_empty() {
            bail!("the Plane API token is empty");
        }
        let http = HttpClient::new(timeout).with_secret_header("X-API-Key", api_token.trim());
        Ok(PlaneClient {
            http,
            base: format!("{url}/api/v1/workspaces/{}", encode_segment(workspace)),
            cache: Mutex::new(HashMap::new()),
            board_cache: None,
        })
    }

    /// Share boards with other orch processes through files in `dir`
    /// (`plane-board-<project>.json`), for up to [`BOARD_MAX_AGE_S`].
    #[must_use]
    pub fn with_board_cache(mut self, dir: std::path::PathBuf) -> PlaneClient {
        self.board_cache = Some(dir);
        self
    }

    fn board_file(&self, project_id: &str) -> Option<std::path::PathBuf> {
        let project = id_segment("project id", project_id).ok()?;
        Some(
            self.board_cache
                .as_ref()?
                .join(format!("plane-board-{project}.json")),
        )
    }

    /// A board another process saved, if it is young enough.
    fn saved_board(&self, project_id: &str) -> Option<States> {
        let path = self.board_file(project_id)?;
        let age = std::fs::metadata(&path)
            .ok()?
            .modified()
            .ok()?
            .elapsed()
            .ok()?;
        if age.as_secs() >= BOARD_MAX_AGE_S {
            return None;
        }
        let file = crate::runner::untrusted::open_regular(&path).ok()??;
        let pairs: Vec<(String, String)> =
            serde_json::from_reader(std::io::Read::take(file, 64 * 1024)).ok()?;
        Some(States::from_board(
            pairs.iter().map(|(n, i)| (n.as_str(), i.as_str())),
        ))
    }

    /// Save a board for other processes; best-effort, atomic (tmp + rename).
    fn save_board(&self, project_id: &str, board: &[(&str, &str)]) {
        let Some(path) = self.board_file(project_id) else {
            return;
        };
        let saved = (|| -> anyhow::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, serde_json::to_vec(board)?)?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        })();
        if let Err(e) = saved {
            log::debug!("saving the Plane board of {project_id}: {e:#}");
        }
    }

    /// The logical key of `state_id` on `project_id`'s board. A cached board
    /// that does not know the id is read again from Plane once.
    pub fn key_of_state(&self, project_id: &str, state_id: &str) -> anyhow::Result<Option<String>> {
        let states = self.project_states(project_id)?;
        if let Some(k) = states.key_of(state_id) {
            return Ok(Some(k.to_owned()));
        }
        self.reload(Some(project_id));
        let fresh = self.fetch_board(project_id)?;
        Ok(fresh.key_of(state_id).map(str::to_owned))
    }

    /// A client from the config (`plane_url`, `plane_workspace`) and the
    /// secret `plane_api_token`.
    pub fn from_config(config: &Config, timeout: Duration) -> anyhow::Result<PlaneClient> {
        let Some(token) = crate::secrets::secret(TOKEN_SECRET) else {
            bail!(
                "no Plane API token: set {} or the systemd credential {}",
                crate::secrets::env_name(TOKEN_SECRET),
                crate::secrets::credential_name(TOKEN_SECRET)
            );
        };
        PlaneClient::new(&config.plane_url, &config.plane_workspace, &token, timeout)
    }

    fn project_url(&self, project_id: &str) -> anyhow::Result<String> {
        Ok(format!(
            "{}/projects/{}",
            self.base,
            id_segment("project id", project_id)?
        ))
    }

    fn item_url(&self, project_id: &str, issue_id: &str) -> anyhow::Result<String> {
        Ok(format!(
            "{}/work-items/{}",
            self.project_url(project_id)?,
            id_segment("work item id", issue_id)?
        ))
    }

    /// The board of `project_id`, from the cache or `GET …/states/` (all
    /// pages). An API error is returned, never replaced by defaults.
    pub fn project_states(&self, project_id: &str) -> anyhow::Result<States> {
        if let Some(states) = self.lock_cache().get(project_id) {
            return Ok(states.clone());
        }
        if let Some(states) = self.saved_board(project_id) {
            self.lock_cache()
                .insert(project_id.to_owned(), states.clone());
            return Ok(states);
        }
        self.fetch_board(project_id)
    }

    /// `GET …/states/` (all pages), remembered in this process and saved
    /// for the others.
    fn fetch_board(&self, project_id: &str) -> anyhow::Result<States> {
        let url = format!("{}/states/", self.project_url(project_id)?);
        let rows = self.list_all(&url)?;
        let board: Vec<(&str, &str)> = rows
            .iter()
            .filter_map(|r| Some((r.get("name")?.as_str()?, r.get("id")?.as_str()?)))
            .collect();
        self.save_board(project_id, &board);
        let states = States::from_board(board);
        self.lock_cache()
            .insert(project_id.to_owned(), states.clone());
        Ok(states)
    }

    /// Forget the cached board of one project, or of all (`None`), so the
    /// next [`project_states`](PlaneClient::project_states) asks Plane again.
    pub fn reload(&self, project_id: Option<&str>) {
        let mut cache = self.lock_cache();
        match project_id {
            Some(p) => {
                cache.remove(p);
            }
            None => cache.clear(),
        }
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, States>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `GET …/projects/{project}/work-items/{id}/`. The work item's `state`
    /// may be a UUID or an object `{id, name, …}`; both are accepted.
    pub fn get_issue(&self, project_id: &str, issue_id: &str) -> anyhow::Result<Issue> {
        let url = format!("{}/", self.item_url(project_id, issue_id)?);
        let reply = self.http.get(&url)?.success()?;
        issue_of(&reply.json, project_id)
            .with_context(|| format!("{}: the reply has no work item id", reply.request()))
    }

    /// Every work item of a project (all pages): what `orch reconcile` polls
    /// for issues whose webhook was lost.
    pub fn list_issues(&self, project_id: &str) -> anyhow::Result<Vec<Issue>> {
        let url = format!("{}/work-items/", self.project_url(project_id)?);
        let rows = self.list_all(&url)?;
        Ok(rows
            .iter()
            .filter_map(|v| issue_of(v, project_id))
            .collect())
    }

    /// Move a work item to the state `state_id` (a UUID from [`States`]):
    /// `PATCH …/work-items/{id}/` with `{"state": state_id}`.
    pub fn set_state(
        &self,
        project_id: &str,
        issue_id: &str,
        state_id: &str,
    ) -> anyhow::Result<()> {
        if state_id.is_empty() {
            bail!("refusing to set an empty state on work item {issue_id}");
        }
        let url = format!("{}/", self.item_url(project_id, issue_id)?);
        self.http
            .patch_json(&url, &json!({ "state": state_id }))?
            .success()?;
        Ok(())
    }

    /// Comment on a work item once per `external_id`: when a comment with the
    /// same `external_id` and `external_source = "orch"` exists, nothing is
    /// posted. `html` must already be HTML (escape text with [`crate::html::escape`]).
    /// Returns whether a comment was posted. An empty `external_id` cannot be
    /// deduplicated and is refused.
    pub fn comment(
        &self,
        project_id: &str,
        issue_id: &str,
        html: &str,
        external_id: &str,
    ) -> anyhow::Result<bool> {
        if external_id.is_empty() {
            bail!("a Plane comment needs a non-empty external_id for idempotency");
        }
        let url = format!("{}/comments/", self.item_url(project_id, issue_id)?);
        let existing = self.list_all(&url)?;
        let already = existing.iter().any(|c| {
            c.get("external_id").and_then(Value::as_str) == Some(external_id)
                && c.get("external_source").and_then(Value::as_str) == Some(EXTERNAL_SOURCE)
        });
        if already {
            log::debug!("Plane comment {external_id} already on work item {issue_id}");
            return Ok(false);
        }
        let body = json!({
            "comment_html": html,
            "external_id": external_id,
            "external_source": EXTERNAL_SOURCE,
            "access": "INTERNAL",
        });
        self.http.post_json(&url, &body)?.success()?;
        Ok(true)
    }

    /// Every row of a cursor-paginated list (`results`, `next_cursor`,
    /// `next_page_results`); a bare JSON array is accepted as one page.
    fn list_all(&self, url: &str) -> anyhow::Result<Vec<Value>> {
        let mut rows = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page_url = match &cursor {
                None => format!("{url}?per_page={PER_PAGE}"),
                Some(c) => format!("{url}?per_page={PER_PAGE}&cursor={}", encode_segment(c)),
            };
            let mut reply = self.http.get(&page_url)?.success()?;
            let request = reply.request().to_owned();
            let page = match reply.json.take() {
                Value::Array(items) => {
                    rows.extend(items);
                    return Ok(rows);
                }
                Value::Object(map) => map,
                _ => bail!("{request}: expected a JSON list"),
            };
            match page.get("results") {
                Some(Value::Array(items)) => rows.extend(items.iter().cloned()),
                _ => bail!("{request}: the reply has no results list"),
            }
            let more = page
                .get("next_page_results")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let next = page
                .get("next_cursor")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(str::to_owned);
            match next {
                Some(next) if more && cursor.as_deref() != Some(next.as_str()) => {
                    cursor = Some(next);
                }
                _ => return Ok(rows),
            }
        }
        bail!("{url}: more than {MAX_PAGES} pages");
    }
}

/// A Plane id as one URL path segment; anything but a UUID-like id is
/// refused before a request is made, so no id can add a path segment or a
/// dot segment (`..`, which servers and proxies resolve).
fn id_segment(what: &str, id: &str) -> anyhow::Result<String> {
    names::validate_plane_id(id).with_context(|| format!("Plane {what}"))?;
    Ok(encode_segment(id))
}

/// An id given either as a string or as an object with an `id` field.
fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        _ => None,
    }
}

/// The fields orch uses of a work item as Plane serializes it, `None`
/// without an id. `project` falls back to the project asked about.
fn issue_of(v: &Value, project_id: &str) -> Option<Issue> {
    let text = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default();
    let description = match text("description_stripped") {
        "" => html_text(text("description_html")),
        plain => plain.to_owned(),
    };
    Some(Issue {
        id: v.get("id")?.as_str()?.to_owned(),
        name: text("name").to_owned(),
        state_id: id_of(v.get("state")).unwrap_or_default(),
        sequence_id: v.get("sequence_id").and_then(Value::as_u64),
        project_id: id_of(v.get("project"))
            .or_else(|| id_of(v.get("project_id")))
            .unwrap_or_else(|| project_id.to_owned()),
        description,
    })
}

/// The text of Plane's rich-text HTML: tags dropped, block ends as line
/// breaks, the entities its editor writes decoded. Not an HTML parser: the
/// result only ever becomes part of an agent's brief, as plain text.
fn html_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        let Some(gt) = rest[lt..].find('>') else {
            rest = "";
            break;
        };
        let tag = rest[lt + 1..lt + gt]
            .trim_start_matches('/')
            .to_ascii_lowercase();
        let name = tag
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("");
        if matches!(
            name,
            "p" | "br" | "li" | "div" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "pre" | "tr"
        ) && !out.ends_with('\n')
            && !out.is_empty()
        {
            out.push('\n');
        }
        rest = &rest[lt + gt + 1..];
    }
    out.push_str(rest);
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    decoded.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_names_map_exactly() {
        let s = States::from_board([
            ("Confirm Deploy", "c"),
            ("confirm deploy", "x"),
            ("Backlog", "b"),
            ("Done", ""),
            ("Approved", "a"),
            ("Approved", "a2"),
        ]);
        assert_eq!(s.get("confirm_deploy"), Some("c"));
        assert_eq!(s.get("approved"), Some("a"));
        assert_eq!(s.get("done"), None);
        assert_eq!(s.len(), 2);
        assert_eq!(s.key_of("c"), Some("confirm_deploy"));
        assert!(s.is("approved", "a"));
        assert!(!s.is("done", ""));
    }

    #[test]
    fn ids_of_both_shapes() {
        assert_eq!(id_of(Some(&json!("u1"))), Some("u1".into()));
        assert_eq!(
            id_of(Some(&json!({"id": "u2", "name": "Done"}))),
            Some("u2".into())
        );
        assert_eq!(id_of(Some(&json!(null))), None);
        assert_eq!(id_of(None), None);
    }

    /// The REST API's `IssueSerializer` (makeplane/plane,
    /// apps/api/plane/api/serializers/issue.py) excludes
    /// `description_stripped`; the text comes from `description_html`.
    #[test]
    fn the_description_is_read_from_html_when_plane_sends_no_plain_text() {
        let v = json!({
            "id": "i", "name": "n", "state": "s", "project": "p",
            "description_html": "<h2>Goal</h2><p>Add a <code>/health</code> endpoint &amp; a test.</p><ul><li><p>200 &lt;ok&gt;</p></li></ul>"
        });
        let issue = issue_of(&v, "fallback").expect("issue");
        assert_eq!(
            issue.description,
            "Goal\nAdd a /health endpoint & a test.\n200 <ok>"
        );
        assert_eq!(issue.project_id, "p");
        let plain =
            json!({"id": "i", "description_stripped": "plain", "description_html": "<p>x</p>"});
        assert_eq!(issue_of(&plain, "f").expect("issue").description, "plain");
        assert_eq!(issue_of(&plain, "f").expect("issue").project_id, "f");
        assert!(issue_of(&json!({"name": "no id"}), "f").is_none());
        assert_eq!(html_text("<p>unclosed <b"), "unclosed");
    }
}
