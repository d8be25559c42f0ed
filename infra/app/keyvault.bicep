// Key Vault (Azure RBAC, no access policies) holding the attempt-token signing key and the secret
// standing factories present to enroll. The function app reads both through Key Vault references
// with its user-assigned identity.
param location string
param tags object
param name string

@secure()
param tokenSecret string

@description('Write tokenSecret as a new version of the secret; false leaves the current value alone.')
param writeTokenSecret bool = true

@secure()
param enrollmentSecret string

@description('Write enrollmentSecret as a new version of the secret; false leaves the current value alone.')
param writeEnrollmentSecret bool = true

var tokenSecretName = 'gigafactory-token-secret'
var enrollmentSecretName = 'gigafactory-enrollment-secret'

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

// Operators read it from here to enroll a standing factory; a new version only stops new
// enrollments with the old value, factories already enrolled keep their own credentials.
resource enrollment 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (writeEnrollmentSecret) {
  parent: vault
  name: enrollmentSecretName
  properties: {
    value: enrollmentSecret
    contentType: 'Shared secret for enrolling standing factories'
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
output enrollmentSecretUri string = '${vault.properties.vaultUri}secrets/${enrollmentSecretName}'
