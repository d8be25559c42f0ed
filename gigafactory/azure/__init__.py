"""Azure adapters: the same ports as ``gigafactory.local``, on Cosmos DB, Blob storage and friends."""
