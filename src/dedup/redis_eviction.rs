//! Whether the dedup Redis may evict keys. An evicted claim or accepted id counts as absent, so
//! the notification is accepted and published again: with `maxmemory` set, any policy other
//! than `noeviction` makes duplicates (every dedup key has a TTL, so the `volatile-*` policies
//! evict them too, in-flight claims first under `volatile-ttl`). Read with `CONFIG GET`, or from
//! `INFO memory` where a managed Redis disables `CONFIG`.

use redis::aio::MultiplexedConnection;

/// What the connected Redis does when it reaches `maxmemory`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Eviction {
    /// `noeviction` (writes fail instead, which dedup answers with 503), or no `maxmemory`.
    Off,
    On {
        policy: String,
        maxmemory: u64,
    },
    /// Neither `CONFIG GET` nor `INFO` answered; the reason, for the log.
    Unknown(String),
}

pub(super) async fn check(connection: &mut MultiplexedConnection) -> Eviction {
    let settings = match from_config(connection).await {
        Ok(settings) => Ok(settings),
        Err(config_error) => from_info(connection)
            .await
            .map_err(|info_error| format!("CONFIG GET: {config_error}; INFO: {info_error}")),
    };
    match settings {
        Ok((policy, maxmemory)) => classify(policy, maxmemory),
        Err(reason) => Eviction::Unknown(reason),
    }
}

fn classify(policy: String, maxmemory: u64) -> Eviction {
    if policy == "noeviction" || maxmemory == 0 {
        Eviction::Off
    } else {
        Eviction::On { policy, maxmemory }
    }
}

async fn from_config(connection: &mut MultiplexedConnection) -> Result<(String, u64), String> {
    let pairs: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory*")
        .query_async(connection)
        .await
        .map_err(|e| e.to_string())?;
    let value = |name: &str| {
        pairs
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no {name} in the answer"))
    };
    let maxmemory = value("maxmemory")?
        .parse()
        .map_err(|e| format!("maxmemory: {e}"))?;
    Ok((value("maxmemory-policy")?, maxmemory))
}

async fn from_info(connection: &mut MultiplexedConnection) -> Result<(String, u64), String> {
    let text: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(connection)
        .await
        .map_err(|e| e.to_string())?;
    parse_info(&text)
}

fn parse_info(text: &str) -> Result<(String, u64), String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.trim_end().strip_prefix(name)?.strip_prefix(':'))
            .ok_or_else(|| format!("no {name} in INFO memory"))
    };
    let maxmemory = field("maxmemory")?
        .parse()
        .map_err(|e| format!("maxmemory: {e}"))?;
    Ok((field("maxmemory_policy")?.to_owned(), maxmemory))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_policy_that_evicts_under_a_memory_bound_counts() {
        assert_eq!(classify("noeviction".into(), 1 << 30), Eviction::Off);
        assert_eq!(classify("allkeys-lru".into(), 0), Eviction::Off);
        assert_eq!(
            classify("volatile-ttl".into(), 100),
            Eviction::On {
                policy: "volatile-ttl".into(),
                maxmemory: 100
            }
        );
    }

    #[test]
    fn info_memory_is_read_by_field_name() {
        let text = "# Memory\r\nused_memory:1\r\nmaxmemory:1048576\r\nmaxmemory_human:1.00M\r\n\
                    maxmemory_policy:allkeys-lru\r\n";
        assert_eq!(parse_info(text), Ok(("allkeys-lru".to_owned(), 1_048_576)));
        assert!(parse_info("# Memory\r\n").is_err());
    }
}
