"""Storage: the content-addressed store, the remote cache, deploy.lock's file, keys and hashing."""
