//! Job and task states, and the one function that decides a job's next state.
//!
//! Kuscia's names (`AwaitingApproval`, `ApprovalReject`, ...) appear only in [`JobPhase::as_str`]
//! and [`JobPhase::parse`], at the serde/SQL boundary; the rest of the code matches on enums.
//!
//! [`evaluate`] is pure: it takes what a node knows about a job (approvals, commands, the
//! aggregated state of every task) and returns the job's phase, a reason a user can act on, and
//! the tasks to start now. Every node of a job runs it on its own copy of the synced state, so
//! the parties agree without a coordinator; a node only ever starts its own party of a task.
//!
//! Rules (Kuscia's `kusciajob` handlers):
//! - a `Cancel` command → Cancelled (terminal); `Stop` → Failed; `Suspend` → Suspended;
//! - any party rejected → ApprovalReject (terminal);
//! - the manifest not yet at every party → Initialized; not every party accepted →
//!   AwaitingApproval;
//! - ready tasks (every dependency Succeeded) start by priority (higher first, then manifest
//!   order), at most `max_parallelism` running at once;
//! - Strict: a critical (non-tolerable) task Failed → the job Failed at once, nothing new starts;
//!   BestEffort: the failed task's descendants are skipped, independent branches go on, and the
//!   job is Failed once nothing can run;
//! - Succeeded when every task has finished and every critical task Succeeded.

use serde::{Deserialize, Serialize};

/// A job's state (Kuscia's `KusciaJob` phases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPhase {
    /// Stored at the initiator, not yet received by every party.
    Initialized,
    /// Received everywhere; waiting for a party's approval.
    AwaitingApproval,
    /// Approved by every party; no task started yet.
    Pending,
    /// At least one task started.
    Running,
    /// Every critical task succeeded.
    Succeeded,
    /// A critical task failed, or the job was stopped.
    Failed,
    /// Cancelled (terminal, cannot restart).
    Cancelled,
    /// Suspended (restartable).
    Suspended,
    /// A party rejected the job (terminal).
    ApprovalReject,
}

impl JobPhase {
    /// Kuscia's name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Initialized => "Initialized",
            JobPhase::AwaitingApproval => "AwaitingApproval",
            JobPhase::Pending => "Pending",
            JobPhase::Running => "Running",
            JobPhase::Succeeded => "Succeeded",
            JobPhase::Failed => "Failed",
            JobPhase::Cancelled => "Cancelled",
            JobPhase::Suspended => "Suspended",
            JobPhase::ApprovalReject => "ApprovalReject",
        }
    }

    /// Parses Kuscia's name (also the lower-case `initialized` Kuscia's code writes).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Initialized" | "initialized" => JobPhase::Initialized,
            "AwaitingApproval" => JobPhase::AwaitingApproval,
            "Pending" => JobPhase::Pending,
            "Running" => JobPhase::Running,
            "Succeeded" => JobPhase::Succeeded,
            "Failed" => JobPhase::Failed,
            "Cancelled" => JobPhase::Cancelled,
            "Suspended" => JobPhase::Suspended,
            "ApprovalReject" => JobPhase::ApprovalReject,
            _ => return None,
        })
    }

    /// No further transition without a user command (restart works on Failed and Suspended).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobPhase::Succeeded
                | JobPhase::Failed
                | JobPhase::Cancelled
                | JobPhase::Suspended
                | JobPhase::ApprovalReject
        )
    }
}

/// A task's (or one party's part of a task's) state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPhase {
    /// Not started.
    Pending,
    /// Started.
    Running,
    /// Finished well.
    Succeeded,
    /// Finished badly (the reason says why).
    Failed,
}

impl TaskPhase {
    /// Kuscia's name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskPhase::Pending => "Pending",
            TaskPhase::Running => "Running",
            TaskPhase::Succeeded => "Succeeded",
            TaskPhase::Failed => "Failed",
        }
    }

    /// Parses Kuscia's name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Pending" => TaskPhase::Pending,
            "Running" => TaskPhase::Running,
            "Succeeded" => TaskPhase::Succeeded,
            "Failed" => TaskPhase::Failed,
            _ => return None,
        })
    }

    /// Succeeded or Failed.
    pub fn is_done(self) -> bool {
        matches!(self, TaskPhase::Succeeded | TaskPhase::Failed)
    }
}

/// Kuscia's `scheduleMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ScheduleMode {
    /// A critical task failure fails the job at once (Kuscia's CRD default).
    #[default]
    Strict,
    /// Independent branches go on after a failure.
    BestEffort,
}

/// A user command that overrides the task-driven state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// None in force.
    None,
    /// `stop`: the job ends Failed.
    Stop(String),
    /// `cancel`: the job ends Cancelled.
    Cancel(String),
    /// `suspend`: the job ends Suspended (restartable).
    Suspend(String),
}

/// What [`evaluate`] needs to know about one task.
#[derive(Debug, Clone)]
pub struct TaskView {
    /// The alias (dependencies name aliases).
    pub alias: String,
    /// Aliases this task waits for.
    pub dependencies: Vec<String>,
    /// Higher starts first.
    pub priority: i32,
    /// A tolerable task's failure does not fail the job.
    pub tolerable: bool,
    /// The aggregated state over its parties (see [`aggregate`]).
    pub phase: TaskPhase,
    /// Why it is in that state.
    pub reason: String,
}

/// What [`evaluate`] needs to know about a job.
#[derive(Debug, Clone)]
pub struct JobView {
    /// Most tasks running at once (≥ 1).
    pub max_parallelism: usize,
    /// Strict or BestEffort.
    pub mode: ScheduleMode,
    /// Parties that have not received the manifest yet.
    pub not_received: Vec<String>,
    /// Parties that have not accepted yet.
    pub awaiting: Vec<String>,
    /// A party that rejected, with its reason.
    pub rejected: Option<(String, String)>,
    /// The command in force.
    pub command: Command,
    /// The tasks in manifest order.
    pub tasks: Vec<TaskView>,
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The job's phase.
    pub phase: JobPhase,
    /// Why (empty when nothing needs saying).
    pub reason: String,
    /// Indexes of tasks to start now.
    pub start: Vec<usize>,
    /// Indexes of running tasks, whose parts on this node start now if they
    /// have not: another party may have started its part, and its report
    /// reached this node, before this node's pass saw the task pending (the
    /// task's phase is then Running here, and it is in no `start`).
    pub join: Vec<usize>,
}

/// A task's state from its parties' states: any Failed → Failed (with that party's reason);
/// all Succeeded → Succeeded; any started → Running; else Pending.
///
/// Of several failed parties, the reason shown is the cause: a party whose
/// only complaint is that its peer went away ([`peer_went_away`]) failed
/// because another one did, so another failed party's reason comes first
/// (else the first in party order). Without this the job's reason depended
/// on which report reached the node first.
pub fn aggregate(parties: &[(String, TaskPhase, String)]) -> (TaskPhase, String) {
    let mut failed = parties.iter().filter(|p| p.1 == TaskPhase::Failed);
    let cause = failed.clone().find(|p| !peer_went_away(&p.2));
    if let Some((d, _, r)) = cause.or_else(|| failed.next()) {
        return (TaskPhase::Failed, format!("{d}: {r}"));
    }
    if !parties.is_empty() && parties.iter().all(|p| p.1 == TaskPhase::Succeeded) {
        return (TaskPhase::Succeeded, String::new());
    }
    if parties.iter().any(|p| p.1 != TaskPhase::Pending) {
        let waiting: Vec<&str> = parties
            .iter()
            .filter(|p| p.1 == TaskPhase::Pending)
            .map(|p| p.0.as_str())
            .collect();
        let reason = if waiting.is_empty() {
            String::new()
        } else {
            format!("waiting for {} to start its part", waiting.join(", "))
        };
        return (TaskPhase::Running, reason);
    }
    (TaskPhase::Pending, String::new())
}

/// Whether a party's failure only says that the other party went away: the
/// PSI engine's and the link's wording, "the peer closed the connection…".
fn peer_went_away(reason: &str) -> bool {
    reason.starts_with("the peer closed the connection")
}

/// Decides the job's phase and the tasks to start (see the module docs for the rules).
pub fn evaluate(v: &JobView) -> Decision {
    let done = |phase, reason: String| Decision {
        phase,
        reason,
        start: vec![],
        join: vec![],
    };
    match &v.command {
        Command::Cancel(r) => return done(JobPhase::Cancelled, r.clone()),
        Command::Stop(r) => return done(JobPhase::Failed, r.clone()),
        Command::Suspend(r) => return done(JobPhase::Suspended, r.clone()),
        Command::None => {}
    }
    if let Some((d, r)) = &v.rejected {
        return done(
            JobPhase::ApprovalReject,
            format!("{d} rejected the job: {r}"),
        );
    }
    if !v.not_received.is_empty() {
        return done(
            JobPhase::Initialized,
            format!(
                "sending the job to {} (is the route Ready?)",
                v.not_received.join(", ")
            ),
        );
    }
    if !v.awaiting.is_empty() {
        return done(
            JobPhase::AwaitingApproval,
            format!(
                "waiting for approval by {} (venn job approve there)",
                v.awaiting.join(", ")
            ),
        );
    }
    let n = v.tasks.len();
    let index_of = |alias: &str| v.tasks.iter().position(|t| t.alias == alias);
    // blocked[i]: a dependency (transitively) failed, so task i can never run.
    let mut blocked = vec![false; n];
    let mut changed = true;
    while changed {
        changed = false;
        for (i, t) in v.tasks.iter().enumerate() {
            if blocked[i] || t.phase != TaskPhase::Pending {
                continue;
            }
            let bad = t.dependencies.iter().any(|d| {
                index_of(d).is_some_and(|j| blocked[j] || v.tasks[j].phase == TaskPhase::Failed)
            });
            if bad {
                blocked[i] = true;
                changed = true;
            }
        }
    }
    let failed_critical = v
        .tasks
        .iter()
        .find(|t| t.phase == TaskPhase::Failed && !t.tolerable);
    let running = v
        .tasks
        .iter()
        .filter(|t| t.phase == TaskPhase::Running)
        .count();
    if v.mode == ScheduleMode::Strict
        && let Some(t) = failed_critical
    {
        return done(
            JobPhase::Failed,
            format!("task {} failed: {}", t.alias, t.reason),
        );
    }
    let mut ready: Vec<usize> = (0..n)
        .filter(|&i| {
            let t = &v.tasks[i];
            t.phase == TaskPhase::Pending
                && !blocked[i]
                && t.dependencies
                    .iter()
                    .all(|d| index_of(d).is_some_and(|j| v.tasks[j].phase == TaskPhase::Succeeded))
        })
        .collect();
    ready.sort_by_key(|&i| (std::cmp::Reverse(v.tasks[i].priority), i));
    let slots = v.max_parallelism.max(1).saturating_sub(running);
    ready.truncate(slots);
    let waiting_on_deps = (0..n)
        .any(|i| v.tasks[i].phase == TaskPhase::Pending && !blocked[i] && !ready.contains(&i));
    if running == 0 && ready.is_empty() && !waiting_on_deps {
        // Nothing runs or can run: the job is over.
        return match failed_critical {
            Some(t) => done(
                JobPhase::Failed,
                format!("task {} failed: {}", t.alias, t.reason),
            ),
            None => done(JobPhase::Succeeded, String::new()),
        };
    }
    let started = v.tasks.iter().any(|t| t.phase != TaskPhase::Pending);
    let phase = if started || !ready.is_empty() {
        JobPhase::Running
    } else {
        JobPhase::Pending
    };
    let reason = v
        .tasks
        .iter()
        .find(|t| t.phase == TaskPhase::Running && !t.reason.is_empty())
        .map(|t| format!("task {}: {}", t.alias, t.reason))
        .unwrap_or_default();
    let join = (0..n)
        .filter(|&i| v.tasks[i].phase == TaskPhase::Running)
        .collect();
    Decision {
        phase,
        reason,
        start: ready,
        join,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(alias: &str, deps: &[&str], priority: i32, phase: TaskPhase) -> TaskView {
        TaskView {
            alias: alias.into(),
            dependencies: deps.iter().map(|d| d.to_string()).collect(),
            priority,
            tolerable: false,
            phase,
            reason: if phase == TaskPhase::Failed {
                "boom".into()
            } else {
                String::new()
            },
        }
    }

    fn job(tasks: Vec<TaskView>) -> JobView {
        JobView {
            max_parallelism: 1,
            mode: ScheduleMode::Strict,
            not_received: vec![],
            awaiting: vec![],
            rejected: None,
            command: Command::None,
            tasks,
        }
    }

    use TaskPhase::*;

    #[test]
    fn approval_states_come_first() {
        let mut v = job(vec![task("a", &[], 0, Pending)]);
        v.not_received = vec!["bob".into()];
        assert_eq!(evaluate(&v).phase, JobPhase::Initialized);
        v.not_received.clear();
        v.awaiting = vec!["bob".into()];
        let d = evaluate(&v);
        assert_eq!(d.phase, JobPhase::AwaitingApproval);
        assert!(d.reason.contains("bob"), "{}", d.reason);
        assert!(d.start.is_empty());
        v.rejected = Some(("bob".into(), "no".into()));
        assert_eq!(evaluate(&v).phase, JobPhase::ApprovalReject);
        v.command = Command::Cancel("by alice".into());
        assert_eq!(evaluate(&v).phase, JobPhase::Cancelled);
    }

    #[test]
    fn priority_and_parallelism() {
        let mut v = job(vec![
            task("low", &[], 1, Pending),
            task("high", &[], 9, Pending),
            task("mid", &[], 5, Pending),
        ]);
        assert_eq!(evaluate(&v).start, vec![1]);
        v.max_parallelism = 2;
        assert_eq!(evaluate(&v).start, vec![1, 2]);
        v.tasks[1].phase = Running;
        let d = evaluate(&v);
        assert_eq!(d.start, vec![2]);
        assert_eq!(d.phase, JobPhase::Running);
        // the running task is offered to join: this node starts its part
        // if another party's report made the task Running here first
        assert_eq!(d.join, vec![1]);
        v.command = Command::Stop("by alice".into());
        assert!(evaluate(&v).join.is_empty(), "a stopped job starts nothing");
    }

    #[test]
    fn dependencies_wait_then_succeed() {
        let mut v = job(vec![
            task("psi", &[], 0, Pending),
            task("next", &["psi"], 0, Pending),
        ]);
        v.max_parallelism = 4;
        assert_eq!(evaluate(&v).start, vec![0]);
        v.tasks[0].phase = Succeeded;
        assert_eq!(evaluate(&v).start, vec![1]);
        v.tasks[1].phase = Succeeded;
        assert_eq!(
            evaluate(&v),
            Decision {
                phase: JobPhase::Succeeded,
                reason: String::new(),
                start: vec![],
                join: vec![]
            }
        );
    }

    #[test]
    fn strict_fails_at_once_best_effort_goes_on() {
        let mut v = job(vec![
            task("a", &[], 0, Failed),
            task("b", &["a"], 0, Pending),
            task("c", &[], 0, Pending),
        ]);
        v.max_parallelism = 3;
        let d = evaluate(&v);
        assert_eq!(d.phase, JobPhase::Failed);
        assert!(d.reason.contains("task a failed: boom"), "{}", d.reason);
        assert!(d.start.is_empty());
        v.mode = ScheduleMode::BestEffort;
        let d = evaluate(&v);
        assert_eq!(d.phase, JobPhase::Running);
        assert_eq!(d.start, vec![2], "b is skipped, c runs");
        v.tasks[2].phase = Succeeded;
        assert_eq!(evaluate(&v).phase, JobPhase::Failed);
    }

    #[test]
    fn tolerable_failure_does_not_fail_the_job() {
        let mut v = job(vec![
            task("a", &[], 0, Failed),
            task("b", &[], 0, Succeeded),
        ]);
        v.tasks[0].tolerable = true;
        assert_eq!(evaluate(&v).phase, JobPhase::Succeeded);
    }

    #[test]
    fn stop_and_suspend() {
        let mut v = job(vec![task("a", &[], 0, Running)]);
        v.command = Command::Stop("stopped by alice".into());
        assert_eq!(evaluate(&v).phase, JobPhase::Failed);
        v.command = Command::Suspend("x".into());
        assert_eq!(evaluate(&v).phase, JobPhase::Suspended);
    }

    #[test]
    fn aggregate_parties() {
        let p = |d: &str, ph| (d.to_string(), ph, "why".to_string());
        assert_eq!(aggregate(&[p("a", Pending), p("b", Pending)]).0, Pending);
        let (ph, r) = aggregate(&[p("a", Running), p("b", Pending)]);
        assert_eq!(ph, Running);
        assert!(r.contains('b'));
        assert_eq!(aggregate(&[p("a", Succeeded), p("b", Running)]).0, Running);
        assert_eq!(
            aggregate(&[p("a", Succeeded), p("b", Succeeded)]).0,
            Succeeded
        );
        assert_eq!(
            aggregate(&[p("a", Succeeded), p("b", Failed)]),
            (Failed, "b: why".into())
        );
        // the cause, not the consequence: b was killed, a saw it go away
        let gone = "the peer closed the connection before the protocol finished";
        let f = |d: &str, r: &str| (d.to_string(), Failed, r.to_string());
        assert_eq!(
            aggregate(&[f("a", gone), f("b", "killed (signal 9)")]),
            (Failed, "b: killed (signal 9)".into())
        );
        assert_eq!(
            aggregate(&[f("a", "disk full"), f("b", gone)]),
            (Failed, "a: disk full".into())
        );
        // both saw the other go away: the first in party order
        assert_eq!(
            aggregate(&[f("a", gone), f("b", gone)]),
            (Failed, format!("a: {gone}"))
        );
        assert_eq!(
            aggregate(&[f("a", "x"), f("b", "y")]),
            (Failed, "a: x".into())
        );
    }

    #[test]
    fn names_round_trip() {
        for p in [
            JobPhase::Initialized,
            JobPhase::AwaitingApproval,
            JobPhase::Pending,
            JobPhase::Running,
            JobPhase::Succeeded,
            JobPhase::Failed,
            JobPhase::Cancelled,
            JobPhase::Suspended,
            JobPhase::ApprovalReject,
        ] {
            assert_eq!(JobPhase::parse(p.as_str()), Some(p));
        }
    }
}
