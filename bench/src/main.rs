//! `tern-bench`: a load generator for MQTT brokers on loopback. It runs one scenario
//! against a broker that is already running (or, for `startup`, starts it) and prints
//! one line: `scenario=NAME key=value ...`. `bench/compare.py` drives it against Tern
//! and Mosquitto side by side.

mod pipelined;
mod proc;
mod scenarios;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;
use smol::Executor;
use tern::protocol::QoS;

#[derive(FromArgs)]
/// Measure an MQTT broker: fan-in, fan-out, QoS 1 sweep, latency, connections, startup,
/// durable sessions.
struct Args {
    /// scenario: fanin-qos0, fanin-qos1, qos1-sweep, fanout, latency, connections, startup,
    /// persist-qos1 (to an offline persistent subscriber), sessions (leave N persistent
    /// sessions behind), handshakes (connect, CONNACK, close, for `duration`; with
    /// --tls-ca the TLS handshake rate), publish (COUNT QoS 1 messages, acknowledged),
    /// drain (a persistent subscriber counts COUNT messages)
    #[argh(positional)]
    scenario: String,
    /// broker address
    #[argh(option, default = "\"127.0.0.1:1883\".parse().unwrap()")]
    addr: SocketAddr,
    /// where subscribers connect (a central broker across a bridge); --addr by default
    #[argh(option)]
    sub_addr: Option<SocketAddr>,
    /// messages for `publish` and `drain`
    #[argh(option, default = "100000")]
    count: u64,
    /// broker process id, for CPU and memory figures
    #[argh(option, default = "String::from(\"0\")")]
    pid: String,
    /// seconds each measured window lasts
    #[argh(option, default = "5.0")]
    duration: f64,
    /// publishers in fan-in and the sweep
    #[argh(option, default = "8")]
    publishers: usize,
    /// subscribers in fan-out
    #[argh(option, default = "100")]
    subscribers: usize,
    /// messages in flight per publisher (QoS 1) or ahead of the subscribers (QoS 0)
    #[argh(option, default = "1000")]
    window: u64,
    /// idle connections for `connections`, sessions left behind by `sessions`
    #[argh(option, default = "10000")]
    connections: usize,
    /// fixed rate of the latency scenario, messages a second
    #[argh(option, default = "5000.0")]
    rate: f64,
    /// highest offered rate of the QoS 1 sweep
    #[argh(option, default = "2000000.0")]
    max_rate: f64,
    /// speak MQTT over TLS, trusting this PEM CA (full handshakes, no resumption)
    #[argh(option)]
    tls_ca: Option<String>,
    /// threads the generator runs on
    #[argh(option, default = "2")]
    threads: usize,
    /// for `startup`: the broker command line, after `--`
    #[argh(positional, greedy)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    proc::raise_open_files();
    if let Some(ca) = &args.tls_ca {
        if let Err(e) = pipelined::use_tls(ca) {
            eprintln!("tern-bench: --tls-ca {ca}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let line = if args.scenario == "startup" {
        scenarios::startup(args.addr, &args.command)
    } else {
        run_async(&args)
    };
    match line {
        Ok(line) => {
            let mut text = format!("scenario={}", args.scenario);
            for (k, v) in line {
                text.push_str(&format!(" {k}={v}"));
            }
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern-bench {}: {e}", args.scenario);
            ExitCode::FAILURE
        }
    }
}

fn run_async(args: &Args) -> std::io::Result<scenarios::Line> {
    let opts = scenarios::Opts {
        addr: args.addr,
        sub_addr: args.sub_addr.unwrap_or(args.addr),
        count: args.count,
        broker_pid: args.pid.clone(),
        duration: Duration::from_secs_f64(args.duration),
        publishers: args.publishers,
        subscribers: args.subscribers,
        window: args.window,
        connections: args.connections,
    };
    let ex: Arc<Executor<'static>> = Arc::new(Executor::new());
    let (stop, stopped) = smol::channel::unbounded::<()>();
    let threads: Vec<_> = (1..args.threads.max(1))
        .map(|_| {
            let (ex, stopped) = (ex.clone(), stopped.clone());
            std::thread::spawn(move || smol::block_on(ex.run(stopped.recv())))
        })
        .collect();
    let result = smol::block_on(ex.run(async {
        match args.scenario.as_str() {
            "fanin-qos0" => scenarios::fan_in(&ex, &opts, QoS::AtMostOnce).await,
            "fanin-qos1" => scenarios::fan_in(&ex, &opts, QoS::AtLeastOnce).await,
            "qos1-sweep" => {
                let mut rates = vec![];
                let mut r = 10_000.0;
                while r <= args.max_rate {
                    rates.push(r);
                    r *= 2.0;
                }
                scenarios::qos1_sweep(&ex, &opts, &rates).await
            }
            "fanout" => scenarios::fan_out(&ex, &opts).await,
            "latency" => scenarios::latency(&ex, &opts, args.rate).await,
            "connections" => scenarios::connections(&ex, &opts).await,
            "handshakes" => scenarios::handshakes(&ex, &opts).await,
            "publish" => scenarios::publish(&ex, &opts).await,
            "drain" => scenarios::drain_backlog(&opts).await,
            "persist-qos1" => scenarios::persist_qos1(&ex, &opts).await,
            "sessions" => scenarios::sessions(&ex, &opts).await,
            other => Err(std::io::Error::other(format!("unknown scenario {other}"))),
        }
    }));
    drop(stop);
    for t in threads {
        let _ = t.join();
    }
    result
}
