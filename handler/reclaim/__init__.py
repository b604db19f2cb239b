"""The reclaim core, top to bottom: streams (several, one budget) -> cycle (one stream) -> sweep (the walk
over the pending list) -> page (claim, write, acknowledge, dead-letter), with the pure rules apart."""
