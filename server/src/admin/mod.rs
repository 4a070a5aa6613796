//! Subcommands that talk to a running broker over the Kafka protocol, like Kafka's
//! `kafka-topics`, `kafka-consumer-groups` and `kafka-metadata-quorum` tools: `wharf topics`,
//! `wharf group describe <group>`, `wharf cluster status`. Each subcommand is a module with its clap `Args` and a
//! `run`; [`client::AdminClient`] sends one request at a time and waits for the answer.

pub mod client;
pub mod cluster;
pub mod groups;
pub mod scrape;
pub mod topics;
