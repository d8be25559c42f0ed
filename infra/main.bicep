// Gigafactory: everything one deployment needs, keyless, scaling to zero when idle.
// Deploy with `azd up`, or `az deployment sub create` (see docs/deploy.md).
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the environment; it seeds every resource name (resourceToken).')
param environmentName string

@minLength(1)
@description('Region for every resource. Pick one where the Flex Consumption plan is offered.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group name; empty means rg-<environmentName>.')
param resourceGroupName string = ''

@description('Dispatch mode of the coordinator (GIGAFACTORY_DISPATCH_MODE): poll, shadow or broker.')
@allowed([
  'poll'
  'shadow'
  'broker'
])
param dispatchMode string = 'broker'

@minValue(40)
@maxValue(1000)
@description('Upper bound on Flex Consumption instances; the lower bound is always zero.')
param functionAppMaximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
@description('Memory of one Flex Consumption instance, in MB.')
param functionAppInstanceMemoryMB int = 2048

@description('Factory image for every on-demand pool; empty keeps each pool\'s own container.image from gigafactory/pools.json.')
param factoryImage string = ''

@secure()
@description('HMAC key that signs attempt tokens. Generated at deploy time; only written to Key Vault when writeTokenSecret is true.')
param tokenSecret string = '${newGuid()}${newGuid()}'

@secure()
@description('Secret standing factories present to enroll. Generated at deploy time; only written to Key Vault when writeTokenSecret is true.')
param enrollmentSecret string = '${newGuid()}${newGuid()}'

@description('Write tokenSecret and enrollmentSecret to Key Vault. The azd hooks turn this off after the first provision so that later provisions keep both secrets (and the tokens factories hold) valid.')
param writeTokenSecret bool = true

@description('Create the Event Grid subscription to submit_from_event_grid. It needs the function code deployed first, so the azd postdeploy hook turns it on.')
param eventGridSubscriptionEnabled bool = false

@minValue(-1)
@description('Daily ingestion cap of the Log Analytics workspace in GB (-1: no cap).')
param logAnalyticsDailyCapGb int = 1

// The one definition of every pool, shared with the Python routing code (gigafactory.domain.pools).
var pools = loadJsonContent('../gigafactory/pools.json').pools
var onDemandPools = filter(pools, pool => (pool.launch_mode == 'on-demand'))

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  application: 'gigafactory'
}
var functionAppName = '${abbrs.webSitesFunctions}api-${resourceToken}'
var deploymentContainerName = 'app-package-${take(resourceToken, 7)}'
var artifactsContainerName = 'artifacts'
var eventGridDeadLetterContainerName = 'eventgrid-deadletter'
var databaseName = 'gigafactory'

resource rg 'Microsoft.Resources/resourceGroups@2021-04-01' = {
  name: empty(resourceGroupName) ? '${abbrs.resourcesResourceGroups}${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identities 'app/identity.bicep' = {
  name: 'identities'
  scope: rg
  params: {
    location: location
    tags: tags
    functionIdentityName: '${abbrs.managedIdentityUserAssignedIdentities}api-${resourceToken}'
    factoryIdentityName: '${abbrs.managedIdentityUserAssignedIdentities}factory-${resourceToken}'
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    appInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    dailyCapGb: logAnalyticsDailyCapGb
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    containerNames: [
      deploymentContainerName
      artifactsContainerName
      eventGridDeadLetterContainerName
    ]
  }
}

module database 'app/database.bicep' = {
  name: 'database'
  scope: rg
  params: {
    location: location
    tags: tags
    accountName: '${abbrs.documentDBDatabaseAccounts}${resourceToken}'
    databaseName: databaseName
  }
}

module messaging 'app/messaging.bicep' = {
  name: 'messaging'
  scope: rg
  params: {
    location: location
    tags: tags
    namespaceName: '${abbrs.serviceBusNamespaces}${resourceToken}'
    pools: pools
  }
}

module keyvault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    tokenSecret: tokenSecret
    writeTokenSecret: writeTokenSecret
    enrollmentSecret: enrollmentSecret
    // The same flag as the signing key: the first provision writes both, later ones keep both.
    writeEnrollmentSecret: writeTokenSecret
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identities.outputs.functionPrincipalId
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: messaging.outputs.namespaceName
    cosmosAccountName: database.outputs.accountName
    databaseName: databaseName
    keyVaultName: keyvault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    location: location
    tags: tags
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    identityId: identities.outputs.functionIdentityId
    identityClientId: identities.outputs.functionClientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    artifactsContainerName: artifactsContainerName
    maximumInstanceCount: functionAppMaximumInstanceCount
    instanceMemoryMB: functionAppInstanceMemoryMB
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    cosmosEndpoint: database.outputs.endpoint
    databaseName: databaseName
    serviceBusFullyQualifiedNamespace: messaging.outputs.fullyQualifiedNamespace
    tokenSecretUri: keyvault.outputs.tokenSecretUri
    enrollmentSecretUri: keyvault.outputs.enrollmentSecretUri
    dispatchMode: dispatchMode
  }
  // The host resolves identity connections and the Key Vault references at start; grant first.
  dependsOn: [
    rbac
  ]
}

module containers 'app/containers.bicep' = {
  name: 'containers'
  scope: rg
  params: {
    location: location
    tags: tags
    environmentName: '${abbrs.appManagedEnvironments}${resourceToken}'
    registryName: '${abbrs.containerRegistryRegistries}${resourceToken}'
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    onDemandPools: onDemandPools
    factoryImage: factoryImage
    factoryIdentityId: identities.outputs.factoryIdentityId
    factoryPrincipalId: identities.outputs.factoryPrincipalId
    functionPrincipalId: identities.outputs.functionPrincipalId
    coordinatorUrl: api.outputs.coordinatorUrl
    roleNameSuffix: resourceToken
  }
}

module eventgrid 'app/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    location: location
    tags: tags
    topicName: '${abbrs.eventGridDomainsTopics}${resourceToken}'
    functionAppName: api.outputs.name
    subscriptionEnabled: eventGridSubscriptionEnabled
    storageAccountName: storage.outputs.name
    deadLetterContainerName: eventGridDeadLetterContainerName
  }
}

// azd writes these into the environment (.azure/<env>/.env); the names match the app settings
// so that `azd env get-values` also configures a local run against the deployed resources.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output AZURE_KEY_VAULT_NAME string = keyvault.outputs.name
output AZURE_KEY_VAULT_ENDPOINT string = keyvault.outputs.endpoint
output AZURE_CONTAINER_REGISTRY_NAME string = containers.outputs.registryName
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = containers.outputs.registryLoginServer
output AZURE_CONTAINER_APPS_ENVIRONMENT_NAME string = containers.outputs.environmentName
output AZURE_EVENT_GRID_TOPIC_ENDPOINT string = eventgrid.outputs.endpoint
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output GIGAFACTORY_COORDINATOR_URL string = api.outputs.coordinatorUrl
output GIGAFACTORY_DISPATCH_MODE string = dispatchMode
output GIGAFACTORY_BLOB_ACCOUNT_URL string = storage.outputs.blobEndpoint
output GIGAFACTORY_BLOB_CONTAINER string = artifactsContainerName
output COSMOS__accountEndpoint string = database.outputs.endpoint
output COSMOS_DATABASE string = databaseName
output SERVICEBUS__fullyQualifiedNamespace string = messaging.outputs.fullyQualifiedNamespace
output CONTAINERAPPS_SUBSCRIPTION_ID string = subscription().subscriptionId
output CONTAINERAPPS_RESOURCE_GROUP string = rg.name
output APPLICATIONINSIGHTS_CONNECTION_STRING string = monitoring.outputs.appInsightsConnectionString
output FACTORY_JOB_NAMES array = containers.outputs.jobNames
output SERVICEBUS_POOL_SUBSCRIPTIONS array = messaging.outputs.poolSubscriptionNames
