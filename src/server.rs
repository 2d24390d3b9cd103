//! Starting and stopping the broker: the store, executor threads, listeners, the
//! management API, bridges, the housekeeping tick, and signals. Start order: executor
//! threads and the API (answering `/status` with 503), the store opened and its
//! sessions loaded, MQTT listeners bound (a port in use fails the start) and accepting,
//! `/status` 200, bridges; stop order: `/status` 503, stop accepting, tell clients (v5:
//! DISCONNECT 0x8B), let them flush, commit and close the store, exit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use smol::Executor;
use smol::future::FutureExt;

use crate::auth::AuthPolicy;
use crate::broker::{Broker, Role};
use crate::config::Config;
use crate::store::Store;
use crate::systemd;
use crate::transport::admission::Admission;
use crate::transport::connection::ConnectionConfig;
use crate::transport::lane;
use crate::transport::tcp;
use crate::transport::tls::Tls;
use crate::watchdog::{self, Heartbeats};

/// How long clients get to receive their DISCONNECT and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

pub fn run(config: Config) -> Result<(), String> {
    // Before anything listens: a SIGTERM that arrives while Tern is still starting
    // (systemd stopping it, a test) waits for the graceful stop instead of killing the
    // process and cutting off the clients that already connected without a DISCONNECT.
    let signals = async_signal::Signals::new([
        async_signal::Signal::Term,
        async_signal::Signal::Int,
        async_signal::Signal::Hup,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    raise_open_file_limit();
    if let Some(board) = &config.node.board {
        log::info!(
            "board {board}: its runtime defaults apply where the configuration sets nothing"
        );
    }
    let listeners = config.listeners()?;
    let threads = match config.node.threads {
        // The main thread drives the I/O reactor whenever it waits (smol's block_on),
        // so one executor thread fewer than the cores keeps every core busy without
        // the threads waking each other for nothing. On 2 cores, 1 executor thread
        // delivered 40 % more fan-in QoS 0 than 2, with half the CPU at low rates.
        0 => thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)),
        n => n,
    };
    let executor: Arc<Executor<'static>> = Arc::new(Executor::new());
    let (stop, stopped) = smol::channel::bounded::<()>(1);
    let watchdog_interval = systemd::watchdog_interval();
    let heartbeats = watchdog_interval
        .map(|interval| Heartbeats::new(threads, watchdog::probe_period(interval)));
    let mut workers = Vec::new();
    for i in 0..threads {
        let executor = executor.clone();
        let stopped = stopped.clone();
        let heartbeats = heartbeats.clone();
        let worker = thread::Builder::new()
            .name(format!("tern-worker-{i}"))
            .spawn(move || {
                smol::block_on(executor.run(async {
                    let stop = async {
                        stopped.recv().await.ok();
                    };
                    // The lane's loop never ends: the stop signal or a failed probe does.
                    let stop = stop.or(lane::run());
                    match &heartbeats {
                        Some(heartbeats) => stop.or(heartbeats.probe(i)).await,
                        None => stop.await,
                    }
                }))
            })
            .map_err(|e| format!("cannot start worker thread: {e}"))?;
        workers.push(worker);
    }

    // The API answers first (503 while the store opens), so a balancer can tell a
    // starting node from a dead one.
    let (admin, admin_tasks, admin_certificates) = start_admin(&config, &listeners, &executor)?;
    let store = match config.store_config() {
        Some(store_config) => {
            let started = Instant::now();
            let (store, loaded) = Store::open(&store_config)?;
            log::info!(
                "store {} opened (durability {}, commit interval {:?}, cache {} KiB) in {:?}",
                store_config.path.display(),
                store_config.durability,
                store_config.commit_interval,
                store_config.cache_kib,
                started.elapsed()
            );
            Some((store, loaded))
        }
        None => {
            log::info!("durability = \"memory\": nothing is stored on disk");
            None
        }
    };
    let store_handle = store.as_ref().map(|(s, _)| s.clone());
    let broker = Broker::with_store(config.broker_settings(), store, Instant::now());
    let admission = Admission::new(
        config.limits.max_connections,
        config.limits.max_connection_rate,
    );
    let mut accept_tasks = Vec::new();
    let mut policies: Vec<Arc<AuthPolicy>> = Vec::new();
    let mut certificates: Vec<(String, Arc<Tls>)> = Vec::new();
    if let Some(admin) = &admin {
        // After the store: it has checked (and created) the data directory.
        let secret = crate::admin::secret(
            config.api.app_secret.as_deref(),
            &config.api.app_id,
            &config.data_dir(),
        )?;
        let _ = admin.app_secret.set(secret);
        let _ = admin.broker.set(broker.clone());
    }
    // The cluster is joined, and its routes known, before any client is taken: the
    // first clients here already reach subscribers on the other nodes.
    let cluster = match config.cluster_settings()? {
        Some(settings) => {
            let data_dir = store_handle.as_ref().map(|_| config.data_dir());
            let cluster = crate::cluster::Cluster::start(
                settings,
                broker.clone(),
                executor.clone(),
                data_dir,
            )?;
            smol::block_on(cluster.join());
            if let Some(admin) = &admin {
                let _ = admin.cluster.set(cluster.clone());
            }
            Some(cluster)
        }
        None => None,
    };
    for listener in &listeners {
        let socket = tcp::bind(listener.bind).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (another MQTT broker may hold it: `ss -ltnp` names the process; Debian's \
                 mosquitto package starts one on 1883, `systemctl disable --now mosquitto` \
                 stops it)"
            } else {
                ""
            };
            format!(
                "listener {} cannot bind {}: {e}{hint}",
                listener.name, listener.bind
            )
        })?;
        let addr = socket.get_ref().local_addr().map_err(|e| e.to_string())?;
        log::info!("listening name={} addr={addr}", listener.name);
        let auth = Arc::new(
            AuthPolicy::load(listener.auth.clone())
                .map_err(|e| format!("listener {}: {e}", listener.name))?,
        );
        if listener.auth.allow_anonymous && !addr.ip().is_loopback() {
            log::warn!(
                "anonymous access is open on listener {} at {addr}: set allow_anonymous = false and a password_file to require credentials",
                listener.name
            );
        }
        policies.push(auth.clone());
        let tls = match &listener.tls {
            Some(settings) => {
                let tls = Arc::new(
                    Tls::load(settings.clone())
                        .map_err(|e| format!("listener {}: {e}", listener.name))?,
                );
                certificates.push((listener.name.clone(), tls.clone()));
                Some(tls)
            }
            None => None,
        };
        let conn_config = Arc::new(ConnectionConfig {
            listener: Arc::new(listener.name.clone()),
            connect_timeout: config.connect_timeout(),
            auth,
            proxy_trusted: listener.proxy_trusted.clone().map(Arc::from),
            identity_as_username: listener.identity_as_username,
            tls,
            ws_path: listener.ws_path.as_deref().map(Arc::from),
            role: Role::Network,
        });
        accept_tasks.push(executor.spawn(tcp::accept_loop(
            socket,
            broker.clone(),
            conn_config,
            admission.listener(listener.max_connections),
        )));
    }
    if let Some(admin) = &admin {
        // The MQTT listeners accept from here on.
        admin.serving.store(true, Ordering::SeqCst);
    }
    let bridges = crate::bridge::start(&broker, &executor, config.bridges()?)?;
    if let Some(admin) = &admin {
        let _ = admin.bridges.set(bridges.statuses);
    }
    let bridge_tasks = bridges.tasks;
    certificates.extend(admin_certificates);
    let sys_task = (config.api.sys_interval > 0).then(|| {
        let interval = Duration::from_secs(config.api.sys_interval);
        executor.spawn(crate::admin::sys::publish_loop(
            broker.clone(),
            interval,
            Instant::now(),
        ))
    });
    let history_task = admin
        .clone()
        .map(|admin| executor.spawn(crate::admin::record_history(admin)));
    let ticker = executor.spawn({
        let broker = broker.clone();
        async move {
            loop {
                smol::Timer::after(Duration::from_secs(1)).await;
                broker.tick(Instant::now());
            }
        }
    });
    systemd::notify("READY=1\nSTATUS=accepting MQTT connections");
    // After READY=1: systemd expects that first.
    if let (Some(interval), Some(heartbeats)) = (watchdog_interval, heartbeats.clone()) {
        watchdog::start_pinger(heartbeats, interval)
            .map_err(|e| format!("cannot start the watchdog thread: {e}"))?;
    }
    log::info!(
        "tern {} started node={} threads={threads}",
        env!("CARGO_PKG_VERSION"),
        config.node.name
    );

    let signal = smol::block_on(wait_for_signal(signals, || {
        for policy in &policies {
            for error in policy.reload() {
                log::error!("reload on SIGHUP kept the previous rules: {error}");
            }
        }
        for (name, tls) in &certificates {
            match tls.reload() {
                Ok(()) => log::info!("SIGHUP: listener {name} reloaded its TLS certificate"),
                Err(e) => log::error!(
                    "reload on SIGHUP kept listener {name}'s previous TLS certificate: {e}"
                ),
            }
        }
        log::info!("SIGHUP: password and ACL files reloaded");
    }))?;
    log::info!("received {signal}: shutting down");
    systemd::notify("STOPPING=1");
    if let Some(heartbeats) = &heartbeats {
        heartbeats.stop();
    }
    if let Some(admin) = &admin {
        admin.serving.store(false, Ordering::SeqCst);
    }
    if let Some(cluster) = &cluster {
        // A balancer's health check sees the 503 and sends new clients to another
        // node before these are closed, so that they reconnect there.
        let wait = cluster.settings.stop_wait;
        log::info!("cluster: /status says 503; closing clients in {wait:?}");
        thread::sleep(wait);
        cluster.begin_stop();
        // No client may connect (and claim a session back) while they are handed on.
        drop(accept_tasks);
        smol::block_on(cluster.hand_off());
    } else {
        drop(accept_tasks);
    }
    broker.shut_down();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let connected = |m: &crate::broker::Metrics| {
        m.clients_connected.load(Ordering::SeqCst) + m.relays_connected.load(Ordering::SeqCst)
    };
    while connected(&broker.metrics) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    if let Some(cluster) = &cluster {
        smol::block_on(cluster.leave());
    }
    drop(bridge_tasks);
    drop(admin_tasks);
    drop(sys_task);
    drop(history_task);
    drop(ticker);
    for _ in &workers {
        let _ = stop.try_send(());
    }
    stop.close();
    for worker in workers {
        let _ = worker.join();
    }
    drop(broker);
    if let Some(store) = store_handle {
        store.close();
    }
    log::info!("stopped");
    Ok(())
}

type AdminTasks = (
    Option<Arc<crate::admin::Admin>>,
    Vec<smol::Task<()>>,
    Vec<(String, Arc<Tls>)>,
);

/// Binds the management API and the dashboard (each when enabled); they answer 503
/// until the broker is set.
fn start_admin(
    config: &Config,
    listeners: &[crate::config::Listener],
    executor: &Arc<Executor<'static>>,
) -> Result<AdminTasks, String> {
    use crate::admin::{self, Admin, ListenerView};
    let mut tasks = Vec::new();
    if !config.api.enabled && !config.dashboard.enabled {
        return Ok((None, tasks, Vec::new()));
    }
    let memory_only = config.store_config().is_none();
    if memory_only && config.api.app_secret.is_none() {
        // Nowhere to keep a generated secret, and no default password may work.
        log::info!(
            "durability = \"memory\" and no [api] app_secret: the management API and dashboard are off"
        );
        return Ok((None, tasks, Vec::new()));
    }
    let admin = Arc::new(Admin {
        broker: std::sync::OnceLock::new(),
        listeners: listeners
            .iter()
            .map(|l| ListenerView {
                name: l.name.clone(),
                protocol: format!("mqtt:{}", l.kind),
                bind: l.bind.to_string(),
                max_connections: l.max_connections,
                proxy_protocol: l.proxy_trusted.is_some(),
                tls: l.tls.is_some(),
            })
            .collect(),
        app_id: config.api.app_id.clone(),
        app_secret: std::sync::OnceLock::new(),
        metrics_auth: config.api.metrics_auth,
        started: Instant::now(),
        serving: std::sync::atomic::AtomicBool::new(false),
        bridges: std::sync::OnceLock::new(),
        cluster: std::sync::OnceLock::new(),
        history: Default::default(),
        logins: Default::default(),
    });
    let mut certificates = Vec::new();
    for (name, enabled, bind, dashboard) in [
        ("api", config.api.enabled, config.api.bind, false),
        (
            "dashboard",
            config.dashboard.enabled,
            config.dashboard.bind,
            true,
        ),
    ] {
        if !enabled {
            continue;
        }
        let tls = match config.http_tls(name)? {
            Some(settings) => {
                let tls = Arc::new(Tls::load(settings).map_err(|e| format!("[{name}]: {e}"))?);
                certificates.push((name.to_owned(), tls.clone()));
                Some(tls)
            }
            None => None,
        };
        let socket = tcp::bind(bind).map_err(|e| format!("[{name}] cannot bind {bind}: {e}"))?;
        let addr = socket.get_ref().local_addr().map_err(|e| e.to_string())?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        log::info!("listening name={name} addr={addr} ({scheme})");
        tasks.push(admin::serve(
            executor,
            socket,
            admin.clone(),
            dashboard,
            tls,
        ));
    }
    Ok((Some(admin), tasks, certificates))
}

/// Waits for SIGTERM or SIGINT (also one that came during start-up); SIGHUP runs
/// `on_hangup` and keeps waiting.
async fn wait_for_signal(
    mut signals: async_signal::Signals,
    on_hangup: impl Fn(),
) -> Result<&'static str, String> {
    use async_signal::Signal;
    use smol::stream::StreamExt;
    loop {
        match signals.next().await {
            Some(Ok(Signal::Hup)) => on_hangup(),
            Some(Ok(Signal::Int)) => return Ok("SIGINT"),
            Some(Ok(_)) => return Ok("SIGTERM"),
            Some(Err(e)) => return Err(format!("signal handling failed: {e}")),
            None => return Ok("end of signals"),
        }
    }
}

/// Raises the soft limit on open files to the hard limit: each client is a descriptor.
fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                log::warn!(
                    "cannot read the open-file limit: {}",
                    std::io::Error::last_os_error()
                );
                return;
            }
            let before = limit.rlim_cur;
            if before == limit.rlim_max {
                log::info!("open-file limit is {before}");
                return;
            }
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                log::warn!(
                    "open-file limit stays at {before}: {}",
                    std::io::Error::last_os_error()
                );
                return;
            }
            log::info!("open-file limit raised from {before} to {}", limit.rlim_cur);
        }
    }
}
