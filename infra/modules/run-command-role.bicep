// A custom role that can run commands on a VM and read their output, and nothing else, for the
// VMs of push-mode pgBackRest targets. main.bicep deploys it into each resource group that holds
// such VMs when `createRunCommandRole` is set; it can also be deployed on its own (by someone
// allowed to create role definitions) and its roleDefinitionGuid passed as
// runCommandRoleDefinitionId, for targets in that one resource group:
//
//   az deployment group create -g <vm-rg> -f infra/modules/run-command-role.bicep
//
// Role names are unique per tenant and a definition can only be assigned inside its
// assignableScopes, so both the definition's GUID and its name are derived from this resource
// group and the purpose: one definition per group, none colliding with another group's.

@description('Display name prefix; the GUID of this group\'s definition is appended to keep the name unique in the tenant.')
param roleNamePrefix string = 'pgvault VM Run Command'

var roleGuid = guid(resourceGroup().id, 'pgvault-run-command')

resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: roleGuid
  properties: {
    roleName: '${roleNamePrefix} ${roleGuid}'
    description: 'Create, read and delete managed Run Commands on virtual machines of resource group ${resourceGroup().name} (pgvault pgBackRest SAS hand-over).'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: [
          'Microsoft.Compute/virtualMachines/read'
          'Microsoft.Compute/virtualMachines/instanceView/read'
          'Microsoft.Compute/virtualMachines/runCommands/read'
          'Microsoft.Compute/virtualMachines/runCommands/write'
          'Microsoft.Compute/virtualMachines/runCommands/delete'
          'Microsoft.Compute/virtualMachines/runCommand/action'
        ]
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
  }
}

output roleDefinitionGuid string = roleGuid
