"""The Karabo bridge: wire protocol, client, server, simulator and live buffer."""
