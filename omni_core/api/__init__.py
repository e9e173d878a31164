"""HTTP API of the core: thin handlers over the store and the pipeline."""
