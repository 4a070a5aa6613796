//! Subcommands that talk to a running broker over the Kafka protocol, like Kafka's
//! `kafka-topics` and `kafka-consumer-groups` tools: `wharf topics`, and more to come
//! (`wharf group describe <group>`). Each subcommand is a module with its clap `Args` and a
//! `run`; [`client::AdminClient`] sends one request at a time and waits for the answer.

pub mod client;
pub mod groups;
pub mod topics;
