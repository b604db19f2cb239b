"""Operator commands beside the cycle: status, a dry run, the start-up check, dead-letter tools, and the
console that shows them."""
