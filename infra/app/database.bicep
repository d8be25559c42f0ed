// Cosmos DB for NoSQL, serverless (billed per request unit and per GB stored, nothing per hour),
// Entra ID only. Partition keys and composite indexes follow the queries the store runs.
param location string
param tags object
param accountName string
param databaseName string = 'gigafactory'

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' = {
  name: accountName
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    capabilities: [
      {
        name: 'EnableServerless'
      }
    ]
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: false
      }
    ]
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    disableLocalAuth: true
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    publicNetworkAccess: 'Enabled'
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-11-15' = {
  parent: account
  name: databaseName
  properties: {
    resource: {
      id: databaseName
    }
  }
}

// Jobs, one logical partition per pool: the scheduler's "top queued jobs of a pool" and the
// list filters (status, product, pool; newest first) are single-partition or fan-out queries
// served by these composite indexes.
resource jobs 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: database
  name: 'jobs'
  properties: {
    resource: {
      id: 'jobs'
      partitionKey: {
        paths: [
          '/pool'
        ]
        kind: 'Hash'
        version: 2
      }
      indexingPolicy: {
        indexingMode: 'consistent'
        automatic: true
        includedPaths: [
          {
            path: '/*'
          }
        ]
        // The manifest (the agent's task) and the history are never filtered on; indexing them
        // would only make every write dearer. Same policy as JOBS_INDEXING_POLICY in the code.
        excludedPaths: [
          {
            path: '/"_etag"/?'
          }
          {
            path: '/manifest/*'
          }
          {
            path: '/history/*'
          }
        ]
        compositeIndexes: [
          [
            {
              path: '/status'
              order: 'ascending'
            }
            {
              path: '/sort_key'
              order: 'descending'
            }
          ]
          [
            {
              path: '/status'
              order: 'ascending'
            }
            {
              path: '/submitted_at'
              order: 'descending'
            }
          ]
          [
            {
              path: '/product'
              order: 'ascending'
            }
            {
              path: '/submitted_at'
              order: 'descending'
            }
          ]
          [
            {
              path: '/pool'
              order: 'ascending'
            }
            {
              path: '/submitted_at'
              order: 'descending'
            }
          ]
        ]
      }
    }
  }
}

// Per-pool capacity documents (in-flight counters updated with ETags).
resource poolsContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: database
  name: 'pools'
  properties: {
    resource: {
      id: 'pools'
      partitionKey: {
        paths: [
          '/id'
        ]
        kind: 'Hash'
        version: 2
      }
    }
  }
}

// Enrolled standing factories, grouped by pool.
resource factories 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: database
  name: 'factories'
  properties: {
    resource: {
      id: 'factories'
      partitionKey: {
        paths: [
          '/pool'
        ]
        kind: 'Hash'
        version: 2
      }
    }
  }
}

// Change-feed trigger checkpoints. With Entra ID auth the trigger cannot create this itself.
resource leases 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: database
  name: 'leases'
  properties: {
    resource: {
      id: 'leases'
      partitionKey: {
        paths: [
          '/id'
        ]
        kind: 'Hash'
        version: 2
      }
    }
  }
}

output accountName string = account.name
output endpoint string = account.properties.documentEndpoint
output databaseName string = database.name
