// The backup storage account: the dumps container (pgvault's backups, manifests and @jobs/ records),
// the as-files export container, and one container per pgBackRest target. Separate from the host
// account because versioning, soft delete, WORM and lifecycle rules are account- or container-wide
// and must not touch the host's blobs.

param name string
param location string
param tags object = {}
@description('Zone- or geo-redundant by default: these are the backups.')
param skuName string = 'Standard_ZRS'
param dumpsContainerName string
param exportContainerName string
@description('Containers of the pgBackRest targets (never WORM: pgBackRest rewrites and deletes files).')
param pgbackrestContainers array
param principalId string
@description('pgBackRest 2.58+ targets with delivery auto use their own identity, no SAS: [{container, principalId}].')
param autoTargetAccess array = []
param privateNetworking bool
@description('Days deleted blobs and containers stay recoverable.')
@minValue(1)
@maxValue(365)
param softDeleteDays int
@description('Version-level immutability (WORM) on the dumps container.')
param immutableDumps bool
@description('Days each version of a dump stays immutable.')
@minValue(1)
param immutabilityDays int
@description('Tier dump data blobs to Cool after this many days since written (-1: never).')
param coolAfterDays int
@description('Tier dump data blobs to Cold after this many days (-1: never).')
param coldAfterDays int
@description('Tier dump data blobs to Archive after this many days (-1: never), and a rehydrated blob only 7 days after its rehydration. Archived backups must be rehydrated before restore or verify.')
param archiveAfterDays int

var roleStorageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var roleStorageBlobDelegator = 'db58b8e5-c6ad-4a2a-8342-4190687cbf4a'

// Previous versions (left by overwrites and by pgvault's retention deletes) are removed once
// neither WORM nor soft delete protects them any more.
var previousVersionDays = max(immutableDumps ? immutabilityDays : 0, softDeleteDays) + 1

resource account 'Microsoft.Storage/storageAccounts@2024-01-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: privateNetworking ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: privateNetworking ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2024-01-01' = {
  parent: account
  name: 'default'
  properties: {
    isVersioningEnabled: true
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
  }
}

resource dumpsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: blobService
  name: dumpsContainerName
  properties: {
    publicAccess: 'None'
    // Version-level WORM: every version is immutable for immutabilityDays; overwrites and deletes
    // still work (they leave the protected version behind).
    immutableStorageWithVersioning: {
      enabled: immutableDumps
    }
  }
}

// The container's default time-based retention, applied to each new version. Deployed unlocked:
// lock it once you are satisfied (`az storage container immutability-policy lock`), after which
// it can be extended but never shortened or removed.
resource dumpsImmutability 'Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2024-01-01' = if (immutableDumps) {
  parent: dumpsContainer
  name: 'default'
  properties: {
    immutabilityPeriodSinceCreationInDays: immutabilityDays
    allowProtectedAppendWrites: false
  }
}

resource exportContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: blobService
  name: exportContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource pgbackrest 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = [
  for c in pgbackrestContainers: {
    parent: blobService
    name: c
    properties: {
      publicAccess: 'None'
    }
  }
]

// Ages count from the last modification: a data blob is written once and never modified (a tier
// change does not touch Last-Modified), so that is its creation. Azure allows
// daysAfterLastTierChangeGreaterThan only on tierToArchive, and only beside
// daysAfterModificationGreaterThan: with it, a blob a restore has just rehydrated is not archived
// again by the next daily run under the waiting restore, but only after it stayed online for
// archiveAfterTierChangeDays.
var archiveAfterTierChangeDays = 7
var tierActions = union(
  coolAfterDays >= 0 ? { tierToCool: { daysAfterModificationGreaterThan: coolAfterDays } } : {},
  coldAfterDays >= 0 ? { tierToCold: { daysAfterModificationGreaterThan: coldAfterDays } } : {},
  archiveAfterDays >= 0
    ? {
        tierToArchive: {
          daysAfterModificationGreaterThan: archiveAfterDays
          daysAfterLastTierChangeGreaterThan: archiveAfterTierChangeDays
        }
      }
    : {}
)
var tieringRules = empty(tierActions)
  ? []
  : [
      {
        name: 'pgvault-tier-dump-data'
        enabled: true
        type: 'Lifecycle'
        definition: {
          // Only data blobs (index tag pgvault=data, see src/layout.rs): manifests and job
          // records stay hot, so listing never touches a cool or archived blob. Nothing is
          // deleted here: retention is pgvault's (GFS, with holds and min-keep).
          filters: {
            blobTypes: ['blockBlob']
            prefixMatch: ['${dumpsContainerName}/']
            blobIndexMatch: [
              {
                name: 'pgvault'
                op: '=='
                value: 'data'
              }
            ]
          }
          actions: {
            baseBlob: tierActions
          }
        }
      }
    ]

resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2024-01-01' = {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: concat(tieringRules, [
        {
          name: 'pgvault-expire-previous-versions'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: ['blockBlob']
              prefixMatch: ['${dumpsContainerName}/', '${exportContainerName}/']
            }
            actions: {
              version: {
                delete: {
                  daysAfterCreationGreaterThan: previousVersionDays
                }
              }
            }
          }
        }
      ])
    }
  }
  dependsOn: [
    dumpsContainer
    exportContainer
  ]
}

// Backups, manifests, job records: read, write, list, delete in the dumps container only.
resource dumpsContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dumpsContainer.id, principalId, roleStorageBlobDataContributor)
  scope: dumpsContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleStorageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Restore mode as-files copies a backup here and hands out read-only user-delegation SAS URLs.
resource exportContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(exportContainer.id, principalId, roleStorageBlobDataContributor)
  scope: exportContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleStorageBlobDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Get User Delegation Key is an account-level operation: the narrowest scope Azure allows. A
// user-delegation SAS grants at most what its signer holds, so the SAS pgvault mints are bounded
// by the container-scoped roles above and below.
resource delegator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, roleStorageBlobDelegator)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleStorageBlobDelegator)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The SAS pgvault mints for each pgBackRest target (read, write, delete, list) is signed by its
// identity, so the identity needs those rights on that container, and only there.
resource pgbackrestContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (c, i) in pgbackrestContainers: {
    name: guid(pgbackrest[i].id, principalId, roleStorageBlobDataContributor)
    scope: pgbackrest[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleStorageBlobDataContributor)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource autoContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' existing = [
  for a in autoTargetAccess: {
    parent: blobService
    name: a.container
  }
]

// delivery auto: the VM's own identity writes its repository container, and only that one.
resource autoTargetContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (a, i) in autoTargetAccess: {
    name: guid(autoContainers[i].id, a.principalId, roleStorageBlobDataContributor)
    scope: autoContainers[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleStorageBlobDataContributor)
      principalId: a.principalId
      principalType: 'ServicePrincipal'
    }
    dependsOn: [
      pgbackrest
    ]
  }
]

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
