// pgvault: PostgreSQL backups for Azure, locked down by default.
//
//   azd up                                   (azure.yaml: provision this, deploy the package)
//   az deployment group create -g <rg> -f infra/main.bicep -p @infra/main.example.parameters.json
//
// Identity only (a user-assigned managed identity, no shared keys, no connection strings with
// secrets), TLS 1.2+, private endpoints behind `privateNetworking`, least-privilege role
// assignments (the table is in docs/deploy.md; tests/infra.rs checks it against the code's
// needs), versioned and soft-deleted backups with optional WORM. Every app setting pgvault reads
// is generated here from the parameters; tests/infra.rs fails when the code reads one that is not.

targetScope = 'resourceGroup'

@description('Short name used in resource names (azd: the environment name). Any case, with - _ . ( ) allowed, as azd allows: resource names use its first 40 characters in lower case, storage account and vault names its first 11 letters and digits in lower case.')
@minLength(3)
@maxLength(64)
param name string = 'pgvault'
param location string = resourceGroup().location
param tags object = {}

// ---- hosting ----------------------------------------------------------------------------------
@description('flex: Flex Consumption with the zip of scripts/package. premium-container: Elastic Premium with the Dockerfile image, for dumps longer than Flex grace periods allow (docs/deploy.md).')
@allowed(['flex', 'premium-container'])
param hosting string = 'flex'
@description('Flex instance memory (MB). pgvault needs about blocksInFlight x blockSizeMiB plus zstd.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048
@description('Flex: the most instances of one scale group (each queue-triggered function scales on its own). 40 is the floor the Flex Consumption documentation and the platform state (a newer page says 1): 40 deploys under both. It does not bound the dumps one PostgreSQL server gets: maxDumpsPerServer does.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40
@description('Elastic Premium (premium-container): the most elastic workers of the plan.')
@minValue(1)
@maxValue(100)
param maximumElasticWorkerCount int = 10
@description('Elastic Premium SKU (premium-container).')
param premiumSku string = 'EP1'
@description('Container image (premium-container), e.g. myacr.azurecr.io/pgvault:0.1.0; the identity needs AcrPull on its registry. Required with premium-container.')
param containerImage string = ''

// ---- what to back up, and when ----------------------------------------------------------------
@description('The server inventory (PGVAULT_INVENTORY): an array of servers as in README.md. Passwords never go here: use key_vault (in the database-secrets vault this deploys) or entra.')
param inventory array
@description('NCRONTAB (UTC; Flex has no WEBSITE_TIME_ZONE) of backup-scheduler.')
param backupSchedule string = '0 0 2 * * *'
@description('PostgreSQL majors whose client tools are bundled (Flex) or installed (container); newest first.')
param pgMajors array = [
  17
]
param compression string = 'zstd:3'
param zstdThreads int = 2
param blockSizeMiB int = 8
param blocksInFlight int = 4
@description('The most dumps (backup jobs) that run against one PostgreSQL server at once, across all instances (PGVAULT_MAX_DUMPS_PER_SERVER); a job that finds no free slot waits on the queue for dumpSlotRetrySeconds (jittered) and is tried again.')
@minValue(1)
@maxValue(64)
param maxDumpsPerServer int = 2
@description('Seconds a backup job that found no free dump slot waits on the queue before it is tried again (PGVAULT_DUMP_SLOT_RETRY_SECONDS; up to twice this, jittered).')
@minValue(1)
@maxValue(3600)
param dumpSlotRetrySeconds int = 120
@description('Row counts of each backup (PGVAULT_ROW_COUNTS): stream reads them from the archive as it streams by, at no cost to the server.')
@allowed(['stream', 'exact', 'cross-check', 'estimate', 'off'])
param rowCounts string = 'stream'
@description('A database larger than this (MiB) is backed up in parts, in one snapshot (PGVAULT_PARALLEL_ABOVE_MIB).')
@minValue(0)
param parallelAboveMiB int = 16384
@description('Parts of one backup in parts that run at once (PGVAULT_BACKUP_JOBS).')
@minValue(1)
@maxValue(64)
param backupJobs int = 2
@description('Where the parts of a backup in parts run (PGVAULT_PARTS_RUN): process in the coordinator\'s instance, or queue: one message per part on backup-parts, each run by an instance of its own (function backup-parts) while the coordinator holds the snapshot.')
@allowed(['process', 'queue'])
param partsRun string = 'process'
param restoreScratchReserveMiB int = 1024
param logFilter string = 'info'
@description('NCRONTAB (UTC) of the retention timer (prune by each server\'s inventory retention policy, then the RPO check). Retention policies live in the inventory (per server and per database).')
param retentionSchedule string = '0 30 * * * *'
@description('Minutes a scheduled backup may be late before a missed-schedule (RPO) alert.')
param rpoMarginMinutes int = 60
@description('NCRONTAB (UTC) of restore-drill.')
param drillSchedule string = '0 0 5 * * 0'
@description('Inventory server restore drills restore into (a scratch server); empty: no drills.')
param drillServer string = ''
@description('NCRONTAB (UTC) of the doctor timer (pgvault doctor over every server; error findings alert).')
param doctorSchedule string = '0 15 6 * * *'
@description('Encrypt every backup with a data key wrapped by a Key Vault key (modules/backup-key.bicep), created in the database-secrets vault; false: backups are stored unencrypted.')
param encryptBackups bool = true
@description('Rotation of that key: a new version this long after each one was created (ISO 8601 duration).')
param backupKeyRotateAfter string = 'P1Y'
@description('Days finished job records are kept.')
param jobRecordDays int = 400
@description('Name of a secret in the database-secrets vault holding the alert webhook URL (Teams/Slack); empty: alerts only in the log. Read through a Key Vault reference, never stored in the app settings.')
param alertWebhookSecretName string = ''

// ---- pgBackRest targets -------------------------------------------------------------------------
@description('pgBackRest VMs whose SAS pgvault rotates: [{name, vmResourceId, vmPrincipalId, delivery: pull|push|auto, secretReady: bool, options: {more PGVAULT_PGBACKREST_TARGETS fields}}]. See docs/vm-pgbackrest.md.')
param pgbackrestTargets array = []
@description('NCRONTAB (UTC) of sas-rotator.')
param sasRotatorSchedule string = '0 0 * * * *'
@description('Create the custom Run Command role (modules/run-command-role.bicep) in each resource group that holds push-target VMs, and assign it instead of Virtual Machine Contributor. Needs Microsoft.Authorization/roleDefinitions/write (Owner or User Access Administrator) in those groups.')
param createRunCommandRole bool = false
@description('Role definition GUID for Run Command on push-target VMs, when createRunCommandRole is false; its assignableScopes must cover every push target\'s resource group. Empty: Virtual Machine Contributor.')
param runCommandRoleDefinitionId string = ''

// ---- backup storage protection ------------------------------------------------------------------
param dumpsContainerName string = 'pgvault-backups'
@description('Container that restore mode as-files copies into (target.container of such requests).')
param exportContainerName string = 'pgvault-exports'
param backupStorageSku string = 'Standard_ZRS'
@minValue(1)
@maxValue(365)
param softDeleteDays int = 14
@description('Version-level immutability (WORM) on the dumps container.')
param immutableDumps bool = true
@minValue(1)
param immutabilityDays int = 7
@description('Lifecycle tiering of dump data blobs, days after creation (-1: never). One owner of tiering per deployment: either these rules or pgvault retention (pgvaultTierAfterDays), not both. Archive needs rehydration before restore (pgvault starts it and waits).')
param coolAfterDays int = 30
param coldAfterDays int = 90
param archiveAfterDays int = -1
@description('Tiering by pgvault retention instead of lifecycle rules (PGVAULT_TIER_AFTER_DAYS, -1: off). Set the three lifecycle parameters to -1 when using it.')
param pgvaultTierAfterDays int = -1
@allowed(['cool', 'cold', 'archive'])
param pgvaultTier string = 'cool'

// ---- network, monitoring, access ----------------------------------------------------------------
@description('VNet integration + private endpoints for blob, queue and vault; publicNetworkAccess Disabled on storage and Key Vault.')
param privateNetworking bool = true
param vnetAddressPrefix string = '10.60.0.0/24'
param appSubnetPrefix string = '10.60.0.0/26'
param endpointSubnetPrefix string = '10.60.0.64/26'
@description('Existing action group for the alert rules; empty: alertEmail.')
param actionGroupId string = ''
param alertEmail string = ''
@description('Object ids of admins who put database secrets into the vault (Key Vault Secrets Officer there).')
param secretAdminPrincipalIds array = []
@description('More app settings (name -> value), merged last (over the generated ones and the platform ones).')
param extraAppSettings object = {}

// ---- after a teardown -----------------------------------------------------------------------------
@description('Recover the soft-deleted Key Vaults of these names (createMode recover) instead of creating them: for the first deployment into a resource group after `azd down` without --purge. A recover fails when no soft-deleted vault of the name exists; azure.yaml resets it after a successful provision. See docs/deploy.md, "Teardown and redeploy".')
param recoverKeyVaults bool = false
@description('Appended to both vault names (up to 4 lowercase letters and digits): new vaults beside soft-deleted ones that cannot be recovered or purged (purge protection keeps a name for 90 days).')
@maxLength(4)
param vaultNameSuffix string = ''

var suffix = take(uniqueString(resourceGroup().id, name), 10)
var isFlex = hosting == 'flex'
var storageSuffix = environment().suffixes.storage
// An azd environment name may have upper case, -, _, . and parentheses, and up to 64
// characters. For a name that is 3-11 lowercase letters and digits (the only names allowed
// before), every derived name below is what it was, so existing deployments keep their resources.
// Most resource names take letters, digits and hyphens (the app's up to 60 with the suffix):
var baseName = take(toLower(replace(replace(replace(replace(name, '_', '-'), '.', '-'), '(', ''), ')', '')), 40)
// Storage accounts take 3-24 lowercase letters and digits; vaults 3-24 letters, digits and
// single hyphens, starting with a letter: both from the name's letters and digits, in lower case.
var compactName = take(toLower(replace(replace(replace(replace(replace(name, '-', ''), '_', ''), '.', ''), '(', ''), ')', '')), 11)
var vaultBase = contains('0123456789', take(compactName, 1)) ? 'v${take(compactName, 10)}' : compactName
var vaultSuffix = toLower(vaultNameSuffix)
var hostStorageName = take('${compactName}h${suffix}', 24)
var backupStorageName = take('${compactName}b${suffix}', 24)
var dbVaultName = '${take('${vaultBase}-db-${suffix}', 24 - length(vaultSuffix))}${vaultSuffix}'
var sasVaultName = '${take('${vaultBase}-sas-${suffix}', 24 - length(vaultSuffix))}${vaultSuffix}'
var deploymentContainerName = 'app-package'

// Queues the functions read or pgvault writes (function.json queueName values and
// runtime::QUEUES); each also gets -poison and -rejected (modules/host-storage.bicep).
var jobQueues = [
  'backup-jobs'
  'restore-requests'
  'restore-tasks'
  'backup-parts'
]

var targets = [
  for t in pgbackrestTargets: {
    name: t.name
    vmResourceId: t.vmResourceId
    vmPrincipalId: contains(t, 'vmPrincipalId') ? t.vmPrincipalId : ''
    delivery: contains(t, 'delivery') ? t.delivery : 'pull'
    secretReady: contains(t, 'secretReady') ? t.secretReady : false
    container: 'pgbackrest-${t.name}'
    secret: 'pgbackrest-sas-${t.name}'
    options: contains(t, 'options') ? t.options : {}
  }
]
var targetsSetting = [
  for t in targets: union(t.options, {
    name: t.name
    vm_resource_id: t.vmResourceId
    delivery: t.delivery
    blob_endpoint: 'https://${backupStorageName}.blob.${storageSuffix}'
    container: t.container
    vault: sasVaultName
    secret: t.secret
  })
]

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${baseName}-id'
  location: location
  tags: tags
}

module network 'modules/network.bicep' = if (privateNetworking) {
  name: 'network'
  params: {
    name: baseName
    location: location
    tags: tags
    addressPrefix: vnetAddressPrefix
    appSubnetPrefix: appSubnetPrefix
    endpointSubnetPrefix: endpointSubnetPrefix
    appSubnetDelegation: isFlex ? 'Microsoft.App/environments' : 'Microsoft.Web/serverFarms'
  }
}

module hostStorage 'modules/host-storage.bicep' = {
  name: 'host-storage'
  params: {
    name: hostStorageName
    location: location
    tags: tags
    jobQueues: jobQueues
    deploymentContainerName: deploymentContainerName
    principalId: identity.properties.principalId
    privateNetworking: privateNetworking
  }
}

module backupStorage 'modules/backup-storage.bicep' = {
  name: 'backup-storage'
  params: {
    name: backupStorageName
    location: location
    tags: tags
    skuName: backupStorageSku
    dumpsContainerName: dumpsContainerName
    exportContainerName: exportContainerName
    pgbackrestContainers: [for t in targets: t.container]
    autoTargetAccess: [for t in filter(targets, x => x.delivery == 'auto'): { container: t.container, principalId: t.vmPrincipalId }]
    principalId: identity.properties.principalId
    privateNetworking: privateNetworking
    softDeleteDays: softDeleteDays
    immutableDumps: immutableDumps
    immutabilityDays: immutabilityDays
    coolAfterDays: coolAfterDays
    coldAfterDays: coldAfterDays
    archiveAfterDays: archiveAfterDays
  }
}

// Database credentials: the app only reads (Key Vault Secrets User).
module dbVault 'modules/keyvault.bicep' = {
  name: 'db-vault'
  params: {
    name: dbVaultName
    location: location
    tags: tags
    privateNetworking: privateNetworking
    principalId: identity.properties.principalId
    appAccess: 'reader'
    adminPrincipalIds: secretAdminPrincipalIds
    createMode: recoverKeyVaults ? 'recover' : 'default'
  }
}

// The backup encryption key, in the database-secrets vault: the app may use this key only (Key
// Vault Crypto User on the key; see the module for why that role and scope).
module backupKey 'modules/backup-key.bicep' = if (encryptBackups) {
  name: 'backup-key'
  params: {
    vaultName: dbVaultName
    principalId: identity.properties.principalId
    rotateAfter: backupKeyRotateAfter
  }
  dependsOn: [
    dbVault
  ]
}

// pgBackRest SAS tokens: the app writes (Key Vault Secrets Officer), only here.
module sasVault 'modules/keyvault.bicep' = if (!empty(pgbackrestTargets)) {
  name: 'sas-vault'
  params: {
    name: sasVaultName
    location: location
    tags: tags
    privateNetworking: privateNetworking
    principalId: identity.properties.principalId
    appAccess: 'writer'
    createMode: recoverKeyVaults ? 'recover' : 'default'
  }
}

module sasReaders 'modules/sas-secret-reader.bicep' = [
  for t in filter(targets, x => x.secretReady && x.delivery == 'pull'): {
    name: 'sas-reader-${t.name}'
    params: {
      vaultName: sasVaultName
      secretName: t.secret
      vmPrincipalId: t.vmPrincipalId
    }
    dependsOn: [
      sasVault
    ]
  }
]

// The resource groups of push targets (`/subscriptions/<s>/resourcegroups/<g>`, lower case, each
// once: union() of arrays drops duplicates). A custom role definition can only be assigned inside
// its assignableScopes, so each group gets its own definition (its name and GUID are unique per
// group, and role names are unique per tenant).
var pushTargets = filter(targets, x => x.delivery == 'push')
var pushTargetGroups = union(
  map(pushTargets, t => toLower('/subscriptions/${split(t.vmResourceId, '/')[2]}/resourcegroups/${split(t.vmResourceId, '/')[4]}')),
  []
)

module runCommandRoles 'modules/run-command-role.bicep' = [
  for g in (createRunCommandRole ? pushTargetGroups : []): {
    name: 'run-command-role-${uniqueString(g)}'
    scope: resourceGroup(split(g, '/')[2], split(g, '/')[4])
  }
]

module runCommands 'modules/vm-run-command.bicep' = [
  for t in pushTargets: {
    name: 'run-command-${t.name}'
    scope: resourceGroup(split(t.vmResourceId, '/')[2], split(t.vmResourceId, '/')[4])
    params: {
      vmName: last(split(t.vmResourceId, '/'))
      principalId: identity.properties.principalId
      // The definition of the target's own resource group.
      runCommandRoleDefinitionId: createRunCommandRole
        ? runCommandRoles[indexOf(pushTargetGroups, toLower('/subscriptions/${split(t.vmResourceId, '/')[2]}/resourcegroups/${split(t.vmResourceId, '/')[4]}'))].outputs.roleDefinitionGuid
        : runCommandRoleDefinitionId
    }
  }
]

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    name: baseName
    location: location
    tags: tags
    principalId: identity.properties.principalId
    actionGroupId: actionGroupId
    alertEmail: alertEmail
  }
}

// A for-expression's array must be known when the deployment starts, so the loop runs over fixed
// keys and looks the targets up inside.
var endpointKeys = !privateNetworking
  ? []
  : concat(['host-blob', 'host-queue', 'backup-blob', 'db-vault'], empty(pgbackrestTargets) ? [] : ['sas-vault'])

module privateEndpoints 'modules/private-endpoint.bicep' = [
  for key in endpointKeys: {
    name: 'pe-${key}'
    params: {
      name: '${baseName}-pe-${key}'
      location: location
      tags: tags
      subnetId: network.outputs.endpointSubnetId
      targetId: startsWith(key, 'host-')
        ? hostStorage.outputs.id
        : (key == 'backup-blob' ? backupStorage.outputs.id : (key == 'db-vault' ? dbVault.outputs.id : sasVault.outputs.id))
      groupId: endsWith(key, '-blob') ? 'blob' : (endsWith(key, '-queue') ? 'queue' : 'vault')
      dnsZoneId: endsWith(key, '-blob')
        ? network.outputs.blobZoneId
        : (endsWith(key, '-queue') ? network.outputs.queueZoneId : network.outputs.vaultZoneId)
    }
  }
]

var pgBinDirs = join(map(pgMajors, m => isFlex ? '/tmp/pgvault-pg/${m}/bin' : '/usr/lib/postgresql/${m}/bin'), ':')

// Every setting pgvault reads (src/settings.rs ALL), generated from the parameters. The names
// only production never uses (a local store, an inventory file, test CAs, the host's port) are
// listed with their reasons in tests/infra.rs.
var pgvaultSettings = {
  PGVAULT_INVENTORY: string(inventory)
  PGVAULT_STORAGE: 'azure'
  PGVAULT_BLOB_ENDPOINT: 'https://${backupStorageName}.blob.${storageSuffix}'
  PGVAULT_BACKUP_CONTAINER: dumpsContainerName
  JobsQueue__queueServiceUri: 'https://${hostStorageName}.queue.${storageSuffix}'
  JobsQueue__credential: 'managedidentity'
  JobsQueue__clientId: identity.properties.clientId
  PGVAULT_IDENTITY: 'managed-identity'
  PGVAULT_IDENTITY_CLIENT_ID: identity.properties.clientId
  PGVAULT_BACKUP_SCHEDULE: backupSchedule
  PGVAULT_COMPRESSION: compression
  PGVAULT_ENCRYPTION_KEY: encryptBackups ? backupKey.outputs.keyUri : ''
  PGVAULT_ZSTD_THREADS: string(zstdThreads)
  PGVAULT_BLOCK_SIZE_MIB: string(blockSizeMiB)
  PGVAULT_BLOCKS_IN_FLIGHT: string(blocksInFlight)
  PGVAULT_MAX_DUMPS_PER_SERVER: string(maxDumpsPerServer)
  PGVAULT_DUMP_SLOT_RETRY_SECONDS: string(dumpSlotRetrySeconds)
  PGVAULT_STORAGE_RETRIES: '6'
  PGVAULT_HTTP_RETRIES: '8'
  PGVAULT_HTTP_TIMEOUT_SECONDS: '60'
  PGVAULT_PG_BIN_DIRS: pgBinDirs
  PGVAULT_ROW_COUNTS: rowCounts
  PGVAULT_PARALLEL_ABOVE_MIB: string(parallelAboveMiB)
  PGVAULT_BACKUP_JOBS: string(backupJobs)
  PGVAULT_PARTS_RUN: partsRun
  PGVAULT_RESTORE_SCRATCH_DIR: '/tmp'
  PGVAULT_RESTORE_SCRATCH_RESERVE_MIB: string(restoreScratchReserveMiB)
  PGVAULT_LOG: logFilter
  PGVAULT_LOG_FORMAT: 'json'
  PGVAULT_PGBACKREST_TARGETS: string(targetsSetting)
  PGVAULT_SAS_ROTATOR_SCHEDULE: sasRotatorSchedule
  PGVAULT_ARM_ENDPOINT: environment().resourceManager
  PGVAULT_RETENTION_SCHEDULE: retentionSchedule
  PGVAULT_RPO_MARGIN_MINUTES: string(rpoMarginMinutes)
  PGVAULT_DRILL_SCHEDULE: drillSchedule
  PGVAULT_DRILL_SERVER: drillServer
  PGVAULT_DOCTOR_SCHEDULE: doctorSchedule
  PGVAULT_JOB_RECORD_DAYS: string(jobRecordDays)
  PGVAULT_TIER_AFTER_DAYS: pgvaultTierAfterDays >= 0 ? string(pgvaultTierAfterDays) : ''
  PGVAULT_TIER: pgvaultTier
  PGVAULT_ALERT_WEBHOOK: empty(alertWebhookSecretName) ? '' : '@Microsoft.KeyVault(VaultName=${dbVaultName};SecretName=${alertWebhookSecretName})'
}

// The Functions host's own settings: identity-based AzureWebJobsStorage and keyless
// Application Insights ingestion.
var hostSettings = {
  AzureWebJobsStorage__blobServiceUri: 'https://${hostStorageName}.blob.${storageSuffix}'
  AzureWebJobsStorage__queueServiceUri: 'https://${hostStorageName}.queue.${storageSuffix}'
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.properties.clientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.connectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.properties.clientId};Authorization=AAD'
}

module app 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    name: '${baseName}-${suffix}'
    location: location
    tags: tags
    hosting: hosting
    identityId: identity.id
    identityClientId: identity.properties.clientId
    appSettings: union(hostSettings, pgvaultSettings)
    extraAppSettings: extraAppSettings
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    maximumElasticWorkerCount: maximumElasticWorkerCount
    deploymentContainerUrl: hostStorage.outputs.deploymentContainerUrl
    premiumSku: premiumSku
    containerImage: containerImage
    subnetId: privateNetworking ? network.outputs.appSubnetId : ''
    privateStorage: privateNetworking
  }
  // The app resolves its Key Vault references and reaches storage when it starts: on a first
  // deployment it must not start before the vault roles (inside the vault modules), the storage
  // roles and the private endpoints (with their DNS records) exist, or the references stay
  // unresolved until the platform's next refresh (up to 24 h).
  dependsOn: [
    dbVault
    sasVault
    backupStorage
    privateEndpoints
  ]
}

output AZURE_FUNCTION_APP_NAME string = app.outputs.name
output functionAppHostName string = app.outputs.defaultHostName
output identityClientId string = identity.properties.clientId
output identityPrincipalId string = identity.properties.principalId
output backupStorageAccount string = backupStorage.outputs.name
output hostStorageAccount string = hostStorage.outputs.name
output databaseSecretsVault string = dbVault.outputs.name
output sasSecretsVault string = empty(pgbackrestTargets) ? '' : sasVaultName
output appInsightsId string = monitoring.outputs.insightsId
