//! Health-check probes: one attempt against one real server, bounded by a timeout.
