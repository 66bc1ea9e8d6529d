// A push-mode pgBackRest target: pgvault hands the fresh SAS to the VM with a managed Run Command
// (Microsoft.Compute/virtualMachines/runCommands). Deployed into the VM's resource group; the role
// is scoped to that one VM. Virtual Machine Contributor is the narrowest built-in role that can
// write runCommands, but it can also change the VM; for production create the custom role in
// run-command-role.bicep and pass its id as runCommandRoleDefinitionId.

param vmName string
param principalId string
@description('Role definition id (GUID): a custom run-command role, or empty for Virtual Machine Contributor.')
param runCommandRoleDefinitionId string = ''

var roleVirtualMachineContributor = '9980e02c-c2be-4d73-94e8-173b1dc7cf3c'
var roleId = empty(runCommandRoleDefinitionId) ? roleVirtualMachineContributor : runCommandRoleDefinitionId

resource vm 'Microsoft.Compute/virtualMachines@2024-07-01' existing = {
  name: vmName
}

resource runCommandOnVm 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vm.id, principalId, roleId)
  scope: vm
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
