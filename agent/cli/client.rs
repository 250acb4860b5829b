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
    // The agent may answer and close before reading (a refused caller): its answer is still
    // there to read even when sending failed, and says more than the broken pipe.
    let sent = write_message(&stream, request);
    match read_message(&stream) {
        Ok(response) => Ok(response),
        Err(error) => {
            sent.context("sending the request")?;
            Err(error).context("reading the agent's answer")
        }
    }
}
