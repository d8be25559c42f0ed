// Service Bus Standard (topics and duplicate detection need Standard; Basic has no topics).
// Entra ID only. The pool subscriptions are generated from gigafactory/pools.json, which main.bicep
// loads and passes in as `pools`: adding a pool there adds its subscription here.
param location string
param tags object
param namespaceName string

@description('The pools array of gigafactory/pools.json.')
param pools array

var lockDuration = 'PT1M'
var maxDeliveryCount = 10

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: namespaceName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

// Released attempts. MessageId = {job_id}:{attempt}; duplicate detection drops re-publishes
// (sweeper, change-feed replay) inside the window.
resource dispatch 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' = {
  parent: namespace
  name: 'dispatch'
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    defaultMessageTimeToLive: 'P14D'
    maxSizeInMegabytes: 1024
    enableBatchedOperations: true
    supportOrdering: false
  }
}

// One subscription per pool. Standing pools consume theirs; for on-demand pools the launcher
// subscription does the work and pool-<name> only feeds the shadow-mode comparison, so its
// messages expire after an hour without being dead-lettered.
resource poolSubscriptions 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' = [for pool in pools: {
  parent: dispatch
  name: 'pool-${pool.name}'
  properties: {
    lockDuration: lockDuration
    maxDeliveryCount: maxDeliveryCount
    defaultMessageTimeToLive: (pool.launch_mode == 'on-demand') ? 'PT1H' : 'P14D'
    deadLetteringOnMessageExpiration: (pool.launch_mode != 'on-demand')
    deadLetteringOnFilterEvaluationExceptions: true
    enableBatchedOperations: true
  }
}]

// Adding a rule through ARM replaces the catch-all $Default rule.
resource poolRules 'Microsoft.ServiceBus/namespaces/topics/subscriptions/rules@2024-01-01' = [for (pool, i) in pools: {
  parent: poolSubscriptions[i]
  name: 'pool'
  properties: {
    filterType: 'SqlFilter'
    sqlFilter: {
      sqlExpression: 'pool = \'${pool.name}\''
    }
  }
}]

// Every on-demand dispatch, whatever the pool: consumed by launch_dispatch.
resource launcher 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' = {
  parent: dispatch
  name: 'launcher'
  properties: {
    lockDuration: lockDuration
    maxDeliveryCount: maxDeliveryCount
    defaultMessageTimeToLive: 'P14D'
    deadLetteringOnMessageExpiration: true
    deadLetteringOnFilterEvaluationExceptions: true
    enableBatchedOperations: true
  }
}

resource launcherRule 'Microsoft.ServiceBus/namespaces/topics/subscriptions/rules@2024-01-01' = {
  parent: launcher
  name: 'on-demand'
  properties: {
    filterType: 'SqlFilter'
    sqlFilter: {
      sqlExpression: 'launch_mode = \'on-demand\''
    }
  }
}

// Submissions from automation: consumed by submit_from_queue. Senders may set MessageId to
// their idempotency key; duplicates inside the window are dropped by the broker.
resource jobRequests 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: 'job-requests'
  properties: {
    lockDuration: lockDuration
    maxDeliveryCount: maxDeliveryCount
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: 'P14D'
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    maxSizeInMegabytes: 1024
    enableBatchedOperations: true
  }
}

// Every job state transition as a CloudEvent, for downstream automation (which adds its own
// subscriptions).
resource jobEvents 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' = {
  parent: namespace
  name: 'job-events'
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    defaultMessageTimeToLive: 'P14D'
    maxSizeInMegabytes: 1024
    enableBatchedOperations: true
  }
}

output namespaceName string = namespace.name
output fullyQualifiedNamespace string = split(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':')[0]
output poolSubscriptionNames array = [for (pool, i) in pools: poolSubscriptions[i].name]
