"""`sandmesh-gateway`: settings from the environment, then serve."""

from __future__ import annotations

from sandmesh_runtime import bootstrap
from services.gateway.service import Gateway
from services.gateway.settings import GatewaySettings

main = bootstrap.entry_point("gateway", Gateway, GatewaySettings)

if __name__ == "__main__":
    main()
