//! The `Dcs` operations of the Kubernetes backend.

use super::annotations::{
    ann, failover_annotations, now_iso, status_annotations, sync_annotations,
};
use super::api::ApiError;
use super::{KubernetesDcs, annotation, nodes_from_objects, resource_version, term_version};
use crate::dcs::{Cluster, Dcs, DcsError, DcsResult, MemberData, Role, Status};
use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::time::Duration;
use tokio::time::Instant;

const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(300);

impl KubernetesDcs {
    async fn list(
        &self,
        kind: &str,
        extra: &[(&str, String)],
        deadline: Instant,
    ) -> DcsResult<Value> {
        let mut query = vec![("labelSelector", self.selector.clone())];
        query.extend(extra.iter().cloned());
        let url = self.api.url(&self.namespace, kind, None, &query);
        Ok(self
            .api
            .call(kind, Method::GET, url, None, deadline)
            .await?)
    }

    async fn get(&self, name: &str, deadline: Instant) -> DcsResult<Option<Value>> {
        let url = self.api.url(&self.namespace, self.kind, Some(name), &[]);
        match self.api.call(name, Method::GET, url, None, deadline).await {
            Ok(v) => Ok(Some(v)),
            Err(ApiError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn create(
        &self,
        name: &str,
        annotations: &Map<String, Value>,
        subsets: Option<Value>,
        deadline: Instant,
    ) -> Result<Value, ApiError> {
        let kept: Map<String, Value> = annotations
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let kind = if self.kind == "endpoints" {
            "Endpoints"
        } else {
            "ConfigMap"
        };
        let mut body = json!({
            "apiVersion": "v1",
            "kind": kind,
            "metadata": self.metadata(name, kept, None),
        });
        if let Some(s) = subsets {
            body["subsets"] = s;
        }
        let url = self.api.url(&self.namespace, self.kind, None, &[]);
        self.api
            .call(name, Method::POST, url, Some(&body), deadline)
            .await
    }

    /// Merge-patch `name`'s annotations (null removes one); with `rv`, only if unchanged.
    async fn patch(
        &self,
        name: &str,
        annotations: &Map<String, Value>,
        rv: Option<&str>,
        subsets: Option<Value>,
        deadline: Instant,
    ) -> Result<Value, ApiError> {
        let mut body = json!({ "metadata": self.metadata(name, annotations.clone(), rv) });
        if let Some(s) = subsets {
            body["subsets"] = s;
        }
        let url = self.api.url(&self.namespace, self.kind, Some(name), &[]);
        self.api
            .call(name, Method::PATCH, url, Some(&body), deadline)
            .await
    }

    /// Upstream's patch_or_create: with `version`, a compare-and-set on resourceVersion;
    /// without, patch the object or create it when it does not exist yet.
    async fn patch_or_create(
        &self,
        name: &str,
        annotations: Map<String, Value>,
        version: Option<i64>,
    ) -> DcsResult<bool> {
        let deadline = self.deadline();
        if let Some(v) = version {
            let rv = v.to_string();
            return match self
                .patch(name, &annotations, Some(&rv), None, deadline)
                .await
            {
                Ok(_) => Ok(true),
                Err(ApiError::Conflict | ApiError::NotFound) => Ok(false),
                Err(e) => Err(e.into()),
            };
        }
        for _ in 0..2 {
            match self.patch(name, &annotations, None, None, deadline).await {
                Ok(_) => return Ok(true),
                Err(ApiError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
            match self.create(name, &annotations, None, deadline).await {
                Ok(_) => return Ok(true),
                // Created by somebody else meanwhile: patch it.
                Err(ApiError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(false)
    }

    /// The leader record annotations for a write by us, keeping the term when we hold it.
    fn leader_annotations(&self, current: Option<&Value>) -> Map<String, Value> {
        let now = now_iso();
        let keep = |k: &str| current.and_then(|o| annotation(o, k)).map(str::to_string);
        ann(&[
            ("leader", Some(self.name.clone())),
            ("ttl", Some(self.ttl_secs().to_string())),
            ("renewTime", Some(now.clone())),
            ("acquireTime", Some(keep("acquireTime").unwrap_or(now))),
            (
                "transitions",
                Some(keep("transitions").unwrap_or_else(|| "0".into())),
            ),
        ])
    }

    /// True when the last leader record we saw names someone else and has not expired.
    fn other_leader_valid(&self) -> bool {
        let o = self.observed();
        let Some(holder) = o.record.get("leader").filter(|l| !l.is_empty()) else {
            return false;
        };
        let ttl = o
            .record
            .get("ttl")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or_else(|| self.ttl_secs());
        holder != &self.name
            && o.since
                .is_some_and(|t| t.elapsed() <= Duration::from_secs(ttl))
    }

    fn we_lead(&self) -> bool {
        let o = self.observed();
        o.record.get("leader") == Some(&self.name)
    }

    async fn refresh_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        let deadline = self.deadline();
        for _ in 0..2 {
            let current = self.get(&self.names.leader, deadline).await?;
            if let Some(o) = &current
                && annotation(o, "leader") != Some(self.name.as_str())
            {
                return Ok(false);
            }
            let mut annotations = self.leader_annotations(current.as_ref());
            if let Some(s) = status {
                annotations.extend(status_annotations(s));
            }
            let subsets = self.subsets(true);
            let written = match &current {
                None => {
                    tracing::warn!("the leader object vanished; creating it again");
                    self.create(&self.names.leader, &annotations, subsets, deadline)
                        .await
                }
                Some(o) => {
                    let rv = resource_version(o);
                    self.patch(&self.names.leader, &annotations, rv, subsets, deadline)
                        .await
                }
            };
            match written {
                Ok(obj) => {
                    self.observe_leader(Some(&obj));
                    return Ok(true);
                }
                Err(ApiError::Conflict | ApiError::NotFound) => {
                    tracing::warn!("Concurrent update of {}", self.names.leader);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(false)
    }

    /// The pod's role label as upstream sets it (and the optional temporary one).
    fn role_labels(&self, data: &MemberData) -> Map<String, Value> {
        let (role, tmp) = if self.we_lead() {
            let v = if data.role == Role::StandbyLeader {
                &self.roles.standby_leader
            } else {
                &self.roles.leader
            };
            (Some(v.clone()), Some("primary".to_string()))
        } else if data.state == crate::dcs::PgState::Running && data.role != Role::Primary {
            let v = match data.role {
                Role::Replica => self.roles.follower.clone(),
                other => other.as_str().to_string(),
            };
            (Some(v), Some(data.role.as_str().to_string()))
        } else {
            (None, None)
        };
        let mut labels = ann(&[(self.roles.label.as_str(), role)]);
        if let Some(t) = &self.roles.tmp_label {
            labels.insert(t.clone(), tmp.map_or(Value::Null, Value::from));
        }
        labels
    }

    async fn patch_pod(&self, name: &str, metadata: Value) -> Result<Value, ApiError> {
        let url = self.api.url(&self.namespace, "pods", Some(name), &[]);
        let body = json!({ "metadata": metadata });
        self.api
            .call("pod", Method::PATCH, url, Some(&body), self.deadline())
            .await
    }
}

#[async_trait]
impl Dcs for KubernetesDcs {
    fn member_name(&self) -> &str {
        &self.name
    }

    async fn get_cluster(&self) -> DcsResult<Cluster> {
        let deadline = self.deadline();
        let (objects, pods) = tokio::try_join!(
            self.list(self.kind, &[], deadline),
            self.list("pods", &[], deadline)
        )?;
        let items = |v: &Value| v["items"].as_array().cloned().unwrap_or_default();
        let (objects, pods) = (items(&objects), items(&pods));
        let leader = objects
            .iter()
            .find(|o| o["metadata"]["name"].as_str() == Some(self.names.leader.as_str()));
        let valid = self.observe_leader(leader);
        Ok(Cluster::from_nodes(&nodes_from_objects(
            &self.names,
            &objects,
            &pods,
            valid,
        )))
    }

    async fn set_ttl(&self, ttl: Duration) {
        self.settings().ttl = ttl;
    }

    async fn set_retry_timeout(&self, retry_timeout: Duration) {
        self.settings().retry_timeout = retry_timeout;
    }

    async fn attempt_to_acquire_leader(&self) -> DcsResult<bool> {
        if self.other_leader_valid() {
            tracing::info!("Could not take out TTL lock: another member holds it");
            return Ok(false);
        }
        let observed = self.observed().clone();
        let now = now_iso();
        let mut annotations = self.leader_annotations(None);
        if !observed.record.is_empty() {
            let mut transitions: u64 = observed
                .record
                .get("transitions")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            if observed.record.get("leader") != Some(&self.name) {
                transitions += 1;
            } else if let Some(a) = observed.record.get("acquireTime") {
                annotations.insert("acquireTime".into(), Value::from(a.clone()));
            }
            annotations.insert("transitions".into(), Value::from(transitions.to_string()));
        }
        annotations.insert("renewTime".into(), Value::from(now));
        let deadline = self.deadline();
        let name = &self.names.leader;
        let written = match observed.resource_version.as_deref() {
            Some(rv) => {
                self.patch(name, &annotations, Some(rv), self.subsets(false), deadline)
                    .await
            }
            None => {
                self.create(name, &annotations, self.subsets(false), deadline)
                    .await
            }
        };
        match written {
            Ok(obj) => {
                self.observe_leader(Some(&obj));
                Ok(true)
            }
            Err(ApiError::Conflict | ApiError::NotFound) => {
                tracing::info!("Could not take out TTL lock");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn update_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        self.refresh_leader(status).await
    }

    async fn delete_leader(&self, status: Option<&Status>) -> DcsResult<bool> {
        let deadline = self.deadline();
        let Some(current) = self.get(&self.names.leader, deadline).await? else {
            return Ok(false);
        };
        if annotation(&current, "leader") != Some(self.name.as_str()) {
            return Ok(false);
        }
        let mut annotations = ann(&[("leader", None)]);
        if let Some(o) = status.and_then(|s| s.optime) {
            annotations.insert("optime".into(), Value::from(o.to_string()));
        }
        let rv = resource_version(&current);
        match self
            .patch(
                &self.names.leader,
                &annotations,
                rv,
                self.subsets(false),
                deadline,
            )
            .await
        {
            Ok(obj) => {
                self.observe_leader(Some(&obj));
                Ok(true)
            }
            Err(ApiError::Conflict | ApiError::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn touch_member(&self, data: &MemberData) -> DcsResult<bool> {
        let value = serde_json::to_string(data)
            .map_err(|e| DcsError::Rejected(format!("member data not serializable: {e}")))?;
        let metadata = json!({
            "labels": self.role_labels(data),
            "annotations": { "status": value },
        });
        match self.patch_pod(&self.name, metadata).await {
            Ok(_) => Ok(true),
            Err(ApiError::NotFound) => Err(DcsError::Rejected(format!(
                "kubernetes: no pod named {:?} in namespace {:?}: the member name must be the pod name",
                self.name, self.namespace
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_member(&self, name: &str) -> DcsResult<bool> {
        let metadata = json!({
            "labels": { self.roles.label.as_str(): null },
            "annotations": { "status": null },
        });
        match self.patch_pod(name, metadata).await {
            Ok(_) | Err(ApiError::NotFound) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    async fn initialize(&self, create_new: bool, sysid: &str) -> DcsResult<bool> {
        let annotations = ann(&[("initialize", Some(sysid.to_string()))]);
        if !create_new {
            return self
                .patch_or_create(&self.names.config, annotations, None)
                .await;
        }
        let deadline = self.deadline();
        let name = &self.names.config;
        let written = match self.get(name, deadline).await? {
            None => self.create(name, &annotations, None, deadline).await,
            Some(o) if annotation(&o, "initialize").is_some() => return Ok(false),
            Some(o) => {
                let rv = resource_version(&o);
                self.patch(name, &annotations, rv, None, deadline).await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(ApiError::Conflict | ApiError::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn cancel_initialization(&self) -> DcsResult<bool> {
        let annotations = ann(&[("initialize", None)]);
        match self
            .patch(
                &self.names.config,
                &annotations,
                None,
                None,
                self.deadline(),
            )
            .await
        {
            Ok(_) | Err(ApiError::NotFound) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    async fn set_config_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        let a = ann(&[("config", Some(value.to_string()))]);
        self.patch_or_create(&self.names.config, a, version).await
    }

    async fn set_failover_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        let a = failover_annotations(value)?;
        self.patch_or_create(&self.names.failover, a, version).await
    }

    async fn set_history_value(&self, value: &str) -> DcsResult<bool> {
        let a = ann(&[("history", Some(value.to_string()))]);
        self.patch_or_create(&self.names.config, a, None).await
    }

    async fn set_sync_state_value(&self, value: &str, version: Option<i64>) -> DcsResult<bool> {
        let a = sync_annotations(value)?;
        self.patch_or_create(&self.names.sync, a, version).await
    }

    async fn delete_sync_state(&self, version: Option<i64>) -> DcsResult<bool> {
        let a = ann(&[("leader", None), ("sync_standby", None), ("quorum", None)]);
        let rv = version.map(|v| v.to_string());
        match self
            .patch(&self.names.sync, &a, rv.as_deref(), None, self.deadline())
            .await
        {
            Ok(_) => Ok(true),
            Err(ApiError::NotFound) => Ok(version.is_none()),
            Err(ApiError::Conflict) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn write_status(&self, status: &Status) -> DcsResult<bool> {
        self.patch_or_create(&self.names.leader, status_annotations(status), None)
            .await
    }

    async fn write_failsafe(&self, value: &str) -> DcsResult<bool> {
        let a = ann(&[("failsafe", Some(value.to_string()))]);
        self.patch_or_create(&self.names.leader, a, None).await
    }

    async fn delete_cluster(&self) -> DcsResult<bool> {
        let url = self.api.url(
            &self.namespace,
            self.kind,
            None,
            &[("labelSelector", self.selector.clone())],
        );
        self.api
            .call("delete cluster", Method::DELETE, url, None, self.deadline())
            .await?;
        Ok(true)
    }

    async fn watch_leader(
        &self,
        leader_version: Option<i64>,
        timeout: Duration,
    ) -> DcsResult<bool> {
        let deadline = Instant::now() + timeout;
        let mut answered = false;
        loop {
            let err = match self
                .watch_attempt(leader_version, deadline, &mut answered)
                .await
            {
                Ok(Some(changed)) => return Ok(changed),
                Ok(None) => None,
                Err(e) => Some(e),
            };
            if let Some(e) = &err {
                tracing::debug!("kubernetes watch failed, retrying: {e}");
                tokio::time::sleep_until(deadline.min(Instant::now() + WATCH_RETRY_PAUSE)).await;
            }
            if Instant::now() >= deadline {
                return match err {
                    Some(e) if !answered => Err(e),
                    _ => Ok(false),
                };
            }
        }
    }
}

impl KubernetesDcs {
    /// Read the leader object, then watch it from that resourceVersion.
    /// `Some(changed)` ends the watch; `None`: the stream ended, watch again.
    async fn watch_attempt(
        &self,
        since: Option<i64>,
        deadline: Instant,
        answered: &mut bool,
    ) -> DcsResult<Option<bool>> {
        let field = (
            "fieldSelector",
            format!("metadata.name={}", self.names.leader),
        );
        let list = self
            .list(self.kind, std::slice::from_ref(&field), deadline)
            .await?;
        *answered = true;
        let current = list["items"].as_array().and_then(|i| i.first().cloned());
        // A change that happened before the watch started counts at once.
        if current.as_ref().and_then(term_version) != since {
            return Ok(Some(true));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0");
        let query = [
            ("labelSelector", self.selector.clone()),
            field,
            ("watch", "1".to_string()),
            ("resourceVersion", rv.to_string()),
            ("timeoutSeconds", remaining.as_secs().max(1).to_string()),
        ];
        let url = self.api.url(&self.namespace, self.kind, None, &query);
        let mut resp = self
            .api
            .watch(url, remaining + Duration::from_secs(1))
            .await?;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
                Err(_) => return Ok(Some(false)),
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(DcsError::Unreachable(format!("kubernetes watch: {e}"))),
            };
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                match event["type"].as_str() {
                    // e.g. 410 Gone: our resourceVersion is too old; list again.
                    Some("ERROR") => return Ok(None),
                    Some("DELETED") if since.is_some() => return Ok(Some(true)),
                    Some("ADDED" | "MODIFIED") if term_version(&event["object"]) != since => {
                        return Ok(Some(true));
                    }
                    _ => {}
                }
            }
        }
    }
}
