// The coordinator: one Python function app on a Flex Consumption (FC1) plan. Zero instances when
// idle (no always-ready instances), a user-assigned identity for every connection, no keys in
// any setting.
param location string
param tags object
param name string
param planName string
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string
param artifactsContainerName string = 'artifacts'

@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

param appInsightsConnectionString string
param cosmosEndpoint string
param databaseName string = 'gigafactory'
param serviceBusFullyQualifiedNamespace string
param tokenSecretUri string
param enrollmentSecretUri string

@allowed([
  'poll'
  'shadow'
  'broker'
])
param dispatchMode string = 'broker'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        // No always-ready instances: the app scales to zero and costs nothing while idle.
        alwaysReady: []
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// A separate resource so that GIGAFACTORY_COORDINATOR_URL can use the app's own host name.
// The names below are exactly the ones the code and the trigger bindings read.
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: {
    // Host storage and Durable Functions task hub (identity-based connection).
    AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
    AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
    AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    // Cosmos DB (store, change-feed trigger on jobs with leases in `leases`).
    COSMOS__accountEndpoint: cosmosEndpoint
    COSMOS__credential: 'managedidentity'
    COSMOS__clientId: identityClientId
    COSMOS_DATABASE: databaseName
    // Service Bus (dispatch topic, launcher subscription trigger, job-requests queue trigger).
    SERVICEBUS__fullyQualifiedNamespace: serviceBusFullyQualifiedNamespace
    SERVICEBUS__credential: 'managedidentity'
    SERVICEBUS__clientId: identityClientId
    // DefaultAzureCredential in SDK clients (Blob, Container Apps management) picks this identity.
    AZURE_CLIENT_ID: identityClientId
    GIGAFACTORY_DISPATCH_MODE: dispatchMode
    GIGAFACTORY_BLOB_ACCOUNT_URL: storage.properties.primaryEndpoints.blob
    GIGAFACTORY_BLOB_CONTAINER: artifactsContainerName
    GIGAFACTORY_TOKEN_SECRET: '@Microsoft.KeyVault(SecretUri=${tokenSecretUri})'
    GIGAFACTORY_ENROLLMENT_SECRET: '@Microsoft.KeyVault(SecretUri=${enrollmentSecretUri})'
    GIGAFACTORY_COORDINATOR_URL: 'https://${functionApp.properties.defaultHostName}'
    CONTAINERAPPS_SUBSCRIPTION_ID: subscription().subscriptionId
    CONTAINERAPPS_RESOURCE_GROUP: resourceGroup().name
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  }
}

output name string = functionApp.name
output id string = functionApp.id
output coordinatorUrl string = 'https://${functionApp.properties.defaultHostName}'
