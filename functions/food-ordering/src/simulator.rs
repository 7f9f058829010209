//! The drivers' mobile apps, simulated (binary `food-driver-simulator`).
//!
//! Each simulated driver starts working once (`food/StartDriver` to its twin over the HTTP
//! ingress), then every tick reads its twin's committed state (`GET /state/food/driver/<id>`)
//! to learn its job, moves `speed × tick` toward the restaurant (before pickup) or the
//! customer (after), and publishes its location to Kafka (`driver-updates`, key = driver id).
//! The twin, not the simulator, decides pickup and delivery from those locations, so a
//! restarted simulator or engine worker just carries on from the twin's state. An idle
//! driver publishes nothing.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use crate::driver::Driver;
use crate::geo::{self, Location};
use crate::messages::{StartDriver, START_DRIVER};

/// Settings of the simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The engine workers' HTTP ingress addresses (`host:port`), tried in turn.
    pub engine_ingress: Vec<String>,
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// The topic of location updates.
    pub topic: String,
    /// The simulated drivers' ids.
    pub drivers: Vec<String>,
    /// The region the drivers work in.
    pub region: String,
    /// Metres a driver covers per second.
    pub speed_mps: f64,
    /// How often drivers move and report.
    pub tick: Duration,
}

/// Runs the drivers until `stop` is set.
pub fn run(config: &SimConfig, stop: &AtomicBool) -> io::Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .create()
        .map_err(io::Error::other)?;
    let mut sim = Sim {
        config,
        worker: 0,
        positions: HashMap::new(),
    };
    tracing::info!(?config, "driver simulator");
    for driver in &config.drivers {
        while !stop.load(Ordering::Relaxed) && !sim.start(driver) {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let step = config.speed_mps * config.tick.as_secs_f64();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        for driver in &config.drivers {
            let Some(twin) = sim.twin(driver) else {
                continue;
            };
            let position = *sim
                .positions
                .entry(driver.clone())
                .or_insert_with(|| twin.location.unwrap_or_else(|| geo::driver_home(driver)));
            let Some(job) = twin.assignment else {
                continue;
            };
            let target = if job.picked_up {
                job.customer
            } else {
                job.restaurant
            };
            let next = position.step_toward(&target, step);
            sim.positions.insert(driver.clone(), next);
            publish(&producer, &config.topic, driver, &next);
        }
        producer.poll(Duration::ZERO);
        if let Err(e) = producer.flush(Duration::from_secs(10)) {
            tracing::warn!("publishing locations: {e}");
        }
        std::thread::sleep(config.tick.saturating_sub(started.elapsed()));
    }
    let _ = producer.flush(Duration::from_secs(10));
    Ok(())
}

struct Sim<'a> {
    config: &'a SimConfig,
    /// Index of the ingress address in use.
    worker: usize,
    positions: HashMap<String, Location>,
}

impl Sim<'_> {
    fn ingress(&self) -> &str {
        let all = &self.config.engine_ingress;
        &all[self.worker % all.len().max(1)]
    }

    /// `food/StartDriver` to the driver's twin; true once the ingress took it.
    fn start(&mut self, driver: &str) -> bool {
        let url = format!("http://{}/food/driver/{driver}", self.ingress());
        let body = serde_json::to_vec(&StartDriver {
            region: self.config.region.clone(),
        })
        .expect("StartDriver is JSON");
        let content_type = format!("application/vnd.{}", START_DRIVER.typename());
        match crate::http::post(&url, &content_type, &body, Duration::from_secs(10)) {
            Ok(r) if r.status == 202 => {
                tracing::info!(%driver, "started");
                true
            }
            Ok(r) => {
                tracing::warn!(%driver, status = r.status, "start refused: {}", r.body_str());
                self.worker += 1;
                false
            }
            Err(e) => {
                tracing::warn!(%driver, "start failed: {e}");
                self.worker += 1;
                false
            }
        }
    }

    /// The twin's committed state; `None` when it cannot be read now.
    fn twin(&mut self, driver: &str) -> Option<Driver> {
        let url = format!("http://{}/state/food/driver/{driver}", self.ingress());
        let answer = crate::http::get(&url, Duration::from_secs(10))
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if r.status == 200 {
                    serde_json::from_slice::<serde_json::Value>(&r.body).map_err(|e| e.to_string())
                } else {
                    Err(format!("{}: {}", r.status, r.body_str()))
                }
            });
        match answer {
            Ok(v) => match v.pointer("/values/driver/value") {
                Some(d) if !d.is_null() => serde_json::from_value(d.clone()).ok(),
                _ => Some(Driver::default()),
            },
            Err(e) => {
                tracing::debug!(%driver, "reading the twin: {e}");
                self.worker += 1;
                None
            }
        }
    }
}

fn publish(producer: &BaseProducer, topic: &str, driver: &str, location: &Location) {
    let value = serde_json::to_vec(location).expect("a location is JSON");
    if let Err((e, _)) = producer.send(BaseRecord::to(topic).key(driver).payload(&value)) {
        tracing::warn!(%driver, "publishing a location: {e}");
    }
}
