// Two user-assigned identities: one for the coordinator (function app), one for factories.
// Factories get nothing but AcrPull: they talk to the coordinator with attempt tokens only.
param location string
param tags object
param functionIdentityName string
param factoryIdentityName string

resource functionIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: functionIdentityName
  location: location
  tags: tags
}

resource factoryIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: factoryIdentityName
  location: location
  tags: tags
}

output functionIdentityId string = functionIdentity.id
output functionPrincipalId string = functionIdentity.properties.principalId
output functionClientId string = functionIdentity.properties.clientId
output factoryIdentityId string = factoryIdentity.id
output factoryPrincipalId string = factoryIdentity.properties.principalId
