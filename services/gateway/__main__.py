"""`sandmesh-gateway`: settings from the environment, then serve."""

from __future__ import annotations

from sandmesh_runtime import bootstrap, settings
from services.gateway.service import Gateway
from services.gateway.settings import GatewaySettings


def main() -> None:
    def build() -> tuple[Gateway, int]:
        config = settings.load(GatewaySettings)
        return Gateway(config), config.port

    bootstrap.run("gateway", build)


if __name__ == "__main__":
    main()
