//! The detail of a job record, one type per kind of job, and the fallback that keeps a detail
//! this pgvault cannot read.
//!
//! Reading rules (old and newer records stay readable):
//! - Every field has a default, so a detail written by an older pgvault (fewer fields) reads.
//! - Fields this pgvault does not know (written by a newer one) are kept in `unknown` and
//!   written back as they were.
//! - A detail that does not fit its kind's type at all (a field of another type, not an object)
//!   is kept whole as [`Detail::Other`], shown as it is by `pgvault jobs --json` and written
//!   back unchanged; the `jobs` function withholds it (it might hold a secret).
//! - `null` (a record that has done nothing yet) is [`Detail::None`].

use super::JobKind;
use crate::domain::restore::{Plan, RestoreRequest, RestoreTask, TaskReport};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// What a job did, by kind. Serialized as the kind's object alone (the record's `kind` says
/// which); read through [`Detail::read`].
// A record holds one detail and is read or written a few times per job: the size of the
// largest variant (a task with its report) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Detail {
    /// Nothing recorded yet (`null`).
    #[default]
    None,
    Backup(BackupDetail),
    RestoreRequest(RequestDetail),
    RestoreTask(TaskDetail),
    Drill(DrillDetail),
    Retention(RetentionDetail),
    Verify(VerifyDetail),
    PgbackrestSas(RotationDetail),
    PgbackrestFreshness(FreshnessDetail),
    Doctor(DoctorDetail),
    /// A detail that does not fit its kind's type, kept as read (see the module docs).
    Other(Value),
}

macro_rules! kinds {
    ($($variant:ident($ty:ty), $get:ident;)*) => {
        impl Detail {
            /// The detail of a `kind` record from its JSON; one that does not fit is kept as
            /// [`Detail::Other`].
            pub fn read(kind: JobKind, value: Value) -> Detail {
                if value.is_null() {
                    return Detail::None;
                }
                match kind {
                    $(JobKind::$variant => match <$ty>::deserialize(&value) {
                        Ok(d) => Detail::$variant(d),
                        Err(_) => Detail::Other(value),
                    },)*
                }
            }

            /// A `kind` record's detail with nothing in it.
            pub fn empty(kind: JobKind) -> Detail {
                match kind {
                    $(JobKind::$variant => Detail::$variant(<$ty>::default()),)*
                }
            }

            /// Whether this detail may be a `kind` record's.
            pub fn fits(&self, kind: JobKind) -> bool {
                match self {
                    Detail::None | Detail::Other(_) => true,
                    $(Detail::$variant(_) => kind == JobKind::$variant,)*
                }
            }

            /// Whether the host runs the failed job again (`None`: it did not fail, or an old
            /// record did not say).
            pub fn will_retry(&self) -> Option<bool> {
                match self {
                    Detail::None => None,
                    Detail::Other(v) => v.get("will_retry").and_then(Value::as_bool),
                    $(Detail::$variant(d) => d.will_retry,)*
                }
            }

            pub(super) fn set_will_retry(&mut self, will_retry: bool) {
                match self {
                    Detail::None => {}
                    Detail::Other(Value::Object(map)) => {
                        map.insert("will_retry".into(), Value::Bool(will_retry));
                    }
                    Detail::Other(other) => {
                        let detail = other.take();
                        *other = serde_json::json!({ "will_retry": will_retry, "detail": detail });
                    }
                    $(Detail::$variant(d) => d.will_retry = Some(will_retry),)*
                }
            }

            $(
            /// This kind's detail, if the record is of that kind and its detail was readable.
            pub fn $get(&self) -> Option<&$ty> {
                match self {
                    Detail::$variant(d) => Some(d),
                    _ => None,
                }
            }
            )*
        }

        $(impl From<$ty> for Detail {
            fn from(d: $ty) -> Detail {
                Detail::$variant(d)
            }
        })*

        impl Serialize for Detail {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    Detail::None => s.serialize_none(),
                    Detail::Other(v) => v.serialize(s),
                    $(Detail::$variant(d) => d.serialize(s),)*
                }
            }
        }
    };
}

kinds! {
    Backup(BackupDetail), backup;
    RestoreRequest(RequestDetail), restore_request;
    RestoreTask(TaskDetail), restore_task;
    Drill(DrillDetail), drill;
    Retention(RetentionDetail), retention;
    Verify(VerifyDetail), verify;
    PgbackrestSas(RotationDetail), rotation;
    PgbackrestFreshness(FreshnessDetail), freshness;
    Doctor(DoctorDetail), doctor;
}

/// Alone, a detail cannot know its kind: it reads as [`Detail::Other`] (or `None`), and the
/// record's reader types it ([`Detail::typed`]) once the kind is known.
impl<'de> Deserialize<'de> for Detail {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(if v.is_null() { Detail::None } else { Detail::Other(v) })
    }
}

impl Detail {
    /// Read an untyped detail as `kind`'s; a typed one stays as it is.
    pub fn typed(self, kind: JobKind) -> Detail {
        match self {
            Detail::Other(v) => Detail::read(kind, v),
            d => d,
        }
    }

    /// `kind`'s empty detail in place of none (a failure must say whether it is retried).
    pub(super) fn or_empty(self, kind: JobKind) -> Detail {
        match self {
            Detail::None => Detail::empty(kind),
            d => d,
        }
    }

    /// Replace every secret (the URLs of exported files) by `note`; a detail this pgvault
    /// cannot read is replaced by `note` whole, as it may hold one.
    pub fn withhold_secrets(&mut self, note: &str) {
        match self {
            Detail::RestoreTask(TaskDetail { report: Some(r), .. })
            | Detail::Drill(DrillDetail { report: Some(r), .. }) => r.withhold_secrets(note),
            Detail::Other(v) if v.is_object() || v.is_array() => {
                *v = Value::String(format!("{note} (a detail this pgvault does not read)"))
            }
            _ => {}
        }
    }
}

/// A backup job: the backup it published (or found published by another delivery).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackupDetail {
    /// The backup id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// Another delivery of the job had published it: this one did nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_done: bool,
    /// By when the next backup of the same database must have succeeded: its schedule's next
    /// run after this job was requested, plus the RPO margin (the retention timer's RPO check,
    /// carried by the job event to the log alert).
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub rpo_due_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will_retry: Option<bool>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// A restore request: what was asked, its plan, and what idempotency is decided on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RestoreRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// Every task of the plan was sent (or, for the CLI, recorded).
    #[serde(default)]
    pub enqueued: bool,
    /// The request was refused (invalid or impossible): its id may be posted again.
    #[serde(default)]
    pub rejected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will_retry: Option<bool>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

impl RequestDetail {
    /// The detail of a request record; a record without one (or an unreadable one) reads as
    /// empty: not rejected, nothing planned.
    pub fn of(rec: &super::JobRecord) -> RequestDetail {
        rec.detail.restore_request().cloned().unwrap_or_default()
    }

    /// Whether the recorded request is `req` (see [`RestoreRequest::same_as`]).
    pub fn is_request(&self, req: &RestoreRequest) -> bool {
        self.request.as_ref().is_some_and(|r| r.same_as(req))
    }
}

/// A restore task: the task, what it did, and what the worker decides on when the task comes
/// again (the start of a rehydration wait, whether the host retries a failure).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<RestoreTask>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<TaskReport>,
    /// When the wait for rehydration began: it bounds the total wait across deliveries.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub rehydration_started_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recheck_secs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will_retry: Option<bool>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

impl TaskDetail {
    /// A task record's detail; one without (or unreadable) reads as empty.
    pub fn of(rec: &super::JobRecord) -> TaskDetail {
        rec.detail.restore_task().cloned().unwrap_or_default()
    }

    /// The detail of a task that is to run (or ran and failed): the task alone.
    pub fn of_task(task: &RestoreTask) -> TaskDetail {
        TaskDetail { task: Some(task.clone()), ..Default::default() }
    }
}

/// A restore drill: the backup restored into the scratch server, and how long it took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrillDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// The restore's time (RTO evidence); also on a failed drill, up to the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<TaskReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will_retry: Option<bool>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// What a run of retention removed, kept and moved; on a failed run, what it did before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Executed {
    #[serde(default)]
    pub removed: Vec<String>,
    /// Backups whose removal storage refused by policy (WORM): kept, with the reason.
    #[serde(default)]
    pub refused: Vec<(String, String)>,
    #[serde(default)]
    pub kept: usize,
    /// Data blobs moved to a colder tier.
    #[serde(default)]
    pub tiered: Vec<String>,
    /// Tier moves not made, with the reason (a store without tiers, a blob already there or
    /// colder, a tier changed recently, a refusal): logged, never a failure of the run.
    #[serde(default)]
    pub tier_skipped: Vec<(String, String)>,
    /// Backups the plan removes but that got a hold (`pgvault keep`) while retention ran: kept,
    /// not counted in `kept` (which counts the plan's keeps).
    #[serde(default)]
    pub held_meanwhile: Vec<String>,
}

/// A run of retention.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetentionDetail {
    #[serde(default)]
    pub executed: Executed,
    /// Job records removed by their own retention (absent when that failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_records_pruned: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will_retry: Option<bool>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// A run of `pgvault verify`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<usize>,
    /// Data blobs without a manifest (`--all`).
    #[serde(default)]
    pub orphans: Vec<String>,
    /// The orphans removed (`--clean-orphans`), up to a failure.
    #[serde(default)]
    pub cleaned: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will_retry: Option<bool>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// What the rotator decided for a pgBackRest target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotationAction {
    /// Delivery `auto`: pgBackRest uses the VM's identity; nothing to rotate.
    Skip,
    Keep,
    Rotate,
}

/// How the token reached the VM (or why it did not).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryResult {
    pub ok: bool,
    /// Push: what the Run Command printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One SAS rotation of a pgBackRest target (also what `rotate_one` returns). Never the token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RotationDetail {
    #[serde(default)]
    pub target: String,
    /// `pull`, `push` or `auto`.
    #[serde(default)]
    pub delivery: String,
    #[serde(default)]
    pub vault: String,
    #[serde(default)]
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<RotationAction>,
    /// Why the plan keeps or rotates (or why the target is skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub old_expiry: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub new_expiry: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_result: Option<DeliveryResult>,
    /// The rotation's (or the token read's) error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// No token with margin: the VM is about to lose access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// Rotated (or kept) and delivered, without an alarm. Absent for a skipped target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will_retry: Option<bool>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// One backup in a pgBackRest `backup.info`'s `[backup:current]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEntry {
    pub label: String,
    /// `full`, `diff` or `incr`.
    pub kind: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub stopped: OffsetDateTime,
}

/// One stanza's newest backups, and whether the newest is fresh enough.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StanzaFreshness {
    pub stanza: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<BackupEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<BackupEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incr: Option<BackupEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_label: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub newest_time: Option<OffsetDateTime>,
    #[serde(default)]
    pub fresh: bool,
    /// Why it is not fresh (too old, no backup, `backup.info` unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One freshness check of a pgBackRest target (also what `freshness::check` returns).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FreshnessDetail {
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub ok: bool,
    #[serde(default)]
    pub stanzas: Vec<StanzaFreshness>,
    /// The container could not be opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will_retry: Option<bool>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// One run of `pgvault doctor`: every finding, worst first, and what was checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DoctorDetail {
    #[serde(default)]
    pub findings: Vec<crate::domain::doctor::Finding>,
    /// The servers, restore targets, vaults and containers looked at (`server "prod"`, ...).
    #[serde(default)]
    pub checked: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will_retry: Option<bool>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}
