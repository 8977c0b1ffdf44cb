"""Settings and how vramgate starts up: where values come from, units, addresses, logging."""
