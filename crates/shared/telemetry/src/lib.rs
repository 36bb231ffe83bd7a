//! Logs, metrics and the secret scrubber.
//!
//! Every log line passes through [`sanitize`] before it is written, so passwords,
//! tokens, keys and webhook secrets never reach a log sink even when a caller logs a
//! whole request body by mistake. This crate holds no business rules.

pub mod sanitize;

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (production).
    Json,
    /// Human-readable lines (embedded default).
    Text,
}

/// Installs the global subscriber once. `filter` uses `RUST_LOG` syntax
/// (`info,gpuaas_outbox=debug`); an invalid filter falls back to `info` and says so.
pub fn init_logging(format: LogFormat, filter: &str) {
    let env_filter = EnvFilter::try_new(filter).unwrap_or_else(|error| {
        eprintln!("invalid log filter {filter:?} ({error}); using \"info\"");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter).with_writer(ScrubbingWriter);
    let result = match format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Text => builder.with_target(false).with_ansi(io::stderr().is_terminal()).try_init(),
    };
    // Already installed (tests install per binary): keep the first one.
    let _ = result;
}

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed (only possible in tests): render an
            // unattached one rather than failing.
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        })
        .clone()
}

/// Writes each formatted log line to stderr after scrubbing secrets out of it.
#[derive(Clone, Copy)]
struct ScrubbingWriter;

impl<'a> MakeWriter<'a> for ScrubbingWriter {
    type Writer = LineScrubber;

    fn make_writer(&'a self) -> Self::Writer {
        LineScrubber { buffer: Vec::with_capacity(256) }
    }
}

struct LineScrubber {
    buffer: Vec<u8>,
}

impl Write for LineScrubber {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineScrubber {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.buffer);
        let clean = sanitize::scrub_line(&line);
        let _ = io::stderr().lock().write_all(clean.as_bytes());
    }
}
