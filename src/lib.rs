//! cio-gateway: RabbitMQ-backed, ordered delivery to Customer.io, and its reporting webhooks back.

pub mod actors;
pub mod app;
pub mod broker;
pub mod cli;
pub mod commands;
pub mod config;
pub mod customerio;
pub mod demo;
pub mod dlq_admin;
pub mod domain;
pub mod http;
pub mod preferences;
pub mod publisher;
pub mod recent;
pub mod retry;
pub mod sandbox;
pub mod telemetry;
pub mod warehouse;
