//! The member key we publish, built from what we observed and decided.

use crate::dcs::{MemberData, PgState, Role};
use crate::postgres::types::PgObservation;
use serde_json::{Map, Value};

pub struct MemberIdentity<'a> {
    pub conn_url: &'a str,
    pub api_url: &'a str,
    pub proxy_url: Option<&'a str>,
    pub tags: &'a Map<String, Value>,
}

pub fn member_data(
    id: &MemberIdentity,
    pg: &PgObservation,
    role: Role,
    state: &PgState,
) -> MemberData {
    let mut d = MemberData {
        conn_url: Some(id.conn_url.to_string()),
        api_url: Some(id.api_url.to_string()),
        proxy_url: id.proxy_url.map(str::to_string),
        state: state.clone(),
        role,
        version: Some(crate::PATRONI_VERSION.to_string()),
        tags: id.tags.clone(),
        ..Default::default()
    };
    if let Some(s) = &pg.sql {
        d.xlog_location = Some(s.wal_lsn);
        d.timeline = Some(s.timeline);
        if s.in_recovery {
            d.receive_lsn = s.receive_lsn;
            d.replay_lsn = s.replay_lsn;
            let streaming = s
                .wal_receiver
                .as_ref()
                .is_some_and(|w| w.status == "streaming");
            d.replication_state = Some(
                if streaming {
                    "streaming"
                } else {
                    "in archive recovery"
                }
                .into(),
            );
        }
    }
    d
}
