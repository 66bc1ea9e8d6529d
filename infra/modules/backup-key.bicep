// The key that wraps every backup's data key (PGVAULT_ENCRYPTION_KEY), in the database-secrets
// vault, and the function identity's right to use it: Key Vault Crypto User on this key only.
//
// Why this role, at this scope (docs/deploy.md "Backup encryption key"):
// - pgvault needs keys/read (resolve the current version, tell a disabled one), keys/wrap/action
//   (backups) and keys/unwrap/action (restores, drills, exports, verify --decrypt, cat). Among the
//   general-purpose built-in roles, Key Vault Crypto User is the narrowest that has all three;
//   Crypto Officer adds key management (create, delete, rotate, purge), Reader and Crypto
//   Service Release User have no unwrap.
// - Scoped to the key, not the vault: the identity can use no other key, and cannot list them.
// - Restore and drill need only unwrap, but they run in the same function app (one identity) as
//   the backups, which need wrap: there is nothing narrower to give a separate identity here.
//   And wrap is a public-key operation that anyone who may read the key can do offline, so an
//   unwrap-only custom role would remove nothing an attacker needs.
// - The built-in Key Vault Crypto Service Encryption User (read, wrap, unwrap only) is narrower
//   still: set useServiceEncryptionRole to assign it instead; pgvault uses nothing else.
//
// Rotation: a new version every `rotateAfter` (ISO 8601 duration). Old versions stay enabled and
// never expire, so older backups keep restoring; disabling a version is crypto-shredding of the
// backups it wrapped (DESIGN.md "Encrypted backups").

param vaultName string
param keyName string = 'pgvault-backup'
@description('Principal id of the function app identity.')
param principalId string
@description('Key rotation: a new version this long after each version was created (ISO 8601 duration).')
param rotateAfter string = 'P1Y'
@description('Assign Key Vault Crypto Service Encryption User (read, wrap, unwrap) instead of Key Vault Crypto User.')
param useServiceEncryptionRole bool = false

var roleKeyVaultCryptoUser = '12338af0-0e69-4776-bea7-57ae8d297424'
var roleKeyVaultCryptoServiceEncryptionUser = 'e147488a-f6f5-4113-8e2d-b22465e65bf6'
var appKeyRole = useServiceEncryptionRole ? roleKeyVaultCryptoServiceEncryptionUser : roleKeyVaultCryptoUser

resource vault 'Microsoft.KeyVault/vaults@2024-11-01' existing = {
  name: vaultName
}

resource key 'Microsoft.KeyVault/vaults/keys@2024-11-01' = {
  parent: vault
  name: keyName
  properties: {
    kty: 'RSA'
    keySize: 3072
    keyOps: [
      'wrapKey'
      'unwrapKey'
    ]
    attributes: {
      enabled: true
    }
    rotationPolicy: {
      lifetimeActions: [
        {
          trigger: {
            timeAfterCreate: rotateAfter
          }
          action: {
            type: 'rotate'
          }
        }
      ]
    }
  }
}

resource appUsesKey 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(key.id, principalId, appKeyRole)
  scope: key
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', appKeyRole)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

@description('The key identifier without a version: pgvault resolves and records the current version per backup.')
output keyUri string = key.properties.keyUri
