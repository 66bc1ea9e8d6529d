// The Functions host's storage account: AzureWebJobsStorage (blobs for leases and timers), the
// Flex deployment container, and pgvault's job queues with their -poison and -rejected twins.
// Hardened: no shared keys (identity only), TLS 1.2, no public blob access.

param name string
param location string
param tags object = {}
param skuName string = 'Standard_LRS'
@description('Names of the job queues; each also gets <name>-poison (the host) and <name>-rejected (pgvault).')
param jobQueues array
param deploymentContainerName string
@description('Principal id of the function app identity.')
param principalId string
param privateNetworking bool

// Built-in role definition ids (the same in every tenant).
var roleStorageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var roleStorageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'

// '' is the queue itself; -poison is where the host moves a message after maxDequeueCount
// attempts; -rejected is where pgvault keeps a message that can never succeed.
var queueSuffixes = ['', '-poison', '-rejected']
var queueNames = flatten(map(jobQueues, q => map(queueSuffixes, s => '${q}${s}')))

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
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2024-01-01' = {
  parent: account
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2024-01-01' = [
  for q in queueNames: {
    parent: queueService
    name: q
  }
]

// The Functions host keeps leases, timer state and the deployment package in blobs: it needs
// Storage Blob Data Owner on its account (Microsoft's documented requirement for
// AzureWebJobsStorage with an identity).
resource hostBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, roleStorageBlobDataOwner)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleStorageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Queue triggers read and delete, failed invocations release (update), pgvault enqueues and keeps
// rejected messages: Storage Queue Data Contributor, on each queue rather than the account.
resource queueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for (q, i) in queueNames: {
    name: guid(queues[i].id, principalId, roleStorageQueueDataContributor)
    scope: queues[i]
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleStorageQueueDataContributor)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]

output id string = account.id
output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output deploymentContainerUrl string = '${account.properties.primaryEndpoints.blob}${deploymentContainerName}'
output queueNames array = queueNames
