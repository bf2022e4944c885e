"""The data plane: the request handler, router, plugin chain, proxy, upstream pools, snapshot."""
