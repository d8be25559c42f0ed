// On-demand factories: a Container Apps environment (Consumption workload profile, nothing runs
// and nothing is billed until an execution starts) and one Manual-trigger job per on-demand pool
// of gigafactory/pools.json (main.bicep loads it and passes the on-demand pools in). The launcher
// starts one execution per attempt with environment overrides; the job never runs by itself.
param location string
param tags object
param environmentName string
param registryName string
param logAnalyticsWorkspaceId string

@description('The on-demand entries of the pools array of gigafactory/pools.json.')
param onDemandPools array

@description('Image for every on-demand pool; empty keeps each pool\'s own container.image.')
param factoryImage string = ''

param factoryIdentityId string
param factoryPrincipalId string
param functionPrincipalId string
param coordinatorUrl string

@description('Makes the custom role name unique in the tenant.')
param roleNameSuffix string

var acrPullRoleId = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

// Exactly what the launcher calls: read the job (its template), start an execution, follow and
// stop executions. No wildcard: Microsoft.App/jobs/*/action would include listSecrets.
var jobOperatorActions = [
  'Microsoft.App/jobs/read'
  'Microsoft.App/jobs/start/action'
  'Microsoft.App/jobs/stop/action'
  'Microsoft.App/jobs/stop/execution/action'
  'Microsoft.App/jobs/executions/read'
  'Microsoft.App/jobs/execution/read'
]

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: registryName
  location: location
  tags: tags
  sku: {
    name: 'Basic'
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

resource acrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, factoryPrincipalId, acrPullRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
    principalId: factoryPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource managedEnvironment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: environmentName
  location: location
  tags: tags
  properties: {
    // Logs go through a diagnostic setting (Entra ID), not the workspace's shared key.
    appLogsConfiguration: {
      destination: 'azure-monitor'
    }
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
    zoneRedundant: false
  }
}

resource environmentLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: managedEnvironment
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

resource jobs 'Microsoft.App/jobs@2024-03-01' = [for pool in onDemandPools: {
  name: pool.container.job_name
  location: location
  tags: union(tags, {
    'gigafactory-pool': pool.name
  })
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${factoryIdentityId}': {}
    }
  }
  properties: {
    environmentId: managedEnvironment.id
    workloadProfileName: 'Consumption'
    configuration: {
      triggerType: 'Manual'
      manualTriggerConfig: {
        parallelism: 1
        replicaCompletionCount: 1
      }
      replicaTimeout: pool.container.replica_timeout_seconds
      // Retries are decided by the coordinator (new attempt, new token), never by the platform.
      replicaRetryLimit: 0
      registries: [
        {
          server: registry.properties.loginServer
          identity: factoryIdentityId
        }
      ]
    }
    template: {
      containers: [
        {
          name: 'factory'
          image: empty(factoryImage) ? pool.container.image : factoryImage
          resources: {
            cpu: json(string(pool.container.cpu))
            memory: pool.container.memory
          }
          env: [
            {
              name: 'GIGAFACTORY_POOL'
              value: pool.name
            }
            {
              name: 'GIGAFACTORY_URL'
              value: coordinatorUrl
            }
          ]
        }
      ]
    }
  }
  dependsOn: [
    acrPull
  ]
}]

// Custom role: start/stop/read of job executions and nothing else, assignable only here.
resource jobOperatorRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'gigafactory-factory-job-operator')
  properties: {
    roleName: 'Gigafactory factory job operator (${roleNameSuffix})'
    description: 'Start, stop and read executions of the Gigafactory factory jobs.'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: jobOperatorActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
  }
}

// Assigned on each factory job, not on the resource group.
resource jobOperatorAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (pool, i) in onDemandPools: {
  name: guid(jobs[i].id, functionPrincipalId, jobOperatorRole.id)
  scope: jobs[i]
  properties: {
    roleDefinitionId: jobOperatorRole.id
    principalId: functionPrincipalId
    principalType: 'ServicePrincipal'
  }
}]

output environmentName string = managedEnvironment.name
output registryName string = registry.name
output registryLoginServer string = registry.properties.loginServer
output jobNames array = [for (pool, i) in onDemandPools: jobs[i].name]
