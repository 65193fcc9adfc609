//! Runs a drill's method against a running [`Lab`] while the load generator runs: waits for
//! each step's time (or condition), performs it, and journals everything with timestamps on
//! the run's clock. It decides nothing about pass or fail beyond "did the step itself do
//! what it said" (a `twinctl` exit code, a process that became ready).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::drill::{Condition, Drill, NetworkFault, Step};
use crate::faultproxy::{Fault, Mode, Shaping};
use crate::lab::Lab;
use crate::loadgen::{self, LiveCounters, SharedRecording};
use crate::record::{Recording, StepRun};
use crate::target::{LinkTarget, ProcTarget};

/// One line of the journal.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// ms since the load started.
    pub t_ms: f64,
    pub what: String,
    pub detail: String,
}

/// Everything a run produced, for the checks and the report.
pub struct RunOutput {
    pub steps: Vec<StepRun>,
    pub events: Vec<Event>,
    pub recording: Recording,
}

struct Journal {
    lab: Arc<Lab>,
    events: Mutex<Vec<Event>>,
}

impl Journal {
    fn log(&self, what: &str, detail: impl Into<String>) {
        let e = Event {
            t_ms: self.lab.clock.ms(),
            what: what.to_string(),
            detail: detail.into(),
        };
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(e);
    }
}

/// Runs the load and the method; returns when the load has ended.
pub async fn run(drill: &Drill, lab: Arc<Lab>, seed: u64, progress: bool) -> RunOutput {
    let journal = Arc::new(Journal {
        lab: lab.clone(),
        events: Mutex::new(Vec::new()),
    });
    let recording: SharedRecording = Arc::new(Mutex::new(Recording::default()));
    let live = LiveCounters::new(lab.dc_names.len());
    let phase = Arc::new(Mutex::new("before".to_string()));
    lab.clock.start_now();
    journal.log(
        "load",
        format!("started: {} for {}", drill.load.rate, drill.load.duration),
    );
    let load = tokio::spawn(loadgen::run(
        drill.load.clone(),
        lab.clone(),
        recording.clone(),
        live.clone(),
        seed,
    ));
    let ticker = progress.then(|| {
        tokio::spawn(crate::progress::progress_line(
            lab.clone(),
            live.clone(),
            phase.clone(),
            drill.load.duration.ms(),
        ))
    });

    let mut steps = Vec::new();
    let mut outputs: HashMap<String, serde_json::Value> = HashMap::new();
    let mut background = Vec::new();
    for (i, step) in drill.method.iter().enumerate() {
        let label = step.label(i);
        if let Some(at) = step.at {
            tokio::time::sleep_until(lab.clock.instant(at.ms()).into()).await;
        }
        if let Some(cond) = &step.wait_until {
            journal.log("wait", format!("{label}: waiting for {}", describe(cond)));
            if let Err(why) = wait_until(&lab, &recording, cond).await {
                let now = lab.clock.ms();
                journal.log("step failed", format!("{label}: {why}"));
                steps.push(StepRun {
                    label,
                    started_ms: now,
                    ended_ms: now,
                    ok: false,
                    detail: why,
                });
                continue;
            }
        }
        *phase.lock().unwrap_or_else(|e| e.into_inner()) = label.clone();
        let started_ms = lab.clock.ms();
        journal.log("step", format!("{label}: {}", summary(step)));
        if let (true, Some(w)) = (step.background, &step.twinctl) {
            let (lab2, journal2, words, expect, label2, mut outs) = (
                lab.clone(),
                journal.clone(),
                w.words(),
                step.expect_exit.unwrap_or(0),
                label.clone(),
                outputs.clone(),
            );
            let task = tokio::spawn(async move {
                let (ok, detail, _) =
                    crate::twinctl::twinctl(&lab2, &words, expect, &label2, &mut outs).await;
                let ended_ms = lab2.clock.ms();
                journal2.log(
                    if ok { "step done" } else { "step failed" },
                    format!("{label2}: {detail}"),
                );
                (ok, detail, ended_ms, outs.remove(&label2))
            });
            background.push((steps.len(), task));
            steps.push(StepRun {
                label,
                started_ms,
                ended_ms: started_ms,
                ok: false,
                detail: "running in the background".into(),
            });
            continue;
        }
        let (ok, detail, ended_ms) = perform(&lab, &journal, step, &label, &mut outputs).await;
        journal.log(
            if ok { "step done" } else { "step failed" },
            format!("{label}: {detail}"),
        );
        steps.push(StepRun {
            label,
            started_ms,
            ended_ms: ended_ms.unwrap_or_else(|| lab.clock.ms()),
            ok,
            detail,
        });
    }
    for (i, task) in background {
        let (ok, detail, ended_ms) = match task.await {
            Ok((ok, detail, ended_ms, out)) => {
                if let Some(v) = out {
                    outputs.insert(steps[i].label.clone(), v);
                }
                (ok, detail, ended_ms)
            }
            Err(e) => (
                false,
                format!("the step's task failed: {e}"),
                lab.clock.ms(),
            ),
        };
        steps[i].ok = ok;
        steps[i].detail = detail;
        steps[i].ended_ms = ended_ms;
    }
    *phase.lock().unwrap_or_else(|e| e.into_inner()) = "after".into();
    let _ = load.await;
    journal.log("load", "ended");
    if let Some(t) = ticker {
        t.abort();
        eprintln!();
    }
    let recording = std::mem::take(&mut *loadgen::lock(&recording));
    let mut recording = recording;
    recording.hits = lab.upstream_hits();
    let events = std::mem::take(&mut *journal.events.lock().unwrap_or_else(|e| e.into_inner()));
    RunOutput {
        steps,
        events,
        recording,
    }
}

fn summary(step: &Step) -> String {
    if let Some(n) = &step.network {
        return format!("network {:?} on {} for {}", n.fault, n.target, n.duration).to_lowercase();
    }
    if let Some(k) = &step.kill {
        return format!("kill -9 {k}");
    }
    if let Some(p) = &step.pause {
        return format!("pause {} for {}", p.target, p.duration);
    }
    if let Some(r) = &step.restart {
        return match r.clock {
            Some(c) => format!("restart {} with the clock at {c}", r.target),
            None => format!("restart {}", r.target),
        };
    }
    if let Some(w) = &step.twinctl {
        return format!("twinctl {}", w.words().join(" "));
    }
    String::new()
}

fn describe(c: &Condition) -> String {
    if c.ids_refused.is_some() {
        format!("an ID call refused with 503 (up to {})", c.timeout)
    } else if let Some(s) = &c.served_by {
        format!(
            "{} serving {} of routed calls (up to {})",
            s.dc, s.share, c.timeout
        )
    } else if let Some(r) = &c.ready {
        format!("{r} ready (up to {})", c.timeout)
    } else {
        "nothing".into()
    }
}

/// Polls the condition every 20 ms until it holds or its timeout passes.
async fn wait_until(lab: &Lab, rec: &SharedRecording, c: &Condition) -> Result<(), String> {
    let since = lab.clock.ms();
    let end = tokio::time::Instant::now() + c.timeout.0;
    loop {
        let now = lab.clock.ms();
        let holds = if c.ids_refused == Some(true) {
            let r = loadgen::lock(rec);
            r.samples
                .iter()
                .rev()
                .take_while(|s| s.sent_ms >= since - 5000.0)
                .any(|s| {
                    !s.kind.is_routed()
                        && s.sent_ms >= since
                        && s.outcome == (crate::record::Outcome::Answered { status: 503 })
                })
        } else if let Some(sb) = &c.served_by {
            let dc = lab.dc_names.iter().position(|d| *d == sb.dc);
            let r = loadgen::lock(rec);
            let recent: Vec<_> = r
                .samples
                .iter()
                .rev()
                .take_while(|s| s.sent_ms >= now - 3000.0)
                .filter(|s| s.kind.is_routed() && s.sent_ms >= now - 1000.0 && s.sent_ms >= since)
                .collect();
            let hit = recent
                .iter()
                .filter(|s| s.served_ok() && s.dc == dc)
                .count();
            recent.len() >= 10 && hit as f64 >= sb.share.0 * recent.len() as f64
        } else if let Some(t) = &c.ready {
            ready(lab, t).await
        } else {
            false
        };
        if holds {
            return Ok(());
        }
        if tokio::time::Instant::now() >= end {
            return Err(format!(
                "{} did not happen within {}",
                describe(c),
                c.timeout
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready(lab: &Lab, target: &str) -> bool {
    let t = crate::drill::TopologySpec {
        datacenters: lab.dc_names.clone(),
        sidecars_per_dc: lab.sidecars.iter().filter(|s| s.dc == 0).count(),
        control_planes: lab.control_planes.len(),
        etcd: crate::drill::EtcdSpec {
            members: lab.etcd.members.len(),
            secure: lab.etcd.security.is_some(),
        },
        ..Default::default()
    };
    match ProcTarget::parse(&t, target) {
        Ok(ProcTarget::Sidecar { dc, index }) => match lab.sidecar_index(dc, index) {
            Some(i) => matches!(
                crate::http::get(&lab.probe, lab.sidecars[i].admin, "/readyz").await,
                Ok((200, _))
            ),
            None => false,
        },
        Ok(ProcTarget::ControlPlane(i)) => matches!(
            crate::http::get(&lab.probe, lab.control_planes[i].status, "/healthz").await,
            Ok((c, _)) if c < 500
        ),
        Ok(ProcTarget::Etcd(sel)) => {
            let members = lab.etcd.resolve(sel).await;
            let mut all = !members.is_empty();
            for m in members {
                all &= lab
                    .etcd
                    .wait_ready(m, Duration::from_millis(200))
                    .await
                    .is_ok();
            }
            all
        }
        _ => false,
    }
}

/// A network fault for the fault proxies.
pub fn fault_of(n: &NetworkFault) -> Fault {
    use crate::drill::{Direction, FaultKind};
    let shaping = Shaping {
        latency: n.latency.map(|d| d.0).unwrap_or_default(),
        jitter: n.jitter.map(|d| d.0).unwrap_or_default(),
        bandwidth: n.bandwidth.map(|b| b.0),
    };
    let mode = match n.fault {
        FaultKind::Latency | FaultKind::Bandwidth => Mode::Pass,
        FaultKind::Reset => Mode::Reset,
        FaultKind::Blackhole => Mode::Blackhole,
        FaultKind::Refuse => Mode::Refuse,
    };
    let (request, response) = match n.direction {
        Direction::Both => (shaping, shaping),
        Direction::Request => (shaping, Shaping::default()),
        Direction::Response => (Shaping::default(), shaping),
    };
    Fault {
        mode,
        request,
        response,
    }
}

fn topology_of(lab: &Lab) -> crate::drill::TopologySpec {
    crate::drill::TopologySpec {
        datacenters: lab.dc_names.clone(),
        sidecars_per_dc: lab.sidecars.iter().filter(|s| s.dc == 0).count(),
        upstreams_per_dc: lab.upstreams.first().map_or(0, Vec::len),
        control_planes: lab.control_planes.len(),
        etcd: crate::drill::EtcdSpec {
            members: lab.etcd.members.len(),
            secure: lab.etcd.security.is_some(),
        },
        ..Default::default()
    }
}

/// Performs one action: (ok, what happened, when its effect ends if not now).
async fn perform(
    lab: &Arc<Lab>,
    journal: &Arc<Journal>,
    step: &Step,
    label: &str,
    outputs: &mut HashMap<String, serde_json::Value>,
) -> (bool, String, Option<f64>) {
    let topo = topology_of(lab);
    if let Some(n) = &step.network {
        let Ok(target) = LinkTarget::parse(&topo, &n.target) else {
            return (false, format!("bad target {}", n.target), None);
        };
        let proxies: Vec<(usize, usize, bool)> = match target {
            LinkTarget::Upstreams { dc } => (0..lab.upstreams[dc].len())
                .map(|i| (dc, i, true))
                .collect(),
            LinkTarget::Upstream { dc, index } => vec![(dc, index, true)],
            LinkTarget::EtcdLink { dc } => (0..lab.dc_names.len())
                .filter(|d| dc.is_none_or(|x| x == *d))
                .flat_map(|d| (0..lab.etcd.members.len()).map(move |m| (d, m, false)))
                .collect(),
        };
        let fault = fault_of(n);
        let proxy = |(d, i, up): (usize, usize, bool)| {
            if up {
                &lab.upstreams[d][i].1
            } else {
                &lab.etcd_links[d][i]
            }
        };
        let gens: Vec<((usize, usize, bool), u64)> =
            proxies.iter().map(|p| (*p, proxy(*p).set(fault))).collect();
        let (lab2, journal2, dur, what) = (
            lab.clone(),
            journal.clone(),
            n.duration.0,
            format!("{label}: {} cleared", n.target),
        );
        let timer = tokio::spawn(async move {
            tokio::time::sleep(dur).await;
            for ((d, i, up), g) in gens {
                if up {
                    lab2.upstreams[d][i].1.clear(g);
                } else {
                    lab2.etcd_links[d][i].clear(g);
                }
            }
            journal2.log("fault cleared", what);
        });
        lab.timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(timer);
        let end = lab.clock.ms() + n.duration.ms();
        return (
            true,
            format!("{} proxies faulted", proxies.len()),
            Some(end),
        );
    }
    if let Some(k) = &step.kill {
        return match ProcTarget::parse(&topo, k) {
            Ok(t) => {
                let names = for_each_proc(lab, &t, |p| p.kill(), true).await;
                (true, format!("killed {}", names.join(", ")), None)
            }
            Err(e) => (false, e, None),
        };
    }
    if let Some(p) = &step.pause {
        let Ok(t) = ProcTarget::parse(&topo, &p.target) else {
            return (false, format!("bad target {}", p.target), None);
        };
        let members = match &t {
            ProcTarget::Etcd(sel) => lab.etcd.resolve(*sel).await,
            _ => vec![],
        };
        let names = paused(lab, &t, &members, true);
        let (lab2, journal2, t2, dur) = (lab.clone(), journal.clone(), t.clone(), p.duration.0);
        let timer = tokio::spawn(async move {
            tokio::time::sleep(dur).await;
            let names = paused(&lab2, &t2, &members, false);
            journal2.log("resumed", names.join(", "));
        });
        lab.timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(timer);
        let end = lab.clock.ms() + p.duration.ms();
        return (true, format!("paused {}", names.join(", ")), Some(end));
    }
    if let Some(r) = &step.restart {
        let Ok(t) = ProcTarget::parse(&topo, &r.target) else {
            return (false, format!("bad target {}", r.target), None);
        };
        return match restart(lab, &t, r.clock).await {
            Ok(names) => (true, format!("{} ready", names.join(", ")), None),
            Err(e) => (false, e, None),
        };
    }
    if let Some(w) = &step.twinctl {
        return crate::twinctl::twinctl(
            lab,
            &w.words(),
            step.expect_exit.unwrap_or(0),
            label,
            outputs,
        )
        .await;
    }
    (false, "no action".into(), None)
}

fn sidecars_of(lab: &Lab, t: &ProcTarget) -> Vec<usize> {
    match t {
        ProcTarget::Sidecar { dc, index } => lab.sidecar_index(*dc, *index).into_iter().collect(),
        ProcTarget::Sidecars { dc } => (0..lab.sidecars.len())
            .filter(|&i| lab.sidecars[i].dc == *dc)
            .collect(),
        _ => vec![],
    }
}

/// Applies `f` to each process of a target; a killed sidecar is taken out of the load first.
async fn for_each_proc(
    lab: &Lab,
    t: &ProcTarget,
    f: impl Fn(&twin_lab::Proc),
    take_out: bool,
) -> Vec<String> {
    let mut names = Vec::new();
    for i in sidecars_of(lab, t) {
        if take_out {
            lab.sidecars[i].up.store(false, Ordering::SeqCst);
        }
        f(&lab.sidecars[i].proc);
        names.push(lab.sidecars[i].name.clone());
    }
    if let ProcTarget::ControlPlane(i) = t {
        f(&lab.control_planes[*i].proc);
        names.push(lab.control_planes[*i].proc.name().to_string());
    }
    if let ProcTarget::Etcd(sel) = t {
        for m in lab.etcd.resolve(*sel).await {
            f(&lab.etcd.members[m].proc);
            names.push(lab.etcd.members[m].name.clone());
        }
    }
    names
}

fn paused(lab: &Lab, t: &ProcTarget, members: &[usize], stop: bool) -> Vec<String> {
    let act = |p: &twin_lab::Proc| if stop { p.pause() } else { p.resume() };
    let mut names = Vec::new();
    for i in sidecars_of(lab, t) {
        act(&lab.sidecars[i].proc);
        names.push(lab.sidecars[i].name.clone());
    }
    if let ProcTarget::ControlPlane(i) = t {
        act(&lab.control_planes[*i].proc);
        names.push(lab.control_planes[*i].proc.name().to_string());
    }
    for m in members {
        act(&lab.etcd.members[*m].proc);
        names.push(lab.etcd.members[*m].name.clone());
    }
    names
}

async fn restart(
    lab: &Lab,
    t: &ProcTarget,
    clock: Option<crate::units::ClockOffset>,
) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for i in sidecars_of(lab, t) {
        lab.start_sidecar(i, clock)
            .await
            .map_err(|e| e.to_string())?;
        names.push(lab.sidecars[i].name.clone());
    }
    if let ProcTarget::ControlPlane(i) = t {
        let cp = &lab.control_planes[*i];
        cp.proc
            .start(clock.map(|c| c.faketime_spec()))
            .map_err(|e| e.to_string())?;
        lab.wait_control_plane(*i)
            .await
            .map_err(|e| e.to_string())?;
        names.push(cp.proc.name().to_string());
    }
    if let ProcTarget::Etcd(sel) = t {
        // A stopped member is not a leader: "restart etcd/leader" means every stopped member.
        let members: Vec<usize> = match sel {
            crate::target::EtcdSelector::Member(m) => vec![*m],
            _ => (0..lab.etcd.members.len())
                .filter(|&m| !lab.etcd.members[m].proc.is_running())
                .collect(),
        };
        for &m in &members {
            lab.etcd.members[m]
                .proc
                .start(None)
                .map_err(|e| e.to_string())?;
        }
        for &m in &members {
            lab.etcd
                .wait_ready(m, crate::lab::READY_WITHIN)
                .await
                .map_err(|e| e.to_string())?;
            names.push(lab.etcd.members[m].name.clone());
        }
    }
    Ok(names)
}
