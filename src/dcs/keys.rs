//! Upstream's key layout under `/<namespace>/<scope>/`.

pub const INITIALIZE: &str = "initialize";
pub const CONFIG: &str = "config";
pub const LEADER: &str = "leader";
pub const FAILOVER: &str = "failover";
pub const HISTORY: &str = "history";
pub const MEMBERS: &str = "members/";
pub const STATUS: &str = "status";
pub const LEADER_OPTIME: &str = "optime/leader";
pub const SYNC: &str = "sync";
pub const FAILSAFE: &str = "failsafe";

/// `/<namespace>/<scope>/` with slashes normalised, as upstream builds it.
pub fn cluster_prefix(namespace: &str, scope: &str) -> String {
    let joined = format!(
        "/{}/{}/",
        namespace.trim_matches('/'),
        scope.trim_matches('/')
    );
    let mut out = String::with_capacity(joined.len());
    for c in joined.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

pub fn member_key(name: &str) -> String {
    format!("{MEMBERS}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_normalised() {
        assert_eq!(cluster_prefix("/service/", "batman"), "/service/batman/");
        assert_eq!(cluster_prefix("service", "batman"), "/service/batman/");
        assert_eq!(cluster_prefix("//a//", "/b/"), "/a/b/");
    }
}
