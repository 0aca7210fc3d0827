//! The recorded history: one JSON object per line, each with `t` (ms since
//! the run started, from one monotonic clock), `c` (the client or `nemesis`)
//! and `k` (what happened). The checker reads only this file, so a kept
//! history can be checked again (`starling-faults check FILE`).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{json, Value};

#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
    start: Instant,
}

impl History {
    pub fn create(path: &Path) -> Result<History> {
        let f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(History { inner: Arc::new(Mutex::new(std::io::BufWriter::new(f))), start: Instant::now() })
    }

    /// Milliseconds since the run started.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    /// Records `event` (an object) with the time, the client and the kind.
    pub fn rec(&self, client: &str, kind: &str, mut event: Value) -> f64 {
        let t = self.now();
        if !event.is_object() {
            event = json!({});
        }
        event["t"] = json!((t * 10.0).round() / 10.0);
        event["c"] = json!(client);
        event["k"] = json!(kind);
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = serde_json::to_writer(&mut *w, &event);
        let _ = w.write_all(b"\n");
        t
    }

    pub fn flush(&self) {
        let _ = self.inner.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
}

pub fn load(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("line {}", i + 1)))
        .collect()
}
