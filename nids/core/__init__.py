"""The domain core: feature contracts, schemas, validation rules, encoding, the pipeline. No server, no store."""
