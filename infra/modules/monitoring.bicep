// Log Analytics + workspace-based Application Insights with local (key) auth disabled: the app
// ingests with its identity (Monitoring Metrics Publisher + APPLICATIONINSIGHTS_AUTHENTICATION_STRING).
// Alert rules match pgvault's error-level log records (JSON lines on stderr, which the Functions
// host forwards to AppTraces) and the Logs its handlers return to the host; the workbook and two
// more rules read the job event (below).

param name string
param location string
param tags object = {}
param principalId string
@description('Resource id of an existing action group; empty: use alertEmail (if any).')
param actionGroupId string = ''
@description('E-mail for a new action group when actionGroupId is empty; empty: no action group.')
param alertEmail string = ''
param retentionInDays int = 90

var roleMonitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

// Log messages of pgvault's failure and rejection records (src/handler/*.rs, src/backup.rs,
// src/restore.rs); tests/infra.rs checks that each one still occurs in the code.
var failureMessages = [
  'backup job failed'
  'backup failed'
  'backup scheduler failed'
  'cannot plan backups for server'
  'cannot enqueue backup job'
  'restore task failed'
  'restore request failed'
  'cannot keep rejected message'
]
var rejectionMessages = [
  'message rejected and kept'
]
// alert_kind values of src/seams/alerts.rs records (AlertKind::as_str): RPO breach and the rest.
var rpoAlertKinds = [
  'missed-schedule'
]

var hasGroup = !empty(actionGroupId) || !empty(alertEmail)

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${name}-logs'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
    }
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${name}-insights'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
    IngestionMode: 'LogAnalytics'
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, principalId, roleMonitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleMonitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource group 'Microsoft.Insights/actionGroups@2023-01-01' = if (empty(actionGroupId) && !empty(alertEmail)) {
  name: '${name}-alerts'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: take('pgvault', 12)
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var groups = !hasGroup ? [] : [empty(actionGroupId) ? group.id : actionGroupId]

var quote = '\''
var failureList = join(map(failureMessages, m => '${quote}${m}${quote}'), ', ')
var rejectionList = join(map(rejectionMessages, m => '${quote}${m}${quote}'), ', ')
var rpoList = join(map(rpoAlertKinds, k => '${quote}${k}${quote}'), ', ')

// ---- the job event: workbook and log alerts -------------------------------------------------
// Every finished job writes one JSON line on stderr, target "pgvault::job", message "job
// finished" (src/monitor/event.rs). The Functions host forwards the custom handler's output
// line by line as traces of category Host.Function.Console: the whole line is AppTraces.Message
// (traces.message in Application Insights), not customDimensions. So every query starts from
// jobEvents, which parses the line into `ev`, and reads fields as ev.<field>; tests/infra.rs
// checks every ev.<field> used below against event::FIELDS.
var jobEvents = 'AppTraces | where Message contains \'"pgvault::job"\' | extend ev = parse_json(Message) | where tostring(ev.target) == \'pgvault::job\' and tostring(ev.message) == \'job finished\''
// A database's label (globals have no database).
var dbLabel = 'iff(isempty(tostring(ev.database)), \'@globals\', tostring(ev.database))'

// The views of the status page (`status`), from the events.
var protectionQuery = '${jobEvents} | where tostring(ev.kind) == \'backup\' and tostring(ev.status) == \'succeeded\' | extend server = tostring(ev.server), database = ${dbLabel}, due = todatetime(ev.rpo_due_at) | summarize arg_max(TimeGenerated, due) by server, database | extend age_hours = round((now() - TimeGenerated) / 1h, 1), state = case(isnull(due), \'unknown\', now() > due, \'missed\', \'ok\') | project server, database, last_success = TimeGenerated, age_hours, rpo_due_at = due, state | order by state asc, server asc, database asc'
var sizeQuery = '${jobEvents} | where tostring(ev.kind) == \'backup\' and tostring(ev.status) == \'succeeded\' | project TimeGenerated, backup = strcat(tostring(ev.server), \'/\', ${dbLabel}), stored_mib = todouble(ev.data_transferred_mb)'
var durationQuery = '${jobEvents} | where tostring(ev.kind) == \'backup\' and tostring(ev.status) == \'succeeded\' | project TimeGenerated, backup = strcat(tostring(ev.server), \'/\', ${dbLabel}), seconds = todouble(ev.duration_seconds)'
var drillQuery = '${jobEvents} | where tostring(ev.kind) == \'drill\' | extend server = tostring(ev.server), database = tostring(ev.database) | summarize arg_max(TimeGenerated, ev) by server, database | project server, database, last_drill = TimeGenerated, status = tostring(ev.status), rto_seconds = todouble(ev.restore_seconds), reason = tostring(ev.reason) | order by server asc, database asc'
var failureQuery = '${jobEvents} | where TimeGenerated > ago(7d) and tostring(ev.status) == \'failed\' | project TimeGenerated, kind = tostring(ev.kind), server = tostring(ev.server), database = tostring(ev.database), failure_code = tostring(ev.failure_code), reason = tostring(ev.reason), trigger = tostring(ev.trigger), attempts = toint(ev.attempts), job_id = tostring(ev.job_id) | order by TimeGenerated desc'
var retentionQuery = '${jobEvents} | where tostring(ev.kind) == \'retention\' | project TimeGenerated, server = iff(isempty(tostring(ev.server)), \'(all)\', tostring(ev.server)), status = tostring(ev.status), removed = toint(ev.removed), kept = toint(ev.kept), seconds = todouble(ev.duration_seconds), reason = tostring(ev.reason) | order by TimeGenerated desc'
var schedulerQuery = '${jobEvents} | where tostring(ev.kind) == \'scheduler\' | project TimeGenerated, server = tostring(ev.server), status = tostring(ev.status), databases = toint(ev.databases), enqueued = toint(ev.enqueued), reason = tostring(ev.reason) | order by TimeGenerated desc'
var pgbackrestQuery = '${jobEvents} | where tostring(ev.kind) in (\'pgbackrest-sas\', \'pgbackrest-freshness\') | extend target = tostring(ev.server), kind = tostring(ev.kind) | summarize arg_max(TimeGenerated, ev) by target, kind | project target, kind, last_run = TimeGenerated, status = tostring(ev.status), reason = tostring(ev.reason)'

var views = [
  {
    name: 'protection'
    title: 'Protection: newest good backup per database, and its RPO deadline'
    query: protectionQuery
    visualization: 'table'
  }
  {
    name: 'size'
    title: 'Trend: stored size of each backup (MiB)'
    query: sizeQuery
    visualization: 'timechart'
  }
  {
    name: 'duration'
    title: 'Trend: backup duration (seconds)'
    query: durationQuery
    visualization: 'timechart'
  }
  {
    name: 'drills'
    title: 'Proof: last restore drill and its RTO'
    query: drillQuery
    visualization: 'table'
  }
  {
    name: 'failures'
    title: 'Trouble: failed jobs in the last 7 days, with their reasons'
    query: failureQuery
    visualization: 'table'
  }
  {
    name: 'retention'
    title: 'Retention runs: backups removed and kept'
    query: retentionQuery
    visualization: 'table'
  }
  {
    name: 'scheduler'
    title: 'Scheduler runs: databases per server and jobs enqueued'
    query: schedulerQuery
    visualization: 'table'
  }
  {
    name: 'pgbackrest'
    title: 'pgBackRest targets: SAS rotation and stanza freshness'
    query: pgbackrestQuery
    visualization: 'table'
  }
]

// Azure Workbooks' serialized form (Notebook/1.0): a heading, then one Log Analytics query per
// view over the last 30 days.
var workbook = {
  version: 'Notebook/1.0'
  items: concat(
    [
      {
        type: 1
        name: 'heading'
        content: {
          json: '## pgvault\nOne row per finished job, from the `job finished` event (see docs/deploy.md, "Workbook and alerts").'
        }
      }
    ],
    map(views, v => {
      type: 3
      name: v.name
      content: {
        version: 'KqlItem/1.0'
        title: v.title
        query: v.query
        size: 0
        timeContext: {
          durationMs: 2592000000
        }
        queryType: 0
        resourceType: 'microsoft.operationalinsights/workspaces'
        visualization: v.visualization
      }
    })
  )
  fallbackResourceIds: [
    workspace.id
  ]
  '$schema': 'https://github.com/Microsoft/Application-Insights-Workbooks/blob/master/schema/workbook.json'
}

resource pgvaultWorkbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID.
  name: guid(resourceGroup().id, name, 'pgvault-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: '${name}: pgvault backups'
    category: 'workbook'
    serializedData: string(workbook)
    sourceId: workspace.id
  }
}

// "No successful backup of a database within its RPO": the newest successful backup's deadline
// (rpo_due_at: its schedule's next run plus PGVAULT_RPO_MARGIN_MINUTES) has passed. Unlike
// pgvault's own missed-schedule alert, this one also fires when pgvault itself stopped running.
// It looks back 2 days, the longest query range a log alert takes: a database whose newest
// success is older than that has left its view (pgvault's own check still covers it).
var rpoMissedQuery = '${jobEvents} | where tostring(ev.kind) == \'backup\' and tostring(ev.status) == \'succeeded\' | extend server = tostring(ev.server), database = ${dbLabel}, due = todatetime(ev.rpo_due_at) | where isnotnull(due) | summarize arg_max(TimeGenerated, due) by server, database | where now() > due | project server, database, last_success = TimeGenerated, due'
// "A scheduler run enqueued nothing for a server that has databases".
var schedulerNothingQuery = '${jobEvents} | where tostring(ev.kind) == \'scheduler\' and toint(ev.databases) > 0 and toint(ev.enqueued) == 0 | project TimeGenerated, server = tostring(ev.server), databases = toint(ev.databases), reason = tostring(ev.reason)'

var rules = [
  {
    key: 'failures'
    title: 'pgvault job failures'
    severity: 1
    query: 'AppTraces | where Message has_any (${failureList}) | where SeverityLevel >= 3 or Message has \'"level":"ERROR"\' | project TimeGenerated, Message, OperationName'
  }
  {
    key: 'rejections'
    title: 'pgvault messages rejected and kept'
    severity: 2
    query: 'AppTraces | where Message has_any (${rejectionList}) | project TimeGenerated, Message, OperationName'
  }
  {
    key: 'rpo'
    title: 'pgvault RPO breach (backup older than the schedule allows)'
    severity: 1
    query: 'AppTraces | where Message has \'"alert":true\' | where Message has_any (${rpoList}) | project TimeGenerated, Message'
  }
  {
    key: 'alerts'
    title: 'pgvault alert records (drills, pgBackRest SAS, other)'
    severity: 2
    query: 'AppTraces | where Message has \'"alert":true\' | where not(Message has_any (${rpoList})) | project TimeGenerated, Message'
  }
  {
    key: 'scheduler-nothing'
    title: 'pgvault scheduler run enqueued nothing for a server that has databases'
    severity: 1
    query: schedulerNothingQuery
  }
]

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = [
  for r in rules: {
    name: '${name}-${r.key}'
    location: location
    tags: tags
    properties: {
      displayName: r.title
      description: 'pgvault: ${r.title}. See docs/deploy.md (Alerts).'
      severity: r.severity
      enabled: true
      scopes: [
        workspace.id
      ]
      evaluationFrequency: 'PT5M'
      windowSize: 'PT15M'
      // A brand-new workspace has no AppTraces table until data has flowed, and validation of a
      // query that names it fails the deployment: skip it (the query is checked by tests/infra.rs).
      skipQueryValidation: true
      criteria: {
        allOf: [
          {
            query: r.query
            timeAggregation: 'Count'
            operator: 'GreaterThan'
            threshold: 0
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      autoMitigate: false
      // Each record is in three evaluations (5-minute frequency, 15-minute window); without
      // mitigation, mute the actions for one window so that it notifies once.
      muteActionsDuration: 'PT15M'
      actions: {
        actionGroups: groups
      }
    }
  }
]

resource rpoMissed 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: '${name}-rpo-missed'
  location: location
  tags: tags
  properties: {
    displayName: 'pgvault: no successful backup of a database within its RPO'
    description: 'pgvault: a database\'s newest successful backup is past its RPO deadline (job events). See docs/deploy.md (Workbook and alerts).'
    severity: 1
    enabled: true
    scopes: [
      workspace.id
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    overrideQueryTimeRange: 'P2D'
    // See the rules above: AppTraces may not exist yet in a new workspace.
    skipQueryValidation: true
    criteria: {
      allOf: [
        {
          query: rpoMissedQuery
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    // A missed RPO lasts until the next good backup: notify again twice a day, not every hour.
    muteActionsDuration: 'PT12H'
    actions: {
      actionGroups: groups
    }
  }
}

output workbookId string = pgvaultWorkbook.id
output connectionString string = insights.properties.ConnectionString
output insightsId string = insights.id
output workspaceId string = workspace.id
