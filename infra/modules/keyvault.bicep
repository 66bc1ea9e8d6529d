// A Key Vault with RBAC authorisation (no access policies), soft delete and purge protection.
// pgvault uses two: one for the database credentials (the app reads: Key Vault Secrets User) and
// one for the pgBackRest SAS tokens (the app writes: Key Vault Secrets Officer; each VM reads
// only its own secret). Keeping them apart is what lets "Secrets Officer" stay off the database
// credentials.

param name string
param location string
param tags object = {}
param privateNetworking bool
param principalId string
@allowed(['reader', 'writer'])
@description('reader: Key Vault Secrets User for the app; writer: Key Vault Secrets Officer.')
param appAccess string
@description('Admins (object ids) given Key Vault Secrets Officer to put the database secrets in.')
param adminPrincipalIds array = []
@description('default: create the vault (fails while a soft-deleted vault of this name exists); recover: bring back the soft-deleted vault of this name with its secrets (fails when there is none). Purge protection keeps a deleted vault\'s name for softDeleteRetentionInDays, so a redeploy after a teardown needs one of the two (docs/deploy.md).')
@allowed(['default', 'recover'])
param createMode string = 'default'

var roleKeyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var roleKeyVaultSecretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
var appRole = appAccess == 'writer' ? roleKeyVaultSecretsOfficer : roleKeyVaultSecretsUser

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    createMode: createMode
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: privateNetworking ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: privateNetworking ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource appSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, appRole)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', appRole)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource adminSecrets 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for admin in adminPrincipalIds: {
    name: guid(vault.id, admin, roleKeyVaultSecretsOfficer)
    scope: vault
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleKeyVaultSecretsOfficer)
      principalId: admin
    }
  }
]

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
