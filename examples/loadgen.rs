//! The load generator behind BENCHMARKS.md's end-to-end figures: publishes
//! real SMAP telemetry to a broker on a seeded arrival trace (Poisson,
//! bursty or uniform) and times each sample from its publish to the arrival
//! of its result.
//!
//! Modes, each timed the same way on the same trace:
//! - `gsinfer`: samples on `telemetry/SMAP/<ch>`, results are gsinfer's
//!   scores on `gsinfer/<model>/<ch>/score` (matched by the time stamp `t`);
//! - `echo`: the broker's own floor, one hop: samples on
//!   `loadgen/echo/<ch>`, subscribed back;
//! - `relay`: the floor of any MQTT service, two hops: a relay client in
//!   this process takes `telemetry/SMAP/+` and republishes each message
//!   unchanged on `loadgen/relay/<ch>`.
//!
//! For a forecaster (`--forecast`) a window's result is the score of the
//! *next* sample, so the latency of the window ending at sample i is
//! `score(i + 1) received − sample i published`; it is exact when sample
//! i + 1 reached gsinfer before the forecast was done, else an upper bound
//! (counted as `gap_bound`).
//!
//! ```sh
//! cargo run --release --example loadgen -- --port 1883 --mode gsinfer --model smap_lstm \
//!     --forecast --channels 2 --rate 1000 --arrivals poisson --seconds 30 --out lat.csv
//! ```
//!
//! Prints one JSON line; `--out` gets `send_s,latency_ms` per result (send
//! time from the trace start), the raw material of the plots.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rand::{Rng, SeedableRng};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

const START_NS: i64 = 1_514_764_800_000_000_000;
const STEP_NS: i64 = 60_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Gsinfer,
    Echo,
    Relay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Arrivals {
    /// Exponential gaps: a Poisson process of rate `--rate`.
    Poisson,
    /// Bursts of `--burst` samples back to back, the bursts a Poisson
    /// process of rate `--rate / --burst`.
    Bursty,
    /// Equal gaps.
    Uniform,
}

/// Publishes SMAP telemetry on an arrival trace and times the results.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    #[arg(long, value_enum, default_value_t = Mode::Gsinfer)]
    mode: Mode,
    /// Model whose scores are the results (gsinfer mode).
    #[arg(long, default_value = "smap_lstm")]
    model: String,
    /// The model forecasts: a window's result is the next sample's score.
    #[arg(long)]
    forecast: bool,
    /// Data set root (telemanom layout).
    #[arg(long, env = "GSINFER_DATA_DIR")]
    data_dir: PathBuf,
    /// Number of channels (the first N test channels, by name), fed round-robin.
    #[arg(long, default_value_t = 2)]
    channels: usize,
    /// Mean samples per second, all channels together.
    #[arg(long)]
    rate: f64,
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    arrivals: Arrivals,
    /// Samples per burst (bursty arrivals).
    #[arg(long, default_value_t = 32)]
    burst: usize,
    /// Seconds of traffic on the trace.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Seed of the trace: the same seed gives the same trace.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Samples per channel sent first at `--prefill-rate`, untimed, so
    /// every channel's first window is full when timing starts.
    #[arg(long, default_value_t = 0)]
    prefill: usize,
    #[arg(long, default_value_t = 2000.0)]
    prefill_rate: f64,
    /// Sample number (time stamp and `seq`) of each channel's first sample:
    /// a run that continues an earlier one against the same gsinfer
    /// (tools/soak.py) starts past it, so time keeps moving forward.
    #[arg(long, default_value_t = 0)]
    start_sample: u64,
    /// QoS of the telemetry messages.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Seconds to wait for the last results.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Write `send_s,latency_ms` per result here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Free text copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// Leave Nagle's algorithm on for this generator's sockets (rumqttc's
    /// default); by default they set TCP_NODELAY, as gsinfer does.
    #[arg(long)]
    nagle: bool,
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The trace: (offset from the start in ns) per arrival, in order.
fn trace(args: &Args) -> Vec<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut exp = |rate: f64| -> f64 { -(1.0 - rng.random::<f64>()).ln() / rate };
    let end = args.seconds;
    let mut out = Vec::new();
    let mut t = 0.0;
    match args.arrivals {
        Arrivals::Uniform => {
            while t < end {
                out.push((t * 1e9) as u64);
                t += 1.0 / args.rate;
            }
        }
        Arrivals::Poisson => loop {
            t += exp(args.rate);
            if t >= end {
                break;
            }
            out.push((t * 1e9) as u64);
        },
        Arrivals::Bursty => loop {
            t += exp(args.rate / args.burst as f64);
            if t >= end {
                break;
            }
            out.extend(std::iter::repeat_n((t * 1e9) as u64, args.burst));
        },
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A connected client with its event loop on a thread; `on_publish` sees
/// every incoming message.
fn connect(
    args: &Args,
    role: &str,
    subscribe: &[String],
    mut on_publish: impl FnMut(&Client, &str, &[u8]) + Send + 'static,
    stop: Arc<AtomicBool>,
) -> (Client, thread::JoinHandle<()>) {
    let id = format!("loadgen-{role}-{}", std::process::id());
    let mut options = MqttOptions::new(id, args.host.clone(), args.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = Client::new(options, 65_536);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(!args.nagle);
    connection.eventloop.set_network_options(network);
    let subscribed = Arc::new(AtomicBool::new(subscribe.is_empty()));
    let filters = subscribe.to_vec();
    let handle = {
        let (client, subscribed) = (client.clone(), Arc::clone(&subscribed));
        let role = role.to_string();
        thread::Builder::new()
            .name(format!("loadgen-{role}"))
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match connection.recv_timeout(Duration::from_millis(50)) {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                            for f in &filters {
                                client
                                    .try_subscribe(f.clone(), QoS::AtMostOnce)
                                    .expect("subscribe");
                            }
                        }
                        Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                            subscribed.store(true, Ordering::Release)
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            on_publish(&client, &p.topic, &p.payload)
                        }
                        Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
                        Ok(Err(e)) => {
                            eprintln!("loadgen {role}: {e}");
                            thread::sleep(Duration::from_millis(100));
                        }
                        Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
            .expect("spawn")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !subscribed.load(Ordering::Acquire) {
        assert!(
            Instant::now() < deadline,
            "{role}: no SUBACK from the broker"
        );
        thread::sleep(Duration::from_millis(5));
    }
    (client, handle)
}

#[derive(serde::Deserialize)]
struct Stamped {
    t: i64,
}

fn main() {
    let args = Args::parse();
    let mut names = gsinfer::eval::list_channels(&args.data_dir).expect("channels of the data set");
    assert!(
        names.len() >= args.channels,
        "the data set has {} channels",
        names.len()
    );
    names.truncate(args.channels);
    let data: Vec<Vec<Vec<f32>>> = names
        .iter()
        .map(|c| gsinfer::eval::read_channel(&args.data_dir, "test", c).expect("channel data"))
        .collect();
    let arrivals = trace(&args);
    let total = arrivals.len();
    let n_ch = names.len();
    let per_channel = total.div_ceil(n_ch) + args.prefill + 1;

    // Send times (ns from `base`) by channel and sample number; u64::MAX = not sent.
    let base = Instant::now();
    let sent: Arc<Vec<Vec<AtomicU64>>> = Arc::new(
        (0..n_ch)
            .map(|_| (0..per_channel).map(|_| AtomicU64::new(u64::MAX)).collect())
            .collect(),
    );
    // (channel, sample number, received ns from `base`).
    let received: Arc<Mutex<Vec<(usize, u64, u64)>>> =
        Arc::new(Mutex::new(Vec::with_capacity(total)));
    let index: Arc<HashMap<String, usize>> = Arc::new(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));

    let (result_filter, publish_prefix) = match args.mode {
        Mode::Gsinfer => (format!("gsinfer/{}/+/score", args.model), "telemetry/SMAP"),
        Mode::Echo => ("loadgen/echo/+".to_string(), "loadgen/echo"),
        Mode::Relay => ("loadgen/relay/+".to_string(), "telemetry/SMAP"),
    };
    let offset = args.start_sample;
    let subscriber = {
        let (received, index) = (Arc::clone(&received), Arc::clone(&index));
        connect(
            &args,
            "sub",
            &[result_filter],
            move |_, topic, payload| {
                let now = base.elapsed().as_nanos() as u64;
                let mut levels = topic.rsplit('/');
                let last = levels.next().unwrap_or("");
                let channel = if last == "score" {
                    levels.next().unwrap_or("")
                } else {
                    last
                };
                let (Some(&ch), Ok(s)) = (
                    index.get(channel),
                    serde_json::from_slice::<Stamped>(payload),
                ) else {
                    return;
                };
                let Some(k) = (((s.t - START_NS) / STEP_NS) as u64).checked_sub(offset) else {
                    return;
                };
                received.lock().unwrap().push((ch, k, now));
            },
            Arc::clone(&stop),
        )
    };
    let relay = (args.mode == Mode::Relay).then(|| {
        connect(
            &args,
            "relay",
            &["telemetry/SMAP/+".to_string()],
            |client, topic, payload| {
                let channel = topic.rsplit('/').next().unwrap_or("");
                let _ = client.try_publish(
                    format!("loadgen/relay/{channel}"),
                    QoS::AtMostOnce,
                    false,
                    payload.to_vec(),
                );
            },
            Arc::clone(&stop),
        )
    });
    let (publisher, pub_loop) = connect(&args, "pub", &[], |_, _, _| {}, Arc::clone(&stop));
    let q = qos(args.qos);
    let payload = |ch: usize, k: usize| -> Vec<u8> {
        let rows = &data[ch];
        let n = k as u64 + offset;
        let v = &rows[n as usize % rows.len()];
        serde_json::to_vec(
            &serde_json::json!({ "t": START_NS + n as i64 * STEP_NS, "seq": n, "v": v }),
        )
        .unwrap()
    };
    let topics: Vec<String> = names
        .iter()
        .map(|n| format!("{publish_prefix}/{n}"))
        .collect();

    // Prefill, untimed.
    let mut next = vec![0usize; n_ch];
    if args.prefill > 0 {
        let gap = Duration::from_secs_f64(1.0 / args.prefill_rate);
        for _ in 0..args.prefill {
            for ch in 0..n_ch {
                publisher
                    .publish(&topics[ch], q, false, payload(ch, next[ch]))
                    .expect("publish");
                next[ch] += 1;
                thread::sleep(gap);
            }
        }
        thread::sleep(Duration::from_secs(2));
    }
    let first = next.clone();
    received.lock().unwrap().clear();

    // The timed trace.
    let start = base.elapsed().as_nanos() as u64;
    for (i, &due) in arrivals.iter().enumerate() {
        let ch = i % n_ch;
        let k = next[ch];
        next[ch] += 1;
        let body = payload(ch, k);
        let now = base.elapsed().as_nanos() as u64;
        if start + due > now {
            thread::sleep(Duration::from_nanos(start + due - now));
        }
        sent[ch][k].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        publisher
            .publish(&topics[ch], q, false, body)
            .expect("publish");
    }
    let elapsed_s = (base.elapsed().as_nanos() as u64 - start) as f64 / 1e9;
    // Wait for the results to stop coming.
    let lag = usize::from(args.forecast && args.mode == Mode::Gsinfer);
    let expected = total.saturating_sub(lag * n_ch);
    let deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    let mut last_count = 0;
    let mut quiet = Instant::now();
    while Instant::now() < deadline {
        let count = received.lock().unwrap().len();
        if count >= expected {
            break;
        }
        if count != last_count {
            last_count = count;
            quiet = Instant::now();
        } else if quiet.elapsed() > Duration::from_secs(3) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = publisher.disconnect();
    let _ = pub_loop.join();
    let _ = subscriber.1.join();
    if let Some((_, h)) = relay {
        let _ = h.join();
    }

    // Latency per result: window ending at sample k − lag, published → result received.
    let got = received.lock().unwrap();
    // Results per second over the second half of the trace: the service's
    // steady rate (under overload, its capacity).
    let half = start + (args.seconds * 0.5e9) as u64;
    let end = start + (args.seconds * 1e9) as u64;
    let second_half = got.iter().filter(|r| r.2 >= half && r.2 < end).count();
    let mut lat = Vec::with_capacity(got.len());
    let mut rows = Vec::with_capacity(got.len());
    let mut gap_bound = 0usize;
    for &(ch, k, at) in got.iter() {
        let k = k as usize;
        if k < first[ch] + lag || k >= per_channel {
            continue;
        }
        let window_end = sent[ch][k - lag].load(Ordering::Relaxed);
        if window_end == u64::MAX {
            continue;
        }
        if lag == 1 {
            let next_sample = sent[ch][k].load(Ordering::Relaxed);
            // The score left as soon as sample k came: the window may have been done earlier.
            if next_sample != u64::MAX && at.saturating_sub(next_sample) < 2_000_000 {
                gap_bound += 1;
            }
        }
        let ms = at.saturating_sub(window_end) as f64 / 1e6;
        lat.push(ms);
        rows.push(((window_end - start) as f64 / 1e9, ms));
    }
    if let Some(path) = &args.out {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create --out"));
        writeln!(f, "send_s,latency_ms").unwrap();
        for (s, ms) in &rows {
            writeln!(f, "{s:.6},{ms:.4}").unwrap();
        }
    }
    lat.sort_by(f64::total_cmp);
    let line = serde_json::json!({
        "label": args.label,
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "arrivals": format!("{:?}", args.arrivals).to_lowercase(),
        "rate": args.rate,
        "achieved_rate": total as f64 / elapsed_s,
        "channels": n_ch,
        "sent": total,
        "results": lat.len(),
        "expected": expected,
        "missing": expected.saturating_sub(lat.len()),
        "gap_bound": gap_bound,
        "results_per_s_second_half": second_half as f64 / (args.seconds * 0.5),
        "ms": {
            "p50": percentile(&lat, 50.0), "p90": percentile(&lat, 90.0), "p99": percentile(&lat, 99.0),
            "p999": percentile(&lat, 99.9), "max": lat.last().copied().unwrap_or(f64::NAN),
            "mean": lat.iter().sum::<f64>() / lat.len().max(1) as f64,
        },
    });
    println!("{line}");
}
