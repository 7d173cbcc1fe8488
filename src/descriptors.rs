//! Open-file descriptors. Every connection holds one, and so do the spool's segments and
//! cursors, the sinks' files and sockets, the workers' event loops and the admin listener's
//! connections. Past the process's limit (`RLIMIT_NOFILE`, `ulimit -n`) the spool cannot open a
//! segment and the admin port stops answering, so at start-up the notification listener's
//! `server.max_connections` is fitted under the limit, keeping a reserve for everything else:
//! past its bound, new connections wait in the kernel's backlog instead of taking descriptors
//! the spool needs.

use std::io;

/// Descriptors kept for the process itself: stdio, the spool (lock, segments, readers, cursors),
/// dead letters, the sinks (file, librdkafka's sockets and wake-up pipes, AMQP), Redis, the
/// WebSocket sources and the keeper's HTTP client, with room to spare. Measured with the file
/// sink only and two workers (debug build): about 31; not yet measured with Kafka and RabbitMQ.
const BASE_RESERVE: u64 = 160;
/// Descriptors each HTTP worker's event loop holds, rounded up (measured: 3).
const PER_WORKER: u64 = 4;
/// Open connections on the admin listener (`/metrics`, `/health/*`); they come out of the reserve.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Fewest notification connections worth starting with.
const MIN_CONNECTIONS: u64 = 16;

#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    #[error("cannot read the open-file limit (RLIMIT_NOFILE): {0}")]
    Limit(#[source] io::Error),
    #[error(
        "the open-file limit (RLIMIT_NOFILE, `ulimit -n`) is {limit}, too low for \
         server.max_connections = {max_connections}: the gateway keeps {reserve} descriptors \
         for itself and needs at least {MIN_CONNECTIONS} connections; give it {needed}"
    )]
    TooLow {
        limit: u64,
        max_connections: usize,
        reserve: u64,
        needed: u64,
    },
}

/// Descriptors the process keeps besides the notification connections, with `workers` HTTP
/// workers.
pub fn reserve(workers: usize) -> u64 {
    BASE_RESERVE + ADMIN_MAX_CONNECTIONS as u64 + PER_WORKER * workers as u64
}

/// Raises the soft open-file limit toward what `max_connections` needs (never past the hard
/// limit), and returns how many notification connections fit under it: `max_connections`, or
/// fewer, with a warning naming both, when the limit cannot be raised far enough. Refuses when
/// not even [`MIN_CONNECTIONS`] fit.
pub fn fit_connections(max_connections: usize, workers: usize) -> Result<usize, DescriptorError> {
    let reserve = reserve(workers);
    let needed = (max_connections as u64).saturating_add(reserve);
    let limit = rlimit::increase_nofile_limit(needed).map_err(DescriptorError::Limit)?;
    if limit >= needed {
        return Ok(max_connections);
    }
    if limit < reserve + MIN_CONNECTIONS {
        return Err(DescriptorError::TooLow {
            limit,
            max_connections,
            reserve,
            needed,
        });
    }
    let fitted = (limit - reserve) as usize;
    tracing::warn!(
        open_file_limit = limit,
        configured = max_connections,
        fitted,
        needed,
        "server.max_connections lowered to fit the open-file limit (RLIMIT_NOFILE); raise \
         `ulimit -n` to {needed} for the configured number"
    );
    Ok(fitted)
}
