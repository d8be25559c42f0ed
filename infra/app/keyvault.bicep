// Key Vault (Azure RBAC, no access policies) holding the attempt-token signing key. The function
// app reads it through a Key Vault reference with its user-assigned identity.
param location string
param tags object
param name string

@secure()
param tokenSecret string

@description('Write tokenSecret as a new version of the secret; false leaves the current value alone.')
param writeTokenSecret bool = true

var tokenSecretName = 'gigafactory-token-secret'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
  }
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (writeTokenSecret) {
  parent: vault
  name: tokenSecretName
  properties: {
    value: tokenSecret
    contentType: 'HMAC key for attempt tokens'
    attributes: {
      enabled: true
    }
  }
}

output name string = vault.name
output endpoint string = vault.properties.vaultUri
// Versionless: the app follows the latest version (the platform refreshes references within 24 h
// or at restart).
output tokenSecretUri string = '${vault.properties.vaultUri}secrets/${tokenSecretName}'
