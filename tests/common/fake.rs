//! A loopback fake of the Plane REST API subset orch uses (states, work items,
//! comments) and of Telegram's `sendMessage`, with real payload shapes, so the
//! real clients in the real binary can be tested end to end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};

/// A Plane work item as the fake stores it.
#[derive(Debug, Clone)]
pub struct Item {
    /// UUID.
    pub id: String,
    /// Title.
    pub name: String,
    /// State UUID.
    pub state: String,
    /// Number in the project.
    pub sequence_id: u64,
}

/// Everything the fake knows and saw.
#[derive(Debug, Default)]
pub struct World {
    /// Board states (id, name).
    pub states: Vec<(String, String)>,
    /// Work items by id.
    pub items: BTreeMap<String, Item>,
    /// Comments per work item (the JSON bodies posted).
    pub comments: BTreeMap<String, Vec<Value>>,
    /// Telegram messages sent.
    pub telegram: Vec<Value>,
    /// Scripted statuses for the next requests whose path contains the key.
    pub fail_next: Vec<(String, u16)>,
    /// The `retry_after` those scripted failures carry (0 means 1).
    pub retry_after: u64,
    /// Every request: "METHOD path".
    pub requests: Vec<String>,
    /// Edits so far (each webhook carries a fresh `updated_at`, as Plane's do).
    pub edits: u64,
    /// How long every answer waits (a slow Plane); zero by default.
    pub delay: std::time::Duration,
}

/// The running fake.
pub struct Fake {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    world: Arc<Mutex<World>>,
}

/// The project every test uses.
pub const PROJECT: &str = "11111111-1111-4111-8111-111111111111";

impl Fake {
    /// A fake with the standard board, serving on a free loopback port.
    pub fn start() -> Fake {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind fake");
        let url = format!("http://{}", server.server_addr().to_ip().expect("ip"));
        let world = Arc::new(Mutex::new(World::default()));
        {
            let mut w = world.lock().expect("lock");
            for (i, name) in [
                "Backlog",
                "To Analyse",
                "In Progress",
                "In Review",
                "Approved",
                "Rejected",
                "Needs Input",
                "Blocked",
                "Confirm Deploy",
                "STOP",
                "Done",
            ]
            .iter()
            .enumerate()
            {
                w.states.push((format!("state-{i:02}"), (*name).to_owned()));
            }
        }
        let w = Arc::clone(&world);
        std::thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let method = req.method().as_str().to_owned();
                let path = req.url().split('?').next().unwrap_or("").to_owned();
                let (status, reply) = handle(&w, &method, &path, &body);
                let delay = w.lock().unwrap_or_else(PoisonError::into_inner).delay;
                std::thread::sleep(delay);
                let response = tiny_http::Response::from_string(reply.to_string())
                    .with_status_code(status)
                    .with_header(
                        "Content-Type: application/json"
                            .parse::<tiny_http::Header>()
                            .expect("header"),
                    );
                let _ = req.respond(response);
            }
        });
        Fake { url, world }
    }

    /// The fake's state.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Make every later answer wait `delay` (a slow Plane).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.world().delay = delay;
    }

    /// The id of the board state called `name`.
    pub fn state_id(&self, name: &str) -> String {
        self.world()
            .states
            .iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| id.clone())
            .expect("state on the board")
    }

    /// Add a work item in state `state_name`; returns its id.
    pub fn add_item(&self, name: &str, seq: u64, state_name: &str) -> String {
        let id = format!("item-{seq:04}-0000-4000-8000-000000000000");
        let state = self.state_id(state_name);
        self.world().items.insert(
            id.clone(),
            Item {
                id: id.clone(),
                name: name.to_owned(),
                state,
                sequence_id: seq,
            },
        );
        id
    }

    /// Move a work item to `state_name` (as a person would on the board).
    pub fn set_state(&self, id: &str, state_name: &str) {
        let state = self.state_id(state_name);
        if let Some(item) = self.world().items.get_mut(id) {
            item.state = state;
        }
    }

    /// The name of a work item's current state.
    pub fn state_of(&self, id: &str) -> String {
        let w = self.world();
        let state = w.items.get(id).map(|i| i.state.clone()).unwrap_or_default();
        w.states
            .iter()
            .find(|(sid, _)| *sid == state)
            .map(|(_, n)| n.clone())
            .unwrap_or_default()
    }

    /// The body Plane's webhook task sends for a change of `field` on work
    /// item `id` by `actor`, built as makeplane/plane builds it
    /// (apps/api/plane/bgtasks/webhook_task.py, `webhook_send_task` and
    /// `webhook_activity`): `{event, action, webhook_id, workspace_id, data,
    /// activity}`, `data` by `IssueExpandSerializer` with labels and assignees
    /// expanded and `state` by `StateLiteSerializer`
    /// (apps/api/plane/api/serializers/{issue,state}.py), `activity.actor` by
    /// `UserLiteSerializer` (…/serializers/user.py), `new_value`/`old_value`
    /// as the request carried them (state UUIDs). Serialized as Python's
    /// `json.dumps(payload)`, the exact bytes Plane signs and sends.
    pub fn webhook(&self, id: &str, field: &str, actor: &str) -> String {
        let mut w = self.world();
        w.edits += 1;
        let updated_at = format!(
            "2026-11-22T10:{:02}:{:02}.123456Z",
            w.edits / 60,
            w.edits % 60
        );
        let item = w.items.get(id).cloned().expect("item");
        let (state_name, group) = w
            .states
            .iter()
            .find(|(sid, _)| *sid == item.state)
            .map(|(_, n)| (n.clone(), group_of(n)))
            .unwrap_or_default();
        let previous = w.states.first().map(|(sid, _)| sid.clone());
        let payload = json!({
            "event": "issue",
            "action": "updated",
            "webhook_id": "5c1a9c59-1d0f-4a5e-9d43-7c1c1f7e0a01",
            "workspace_id": "0b8e4b5e-3b9e-4d57-9a43-0f4f3f1e2a10",
            "data": {
                "id": item.id,
                "cycle": null,
                "module": null,
                "labels": [],
                "assignees": [],
                "state": {"id": item.state, "name": state_name, "color": "#F59E0B", "group": group},
                "description": {"type": "doc", "content": []},
                "created_at": "2026-11-22T09:00:00.000000Z",
                "updated_at": updated_at,
                "deleted_at": null,
                "point": null,
                "name": item.name,
                "description_html": format!("<p>{} (from Plane)</p>", item.name),
                "description_stripped": format!("{} (from Plane)", item.name),
                "description_binary": null,
                "priority": "none",
                "start_date": null,
                "target_date": null,
                "sequence_id": item.sequence_id,
                "sort_order": 65535.0,
                "completed_at": null,
                "archived_at": null,
                "is_draft": false,
                "external_source": null,
                "external_id": null,
                "created_by": "6f2d3c1a-8a43-4b6e-9f10-2d2f5b7c9e01",
                "updated_by": actor,
                "project": PROJECT,
                "workspace": "0b8e4b5e-3b9e-4d57-9a43-0f4f3f1e2a10",
                "parent": null,
                "estimate_point": null,
                "type": null
            },
            "activity": {
                "field": field,
                "new_value": item.state,
                "old_value": previous,
                "actor": {
                    "id": actor,
                    "first_name": actor,
                    "last_name": "",
                    "email": format!("{actor}@example.com"),
                    "avatar": "",
                    "avatar_url": null,
                    "display_name": actor
                },
                "old_identifier": null,
                "new_identifier": null
            }
        });
        python_json_dumps(&payload)
    }
}

/// One page of a list, as makeplane/plane's `BasePaginator.paginate`
/// answers (apps/api/plane/utils/paginator.py): cursors are always strings;
/// `next_page_results` says whether another page exists.
fn page(results: &[Value]) -> Value {
    json!({
        "grouped_by": null,
        "sub_grouped_by": null,
        "total_count": results.len(),
        "next_cursor": "100:1:0",
        "prev_cursor": "100:-1:1",
        "next_page_results": false,
        "prev_page_results": false,
        "count": results.len(),
        "total_pages": 1,
        "total_results": results.len(),
        "extra_stats": null,
        "results": results
    })
}

fn handle(world: &Mutex<World>, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut w = world.lock().unwrap_or_else(PoisonError::into_inner);
    w.requests.push(format!("{method} {path}"));
    if let Some(pos) = w
        .fail_next
        .iter()
        .position(|(k, _)| path.contains(k.as_str()))
    {
        let (_, status) = w.fail_next.remove(pos);
        let retry_after = w.retry_after.max(1);
        return (
            status,
            json!({"error": "scripted failure", "parameters": {"retry_after": retry_after}}),
        );
    }
    if path.contains("/sendMessage") {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        w.telegram.push(v);
        return (200, json!({"ok": true, "result": {"message_id": 1}}));
    }
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // api/v1/workspaces/{ws}/projects/{p}/...
    let rest = parts
        .iter()
        .position(|p| *p == "projects")
        .map_or(&[][..], |i| &parts[i + 2..]);
    match (method, rest) {
        ("GET", ["states"]) => {
            let results: Vec<Value> = w
                .states
                .iter()
                .enumerate()
                .map(|(i, (id, name))| state_json(i, id, name))
                .collect();
            (200, page(&results))
        }
        ("GET", ["work-items"]) => {
            let results: Vec<Value> = w.items.values().map(item_json).collect();
            (200, page(&results))
        }
        // `?expand=state` is not asked for: `state` stays a UUID.
        ("GET", ["work-items", id]) => match w.items.get(*id) {
            Some(item) => (200, item_json(item)),
            None => (404, json!({"error": "not found"})),
        },
        ("PATCH", ["work-items", id]) => {
            let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let state = v
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            match w.items.get_mut(*id) {
                Some(item) => {
                    item.state = state;
                    let v = item_json(item);
                    (200, v)
                }
                None => (404, json!({"error": "not found"})),
            }
        }
        ("GET", ["work-items", id, "comments"]) => {
            let results: Vec<Value> = w.comments.get(*id).cloned().unwrap_or_default();
            (200, page(&results))
        }
        ("POST", ["work-items", id, "comments"]) => {
            let mut v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            v["id"] = json!(format!(
                "comment-{}",
                w.comments.values().map(Vec::len).sum::<usize>()
            ));
            w.comments
                .entry((*id).to_owned())
                .or_default()
                .push(v.clone());
            (201, v)
        }
        _ => (
            404,
            json!({"error": format!("no route for {method} {path}")}),
        ),
    }
}

/// A work item as Plane's REST API v1 answers it: `IssueSerializer`
/// (makeplane/plane, apps/api/plane/api/serializers/issue.py) — every model
/// field but `description_json` and `description_stripped`, `state` and
/// `project` as UUIDs.
fn item_json(item: &Item) -> Value {
    json!({
        "id": item.id,
        "type_id": null,
        "created_at": "2026-11-22T09:00:00.000000Z",
        "updated_at": "2026-11-22T09:00:00.000000Z",
        "deleted_at": null,
        "point": null,
        "name": item.name,
        "description_html": format!("<p>{} (from Plane)</p>", item.name),
        "description_binary": null,
        "priority": "none",
        "start_date": null,
        "target_date": null,
        "sequence_id": item.sequence_id,
        "sort_order": 65535.0,
        "completed_at": null,
        "archived_at": null,
        "is_draft": false,
        "external_source": null,
        "external_id": null,
        "created_by": "6f2d3c1a-8a43-4b6e-9f10-2d2f5b7c9e01",
        "updated_by": null,
        "project": PROJECT,
        "workspace": "0b8e4b5e-3b9e-4d57-9a43-0f4f3f1e2a10",
        "parent": null,
        "state": item.state,
        "estimate_point": null,
        "type": null
    })
}

/// A board state as `StateSerializer` (makeplane/plane,
/// apps/api/plane/api/serializers/state.py, every model field) lists it.
fn state_json(i: usize, id: &str, name: &str) -> Value {
    json!({
        "id": id,
        "created_at": "2026-11-01T09:00:00.000000Z",
        "updated_at": "2026-11-01T09:00:00.000000Z",
        "deleted_at": null,
        "name": name,
        "description": "",
        "color": "#60646C",
        "slug": "",
        "sequence": 15000.0 * (i as f64 + 1.0),
        "group": group_of(name),
        "is_triage": false,
        "default": i == 0,
        "external_source": null,
        "external_id": null,
        "created_by": null,
        "updated_by": null,
        "project": PROJECT,
        "workspace": "0b8e4b5e-3b9e-4d57-9a43-0f4f3f1e2a10"
    })
}

/// The state group Plane's default board gives a state of this name.
fn group_of(name: &str) -> &'static str {
    match name {
        "Backlog" => "backlog",
        "Done" => "completed",
        "Rejected" | "STOP" => "cancelled",
        _ => "started",
    }
}

/// `json.dumps(v)` as CPython writes it by default: `", "` and `": "`
/// separators, non-ASCII escaped as `\uXXXX` (surrogate pairs beyond the
/// BMP). Plane signs these bytes, so the tests deliver them unchanged.
pub fn python_json_dumps(v: &Value) -> String {
    let mut out = String::new();
    dump(v, &mut out);
    out
}

fn dump(v: &Value, out: &mut String) {
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dump(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dump_str(k, out);
                out.push_str(": ");
                dump(item, out);
            }
            out.push('}');
        }
        Value::String(s) => dump_str(s, out),
        other => out.push_str(&other.to_string()),
    }
}

fn dump_str(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// `hex(HMAC-SHA256(secret, body))`, as Plane and Gitea sign.
pub fn sign(secret: &str, body: impl AsRef<[u8]>) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body.as_ref());
    hex::encode(mac.finalize().into_bytes())
}
