//! The one ordered stream of events of a run.
//!
//! Publishing never waits for a subscriber: the event is stamped, written to
//! `events.jsonl` with one `write` call (so `kill -9` leaves whole lines only),
//! appended to the in-memory history and announced through a `watch` channel
//! that holds only the latest count. A slow subscriber therefore costs a
//! publisher nothing; it catches up by reading the history from its cursor.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::event::{Event, NewEvent, Source};

struct Inner {
    started: Instant,
    started_wall: OffsetDateTime,
    /// Serialises stamping and writing so `seq` order, time order and file order agree.
    writer: Mutex<Writer>,
    path: Option<PathBuf>,
    history: RwLock<Vec<Arc<Event>>>,
    count: watch::Sender<u64>,
}

/// The publishing side, behind one lock: the file, the next `seq`, and a
/// line buffer reused from event to event (no allocation per line).
struct Writer {
    file: Option<File>,
    next_seq: u64,
    line: Vec<u8>,
}

/// Cheap to clone; every clone publishes to the same stream.
#[derive(Clone)]
pub struct Timeline {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeline")
            .field("path", &self.inner.path)
            .field("len", &self.len())
            .finish()
    }
}

impl Timeline {
    /// A timeline that also appends every event to `path` (created, truncated).
    pub fn with_file(path: &Path) -> std::io::Result<Timeline> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Self::build(Some(file), Some(path.to_owned())))
    }

    /// A timeline kept in memory only (unit tests, `rig serve` without a folder).
    pub fn in_memory() -> Timeline {
        Self::build(None, None)
    }

    fn build(file: Option<File>, path: Option<PathBuf>) -> Timeline {
        let (count, _) = watch::channel(0);
        Timeline {
            inner: Arc::new(Inner {
                started: Instant::now(),
                started_wall: OffsetDateTime::now_utc(),
                writer: Mutex::new(Writer {
                    file,
                    next_seq: 0,
                    line: Vec::new(),
                }),
                path,
                history: RwLock::new(Vec::new()),
                count,
            }),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    pub fn started_wall(&self) -> OffsetDateTime {
        self.inner.started_wall
    }

    /// Microseconds since the run started, on the same clock as `Event::t_us`.
    pub fn now_us(&self) -> u64 {
        self.inner.started.elapsed().as_micros() as u64
    }

    pub fn publish(&self, event: NewEvent) -> Arc<Event> {
        // The writer lock orders stamping, the file and the history; the
        // history's own lock is taken only to push, so subscribers reading
        // it never wait for a serialisation or a write to the file.
        let mut guard = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let writer = &mut *guard;
        let seq = writer.next_seq;
        let t_us = self.now_us();
        let wall = self.inner.started_wall + time::Duration::microseconds(t_us as i64);
        let stamped = Arc::new(Event {
            seq,
            t_us,
            wall: wall.format(&Rfc3339).unwrap_or_default(),
            source: event.source,
            phone: event.phone,
            kind: event.kind,
            fields: event.fields,
        });
        if let Some(file) = writer.file.as_mut() {
            // One `write` call per whole line, so `kill -9` leaves whole lines only.
            writer.line.clear();
            if serde_json::to_writer(&mut writer.line, &*stamped).is_ok() {
                writer.line.push(b'\n');
                if let Err(error) = file.write_all(&writer.line) {
                    tracing::error!(%error, "cannot append to events.jsonl");
                }
            }
            // A rare huge event must not pin its buffer for the rest of the run.
            if writer.line.capacity() > 64 * 1024 {
                writer.line = Vec::new();
            }
        }
        self.inner
            .history
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(stamped.clone());
        writer.next_seq = seq + 1;
        drop(guard);
        self.inner.count.send_replace(seq + 1);
        stamped
    }

    /// Shorthand for `publish(NewEvent::new(..))` with fields from a payload.
    pub fn emit(
        &self,
        source: Source,
        kind: &str,
        phone: Option<&str>,
        payload: &impl serde::Serialize,
    ) -> Arc<Event> {
        self.publish(
            NewEvent::new(source, kind)
                .phone(phone)
                .fields_from(payload),
        )
    }

    pub fn len(&self) -> usize {
        self.inner
            .history
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events with `seq >= from`.
    pub fn since(&self, from: u64) -> Vec<Arc<Event>> {
        let history = self.inner.history.read().unwrap_or_else(|p| p.into_inner());
        history
            .get(from as usize..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    pub fn snapshot(&self) -> Vec<Arc<Event>> {
        self.since(0)
    }

    /// A cursor that sees every event published from now on (or from `from`).
    pub fn reader_from(&self, from: u64) -> TimelineReader {
        TimelineReader {
            timeline: self.clone(),
            next: from,
            changes: self.inner.count.subscribe(),
        }
    }

    pub fn reader(&self) -> TimelineReader {
        self.reader_from(self.len() as u64)
    }
}

/// A subscriber's cursor into the timeline. Never makes a publisher wait.
pub struct TimelineReader {
    timeline: Timeline,
    next: u64,
    changes: watch::Receiver<u64>,
}

impl TimelineReader {
    /// Waits for the next event; `None` only if the timeline is gone.
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        loop {
            if let Some(event) = self.try_next() {
                return Some(event);
            }
            if self.changes.changed().await.is_err() {
                return self.try_next();
            }
        }
    }

    pub fn try_next(&mut self) -> Option<Arc<Event>> {
        let history = self
            .timeline
            .inner
            .history
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let event = history.get(self.next as usize).cloned();
        if event.is_some() {
            self.next += 1;
        }
        event
    }

    pub fn position(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    #[test]
    fn file_lines_are_whole_events_in_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let timeline = Timeline::with_file(&path).unwrap();
        for i in 0..50 {
            timeline.publish(NewEvent::new(Source::Rig, "test.tick").field("i", i));
        }
        let lines: Vec<String> = std::io::BufReader::new(File::open(&path).unwrap())
            .lines()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.len(), 50);
        for (i, line) in lines.iter().enumerate() {
            let event: Event = serde_json::from_str(line).unwrap();
            assert_eq!(event.seq, i as u64);
            assert_eq!(event.field_u64("i"), Some(i as u64));
        }
    }

    #[tokio::test]
    async fn slow_reader_does_not_block_publishers_and_misses_nothing() {
        let timeline = Timeline::in_memory();
        let mut reader = timeline.reader();
        // Publish far more than any channel buffer would hold before reading.
        for i in 0..10_000u64 {
            timeline.publish(NewEvent::new(Source::Rig, "test.tick").field("i", i));
        }
        for i in 0..10_000u64 {
            let event = reader.next().await.unwrap();
            assert_eq!(event.field_u64("i"), Some(i));
        }
        assert!(reader.try_next().is_none());
    }

    #[tokio::test]
    async fn reader_wakes_on_publish_from_another_task() {
        let timeline = Timeline::in_memory();
        let mut reader = timeline.reader();
        let publisher = timeline.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            publisher.publish(NewEvent::new(Source::Dhcp, "dhcp.ack"));
        });
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), reader.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.kind, "dhcp.ack");
    }

    #[test]
    fn timestamps_never_go_backwards() {
        let timeline = Timeline::in_memory();
        let events: Vec<_> = (0..1000)
            .map(|_| timeline.publish(NewEvent::new(Source::Rig, "t")))
            .collect();
        assert!(events
            .windows(2)
            .all(|w| w[0].t_us <= w[1].t_us && w[0].seq + 1 == w[1].seq));
    }
}
