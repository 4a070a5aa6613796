//! The wharf broker: shards, connections, Kafka request handlers, metadata and config.
//! Depends on `wharf-engine` for storage and `wharf-protocol` for wire formats; nothing
//! depends on it.
