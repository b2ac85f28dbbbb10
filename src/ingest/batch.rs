//! What every source hands to the router: a [`SampleBatch`].
//!
//! MQTT messages and serial reads arrive differently (one payload on a
//! topic, a stream of frames on a link) but leave their source the same
//! way: decoded and checked once, tagged with their channel, with the
//! decode rejects beside them, bound for the pipelines that take them. The
//! router then has one path for every sample, whatever brought it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::decode::{RawSample, Reject};

/// Nanoseconds since the Unix epoch now: the receive time sources stamp on
/// what they read.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Where a batch came from, for logs and the per-source counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An MQTT message on this topic.
    Mqtt {
        /// The topic it was published on.
        topic: Arc<str>,
    },
    /// A read from the serial link of this name ([`crate::ingest::serial::SerialConfig::label`]).
    Serial {
        /// The link's name.
        link: Arc<str>,
    },
    /// Replayed from the state journal at start ([`crate::journal`]): taken
    /// by the run before, which counted it.
    Journal,
}

impl fmt::Display for Origin {
    /// The topic, or `serial link <name>`: the `<topic>` of the log line
    /// `rejected input on <topic>: ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Mqtt { topic } => f.write_str(topic),
            Origin::Serial { link } => write!(f, "serial link {link}"),
            Origin::Journal => f.write_str("the state journal"),
        }
    }
}

/// One decoding of a source's input and the pipelines it is for.
///
/// An input is decoded once per distinct payload format and
/// [`DecodeLimits`](super::DecodeLimits) among the pipelines it is for:
/// once, unless pipelines on the same topic differ in format or features.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoding {
    /// Indices of the pipelines (in config order) that take these samples.
    pub pipelines: Vec<usize>,
    /// Samples with their channel, in input order.
    pub samples: Vec<(Arc<str>, RawSample)>,
    /// What yielded no sample, by reason.
    pub rejects: Vec<Reject>,
}

/// Telemetry from one source, decoded, on its way to the router.
#[derive(Debug)]
pub struct SampleBatch {
    /// The topic or serial link it came from.
    pub origin: Origin,
    /// When it was received (the latency metric starts here).
    pub received: Instant,
    /// The same moment in ns since the Unix epoch: the time stamp of a
    /// sample that carries none.
    pub received_ns: i64,
    /// Size of the input in bytes (the MQTT payload; a serial link counts
    /// its own bytes).
    pub bytes: usize,
    /// The input decoded for its pipelines; empty when it is for none (a
    /// topic no pipeline's filters match).
    pub decoded: Vec<Decoding>,
    /// MQTT QoS 1 and 2: the packet header to acknowledge once the router
    /// has taken the samples ([`crate::ingest::mqtt::acknowledge`]); `None`
    /// for QoS 0 and serial links. Shared by the parts of a message split
    /// over pipeline tasks: see [`Ack`].
    pub ack: Option<Ack>,
    /// Whether this batch is the message for the input counters: `false`
    /// for every part but the first of a message split over pipeline tasks
    /// ([`SampleBatch::split`]), so the message is counted once.
    pub message: bool,
}

/// A QoS 1/2 message's acknowledgement, shared by the parts of the message
/// that pipeline tasks hold. Each holder releases its share with
/// [`Ack::release`]; the one that releases last gets the header and
/// acknowledges, so the broker forgets the message only once every task
/// that took a part of it is done with it. A share dropped without release
/// (a part left in a queue when the service stops) marks the message lost
/// for this run: no share then acknowledges it, and the broker sends it
/// again to the next run of the persistent session.
#[derive(Debug, Clone)]
pub struct Ack(Option<Arc<AckShared>>);

#[derive(Debug)]
struct AckShared {
    header: rumqttc::Publish,
    /// A share was dropped without release.
    lost: AtomicBool,
}

impl Ack {
    /// The acknowledgement of `header`, not yet shared.
    pub fn new(header: rumqttc::Publish) -> Self {
        Self(Some(Arc::new(AckShared {
            header,
            lost: AtomicBool::new(false),
        })))
    }

    /// The header acknowledged (for logs and tests).
    pub fn header(&self) -> Option<&rumqttc::Publish> {
        self.0.as_ref().map(|s| &s.header)
    }

    /// Gives up this share; returns the header to acknowledge when it was
    /// the last one and no share was lost.
    pub fn release(mut self) -> Option<rumqttc::Publish> {
        let shared = Arc::into_inner(self.0.take()?)?;
        (!shared.lost.into_inner()).then_some(shared.header)
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(shared) = &self.0 {
            shared.lost.store(true, Ordering::Release);
        }
    }
}

/// Where each pipeline (by index in config order) is served: the pipeline
/// task that owns it and its index among that task's pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Index of the pipeline task.
    pub task: usize,
    /// Index of the pipeline among the task's own, in config order.
    pub local: usize,
}

impl SampleBatch {
    /// Splits the batch by the pipeline task that owns each of its
    /// pipelines (`owners`, by pipeline index in config order), rewriting
    /// pipeline indices to the task's own: one part per task, in task
    /// order. Samples a decoding feeds to pipelines of several tasks are
    /// copied to each; its rejects, the bytes and the message count go
    /// with the first part only, and every part shares the
    /// acknowledgement. A batch for no pipeline (an unknown topic) goes to
    /// task 0 whole, whose router rejects it.
    ///
    /// # Panics
    /// If a pipeline index is not in `owners` (the sources are built from
    /// the same configuration).
    pub fn split(mut self, owners: &[Owner]) -> Vec<(usize, SampleBatch)> {
        if self.decoded.is_empty() {
            return vec![(0, self)];
        }
        let ack = self.ack.take();
        let mut parts: Vec<(usize, SampleBatch)> = Vec::new();
        for decoding in std::mem::take(&mut self.decoded) {
            let mut rejects = Some(decoding.rejects);
            let mut tasks: Vec<usize> = decoding
                .pipelines
                .iter()
                .map(|&ix| owners[ix].task)
                .collect();
            tasks.sort_unstable();
            tasks.dedup();
            let last = tasks.len() - 1;
            let mut samples = Some(decoding.samples);
            for (n, task) in tasks.into_iter().enumerate() {
                let pipelines = (decoding.pipelines.iter())
                    .filter(|&&ix| owners[ix].task == task)
                    .map(|&ix| owners[ix].local)
                    .collect();
                let samples = if n == last {
                    samples.take().unwrap_or_default()
                } else {
                    samples.clone().unwrap_or_default()
                };
                let part = Decoding {
                    pipelines,
                    samples,
                    rejects: rejects.take().unwrap_or_default(),
                };
                match parts.iter_mut().find(|(t, _)| *t == task) {
                    Some((_, b)) => b.decoded.push(part),
                    None => parts.push((task, self.part(part))),
                }
            }
        }
        parts.sort_by_key(|(task, _)| *task);
        for (_, part) in parts.iter_mut().skip(1) {
            part.message = false;
            part.bytes = 0;
            part.ack.clone_from(&ack);
        }
        parts[0].1.ack = ack;
        parts
    }

    /// A batch like this one (origin, times, bytes) with `decoding` alone.
    fn part(&self, decoding: Decoding) -> SampleBatch {
        SampleBatch {
            origin: self.origin.clone(),
            received: self.received,
            received_ns: self.received_ns,
            bytes: self.bytes,
            decoded: vec![decoding],
            ack: None,
            message: true,
        }
    }
}

/// Why [`Dispatch::try_send`] did not take a batch.
#[derive(Debug)]
pub enum Refused {
    /// A pipeline task's queue it was bound for is full: the whole batch
    /// is dropped (no part is queued); the message's header, to
    /// acknowledge by the overload policy, is returned.
    Full(Option<rumqttc::Publish>),
    /// The pipeline tasks are gone (the service is stopping).
    Closed,
}

/// The pipeline tasks' inbound queues as a source sees them: one bounded
/// queue per task; a batch goes to the tasks that own its pipelines, split
/// by [`SampleBatch::split`] when it is for more than one.
#[derive(Debug, Clone)]
pub struct Dispatch {
    queues: Vec<mpsc::Sender<SampleBatch>>,
    owners: Arc<[Owner]>,
}

impl Dispatch {
    /// Sends to `queues` (one per pipeline task), each pipeline's batches
    /// going to its owner in `owners` (by pipeline index in config order).
    ///
    /// # Panics
    /// If `queues` is empty, or an owner's task is not one of them.
    pub fn new(queues: Vec<mpsc::Sender<SampleBatch>>, owners: Arc<[Owner]>) -> Self {
        assert!(!queues.is_empty(), "at least one pipeline task");
        assert!(owners.iter().all(|o| o.task < queues.len()));
        Self { queues, owners }
    }

    /// One queue, owning every pipeline under its own index (one pipeline
    /// task, or a test's channel): batches go through unchanged.
    fn direct(&self) -> bool {
        self.queues.len() == 1
    }

    /// Queues `batch` now or not at all: every part, or none when a queue
    /// it is bound for is full (the overload policy of a source that must
    /// never wait, the MQTT event loop).
    ///
    /// # Errors
    /// [`Refused`]: a queue is full or closed.
    pub fn try_send(&self, batch: SampleBatch) -> Result<(), Refused> {
        if self.direct() {
            return self.queues[0].try_send(batch).map_err(|e| match e {
                mpsc::error::TrySendError::Full(b) => Refused::Full(b.ack.and_then(Ack::release)),
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            });
        }
        let parts = batch.split(&self.owners);
        let mut permits = Vec::with_capacity(parts.len());
        for (task, _) in &parts {
            match self.queues[*task].try_reserve() {
                Ok(permit) => permits.push(permit),
                Err(mpsc::error::TrySendError::Full(())) => {
                    // Every share released, none lost: the last gives the header.
                    let shares = parts.into_iter().filter_map(|(_, p)| p.ack);
                    let header = shares.filter_map(Ack::release).last();
                    return Err(Refused::Full(header));
                }
                Err(mpsc::error::TrySendError::Closed(())) => return Err(Refused::Closed),
            }
        }
        for (permit, (_, part)) in permits.into_iter().zip(parts) {
            permit.send(part);
        }
        Ok(())
    }

    /// Queues `batch`, waiting for room in each queue it is bound for (the
    /// policy of a source that can wait, a serial link).
    ///
    /// # Errors
    /// [`Refused::Closed`] once the pipeline tasks are gone.
    pub async fn send(&self, batch: SampleBatch) -> Result<(), Refused> {
        let parts = if self.direct() {
            vec![(0, batch)]
        } else {
            batch.split(&self.owners)
        };
        for (task, part) in parts {
            self.queues[task]
                .send(part)
                .await
                .map_err(|_| Refused::Closed)?;
        }
        Ok(())
    }
}

impl From<mpsc::Sender<SampleBatch>> for Dispatch {
    /// One pipeline task that owns every pipeline under its own index.
    fn from(queue: mpsc::Sender<SampleBatch>) -> Self {
        Self::new(vec![queue], Arc::from([]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::RejectReason;

    fn header(pkid: u16) -> rumqttc::Publish {
        let mut p = rumqttc::Publish::new("t/A-1", rumqttc::QoS::AtLeastOnce, vec![]);
        p.pkid = pkid;
        p
    }

    fn sample(v: f32) -> (Arc<str>, RawSample) {
        let values = vec![v];
        (
            Arc::from("A-1"),
            RawSample {
                t_ns: None,
                seq: None,
                values,
            },
        )
    }

    /// Decodings for pipelines `[0, 1, 2]` and `[3]`, with a reject on the first.
    fn batch(pkid: u16) -> SampleBatch {
        SampleBatch {
            origin: Origin::Mqtt {
                topic: Arc::from("t/A-1"),
            },
            received: Instant::now(),
            received_ns: 0,
            bytes: 40,
            decoded: vec![
                Decoding {
                    pipelines: vec![0, 1, 2],
                    samples: vec![sample(1.0), sample(2.0)],
                    rejects: vec![Reject::new(RejectReason::NonFinite, "x")],
                },
                Decoding {
                    pipelines: vec![3],
                    samples: vec![sample(3.0)],
                    rejects: vec![],
                },
            ],
            ack: Some(Ack::new(header(pkid))),
            message: true,
        }
    }

    /// Pipelines 0 and 2 on task 0, 1 and 3 on task 1.
    fn owners() -> Arc<[Owner]> {
        let o = |task, local| Owner { task, local };
        Arc::from([o(0, 0), o(1, 0), o(0, 1), o(1, 1)])
    }

    #[test]
    fn a_batch_is_split_by_task_with_task_local_pipelines_and_counted_once() {
        let parts = batch(1).split(&owners());
        let tasks: Vec<usize> = parts.iter().map(|(t, _)| *t).collect();
        assert_eq!(tasks, vec![0, 1]);
        let (a, b) = (&parts[0].1, &parts[1].1);
        assert_eq!(a.decoded.len(), 1);
        assert_eq!(a.decoded[0].pipelines, vec![0, 1]);
        assert_eq!(
            b.decoded
                .iter()
                .map(|d| d.pipelines.clone())
                .collect::<Vec<_>>(),
            vec![vec![0], vec![1]]
        );
        // Both tasks get the shared decoding's samples; its reject goes once.
        assert_eq!(a.decoded[0].samples.len(), 2);
        assert_eq!(b.decoded[0].samples.len(), 2);
        assert_eq!(a.decoded[0].rejects.len(), 1);
        assert!(b.decoded[0].rejects.is_empty());
        assert_eq!((a.message, a.bytes), (true, 40));
        assert_eq!((b.message, b.bytes), (false, 0));
    }

    #[test]
    fn the_last_share_released_acknowledges_and_a_dropped_share_prevents_it() {
        let mut parts = batch(7).split(&owners());
        let (b, a) = (parts.pop().unwrap().1, parts.pop().unwrap().1);
        assert_eq!(
            a.ack.unwrap().release().map(|h| h.pkid),
            None,
            "task 1 still holds it"
        );
        assert_eq!(b.ack.unwrap().release().map(|h| h.pkid), Some(7));

        let mut parts = batch(8).split(&owners());
        let (b, a) = (parts.pop().unwrap().1, parts.pop().unwrap().1);
        drop(a); // left in a queue at stop
        assert_eq!(
            b.ack.unwrap().release().map(|h| h.pkid),
            None,
            "the broker sends it again"
        );
    }

    #[test]
    fn a_batch_for_no_pipeline_goes_whole_to_the_first_task() {
        let mut b = batch(1);
        b.decoded.clear();
        let parts = b.split(&owners());
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0, 0);
        assert!(parts[0].1.ack.is_some() && parts[0].1.message);
    }

    #[test]
    fn a_message_is_queued_on_every_task_it_is_for_or_on_none() {
        let (tx0, mut rx0) = mpsc::channel(4);
        let (tx1, mut rx1) = mpsc::channel(1);
        let dispatch = Dispatch::new(vec![tx0, tx1], owners());
        dispatch.try_send(batch(1)).unwrap();
        // Task 1's queue is now full: the next message is dropped whole.
        match dispatch.try_send(batch(2)) {
            Err(Refused::Full(header)) => assert_eq!(header.map(|h| h.pkid), Some(2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rx0.try_recv()
                .unwrap()
                .ack
                .and_then(|a| a.header().map(|h| h.pkid)),
            Some(1)
        );
        assert!(
            rx0.try_recv().is_err(),
            "no part of the dropped message queued"
        );
        assert!(rx1.try_recv().is_ok());
        drop((rx0, rx1));
        assert!(matches!(dispatch.try_send(batch(3)), Err(Refused::Closed)));
    }
}
