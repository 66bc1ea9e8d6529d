// The VM side of a pgBackRest target: its identity may read its own SAS secret, nothing else.
// The scope is the secret itself, which must exist: pgvault's SAS rotation writes it, so set the
// target's `secretReady: true` once the first rotation has run (see docs/deploy.md).

param vaultName string
param secretName string
@description('Principal id of the VM identity that runs the pgBackRest agent.')
param vmPrincipalId string

var roleKeyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' existing = {
  name: vaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2024-11-01' existing = {
  parent: vault
  name: secretName
}

resource vmReadsSecret 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(secret.id, vmPrincipalId, roleKeyVaultSecretsUser)
  scope: secret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleKeyVaultSecretsUser)
    principalId: vmPrincipalId
    principalType: 'ServicePrincipal'
  }
}
