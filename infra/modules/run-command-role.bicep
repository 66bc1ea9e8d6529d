// Optional, deployed once per resource group that holds push-target VMs (by someone allowed to
// create role definitions): a custom role that can run commands on a VM and read their output,
// and nothing else. Pass the output roleDefinitionGuid as runCommandRoleDefinitionId.
//
//   az deployment group create -g <vm-rg> -f infra/modules/run-command-role.bicep

param roleName string = 'pgvault VM Run Command'

var roleGuid = guid(resourceGroup().id, 'pgvault-run-command')

resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: roleGuid
  properties: {
    roleName: roleName
    description: 'Create, read and delete managed Run Commands on virtual machines (pgvault pgBackRest SAS hand-over).'
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
