"""Redis plumbing that knows nothing about tweets: the client (one node or a cluster), which node holds a
key, the lean pipelined wire of the hot path, and Entra ID sign-in."""
