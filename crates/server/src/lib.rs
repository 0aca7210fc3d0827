//! The `starling` server: configuration, listeners (MQTT over TCP and
//! WebSocket, HTTP for health and metrics) and process wiring. `main.rs`
//! is the command line on top of this library; tests call `run` directly
//! with listeners bound to port 0.

pub mod admin;
pub mod chat;
pub mod config;
pub mod http;
pub mod listener;
pub mod server;
pub mod tls;
pub mod ws;

pub use config::Config;
pub use server::{run, Addresses, Listeners};
