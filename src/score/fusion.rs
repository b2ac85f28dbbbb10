//! Detector ensembles: several pipelines on one channel fused into one event
//! stream by a k-of-n vote over their anomalies (`[[ensemble]]`).
//!
//! Rule (the offline definition, which the streaming state machine below
//! reproduces exactly when no member falls more than `max_lag` samples
//! behind): take every member's anomalies on the channel as inclusive index
//! intervals, merge those that overlap or touch into clusters, and keep a
//! cluster when at least `min_votes` members have an anomaly in it. The
//! fused anomaly is the whole cluster. A fused event's `max_score` is the
//! number of members that voted and its `threshold` is `min_votes`.
//!
//! Why at the event level: each member keeps its own smoothing and
//! threshold (NDT adapts to each model's error scale), so nothing has to
//! put an LSTM's forecast error and a VAE's reconstruction error on one
//! scale; a vote needs only their decisions. Measured in EVALUATION.md: a
//! 2-of-4 vote of the LSTM, the VAE, the Transformer and the persistence
//! forecaster is the best F1 on the development set.
//!
//! Streaming: members decide in index order, each at its own lag (NDT
//! decides a batch at a time; models differ in window length). A cluster
//! starts at a member's `anomaly_start`; the fused `anomaly_start` is raised
//! when the `min_votes`-th member joins. The cluster is final once no member
//! is inside an anomaly and every member has decided past its end (a
//! member's later anomaly starting there would still merge into it), or,
//! so that a member that stopped (failed model) cannot hold it forever, once
//! the members furthest ahead are `max_lag` samples past its end; then the
//! fused `anomaly_end` is raised if the cluster had the votes, else it is
//! dropped silently.
//!
//! Trusted votes (`trusted_only = true`): on each channel, a member whose
//! model raised an alarm on its own channel's train split, replayed cold
//! through the same pipeline as nominal data (config.pbtxt parameter
//! `nominal_alarms`, written by tools/nominal_alarms.py), does not vote
//! there; the vote is `min_votes` of the remaining members, or of every
//! member when fewer than `min_votes` remain. Measured in EVALUATION.md
//! ("5. Members that alarm on their own channel's nominal data").

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::channel::ScoredOutput;
use super::events::{AnomalyEvent, EventKind};

/// One ensemble (`[[ensemble]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleConfig {
    /// Name the fused events are published under (their `model`).
    pub name: String,
    /// Member models, at least two; `{channel}` stands for the channel's
    /// name, so `["lstm_{channel}", "vae_{channel}"]` pairs per-channel
    /// models on every channel that has both.
    pub models: Vec<String>,
    /// Members that must have an anomaly in a cluster for it to be raised
    /// (2 of 3: majority; 1: any member; the reference uses 2 of 4).
    pub min_votes: usize,
    /// Samples past a cluster's end after which it is decided even if a
    /// member has not caught up (a stopped member cannot hold it forever).
    #[serde(default = "default_max_lag")]
    pub max_lag: u64,
    /// Only members with no alarm on their channel's nominal data vote
    /// there (see the module doc); `false`: every member votes.
    #[serde(default)]
    pub trusted_only: bool,
}

fn default_max_lag() -> u64 {
    4_096
}

impl EnsembleConfig {
    /// The member model names for `channel`, in `models` order.
    pub fn members(&self, channel: &str) -> Vec<String> {
        self.models
            .iter()
            .map(|m| m.replace("{channel}", channel))
            .collect()
    }

    /// The members that vote on `channel`, in `models` order: every member,
    /// or with [`EnsembleConfig::trusted_only`] those not in `distrusted`
    /// (model names that alarmed on their nominal data) when at least
    /// `min_votes` of them remain.
    pub fn voters(&self, channel: &str, distrusted: &HashSet<String>) -> Vec<String> {
        let members = self.members(channel);
        if !self.trusted_only {
            return members;
        }
        let trusted: Vec<String> = members
            .iter()
            .filter(|m| !distrusted.contains(*m))
            .cloned()
            .collect();
        if trusted.len() >= self.min_votes {
            trusted
        } else {
            members
        }
    }

    /// Problems with the settings, as `(field, message)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if self.name.trim().is_empty() {
            v.push(("name", "must name the ensemble, e.g. \"majority\"".into()));
        }
        if self.models.len() < 2 {
            v.push((
                "models",
                "must list at least two models, e.g. [\"lstm_{channel}\", \"vae_{channel}\"]"
                    .into(),
            ));
        }
        if self.min_votes == 0 || self.min_votes > self.models.len() {
            v.push((
                "min_votes",
                format!(
                    "must be between 1 and the number of models ({})",
                    self.models.len()
                ),
            ));
        }
        v
    }
}

#[derive(Debug, Clone)]
struct Cluster {
    start: u64,
    start_t_ns: i64,
    /// Largest member `end` seen (members still open extend it later).
    end: u64,
    end_t_ns: i64,
    voted: Vec<bool>,
    raised: bool,
}

impl Cluster {
    fn votes(&self) -> usize {
        self.voted.iter().filter(|v| **v).count()
    }
}

/// One channel's fusion state for one ensemble.
#[derive(Debug, Clone)]
pub struct ChannelFusion {
    min_votes: usize,
    max_lag: u64,
    /// Last decided index per member.
    frontier: Vec<Option<u64>>,
    /// Per member: inside an anomaly that started at this index.
    open: Vec<Option<u64>>,
    /// Undecided clusters, in index order, disjoint and not touching.
    clusters: Vec<Cluster>,
}

impl ChannelFusion {
    /// Fresh state for `members` members.
    pub fn new(config: &EnsembleConfig, members: usize) -> Self {
        Self {
            min_votes: config.min_votes,
            max_lag: config.max_lag,
            frontier: vec![None; members],
            open: vec![None; members],
            clusters: Vec::new(),
        }
    }

    /// Observes member `member`'s output (in that member's own order) and
    /// appends the fused events it settles to `out`, in index order.
    pub fn observe(&mut self, member: usize, output: &ScoredOutput, out: &mut Vec<AnomalyEvent>) {
        match output {
            ScoredOutput::Score(s) => self.frontier[member] = Some(s.index),
            ScoredOutput::Event(e) => {
                self.frontier[member] =
                    Some(self.frontier[member].map_or(e.start, |f| f.max(e.start)));
                let end = match e.event {
                    EventKind::AnomalyStart => {
                        self.open[member] = Some(e.start);
                        (e.start, e.start_t_ns)
                    }
                    EventKind::AnomalyEnd => {
                        self.open[member] = None;
                        (e.end.unwrap_or(e.start), e.end_t_ns.unwrap_or(e.start_t_ns))
                    }
                };
                self.vote(member, (e.start, e.start_t_ns), end, out);
            }
        }
        self.settle(out);
    }

    /// Adds member `m`'s anomaly `[start, end]` (so far) to the clusters.
    fn vote(&mut self, m: usize, start: (u64, i64), end: (u64, i64), out: &mut Vec<AnomalyEvent>) {
        let touches =
            |c: &Cluster| start.0 <= c.end.saturating_add(1) && c.start <= end.0.saturating_add(1);
        let ix = match self.clusters.iter().position(touches) {
            Some(ix) => ix,
            None => {
                let ix = self.clusters.partition_point(|c| c.start < start.0);
                self.clusters.insert(
                    ix,
                    Cluster {
                        start: start.0,
                        start_t_ns: start.1,
                        end: end.0,
                        end_t_ns: end.1,
                        voted: vec![false; self.frontier.len()],
                        raised: false,
                    },
                );
                ix
            }
        };
        let c = &mut self.clusters[ix];
        if start.0 < c.start {
            (c.start, c.start_t_ns) = start;
        }
        if end.0 > c.end {
            (c.end, c.end_t_ns) = end;
        }
        c.voted[m] = true;
        // Merge the clusters it now touches (not two already raised: each
        // raised one has its own start published and gets its own end).
        while ix + 1 < self.clusters.len()
            && self.clusters[ix + 1].start <= self.clusters[ix].end.saturating_add(1)
            && !(self.clusters[ix].raised && self.clusters[ix + 1].raised)
        {
            let next = self.clusters.remove(ix + 1);
            let c = &mut self.clusters[ix];
            if next.end > c.end {
                (c.end, c.end_t_ns) = (next.end, next.end_t_ns);
            }
            c.raised |= next.raised;
            c.voted
                .iter_mut()
                .zip(next.voted)
                .for_each(|(v, n)| *v |= n);
        }
        let c = &mut self.clusters[ix];
        if !c.raised && c.votes() >= self.min_votes {
            c.raised = true;
            out.push(AnomalyEvent {
                event: EventKind::AnomalyStart,
                start: c.start,
                start_t_ns: c.start_t_ns,
                end: None,
                end_t_ns: None,
                max_score: c.votes() as f32,
                threshold: self.min_votes as f32,
                closed: None,
            });
        }
    }

    /// Decides the clusters that are final, oldest first, raising the ends
    /// of those that had the votes.
    fn settle(&mut self, out: &mut Vec<AnomalyEvent>) {
        while let Some(c) = self.clusters.first() {
            let inside =
                |s: &Option<u64>| s.is_some_and(|s| s >= c.start && s <= c.end.saturating_add(1));
            let caught_up = !self.open.iter().any(inside)
                && self.frontier.iter().all(|f| f.is_some_and(|f| f > c.end));
            let ahead = self.frontier.iter().flatten().max().copied().unwrap_or(0);
            if !(caught_up || ahead > c.end.saturating_add(self.max_lag)) {
                return;
            }
            let c = self.clusters.remove(0);
            if c.raised {
                out.push(AnomalyEvent {
                    event: EventKind::AnomalyEnd,
                    start: c.start,
                    start_t_ns: c.start_t_ns,
                    end: Some(c.end),
                    end_t_ns: Some(c.end_t_ns),
                    max_score: c.votes() as f32,
                    threshold: self.min_votes as f32,
                    closed: None,
                });
            }
        }
    }
}

/// Every ensemble's fusion state on every channel: routes each member
/// pipeline's outputs, by model and channel, to the ensembles it votes in.
#[derive(Debug, Default)]
pub struct Fuser {
    configs: Vec<EnsembleConfig>,
    /// Models that alarmed on their nominal data (see [`EnsembleConfig::voters`]).
    distrusted: HashSet<String>,
    /// Per channel, per ensemble: its voting member models there and the state.
    channels: HashMap<String, Vec<(Vec<String>, ChannelFusion)>>,
}

impl Fuser {
    /// A fuser for `configs` (validated: see [`EnsembleConfig::problems`]);
    /// `distrusted`: the models whose config.pbtxt records alarms on their
    /// nominal data, which do not vote in `trusted_only` ensembles.
    pub fn new(configs: &[EnsembleConfig], distrusted: HashSet<String>) -> Self {
        Self {
            configs: configs.to_vec(),
            distrusted,
            channels: HashMap::new(),
        }
    }

    /// Ensemble `ix`'s configuration.
    pub fn config(&self, ix: usize) -> &EnsembleConfig {
        &self.configs[ix]
    }

    /// The members of ensemble `ix` that vote on `channel`.
    pub fn voters(&self, ix: usize, channel: &str) -> Vec<String> {
        self.configs[ix].voters(channel, &self.distrusted)
    }

    /// Observes `model`'s `output` on `channel`; appends each fused event
    /// it settles, with its ensemble's index, to `out`.
    pub fn observe(
        &mut self,
        model: &str,
        channel: &str,
        output: &ScoredOutput,
        out: &mut Vec<(usize, AnomalyEvent)>,
    ) {
        if self.configs.is_empty() {
            return;
        }
        if !self.channels.contains_key(channel) {
            let states = self
                .configs
                .iter()
                .map(|e| {
                    let members = e.voters(channel, &self.distrusted);
                    let state = ChannelFusion::new(e, members.len());
                    (members, state)
                })
                .collect();
            self.channels.insert(channel.to_string(), states);
        }
        let states = self.channels.get_mut(channel).expect("inserted above");
        let mut events = Vec::new();
        for (ix, (members, state)) in states.iter_mut().enumerate() {
            if let Some(m) = members.iter().position(|name| name == model) {
                state.observe(m, output, &mut events);
                out.extend(events.drain(..).map(|e| (ix, e)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::testing::{event, score};

    fn config(min_votes: usize) -> EnsembleConfig {
        EnsembleConfig {
            name: "majority".into(),
            models: vec!["a".into(), "b".into(), "c".into()],
            min_votes,
            max_lag: 1_000,
            trusted_only: false,
        }
    }

    fn start(s: u64) -> ScoredOutput {
        event(s, None)
    }

    fn end(s: u64, e: u64) -> ScoredOutput {
        event(s, Some(e))
    }

    /// A member's outputs for one anomaly `[s, e]` then quiet scores to `to`.
    fn member(s: u64, e: u64, to: u64) -> Vec<ScoredOutput> {
        let mut v: Vec<ScoredOutput> = (0..s).map(score).collect();
        v.push(start(s));
        v.extend((s..=e).map(score));
        v.push(end(s, e));
        v.extend((e + 1..to).map(score));
        v
    }

    fn fused(
        min_votes: usize,
        members: &[Vec<ScoredOutput>],
        interleave: bool,
    ) -> Vec<(EventKind, u64, Option<u64>)> {
        let mut f = ChannelFusion::new(&config(min_votes), members.len());
        let mut out = Vec::new();
        if interleave {
            let longest = members.iter().map(Vec::len).max().unwrap();
            for i in 0..longest {
                for (m, outs) in members.iter().enumerate() {
                    if let Some(o) = outs.get(i) {
                        f.observe(m, o, &mut out);
                    }
                }
            }
        } else {
            for (m, outs) in members.iter().enumerate() {
                for o in outs {
                    f.observe(m, o, &mut out);
                }
            }
        }
        out.iter().map(|e| (e.event, e.start, e.end)).collect()
    }

    #[test]
    fn two_of_three_overlapping_anomalies_raise_one_fused_event() {
        let members = [
            member(100, 150, 400),
            member(140, 200, 400),
            Vec::from_iter((0..400).map(score)),
        ];
        for interleave in [true, false] {
            assert_eq!(
                fused(2, &members, interleave),
                vec![
                    (EventKind::AnomalyStart, 100, None),
                    (EventKind::AnomalyEnd, 100, Some(200))
                ],
                "interleaved: {interleave}"
            );
        }
    }

    #[test]
    fn a_single_vote_is_dropped_under_majority_and_kept_under_any() {
        let members = [
            member(100, 150, 400),
            (0..400).map(score).collect(),
            (0..400).map(score).collect(),
        ];
        assert!(fused(2, &members, true).is_empty());
        assert_eq!(fused(1, &members, true).len(), 2);
    }

    #[test]
    fn separate_anomalies_do_not_vote_together() {
        // a at 100..=150, b at 300..=320: two clusters of one vote each.
        let members = [
            member(100, 150, 500),
            member(300, 320, 500),
            (0..500).map(score).collect(),
        ];
        assert!(fused(2, &members, true).is_empty());
    }

    #[test]
    fn a_stopped_member_cannot_hold_a_fused_event_open() {
        // c never decides anything (its model failed): a and b still fuse and close.
        let members = [member(100, 150, 1_400), member(120, 160, 1_400), Vec::new()];
        let out = fused(2, &members, true);
        assert_eq!(out.last(), Some(&(EventKind::AnomalyEnd, 100, Some(160))));
    }

    #[test]
    fn the_fuser_routes_members_by_model_and_channel() {
        let config = EnsembleConfig {
            models: vec!["lstm_{channel}".into(), "vae_{channel}".into()],
            ..config(2)
        };
        let mut fuser = Fuser::new(&[config], HashSet::new());
        let mut out = Vec::new();
        for (model, channel) in [("lstm_A-1", "A-1"), ("vae_A-1", "A-1"), ("vae_B-1", "B-1")] {
            for o in member(10, 20, 200) {
                fuser.observe(model, channel, &o, &mut out);
            }
        }
        // A-1 has both members' votes; B-1 only one, and an unrelated model none.
        let events: Vec<(usize, EventKind, u64)> =
            out.iter().map(|(e, ev)| (*e, ev.event, ev.start)).collect();
        assert_eq!(
            events,
            vec![
                (0, EventKind::AnomalyStart, 10),
                (0, EventKind::AnomalyEnd, 10)
            ]
        );
        fuser.observe("other", "A-1", &start(5), &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn validation_names_the_fields() {
        let bad = EnsembleConfig {
            name: " ".into(),
            models: vec!["a".into()],
            min_votes: 2,
            max_lag: 1,
            trusted_only: false,
        };
        let fields: Vec<&str> = bad.problems().iter().map(|p| p.0).collect();
        assert_eq!(fields, vec!["name", "models", "min_votes"]);
        assert_eq!(config(2).members("A-1"), vec!["a", "b", "c"]);
        let per_channel = EnsembleConfig {
            models: vec!["lstm_{channel}".into(), "vae_{channel}".into()],
            ..config(2)
        };
        assert_eq!(per_channel.members("A-1"), vec!["lstm_A-1", "vae_A-1"]);
    }

    #[test]
    fn a_member_that_alarmed_on_nominal_data_does_not_vote_unless_too_few_are_left() {
        let distrusted: HashSet<String> = ["vae_A-1".to_string()].into();
        let trusted = EnsembleConfig {
            models: vec![
                "lstm_{channel}".into(),
                "vae_{channel}".into(),
                "tfm_{channel}".into(),
            ],
            trusted_only: true,
            ..config(2)
        };
        assert_eq!(
            trusted.voters("A-1", &distrusted),
            vec!["lstm_A-1", "tfm_A-1"]
        );
        assert_eq!(
            trusted.voters("B-1", &distrusted),
            vec!["lstm_B-1", "vae_B-1", "tfm_B-1"]
        );
        let all_votes = EnsembleConfig {
            trusted_only: false,
            ..trusted.clone()
        };
        assert_eq!(all_votes.voters("A-1", &distrusted).len(), 3);
        // Two of three distrusted: fewer than min_votes remain, so all vote.
        let two: HashSet<String> = ["vae_A-1".to_string(), "tfm_A-1".to_string()].into();
        assert_eq!(trusted.voters("A-1", &two).len(), 3);

        // Streaming: the distrusted VAE's anomaly is no vote on A-1, so the
        // LSTM's alone raises nothing; on B-1 the same pair raises one.
        let mut fuser = Fuser::new(&[trusted], distrusted);
        let mut out = Vec::new();
        for channel in ["A-1", "B-1"] {
            for model in ["lstm", "vae"] {
                for o in member(10, 20, 200) {
                    fuser.observe(&format!("{model}_{channel}"), channel, &o, &mut out);
                }
            }
            for o in (0..200).map(score) {
                fuser.observe(&format!("tfm_{channel}"), channel, &o, &mut out);
            }
        }
        let events: Vec<(EventKind, u64)> = out.iter().map(|(_, e)| (e.event, e.start)).collect();
        assert_eq!(
            events,
            vec![(EventKind::AnomalyStart, 10), (EventKind::AnomalyEnd, 10)]
        );
        assert_eq!(fuser.voters(0, "A-1"), vec!["lstm_A-1", "tfm_A-1"]);
    }
}
