//! cio-gateway: RabbitMQ-backed, ordered delivery to Customer.io, and its reporting webhooks back.

pub mod config;
pub mod domain;
