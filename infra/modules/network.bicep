// Private networking: a VNet with an integration subnet for the app and a subnet for private
// endpoints, plus the private DNS zones the app resolves storage and Key Vault through.

param name string
param location string
param tags object = {}
param addressPrefix string
param appSubnetPrefix string
param endpointSubnetPrefix string
@description('Flex Consumption integrates through Microsoft.App/environments; Elastic Premium through Microsoft.Web/serverFarms.')
param appSubnetDelegation string

var zoneNames = {
  blob: 'privatelink.blob.${environment().suffixes.storage}'
  queue: 'privatelink.queue.${environment().suffixes.storage}'
  // keyvaultDns is `.vault.azure.net` (or the cloud's own); the private link zone is `vaultcore`.
  vault: 'privatelink${replace(environment().suffixes.keyvaultDns, '.vault.', '.vaultcore.')}'
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: '${name}-vnet'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'app'
        properties: {
          addressPrefix: appSubnetPrefix
          delegations: [
            {
              name: 'app'
              properties: {
                serviceName: appSubnetDelegation
              }
            }
          ]
        }
      }
      {
        name: 'endpoints'
        properties: {
          addressPrefix: endpointSubnetPrefix
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

resource zones 'Microsoft.Network/privateDnsZones@2024-06-01' = [
  for z in items(zoneNames): {
    name: z.value
    location: 'global'
    tags: tags
  }
]

resource links 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = [
  for (z, i) in items(zoneNames): {
    parent: zones[i]
    name: '${name}-link'
    location: 'global'
    properties: {
      registrationEnabled: false
      virtualNetwork: {
        id: vnet.id
      }
    }
  }
]

output appSubnetId string = '${vnet.id}/subnets/app'
output endpointSubnetId string = '${vnet.id}/subnets/endpoints'
output blobZoneId string = resourceId('Microsoft.Network/privateDnsZones', zoneNames.blob)
output queueZoneId string = resourceId('Microsoft.Network/privateDnsZones', zoneNames.queue)
output vaultZoneId string = resourceId('Microsoft.Network/privateDnsZones', zoneNames.vault)
