//! An in-memory Kubernetes API for AiOrbs behind a `tower-test` mock service: get, list, watch
//! (streamed), create, delete and status patches; and for ConfigMaps (the summary store): list by
//! label (whole or as metadata only), get, create, merge patch and delete with resourceVersion
//! preconditions. A switch makes every call fail.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use kube::client::Body;
use serde_json::{Value, json};

pub const NS: &str = "orbs";
const BASE: &str = "/apis/hybridcoach.io/v1alpha1/namespaces/orbs/aiorbs";
const CONFIG_MAPS: &str = "/api/v1/namespaces/orbs/configmaps";

type RespBody = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Default)]
pub struct FakeState {
    pub orbs: BTreeMap<String, Value>,
    pub config_maps: BTreeMap<String, Value>,
    /// Method, path and query of every request, in order.
    pub requests: Vec<(Method, String, String)>,
    pub status_patches: Vec<Value>,
    pub fail: bool,
    version: u64,
    watchers: Vec<mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>>,
}

#[derive(Clone, Default)]
pub struct FakeKube(Arc<Mutex<FakeState>>);

impl FakeKube {
    pub fn start() -> (kube::Client, FakeKube) {
        let fake = FakeKube::default();
        (fake.client(), fake)
    }

    /// Another client of the same API server (one per signaling replica).
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
        let server = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let response = server.handle(request).await;
                respond.send_response(response);
            }
        });
        kube::Client::new(service, NS)
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    pub fn count(&self, method: Method) -> usize {
        self.state().requests.iter().filter(|(m, _, _)| *m == method).count()
    }

    pub fn watching(&self) -> bool {
        !self.state().watchers.is_empty()
    }

    pub fn insert_orb(&self, name: &str, room: &str, phase: &str) {
        let mut st = self.state();
        st.version += 1;
        let orb = json!({
            "apiVersion": "hybridcoach.io/v1alpha1", "kind": "AiOrb",
            "metadata": {"name": name, "namespace": NS, "uid": format!("old-{}", st.version),
                         "resourceVersion": st.version.to_string()},
            "spec": {"roomId": room},
            "status": {"phase": phase},
        });
        st.orbs.insert(name.to_owned(), orb.clone());
        st.notify("ADDED", orb);
    }

    pub fn set_phase(&self, name: &str, phase: &str) {
        let mut st = self.state();
        st.version += 1;
        let version = st.version.to_string();
        let orb = st.orbs.get_mut(name).expect("no such orb");
        orb["status"]["phase"] = json!(phase);
        orb["metadata"]["resourceVersion"] = json!(version);
        let orb = orb.clone();
        st.notify("MODIFIED", orb);
    }

    async fn handle(&self, request: Request<Body>) -> Response<RespBody> {
        let (parts, body) = request.into_parts();
        let body = body.collect_bytes().await.unwrap_or_default();
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let mut st = self.state();
        st.requests.push((parts.method.clone(), path.clone(), query.clone()));
        // As a real API server with the chart's Role: a call signaling does not declare is
        // forbidden, so a test that makes one fails.
        if !granted(&parts.method, &path, &query) {
            return status(
                403,
                "Forbidden",
                &format!("{} {path} is not in signaling's API_CALLS", parts.method),
            );
        }
        if st.fail {
            return status(500, "InternalError", "the fake API server is failing on purpose");
        }
        if let Some(rest) = path.strip_prefix(CONFIG_MAPS) {
            let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
            let metadata_only = parts
                .headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("as=PartialObjectMetadata"));
            return st.config_map(parts.method, &segments, &query, &body, metadata_only);
        }
        let Some(rest) = path.strip_prefix(BASE) else {
            return status(404, "NotFound", "unknown path");
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        match (parts.method, segments.as_slice()) {
            (Method::GET, []) if query.contains("watch=true") => {
                let (tx, rx) = mpsc::unbounded();
                st.watchers.push(tx);
                Response::new(StreamBody::new(rx).boxed_unsync())
            }
            (Method::GET, []) => {
                let items: Vec<Value> = st.orbs.values().cloned().collect();
                ok(
                    200,
                    json!({"apiVersion": "hybridcoach.io/v1alpha1", "kind": "AiOrbList",
                       "metadata": {"resourceVersion": st.version.to_string()}, "items": items}),
                )
            }
            (Method::GET, [name]) => match st.orbs.get(*name) {
                Some(orb) => ok(200, orb.clone()),
                None => status(404, "NotFound", "aiorb not found"),
            },
            (Method::POST, []) => {
                let mut orb: Value = serde_json::from_slice(&body).unwrap();
                let name = orb["metadata"]["name"].as_str().unwrap().to_owned();
                if st.orbs.contains_key(&name) {
                    return status(409, "AlreadyExists", "aiorb already exists");
                }
                st.version += 1;
                orb["metadata"]["uid"] = json!(format!("uid-{}", st.version));
                orb["metadata"]["resourceVersion"] = json!(st.version.to_string());
                orb["metadata"]["namespace"] = json!(NS);
                st.orbs.insert(name, orb.clone());
                st.notify("ADDED", orb.clone());
                ok(201, orb)
            }
            (Method::DELETE, [name]) => {
                let params: Value = serde_json::from_slice(&body).unwrap_or_default();
                let Some(orb) = st.orbs.get(*name).cloned() else {
                    return status(404, "NotFound", "aiorb not found");
                };
                if let Some(uid) = params["preconditions"]["uid"].as_str()
                    && orb["metadata"]["uid"] != uid
                {
                    return status(409, "Conflict", "precondition failed: uid");
                }
                st.orbs.remove(*name);
                st.notify("DELETED", orb.clone());
                ok(200, orb)
            }
            (Method::PATCH, [name, "status"]) => {
                let patch: Value = serde_json::from_slice(&body).unwrap();
                st.status_patches.push(patch.clone());
                let Some(orb) = st.orbs.get_mut(*name) else {
                    return status(404, "NotFound", "aiorb not found");
                };
                if let Some(uid) = patch["metadata"]["uid"].as_str()
                    && orb["metadata"]["uid"] != uid
                {
                    return status(409, "Conflict", "precondition failed: uid");
                }
                for (k, v) in patch["status"].as_object().unwrap() {
                    orb["status"][k] = v.clone();
                }
                let orb = orb.clone();
                ok(200, orb)
            }
            _ => status(405, "MethodNotAllowed", "not supported by the fake"),
        }
    }
}

impl FakeState {
    fn config_map(
        &mut self,
        method: Method,
        segments: &[&str],
        query: &str,
        body: &[u8],
        metadata_only: bool,
    ) -> Response<RespBody> {
        let body: Value = serde_json::from_slice(body).unwrap_or_default();
        // As the server answers a client that asks for `PartialObjectMetadata`: no data.
        let shown = |cm: &Value| {
            if metadata_only {
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": cm["metadata"]})
            } else {
                cm.clone()
            }
        };
        match (method, segments) {
            (Method::GET, []) => {
                // `labelSelector=k%3Dv`: one equality, as the summary store asks.
                let selector = query
                    .split('&')
                    .find_map(|p| p.strip_prefix("labelSelector="))
                    .map(|s| s.replace("%3D", "=").replace("%2F", "/"));
                let items: Vec<Value> = self
                    .config_maps
                    .values()
                    .filter(|cm| {
                        selector.as_deref().is_none_or(|sel| {
                            let (k, v) = sel.split_once('=').unwrap();
                            cm["metadata"]["labels"][k] == v
                        })
                    })
                    .map(shown)
                    .collect();
                ok(
                    200,
                    json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": {"resourceVersion": self.version.to_string()}, "items": items}),
                )
            }
            (Method::GET, [name]) => match self.config_maps.get(*name) {
                Some(cm) => ok(200, shown(cm)),
                None => status(404, "NotFound", "configmap not found"),
            },
            (Method::POST, []) => {
                let name = body["metadata"]["name"].as_str().unwrap().to_owned();
                if self.config_maps.contains_key(&name) {
                    return status(409, "AlreadyExists", "configmap already exists");
                }
                let cm = self.stamp(body);
                self.config_maps.insert(name, cm.clone());
                ok(201, cm)
            }
            (Method::PATCH, [name]) => {
                let Some(current) = self.config_maps.get(*name) else {
                    return status(404, "NotFound", "configmap not found");
                };
                // A resourceVersion in a merge patch is a precondition.
                if let Some(rv) = body["metadata"].get("resourceVersion")
                    && !rv.is_null()
                    && *rv != current["metadata"]["resourceVersion"]
                {
                    return status(409, "Conflict", "the object has been modified");
                }
                let mut cm = current.clone();
                merge_patch(&mut cm, &body);
                let cm = self.stamp(cm);
                self.config_maps.insert((*name).to_owned(), cm.clone());
                ok(200, shown(&cm))
            }
            (Method::DELETE, [name]) => {
                let Some(current) = self.config_maps.get(*name).cloned() else {
                    return status(404, "NotFound", "configmap not found");
                };
                if let Some(rv) = body["preconditions"]["resourceVersion"].as_str()
                    && current["metadata"]["resourceVersion"] != rv
                {
                    return status(409, "Conflict", "precondition failed: resourceVersion");
                }
                self.config_maps.remove(*name);
                ok(200, current)
            }
            _ => status(405, "MethodNotAllowed", "not supported by the fake"),
        }
    }

    /// A new resourceVersion (and the namespace) on a written object.
    fn stamp(&mut self, mut object: Value) -> Value {
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        object["metadata"]["namespace"] = json!(NS);
        object
    }

    fn notify(&mut self, kind: &str, object: Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        self.watchers
            .retain(|w| w.unbounded_send(Ok(Frame::data(Bytes::from(line.clone())))).is_ok());
    }
}

/// Whether the request is one of the RBAC rules signaling declares (the lists the chart's Role
/// is tested against).
fn granted(method: &Method, path: &str, query: &str) -> bool {
    let (group, rest) = if let Some(rest) = path.strip_prefix("/apis/") {
        let mut parts = rest.splitn(3, '/');
        let group = parts.next().unwrap_or_default();
        (group.to_owned(), parts.nth(1).unwrap_or_default().to_owned())
    } else if let Some(rest) = path.strip_prefix("/api/v1/") {
        (String::new(), rest.to_owned())
    } else {
        return false;
    };
    // namespaces/NS/RESOURCE[/NAME[/SUBRESOURCE]]
    let segments: Vec<&str> = rest.split('/').skip(2).collect();
    let (resource, named) = match segments.as_slice() {
        [r] => (r.to_string(), false),
        [r, _] => (r.to_string(), true),
        [r, _, sub] => (format!("{r}/{sub}"), true),
        _ => return false,
    };
    let verb = match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if query.contains("watch=true") => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        _ => return false,
    };
    orb_signaling::orb_runtime::kubernetes::API_CALLS
        .iter()
        .chain(orb_signaling::summary::kube_store::API_CALLS)
        .any(|(g, r, verbs)| *g == group && *r == resource && verbs.contains(&verb))
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().unwrap();
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else {
            merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn ok(code: u16, body: Value) -> Response<RespBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<RespBody> {
    ok(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}
