//! How every service reaches NATS: `NATS_URL` (one server, or a comma-separated
//! list of a cluster's servers) and `NATS_REPLICAS` (how many servers of a
//! JetStream cluster hold each bucket and stream; 1 on a single server, 3 on a
//! three-node cluster so that losing one node loses no state and fails no write).

pub const ENV_NATS_URL: &str = "NATS_URL";
pub const ENV_NATS_REPLICAS: &str = "NATS_REPLICAS";
pub const DEFAULT_NATS_REPLICAS: usize = 1;
/// JetStream allows at most this many replicas.
pub const MAX_NATS_REPLICAS: usize = 5;

/// The servers of a `NATS_URL`: comma-separated, blanks ignored.
pub fn servers(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
}

/// Why a `NATS_URL` is unusable, if it is.
pub fn check_url(url: &str) -> Result<(), String> {
    let servers = servers(url);
    if servers.is_empty() {
        return Err("NATS_URL names no server".into());
    }
    match servers
        .iter()
        .find(|s| !(s.starts_with("nats://") || s.starts_with("tls://")))
    {
        Some(bad) => Err(format!("NATS_URL: {bad} is not a nats:// or tls:// URL")),
        None => Ok(()),
    }
}

/// Why a `NATS_REPLICAS` is unusable, if it is.
pub fn check_replicas(replicas: usize) -> Result<(), String> {
    if (1..=MAX_NATS_REPLICAS).contains(&replicas) {
        Ok(())
    } else {
        Err(format!(
            "NATS_REPLICAS must be 1 to {MAX_NATS_REPLICAS}, not {replicas}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_one_server_or_a_cluster() {
        assert_eq!(servers("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(servers(" nats://a:1, nats://b:2 ,,"), ["nats://a:1", "nats://b:2"]);
        assert!(check_url("nats://a:1,tls://b:2").is_ok());
        assert!(check_url("nats://a:1,http://b:2").is_err());
        assert!(check_url(" , ").is_err());
        assert!(check_replicas(3).is_ok());
        assert!(check_replicas(0).is_err() && check_replicas(6).is_err());
    }
}
