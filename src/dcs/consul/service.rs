//! Optional service registration (`consul.register_service`): the member registers
//! itself in the local agent as service `<scope>` with its role as a tag and an HTTP
//! health check on the REST API's role endpoint, as upstream does.

use crate::dcs::{MemberData, PgState, Role};
use serde_json::{Value, json};

/// What the registration settings are (fixed at start, as the trait has no reload hook).
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Consul service name derived from the scope (DNS-safe).
    pub name: String,
    /// `<scope>/<member>`.
    pub id: String,
    pub tags: Vec<String>,
    pub check_interval: String,
    pub tls_server_name: Option<String>,
}

/// The next call to make against the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceAction {
    Register(Value),
    Deregister(String),
}

/// Upstream's `service_name_from_scope_name`: lower case; `.`, ` ` and `_` become `-`;
/// any other character outside `[a-z0-9-]` becomes `u` + its code point (4 digits);
/// at most 230 characters so `replica.<name>.service.consul` stays a valid DNS name.
pub fn service_name(scope: &str) -> String {
    let mut out = String::new();
    for c in scope.to_lowercase().chars() {
        match c {
            'a'..='z' | '0'..='9' | '-' => out.push(c),
            '.' | ' ' | '_' => out.push('-'),
            other => out.push_str(&format!("u{:04}", other as u32)),
        }
    }
    out.chars().take(230).collect()
}

/// The registration a member with `data` should have, or `None` to leave it as it is.
/// `session_ttl_secs` is the Consul session TTL (half of Patroni's ttl).
pub fn desired(
    s: &ServiceSettings,
    data: &MemberData,
    session_ttl_secs: f64,
) -> Option<ServiceAction> {
    let (Some(api_url), Some(conn_url)) = (&data.api_url, &data.conn_url) else {
        tracing::warn!("Could not register service: not enough params in member data");
        return None;
    };
    if data.state == PgState::Stopped {
        return Some(ServiceAction::Deregister(s.id.clone()));
    }
    let role = data.role.as_str().replace('_', "-");
    if !matches!(
        data.role,
        Role::Primary | Role::Replica | Role::StandbyLeader
    ) {
        tracing::warn!("Could not register service: unknown role type {role}");
        return None;
    }
    if data.state != PgState::Running {
        return None;
    }
    let mut tags = s.tags.clone();
    tags.push(role.clone());
    if data.role == Role::Primary {
        // Older consumers select on the pre-4.0 name.
        tags.push("master".into());
    }
    let mut check_url = reqwest::Url::parse(api_url).ok()?;
    check_url.set_path(&format!("/{role}"));
    let conn = reqwest::Url::parse(conn_url).ok()?;
    let mut check = json!({
        "HTTP": check_url.as_str(),
        "Interval": s.check_interval,
        "DeregisterCriticalServiceAfter": format!("{}s", session_ttl_secs * 10.0),
    });
    if let Some(sni) = &s.tls_server_name {
        check["TLSServerName"] = Value::from(sni.clone());
    }
    Some(ServiceAction::Register(json!({
        "ID": s.id,
        "Name": s.name,
        "Address": conn.host_str(),
        "Port": conn.port_or_known_default(),
        "Tags": tags,
        "Check": check,
        "EnableTagOverride": true,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ServiceSettings {
        ServiceSettings {
            name: service_name("batman"),
            id: "batman/pg0".into(),
            tags: vec!["dc1".into()],
            check_interval: "5s".into(),
            tls_server_name: None,
        }
    }

    fn member(role: Role, state: PgState) -> MemberData {
        MemberData {
            api_url: Some("http://10.0.0.1:8008/patroni".into()),
            conn_url: Some("postgres://10.0.0.1:5432/postgres".into()),
            role,
            state,
            ..Default::default()
        }
    }

    #[test]
    fn names_are_dns_safe() {
        assert_eq!(service_name("Bat_man.v2 x"), "bat-man-v2-x");
        assert_eq!(service_name("a/b"), "au0047b");
        assert_eq!(service_name(&"x".repeat(300)).len(), 230);
    }

    #[test]
    fn primary_gets_both_role_tags_and_a_role_check() {
        let Some(ServiceAction::Register(body)) =
            desired(&settings(), &member(Role::Primary, PgState::Running), 15.0)
        else {
            panic!("expected a registration")
        };
        assert_eq!(body["Tags"], json!(["dc1", "primary", "master"]));
        assert_eq!(body["Check"]["HTTP"], "http://10.0.0.1:8008/primary");
        assert_eq!(body["Check"]["DeregisterCriticalServiceAfter"], "150s");
        assert_eq!(
            (body["Address"].as_str(), body["Port"].as_u64()),
            (Some("10.0.0.1"), Some(5432))
        );
        let Some(ServiceAction::Register(body)) = desired(
            &settings(),
            &member(Role::StandbyLeader, PgState::Running),
            15.0,
        ) else {
            panic!("expected a registration")
        };
        assert_eq!(body["Tags"], json!(["dc1", "standby-leader"]));
    }

    #[test]
    fn stopped_deregisters_and_starting_waits() {
        assert_eq!(
            desired(&settings(), &member(Role::Replica, PgState::Stopped), 15.0),
            Some(ServiceAction::Deregister("batman/pg0".into()))
        );
        assert_eq!(
            desired(&settings(), &member(Role::Replica, PgState::Starting), 15.0),
            None
        );
        assert_eq!(
            desired(
                &settings(),
                &member(Role::Uninitialized, PgState::Running),
                15.0
            ),
            None
        );
    }
}
