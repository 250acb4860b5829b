//! The blocking client of the daemon's control socket: one request, one answer.

use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{Context, Result};

use magestack_agent::api::control::{Request, Response};
use magestack_agent::api::{read_message, write_message};

pub fn send(socket: &Path, request: &Request) -> Result<Response> {
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the agent at {} (is `magestack-agent run` running?)",
            socket.display()
        )
    })?;
    write_message(&stream, request).context("sending the request")?;
    read_message(&stream).context("reading the agent's answer")
}
