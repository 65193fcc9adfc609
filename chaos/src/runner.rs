//! Runs a drill's method against a running [`Lab`] while the load generator runs: waits for
//! each step's time (or condition), performs it, and journals everything with timestamps on
//! the run's clock. It decides nothing about pass or fail beyond "did the step itself do
//! what it said" (a `twinctl` exit code, a process that became ready).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::drill::{
    Action, Condition, Direction, Drill, Fault as FaultSpec, Twinctl, WaitUntil, When,
};
use crate::faultproxy::{Fault, Mode, Shaping};
use crate::lab::Lab;
use crate::loadgen::{self, LiveCounters, SharedRecording};
use crate::record::{Recording, StepRun};
use crate::target::{LinkTarget, ProcTarget, UpstreamTarget};

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
    for step in &drill.method {
        let label = step.name.clone();
        match &step.when {
            When::At(at) => {
                tokio::time::sleep_until(lab.clock.instant(at.ms()).into()).await;
            }
            When::WaitUntil(cond) => {
                journal.log("wait", format!("{label}: waiting for {cond}"));
                if let Err(why) = wait_until(&lab, &recording, cond).await {
                    let now = lab.clock.ms();
                    journal.log("step failed", format!("{label}: {why}"));
                    steps.push(StepRun {
                        label,
                        started_ms: now,
                        ended_ms: now,
                        ok: false,
                        detail: why,
                        output: None,
                    });
                    continue;
                }
            }
        }
        *phase.lock().unwrap_or_else(|e| e.into_inner()) = label.clone();
        let started_ms = lab.clock.ms();
        journal.log("step", format!("{label}: {}", step.action));
        if let Action::Twinctl(
            t @ Twinctl {
                background: true, ..
            },
        ) = &step.action
        {
            let (lab2, journal2, t, label2, mut outs) = (
                lab.clone(),
                journal.clone(),
                t.clone(),
                label.clone(),
                outputs.clone(),
            );
            let task = tokio::spawn(async move {
                let (ok, detail, _) = twinctl(&lab2, &t, &label2, &mut outs).await;
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
                output: None,
            });
            continue;
        }
        let (ok, detail, ended_ms) =
            perform(&lab, &journal, &step.action, &label, &mut outputs).await;
        journal.log(
            if ok { "step done" } else { "step failed" },
            format!("{label}: {detail}"),
        );
        let output = match &step.action {
            Action::Twinctl(_) => outputs.get(&label).cloned(),
            _ => None,
        };
        steps.push(StepRun {
            label,
            started_ms,
            ended_ms: ended_ms.unwrap_or_else(|| lab.clock.ms()),
            ok,
            detail,
            output,
        });
    }
    for (i, task) in background {
        let (ok, detail, ended_ms) = match task.await {
            Ok((ok, detail, ended_ms, out)) => {
                if let Some(v) = out {
                    steps[i].output = Some(v.clone());
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

/// Polls the condition every 20 ms until it holds or its timeout passes.
async fn wait_until(lab: &Lab, rec: &SharedRecording, w: &WaitUntil) -> Result<(), String> {
    let since = lab.clock.ms();
    let end = tokio::time::Instant::now() + w.timeout.0;
    loop {
        let now = lab.clock.ms();
        let holds = match &w.condition {
            Condition::IdsRefused => {
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
            }
            Condition::ServedBy { dc, share } => {
                let r = loadgen::lock(rec);
                let recent: Vec<_> = r
                    .samples
                    .iter()
                    .rev()
                    .take_while(|s| s.sent_ms >= now - 3000.0)
                    .filter(|s| {
                        s.kind.is_routed() && s.sent_ms >= now - 1000.0 && s.sent_ms >= since
                    })
                    .collect();
                let hit = recent
                    .iter()
                    .filter(|s| s.served_ok() && s.dc == Some(dc.code))
                    .count();
                recent.len() >= 10 && hit as f64 >= share.0 * recent.len() as f64
            }
            Condition::Ready(t) => ready(lab, t).await,
        };
        if holds {
            return Ok(());
        }
        if tokio::time::Instant::now() >= end {
            return Err(format!("{w} did not happen"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready(lab: &Lab, target: &ProcTarget) -> bool {
    match target {
        ProcTarget::Sidecar { dc, index } => match lab.sidecar_index(dc.code, *index) {
            Some(i) => matches!(
                crate::http::get(&lab.probe, lab.sidecars[i].admin, "/readyz").await,
                Ok((200, _))
            ),
            None => false,
        },
        ProcTarget::ControlPlane(i) => matches!(
            crate::http::get(&lab.probe, lab.control_planes[*i].status, "/healthz").await,
            Ok((c, _)) if c < 500
        ),
        ProcTarget::Etcd(sel) => {
            let members = lab.etcd.resolve(*sel).await;
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
        ProcTarget::Sidecars { .. } => false,
    }
}

/// A network fault for the fault proxies.
pub fn fault_of(fault: &FaultSpec) -> Fault {
    let shaped = |shaping, direction| {
        let (request, response) = match direction {
            Direction::Both => (shaping, shaping),
            Direction::Request => (shaping, Shaping::default()),
            Direction::Response => (Shaping::default(), shaping),
        };
        Fault {
            mode: Mode::Pass,
            request,
            response,
        }
    };
    let unshaped = |mode| Fault {
        mode,
        request: Shaping::default(),
        response: Shaping::default(),
    };
    match fault {
        FaultSpec::Latency {
            latency,
            jitter,
            direction,
        } => shaped(
            Shaping {
                latency: latency.0,
                jitter: jitter.map(|d| d.0).unwrap_or_default(),
                bandwidth: None,
            },
            *direction,
        ),
        FaultSpec::Bandwidth {
            bandwidth,
            direction,
        } => shaped(
            Shaping {
                bandwidth: Some(bandwidth.0),
                ..Shaping::default()
            },
            *direction,
        ),
        FaultSpec::Reset => unshaped(Mode::Reset),
        FaultSpec::Blackhole => unshaped(Mode::Blackhole),
        FaultSpec::Refuse => unshaped(Mode::Refuse),
    }
}

/// Runs a `twinctl` step's command and checks its exit code.
async fn twinctl(
    lab: &Lab,
    t: &Twinctl,
    label: &str,
    outputs: &mut HashMap<String, serde_json::Value>,
) -> (bool, String, Option<f64>) {
    let expect = i32::from(t.expect_exit);
    crate::twinctl::twinctl(lab, &t.words, expect, label, outputs).await
}

/// Performs one action: (ok, what happened, when its effect ends if not now).
async fn perform(
    lab: &Arc<Lab>,
    journal: &Arc<Journal>,
    action: &Action,
    label: &str,
    outputs: &mut HashMap<String, serde_json::Value>,
) -> (bool, String, Option<f64>) {
    match action {
        Action::Network(n) => {
            let faulted = network(lab, journal, &n.target, &n.fault, n.duration.0, label);
            let end = lab.clock.ms() + n.duration.ms();
            (true, format!("{faulted} proxies faulted"), Some(end))
        }
        Action::Kill(t) => {
            let names = for_each_proc(lab, t, |p| p.kill(), true).await;
            (true, format!("killed {}", names.join(", ")), None)
        }
        Action::Pause(p) => {
            let names = pause(lab, journal, &p.target, p.duration.0).await;
            let end = lab.clock.ms() + p.duration.ms();
            (true, format!("paused {}", names.join(", ")), Some(end))
        }
        Action::Restart(r) => match restart(lab, &r.target, r.clock).await {
            Ok(names) => (true, format!("{} ready", names.join(", ")), None),
            Err(e) => (false, e, None),
        },
        Action::Twinctl(t) => twinctl(lab, t, label, outputs).await,
    }
}

/// Sets the fault on every proxy of the target, and a timer that clears it; how many proxies.
fn network(
    lab: &Arc<Lab>,
    journal: &Arc<Journal>,
    target: &LinkTarget,
    fault: &FaultSpec,
    lasts: Duration,
    label: &str,
) -> usize {
    let proxies: Vec<(usize, usize, bool)> = match target {
        LinkTarget::Upstream(UpstreamTarget::All { dc }) => (0..lab.upstreams[dc.code].len())
            .map(|i| (dc.code, i, true))
            .collect(),
        LinkTarget::Upstream(UpstreamTarget::One { dc, index }) => vec![(dc.code, *index, true)],
        LinkTarget::EtcdLink { dc } => (0..lab.dc_names.len())
            .filter(|d| dc.as_ref().is_none_or(|x| x.code == *d))
            .flat_map(|d| (0..lab.etcd.members.len()).map(move |m| (d, m, false)))
            .collect(),
    };
    let fault = fault_of(fault);
    let proxy = |(d, i, up): (usize, usize, bool)| {
        if up {
            &lab.upstreams[d][i].1
        } else {
            &lab.etcd_links[d][i]
        }
    };
    let gens: Vec<((usize, usize, bool), u64)> =
        proxies.iter().map(|p| (*p, proxy(*p).set(fault))).collect();
    let (lab2, journal2, what) = (
        lab.clone(),
        journal.clone(),
        format!("{label}: {target} cleared"),
    );
    let timer = tokio::spawn(async move {
        tokio::time::sleep(lasts).await;
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
    proxies.len()
}

/// SIGSTOPs every process of the target, and a timer that resumes them; their names.
async fn pause(
    lab: &Arc<Lab>,
    journal: &Arc<Journal>,
    target: &ProcTarget,
    lasts: Duration,
) -> Vec<String> {
    let members = match target {
        ProcTarget::Etcd(sel) => lab.etcd.resolve(*sel).await,
        _ => vec![],
    };
    let names = paused(lab, target, &members, true);
    let (lab2, journal2, t2) = (lab.clone(), journal.clone(), target.clone());
    let timer = tokio::spawn(async move {
        tokio::time::sleep(lasts).await;
        let names = paused(&lab2, &t2, &members, false);
        journal2.log("resumed", names.join(", "));
    });
    lab.timers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(timer);
    names
}

fn sidecars_of(lab: &Lab, t: &ProcTarget) -> Vec<usize> {
    match t {
        ProcTarget::Sidecar { dc, index } => {
            lab.sidecar_index(dc.code, *index).into_iter().collect()
        }
        ProcTarget::Sidecars { dc } => (0..lab.sidecars.len())
            .filter(|&i| lab.sidecars[i].dc == dc.code)
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
