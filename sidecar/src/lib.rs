//! Twin sidecar (filled by the sidecar issue).
