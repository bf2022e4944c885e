"""The data plane: listener handler, canonical path, router, plugin chain, proxy, upstream pools."""
