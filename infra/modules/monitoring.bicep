// Log Analytics + workspace-based Application Insights with local (key) auth disabled: the app
// ingests with its identity (Monitoring Metrics Publisher + APPLICATIONINSIGHTS_AUTHENTICATION_STRING).
// Alert rules match pgvault's error-level log records (JSON lines on stderr, which the Functions
// host forwards to AppTraces) and the Logs its handlers return to the host.

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

output connectionString string = insights.properties.ConnectionString
output insightsId string = insights.id
output workspaceId string = workspace.id
