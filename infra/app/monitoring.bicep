// Log Analytics + workspace-based Application Insights, Entra ID ingestion only.
param location string
param tags object
param logAnalyticsName string
param appInsightsName string

@description('Daily ingestion cap in GB; -1 disables the cap.')
param dailyCapGb int = 1

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
    workspaceCapping: {
      dailyQuotaGb: dailyCapGb
    }
    features: {
      disableLocalAuth: true
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    IngestionMode: 'LogAnalytics'
    // Telemetry is accepted only with an Entra ID token (Monitoring Metrics Publisher).
    DisableLocalAuth: true
  }
}

output logAnalyticsWorkspaceId string = logAnalytics.id
output appInsightsName string = appInsights.name
// The connection string identifies the component; with DisableLocalAuth it grants nothing by itself.
output appInsightsConnectionString string = appInsights.properties.ConnectionString
