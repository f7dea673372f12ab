//! Port I/O (skeleton; being written).
