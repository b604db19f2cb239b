"""tweets-monitor: reclaims tweets abandoned in a Redis stream consumer group."""
