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

    /// A Plane webhook body: one delivery per changed field, `state` as an object.
    pub fn webhook(&self, id: &str, field: &str, actor: &str) -> String {
        let mut w = self.world();
        w.edits += 1;
        let updated_at = format!("2026-11-22T10:{:02}:{:02}Z", w.edits / 60, w.edits % 60);
        let item = w.items.get(id).cloned().expect("item");
        let state_name = w
            .states
            .iter()
            .find(|(sid, _)| *sid == item.state)
            .map(|(_, n)| n.clone())
            .unwrap_or_default();
        json!({
            "event": "issue",
            "action": "updated",
            "webhook_id": "wh-1",
            "workspace_id": "ws-1",
            "data": {
                "id": item.id,
                "name": item.name,
                "sequence_id": item.sequence_id,
                "project": PROJECT,
                "state": {"id": item.state, "name": state_name, "color": "#000", "group": "started"},
                "labels": [],
                "assignees": [],
                "updated_at": updated_at
            },
            "activity": {
                "field": field,
                "new_value": state_name,
                "old_value": "Backlog",
                "actor": {"id": actor, "display_name": actor}
            }
        })
        .to_string()
    }
}

fn page(results: &[Value]) -> Value {
    json!({
        "results": results,
        "next_cursor": null,
        "next_page_results": false,
        "total_results": 0
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
                .map(|(id, name)| json!({"id": id, "name": name, "group": "started"}))
                .collect();
            (200, page(&results))
        }
        ("GET", ["work-items"]) => {
            let results: Vec<Value> = w.items.values().map(item_json).collect();
            (200, page(&results))
        }
        ("GET", ["work-items", id]) => match w.items.get(*id) {
            Some(item) => {
                let mut v = item_json(item);
                let name = w
                    .states
                    .iter()
                    .find(|(s, _)| *s == item.state)
                    .map(|(_, n)| n.clone());
                v["state"] = json!({"id": item.state, "name": name});
                (200, v)
            }
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

fn item_json(item: &Item) -> Value {
    json!({
        "id": item.id,
        "name": item.name,
        "sequence_id": item.sequence_id,
        "project": PROJECT,
        "state": item.state,
        "description_stripped": format!("{} (from Plane)", item.name)
    })
}

/// `hex(HMAC-SHA256(secret, body))`, as Plane and Gitea sign.
pub fn sign(secret: &str, body: impl AsRef<[u8]>) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body.as_ref());
    hex::encode(mac.finalize().into_bytes())
}
