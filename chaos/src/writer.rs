//! The writer load (`load.writes`): units `unit-0` .. `unit-{N-1}` each POST at a fixed rate,
//! open loop, through the sidecars' outbound proxies. Write `n` of the whole writer is due at
//! `n / (units × rate_per_unit)`: it belongs to unit `n mod units` and is that unit's write
//! number `n / units + 1` (`x-twin-seq`), so each unit writes every `1 / rate_per_unit`, the
//! units staggered. A unit's consecutive writes go to different sidecars (both
//! datacenters), so a sidecar that learns of a change late shows up. Each write asks the
//! upstream to work on it for a while (header [`WORK_HEADER`], drawn from `work`), so a
//! unit's writes overlap in flight and some are in flight when the weights change.
//!
//! A write refused with `503` and `x-twin-error: unit_fenced` is recorded as fenced and not
//! retried: the unit's next write comes on schedule anyway. Samples of writes have ids from
//! [`FIRST_ID`] up, apart from the main load's.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::drill::{LoadSpec, WriteLoad};
use crate::lab::Lab;
use crate::loadgen::{lock, LiveCounters, Sender, SharedRecording};
use crate::record::{Kind, Outcome, Sample};

/// The header a write asks the upstream's work time with (ms).
pub const WORK_HEADER: &str = "x-lab-work-ms";
/// The header carrying a write's number within its unit.
pub const SEQ_HEADER: &str = "x-twin-seq";
/// Sample (and `x-request-id`) numbers of writes start here.
pub const FIRST_ID: u64 = 1 << 40;

/// Runs the writer until `load.duration`, then waits for its writes still in flight.
pub async fn run(
    w: WriteLoad,
    load: LoadSpec,
    lab: Arc<Lab>,
    recording: SharedRecording,
    live: Arc<LiveCounters>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7772_6974_6572); // "writer"
    let interval_ms = 1e3 / (f64::from(w.units) * w.rate_per_unit.0);
    let end_ms = load.duration.ms();
    let header = lab.unit_header.clone();
    let (work_min, work_max) = (w.work.min.ms() as u64, w.work.max.ms() as u64);
    let mut sender = Sender::new(
        lab.clone(),
        recording.clone(),
        live,
        "writes",
        load.max_in_flight,
    );
    let mut n: u64 = 0;
    while let Some(due_ms) = sender.due(n, interval_ms, end_ms).await {
        let unit = (n % u64::from(w.units)) as u32;
        let seq = n / u64::from(w.units) + 1;
        n += 1;
        let work = rng.random_range(work_min..=work_max);
        let sample = Sample::unsent(FIRST_ID + n, due_ms, Kind::Write, unit);
        let pick = |up: usize| ((u64::from(unit) + seq) % up as u64) as usize;
        let Some((mut sample, permit)) = sender.admit(sample, pick) else {
            continue;
        };
        let sc = &lab.sidecars[sample.sidecar];
        let req =
            ::http::Request::post(format!("http://{}/drill/w/unit-{unit}/{seq}", sc.outbound))
                .header(::http::header::HOST, w.service.as_str())
                .header(header.as_str(), format!("unit-{unit}"))
                .header(SEQ_HEADER, seq.to_string())
                .header("x-request-id", sample.id.to_string())
                .header(WORK_HEADER, work.to_string())
                .body(Full::new(Bytes::from(format!(
                    "{{\"unit\":\"unit-{unit}\",\"seq\":{seq}}}"
                ))));
        let Ok(req) = req else {
            sample.outcome = Outcome::NotSent {
                reason: "the write could not be built".into(),
            };
            lock(&recording).samples.push(sample);
            continue;
        };
        let ctx = sender.ctx(w.service.clone(), String::new(), 0, load.timeout.0, None);
        sender.spawn(async move {
            ctx.exchange_and_record(sample, req).await;
            drop(permit);
        });
    }
    sender.finish().await;
}
